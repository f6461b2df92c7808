//! The pretokenize stage: encodes every story of the corpus in parallel and writes little-endian
//! `u16` token shards with BOS before each story (llama2.c's layout), one shard per input file
//! and split.
//!
//! Output: `train/*.bin`, `val/*.bin`, and `shards.json` (per shard: file, split, tokens,
//! stories, source text bytes, the corpus file it came from). A corpus file's shard is named by
//! its position and stem (`train/000-data00.bin`), so two files with one stem (`a/x.txt` and
//! `b/x.txt`, `x.txt` and `x.json`) never share a shard, nor does a file share the held-out
//! shard (`val/heldout.bin`). Validation is the corpus's own validation files when
//! `corpus.val_files` is set, else `pretokenize.val_fraction` of whole stories, never windows of
//! training text.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::corpus::{CorpusError, for_each_story, matching_files};
use crate::fsutil::one_line;
use crate::pipeline::cache::Artifact;
use crate::pipeline::{Stage, StageContext, StageFailure, StageId, StageReport};
use crate::stages::download::Corpus;
use crate::stages::train_vocab;
use crate::tokenizer::{BOS, Tokenizer};

pub const SHARDS_JSON: &str = "shards.json";
/// Stories encoded together before their tokens are written out.
const CHUNK_STORIES: usize = 4096;
/// The largest `shards.json` read: a line per shard, and a shard per corpus file.
const MAX_SHARDS_JSON: u64 = 50_000_000;
/// The held-out shard's name; corpus files' shards start with their index, so none is this.
const HELD_OUT: &str = "heldout";

/// One token file, as `shards.json` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// Path relative to the artifact folder.
    pub file: String,
    pub split: Split,
    pub tokens: u64,
    pub stories: u64,
    pub text_bytes: u64,
    /// The corpus file it encodes, relative to the corpus folder (none for the held-out shard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Val,
}

/// The artifact's description of its shards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardSet {
    pub vocab_size: usize,
    pub shards: Vec<ShardInfo>,
}

/// A pretokenize artifact opened for reading.
#[derive(Debug, Clone)]
pub struct TokenShards {
    pub dir: PathBuf,
    pub set: ShardSet,
}

/// The path is quoted from `shards.json`, which may hold any characters: control characters are
/// escaped so that the message stays one line.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("{}: {}", one_line(&path.display().to_string()), one_line(reason))]
    Bad { path: PathBuf, reason: String },
}

impl TokenShards {
    /// Opens the shards of an artifact and checks each file's size against `shards.json`.
    pub fn open(artifact: &Artifact) -> Result<TokenShards, ShardError> {
        Self::open_dir(&artifact.dir)
    }

    /// Opens a shard folder and checks that `shards.json` lists each shard once, inside the
    /// folder, with the size of its file.
    pub fn open_dir(dir: &Path) -> Result<TokenShards, ShardError> {
        let path = dir.join(SHARDS_JSON);
        let bad = |path: &Path, reason: String| ShardError::Bad {
            path: path.to_path_buf(),
            reason: crate::fsutil::one_line(&reason),
        };
        let meta = fs::metadata(&path).map_err(|e| bad(&path, e.to_string()))?;
        if !meta.is_file() {
            return Err(bad(&path, "not a file".into()));
        }
        if meta.len() > MAX_SHARDS_JSON {
            return Err(bad(
                &path,
                format!(
                    "{} is too large for a shard list (at most {})",
                    crate::fsutil::human_bytes(meta.len()),
                    crate::fsutil::human_bytes(MAX_SHARDS_JSON)
                ),
            ));
        }
        let text = fs::read_to_string(&path).map_err(|e| bad(&path, e.to_string()))?;
        let set: ShardSet = serde_json::from_str(&text)
            .map_err(|e| bad(&path, format!("not a shard list: {e}")))?;
        let mut seen = std::collections::HashSet::new();
        for shard in &set.shards {
            let relative = Path::new(&shard.file);
            let inside = !shard.file.is_empty()
                && relative
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !inside {
                return Err(bad(
                    &path,
                    format!("shard {:?} is not a path inside the folder", shard.file),
                ));
            }
            if !seen.insert(relative) {
                return Err(bad(&path, format!("lists {} twice", shard.file)));
            }
            let file = dir.join(relative);
            let meta = fs::metadata(&file).map_err(|e| bad(&file, e.to_string()))?;
            if !meta.is_file() {
                return Err(bad(&file, "not a regular file".into()));
            }
            let size = meta.len();
            if shard.tokens.checked_mul(2) != Some(size) {
                return Err(bad(
                    &file,
                    format!(
                        "{size} bytes, but {SHARDS_JSON} says {} tokens ({} bytes)",
                        shard.tokens,
                        u128::from(shard.tokens) * 2
                    ),
                ));
            }
        }
        Ok(TokenShards {
            dir: dir.to_path_buf(),
            set,
        })
    }

    pub fn shards(&self, split: Split) -> impl Iterator<Item = &ShardInfo> {
        self.set.shards.iter().filter(move |s| s.split == split)
    }

    /// The files of a split's shards that hold tokens: what training and evaluation read.
    pub fn paths(&self, split: Split) -> Vec<PathBuf> {
        self.shards(split)
            .filter(|s| s.tokens > 0)
            .map(|s| self.dir.join(&s.file))
            .collect()
    }
}

/// The pretokenize stage.
pub struct Pretokenize;

impl Stage for Pretokenize {
    fn id(&self) -> StageId {
        StageId::Pretokenize
    }

    fn check(&self, artifact: &Artifact) -> Result<(), StageFailure> {
        TokenShards::open(artifact)?;
        Ok(())
    }

    fn run(&self, cx: &mut StageContext<'_>) -> Result<StageReport, StageFailure> {
        let view = cx.view.pretokenize()?;
        let corpus_config = &view.corpus;
        let layout = corpus_config.layout();
        let corpus = Corpus::open(cx.input(StageId::Download)?)?;
        let tokenizer = train_vocab::open(cx.input(StageId::TrainVocab)?)?;
        let train_files = matching_files(
            &corpus.files_dir,
            &corpus_config.train_files,
            "corpus.train_files",
        )?;
        let val_files = if corpus_config.val_files.is_empty() {
            Vec::new()
        } else {
            matching_files(
                &corpus.files_dir,
                &corpus_config.val_files,
                "corpus.val_files",
            )?
        };
        let hold_out = if val_files.is_empty() {
            view.pretokenize.val_fraction
        } else {
            0.0
        };
        fs::create_dir_all(cx.out_dir.join("train"))?;
        fs::create_dir_all(cx.out_dir.join("val"))?;

        let files = &corpus.files_dir;
        let started = std::time::Instant::now();
        let mut shards = Vec::new();
        let mut held_out = ShardWriter::create(cx.out_dir, Split::Val, HELD_OUT, None)?;
        let mut story_index = 0u64;
        // The smallest draw of any story: the val_fraction that would have held one out.
        let mut smallest_draw = 1.0f64;
        for (index, file) in train_files.iter().enumerate() {
            let mut writer = ShardWriter::for_file(cx.out_dir, Split::Train, index, file, files)?;
            encode_file(&tokenizer, file, &layout, |tokens, text_bytes| {
                // Whole stories go to validation by a fixed rule on their index, so the split
                // does not depend on thread count or chunking.
                let draw = held_out_draw(story_index);
                smallest_draw = smallest_draw.min(draw);
                let to_val = draw < hold_out;
                story_index += 1;
                let target = if to_val { &mut held_out } else { &mut writer };
                target.push(tokens, text_bytes)
            })?;
            shards.push(writer.finish()?);
        }
        for (index, file) in val_files.iter().enumerate() {
            let mut writer = ShardWriter::for_file(cx.out_dir, Split::Val, index, file, files)?;
            encode_file(&tokenizer, file, &layout, |tokens, bytes| {
                writer.push(tokens, bytes)
            })?;
            shards.push(writer.finish()?);
        }
        let held_out = held_out.finish()?;
        let secs = started.elapsed().as_secs_f64();

        let total = |split: Split, f: fn(&ShardInfo) -> u64| -> u64 {
            shards.iter().filter(|s| s.split == split).map(f).sum()
        };
        let (train_tokens, val_tokens) = (
            total(Split::Train, |s| s.tokens),
            total(Split::Val, |s| s.tokens) + held_out.tokens,
        );
        let text_bytes = total(Split::Train, |s| s.text_bytes)
            + total(Split::Val, |s| s.text_bytes)
            + held_out.text_bytes;
        let stories = story_index;
        if stories == 0 {
            return Err(CorpusError::empty("corpus.train_files", &train_files).into());
        }
        if !val_files.is_empty() && val_tokens == 0 {
            return Err(CorpusError::empty("corpus.val_files", &val_files).into());
        }
        if hold_out > 0.0 && stories == 1 {
            return Err(format!(
                "the corpus holds a single story, which pretokenize.val_fraction = {hold_out} \
                 cannot split into training and validation text: add stories, or set \
                 corpus.val_files"
            )
            .into());
        }
        if hold_out > 0.0 && train_tokens == 0 {
            return Err(format!(
                "pretokenize.val_fraction = {hold_out} held out all {stories} stories of the \
                 corpus, leaving none to train on: lower it, or set corpus.val_files"
            )
            .into());
        }
        if hold_out > 0.0 && held_out.stories == 0 {
            return Err(format!(
                "pretokenize.val_fraction = {hold_out} held out none of the corpus's {stories} \
                 stories ({train_tokens} tokens), too few for a validation split: add stories, \
                 raise val_fraction to {} or more, or set corpus.val_files",
                round_up(smallest_draw)
            )
            .into());
        }
        if held_out.stories > 0 {
            shards.push(held_out);
        } else {
            fs::remove_file(cx.out_dir.join(&held_out.file))?;
        }
        let set = ShardSet {
            vocab_size: tokenizer.vocab_size(),
            shards,
        };
        fs::write(
            cx.out_dir.join(SHARDS_JSON),
            serde_json::to_vec_pretty(&set).expect("shards serialize"),
        )?;
        // The artifact is cached only if it reads back as a consistent shard set.
        TokenShards::open_dir(cx.out_dir)?;
        let mut report = StageReport {
            summary: format!(
                "{train_tokens} train + {val_tokens} val tokens, {:.1} MB/s",
                text_bytes as f64 / secs.max(1e-9) / 1e6
            ),
            ..Default::default()
        };
        for (name, value) in [
            ("train_tokens", train_tokens as f64),
            ("val_tokens", val_tokens as f64),
            ("text_bytes", text_bytes as f64),
            ("mb_per_sec", text_bytes as f64 / secs.max(1e-9) / 1e6),
        ] {
            report.metrics.insert(name.into(), value);
        }
        Ok(report)
    }
}

/// Shard names keep at most this many bytes of the corpus file's stem (file names are limited
/// to 255 bytes).
const MAX_STEM_BYTES: usize = 64;

/// `data00.json`, the 4th file → `003-data00`: unique by the index, readable by the stem.
fn shard_name(index: usize, file: &Path) -> String {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let mut end = stem.len().min(MAX_STEM_BYTES);
    while !stem.is_char_boundary(end) {
        end -= 1;
    }
    format!("{index:03}-{}", &stem[..end])
}

/// The fixed draw in [0, 1) of story `index`, a hash of the index: the story is held out when
/// its draw is below the fraction.
fn held_out_draw(index: u64) -> f64 {
    let mut x = index.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// The smallest round figure above `draw` (`0.0137` → `0.02`): a fraction that holds out the
/// story of that draw.
fn round_up(draw: f64) -> String {
    let mut decimals = 1;
    while decimals < 6 && draw * 10f64.powi(decimals) < 1.0 {
        decimals += 1;
    }
    let scale = 10f64.powi(decimals);
    format!(
        "{:.*}",
        decimals as usize,
        ((draw * scale).floor() + 1.0) / scale
    )
}

/// Encodes a file's stories in parallel, a chunk at a time, handing each story's tokens (BOS
/// first) to `sink` in file order.
pub fn encode_file(
    tokenizer: &Tokenizer,
    file: &Path,
    layout: &crate::pipeline::spec::StoryLayout,
    mut sink: impl FnMut(&[u32], u64) -> std::io::Result<()>,
) -> Result<(), StageFailure> {
    let mut stories = Vec::new();
    for_each_story(file, layout, |story| stories.push(story))?;
    for chunk in stories.chunks(CHUNK_STORIES) {
        let encoded: Vec<Vec<u32>> = chunk
            .par_iter()
            .map(|story| {
                let mut ids = Vec::with_capacity(story.len() / 3 + 2);
                ids.push(BOS);
                ids.extend(tokenizer.encode(story));
                ids
            })
            .collect();
        for (ids, story) in encoded.iter().zip(chunk) {
            sink(ids, story.len() as u64)?;
        }
    }
    Ok(())
}

/// Writes one shard of little-endian u16 tokens.
struct ShardWriter {
    out: BufWriter<File>,
    info: ShardInfo,
}

impl ShardWriter {
    /// The shard of the `index`-th corpus file of its split.
    fn for_file(
        dir: &Path,
        split: Split,
        index: usize,
        file: &Path,
        corpus_dir: &Path,
    ) -> std::io::Result<ShardWriter> {
        let source = file.strip_prefix(corpus_dir).unwrap_or(file);
        let source = source.to_string_lossy().replace('\\', "/");
        Self::create(dir, split, &shard_name(index, file), Some(source))
    }

    fn create(
        dir: &Path,
        split: Split,
        name: &str,
        source: Option<String>,
    ) -> std::io::Result<ShardWriter> {
        let relative = format!(
            "{}/{name}.bin",
            match split {
                Split::Train => "train",
                Split::Val => "val",
            }
        );
        let out = BufWriter::with_capacity(1 << 20, File::create(dir.join(&relative))?);
        Ok(ShardWriter {
            out,
            info: ShardInfo {
                file: relative,
                split,
                tokens: 0,
                stories: 0,
                text_bytes: 0,
                source,
            },
        })
    }

    fn push(&mut self, tokens: &[u32], text_bytes: u64) -> std::io::Result<()> {
        for &token in tokens {
            let token = u16::try_from(token).map_err(|_| {
                std::io::Error::other(format!("token id {token} does not fit in u16"))
            })?;
            self.out.write_all(&token.to_le_bytes())?;
        }
        self.info.tokens += tokens.len() as u64;
        self.info.stories += 1;
        self.info.text_bytes += text_bytes;
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<ShardInfo> {
        self.out.flush()?;
        Ok(self.info)
    }
}
