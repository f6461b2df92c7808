//! Training checkpoints: everything an interrupted run needs to continue with the same bits.
//!
//! A checkpoint is a folder `step-00000400/` (after 400 optimizer steps) holding the weights
//! (`model.safetensors`, Hugging Face names, with `config.json`), the optimizer's state (AdamW
//! moments, Muon momentum: `optimizer.safetensors`), the [`TrainingState`] (`state.json`: step,
//! loader position, counters) and the metrics so far (`metrics.jsonl`). It is written into a hidden temporary
//! folder and renamed into place once complete, and its `checkpoint.json` lists every file's size
//! and blake3 hash, so a folder damaged later (a truncated file, a disk error) is recognised on
//! resume instead of being loaded as garbage.

use std::fs;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::loader::LoaderState;
use crate::fsutil;

pub const MODEL_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "state.json";
pub const METRICS_FILE: &str = "metrics.jsonl";
const INDEX_FILE: &str = "checkpoint.json";
const PREFIX: &str = "step-";

/// The best validation result so far.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BestEval {
    pub step: u64,
    pub val_loss: f64,
    pub val_bpb: f64,
}

/// Where training stands after `step` optimizer steps, besides the weights and moments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingState {
    /// Optimizer steps taken.
    pub step: u64,
    /// The data loader's position: the order of windows is a pure function of the seed and the
    /// epoch, so this position restores the data stream exactly.
    pub loader: LoaderState,
    pub tokens_seen: u64,
    /// Wall time spent training so far, over every resumed process.
    pub elapsed_secs: f64,
    pub best: Option<BestEval>,
    /// Sum and count of the training losses since the last log line.
    pub loss_since_log: (f64, u64),
    /// Worker threads of the process that wrote it: the same count reproduces the same bits.
    pub threads: usize,
    /// Ranks of the data-parallel job that wrote it (1 before jobs of several ranks existed).
    #[serde(default = "one_rank")]
    pub world_size: usize,
}

fn one_rank() -> usize {
    1
}

/// One file of a checkpoint, as `checkpoint.json` records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct IndexedFile {
    name: String,
    bytes: u64,
    blake3: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Index {
    step: u64,
    files: Vec<IndexedFile>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Bad { path: PathBuf, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A checkpoint folder being written; [`Checkpoints::commit`] makes it visible.
pub struct Staging {
    pub dir: PathBuf,
    step: u64,
}

/// A complete, verified checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub step: u64,
    pub dir: PathBuf,
}

/// What [`Checkpoints::latest`] found.
#[derive(Debug, Default)]
pub struct Found {
    pub latest: Option<Checkpoint>,
    /// A line for each newer checkpoint that failed verification and was removed.
    pub damaged: Vec<String>,
}

/// The checkpoints folder of one training run.
pub struct Checkpoints {
    root: PathBuf,
}

impl Checkpoints {
    pub fn new(root: &Path) -> Checkpoints {
        Checkpoints {
            root: root.to_path_buf(),
        }
    }

    pub fn dir_of(&self, step: u64) -> PathBuf {
        self.root.join(format!("{PREFIX}{step:08}"))
    }

    /// A fresh hidden folder to write the checkpoint of `step` into.
    pub fn begin(&self, step: u64) -> Result<Staging, CheckpointError> {
        let dir = self.root.join(format!(
            ".{PREFIX}{step:08}.tmp-{}",
            fsutil::unique_suffix()
        ));
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(Staging { dir, step })
    }

    /// Indexes the staged files and renames the folder into place.
    pub fn commit(&self, staging: Staging) -> Result<Checkpoint, CheckpointError> {
        let mut files = Vec::new();
        for relative in fsutil::list_files(&staging.dir).map_err(io_err(&staging.dir))? {
            let path = staging.dir.join(&relative);
            let (bytes, blake3) = fsutil::blake3_file(&path).map_err(io_err(&path))?;
            let name = relative.to_string_lossy().into_owned();
            files.push(IndexedFile {
                name,
                bytes,
                blake3,
            });
        }
        let index = Index {
            step: staging.step,
            files,
        };
        let index_path = staging.dir.join(INDEX_FILE);
        let text = serde_json::to_vec_pretty(&index).expect("the index serializes");
        fsutil::write_atomic(&index_path, &text).map_err(io_err(&index_path))?;
        let dir = self.dir_of(staging.step);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
        fs::rename(&staging.dir, &dir).map_err(io_err(&dir))?;
        fsutil::sync_dir(&self.root).map_err(io_err(&self.root))?;
        Ok(Checkpoint {
            step: staging.step,
            dir,
        })
    }

    /// Committed checkpoint folders, newest first (not verified).
    fn committed(&self) -> Result<Vec<Checkpoint>, CheckpointError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.root)(e)),
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(&self.root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(step) = name
                .strip_prefix(PREFIX)
                .and_then(|n| n.parse::<u64>().ok())
            {
                found.push(Checkpoint {
                    step,
                    dir: entry.path(),
                });
            }
        }
        found.sort_by_key(|c| std::cmp::Reverse(c.step));
        Ok(found)
    }

    /// The newest checkpoint that verifies. Newer ones that do not are removed and reported, so
    /// the run continues from the last good one; hidden half-written folders of a killed
    /// process are removed too.
    pub fn latest(&self) -> Result<Found, CheckpointError> {
        self.remove_staging()?;
        let mut found = Found::default();
        for checkpoint in self.committed()? {
            match verify(&checkpoint.dir) {
                Ok(()) => {
                    found.latest = Some(checkpoint);
                    break;
                }
                Err(reason) => {
                    found.damaged.push(format!(
                        "checkpoint {} is damaged ({}); it was removed",
                        checkpoint.dir.display(),
                        fsutil::one_line(&reason)
                    ));
                    self.discard(&checkpoint)?;
                }
            }
        }
        Ok(found)
    }

    /// The checkpoint of `step`, verified, without changing the folder: how the other ranks of
    /// a job open the checkpoint rank 0 chose with [`Checkpoints::latest`].
    pub fn verified(&self, step: u64) -> Result<Checkpoint, CheckpointError> {
        let dir = self.dir_of(step);
        verify(&dir).map_err(|reason| CheckpointError::Bad {
            path: dir.clone(),
            reason: fsutil::one_line(&reason),
        })?;
        Ok(Checkpoint { step, dir })
    }

    fn remove_staging(&self) -> Result<(), CheckpointError> {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!(".{PREFIX}")) && name.contains(".tmp-") {
                let path = entry.path();
                fs::remove_dir_all(&path).map_err(io_err(&path))?;
            }
        }
        Ok(())
    }

    /// Keeps the newest `keep_last` (at least one) checkpoints and the one of step `keep_also`.
    /// A checkpoint is renamed out of sight before it is deleted, so a process killed while
    /// deleting leaves a hidden folder that the next run sweeps away, never a partial `step-…`.
    pub fn prune(&self, keep_last: usize, keep_also: Option<u64>) -> Result<(), CheckpointError> {
        for (rank, checkpoint) in self.committed()?.into_iter().enumerate() {
            if rank >= keep_last.max(1) && Some(checkpoint.step) != keep_also {
                self.discard(&checkpoint)?;
            }
        }
        Ok(())
    }

    /// Renames a checkpoint to a hidden staging name, then deletes it.
    fn discard(&self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        let hidden = self.root.join(format!(
            ".{PREFIX}{:08}.tmp-removing-{}",
            checkpoint.step,
            fsutil::unique_suffix()
        ));
        fs::rename(&checkpoint.dir, &hidden).map_err(io_err(&checkpoint.dir))?;
        fs::remove_dir_all(&hidden).map_err(io_err(&hidden))
    }
}

/// Reads the [`TrainingState`] of a verified checkpoint, which must be that of its step.
pub fn read_state(checkpoint: &Checkpoint) -> Result<TrainingState, CheckpointError> {
    let path = checkpoint.dir.join(STATE_FILE);
    let text = fs::read(&path).map_err(io_err(&path))?;
    let bad = |reason: String| CheckpointError::Bad {
        path: path.clone(),
        reason: fsutil::one_line(&reason),
    };
    let state: TrainingState = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    if state.step != checkpoint.step {
        return Err(bad(format!(
            "says step {}, but the checkpoint is of step {}",
            state.step, checkpoint.step
        )));
    }
    Ok(state)
}

/// Checks every file a checkpoint's index lists against its size and hash. A listed name must
/// be a regular file inside the folder (the index is data, not a licence to read elsewhere), and
/// its size is compared before its content is read.
pub fn verify(dir: &Path) -> Result<(), String> {
    let index_path = dir.join(INDEX_FILE);
    let text = fs::read(&index_path).map_err(|e| format!("{INDEX_FILE}: {e}"))?;
    let index: Index =
        serde_json::from_slice(&text).map_err(|e| format!("{INDEX_FILE} is unreadable: {e}"))?;
    for file in &index.files {
        let inside = !file.name.is_empty()
            && Path::new(&file.name)
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !inside {
            return Err(format!(
                "{INDEX_FILE} lists {:?}, which is not a path inside the checkpoint",
                file.name
            ));
        }
        let path = dir.join(&file.name);
        let meta = fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", file.name))?;
        if !meta.is_file() {
            return Err(format!("{} is not a regular file", file.name));
        }
        if meta.len() != file.bytes {
            return Err(format!(
                "{} is {} bytes, {INDEX_FILE} says {}",
                file.name,
                meta.len(),
                file.bytes
            ));
        }
        let (bytes, hash) =
            fsutil::blake3_file(&path).map_err(|e| format!("{}: {e}", file.name))?;
        if bytes != file.bytes {
            return Err(format!(
                "{} is {bytes} bytes, {INDEX_FILE} says {}",
                file.name, file.bytes
            ));
        }
        if hash != file.blake3 {
            return Err(format!("{}'s content does not match its hash", file.name));
        }
    }
    for required in [MODEL_FILE, OPTIMIZER_FILE, STATE_FILE] {
        if !index.files.iter().any(|f| f.name == required) {
            return Err(format!("{required} is missing"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_checkpoint(checkpoints: &Checkpoints, step: u64) -> Checkpoint {
        let staging = checkpoints.begin(step).unwrap();
        for name in [MODEL_FILE, OPTIMIZER_FILE, STATE_FILE] {
            fs::write(
                staging.dir.join(name),
                format!("{name} at {step}").repeat(50),
            )
            .unwrap();
        }
        checkpoints.commit(staging).unwrap()
    }

    #[test]
    fn a_truncated_file_is_found_and_the_previous_checkpoint_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoints = Checkpoints::new(dir.path());
        write_checkpoint(&checkpoints, 10);
        let newest = write_checkpoint(&checkpoints, 20);
        assert_eq!(checkpoints.latest().unwrap().latest, Some(newest.clone()));

        let model = newest.dir.join(MODEL_FILE);
        let bytes = fs::read(&model).unwrap();
        fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
        let found = checkpoints.latest().unwrap();
        assert_eq!(found.latest.unwrap().step, 10);
        assert_eq!(found.damaged.len(), 1);
        assert!(
            found.damaged[0].contains("model.safetensors is"),
            "{:?}",
            found.damaged
        );
        assert!(!newest.dir.exists());
    }

    #[test]
    fn same_size_corruption_and_missing_files_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoints = Checkpoints::new(dir.path());
        let checkpoint = write_checkpoint(&checkpoints, 5);
        let state = checkpoint.dir.join(STATE_FILE);
        let mut bytes = fs::read(&state).unwrap();
        bytes[3] ^= 1;
        fs::write(&state, &bytes).unwrap();
        assert!(
            verify(&checkpoint.dir)
                .unwrap_err()
                .contains("does not match")
        );
        fs::remove_file(&state).unwrap();
        assert!(verify(&checkpoint.dir).unwrap_err().contains(STATE_FILE));
    }

    #[test]
    fn half_written_folders_are_never_taken_and_are_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoints = Checkpoints::new(dir.path());
        write_checkpoint(&checkpoints, 1);
        let staging = checkpoints.begin(2).unwrap();
        fs::write(staging.dir.join(MODEL_FILE), b"partial").unwrap();
        // The process dies here: nothing renamed the folder.
        let found = checkpoints.latest().unwrap();
        assert_eq!(found.latest.unwrap().step, 1);
        assert!(!staging.dir.exists());
    }

    #[test]
    fn pruning_keeps_the_newest_and_the_best() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoints = Checkpoints::new(dir.path());
        for step in [1, 2, 3, 4, 5] {
            write_checkpoint(&checkpoints, step);
        }
        checkpoints.prune(2, Some(2)).unwrap();
        let left: Vec<u64> = checkpoints
            .committed()
            .unwrap()
            .iter()
            .map(|c| c.step)
            .collect();
        assert_eq!(left, vec![5, 4, 2]);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            3,
            "nothing hidden left"
        );
    }
}
