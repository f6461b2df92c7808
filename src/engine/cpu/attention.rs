//! Causal self-attention with grouped-query heads: query head `h` reads kv head
//! `h / (heads / kv_heads)`. Layouts: `q`, `out` are `[batch, seq, heads, head_dim]`; `k`, `v`
//! are `[batch, seq, kv_heads, head_dim]`; `probs` is `[batch, heads, seq, seq]`.

use rayon::prelude::*;

use super::SendPtr;
use crate::engine::{AttentionShape, Float};

pub fn forward<T: Float>(
    out: &mut [T],
    probs: &mut [T],
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
    assert_eq!(out.len(), q.len());
    assert_eq!(probs.len(), batch * heads * seq * seq);
    let group = heads / kv_heads;
    let scale = T::from_f64(1.0 / (head_dim as f64).sqrt());
    let out_ptr = SendPtr(out.as_mut_ptr());
    probs
        .par_chunks_mut(seq * seq)
        .enumerate()
        .for_each(|(bh, probs)| {
            let (b, h) = (bh / heads, bh % heads);
            let g = h / group;
            let out_ptr = &out_ptr;
            for t in 0..seq {
                let q_row = &q[((b * seq + t) * heads + h) * head_dim..][..head_dim];
                let p = &mut probs[t * seq..(t + 1) * seq];
                let mut max = T::neg_infinity();
                for (t2, pt2) in p.iter_mut().enumerate().take(t + 1) {
                    let k_row = &k[((b * seq + t2) * kv_heads + g) * head_dim..][..head_dim];
                    let score = dot(q_row, k_row) * scale;
                    *pt2 = score;
                    max = max.max(score);
                }
                let mut sum = T::zero();
                for pt2 in p.iter_mut().take(t + 1) {
                    *pt2 = (*pt2 - max).exp();
                    sum += *pt2;
                }
                let inv = T::one() / sum;
                for pt2 in p.iter_mut().take(t + 1) {
                    *pt2 *= inv;
                }
                for pt2 in p.iter_mut().skip(t + 1) {
                    *pt2 = T::zero();
                }
                // SAFETY: this task alone writes head `h` of batch `b`; the row lies inside `out`
                // by the length asserts above.
                let o = unsafe {
                    std::slice::from_raw_parts_mut(
                        out_ptr.0.add(((b * seq + t) * heads + h) * head_dim),
                        head_dim,
                    )
                };
                o.fill(T::zero());
                for (t2, &pt2) in p.iter().enumerate().take(t + 1) {
                    let v_row = &v[((b * seq + t2) * kv_heads + g) * head_dim..][..head_dim];
                    for (oi, &vi) in o.iter_mut().zip(v_row) {
                        *oi += pt2 * vi;
                    }
                }
            }
        });
}

#[allow(clippy::too_many_arguments)]
pub fn backward<T: Float>(
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
    dout: &[T],
    probs: &[T],
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
    assert_eq!(dq.len(), batch * seq * heads * head_dim);
    assert_eq!(dk.len(), batch * seq * kv_heads * head_dim);
    assert_eq!(dv.len(), dk.len());
    let group = heads / kv_heads;
    let scale = T::from_f64(1.0 / (head_dim as f64).sqrt());
    let (dq_ptr, dk_ptr, dv_ptr) = (
        SendPtr(dq.as_mut_ptr()),
        SendPtr(dk.as_mut_ptr()),
        SendPtr(dv.as_mut_ptr()),
    );
    // One task per (batch, kv head): it alone writes that kv head's dk, dv and its query heads' dq.
    (0..batch * kv_heads).into_par_iter().for_each(|bg| {
        let (b, g) = (bg / kv_heads, bg % kv_heads);
        let (dq_ptr, dk_ptr, dv_ptr) = (&dq_ptr, &dk_ptr, &dv_ptr);
        let row = |ptr: &SendPtr<T>, index: usize| {
            // SAFETY: rows touched by this task belong to batch `b` and kv head `g` (or its
            // query heads), disjoint from every other task's; indices are in bounds by the
            // length asserts above.
            unsafe { std::slice::from_raw_parts_mut(ptr.0.add(index * head_dim), head_dim) }
        };
        for h in g * group..(g + 1) * group {
            for t in 0..seq {
                let q_index = (b * seq + t) * heads + h;
                let q_row = &q[q_index * head_dim..][..head_dim];
                let do_row = &dout[q_index * head_dim..][..head_dim];
                let p = &probs[((b * heads + h) * seq + t) * seq..][..seq];
                // d(score) = p · (dp − Σ p·dp), with dp[t2] = dout · v[t2].
                let mut weighted = T::zero();
                for (t2, &pt2) in p.iter().enumerate().take(t + 1) {
                    let v_row = &v[((b * seq + t2) * kv_heads + g) * head_dim..][..head_dim];
                    weighted += pt2 * dot(do_row, v_row);
                }
                let dq_row = row(dq_ptr, q_index);
                for (t2, &pt2) in p.iter().enumerate().take(t + 1) {
                    let kv_index = (b * seq + t2) * kv_heads + g;
                    let v_row = &v[kv_index * head_dim..][..head_dim];
                    let k_row = &k[kv_index * head_dim..][..head_dim];
                    let dp = dot(do_row, v_row);
                    let dscore = pt2 * (dp - weighted) * scale;
                    let dv_row = row(dv_ptr, kv_index);
                    for (dvi, &doi) in dv_row.iter_mut().zip(do_row) {
                        *dvi += pt2 * doi;
                    }
                    let dk_row = row(dk_ptr, kv_index);
                    for (dki, &qi) in dk_row.iter_mut().zip(q_row) {
                        *dki += dscore * qi;
                    }
                    for (dqi, &ki) in dq_row.iter_mut().zip(k_row) {
                        *dqi += dscore * ki;
                    }
                }
            }
        }
    });
}

#[inline]
fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    let mut acc = T::zero();
    for (&x, &y) in a.iter().zip(b) {
        acc += x * y;
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn backward_matches_finite_differences() {
        let s = shape();
        let q = random(s.batch * s.seq * s.heads * s.head_dim, 1);
        let k = random(s.batch * s.seq * s.kv_heads * s.head_dim, 2);
        let v = random(k.len(), 3);
        let upstream = random(q.len(), 4);
        let run = |q: &[f64], k: &[f64], v: &[f64]| {
            let mut out = vec![0.0; q.len()];
            let mut probs = vec![0.0; s.batch * s.heads * s.seq * s.seq];
            forward(&mut out, &mut probs, q, k, v, s);
            (out, probs)
        };
        let loss = |x: &[Vec<f64>]| dot_all(&run(&x[0], &x[1], &x[2]).0, &upstream);
        let (_, probs) = run(&q, &k, &v);
        let mut dq = vec![0.0; q.len()];
        let mut dk = vec![0.0; k.len()];
        let mut dv = vec![0.0; v.len()];
        backward(&mut dq, &mut dk, &mut dv, &upstream, &probs, &q, &k, &v, s);
        check_gradients(&[q, k, v], &[dq, dk, dv], loss);
    }

    #[test]
    fn the_first_position_attends_only_to_itself() {
        let s = shape();
        let q = random(s.batch * s.seq * s.heads * s.head_dim, 5);
        let k = random(s.batch * s.seq * s.kv_heads * s.head_dim, 6);
        let v = random(k.len(), 7);
        let mut out = vec![0.0; q.len()];
        let mut probs = vec![0.0; s.batch * s.heads * s.seq * s.seq];
        forward(&mut out, &mut probs, &q, &k, &v, s);
        // Head 3 reads kv head 1; at t = 0 its output is v[t=0, kv head 1].
        let h = 3;
        assert_eq!(&out[h * 3..h * 3 + 3], &v[3..6]);
        assert_eq!(probs[(h * s.seq) * s.seq], 1.0);
        assert_eq!(probs[(h * s.seq) * s.seq + 1], 0.0);
    }
}
