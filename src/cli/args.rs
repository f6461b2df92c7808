//! Argument groups and value parsers that several subcommands share, and the folder and thread
//! settings they resolve to.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Args;

use crate::engine::{Device, PrecisionSetting};
use crate::model::Preset;
use crate::pipeline::spec::{ExecutorKind, MAX_THREADS};
use crate::pipeline::{self, LoadedSpec, SpecSources, StageId};

const DEFAULT_CACHE: &str = ".tinyllm/cache";
const DEFAULT_RUNS: &str = "runs";

/// The pipeline spec and what is layered over it (`run`, `status`).
#[derive(Debug, Args)]
pub struct SpecArgs {
    /// The pipeline spec (TOML), e.g. pipelines/tinystories.toml.
    spec: PathBuf,
    /// A TOML file merged over the spec (repeatable; later ones win).
    #[arg(long, value_name = "FILE")]
    overlay: Vec<PathBuf>,
    /// Set one value, as TOML: train.lr=1e-3, 'sample.prompts=["Once"]' (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Sweep a key over values: train.lr=1e-3,5e-4 (repeatable: the cartesian product runs).
    #[arg(long, value_name = "KEY=V1,V2,...")]
    sweep: Vec<String>,
    /// Train and sample on this device: cpu, cuda or cuda:N (the same as --set
    /// train.device=… --set sample.device=…; CUDA needs a build with --features cuda).
    #[arg(long, value_name = "DEVICE", value_parser = parse_device)]
    device: Option<Device>,
}

impl SpecArgs {
    /// The arguments as given, for a command that loads the same spec elsewhere (a Slurm job).
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![self.spec.to_string_lossy().into_owned()];
        for overlay in &self.overlay {
            args.push("--overlay".into());
            args.push(overlay.to_string_lossy().into_owned());
        }
        for (flag, values) in [("--set", &self.set), ("--sweep", &self.sweep)] {
            for value in values {
                args.push(flag.into());
                args.push(value.clone());
            }
        }
        if let Some(device) = self.device {
            args.push("--device".into());
            args.push(device.to_string());
        }
        args
    }

    /// The spec with its overlays, `--set`s (`--device` among them) and sweeps applied.
    pub fn load(&self) -> Result<LoadedSpec> {
        let sources = SpecSources {
            spec: self.spec.clone(),
            overlays: self.overlay.clone(),
            sets: self
                .set
                .iter()
                .cloned()
                .chain(self.device.into_iter().flat_map(|d| {
                    [
                        format!("train.device=\"{d}\""),
                        format!("sample.device=\"{d}\""),
                    ]
                }))
                .collect(),
            sweeps: self.sweep.clone(),
        };
        Ok(pipeline::load(&sources)?)
    }
}

/// Which executor a command about a run's results assumes (`status`, `report`).
#[derive(Debug, Args)]
pub struct ExecutorArg {
    /// The executor the variants were run with: slurm plans them as jobs of `slurm.ntasks`
    /// tasks, whose train key holds their world size [default: the spec's pipeline.executor,
    /// else local].
    #[arg(long, value_name = "local|slurm", value_parser = parse_executor)]
    executor: Option<ExecutorKind>,
}

impl ExecutorArg {
    /// The spec as the executor keys it: a Slurm job of several tasks trains data-parallel.
    pub fn apply(&self, loaded: LoadedSpec) -> LoadedSpec {
        let spec = &loaded.variants[0].spec;
        match self.executor.or(spec.pipeline.executor).unwrap_or_default() {
            ExecutorKind::Slurm => {
                let ranks = spec.slurm.ntasks.unwrap_or(1) as usize;
                loaded.for_world_size(ranks)
            }
            ExecutorKind::Local => loaded,
        }
    }
}

pub fn parse_executor(name: &str) -> Result<ExecutorKind, String> {
    name.parse()
}

/// The cache and run folders (`run`, `status`, `cache …`).
#[derive(Debug, Args)]
pub struct FolderArgs {
    /// Cache folder [default: $TINYLLM_CACHE, else the spec's pipeline.cache_dir, else .tinyllm/cache].
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Run folders [default: the spec's pipeline.runs_dir, else runs].
    #[arg(long, value_name = "DIR")]
    runs: Option<PathBuf>,
}

impl FolderArgs {
    /// `--cache`, else `$TINYLLM_CACHE`, else the spec's `pipeline.cache_dir`, else the default.
    pub fn cache_dir(&self, loaded: Option<&LoadedSpec>) -> PathBuf {
        self.cache
            .clone()
            .or_else(|| std::env::var_os("TINYLLM_CACHE").map(PathBuf::from))
            .or_else(|| {
                loaded.and_then(|l| {
                    l.variants[0]
                        .spec
                        .pipeline
                        .cache_dir
                        .as_ref()
                        .map(PathBuf::from)
                })
            })
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE))
    }

    /// `--runs`, else the spec's `pipeline.runs_dir`, else the default.
    pub fn runs_dir(&self, loaded: Option<&LoadedSpec>) -> PathBuf {
        self.runs
            .clone()
            .or_else(|| {
                loaded.and_then(|l| {
                    l.variants[0]
                        .spec
                        .pipeline
                        .runs_dir
                        .as_ref()
                        .map(PathBuf::from)
                })
            })
            .unwrap_or_else(|| PathBuf::from(DEFAULT_RUNS))
    }
}

/// Where and how a benchmark runs, and how it prints.
#[derive(Debug, Args)]
pub struct BenchRun {
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// cpu, cuda or cuda:N (a build with --features cuda).
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: Device,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn parse_device(name: &str) -> Result<Device, String> {
    name.parse()
}

pub fn parse_precision(name: &str) -> Result<PrecisionSetting, String> {
    name.parse()
}

pub fn parse_preset(name: &str) -> Result<Preset, String> {
    Preset::ALL
        .into_iter()
        .find(|p| p.name() == name)
        .ok_or_else(|| {
            let names: Vec<&str> = Preset::ALL.iter().map(|p| p.name()).collect();
            format!("unknown preset `{name}`; presets are {}", names.join(", "))
        })
}

pub fn parse_stage(name: &str) -> Result<StageId, String> {
    StageId::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = StageId::ALL.iter().map(|s| s.name()).collect();
        format!("unknown stage `{name}`; stages are {}", names.join(", "))
    })
}

/// Sizes rayon's global pool (once per process; a later call changes nothing). The count is
/// bounded by [`MAX_THREADS`]: each worker is an OS thread, created before anything runs.
pub fn set_threads(threads: Option<usize>) -> Result<()> {
    match threads {
        Some(0) => bail!("--threads must be at least 1"),
        Some(threads) if threads > MAX_THREADS => {
            bail!("--threads {threads} is more than {MAX_THREADS}; use at most the machine's cores")
        }
        Some(threads) => {
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build_global();
            Ok(())
        }
        None => Ok(()),
    }
}

/// A train artifact given directly, or the one a run folder links under `artifacts/train`.
pub fn train_folder(checkpoint: &Path) -> PathBuf {
    let nested = checkpoint.join("artifacts").join(StageId::Train.name());
    if nested.is_dir() {
        nested
    } else {
        checkpoint.to_path_buf()
    }
}
