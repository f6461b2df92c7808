//! GGUF, the single-file format of llama.cpp (and of ollama, which runs llama.cpp): version 3,
//! little-endian; a header (magic, version, tensor count, metadata count), the metadata as typed
//! key/value pairs, a table of tensors (name, dims innermost first, type, offset), then the
//! tensor data, each tensor aligned to `general.alignment` bytes.
//!
//! The model is written as llama.cpp's `llama` architecture. That architecture rotates adjacent
//! pairs of each head (llama.cpp's "normal" RoPE, as run.c does), so the rows of q and k are
//! reordered exactly as for llama2.c ([`to_adjacent_pairs`]); llama.cpp's own converter does the
//! same to Hugging Face checkpoints. The tokenizer is written as a SentencePiece model
//! (`tokenizer.ggml.model = "llama"`), whose encoder merges the adjacent pair whose joined piece
//! scores highest: with [`Tokenizer::merge_scores`] that is the earliest BPE merge, so it gives
//! our ids, as run.c does. One difference remains, as for Hugging Face: a literal `▁` (U+2581) in
//! a text is a space to llama.cpp but three byte tokens to tinyllm.
//!
//! `tests/interop/gguf_check.py` runs an export in llama.cpp itself: the same ids for prompts,
//! logits within 1e-5, and the same greedy text as `tinyllm sample --temperature 0`.

pub mod read;

use std::borrow::Cow;
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use half::{bf16, f16};

use super::llama2c::to_adjacent_pairs;
use super::{ExportError, check_out, io_error, write_folder};
use crate::generate::folder::ModelFolder;
use crate::model::{Allocation, Footprint, ModelDims, ModelError, param_layout, safetensors};
use crate::tokenizer::{BOS, BYTE_BASE, EOS, Tokenizer, UNK};

/// The model file's name inside the export folder.
pub const MODEL_GGUF: &str = "model.gguf";
/// The ollama recipe's name inside the export folder.
pub const MODELFILE: &str = "Modelfile";
/// The first four bytes of every GGUF file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
pub const GGUF_VERSION: u32 = 3;
/// The alignment llama.cpp assumes when `general.alignment` is absent; written explicitly too.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;
/// Values per q8_0 block: one f16 scale, then 32 signed bytes.
pub const Q8_0_BLOCK: usize = 32;

/// How the matrices are stored. Norm weights (1-D) stay f32 in every type, as llama.cpp's
/// converter keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    F32,
    F16,
    Bf16,
    Q8_0,
}

impl TensorType {
    /// ggml's `ggml_type` number.
    pub fn id(self) -> u32 {
        match self {
            TensorType::F32 => 0,
            TensorType::F16 => 1,
            TensorType::Q8_0 => 8,
            TensorType::Bf16 => 30,
        }
    }

    pub fn from_id(id: u32) -> Option<TensorType> {
        [
            TensorType::F32,
            TensorType::F16,
            TensorType::Q8_0,
            TensorType::Bf16,
        ]
        .into_iter()
        .find(|t| t.id() == id)
    }

    pub fn name(self) -> &'static str {
        match self {
            TensorType::F32 => "f32",
            TensorType::F16 => "f16",
            TensorType::Bf16 => "bf16",
            TensorType::Q8_0 => "q8_0",
        }
    }

    /// llama.cpp's `llama_ftype` for a file whose matrices are of this type (`general.file_type`).
    pub fn file_type(self) -> u32 {
        match self {
            TensorType::F32 => 0,
            TensorType::F16 => 1,
            TensorType::Q8_0 => 7,
            TensorType::Bf16 => 32,
        }
    }

    /// Values per block: rows must be whole blocks.
    pub fn block_elements(self) -> u64 {
        match self {
            TensorType::Q8_0 => Q8_0_BLOCK as u64,
            _ => 1,
        }
    }

    pub fn block_bytes(self) -> u64 {
        match self {
            TensorType::F32 => 4,
            TensorType::F16 | TensorType::Bf16 => 2,
            TensorType::Q8_0 => 2 + Q8_0_BLOCK as u64,
        }
    }

    /// The bytes of `elements` values (a whole number of blocks).
    pub fn byte_len(self, elements: u64) -> u64 {
        elements / self.block_elements() * self.block_bytes()
    }

    /// The stored bytes of `values`, whose length is a whole number of blocks.
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.byte_len(values.len() as u64) as usize);
        match self {
            TensorType::F32 => values
                .iter()
                .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes())),
            TensorType::F16 => values
                .iter()
                .for_each(|v| bytes.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
            TensorType::Bf16 => values
                .iter()
                .for_each(|v| bytes.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
            // ggml's `quantize_row_q8_0_ref`: the scale maps the block's largest magnitude to
            // 127, and each value is rounded (half away from zero) after dividing by it.
            TensorType::Q8_0 => {
                for block in values.chunks(Q8_0_BLOCK) {
                    let max = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    let scale = max / 127.0;
                    let inverse = if scale != 0.0 { 1.0 / scale } else { 0.0 };
                    bytes.extend_from_slice(&f16::from_f32(scale).to_le_bytes());
                    bytes.extend(block.iter().map(|v| (v * inverse).round() as i8 as u8));
                }
            }
        }
        bytes
    }

    /// `elements` values back from their stored bytes.
    pub fn decode(self, bytes: &[u8], elements: u64) -> Vec<f32> {
        let two = |c: &[u8]| [c[0], c[1]];
        let values: Vec<f32> = match self {
            TensorType::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
            TensorType::F16 => bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes(two(c)).to_f32())
                .collect(),
            TensorType::Bf16 => bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes(two(c)).to_f32())
                .collect(),
            TensorType::Q8_0 => bytes
                .chunks_exact(self.block_bytes() as usize)
                .flat_map(|block| {
                    let scale = f16::from_le_bytes(two(block)).to_f32();
                    block[2..].iter().map(move |&q| q as i8 as f32 * scale)
                })
                .collect(),
        };
        debug_assert_eq!(values.len() as u64, elements);
        values
    }
}

/// A name for the ggml types this module does not decode, for error messages.
pub fn ggml_type_name(id: u32) -> &'static str {
    match id {
        2 => "q4_0",
        3 => "q4_1",
        6 => "q5_0",
        7 => "q5_1",
        9 => "q8_1",
        10..=14 => "a k-quant",
        _ => "unknown",
    }
}

/// The types of metadata values, numbered as in the GGUF specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    const ALL: [ValueType; 13] = [
        ValueType::U8,
        ValueType::I8,
        ValueType::U16,
        ValueType::I16,
        ValueType::U32,
        ValueType::I32,
        ValueType::F32,
        ValueType::Bool,
        ValueType::String,
        ValueType::Array,
        ValueType::U64,
        ValueType::I64,
        ValueType::F64,
    ];

    pub fn id(self) -> u32 {
        Self::ALL
            .iter()
            .position(|&t| t == self)
            .expect("every type is listed") as u32
    }

    pub fn from_id(id: u32) -> Option<ValueType> {
        Self::ALL.get(id as usize).copied()
    }

    /// The fewest bytes a value of this type takes in the file (a string or array: its length).
    pub fn min_size(self) -> u64 {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
            ValueType::U16 | ValueType::I16 => 2,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
            ValueType::U64 | ValueType::I64 | ValueType::F64 | ValueType::String => 8,
            ValueType::Array => 4 + 8,
        }
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// The element type, then the elements (all of that type).
    Array(ValueType, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(..) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    pub fn as_u32(&self) -> Option<u32> {
        match self {
            Value::U32(v) => Some(*v),
            _ => None,
        }
    }

    pub fn as_f32(&self) -> Option<f32> {
        match self {
            Value::F32(v) => Some(*v),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(v) => Some(*v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(_, items) => Some(items),
            _ => None,
        }
    }

    fn strings(items: impl IntoIterator<Item = String>) -> Value {
        Value::Array(
            ValueType::String,
            items.into_iter().map(Value::String).collect(),
        )
    }

    /// The value's bytes, without its type tag.
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Value::U8(v) => out.push(*v),
            Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::Bool(v) => out.push(u8::from(*v)),
            Value::String(v) => write_string(out, v),
            Value::Array(element, items) => {
                out.extend_from_slice(&element.id().to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for item in items {
                    debug_assert_eq!(item.value_type(), *element);
                    item.write(out);
                }
            }
            Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
}

fn write_string(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// A tensor to write: its GGUF name, dims innermost first, storage type and f32 values.
pub struct Tensor<'a> {
    pub name: String,
    pub dims: Vec<u64>,
    pub tensor_type: TensorType,
    pub values: Cow<'a, [f32]>,
}

/// Writes a GGUF file: the header, metadata and tensor table at once, then each tensor's data
/// as it is encoded, so that only one tensor's bytes are held beyond the values themselves.
/// `general.alignment` is written here, first, and must not be in `metadata`.
pub fn write(
    path: &Path,
    metadata: &[(String, Value)],
    tensors: &[Tensor<'_>],
) -> std::io::Result<()> {
    let alignment = DEFAULT_ALIGNMENT;
    let mut head = Vec::new();
    head.extend_from_slice(&GGUF_MAGIC);
    head.extend_from_slice(&GGUF_VERSION.to_le_bytes());
    head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    head.extend_from_slice(&(metadata.len() as u64 + 1).to_le_bytes());
    let alignment_entry = (
        "general.alignment".to_string(),
        Value::U32(alignment as u32),
    );
    for (key, value) in std::iter::once(&alignment_entry).chain(metadata) {
        write_string(&mut head, key);
        head.extend_from_slice(&value.value_type().id().to_le_bytes());
        value.write(&mut head);
    }
    let mut offset = 0u64;
    for tensor in tensors {
        write_string(&mut head, &tensor.name);
        head.extend_from_slice(&(tensor.dims.len() as u32).to_le_bytes());
        for d in &tensor.dims {
            head.extend_from_slice(&d.to_le_bytes());
        }
        head.extend_from_slice(&tensor.tensor_type.id().to_le_bytes());
        head.extend_from_slice(&offset.to_le_bytes());
        offset = (offset + tensor.tensor_type.byte_len(tensor.values.len() as u64))
            .next_multiple_of(alignment);
    }
    head.resize((head.len() as u64).next_multiple_of(alignment) as usize, 0);
    let file = File::create(path)?;
    let mut out = BufWriter::new(file);
    out.write_all(&head)?;
    for tensor in tensors {
        let bytes = tensor.tensor_type.encode(&tensor.values);
        out.write_all(&bytes)?;
        let padding = (bytes.len() as u64).next_multiple_of(alignment) - bytes.len() as u64;
        out.write_all(&vec![0u8; padding as usize])?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// What to write besides the weights.
pub struct GgufOptions<'a> {
    /// The type of the matrices.
    pub tensor_type: TensorType,
    /// `general.name`: how llama.cpp and ollama show the model.
    pub name: &'a str,
}

/// The format's name in messages, as `--format` spells it.
fn format_name(tensor_type: TensorType) -> &'static str {
    match tensor_type {
        TensorType::F32 => "gguf",
        TensorType::F16 => "gguf-f16",
        TensorType::Bf16 => "gguf-bf16",
        TensorType::Q8_0 => "gguf-q8_0",
    }
}

/// Writes `model.gguf` and an ollama `Modelfile` of the model folder `from` into the folder `out`
/// (created; it must not exist or be empty).
pub fn export(from: &Path, out: &Path, options: &GgufOptions<'_>) -> Result<(), ExportError> {
    let folder = ModelFolder::open(from)?;
    check_out(out)?;
    let config = folder.config.llama_config();
    let dims = folder.config.tinyllm.dims;
    let tensor_type = options.tensor_type;
    let unsupported = |reason: String| ExportError::Unsupported {
        format: format_name(tensor_type),
        reason,
    };
    check_rows(&dims, tensor_type).map_err(unsupported)?;
    let numbers = hyperparameters(&dims).map_err(unsupported)?;
    // The weights as read, the reordered copies of q and k, and one tensor's encoded bytes.
    let params = dims.num_params(config.tie_embeddings) as usize;
    Footprint {
        parts: vec![(Allocation::HostWeights { params }, 12 * params as u64)],
    }
    .check("this export")
    .map_err(ModelError::from)?;

    let layout = param_layout(&dims, &config);
    let weights = safetensors::load(&folder.weights(), &layout)?;
    let mut metadata = vec![
        (
            "general.architecture".to_string(),
            Value::String("llama".into()),
        ),
        ("general.name".into(), Value::String(options.name.into())),
        (
            "general.file_type".into(),
            Value::U32(tensor_type.file_type()),
        ),
        ("general.quantization_version".into(), Value::U32(2)),
    ];
    metadata.extend(numbers.map(|(key, n)| (format!("llama.{key}"), Value::U32(n))));
    metadata.extend([
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(config.norm_eps as f32),
        ),
        (
            "llama.rope.freq_base".into(),
            Value::F32(config.rope_theta as f32),
        ),
    ]);
    metadata.extend(tokenizer_metadata(&folder.tokenizer, dims.vocab_size));

    let tensors = tensors(&dims, &layout, &weights, tensor_type);
    let context = dims.max_seq_len;
    write_folder(out, |tmp| {
        let path = tmp.join(MODEL_GGUF);
        write(&path, &metadata, &tensors).map_err(io_error(&path))?;
        let path = tmp.join(MODELFILE);
        crate::fsutil::write_atomic(&path, modelfile(context).as_bytes()).map_err(io_error(&path))
    })
}

/// Refuses a block type whose blocks do not tile the model's rows: every matrix row is `dim`
/// or `hidden_dim` values long.
fn check_rows(dims: &ModelDims, tensor_type: TensorType) -> Result<(), String> {
    let block = tensor_type.block_elements() as usize;
    match [("dim", dims.dim), ("hidden_dim", dims.hidden_dim())]
        .into_iter()
        .find(|(_, len)| len % block != 0)
    {
        Some((what, len)) => Err(format!(
            "{} stores rows in blocks of {block} values and this model's {what} rows have {len}; export with --format gguf, gguf-bf16 or gguf-f16",
            tensor_type.name()
        )),
        None => Ok(()),
    }
}

/// The `llama.*` numbers, each a `u32` in llama.cpp's reader.
fn hyperparameters(dims: &ModelDims) -> Result<[(&'static str, u32); 8], String> {
    let fields = [
        ("context_length", dims.max_seq_len),
        ("embedding_length", dims.dim),
        ("block_count", dims.n_layers),
        ("feed_forward_length", dims.hidden_dim()),
        ("rope.dimension_count", dims.head_dim()),
        ("attention.head_count", dims.n_heads),
        ("attention.head_count_kv", dims.n_kv_heads),
        ("vocab_size", dims.vocab_size),
    ];
    let mut numbers = [("", 0u32); 8];
    for (slot, (key, value)) in numbers.iter_mut().zip(fields) {
        let n = u32::try_from(value).map_err(|_| {
            format!(
                "llama.{key} {value} does not fit the 32-bit integer GGUF holds (at most {})",
                u32::MAX
            )
        })?;
        *slot = (key, n);
    }
    Ok(numbers)
}

/// llama.cpp's token types.
const TOKEN_NORMAL: i32 = 1;
const TOKEN_UNKNOWN: i32 = 2;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_UNUSED: i32 = 5;
const TOKEN_BYTE: i32 = 6;

/// The `tokenizer.ggml.*` entries. llama.cpp wants one piece per row of the embedding, each
/// piece distinct: a tokenizer smaller than the model (a small corpus gave fewer merges than
/// asked) is padded with `[PAD<id>]` pieces of type unused, which no text encodes to.
fn tokenizer_metadata(tokenizer: &Tokenizer, model_vocab: usize) -> Vec<(String, Value)> {
    let mut scores = tokenizer.merge_scores();
    let size = model_vocab.max(tokenizer.vocab_size());
    scores.resize(size, f32::MIN);
    let mut seen = HashSet::new();
    let (mut pieces, mut types) = (Vec::with_capacity(size), Vec::with_capacity(size));
    for id in 0..size as u32 {
        let piece = tokenizer.piece(id).unwrap_or_default();
        let kind = match id {
            UNK => TOKEN_UNKNOWN,
            BOS | EOS => TOKEN_CONTROL,
            _ if (BYTE_BASE..BYTE_BASE + 256).contains(&id) => TOKEN_BYTE,
            _ => TOKEN_NORMAL,
        };
        if piece.is_empty() || !seen.insert(piece) {
            pieces.push(format!("[PAD{id}]"));
            types.push(Value::I32(TOKEN_UNUSED));
            scores[id as usize] = f32::MIN;
        } else {
            pieces.push(piece.to_string());
            types.push(Value::I32(kind));
        }
    }
    vec![
        ("tokenizer.ggml.model".into(), Value::String("llama".into())),
        ("tokenizer.ggml.tokens".into(), Value::strings(pieces)),
        (
            "tokenizer.ggml.scores".into(),
            Value::Array(ValueType::F32, scores.into_iter().map(Value::F32).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(ValueType::I32, types),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(BOS)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(EOS)),
        // tinyllm ends a text at EOS or at BOS, the start of the next story (models trained on
        // stories joined by separators emit BOS as often as EOS); llama.cpp ends generation at
        // its end-of-generation tokens, EOS and EOT, so BOS is written as EOT too.
        ("tokenizer.ggml.eot_token_id".into(), Value::U32(BOS)),
        ("tokenizer.ggml.unknown_token_id".into(), Value::U32(UNK)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)),
        ("tokenizer.ggml.add_eos_token".into(), Value::Bool(false)),
        // tinyllm encodes every text with a leading space (SentencePiece's dummy prefix).
        ("tokenizer.ggml.add_space_prefix".into(), Value::Bool(true)),
    ]
}

/// The tensors under llama.cpp's names, in its converter's order. tinyllm's `[out, in]`
/// row-major matrices are GGUF dims `[in, out]`; q and k rows are reordered for adjacent-pair
/// RoPE; the output head is left out when tied (llama.cpp then uses `token_embd`).
fn tensors<'a>(
    dims: &ModelDims,
    layout: &[crate::model::ParamInfo],
    weights: &'a [Vec<f32>],
    matrix_type: TensorType,
) -> Vec<Tensor<'a>> {
    let head_dim = dims.head_dim();
    let ours_to_gguf = |name: &str| -> Option<String> {
        let fixed = match name {
            "model.embed_tokens.weight" => Some("token_embd.weight"),
            "model.norm.weight" => Some("output_norm.weight"),
            "lm_head.weight" => Some("output.weight"),
            _ => None,
        };
        if let Some(fixed) = fixed {
            return Some(fixed.to_string());
        }
        let rest = name.strip_prefix("model.layers.")?;
        let (layer, part) = rest.split_once('.')?;
        let part = match part {
            "input_layernorm.weight" => "attn_norm",
            "self_attn.q_proj.weight" => "attn_q",
            "self_attn.k_proj.weight" => "attn_k",
            "self_attn.v_proj.weight" => "attn_v",
            "self_attn.o_proj.weight" => "attn_output",
            "post_attention_layernorm.weight" => "ffn_norm",
            "mlp.gate_proj.weight" => "ffn_gate",
            "mlp.up_proj.weight" => "ffn_up",
            "mlp.down_proj.weight" => "ffn_down",
            _ => return None,
        };
        Some(format!("blk.{layer}.{part}.weight"))
    };
    layout
        .iter()
        .zip(weights)
        .map(|(info, values)| {
            let name = ours_to_gguf(&info.name)
                .unwrap_or_else(|| panic!("param_layout names {} unknown to GGUF", info.name));
            let values: Cow<'a, [f32]> = if name.ends_with(".attn_q.weight") {
                Cow::Owned(to_adjacent_pairs(values, dims.n_heads, head_dim))
            } else if name.ends_with(".attn_k.weight") {
                Cow::Owned(to_adjacent_pairs(values, dims.n_kv_heads, head_dim))
            } else {
                Cow::Borrowed(values)
            };
            Tensor {
                dims: info.shape.iter().rev().map(|&d| d as u64).collect(),
                tensor_type: if info.shape.len() == 1 {
                    TensorType::F32
                } else {
                    matrix_type
                },
                name,
                values,
            }
        })
        .collect()
}

/// An ollama recipe for the model: the raw prompt, no chat template, the model's context.
fn modelfile(context: usize) -> String {
    format!(
        "# ollama model of a tinyllm export. Create and run it from this folder:\n\
         #   ollama create NAME -f Modelfile\n\
         #   ollama run NAME \"Once upon a time\"\n\
         FROM ./{MODEL_GGUF}\n\
         # A story model continues the text it is given: no chat template.\n\
         TEMPLATE \"{{{{ .Prompt }}}}\"\n\
         PARAMETER num_ctx {context}\n\
         # A story ends with </s>, and <s> begins the next one.\n\
         PARAMETER stop \"</s>\"\n\
         PARAMETER stop \"<s>\"\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_refuses_rows_that_are_not_whole_blocks() {
        let dims = ModelDims {
            dim: 48,
            ..crate::model::Preset::Tutorial.dims()
        };
        assert_eq!(
            check_rows(&dims, TensorType::Q8_0).unwrap_err(),
            "q8_0 stores rows in blocks of 32 values and this model's dim rows have 48; export with --format gguf, gguf-bf16 or gguf-f16"
        );
        assert!(check_rows(&dims, TensorType::Bf16).is_ok());
        assert!(check_rows(&crate::model::Preset::Tutorial.dims(), TensorType::Q8_0).is_ok());
    }

    #[test]
    fn q8_0_blocks_are_a_scale_and_rounded_multiples_of_it() {
        // The largest magnitude, 31.75, maps to -127 with the scale 0.25; 0.125 is half a step
        // and rounds away from zero to 1; the second block is all zeros, whose scale is 0.
        let mut values = vec![0.0f32; 64];
        values[..3].copy_from_slice(&[-31.75, 0.125, 1.0]);
        let bytes = TensorType::Q8_0.encode(&values);
        assert_eq!(bytes.len(), 2 * 34);
        assert_eq!(
            f16::from_le_bytes([bytes[0], bytes[1]]),
            f16::from_f32(0.25)
        );
        assert_eq!(bytes[2..5], [(-127i8) as u8, 1, 4]);
        assert!(bytes[5..].iter().all(|&b| b == 0));
        let back = TensorType::Q8_0.decode(&bytes, 64);
        assert_eq!(back[..3], [-31.75, 0.25, 1.0]);
        assert!(back[3..].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn metadata_values_are_tagged_and_little_endian() {
        let mut out = Vec::new();
        Value::Array(ValueType::String, vec![Value::String("ab".into())]).write(&mut out);
        assert_eq!(
            out,
            [
                &8u32.to_le_bytes()[..],
                &1u64.to_le_bytes(),
                &2u64.to_le_bytes(),
                b"ab"
            ]
            .concat()
        );
        for (id, kind) in ValueType::ALL.iter().enumerate() {
            assert_eq!(kind.id(), id as u32);
            assert_eq!(ValueType::from_id(id as u32), Some(*kind));
        }
        assert_eq!(ValueType::from_id(13), None);
    }
}
