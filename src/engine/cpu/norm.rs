//! RMSNorm: `y = x · w / sqrt(mean(x²) + eps)`, per row.

use rayon::prelude::*;

use crate::engine::Float;

pub fn forward<T: Float>(out: &mut [T], rstd: &mut [T], x: &[T], w: &[T], c: usize, eps: f64) {
    out.par_chunks_mut(c)
        .zip(rstd.par_iter_mut())
        .zip(x.par_chunks(c))
        .for_each(|((out, rstd), x)| {
            let mean_square = x.iter().map(|&v| v * v).sum::<T>() / T::from_f64(c as f64);
            let r = T::one() / (mean_square + T::from_f64(eps)).sqrt();
            *rstd = r;
            for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(w) {
                *o = xi * r * wi;
            }
        });
}

/// `dx += …`, `dw += …`. With `g = dout · w`: `dx = r·g − r³/c · x · Σ(g·x)`, `dw = Σ_rows dout·x·r`.
pub fn backward<T: Float>(
    dx: &mut [T],
    dw: &mut [T],
    dout: &[T],
    x: &[T],
    w: &[T],
    rstd: &[T],
    c: usize,
) {
    dx.par_chunks_mut(c)
        .zip(dout.par_chunks(c))
        .zip(x.par_chunks(c))
        .zip(rstd.par_iter())
        .for_each(|(((dx, dout), x), &r)| {
            let gx: T = dout
                .iter()
                .zip(w)
                .zip(x)
                .map(|((&d, &wi), &xi)| d * wi * xi)
                .sum();
            let k = r * r * r * gx / T::from_f64(c as f64);
            for (((dxi, &d), &wi), &xi) in dx.iter_mut().zip(dout).zip(w).zip(x) {
                *dxi += r * d * wi - k * xi;
            }
        });
    // Each thread owns a range of channels and walks every row: no races, a fixed order.
    dw.par_chunks_mut(32).enumerate().for_each(|(chunk, dw)| {
        let first = chunk * 32;
        for (row, &r) in rstd.iter().enumerate() {
            let base = row * c + first;
            for (j, dwj) in dw.iter_mut().enumerate() {
                *dwj += dout[base + j] * x[base + j] * r;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cpu::gradcheck::check_gradients;
    use crate::engine::cpu::{dot, random};

    #[test]
    fn backward_matches_finite_differences() {
        let (n, c) = (4, 40);
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
