//! The training log: one JSON object per line (`metrics.jsonl`), for people, plots and scripts.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil;

pub const METRICS_JSONL: &str = "metrics.jsonl";

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MetricRecord {
    /// Training figures, averaged over the steps since the previous train line.
    Train {
        step: u64,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        tokens: u64,
        tokens_per_sec: f64,
        elapsed_secs: f64,
    },
    /// A pass over the validation windows.
    Eval {
        step: u64,
        tokens: u64,
        /// Mean cross-entropy in nats per token.
        val_loss: f64,
        /// The same loss in bits per byte of validation text, comparable across tokenizers.
        val_bpb: f64,
    },
}

impl MetricRecord {
    pub fn step(&self) -> u64 {
        match self {
            MetricRecord::Train { step, .. } | MetricRecord::Eval { step, .. } => *step,
        }
    }
}

/// The log of one training run: kept in memory (checkpoints carry it) and appended to a live
/// file that `tail -f` can follow.
pub struct MetricsLog {
    pub records: Vec<MetricRecord>,
    live: Option<(PathBuf, File)>,
}

impl MetricsLog {
    /// Starts the log with `records` (those of a resumed checkpoint), rewriting the live file
    /// `path` to hold exactly them.
    pub fn start(records: Vec<MetricRecord>, path: Option<&Path>) -> std::io::Result<MetricsLog> {
        let live = match path {
            Some(path) => {
                fsutil::write_atomic(path, to_jsonl(&records).as_bytes())?;
                let file = OpenOptions::new().append(true).open(path)?;
                Some((path.to_path_buf(), file))
            }
            None => None,
        };
        Ok(MetricsLog { records, live })
    }

    pub fn push(&mut self, record: MetricRecord) -> std::io::Result<()> {
        if let Some((_, file)) = &mut self.live {
            let mut line = serde_json::to_string(&record).expect("a record serializes");
            line.push('\n');
            file.write_all(line.as_bytes())?;
        }
        self.records.push(record);
        Ok(())
    }

    pub fn jsonl(&self) -> String {
        to_jsonl(&self.records)
    }
}

pub fn to_jsonl(records: &[MetricRecord]) -> String {
    records
        .iter()
        .map(|r| serde_json::to_string(r).expect("a record serializes") + "\n")
        .collect()
}

/// Reads a `metrics.jsonl` file.
pub fn read_jsonl(path: &Path) -> std::io::Result<Vec<MetricRecord>> {
    let file = File::open(path)?;
    let mut records = Vec::new();
    for (number, line) in BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(&line).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}:{}: {e}", path.display(), number + 1),
            )
        })?;
        records.push(record);
    }
    Ok(records)
}

/// The median of some timings: what the trainer and the benchmarks report of a step, robust to
/// a noisy machine's pauses (NaN for none).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_file_restarts_from_the_checkpoint_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let eval = MetricRecord::Eval {
            step: 10,
            tokens: 100,
            val_loss: 2.5,
            val_bpb: 0.9,
        };
        std::fs::write(&path, "stale lines of a killed run\n").unwrap();
        let mut log = MetricsLog::start(vec![eval.clone()], Some(&path)).unwrap();
        let train = MetricRecord::Train {
            step: 11,
            loss: 2.4,
            lr: 1e-3,
            grad_norm: 0.5,
            tokens: 110,
            tokens_per_sec: 50.0,
            elapsed_secs: 2.2,
        };
        log.push(train.clone()).unwrap();
        assert_eq!(read_jsonl(&path).unwrap(), vec![eval, train]);
        assert_eq!(log.jsonl(), std::fs::read_to_string(&path).unwrap());
        assert!(log.jsonl().starts_with("{\"kind\":\"eval\",\"step\":10"));
    }
}
