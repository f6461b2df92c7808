//! `out = inp · wᵀ` through the `gemm` crate; transposes are strides, not copies.

use gemm::{Parallelism, gemm};

use crate::engine::Float;

fn parallelism(rows: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    if threads > 1 && rows >= 16 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// `out[n, oc] = Σ_ic inp[n, ic] · w[oc, ic]`.
pub fn forward<T: Float>(out: &mut [T], inp: &[T], w: &[T], ic: usize, oc: usize) {
    let n = inp.len() / ic;
    assert_eq!(out.len(), n * oc);
    assert_eq!(w.len(), oc * ic);
    // SAFETY: the asserts above bound every index gemm touches: dst n×oc (row stride oc), lhs
    // n×ic (row stride ic), rhs ic×oc read from w[oc, ic] (row stride 1, column stride ic).
    unsafe {
        gemm(
            n,
            oc,
            ic,
            out.as_mut_ptr(),
            1,
            oc as isize,
            false,
            inp.as_ptr(),
            1,
            ic as isize,
            w.as_ptr(),
            ic as isize,
            1,
            T::zero(),
            T::one(),
            false,
            false,
            false,
            parallelism(n),
        );
    }
}

/// `dinp += dout · w` and `dw += doutᵀ · inp`.
pub fn backward<T: Float>(
    dinp: &mut [T],
    dw: &mut [T],
    dout: &[T],
    inp: &[T],
    w: &[T],
    ic: usize,
    oc: usize,
) {
    let n = inp.len() / ic;
    assert_eq!(dinp.len(), n * ic);
    assert_eq!(dout.len(), n * oc);
    assert_eq!(dw.len(), oc * ic);
    assert_eq!(w.len(), oc * ic);
    // SAFETY: as in `forward`, the asserts bound every index: dinp n×ic += dout n×oc · w oc×ic;
    // dw oc×ic += doutᵀ (oc×n, row stride 1, column stride oc) · inp n×ic.
    unsafe {
        gemm(
            n,
            ic,
            oc,
            dinp.as_mut_ptr(),
            1,
            ic as isize,
            true,
            dout.as_ptr(),
            1,
            oc as isize,
            w.as_ptr(),
            1,
            ic as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            parallelism(n),
        );
        gemm(
            oc,
            ic,
            n,
            dw.as_mut_ptr(),
            1,
            ic as isize,
            true,
            dout.as_ptr(),
            oc as isize,
            1,
            inp.as_ptr(),
            1,
            ic as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            parallelism(oc),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cpu::gradcheck::check_gradients;
    use crate::engine::cpu::{dot, random};

    #[test]
    fn forward_matches_naive_loops() {
        let (n, ic, oc) = (5, 7, 3);
        let inp = random(n * ic, 1);
        let w = random(oc * ic, 2);
        let mut out = vec![0.0; n * oc];
        forward(&mut out, &inp, &w, ic, oc);
        for r in 0..n {
            for o in 0..oc {
                let expected: f64 = (0..ic).map(|i| inp[r * ic + i] * w[o * ic + i]).sum();
                assert!((out[r * oc + o] - expected).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let (n, ic, oc) = (6, 5, 4);
        let inp = random(n * ic, 3);
        let w = random(oc * ic, 4);
        let upstream = random(n * oc, 5);
        let loss = |x: &[Vec<f64>]| {
            let mut out = vec![0.0; n * oc];
            forward(&mut out, &x[0], &x[1], ic, oc);
            dot(&out, &upstream)
        };
        let mut dinp = vec![0.0; n * ic];
        let mut dw = vec![0.0; oc * ic];
        backward(&mut dinp, &mut dw, &upstream, &inp, &w, ic, oc);
        check_gradients(&[inp, w], &[dinp, dw], loss);
    }
}
