//! `config.json` as Hugging Face's `LlamaConfig` reads it, so a checkpoint folder (this file and
//! `model.safetensors`) loads in `transformers` as it is. tinyllm's own description of the model
//! (its dimensions, preset and `multiple_of`, which Hugging Face folds into `intermediate_size`)
//! rides along under the `tinyllm` key, which `transformers` ignores.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{LlamaConfig, ModelDims, Preset};
use crate::fsutil;

/// The fields of a Hugging Face Llama `config.json` that describe a tinyllm model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HfConfig {
    pub architectures: Vec<String>,
    pub model_type: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    pub hidden_act: String,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub bos_token_id: u32,
    pub eos_token_id: u32,
    pub torch_dtype: String,
    pub tinyllm: TinyllmModel,
}

/// tinyllm's own record of the model in `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TinyllmModel {
    pub dims: ModelDims,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<Preset>,
}

#[derive(Debug, thiserror::Error)]
pub enum HfConfigError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a tinyllm model config: {reason}", path.display())]
    Format { path: PathBuf, reason: String },
}

impl HfConfig {
    pub fn new(dims: ModelDims, config: &LlamaConfig) -> HfConfig {
        HfConfig {
            architectures: vec!["LlamaForCausalLM".into()],
            model_type: "llama".into(),
            hidden_size: dims.dim,
            intermediate_size: dims.hidden_dim(),
            num_hidden_layers: dims.n_layers,
            num_attention_heads: dims.n_heads,
            num_key_value_heads: dims.n_kv_heads,
            vocab_size: dims.vocab_size,
            max_position_embeddings: dims.max_seq_len,
            rms_norm_eps: config.norm_eps,
            rope_theta: config.rope_theta,
            tie_word_embeddings: config.tie_embeddings,
            hidden_act: "silu".into(),
            attention_bias: false,
            mlp_bias: false,
            bos_token_id: crate::tokenizer::BOS,
            eos_token_id: crate::tokenizer::EOS,
            torch_dtype: "float32".into(),
            tinyllm: TinyllmModel {
                dims,
                preset: Preset::ALL.into_iter().find(|p| p.dims() == dims),
            },
        }
    }

    pub fn llama_config(&self) -> LlamaConfig {
        LlamaConfig {
            norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            tie_embeddings: self.tie_word_embeddings,
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), HfConfigError> {
        let text = serde_json::to_vec_pretty(self).expect("a config serializes");
        fsutil::write_atomic(path, &text).map_err(|source| HfConfigError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads a `config.json`, checking that the Hugging Face fields agree with tinyllm's.
    pub fn load(path: &Path) -> Result<HfConfig, HfConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| HfConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let format = |reason: String| HfConfigError::Format {
            path: path.to_path_buf(),
            reason,
        };
        let config: HfConfig = serde_json::from_str(&text).map_err(|e| format(e.to_string()))?;
        let expected = HfConfig::new(config.tinyllm.dims, &config.llama_config());
        if expected.hidden_size != config.hidden_size
            || expected.intermediate_size != config.intermediate_size
            || expected.num_hidden_layers != config.num_hidden_layers
            || expected.num_attention_heads != config.num_attention_heads
            || expected.num_key_value_heads != config.num_key_value_heads
            || expected.vocab_size != config.vocab_size
            || expected.max_position_embeddings != config.max_position_embeddings
        {
            return Err(format(format!(
                "the Hugging Face fields disagree with tinyllm.dims {:?}",
                config.tinyllm.dims
            )));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names_the_preset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let config = HfConfig::new(Preset::Tutorial.dims(), &LlamaConfig::default());
        assert_eq!(config.tinyllm.preset, Some(Preset::Tutorial));
        assert_eq!(config.intermediate_size, 768);
        config.save(&path).unwrap();
        assert_eq!(HfConfig::load(&path).unwrap(), config);

        let mut bent: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        bent["hidden_size"] = 64.into();
        std::fs::write(&path, bent.to_string()).unwrap();
        let err = HfConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("disagree with tinyllm.dims"), "{err}");
    }
}
