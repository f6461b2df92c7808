//! The pipeline's stages, one file each, each a [`Stage`](crate::pipeline::Stage) implementation.

pub mod download;
pub mod pretokenize;
pub mod sample;
pub mod train;
pub mod train_vocab;

use crate::pipeline::StageRegistry;

/// The stages this build of tinyllm implements.
pub fn builtin_registry() -> StageRegistry {
    StageRegistry::new()
        .with(download::Download)
        .with(train_vocab::TrainVocab)
        .with(pretokenize::Pretokenize)
        .with(train::Train)
        .with(sample::Sample)
}
