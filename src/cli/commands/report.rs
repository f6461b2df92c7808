//! `tinyllm report`: the table of a sweep from whatever its variants have finished, wherever
//! they ran (a local run writes it at its end; Slurm jobs finish one by one).

use std::io::Write;

use anyhow::Result;
use clap::Args;

use crate::cli::args::{ExecutorArg, FolderArgs, SpecArgs};
use crate::pipeline::{self, Cache, runner, slurm};

/// Print and write a sweep's table (sweep.csv, report.md, loss plots) from the cached results.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    tinyllm report pipelines/tinystories.toml --sweep train.lr=1e-3,5e-4\n  \
    tinyllm report pipelines/tinystories-10min.toml --overlay configs/tenmin-sweep.toml")]
pub struct ReportArgs {
    #[command(flatten)]
    spec: SpecArgs,
    #[command(flatten)]
    folders: FolderArgs,
    #[command(flatten)]
    executor: ExecutorArg,
}

pub fn exec(args: ReportArgs, out: &mut dyn Write) -> Result<()> {
    let loaded = args.executor.apply(args.spec.load()?);
    // Reads the cache and writes only the table and its report.
    let opts = pipeline::RunOptions {
        dry_run: false,
        ..pipeline::RunOptions::reading(
            args.folders.cache_dir(Some(&loaded)),
            args.folders.runs_dir(Some(&loaded)),
            false,
        )
    };
    runner::check_folders(&loaded, &opts)?;
    let plans = runner::plan(&loaded, &opts);
    let states = slurm::variant_states(&plans, &Cache::new(&opts.cache_dir))?;
    let width = plans
        .iter()
        .map(|p| p.variant.name.len())
        .max()
        .unwrap_or(0);
    for (plan, state) in plans.iter().zip(&states) {
        writeln!(out, "  {:<width$}  {state}", plan.variant.name)?;
    }
    let results = runner::cached_results(&plans);
    if loaded.variants.len() > 1 {
        runner::write_sweep(&loaded, &results, &opts, out)?;
    }
    Ok(())
}
