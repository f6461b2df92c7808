//! The llama2.c format: `model.bin` (float32 weights behind a small header) and `tokenizer.bin`
//! (each piece with its score), as llama2.c's `export.py` and `tokenizer.py` write them.
//!
//! Two model layouts exist. Version 0 ("legacy": seven `i32`s, then the weights grouped by kind,
//! a negative vocab size meaning an untied output head) is the one `run.c` reads. Version 1
//! starts with the magic `ak42`, a version number and the same seven numbers in a 256-byte
//! header, and orders the norms first.
//!
//! tinyllm rotates each head in Hugging Face's `rotate_half` layout (dimension `i` pairs with
//! `i + head_dim/2`); llama2.c rotates adjacent pairs (`2i` with `2i+1`). Both use the same
//! frequency for pair `i`, so reordering the rows of `wq` and `wk` within each head turns one
//! into the other: llama2.c's row `2i + j` is tinyllm's row `j·head_dim/2 + i`. Attention scores
//! only see `q·k`, so the model computes exactly the same function.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use super::{ExportError, check_out, io_error, write_folder};
use crate::generate::folder::ModelFolder;
use crate::model::{Allocation, Footprint, ModelDims, ModelError, param_layout, safetensors};
use crate::tokenizer::{BOS, EOS, Tokenizer};

/// The model file's name inside the export folder.
pub const MODEL_BIN: &str = "model.bin";
/// The tokenizer file's name inside the export folder.
pub const TOKENIZER_BIN: &str = "tokenizer.bin";
/// `ak42` read as a little-endian `u32`: the first four bytes of a version-1 file.
pub const MAGIC: u32 = 0x616b_3432;

/// Which `model.bin` layout to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// What llama2.c's `run.c` reads.
    Legacy,
    /// `export.py --version 1`: the headered float32 layout.
    V1,
}

/// Writes `model.bin` and `tokenizer.bin` of the model folder `from` into the folder `out`
/// (created; it must not exist or be empty).
pub fn export(from: &Path, out: &Path, version: Version) -> Result<(), ExportError> {
    let folder = ModelFolder::open(from)?;
    check_out(out)?;
    let config = folder.config.llama_config();
    let unsupported = |reason: String| ExportError::Unsupported {
        format: "llama2c",
        reason,
    };
    // run.c has these constants built in; a model trained with others would run, but wrongly.
    if config.rope_theta != 10_000.0 {
        return Err(unsupported(format!(
            "run.c computes RoPE with theta 10000, this model was trained with {}",
            config.rope_theta
        )));
    }
    if config.norm_eps != 1e-5 {
        return Err(unsupported(format!(
            "run.c's RMSNorm adds 1e-5, this model was trained with norm_eps {}",
            config.norm_eps
        )));
    }
    let has_space_token = (0..folder.tokenizer.vocab_size() as u32)
        .any(|id| folder.tokenizer.piece(id) == Some("\u{2581}"));
    if version == Version::Legacy && !has_space_token {
        return Err(unsupported(
            "run.c starts every prompt with the token of a single space, and this tokenizer has none"
                .into(),
        ));
    }
    let dims = folder.config.tinyllm.dims;
    let header = header_numbers(&dims)?;
    // The weights are held three times (as read, as reordered, as the file's bytes), and run.c's
    // RoPE tables grow with the context: refuse what cannot fit before reading anything.
    let params = dims.num_params(config.tie_embeddings) as usize;
    let tables = match version {
        Version::Legacy => (dims.max_seq_len * dims.head_dim() * 4) as u64,
        Version::V1 => 0,
    };
    Footprint {
        parts: vec![
            (Allocation::HostWeights { params }, 12 * params as u64),
            (
                Allocation::RopeTables {
                    positions: dims.max_seq_len,
                },
                tables,
            ),
        ],
    }
    .check("this export")
    .map_err(ModelError::from)?;
    let layout = param_layout(&dims, &config);
    let tensors = safetensors::load(&folder.weights(), &layout)?;
    let by_name: HashMap<&str, &[f32]> = layout
        .iter()
        .zip(&tensors)
        .map(|(info, data)| (info.name.as_str(), data.as_slice()))
        .collect();
    let model = model_bytes(
        &dims,
        header,
        config.tie_embeddings,
        config.rope_theta,
        &by_name,
        version,
    );
    let tokenizer = tokenizer_bytes(&folder.tokenizer, dims.vocab_size);
    write_folder(out, |tmp| {
        for (name, bytes) in [(MODEL_BIN, &model), (TOKENIZER_BIN, &tokenizer)] {
            let path = tmp.join(name);
            crate::fsutil::write_atomic(&path, bytes).map_err(io_error(&path))?;
        }
        Ok(())
    })
}

/// The seven numbers of both headers, each a 32-bit integer in llama2.c's `Config`.
fn header_numbers(dims: &ModelDims) -> Result<[i32; 7], ExportError> {
    let fields = [
        ("dim", dims.dim),
        ("hidden_dim", dims.hidden_dim()),
        ("n_layers", dims.n_layers),
        ("n_heads", dims.n_heads),
        ("n_kv_heads", dims.n_kv_heads),
        ("vocab_size", dims.vocab_size),
        ("max_seq_len", dims.max_seq_len),
    ];
    let mut header = [0i32; 7];
    for (slot, (name, value)) in header.iter_mut().zip(fields) {
        *slot = i32::try_from(value).map_err(|_| ExportError::Unsupported {
            format: "llama2c",
            reason: format!(
                "{name} {value} does not fit the 32-bit integer llama2.c's header holds (at most {})",
                i32::MAX
            ),
        })?;
    }
    Ok(header)
}

/// The bytes of `model.bin`.
fn model_bytes(
    dims: &ModelDims,
    header: [i32; 7],
    tied: bool,
    rope_theta: f64,
    tensors: &HashMap<&str, &[f32]>,
    version: Version,
) -> Vec<u8> {
    let layers = 0..dims.n_layers;
    let tensor = |name: String| -> Vec<f32> { tensors[name.as_str()].to_vec() };
    let each_layer = |part: &str| -> Vec<Vec<f32>> {
        layers
            .clone()
            .map(|l| tensor(format!("model.layers.{l}.{part}.weight")))
            .collect()
    };
    let head_dim = dims.head_dim();
    let wq: Vec<Vec<f32>> = each_layer("self_attn.q_proj")
        .iter()
        .map(|w| to_adjacent_pairs(w, dims.n_heads, head_dim))
        .collect();
    let wk: Vec<Vec<f32>> = each_layer("self_attn.k_proj")
        .iter()
        .map(|w| to_adjacent_pairs(w, dims.n_kv_heads, head_dim))
        .collect();
    let (wv, wo) = (
        each_layer("self_attn.v_proj"),
        each_layer("self_attn.o_proj"),
    );
    let (w1, w2, w3) = (
        each_layer("mlp.gate_proj"),
        each_layer("mlp.down_proj"),
        each_layer("mlp.up_proj"),
    );
    let (attention_norms, ffn_norms) = (
        each_layer("input_layernorm"),
        each_layer("post_attention_layernorm"),
    );
    let embedding = tensor("model.embed_tokens.weight".into());
    let final_norm = tensor("model.norm.weight".into());
    let head = (!tied).then(|| tensor("lm_head.weight".into()));

    let mut bytes = Vec::new();
    let mut put = |values: &[f32]| {
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    };
    let mut header_bytes = Vec::new();
    match version {
        Version::Legacy => {
            let mut header = header;
            if !tied {
                header[5] = -header[5];
            }
            for n in header {
                header_bytes.extend_from_slice(&n.to_le_bytes());
            }
            put(&embedding);
            attention_norms.iter().for_each(|w| put(w));
            for group in [&wq, &wk, &wv, &wo] {
                group.iter().for_each(|w| put(w));
            }
            ffn_norms.iter().for_each(|w| put(w));
            for group in [&w1, &w2, &w3] {
                group.iter().for_each(|w| put(w));
            }
            put(&final_norm);
            // The RoPE tables run.c once read (it computes them now): cos, then sin.
            let (cos, sin) = rope_tables(dims.max_seq_len, head_dim, rope_theta);
            put(&cos);
            put(&sin);
        }
        Version::V1 => {
            header_bytes.extend_from_slice(&MAGIC.to_le_bytes());
            header_bytes.extend_from_slice(&1i32.to_le_bytes());
            for n in header {
                header_bytes.extend_from_slice(&n.to_le_bytes());
            }
            header_bytes.push(u8::from(tied));
            header_bytes.resize(256, 0);
            attention_norms.iter().for_each(|w| put(w));
            ffn_norms.iter().for_each(|w| put(w));
            put(&final_norm);
            put(&embedding);
            for group in [&wq, &wk, &wv, &wo, &w1, &w2, &w3] {
                group.iter().for_each(|w| put(w));
            }
        }
    }
    if let Some(head) = &head {
        put(head);
    }
    header_bytes.extend_from_slice(&bytes);
    header_bytes
}

/// Reorders the rows of a `[heads·head_dim, in]` projection from `rotate_half` pairs to
/// adjacent pairs: row `j·head_dim/2 + i` of each head moves to row `2i + j`.
pub fn to_adjacent_pairs(weight: &[f32], heads: usize, head_dim: usize) -> Vec<f32> {
    let columns = weight.len() / (heads * head_dim);
    let half = head_dim / 2;
    let mut out = vec![0.0; weight.len()];
    for head in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let from = (head * head_dim + j * half + i) * columns;
                let to = (head * head_dim + 2 * i + j) * columns;
                out[to..to + columns].copy_from_slice(&weight[from..from + columns]);
            }
        }
    }
    out
}

/// `cos(p·θ_i)` and `sin(p·θ_i)` for each position `p` and pair `i`, `θ_i = theta^(-2i/head_dim)`.
fn rope_tables(seq_len: usize, head_dim: usize, theta: f64) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(seq_len * half);
    let mut sin = Vec::with_capacity(seq_len * half);
    for position in 0..seq_len {
        for i in 0..half {
            let angle = position as f64 * theta.powf(-2.0 * i as f64 / head_dim as f64);
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

/// The bytes of `tokenizer.bin`: the longest piece's length in bytes (`u32`), then for each id
/// its score (`f32`), its length (`i32`) and its bytes. Pieces are written as llama2.c's
/// `tokenizer.py` writes SentencePiece's: `▁` as a space, `<s>` and `</s>` between newlines.
/// `run.c` reads as many pieces as the model has ids; a tokenizer smaller than the model (a
/// small corpus gave fewer merges than asked) is padded with empty pieces, which no text
/// encodes to.
fn tokenizer_bytes(tokenizer: &Tokenizer, model_vocab: usize) -> Vec<u8> {
    let mut scores = tokenizer.merge_scores();
    let mut pieces: Vec<String> = (0..tokenizer.vocab_size() as u32)
        .map(|id| match id {
            BOS => "\n<s>\n".to_string(),
            EOS => "\n</s>\n".to_string(),
            _ => tokenizer
                .piece(id)
                .unwrap_or_default()
                .replace('\u{2581}', " "),
        })
        .collect();
    pieces.resize(model_vocab.max(pieces.len()), String::new());
    scores.resize(pieces.len(), f32::MIN);
    let longest = pieces.iter().map(String::len).max().unwrap_or(0) as u32;
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&longest.to_le_bytes());
    for (piece, score) in pieces.iter().zip(scores) {
        bytes.extend_from_slice(&score.to_le_bytes());
        bytes.extend_from_slice(&(piece.len() as i32).to_le_bytes());
        bytes.write_all(piece.as_bytes()).expect("writing to a Vec");
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_numbers_beyond_i32_are_refused_by_name() {
        let dims = ModelDims {
            max_seq_len: 3_000_000_000,
            ..crate::model::Preset::Tutorial.dims()
        };
        let err = header_numbers(&dims).unwrap_err().to_string();
        assert_eq!(
            err,
            "this model cannot be written as llama2c: max_seq_len 3000000000 does not fit the 32-bit integer llama2.c's header holds (at most 2147483647)"
        );
        let fits = header_numbers(&crate::model::Preset::Tutorial.dims()).unwrap();
        assert_eq!(fits, [288, 768, 8, 8, 4, 4096, 256]);
    }

    #[test]
    fn adjacent_pairs_reorder_rows_within_each_head() {
        // Two heads of dimension 4, one column: rows hold their own index.
        let weight: Vec<f32> = (0..8).map(|r| r as f32).collect();
        let moved = to_adjacent_pairs(&weight, 2, 4);
        assert_eq!(moved, vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
    }

    #[test]
    fn adjacent_pairs_rotate_like_rotate_half() {
        // Rotating q in tinyllm's layout, then reordering, equals reordering, then rotating
        // adjacent pairs as run.c does.
        let head_dim = 8;
        let half = head_dim / 2;
        let q: Vec<f32> = (0..head_dim).map(|i| (i as f32 * 0.7).sin()).collect();
        let (position, theta) = (5.0f64, 10_000.0f64);
        let freq = |i: usize| position * theta.powf(-2.0 * i as f64 / head_dim as f64);
        let mut rotated_half = q.clone();
        for i in 0..half {
            let (c, s) = (freq(i).cos() as f32, freq(i).sin() as f32);
            rotated_half[i] = q[i] * c - q[i + half] * s;
            rotated_half[i + half] = q[i + half] * c + q[i] * s;
        }
        let adjacent = to_adjacent_pairs(&q, 1, head_dim);
        let mut rotated_adjacent = adjacent.clone();
        for i in 0..half {
            let (c, s) = (freq(i).cos() as f32, freq(i).sin() as f32);
            let (v0, v1) = (adjacent[2 * i], adjacent[2 * i + 1]);
            rotated_adjacent[2 * i] = v0 * c - v1 * s;
            rotated_adjacent[2 * i + 1] = v0 * s + v1 * c;
        }
        assert_eq!(
            to_adjacent_pairs(&rotated_half, 1, head_dim),
            rotated_adjacent
        );
    }
}
