//! `out = inp · wᵀ` through the `gemm` crate; transposes are strides, not copies.

use std::any::TypeId;

use super::gemm_bf16::{self as kernel, Operand};
use super::matvec::{Weight, matvec_many};
use crate::engine::{Float, Write};
use gemm::{Parallelism, gemm};
use half::bf16;

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

/// Up to this many input rows (decoding: one token), `forward` and `forward_half` compute dot
/// products split over the output rows instead of calling a gemm, whose threads only split
/// many-row products.
const MATVEC_ROWS: usize = 4;

/// `out[r, o] = inp[r] · w[o]` for a few rows `r`, one parallel region per row.
fn matvec_rows<T: Float>(out: &mut [T], inp: &[T], w: Weight<'_, T>, ic: usize, oc: usize) {
    for (x, out) in inp.chunks_exact(ic).zip(out.chunks_exact_mut(oc)) {
        matvec_many(&mut [out], x, &[w]);
    }
}

/// `out[n, oc] = Σ_ic inp[n, ic] · w[oc, ic]`.
pub fn forward<T: Float>(out: &mut [T], inp: &[T], w: &[T], ic: usize, oc: usize) {
    let n = inp.len() / ic;
    assert_eq!(out.len(), n * oc);
    assert_eq!(w.len(), oc * ic);
    if n <= MATVEC_ROWS {
        matvec_rows(out, inp, Weight::Full(w), ic, oc);
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

/// The rows of a matmul's backward pass, every buffer's length checked against them (the
/// bounds the unsafe products rely on).
fn backward_rows(
    dinp: usize,
    dw: usize,
    dout: usize,
    inp: usize,
    w: usize,
    ic: usize,
    oc: usize,
) -> usize {
    let n = inp / ic;
    assert_eq!(dinp, n * ic);
    assert_eq!(dout, n * oc);
    assert_eq!(dw, oc * ic);
    assert_eq!(w, oc * ic);
    n
}

/// `dinp (+)= dout · w` (as `dinp_write` says) and `dw += doutᵀ · inp`.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Float>(
    dinp: &mut [T],
    dw: &mut [T],
    dout: &[T],
    inp: &[T],
    w: &[T],
    ic: usize,
    oc: usize,
    dinp_write: Write,
) {
    let n = backward_rows(dinp.len(), dw.len(), dout.len(), inp.len(), w.len(), ic, oc);
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
            dinp_write == Write::Accumulate,
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

/// `values` as f32s, when `T` is f32: the bf16 kernel's operands.
fn as_f32<T: Float>(values: &[T]) -> Option<&[f32]> {
    (TypeId::of::<T>() == TypeId::of::<f32>()).then(|| bytemuck::cast_slice(values))
}

/// `values` as f32s, when `T` is f32.
fn as_f32_mut<T: Float>(values: &mut [T]) -> Option<&mut [f32]> {
    (TypeId::of::<T>() == TypeId::of::<f32>()).then(|| bytemuck::cast_slice_mut(values))
}

/// `values` rounded to bf16 and widened back: the operands of a bf16 product in another float
/// type (the f64 of the checks).
fn rounded<T: Float>(values: &[T]) -> Vec<T> {
    values.iter().map(|&x| T::from_bf16(x.to_bf16())).collect()
}

fn widened<T: Float>(values: &[bf16]) -> Vec<T> {
    values.iter().map(|&x| T::from_bf16(x)).collect()
}

fn row_major<V>(values: &[V], cols: usize) -> View<V> {
    View {
        ptr: values.as_ptr(),
        row_stride: cols,
        col_stride: 1,
    }
}

fn transposed<V>(values: &[V], cols: usize) -> View<V> {
    View {
        ptr: values.as_ptr(),
        row_stride: 1,
        col_stride: cols,
    }
}

/// [`forward`] in bf16: `out[n, oc] = Σ_ic bf16(inp[n, ic]) · w[oc, ic]`, summed in f32.
pub fn forward_half<T: Float>(out: &mut [T], inp: &[T], w: &[bf16], ic: usize, oc: usize) {
    let n = inp.len() / ic;
    assert_eq!(out.len(), n * oc);
    assert_eq!(w.len(), oc * ic);
    if n <= MATVEC_ROWS {
        matvec_rows(out, inp, Weight::Half(w), ic, oc);
        return;
    }
    let (Some(out32), Some(inp32)) = (as_f32_mut(out), as_f32(inp)) else {
        forward(out, &rounded(inp), &widened(w), ic, oc);
        return;
    };
    // SAFETY: the asserts bound every index: dst n×oc, lhs n×ic, rhs ic×oc read from w[oc, ic].
    unsafe {
        kernel::gemm(
            n,
            oc,
            ic,
            out32.as_mut_ptr(),
            oc,
            false,
            Operand::F32(row_major(inp32, ic)),
            Operand::Bf16(transposed(w, ic)),
            true,
        );
    }
}

/// [`backward`] in bf16: `dinp (+)= bf16(dout) · w`, `dw += bf16(dout)ᵀ · bf16(inp)`, summed in
/// f32.
#[allow(clippy::too_many_arguments)]
pub fn backward_half<T: Float>(
    dinp: &mut [T],
    dw: &mut [T],
    dout: &[T],
    inp: &[T],
    w: &[bf16],
    ic: usize,
    oc: usize,
    dinp_write: Write,
) {
    let n = backward_rows(dinp.len(), dw.len(), dout.len(), inp.len(), w.len(), ic, oc);
    let (Some(dinp32), Some(dw32), Some(dout32), Some(inp32)) =
        (as_f32_mut(dinp), as_f32_mut(dw), as_f32(dout), as_f32(inp))
    else {
        backward(
            dinp,
            dw,
            &rounded(dout),
            &rounded(inp),
            &widened(w),
            ic,
            oc,
            dinp_write,
        );
        return;
    };
    // SAFETY: as in `backward`, the asserts bound every index: dinp n×ic += dout n×oc · w
    // oc×ic; dw oc×ic += doutᵀ (oc×n) · inp n×ic.
    unsafe {
        kernel::gemm(
            n,
            ic,
            oc,
            dinp32.as_mut_ptr(),
            ic,
            dinp_write == Write::Accumulate,
            Operand::F32(row_major(dout32, oc)),
            Operand::Bf16(row_major(w, ic)),
            true,
        );
        kernel::gemm(
            oc,
            ic,
            n,
            dw32.as_mut_ptr(),
            ic,
            true,
            Operand::F32(transposed(dout32, oc)),
            Operand::F32(row_major(inp32, ic)),
            true,
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
    fn half_products_match_f64_sums_of_rounded_operands() {
        let (n, ic, oc) = (37, 50, 70);
        let f32s = |v: Vec<f64>| -> Vec<f32> { v.iter().map(|&x| x as f32).collect() };
        let r = |x: f32| f64::from(bf16::from_f32(x).to_f32());
        let (inp, dout) = (f32s(random(n * ic, 1)), f32s(random(n * oc, 2)));
        let w: Vec<bf16> = random(oc * ic, 3)
            .iter()
            .map(|&x| bf16::from_f64(x))
            .collect();
        let wf = |o: usize, i: usize| w[o * ic + i].to_f64();
        let close = |got: f32, terms: &mut dyn Iterator<Item = f64>, what: &str| {
            let (mut sum, mut scale) = (0.0, 0.0);
            for t in terms {
                sum += t;
                scale += t.abs();
            }
            let got = f64::from(got);
            assert!((got - sum).abs() <= 1e-5 * scale, "{what}: {got} vs {sum}");
        };
        let mut out = vec![0f32; n * oc];
        forward_half(&mut out, &inp, &w, ic, oc);
        for (row, o) in (0..n).flat_map(|row| (0..oc).map(move |o| (row, o))) {
            let mut terms = (0..ic).map(|i| r(inp[row * ic + i]) * wf(o, i));
            close(out[row * oc + o], &mut terms, "out");
        }
        let (dinp0, dw0) = (f32s(random(n * ic, 4)), f32s(random(oc * ic, 5)));
        let mut overwritten = dinp0.clone();
        backward_half(
            &mut overwritten,
            &mut dw0.clone(),
            &dout,
            &inp,
            &w,
            ic,
            oc,
            Write::Overwrite,
        );
        let (mut dinp, mut dw) = (dinp0.clone(), dw0.clone());
        backward_half(
            &mut dinp,
            &mut dw,
            &dout,
            &inp,
            &w,
            ic,
            oc,
            Write::Accumulate,
        );
        for (row, i) in (0..n).flat_map(|row| (0..ic).map(move |i| (row, i))) {
            let products = (0..oc).map(|o| r(dout[row * oc + o]) * wf(o, i));
            close(
                overwritten[row * ic + i],
                &mut products.clone(),
                "dinp overwritten",
            );
            let before = f64::from(dinp0[row * ic + i]);
            let products = (0..oc).map(|o| r(dout[row * oc + o]) * wf(o, i));
            close(
                dinp[row * ic + i],
                &mut std::iter::once(before).chain(products),
                "dinp",
            );
        }
        for (o, i) in (0..oc).flat_map(|o| (0..ic).map(move |i| (o, i))) {
            let before = f64::from(dw0[o * ic + i]);
            let products = (0..n).map(|row| r(dout[row * oc + o]) * r(inp[row * ic + i]));
            close(
                dw[o * ic + i],
                &mut std::iter::once(before).chain(products),
                "dw",
            );
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
        // Overwritten whatever was there, or added to zeros.
        for (write, start) in [(Write::Overwrite, 7.0), (Write::Accumulate, 0.0)] {
            let mut dinp = vec![start; n * ic];
            let mut dw = vec![0.0; oc * ic];
            backward(&mut dinp, &mut dw, &upstream, &inp, &w, ic, oc, write);
            check_gradients(&[inp.clone(), w.clone()], &[dinp, dw], loss);
        }
    }
}
