//! Reading and writing model weights as safetensors (f32), with Hugging Face Llama tensor names,
//! so a saved model is already a Hugging Face checkpoint.
//!
//! The format: an 8-byte little-endian header length, a JSON header mapping each tensor name to
//! its dtype, shape and byte range, then the tensors' bytes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::{Value as Json, json};

use super::{Allocation, Llama, LlamaConfig, ModelError, ParamInfo, Params, Shape, param_layout};
use crate::engine::Backend;
use crate::fsutil;

#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a safetensors file: {reason}", path.display())]
    Format { path: PathBuf, reason: String },
    #[error("{}: tensor {name} is missing", path.display())]
    Missing { path: PathBuf, name: String },
    #[error("{}: tensor {name} has shape {got:?}, the model expects {expected:?}", path.display())]
    Shape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("{}: tensor {name} is {dtype}; only F32 is supported", path.display())]
    Dtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{}: tensor {name} holds {value} at index {index}: the weights are damaged (a run that diverged?) and would give NaN logits", path.display())]
    NonFinite {
        path: PathBuf,
        name: String,
        index: usize,
        value: f32,
    },
    /// The weights could not be moved between the file and the model (e.g. out of memory).
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Writes `tensors` (in `layout` order) atomically to `path`, with `metadata` in the header.
pub fn save(
    path: &Path,
    layout: &[ParamInfo],
    tensors: &[Vec<f32>],
    metadata: &BTreeMap<String, String>,
) -> Result<(), SafetensorsError> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), json!(metadata));
    }
    let mut offset = 0usize;
    for (info, tensor) in layout.iter().zip(tensors) {
        let bytes = tensor.len() * 4;
        header.insert(
            info.name.clone(),
            json!({ "dtype": "F32", "shape": info.shape, "data_offsets": [offset, offset + bytes] }),
        );
        offset += bytes;
    }
    let mut header_bytes = serde_json::to_vec(&Json::Object(header)).expect("JSON serializes");
    // The data starts 8-byte aligned, as the reference implementation pads it.
    while !(header_bytes.len() + 8).is_multiple_of(8) {
        header_bytes.push(b' ');
    }
    let mut file = Vec::with_capacity(8 + header_bytes.len() + offset);
    file.extend_from_slice(&(header_bytes.len() as u64).to_le_bytes());
    file.extend_from_slice(&header_bytes);
    for tensor in tensors {
        file.extend_from_slice(bytemuck::cast_slice(tensor));
    }
    fsutil::write_atomic(path, &file).map_err(|source| SafetensorsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The largest JSON header read: the reference implementation's bound, so a hostile length
/// cannot make the reader allocate more than that before anything is checked.
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Reads the tensors `layout` names from `path`, checking every shape.
///
/// Only the header and the named tensors are read, each after its declared size has been checked
/// against the file's real length, so what is allocated is bounded by what the file holds.
pub fn load(path: &Path, layout: &[ParamInfo]) -> Result<Vec<Vec<f32>>, SafetensorsError> {
    let io = |source| SafetensorsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let format = |reason: String| SafetensorsError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    if file_len < 8 {
        return Err(format("shorter than its 8-byte header length".into()));
    }
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes).map_err(io)?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > file_len - 8 {
        return Err(format(format!(
            "header length {header_len} runs past the file's end"
        )));
    }
    if header_len > MAX_HEADER_BYTES {
        return Err(format(format!(
            "header length {header_len} is above the format's limit of {MAX_HEADER_BYTES}"
        )));
    }
    let mut header_bytes = vec![0u8; header_len as usize];
    file.read_exact(&mut header_bytes).map_err(io)?;
    let header: serde_json::Map<String, Json> = serde_json::from_slice(&header_bytes)
        .map_err(|e| format(format!("unreadable header: {e}")))?;
    let data_start = 8 + header_len;
    let data_len = file_len - data_start;
    layout
        .iter()
        .map(|info| {
            let entry = header
                .get(&info.name)
                .ok_or_else(|| SafetensorsError::Missing {
                    path: path.to_path_buf(),
                    name: info.name.clone(),
                })?;
            let dtype = entry["dtype"].as_str().unwrap_or("?");
            if dtype != "F32" {
                return Err(SafetensorsError::Dtype {
                    path: path.to_path_buf(),
                    name: info.name.clone(),
                    dtype: dtype.to_string(),
                });
            }
            let shape = u64_list(&entry["shape"])
                .ok_or_else(|| format(format!("tensor {} has a malformed shape", info.name)))?;
            if shape.len() != info.shape.len()
                || shape.iter().zip(&info.shape).any(|(&a, &b)| a != b as u64)
            {
                return Err(SafetensorsError::Shape {
                    path: path.to_path_buf(),
                    name: info.name.clone(),
                    expected: info.shape.clone(),
                    got: shape.iter().map(|&d| d as usize).collect(),
                });
            }
            let (start, end) = match u64_list(&entry["data_offsets"]).as_deref() {
                Some(&[start, end]) if start <= end && end <= data_len => (start, end),
                _ => return Err(format(format!("tensor {} has bad data offsets", info.name))),
            };
            let numel = info.numel();
            if Some(end - start) != (numel as u64).checked_mul(4) {
                return Err(format(format!(
                    "tensor {} has {} bytes for {numel} values",
                    info.name,
                    end - start,
                )));
            }
            let mut values = vec![0f32; numel];
            file.seek(SeekFrom::Start(data_start + start))
                .and_then(|_| file.read_exact(bytemuck::cast_slice_mut(&mut values)))
                .map_err(io)?;
            for value in &mut values {
                *value = f32::from_bits(u32::from_le(value.to_bits()));
            }
            if let Some(index) = values.iter().position(|v| !v.is_finite()) {
                return Err(SafetensorsError::NonFinite {
                    path: path.to_path_buf(),
                    name: info.name.clone(),
                    index,
                    value: values[index],
                });
            }
            Ok(values)
        })
        .collect()
}

/// A JSON array of non-negative integers, or `None` for anything else.
fn u64_list(value: &Json) -> Option<Vec<u64>> {
    value.as_array()?.iter().map(Json::as_u64).collect()
}

impl<S: Shape, B: Backend<Float = f32>> Llama<S, B> {
    /// Saves the weights as safetensors with Hugging Face names.
    pub fn save_safetensors(
        &self,
        path: &Path,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), SafetensorsError> {
        let tensors = self.state_tensors()?;
        save(path, self.layout(), &tensors, metadata)
    }

    /// A model with the weights of a safetensors file (Hugging Face names), every shape checked.
    pub fn load_safetensors(
        backend: B,
        shape: S,
        config: LlamaConfig,
        path: &Path,
    ) -> Result<Self, SafetensorsError> {
        let layout = param_layout(&shape.dims(), &config);
        let tensors = load(path, &layout)?;
        let params: usize = layout.iter().map(ParamInfo::numel).sum();
        let buffers = tensors
            .iter()
            .map(|t| backend.upload(t))
            .collect::<Result<_, _>>()
            .map_err(ModelError::allocating(
                Allocation::Parameters { params },
                super::memory::float_bytes::<f32>(params, 2),
            ))?;
        Ok(Llama::with_params(
            backend,
            shape,
            config,
            Params::from_tensors(buffers),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Vec<ParamInfo> {
        vec![
            ParamInfo {
                name: "a.weight".into(),
                shape: vec![2, 3],
                decay: true,
            },
            ParamInfo {
                name: "b.weight".into(),
                shape: vec![3],
                decay: false,
            },
        ]
    }

    #[test]
    fn round_trips_and_checks_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let tensors = vec![vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], vec![0.5, -0.5, 0.25]];
        save(&path, &layout(), &tensors, &BTreeMap::new()).unwrap();
        assert_eq!(load(&path, &layout()).unwrap(), tensors);

        let mut other = layout();
        other[1].shape = vec![4];
        let err = load(&path, &other).unwrap_err().to_string();
        assert!(err.contains("b.weight has shape [3]"), "{err}");
        other[1].name = "c.weight".into();
        assert!(
            load(&path, &other)
                .unwrap_err()
                .to_string()
                .contains("c.weight is missing")
        );

        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        let err = load(&path, &layout()).unwrap_err().to_string();
        assert!(err.contains("bad data offsets"), "{err}");

        let damaged = vec![
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            vec![0.5, f32::NAN, 0.25],
        ];
        save(&path, &layout(), &damaged, &BTreeMap::new()).unwrap();
        let err = load(&path, &layout()).unwrap_err().to_string();
        assert!(
            err.contains("tensor b.weight holds NaN at index 1"),
            "{err}"
        );
    }
}
