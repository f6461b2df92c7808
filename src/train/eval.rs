//! Validation: a fixed set of windows of the validation split, the same at every evaluation, and
//! the model's loss on them in nats per token and bits per byte.
//!
//! The windows are those the loader would cut (`seq_len + 1` tokens every `seq_len` tokens, in
//! file order). When there are more than `max_windows` of them, `max_windows` are taken evenly
//! spaced over the split, so the set covers all of it; otherwise every window is used.
//! Bits per byte is the loss in bits times the split's tokens per byte of UTF-8 text, so it
//! compares across tokenizers.

use std::path::PathBuf;

use crate::collective::Collective;
use crate::data::loader::{Loader, LoaderError, Share};
use crate::engine::{Backend, Float};
use crate::model::{Llama, ModelError, Shape};

pub struct EvalSet {
    /// Each `seq_len + 1` tokens long.
    windows: Vec<Vec<u32>>,
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
        let loader = Loader::open(paths, seq_len, 0, Share::single())?;
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
            tokens_per_byte,
        })
    }

    pub fn windows(&self) -> usize {
        self.windows.len()
    }

    /// The mean loss over every window, `batch` windows per forward pass. The ranks of `world`
    /// each take an equal share of the windows and sum their losses, so every rank gets the
    /// same result.
    pub fn evaluate<S: Shape, B: Backend>(
        &self,
        model: &mut Llama<S, B>,
        batch: usize,
        world: &dyn Collective,
    ) -> Result<EvalResult, ModelError> {
        let (rank, ranks) = (world.rank(), world.size());
        let share = self.windows.len().div_ceil(ranks);
        let start = (rank * share).min(self.windows.len());
        let mine = &self.windows[start..(start + share).min(self.windows.len())];
        let mut totals = [0.0f64, 0.0];
        window_losses(model, mine, batch, |_, losses| {
            totals[0] += losses.iter().sum::<f64>();
            totals[1] += losses.len() as f64;
        })?;
        world.all_reduce_sum_f64(&mut totals);
        Ok(EvalResult::new(
            totals[0],
            totals[1] as u64,
            self.tokens_per_byte,
        ))
    }
}

impl EvalResult {
    /// The figures of `tokens` predictions whose losses sum to `total_loss` (nats), on a text of
    /// `tokens_per_byte` tokens per UTF-8 byte.
    pub fn new(total_loss: f64, tokens: u64, tokens_per_byte: f64) -> EvalResult {
        let loss = total_loss / tokens.max(1) as f64;
        EvalResult {
            loss,
            bits_per_byte: loss / std::f64::consts::LN_2 * tokens_per_byte,
            tokens,
        }
    }
}

/// Runs `windows` of equal length (`seq + 1` tokens: inputs and their next tokens), `batch` per
/// forward pass, and hands `each` the index of every window and the losses of its `seq`
/// predictions. The last pass is padded by repeating a window, and the padding's losses are
/// left out. Evaluation and `tinyllm score` both go through here.
pub fn window_losses<S: Shape, B: Backend, W: AsRef<[u32]>>(
    model: &mut Llama<S, B>,
    windows: &[W],
    batch: usize,
    mut each: impl FnMut(usize, &[f64]),
) -> Result<(), ModelError> {
    let Some(seq) = windows.first().map(|w| w.as_ref().len().saturating_sub(1)) else {
        return Ok(());
    };
    let (mut inputs, mut targets) = (Vec::new(), Vec::new());
    let mut losses = Vec::with_capacity(seq);
    for (chunk_index, chunk) in windows.chunks(batch).enumerate() {
        inputs.clear();
        targets.clear();
        for row in 0..batch {
            let window = chunk[row.min(chunk.len() - 1)].as_ref();
            assert_eq!(window.len(), seq + 1, "windows of one call have one length");
            inputs.extend_from_slice(&window[..seq]);
            targets.extend_from_slice(&window[1..]);
        }
        model.forward(&inputs, Some(&targets), batch, seq, 0.0)?;
        let all = model
            .token_losses()?
            .expect("a forward pass with targets leaves its losses");
        for (row, window_losses) in all.chunks(seq).take(chunk.len()).enumerate() {
            losses.clear();
            losses.extend(window_losses.iter().map(|l| l.to_f64()));
            each(chunk_index * batch + row, &losses);
        }
    }
    Ok(())
}

/// The loss of every token of `ids` after the first, each predicted from those before it in
/// its window: windows of `seq_len + 1` tokens every `seq_len` tokens, as the loader and
/// evaluation cut them, the last one shorter when the text ends mid-window.
pub fn sequence_losses<S: Shape, B: Backend>(
    model: &mut Llama<S, B>,
    ids: &[u32],
    seq_len: usize,
    batch: usize,
) -> Result<Vec<f64>, ModelError> {
    let windows: Vec<&[u32]> = (0..ids.len().saturating_sub(1))
        .step_by(seq_len.max(1))
        .map(|start| &ids[start..(start + seq_len + 1).min(ids.len())])
        .collect();
    let full = windows
        .iter()
        .take_while(|w| w.len() == seq_len + 1)
        .count();
    let mut losses = Vec::with_capacity(ids.len().saturating_sub(1));
    window_losses(model, &windows[..full], batch, |_, l| {
        losses.extend_from_slice(l)
    })?;
    window_losses(model, &windows[full..], 1, |_, l| {
        losses.extend_from_slice(l)
    })?;
    Ok(losses)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Cpu;
    use crate::model::{LlamaConfig, ModelDims};

    fn model() -> Llama<crate::model::RuntimeShape, Cpu<f32>> {
        let dims = ModelDims {
            dim: 16,
            n_layers: 1,
            n_heads: 2,
            n_kv_heads: 1,
            vocab_size: 40,
            multiple_of: 4,
            max_seq_len: 8,
        };
        let shape = crate::model::RuntimeShape::new(dims).unwrap();
        Llama::new(Cpu::<f32>::new(), shape, LlamaConfig::default(), 3).unwrap()
    }

    #[test]
    fn a_long_text_is_scored_in_windows_as_evaluation_cuts_them() {
        let mut model = model();
        let ids: Vec<u32> = (0..19).map(|i| (i * 7 % 40) as u32).collect();
        let losses = sequence_losses(&mut model, &ids, 8, 2).unwrap();
        assert_eq!(losses.len(), 18, "one loss per token after the first");
        // Each window is scored on its own: the same as scoring its tokens alone.
        for (start, window) in [(0, &ids[0..9]), (8, &ids[8..17]), (16, &ids[16..19])] {
            let alone = sequence_losses(&mut model, window, 8, 1).unwrap();
            for (i, loss) in alone.iter().enumerate() {
                assert!((loss - losses[start + i]).abs() < 1e-5, "{start} {i}");
            }
        }
        // Batching and padding do not change a window's losses.
        let unbatched = sequence_losses(&mut model, &ids, 8, 1).unwrap();
        for (a, b) in losses.iter().zip(&unbatched) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn figures_follow_from_the_summed_loss() {
        let result = EvalResult::new(2.0 * std::f64::consts::LN_2 * 10.0, 10, 0.25);
        assert!((result.loss - 2.0 * std::f64::consts::LN_2).abs() < 1e-12);
        assert!((result.bits_per_byte - 0.5).abs() < 1e-12);
        assert_eq!(result.tokens, 10);
    }
}
