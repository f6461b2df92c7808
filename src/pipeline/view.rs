//! What each stage may read of the spec, and its cache key, from one and the same value.
//!
//! A stage never sees the whole [`PipelineSpec`]: the runner hands it its own [`StageView`],
//! built from the sections its output depends on, and the stage's cache key is that view
//! serialized, less the fields each section lists as non-semantic ([`Section::NON_SEMANTIC`]).
//! [`StageView::key_config`] takes each view apart field by field, so a field added to a view
//! does not compile until it is keyed. A stage therefore cannot read a field its key does not
//! cover, and an artifact cannot be served for settings that would change it.
//! `pipeline.*` (name, folders, threads) belongs to the runner and is in no view.

use std::path::Path;

use serde::Serialize;
use serde_json::{Value as Json, json};

use super::dag::StageId;
use super::spec::{
    CorpusConfig, DownloadConfig, MAX_MIRROR_FILES, PipelineSpec, PretokenizeConfig, SampleConfig,
    Section, StoryLayout, TrainConfig, TrainVocabConfig, Violation, local_mirror_path,
};
use crate::engine::Precision;
use crate::fsutil;
use crate::model::{LlamaConfig, ModelDims};

/// The download stage's view: the files to fetch (and how patiently).
#[derive(Debug, Clone, PartialEq)]
pub struct DownloadView {
    pub download: DownloadConfig,
}

/// The train_vocab stage's view: the tokenizer's settings and the training files it samples.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainVocabView {
    pub train_vocab: TrainVocabConfig,
    pub corpus: TrainCorpus,
}

/// The part of `[corpus]` the tokenizer is trained on: validation files are not read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainCorpus {
    pub train_files: Vec<String>,
    #[serde(flatten)]
    pub layout: StoryLayout,
}

/// The pretokenize stage's view: the whole corpus section (training and validation files).
#[derive(Debug, Clone, PartialEq)]
pub struct PretokenizeView {
    pub pretokenize: PretokenizeConfig,
    pub corpus: CorpusConfig,
}

/// The train stage's view: the resolved model and the training settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainView {
    pub model: ResolvedModel,
    pub train: TrainConfig,
    /// `train.precision` resolved on this machine for `train.device`: keyed, since bf16 and
    /// f32 train different weights (an f32 key leaves it out, as keys did before it existed).
    pub precision: Precision,
    /// Ranks of the data-parallel job this process belongs to: keyed, since they set the
    /// global batch and the data order (1, one process, leaves it out of the key).
    pub world_size: usize,
}

/// `[model]` as the train stage uses it: the preset and explicit fields resolved to dimensions
/// (so a preset and the same dimensions written out are the same model, with the same key).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResolvedModel {
    pub dims: ModelDims,
    pub tie_embeddings: bool,
    pub norm_eps: f64,
    pub rope_theta: f64,
    pub dropout: f64,
}

impl ResolvedModel {
    /// The model's settings besides its shape.
    pub fn llama_config(&self) -> LlamaConfig {
        LlamaConfig {
            norm_eps: self.norm_eps,
            rope_theta: self.rope_theta,
            tie_embeddings: self.tie_embeddings,
        }
    }
}

/// The sample stage's view: the prompts and sampling settings, and the precision
/// `sample.precision` resolves to on this machine.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleView {
    pub sample: SampleConfig,
    pub precision: Precision,
}

/// One stage's view of a spec.
// A few are made per run, so the train view's size (its settings) costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum StageView {
    Download(DownloadView),
    TrainVocab(TrainVocabView),
    Pretokenize(PretokenizeView),
    Train(TrainView),
    Sample(SampleView),
}

/// A stage asked for another stage's view: a bug in the stage (or in the runner).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the {asked} stage's settings were asked for, but this is the {given} stage's view")]
pub struct WrongView {
    pub asked: StageId,
    pub given: StageId,
}

macro_rules! view_accessor {
    ($(#[$doc:meta])* $name:ident, $variant:ident, $view:ty) => {
        $(#[$doc])*
        pub fn $name(&self) -> Result<&$view, WrongView> {
            match self {
                StageView::$variant(view) => Ok(view),
                other => Err(WrongView {
                    asked: StageId::$variant,
                    given: other.stage(),
                }),
            }
        }
    };
}

impl StageView {
    /// The view of `stage` on `spec`; fails only when the model's dimensions do not resolve
    /// (which validation has already ruled out for a loaded spec).
    pub fn new(stage: StageId, spec: &PipelineSpec) -> Result<StageView, Violation> {
        Ok(match stage {
            StageId::Download => StageView::Download(DownloadView {
                download: spec.download.clone(),
            }),
            StageId::TrainVocab => StageView::TrainVocab(TrainVocabView {
                train_vocab: spec.train_vocab.clone(),
                corpus: TrainCorpus {
                    train_files: spec.corpus.train_files.clone(),
                    layout: spec.corpus.layout(),
                },
            }),
            StageId::Pretokenize => StageView::Pretokenize(PretokenizeView {
                pretokenize: spec.pretokenize.clone(),
                corpus: spec.corpus.clone(),
            }),
            StageId::Train => {
                let model = &spec.model;
                StageView::Train(TrainView {
                    model: ResolvedModel {
                        dims: spec.model_dims()?,
                        tie_embeddings: model.tie_embeddings,
                        norm_eps: model.norm_eps,
                        rope_theta: model.rope_theta,
                        dropout: model.dropout,
                    },
                    train: spec.train.clone(),
                    precision: spec.train.precision.resolve(spec.train.device),
                    world_size: crate::collective::world().size(),
                })
            }
            StageId::Sample => StageView::Sample(SampleView {
                sample: spec.sample.clone(),
                precision: spec.sample.precision.resolve(spec.sample.device),
            }),
        })
    }

    /// The stage this view is for.
    pub fn stage(&self) -> StageId {
        match self {
            StageView::Download(_) => StageId::Download,
            StageView::TrainVocab(_) => StageId::TrainVocab,
            StageView::Pretokenize(_) => StageId::Pretokenize,
            StageView::Train(_) => StageId::Train,
            StageView::Sample(_) => StageId::Sample,
        }
    }

    view_accessor!(
        /// The download stage's view, or an error for any other stage.
        download,
        Download,
        DownloadView
    );
    view_accessor!(
        /// The train_vocab stage's view, or an error for any other stage.
        train_vocab,
        TrainVocab,
        TrainVocabView
    );
    view_accessor!(
        /// The pretokenize stage's view, or an error for any other stage.
        pretokenize,
        Pretokenize,
        PretokenizeView
    );
    view_accessor!(
        /// The train stage's view, or an error for any other stage.
        train,
        Train,
        TrainView
    );
    view_accessor!(
        /// The sample stage's view, or an error for any other stage.
        sample,
        Sample,
        SampleView
    );

    /// The canonical JSON that keys the stage's artifact: the view without its non-semantic
    /// fields. Each arm names every field of its view, so none can be left out by accident.
    pub fn key_config(&self) -> Json {
        match self {
            StageView::Download(DownloadView { download }) => download_key_config(download),
            StageView::TrainVocab(TrainVocabView {
                train_vocab,
                corpus,
            }) => json!({
                "train_vocab": semantic(train_vocab),
                "corpus": corpus,
            }),
            StageView::Pretokenize(PretokenizeView {
                pretokenize,
                corpus,
            }) => json!({
                "pretokenize": semantic(pretokenize),
                "corpus": corpus,
            }),
            StageView::Train(TrainView {
                model,
                train,
                precision,
                world_size,
            }) => {
                let mut key = json!({
                    "model": model,
                    "train": semantic(train),
                });
                if *precision != Precision::F32 {
                    key["precision"] = json!(precision);
                }
                if *world_size > 1 {
                    key["world_size"] = json!(world_size);
                }
                key
            }
            StageView::Sample(SampleView { sample, precision }) => {
                let mut key = semantic(sample);
                // f32 stays out, so the keys of samples made before bf16 existed still match.
                if *precision != Precision::F32
                    && let Json::Object(map) = &mut key
                {
                    map.insert("precision".into(), json!(precision));
                }
                key
            }
        }
    }
}

/// Every stage's view of one spec, built once when the spec is loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct StageViews {
    /// In [`StageId::ALL`] order.
    views: Vec<StageView>,
}

impl StageViews {
    pub fn new(spec: &PipelineSpec) -> Result<StageViews, Violation> {
        let views = StageId::ALL
            .into_iter()
            .map(|stage| StageView::new(stage, spec))
            .collect::<Result<_, _>>()?;
        Ok(StageViews { views })
    }

    pub fn get(&self, stage: StageId) -> &StageView {
        let index = StageId::ALL
            .iter()
            .position(|s| *s == stage)
            .expect("StageId::ALL lists every stage");
        &self.views[index]
    }

    /// The views as a job of `ranks` ranks sees them: what a submitter plans for the jobs it
    /// hands to a scheduler (the train key holds the world size, which the submitting process,
    /// of one rank, does not have).
    pub fn for_world_size(mut self, ranks: usize) -> StageViews {
        for view in &mut self.views {
            if let StageView::Train(train) = view {
                train.world_size = ranks;
            }
        }
        self
    }
}

/// A section as JSON, without its non-semantic fields.
fn semantic<S: Section + Serialize>(section: &S) -> Json {
    let mut value = serde_json::to_value(section).expect("spec sections serialize to JSON");
    if let Json::Object(map) = &mut value {
        for field in S::NON_SEMANTIC {
            map.remove(*field);
        }
    }
    value
}

/// A file with a checksum is the same file from any mirror, so its mirrors stay out of the key.
/// The retry and timeout settings are non-semantic.
fn download_key_config(config: &DownloadConfig) -> Json {
    let files: Vec<Json> = config
        .files
        .iter()
        .map(|file| {
            let source = match &file.sha256 {
                Some(sha) => json!({ "sha256": sha.to_ascii_lowercase() }),
                None => {
                    // A local file or folder can change under the same path: its content is
                    // part of the key, so editing it re-runs the pipeline from `download`.
                    let local: Vec<Json> = file
                        .mirrors
                        .iter()
                        .filter_map(|m| local_mirror_path(m))
                        .map(|path| json!(local_fingerprint(path)))
                        .collect();
                    json!({ "mirrors": file.mirrors, "local_content": local })
                }
            };
            json!({
                "name": file.file_name(),
                "unpack": file.should_unpack(),
                "source": source,
            })
        })
        .collect();
    json!({ "files": files })
}

/// blake3 over a local mirror's content: a file's bytes, or a folder's relative paths and file
/// contents in sorted order; `missing` when it cannot be read (the download stage reports
/// why). Only regular files are read: a device or a FIFO would never end.
fn local_fingerprint(path: &Path) -> String {
    let hash = || -> std::io::Result<String> {
        let meta = std::fs::metadata(path)?;
        if meta.is_file() {
            return Ok(fsutil::blake3_file(path)?.1);
        }
        if !meta.is_dir() {
            return Err(std::io::ErrorKind::InvalidInput.into());
        }
        let mut hasher = blake3::Hasher::new();
        for relative in fsutil::corpus_files(path, MAX_MIRROR_FILES)? {
            let (size, hash) = fsutil::blake3_file(&path.join(&relative))?;
            let line = format!("{}\t{size}\t{hash}\n", relative.to_string_lossy());
            hasher.update(line.as_bytes());
        }
        Ok(hasher.finalize().to_hex().to_string())
    };
    hash().unwrap_or_else(|_| "missing".into())
}

#[cfg(test)]
mod tests;
