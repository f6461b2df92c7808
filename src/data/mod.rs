//! Data: reading stories out of the corpus, and loading token shards for training.

pub mod corpus;
pub mod loader;
