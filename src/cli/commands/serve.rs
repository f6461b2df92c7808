//! `tinyllm serve`: a trained model behind an OpenAI-compatible HTTP API.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use crate::cli::args::{parse_device, parse_precision, train_folder};
use crate::engine::{Device, PrecisionSetting};
use crate::generate::folder::ModelFolder;
use crate::serve::{ServeConfig, default_model_name, serve};

/// Each worker is a thread with a KV cache of up to the model's whole context.
const MAX_PARALLEL: usize = 256;
/// Each queued completion holds its prompt (up to --body-limit) until a worker takes it.
const MAX_QUEUE: usize = 4096;
const MAX_TOKENS_LIMIT: usize = 1 << 20;
const MIN_BODY_LIMIT: usize = 1 << 10;
const MAX_BODY_LIMIT: usize = 256 << 20;

/// Serve a trained model over HTTP with OpenAI's completions API.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    tinyllm serve --checkpoint runs/quickstart/default\n  \
    tinyllm serve --checkpoint runs/tinystories/default --port 0 --parallel 4 --queue 16\n  \
    curl -s localhost:8080/v1/completions -H 'content-type: application/json' \\\n      \
    -d '{\"prompt\": \"Once upon a time\", \"max_tokens\": 50, \"seed\": 42}'\n\n\
    Routes: POST /v1/completions (OpenAI's completions; \"stream\": true for server-sent events),\n\
    GET /v1/models, GET /health, and a playground page at /. OpenAI's client libraries work with\n\
    base_url http://HOST:PORT/v1 and any api_key.\n\n\
    A request with the same prompt, seed, temperature, top_p, top_k and max_tokens gives the\n\
    text `tinyllm sample` prints with those flags (same --device and --precision). Without a\n\
    seed the server picks one and returns it in the response's \"seed\" field. Defaults are\n\
    OpenAI's: temperature 1, top_p 1, max_tokens 256; top_k (0: all) and ignore_eos (go on past\n\
    the end of a story) are extensions.\n\n\
    Once the model is loaded the server prints one line, `listening on http://HOST:PORT`, on\n\
    standard output (--port 0 picks a free port), and one line per request on standard error.\n\
    When every slot is busy and the queue is full, requests get 429 with Retry-After. Ctrl-C or\n\
    SIGTERM stops it after the completions under way and queued.")]
pub struct ServeArgs {
    /// A train artifact folder, or a run folder holding one under artifacts/train.
    #[arg(long, value_name = "DIR")]
    checkpoint: PathBuf,
    /// The address to listen on (0.0.0.0: every interface).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The port (0: any free one, printed once listening).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Generate on this device: cpu, cuda or cuda:N (a build with --features cuda).
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    device: Device,
    /// The matmuls' precision: f32, bf16 (bf16 weights, f32 sums) or auto (bf16 on a CPU with
    /// native bf16 dot products).
    #[arg(long, default_value = "auto", value_parser = parse_precision)]
    precision: PrecisionSetting,
    /// The model's id in the API [default: the run's pipeline and variant, e.g.
    /// quickstart-default for runs/quickstart/default].
    #[arg(long, value_name = "NAME")]
    model_name: Option<String>,
    /// Completions generated at once, each by a worker thread with its own KV cache [default:
    /// the number of cores on the CPU, where one completion's decoding leaves cores idle and
    /// parallel ones fill them (more slots than cores raise the total rate of a tiny model
    /// further, at the cost of each stream's); 1 on a GPU, the one setting verified there].
    #[arg(long, value_name = "N")]
    parallel: Option<usize>,
    /// Completions that may wait for a free slot; beyond them requests get 429 (0: none wait).
    #[arg(long, value_name = "N", default_value_t = 64)]
    queue: usize,
    /// The largest max_tokens a request may ask for (generation also ends when the model's
    /// context is full).
    #[arg(long, value_name = "N", default_value_t = 4096)]
    max_tokens_limit: usize,
    /// The largest request body, in bytes; larger ones get 413.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    body_limit: usize,
}

/// Checks the flags and the model folder, then serves until Ctrl-C or SIGTERM.
pub fn exec(args: ServeArgs, out: &mut dyn Write) -> Result<()> {
    let parallel = match args.parallel {
        Some(n) => n,
        None => match args.device {
            Device::Cpu => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Device::Cuda(_) => 1,
        },
    };
    if !(1..=MAX_PARALLEL).contains(&parallel) {
        bail!("--parallel {parallel} must be between 1 and {MAX_PARALLEL}");
    }
    if args.queue > MAX_QUEUE {
        bail!("--queue {} is more than {MAX_QUEUE}", args.queue);
    }
    if !(1..=MAX_TOKENS_LIMIT).contains(&args.max_tokens_limit) {
        bail!(
            "--max-tokens-limit {} must be between 1 and {MAX_TOKENS_LIMIT}",
            args.max_tokens_limit
        );
    }
    if !(MIN_BODY_LIMIT..=MAX_BODY_LIMIT).contains(&args.body_limit) {
        bail!(
            "--body-limit {} must be between {MIN_BODY_LIMIT} and {MAX_BODY_LIMIT} bytes",
            args.body_limit
        );
    }
    let model_name = args
        .model_name
        .unwrap_or_else(|| default_model_name(&args.checkpoint));
    if model_name.is_empty()
        || model_name.len() > 256
        || model_name.chars().any(|c| c.is_control() || c == '/')
    {
        bail!(
            "--model-name {model_name:?} must be 1 to 256 characters, without '/' or control characters"
        );
    }
    let folder = ModelFolder::open(&train_folder(&args.checkpoint))?;
    let config = ServeConfig {
        host: args.host,
        port: args.port,
        device: args.device,
        precision: args.precision.resolve(args.device),
        model_name,
        parallel,
        queue: args.queue,
        max_tokens_limit: args.max_tokens_limit,
        body_limit: args.body_limit,
    };
    serve(folder, config, out)?;
    Ok(())
}
