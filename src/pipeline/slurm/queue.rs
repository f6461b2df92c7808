//! What Slurm says about jobs: `squeue` while it still holds them, `sacct` (its accounting
//! database) after they leave the queue. Where a cluster keeps no accounting, a job that left
//! the queue is [`JobState::Gone`] and the cache decides whether it built what it should have.

use std::collections::BTreeMap;
use std::fmt;
use std::process::Command;

use super::SlurmError;

/// A job, or one task of a job array (`42_3`), as Slurm names it.
pub type JobId = String;

/// Where a job is, in the words that matter to a sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Waiting for resources or for the job it depends on.
    Pending,
    Running,
    Completed,
    /// Ended without success; Slurm's word for it (FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY…).
    Ended(String),
    /// In neither the queue nor the accounting (a cluster without accounting, or long ago).
    Gone,
}

impl JobState {
    /// Whether the job may still build something: a new job for the same work would duplicate it.
    pub fn is_active(&self) -> bool {
        matches!(self, JobState::Pending | JobState::Running)
    }

    /// From a state name of squeue's `%T` or sacct's `State` (`CANCELLED by 0` included).
    fn from_slurm(word: &str) -> JobState {
        let word = word.split_whitespace().next().unwrap_or("");
        match word {
            "PENDING" | "CONFIGURING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED"
            | "RESV_DEL_HOLD" | "SUSPENDED" | "STOPPED" | "RESIZING" => JobState::Pending,
            "RUNNING" | "COMPLETING" | "SIGNALING" | "STAGE_OUT" => JobState::Running,
            "COMPLETED" => JobState::Completed,
            other => JobState::Ended(other.to_string()),
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobState::Pending => f.write_str("pending"),
            JobState::Running => f.write_str("running"),
            JobState::Completed => f.write_str("completed"),
            JobState::Ended(word) => f.write_str(word),
            JobState::Gone => f.write_str("no longer known to Slurm"),
        }
    }
}

/// The states of `jobs` (array tasks as `42_3`), asking `squeue` first and `sacct` for the rest.
pub fn query(jobs: &[JobId]) -> Result<BTreeMap<JobId, JobState>, SlurmError> {
    let mut states = BTreeMap::new();
    if jobs.is_empty() {
        return Ok(states);
    }
    // Both commands take the job ids of whole arrays and list their tasks.
    let mut ids: Vec<&str> = jobs
        .iter()
        .map(|job| job.split('_').next().unwrap_or(job))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let list = ids.join(",");
    let queue = Command::new("squeue")
        .args(["--noheader", "--array", "--format=%i|%T", "--jobs", &list])
        .output()
        .map_err(|source| SlurmError::Command {
            command: "squeue",
            source,
        })?;
    if queue.status.success() {
        states.extend(parse_listing(&String::from_utf8_lossy(&queue.stdout)));
    } else {
        let stderr = String::from_utf8_lossy(&queue.stderr);
        // squeue refuses a list whose jobs have all left the queue; sacct knows them.
        if !stderr.contains("Invalid job id") {
            return Err(SlurmError::Failed {
                command: "squeue",
                message: stderr
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty())
                    .unwrap_or("")
                    .to_string(),
            });
        }
    }
    let missing: Vec<&JobId> = jobs.iter().filter(|j| !states.contains_key(*j)).collect();
    if !missing.is_empty() {
        let accounting = Command::new("sacct")
            .args([
                "--noheader",
                "--allocations",
                "--parsable2",
                "--format=JobID,State",
                "--jobs",
                &list,
            ])
            .output();
        // No accounting on this cluster: the jobs are gone, and the cache says what they did.
        if let Ok(accounting) = accounting
            && accounting.status.success()
        {
            for (job, state) in parse_listing(&String::from_utf8_lossy(&accounting.stdout)) {
                states.entry(job).or_insert(state);
            }
        }
    }
    Ok(jobs
        .iter()
        .map(|job| {
            (
                job.clone(),
                states.get(job).cloned().unwrap_or(JobState::Gone),
            )
        })
        .collect())
}

/// `id|STATE` lines (squeue's `%i|%T`, sacct's `JobID,State` with `--parsable2`).
fn parse_listing(text: &str) -> BTreeMap<JobId, JobState> {
    text.lines()
        .filter_map(|line| {
            let (id, state) = line.trim().split_once('|')?;
            Some((id.to_string(), JobState::from_slurm(state)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_of_squeue_and_sacct_read_as_states() {
        let text =
            "41|COMPLETED\n42_0|RUNNING\n42_1|PENDING\n42_2|CANCELLED by 0\n42_3|TIMEOUT\n\n";
        let states = parse_listing(text);
        assert_eq!(states["41"], JobState::Completed);
        assert_eq!(states["42_0"], JobState::Running);
        assert_eq!(states["42_1"], JobState::Pending);
        assert_eq!(states["42_2"], JobState::Ended("CANCELLED".into()));
        assert_eq!(states["42_3"], JobState::Ended("TIMEOUT".into()));
        assert!(states["42_1"].is_active() && !states["42_2"].is_active());
        assert_eq!(states.len(), 5);
    }
}
