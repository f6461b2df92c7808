//! Picking the next token from logits: greedy at temperature 0, else softmax at the temperature,
//! restricted to the `top_k` most likely tokens and to the smallest set whose probability
//! reaches `top_p` (nucleus sampling), then a draw from what is left.

use crate::engine::Rng;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0: always the most likely token.
    pub temperature: f64,
    /// Keep only the k most likely tokens (0: all of them).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probabilities sum to at least this, in
    /// (0, 1] (1: all of them).
    pub top_p: f64,
}

/// The candidates after temperature, top-k and top-p: token ids and their renormalised
/// probabilities, most likely first.
pub fn candidates(logits: &[f32], sampling: &Sampling) -> Vec<(u32, f64)> {
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    if sampling.temperature <= 0.0 {
        return vec![(order[0], 1.0)];
    }
    if sampling.top_k > 0 {
        order.truncate(sampling.top_k);
    }
    let max = logits[order[0] as usize] as f64;
    let mut weighted: Vec<(u32, f64)> = order
        .iter()
        .map(|&t| {
            (
                t,
                ((logits[t as usize] as f64 - max) / sampling.temperature).exp(),
            )
        })
        .collect();
    let total: f64 = weighted.iter().map(|(_, w)| w).sum();
    let mut cumulative = 0.0;
    let mut keep = weighted.len();
    for (i, (_, w)) in weighted.iter_mut().enumerate() {
        *w /= total;
        cumulative += *w;
        if cumulative >= sampling.top_p {
            keep = i + 1;
            break;
        }
    }
    weighted.truncate(keep);
    let kept: f64 = weighted.iter().map(|(_, w)| w).sum();
    for (_, w) in weighted.iter_mut() {
        *w /= kept;
    }
    weighted
}

/// Draws the next token.
pub fn sample(logits: &[f32], sampling: &Sampling, rng: &mut Rng) -> u32 {
    let candidates = candidates(logits, sampling);
    let mut draw = rng.uniform();
    for &(token, p) in &candidates {
        if draw < p {
            return token;
        }
        draw -= p;
    }
    candidates.last().expect("at least one candidate").0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits_of(probs: &[f64]) -> Vec<f32> {
        probs.iter().map(|p| p.ln() as f32).collect()
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        let logits = logits_of(&[0.05, 0.5, 0.3, 0.15]);
        let s = Sampling {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.9,
        };
        let kept = candidates(&logits, &s);
        let ids: Vec<u32> = kept.iter().map(|c| c.0).collect();
        // 0.5 + 0.3 = 0.8 < 0.9, + 0.15 = 0.95 ≥ 0.9: token 0 (0.05) is dropped.
        assert_eq!(ids, vec![1, 2, 3]);
        let p: Vec<f64> = kept.iter().map(|c| c.1).collect();
        for (got, want) in p.iter().zip([0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95]) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        let all = candidates(&logits, &Sampling { top_p: 1.0, ..s });
        assert_eq!(all.len(), 4);
    }

    #[test]
    fn top_k_one_and_temperature_zero_are_greedy() {
        let logits = logits_of(&[0.2, 0.1, 0.6, 0.1]);
        let mut rng = Rng::new(1);
        for sampling in [
            Sampling {
                temperature: 1.5,
                top_k: 1,
                top_p: 1.0,
            },
            Sampling {
                temperature: 0.0,
                top_k: 0,
                top_p: 0.9,
            },
        ] {
            for _ in 0..50 {
                assert_eq!(sample(&logits, &sampling, &mut rng), 2);
            }
        }
        let two = candidates(
            &logits,
            &Sampling {
                temperature: 1.0,
                top_k: 2,
                top_p: 1.0,
            },
        );
        assert_eq!(two.iter().map(|c| c.0).collect::<Vec<_>>(), vec![2, 0]);
    }

    #[test]
    fn draws_follow_the_probabilities_and_repeat_with_the_seed() {
        let logits = logits_of(&[0.25, 0.75]);
        let s = Sampling {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
        };
        let draws = |seed| {
            let mut rng = Rng::new(seed);
            (0..4000)
                .map(|_| sample(&logits, &s, &mut rng))
                .collect::<Vec<_>>()
        };
        let ones = draws(7).iter().filter(|&&t| t == 1).count() as f64 / 4000.0;
        assert!((ones - 0.75).abs() < 0.03, "{ones}");
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
    }
}
