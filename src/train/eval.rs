//! Validation: a fixed set of windows of the validation split, the same at every evaluation, and
//! the model's loss on them in nats per token and bits per byte.
//!
//! The windows are those the loader would cut (`seq_len + 1` tokens every `seq_len` tokens, in
//! file order). When there are more than `max_windows` of them, `max_windows` are taken evenly
//! spaced over the split, so the set covers all of it; otherwise every window is used.
//! Bits per byte is the loss in bits times the split's tokens per byte of UTF-8 text, so it
//! compares across tokenizers.

use std::path::PathBuf;

use crate::data::loader::{Loader, LoaderError};
use crate::engine::{Backend, Float};
use crate::model::{Llama, ModelError, Shape};

pub struct EvalSet {
    /// Each `seq_len + 1` tokens long.
    windows: Vec<Vec<u32>>,
    seq_len: usize,
    /// Tokens per byte of text in the validation split (from the pretokenize manifest).
    tokens_per_byte: f64,
}

/// The result of one pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalResult {
    pub loss: f64,
    pub bits_per_byte: f64,
    pub tokens: u64,
}

impl EvalSet {
    pub fn open(
        paths: &[PathBuf],
        seq_len: usize,
        max_windows: usize,
        tokens_per_byte: f64,
    ) -> Result<EvalSet, LoaderError> {
        // A loader over the split lists its windows; a loader of world size 1 and epoch 0
        // is only used here for its window list and token access.
        let loader = Loader::open(paths, seq_len, 0, 0, 1)?;
        let all = loader.windows_in_file_order();
        let picked: Vec<_> = if max_windows == 0 || all.len() <= max_windows {
            all
        } else {
            (0..max_windows)
                .map(|i| all[i * all.len() / max_windows])
                .collect()
        };
        Ok(EvalSet {
            windows: picked.into_iter().map(|w| loader.tokens(w)).collect(),
            seq_len,
            tokens_per_byte,
        })
    }

    pub fn windows(&self) -> usize {
        self.windows.len()
    }

    /// The mean loss over every window, `batch` windows per forward pass (the last batch is
    /// padded by repeating a window, and the padding's losses are left out).
    pub fn evaluate<S: Shape, B: Backend>(
        &self,
        model: &mut Llama<S, B>,
        batch: usize,
    ) -> Result<EvalResult, ModelError> {
        let seq = self.seq_len;
        let mut total = 0.0f64;
        let mut count = 0u64;
        let (mut inputs, mut targets) = (Vec::new(), Vec::new());
        for chunk in self.windows.chunks(batch) {
            inputs.clear();
            targets.clear();
            for row in 0..batch {
                let window = &chunk[row.min(chunk.len() - 1)];
                inputs.extend_from_slice(&window[..seq]);
                targets.extend_from_slice(&window[1..]);
            }
            model.forward(&inputs, Some(&targets), batch, seq, 0.0)?;
            let losses = model
                .token_losses()?
                .expect("a forward pass with targets leaves its losses");
            total += losses[..chunk.len() * seq]
                .iter()
                .map(|l| l.to_f64())
                .sum::<f64>();
            count += (chunk.len() * seq) as u64;
        }
        let loss = total / count.max(1) as f64;
        Ok(EvalResult {
            loss,
            bits_per_byte: loss / std::f64::consts::LN_2 * self.tokens_per_byte,
            tokens: count,
        })
    }
}
