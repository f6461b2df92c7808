//! `tinyllm bench train`: training step speed.

use std::io::Write;

use anyhow::{Result, bail};
use clap::Args;

use super::print_figures;
use crate::bench::train::{TrainBench, run};
use crate::cli::args::{BenchRun, parse_preset, set_threads};
use crate::model::{ModelDims, Preset};

/// Training step speed: median ms/step, tokens/s, GFLOP/s against the machine's matmul peak,
/// peak memory.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    tinyllm bench train --preset tutorial --batch 8 --seq 256\n  \
    tinyllm bench train --preset stories110M --device cuda\n  \
    tinyllm bench train --dim 128 --n-layers 4 --n-heads 4 --n-kv-heads 2 --vocab-size 512 --threads 1 --json")]
pub struct TrainArgs {
    /// A model preset (tutorial, stories260K, stories15M, stories42M, stories110M, quickstart).
    #[arg(long, value_name = "PRESET", value_parser = parse_preset, conflicts_with = "dim")]
    preset: Option<Preset>,
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
    /// Timed steps (after 2 warm-up steps).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    #[command(flatten)]
    run: BenchRun,
}

pub fn exec(args: TrainArgs, out: &mut dyn Write) -> Result<()> {
    set_threads(args.run.threads)?;
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
    if args.batch == 0 || args.seq == 0 || args.steps == 0 {
        bail!("--batch, --seq and --steps must be at least 1");
    }
    let figures = run(&TrainBench {
        dims,
        preset,
        batch: args.batch,
        seq: args.seq,
        warmup_steps: 2,
        steps: args.steps,
        device: args.run.device,
    })?;
    print_figures(&figures, args.run.json, out)
}
