//! Matrix-vector products for decoding (one input row): `out[o] = x · w[o]` with f32 or bf16
//! weights. At batch 1 a matmul is a stream over its weight, so the kernels read each weight
//! once, four rows at a time against the same loads of `x`, and several matrices that share an
//! input (q/k/v, gate/up) run as one parallel region: fewer hand-offs between threads per token.
//!
//! A bf16 product rounds `x` to bf16, as the bf16 matmuls of the full forward pass do, so every
//! path below (native bf16 dot products, AVX-512 or AVX2 widening, portable) computes the same
//! exact products `bf16(x[i]) · w[o, i]` and differs from the others only in the order of its
//! f32 sums.

use std::any::TypeId;

use half::bf16;
use rayon::prelude::*;

use super::SendPtr;
use crate::engine::Float;
use crate::engine::precision::bf16_instructions_disabled;

/// A weight of `out.len() × x.len()` values, row-major, as the products read it.
#[derive(Clone, Copy)]
pub(crate) enum Weight<'a, T> {
    Full(&'a [T]),
    Half(&'a [bf16]),
}

/// The instructions the f32 kernels run on, chosen once per call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// `vdpbf16ps` (AVX512-BF16) for bf16 weights, AVX-512 FMA for f32 ones.
    Avx512Bf16,
    /// AVX-512 FMA, bf16 widened to f32 with shifts.
    Avx512,
    /// AVX2 FMA, bf16 widened to f32 with shifts.
    Avx2,
    Portable,
}

impl Kernel {
    /// The fastest kernel this CPU runs (bf16 dot products only unless disabled, see
    /// [`bf16_instructions_disabled`]).
    pub(crate) fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512bw") && has!("avx512vl") {
                if has!("avx512bf16") && !bf16_instructions_disabled() {
                    return Kernel::Avx512Bf16;
                }
                return Kernel::Avx512;
            }
            if has!("avx2") && has!("fma") {
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    }

    /// Every kernel this CPU runs, the portable one last (for the tests).
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Kernel> {
        let mut kernels = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if Kernel::detect() == Kernel::Avx512Bf16 {
                kernels.push(Kernel::Avx512Bf16);
            }
            if has!("avx512f") && has!("avx512bw") && has!("avx512vl") {
                kernels.push(Kernel::Avx512);
            }
            if has!("avx2") && has!("fma") {
                kernels.push(Kernel::Avx2);
            }
        }
        kernels.push(Kernel::Portable);
        kernels
    }
}

/// `x` in the forms the kernels read: as given, rounded to bf16 and widened back, and packed
/// as bf16 (the last two only when a bf16 weight needs them).
struct Input<'a> {
    x: &'a [f32],
    rounded: Vec<f32>,
    packed: Vec<bf16>,
}

impl<'a> Input<'a> {
    fn new(x: &'a [f32], any_half: bool) -> Self {
        let packed: Vec<bf16> = if any_half {
            x.iter().map(|&v| bf16::from_f32(v)).collect()
        } else {
            Vec::new()
        };
        Input {
            x,
            rounded: packed.iter().map(|v| v.to_f32()).collect(),
            packed,
        }
    }
}

/// Rows per parallel task: a few tasks per thread, so that work stealing can even out the
/// threads, in multiples of four (the kernels' row tile).
fn block_rows(total: usize, threads: usize) -> usize {
    (total.div_ceil(threads * 4).max(16)).next_multiple_of(4)
}

/// Runs `rows(j, first, out)` over disjoint blocks of the rows of every `outs[j]`, in one
/// parallel region.
fn parallel_rows<T: Send + Sync>(
    outs: &mut [&mut [T]],
    rows: impl Fn(usize, usize, &mut [T]) + Sync,
) {
    let threads = rayon::current_num_threads();
    let total: usize = outs.iter().map(|o| o.len()).sum();
    if threads <= 1 || total < 64 {
        for (j, out) in outs.iter_mut().enumerate() {
            rows(j, 0, out);
        }
        return;
    }
    let block = block_rows(total, threads);
    let mut tasks = Vec::new();
    for (j, out) in outs.iter().enumerate() {
        for first in (0..out.len()).step_by(block) {
            tasks.push((j, first, block.min(out.len() - first)));
        }
    }
    let ptrs: Vec<SendPtr<T>> = outs.iter_mut().map(|o| SendPtr(o.as_mut_ptr())).collect();
    tasks.par_iter().for_each(|&(j, first, len)| {
        // SAFETY: the tasks cover disjoint row ranges [first, first + len) within each
        // `outs[j]` (the ranges step by `block` and are cut at its length), and `outs` stays
        // borrowed mutably for the whole region.
        let out = unsafe { std::slice::from_raw_parts_mut(ptrs[j].0.add(first), len) };
        rows(j, first, out);
    });
}

/// `outs[j][o] = x · ws[j][o]` for every `j`, in one parallel region over all the outputs.
pub(crate) fn matvec_many<T: Float>(outs: &mut [&mut [T]], x: &[T], ws: &[Weight<'_, T>]) {
    assert_eq!(outs.len(), ws.len());
    let ic = x.len();
    for (out, w) in outs.iter().zip(ws) {
        let len = match w {
            Weight::Full(w) => w.len(),
            Weight::Half(w) => w.len(),
        };
        assert_eq!(len, out.len() * ic, "weight size against output × input");
    }
    if TypeId::of::<T>() == TypeId::of::<f32>() {
        let mut outs32: Vec<&mut [f32]> = outs
            .iter_mut()
            .map(|o| bytemuck::cast_slice_mut(&mut o[..]))
            .collect();
        let ws32: Vec<Weight<'_, f32>> = ws
            .iter()
            .map(|w| match *w {
                Weight::Full(w) => Weight::Full(bytemuck::cast_slice(w)),
                Weight::Half(w) => Weight::Half(w),
            })
            .collect();
        matvec_many_f32(
            &mut outs32,
            bytemuck::cast_slice(x),
            &ws32,
            Kernel::detect(),
        );
        return;
    }
    let rounded: Vec<T> = x.iter().map(|&v| T::from_bf16(v.to_bf16())).collect();
    parallel_rows(outs, |j, first, out| {
        for (r, o) in out.iter_mut().enumerate() {
            let row = (first + r) * ic..(first + r + 1) * ic;
            *o = match ws[j] {
                Weight::Full(w) => T::dot(x, &w[row]),
                Weight::Half(w) => w[row]
                    .iter()
                    .zip(&rounded)
                    .fold(T::zero(), |acc, (&w, &x)| acc + T::from_bf16(w) * x),
            };
        }
    });
}

/// [`matvec_many`] in f32 with a given kernel (which the CPU must run).
pub(crate) fn matvec_many_f32(
    outs: &mut [&mut [f32]],
    x: &[f32],
    ws: &[Weight<'_, f32>],
    kernel: Kernel,
) {
    let ic = x.len();
    let any_half = ws.iter().any(|w| matches!(w, Weight::Half(_)));
    let input = Input::new(x, any_half);
    parallel_rows(outs, |j, first, out| {
        let rows = first * ic..(first + out.len()) * ic;
        match ws[j] {
            Weight::Full(w) => rows_f32(out, input.x, &w[rows], kernel),
            Weight::Half(w) => rows_half(out, &input, &w[rows], kernel),
        }
    });
}

/// `out[o] = x · w[o]` for the `out.len()` rows of `w`.
fn rows_f32(out: &mut [f32], x: &[f32], w: &[f32], kernel: Kernel) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `detect` chose (or the tests passed) a kernel whose features the CPU has.
        Kernel::Avx512Bf16 | Kernel::Avx512 => unsafe { x86::rows_f32_avx512(out, x, w) },
        _ => {
            for (o, row) in out.iter_mut().zip(w.chunks_exact(x.len())) {
                *o = match kernel {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: the CPU has AVX2 and FMA (see above).
                    Kernel::Avx2 => unsafe { crate::engine::float::dot_f32_avx2(x, row) },
                    _ => crate::engine::float::dot_portable(x, row),
                };
            }
        }
    }
}

/// `out[o] = bf16(x) · w[o]` for the `out.len()` rows of `w`.
fn rows_half(out: &mut [f32], input: &Input<'_>, w: &[bf16], kernel: Kernel) {
    let ic = input.x.len();
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX512-BF16 (see `rows_f32`).
        Kernel::Avx512Bf16 => unsafe { x86::rows_half_dpbf16(out, &input.packed, w) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512 F, BW and VL (see `rows_f32`).
        Kernel::Avx512 => unsafe { x86::rows_half_avx512(out, &input.rounded, w) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA (see `rows_f32`).
        Kernel::Avx2 => unsafe { x86::rows_half_avx2(out, &input.rounded, w) },
        _ => {
            for (o, row) in out.iter_mut().zip(w.chunks_exact(ic)) {
                *o = portable_dot_half(&input.rounded, row);
            }
        }
    }
}

fn portable_dot_half(x: &[f32], w: &[bf16]) -> f32 {
    let mut sums = [0.0f32; 8];
    let (x8, w8) = (x.chunks_exact(8), w.chunks_exact(8));
    let tail: f32 = x8
        .remainder()
        .iter()
        .zip(w8.remainder())
        .map(|(a, b)| a * b.to_f32())
        .sum();
    for (a, b) in x8.zip(w8) {
        for i in 0..8 {
            sums[i] += a[i] * b[i].to_f32();
        }
    }
    sums.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::bf16;

    /// A mask of the low `n` lanes (n ≤ 32).
    fn low_lanes(n: usize) -> u32 {
        if n >= 32 { u32::MAX } else { (1u32 << n) - 1 }
    }

    /// f32 rows four at a time, 16 lanes per FMA, the tail of each row under a mask.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F; `w.len() == out.len() * x.len()`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn rows_f32_avx512(out: &mut [f32], x: &[f32], w: &[f32]) {
        let ic = x.len();
        assert_eq!(w.len(), out.len() * ic);
        let full = ic / 16 * 16;
        let tail = low_lanes(ic - full) as __mmask16;
        let (px, pw) = (x.as_ptr(), w.as_ptr());
        let mut o = 0;
        // SAFETY: every load reads lanes i..i+16 ≤ ic (or the masked tail below ic) of `x` and
        // of rows o..o+4 < out.len() of `w`, which the assert bounds.
        unsafe {
            while o < out.len() {
                // The last tile of fewer than four rows repeats its last row in the spare lanes.
                let tile = (out.len() - o).min(4);
                let r = [0, 1, 2, 3].map(|k| pw.add((o + k.min(tile - 1)) * ic));
                let mut acc = [_mm512_setzero_ps(); 4];
                let mut i = 0;
                while i < full {
                    let xv = _mm512_loadu_ps(px.add(i));
                    for k in 0..4 {
                        acc[k] = _mm512_fmadd_ps(xv, _mm512_loadu_ps(r[k].add(i)), acc[k]);
                    }
                    i += 16;
                }
                if full < ic {
                    let xv = _mm512_maskz_loadu_ps(tail, px.add(full));
                    for k in 0..4 {
                        let wv = _mm512_maskz_loadu_ps(tail, r[k].add(full));
                        acc[k] = _mm512_fmadd_ps(xv, wv, acc[k]);
                    }
                }
                for k in 0..tile {
                    out[o + k] = _mm512_reduce_add_ps(acc[k]);
                }
                o += tile;
            }
        }
    }

    /// 16 bf16 weights at `p` (under `mask`) widened to f32: a bf16 is the top half of an f32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn widen16(p: *const bf16, mask: __mmask16) -> __m512 {
        // SAFETY: the caller guarantees the masked lanes are in bounds.
        let halves = unsafe { _mm256_maskz_loadu_epi16(mask, p.cast()) };
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(halves)))
    }

    /// bf16 rows four at a time, widened to f32 and multiplied by the rounded input with FMA.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VL; `w.len() == out.len() * x.len()`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn rows_half_avx512(out: &mut [f32], x: &[f32], w: &[bf16]) {
        let ic = x.len();
        assert_eq!(w.len(), out.len() * ic);
        let full = ic / 16 * 16;
        let tail = low_lanes(ic - full) as __mmask16;
        let (px, pw) = (x.as_ptr(), w.as_ptr());
        let mut o = 0;
        // SAFETY: as in `rows_f32_avx512`: lanes below ic of `x` and of rows below out.len().
        unsafe {
            while o < out.len() {
                let tile = (out.len() - o).min(4);
                let r = [0, 1, 2, 3].map(|k| pw.add((o + k.min(tile - 1)) * ic));
                let mut acc = [_mm512_setzero_ps(); 4];
                let mut i = 0;
                while i < full {
                    let xv = _mm512_loadu_ps(px.add(i));
                    for k in 0..4 {
                        acc[k] = _mm512_fmadd_ps(xv, widen16(r[k].add(i), 0xffff), acc[k]);
                    }
                    i += 16;
                }
                if full < ic {
                    let xv = _mm512_maskz_loadu_ps(tail, px.add(full));
                    for k in 0..4 {
                        acc[k] = _mm512_fmadd_ps(xv, widen16(r[k].add(full), tail), acc[k]);
                    }
                }
                for k in 0..tile {
                    out[o + k] = _mm512_reduce_add_ps(acc[k]);
                }
                o += tile;
            }
        }
    }

    /// 32 bf16 values at `p` (under `mask`) as a bf16 vector: the same bits as 32 16-bit lanes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn load_bh(p: *const i16, mask: u32) -> __m512bh {
        // SAFETY: the caller guarantees the masked lanes are in bounds; both types are 512
        // bits.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_maskz_loadu_epi16(mask, p)) }
    }

    /// bf16 rows four at a time with `vdpbf16ps`: 32 products per instruction, summed in pairs
    /// into 16 f32 lanes.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and BF16; `w.len() == out.len() * x.len()`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn rows_half_dpbf16(out: &mut [f32], x: &[bf16], w: &[bf16]) {
        let ic = x.len();
        assert_eq!(w.len(), out.len() * ic);
        let full = ic / 32 * 32;
        let tail = low_lanes(ic - full);
        let (px, pw) = (x.as_ptr().cast::<i16>(), w.as_ptr().cast::<i16>());
        let mut o = 0;
        // SAFETY: as in `rows_f32_avx512`: lanes below ic of `x` and of rows below out.len().
        unsafe {
            while o < out.len() {
                let tile = (out.len() - o).min(4);
                let r = [0, 1, 2, 3].map(|k| pw.add((o + k.min(tile - 1)) * ic));
                let mut acc = [_mm512_setzero_ps(); 4];
                let mut i = 0;
                while i < full {
                    let xv = load_bh(px.add(i), u32::MAX);
                    for k in 0..4 {
                        acc[k] = _mm512_dpbf16_ps(acc[k], xv, load_bh(r[k].add(i), u32::MAX));
                    }
                    i += 32;
                }
                if full < ic {
                    let xv = load_bh(px.add(full), tail);
                    for k in 0..4 {
                        acc[k] = _mm512_dpbf16_ps(acc[k], xv, load_bh(r[k].add(full), tail));
                    }
                }
                for k in 0..tile {
                    out[o + k] = _mm512_reduce_add_ps(acc[k]);
                }
                o += tile;
            }
        }
    }

    /// bf16 rows one at a time with AVX2: 8 weights widened per FMA, two running sums.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; `w.len() == out.len() * x.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn rows_half_avx2(out: &mut [f32], x: &[f32], w: &[bf16]) {
        let ic = x.len();
        assert_eq!(w.len(), out.len() * ic);
        let px = x.as_ptr();
        for (o, row) in out.iter_mut().zip(w.chunks_exact(ic)) {
            let pw = row.as_ptr();
            let mut acc = [_mm256_setzero_ps(); 2];
            let mut i = 0;
            // SAFETY: every load reads 8 lanes at i + 8 ≤ ic of `x` and of this row.
            unsafe {
                while i + 8 <= ic {
                    let halves = _mm_loadu_si128(pw.add(i).cast());
                    let wv =
                        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(halves)));
                    let s = &mut acc[(i / 8) % 2];
                    *s = _mm256_fmadd_ps(_mm256_loadu_ps(px.add(i)), wv, *s);
                    i += 8;
                }
                let mut lanes = [0.0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(acc[0], acc[1]));
                let mut total: f32 = lanes.iter().sum();
                for k in i..ic {
                    total += x[k] * row[k].to_f32();
                }
                *o = total;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 23) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Each kernel against f64 sums of the same (rounded) operands, over sizes with and without
    /// tails and row counts that are and are not multiples of the four-row tile.
    #[test]
    fn every_kernel_matches_f64_sums() {
        let kernels = Kernel::available();
        assert!(kernels.contains(&Kernel::Portable));
        for (ic, oc) in [
            (288, 768),
            (768, 288),
            (37, 7),
            (1, 3),
            (33, 65),
            (16, 4),
            (100, 1),
        ] {
            let x = values(ic, ic as u64);
            let w = values(ic * oc, oc as u64 + 7);
            let wh: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let xr: Vec<f64> = x.iter().map(|&v| bf16::from_f32(v).to_f64()).collect();
            for &kernel in &kernels {
                let (mut full, mut half) = (vec![0.0f32; oc], vec![0.0f32; oc]);
                matvec_many_f32(
                    &mut [&mut full, &mut half],
                    &x,
                    &[Weight::Full(&w), Weight::Half(&wh)],
                    kernel,
                );
                for o in 0..oc {
                    let row = o * ic..(o + 1) * ic;
                    let exact: f64 = x
                        .iter()
                        .zip(&w[row.clone()])
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum();
                    let exact_half: f64 =
                        xr.iter().zip(&wh[row]).map(|(&a, b)| a * b.to_f64()).sum();
                    // f32 sums of ic products of magnitude ≤ 1: a few ulps of the sum's scale.
                    let tol = 1e-6 * ic as f64;
                    assert!(
                        (full[o] as f64 - exact).abs() < tol,
                        "{kernel:?} f32 {ic}×{oc} row {o}"
                    );
                    assert!(
                        (half[o] as f64 - exact_half).abs() < tol,
                        "{kernel:?} bf16 {ic}×{oc} row {o}"
                    );
                }
            }
        }
    }

    /// The generic path (f64, the checks' float type) and the f32 one agree, one region or many.
    #[test]
    fn many_matrices_match_one_at_a_time() {
        let (ic, ocs) = (48, [48, 16, 200]);
        let x = values(ic, 1);
        let ws: Vec<Vec<f32>> = ocs.iter().map(|&oc| values(ic * oc, oc as u64)).collect();
        let mut outs: Vec<Vec<f32>> = ocs.iter().map(|&oc| vec![0.0; oc]).collect();
        let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(|o| &mut o[..]).collect();
        let weights: Vec<Weight<'_, f32>> = ws.iter().map(|w| Weight::Full(&w[..])).collect();
        matvec_many(&mut refs, &x, &weights);
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        for (w, out) in ws.iter().zip(&outs) {
            let w64: Vec<f64> = w.iter().map(|&v| v as f64).collect();
            let mut out64 = vec![0.0f64; out.len()];
            matvec_many(&mut [&mut out64[..]], &x64, &[Weight::Full(&w64[..])]);
            for (a, b) in out.iter().zip(&out64) {
                assert!((*a as f64 - b).abs() < 1e-4);
            }
        }
    }
}
