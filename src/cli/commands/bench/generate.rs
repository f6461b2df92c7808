//! `tinyllm bench generate`: KV-cache generation speed, batch 1.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use super::print_figures;
use crate::bench::generate::{GenerateBench, Source, run};
use crate::cli::args::{BenchRun, parse_precision, parse_preset, set_threads, train_folder};
use crate::engine::PrecisionSetting;
use crate::generate::folder::ModelFolder;
use crate::model::Preset;

/// Generation speed with the KV cache, batch 1: tokens/s (median of runs), time to the
/// first token, peak memory.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    tinyllm bench generate --preset tutorial --new-tokens 256\n  \
    tinyllm bench generate --checkpoint runs/tinystories/default --threads 2 --json")]
pub struct GenerateArgs {
    /// A model preset with random weights (default: tutorial).
    #[arg(long, value_name = "PRESET", value_parser = parse_preset, conflicts_with = "checkpoint")]
    preset: Option<Preset>,
    /// A trained model folder (a train artifact or a run folder) instead of a preset.
    #[arg(long, value_name = "DIR")]
    checkpoint: Option<PathBuf>,
    #[arg(long, default_value_t = 256)]
    new_tokens: usize,
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// The matmuls' precision: f32, bf16 (bf16 weights, f32 sums) or auto (bf16 on a CPU with
    /// native bf16 dot products).
    #[arg(long, default_value = "auto", value_parser = parse_precision)]
    precision: PrecisionSetting,
    #[command(flatten)]
    run: BenchRun,
}

pub fn exec(args: GenerateArgs, out: &mut dyn Write) -> Result<()> {
    set_threads(args.run.threads)?;
    if args.new_tokens == 0 || args.runs == 0 {
        bail!("--new-tokens and --runs must be at least 1");
    }
    let bench = GenerateBench {
        new_tokens: args.new_tokens,
        runs: args.runs,
        precision: args.precision.resolve(args.run.device),
    };
    let device = args.run.device;
    let folder = match &args.checkpoint {
        Some(checkpoint) => {
            let dir = train_folder(checkpoint);
            Some((ModelFolder::open(&dir)?, dir.display().to_string()))
        }
        None => None,
    };
    let preset = args.preset.unwrap_or(Preset::Tutorial);
    let context = match &folder {
        Some((folder, _)) => folder.dims().max_seq_len,
        None => preset.dims().max_seq_len,
    };
    if args.new_tokens > context {
        bail!(
            "--new-tokens {} is more than the model's context holds (max_seq_len {context}); ask for at most {context}",
            args.new_tokens
        );
    }
    let figures = match folder {
        Some((folder, name)) => run(Source::Folder(&folder, name), device, &bench)?,
        None => run(Source::Preset(preset), device, &bench)?,
    };
    print_figures(&figures, args.run.json, out)
}
