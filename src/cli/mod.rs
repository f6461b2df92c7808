//! The `tinyllm` command line. [`main_with`] is the whole program; the binary only hands it the
//! arguments and the stage implementations (tests hand it their own).
//!
//! Laid out in the manner of cargo's `commands/`: this file holds the top-level parser, the global
//! flags and the error printing; each subcommand's arguments and what it does are in its own file
//! under `commands/`, and the argument groups several of them share are in `args`.

mod args;
mod commands;
mod input;

use std::ffi::OsString;
use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::collective;
use crate::pipeline::StageRegistry;
use commands::{bench, cache, export, report, run, sample, schema, score, serve, status, tokenize};

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
        tinyllm run pipelines/tinystories.toml --sweep train.lr=1e-3,5e-4 --executor slurm --wait\n  \
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
    Run(run::RunArgs),
    Status(status::StatusArgs),
    Report(report::ReportArgs),
    Schema(schema::SchemaArgs),
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    Tokenize(tokenize::TokenizeArgs),
    Sample(sample::SampleArgs),
    Serve(serve::ServeArgs),
    Score(score::ScoreArgs),
    Export(export::ExportArgs),
    #[command(subcommand)]
    Bench(bench::BenchCommand),
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
    // Started by mpirun or srun: join the job before anything reads the spec (the world size
    // is part of the train key).
    let world = match collective::init_from_launcher() {
        Ok(world) => world,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = execute(cli, &registry);
    let success = match &result {
        Ok(()) => true,
        Err(err) => is_broken_pipe(err),
    };
    if let Err(err) = &result
        && !success
    {
        let rank = if world.size() > 1 {
            format!("rank {} of {}: ", world.rank(), world.size())
        } else {
            String::new()
        };
        eprintln!("error: {rank}{}", one_line(err));
    }
    // A failed rank stops the whole job here rather than leave the others waiting.
    collective::finish(success, 1);
    if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
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
    // Colours only for a person at a terminal, and never when NO_COLOR is set (no-color.org).
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .try_init();
}

/// Hands the subcommand to its file in [`commands`].
fn execute(cli: Cli, registry: &StageRegistry) -> Result<()> {
    let quiet = cli.quiet || !std::io::stderr().is_terminal();
    let stdout = std::io::stdout();
    // In a job of several ranks only rank 0 speaks; the others' results would repeat it.
    let mut out: Box<dyn std::io::Write> = if collective::world().leads() {
        Box::new(stdout.lock())
    } else {
        Box::new(std::io::sink())
    };
    let out = &mut *out;
    match cli.command {
        Command::Run(args) => run::exec(args, registry, quiet, out),
        Command::Status(args) => status::exec(args, registry, out),
        Command::Report(args) => report::exec(args, out),
        Command::Schema(_) => schema::exec(out),
        Command::Cache(command) => cache::exec(command, out),
        Command::Tokenize(args) => tokenize::exec(args, out),
        Command::Sample(args) => sample::exec(args, out),
        Command::Serve(args) => serve::exec(args, out),
        Command::Score(args) => score::exec(args, out),
        Command::Export(args) => export::exec(args, out),
        Command::Bench(command) => bench::exec(command, out),
    }
}
