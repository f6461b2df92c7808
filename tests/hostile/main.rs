//! Every bad input tinyllm guards against, as a table: what a user (careless or hostile) does,
//! and the exact line tinyllm answers with.
//!
//! Each row runs the real binary in a fresh project folder (the tiny spec of
//! [`common::Project`]: `pipeline.toml` reading `./stories.txt`, vocabulary 300, a 2-layer
//! 16-wide model, no `[corpus]` table, so a row that runs it past download writes its own) and
//! checks
//! the promises every refusal keeps: exit code 1, one line on stderr, that line equal to the
//! row's text, no panic, and a cache left as it was (no stage's output changed, no temporary
//! folder left behind). A row that warns instead checks exit 0 and that the warning is among the
//! lines on stderr.
//!
//! The rows are grouped by what they guard, one file each; the README's FAQ links the common
//! ones.

#[path = "../common/mod.rs"]
mod common;

mod data;
mod messages;
mod model;
mod pipeline;
mod spec;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use common::{Project, files_under};

/// What a row expects of the command.
#[derive(Clone, Copy, Debug)]
pub enum Expect {
    /// Exit 1 with exactly this one line on stderr.
    Refused(&'static str),
    /// Exit 0 with this line among the lines on stderr.
    Warned(&'static str),
}

/// Whether the command may add to the cache before it refuses (stages upstream of the bad input
/// ran and were cached, which is correct), or must leave it as it was.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CacheRule {
    Untouched,
    MayAdd,
}

/// One bad input. In `files`, `args` and `expect`, `{dir}` stands for the project folder.
pub struct Row {
    /// What the user did, in words.
    pub what: &'static str,
    /// Files written into the project folder first (relative path, text); a `pipeline.toml`
    /// here replaces the project's spec.
    pub files: &'static [(&'static str, &'static str)],
    /// Anything else to prepare (runs after `files`).
    pub setup: Option<fn(&Project)>,
    /// Copies a trained model folder (config.json, model.safetensors, tokenizer.json: the
    /// pipeline's train output) to `{dir}/model` first.
    pub needs_model: bool,
    /// Starts from a project whose pipeline ran (its spec, cache and run folders copied in; the
    /// spec's mirror is the fixture's corpus file, so every stage is cached).
    pub needs_cache: bool,
    /// The command line after `tinyllm`, run in the project folder.
    pub args: &'static [&'static str],
    pub expect: Expect,
    pub cache: CacheRule,
    /// Extra environment variables.
    pub env: &'static [(&'static str, &'static str)],
}

/// The defaults a row overrides: `Row { what, args, expect, ..ROW }`.
pub const ROW: Row = Row {
    what: "",
    files: &[],
    setup: None,
    needs_model: false,
    needs_cache: false,
    args: &[],
    expect: Expect::Refused(""),
    cache: CacheRule::Untouched,
    env: &[],
};

/// A project whose whole pipeline ran once with the default cache (`.tinyllm/cache`), built
/// once per test process: 4 steps of the 64-wide model of [`common::training_project`].
fn fixture() -> &'static Project {
    static FIXTURE: OnceLock<Project> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let project = common::training_project("max_iters = 4\neval_interval = 4\n");
        let output = tinyllm_in(&project, &["run".into(), "pipeline.toml".into()], &[]);
        assert!(output.status.success(), "{output:?}");
        project
    })
}

fn tinyllm_in(project: &Project, args: &[String], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tinyllm"));
    command
        .current_dir(project.dir.path())
        .args(args)
        .env_remove("TINYLLM_CACHE")
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

fn copy_tree(from: &Path, to: &Path) {
    for file in files_under(from) {
        let target = to.join(&file);
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        fs::copy(from.join(&file), target).unwrap();
    }
}

/// Runs one row; `Err` says how it broke its promise.
fn check(row: &Row) -> Result<(), String> {
    let project = Project::new();
    let dir = project.dir.path().to_str().unwrap().to_string();
    let fill = |text: &str| text.replace("{dir}", &dir);
    if row.needs_cache {
        let fixture = fixture();
        for part in ["pipeline.toml", ".tinyllm", "runs"] {
            let from = fixture.path(part);
            if from.is_dir() {
                copy_tree(&from, &project.path(part));
            } else {
                fs::copy(from, project.path(part)).unwrap();
            }
        }
    }
    if row.needs_model {
        let model = fixture().path("runs/test/default/artifacts/train");
        for name in ["config.json", "model.safetensors", "tokenizer.json"] {
            fs::create_dir_all(project.path("model")).unwrap();
            fs::copy(model.join(name), project.path("model").join(name)).unwrap();
        }
    }
    for (name, text) in row.files {
        let path = project.path(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, fill(text)).unwrap();
    }
    if let Some(setup) = row.setup {
        setup(&project);
    }
    let cache = project.path(".tinyllm/cache");
    let before = files_under(&cache);
    let args: Vec<String> = row.args.iter().map(|a| fill(a)).collect();
    let output = tinyllm_in(&project, &args, row.env);
    let stderr = String::from_utf8_lossy(&output.stderr).replace(&dir, "{dir}");
    let lines: Vec<&str> = stderr.lines().collect();
    if stderr.contains("panicked") {
        return Err(format!("panicked: {stderr}"));
    }
    match row.expect {
        Expect::Refused(line) => {
            if output.status.code() != Some(1) {
                return Err(format!("exit {:?}, not 1; stderr: {stderr}", output.status));
            }
            if lines != [line] {
                return Err(format!(
                    "stderr is not the one line\n    {line}\n  but\n    {}",
                    lines.join("\n    ")
                ));
            }
        }
        Expect::Warned(line) => {
            if !output.status.success() {
                return Err(format!("exit {:?}, not 0; stderr: {stderr}", output.status));
            }
            if !lines.contains(&line) {
                return Err(format!(
                    "no line\n    {line}\n  on stderr:\n    {}",
                    lines.join("\n    ")
                ));
            }
        }
    }
    let after = files_under(&cache);
    if let Some(tmp) = after
        .iter()
        .find(|p| p.starts_with("tmp") && p.components().count() > 1)
    {
        return Err(format!("left {} in the cache", tmp.display()));
    }
    if row.cache == CacheRule::Untouched
        && matches!(row.expect, Expect::Refused(_))
        && after != before
    {
        return Err("changed the cache".to_string());
    }
    Ok(())
}

/// Checks every row of a table and reports all that fail, not only the first.
fn check_all(rows: &[Row]) {
    let failures: Vec<String> = rows
        .iter()
        .filter_map(|row| check(row).err().map(|why| format!("- {}: {why}", row.what)))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

#[test]
fn spec_and_command_line() {
    check_all(&spec::rows());
}

#[test]
fn data_and_vocabulary() {
    check_all(&data::rows());
}

#[test]
fn models_and_resources() {
    check_all(&model::rows());
}

#[test]
fn pipeline_cache_and_sweeps() {
    check_all(&pipeline::rows());
}

#[test]
fn messages_that_say_what_to_fix() {
    check_all(&messages::rows());
}
/// The table is the list of what is guarded: it must stay long enough to be that.
#[test]
fn the_table_has_every_row() {
    let total = spec::rows().len()
        + data::rows().len()
        + model::rows().len()
        + pipeline::rows().len()
        + messages::rows().len();
    assert!(total >= 60, "{total} rows");
}
