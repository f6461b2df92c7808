//! The LLaMA2 model: named presets and their dimensions, type-level shapes, and the decoder's
//! forward and backward passes on an engine backend.

mod decode;
mod dispatch;
pub mod hf_config;
mod llama;
mod memory;
mod presets;
pub mod safetensors;
pub mod shape;

pub use decode::Decoder;
pub use dispatch::{DispatchError, ModelJob, run_model};
pub use hf_config::HfConfig;
pub use llama::{Llama, LlamaConfig, ModelError, ParamInfo, Params, param_layout};
pub use memory::{Allocation, Footprint, MemoryLimit, TooLarge, memory_limit};
pub use presets::{DimsError, MAX_HEAD_DIM, MAX_PARAMS, MAX_SEQ_LEN, ModelDims, Preset};
pub use shape::{Dims, RuntimeShape, Shape, ShapeError, ShapeJob, with_shape};

#[cfg(test)]
mod tests;
