//! A trained model's folder — `config.json`, `model.safetensors`, `tokenizer.json`, as the train
//! stage writes it — opened for generation, with every part checked against the others.

use std::path::{Path, PathBuf};

use crate::engine::Backend;
use crate::fsutil::human_bytes;
use crate::model::safetensors::SafetensorsError;
use crate::model::{Allocation, Footprint, HfConfig, Llama, ModelDims, ModelError, Shape};
use crate::tokenizer::Tokenizer;

pub const CONFIG_JSON: &str = "config.json";
pub const WEIGHTS: &str = "model.safetensors";
pub const TOKENIZER_JSON: &str = "tokenizer.json";

/// The checked parts of a model folder; the weights are read when the typed model is built.
pub struct ModelFolder {
    pub dir: PathBuf,
    pub config: HfConfig,
    pub tokenizer: Tokenizer,
}

#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    #[error("{}: not a model folder: {} missing (a train artifact, e.g. runs/<pipeline>/<variant>/artifacts/train, has them)", dir.display(), missing.join(", "))]
    Missing { dir: PathBuf, missing: Vec<String> },
    #[error("{0}")]
    Config(#[from] crate::model::hf_config::HfConfigError),
    /// The tokenizer's own error, which names its file.
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    #[error(
        "{}: the tokenizer has {tokenizer} tokens but the model's vocab_size is {model}: its ids from {model} up are beyond the model; the tokenizer belongs to another model",
        dir.display()
    )]
    VocabMismatch {
        dir: PathBuf,
        tokenizer: usize,
        model: usize,
    },
    #[error(
        "{}: {} of weights, but config.json describes a model of {params} parameters ({} as f32); config.json does not belong to these weights",
        path.display(), human_bytes(*bytes), human_bytes(params.saturating_mul(4))
    )]
    WeightsTooSmall {
        path: PathBuf,
        bytes: u64,
        params: u64,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl ModelFolder {
    pub fn open(dir: &Path) -> Result<ModelFolder, FolderError> {
        let missing: Vec<String> = [CONFIG_JSON, WEIGHTS, TOKENIZER_JSON]
            .iter()
            .filter(|name| !dir.join(name).is_file())
            .map(|name| name.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(FolderError::Missing {
                dir: dir.to_path_buf(),
                missing,
            });
        }
        let config = HfConfig::load(&dir.join(CONFIG_JSON))?;
        let tokenizer = Tokenizer::load(&dir.join(TOKENIZER_JSON))?;
        // A tokenizer smaller than the model is what a small corpus gives (fewer merges than
        // asked); only ids beyond the model's range are an error.
        if tokenizer.vocab_size() > config.tinyllm.dims.vocab_size {
            return Err(FolderError::VocabMismatch {
                dir: dir.to_path_buf(),
                tokenizer: tokenizer.vocab_size(),
                model: config.tinyllm.dims.vocab_size,
            });
        }
        // Every size below comes from config.json: check it against the weights file before
        // anything is allocated for it, so a hand-edited config cannot ask for terabytes.
        let weights = dir.join(WEIGHTS);
        let bytes = std::fs::metadata(&weights)
            .map_err(|source| FolderError::Io {
                path: weights.clone(),
                source,
            })?
            .len();
        let dims = config.tinyllm.dims;
        let params = dims.num_params(config.tie_word_embeddings);
        if params.saturating_mul(4) > bytes as u128 {
            return Err(FolderError::WeightsTooSmall {
                path: weights,
                bytes,
                params: u64::try_from(params).unwrap_or(u64::MAX),
            });
        }
        let params = params as usize;
        Footprint {
            parts: vec![
                (Allocation::HostWeights { params }, bytes),
                (Allocation::Parameters { params }, 8 * params as u64),
            ],
        }
        .check("loading this model")
        .map_err(ModelError::from)?;
        Ok(ModelFolder {
            dir: dir.to_path_buf(),
            config,
            tokenizer,
        })
    }

    pub fn weights(&self) -> PathBuf {
        self.dir.join(WEIGHTS)
    }

    /// The model's dimensions (a [`crate::model::ModelJob`] gets the typed shape).
    pub fn dims(&self) -> ModelDims {
        self.config.tinyllm.dims
    }

    /// The model on `backend`, every tensor's shape checked against `config.json`.
    pub fn load<S: Shape, B: Backend<Float = f32>>(
        &self,
        shape: S,
        backend: B,
    ) -> Result<Llama<S, B>, SafetensorsError> {
        Llama::load_safetensors(backend, shape, self.config.llama_config(), &self.weights())
    }
}
