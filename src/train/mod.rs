//! Training, as small separate parts the train stage puts together: the learning-rate
//! schedule, validation, checkpoints, the metrics log, loss plots, and the loop itself.

pub mod checkpoint;
pub mod eval;
pub mod metrics;
pub mod plot;
pub mod schedule;
pub mod step;
mod trainer;

pub(crate) use trainer::save_checkpoint;
pub use trainer::{TimeSplit, TrainError, TrainJob, TrainOutcome, train};
