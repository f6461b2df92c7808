//! The job scripts the Slurm executor submits, written to be read: the `#SBATCH` lines say what
//! each job asks for, and the one command it runs is the user's own `tinyllm run`, narrowed to
//! its part of the sweep and kept from submitting again (`--executor local`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::pipeline::dag::StageId;

/// How a job runs tinyllm: the binary, the folder relative paths are read from, and the
/// arguments of `run` that every job of a submission shares.
#[derive(Debug, Clone)]
pub struct JobCommand {
    pub exe: PathBuf,
    pub workdir: PathBuf,
    /// The spec, its overlays, `--set`s and `--sweep`s as the user gave them, then the folders.
    pub run_args: Vec<String>,
}

/// What both scripts of a submission share.
#[derive(Debug, Clone)]
pub struct ScriptContext<'a> {
    pub pipeline: &'a str,
    /// The user's command, for the script's header.
    pub submitted_by: &'a str,
    /// sbatch options from the spec's `slurm.options` and `--slurm`.
    pub options: &'a [String],
    /// Tasks of each variant's job; more than one runs it through srun (data-parallel training).
    pub ntasks: u32,
    /// srun's own options (`slurm.srun_options`), for a job of several tasks.
    pub srun_options: &'a [String],
    /// Where the scripts and the jobs' output go.
    pub dir: &'a Path,
    pub command: &'a JobCommand,
}

/// The job that builds the stages several variants share.
pub fn shared_job(cx: &ScriptContext<'_>, stages: &[StageId]) -> String {
    let mut text = header(
        cx,
        &format!(
            "The stages that several variants of {} share, built once:\n\
             #   {}\n\
             # The variants' job array starts when this job has succeeded.",
            cx.pipeline,
            stage_list(stages)
        ),
    );
    sbatch_lines(
        &mut text,
        cx,
        &format!("tinyllm-{}-shared", cx.pipeline),
        "shared-%j.out",
        1,
    );
    text.push_str("\nset -euo pipefail\n");
    let mut args = cx.command.run_args.clone();
    args.push("--shared-only".into());
    let _ = writeln!(text, "exec {}", command_line(cx.command, &args, None));
    text
}

/// One task per variant: variant `names[i]`, whose last stage has key `keys[i]`, is array index
/// `i`; `indices` are the ones this job runs. With `after`, the array starts once those jobs
/// have succeeded, and is cancelled if one of them fails.
pub fn variants_job(
    cx: &ScriptContext<'_>,
    names: &[String],
    keys: &[String],
    indices: &[usize],
    after: &[String],
    stages: &[StageId],
) -> String {
    let mut text = header(
        cx,
        &format!(
            "One task per variant of {}; each builds its own stages:\n\
             #   {}\n\
             # and reads the ones the variants share from the cache.",
            cx.pipeline,
            stage_list(stages)
        ),
    );
    let mut lines = vec![format!("--array={}", array_spec(indices))];
    if !after.is_empty() {
        lines.push(format!("--dependency=afterok:{}", after.join(":")));
        lines.push("--kill-on-invalid-dep=yes".into());
    }
    for line in lines {
        let _ = writeln!(text, "#SBATCH {line}");
    }
    sbatch_lines(
        &mut text,
        cx,
        &format!("tinyllm-{}", cx.pipeline),
        "variant-%A_%a.out",
        cx.ntasks,
    );
    text.push_str("\nset -euo pipefail\n");
    text.push_str("# The variants of the sweep, by array index.\nvariants=(\n");
    for (i, name) in names.iter().enumerate() {
        let _ = writeln!(
            text,
            "  {}  # {i}",
            shlex::try_quote(name).unwrap_or_default()
        );
    }
    text.push_str(")\n");
    text.push_str(
        "# The key each variant's last stage had when submitted: a job refuses to run if the\n\
         # spec it reads now gives another.\nkeys=(",
    );
    for key in keys {
        let _ = write!(
            text,
            " {}",
            crate::pipeline::cache::Cache::key_dir_name(key)
        );
    }
    text.push_str(" )\n");
    let args = cx.command.run_args.clone();
    let srun = (cx.ntasks > 1).then_some(cx.srun_options);
    let mut line = command_line(cx.command, &args, srun);
    line.push_str(
        " --variant \"${variants[$SLURM_ARRAY_TASK_ID]}\" --expect-key \"${keys[$SLURM_ARRAY_TASK_ID]}\"",
    );
    let _ = writeln!(text, "exec {line}");
    text
}

fn header(cx: &ScriptContext<'_>, what: &str) -> String {
    format!(
        "#!/bin/bash\n\
         # Written by tinyllm {} for:\n\
         #   {}\n\
         # {what}\n",
        env!("CARGO_PKG_VERSION"),
        cx.submitted_by
    )
}

fn sbatch_lines(text: &mut String, cx: &ScriptContext<'_>, name: &str, output: &str, tasks: u32) {
    let mut lines = vec![
        format!("--job-name={name}"),
        format!("--output={}", cx.dir.join(output).display()),
        format!("--chdir={}", cx.command.workdir.display()),
    ];
    if tasks > 1 {
        lines.push(format!("--ntasks={tasks}"));
    }
    lines.extend(cx.options.iter().cloned());
    for line in lines {
        let _ = writeln!(text, "#SBATCH {line}");
    }
}

/// The command, quoted for the shell; with `srun`, started on every task by srun with those
/// options.
fn command_line(command: &JobCommand, args: &[String], srun: Option<&[String]>) -> String {
    let mut words = Vec::new();
    if let Some(options) = srun {
        words.push("srun --kill-on-bad-exit=1".to_string());
        words.extend(options.iter().map(|o| quote(o)));
    }
    words.push(quote(&command.exe.to_string_lossy()));
    words.push("run".into());
    words.extend(args.iter().map(|a| quote(a)));
    words.join(" ")
}

fn quote(word: &str) -> String {
    shlex::try_quote(word)
        .map(|q| q.into_owned())
        .unwrap_or_else(|_| word.to_string())
}

fn stage_list(stages: &[StageId]) -> String {
    let names: Vec<&str> = stages.iter().map(|s| s.name()).collect();
    names.join(", ")
}

/// sbatch's `--array` list: runs of consecutive indices as ranges (`0-3,5,7-8`).
pub fn array_spec(indices: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < indices.len() {
        let start = indices[i];
        let mut end = start;
        while i + 1 < indices.len() && indices[i + 1] == end + 1 {
            end += 1;
            i += 1;
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_lists_compress_runs_of_indices() {
        assert_eq!(array_spec(&[0, 1, 2, 3]), "0-3");
        assert_eq!(array_spec(&[1, 3]), "1,3");
        assert_eq!(array_spec(&[0, 2, 3, 4, 7]), "0,2-4,7");
        assert_eq!(array_spec(&[5]), "5");
    }

    #[test]
    fn the_variants_script_names_each_task_and_quotes_the_command() {
        let command = JobCommand {
            exe: PathBuf::from("/opt/tiny llm/tinyllm"),
            workdir: PathBuf::from("/home/me/project"),
            run_args: vec![
                "pipelines/quickstart.toml".into(),
                "--sweep".into(),
                "train.lr=3e-3,1e-3".into(),
                "--executor".into(),
                "local".into(),
            ],
        };
        let options = vec!["--partition=cpu".to_string(), "--time=01:00:00".to_string()];
        let cx = ScriptContext {
            pipeline: "quickstart",
            submitted_by: "tinyllm run pipelines/quickstart.toml --executor slurm",
            options: &options,
            ntasks: 2,
            srun_options: &["--mpi=pmix".to_string()],
            dir: Path::new("/home/me/project/runs/quickstart/slurm/1"),
            command: &command,
        };
        let names = vec!["lr=0.003".to_string(), "lr=0.001".to_string()];
        let keys = vec![
            "0123456789abcdef0123".to_string(),
            "fedcba9876543210ff".to_string(),
        ];
        let text = variants_job(&cx, &names, &keys, &[1], &["41".into()], &[StageId::Train]);
        assert!(text.starts_with("#!/bin/bash\n"), "{text}");
        for line in [
            "#SBATCH --array=1\n",
            "#SBATCH --dependency=afterok:41\n",
            "#SBATCH --kill-on-invalid-dep=yes\n",
            "#SBATCH --ntasks=2\n",
            "#SBATCH --partition=cpu\n",
            "#SBATCH --chdir=/home/me/project\n",
            "  'lr=0.001'  # 1\n",
            "exec srun --kill-on-bad-exit=1 '--mpi=pmix' '/opt/tiny llm/tinyllm' run pipelines/quickstart.toml --sweep 'train.lr=3e-3,1e-3' --executor local --variant \"${variants[$SLURM_ARRAY_TASK_ID]}\" --expect-key \"${keys[$SLURM_ARRAY_TASK_ID]}\"\n",
            "keys=( 0123456789abcdef fedcba9876543210 )\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
        let shared = shared_job(&cx, &[StageId::Download, StageId::TrainVocab]);
        assert!(shared.contains("#   download, train_vocab\n"), "{shared}");
        assert!(
            shared.ends_with("--executor local --shared-only\n"),
            "{shared}"
        );
        assert!(!shared.contains("--ntasks"), "{shared}");
    }
}
