//! One file per subcommand, each with its clap arguments and its `exec`.

pub mod bench;
pub mod cache;
pub mod export;
pub mod report;
pub mod run;
pub mod sample;
pub mod schema;
pub mod score;
pub mod serve;
pub mod status;
pub mod tokenize;
