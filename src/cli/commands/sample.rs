//! `tinyllm sample`: stories from a trained model, streamed as they are written.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use crate::cli::args::{parse_device, parse_precision, train_folder};
use crate::engine::{Device, PrecisionSetting};
use crate::generate::folder::ModelFolder;
use crate::generate::{GenerateOptions, Generation, Prompt, SampleSink, Sampling, sample_folder};

/// Generate text with a trained model (streamed as it is written).
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    tinyllm sample --checkpoint runs/tinystories/default/artifacts/train --prompt \"Once upon a time\"\n  \
    tinyllm sample --checkpoint runs/tinystories/default --temperature 0 --max-new-tokens 100\n  \
    tinyllm sample --checkpoint runs/tinystories/default --interactive\n\n\
    The checkpoint is a train artifact (model.safetensors, config.json, tokenizer.json) or a\n\
    run folder whose artifacts/train is one. Generation stops at the end of a story, after\n\
    --max-new-tokens, or when the model's context is full.")]
pub struct SampleArgs {
    /// A train artifact folder, or a run folder holding one under artifacts/train.
    #[arg(long, value_name = "DIR")]
    checkpoint: PathBuf,
    /// The story's opening (default: none, a story from scratch).
    #[arg(long, conflicts_with = "interactive")]
    prompt: Option<String>,
    /// 0 picks the most likely token every time.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    temperature: f64,
    /// Sample only among the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sample only among the most likely tokens whose probabilities reach p, in (0, 1].
    #[arg(long, default_value_t = 0.9, allow_negative_numbers = true)]
    top_p: f64,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Read prompts from standard input, one per line, and continue each.
    #[arg(long)]
    interactive: bool,
    /// Generate on this device: cpu, cuda or cuda:N (a build with --features cuda).
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    device: Device,
    /// The matmuls' precision: f32, bf16 (bf16 weights, f32 sums) or auto (bf16 on a CPU with
    /// native bf16 dot products).
    #[arg(long, default_value = "auto", value_parser = parse_precision)]
    precision: PrecisionSetting,
}

/// Checks the options and the model folder, then generates for the prompt or for each line of
/// standard input.
pub fn exec(args: SampleArgs, out: &mut dyn Write) -> Result<()> {
    let options = GenerateOptions {
        sampling: Sampling {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
        },
        max_new_tokens: args.max_new_tokens,
        seed: args.seed,
        ignore_end_of_story: false,
    };
    let sampling = &options.sampling;
    if !(sampling.top_p > 0.0 && sampling.top_p <= 1.0) {
        bail!("--top-p {} must be in (0, 1]", sampling.top_p);
    }
    if !(sampling.temperature >= 0.0 && sampling.temperature.is_finite()) {
        bail!(
            "--temperature {} must be 0 or more (0: always the most likely token)",
            sampling.temperature
        );
    }
    if args.prompt.as_deref().is_some_and(|p| p.trim().is_empty()) {
        bail!(
            "--prompt is empty; give the story's opening, or leave --prompt out to start from nothing"
        );
    }
    let folder = ModelFolder::open(&train_folder(&args.checkpoint))?;
    let precision = args.precision.resolve(args.device);
    let prompt_of = |text: String| Prompt { text, options };
    let mut sink = ConsoleSink { out };
    if args.interactive {
        eprintln!(
            "one prompt per line; an empty line starts a story from nothing; end with Ctrl-D"
        );
        let lines = std::io::stdin().lines().map(|line| {
            line.map(|l| prompt_of(l.trim_end().to_string()))
                .map_err(Into::into)
        });
        sample_folder(&folder, args.device, precision, lines, &mut sink)?;
    } else {
        let once = std::iter::once(Ok(prompt_of(args.prompt.unwrap_or_default())));
        sample_folder(&folder, args.device, precision, once, &mut sink)?;
    }
    Ok(())
}

/// `tinyllm sample`'s output: the story on standard output as it is written, how it ended on
/// standard error.
struct ConsoleSink<'a> {
    out: &'a mut dyn Write,
}

impl SampleSink for ConsoleSink<'_> {
    fn start(&mut self, prompt: &Prompt) -> std::io::Result<()> {
        write!(self.out, "{}", prompt.text)
    }

    fn piece(&mut self, piece: &str) -> std::io::Result<()> {
        write!(self.out, "{piece}")?;
        self.out.flush()
    }

    fn finish(&mut self, _prompt: &Prompt, generation: &Generation) -> std::io::Result<()> {
        writeln!(self.out)?;
        eprintln!(
            "[{} tokens in {:.2} s, {:.0} tokens/s; stopped at {}]",
            generation.tokens.len(),
            generation.secs,
            generation.tokens.len() as f64 / generation.secs.max(1e-9),
            generation.stop.as_str()
        );
        Ok(())
    }
}
