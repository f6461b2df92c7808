//! Tokenizers: a byte-fallback BPE with SentencePiece-style `▁` word boundaries and single digits,
//! or one token per character. Both keep Llama's layout of ids — `<unk>` 0, `<s>` 1, `</s>` 2,
//! then the 256 byte tokens `<0x00>`…`<0xFF>` — and both are stored as a Hugging Face
//! `tokenizer.json` (a BPE model; the character tokenizer simply has no merges).
//!
//! Every string round-trips: `decode(encode(s)) == s`. Spaces become `▁` on the way in, so a
//! literal `▁` (U+2581) in the text is encoded as its three UTF-8 byte tokens instead, and the
//! text gets a leading space (SentencePiece's "dummy prefix") that decoding takes off again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder, Vocab};
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Model};

use crate::pipeline::spec::TokenizerKind;

pub const UNK: u32 = 0;
pub const BOS: u32 = 1;
pub const EOS: u32 = 2;
/// Id of the byte token `<0x00>`; byte `b` is `BYTE_BASE + b`.
pub const BYTE_BASE: u32 = 3;
/// The smallest vocabulary: 3 special tokens and 256 byte tokens.
pub const MIN_VOCAB: usize = 3 + 256;
/// The largest vocabulary: token ids are stored as u16 in the shards.
pub const MAX_VOCAB_SIZE: usize = u16::MAX as usize;
/// The largest `tokenizer.json` read: a full 65535-token vocabulary with its merges is a few MB.
const MAX_TOKENIZER_FILE: u64 = 50_000_000;
const SPACE: char = '▁';
const SPECIALS: [&str; 3] = ["<unk>", "<s>", "</s>"];

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("training the tokenizer failed: {0}")]
    Training(String),
    #[error("vocab_size {0} is below {MIN_VOCAB}, the 3 special tokens plus 256 byte tokens")]
    VocabTooSmall(usize),
    #[error("vocab_size {0} is above {MAX_VOCAB_SIZE}: token ids are stored as u16")]
    VocabTooLarge(usize),
    #[error("no text to train the tokenizer on")]
    NoText,
    #[error("{}: not a tinyllm tokenizer: {reason}", path.display())]
    NotOurs { path: PathBuf, reason: String },
}

/// A trained tokenizer.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pieces: Vec<String>,
}

impl Tokenizer {
    /// Trains a tokenizer of `kind` with at most `vocab_size` tokens on `texts`.
    pub fn train(
        kind: TokenizerKind,
        vocab_size: usize,
        texts: &[String],
    ) -> Result<Tokenizer, TokenizerError> {
        if vocab_size < MIN_VOCAB {
            return Err(TokenizerError::VocabTooSmall(vocab_size));
        }
        if vocab_size > MAX_VOCAB_SIZE {
            return Err(TokenizerError::VocabTooLarge(vocab_size));
        }
        if texts.iter().all(|t| t.is_empty()) {
            return Err(TokenizerError::NoText);
        }
        let model = match kind {
            TokenizerKind::Bpe => train_bpe(vocab_size, texts)?,
            TokenizerKind::Char => char_model(vocab_size, texts)?,
        };
        Self::from_model(model)
    }

    fn from_model(model: BPE) -> Result<Tokenizer, TokenizerError> {
        let mut inner = tokenizers::Tokenizer::new(ModelWrapper::BPE(model));
        inner.with_pre_tokenizer(Some(pre_tokenizer()));
        inner.add_special_tokens(&SPECIALS.map(|s| AddedToken::from(s, true)));
        Self::wrap(inner).map_err(TokenizerError::Training)
    }

    /// Checks the model and the id layout, and caches the pieces. The model must be a BPE
    /// whose own vocabulary has every byte token, with byte fallback on and no dropout: that is
    /// what makes encoding total (any text has ids) and fixed, which [`Tokenizer::encode`]
    /// relies on.
    fn wrap(inner: tokenizers::Tokenizer) -> Result<Tokenizer, String> {
        let ModelWrapper::BPE(bpe) = inner.get_model() else {
            return Err("its model is not a BPE".into());
        };
        if !bpe.byte_fallback {
            return Err("its BPE model has no byte fallback, which encoding any text needs".into());
        }
        if bpe.dropout.is_some() {
            return Err("its BPE model has dropout, which makes encoding random".into());
        }
        for byte in 0..=255u8 {
            let id = BYTE_BASE + u32::from(byte);
            if bpe.token_to_id(&byte_piece(byte)) != Some(id) {
                return Err(format!(
                    "the BPE model's id {id} should be {}",
                    byte_piece(byte)
                ));
            }
        }
        let size = inner.get_vocab_size(true);
        let mut slots: Vec<Option<String>> = vec![None; size];
        for (piece, id) in inner.get_vocab(true) {
            let slot = slots
                .get_mut(id as usize)
                .ok_or_else(|| format!("id {id} of {piece:?} is outside the vocabulary"))?;
            if let Some(other) = slot {
                return Err(format!("id {id} is given to both {other:?} and {piece:?}"));
            }
            *slot = Some(piece);
        }
        let pieces: Vec<String> = slots.into_iter().map(Option::unwrap_or_default).collect();
        for (id, expected) in SPECIALS.iter().enumerate() {
            if pieces.get(id).map(String::as_str) != Some(*expected) {
                return Err(format!("id {id} should be {expected}"));
            }
        }
        for byte in 0..=255u32 {
            if pieces.get((BYTE_BASE + byte) as usize) != Some(&byte_piece(byte as u8)) {
                return Err(format!(
                    "id {} should be {}",
                    BYTE_BASE + byte,
                    byte_piece(byte as u8)
                ));
            }
        }
        Ok(Tokenizer { inner, pieces })
    }

    /// Reads a `tokenizer.json` this module wrote.
    pub fn load(path: &Path) -> Result<Tokenizer, TokenizerError> {
        let file = |message: String| TokenizerError::File {
            path: path.to_path_buf(),
            message,
        };
        let meta = std::fs::metadata(path).map_err(|e| file(e.to_string()))?;
        if !meta.is_file() {
            return Err(file("not a file".into()));
        }
        // Checked before reading: the largest vocabulary's file is a few MB.
        if meta.len() > MAX_TOKENIZER_FILE {
            return Err(file(format!(
                "{} is too large for a tokenizer.json (at most {})",
                crate::fsutil::human_bytes(meta.len()),
                crate::fsutil::human_bytes(MAX_TOKENIZER_FILE)
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| file(e.to_string()))?;
        // JSON syntax is checked here: the crate panics on some syntax errors.
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            file(format!(
                "not a tokenizer.json: {}",
                crate::fsutil::one_line(&e.to_string())
            ))
        })?;
        refuse_foreign_bpe_options(&json).map_err(|reason| TokenizerError::NotOurs {
            path: path.to_path_buf(),
            reason,
        })?;
        // The crate's messages quote the offending value, which may hold line breaks.
        let inner = text.parse::<tokenizers::Tokenizer>().map_err(|e| {
            file(format!(
                "not a tokenizer.json: {}",
                crate::fsutil::one_line(&e.to_string())
            ))
        })?;
        Self::wrap(inner).map_err(|reason| TokenizerError::NotOurs {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Writes `tokenizer.json` (atomically).
    pub fn save(&self, path: &Path) -> Result<(), TokenizerError> {
        let file = |message: String| TokenizerError::File {
            path: path.to_path_buf(),
            message,
        };
        let json = self
            .inner
            .to_string(true)
            .map_err(|e| file(e.to_string()))?;
        crate::fsutil::write_atomic(path, json.as_bytes()).map_err(|e| file(e.to_string()))
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// The piece of an id (`▁the`, `<0x0A>`, `<s>`).
    pub fn piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(String::as_str)
    }

    /// The ids of `text`, without BOS/EOS.
    ///
    /// Splits words the way the saved pre-tokenizer does (a piece starts at each `▁`; every
    /// numeric character is a piece of its own) and hands each word to the BPE model, whose own
    /// word cache makes the repeated words of a corpus cheap. Tests check the ids equal those of
    /// the full Hugging Face pipeline.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        encode_segments(text, |segment, ids| {
            let replaced = segment.replace(' ', "▁");
            let mut start = 0;
            for (at, c) in replaced.char_indices() {
                if c == SPACE || c.is_numeric() {
                    self.encode_word(&replaced[start..at], ids);
                    start = at;
                }
                if c.is_numeric() {
                    let end = at + c.len_utf8();
                    self.encode_word(&replaced[at..end], ids);
                    start = end;
                }
            }
            self.encode_word(&replaced[start..], ids);
        })
    }

    fn encode_word(&self, word: &str, ids: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        let tokens = self
            .inner
            .get_model()
            .tokenize(word)
            .expect("a byte-fallback BPE tokenizes any word");
        ids.extend(tokens.iter().map(|t| t.id));
    }

    /// The ids the full Hugging Face pipeline gives (slower; for checking [`Tokenizer::encode`]).
    pub fn encode_reference(&self, text: &str) -> Vec<u32> {
        encode_segments(text, |segment, ids| {
            let encoding = self
                .inner
                .encode(segment, false)
                .expect("encoding text with a BPE model cannot fail");
            ids.extend_from_slice(encoding.get_ids());
        })
    }

    /// A score per id for encoders that repeatedly merge the adjacent pair whose joined piece
    /// scores highest (SentencePiece, llama2.c's `run.c`): the piece made by the r-th merge
    /// scores `-r`, so earlier merges win as they do in BPE. Pieces no merge makes (special,
    /// byte and single-character tokens) score 0, as SentencePiece gives them.
    pub fn merge_scores(&self) -> Vec<f32> {
        let mut scores = vec![0.0f32; self.pieces.len()];
        let json: serde_json::Value = match self.inner.to_string(false) {
            Ok(text) => serde_json::from_str(&text).unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        };
        let ids: HashMap<&str, usize> = self
            .pieces
            .iter()
            .enumerate()
            .map(|(id, piece)| (piece.as_str(), id))
            .collect();
        let merges = json["model"]["merges"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for (rank, merge) in merges.iter().enumerate() {
            // Newer `tokenizers` write a merge as `["a", "b"]`, older ones as `"a b"`.
            let joined = match merge {
                serde_json::Value::Array(pair) => pair
                    .iter()
                    .filter_map(serde_json::Value::as_str)
                    .collect::<String>(),
                serde_json::Value::String(pair) => pair.replacen(' ', "", 1),
                _ => continue,
            };
            if let Some(&id) = ids.get(joined.as_str()) {
                scores[id] = -(rank as f32);
            }
        }
        scores
    }

    /// The text of `ids`; special tokens are skipped, invalid UTF-8 becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            if id < BYTE_BASE {
                continue;
            }
            if id < BYTE_BASE + 256 {
                bytes.push((id - BYTE_BASE) as u8);
            } else if let Some(piece) = self.piece(id) {
                for c in piece.chars() {
                    let c = if c == SPACE { ' ' } else { c };
                    let mut buf = [0u8; 4];
                    bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        text.strip_prefix(' ').unwrap_or(&text).to_string()
    }
}

/// Adds the dummy-prefix space, splits the text at literal `▁` characters (which become their
/// three byte tokens) and lets `encode` append the ids of each non-empty segment.
fn encode_segments(text: &str, mut encode: impl FnMut(&str, &mut Vec<u32>)) -> Vec<u32> {
    let mut ids = Vec::with_capacity(text.len() / 3 + 1);
    let prefixed = format!(" {text}");
    for (i, segment) in prefixed.split(SPACE).enumerate() {
        if i > 0 {
            let mut buf = [0u8; 4];
            for &byte in SPACE.encode_utf8(&mut buf).as_bytes() {
                ids.push(BYTE_BASE + byte as u32);
            }
        }
        if !segment.is_empty() {
            encode(segment, &mut ids);
        }
    }
    ids
}

/// Refuses the BPE options tinyllm never writes and the `tokenizers` crate does not check: a
/// `continuing_subword_prefix` longer than a merged piece makes it panic while it builds the
/// model.
fn refuse_foreign_bpe_options(json: &serde_json::Value) -> Result<(), String> {
    for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
        if !json["model"][key].is_null() {
            return Err(format!(
                "model.{key} is set; tinyllm's tokenizers have none"
            ));
        }
    }
    Ok(())
}

fn byte_piece(byte: u8) -> String {
    format!("<0x{byte:02X}>")
}

fn pre_tokenizer() -> PreTokenizerWrapper {
    PreTokenizerWrapper::Sequence(Sequence::new(vec![
        PreTokenizerWrapper::Metaspace(Metaspace::new(SPACE, PrependScheme::Never, true)),
        PreTokenizerWrapper::Digits(Digits::new(true)),
    ]))
}

/// The reserved tokens every vocabulary starts with, in id order.
fn reserved_tokens() -> Vec<String> {
    SPECIALS
        .iter()
        .map(|s| s.to_string())
        .chain((0..=255u8).map(byte_piece))
        .collect()
}

/// Texts as the model sees them: dummy prefix, spaces as `▁`, literal `▁` left out (it is
/// encoded as bytes).
fn training_texts(texts: &[String]) -> impl Iterator<Item = String> + '_ {
    texts.iter().map(|t| format!(" {}", t.replace(SPACE, "")))
}

/// Most characters a BPE starts from: the rarest beyond it fall back to bytes, so merges keep
/// room in a large vocabulary too.
const MAX_ALPHABET: usize = 1000;

/// How often each character occurs in the texts as the model sees them (see
/// [`training_texts`]), most frequent first; ties by code point, so the order is the same on
/// every run.
fn char_counts(texts: &[String]) -> Vec<(char, u64)> {
    /// ASCII in an array (the bulk of most corpora, and cheap), the rest in a map.
    struct Counts {
        spaces: u64,
        ascii: [u64; 128],
        other: HashMap<char, u64>,
    }
    let empty = || Counts {
        spaces: 0,
        ascii: [0; 128],
        other: HashMap::new(),
    };
    let counts = texts
        .par_iter()
        .fold(empty, |mut counts, text| {
            // The dummy prefix; spaces become `▁` and literal `▁`s are left out.
            counts.spaces += 1;
            for c in text.chars() {
                match c {
                    ' ' => counts.spaces += 1,
                    SPACE => {}
                    c if c.is_ascii() => counts.ascii[c as usize] += 1,
                    c => *counts.other.entry(c).or_default() += 1,
                }
            }
            counts
        })
        .reduce(empty, |mut a, b| {
            a.spaces += b.spaces;
            for (sum, n) in a.ascii.iter_mut().zip(b.ascii) {
                *sum += n;
            }
            for (c, n) in b.other {
                *a.other.entry(c).or_default() += n;
            }
            a
        });
    let mut chars: Vec<(char, u64)> = (0u8..128)
        .map(|b| (b as char, counts.ascii[b as usize]))
        .chain([(SPACE, counts.spaces)])
        .chain(counts.other)
        .filter(|&(_, n)| n > 0)
        .collect();
    chars.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    chars
}

/// Trains the BPE within `vocab_size`: the reserved tokens, then the most frequent characters
/// that fit (the rest are encoded as their bytes), then merges.
fn train_bpe(vocab_size: usize, texts: &[String]) -> Result<BPE, TokenizerError> {
    let fail = |e: tokenizers::Error| TokenizerError::Training(e.to_string());
    let room = vocab_size.saturating_sub(MIN_VOCAB).min(MAX_ALPHABET);
    let chars = char_counts(texts);
    // The trainer's own cut breaks ties between equally rare characters in hash order; naming
    // the characters to keep makes the vocabulary the same on every run.
    let alphabet: std::collections::HashSet<char> =
        chars.iter().take(room).map(|&(c, _)| c).collect();
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(
            reserved_tokens()
                .into_iter()
                .map(|t| AddedToken::from(t, true))
                .collect(),
        )
        .initial_alphabet(alphabet)
        .limit_alphabet(room)
        .build();
    let model = BPE::builder()
        .byte_fallback(true)
        .unk_token("<unk>".to_string())
        .build()
        .map_err(fail)?;
    let mut tokenizer = tokenizers::Tokenizer::new(ModelWrapper::BPE(model));
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer()));
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    tokenizer
        .train(&mut trainer, training_texts(texts))
        .map_err(fail)?;
    match tokenizer.get_model() {
        ModelWrapper::BPE(bpe) => Ok(bpe.clone()),
        _ => Err(TokenizerError::Training(
            "training replaced the BPE model".into(),
        )),
    }
}

/// One token per character: the most frequent characters after the reserved tokens, no merges.
fn char_model(vocab_size: usize, texts: &[String]) -> Result<BPE, TokenizerError> {
    let mut vocab: Vec<String> = reserved_tokens();
    for (c, _) in char_counts(texts) {
        if vocab.len() >= vocab_size {
            break;
        }
        let piece = c.to_string();
        if !vocab.contains(&piece) {
            vocab.push(piece);
        }
    }
    let vocab: Vocab = vocab
        .into_iter()
        .enumerate()
        .map(|(id, piece)| (piece, id as u32))
        .collect();
    BPE::builder()
        .vocab_and_merges(vocab, Vec::new())
        .byte_fallback(true)
        .unk_token("<unk>".to_string())
        .build()
        .map_err(|e| TokenizerError::Training(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts() -> Vec<String> {
        let story = "Once upon a time, there was a little cat named Tom. Tom liked to play with \
                     his red ball. One day, the ball rolled under the big bed. Tom was sad.";
        (0..50)
            .map(|i| format!("{story} It was day {i}."))
            .collect()
    }

    #[test]
    fn layout_and_round_trip_for_both_kinds() {
        for kind in [TokenizerKind::Bpe, TokenizerKind::Char] {
            let tokenizer = Tokenizer::train(kind, 300, &texts()).unwrap();
            assert!(tokenizer.vocab_size() <= 300);
            assert_eq!(tokenizer.piece(BOS), Some("<s>"));
            assert_eq!(tokenizer.piece(BYTE_BASE + 10), Some("<0x0A>"));
            for text in [
                "Once upon a time",
                "  two  spaces ",
                "猫 🐱\n\t\u{0}",
                "a▁b ▁",
                "",
            ] {
                assert_eq!(tokenizer.decode(&tokenizer.encode(text)), text, "{kind:?}");
            }
        }
    }

    #[test]
    fn bpe_merges_words_and_splits_digits() {
        let tokenizer = Tokenizer::train(TokenizerKind::Bpe, 400, &texts()).unwrap();
        let ids = tokenizer.encode("Tom was sad.");
        assert!(ids.len() <= 5, "{ids:?}");
        let digits = tokenizer.encode("day 42");
        let pieces: Vec<&str> = digits
            .iter()
            .map(|&i| tokenizer.piece(i).unwrap())
            .collect();
        assert!(pieces.ends_with(&["4", "2"]), "{pieces:?}");
    }

    #[test]
    fn merge_scores_rank_every_merged_piece_by_its_merge() {
        let tokenizer = Tokenizer::train(TokenizerKind::Bpe, 400, &texts()).unwrap();
        let scores = tokenizer.merge_scores();
        assert_eq!(scores.len(), tokenizer.vocab_size());
        assert_eq!(scores[BOS as usize], 0.0);
        // Every multi-character piece is made by a merge, each by a different one.
        let mut merged: Vec<f32> = (MIN_VOCAB..tokenizer.vocab_size())
            .filter(|&id| tokenizer.piece(id as u32).unwrap().chars().count() > 1)
            .map(|id| scores[id])
            .collect();
        assert!(merged.len() > 10);
        assert!(merged.contains(&0.0), "the first merge scores 0");
        merged.sort_by(f32::total_cmp);
        merged.dedup();
        assert_eq!(
            merged.len() as f32,
            -merged[0] + 1.0,
            "ranks 0, -1, … without gaps"
        );
        let char_tokenizer = Tokenizer::train(TokenizerKind::Char, 300, &texts()).unwrap();
        assert!(char_tokenizer.merge_scores().iter().all(|&s| s == 0.0));
    }

    #[test]
    fn save_and_load_give_the_same_ids() {
        let tokenizer = Tokenizer::train(TokenizerKind::Bpe, 300, &texts()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        tokenizer.save(&path).unwrap();
        let loaded = Tokenizer::load(&path).unwrap();
        let text = "Once upon a time, Tom had 3 balls.";
        assert_eq!(loaded.encode(text), tokenizer.encode(text));
    }

    #[test]
    fn bad_sizes_are_errors() {
        assert!(matches!(
            Tokenizer::train(TokenizerKind::Bpe, 100, &texts()),
            Err(TokenizerError::VocabTooSmall(100))
        ));
        assert!(matches!(
            Tokenizer::train(TokenizerKind::Char, 70_000, &texts()),
            Err(TokenizerError::VocabTooLarge(70_000))
        ));
        assert!(matches!(
            Tokenizer::train(TokenizerKind::Bpe, 300, &[String::new()]),
            Err(TokenizerError::NoText)
        ));
    }
}
