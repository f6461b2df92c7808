//! The stages of a pipeline, what each one reads, and the part of the spec that keys it.

use std::fmt;
use std::path::Path;

use serde::Serialize;
use serde_json::{Value as Json, json};

use super::spec::{DownloadConfig, PipelineSpec, Section};
use crate::fsutil;

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
                None => {
                    // A local file or folder can change under the same path: its content is
                    // part of the key, so editing it re-runs the pipeline from `download`.
                    let local: Vec<Json> = file
                        .mirrors
                        .iter()
                        .filter(|m| !m.starts_with("http://") && !m.starts_with("https://"))
                        .map(|m| json!(local_fingerprint(m)))
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
/// contents in sorted order; `missing` when it cannot be read (the download stage reports why).
fn local_fingerprint(mirror: &str) -> String {
    let path = Path::new(mirror.strip_prefix("file://").unwrap_or(mirror));
    let hash = || -> std::io::Result<String> {
        if !path.is_dir() {
            return Ok(fsutil::blake3_file(path)?.1);
        }
        let mut hasher = blake3::Hasher::new();
        for relative in fsutil::list_files(path)? {
            let (size, hash) = fsutil::blake3_file(&path.join(&relative))?;
            let line = format!("{}\t{size}\t{hash}\n", relative.to_string_lossy());
            hasher.update(line.as_bytes());
        }
        Ok(hasher.finalize().to_hex().to_string())
    };
    hash().unwrap_or_else(|_| "missing".into())
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
    fn editing_a_local_corpus_changes_the_download_key() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("stories");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("a.txt"), "Tom had a cat.").unwrap();
        let toml = format!(
            "[pipeline]\nname = \"t\"\n[download]\nfiles = [{{ mirrors = [{:?}] }}]\n",
            folder.to_string_lossy()
        );
        let spec: PipelineSpec = toml::from_str(&toml).unwrap();
        let key = || StageId::Download.key_config(&spec);
        let first = key();
        assert_eq!(first, key(), "the same content gives the same key");
        std::fs::write(folder.join("a.txt"), "Tom had a dog.").unwrap();
        let edited = key();
        assert_ne!(first, edited);
        std::fs::write(folder.join("b.txt"), "Lily ran.").unwrap();
        assert_ne!(edited, key(), "a new file changes it too");
    }

    #[test]
    fn names_round_trip() {
        for stage in StageId::ALL {
            assert_eq!(StageId::from_name(stage.name()), Some(stage));
        }
    }
}
