//! What a stage is to the runner: a step that reads the artifacts of its inputs and its view of
//! the spec, and writes its own artifact into a folder the runner gives it.

use std::collections::BTreeMap;
use std::path::Path;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::cache::Artifact;
use super::dag::StageId;
use super::view::StageView;

/// Any error a stage reports; the runner prefixes it with the stage's name.
pub type StageFailure = Box<dyn std::error::Error + Send + Sync>;

/// What a finished stage says about its result: figures for tables and a one-line summary.
#[derive(Debug, Clone, Default)]
pub struct StageReport {
    pub metrics: BTreeMap<String, f64>,
    pub summary: String,
}

/// One step of the pipeline. Its cache key comes from its view of the spec
/// ([`StageView::key_config`]), so the implementation only has to turn inputs into an output.
pub trait Stage: Send + Sync {
    fn id(&self) -> StageId;

    /// Builds the artifact: everything written into `cx.out_dir` becomes part of it.
    fn run(&self, cx: &mut StageContext<'_>) -> Result<StageReport, StageFailure>;

    /// Whether every rank of a data-parallel job runs this stage together (training), rather
    /// than rank 0 alone while the others wait for its artifact.
    fn runs_on_every_rank(&self) -> bool {
        false
    }

    /// Checks a cached artifact's contents beyond its files' hashes (`--verify`): an artifact
    /// that was built wrong matches its manifest yet cannot be used.
    fn check(&self, _artifact: &Artifact) -> Result<(), StageFailure> {
        Ok(())
    }
}

/// What a running stage gets from the runner.
pub struct StageContext<'a> {
    /// The part of the spec this stage may read: exactly what its cache key covers (ask for it
    /// with the accessor of the stage's name, e.g. `cx.view.train()?`).
    pub view: &'a StageView,
    /// The artifact's folder while it is built; renamed into the cache when the stage succeeds.
    pub out_dir: &'a Path,
    /// Survives a crash (for resumable work such as partial downloads or checkpoints); removed
    /// after the stage succeeds.
    pub scratch_dir: &'a Path,
    /// The human-facing run folder (`runs/<pipeline>/<variant>/`), for metrics and samples.
    pub run_dir: &'a Path,
    pub inputs: &'a BTreeMap<StageId, Artifact>,
    /// Hide progress bars (`--quiet`, or not a terminal).
    pub quiet: bool,
}

impl StageContext<'_> {
    /// The artifact of an input stage.
    pub fn input(&self, stage: StageId) -> Result<&Artifact, StageFailure> {
        self.inputs.get(&stage).ok_or_else(|| {
            format!("the runner did not provide the {stage} artifact this stage reads").into()
        })
    }

    /// A progress bar for a transfer of `total` bytes (unknown when `None`).
    pub fn bytes_progress(&self, total: Option<u64>, label: &str) -> ProgressBar {
        let bar = match total {
            Some(total) => ProgressBar::new(total).with_style(
                ProgressStyle::with_template(
                    "  {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("the template is valid")
                .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("  {spinner} {msg} {bytes} {bytes_per_sec}")
                    .expect("the template is valid"),
            ),
        };
        if self.quiet {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        bar.set_message(label.to_string());
        bar
    }
}

/// The stage implementations a binary (or a test) runs pipelines with.
#[derive(Default)]
pub struct StageRegistry {
    stages: BTreeMap<StageId, Box<dyn Stage>>,
}

impl StageRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the implementation of one stage.
    pub fn with(mut self, stage: impl Stage + 'static) -> Self {
        self.stages.insert(stage.id(), Box::new(stage));
        self
    }

    pub fn get(&self, id: StageId) -> Option<&dyn Stage> {
        self.stages.get(&id).map(|s| s.as_ref())
    }
}
