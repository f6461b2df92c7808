//! `tinyllm bench train`: training step speed, and with `--spec` where a whole run's time goes.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use super::print_figures;
use crate::bench::train::{RunPlan, TrainBench, run};
use crate::cli::args::{BenchRun, parse_preset, set_threads};
use crate::engine::{Device, OptimizerKind, PrecisionSetting};
use crate::model::{Footprint, ModelDims, Preset, ShapeError};
use crate::pipeline::spec::TrainConfig;
use crate::pipeline::{self, SpecSources};
use crate::train::step::StepConfig;

/// Training step speed: median ms/step, tokens/s, GFLOP/s against the machine's matmul peak,
/// peak memory.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    tinyllm bench train --preset tutorial --batch 8 --seq 256\n  \
    tinyllm bench train --preset tutorial --precision f32\n  \
    tinyllm bench train --preset tutorial --optimizer muon\n  \
    tinyllm bench train --preset stories110M --device cuda\n  \
    tinyllm bench train --dim 128 --n-layers 4 --n-heads 4 --n-kv-heads 2 --vocab-size 512 --threads 1 --json\n  \
    tinyllm bench train --spec pipelines/tinystories-10min.toml --val-windows 1488\n  \
    tinyllm bench train --spec pipelines/tinystories-10min.toml --set train.optimizer=muon\n\n\
    With --spec, the model, batch, sequence, accumulation and clipping are the pipeline's, and\n\
    the figures end with an estimate of a whole run of it: its steps, validation passes,\n\
    checkpoints and metrics log, each timed the way the trainer runs them.")]
pub struct TrainArgs {
    /// A model preset (tutorial, stories260K, stories15M, stories42M, stories110M, quickstart).
    #[arg(long, value_name = "PRESET", value_parser = parse_preset, conflicts_with = "dim")]
    preset: Option<Preset>,
    /// A pipeline spec whose model and train settings to measure, with a whole run's time.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["preset", "dim", "batch", "seq", "grad_accum", "optimizer"])]
    spec: Option<PathBuf>,
    /// Overrides a key of the spec, as `tinyllm run --set` does (`train.optimizer=muon`).
    #[arg(long = "set", value_name = "KEY=VALUE", requires = "spec")]
    sets: Vec<String>,
    /// The optimizer a step runs: adamw, or muon (Muon for the block matrices, at the spec
    /// defaults). Default: the spec's train.optimizer with --spec, else adamw.
    #[arg(long, value_name = "OPTIMIZER", value_parser = parse_optimizer)]
    optimizer: Option<OptimizerKind>,
    /// Windows in one validation pass (default: the spec's train.eval_windows; needed when
    /// that is 0, "every window of the split").
    #[arg(long, value_name = "N", requires = "spec")]
    val_windows: Option<usize>,
    /// Custom dimensions instead of a preset.
    #[arg(long, requires_all = ["n_layers", "n_heads", "vocab_size"])]
    dim: Option<usize>,
    #[arg(long)]
    n_layers: Option<usize>,
    #[arg(long)]
    n_heads: Option<usize>,
    /// Defaults to n_heads.
    #[arg(long)]
    n_kv_heads: Option<usize>,
    #[arg(long)]
    vocab_size: Option<usize>,
    #[arg(long, default_value_t = 32)]
    multiple_of: usize,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 256)]
    seq: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Timed steps (after 2 warm-up steps).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// The matmuls' precision: f32, bf16 or auto (bf16 where the CPU has native bf16 dot
    /// products). Default: the spec's train.precision with --spec, else auto.
    #[arg(long, value_name = "PRECISION")]
    precision: Option<PrecisionSetting>,
    /// Also time each backend op of the timed steps: calls, ms and share of a step per op.
    #[arg(long)]
    ops: bool,
    #[command(flatten)]
    run: BenchRun,
}

pub fn exec(args: TrainArgs, out: &mut dyn Write) -> Result<()> {
    set_threads(args.run.threads)?;
    if args.batch == 0 || args.seq == 0 || args.steps == 0 || args.grad_accum == 0 {
        bail!("--batch, --seq, --grad-accum and --steps must be at least 1");
    }
    let (dims, preset) = match args.dim {
        Some(dim) => {
            let n_heads = args.n_heads.unwrap_or(1);
            let dims = ModelDims {
                dim,
                n_layers: args.n_layers.unwrap_or(1),
                n_heads,
                n_kv_heads: args.n_kv_heads.unwrap_or(n_heads),
                vocab_size: args.vocab_size.unwrap_or(1),
                multiple_of: args.multiple_of,
                max_seq_len: args.seq,
            };
            (dims, None)
        }
        None => {
            let preset = args.preset.unwrap_or(Preset::Tutorial);
            (preset.dims(), Some(preset))
        }
    };
    let mut bench = TrainBench {
        dims,
        preset,
        step: StepConfig {
            batch: args.batch,
            seq: args.seq,
            accum: args.grad_accum,
            grad_clip: 1.0,
        },
        warmup_steps: 2,
        steps: args.steps,
        device: args.run.device,
        precision: args.precision.unwrap_or_default().resolve(args.run.device),
        optimizer: TrainConfig {
            optimizer: args.optimizer.unwrap_or_default(),
            ..TrainConfig::default()
        }
        .optimizer_settings(),
        run: None,
        ops: args.ops,
    };
    if let Some(path) = args.spec {
        let loaded = pipeline::load(&SpecSources {
            spec: path,
            sets: args.sets,
            ..SpecSources::default()
        })?;
        let spec = &loaded.variants[0].spec;
        let t = &spec.train;
        let val_windows = match (args.val_windows, t.eval_windows) {
            (Some(0), _) => bail!("--val-windows must be at least 1"),
            (Some(n), _) => n,
            (None, 0) => bail!(
                "train.eval_windows is 0 in the spec (every window of the validation split): say how many that is with --val-windows N (a train artifact's training.json has it as validation_windows)"
            ),
            (None, n) => n,
        };
        bench.dims = spec
            .model_dims()
            .map_err(|v| anyhow::anyhow!("{}: {}", v.key, v.message))?;
        bench.preset = spec.model.preset;
        bench.step = StepConfig::of(t);
        bench.optimizer = t.optimizer_settings();
        bench.precision = args
            .precision
            .unwrap_or(t.precision)
            .resolve(args.run.device);
        bench.run = Some(RunPlan {
            pipeline: spec.pipeline.name.clone(),
            max_iters: t.max_iters,
            eval_interval: t.eval_interval,
            val_windows,
            checkpoint_interval: t.checkpoint_interval,
            log_interval: t.log_interval,
            max_time: t.max_time.map(|b| b.secs()),
        });
    }
    check_fits(&bench)?;
    print_figures(&run(&bench)?, args.run.json, out)
}

/// Refuses, before anything is allocated, a sequence longer than the model's context and a
/// model and batch that cannot fit in the machine's memory, naming the flags that change them.
fn check_fits(bench: &TrainBench) -> Result<()> {
    let dims = &bench.dims;
    dims.check().map_err(ShapeError::from)?;
    if bench.step.seq > dims.max_seq_len {
        let model = bench
            .preset
            .map_or_else(|| "model".to_string(), |p| format!("{} preset", p.name()));
        bail!(
            "--seq {} is above the {model}'s max_seq_len {}; lower --seq, or give custom dimensions (--dim …), whose context is --seq",
            bench.step.seq,
            dims.max_seq_len
        );
    }
    if bench.device == Device::Cpu {
        let summed = bench.step.accum * crate::collective::world().size() > 1;
        let footprint = |batch| {
            Footprint::training(
                dims,
                true,
                batch,
                bench.step.seq,
                bench.optimizer.kind,
                summed,
            )
        };
        if let Err(too_large) = footprint(bench.step.batch).check("this benchmark") {
            // The batch is the knob when a batch of one fits.
            let knob = if footprint(1).total() <= too_large.limit.bytes {
                "lower --batch or --seq"
            } else {
                "choose a smaller preset or smaller dimensions (--dim, --n-layers)"
            };
            bail!("{too_large}; {knob}");
        }
    }
    Ok(())
}

fn parse_optimizer(name: &str) -> Result<OptimizerKind, String> {
    match name {
        "adamw" => Ok(OptimizerKind::AdamW),
        "muon" => Ok(OptimizerKind::Muon),
        _ => Err(format!("{name:?} is not an optimizer: use adamw or muon")),
    }
}
