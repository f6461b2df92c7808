//! SwiGLU's gate: `out = silu(gate) · up`, with `silu(x) = x · σ(x)`.

use rayon::prelude::*;

use crate::engine::Float;

use half::bf16;

use super::Kept;

const CHUNK: usize = 4096;

/// Chunk `i` of `kept` as floats: borrowed, or widened into `buf`.
fn chunk<'a, T: Float>(kept: Kept<'a, T>, i: usize, len: usize, buf: &'a mut Vec<T>) -> &'a [T] {
    match kept {
        Kept::Full(values) => &values[i * CHUNK..][..len],
        Kept::Half(_) => {
            buf.resize(len, T::zero());
            kept.load(i * CHUNK, buf);
            buf
        }
    }
}

pub fn forward<T: Float>(out: &mut [T], gate: Kept<'_, T>, up: Kept<'_, T>) {
    assert_eq!(gate.len(), out.len());
    assert_eq!(up.len(), out.len());
    out.par_chunks_mut(CHUNK).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(gate_buf, up_buf), (i, out)| {
            let gate = chunk(gate, i, out.len(), gate_buf);
            let up = chunk(up, i, out.len(), up_buf);
            T::swiglu(out, gate, up);
        },
    );
}

/// [`forward`] on floats, rounding `gate` and `up` into `kept_gate` and `kept_up` chunk by
/// chunk while each chunk is in cache.
pub fn forward_keeping<T: Float>(
    out: &mut [T],
    gate: &[T],
    up: &[T],
    kept_gate: &mut [bf16],
    kept_up: &mut [bf16],
) {
    for len in [gate.len(), up.len(), kept_gate.len(), kept_up.len()] {
        assert_eq!(len, out.len());
    }
    out.par_chunks_mut(CHUNK)
        .zip(gate.par_chunks(CHUNK))
        .zip(up.par_chunks(CHUNK))
        .zip(kept_gate.par_chunks_mut(CHUNK))
        .zip(kept_up.par_chunks_mut(CHUNK))
        .for_each(|((((out, gate), up), kept_gate), kept_up)| {
            T::swiglu(out, gate, up);
            T::round_into_bf16(kept_gate, gate);
            T::round_into_bf16(kept_up, up);
        });
}

/// `dgate = dout · up · σ(g)(1 + g(1 − σ(g)))`, `dup = dout · silu(g)`: overwritten, not
/// accumulated (the model's only writer of both), so no zeroing pass comes first.
pub fn backward<T: Float>(
    dgate: &mut [T],
    dup: &mut [T],
    dout: &[T],
    gate: Kept<'_, T>,
    up: Kept<'_, T>,
) {
    assert_eq!(dup.len(), dgate.len());
    assert_eq!(dout.len(), dgate.len());
    assert_eq!(gate.len(), dgate.len());
    assert_eq!(up.len(), dgate.len());
    dgate
        .par_chunks_mut(CHUNK)
        .zip(dup.par_chunks_mut(CHUNK))
        .zip(dout.par_chunks(CHUNK))
        .enumerate()
        .for_each_init(
            || (Vec::new(), Vec::new()),
            |(gate_buf, up_buf), (i, ((dgate, dup), dout))| {
                let gate = chunk(gate, i, dgate.len(), gate_buf);
                let up = chunk(up, i, dgate.len(), up_buf);
                T::swiglu_backward(dgate, dup, dout, gate, up);
            },
        );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cpu::gradcheck::check_gradients;
    use crate::engine::cpu::{dot, random};

    #[test]
    fn backward_matches_finite_differences() {
        let gate = random(50, 1);
        let up = random(50, 2);
        let upstream = random(50, 3);
        let loss = |v: &[Vec<f64>]| {
            let mut out = vec![0.0; 50];
            forward(&mut out, Kept::Full(&v[0]), Kept::Full(&v[1]));
            dot(&out, &upstream)
        };
        // Overwritten, whatever was there.
        let mut dgate = vec![7.0; 50];
        let mut dup = vec![-3.0; 50];
        backward(
            &mut dgate,
            &mut dup,
            &upstream,
            Kept::Full(&gate),
            Kept::Full(&up),
        );
        check_gradients(&[gate, up], &[dgate, dup], loss);
    }

    /// bf16 inputs read as their widened floats, across chunk boundaries.
    #[test]
    fn bf16_inputs_read_as_their_widened_floats() {
        let n = 2 * CHUNK + 77;
        let [gate, up, upstream] = [1, 2, 3].map(|seed| random(n, seed));
        let half = |x: &[f64]| -> Vec<bf16> { x.iter().map(|&x| x.to_bf16()).collect() };
        let (gate_h, up_h) = (half(&gate), half(&up));
        let widen = |x: &[bf16]| -> Vec<f64> { x.iter().map(|&x| f64::from_bf16(x)).collect() };
        let (gate_w, up_w) = (widen(&gate_h), widen(&up_h));
        let (mut out_h, mut out_w) = (vec![0.0; n], vec![0.0; n]);
        forward(&mut out_h, Kept::Half(&gate_h), Kept::Half(&up_h));
        forward(&mut out_w, Kept::Full(&gate_w), Kept::Full(&up_w));
        assert_eq!(out_h, out_w);
        let (mut out_k, mut kept_gate, mut kept_up) =
            (vec![0.0; n], vec![bf16::ZERO; n], vec![bf16::ZERO; n]);
        forward_keeping(&mut out_k, &gate, &up, &mut kept_gate, &mut kept_up);
        let mut out_f = vec![0.0; n];
        forward(&mut out_f, Kept::Full(&gate), Kept::Full(&up));
        assert_eq!(out_k, out_f, "computed from the floats");
        assert_eq!((kept_gate, kept_up), (gate_h.clone(), up_h.clone()));
        let mut grads_h = [vec![0.0; n], vec![0.0; n]];
        let mut grads_w = [vec![0.0; n], vec![0.0; n]];
        let [dg, du] = &mut grads_h;
        backward(dg, du, &upstream, Kept::Half(&gate_h), Kept::Half(&up_h));
        let [dg, du] = &mut grads_w;
        backward(dg, du, &upstream, Kept::Full(&gate_w), Kept::Full(&up_w));
        assert_eq!(grads_h, grads_w);
    }
}
