//! `tinyllm status`: each stage's cache key and whether its artifact is built.

use std::io::Write;

use anyhow::Result;
use clap::Args;

use crate::cli::args::{ExecutorArg, FolderArgs, SpecArgs};
use crate::pipeline::runner::{self, PlanState};
use crate::pipeline::{self, Cache, LoadedSpec, StageRegistry, slurm};

/// Show each variant's state (cached, not built, or its Slurm job: queued, running, failed)
/// and each stage's cache key and whether its artifact is cached.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    spec: SpecArgs,
    #[command(flatten)]
    folders: FolderArgs,
    #[command(flatten)]
    executor: ExecutorArg,
    /// Re-hash cached files instead of checking their sizes.
    #[arg(long)]
    verify: bool,
}

pub fn exec(args: StatusArgs, registry: &StageRegistry, out: &mut dyn Write) -> Result<()> {
    let loaded = args.executor.apply(args.spec.load()?);
    let opts = pipeline::RunOptions::reading(
        args.folders.cache_dir(Some(&loaded)),
        args.folders.runs_dir(Some(&loaded)),
        args.verify,
    );
    runner::check_folders(&loaded, &opts)?;
    print_status(&loaded, &opts, registry, out)
}

fn print_status(
    loaded: &LoadedSpec,
    opts: &pipeline::RunOptions,
    registry: &StageRegistry,
    out: &mut dyn Write,
) -> Result<()> {
    writeln!(out, "cache: {}", opts.cache_dir.display())?;
    let plans = runner::plan(loaded, opts);
    // Asks Slurm only about the jobs the cache records as building one of these artifacts.
    let states = slurm::variant_states(&plans, &Cache::new(&opts.cache_dir))?;
    for (plan, state) in plans.into_iter().zip(states) {
        writeln!(
            out,
            "{} / {}: {state}",
            plan.variant.spec.pipeline.name, plan.variant.name
        )?;
        for planned in &plan.stages {
            let state = match &planned.state {
                PlanState::Cached(artifact) => format!("cached    {}", artifact.manifest.summary),
                PlanState::Missing | PlanState::Forced => "not built".to_string(),
                PlanState::Damaged(reason) => format!("damaged   {reason}"),
                PlanState::Stale(reason) => format!("stale     {reason}"),
            };
            let availability = if registry.get(planned.stage).is_some() {
                ""
            } else {
                "  (not implemented in this build)"
            };
            let line = format!(
                "  {:<12} {}  {state}{availability}",
                planned.stage.name(),
                &planned.key[..16]
            );
            writeln!(out, "{}", line.trim_end())?;
        }
    }
    Ok(())
}
