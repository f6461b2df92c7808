//! `tinyllm export`: a trained model in another format (Hugging Face, llama2.c, GGUF).

use std::io::Write;
use std::path::{Component, Path, PathBuf};

use anyhow::{Result, bail};
use clap::Args;

use crate::cli::args::train_folder;
use crate::export::gguf::{self, GgufOptions, MODEL_GGUF, MODELFILE, TensorType};
use crate::export::llama2c::{self, MODEL_BIN, TOKENIZER_BIN, Version};

/// Write a trained model in another format (hf: a folder transformers loads; llama2c: the
/// files llama2.c's run.c reads; gguf: the file llama.cpp and ollama run).
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    tinyllm export --checkpoint runs/tinystories/default --format hf --out tinystories-hf\n\n\
    Then, in Python: AutoModelForCausalLM.from_pretrained(\"tinystories-hf\") and\n\
    AutoTokenizer.from_pretrained(\"tinystories-hf\").\n\n  \
    tinyllm export --checkpoint runs/tinystories/default --format llama2c --out tinystories-llama2c\n\n\
    Then, in a llama2.c checkout: ./run tinystories-llama2c/model.bin -z tinystories-llama2c/tokenizer.bin\n\
    (run.c's greedy output, -t 0, is tinyllm sample --temperature 0's text).\n\n  \
    tinyllm export --checkpoint runs/tinystories/default --format gguf --out tinystories-gguf\n\n\
    Then: llama-cli -m tinystories-gguf/model.gguf -p \"Once upon a time\" -n 200, or, with ollama:\n\
    cd tinystories-gguf && ollama create tinystories -f Modelfile && ollama run tinystories \"Once upon a time\"\n\
    (llama.cpp's greedy output, --temp 0, is tinyllm sample --temperature 0's text).\n\
    gguf-bf16, gguf-f16 and gguf-q8_0 store the matrices in those types (q8_0: about a quarter of\n\
    the f32 file; rows must be multiples of 32 values); norm weights stay f32.")]
pub struct ExportArgs {
    /// A train artifact folder, or a run folder holding one under artifacts/train.
    #[arg(long, value_name = "DIR")]
    checkpoint: PathBuf,
    /// The format: hf (a Hugging Face transformers folder), llama2c (model.bin and
    /// tokenizer.bin for llama2.c's run.c), llama2c-v1 (model.bin in export.py's
    /// version-1 layout, with tokenizer.bin), gguf (model.gguf for llama.cpp, f32, and an
    /// ollama Modelfile), gguf-bf16, gguf-f16, gguf-q8_0 (the same with matrices in that type).
    #[arg(long, value_parser = ["hf", "llama2c", "llama2c-v1", "gguf", "gguf-bf16", "gguf-f16", "gguf-q8_0"])]
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
        gguf_format @ ("gguf" | "gguf-bf16" | "gguf-f16" | "gguf-q8_0") => {
            let tensor_type = match gguf_format {
                "gguf-bf16" => TensorType::Bf16,
                "gguf-f16" => TensorType::F16,
                "gguf-q8_0" => TensorType::Q8_0,
                _ => TensorType::F32,
            };
            let name = model_name(&args.checkpoint);
            let options = GgufOptions {
                tensor_type,
                name: &name,
            };
            gguf::export(&from, path, &options)?;
            writeln!(
                out,
                "wrote {shown} (GGUF, {} matrices: {MODEL_GGUF}, and {MODELFILE} for ollama); run it with: \
                 llama-cli -m {shown}/{MODEL_GGUF}, or: cd {shown} && ollama create NAME -f {MODELFILE}",
                tensor_type.name()
            )?;
        }
        other => bail!(
            "unknown export format `{other}`; formats: hf, llama2c, llama2c-v1, gguf, gguf-bf16, gguf-f16, gguf-q8_0"
        ),
    }
    Ok(())
}

/// A name for the model in GGUF's `general.name`: `pipeline/variant` of a run folder
/// (`runs/tinystories/default` gives `tinystories/default`), else the folder's own name.
fn model_name(checkpoint: &Path) -> String {
    let absolute = std::path::absolute(checkpoint).unwrap_or_else(|_| checkpoint.to_path_buf());
    let mut names: Vec<String> = absolute
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    if names.ends_with(&["artifacts".to_string(), "train".to_string()]) {
        names.truncate(names.len() - 2);
    }
    let is_run = names.len() >= 3 && names[names.len() - 3] == "runs";
    match names.as_slice() {
        [.., pipeline, variant] if is_run => format!("{pipeline}/{variant}"),
        [.., last] => last.clone(),
        [] => "tinyllm".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::model_name;
    use std::path::Path;

    #[test]
    fn a_run_folder_is_named_pipeline_slash_variant() {
        assert_eq!(
            model_name(Path::new("runs/tinystories/default")),
            "tinystories/default"
        );
        assert_eq!(
            model_name(Path::new("/x/runs/quickstart/lr-3e-3/artifacts/train")),
            "quickstart/lr-3e-3"
        );
        assert_eq!(model_name(Path::new("/tmp/my-model")), "my-model");
    }
}
