//! `tinyllm bench data|generate|matmul|train`: figures measured on this machine, printed as text (each
//! bench module's `Display`) or JSON.

mod data;
mod generate;
mod matmul;
mod train;

use std::fmt::Display;
use std::io::Write;

use anyhow::Result;
use clap::Subcommand;
use serde::Serialize;

/// Measure speed on this machine (figures, not tests).
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    Data(data::DataArgs),
    Generate(generate::GenerateArgs),
    Matmul(matmul::MatmulArgs),
    Train(train::TrainArgs),
}

pub fn exec(command: BenchCommand, out: &mut dyn Write) -> Result<()> {
    match command {
        BenchCommand::Data(args) => data::exec(args, out),
        BenchCommand::Generate(args) => generate::exec(args, out),
        BenchCommand::Matmul(args) => matmul::exec(args, out),
        BenchCommand::Train(args) => train::exec(args, out),
    }
}

/// Prints `figures` as text, or as pretty JSON with `--json`.
fn print_figures(
    figures: &(impl Display + Serialize),
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(figures)?)?;
    } else {
        writeln!(out, "{figures}")?;
    }
    Ok(())
}
