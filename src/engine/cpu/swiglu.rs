//! SwiGLU's gate: `out = silu(gate) · up`, with `silu(x) = x · σ(x)`.

use rayon::prelude::*;

use crate::engine::Float;

const CHUNK: usize = 4096;

pub fn forward<T: Float>(out: &mut [T], gate: &[T], up: &[T]) {
    out.par_chunks_mut(CHUNK)
        .zip(gate.par_chunks(CHUNK))
        .zip(up.par_chunks(CHUNK))
        .for_each(|((out, gate), up)| T::swiglu(out, gate, up));
}

/// `dgate = dout · up · σ(g)(1 + g(1 − σ(g)))`, `dup = dout · silu(g)`: overwritten, not
/// accumulated (the model's only writer of both), so no zeroing pass comes first.
pub fn backward<T: Float>(dgate: &mut [T], dup: &mut [T], dout: &[T], gate: &[T], up: &[T]) {
    assert_eq!(dup.len(), dgate.len());
    assert_eq!(dout.len(), dgate.len());
    dgate
        .par_chunks_mut(CHUNK)
        .zip(dup.par_chunks_mut(CHUNK))
        .zip(dout.par_chunks(CHUNK))
        .zip(gate.par_chunks(CHUNK))
        .zip(up.par_chunks(CHUNK))
        .for_each(|((((dgate, dup), dout), gate), up)| {
            T::swiglu_backward(dgate, dup, dout, gate, up);
        });
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
            forward(&mut out, &v[0], &v[1]);
            dot(&out, &upstream)
        };
        // Overwritten, whatever was there.
        let mut dgate = vec![7.0; 50];
        let mut dup = vec![-3.0; 50];
        backward(&mut dgate, &mut dup, &upstream, &gate, &up);
        check_gradients(&[gate, up], &[dgate, dup], loss);
    }
}
