//! `tinyllm status`: each stage's cache key and whether its artifact is built.

use std::collections::BTreeSet;
use std::io::Write;

use anyhow::Result;
use clap::Args;

use crate::cli::args::{FolderArgs, SpecArgs};
use crate::pipeline::runner::{self, PlanState};
use crate::pipeline::{self, LoadedSpec, StageRegistry};

/// Show each stage's cache key and whether its artifact is cached.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    spec: SpecArgs,
    #[command(flatten)]
    folders: FolderArgs,
    /// Re-hash cached files instead of checking their sizes.
    #[arg(long)]
    verify: bool,
}

pub fn exec(
    args: StatusArgs,
    registry: &StageRegistry,
    quiet: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let loaded = args.spec.load()?;
    let opts = pipeline::RunOptions {
        cache_dir: args.folders.cache_dir(Some(&loaded)),
        runs_dir: args.folders.runs_dir(Some(&loaded)),
        until: None,
        force: BTreeSet::new(),
        verify: args.verify,
        dry_run: true,
        quiet,
    };
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
    for plan in runner::plan(loaded, opts) {
        writeln!(
            out,
            "{} / {}",
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
