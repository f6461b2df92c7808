//! The LLaMA2 model: named presets and their dimensions.

mod presets;

pub use presets::{ModelDims, Preset};
