//! The human-facing summaries of a run folder: `report.md` for each variant (its stages, its
//! validation figures and loss plot) and, for a sweep, `runs/<pipeline>/report.md` with the
//! comparison table and one plot of every variant's loss curves.

use std::fmt::Write as _;
use std::path::Path;

use super::dag::StageId;
use super::runner::{Outcome, SweepTable, VariantResult};
use crate::fsutil;
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
