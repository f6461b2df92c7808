//! Named model presets and the runtime dimensions every model is described by, with the one
//! rule set ([`ModelDims::check`]) that spec validation and model construction both apply.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::tokenizer::MAX_VOCAB_SIZE;

/// The dimensions of a LLaMA2 decoder, as llama2.c's `Config` and Hugging Face's `LlamaConfig`
/// describe it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelDims {
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub vocab_size: usize,
    /// The SwiGLU hidden size is rounded up to a multiple of this (llama2.c's `multiple_of`).
    pub multiple_of: usize,
    pub max_seq_len: usize,
}

impl ModelDims {
    /// The SwiGLU hidden size as llama2.c computes it: `4*dim`, then two thirds, then rounded up
    /// to a multiple of `multiple_of`.
    pub fn hidden_dim(&self) -> usize {
        let hidden = 2 * (4 * self.dim) / 3;
        hidden.div_ceil(self.multiple_of) * self.multiple_of
    }

    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }

    /// The parameters of a model of these dimensions, counted in `u128` so that no size a user
    /// writes can wrap (the same tensors as [`super::param_layout`]).
    pub fn num_params(&self, tie_embeddings: bool) -> u128 {
        let [c, v, layers] = [self.dim, self.vocab_size, self.n_layers].map(|x| x as u128);
        let kv = self.n_kv_heads as u128 * (c / self.n_heads.max(1) as u128);
        let multiple = self.multiple_of.max(1) as u128;
        let h = (2 * (4 * c) / 3).div_ceil(multiple) * multiple;
        let per_layer = 2 * c + 2 * c * c + 2 * kv * c + 3 * h * c;
        let heads = if tie_embeddings { 1 } else { 2 };
        heads * v * c + c + layers * per_layer
    }

    /// Checks the rules every model obeys; the only place they are written. Spec validation
    /// reports a broken rule as `model.<field>`, model construction as an invalid shape, so a
    /// spec that validates always makes a model.
    pub fn check(&self) -> Result<(), DimsError> {
        let fail = |field: &'static str, message: String| Err(DimsError { field, message });
        for (field, value) in [
            ("dim", self.dim),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("vocab_size", self.vocab_size),
            ("multiple_of", self.multiple_of),
            ("max_seq_len", self.max_seq_len),
        ] {
            if value == 0 {
                return fail(field, "must be positive".into());
            }
        }
        if !self.dim.is_multiple_of(self.n_heads) {
            return fail(
                "n_heads",
                format!("{} does not divide dim {}", self.n_heads, self.dim),
            );
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return fail(
                "n_kv_heads",
                format!(
                    "{} does not divide n_heads {}",
                    self.n_kv_heads, self.n_heads
                ),
            );
        }
        let head_dim = self.head_dim();
        if !head_dim.is_multiple_of(2) || head_dim > MAX_HEAD_DIM {
            return fail(
                "dim",
                format!(
                    "{} gives a head size dim/n_heads = {head_dim}, which must be even and at most \
                     {MAX_HEAD_DIM} for rotary embeddings",
                    self.dim
                ),
            );
        }
        if self.max_seq_len > MAX_SEQ_LEN {
            return fail(
                "max_seq_len",
                format!(
                    "{} is above {MAX_SEQ_LEN}, the longest context tinyllm supports",
                    self.max_seq_len
                ),
            );
        }
        if self.vocab_size > MAX_VOCAB_SIZE {
            return fail(
                "vocab_size",
                format!(
                    "{} is above {MAX_VOCAB_SIZE}: token ids are stored as u16",
                    self.vocab_size
                ),
            );
        }
        // Bounded so that every size derived from the dimensions is a number, not a wrap;
        // whether a model this large fits the machine is checked where it is allocated.
        let params = self.num_params(false);
        if params > MAX_PARAMS {
            let one_layer = ModelDims {
                n_layers: 1,
                ..*self
            };
            let (field, value) = if one_layer.num_params(false) > MAX_PARAMS {
                ("dim", self.dim)
            } else {
                ("n_layers", self.n_layers)
            };
            return fail(
                field,
                format!(
                    "{value} makes a model of {params} parameters, more than the {MAX_PARAMS} tinyllm supports"
                ),
            );
        }
        Ok(())
    }
}

/// The longest context a model may have: positions past it are beyond any story tinyllm
/// trains on, and the decoder and RoPE tables grow with it.
pub const MAX_SEQ_LEN: usize = 1 << 20;

/// The most parameters a model may have (2^40, 4.4 TB of f32): a bound that keeps every
/// tensor size a `usize` on any machine.
pub const MAX_PARAMS: u128 = 1 << 40;

/// The largest head size: the rotary embedding kernels keep one head's angles in a fixed array.
pub const MAX_HEAD_DIM: usize = 512;

/// A broken rule of [`ModelDims::check`]: the field it is charged to, and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field} {message}")]
pub struct DimsError {
    /// The field's name in [`ModelDims`] (and in a spec's `[model]` table), e.g. `"dim"`.
    pub field: &'static str,
    pub message: String,
}

/// The model presets: the tutorial's model, llama2.c's published ones, and the quickstart's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// The tutorial's model: dim 288, 8 layers, 8 heads, 4 kv heads, vocab 4096, seq 256.
    Tutorial,
    /// llama2.c's `stories260K`: dim 64, 5 layers, 8 heads, 4 kv heads, vocab 512, seq 512.
    #[serde(rename = "stories260K")]
    Stories260K,
    /// llama2.c's `stories15M`: dim 288, 6 layers, 6 heads, vocab 32000, seq 256.
    #[serde(rename = "stories15M")]
    Stories15M,
    /// llama2.c's `stories42M`: dim 512, 8 layers, 8 heads, vocab 32000, seq 1024.
    #[serde(rename = "stories42M")]
    Stories42M,
    /// llama2.c's `stories110M`: dim 768, 12 layers, 12 heads, vocab 32000, seq 1024.
    #[serde(rename = "stories110M")]
    Stories110M,
    /// The quickstart's model: dim 128, 4 layers, 4 heads, 2 kv heads, vocab 2048, seq 256.
    Quickstart,
}

impl Preset {
    pub const ALL: [Preset; 6] = [
        Preset::Tutorial,
        Preset::Stories260K,
        Preset::Stories15M,
        Preset::Stories42M,
        Preset::Stories110M,
        Preset::Quickstart,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Preset::Tutorial => "tutorial",
            Preset::Stories260K => "stories260K",
            Preset::Stories15M => "stories15M",
            Preset::Stories42M => "stories42M",
            Preset::Stories110M => "stories110M",
            Preset::Quickstart => "quickstart",
        }
    }

    /// The preset's dimensions, from its compile-time type (the one table of them).
    pub fn dims(self) -> ModelDims {
        use super::shape::{self, Dims};
        match self {
            Preset::Tutorial => shape::Tutorial::DIMS,
            Preset::Stories260K => shape::Stories260K::DIMS,
            Preset::Stories15M => shape::Stories15M::DIMS,
            Preset::Stories42M => shape::Stories42M::DIMS,
            Preset::Stories110M => shape::Stories110M::DIMS,
            Preset::Quickstart => shape::Quickstart::DIMS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_dim_matches_llama2c() {
        // llama2.c: dim 288 → 768, dim 512 → 1376, dim 768 → 2048, dim 64 (multiple_of 4) → 172.
        assert_eq!(Preset::Tutorial.dims().hidden_dim(), 768);
        assert_eq!(Preset::Stories42M.dims().hidden_dim(), 1376);
        assert_eq!(Preset::Stories110M.dims().hidden_dim(), 2048);
        assert_eq!(Preset::Stories260K.dims().hidden_dim(), 172);
    }

    /// The field a broken rule is charged to, or `None` when the dimensions pass.
    fn broken(dims: ModelDims) -> Option<&'static str> {
        dims.check().err().map(|e| e.field)
    }

    #[test]
    fn every_preset_passes_the_checks() {
        for preset in Preset::ALL {
            assert_eq!(preset.dims().check(), Ok(()), "{}", preset.name());
        }
    }

    #[test]
    fn every_field_must_be_positive() {
        let good = Preset::Tutorial.dims();
        let zeroed = [
            ("dim", ModelDims { dim: 0, ..good }),
            (
                "n_layers",
                ModelDims {
                    n_layers: 0,
                    ..good
                },
            ),
            ("n_heads", ModelDims { n_heads: 0, ..good }),
            (
                "n_kv_heads",
                ModelDims {
                    n_kv_heads: 0,
                    ..good
                },
            ),
            (
                "vocab_size",
                ModelDims {
                    vocab_size: 0,
                    ..good
                },
            ),
            (
                "multiple_of",
                ModelDims {
                    multiple_of: 0,
                    ..good
                },
            ),
            (
                "max_seq_len",
                ModelDims {
                    max_seq_len: 0,
                    ..good
                },
            ),
        ];
        for (field, dims) in zeroed {
            let err = dims.check().unwrap_err();
            assert_eq!(err.field, field);
            assert_eq!(err.to_string(), format!("{field} must be positive"));
        }
    }

    #[test]
    fn heads_must_divide_dim_and_kv_heads_must_divide_heads() {
        let good = Preset::Tutorial.dims();
        let err = ModelDims { n_heads: 5, ..good }.check().unwrap_err();
        assert_eq!(err.field, "n_heads");
        assert_eq!(err.message, "5 does not divide dim 288");
        let err = ModelDims {
            n_kv_heads: 3,
            ..good
        }
        .check()
        .unwrap_err();
        assert_eq!(err.field, "n_kv_heads");
        assert_eq!(err.message, "3 does not divide n_heads 8");
        assert_eq!(
            broken(ModelDims {
                n_kv_heads: 8,
                ..good
            }),
            None
        );
        assert_eq!(
            broken(ModelDims {
                n_kv_heads: 1,
                ..good
            }),
            None
        );
    }

    #[test]
    fn the_head_size_must_be_even_and_at_most_512() {
        let good = Preset::Tutorial.dims();
        let odd = ModelDims {
            dim: 18,
            n_heads: 2,
            n_kv_heads: 1,
            ..good
        };
        let err = odd.check().unwrap_err();
        assert_eq!(err.field, "dim");
        assert!(err.message.contains("head size dim/n_heads = 9"), "{err}");
        let one_head = |dim| ModelDims {
            dim,
            n_heads: 1,
            n_kv_heads: 1,
            ..good
        };
        assert_eq!(broken(one_head(512)), None);
        let err = one_head(514).check().unwrap_err();
        assert_eq!(err.field, "dim");
        assert!(err.message.contains("at most 512"), "{err}");
        assert_eq!(broken(one_head(1040)), Some("dim"));
    }

    #[test]
    fn the_parameter_count_matches_the_layout_and_is_bounded() {
        use crate::model::{LlamaConfig, ParamInfo, param_layout};
        for preset in Preset::ALL {
            let dims = preset.dims();
            for tied in [false, true] {
                let config = LlamaConfig {
                    tie_embeddings: tied,
                    ..LlamaConfig::default()
                };
                let counted: usize = param_layout(&dims, &config)
                    .iter()
                    .map(ParamInfo::numel)
                    .sum();
                assert_eq!(dims.num_params(tied), counted as u128, "{}", preset.name());
            }
        }
        let good = Preset::Tutorial.dims();
        let deep = ModelDims {
            n_layers: 10_000_000_000,
            ..good
        };
        assert_eq!(broken(deep), Some("n_layers"));
        let wide = ModelDims {
            dim: 512 << 20,
            n_heads: 1 << 20,
            n_kv_heads: 1 << 20,
            n_layers: 1,
            ..good
        };
        assert_eq!(broken(wide), Some("dim"));
        let long = ModelDims {
            max_seq_len: 1_000_000_000_000,
            ..good
        };
        assert_eq!(
            long.check().unwrap_err().to_string(),
            "max_seq_len 1000000000000 is above 1048576, the longest context tinyllm supports"
        );
    }

    #[test]
    fn the_vocabulary_must_fit_in_u16() {
        let good = Preset::Tutorial.dims();
        assert_eq!(
            broken(ModelDims {
                vocab_size: 65_535,
                ..good
            }),
            None
        );
        let err = ModelDims {
            vocab_size: 65_536,
            ..good
        }
        .check()
        .unwrap_err();
        assert_eq!(err.field, "vocab_size");
        assert_eq!(
            err.to_string(),
            "vocab_size 65536 is above 65535: token ids are stored as u16"
        );
    }
}
