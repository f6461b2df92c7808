//! SwiGLU's gate: `out = silu(gate) · up`, with `silu(x) = x · σ(x)`.

use rayon::prelude::*;

use crate::engine::Float;

const CHUNK: usize = 4096;

fn sigmoid<T: Float>(x: T) -> T {
    T::one() / (T::one() + (-x).exp())
}

pub fn forward<T: Float>(out: &mut [T], gate: &[T], up: &[T]) {
    out.par_chunks_mut(CHUNK)
        .zip(gate.par_chunks(CHUNK))
        .zip(up.par_chunks(CHUNK))
        .for_each(|((out, gate), up)| {
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                *o = g * sigmoid(g) * u;
            }
        });
}

/// `dgate += dout · up · σ(g)(1 + g(1 − σ(g)))`, `dup += dout · silu(g)`.
pub fn backward<T: Float>(dgate: &mut [T], dup: &mut [T], dout: &[T], gate: &[T], up: &[T]) {
    dgate
        .par_chunks_mut(CHUNK)
        .zip(dup.par_chunks_mut(CHUNK))
        .zip(dout.par_chunks(CHUNK))
        .zip(gate.par_chunks(CHUNK))
        .zip(up.par_chunks(CHUNK))
        .for_each(|((((dgate, dup), dout), gate), up)| {
            for i in 0..dgate.len() {
                let (g, u, d) = (gate[i], up[i], dout[i]);
                let s = sigmoid(g);
                dgate[i] += d * u * s * (T::one() + g * (T::one() - s));
                dup[i] += d * g * s;
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
        let gate = random(50, 1);
        let up = random(50, 2);
        let upstream = random(50, 3);
        let loss = |v: &[Vec<f64>]| {
            let mut out = vec![0.0; 50];
            forward(&mut out, &v[0], &v[1]);
            dot(&out, &upstream)
        };
        let mut dgate = vec![0.0; 50];
        let mut dup = vec![0.0; 50];
        backward(&mut dgate, &mut dup, &upstream, &gate, &up);
        check_gradients(&[gate, up], &[dgate, dup], loss);
    }
}
