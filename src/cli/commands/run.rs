//! `tinyllm run`: build every stage of a pipeline whose artifact is not cached yet.

use std::collections::BTreeSet;
use std::io::Write;

use anyhow::Result;
use clap::Args;

use crate::cli::args::{FolderArgs, SpecArgs, parse_stage, set_threads};
use crate::pipeline::{self, StageId, StageRegistry};

/// Run a pipeline: every stage whose artifact is not cached yet.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    tinyllm run pipelines/quickstart.toml\n  \
    tinyllm run pipelines/tinystories.toml --until pretokenize\n  \
    tinyllm run pipelines/tinystories.toml --set train.max_iters=2000 --set 'sample.prompts=[\"Once\"]'\n  \
    tinyllm run pipelines/tinystories.toml --sweep train.lr=1e-3,5e-4 --sweep train.seed=1,2\n  \
    tinyllm run pipelines/tinystories.toml --force train --verify")]
pub struct RunArgs {
    #[command(flatten)]
    spec: SpecArgs,
    #[command(flatten)]
    folders: FolderArgs,
    /// Stop after this stage (download, train_vocab, pretokenize, train, sample).
    #[arg(long, value_name = "STAGE", value_parser = parse_stage)]
    until: Option<StageId>,
    /// Rebuild this stage even if it is cached (`all` for every stage); repeatable.
    #[arg(long, value_name = "STAGE|all")]
    force: Vec<String>,
    /// Re-hash every cached file and rebuild artifacts that do not match their manifest.
    #[arg(long)]
    verify: bool,
    /// Show what would run, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Worker threads (default: the spec's pipeline.threads, else all cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

pub fn exec(
    args: RunArgs,
    registry: &StageRegistry,
    quiet: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let loaded = args.spec.load()?;
    let force = parse_force(&args.force)?;
    let first = &loaded.variants[0].spec;
    set_threads(args.threads.or(first.pipeline.threads))?;
    let opts = pipeline::RunOptions {
        cache_dir: args.folders.cache_dir(Some(&loaded)),
        runs_dir: args.folders.runs_dir(Some(&loaded)),
        until: args.until,
        force,
        verify: args.verify,
        dry_run: args.dry_run,
        quiet,
    };
    pipeline::run(&loaded, registry, &opts, out)?;
    Ok(())
}

/// The stages named by `--force` (`all`: every one).
fn parse_force(values: &[String]) -> Result<BTreeSet<StageId>> {
    let mut stages = BTreeSet::new();
    for value in values {
        if value == "all" {
            stages.extend(StageId::ALL);
        } else {
            stages.insert(parse_stage(value).map_err(|e| anyhow::anyhow!("--force: {e}"))?);
        }
    }
    Ok(stages)
}
