//! `out = inp · wᵀ` through the `gemm` crate; transposes are strides, not copies.

use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use crate::engine::Float;

fn parallelism(rows: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    if threads > 1 && rows >= 16 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// A strided matrix view: element `(row, col)` lives at `ptr + row·row_stride + col·col_stride`.
#[derive(Clone, Copy)]
pub(crate) struct View<T> {
    pub ptr: *const T,
    pub row_stride: usize,
    pub col_stride: usize,
}

/// `dst (m×n, row stride dst_rs) = [dst +] alpha · lhs (m×k) · rhs (k×n)`, single-threaded (for
/// use inside tasks that are already parallel).
///
/// # Safety
/// Every element the views and `dst` address for these sizes must be in bounds, and `dst` must
/// not overlap the inputs or be written by anyone else meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_serial<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    accumulate: bool,
    lhs: View<T>,
    rhs: View<T>,
    alpha: T,
) {
    // SAFETY: forwarded from the caller's contract.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs.ptr,
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.ptr,
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            T::one(),
            alpha,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// Up to this many input rows (decoding: one token), `forward` computes dot products split over
/// the output rows instead of calling `gemm`, whose threads only split many-row products.
const MATVEC_ROWS: usize = 4;

/// `out[r, o] = inp[r] · w[o]` for a few rows `r`, parallel over blocks of outputs.
fn matvec<T: Float>(out: &mut [T], inp: &[T], w: &[T], ic: usize, oc: usize) {
    let threads = rayon::current_num_threads();
    let block = oc.div_ceil(threads).max(16);
    for (x, out) in inp.chunks_exact(ic).zip(out.chunks_exact_mut(oc)) {
        out.par_chunks_mut(block).enumerate().for_each(|(b, outs)| {
            for (j, o) in outs.iter_mut().enumerate() {
                let row = (b * block + j) * ic;
                *o = T::dot(x, &w[row..row + ic]);
            }
        });
    }
}

/// `out[n, oc] = Σ_ic inp[n, ic] · w[oc, ic]`.
pub fn forward<T: Float>(out: &mut [T], inp: &[T], w: &[T], ic: usize, oc: usize) {
    let n = inp.len() / ic;
    assert_eq!(out.len(), n * oc);
    assert_eq!(w.len(), oc * ic);
    if n <= MATVEC_ROWS {
        matvec(out, inp, w, ic, oc);
        return;
    }
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
        // 5 rows go through gemm, 1 and 2 rows through the matrix-vector path.
        for (n, ic, oc) in [(5, 7, 3), (1, 37, 70), (2, 19, 5)] {
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
