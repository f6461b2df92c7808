//! The train_vocab stage: trains the tokenizer on a bounded, deterministic sample of the
//! corpus's training stories.
//!
//! Output: `tokenizer.json` (Hugging Face format) and `vocab.txt` (one `id<TAB>piece` a line).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::data::corpus::{CorpusError, for_each_story, matching_files, split_long};
use crate::engine::Rng;
use crate::pipeline::cache::Artifact;
use crate::pipeline::spec::{StoryLayout, TextFormat, TokenizerKind};
use crate::pipeline::{Stage, StageContext, StageFailure, StageId, StageReport};
use crate::stages::download::Corpus;
use crate::tokenizer::Tokenizer;

pub const TOKENIZER_JSON: &str = "tokenizer.json";
/// Stories longer than this are cut into pieces of this size for training: the BPE trainer's
/// memory grows with the length of a single text (about 100 times it), not with the sample.
pub const MAX_STORY_BYTES: usize = 100_000;

/// The train_vocab stage.
pub struct TrainVocab;

/// Opens the tokenizer of a train_vocab artifact.
pub fn open(artifact: &Artifact) -> Result<Tokenizer, StageFailure> {
    Ok(Tokenizer::load(&artifact.file(TOKENIZER_JSON))?)
}

/// The over-long stories of a corpus: such a story is usually a whole file that the corpus
/// settings did not cut into its stories, so the user hears of it, once.
#[derive(Default)]
struct LongStories {
    first_file: Option<PathBuf>,
    last_file: Option<PathBuf>,
    files: usize,
    count: usize,
    longest: usize,
}

impl LongStories {
    fn note(&mut self, file: &Path, bytes: usize) {
        if self.last_file.as_deref() != Some(file) {
            self.files += 1;
            self.last_file = Some(file.to_path_buf());
        }
        self.first_file.get_or_insert_with(|| file.to_path_buf());
        self.count += 1;
        self.longest = self.longest.max(bytes);
    }

    /// Warns once; `name` gives the user's name for a file of the download artifact.
    fn warn(&self, layout: &StoryLayout, name: impl Fn(&Path) -> String) {
        let Some(file) = &self.first_file else {
            return;
        };
        let stories = match self.count {
            1 => "a story".to_string(),
            n => format!("{n} stories"),
        };
        let elsewhere = match self.files {
            1 => String::new(),
            n => format!(" in {n} files"),
        };
        let format = match layout.format {
            TextFormat::Auto => "auto",
            TextFormat::Json => "json",
            TextFormat::Lines => "lines",
            TextFormat::Separator => "separator",
        };
        tracing::warn!(
            "{}: {stories}{elsewhere} longer than {} (the longest {}), cut into pieces to train \
             the vocabulary; check that corpus.format = {format:?} and corpus.separator = {:?} \
             split the corpus into its stories",
            name(file),
            crate::fsutil::human_bytes(MAX_STORY_BYTES as u64),
            crate::fsutil::human_bytes(self.longest as u64),
            layout.separator,
        );
    }
}

impl Stage for TrainVocab {
    fn id(&self) -> StageId {
        StageId::TrainVocab
    }

    fn check(&self, artifact: &Artifact) -> Result<(), StageFailure> {
        open(artifact)?;
        Ok(())
    }

    fn run(&self, cx: &mut StageContext<'_>) -> Result<StageReport, StageFailure> {
        let view = cx.view.train_vocab()?;
        let config = &view.train_vocab;
        let download = cx.input(StageId::Download)?;
        let corpus = Corpus::open(download)?;
        let files = matching_files(
            &corpus.files_dir,
            &view.corpus.train_files,
            "corpus.train_files",
        )?;

        // Keep each story with the probability that brings the sample to about
        // max_train_bytes; the draws depend only on the seed, so the sample is reproducible.
        let total: u64 = files
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| m.len())
            .sum();
        let keep = (config.max_train_bytes as f64 / total.max(1) as f64).min(1.0);
        let mut rng = Rng::new(config.seed);
        let mut sample = Vec::new();
        let mut sampled_bytes = 0u64;
        let mut long = LongStories::default();
        for file in &files {
            for_each_story(file, &view.corpus.layout, |story| {
                let mut draw = |piece: String| {
                    if sampled_bytes < config.max_train_bytes && rng.uniform() < keep {
                        sampled_bytes += piece.len() as u64;
                        sample.push(piece);
                    }
                };
                if story.len() <= MAX_STORY_BYTES {
                    draw(story);
                } else {
                    long.note(file, story.len());
                    split_long(&story, MAX_STORY_BYTES).for_each(|p| draw(p.to_string()));
                }
            })?;
        }
        long.warn(&view.corpus.layout, |file| {
            download.name_origins(&file.display().to_string())
        });
        if sample.is_empty() {
            return Err(CorpusError::empty("corpus.train_files", &files).into());
        }

        let started = Instant::now();
        let tokenizer = Tokenizer::train(config.kind, config.vocab_size, &sample)?;
        if tokenizer.vocab_size() > config.vocab_size {
            return Err(format!(
                "the trained vocabulary has {} tokens, more than train_vocab.vocab_size = {}",
                tokenizer.vocab_size(),
                config.vocab_size
            )
            .into());
        }
        let train_secs = started.elapsed().as_secs_f64();
        tokenizer.save(&cx.out_dir.join(TOKENIZER_JSON))?;
        let mut listing = String::new();
        for id in 0..tokenizer.vocab_size() as u32 {
            let _ = writeln!(listing, "{id}\t{}", tokenizer.piece(id).unwrap_or(""));
        }
        std::fs::write(cx.out_dir.join("vocab.txt"), listing)?;

        let sample_tokens: usize = sample.iter().map(|s| tokenizer.encode(s).len()).sum();
        let bytes_per_token = sampled_bytes as f64 / sample_tokens.max(1) as f64;
        let mut report = StageReport {
            summary: format!(
                "{} vocab {}, trained on {} in {:.1} s, {bytes_per_token:.2} bytes/token",
                match config.kind {
                    TokenizerKind::Bpe => "bpe",
                    TokenizerKind::Char => "char",
                },
                tokenizer.vocab_size(),
                crate::fsutil::human_bytes(sampled_bytes),
                train_secs
            ),
            ..Default::default()
        };
        report
            .metrics
            .insert("vocab_size".into(), tokenizer.vocab_size() as f64);
        report
            .metrics
            .insert("train_bytes".into(), sampled_bytes as f64);
        report
            .metrics
            .insert("bytes_per_token".into(), bytes_per_token);
        Ok(report)
    }
}
