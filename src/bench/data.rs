//! `tinyllm bench data`: tokenizer training time and memory on a corpus of a chosen size, and
//! pretokenize throughput (MB/s of text, tokens/s) through the pretokenize stage's own encoder.

use std::fmt;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use super::peak_rss_bytes;
use crate::pipeline::spec::{CorpusConfig, TextFormat, TokenizerKind};
use crate::stages::pretokenize::encode_file;
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone)]
pub struct DataBench {
    /// Text files, one story per line (blank lines and paragraphs inside stories are fine).
    pub texts: Vec<PathBuf>,
    /// Size of the corpus to build from them, in bytes.
    pub target_bytes: u64,
    pub vocab_size: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct DataFigures {
    pub corpus_mb: f64,
    pub stories: usize,
    pub threads: usize,
    pub vocab_size: usize,
    pub tokenizer_train_secs: f64,
    pub peak_rss_after_training_mb: Option<f64>,
    pub pretokenize_secs: f64,
    pub pretokenize_mb_per_sec: f64,
    pub pretokenize_tokens_per_sec: f64,
    pub bytes_per_token: f64,
}

/// The figures as `bench data` prints them without `--json`.
impl fmt::Display for DataFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "corpus {:.1} MB ({} stories), BPE vocab {}, {} threads",
            self.corpus_mb, self.stories, self.vocab_size, self.threads
        )?;
        write!(
            f,
            "\n  tokenizer training {:>9.1} s",
            self.tokenizer_train_secs
        )?;
        if let Some(rss) = self.peak_rss_after_training_mb {
            write!(f, "\n  peak RSS           {rss:>9.0} MB")?;
        }
        write!(
            f,
            "\n  pretokenize        {:>9.1} MB/s of text, {:.0} tokens/s ({:.2} bytes/token)",
            self.pretokenize_mb_per_sec, self.pretokenize_tokens_per_sec, self.bytes_per_token
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataBenchError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the --text files hold no stories")]
    Empty,
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    #[error("encoding failed: {0}")]
    Encode(String),
}

/// The stories of `texts`, repeated with variations (names and words swapped, sentences
/// rotated) until they reach `target` bytes, so the tokenizer does not see exact copies.
pub fn build_corpus(texts: &[PathBuf], target: u64) -> Result<Vec<String>, DataBenchError> {
    let mut base = Vec::new();
    for path in texts {
        let text = std::fs::read_to_string(path).map_err(|source| DataBenchError::Io {
            path: path.clone(),
            source,
        })?;
        base.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from),
        );
    }
    if base.is_empty() {
        return Err(DataBenchError::Empty);
    }
    const SWAPS: [(&str, &str); 8] = [
        ("Lily", "Mia"),
        ("Tom", "Ben"),
        ("dog", "puppy"),
        ("cat", "kitten"),
        ("ball", "kite"),
        ("park", "garden"),
        ("happy", "glad"),
        ("big", "huge"),
    ];
    let mut corpus = Vec::new();
    let mut bytes = 0u64;
    'copies: for copy in 0usize.. {
        for story in &base {
            let mut varied = story.clone();
            for (i, (from, to)) in SWAPS.iter().enumerate() {
                if (copy >> (i % 4)) & 1 == 1 {
                    varied = varied.replace(from, to);
                }
            }
            let sentences: Vec<&str> = varied.split_inclusive(". ").collect();
            if copy > 0 && sentences.len() > 1 {
                let k = copy % sentences.len();
                varied = sentences[k..].concat() + " " + &sentences[..k].concat();
            }
            bytes += varied.len() as u64 + 1;
            corpus.push(varied);
            if bytes >= target {
                break 'copies;
            }
        }
    }
    Ok(corpus)
}

pub fn run(bench: &DataBench) -> Result<DataFigures, DataBenchError> {
    let corpus = build_corpus(&bench.texts, bench.target_bytes)?;
    let stories = corpus.len();
    let corpus_bytes: u64 = corpus.iter().map(|s| s.len() as u64 + 1).sum();

    let started = Instant::now();
    let tokenizer = Tokenizer::train(TokenizerKind::Bpe, bench.vocab_size, &corpus)?;
    let train_secs = started.elapsed().as_secs_f64();
    let rss = peak_rss_bytes().map(|b| b as f64 / 1e6);

    // Pretokenize the corpus as the stage does: a text file in, u16 tokens out.
    let dir =
        std::env::temp_dir().join(format!("tinyllm-bench-{}", crate::fsutil::unique_suffix()));
    std::fs::create_dir_all(&dir).map_err(|source| DataBenchError::Io {
        path: dir.clone(),
        source,
    })?;
    let text_path = dir.join("corpus.txt");
    let io = |path: &PathBuf| {
        let path = path.clone();
        move |source| DataBenchError::Io { path, source }
    };
    std::fs::write(&text_path, corpus.join("\n")).map_err(io(&text_path))?;
    drop(corpus);
    let out_path = dir.join("tokens.bin");
    let mut out = BufWriter::new(std::fs::File::create(&out_path).map_err(io(&out_path))?);
    let config = CorpusConfig {
        format: TextFormat::Lines,
        ..CorpusConfig::default()
    };
    let mut tokens = 0u64;
    let started = Instant::now();
    encode_file(&tokenizer, &text_path, &config.layout(), |ids, _| {
        tokens += ids.len() as u64;
        for &id in ids {
            out.write_all(&(id as u16).to_le_bytes())?;
        }
        Ok(())
    })
    .map_err(|e| DataBenchError::Encode(e.to_string()))?;
    out.flush().map_err(io(&out_path))?;
    let secs = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);

    Ok(DataFigures {
        corpus_mb: corpus_bytes as f64 / 1e6,
        stories,
        threads: rayon::current_num_threads(),
        vocab_size: tokenizer.vocab_size(),
        tokenizer_train_secs: train_secs,
        peak_rss_after_training_mb: rss,
        pretokenize_secs: secs,
        pretokenize_mb_per_sec: corpus_bytes as f64 / secs / 1e6,
        pretokenize_tokens_per_sec: tokens as f64 / secs,
        bytes_per_token: corpus_bytes as f64 / tokens as f64,
    })
}
