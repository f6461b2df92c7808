//! Softmax and cross-entropy fused: the logits buffer becomes its own gradient, so the
//! `batch × seq × vocab` probabilities are never stored twice.

use rayon::prelude::*;

use crate::engine::Float;

/// `losses[r] = logsumexp(logits[r]) − logits[r][target]`; then
/// `logits[r] = (softmax(logits[r]) − onehot(target)) · grad_scale`.
pub fn fused<T: Float>(
    losses: &mut [T],
    logits: &mut [T],
    targets: &[u32],
    vocab: usize,
    grad_scale: f64,
) {
    let scale = T::from_f64(grad_scale);
    logits
        .par_chunks_mut(vocab)
        .zip(losses.par_iter_mut())
        .zip(targets.par_iter())
        .for_each(|((row, loss), &target)| {
            let target = target as usize;
            assert!(
                target < vocab,
                "target {target} outside the vocabulary of {vocab}"
            );
            let target_logit = row[target];
            let max = T::max_of(row);
            let sum = T::exp_sum(row, max);
            *loss = max + sum.ln() - target_logit;
            let inv = scale / sum;
            for x in row.iter_mut() {
                *x *= inv;
            }
            row[target] -= scale;
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cpu::gradcheck::check_gradients;
    use crate::engine::cpu::random;

    #[test]
    fn gradient_matches_finite_differences() {
        let (n, vocab) = (5, 11);
        let logits = random(n * vocab, 1);
        let targets = [3u32, 0, 10, 3, 7];
        let weights = random(n, 2);
        let loss = |v: &[Vec<f64>]| {
            let mut losses = vec![0.0; n];
            let mut scratch = v[0].clone();
            fused(&mut losses, &mut scratch, &targets, vocab, 1.0);
            losses.iter().zip(&weights).map(|(l, w)| l * w).sum::<f64>()
        };
        // The weighted loss's gradient is each row's gradient times its weight.
        let mut grad = logits.clone();
        let mut losses = vec![0.0; n];
        fused(&mut losses, &mut grad, &targets, vocab, 1.0);
        for (row, w) in grad.chunks_mut(vocab).zip(&weights) {
            row.iter_mut().for_each(|g| *g *= w);
        }
        check_gradients(&[logits], &[grad], loss);
    }

    #[test]
    fn loss_of_uniform_logits_is_log_vocab() {
        let mut logits = vec![0.5f64; 8];
        let mut losses = vec![0.0; 1];
        fused(&mut losses, &mut logits, &[2], 8, 1.0);
        assert!((losses[0] - 8f64.ln()).abs() < 1e-12);
        assert!((logits[2] - (1.0 / 8.0 - 1.0)).abs() < 1e-12);
    }
}
