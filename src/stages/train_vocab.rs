//! The train_vocab stage: trains the tokenizer on a bounded, deterministic sample of the
//! corpus's training stories.
//!
//! Output: `tokenizer.json` (Hugging Face format) and `vocab.txt` (one `id<TAB>piece` a line).

use std::fmt::Write as _;
use std::time::Instant;

use crate::data::corpus::{CorpusError, for_each_story, matching_files};
use crate::engine::Rng;
use crate::pipeline::cache::Artifact;
use crate::pipeline::spec::TokenizerKind;
use crate::pipeline::{Stage, StageContext, StageFailure, StageId, StageReport};
use crate::stages::download::Corpus;
use crate::tokenizer::Tokenizer;

pub const TOKENIZER_JSON: &str = "tokenizer.json";

/// The train_vocab stage.
pub struct TrainVocab;

/// Opens the tokenizer of a train_vocab artifact.
pub fn open(artifact: &Artifact) -> Result<Tokenizer, StageFailure> {
    Ok(Tokenizer::load(&artifact.file(TOKENIZER_JSON))?)
}

impl Stage for TrainVocab {
    fn id(&self) -> StageId {
        StageId::TrainVocab
    }

    fn run(&self, cx: &mut StageContext<'_>) -> Result<StageReport, StageFailure> {
        let view = cx.view.train_vocab()?;
        let config = &view.train_vocab;
        let corpus = Corpus::open(cx.input(StageId::Download)?)?;
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
        for file in &files {
            for_each_story(file, &view.corpus.layout, |story| {
                if sampled_bytes < config.max_train_bytes && rng.uniform() < keep {
                    sampled_bytes += story.len() as u64;
                    sample.push(story);
                }
            })?;
        }
        if sample.is_empty() {
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            return Err(CorpusError::Empty {
                files: names.join(", "),
            }
            .into());
        }

        let started = Instant::now();
        let tokenizer = Tokenizer::train(config.kind, config.vocab_size, &sample)?;
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
