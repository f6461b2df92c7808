//! Rotary position embeddings in Hugging Face's `rotate_half` layout: within each head, element
//! `d` pairs with element `d + head_dim/2`, rotated by `pos · theta^(-2d/head_dim)`.

use rayon::prelude::*;

use super::SendPtr;
use crate::engine::Float;

const MAX_HALF: usize = 256;

/// Rotates rows of `heads × head_dim` in place; the row's position is `start` plus its index mod
/// `seq`. `sign = -1` applies the inverse rotation (the backward pass). One task per position
/// computes its angles once and rotates that position's row in every sequence of the batch.
fn rotate<T: Float>(
    x: &mut [T],
    start: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
    theta: f64,
    sign: f64,
) {
    let half = head_dim / 2;
    assert!(
        head_dim.is_multiple_of(2) && half <= MAX_HALF,
        "head_dim {head_dim} must be even and ≤ 512"
    );
    let width = heads * head_dim;
    assert!(x.len().is_multiple_of(seq * width));
    let rows = x.len() / width;
    let mut inv_freq = [0.0f64; MAX_HALF];
    for (d, f) in inv_freq.iter_mut().enumerate().take(half) {
        *f = 1.0 / theta.powf((2 * d) as f64 / head_dim as f64);
    }
    let x_ptr = SendPtr(x.as_mut_ptr());
    (0..seq).into_par_iter().for_each(|pos| {
        let x_ptr = &x_ptr;
        let mut cos = [T::zero(); MAX_HALF];
        let mut sin = [T::zero(); MAX_HALF];
        for d in 0..half {
            let (s, c) = ((start + pos) as f64 * inv_freq[d]).sin_cos();
            cos[d] = T::from_f64(c);
            sin[d] = T::from_f64(sign * s);
        }
        for row in (pos..rows).step_by(seq) {
            // SAFETY: rows at position `pos` belong to this task alone, and `row < rows`.
            let row = unsafe { std::slice::from_raw_parts_mut(x_ptr.0.add(row * width), width) };
            for head in row.chunks_mut(head_dim) {
                let (lo, hi) = head.split_at_mut(half);
                for d in 0..half {
                    let (a, b) = (lo[d], hi[d]);
                    lo[d] = a * cos[d] - b * sin[d];
                    hi[d] = b * cos[d] + a * sin[d];
                }
            }
        }
    });
}

pub fn forward<T: Float>(x: &mut [T], seq: usize, heads: usize, head_dim: usize, theta: f64) {
    rotate(x, 0, seq, heads, head_dim, theta, 1.0);
}

/// Rotates one row (a single token's heads) as position `position`: the decoding step.
pub fn forward_at<T: Float>(
    x: &mut [T],
    position: usize,
    heads: usize,
    head_dim: usize,
    theta: f64,
) {
    rotate(x, position, 1, heads, head_dim, theta, 1.0);
}

/// The rotation is orthogonal, so its backward pass is the inverse rotation.
pub fn backward<T: Float>(dx: &mut [T], seq: usize, heads: usize, head_dim: usize, theta: f64) {
    rotate(dx, 0, seq, heads, head_dim, theta, -1.0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cpu::gradcheck::check_gradients;
    use crate::engine::cpu::{dot, random};

    #[test]
    fn backward_matches_finite_differences() {
        let (batch, seq, heads, head_dim) = (2, 3, 2, 6);
        let x = random(batch * seq * heads * head_dim, 1);
        let upstream = random(x.len(), 2);
        let loss = |v: &[Vec<f64>]| {
            let mut y = v[0].clone();
            forward(&mut y, seq, heads, head_dim, 10000.0);
            dot(&y, &upstream)
        };
        let mut dx = upstream.clone();
        backward(&mut dx, seq, heads, head_dim, 10000.0);
        check_gradients(&[x], &[dx], loss);
    }

    #[test]
    fn a_row_rotated_at_its_position_equals_the_sequence_rotation() {
        let (seq, heads, head_dim) = (5, 2, 8);
        let x = random(seq * heads * head_dim, 3);
        let mut whole = x.clone();
        forward(&mut whole, seq, heads, head_dim, 10000.0);
        let width = heads * head_dim;
        for pos in 0..seq {
            let mut row = x[pos * width..(pos + 1) * width].to_vec();
            forward_at(&mut row, pos, heads, head_dim, 10000.0);
            assert_eq!(row, whole[pos * width..(pos + 1) * width]);
        }
    }

    #[test]
    fn position_zero_is_identity_and_pairs_are_half_apart() {
        let mut x: Vec<f64> = (0..8).map(|i| i as f64).collect();
        forward(&mut x, 2, 1, 4, 10000.0);
        assert_eq!(&x[..4], &[0.0, 1.0, 2.0, 3.0]);
        // Position 1, d = 0: angle 1 rad, pairing x[4] with x[6].
        let (s, c) = 1f64.sin_cos();
        assert!((x[4] - (4.0 * c - 6.0 * s)).abs() < 1e-12);
        assert!((x[6] - (6.0 * c + 4.0 * s)).abs() < 1e-12);
    }
}
