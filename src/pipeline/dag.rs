//! The stages of a pipeline, what each one reads, and the part of the spec that keys it.

use std::fmt;

use serde::Serialize;
use serde_json::{Value as Json, json};

use super::spec::{DownloadConfig, PipelineSpec, Section};

/// The five stages, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StageId {
    Download,
    TrainVocab,
    Pretokenize,
    Train,
    Sample,
}

impl StageId {
    pub const ALL: [StageId; 5] = [
        StageId::Download,
        StageId::TrainVocab,
        StageId::Pretokenize,
        StageId::Train,
        StageId::Sample,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StageId::Download => "download",
            StageId::TrainVocab => "train_vocab",
            StageId::Pretokenize => "pretokenize",
            StageId::Train => "train",
            StageId::Sample => "sample",
        }
    }

    pub fn from_name(name: &str) -> Option<StageId> {
        StageId::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The stages whose artifacts this one reads.
    pub fn inputs(self) -> &'static [StageId] {
        match self {
            StageId::Download => &[],
            StageId::TrainVocab => &[StageId::Download],
            StageId::Pretokenize => &[StageId::Download, StageId::TrainVocab],
            StageId::Train => &[StageId::TrainVocab, StageId::Pretokenize],
            StageId::Sample => &[StageId::TrainVocab, StageId::Train],
        }
    }

    /// Whether `self` reads, directly or through other stages, the artifact of `upstream`.
    ///
    /// ```
    /// use tinyllm::pipeline::StageId;
    /// assert!(StageId::Sample.depends_on(StageId::Download));
    /// assert!(!StageId::TrainVocab.depends_on(StageId::Pretokenize));
    /// ```
    pub fn depends_on(self, upstream: StageId) -> bool {
        self.inputs()
            .iter()
            .any(|&input| input == upstream || input.depends_on(upstream))
    }

    /// The version of the stage's output format and algorithm. Bump it when the same inputs and
    /// config would give a different artifact: every cached artifact of the stage is then stale.
    pub fn version(self) -> u32 {
        match self {
            StageId::Download => 1,
            StageId::TrainVocab => 1,
            StageId::Pretokenize => 1,
            // 2: later epochs cut the token shards at other offsets.
            StageId::Train => 2,
            StageId::Sample => 1,
        }
    }

    /// The canonical view of the spec that decides this stage's output: its section without the
    /// non-semantic fields (plus the resolved model shape for `train`).
    pub fn key_config(self, spec: &PipelineSpec) -> Json {
        match self {
            StageId::Download => download_key_config(&spec.download),
            StageId::TrainVocab => {
                let c = &spec.corpus;
                json!({
                    "train_vocab": semantic(&spec.train_vocab),
                    "corpus": {
                        "train_files": c.train_files,
                        "format": c.format,
                        "separator": c.separator,
                    },
                })
            }
            StageId::Pretokenize => json!({
                "pretokenize": semantic(&spec.pretokenize),
                "corpus": spec.corpus,
            }),
            StageId::Train => {
                let m = &spec.model;
                let dims = spec.model_dims().ok();
                json!({
                    "model": {
                        "dims": dims,
                        "tie_embeddings": m.tie_embeddings,
                        "norm_eps": m.norm_eps,
                        "rope_theta": m.rope_theta,
                        "dropout": m.dropout,
                    },
                    "train": semantic(&spec.train),
                })
            }
            StageId::Sample => semantic(&spec.sample),
        }
    }
}

impl fmt::Display for StageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
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
fn download_key_config(config: &DownloadConfig) -> Json {
    let files: Vec<Json> = config
        .files
        .iter()
        .map(|file| {
            let source = match &file.sha256 {
                Some(sha) => json!({ "sha256": sha.to_ascii_lowercase() }),
                None => json!({ "mirrors": file.mirrors }),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_are_transitive() {
        assert!(StageId::Sample.depends_on(StageId::Download));
        assert!(StageId::Train.depends_on(StageId::TrainVocab));
        assert!(!StageId::TrainVocab.depends_on(StageId::Train));
        assert!(!StageId::Download.depends_on(StageId::Download));
    }

    #[test]
    fn names_round_trip() {
        for stage in StageId::ALL {
            assert_eq!(StageId::from_name(stage.name()), Some(stage));
        }
    }
}
