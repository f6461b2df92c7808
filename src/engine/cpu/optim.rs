//! AdamW and the reductions gradient clipping needs.

use rayon::prelude::*;

use crate::engine::{AdamW, Float};

const CHUNK: usize = 4096;

/// One AdamW step (Loshchilov & Hutter; PyTorch's `AdamW`): decay the weights by
/// `lr · weight_decay`, then step by the bias-corrected moments.
pub fn adamw<T: Float>(param: &mut [T], grad: &[T], m: &mut [T], v: &mut [T], hp: AdamW) {
    let b1 = T::from_f64(hp.beta1);
    let b2 = T::from_f64(hp.beta2);
    let one = T::one();
    let correction1 = T::from_f64(hp.correction1);
    let correction2 = T::from_f64(hp.correction2);
    let lr = T::from_f64(hp.lr);
    let decay = T::from_f64(1.0 - hp.lr * hp.weight_decay);
    let eps = T::from_f64(hp.eps);
    let grad_scale = T::from_f64(hp.grad_scale);
    param
        .par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| {
            // Zipped, not indexed: no bounds checks, so the loop vectorises.
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                let g = g * grad_scale;
                *m = b1 * *m + (one - b1) * g;
                *v = b2 * *v + (one - b2) * g * g;
                let m_hat = *m / correction1;
                let v_hat = *v / correction2;
                *p = *p * decay - lr * m_hat / (v_hat.sqrt() + eps);
            }
        });
}

/// Σ x², in f64, in one fixed order (the same bits for any thread count).
pub fn sum_squares<T: Float>(x: &[T]) -> f64 {
    // Four running sums, so the loop vectorises; the order stays fixed.
    let mut sums = [0.0f64; 4];
    let chunks = x.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..4 {
            sums[i] += c[i].to_f64() * c[i].to_f64();
        }
    }
    let mut total = sums[0] + sums[1] + sums[2] + sums[3];
    for &v in rest {
        total += v.to_f64() * v.to_f64();
    }
    total
}

pub fn scale<T: Float>(x: &mut [T], factor: f64) {
    let factor = T::from_f64(factor);
    x.par_chunks_mut(CHUNK)
        .for_each(|c| c.iter_mut().for_each(|v| *v *= factor));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_adamw_step_moves_by_lr_times_sign() {
        // After one step the bias-corrected update is g / (|g| + eps) ≈ sign(g).
        let mut p = vec![1.0f64, -2.0, 0.5];
        let g = vec![0.3, -0.1, 2.0];
        let mut m = vec![0.0; 3];
        let mut v = vec![0.0; 3];
        let (correction1, correction2) = AdamW::corrections(0.9, 0.95, 1);
        let hp = AdamW {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            correction1,
            correction2,
            grad_scale: 1.0,
        };
        adamw(&mut p, &g, &mut m, &mut v, hp);
        let expected = [
            1.0 * (1.0 - 0.001) - 0.01,
            -2.0 * (1.0 - 0.001) + 0.01,
            0.5 * (1.0 - 0.001) - 0.01,
        ];
        for (a, b) in p.iter().zip(expected) {
            assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        }
    }
}
