//! The `tinyllm` command line. [`main_with`] is the whole program; the binary only hands it the
//! arguments and the stage implementations (tests hand it their own).

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::engine::Device;
use crate::fsutil::human_bytes;
use crate::model::{ModelDims, Preset};
use crate::pipeline::runner::{self, PlanState};
use crate::pipeline::{self, Cache, LoadedSpec, SpecSources, StageId, StageRegistry};

const DEFAULT_CACHE: &str = ".tinyllm/cache";
const DEFAULT_RUNS: &str = "runs";

#[derive(Debug, Parser)]
#[command(
    name = "tinyllm",
    version,
    about = "Pretrain tiny LLaMA2-architecture language models from declarative TOML pipelines",
    long_about = "Pretrain tiny LLaMA2-architecture language models from scratch.\n\n\
        A pipeline spec (TOML) describes five stages: download → train_vocab → pretokenize → \
        train → sample. Every stage's output is cached under a key computed from its settings \
        and its inputs, so a re-run only does what changed.",
    after_help = "Examples:\n  \
        tinyllm run pipelines/quickstart.toml\n  \
        tinyllm run pipelines/tinystories.toml --overlay configs/small.toml --set train.lr=1e-3\n  \
        tinyllm run pipelines/tinystories.toml --sweep train.lr=1e-3,5e-4,3e-4\n  \
        tinyllm status pipelines/tinystories.toml\n  \
        tinyllm schema > pipelines/schema.json"
)]
struct Cli {
    /// More log output (-v: info, -vv: debug); RUST_LOG overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// No progress bars.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a pipeline: every stage whose artifact is not cached yet.
    #[command(after_help = "Examples:\n  \
        tinyllm run pipelines/quickstart.toml\n  \
        tinyllm run pipelines/tinystories.toml --until pretokenize\n  \
        tinyllm run pipelines/tinystories.toml --set train.max_iters=2000 --set 'sample.prompts=[\"Once\"]'\n  \
        tinyllm run pipelines/tinystories.toml --sweep train.lr=1e-3,5e-4 --sweep train.seed=1,2\n  \
        tinyllm run pipelines/tinystories.toml --force train --verify")]
    Run {
        #[command(flatten)]
        spec: SpecArgs,
        #[command(flatten)]
        folders: FolderArgs,
        /// Stop after this stage (download, train_vocab, pretokenize, train, sample).
        #[arg(long, value_name = "STAGE", value_parser = parse_stage)]
        until: Option<StageId>,
        /// Rebuild this stage even if it is cached (`all` for every stage); repeatable.
        #[arg(long, value_name = "STAGE|all")]
        force: Vec<String>,
        /// Re-hash every cached file and rebuild artifacts that do not match their manifest.
        #[arg(long)]
        verify: bool,
        /// Show what would run, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Worker threads (default: the spec's pipeline.threads, else all cores).
        #[arg(long, value_name = "N")]
        threads: Option<usize>,
    },
    /// Show each stage's cache key and whether its artifact is cached.
    Status {
        #[command(flatten)]
        spec: SpecArgs,
        #[command(flatten)]
        folders: FolderArgs,
        /// Re-hash cached files instead of checking their sizes.
        #[arg(long)]
        verify: bool,
    },
    /// Print the JSON Schema of pipeline specs (editors use it to complete and check them).
    Schema,
    /// Inspect or clean the artifact cache.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// Show how a tokenizer splits a text: ids and pieces.
    #[command(after_help = "Examples:\n  \
        tinyllm tokenize --tokenizer runs/tinystories/default/artifacts/train_vocab \"Once upon a time\"\n  \
        tinyllm tokenize --tokenizer tokenizer.json --ids-only \"Lily had 3 cats.\"")]
    Tokenize {
        /// A tokenizer.json, or a folder holding one (a train_vocab artifact).
        #[arg(long, value_name = "PATH")]
        tokenizer: PathBuf,
        /// Print only the ids.
        #[arg(long)]
        ids_only: bool,
        /// The text to tokenize.
        text: String,
    },
    /// Generate text with a trained model (streamed as it is written).
    #[command(after_help = "Examples:\n  \
        tinyllm sample --checkpoint runs/tinystories/default/artifacts/train --prompt \"Once upon a time\"\n  \
        tinyllm sample --checkpoint runs/tinystories/default --temperature 0 --max-new-tokens 100\n  \
        tinyllm sample --checkpoint runs/tinystories/default --interactive\n\n\
        The checkpoint is a train artifact (model.safetensors, config.json, tokenizer.json) or a\n\
        run folder whose artifacts/train is one. Generation stops at the end of a story, after\n\
        --max-new-tokens, or when the model's context is full.")]
    Sample {
        /// A train artifact folder, or a run folder holding one under artifacts/train.
        #[arg(long, value_name = "DIR")]
        checkpoint: PathBuf,
        /// The story's opening (default: none, a story from scratch).
        #[arg(long, conflicts_with = "interactive")]
        prompt: Option<String>,
        /// 0 picks the most likely token every time.
        #[arg(long, default_value_t = 1.0)]
        temperature: f64,
        /// Sample only among the k most likely tokens (0: all).
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        /// Sample only among the most likely tokens whose probabilities reach p, in (0, 1].
        #[arg(long, default_value_t = 0.9)]
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
    },
    /// How well a trained model predicts a text: loss in nats/token and bits/byte, and with
    /// --json the ids and every position's logits.
    #[command(after_help = "Example:\n  \
        tinyllm score --checkpoint runs/tinystories/default --text \"Once upon a time there was a cat.\"")]
    Score {
        /// A train artifact folder, or a run folder holding one under artifacts/train.
        #[arg(long, value_name = "DIR")]
        checkpoint: PathBuf,
        /// The text (BOS is put before it).
        #[arg(long)]
        text: String,
        /// Print ids, losses and logits as JSON.
        #[arg(long)]
        json: bool,
        /// Run the model on this device: cpu, cuda or cuda:N (a build with --features cuda).
        #[arg(long, default_value = "cpu", value_parser = parse_device)]
        device: Device,
    },
    /// Write a trained model in another format (hf: a folder transformers loads; llama2c: the
    /// files llama2.c's run.c reads).
    #[command(after_help = "Examples:\n  \
        tinyllm export --checkpoint runs/tinystories/default --format hf --out tinystories-hf\n\n\
        Then, in Python: AutoModelForCausalLM.from_pretrained(\"tinystories-hf\") and\n\
        AutoTokenizer.from_pretrained(\"tinystories-hf\").\n\n  \
        tinyllm export --checkpoint runs/tinystories/default --format llama2c --out tinystories-llama2c\n\n\
        Then, in a llama2.c checkout: ./run tinystories-llama2c/model.bin -z tinystories-llama2c/tokenizer.bin\n\
        (run.c's greedy output, -t 0, is tinyllm sample --temperature 0's text).")]
    Export {
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
    },
    /// Measure speed on this machine (figures, not tests).
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Tokenizer training (seconds, peak memory) and pretokenize throughput (MB/s, tokens/s) on
    /// a corpus built to a chosen size from text files.
    #[command(after_help = "Example:\n  \
        tinyllm bench data --text ../shared/data/tinystories/train_head.txt --mb 100")]
    Data {
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
    },
    /// Generation speed with the KV cache, batch 1: tokens/s (median of runs), time to the
    /// first token, peak memory.
    #[command(after_help = "Examples:\n  \
        tinyllm bench generate --preset tutorial --new-tokens 256\n  \
        tinyllm bench generate --checkpoint runs/tinystories/default --threads 2 --json")]
    Generate {
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
        #[command(flatten)]
        run: BenchRun,
    },
    /// Training step speed: median ms/step, tokens/s, GFLOP/s against the machine's matmul peak,
    /// peak memory.
    #[command(after_help = "Examples:\n  \
        tinyllm bench train --preset tutorial --batch 8 --seq 256\n  \
        tinyllm bench train --preset stories110M --device cuda\n  \
        tinyllm bench train --dim 128 --n-layers 4 --n-heads 4 --n-kv-heads 2 --vocab-size 512 --threads 1 --json\n  \
        tinyllm bench train --spec pipelines/tinystories-10min.toml --val-windows 1488\n\n\
        With --spec, the model, batch, sequence, accumulation and clipping are the pipeline's, and\n\
        the figures end with an estimate of a whole run of it: its steps, validation passes,\n\
        checkpoints and metrics log, each timed the way the trainer runs them.")]
    Train {
        /// A model preset (tutorial, stories260K, stories15M, stories42M, stories110M, quickstart).
        #[arg(long, value_name = "PRESET", value_parser = parse_preset, conflicts_with = "dim")]
        preset: Option<Preset>,
        /// A pipeline spec whose model and train settings to measure, with a whole run's time.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["preset", "dim", "batch", "seq", "grad_accum"])]
        spec: Option<PathBuf>,
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
        #[command(flatten)]
        run: BenchRun,
    },
}

fn parse_preset(name: &str) -> Result<Preset, String> {
    Preset::ALL
        .into_iter()
        .find(|p| p.name() == name)
        .ok_or_else(|| {
            let names: Vec<&str> = Preset::ALL.iter().map(|p| p.name()).collect();
            format!("unknown preset `{name}`; presets are {}", names.join(", "))
        })
}

#[derive(Debug, Subcommand)]
enum CacheCommand {
    /// List the cached artifacts.
    Ls {
        #[command(flatten)]
        folders: FolderArgs,
    },
    /// Remove what interrupted runs left behind; optionally artifacts no run folder uses.
    Gc {
        #[command(flatten)]
        folders: FolderArgs,
        /// Also remove artifacts that no run folder under --runs links to.
        #[arg(long)]
        unreferenced: bool,
        /// Also remove the resumable partial work of unfinished stages.
        #[arg(long)]
        scratch: bool,
        /// Show what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Args)]
struct SpecArgs {
    /// The pipeline spec (TOML), e.g. pipelines/tinystories.toml.
    spec: PathBuf,
    /// A TOML file merged over the spec (repeatable; later ones win).
    #[arg(long, value_name = "FILE")]
    overlay: Vec<PathBuf>,
    /// Set one value, as TOML: train.lr=1e-3, 'sample.prompts=["Once"]' (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Sweep a key over values: train.lr=1e-3,5e-4 (repeatable: the cartesian product runs).
    #[arg(long, value_name = "KEY=V1,V2,...")]
    sweep: Vec<String>,
    /// Train and sample on this device: cpu, cuda or cuda:N (the same as --set
    /// train.device=… --set sample.device=…; CUDA needs a build with --features cuda).
    #[arg(long, value_name = "DEVICE", value_parser = parse_device)]
    device: Option<Device>,
}

/// Where and how a benchmark runs, and how it prints.
#[derive(Debug, Args)]
struct BenchRun {
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// cpu, cuda or cuda:N (a build with --features cuda).
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    device: Device,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct FolderArgs {
    /// Cache folder [default: $TINYLLM_CACHE, else the spec's pipeline.cache_dir, else .tinyllm/cache].
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Run folders [default: the spec's pipeline.runs_dir, else runs].
    #[arg(long, value_name = "DIR")]
    runs: Option<PathBuf>,
}

fn parse_device(name: &str) -> Result<Device, String> {
    name.parse()
}

fn parse_stage(name: &str) -> Result<StageId, String> {
    StageId::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = StageId::ALL.iter().map(|s| s.name()).collect();
        format!("unknown stage `{name}`; stages are {}", names.join(", "))
    })
}

/// Runs the command line `args` with the given stage implementations and returns the exit code.
pub fn main_with<I, T>(args: I, registry: StageRegistry) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(err.exit_code().clamp(0, 255) as u8);
        }
    };
    init_logging(cli.verbose);
    match execute(cli, &registry) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", one_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// Output piped into `head` and closed early is not an error worth a message.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The error and its causes on one line, without repeating a cause the message already says.
fn one_line(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string().replace('\n', " ");
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .try_init();
}

fn execute(cli: Cli, registry: &StageRegistry) -> Result<()> {
    let quiet = cli.quiet || !std::io::stderr().is_terminal();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match cli.command {
        Command::Run {
            spec,
            folders,
            until,
            force,
            verify,
            dry_run,
            threads,
        } => {
            let loaded = load_spec(&spec)?;
            let force = parse_force(&force)?;
            let first = &loaded.variants[0].spec;
            set_threads(threads.or(first.pipeline.threads))?;
            let opts = pipeline::RunOptions {
                cache_dir: cache_dir(&folders, Some(&loaded)),
                runs_dir: runs_dir(&folders, Some(&loaded)),
                until,
                force,
                verify,
                dry_run,
                quiet,
            };
            pipeline::run(&loaded, registry, &opts, &mut out)?;
            Ok(())
        }
        Command::Status {
            spec,
            folders,
            verify,
        } => {
            let loaded = load_spec(&spec)?;
            let opts = pipeline::RunOptions {
                cache_dir: cache_dir(&folders, Some(&loaded)),
                runs_dir: runs_dir(&folders, Some(&loaded)),
                until: None,
                force: BTreeSet::new(),
                verify,
                dry_run: true,
                quiet,
            };
            print_status(&loaded, &opts, registry, &mut out)
        }
        Command::Bench { command } => match command {
            BenchCommand::Data {
                text,
                mb,
                vocab_size,
                threads,
                json,
            } => {
                set_threads(threads)?;
                if mb.is_nan() || mb <= 0.0 {
                    bail!("--mb must be positive");
                }
                let figures = crate::bench::data::run(&crate::bench::data::DataBench {
                    texts: text,
                    target_bytes: (mb * 1e6) as u64,
                    vocab_size,
                })?;
                if json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&figures)?)?;
                } else {
                    writeln!(
                        out,
                        "corpus {:.1} MB ({} stories), BPE vocab {}, {} threads",
                        figures.corpus_mb, figures.stories, figures.vocab_size, figures.threads
                    )?;
                    writeln!(
                        out,
                        "  tokenizer training {:>9.1} s",
                        figures.tokenizer_train_secs
                    )?;
                    if let Some(rss) = figures.peak_rss_after_training_mb {
                        writeln!(out, "  peak RSS           {rss:>9.0} MB")?;
                    }
                    writeln!(
                        out,
                        "  pretokenize        {:>9.1} MB/s of text, {:.0} tokens/s ({:.2} bytes/token)",
                        figures.pretokenize_mb_per_sec,
                        figures.pretokenize_tokens_per_sec,
                        figures.bytes_per_token
                    )?;
                }
                Ok(())
            }
            BenchCommand::Generate {
                preset,
                checkpoint,
                new_tokens,
                runs,
                run:
                    BenchRun {
                        threads,
                        device,
                        json,
                    },
            } => {
                use crate::bench::generate::{GenerateBench, Source, run};
                set_threads(threads)?;
                if new_tokens == 0 || runs == 0 {
                    bail!("--new-tokens and --runs must be at least 1");
                }
                let bench = GenerateBench { new_tokens, runs };
                let figures = match checkpoint {
                    Some(checkpoint) => {
                        let dir = train_folder(&checkpoint);
                        let folder = crate::generate::folder::ModelFolder::open(&dir)?;
                        let name = dir.display().to_string();
                        run(Source::Folder(&folder, name), device, &bench)?
                    }
                    None => run(
                        Source::Preset(preset.unwrap_or(Preset::Tutorial)),
                        device,
                        &bench,
                    )?,
                };
                if json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&figures)?)?;
                } else {
                    let runs: Vec<String> = figures
                        .tokens_per_sec_runs
                        .iter()
                        .map(|t| format!("{t:.0}"))
                        .collect();
                    writeln!(
                        out,
                        "model {} ({:.2} M params), batch 1, {} new tokens, {}, {} threads, {} runs",
                        figures.model,
                        figures.params as f64 / 1e6,
                        figures.new_tokens,
                        figures.device,
                        figures.threads,
                        figures.runs
                    )?;
                    writeln!(
                        out,
                        "  {:.0} tokens/s (median; runs: {}), first token in {:.1} ms, peak RSS {}",
                        figures.median_tokens_per_sec,
                        runs.join(", "),
                        figures.median_first_token_ms,
                        figures
                            .peak_rss_mb
                            .map_or("unknown".to_string(), |mb| format!("{mb:.0} MB"))
                    )?;
                }
                Ok(())
            }
            BenchCommand::Train {
                preset,
                spec,
                val_windows,
                dim,
                n_layers,
                n_heads,
                n_kv_heads,
                vocab_size,
                multiple_of,
                batch,
                seq,
                grad_accum,
                steps,
                run:
                    BenchRun {
                        threads,
                        device,
                        json,
                    },
            } => {
                use crate::bench::train::{RunPlan, TrainBench};
                use crate::train::step::StepConfig;
                set_threads(threads)?;
                if batch == 0 || seq == 0 || steps == 0 || grad_accum == 0 {
                    bail!("--batch, --seq, --grad-accum and --steps must be at least 1");
                }
                let mut bench = match dim {
                    Some(dim) => {
                        let n_heads = n_heads.unwrap_or(1);
                        let dims = ModelDims {
                            dim,
                            n_layers: n_layers.unwrap_or(1),
                            n_heads,
                            n_kv_heads: n_kv_heads.unwrap_or(n_heads),
                            vocab_size: vocab_size.unwrap_or(1),
                            multiple_of,
                            max_seq_len: seq,
                        };
                        TrainBench {
                            dims,
                            preset: None,
                            step: StepConfig {
                                batch,
                                seq,
                                accum: grad_accum,
                                grad_clip: 1.0,
                            },
                            warmup_steps: 2,
                            steps,
                            device,
                            run: None,
                        }
                    }
                    None => {
                        let preset = preset.unwrap_or(Preset::Tutorial);
                        TrainBench {
                            dims: preset.dims(),
                            preset: Some(preset),
                            step: StepConfig {
                                batch,
                                seq,
                                accum: grad_accum,
                                grad_clip: 1.0,
                            },
                            warmup_steps: 2,
                            steps,
                            device,
                            run: None,
                        }
                    }
                };
                if let Some(path) = spec {
                    let loaded = pipeline::load(&SpecSources {
                        spec: path,
                        ..SpecSources::default()
                    })?;
                    let spec = &loaded.variants[0].spec;
                    let t = &spec.train;
                    let val_windows = match (val_windows, t.eval_windows) {
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
                    bench.run = Some(RunPlan {
                        pipeline: spec.pipeline.name.clone(),
                        max_iters: t.max_iters,
                        eval_interval: t.eval_interval,
                        val_windows,
                        checkpoint_interval: t.checkpoint_interval,
                        log_interval: t.log_interval,
                    });
                }
                let figures = crate::bench::train::run(&bench)?;
                if json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&figures)?)?;
                } else {
                    writeln!(
                        out,
                        "model {} ({:.2} M params), batch {} × seq {} × {} micro-batches, {}, {} threads, {} steps",
                        figures.model,
                        figures.params as f64 / 1e6,
                        figures.batch,
                        figures.seq,
                        figures.grad_accum_steps,
                        figures.device,
                        figures.threads,
                        figures.steps
                    )?;
                    writeln!(
                        out,
                        "  median step      {:>10.1} ms",
                        figures.median_ms_per_step
                    )?;
                    writeln!(out, "  tokens/s         {:>10.0}", figures.tokens_per_sec)?;
                    writeln!(
                        out,
                        "  achieved         {:>10.1} GFLOP/s ({:.1} GFLOP/step)",
                        figures.achieved_gflops, figures.gflops_per_step
                    )?;
                    writeln!(
                        out,
                        "  matmul peak      {:>10.1} GFLOP/s ({:.0}% of it)",
                        figures.matmul_peak_gflops,
                        100.0 * figures.fraction_of_peak
                    )?;
                    if let (Some(peak), Some(mfu)) = (figures.bf16_peak_gflops, figures.mfu_bf16) {
                        writeln!(
                            out,
                            "  bf16 peak        {peak:>10.1} GFLOP/s (MFU {:.1}%)",
                            100.0 * mfu
                        )?;
                    }
                    if let Some(rss) = figures.peak_rss_mb {
                        writeln!(out, "  peak RSS         {rss:>10.0} MB")?;
                    }
                    if let Some(run) = &figures.run {
                        let total = run.total_secs();
                        writeln!(
                            out,
                            "a run of {} ({} steps), estimated: {}",
                            run.pipeline,
                            run.steps,
                            runner::human_secs(total)
                        )?;
                        let counts = [
                            format!("{} × {:.1} ms", run.steps, run.step_secs * 1e3),
                            format!(
                                "{} × {:.2} s ({} windows)",
                                run.evaluations, run.validation_pass_secs, run.validation_windows
                            ),
                            format!("{} × {:.3} s", run.checkpoints, run.checkpoint_secs),
                            format!("{} × {:.3} ms", run.log_lines, run.log_line_secs * 1e3),
                        ];
                        for ((part, secs), count) in run.parts().iter().zip(counts) {
                            writeln!(
                                out,
                                "  {part:<16} {:>9.1} s {:>5.1}%   {count}",
                                secs,
                                100.0 * secs / total.max(1e-9)
                            )?;
                        }
                    }
                }
                Ok(())
            }
        },
        Command::Tokenize {
            tokenizer,
            ids_only,
            text,
        } => {
            let path = if tokenizer.is_dir() {
                tokenizer.join(crate::stages::train_vocab::TOKENIZER_JSON)
            } else {
                tokenizer
            };
            let tokenizer = crate::tokenizer::Tokenizer::load(&path)?;
            let ids = tokenizer.encode(&text);
            let list: Vec<String> = ids.iter().map(u32::to_string).collect();
            writeln!(out, "{}", list.join(" "))?;
            if !ids_only {
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
        Command::Sample {
            checkpoint,
            prompt,
            temperature,
            top_k,
            top_p,
            max_new_tokens,
            seed,
            interactive,
            device,
        } => {
            let options = crate::generate::GenerateOptions {
                sampling: crate::generate::Sampling {
                    temperature,
                    top_k,
                    top_p,
                },
                max_new_tokens,
                seed,
            };
            sample_command(&checkpoint, prompt, interactive, &options, device, &mut out)
        }
        Command::Score {
            checkpoint,
            text,
            json,
            device,
        } => score_command(&train_folder(&checkpoint), &text, json, device, &mut out),
        Command::Export {
            checkpoint,
            format,
            out: path,
        } => {
            use crate::export::llama2c::{self, MODEL_BIN, TOKENIZER_BIN, Version};
            let from = train_folder(&checkpoint);
            let shown = path.display();
            match format.as_str() {
                "hf" => {
                    crate::export::hf::export(&from, &path)?;
                    writeln!(
                        out,
                        "wrote {shown} (Hugging Face: model.safetensors, config.json, generation_config.json, tokenizer.json, tokenizer_config.json)"
                    )?;
                }
                "llama2c" => {
                    llama2c::export(&from, &path, Version::Legacy)?;
                    writeln!(
                        out,
                        "wrote {shown} (llama2.c: {MODEL_BIN}, {TOKENIZER_BIN}); run it with: \
                         ./run {shown}/{MODEL_BIN} -z {shown}/{TOKENIZER_BIN}"
                    )?;
                }
                "llama2c-v1" => {
                    llama2c::export(&from, &path, Version::V1)?;
                    writeln!(
                        out,
                        "wrote {shown} (llama2.c version 1: {MODEL_BIN}, {TOKENIZER_BIN})"
                    )?;
                }
                other => bail!("unknown export format `{other}`; formats: hf, llama2c, llama2c-v1"),
            }
            Ok(())
        }
        Command::Schema => {
            let schema = pipeline::spec::json_schema();
            writeln!(out, "{}", serde_json::to_string_pretty(&schema)?)?;
            Ok(())
        }
        Command::Cache { command } => match command {
            CacheCommand::Ls { folders } => cache_ls(&cache_dir(&folders, None), &mut out),
            CacheCommand::Gc {
                folders,
                unreferenced,
                scratch,
                dry_run,
            } => cache_gc(
                &cache_dir(&folders, None),
                &runs_dir(&folders, None),
                unreferenced,
                scratch,
                dry_run,
                &mut out,
            ),
        },
    }
}

/// Sizes rayon's global pool (once per process; a later call changes nothing).
fn set_threads(threads: Option<usize>) -> Result<()> {
    match threads {
        Some(0) => bail!("--threads must be at least 1"),
        Some(threads) => {
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build_global();
            Ok(())
        }
        None => Ok(()),
    }
}

fn load_spec(args: &SpecArgs) -> Result<LoadedSpec> {
    let sources = SpecSources {
        spec: args.spec.clone(),
        overlays: args.overlay.clone(),
        sets: args
            .set
            .iter()
            .cloned()
            .chain(args.device.into_iter().flat_map(|d| {
                [
                    format!("train.device=\"{d}\""),
                    format!("sample.device=\"{d}\""),
                ]
            }))
            .collect(),
        sweeps: args.sweep.clone(),
    };
    Ok(pipeline::load(&sources)?)
}

fn parse_force(values: &[String]) -> Result<BTreeSet<StageId>> {
    let mut stages = BTreeSet::new();
    for value in values {
        if value == "all" {
            stages.extend(StageId::ALL);
        } else {
            stages.insert(parse_stage(value).map_err(|e| anyhow::anyhow!("--force: {e}"))?);
        }
    }
    Ok(stages)
}

fn cache_dir(folders: &FolderArgs, loaded: Option<&LoadedSpec>) -> PathBuf {
    folders
        .cache
        .clone()
        .or_else(|| std::env::var_os("TINYLLM_CACHE").map(PathBuf::from))
        .or_else(|| {
            loaded.and_then(|l| {
                l.variants[0]
                    .spec
                    .pipeline
                    .cache_dir
                    .as_ref()
                    .map(PathBuf::from)
            })
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE))
}

fn runs_dir(folders: &FolderArgs, loaded: Option<&LoadedSpec>) -> PathBuf {
    folders
        .runs
        .clone()
        .or_else(|| {
            loaded.and_then(|l| {
                l.variants[0]
                    .spec
                    .pipeline
                    .runs_dir
                    .as_ref()
                    .map(PathBuf::from)
            })
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUNS))
}

fn print_status(
    loaded: &LoadedSpec,
    opts: &pipeline::RunOptions,
    registry: &StageRegistry,
    out: &mut dyn Write,
) -> Result<()> {
    writeln!(out, "cache: {}", opts.cache_dir.display())?;
    for plan in runner::plan(loaded, opts) {
        writeln!(
            out,
            "{} / {}",
            plan.variant.spec.pipeline.name, plan.variant.name
        )?;
        for planned in &plan.stages {
            let state = match &planned.state {
                PlanState::Cached(artifact) => format!("cached    {}", artifact.manifest.summary),
                PlanState::Missing | PlanState::Forced => "not built".to_string(),
                PlanState::Damaged(reason) => format!("damaged   {reason}"),
            };
            let availability = if registry.get(planned.stage).is_some() {
                ""
            } else {
                "  (not implemented in this build)"
            };
            let line = format!(
                "  {:<12} {}  {state}{availability}",
                planned.stage.name(),
                &planned.key[..16]
            );
            writeln!(out, "{}", line.trim_end())?;
        }
    }
    Ok(())
}

fn cache_ls(root: &Path, out: &mut dyn Write) -> Result<()> {
    let cache = Cache::new(root);
    let artifacts = cache.list();
    if artifacts.is_empty() {
        writeln!(out, "no artifacts in {}", root.display())?;
        return Ok(());
    }
    let now = pipeline::cache::now_unix();
    let mut total = 0;
    for artifact in &artifacts {
        total += artifact.bytes;
        let age = runner::human_secs(now.saturating_sub(artifact.created_unix) as f64);
        writeln!(
            out,
            "{:<12} {}  {:>9}  {:>12} ago  {}",
            artifact.stage,
            &artifact.key[..16.min(artifact.key.len())],
            human_bytes(artifact.bytes),
            age,
            artifact.summary
        )?;
    }
    writeln!(
        out,
        "{} artifacts, {} in {}",
        artifacts.len(),
        human_bytes(total),
        root.display()
    )?;
    Ok(())
}

fn cache_gc(
    root: &Path,
    runs: &Path,
    unreferenced: bool,
    scratch: bool,
    dry_run: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let cache = Cache::new(root);
    let keep = if unreferenced {
        Some(referenced_artifacts(runs)?)
    } else {
        None
    };
    let report = cache.gc(keep.as_ref(), scratch, dry_run)?;
    let verb = if dry_run { "would remove" } else { "removed" };
    for path in &report.removed {
        writeln!(out, "{verb} {}", path.display())?;
    }
    writeln!(
        out,
        "{verb} {} folders, {}",
        report.removed.len(),
        human_bytes(report.bytes)
    )?;
    Ok(())
}

/// Every cache folder that a run folder's `artifacts/` links point at.
fn referenced_artifacts(runs: &Path) -> Result<HashSet<PathBuf>> {
    let mut keep = HashSet::new();
    if !runs.exists() {
        return Ok(keep);
    }
    let files = crate::fsutil::list_files(runs)
        .with_context(|| format!("cannot read the run folders in {}", runs.display()))?;
    for relative in files {
        let path = runs.join(&relative);
        let in_artifacts = relative
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|n| n == "artifacts");
        if in_artifacts && let Ok(target) = path.canonicalize() {
            keep.insert(target);
        }
    }
    Ok(keep)
}

/// `tinyllm sample`: checks the options and the model folder, then generates for the prompt or
/// for each line of standard input.
fn sample_command(
    checkpoint: &Path,
    prompt: Option<String>,
    interactive: bool,
    options: &crate::generate::GenerateOptions,
    device: Device,
    out: &mut dyn Write,
) -> Result<()> {
    use crate::generate::{Prompt, folder::ModelFolder, sample_folder};
    let sampling = &options.sampling;
    if !(sampling.top_p > 0.0 && sampling.top_p <= 1.0) {
        bail!("--top-p {} must be in (0, 1]", sampling.top_p);
    }
    if sampling.temperature.is_nan() || sampling.temperature < 0.0 {
        bail!("--temperature {} must be 0 or more", sampling.temperature);
    }
    if prompt.as_deref().is_some_and(|p| p.trim().is_empty()) {
        bail!(
            "--prompt is empty; give the story's opening, or leave --prompt out to start from nothing"
        );
    }
    let dir = train_folder(checkpoint);
    let folder = ModelFolder::open(&dir)?;
    let prompt_of = |text: String| Prompt {
        text,
        options: *options,
    };
    let mut sink = ConsoleSink { out };
    if interactive {
        eprintln!(
            "one prompt per line; an empty line starts a story from nothing; end with Ctrl-D"
        );
        let lines = std::io::stdin().lines().map(|line| {
            line.map(|l| prompt_of(l.trim_end().to_string()))
                .map_err(Into::into)
        });
        sample_folder(&folder, device, lines, &mut sink)?;
    } else {
        let once = std::iter::once(Ok(prompt_of(prompt.unwrap_or_default())));
        sample_folder(&folder, device, once, &mut sink)?;
    }
    Ok(())
}

/// `tinyllm sample`'s output: the story on standard output as it is written, how it ended on
/// standard error.
struct ConsoleSink<'a> {
    out: &'a mut dyn Write,
}

impl crate::generate::SampleSink for ConsoleSink<'_> {
    fn start(&mut self, prompt: &crate::generate::Prompt) -> std::io::Result<()> {
        write!(self.out, "{}", prompt.text)
    }

    fn piece(&mut self, piece: &str) -> std::io::Result<()> {
        write!(self.out, "{piece}")?;
        self.out.flush()
    }

    fn finish(
        &mut self,
        _prompt: &crate::generate::Prompt,
        generation: &crate::generate::Generation,
    ) -> std::io::Result<()> {
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

/// A train artifact given directly, or the one a run folder links under `artifacts/train`.
fn train_folder(checkpoint: &Path) -> PathBuf {
    let nested = checkpoint.join("artifacts").join(StageId::Train.name());
    if nested.is_dir() {
        nested
    } else {
        checkpoint.to_path_buf()
    }
}

/// `tinyllm score`: the loss of every token of BOS + the text, through evaluation's scoring code
/// (in windows of the model's context, as evaluation cuts a split).
fn score_command(
    dir: &Path,
    text: &str,
    json: bool,
    device: Device,
    out: &mut dyn Write,
) -> Result<()> {
    let folder = crate::generate::folder::ModelFolder::open(dir)?;
    let mut ids = vec![crate::tokenizer::BOS];
    ids.extend(folder.tokenizer.encode(text));
    if ids.len() < 2 {
        bail!("--text is empty; give a text to score");
    }
    let job = ScoreJob {
        folder: &folder,
        ids: &ids,
        with_logits: json,
    };
    let (losses, logits) = crate::model::run_model(device, folder.dims(), job)?;
    let tokens_per_byte = losses.len() as f64 / text.len().max(1) as f64;
    let result = crate::train::eval::EvalResult::new(
        losses.iter().sum(),
        losses.len() as u64,
        tokens_per_byte,
    );
    if json {
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
    folder: &'a crate::generate::folder::ModelFolder,
    ids: &'a [u32],
    with_logits: bool,
}

impl crate::model::ModelJob for ScoreJob<'_> {
    type Output = Result<(Vec<f64>, Vec<f32>)>;
    fn run<S: crate::model::Shape, B: crate::engine::Backend<Float = f32>>(
        self,
        shape: S,
        backend: B,
        _device: &crate::engine::DeviceInfo,
    ) -> Self::Output {
        /// Windows scored per forward pass.
        const BATCH: usize = 8;
        let context = self.folder.dims().max_seq_len;
        let mut model = self.folder.load(shape, backend)?;
        let losses = crate::train::eval::sequence_losses(&mut model, self.ids, context, BATCH)?;
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
