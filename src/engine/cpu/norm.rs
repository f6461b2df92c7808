//! RMSNorm: `y = x · w / sqrt(mean(x²) + eps)`, per row.

use rayon::prelude::*;

use crate::engine::Float;

pub fn forward<T: Float>(out: &mut [T], rstd: &mut [T], x: &[T], w: &[T], c: usize, eps: f64) {
    out.par_chunks_mut(c)
        .zip(rstd.par_iter_mut())
        .zip(x.par_chunks(c))
        .for_each(|((out, rstd), x)| {
            let mean_square = T::dot(x, x) / T::from_f64(c as f64);
            let r = T::one() / (mean_square + T::from_f64(eps)).sqrt();
            *rstd = r;
            for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(w) {
                *o = xi * r * wi;
            }
        });
}

/// Rows per task of the backward pass: a fixed split, so `dw`'s partial sums add up in the same
/// order for any thread count.
const ROWS: usize = 64;

/// `dx += …`, `dw += …`. With `g = dout · w`: `dx = r·g − r³/c · x · Σ(g·x)`, `dw = Σ_rows dout·x·r`.
/// One pass over the rows does both: each block of rows sums its own `dw`, then the blocks' sums
/// are added in order.
pub fn backward<T: Float>(
    dx: &mut [T],
    dw: &mut [T],
    dout: &[T],
    x: &[T],
    w: &[T],
    rstd: &[T],
    c: usize,
) {
    assert_eq!(dx.len(), rstd.len() * c);
    assert_eq!(dout.len(), dx.len());
    assert_eq!(x.len(), dx.len());
    let (w, dw) = (&w[..c], &mut dw[..c]);
    let inv_c = T::one() / T::from_f64(c as f64);
    let partials: Vec<Vec<T>> = dx
        .par_chunks_mut(ROWS * c)
        .zip(dout.par_chunks(ROWS * c))
        .zip(x.par_chunks(ROWS * c))
        .zip(rstd.par_chunks(ROWS))
        .map(|(((dx, dout), x), rstd)| {
            let mut dw_part = vec![T::zero(); c];
            for (((dx, dout), x), &r) in dx
                .chunks_mut(c)
                .zip(dout.chunks(c))
                .zip(x.chunks(c))
                .zip(rstd)
            {
                let gx = dot3(dout, w, x);
                let k = r * r * r * gx * inv_c;
                for ((((dxi, &d), &wi), &xi), dwi) in
                    dx.iter_mut().zip(dout).zip(w).zip(x).zip(&mut dw_part)
                {
                    *dxi += r * d * wi - k * xi;
                    *dwi += d * xi * r;
                }
            }
            dw_part
        })
        .collect();
    for part in partials {
        for (d, p) in dw.iter_mut().zip(part) {
            *d += p;
        }
    }
}

/// `Σ a·b·c` in eight running sums (vector registers), in a fixed order.
fn dot3<T: Float>(a: &[T], b: &[T], c: &[T]) -> T {
    let mut sums = [T::zero(); 8];
    let (a8, b8, c8) = (a.chunks_exact(8), b.chunks_exact(8), c.chunks_exact(8));
    let rest = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .zip(c8.remainder());
    for ((a, b), c) in a8.zip(b8).zip(c8) {
        for i in 0..8 {
            sums[i] += a[i] * b[i] * c[i];
        }
    }
    let mut total = sums.iter().fold(T::zero(), |acc, &s| acc + s);
    for ((&a, &b), &c) in rest {
        total += a * b * c;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cpu::gradcheck::check_gradients;
    use crate::engine::cpu::{dot, random};

    #[test]
    fn backward_matches_finite_differences() {
        check_backward(4, 40);
        // More rows than one task's block, and a width that is not a multiple of 8.
        check_backward(ROWS + 9, 13);
    }

    fn check_backward(n: usize, c: usize) {
        let x = random(n * c, 1);
        let w = random(c, 2);
        let upstream = random(n * c, 3);
        let loss = |v: &[Vec<f64>]| {
            let mut out = vec![0.0; n * c];
            let mut rstd = vec![0.0; n];
            forward(&mut out, &mut rstd, &v[0], &v[1], c, 1e-5);
            dot(&out, &upstream)
        };
        let mut out = vec![0.0; n * c];
        let mut rstd = vec![0.0; n];
        forward(&mut out, &mut rstd, &x, &w, c, 1e-5);
        let mut dx = vec![0.0; n * c];
        let mut dw = vec![0.0; c];
        backward(&mut dx, &mut dw, &upstream, &x, &w, &rstd, c);
        check_gradients(&[x, w], &[dx, dw], loss);
    }
}
