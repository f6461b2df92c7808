//! `tinyllm export`: a trained model in another format (Hugging Face, llama2.c).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use crate::cli::args::train_folder;
use crate::export::llama2c::{self, MODEL_BIN, TOKENIZER_BIN, Version};

/// Write a trained model in another format (hf: a folder transformers loads; llama2c: the
/// files llama2.c's run.c reads).
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    tinyllm export --checkpoint runs/tinystories/default --format hf --out tinystories-hf\n\n\
    Then, in Python: AutoModelForCausalLM.from_pretrained(\"tinystories-hf\") and\n\
    AutoTokenizer.from_pretrained(\"tinystories-hf\").\n\n  \
    tinyllm export --checkpoint runs/tinystories/default --format llama2c --out tinystories-llama2c\n\n\
    Then, in a llama2.c checkout: ./run tinystories-llama2c/model.bin -z tinystories-llama2c/tokenizer.bin\n\
    (run.c's greedy output, -t 0, is tinyllm sample --temperature 0's text).")]
pub struct ExportArgs {
    /// A train artifact folder, or a run folder holding one under artifacts/train.
    #[arg(long, value_name = "DIR")]
    checkpoint: PathBuf,
    /// The format: hf (a Hugging Face transformers folder), llama2c (model.bin and
    /// tokenizer.bin for llama2.c's run.c), llama2c-v1 (model.bin in export.py's
    /// version-1 layout, with tokenizer.bin).
    #[arg(long, value_parser = ["hf", "llama2c", "llama2c-v1"])]
    format: String,
    /// The folder to write (must not exist, or be empty).
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
}

pub fn exec(args: ExportArgs, out: &mut dyn Write) -> Result<()> {
    let from = train_folder(&args.checkpoint);
    let path = &args.out;
    let shown = path.display();
    match args.format.as_str() {
        "hf" => {
            crate::export::hf::export(&from, path)?;
            writeln!(
                out,
                "wrote {shown} (Hugging Face: model.safetensors, config.json, generation_config.json, tokenizer.json, tokenizer_config.json)"
            )?;
        }
        "llama2c" => {
            llama2c::export(&from, path, Version::Legacy)?;
            writeln!(
                out,
                "wrote {shown} (llama2.c: {MODEL_BIN}, {TOKENIZER_BIN}); run it with: \
                 ./run {shown}/{MODEL_BIN} -z {shown}/{TOKENIZER_BIN}"
            )?;
        }
        "llama2c-v1" => {
            llama2c::export(&from, path, Version::V1)?;
            writeln!(
                out,
                "wrote {shown} (llama2.c version 1: {MODEL_BIN}, {TOKENIZER_BIN})"
            )?;
        }
        other => bail!("unknown export format `{other}`; formats: hf, llama2c, llama2c-v1"),
    }
    Ok(())
}
