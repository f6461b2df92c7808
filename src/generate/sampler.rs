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
/// probabilities, most likely first (ties: the lower id first).
///
/// Only the tokens that can be candidates are sorted: the most likely at temperature 0, the
/// `top_k` most likely, and for top-p those whose probability reaches `(1 − top_p) / (n − 1)`.
/// Those below it hold less than `1 − top_p` together, so the nucleus is complete before them
/// (llama2.c's `sample_topp` does the same): sorting 4,096 logits per token was a fifth of a
/// token's time.
pub fn candidates(logits: &[f32], sampling: &Sampling) -> Vec<(u32, f64)> {
    let more_likely = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    let all = 0..logits.len() as u32;
    let Some(best) = all.clone().min_by(more_likely) else {
        return Vec::new();
    };
    if sampling.temperature <= 0.0 {
        return vec![(best, 1.0)];
    }
    let max = logits[best as usize] as f64;
    let weight = |t: u32| ((logits[t as usize] as f64 - max) / sampling.temperature).exp();
    let mut order: Vec<u32> = if sampling.top_k > 0 {
        let mut order: Vec<u32> = all.collect();
        let k = sampling.top_k.min(order.len());
        if k < order.len() {
            order.select_nth_unstable_by(k - 1, more_likely);
            order.truncate(k);
        }
        order
    } else {
        let total: f64 = all.clone().map(weight).sum();
        let cutoff = (1.0 - sampling.top_p) / (logits.len().max(2) - 1) as f64 * total;
        all.filter(|&t| weight(t) >= cutoff).collect()
    };
    order.sort_unstable_by(more_likely);
    let total: f64 = if sampling.top_k > 0 {
        order.iter().map(|&t| weight(t)).sum()
    } else {
        (0..logits.len() as u32).map(weight).sum()
    };
    let mut weighted: Vec<(u32, f64)> = order.iter().map(|&t| (t, weight(t) / total)).collect();
    let mut cumulative = 0.0;
    let mut keep = weighted.len();
    for (i, (_, w)) in weighted.iter().enumerate() {
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

    /// What `candidates` computes, the plain way: every token sorted, then top-k, then top-p.
    fn reference(logits: &[f32], s: &Sampling) -> Vec<(u32, f64)> {
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        if s.temperature <= 0.0 {
            return vec![(order[0], 1.0)];
        }
        if s.top_k > 0 {
            order.truncate(s.top_k);
        }
        let max = logits[order[0] as usize] as f64;
        let w: Vec<f64> = order
            .iter()
            .map(|&t| ((logits[t as usize] as f64 - max) / s.temperature).exp())
            .collect();
        let total: f64 = w.iter().sum();
        let mut out = Vec::new();
        let mut cumulative = 0.0;
        for (&t, &w) in order.iter().zip(&w) {
            out.push((t, w / total));
            cumulative += w / total;
            if cumulative >= s.top_p {
                break;
            }
        }
        let kept: f64 = out.iter().map(|c| c.1).sum();
        out.iter().map(|&(t, p)| (t, p / kept)).collect()
    }

    #[test]
    fn only_the_tokens_that_can_be_candidates_are_sorted_and_the_result_is_the_plain_one() {
        let mut rng = Rng::new(3);
        for case in 0..200 {
            let n = 1 + case % 300;
            // Repeated values too, so ties are ordered the same way.
            let logits: Vec<f32> = (0..n)
                .map(|_| (rng.normal() * 3.0).round() as f32 / 2.0)
                .collect();
            let s = Sampling {
                temperature: [0.0, 0.7, 1.0, 1.5][case % 4],
                top_k: [0, 0, 1, 5, 50][case % 5],
                top_p: [1.0, 0.9, 0.5, 0.99][case % 4 / 2 + case % 2],
            };
            let (got, want) = (candidates(&logits, &s), reference(&logits, &s));
            assert_eq!(
                got.iter().map(|c| c.0).collect::<Vec<_>>(),
                want.iter().map(|c| c.0).collect::<Vec<_>>(),
                "case {case}: {s:?}"
            );
            for (g, w) in got.iter().zip(&want) {
                assert!((g.1 - w.1).abs() < 1e-12, "case {case}: {g:?} vs {w:?}");
            }
        }
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
