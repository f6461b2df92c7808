//! Pipelines: the spec and its overlays, the stage DAG, what each stage sees of the spec, the
//! content-hashed cache, and the runner.

pub mod cache;
pub mod dag;
pub mod overlay;
pub mod report;
pub mod runner;
pub mod slurm;
pub mod spec;
pub mod stage;
pub mod view;

pub use cache::{Artifact, Cache};
pub use dag::StageId;
pub use overlay::{LoadedSpec, SpecError, SpecSources, Variant, load};
pub use runner::{RunError, RunOptions, run};
pub use spec::PipelineSpec;
pub use stage::{Stage, StageContext, StageFailure, StageRegistry, StageReport};
pub use view::{StageView, StageViews};
