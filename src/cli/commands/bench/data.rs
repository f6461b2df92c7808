//! `tinyllm bench data`: tokenizer training and pretokenize throughput.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use super::print_figures;
use crate::bench::data::{DataBench, run};
use crate::cli::args::set_threads;

/// Tokenizer training (seconds, peak memory) and pretokenize throughput (MB/s, tokens/s) on
/// a corpus built to a chosen size from text files.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  \
    tinyllm bench data --text ../shared/data/tinystories/train_head.txt --mb 100")]
pub struct DataArgs {
    /// Text files with one story per line (repeatable).
    #[arg(long, value_name = "FILE", required = true)]
    text: Vec<PathBuf>,
    /// Corpus size to build from them, in MB (stories repeat with variations).
    #[arg(long, default_value_t = 100.0)]
    mb: f64,
    #[arg(long, default_value_t = 4096)]
    vocab_size: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long)]
    json: bool,
}

pub fn exec(args: DataArgs, out: &mut dyn Write) -> Result<()> {
    set_threads(args.threads)?;
    if args.mb.is_nan() || args.mb <= 0.0 {
        bail!("--mb must be positive");
    }
    let figures = run(&DataBench {
        texts: args.text,
        target_bytes: (args.mb * 1e6) as u64,
        vocab_size: args.vocab_size,
    })?;
    print_figures(&figures, args.json, out)
}
