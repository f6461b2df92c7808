//! The cuBLAS calls of the CUDA backend, as plain descriptions built from shapes: which matrix
//! goes where, transposed or not, with which leading dimensions. Kept apart from the launches so
//! that `tests` can run every one of them through a column-major reference GEMM on the CPU (CI
//! has no GPU) and compare with the row-major product it stands for.
//!
//! cuBLAS is column-major and our buffers are row-major. A row-major `r × c` matrix is, read
//! column-major, its own `c × r` transpose, so every product below is written for the
//! transposes: `out = inp · wᵀ` becomes `outᵀ = w · inpᵀ`, and no buffer is ever copied to be
//! transposed.

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{GemmConfig, StridedBatchedConfig};

const N: cublasOperation_t = cublasOperation_t::CUBLAS_OP_N;
const T: cublasOperation_t = cublasOperation_t::CUBLAS_OP_T;

/// `out[n, oc] = inp[n, ic] · w[oc, ic]ᵀ`: A = `w`, B = `inp`, C = `out`.
///
/// Column-major, `outᵀ (oc × n) = op(w) (oc × ic) · inpᵀ (ic × n)`, with `w` read as the
/// `ic × oc` matrix `wᵀ` and transposed back.
pub fn matmul_forward(ic: usize, oc: usize, n: usize) -> GemmConfig<f32> {
    GemmConfig {
        transa: T,
        transb: N,
        m: dim(oc),
        n: dim(n),
        k: dim(ic),
        alpha: 1.0,
        lda: dim(ic),
        ldb: dim(ic),
        beta: 0.0,
        ldc: dim(oc),
    }
}

/// `dinp[n, ic] (+)= dout[n, oc] · w[oc, ic]`: A = `w`, B = `dout`, C = `dinp`; `accumulate`
/// adds to `dinp` instead of overwriting it.
///
/// Column-major, `dinpᵀ (ic × n) = wᵀ (ic × oc) · doutᵀ (oc × n)`.
pub fn matmul_backward_input(ic: usize, oc: usize, n: usize, accumulate: bool) -> GemmConfig<f32> {
    GemmConfig {
        transa: N,
        transb: N,
        m: dim(ic),
        n: dim(n),
        k: dim(oc),
        alpha: 1.0,
        lda: dim(ic),
        ldb: dim(oc),
        beta: if accumulate { 1.0 } else { 0.0 },
        ldc: dim(ic),
    }
}

/// `dw[oc, ic] += dout[n, oc]ᵀ · inp[n, ic]`: A = `inp`, B = `dout`, C = `dw`.
///
/// Column-major, `dwᵀ (ic × oc) += inpᵀ (ic × n) · dout (n × oc)`, with `dout` read as the
/// `oc × n` matrix `doutᵀ` and transposed back.
pub fn matmul_backward_weight(ic: usize, oc: usize, n: usize) -> GemmConfig<f32> {
    GemmConfig {
        transa: N,
        transb: T,
        m: dim(ic),
        n: dim(oc),
        k: dim(n),
        alpha: 1.0,
        lda: dim(ic),
        ldb: dim(oc),
        beta: 1.0,
        ldc: dim(ic),
    }
}

/// One Newton–Schulz iteration of Muon on the `rows × cols` row-major update `x`, as three
/// products over the smaller Gram matrix (`side = min(rows, cols)`, all `side × side`, both
/// symmetric, so neither is ever transposed):
///
/// 1. [`NewtonSchulz::gram`]: `G = x·xᵀ` when wide (rows ≤ cols), `xᵀ·x` when tall; A = B = `x`,
///    C = `G`.
/// 2. [`NewtonSchulz::poly`]: `P = b·G + c·G²`; A = B = `G`, C = `P` holding a copy of `G`.
/// 3. [`NewtonSchulz::apply`]: `next = a·x + P·x` (wide) or `a·x + x·P` (tall); C = `next` holding
///    a copy of `x`, and A, B = (`x`, `P`) when wide, (`P`, `x`) when tall, in column-major
///    terms ([`NewtonSchulz::poly_first`] says which).
pub struct NewtonSchulz {
    pub gram: GemmConfig<f32>,
    pub poly: GemmConfig<f32>,
    pub apply: GemmConfig<f32>,
    /// Whether `P` is cuBLAS's A in [`NewtonSchulz::apply`] (tall updates) rather than its B.
    pub poly_first: bool,
}

/// The products of one Newton–Schulz iteration with coefficients `(a, b, c)`.
///
/// Column-major, `x` is `S = xᵀ` (`cols × rows`, leading dimension `cols`): wide, `G = SᵀS` and
/// `nextᵀ = a·S + S·P`; tall, `G = S·Sᵀ` and `nextᵀ = a·S + P·S`.
pub fn newton_schulz(rows: usize, cols: usize, (a, b, c): (f32, f32, f32)) -> NewtonSchulz {
    let side = rows.min(cols);
    let wide = rows <= cols;
    let (r, cl, s) = (dim(rows), dim(cols), dim(side));
    NewtonSchulz {
        gram: GemmConfig {
            transa: if wide { T } else { N },
            transb: if wide { N } else { T },
            m: s,
            n: s,
            k: if wide { cl } else { r },
            alpha: 1.0,
            lda: cl,
            ldb: cl,
            beta: 0.0,
            ldc: s,
        },
        poly: GemmConfig {
            transa: N,
            transb: N,
            m: s,
            n: s,
            k: s,
            alpha: c,
            lda: s,
            ldb: s,
            beta: b,
            ldc: s,
        },
        apply: GemmConfig {
            transa: N,
            transb: N,
            m: cl,
            n: r,
            k: s,
            alpha: 1.0,
            lda: if wide { cl } else { s },
            ldb: if wide { s } else { cl },
            beta: a,
            ldc: cl,
        },
        poly_first: !wide,
    }
}

/// The products of causal attention, each one strided-batched cuBLAS call over every (batch,
/// head): its operands are heads-first copies `[batch·heads, seq, head_dim]` of q, k, v and the
/// output's gradient (k and v repeated for the query heads of their group), and the
/// probabilities and their gradient `[batch·heads, seq, seq]`. The products cover the masked
/// upper triangle too (the softmax kernels zero it), trading those flops for a plain GEMM.
pub struct AttentionGemms {
    /// `scores = scale · q·kᵀ`: A = k, B = q, C = scores.
    pub scores: StridedBatchedConfig<f32>,
    /// `out = probs · v`: A = v, B = probs, C = out.
    pub values: StridedBatchedConfig<f32>,
    /// `dprobs = dout · vᵀ`: A = v, B = dout, C = dprobs.
    pub dprobs: StridedBatchedConfig<f32>,
    /// `dv = probsᵀ · dout`: A = dout, B = probs, C = dv.
    pub dv: StridedBatchedConfig<f32>,
    /// `dq = scale · dscores · k`: A = k, B = dscores, C = dq.
    pub dq: StridedBatchedConfig<f32>,
    /// `dk = scale · dscoresᵀ · q`: A = q, B = dscores, C = dk.
    pub dk: StridedBatchedConfig<f32>,
}

/// The attention products for `batch_heads` heads of `seq` positions and `head_dim`
/// dimensions, with the scores scaled by `scale`. Each is one of the linear layer's products
/// with seq in the roles of both the rows and the output features: the scores are
/// `matmul_forward` of q by k, the values `matmul_backward_input` of probs by v, and so on.
pub fn attention(batch_heads: usize, seq: usize, head_dim: usize, scale: f32) -> AttentionGemms {
    let (t, d) = (seq, head_dim);
    let (head, square) = (stride(t * d), stride(t * t));
    let batched = |gemm: GemmConfig<f32>, stride_a, stride_b, stride_c| StridedBatchedConfig {
        gemm,
        batch_size: dim(batch_heads),
        stride_a,
        stride_b,
        stride_c,
    };
    let scaled = |mut gemm: GemmConfig<f32>| {
        gemm.alpha = scale;
        gemm
    };
    let overwriting = |mut gemm: GemmConfig<f32>| {
        gemm.beta = 0.0;
        gemm
    };
    AttentionGemms {
        scores: batched(scaled(matmul_forward(d, t, t)), head, head, square),
        values: batched(matmul_backward_input(d, t, t, false), head, square, head),
        dprobs: batched(matmul_forward(d, t, t), head, head, square),
        dv: batched(
            overwriting(matmul_backward_weight(d, t, t)),
            head,
            square,
            head,
        ),
        dq: batched(
            scaled(matmul_backward_input(d, t, t, false)),
            head,
            square,
            head,
        ),
        dk: batched(
            scaled(overwriting(matmul_backward_weight(d, t, t))),
            head,
            square,
            head,
        ),
    }
}

/// A stride between batched matrices as cuBLAS's `long long`.
fn stride(n: usize) -> i64 {
    i64::try_from(n).unwrap_or_else(|_| panic!("stride {n} exceeds cuBLAS's long long"))
}

/// A dimension as cuBLAS's `int`. The Backend contract's buffers are far below 2³¹ elements per
/// side (a model is refused long before), so a larger one is a bug, not a user error.
fn dim(n: usize) -> i32 {
    i32::try_from(n).unwrap_or_else(|_| panic!("matrix side {n} exceeds cuBLAS's int"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Rng;

    /// BLAS's `C = alpha · op(A) · op(B) + beta · C`, column-major, in f64, straight from the
    /// definition: `op(A)` is `m × k`, element (i, l) at `a[i + l·lda]`, or `a[l + i·lda]`
    /// when transposed. Checks every leading dimension against its side, as cuBLAS would, and
    /// indexes the buffers with bounds checks, as cuBLAS would not.
    fn reference_gemm(config: &GemmConfig<f32>, a: &[f64], b: &[f64], c: &mut [f64]) {
        let [m, n, k] = [config.m, config.n, config.k].map(|d| d as usize);
        let [lda, ldb, ldc] = [config.lda, config.ldb, config.ldc].map(|d| d as usize);
        let op_a = |i: usize, l: usize| match config.transa {
            cublasOperation_t::CUBLAS_OP_N => {
                assert!(lda >= m, "lda {lda} < m {m}");
                a[i + l * lda]
            }
            _ => {
                assert!(lda >= k, "lda {lda} < k {k}");
                a[l + i * lda]
            }
        };
        let op_b = |l: usize, j: usize| match config.transb {
            cublasOperation_t::CUBLAS_OP_N => {
                assert!(ldb >= k, "ldb {ldb} < k {k}");
                b[l + j * ldb]
            }
            _ => {
                assert!(ldb >= n, "ldb {ldb} < n {n}");
                b[j + l * ldb]
            }
        };
        assert!(ldc >= m, "ldc {ldc} < m {m}");
        for j in 0..n {
            for i in 0..m {
                let dot: f64 = (0..k).map(|l| op_a(i, l) * op_b(l, j)).sum();
                let at = i + j * ldc;
                // As in BLAS, beta = 0 ignores C (which may hold NaN): overwritten, not scaled.
                let kept = if config.beta == 0.0 {
                    0.0
                } else {
                    f64::from(config.beta) * c[at]
                };
                c[at] = f64::from(config.alpha) * dot + kept;
            }
        }
    }

    /// [`reference_gemm`] over `config.batch_size` matrices at the config's strides.
    fn reference_batched(config: &StridedBatchedConfig<f32>, a: &[f64], b: &[f64], c: &mut [f64]) {
        let [sa, sb, sc] = [config.stride_a, config.stride_b, config.stride_c].map(|s| s as usize);
        for i in 0..config.batch_size as usize {
            reference_gemm(&config.gemm, &a[i * sa..], &b[i * sb..], &mut c[i * sc..]);
        }
    }

    /// The row-major product `x[r, k] · y[k, c]`.
    fn row_major_product(x: &[f64], y: &[f64], r: usize, k: usize, c: usize) -> Vec<f64> {
        let mut out = vec![0.0; r * c];
        for i in 0..r {
            for j in 0..c {
                out[i * c + j] = (0..k).map(|l| x[i * k + l] * y[l * c + j]).sum();
            }
        }
        out
    }

    fn transpose(x: &[f64], r: usize, c: usize) -> Vec<f64> {
        let mut out = vec![0.0; r * c];
        for i in 0..r {
            for j in 0..c {
                out[j * r + i] = x[i * c + j];
            }
        }
        out
    }

    fn random(rng: &mut Rng, len: usize) -> Vec<f64> {
        (0..len).map(|_| rng.normal()).collect()
    }

    fn assert_close(what: &str, got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-9 * (1.0 + w.abs()),
                "{what}[{i}]: {g} != {w}"
            );
        }
    }

    /// Shapes with every side different, so a swapped m/n/k or leading dimension shows.
    const SHAPES: [(usize, usize, usize); 3] = [(5, 3, 7), (4, 9, 2), (1, 6, 3)];

    #[test]
    fn the_forward_matmul_is_inp_times_w_transposed() {
        let mut rng = Rng::new(1);
        for (ic, oc, n) in SHAPES {
            let (inp, w) = (random(&mut rng, n * ic), random(&mut rng, oc * ic));
            let mut out = vec![f64::NAN; n * oc];
            reference_gemm(&matmul_forward(ic, oc, n), &w, &inp, &mut out);
            let want = row_major_product(&inp, &transpose(&w, oc, ic), n, ic, oc);
            assert_close("out", &out, &want);
        }
    }

    #[test]
    fn the_backward_matmuls_are_the_gradients_of_the_forward_one() {
        let mut rng = Rng::new(2);
        for (ic, oc, n) in SHAPES {
            let (inp, w, dout) = (
                random(&mut rng, n * ic),
                random(&mut rng, oc * ic),
                random(&mut rng, n * oc),
            );
            let dinp_want = row_major_product(&dout, &w, n, oc, ic);
            let mut dinp = vec![f64::NAN; n * ic];
            reference_gemm(
                &matmul_backward_input(ic, oc, n, false),
                &w,
                &dout,
                &mut dinp,
            );
            assert_close("dinp", &dinp, &dinp_want);

            let earlier = random(&mut rng, n * ic);
            let mut dinp = earlier.clone();
            reference_gemm(
                &matmul_backward_input(ic, oc, n, true),
                &w,
                &dout,
                &mut dinp,
            );
            let sum: Vec<f64> = earlier.iter().zip(&dinp_want).map(|(a, b)| a + b).collect();
            assert_close("dinp accumulated", &dinp, &sum);

            let dw_before = random(&mut rng, oc * ic);
            let mut dw = dw_before.clone();
            reference_gemm(&matmul_backward_weight(ic, oc, n), &inp, &dout, &mut dw);
            let product = row_major_product(&transpose(&dout, n, oc), &inp, oc, n, ic);
            let want: Vec<f64> = dw_before.iter().zip(&product).map(|(a, b)| a + b).collect();
            assert_close("dw", &dw, &want);
        }
    }

    #[test]
    fn a_newton_schulz_iteration_is_a_x_plus_b_g_x_plus_c_g_squared_x() {
        let mut rng = Rng::new(3);
        let (a, b, c) = (3.4445f32, -4.7750f32, 2.0315f32);
        for (rows, cols) in [(3, 5), (5, 3), (4, 4), (1, 6), (6, 1)] {
            let x = random(&mut rng, rows * cols);
            let ns = newton_schulz(rows, cols, (a, b, c));
            let side = rows.min(cols);

            let mut gram = vec![f64::NAN; side * side];
            reference_gemm(&ns.gram, &x, &x, &mut gram);
            let mut poly = gram.clone();
            reference_gemm(&ns.poly, &gram, &gram, &mut poly);
            let mut next = x.clone();
            if ns.poly_first {
                reference_gemm(&ns.apply, &poly, &x, &mut next);
            } else {
                reference_gemm(&ns.apply, &x, &poly, &mut next);
            }

            let xt = transpose(&x, rows, cols);
            let (g, want_gram) = if rows <= cols {
                let g = row_major_product(&x, &xt, rows, cols, rows);
                (g.clone(), g)
            } else {
                let g = row_major_product(&xt, &x, cols, rows, cols);
                (g.clone(), g)
            };
            assert_close("gram", &gram, &want_gram);
            let g2 = row_major_product(&g, &g, side, side, side);
            let p: Vec<f64> = g
                .iter()
                .zip(&g2)
                .map(|(g, g2)| f64::from(b) * g + f64::from(c) * g2)
                .collect();
            assert_close("poly", &poly, &p);
            let px = if rows <= cols {
                row_major_product(&p, &x, rows, rows, cols)
            } else {
                row_major_product(&x, &p, rows, cols, cols)
            };
            let want: Vec<f64> = x
                .iter()
                .zip(&px)
                .map(|(x, px)| f64::from(a) * x + px)
                .collect();
            assert_close("next", &next, &want);
        }
    }

    /// Causal attention of one head, row-major `[seq, head_dim]` q, k, v, straight from the
    /// definition: the output, and the gradients of q, k, v for the output's gradient `dout`.
    #[allow(clippy::type_complexity)]
    fn attention_by_definition(
        q: &[f64],
        k: &[f64],
        v: &[f64],
        dout: &[f64],
        t: usize,
        d: usize,
        scale: f64,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(a, b)| a * b).sum::<f64>();
        let row = |x: &[f64], i: usize| x[i * d..(i + 1) * d].to_vec();
        let mut p = vec![0.0; t * t];
        for i in 0..t {
            let scores: Vec<f64> = (0..=i)
                .map(|j| scale * dot(&row(q, i), &row(k, j)))
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
            for (j, s) in scores.iter().enumerate() {
                p[i * t + j] = (s - max).exp() / sum;
            }
        }
        let (mut out, mut dq, mut dk, mut dv) = (
            vec![0.0; t * d],
            vec![0.0; t * d],
            vec![0.0; t * d],
            vec![0.0; t * d],
        );
        for i in 0..t {
            let dp: Vec<f64> = (0..t).map(|j| dot(&row(dout, i), &row(v, j))).collect();
            let weighted: f64 = (0..t).map(|j| p[i * t + j] * dp[j]).sum();
            for j in 0..t {
                let ds = p[i * t + j] * (dp[j] - weighted);
                for e in 0..d {
                    out[i * d + e] += p[i * t + j] * v[j * d + e];
                    dv[j * d + e] += p[i * t + j] * dout[i * d + e];
                    dq[i * d + e] += scale * ds * k[j * d + e];
                    dk[j * d + e] += scale * ds * q[i * d + e];
                }
            }
        }
        (out, dq, dk, dv)
    }

    /// The softmax and its backward pass as the kernels compute them, row by row in place, with
    /// zeros above the diagonal.
    fn causal_softmax(scores: &mut [f64], t: usize) {
        for (r, row) in scores.chunks_mut(t).enumerate() {
            let i = r % t;
            let max = row[..=i].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = row[..=i].iter().map(|s| (s - max).exp()).sum();
            for (j, x) in row.iter_mut().enumerate() {
                *x = if j <= i { (*x - max).exp() / sum } else { 0.0 };
            }
        }
    }
    fn causal_softmax_backward(dscores: &mut [f64], probs: &[f64], t: usize) {
        for (r, (ds, p)) in dscores.chunks_mut(t).zip(probs.chunks(t)).enumerate() {
            let i = r % t;
            let weighted: f64 = (0..=i).map(|j| p[j] * ds[j]).sum();
            for j in 0..t {
                ds[j] = if j <= i {
                    p[j] * (ds[j] - weighted)
                } else {
                    0.0
                };
            }
        }
    }

    #[test]
    fn the_attention_products_with_the_softmax_kernels_are_causal_attention_and_its_gradients() {
        let mut rng = Rng::new(4);
        for (heads, t, d) in [(3, 5, 2), (2, 4, 6), (1, 1, 3)] {
            // The scale as cuBLAS gets it (an f32), so the definition uses the same number.
            let scale = f64::from(1.0 / (d as f32).sqrt());
            let plan = attention(heads, t, d, scale as f32);
            let len = heads * t * d;
            let (q, k, v, dout) = (
                random(&mut rng, len),
                random(&mut rng, len),
                random(&mut rng, len),
                random(&mut rng, len),
            );
            let mut probs = vec![f64::NAN; heads * t * t];
            reference_batched(&plan.scores, &k, &q, &mut probs);
            causal_softmax(&mut probs, t);
            let mut out = vec![f64::NAN; len];
            reference_batched(&plan.values, &v, &probs, &mut out);
            let mut dscores = vec![f64::NAN; heads * t * t];
            reference_batched(&plan.dprobs, &v, &dout, &mut dscores);
            let mut dv = vec![f64::NAN; len];
            reference_batched(&plan.dv, &dout, &probs, &mut dv);
            causal_softmax_backward(&mut dscores, &probs, t);
            let (mut dq, mut dk) = (vec![f64::NAN; len], vec![f64::NAN; len]);
            reference_batched(&plan.dq, &k, &dscores, &mut dq);
            reference_batched(&plan.dk, &q, &dscores, &mut dk);

            for h in 0..heads {
                let at = h * t * d..(h + 1) * t * d;
                let head = |x: &[f64]| x[at.clone()].to_vec();
                let (want_out, want_dq, want_dk, want_dv) = attention_by_definition(
                    &head(&q),
                    &head(&k),
                    &head(&v),
                    &head(&dout),
                    t,
                    d,
                    scale,
                );
                assert_close("out", &head(&out), &want_out);
                assert_close("dq", &head(&dq), &want_dq);
                assert_close("dk", &head(&dk), &want_dk);
                assert_close("dv", &head(&dv), &want_dv);
            }
        }
    }

    #[test]
    fn the_reference_gemm_catches_a_leading_dimension_too_small() {
        let mut config = matmul_forward(4, 3, 2);
        config.lda = 3;
        let result = std::panic::catch_unwind(|| {
            reference_gemm(&config, &[0.0; 12], &[0.0; 8], &mut [0.0; 6]);
        });
        assert!(result.is_err());
    }
}
