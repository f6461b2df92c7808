//! Taking a trained model elsewhere: `tinyllm export --format hf` writes a folder that Hugging
//! Face `transformers` loads with `AutoModelForCausalLM` and `AutoTokenizer`; `--format llama2c`
//! writes the `model.bin` and `tokenizer.bin` that llama2.c's `run.c` reads; `--format gguf`
//! writes the `model.gguf` that llama.cpp and ollama run, with an ollama `Modelfile`.

pub mod gguf;
pub mod hf;
pub mod llama2c;

use std::path::{Path, PathBuf};

use crate::fsutil;
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
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error("this model cannot be written as {format}: {reason}")]
    Unsupported {
        format: &'static str,
        reason: String,
    },
}

impl From<crate::model::hf_config::HfConfigError> for ExportError {
    fn from(e: crate::model::hf_config::HfConfigError) -> Self {
        ExportError::Folder(e.into())
    }
}

/// A closure that maps an I/O error on `path` to [`ExportError::Io`].
pub(crate) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + use<> {
    let path = path.to_path_buf();
    move |source| ExportError::Io { path, source }
}

/// Fails unless `out` is absent or an empty folder: an export never mixes with older files.
pub(crate) fn check_out(out: &Path) -> Result<(), ExportError> {
    if out.exists()
        && std::fs::read_dir(out)
            .map_err(io_error(out))?
            .next()
            .is_some()
    {
        return Err(ExportError::OutExists {
            path: out.to_path_buf(),
        });
    }
    Ok(())
}

/// Lets `fill` write the export into a temporary sibling folder, then renames it to `out`, so
/// that `out` is either complete or absent.
pub(crate) fn write_folder(
    out: &Path,
    fill: impl FnOnce(&Path) -> Result<(), ExportError>,
) -> Result<(), ExportError> {
    check_out(out)?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io_error(parent))?;
    let name = out
        .file_name()
        .map_or("export".into(), |n| n.to_string_lossy().into_owned());
    let tmp = parent.join(format!(".{name}.tmp-{}", fsutil::unique_suffix()));
    std::fs::create_dir_all(&tmp).map_err(io_error(&tmp))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if out.exists() {
        std::fs::remove_dir(out).map_err(io_error(out))?;
    }
    std::fs::rename(&tmp, out).map_err(io_error(out))
}
