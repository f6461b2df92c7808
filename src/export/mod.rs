//! Taking a trained model elsewhere: `tinyllm export --format hf` writes a folder that Hugging
//! Face `transformers` loads with `AutoModelForCausalLM` and `AutoTokenizer`.

pub mod hf;

use std::path::PathBuf;

use crate::generate::folder::FolderError;
use crate::model::safetensors::SafetensorsError;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Folder(#[from] FolderError),
    #[error(transparent)]
    Weights(#[from] SafetensorsError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Tokenizer { path: PathBuf, reason: String },
    #[error("{}: already exists and is not an empty folder; choose another --out or remove it", path.display())]
    OutExists { path: PathBuf },
}
