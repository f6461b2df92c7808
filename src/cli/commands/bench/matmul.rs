//! `tinyllm bench matmul`: the training step's matmuls, shape by shape.

use std::io::Write;

use anyhow::{Result, bail};
use clap::Args;

use super::print_figures;
use crate::bench::matmul::{MatmulBench, run};
use crate::cli::args::{BenchRun, parse_precision, parse_preset, set_threads};
use crate::engine::PrecisionSetting;
use crate::fsutil::human_bytes;
use crate::model::Preset;

/// The most rows a product may have here (batch × seq): far above any training batch, and
/// small enough that the largest buffers stay well inside memory.
const MAX_ROWS: usize = 1 << 16;
const MAX_RUNS: usize = 1000;
/// The most memory the largest shape's buffers may take.
const MAX_BYTES: u64 = 4_000_000_000;

/// The matmuls of a training step, one weight shape at a time, through the calls the model
/// makes: GFLOP/s of the forward product and of the backward pass (input and weight
/// gradients), median of runs, and what one step's products take.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    tinyllm bench matmul --preset tutorial --threads 2\n  \
    tinyllm bench matmul --preset stories15M --precision f32 --json")]
pub struct MatmulArgs {
    /// The model whose weight shapes to measure (default: tutorial).
    #[arg(long, value_name = "PRESET", value_parser = parse_preset)]
    preset: Option<Preset>,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 256)]
    seq: usize,
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// The matmuls' precision: f32, bf16 (bf16 operands, f32 sums) or auto (bf16 on a CPU with
    /// native bf16 dot products).
    #[arg(long, default_value = "auto", value_parser = parse_precision)]
    precision: PrecisionSetting,
    #[command(flatten)]
    run: BenchRun,
}

pub fn exec(args: MatmulArgs, out: &mut dyn Write) -> Result<()> {
    set_threads(args.run.threads)?;
    let rows = args.batch.saturating_mul(args.seq);
    if args.batch == 0 || args.seq == 0 || rows > MAX_ROWS {
        bail!(
            "--batch × --seq must be between 1 and {MAX_ROWS} rows, not {} × {}",
            args.batch,
            args.seq
        );
    }
    if args.runs == 0 || args.runs > MAX_RUNS {
        bail!("--runs must be between 1 and {MAX_RUNS}");
    }
    let preset = args.preset.unwrap_or(Preset::Tutorial);
    let dims = preset.dims();
    // The largest shape's buffers: input, output, their gradients, the weight and its gradient.
    let widest = dims.vocab_size.max(dims.hidden_dim()) as u64;
    let bytes = 4 * (2 * rows as u64 * (widest + dims.dim as u64) + 2 * widest * dims.dim as u64);
    if bytes > MAX_BYTES {
        bail!(
            "{} rows of {} need {} of buffers, more than this benchmark uses ({}): lower --batch or --seq",
            rows,
            preset.name(),
            human_bytes(bytes),
            human_bytes(MAX_BYTES)
        );
    }
    let figures = run(
        args.run.device,
        &MatmulBench {
            model: preset.name().to_string(),
            dims,
            rows,
            runs: args.runs,
            precision: args.precision.resolve(args.run.device),
        },
    )?;
    print_figures(&figures, args.run.json, out)
}
