//! Causal self-attention with grouped-query heads: query head `h` reads kv head
//! `h / (heads / kv_heads)`. Layouts: `q`, `out` are `[batch, seq, heads, head_dim]`; `k`, `v`
//! are `[batch, seq, kv_heads, head_dim]`; `probs` is `[batch, heads, seq, seq]`.
//!
//! Each head's products (`Q·Kᵀ`, `P·V` and their backward) are matrix multiplications through
//! `gemm` on strided views; the causal mask zeroes the upper triangle of `P`, so the full
//! products stay exact.

use rayon::prelude::*;

use super::matmul::{View, gemm_serial};
use super::{Kept, KeptMut, SendPtr};
use crate::engine::{AttentionShape, Float};

/// Rows per block of the causal products.
const BLOCK: usize = 64;

/// Forward pass: writes `out` and keeps the probabilities in `probs` (floats, or bf16 under bf16
/// precision). Each head's row blocks are computed in working space of their own, so the kept
/// probabilities are written once, in their stored type.
pub fn forward<T: Float>(
    out: &mut [T],
    probs: KeptMut<'_, T>,
    q: &[T],
    k: &[T],
    v: &[T],
    s: AttentionShape,
) {
    let AttentionShape {
        batch,
        seq,
        heads,
        kv_heads,
        head_dim,
    } = s;
    assert_eq!(q.len(), batch * seq * heads * head_dim);
    assert_eq!(k.len(), batch * seq * kv_heads * head_dim);
    assert_eq!(v.len(), k.len());
    assert_eq!(out.len(), q.len());
    assert_eq!(probs.len(), batch * heads * seq * seq);
    let group = heads / kv_heads;
    let (q_rs, kv_rs) = (heads * head_dim, kv_heads * head_dim);
    let scale = T::from_f64(1.0 / (head_dim as f64).sqrt());
    let out_ptr = SendPtr(out.as_mut_ptr());
    let probs = probs.shared();
    (0..batch * heads).into_par_iter().for_each(|bh| {
        let (out_ptr, probs) = (&out_ptr, &probs);
        let (b, h) = (bh / heads, bh % heads);
        let g = h / group;
        let q_h = View {
            ptr: q[(b * seq * heads + h) * head_dim..].as_ptr(),
            row_stride: q_rs,
            col_stride: 1,
        };
        let k_g = &k[(b * seq * kv_heads + g) * head_dim..];
        let v_g = View {
            ptr: v[(b * seq * kv_heads + g) * head_dim..].as_ptr(),
            row_stride: kv_rs,
            col_stride: 1,
        };
        let k_transposed = View {
            ptr: k_g.as_ptr(),
            row_stride: 1,
            col_stride: kv_rs,
        };
        let mut block = vec![T::zero(); BLOCK.min(seq) * seq];
        // Row block by row block, so the products skip the masked upper triangle beyond
        // each block's last row.
        for r0 in (0..seq).step_by(BLOCK) {
            let r1 = (r0 + BLOCK).min(seq);
            let rows = &mut block[..(r1 - r0) * seq];
            // SAFETY: the views address q, k rows of batch b and heads h, g below row r1, in
            // bounds by the length asserts; `rows` is this task's own working space.
            unsafe {
                let q_rows = View {
                    ptr: q_h.ptr.add(r0 * q_rs),
                    ..q_h
                };
                gemm_serial(
                    r1 - r0,
                    r1,
                    head_dim,
                    rows.as_mut_ptr(),
                    seq,
                    false,
                    q_rows,
                    k_transposed,
                    scale,
                );
            }
            for (i, row) in rows.chunks_mut(seq).enumerate() {
                let t = r0 + i;
                let (visible, masked) = row.split_at_mut(t + 1);
                let max = T::max_of(visible);
                let sum = T::exp_sum(visible, max);
                let inv = T::one() / sum;
                visible.iter_mut().for_each(|x| *x *= inv);
                masked.fill(T::zero());
            }
            let p_rows = View {
                ptr: rows.as_ptr(),
                row_stride: seq,
                col_stride: 1,
            };
            // SAFETY: this task alone writes head h of batch b in `out` (rows of stride q_rs)
            // and rows r0..r1 of head h of batch b in `probs`.
            unsafe {
                let dst = out_ptr.0.add((b * seq * heads + h) * head_dim + r0 * q_rs);
                gemm_serial(
                    r1 - r0,
                    head_dim,
                    r1,
                    dst,
                    q_rs,
                    false,
                    p_rows,
                    v_g,
                    T::one(),
                );
                probs.store((bh * seq + r0) * seq, rows);
            }
        }
    });
}

/// Backward pass: overwrites `dq`, `dk`, `dv` (no zeroing pass needed). The kept `probs`, `q`,
/// `k`, `v` may be floats or bf16: each task widens the rows it reads into working space of its
/// own, so the products run on floats either way.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Float>(
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
    dout: &[T],
    probs: Kept<'_, T>,
    q: Kept<'_, T>,
    k: Kept<'_, T>,
    v: Kept<'_, T>,
    s: AttentionShape,
) {
    let AttentionShape {
        batch,
        seq,
        heads,
        kv_heads,
        head_dim,
    } = s;
    assert_eq!(dq.len(), batch * seq * heads * head_dim);
    assert_eq!(dout.len(), dq.len());
    assert_eq!(q.len(), dq.len());
    assert_eq!(dk.len(), batch * seq * kv_heads * head_dim);
    assert_eq!(dv.len(), dk.len());
    assert_eq!(k.len(), dk.len());
    assert_eq!(v.len(), dk.len());
    assert_eq!(probs.len(), batch * heads * seq * seq);
    let group = heads / kv_heads;
    let (q_rs, kv_rs) = (heads * head_dim, kv_heads * head_dim);
    let scale = T::from_f64(1.0 / (head_dim as f64).sqrt());
    let (dq_ptr, dk_ptr, dv_ptr) = (
        SendPtr(dq.as_mut_ptr()),
        SendPtr(dk.as_mut_ptr()),
        SendPtr(dv.as_mut_ptr()),
    );
    let view = |ptr: *const T, row_stride, col_stride| View {
        ptr,
        row_stride,
        col_stride,
    };
    // The `seq` rows of one head (`head_dim` values each, `stride` apart from `offset`), as
    // contiguous floats.
    let head_rows = |kept: Kept<'_, T>, offset: usize, stride: usize, rows: &mut [T]| {
        for (t, row) in rows.chunks_mut(head_dim).enumerate() {
            kept.load(offset + t * stride, row);
        }
    };
    // One task per (batch, kv head): it alone writes that kv head's dk, dv and its query heads'
    // dq.
    (0..batch * kv_heads).into_par_iter().for_each(|bg| {
        let (b, g) = (bg / kv_heads, bg % kv_heads);
        let (dq_ptr, dk_ptr, dv_ptr) = (&dq_ptr, &dk_ptr, &dv_ptr);
        let kv_offset = (b * seq * kv_heads + g) * head_dim;
        let mut k_g = vec![T::zero(); seq * head_dim];
        let mut v_g = vec![T::zero(); seq * head_dim];
        let mut q_h = vec![T::zero(); seq * head_dim];
        let mut p_block = vec![T::zero(); BLOCK.min(seq) * seq];
        let mut ds_block = vec![T::zero(); BLOCK.min(seq) * seq];
        head_rows(k, kv_offset, kv_rs, &mut k_g);
        head_rows(v, kv_offset, kv_rs, &mut v_g);
        // The first product into dk, dv overwrites them: the last row block comes first, and
        // its products cover every row.
        let mut overwrite_kv = true;
        for h in g * group..(g + 1) * group {
            let q_offset = (b * seq * heads + h) * head_dim;
            head_rows(q, q_offset, q_rs, &mut q_h);
            for r0 in (0..seq).step_by(BLOCK).rev() {
                let r1 = (r0 + BLOCK).min(seq);
                let m = r1 - r0;
                let accumulate_kv = !std::mem::take(&mut overwrite_kv);
                // Columns past r1 are masked zeros: neither read nor loaded.
                let p_rows = &mut p_block[..m * seq];
                for (i, row) in p_rows.chunks_mut(seq).enumerate() {
                    probs.load(((b * heads + h) * seq + r0 + i) * seq, &mut row[..r1]);
                }
                let ds_rows = &mut ds_block[..m * seq];
                let do_rows = view(dout[q_offset + r0 * q_rs..].as_ptr(), q_rs, 1);
                // SAFETY (all products below): views address rows below r1 of this task's
                // working space or of batch b, query head h and kv head g inside their buffers
                // (length asserts above); the destinations are working space or rows no other
                // task writes.
                unsafe {
                    // dP = dO · Vᵀ
                    let v_t = view(v_g.as_ptr(), 1, head_dim);
                    gemm_serial(
                        m,
                        r1,
                        head_dim,
                        ds_rows.as_mut_ptr(),
                        seq,
                        false,
                        do_rows,
                        v_t,
                        T::one(),
                    );
                    // dV (+)= Pᵀ · dO
                    let p_t = view(p_rows.as_ptr(), 1, seq);
                    gemm_serial(
                        r1,
                        head_dim,
                        m,
                        dv_ptr.0.add(kv_offset),
                        kv_rs,
                        accumulate_kv,
                        p_t,
                        do_rows,
                        T::one(),
                    );
                }
                // dS = P ⊙ (dP − Σ P·dP), times the score scale.
                for (row_p, row_ds) in p_rows.chunks(seq).zip(ds_rows.chunks_mut(seq)) {
                    let (row_p, row_ds) = (&row_p[..r1], &mut row_ds[..r1]);
                    let weighted = T::dot(row_p, row_ds);
                    for (d, &pi) in row_ds.iter_mut().zip(row_p) {
                        *d = pi * (*d - weighted) * scale;
                    }
                }
                let ds_view = view(ds_rows.as_ptr(), seq, 1);
                let ds_t = view(ds_rows.as_ptr(), 1, seq);
                // SAFETY: as above.
                unsafe {
                    // dQ = dS · K: each block of a head's rows is written once.
                    let k_rows = view(k_g.as_ptr(), head_dim, 1);
                    let dq_rows = dq_ptr.0.add(q_offset + r0 * q_rs);
                    gemm_serial(
                        m,
                        head_dim,
                        r1,
                        dq_rows,
                        q_rs,
                        false,
                        ds_view,
                        k_rows,
                        T::one(),
                    );
                    // dK (+)= dSᵀ · Q
                    let q_rows = view(q_h[r0 * head_dim..].as_ptr(), head_dim, 1);
                    gemm_serial(
                        r1,
                        head_dim,
                        m,
                        dk_ptr.0.add(kv_offset),
                        kv_rs,
                        accumulate_kv,
                        ds_t,
                        q_rows,
                        T::one(),
                    );
                }
            }
        }
    });
}

/// One query row (a single new token's heads) against the first `len` rows of a key/value
/// cache (`[positions, kv_heads, head_dim]`): the decoding step with a KV cache. One task per
/// head.
#[allow(clippy::too_many_arguments)]
pub fn decode<T: Float>(
    out: &mut [T],
    q: &[T],
    k_cache: &[T],
    v_cache: &[T],
    len: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
) {
    let group = heads / kv_heads;
    let kv_width = kv_heads * head_dim;
    let scale = T::from_f64(1.0 / (head_dim as f64).sqrt());
    let per_task = heads.div_ceil(rayon::current_num_threads());
    out.par_chunks_mut(head_dim)
        .enumerate()
        .with_min_len(per_task)
        .for_each(|(h, out)| {
            let q = &q[h * head_dim..(h + 1) * head_dim];
            let kv = (h / group) * head_dim;
            let mut scores: Vec<T> = (0..len)
                .map(|t| {
                    let k = &k_cache[t * kv_width + kv..t * kv_width + kv + head_dim];
                    q.iter().zip(k).fold(T::zero(), |acc, (a, b)| acc + *a * *b) * scale
                })
                .collect();
            let max = scores.iter().copied().fold(T::neg_infinity(), T::max);
            let mut sum = T::zero();
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            out.fill(T::zero());
            for (t, p) in scores.iter().enumerate() {
                let weight = *p / sum;
                let v = &v_cache[t * kv_width + kv..t * kv_width + kv + head_dim];
                for (o, x) in out.iter_mut().zip(v) {
                    *o += weight * *x;
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_each_position_equals_the_causal_forward() {
        let s = AttentionShape {
            batch: 1,
            seq: 6,
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
        };
        let q = crate::engine::cpu::random(s.seq * s.heads * s.head_dim, 11);
        let k = crate::engine::cpu::random(s.seq * s.kv_heads * s.head_dim, 12);
        let v = crate::engine::cpu::random(s.seq * s.kv_heads * s.head_dim, 13);
        let mut out = vec![0.0; q.len()];
        let mut probs = vec![0.0; s.heads * s.seq * s.seq];
        forward(&mut out, KeptMut::Full(&mut probs), &q, &k, &v, s);
        let width = s.heads * s.head_dim;
        for pos in 0..s.seq {
            let mut row = vec![0.0; width];
            let q_row = &q[pos * width..(pos + 1) * width];
            decode(
                &mut row,
                q_row,
                &k,
                &v,
                pos + 1,
                s.heads,
                s.kv_heads,
                s.head_dim,
            );
            for (a, b) in row.iter().zip(&out[pos * width..(pos + 1) * width]) {
                assert!((a - b).abs() < 1e-12, "position {pos}: {a} vs {b}");
            }
        }
    }
    use half::bf16;

    use crate::engine::cpu::gradcheck::check_gradients;
    use crate::engine::cpu::{dot as dot_all, random};

    fn shape() -> AttentionShape {
        AttentionShape {
            batch: 2,
            seq: 4,
            heads: 4,
            kv_heads: 2,
            head_dim: 3,
        }
    }

    /// Longer than one row block, so the blocked causal products are exercised.
    fn long_shape() -> AttentionShape {
        AttentionShape {
            batch: 1,
            seq: BLOCK + 7,
            heads: 2,
            kv_heads: 1,
            head_dim: 2,
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        check_backward(shape());
    }

    #[test]
    fn backward_matches_finite_differences_over_several_blocks() {
        check_backward(long_shape());
    }

    fn check_backward(s: AttentionShape) {
        let q = random(s.batch * s.seq * s.heads * s.head_dim, 1);
        let k = random(s.batch * s.seq * s.kv_heads * s.head_dim, 2);
        let v = random(k.len(), 3);
        let upstream = random(q.len(), 4);
        let run = |q: &[f64], k: &[f64], v: &[f64]| {
            let mut out = vec![0.0; q.len()];
            let mut probs = vec![0.0; s.batch * s.heads * s.seq * s.seq];
            forward(&mut out, KeptMut::Full(&mut probs), q, k, v, s);
            (out, probs)
        };
        let loss = |x: &[Vec<f64>]| dot_all(&run(&x[0], &x[1], &x[2]).0, &upstream);
        let (_, probs) = run(&q, &k, &v);
        // Overwritten, whatever was there.
        let mut dq = vec![5.0; q.len()];
        let mut dk = vec![-2.0; k.len()];
        let mut dv = vec![3.0; v.len()];
        backward(
            &mut dq,
            &mut dk,
            &mut dv,
            &upstream,
            Kept::Full(&probs),
            Kept::Full(&q),
            Kept::Full(&k),
            Kept::Full(&v),
            s,
        );
        check_gradients(&[q, k, v], &[dq, dk, dv], loss);
    }

    fn rounded(values: &[f64]) -> (Vec<bf16>, Vec<f64>) {
        let half: Vec<bf16> = values.iter().map(|&x| x.to_bf16()).collect();
        let widened = half.iter().map(|&x| f64::from_bf16(x)).collect();
        (half, widened)
    }

    /// Kept in bf16, the probabilities are the float ones rounded, and the backward pass reads
    /// bf16 values exactly as it reads their widened floats.
    #[test]
    fn bf16_kept_values_are_the_rounded_floats() {
        let s = long_shape();
        let q = random(s.batch * s.seq * s.heads * s.head_dim, 21);
        let k = random(s.batch * s.seq * s.kv_heads * s.head_dim, 22);
        let v = random(k.len(), 23);
        let upstream = random(q.len(), 24);
        let probs_len = s.batch * s.heads * s.seq * s.seq;
        let (mut out, mut out_half) = (vec![0.0; q.len()], vec![0.0; q.len()]);
        let mut probs = vec![0.0; probs_len];
        let mut probs_half = vec![bf16::ZERO; probs_len];
        forward(&mut out, KeptMut::Full(&mut probs), &q, &k, &v, s);
        forward(&mut out_half, KeptMut::Half(&mut probs_half), &q, &k, &v, s);
        assert_eq!(out, out_half);
        assert_eq!(probs_half, rounded(&probs).0);

        let run = |kept: [Kept<'_, f64>; 4]| {
            let mut grads = [vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]];
            let [dq, dk, dv] = &mut grads;
            let [p, q, k, v] = kept;
            backward(dq, dk, dv, &upstream, p, q, k, v, s);
            grads
        };
        let [(ph, pw), (qh, qw), (kh, kw), (vh, vw)] = [&probs, &q, &k, &v].map(|x| rounded(x));
        let from_half = run([
            Kept::Half(&ph),
            Kept::Half(&qh),
            Kept::Half(&kh),
            Kept::Half(&vh),
        ]);
        let from_floats = run([
            Kept::Full(&pw),
            Kept::Full(&qw),
            Kept::Full(&kw),
            Kept::Full(&vw),
        ]);
        assert_eq!(from_half, from_floats);
    }

    #[test]
    fn matches_a_direct_computation() {
        check_forward(shape());
        check_forward(long_shape());
    }

    fn check_forward(s: AttentionShape) {
        let q = random(s.batch * s.seq * s.heads * s.head_dim, 5);
        let k = random(s.batch * s.seq * s.kv_heads * s.head_dim, 6);
        let v = random(k.len(), 7);
        let mut out = vec![0.0; q.len()];
        let mut probs = vec![0.0; s.batch * s.heads * s.seq * s.seq];
        forward(&mut out, KeptMut::Full(&mut probs), &q, &k, &v, s);
        let d = s.head_dim;
        for b in 0..s.batch {
            for h in 0..s.heads {
                let g = h / (s.heads / s.kv_heads);
                for t in 0..s.seq {
                    let qi = |i: usize| q[((b * s.seq + t) * s.heads + h) * d + i];
                    let kv = |t2: usize, i: usize| ((b * s.seq + t2) * s.kv_heads + g) * d + i;
                    let scores: Vec<f64> = (0..=t)
                        .map(|t2| {
                            (0..d).map(|i| qi(i) * k[kv(t2, i)]).sum::<f64>() / (d as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let exps: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                    let total: f64 = exps.iter().sum();
                    for i in 0..d {
                        let expected: f64 = (0..=t).map(|t2| exps[t2] / total * v[kv(t2, i)]).sum();
                        let got = out[((b * s.seq + t) * s.heads + h) * d + i];
                        assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");
                    }
                    let p_row = &probs[((b * s.heads + h) * s.seq + t) * s.seq..][..s.seq];
                    assert!(p_row[t + 1..].iter().all(|&x| x == 0.0));
                }
            }
        }
    }
}
