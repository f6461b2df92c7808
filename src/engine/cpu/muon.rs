//! Muon on the CPU: momentum, then the update orthogonalised by Newton–Schulz iterations whose
//! products go through the `gemm` crate (transposes are strides), parallel over rows.

use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use super::optim::{scale, sum_squares};
use crate::engine::{Float, Muon, NEWTON_SCHULZ};

const CHUNK: usize = 4096;

/// One Muon step of a `rows × cols` matrix (see [`crate::engine::Backend::muon`]).
#[allow(clippy::too_many_arguments)]
pub fn muon<T: Float>(
    param: &mut [T],
    grad: &[T],
    momentum: &mut [T],
    scratch: &mut [T],
    rows: usize,
    cols: usize,
    hp: Muon,
) {
    let len = rows * cols;
    let side = rows.min(cols);
    assert_eq!(param.len(), len);
    assert_eq!(grad.len(), len);
    assert_eq!(momentum.len(), len);
    assert!(scratch.len() >= 2 * len + 2 * side * side);
    let (update, rest) = scratch.split_at_mut(len);
    let (spare, rest) = rest.split_at_mut(len);
    let (gram, rest) = rest.split_at_mut(side * side);
    let poly = &mut rest[..side * side];

    let mu = T::from_f64(hp.momentum);
    let nesterov = hp.nesterov;
    let grad_scale = T::from_f64(hp.grad_scale);
    momentum
        .par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(update.par_chunks_mut(CHUNK))
        .for_each(|((buf, g), u)| {
            for ((b, &g), u) in buf.iter_mut().zip(g).zip(u.iter_mut()) {
                let g = g * grad_scale;
                *b = mu * *b + g;
                *u = if nesterov { g + mu * *b } else { *b };
            }
        });
    let norm = sum_squares(update).sqrt();
    scale(update, 1.0 / (norm + 1e-7));

    let mut current = update;
    let mut next = spare;
    for _ in 0..hp.ns_steps {
        newton_schulz_step(current, next, gram, poly, rows, cols);
        std::mem::swap(&mut current, &mut next);
    }

    let decay = T::from_f64(1.0 - hp.lr * hp.weight_decay);
    let step = T::from_f64(hp.lr * (rows as f64 / cols as f64).max(1.0).sqrt());
    param
        .par_chunks_mut(CHUNK)
        .zip(current.par_chunks(CHUNK))
        .for_each(|(p, o)| {
            for (p, &o) in p.iter_mut().zip(o) {
                *p = *p * decay - step * o;
            }
        });
}

/// One quintic iteration, `next = a·x + (b·G + c·G²)·x` with `G = x·xᵀ` for a wide `x`, or
/// `next = a·x + x·(b·G + c·G²)` with `G = xᵀ·x` for a tall one: the same matrix (the
/// polynomial of `x xᵀ` times `x` equals `x` times that of `xᵀ x`), from the smaller Gram
/// matrix, so a tall matrix needs no transposed copy.
fn newton_schulz_step<T: Float>(
    x: &[T],
    next: &mut [T],
    gram: &mut [T],
    poly: &mut [T],
    rows: usize,
    cols: usize,
) {
    let (a, b, c) = NEWTON_SCHULZ;
    let (a, b, c) = (T::from_f64(a), T::from_f64(b), T::from_f64(c));
    let side = rows.min(cols);
    let wide = rows <= cols;
    let plain = Mat::new(x, rows, cols);
    let transposed = plain.t();
    if wide {
        product(gram, None, plain, transposed, T::one());
    } else {
        product(gram, None, transposed, plain, T::one());
    }
    poly.copy_from_slice(gram);
    let g = Mat::new(gram, side, side);
    product(poly, Some(b), g, g, c);
    next.copy_from_slice(x);
    let p = Mat::new(poly, side, side);
    if wide {
        product(next, Some(a), p, plain, T::one());
    } else {
        product(next, Some(a), plain, p, T::one());
    }
}

/// A row-major matrix, read as stored or transposed.
#[derive(Clone, Copy)]
struct Mat<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    transposed: bool,
}

impl<'a, T> Mat<'a, T> {
    fn new(data: &'a [T], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols);
        Mat {
            data,
            rows,
            cols,
            transposed: false,
        }
    }

    fn t(self) -> Self {
        Mat {
            transposed: !self.transposed,
            ..self
        }
    }

    /// Rows and columns as read.
    fn shape(&self) -> (usize, usize) {
        if self.transposed {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }

    /// Row and column strides as read.
    fn strides(&self) -> (isize, isize) {
        if self.transposed {
            (1, self.cols as isize)
        } else {
            (self.cols as isize, 1)
        }
    }
}

/// `dst = [dst_scale·dst +] beta · lhs · rhs`, every shape checked.
fn product<T: Float>(dst: &mut [T], dst_scale: Option<T>, lhs: Mat<T>, rhs: Mat<T>, beta: T) {
    let (m, k) = lhs.shape();
    let (k2, n) = rhs.shape();
    assert_eq!(k, k2);
    assert_eq!(dst.len(), m * n);
    let (lhs_rs, lhs_cs) = lhs.strides();
    let (rhs_rs, rhs_cs) = rhs.strides();
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 && m >= 16 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: `Mat::new` ties each slice's length to its shape, the strides address that shape
    // (as stored or transposed), and `dst` holds m×n values; it is a separate borrow from the
    // inputs.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            dst_scale.is_some(),
            lhs.data.as_ptr(),
            lhs_cs,
            lhs_rs,
            rhs.data.as_ptr(),
            rhs_cs,
            rhs_rs,
            dst_scale.unwrap_or(T::zero()),
            beta,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cpu::random;

    /// Row-major `a (m×k) · b (k×n)` in f64, by the definition.
    fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum();
            }
        }
        out
    }

    fn transpose(a: &[f64], rows: usize, cols: usize) -> Vec<f64> {
        let mut out = vec![0.0; a.len()];
        for i in 0..rows {
            for j in 0..cols {
                out[j * rows + i] = a[i * cols + j];
            }
        }
        out
    }

    /// Newton–Schulz as the authors write it: normalise, transpose a tall matrix to its wide
    /// orientation, iterate `A = X Xᵀ; B = bA + cA²; X = aX + BX`, transpose back.
    fn newton_schulz_reference(u: &[f64], rows: usize, cols: usize, steps: usize) -> Vec<f64> {
        let (a, b, c) = NEWTON_SCHULZ;
        let norm = u.iter().map(|v| v * v).sum::<f64>().sqrt();
        let tall = rows > cols;
        let (m, n) = if tall { (cols, rows) } else { (rows, cols) };
        let mut x: Vec<f64> = u.iter().map(|v| v / (norm + 1e-7)).collect();
        if tall {
            x = transpose(&x, rows, cols);
        }
        for _ in 0..steps {
            let gram = matmul(&x, &transpose(&x, m, n), m, n, m);
            let square = matmul(&gram, &gram, m, m, m);
            let poly: Vec<f64> = gram
                .iter()
                .zip(&square)
                .map(|(g, s)| b * g + c * s)
                .collect();
            let px = matmul(&poly, &x, m, m, n);
            x = x.iter().zip(&px).map(|(x, p)| a * x + p).collect();
        }
        if tall { transpose(&x, m, n) } else { x }
    }

    /// One Muon step by the published recipe, in f64.
    fn muon_reference(
        param: &mut [f64],
        grad: &[f64],
        momentum: &mut [f64],
        rows: usize,
        cols: usize,
        hp: Muon,
    ) {
        for (b, g) in momentum.iter_mut().zip(grad) {
            *b = hp.momentum * *b + g;
        }
        let update: Vec<f64> = if hp.nesterov {
            grad.iter()
                .zip(momentum.iter())
                .map(|(g, b)| g + hp.momentum * b)
                .collect()
        } else {
            momentum.to_vec()
        };
        let ortho = newton_schulz_reference(&update, rows, cols, hp.ns_steps);
        let scale = (rows as f64 / cols as f64).max(1.0).sqrt();
        for (p, o) in param.iter_mut().zip(ortho) {
            *p *= 1.0 - hp.lr * hp.weight_decay;
            *p -= hp.lr * scale * o;
        }
    }

    /// The eigenvalues of a symmetric matrix, by cyclic Jacobi rotations.
    fn symmetric_eigenvalues(mut a: Vec<f64>, n: usize) -> Vec<f64> {
        for _sweep in 0..100 {
            let off: f64 = (0..n)
                .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
                .map(|(i, j)| a[i * n + j] * a[i * n + j])
                .sum();
            if off < 1e-22 {
                break;
            }
            for p in 0..n {
                for q in p + 1..n {
                    let apq = a[p * n + q];
                    if apq.abs() < 1e-300 {
                        continue;
                    }
                    let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                    let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                    let t = if theta == 0.0 { 1.0 } else { t };
                    let (cos, sin) = (1.0 / (t * t + 1.0).sqrt(), t / (t * t + 1.0).sqrt());
                    for k in 0..n {
                        let (akp, akq) = (a[k * n + p], a[k * n + q]);
                        a[k * n + p] = cos * akp - sin * akq;
                        a[k * n + q] = sin * akp + cos * akq;
                    }
                    for k in 0..n {
                        let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                        a[p * n + k] = cos * apk - sin * aqk;
                        a[q * n + k] = sin * apk + cos * aqk;
                    }
                }
            }
        }
        (0..n).map(|i| a[i * n + i]).collect()
    }

    /// The singular values of a `rows × cols` matrix, from the eigenvalues of its smaller Gram
    /// matrix.
    fn singular_values(x: &[f64], rows: usize, cols: usize) -> Vec<f64> {
        let (gram, side) = if rows <= cols {
            (matmul(x, &transpose(x, rows, cols), rows, cols, rows), rows)
        } else {
            (matmul(&transpose(x, rows, cols), x, cols, rows, cols), cols)
        };
        symmetric_eigenvalues(gram, side)
            .into_iter()
            .map(|e| e.max(0.0).sqrt())
            .collect()
    }

    fn hp() -> Muon {
        Muon {
            lr: 0.02,
            momentum: 0.95,
            nesterov: true,
            ns_steps: 5,
            weight_decay: 0.1,
            grad_scale: 1.0,
        }
    }

    /// The orthogonalised update of one step from zero momentum, zero weights and no decay:
    /// `-param / (lr · scale)`.
    fn orthogonalised(grad: &[f32], rows: usize, cols: usize) -> Vec<f64> {
        let hp = Muon {
            lr: 1.0,
            weight_decay: 0.0,
            ..hp()
        };
        let mut param = vec![0.0f32; grad.len()];
        let mut momentum = vec![0.0f32; grad.len()];
        let side = rows.min(cols);
        let mut scratch = vec![0.0f32; 2 * grad.len() + 2 * side * side];
        muon(
            &mut param,
            grad,
            &mut momentum,
            &mut scratch,
            rows,
            cols,
            hp,
        );
        let scale = (rows as f64 / cols as f64).max(1.0).sqrt();
        param.iter().map(|&p| -p as f64 / scale).collect()
    }

    #[test]
    fn newton_schulz_puts_every_singular_value_in_the_quintic_band() {
        for (rows, cols, seed) in [(64, 160, 3), (160, 64, 4)] {
            let grad: Vec<f32> = random(rows * cols, seed)
                .iter()
                .map(|&v| v as f32)
                .collect();
            let before = singular_values(
                &grad.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                rows,
                cols,
            );
            let spread = before.iter().cloned().fold(0.0, f64::max)
                / before.iter().cloned().fold(f64::INFINITY, f64::min);
            assert!(spread > 3.0, "a test matrix far from orthogonal: {spread}");
            let values = singular_values(&orthogonalised(&grad, rows, cols), rows, cols);
            assert_eq!(values.len(), 64);
            for s in values {
                assert!(
                    (0.68..=1.21).contains(&s),
                    "{rows}x{cols}: singular value {s}"
                );
            }
        }
    }

    #[test]
    fn a_muon_step_matches_the_published_recipe() {
        for (rows, cols, nesterov) in [(24, 40, true), (40, 24, true), (32, 32, false)] {
            let hp = Muon { nesterov, ..hp() };
            let grads = [random(rows * cols, 11), random(rows * cols, 12)];
            let mut expected = random(rows * cols, 13);
            let mut expected_momentum = vec![0.0; rows * cols];
            let mut param: Vec<f32> = expected.iter().map(|&v| v as f32).collect();
            let mut momentum = vec![0.0f32; rows * cols];
            let side = rows.min(cols);
            let mut scratch = vec![0.0f32; 2 * rows * cols + 2 * side * side];
            let mut param64 = expected.clone();
            let mut momentum64 = vec![0.0f64; rows * cols];
            let mut scratch64 = vec![0.0f64; scratch.len()];
            for grad in &grads {
                muon_reference(&mut expected, grad, &mut expected_momentum, rows, cols, hp);
                let grad32: Vec<f32> = grad.iter().map(|&g| g as f32).collect();
                muon(
                    &mut param,
                    &grad32,
                    &mut momentum,
                    &mut scratch,
                    rows,
                    cols,
                    hp,
                );
                muon(
                    &mut param64,
                    grad,
                    &mut momentum64,
                    &mut scratch64,
                    rows,
                    cols,
                    hp,
                );
            }
            for ((&e, &p), &p64) in expected.iter().zip(&param).zip(&param64) {
                assert!((e - p64).abs() < 1e-12, "{rows}x{cols} f64: {p64} vs {e}");
                assert!((e - p as f64).abs() < 2e-5, "{rows}x{cols} f32: {p} vs {e}");
            }
            for (&e, &m) in expected_momentum.iter().zip(&momentum64) {
                assert!((e - m).abs() < 1e-12);
            }
        }
    }
}
