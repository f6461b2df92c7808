//! `tinyllm run`: build every stage of a pipeline whose artifact is not cached yet, here or as
//! Slurm jobs.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::cli::args::{FolderArgs, SpecArgs, parse_executor, parse_stage, set_threads};
use crate::pipeline::runner::Part;
use crate::pipeline::slurm::{self, JobCommand, SlurmRequest};
use crate::pipeline::spec::{ExecutorKind, MAX_SLURM_OPTIONS, SlurmConfig};
use crate::pipeline::{self, LoadedSpec, StageId, StageRegistry};

/// How often `--wait` asks Slurm about the jobs.
const POLL: Duration = Duration::from_secs(3);

/// Run a pipeline: every stage whose artifact is not cached yet.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    tinyllm run pipelines/quickstart.toml\n  \
    tinyllm run pipelines/tinystories.toml --until pretokenize\n  \
    tinyllm run pipelines/tinystories.toml --set train.max_iters=2000 --set 'sample.prompts=[\"Once\"]'\n  \
    tinyllm run pipelines/tinystories.toml --sweep train.lr=1e-3,5e-4 --sweep train.seed=1,2\n  \
    tinyllm run pipelines/tinystories.toml --force train --verify\n\n\
    On a Slurm cluster (the cache on a file system every node sees):\n  \
    tinyllm run pipelines/tinystories.toml --sweep train.lr=1e-3,5e-4 --executor slurm --slurm '--partition=cpu --time=04:00:00'\n  \
    tinyllm status pipelines/tinystories.toml --sweep train.lr=1e-3,5e-4\n  \
    tinyllm report pipelines/tinystories.toml --sweep train.lr=1e-3,5e-4")]
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
    /// Show what would run (with --executor slurm: the job scripts), change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Worker threads (default: the spec's pipeline.threads, else all cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Run only this variant of a sweep (its name as the run prints it, e.g. lr=0.001,seed=2).
    #[arg(long, value_name = "NAME", conflicts_with = "shared_only")]
    variant: Option<String>,
    /// With --variant: refuse to run unless the variant's last stage has this cache key (its
    /// first 16 hex digits or more, as `tinyllm status` prints them); the Slurm executor's jobs
    /// pass the key they were submitted for.
    #[arg(long, value_name = "KEY", requires = "variant")]
    expect_key: Option<String>,
    /// Build only the stages that several variants of a sweep share (what the Slurm executor's
    /// first job does).
    #[arg(long)]
    shared_only: bool,
    /// Where the stages run: local (in this process) or slurm (sbatch jobs that share the
    /// cache: the shared stages as one job, each variant as a task of a job array)
    /// [default: the spec's pipeline.executor, else local].
    #[arg(long, value_name = "local|slurm", value_parser = parse_executor)]
    executor: Option<ExecutorKind>,
    /// sbatch options for every job, as one shell-quoted string (repeatable; added to the
    /// spec's slurm.options): --slurm '--partition=cpu --time=02:00:00'.
    #[arg(long, value_name = "OPTIONS", allow_hyphen_values = true)]
    slurm: Vec<String>,
    /// With --executor slurm: follow the jobs until they end, then print and write the sweep's
    /// table (without it, run returns once the jobs are submitted).
    #[arg(long)]
    wait: bool,
    /// With --executor slurm: allow a cache, run folder or binary on a node-local file system
    /// (/tmp, tmpfs), which only a single-node cluster can share.
    #[arg(long)]
    allow_node_local_cache: bool,
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
    let executor = args
        .executor
        .or(first.pipeline.executor)
        .unwrap_or_default();
    let part = match (&args.variant, args.shared_only) {
        (Some(name), _) => Part::Variant {
            name: name.clone(),
            expect_key: args.expect_key.clone(),
        },
        (None, true) => Part::Shared,
        (None, false) => Part::All,
    };
    let opts = pipeline::RunOptions {
        cache_dir: args.folders.cache_dir(Some(&loaded)),
        runs_dir: args.folders.runs_dir(Some(&loaded)),
        until: args.until,
        force,
        verify: args.verify,
        dry_run: args.dry_run,
        quiet,
        part,
    };
    match executor {
        ExecutorKind::Local => {
            for (given, flag) in [
                (args.wait, "--wait"),
                (!args.slurm.is_empty(), "--slurm"),
                (args.allow_node_local_cache, "--allow-node-local-cache"),
            ] {
                if given {
                    bail!("{flag} only applies with --executor slurm");
                }
            }
            set_threads(args.threads.or(first.pipeline.threads))?;
            pipeline::run(&loaded, registry, &opts, out)?;
        }
        ExecutorKind::Slurm => {
            let request = slurm_request(&args, &loaded, &opts)?;
            // The jobs train on all their tasks, and the train key holds the world size.
            let loaded = loaded.for_world_size(request.ntasks as usize);
            slurm::submit(&loaded, &opts, &request, out)?;
        }
    }
    Ok(())
}

/// What the Slurm executor needs: the jobs' command (this binary, this folder, the same spec
/// arguments, the folders made absolute) and the spec's and command line's sbatch options.
fn slurm_request(
    args: &RunArgs,
    loaded: &LoadedSpec,
    opts: &pipeline::RunOptions,
) -> Result<SlurmRequest> {
    if !opts.force.is_empty() {
        bail!(
            "--force cannot be combined with --executor slurm: rebuild the stage with a local run (tinyllm run … --force STAGE), or remove its artifact with `tinyllm cache`"
        );
    }
    if opts.part != Part::All {
        bail!(
            "--variant and --shared-only pick what one process builds; with --executor slurm the jobs choose them"
        );
    }
    let spec = &loaded.variants[0].spec;
    let mut options = spec.slurm.options.clone();
    for text in &args.slurm {
        let words =
            shlex::split(text).with_context(|| format!("--slurm {text:?}: unbalanced quotes"))?;
        for word in words {
            SlurmConfig::check_option(&word).map_err(|e| anyhow::anyhow!("--slurm: {e}"))?;
            options.push(word);
        }
    }
    if options.len() > MAX_SLURM_OPTIONS {
        bail!(
            "{} sbatch options (slurm.options and --slurm together) are more than {MAX_SLURM_OPTIONS}",
            options.len()
        );
    }
    let workdir = std::env::current_dir().context("the current folder")?;
    let absolute = |path: &std::path::Path| workdir.join(path).to_string_lossy().into_owned();
    let mut run_args = args.spec.to_args();
    run_args.extend([
        "--cache".into(),
        absolute(&opts.cache_dir),
        "--runs".into(),
        absolute(&opts.runs_dir),
    ]);
    if let Some(stage) = opts.until {
        run_args.extend(["--until".into(), stage.name().into()]);
    }
    if opts.verify {
        run_args.push("--verify".into());
    }
    if let Some(threads) = args.threads {
        run_args.extend(["--threads".into(), threads.to_string()]);
    }
    run_args.extend(["--executor".into(), "local".into()]);
    let mut submitted_by = vec!["tinyllm".to_string(), "run".to_string()];
    submitted_by.extend(args.spec.to_args());
    submitted_by.extend(["--executor".into(), "slurm".into()]);
    for text in &args.slurm {
        submitted_by.extend(["--slurm".into(), text.clone()]);
    }
    let submitted_by = submitted_by
        .into_iter()
        .map(|a| shlex::try_quote(&a).map(|q| q.into_owned()).unwrap_or(a))
        .collect::<Vec<_>>()
        .join(" ");
    Ok(SlurmRequest {
        command: JobCommand {
            exe: std::env::current_exe().context("the path of the tinyllm binary")?,
            workdir,
            run_args,
        },
        submitted_by,
        options,
        ntasks: spec.slurm.ntasks.unwrap_or(1),
        srun_options: spec.slurm.srun_options.clone(),
        allow_node_local: args.allow_node_local_cache || spec.slurm.allow_node_local_cache,
        wait: args.wait,
        poll: POLL,
    })
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
