//! `tinyllm score`: how well a trained model predicts a text, through evaluation's scoring code.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use crate::cli::args::{parse_device, train_folder};
use crate::cli::input::text_or_file;
use crate::engine::{Backend, Device, DeviceInfo};
use crate::fsutil::human_bytes;
use crate::generate::folder::ModelFolder;
use crate::model::{ModelJob, Shape, run_model};
use crate::train::eval::{EvalResult, sequence_losses};

/// How well a trained model predicts a text: loss in nats/token and bits/byte, and with
/// --json the ids and every position's logits.
#[derive(Debug, Args)]
#[command(
    override_usage = "tinyllm score [OPTIONS] --checkpoint <DIR> <--text <TEXT>|--file <PATH>>",
    after_help = "Examples:\n  \
    tinyllm score --checkpoint runs/tinystories/default --text \"Once upon a time there was a cat.\"\n  \
    tinyllm score --checkpoint runs/tinystories/default --file validation.txt\n  \
    tinyllm score --checkpoint runs/tinystories/default --file - < validation.txt\n\n\
    A text longer than the model's context is scored in windows of the context, as the train\n\
    stage's evaluation scores a split."
)]
pub struct ScoreArgs {
    /// A train artifact folder, or a run folder holding one under artifacts/train.
    #[arg(long, value_name = "DIR")]
    checkpoint: PathBuf,
    /// The text (BOS is put before it).
    #[arg(long)]
    text: Option<String>,
    /// Read the text from this file instead (- for standard input).
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Print ids, losses and logits as JSON.
    #[arg(long)]
    json: bool,
    /// Run the model on this device: cpu, cuda or cuda:N (a build with --features cuda).
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    device: Device,
}

/// The most logits `--json` holds and prints (as f32): it is a tool for checking a model on a
/// short text, and a long text's logits would be terabytes.
const MAX_JSON_LOGITS_BYTES: u64 = 1 << 30;

/// The loss of every token of BOS + the text, through evaluation's scoring code (in windows of
/// the model's context, as evaluation cuts a split).
pub fn exec(args: ScoreArgs, out: &mut dyn Write) -> Result<()> {
    let input = text_or_file(args.text, args.file.as_deref(), "--text")?;
    let folder = ModelFolder::open(&train_folder(&args.checkpoint))?;
    let mut ids = vec![crate::tokenizer::BOS];
    ids.extend(folder.tokenizer.encode(&input.text));
    // The tokenizer puts a space before every text, so even an empty one has a token; a text
    // of blanks alone has no words to predict either.
    if input.text.trim().is_empty() || ids.len() < 2 {
        bail!(
            "{} has nothing to score (it is empty or blank); give a text",
            input.origin
        );
    }
    if args.json {
        // Every position's logits are held and printed: bound them before anything is computed.
        let bytes = ids.len() as u64 * folder.dims().vocab_size as u64 * 4;
        if bytes > MAX_JSON_LOGITS_BYTES {
            bail!(
                "--json prints the logits of every position: {} positions × {} tokens would be {} of floats (at most {}); score a shorter text, or leave --json out for the figures alone",
                ids.len(),
                folder.dims().vocab_size,
                human_bytes(bytes),
                human_bytes(MAX_JSON_LOGITS_BYTES)
            );
        }
    }
    let job = ScoreJob {
        folder: &folder,
        ids: &ids,
        with_logits: args.json,
    };
    let (losses, logits) = run_model(args.device, folder.dims(), job)?;
    let tokens_per_byte = losses.len() as f64 / input.text.len().max(1) as f64;
    let result = EvalResult::new(losses.iter().sum(), losses.len() as u64, tokens_per_byte);
    if args.json {
        let rows: Vec<&[f32]> = logits.chunks(folder.dims().vocab_size).collect();
        let value = serde_json::json!({
            "ids": ids,
            "losses": losses,
            "loss": result.loss,
            "bits_per_byte": result.bits_per_byte,
            "logits": rows,
        });
        writeln!(out, "{}", serde_json::to_string(&value)?)?;
    } else {
        writeln!(
            out,
            "{} tokens: {:.4} nats/token (perplexity {:.2}), {:.4} bits/byte",
            losses.len(),
            result.loss,
            result.loss.exp(),
            result.bits_per_byte
        )?;
    }
    Ok(())
}

/// The per-token losses of `ids` and, when asked, the logits at every position (each window of
/// the context run again without targets, since the loss overwrites its logits).
struct ScoreJob<'a> {
    folder: &'a ModelFolder,
    ids: &'a [u32],
    with_logits: bool,
}

impl ModelJob for ScoreJob<'_> {
    type Output = Result<(Vec<f64>, Vec<f32>)>;
    fn run<S: Shape, B: Backend<Float = f32>>(
        self,
        shape: S,
        backend: B,
        _device: &DeviceInfo,
    ) -> Self::Output {
        /// Windows scored per forward pass.
        const BATCH: usize = 8;
        let context = self.folder.dims().max_seq_len;
        let mut model = self.folder.load(shape, backend)?;
        let losses = sequence_losses(&mut model, self.ids, context, BATCH)?;
        let mut logits = Vec::new();
        if self.with_logits {
            for window in self.ids.chunks(context) {
                model.forward(window, None, 1, window.len(), 1.0)?;
                logits.extend(model.logits()?.expect("a forward pass keeps its logits"));
            }
        }
        Ok((losses, logits))
    }
}
