//! The human-facing summaries of a run folder: `report.md` for each variant (its stages, its
//! validation figures and loss plot) and, for a sweep, the comparison table (printed, and
//! written as `sweep.csv`) and `runs/<pipeline>/report.md` with the table and one plot of every
//! variant's loss curves.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use super::dag::StageId;
use super::runner::{Outcome, VariantResult};
use crate::fsutil;
use crate::stages::sample::SAMPLES_MD;
use crate::train::metrics::{self, METRICS_JSONL, MetricRecord};
use crate::train::plot;

/// The train artifact's metrics as linked from a run folder, if it has some.
fn train_metrics(run_dir: &Path) -> Option<Vec<MetricRecord>> {
    let path = run_dir
        .join("artifacts")
        .join(StageId::Train.name())
        .join(METRICS_JSONL);
    metrics::read_jsonl(&path).ok()
}

/// Writes `report.md` into a variant's run folder, and the train artifact's `metrics.jsonl`.
pub fn write_variant_report(result: &VariantResult) -> std::io::Result<()> {
    let dir = &result.run_dir;
    let mut text = format!("# {}\n\n", result.name);
    if !result.overrides.is_empty() {
        text.push_str("Overrides: ");
        let overrides: Vec<String> = result
            .overrides
            .iter()
            .map(|(k, v)| format!("`{k} = {v}`"))
            .collect();
        text.push_str(&overrides.join(", "));
        text.push_str("\n\n");
    }
    text.push_str("| stage | this run | result |\n|---|---|---|\n");
    for stage in &result.stages {
        let outcome = match stage.outcome {
            Outcome::Ran { secs } => format!("ran ({})", super::runner::human_secs(secs)),
            Outcome::Cached | Outcome::BuiltElsewhere => "cached".to_string(),
            Outcome::WouldRun => "would run".to_string(),
        };
        let _ = writeln!(
            text,
            "| [{0}](artifacts/{0}) | {outcome} | {1} |",
            stage.stage.name(),
            stage.summary.replace('|', "\\|")
        );
    }
    refresh_samples_copy(dir)?;
    if !dir.join("artifacts").join(StageId::Train.name()).exists() {
        remove_if_present(&dir.join(METRICS_JSONL))?;
    }
    if let Some(records) = train_metrics(dir) {
        // The folder's log is the artifact's, also when it came from the cache (a log left by
        // an earlier run of another configuration would otherwise stay).
        fsutil::write_atomic(
            &dir.join(METRICS_JSONL),
            metrics::to_jsonl(&records).as_bytes(),
        )?;
        text.push_str(
            "\n## Loss\n\n![loss curves](artifacts/train/loss.svg)\n\n\
             PNG: [artifacts/train/loss.png](artifacts/train/loss.png). Every log line: \
             [metrics.jsonl](metrics.jsonl). Validation figures: \
             [artifacts/train/training.json](artifacts/train/training.json).\n",
        );
    }
    fsutil::write_atomic(&dir.join("report.md"), text.as_bytes())
}

/// The run folder's `samples.md` is the linked sample artifact's: one left by an earlier run of
/// other settings (or of a stage this run stopped before) would show another model's stories.
fn refresh_samples_copy(dir: &Path) -> std::io::Result<()> {
    let copy = dir.join(SAMPLES_MD);
    match std::fs::read(
        dir.join("artifacts")
            .join(StageId::Sample.name())
            .join(SAMPLES_MD),
    ) {
        Ok(bytes) => fsutil::write_atomic(&copy, &bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => remove_if_present(&copy),
        Err(e) => Err(e),
    }
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Writes `report.md`, `sweep-loss.svg` and `sweep-loss.png` into the pipeline's folder of run
/// folders.
pub fn write_sweep_report(
    pipeline_dir: &Path,
    table: &SweepTable,
    results: &[VariantResult],
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut text = String::from("# Sweep\n\n");
    let row = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
    text.push_str(&row(&table.header));
    text.push_str(&row(&vec!["---".to_string(); table.header.len()]));
    for cells in &table.rows {
        text.push_str(&row(cells));
    }
    text.push_str("\nThe same table as CSV: [sweep.csv](sweep.csv).\n");
    let runs: Vec<(String, Vec<MetricRecord>)> = results
        .iter()
        .filter_map(|r| train_metrics(&r.run_dir).map(|m| (r.name.clone(), m)))
        .collect();
    if !runs.is_empty() {
        let series: Vec<(&str, &[MetricRecord])> = runs
            .iter()
            .map(|(name, records)| (name.as_str(), records.as_slice()))
            .collect();
        plot::write_loss_plots(&series, pipeline_dir, "sweep-loss")?;
        text.push_str("\n## Loss\n\n![loss curves of every variant](sweep-loss.svg)\n");
    }
    text.push_str("\n## Variants\n\n");
    for result in results {
        let _ = writeln!(text, "- [{0}]({0}/report.md)", result.name);
    }
    fsutil::write_atomic(&pipeline_dir.join("report.md"), text.as_bytes())?;
    Ok(())
}

/// The comparison of a sweep's variants: their swept values, then the metrics of every stage
/// whose artifact differs between them.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepTable {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

pub fn sweep_table(swept_keys: &[String], results: &[VariantResult]) -> SweepTable {
    let varying: Vec<StageId> = StageId::ALL
        .into_iter()
        .filter(|stage| {
            let keys: BTreeSet<&str> = results
                .iter()
                .flat_map(|r| r.stages.iter().filter(|s| s.stage == *stage))
                .map(|s| s.key.as_str())
                .collect();
            keys.len() > 1
        })
        .collect();
    let mut metric_columns: Vec<(StageId, String)> = Vec::new();
    for stage in &varying {
        let names: BTreeSet<&String> = results
            .iter()
            .flat_map(|r| r.stages.iter().filter(|s| s.stage == *stage))
            .flat_map(|s| s.metrics.keys())
            .collect();
        metric_columns.extend(names.into_iter().map(|n| (*stage, n.clone())));
    }
    let mut header = vec!["variant".to_string()];
    header.extend(swept_keys.iter().cloned());
    header.extend(metric_columns.iter().map(|(s, n)| format!("{s}.{n}")));
    let rows = results
        .iter()
        .map(|result| {
            let mut row = vec![result.name.clone()];
            for key in swept_keys {
                let value = result
                    .overrides
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .unwrap_or_default();
                row.push(value);
            }
            for (stage, name) in &metric_columns {
                let value = result
                    .stages
                    .iter()
                    .find(|s| s.stage == *stage)
                    .and_then(|s| s.metrics.get(name))
                    .map(|v| format_metric(*v))
                    .unwrap_or_else(|| "-".to_string());
                row.push(value);
            }
            row
        })
        .collect();
    SweepTable { header, rows }
}

fn format_metric(value: f64) -> String {
    if value == value.trunc() && value.abs() < 1e15 {
        format!("{value:.0}")
    } else if value.abs() >= 0.01 {
        format!("{value:.4}")
    } else {
        format!("{value:.4e}")
    }
}

impl SweepTable {
    /// Columns padded to their widest cell.
    pub fn render(&self) -> String {
        let widths: Vec<usize> = (0..self.header.len())
            .map(|i| {
                std::iter::once(&self.header)
                    .chain(&self.rows)
                    .map(|row| row[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |row: &Vec<String>| {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            format!("{}\n", cells.join("  ").trim_end())
        };
        let mut text = line(&self.header);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        text.push_str(&format!("{}\n", rule.join("  ")));
        for row in &self.rows {
            text.push_str(&line(row));
        }
        text
    }

    pub fn to_csv(&self) -> String {
        let quote = |cell: &String| {
            if cell.contains([',', '"', '\n']) {
                format!("\"{}\"", cell.replace('"', "\"\""))
            } else {
                cell.clone()
            }
        };
        std::iter::once(&self.header)
            .chain(&self.rows)
            .map(|row| row.iter().map(quote).collect::<Vec<_>>().join(",") + "\n")
            .collect()
    }
}
