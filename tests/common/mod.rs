//! Helpers shared by the integration tests: test implementations of the stages that are not
//! built yet, a pipeline project in a temporary folder, and a small HTTP server on 127.0.0.1.

#![allow(dead_code)]

pub mod server;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use tinyllm::pipeline::cache::canonical_json;
use tinyllm::pipeline::runner::{Outcome, VariantResult};
use tinyllm::pipeline::{
    LoadedSpec, RunOptions, SpecSources, Stage, StageContext, StageFailure, StageId, StageRegistry,
    StageReport,
};
use tinyllm::stages::download::Download;

/// A test stage: writes what it was given (its view of the spec, as keyed, and its inputs' keys)
/// so that downstream keys depend on it, and reports a metric derived from its config.
pub struct Recorder(pub StageId);

impl Stage for Recorder {
    fn id(&self) -> StageId {
        self.0
    }

    fn run(&self, cx: &mut StageContext<'_>) -> Result<StageReport, StageFailure> {
        let config = cx.view.key_config();
        let mut inputs = BTreeMap::new();
        for input in self.0.inputs() {
            inputs.insert(input.name(), cx.input(*input)?.key().to_string());
        }
        let record = serde_json::json!({ "config": config, "inputs": inputs });
        fs::write(cx.out_dir.join("record.json"), canonical_json(&record))?;
        let mut report = StageReport {
            summary: format!("test {}", self.0),
            ..Default::default()
        };
        if self.0 == StageId::Train {
            // A made-up loss with its minimum at lr = 5e-4, so a sweep table has something to show.
            let lr = cx.view.train()?.train.lr;
            report
                .metrics
                .insert("final_loss".into(), 1.0 + (lr / 5e-4).ln().powi(2));
        }
        Ok(report)
    }
}

/// The real download stage and test stages for the rest.
pub fn test_registry() -> StageRegistry {
    StageRegistry::new()
        .with(Download)
        .with(Recorder(StageId::TrainVocab))
        .with(Recorder(StageId::Pretokenize))
        .with(Recorder(StageId::Train))
        .with(Recorder(StageId::Sample))
}

/// A temporary folder with a corpus file, a spec reading it, a cache and a runs folder.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Project {
        let dir = tempfile::tempdir().expect("a temporary folder");
        fs::write(
            dir.path().join("stories.txt"),
            "Once upon a time there was a cat.\nThe cat liked milk.\n",
        )
        .unwrap();
        let project = Project { dir };
        project.write_spec("");
        project
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    pub fn spec_path(&self) -> PathBuf {
        self.path("pipeline.toml")
    }

    pub fn cache(&self) -> PathBuf {
        self.path("cache")
    }

    pub fn runs(&self) -> PathBuf {
        self.path("runs")
    }

    /// Writes the spec: a local corpus file, a small model, and `extra` TOML appended.
    pub fn write_spec(&self, extra: &str) {
        self.write_spec_with_model(
            "dim = 16\nn_layers = 2\nn_heads = 4\nn_kv_heads = 2\nmax_seq_len = 8\n",
            extra,
        );
    }

    /// Writes the spec with `model` as the body of its `[model]` table.
    pub fn write_spec_with_model(&self, model: &str, extra: &str) {
        let corpus = self.path("stories.txt");
        let text = format!(
            r#"[pipeline]
name = "test"

[download]
files = [{{ name = "stories.txt", mirrors = ["{}"] }}]

[train_vocab]
vocab_size = 300

[model]
{model}
[train]
seq_len = 8
max_iters = 10
{extra}
"#,
            corpus.display()
        );
        fs::write(self.spec_path(), text).unwrap();
    }

    pub fn sources(&self, sets: &[&str]) -> SpecSources {
        SpecSources {
            spec: self.spec_path(),
            sets: sets.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    pub fn options(&self) -> RunOptions {
        RunOptions {
            cache_dir: self.cache(),
            runs_dir: self.runs(),
            until: None,
            force: Default::default(),
            verify: false,
            dry_run: false,
            quiet: true,
            part: Default::default(),
        }
    }

    /// The `tinyllm` binary set to run this project's spec up to the download stage (the only
    /// stage the binary has that needs no test stand-in), with the project's cache and runs.
    pub fn download_command(&self) -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tinyllm"));
        command
            .arg("run")
            .arg(self.spec_path())
            .args(["--until", "download", "--cache"])
            .arg(self.cache())
            .arg("--runs")
            .arg(self.runs());
        command
    }

    /// The `tinyllm` binary running this project's spec with its cache and runs folders, output
    /// captured.
    pub fn run_command(&self, extra: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tinyllm"));
        command
            .arg("run")
            .arg(self.spec_path())
            .arg("--cache")
            .arg(self.cache())
            .arg("--runs")
            .arg(self.runs())
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        command
    }

    /// Loads the spec with `sets` and runs it with the test registry.
    pub fn run(&self, sets: &[&str]) -> Vec<VariantResult> {
        let loaded = self.load(sets);
        self.run_loaded(&loaded, &self.options())
    }

    pub fn load(&self, sets: &[&str]) -> LoadedSpec {
        tinyllm::pipeline::load(&self.sources(sets)).expect("the test spec loads")
    }

    pub fn run_loaded(&self, loaded: &LoadedSpec, opts: &RunOptions) -> Vec<VariantResult> {
        let mut out = Vec::new();
        tinyllm::pipeline::run(loaded, &test_registry(), opts, &mut out).expect("the run succeeds")
    }
}

/// Runs the project's spec up to `until` with the stages tinyllm ships.
pub fn run_builtin_until(
    project: &Project,
    until: StageId,
) -> Result<Vec<VariantResult>, tinyllm::pipeline::RunError> {
    let loaded = project.load(&[]);
    let mut opts = project.options();
    opts.until = Some(until);
    tinyllm::pipeline::run(
        &loaded,
        &tinyllm::stages::builtin_registry(),
        &opts,
        &mut Vec::new(),
    )
}

/// An error and its causes on one line, as the command line prints it.
pub fn error_line(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// The stages that ran (were built) in a variant's run.
pub fn ran(result: &VariantResult) -> Vec<StageId> {
    result
        .stages
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Ran { .. }))
        .map(|s| s.stage)
        .collect()
}

/// The shared TinyStories excerpts, or `None` (and a note) when `../shared` is absent.
pub fn shared_tinystories() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/tinystories");
    if dir.join("TinyStories_sample.tar.gz").exists() {
        Some(dir)
    } else {
        eprintln!("skipped: {} is absent", dir.display());
        None
    }
}

/// Every file under `dir`, relative, sorted (empty when `dir` does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    if !dir.exists() {
        return Vec::new();
    }
    tinyllm::fsutil::list_files(dir).unwrap()
}

/// Simple made-up stories, enough text for a few hundred training windows.
pub fn synthetic_stories(count: usize) -> String {
    let names = ["Tom", "Lily", "Ben", "Mia", "Sam", "Anna"];
    let things = ["ball", "cat", "kite", "cake", "tree", "boat", "dog"];
    let moods = ["happy", "sad", "sleepy", "brave", "kind"];
    let mut seed = 12345u64;
    let mut pick = |n: usize| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize % n
    };
    (0..count)
        .map(|_| {
            let (name, thing, mood) = (names[pick(6)], things[pick(7)], moods[pick(5)]);
            let other = things[pick(7)];
            format!(
                "{name} had a {thing}. The {thing} was {mood}. {name} played with the {thing} and a {other}. They were {mood} all day.\n"
            )
        })
        .collect()
}

/// A project whose corpus is `synthetic_stories` and whose model takes milliseconds per step,
/// with `train` settings appended to its `[train]` table.
pub fn training_project(train: &str) -> Project {
    let project = Project::new();
    let corpus = project.path("stories.txt");
    fs::write(&corpus, synthetic_stories(1500)).unwrap();
    let spec = format!(
        r#"[pipeline]
name = "test"

[download]
files = [{{ name = "stories.txt", mirrors = ["{}"] }}]

[corpus]
train_files = ["stories.txt"]
val_files = []

[pretokenize]
val_fraction = 0.05

[train_vocab]
vocab_size = 300

[model]
dim = 64
n_layers = 2
n_heads = 4
n_kv_heads = 2
max_seq_len = 32

[sample]
prompts = ["Tom had a", "Lily"]
max_new_tokens = 20

[train]
seq_len = 32
batch_size = 8
grad_accum_steps = 2
warmup_iters = 5
log_interval = 1
eval_windows = 16
{train}
"#,
        corpus.display()
    );
    fs::write(project.spec_path(), spec).unwrap();
    project
}

/// Runs the `tinyllm` binary with `args`, then `--checkpoint DIR` when a folder is given.
pub fn tinyllm(args: &[&str], checkpoint: Option<&Path>) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tinyllm"));
    command.args(args);
    if let Some(dir) = checkpoint {
        command.arg("--checkpoint").arg(dir);
    }
    command.output().unwrap()
}

/// A project whose whole pipeline ran once: 40 steps of a 64-wide model on synthetic stories,
/// its run folder at `runs/test/default`.
pub fn trained_project() -> Project {
    let project = training_project("lr = 3e-3\nmax_iters = 40\neval_interval = 40\n");
    let output = project.run_command(&[]).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("sample       ran"), "{stdout}");
    project
}

/// The one line a failed command printed: exit code 1, `error: …`, no panic.
pub fn one_error_line(output: &std::process::Output) -> String {
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    lines[0].to_string()
}
