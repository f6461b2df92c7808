//! The Slurm executor: a sweep's stages as Slurm jobs that share one cache.
//!
//! The local executor ([`crate::pipeline::runner`]) builds the stages in this process. This one
//! hands them to the scheduler the user already has, and writes no scheduler of its own:
//!
//! - the stages that several variants share (download, the tokenizer, the token shards) are one
//!   job, built once;
//! - each variant's own stages (train, sample) are one task of a job array that starts after the
//!   shared job has succeeded (`--dependency=afterok`), and is cancelled if it fails;
//! - every job runs the user's own `tinyllm run` narrowed to its part (`--shared-only`,
//!   `--variant NAME`), so a job does exactly what a local run would, with the same cache keys,
//!   locks and resumable checkpoints.
//!
//! Which job builds which artifact is recorded in the cache ([`claims`]): a second submission
//! skips what is cached or still queued or running, and resubmits what failed or was cancelled
//! (its training resumes from its checkpoint, as a local run's does).

mod claims;
mod queue;
mod script;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub use claims::{Claim, Claims};
pub use queue::{JobId, JobState};
pub use script::JobCommand;

use super::cache::{Cache, Lookup, Verify};
use super::dag::StageId;
use super::overlay::LoadedSpec;
use super::runner::{self, PlanState, RunError, RunOptions, VariantPlan};

#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    #[error(
        "--executor slurm needs Slurm's `{command}` on PATH, and this machine has none: run tinyllm on a login node of the cluster, or leave out --executor slurm"
    )]
    Missing { command: &'static str },
    #[error("cannot run {command}: {source}")]
    Command {
        command: &'static str,
        source: io::Error,
    },
    #[error("{command} failed: {message}")]
    Failed {
        command: &'static str,
        message: String,
    },
    #[error(
        "the {what} {} is on a node-local file system ({why}), which the other nodes of a cluster do not see; put it on a shared one ({flag}), or pass --allow-node-local-cache (slurm.allow_node_local_cache = true) on a single-node cluster",
        path.display()
    )]
    NodeLocal {
        what: &'static str,
        path: PathBuf,
        why: String,
        flag: &'static str,
    },
    #[error(
        "slurm.ntasks = {0} trains data-parallel over the tasks of each job, which needs a build of tinyllm with --features mpi"
    )]
    NeedsMpi(u32),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot print: {0}")]
    Output(#[from] io::Error),
    #[error(
        "{failed} of {total} variants did not finish ({list}); their jobs' output is in {}; the same command submits them again",
        dir.display()
    )]
    VariantsFailed {
        failed: usize,
        total: usize,
        list: String,
        dir: PathBuf,
    },
}

/// What the user asked of the Slurm executor.
#[derive(Debug, Clone)]
pub struct SlurmRequest {
    pub command: JobCommand,
    /// The command line that submitted, for the scripts' headers.
    pub submitted_by: String,
    /// sbatch options of every job (the spec's `slurm.options`, then `--slurm`).
    pub options: Vec<String>,
    pub ntasks: u32,
    /// srun's options for a job of several tasks (the spec's `slurm.srun_options`).
    pub srun_options: Vec<String>,
    pub allow_node_local: bool,
    /// Follow the jobs until they end, then write the sweep's table and report.
    pub wait: bool,
    /// How often `wait` asks Slurm.
    pub poll: Duration,
}

/// Where one variant of a sweep stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VariantState {
    Cached,
    Queued(JobId),
    Running(JobId),
    /// Its job ended and the cache does not hold its artifacts; Slurm's word for why.
    Failed(JobId, String),
    /// Submitted, but this machine has no `squeue` to ask about the job.
    Unknown(JobId),
    NotBuilt,
}

impl std::fmt::Display for VariantState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VariantState::Cached => f.write_str("cached"),
            VariantState::Queued(job) => write!(f, "queued (job {job})"),
            VariantState::Running(job) => write!(f, "running (job {job})"),
            VariantState::Failed(job, why) => write!(f, "failed (job {job}: {why})"),
            VariantState::Unknown(job) => {
                write!(
                    f,
                    "not cached; submitted as job {job} (no squeue here to ask about it)"
                )
            }
            VariantState::NotBuilt => f.write_str("not built"),
        }
    }
}

/// Submits the jobs that build what the cache lacks and no job is building yet; with
/// `request.wait`, follows them to the end and writes the sweep's table.
pub fn submit(
    loaded: &LoadedSpec,
    opts: &RunOptions,
    request: &SlurmRequest,
    out: &mut dyn Write,
) -> Result<(), SlurmError> {
    // Everything that can refuse does so before anything is submitted.
    for command in ["sbatch", "squeue"] {
        if !on_path(command) {
            return Err(SlurmError::Missing { command });
        }
    }
    if request.ntasks > 1 && !cfg!(feature = "mpi") {
        return Err(SlurmError::NeedsMpi(request.ntasks));
    }
    if !request.allow_node_local {
        check_shared(opts, &request.command.exe)?;
    }
    runner::check_folders(loaded, opts)?;
    let cache = Cache::new(&opts.cache_dir);
    let plans = runner::plan(loaded, opts);
    let shared_counts = runner::shared_stage_counts(&plans);
    let claims = Claims::new(&cache);
    let missing = |planned: &&runner::PlannedStage| !matches!(planned.state, PlanState::Cached(_));
    let claimed: BTreeMap<(StageId, String), Claim> = plans
        .iter()
        .flat_map(|p| p.stages.iter().filter(missing))
        .filter_map(|s| Some(((s.stage, s.key.clone()), claims.get(s.stage, &s.key)?)))
        .collect();
    let jobs: Vec<JobId> = claimed.values().map(|c| c.job.clone()).collect();
    let states = queue::query(&jobs)?;
    let active = |stage: StageId, key: &str| {
        claimed
            .get(&(stage, key.to_string()))
            .filter(|c| states.get(&c.job).is_some_and(JobState::is_active))
            .map(|c| c.job.clone())
    };

    let mut shared_build: BTreeSet<(StageId, String)> = BTreeSet::new();
    let mut shared_waits: BTreeSet<JobId> = BTreeSet::new();
    let mut variant_indices = Vec::new();
    let mut already = Vec::new();
    let mut own_stages: BTreeSet<StageId> = BTreeSet::new();
    for (index, plan) in plans.iter().enumerate() {
        let split = shared_counts[&plan.variant.name];
        for planned in plan.stages[..split].iter().filter(missing) {
            match active(planned.stage, &planned.key) {
                Some(job) => {
                    shared_waits.insert(job);
                }
                None => {
                    shared_build.insert((planned.stage, planned.key.clone()));
                }
            }
        }
        let own: Vec<&runner::PlannedStage> = plan.stages[split..].iter().filter(missing).collect();
        if own.is_empty() {
            continue;
        }
        if let Some(job) = own.iter().find_map(|s| active(s.stage, &s.key)) {
            already.push(format!("{} (job {job})", plan.variant.name));
            continue;
        }
        own_stages.extend(own.iter().map(|s| s.stage));
        variant_indices.push(index);
    }

    let pipeline = loaded.variants[0].spec.pipeline.name.clone();
    if !already.is_empty() {
        writeln!(out, "already queued or running: {}", already.join(", "))?;
    }
    if shared_build.is_empty() && variant_indices.is_empty() {
        let cached = plans
            .iter()
            .filter(|p| p.stages.iter().all(|s| !missing(&s)))
            .count();
        let others = if cached < plans.len() {
            ", the others queued or running"
        } else {
            ""
        };
        writeln!(
            out,
            "nothing to submit: {cached} of {} variants cached{others}",
            plans.len()
        )?;
        if request.wait && !opts.dry_run {
            return follow(loaded, opts, request, &plans, out);
        }
        return Ok(());
    }

    let submissions = runner::resolve(&opts.runs_dir)
        .join(&pipeline)
        .join("slurm");
    let dir = if opts.dry_run {
        submissions.join("next")
    } else {
        new_submission_dir(&submissions)?
    };
    let verb = if opts.dry_run {
        "would submit"
    } else {
        "submitted"
    };
    let cx = script::ScriptContext {
        pipeline: &pipeline,
        submitted_by: &request.submitted_by,
        options: &request.options,
        ntasks: request.ntasks,
        srun_options: &request.srun_options,
        dir: &dir,
        command: &request.command,
    };
    let mut after: Vec<JobId> = shared_waits.into_iter().collect();
    if !shared_build.is_empty() {
        let stages: BTreeSet<StageId> = shared_build.iter().map(|(s, _)| *s).collect();
        let stages: Vec<StageId> = stages.into_iter().collect();
        let text = script::shared_job(&cx, &stages);
        let path = dir.join("shared.sbatch");
        let job = if opts.dry_run {
            print_script(out, &path, &text)?;
            "<shared job>".to_string()
        } else {
            let job = sbatch(&path, &text)?;
            for (stage, key) in &shared_build {
                claims
                    .put(*stage, key, &job, &path)
                    .map_err(write_err(&cache.root().join("jobs")))?;
            }
            job
        };
        writeln!(
            out,
            "{verb} job {job}: the shared stages ({})",
            stage_names(&stages)
        )?;
        after.push(job);
    }
    if !variant_indices.is_empty() {
        let names: Vec<String> = plans.iter().map(|p| p.variant.name.clone()).collect();
        let keys: Vec<String> = plans
            .iter()
            .map(|p| p.stages.last().map_or(String::new(), |s| s.key.clone()))
            .collect();
        let stages: Vec<StageId> = own_stages.into_iter().collect();
        let text = script::variants_job(&cx, &names, &keys, &variant_indices, &after, &stages);
        let path = dir.join("variants.sbatch");
        let job = if opts.dry_run {
            print_script(out, &path, &text)?;
            "<variants>".to_string()
        } else {
            let job = sbatch(&path, &text)?;
            for &index in &variant_indices {
                let plan = &plans[index];
                let task = format!("{job}_{index}");
                for planned in plan.stages[shared_counts[&plan.variant.name]..]
                    .iter()
                    .filter(missing)
                {
                    claims
                        .put(planned.stage, &planned.key, &task, &path)
                        .map_err(write_err(&cache.root().join("jobs")))?;
                }
            }
            job
        };
        let listed: Vec<&str> = variant_indices
            .iter()
            .map(|&i| plans[i].variant.name.as_str())
            .collect();
        writeln!(
            out,
            "{verb} job array {job}: {} of {} variants ({}), {}",
            variant_indices.len(),
            plans.len(),
            stage_names(&stages),
            listed.join(", ")
        )?;
    }
    if opts.dry_run {
        return Ok(());
    }
    writeln!(out, "scripts and job output: {}", dir.display())?;
    if request.wait {
        follow(loaded, opts, request, &plans, out)
    } else {
        writeln!(
            out,
            "follow them with `tinyllm status` on the same spec (or submit with --wait); `tinyllm report` writes the table of what has finished"
        )?;
        Ok(())
    }
}

/// Polls until no variant is queued or running, printing each change; then prints and writes
/// the sweep's table, and fails naming the variants that did not finish.
fn follow(
    loaded: &LoadedSpec,
    opts: &RunOptions,
    request: &SlurmRequest,
    plans: &[VariantPlan],
    out: &mut dyn Write,
) -> Result<(), SlurmError> {
    let cache = Cache::new(&opts.cache_dir);
    let mut plans = plans.to_vec();
    let mut shown: Vec<Option<VariantState>> = vec![None; plans.len()];
    let width = plans
        .iter()
        .map(|p| p.variant.name.len())
        .max()
        .unwrap_or(0);
    loop {
        refresh(&mut plans, &cache);
        let states = variant_states(&plans, &cache)?;
        for ((plan, state), seen) in plans.iter().zip(&states).zip(&mut shown) {
            if seen.as_ref() != Some(state) {
                writeln!(out, "  {:<width$}  {state}", plan.variant.name)?;
                out.flush()?;
                *seen = Some(state.clone());
            }
        }
        let busy = states
            .iter()
            .any(|s| matches!(s, VariantState::Queued(_) | VariantState::Running(_)));
        if !busy {
            let results = runner::cached_results(&plans);
            if loaded.variants.len() > 1 {
                runner::write_sweep(loaded, &results, opts, out)?;
            }
            let failed: Vec<String> = plans
                .iter()
                .zip(&states)
                .filter(|(_, s)| **s != VariantState::Cached)
                .map(|(p, s)| format!("{}: {s}", p.variant.name))
                .collect();
            if failed.is_empty() {
                return Ok(());
            }
            return Err(SlurmError::VariantsFailed {
                failed: failed.len(),
                total: plans.len(),
                list: failed.join("; "),
                dir: opts
                    .runs_dir
                    .join(&plans[0].variant.spec.pipeline.name)
                    .join("slurm"),
            });
        }
        std::thread::sleep(request.poll);
    }
}

/// Looks up again each stage the plan found missing (another node may have built it since).
pub fn refresh(plans: &mut [VariantPlan], cache: &Cache) {
    for plan in plans {
        for planned in &mut plan.stages {
            if !matches!(planned.state, PlanState::Cached(_))
                && let Lookup::Hit(artifact) =
                    cache.lookup(planned.stage, &planned.key, Verify::Sizes)
            {
                planned.state = PlanState::Cached(artifact);
            }
        }
    }
}

/// Where each variant stands: cached, or what the job building its first missing stage is doing.
pub fn variant_states(
    plans: &[VariantPlan],
    cache: &Cache,
) -> Result<Vec<VariantState>, SlurmError> {
    let claims = Claims::new(cache);
    let missing: Vec<Vec<(StageId, Option<Claim>)>> = plans
        .iter()
        .map(|plan| {
            plan.stages
                .iter()
                .filter(|s| !matches!(s.state, PlanState::Cached(_)))
                .map(|s| (s.stage, claims.get(s.stage, &s.key)))
                .collect()
        })
        .collect();
    let jobs: BTreeSet<JobId> = missing
        .iter()
        .flatten()
        .filter_map(|(_, c)| c.as_ref().map(|c| c.job.clone()))
        .collect();
    // A cache on a shared disk may be looked at from a machine outside the cluster.
    let ask = !jobs.is_empty() && on_path("squeue");
    let states = if ask {
        queue::query(&jobs.into_iter().collect::<Vec<_>>())?
    } else {
        BTreeMap::new()
    };
    Ok(missing
        .iter()
        .map(|stages| {
            if stages.is_empty() {
                return VariantState::Cached;
            }
            let claimed = stages.iter().filter_map(|(_, c)| c.as_ref());
            if !ask && let Some(claim) = claimed.clone().next() {
                return VariantState::Unknown(claim.job.clone());
            }
            for claim in claimed.clone() {
                match states.get(&claim.job) {
                    Some(JobState::Running) => return VariantState::Running(claim.job.clone()),
                    Some(JobState::Pending) => return VariantState::Queued(claim.job.clone()),
                    _ => {}
                }
            }
            // The job that failed explains more than the ones Slurm cancelled after it.
            let failed = claimed
                .clone()
                .find(|c| matches!(states.get(&c.job), Some(JobState::Ended(_))));
            match failed.or(claimed.clone().next()) {
                Some(claim) => {
                    let why = match states.get(&claim.job) {
                        Some(JobState::Completed) => "it completed without the artifact".into(),
                        Some(JobState::Gone) | None => "it ended".into(),
                        Some(state) => state.to_string(),
                    };
                    VariantState::Failed(claim.job.clone(), why)
                }
                None => VariantState::NotBuilt,
            }
        })
        .collect())
}

/// Whether an executable of that name is in a folder of PATH.
fn on_path(command: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            let path = dir.join(command);
            path.is_file()
                && std::fs::metadata(&path).is_ok_and(|m| {
                    use std::os::unix::fs::PermissionsExt;
                    m.permissions().mode() & 0o111 != 0
                })
        })
    })
}

/// Refuses a cache, run folder or binary that only this node sees.
fn check_shared(opts: &RunOptions, exe: &Path) -> Result<(), SlurmError> {
    for (what, path, flag) in [
        (
            "cache",
            &opts.cache_dir,
            "--cache DIR or pipeline.cache_dir",
        ),
        (
            "run folder",
            &opts.runs_dir,
            "--runs DIR or pipeline.runs_dir",
        ),
        (
            "tinyllm binary",
            &exe.to_path_buf(),
            "install it on a shared folder",
        ),
    ] {
        let resolved = runner::resolve(path);
        if let Some(why) = node_local(&resolved) {
            return Err(SlurmError::NodeLocal {
                what,
                path: resolved,
                why,
                flag,
            });
        }
    }
    Ok(())
}

/// Why `path` (absolute, resolved) is on a file system of this node alone, if it is: a folder
/// that is node-local by convention, or a memory-backed mount.
pub fn node_local(path: &Path) -> Option<String> {
    for folder in ["/tmp", "/var/tmp", "/dev/shm", "/run"] {
        if path.starts_with(folder) {
            return Some(format!("under {folder}"));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let (mount, kind) = mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _device = fields.next()?;
            let mount = fields.next()?.replace("\\040", " ");
            let kind = fields.next()?;
            Some((PathBuf::from(mount), kind.to_string()))
        })
        .filter(|(mount, _)| path.starts_with(mount))
        .max_by_key(|(mount, _)| mount.components().count())?;
    matches!(kind.as_str(), "tmpfs" | "ramfs" | "devtmpfs")
        .then(|| format!("{kind} at {}", mount.display()))
}

/// `runs/<pipeline>/slurm/<n>/`, the next free number.
fn new_submission_dir(parent: &Path) -> Result<PathBuf, SlurmError> {
    std::fs::create_dir_all(parent).map_err(write_err(parent))?;
    let next = std::fs::read_dir(parent)
        .map_err(write_err(parent))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .map_or(1, |n| n + 1);
    for n in next.. {
        let dir = parent.join(n.to_string());
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(write_err(&dir)(e)),
        }
    }
    unreachable!("some number is free")
}

/// Writes the script and submits it; returns the job id.
fn sbatch(path: &Path, text: &str) -> Result<JobId, SlurmError> {
    crate::fsutil::write_atomic(path, text.as_bytes()).map_err(write_err(path))?;
    let output = Command::new("sbatch")
        .arg("--parsable")
        .arg(path)
        .output()
        .map_err(|source| SlurmError::Command {
            command: "sbatch",
            source,
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    // `--parsable` prints `<id>` or `<id>;<cluster>`.
    let job = stdout.trim().split(';').next().unwrap_or("").to_string();
    if !output.status.success() || job.is_empty() || !job.bytes().all(|b| b.is_ascii_digit()) {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(SlurmError::Failed {
            command: "sbatch",
            message: format!(
                "{} (script {})",
                first_line(if stderr.trim().is_empty() {
                    &stdout
                } else {
                    &stderr
                }),
                path.display()
            ),
        });
    }
    Ok(job)
}

/// A command's first non-empty line of output (sbatch follows its error with usage hints).
fn first_line(text: &str) -> &str {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
}

fn print_script(out: &mut dyn Write, path: &Path, text: &str) -> io::Result<()> {
    writeln!(out, "would write {} and submit it:", path.display())?;
    for line in text.lines() {
        writeln!(out, "  {line}")?;
    }
    Ok(())
}

fn stage_names(stages: &[StageId]) -> String {
    let names: Vec<&str> = stages.iter().map(|s| s.name()).collect();
    names.join(", ")
}

fn write_err(path: &Path) -> impl FnOnce(io::Error) -> SlurmError + '_ {
    move |source| SlurmError::Write {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_and_scratch_folders_are_node_local() {
        assert!(node_local(Path::new("/tmp/cache")).is_some());
        assert!(node_local(Path::new("/dev/shm/x")).is_some());
        assert!(node_local(Path::new("/var/tmp")).is_some());
    }
}
