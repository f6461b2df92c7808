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
        let dims = config.tinyllm.dims;
        dims.check()
            .map_err(|broken| format(format!("tinyllm.dims.{broken}")))?;
        let expected = HfConfig::new(dims, &config.llama_config());
        for (field, value, tinyllm_field, wanted) in [
            (
                "hidden_size",
                config.hidden_size,
                "dim",
                expected.hidden_size,
            ),
            (
                "intermediate_size",
                config.intermediate_size,
                "dim and multiple_of",
                expected.intermediate_size,
            ),
            (
                "num_hidden_layers",
                config.num_hidden_layers,
                "n_layers",
                expected.num_hidden_layers,
            ),
            (
                "num_attention_heads",
                config.num_attention_heads,
                "n_heads",
                expected.num_attention_heads,
            ),
            (
                "num_key_value_heads",
                config.num_key_value_heads,
                "n_kv_heads",
                expected.num_key_value_heads,
            ),
            (
                "vocab_size",
                config.vocab_size,
                "vocab_size",
                expected.vocab_size,
            ),
            (
                "max_position_embeddings",
                config.max_position_embeddings,
                "max_seq_len",
                expected.max_position_embeddings,
            ),
        ] {
            if value != wanted {
                return Err(format(format!(
                    "{field} is {value} but tinyllm.dims.{tinyllm_field} gives {wanted}; make them agree"
                )));
            }
        }
        // The model divides by the norm's `sqrt(mean + eps)` and raises theta to powers: a value
        // outside these ranges gives NaN or infinite logits, not an error.
        if !(config.rms_norm_eps > 0.0 && config.rms_norm_eps.is_finite()) {
            return Err(format(format!(
                "rms_norm_eps is {}; it must be a positive number (1e-5 as trained)",
                config.rms_norm_eps
            )));
        }
        if !(config.rope_theta > 0.0 && config.rope_theta.is_finite()) {
            return Err(format(format!(
                "rope_theta is {}; it must be a positive number (10000 as trained)",
                config.rope_theta
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
        assert!(
            err.ends_with(
                "not a tinyllm model config: hidden_size is 64 but tinyllm.dims.dim gives 288; make them agree"
            ),
            "{err}"
        );
    }

    #[test]
    fn impossible_dims_and_norms_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let config = HfConfig::new(Preset::Tutorial.dims(), &LlamaConfig::default());
        let json = serde_json::to_value(&config).unwrap();
        for (edit, words) in [
            (
                ("rms_norm_eps", serde_json::json!(-1.0)),
                "rms_norm_eps is -1; it must be a positive number",
            ),
            (
                ("rope_theta", serde_json::json!(0.0)),
                "rope_theta is 0; it must be a positive number",
            ),
        ] {
            let mut bent = json.clone();
            bent[edit.0] = edit.1;
            std::fs::write(&path, bent.to_string()).unwrap();
            let err = HfConfig::load(&path).unwrap_err().to_string();
            assert!(err.contains(words), "{err}");
        }
        let mut bent = json.clone();
        bent["tinyllm"]["dims"]["n_heads"] = 5.into();
        std::fs::write(&path, bent.to_string()).unwrap();
        let err = HfConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.ends_with("tinyllm.dims.n_heads 5 does not divide dim 288"),
            "{err}"
        );
    }
}
