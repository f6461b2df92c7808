//! tinyllm: pretrain tiny LLaMA2-architecture language models from scratch, driven by declarative
//! TOML pipelines.
//!
//! The crate is laid out the way the data flows:
//! - [`pipeline`]: the spec (typed TOML), overlays and sweeps, the stage DAG, the content-hashed
//!   cache and the runner that ties them together;
//! - [`stages`]: one file per pipeline stage;
//! - [`engine`]: the tensor engine: a backend trait and fused ops with their backward passes;
//! - [`model`]: model presets and dimensions;
//! - [`data`]: reading stories out of the corpus;
//! - [`tokenizer`]: the BPE and character tokenizers;
//! - [`train`]: the training loop and its parts (schedule, evaluation, checkpoints, metrics);
//! - [`collective`]: the ranks of a data-parallel job (one process, or MPI's);
//! - [`generate`] and [`serve`]: text from a trained model, on the console and over HTTP;
//! - [`cli`]: the command-line interface that the `tinyllm` binary wraps.

pub mod bench;
pub mod cli;
pub mod collective;
pub mod data;
pub mod engine;
pub mod export;
pub mod fsutil;
pub mod generate;
pub mod model;
pub mod pipeline;
pub mod serve;
pub mod stages;
pub mod tokenizer;
pub mod train;
