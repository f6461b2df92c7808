//! Which Slurm job was handed which artifact: `<cache>/jobs/<stage>-<key>.json`, written when
//! the job is submitted. They live in the cache because that is what every submitter shares: a
//! second `tinyllm run` of the same sweep (or of another spec that makes the same artifact) finds
//! the job that is already building it instead of submitting a duplicate.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::queue::JobId;
use crate::fsutil;
use crate::pipeline::cache::{Cache, now_unix};
use crate::pipeline::dag::StageId;

/// One artifact's job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The job (`41`) or array task (`42_3`) that builds the artifact.
    pub job: JobId,
    /// The job's script and the folder of its output.
    pub script: PathBuf,
    pub submitted_unix: u64,
}

/// The claims folder of a cache.
#[derive(Debug, Clone)]
pub struct Claims {
    dir: PathBuf,
}

impl Claims {
    pub fn new(cache: &Cache) -> Claims {
        Claims {
            dir: cache.root().join("jobs"),
        }
    }

    fn path(&self, stage: StageId, key: &str) -> PathBuf {
        self.dir.join(format!(
            "{}-{}.json",
            stage.name(),
            Cache::key_dir_name(key)
        ))
    }

    /// The job last handed this artifact, if any (an unreadable claim counts as none: the
    /// worst it causes is a second job, which the cache's lock keeps from building twice).
    pub fn get(&self, stage: StageId, key: &str) -> Option<Claim> {
        let text = std::fs::read_to_string(self.path(stage, key)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Records that `job` builds the artifact.
    pub fn put(&self, stage: StageId, key: &str, job: &str, script: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let claim = Claim {
            job: job.to_string(),
            script: script.to_path_buf(),
            submitted_unix: now_unix(),
        };
        let text = serde_json::to_vec_pretty(&claim).expect("a claim serializes to JSON");
        fsutil::write_atomic(&self.path(stage, key), &text)
    }
}
