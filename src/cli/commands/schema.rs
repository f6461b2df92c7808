//! `tinyllm schema`: the JSON Schema of pipeline specs.

use std::io::Write;

use anyhow::Result;
use clap::Args;

use crate::pipeline;

/// Print the JSON Schema of pipeline specs (editors use it to complete and check them).
#[derive(Debug, Args)]
pub struct SchemaArgs {}

pub fn exec(out: &mut dyn Write) -> Result<()> {
    let schema = pipeline::spec::json_schema();
    writeln!(out, "{}", serde_json::to_string_pretty(&schema)?)?;
    Ok(())
}
