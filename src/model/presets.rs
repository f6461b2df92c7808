//! Named model presets and the runtime dimensions every model is described by.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
}
