//! `tinyllm tokenize`: a tokenizer's ids and pieces for a text.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::cli::input::text_or_file;
use crate::tokenizer::Tokenizer;

/// Show how a tokenizer splits a text: ids and pieces.
#[derive(Debug, Args)]
#[command(
    override_usage = "tinyllm tokenize [OPTIONS] --tokenizer <PATH> <TEXT|--file <PATH>>",
    after_help = "Examples:\n  \
    tinyllm tokenize --tokenizer runs/tinystories/default/artifacts/train_vocab \"Once upon a time\"\n  \
    tinyllm tokenize --tokenizer tokenizer.json --ids-only \"Lily had 3 cats.\"\n  \
    tinyllm tokenize --tokenizer tokenizer.json --file story.txt\n  \
    tinyllm tokenize --tokenizer tokenizer.json --ids-only --file - < story.txt"
)]
pub struct TokenizeArgs {
    /// A tokenizer.json, or a folder holding one (a train_vocab artifact).
    #[arg(long, value_name = "PATH")]
    tokenizer: PathBuf,
    /// Print only the ids.
    #[arg(long)]
    ids_only: bool,
    /// The text to tokenize.
    text: Option<String>,
    /// Read the text from this file instead (- for standard input).
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
}

pub fn exec(args: TokenizeArgs, out: &mut dyn Write) -> Result<()> {
    let text = text_or_file(args.text, args.file.as_deref(), "TEXT")?.text;
    let path = if args.tokenizer.is_dir() {
        args.tokenizer
            .join(crate::stages::train_vocab::TOKENIZER_JSON)
    } else {
        args.tokenizer
    };
    let tokenizer = Tokenizer::load(&path)?;
    let ids = tokenizer.encode(&text);
    let list: Vec<String> = ids.iter().map(u32::to_string).collect();
    writeln!(out, "{}", list.join(" "))?;
    if !args.ids_only {
        let pieces: Vec<String> = ids
            .iter()
            .map(|&id| format!("{:?}", tokenizer.piece(id).unwrap_or("")))
            .collect();
        writeln!(out, "{}", pieces.join(" "))?;
        writeln!(
            out,
            "{} bytes, {} tokens ({:.2} bytes/token), vocab {}",
            text.len(),
            ids.len(),
            text.len() as f64 / ids.len().max(1) as f64,
            tokenizer.vocab_size()
        )?;
    }
    Ok(())
}
