//! The Slurm executor. Without a cluster: a missing `sbatch` and a spec error are one line each,
//! before anything is submitted or written. With one (`scripts/slurm-local.sh start`, which
//! `.ci/run` runs): a 2 × 2 sweep of the quickstart goes through Slurm, the shared stages built
//! once, a cancelled variant resubmitted alone and resumed from its checkpoint, a repeated
//! command submitting nothing. The cluster test is ignored by default: `.ci/run` runs it in
//! release mode with TINYLLM_REQUIRE_SLURM=1.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The quickstart, trained briefly: long enough to be cancelled after a checkpoint.
const SETTINGS: [&str; 9] = [
    "train.max_iters=400",
    "train.batch_size=8",
    "train.seq_len=128",
    "train.warmup_iters=10",
    "train.eval_interval=200",
    "train.checkpoint_interval=20",
    "sample.max_new_tokens=16",
    "sample.prompts=[\"Once\"]",
    "train_vocab.vocab_size=512",
];
const SWEEP: [&str; 2] = ["train.lr=3e-3,1e-3", "train.seed=1,2"];

fn tinyllm(folder: &Path, subcommand: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tinyllm"));
    command
        .current_dir(repo())
        .arg(subcommand)
        .arg("pipelines/quickstart.toml")
        .arg("--cache")
        .arg(folder.join("cache"))
        .arg("--runs")
        .arg(folder.join("runs"));
    for set in SETTINGS {
        command.args(["--set", set]);
    }
    for sweep in SWEEP {
        command.args(["--sweep", sweep]);
    }
    command.args(extra);
    command
}

fn run_output(command: &mut Command) -> (Output, String) {
    let output = command.output().expect("tinyllm starts");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output, text)
}

fn succeed(command: &mut Command) -> String {
    let (output, text) = run_output(command);
    assert!(output.status.success(), "{command:?} failed:\n{text}");
    text
}

#[test]
fn a_missing_sbatch_is_one_line_before_anything_is_written() {
    let folder = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let (output, text) = run_output(
        tinyllm(
            folder.path(),
            "run",
            &["--executor", "slurm", "--allow-node-local-cache"],
        )
        .env("PATH", empty.path()),
    );
    assert!(!output.status.success());
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("needs Slurm's `sbatch` on PATH"), "{text}");
    assert!(!folder.path().join("cache").exists() && !folder.path().join("runs").exists());
}

#[test]
fn a_spec_error_with_the_slurm_executor_is_one_line_naming_the_key() {
    let folder = tempfile::tempdir().unwrap();
    let (output, text) = run_output(&mut tinyllm(
        folder.path(),
        "run",
        &["--executor", "slurm", "--set", "train.lr=-1"],
    ));
    assert!(!output.status.success());
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("train.lr"), "{text}");
    let (output, text) = run_output(&mut tinyllm(
        folder.path(),
        "run",
        &["--executor", "slurm", "--slurm", "--time=1:00 'unbalanced"],
    ));
    assert!(!output.status.success());
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("--slurm"), "{text}");
    assert!(!folder.path().join("cache").exists() && !folder.path().join("runs").exists());
}

#[test]
fn a_cache_under_tmp_is_refused_for_a_cluster_unless_allowed() {
    if !has_sbatch() {
        eprintln!("no sbatch on PATH: the check runs after it");
        return;
    }
    let folder = tempfile::tempdir_in("/tmp").unwrap();
    let (output, text) = run_output(&mut tinyllm(
        folder.path(),
        "run",
        &["--executor", "slurm", "--dry-run"],
    ));
    assert!(!output.status.success());
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("node-local file system (under /tmp)"),
        "{text}"
    );
    assert!(text.contains("--allow-node-local-cache"), "{text}");
}

#[test]
fn status_names_the_job_of_a_variant_where_there_is_no_squeue_to_ask() {
    let folder = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let status = succeed(tinyllm(folder.path(), "status", &[]).env("PATH", empty.path()));
    assert!(
        status.contains("quickstart / lr=0.003,seed=1: not built"),
        "{status}"
    );
    // What a submission records: the array task that builds the variant's train artifact.
    let key = train_key(&status, "lr=0.003,seed=1");
    let jobs = folder.path().join("cache").join("jobs");
    fs::create_dir_all(&jobs).unwrap();
    fs::write(
        jobs.join(format!("train-{key}.json")),
        r#"{"job": "77_0", "script": "/shared/variants.sbatch", "submitted_unix": 0}"#,
    )
    .unwrap();
    let status = succeed(tinyllm(folder.path(), "status", &[]).env("PATH", empty.path()));
    assert!(
        status.contains(
            "quickstart / lr=0.003,seed=1: not cached; submitted as job 77_0 (no squeue here to ask about it)"
        ),
        "{status}"
    );
    assert!(
        status.contains("quickstart / lr=0.003,seed=2: not built"),
        "{status}"
    );
}

#[test]
fn a_job_whose_spec_changed_since_it_was_submitted_refuses_in_one_line() {
    let folder = tempfile::tempdir().unwrap();
    let (output, text) = run_output(&mut tinyllm(
        folder.path(),
        "run",
        &[
            "--executor",
            "local",
            "--variant",
            "lr=0.003,seed=1",
            "--expect-key",
            "0123456789abcdef",
        ],
    ));
    assert!(!output.status.success());
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("variant `lr=0.003,seed=1` now keys its sample artifact")
            && text.contains("not 0123456789abcdef as when it was submitted"),
        "{text}"
    );
    assert!(!folder.path().join("cache").exists());
}

fn has_sbatch() -> bool {
    Command::new("sbatch")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Each variant's line of `tinyllm status`: `quickstart / NAME: STATE`.
fn variant_lines(status: &str) -> Vec<String> {
    status
        .lines()
        .filter(|l| l.starts_with("quickstart / "))
        .map(str::to_string)
        .collect()
}

/// The 16-digit train key in the status block of `variant`.
fn train_key(status: &str, variant: &str) -> String {
    let header = format!("quickstart / {variant}:");
    let block: Vec<&str> = status
        .lines()
        .skip_while(|l| !l.starts_with(&header))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    let line = block
        .iter()
        .find(|l| l.trim_start().starts_with("train "))
        .unwrap_or_else(|| panic!("no train line for {variant} in\n{status}"));
    line.split_whitespace().nth(1).unwrap().to_string()
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn sacct(jobs: &str) -> String {
    let output = Command::new("sacct")
        .args([
            "--noheader",
            "--allocations",
            "--parsable2",
            "--format=JobID,State",
            "--jobs",
            jobs,
        ])
        .output()
        .expect("sacct runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The job (or array) id in a `submitted job … N:` line.
fn submitted(text: &str, what: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let id = line
            .strip_prefix(&format!("submitted {what} "))?
            .split(':')
            .next()?;
        id.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| id.to_string())
    })
}

fn artifacts(cache: &Path, stage: &str) -> usize {
    fs::read_dir(cache.join(stage)).map_or(0, |d| d.count())
}

#[test]
#[ignore = "needs a Slurm cluster (scripts/slurm-local.sh start); .ci/run runs it"]
fn a_two_by_two_sweep_runs_as_slurm_jobs_sharing_one_cache() {
    if !has_sbatch() {
        assert!(
            std::env::var_os("TINYLLM_REQUIRE_SLURM").is_none(),
            "TINYLLM_REQUIRE_SLURM is set and sbatch does not run"
        );
        eprintln!("no Slurm here: start one with scripts/slurm-local.sh start");
        return;
    }
    let folder = tempfile::tempdir().unwrap();
    let cache = folder.path().join("cache");
    let submit = [
        "--executor",
        "slurm",
        "--allow-node-local-cache",
        "--threads",
        "1",
    ];

    // Submitted without --wait: run returns once the jobs are queued.
    let text = succeed(&mut tinyllm(folder.path(), "run", &submit));
    let shared = submitted(&text, "job").unwrap_or_else(|| panic!("no shared job:\n{text}"));
    let array = submitted(&text, "job array").unwrap_or_else(|| panic!("no array:\n{text}"));
    assert!(text.contains("4 of 4 variants (train, sample)"), "{text}");

    // One variant is cancelled once its training has written a checkpoint.
    let mut cancelled = None;
    wait_for(
        "a variant training past a checkpoint",
        Duration::from_secs(600),
        || {
            let status = succeed(&mut tinyllm(folder.path(), "status", &[]));
            for line in variant_lines(&status) {
                let Some((name, state)) = line
                    .strip_prefix("quickstart / ")
                    .and_then(|l| l.split_once(": "))
                else {
                    continue;
                };
                let Some(job) = state
                    .strip_prefix("running (job ")
                    .map(|j| j.trim_end_matches(')'))
                else {
                    continue;
                };
                let key = train_key(&status, name);
                let scratch = cache
                    .join("scratch")
                    .join(format!("train-{key}"))
                    .join("checkpoints");
                let has_checkpoint = fs::read_dir(&scratch).is_ok_and(|entries| {
                    entries
                        .flatten()
                        .any(|e| e.file_name().to_string_lossy().starts_with("step-"))
                });
                if job.starts_with(&format!("{array}_")) && has_checkpoint {
                    let out = Command::new("scancel").arg(job).output().unwrap();
                    assert!(out.status.success(), "scancel {job}");
                    cancelled = Some((name.to_string(), job.to_string()));
                    return true;
                }
            }
            false
        },
    );
    let (name, job) = cancelled.unwrap();
    wait_for(
        "the cancelled variant to show as failed",
        Duration::from_secs(120),
        || {
            let status = succeed(&mut tinyllm(folder.path(), "status", &[]));
            status.contains(&format!(
                "quickstart / {name}: failed (job {job}: CANCELLED"
            ))
        },
    );

    // The same command again, with --wait: only the cancelled variant is submitted, and it
    // resumes from its checkpoint; the sweep's table is printed at the end.
    let mut again = submit.to_vec();
    again.push("--wait");
    let text = succeed(&mut tinyllm(folder.path(), "run", &again));
    assert!(
        submitted(&text, "job").is_none(),
        "the shared stages are cached:\n{text}"
    );
    let resubmitted =
        submitted(&text, "job array").unwrap_or_else(|| panic!("nothing resubmitted:\n{text}"));
    assert!(
        text.contains(&format!("1 of 4 variants (train, sample), {name}")),
        "{text}"
    );
    assert!(text.contains("table written to"), "{text}");
    let runs = folder.path().join("runs").join("quickstart");
    let index = job.rsplit('_').next().unwrap();
    let log_dir = fs::read_dir(runs.join("slurm"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|dir| {
            dir.join(format!("variant-{resubmitted}_{index}.out"))
                .exists()
        })
        .expect("the resubmitted task's output");
    let log =
        fs::read_to_string(log_dir.join(format!("variant-{resubmitted}_{index}.out"))).unwrap();
    assert!(log.contains("resuming from step"), "{log}");

    // Upstream built once, every variant's artifacts cached, and Slurm ran them.
    for stage in ["download", "train_vocab", "pretokenize"] {
        assert_eq!(artifacts(&cache, stage), 1, "{stage}");
    }
    for stage in ["train", "sample"] {
        assert_eq!(artifacts(&cache, stage), 4, "{stage}");
    }
    let accounting = sacct(&format!("{shared},{array},{resubmitted}"));
    let completed = accounting
        .lines()
        .filter(|l| l.contains(&format!("{array}_")) || l.contains(&format!("{resubmitted}_")))
        .filter(|l| l.ends_with("|COMPLETED"))
        .count();
    assert_eq!(completed, 4, "sacct:\n{accounting}");
    assert!(
        accounting.contains(&format!("{job}|CANCELLED")),
        "sacct:\n{accounting}"
    );
    let csv = fs::read_to_string(runs.join("sweep.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    assert!(runs.join("report.md").exists() && runs.join("sweep-loss.svg").exists());

    // Again: nothing to submit; and `report` writes the same table from the cache.
    let text = succeed(&mut tinyllm(folder.path(), "run", &submit));
    assert!(
        text.contains("nothing to submit: 4 of 4 variants cached"),
        "{text}"
    );
    let before = fs::read_to_string(runs.join("sweep.csv")).unwrap();
    fs::remove_file(runs.join("sweep.csv")).unwrap();
    let text = succeed(&mut tinyllm(folder.path(), "report", &[]));
    assert!(text.contains("table written to"), "{text}");
    assert_eq!(fs::read_to_string(runs.join("sweep.csv")).unwrap(), before);
}

#[cfg(feature = "mpi")]
#[test]
#[ignore = "needs a Slurm cluster (scripts/slurm-local.sh start); .ci/run runs it"]
fn a_variant_job_of_two_tasks_trains_over_two_ranks_started_by_srun() {
    if !has_sbatch() {
        assert!(
            std::env::var_os("TINYLLM_REQUIRE_SLURM").is_none(),
            "TINYLLM_REQUIRE_SLURM is set and sbatch does not run"
        );
        return;
    }
    let folder = tempfile::tempdir().unwrap();
    let overlay = folder.path().join("two-tasks.toml");
    fs::write(
        &overlay,
        "[slurm]\nntasks = 2\nsrun_options = [\"--mpi=pmix\"]\n",
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_tinyllm"));
    command
        .current_dir(repo())
        .args(["run", "pipelines/quickstart.toml", "--overlay"])
        .arg(&overlay)
        .arg("--cache")
        .arg(folder.path().join("cache"))
        .arg("--runs")
        .arg(folder.path().join("runs"));
    for set in SETTINGS {
        command.args(["--set", set]);
    }
    command.args(["--set", "train.max_iters=40"]).args([
        "--executor",
        "slurm",
        "--allow-node-local-cache",
        "--threads",
        "1",
        "--wait",
    ]);
    let text = succeed(&mut command);
    assert!(text.contains("default  cached"), "{text}");
    let job = submitted(&text, "job array").unwrap_or_else(|| panic!("no job:\n{text}"));
    let log = folder
        .path()
        .join(format!("runs/quickstart/slurm/1/variant-{job}_0.out"));
    let log = fs::read_to_string(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    assert!(log.contains("2 ranks over MPI"), "{log}");
    assert!(
        fs::read_to_string(
            folder
                .path()
                .join("runs/quickstart/slurm/1/variants.sbatch")
        )
        .unwrap()
        .contains("exec srun --kill-on-bad-exit=1 '--mpi=pmix' ")
    );
}
