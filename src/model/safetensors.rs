//! Reading and writing model weights as safetensors (f32), with Hugging Face Llama tensor names,
//! so a saved model is already a Hugging Face checkpoint.
//!
//! The format: an 8-byte little-endian header length, a JSON header mapping each tensor name to
//! its dtype, shape and byte range, then the tensors' bytes.

use std::collections::BTreeMap;
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

/// Reads the tensors `layout` names from `path`, checking every shape.
pub fn load(path: &Path, layout: &[ParamInfo]) -> Result<Vec<Vec<f32>>, SafetensorsError> {
    let bytes = std::fs::read(path).map_err(|source| SafetensorsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let format = |reason: String| SafetensorsError::Format {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() < 8 {
        return Err(format("shorter than its 8-byte header length".into()));
    }
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let data_start = 8usize
        .checked_add(header_len)
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| {
            format(format!(
                "header length {header_len} runs past the file's end"
            ))
        })?;
    let header: serde_json::Map<String, Json> = serde_json::from_slice(&bytes[8..data_start])
        .map_err(|e| format(format!("unreadable header: {e}")))?;
    let data = &bytes[data_start..];
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
            let shape: Vec<usize> = entry["shape"]
                .as_array()
                .map(|dims| {
                    dims.iter()
                        .filter_map(Json::as_u64)
                        .map(|d| d as usize)
                        .collect()
                })
                .unwrap_or_default();
            if shape != info.shape {
                return Err(SafetensorsError::Shape {
                    path: path.to_path_buf(),
                    name: info.name.clone(),
                    expected: info.shape.clone(),
                    got: shape,
                });
            }
            let range: Vec<usize> = entry["data_offsets"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .filter_map(Json::as_u64)
                        .map(|d| d as usize)
                        .collect()
                })
                .unwrap_or_default();
            let (start, end) = match range[..] {
                [start, end] if start <= end && end <= data.len() => (start, end),
                _ => return Err(format(format!("tensor {} has bad data offsets", info.name))),
            };
            if end - start != info.numel() * 4 {
                return Err(format(format!(
                    "tensor {} has {} bytes for {} values",
                    info.name,
                    end - start,
                    info.numel()
                )));
            }
            let values: Vec<f32> = data[start..end]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect();
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
