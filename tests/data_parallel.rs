//! Data-parallel training under `mpirun` (feature `mpi`, Open MPI on the machine; `.ci/run`
//! installs it): two ranks end with the bits of one process that accumulates their two
//! micro-batches, and a job that loses a rank to SIGKILL ends, names it, and resumes to the
//! same bits. Ignored by default: `.ci/run` runs them in release mode.
#![cfg(feature = "mpi")]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Project, training_project};

/// The tests share two cores: one job at a time.
static ONE_JOB: Mutex<()> = Mutex::new(());

const TRAIN: &str = "lr = 3e-3\nmax_iters = 300\neval_interval = 100\ncheckpoint_interval = 20\n";

/// `mpirun` running the project's spec on `ranks` ranks. A build with the `mpi` feature has MPI's
/// development files; `mpirun` comes with them (Debian: openmpi-bin), so its absence fails the
/// test rather than skipping it.
fn mpirun(project: &Project, ranks: usize, sets: &[&str]) -> Command {
    let mut command = Command::new("mpirun");
    command
        .args(["-np", &ranks.to_string(), "--oversubscribe"])
        // Containers and CI machines often run tests as root, which mpirun refuses unless told.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .arg(env!("CARGO_BIN_EXE_tinyllm"));
    tinyllm_args(&mut command, project, sets);
    command
}

fn single(project: &Project, sets: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tinyllm"));
    tinyllm_args(&mut command, project, sets);
    command
}

fn tinyllm_args(command: &mut Command, project: &Project, sets: &[&str]) {
    command
        .arg("run")
        .arg(project.spec_path())
        .arg("--cache")
        .arg(project.cache())
        .arg("--runs")
        .arg(project.runs())
        .args(["--until", "train", "--threads", "1"]);
    for set in sets {
        command.args(["--set", set]);
    }
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
}

fn succeed(command: &mut Command) -> Output {
    let output = command.output().expect("the command starts");
    assert!(
        output.status.success(),
        "{command:?}\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The weights the last run linked into the project's run folder.
fn trained_weights(project: &Project) -> Vec<u8> {
    let path = project
        .runs()
        .join("test/default/artifacts/train/model.safetensors");
    fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
#[ignore = "runs mpirun; .ci/run runs it in release mode"]
fn two_ranks_end_with_the_bits_of_one_process_accumulating_two_micro_batches() {
    let _one = ONE_JOB.lock().unwrap_or_else(|e| e.into_inner());
    let project = training_project(TRAIN);
    let ranks = succeed(&mut mpirun(&project, 2, &["train.grad_accum_steps=1"]));
    let stderr = String::from_utf8_lossy(&ranks.stderr);
    assert!(
        stderr.contains("global batch 8 × 1 accumulation × 2 ranks = 16 sequences"),
        "{stderr}"
    );
    let two_ranks = trained_weights(&project);
    succeed(&mut single(&project, &["train.grad_accum_steps=2"]));
    let one_process = trained_weights(&project);
    assert!(
        two_ranks == one_process,
        "2 ranks × batch 8 and 1 process × batch 8 × 2 micro-batches trained different weights"
    );
    // The world size is part of the train key: the two runs are two artifacts.
    assert_eq!(
        fs::read_dir(project.cache().join("train")).unwrap().count(),
        2
    );
}

/// One process may not continue the checkpoints of a job of two ranks (the ranks share the
/// data and the batch): given them under its own key, it refuses in one line.
fn refuses_another_world_size(project: &Project, sets: &[&str]) {
    let mut scratch: Vec<PathBuf> = fs::read_dir(project.cache().join("scratch"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("train-")
        })
        .collect();
    assert_eq!(scratch.len(), 1, "{scratch:?}");
    let two_ranks = scratch.pop().unwrap();
    let plan = succeed(single(project, sets).arg("--dry-run"));
    let plan = String::from_utf8_lossy(&plan.stdout);
    let key = plan
        .lines()
        .find_map(|line| line.trim_start().strip_prefix("train "))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no train key in {plan}"));
    let one_process = project.cache().join("scratch").join(format!("train-{key}"));
    copy_tree(&two_ranks, &one_process);
    let output = single(project, sets).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("written by a job of 2 ranks and this one has 1"),
        "{stderr}"
    );
    fs::remove_dir_all(&one_process).unwrap();
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The process of `rank` among `mpirun`'s children.
fn rank_pid(mpirun: u32, rank: usize) -> Option<u32> {
    let children = fs::read_to_string(format!("/proc/{mpirun}/task/{mpirun}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|pid| pid.parse::<u32>().ok())
        .find(|pid| {
            fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                env.split(|&b| b == 0)
                    .any(|var| var == format!("OMPI_COMM_WORLD_RANK={rank}").as_bytes())
            })
        })
}

fn checkpoints(project: &Project) -> Vec<PathBuf> {
    let scratch = project.cache().join("scratch");
    let Ok(entries) = fs::read_dir(&scratch) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("train-"))
        .flat_map(|e| {
            fs::read_dir(e.path().join("checkpoints"))
                .into_iter()
                .flatten()
        })
        .flatten()
        .map(|e| e.path())
        .filter(|p| is_checkpoint(p))
        .collect()
}

fn is_checkpoint(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
}

fn wait_with_deadline(child: &mut Child, deadline: Duration) -> Option<std::process::ExitStatus> {
    let started = Instant::now();
    while started.elapsed() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
#[ignore = "runs mpirun; .ci/run runs it in release mode"]
fn a_killed_rank_ends_the_job_and_the_relaunch_resumes_to_the_same_bits() {
    let _one = ONE_JOB.lock().unwrap_or_else(|e| e.into_inner());
    let sets = ["train.grad_accum_steps=1"];
    let uninterrupted = training_project(TRAIN);
    succeed(&mut mpirun(&uninterrupted, 2, &sets));
    let expected = trained_weights(&uninterrupted);

    let project = training_project(TRAIN);
    let mut job = mpirun(&project, 2, &sets).spawn().unwrap();
    // Kill rank 1 once the first checkpoint is written, mid-run.
    let started = Instant::now();
    while checkpoints(&project).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        assert!(job.try_wait().unwrap().is_none(), "the job ended early");
        std::thread::sleep(Duration::from_millis(2));
    }
    let victim = rank_pid(job.id(), 1).expect("rank 1 is a child of mpirun");
    Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap();
    let killed_at = Instant::now();
    let status = wait_with_deadline(&mut job, Duration::from_secs(60));
    let ended_in = killed_at.elapsed();
    let Some(status) = status else {
        let _ = job.kill();
        panic!("the job still ran 60 s after rank 1 was killed");
    };
    let output = job.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!status.success(), "{said}");
    assert!(
        said.contains("rank 1"),
        "the message names the dead rank: {said}"
    );
    assert!(
        !said.contains("train        ran"),
        "the job was killed after training ended; make it longer: {said}"
    );
    eprintln!("the job ended {ended_in:?} after rank 1 was killed");

    refuses_another_world_size(&project, &sets);

    let resumed = succeed(&mut mpirun(&project, 2, &sets));
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(stderr.contains("resuming from step"), "{stderr}");
    assert!(
        trained_weights(&project) == expected,
        "the resumed job's weights differ from the uninterrupted job's"
    );
}
