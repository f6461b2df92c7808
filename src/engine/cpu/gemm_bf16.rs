//! The bf16 matrix product of mixed precision: operands rounded to bf16, products summed in f32.
//!
//! One entry point, [`gemm`], serves every matmul shape of the model (forward, input gradient,
//! weight gradient) through strided views of f32 or bf16 operands; f32 operands are rounded to
//! bf16 as they are packed. Products of two bf16 values are exact in f32, so the result differs
//! from an f32 product of the rounded operands only in the order of the f32 sums.
//!
//! The layout is GotoBLAS's: `rhs` is packed once per call into panels of [`NR`] columns whose k
//! values come in interleaved pairs (`[k/2][NR][2]` bf16, one pair per 32-bit lane), `lhs` into
//! panels of [`MR`] rows of the same pairs, k split into blocks of at most [`KC`] so that the
//! `rhs` panel stays in L1 while the kernel sweeps a block of `lhs` panels held in L2. On a CPU
//! with AVX512-BF16 the register tile is 8 rows × 3 vectors of 16 columns, each step one
//! `vdpbf16ps` (a broadcast pair of `lhs` times 16 pairs of `rhs`, two products per lane), and
//! f32 operands are rounded 32 at a time by `vcvtne2ps2bf16`. Elsewhere a portable kernel packs
//! the same panels with scalar rounding and widens them to f32 (vectorised by the compiler, with
//! FMA where the CPU has AVX2 and FMA). AMX-BF16 tiles (Sapphire Rapids and later) would be a
//! further path; it is not written because no CPU here has AMX to test it on.
//!
//! The vector conversion and `vdpbf16ps` treat subnormal inputs as zero; the model's values are
//! far from that range (below 1.2e-38).

use std::cell::Cell;

use half::bf16;
use rayon::prelude::*;

use super::SendPtr;
use super::matmul::View;

/// One operand of [`gemm`]: f32 values (rounded to bf16 when packed) or bf16 values.
#[derive(Clone, Copy)]
pub(crate) enum Operand {
    F32(View<f32>),
    Bf16(View<bf16>),
}

/// Rows of the register tile.
const MR: usize = 8;
/// Columns of the register tile: three vectors of 16 f32 lanes.
const NR: usize = 48;
/// The largest k block: a packed `rhs` panel (KC/2 × NR pairs, 36 KiB) fits in L1.
const KC: usize = 384;
/// Row panels of `lhs` one task packs at most (128 rows × KC: 96 KiB, well inside L2).
const MB: usize = 16;
/// Below this many multiply-adds a product runs on the calling thread: rayon's start-up costs
/// more than it saves.
const PARALLEL_MIN: usize = 1 << 20;

/// The kernel [`gemm`] runs on this CPU, for the benchmark's printout.
pub(crate) fn kernel_name() -> &'static str {
    match path() {
        Path::Native => "avx512-bf16",
        Path::PortableFma => "portable-avx2",
        Path::Portable => "portable",
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    Native,
    PortableFma,
    Portable,
}

fn path() -> Path {
    if crate::engine::cpu_has_native_bf16() {
        return Path::Native;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        return Path::PortableFma;
    }
    Path::Portable
}

/// `dst (m×n, row stride dst_rs) = [dst +] lhs (m×k) · rhs (k×n)`, operands rounded to bf16,
/// products summed in f32; parallel over rayon's pool when `parallel`.
///
/// # Safety
/// Every element the views and `dst` address for these sizes must be in bounds, and `dst` must
/// not overlap the operands or be written by anyone else meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: Operand,
    rhs: Operand,
    parallel: bool,
) {
    let (a, b) = (Src::lhs(lhs), Src::rhs(rhs));
    // SAFETY: forwarded from the caller; each kernel runs only where `path` found its
    // instructions.
    unsafe {
        match path() {
            #[cfg(target_arch = "x86_64")]
            Path::Native => run::<native::Native>(m, n, k, dst, dst_rs, accumulate, a, b, parallel),
            #[cfg(target_arch = "x86_64")]
            Path::PortableFma => {
                run::<native::PortableFma>(m, n, k, dst, dst_rs, accumulate, a, b, parallel)
            }
            _ => run::<Portable>(m, n, k, dst, dst_rs, accumulate, a, b, parallel),
        }
    }
}

/// An operand as the packing sees it: element `(x, kk)` at `ptr + x·sx + kk·sk`, where `x` is
/// the row of `lhs` or the column of `rhs`.
#[derive(Clone, Copy)]
enum Src {
    F32 {
        ptr: *const f32,
        sx: usize,
        sk: usize,
    },
    Bf16 {
        ptr: *const bf16,
        sx: usize,
        sk: usize,
    },
}

// SAFETY: a `Src` is only read, and `gemm`'s caller guarantees nobody writes the operands
// while it runs.
unsafe impl Send for Src {}
// SAFETY: as above.
unsafe impl Sync for Src {}

impl Src {
    fn lhs(op: Operand) -> Src {
        match op {
            Operand::F32(v) => Src::F32 {
                ptr: v.ptr,
                sx: v.row_stride,
                sk: v.col_stride,
            },
            Operand::Bf16(v) => Src::Bf16 {
                ptr: v.ptr,
                sx: v.row_stride,
                sk: v.col_stride,
            },
        }
    }

    fn rhs(op: Operand) -> Src {
        match op {
            Operand::F32(v) => Src::F32 {
                ptr: v.ptr,
                sx: v.col_stride,
                sk: v.row_stride,
            },
            Operand::Bf16(v) => Src::Bf16 {
                ptr: v.ptr,
                sx: v.col_stride,
                sk: v.row_stride,
            },
        }
    }

    fn sk(&self) -> usize {
        match *self {
            Src::F32 { sk, .. } | Src::Bf16 { sk, .. } => sk,
        }
    }

    /// The bf16 bits of element `(x, kk)`, rounded to nearest even.
    ///
    /// # Safety
    /// The element must be in bounds.
    unsafe fn bits(&self, x: usize, kk: usize) -> u32 {
        // SAFETY: forwarded from the caller.
        unsafe {
            match *self {
                Src::F32 { ptr, sx, sk } => bf16::from_f32(*ptr.add(x * sx + kk * sk)).to_bits(),
                Src::Bf16 { ptr, sx, sk } => (*ptr.add(x * sx + kk * sk)).to_bits(),
            }
        }
        .into()
    }
}

/// The two halves of a kernel: packing and the register tile.
trait Kernel {
    /// Packs the `kn` k values from `k0` of operand elements `x0..x0 + xn` into `ceil(kn/2)`
    /// rows of `w` 32-bit lanes (`out[kp·w + x]` = element `(x0+x, k0+2kp)` in the low half,
    /// `(x0+x, k0+2kp+1)` in the high half), zeros beyond `xn` and `kn`.
    ///
    /// # Safety
    /// `out` holds `ceil(kn/2)·w` lanes; the elements are in bounds; `xn ≤ w`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn pack(out: *mut u32, w: usize, src: Src, x0: usize, xn: usize, k0: usize, kn: usize);

    /// Packs `lhs` rows `x0..x0 + xn` as `xn.div_ceil(MR)` consecutive [`MR`]-row panels of
    /// `ceil(kn/2)` pair rows each, as [`Kernel::pack`] would one panel at a time.
    ///
    /// # Safety
    /// `out` holds `xn.div_ceil(MR)·ceil(kn/2)·MR` lanes; the elements are in bounds.
    unsafe fn pack_lhs(out: *mut u32, src: Src, x0: usize, xn: usize, k0: usize, kn: usize) {
        // SAFETY: forwarded from the caller.
        unsafe { pack_panels::<Self>(out, src, x0, xn, k0, kn) }
    }

    /// `dst (mr×nr) = [dst +] a · b` for `kcp` packed pairs of an [`MR`]-row panel `a` and an
    /// [`NR`]-column panel `b`.
    ///
    /// # Safety
    /// The panels hold `kcp` pair rows; `dst` rows `< mr`, columns `< nr` are writable.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        kcp: usize,
        a: *const u32,
        b: *const u32,
        dst: *mut f32,
        dst_rs: usize,
        mr: usize,
        nr: usize,
        add: bool,
    );
}

/// [`Kernel::pack_lhs`] one panel at a time through [`Kernel::pack`].
///
/// # Safety
/// As [`Kernel::pack_lhs`], and `K`'s instructions exist on this CPU.
unsafe fn pack_panels<K: Kernel + ?Sized>(
    out: *mut u32,
    src: Src,
    x0: usize,
    xn: usize,
    k0: usize,
    kn: usize,
) {
    let kcp = kn.div_ceil(2);
    for q in 0..xn.div_ceil(MR) {
        // SAFETY: panel q of kcp·MR lanes lies in `out`; its rows are in bounds.
        unsafe {
            K::pack(
                out.add(q * kcp * MR),
                MR,
                src,
                x0 + q * MR,
                MR.min(xn - q * MR),
                k0,
                kn,
            )
        };
    }
}

/// 64 bytes, the alignment of the packed panels (whole-line vector loads).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u32; 16]);

thread_local! {
    /// The packed `rhs` of the calling thread's last product, kept to avoid reallocating.
    static RHS_BUF: Cell<Vec<Line>> = const { Cell::new(Vec::new()) };
    /// The packed `lhs` block of this thread's tasks.
    static LHS_BUF: Cell<Vec<Line>> = const { Cell::new(Vec::new()) };
}

/// `buf` grown to at least `lanes` 32-bit lanes; its start.
fn lanes(buf: &mut Vec<Line>, lanes: usize) -> *mut u32 {
    let lines = lanes.div_ceil(16);
    if buf.len() < lines {
        buf.resize(lines, Line([0; 16]));
    }
    buf.as_mut_ptr().cast()
}

/// The blocked product behind [`gemm`], for kernel `K`.
///
/// # Safety
/// As [`gemm`], and `K`'s instructions exist on this CPU.
#[allow(clippy::too_many_arguments)]
unsafe fn run<K: Kernel>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: Src,
    rhs: Src,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                // SAFETY: row i < m of dst, n elements, is writable by the contract.
                unsafe { std::slice::from_raw_parts_mut(dst.add(i * dst_rs), n).fill(0.0) };
            }
        }
        return;
    }
    // k blocks of equal even length `kc` (the last shorter), so every block but the last has
    // kc/2 pair rows and the packed rhs is `ceil(k/2)` pair rows of every column panel.
    let kc = k.div_ceil(k.div_ceil(KC)).next_multiple_of(2);
    let kb = k.div_ceil(kc);
    let (mp, np) = (m.div_ceil(MR), n.div_ceil(NR));
    let threads = if parallel && m * n * k >= PARALLEL_MIN {
        rayon::current_num_threads()
    } else {
        1
    };

    // Taken out (not borrowed) so that a nested product on this thread finds its own buffer.
    let mut rhs_buf = RHS_BUF.take();
    let packed = SendPtr(lanes(&mut rhs_buf, k.div_ceil(2) * np * NR));
    let block = |p: usize| {
        let k0 = p * kc;
        (k0, kc.min(k - k0))
    };
    // Column panel jp of k block p.
    let panel = |p: usize, jp: usize| {
        let (k0, kn) = block(p);
        (k0 / 2) * np * NR + jp * kn.div_ceil(2) * NR
    };
    let pack_rhs = |item: usize| {
        let packed = &packed;
        let (p, jp) = (item / np, item % np);
        let (k0, kn) = block(p);
        let j0 = jp * NR;
        // SAFETY: each (p, jp) writes its own ceil(kn/2)·NR lanes of the buffer sized above;
        // columns j0.. < n and rows k0.. < k of rhs are in bounds by the contract.
        unsafe {
            K::pack(
                packed.0.add(panel(p, jp)),
                NR,
                rhs,
                j0,
                NR.min(n - j0),
                k0,
                kn,
            )
        };
    };
    if threads > 1 {
        (0..kb * np).into_par_iter().for_each(pack_rhs);
    } else {
        (0..kb * np).for_each(pack_rhs);
    }

    // Tasks: tiles of dst of whole register tiles, split evenly into a multiple of the thread
    // count, so that no thread is left with one task more than the others. Rows are split
    // first, into blocks of at most MB panels; columns only when there are fewer row blocks
    // than threads, because each column split packs the lhs block again (at bf16 speed,
    // packing an element costs about as much as a hundred multiply-adds).
    let split = |panels: usize, blocks: usize| {
        let per = panels.div_ceil(blocks.clamp(1, panels));
        (per, panels.div_ceil(per))
    };
    let (per_m, bm) = split(mp, mp.div_ceil(MB).next_multiple_of(threads));
    let (per_n, bn) = split(np, threads.div_ceil(bm));
    let out = SendPtr(dst);
    let task = |t: usize| {
        let (packed, out) = (&packed, &out);
        let (ip0, jp0) = ((t / bn) * per_m, (t % bn) * per_n);
        let (ip1, jp1) = ((ip0 + per_m).min(mp), (jp0 + per_n).min(np));
        let mut lhs_buf = LHS_BUF.take();
        let a = lanes(&mut lhs_buf, (ip1 - ip0) * (kc / 2) * MR);
        for p in 0..kb {
            let (k0, kn) = block(p);
            let kcp = kn.div_ceil(2);
            let i0 = ip0 * MR;
            // SAFETY: the ip1 - ip0 panels of kcp·MR lanes fill the buffer sized above; rows
            // i0.. < m and columns k0.. < k of lhs are in bounds by the contract.
            unsafe { K::pack_lhs(a, lhs, i0, ((ip1 - ip0) * MR).min(m - i0), k0, kn) };
            for jp in jp0..jp1 {
                let j0 = jp * NR;
                for ip in ip0..ip1 {
                    let i0 = ip * MR;
                    // SAFETY: both panels were packed above with kcp pair rows; the dst tile
                    // (rows i0.., columns j0.., clipped to m×n) belongs to this task alone.
                    unsafe {
                        K::tile(
                            kcp,
                            a.add((ip - ip0) * kcp * MR),
                            packed.0.add(panel(p, jp)),
                            out.0.add(i0 * dst_rs + j0),
                            dst_rs,
                            MR.min(m - i0),
                            NR.min(n - j0),
                            accumulate || p > 0,
                        )
                    };
                }
            }
        }
        LHS_BUF.set(lhs_buf);
    };
    if threads > 1 {
        (0..bm * bn).into_par_iter().for_each(task);
    } else {
        (0..bm * bn).for_each(task);
    }
    RHS_BUF.set(rhs_buf);
}

/// The portable kernel: scalar rounding while packing, f32 arithmetic on the widened pairs.
struct Portable;

impl Kernel for Portable {
    unsafe fn pack(out: *mut u32, w: usize, src: Src, x0: usize, xn: usize, k0: usize, kn: usize) {
        // SAFETY: forwarded from the caller.
        unsafe { pack_scalar(out, w, src, x0, xn, k0, kn) }
    }

    unsafe fn tile(
        kcp: usize,
        a: *const u32,
        b: *const u32,
        dst: *mut f32,
        dst_rs: usize,
        mr: usize,
        nr: usize,
        add: bool,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { tile_portable::<false>(kcp, a, b, dst, dst_rs, mr, nr, add) }
    }
}

/// [`Kernel::pack`] one element at a time, for any strides.
///
/// # Safety
/// As [`Kernel::pack`].
unsafe fn pack_scalar(
    out: *mut u32,
    w: usize,
    src: Src,
    x0: usize,
    xn: usize,
    k0: usize,
    kn: usize,
) {
    let kcp = kn.div_ceil(2);
    // SAFETY: x < xn and k < kn keep the reads in bounds, kp < kcp and x < w the writes.
    let pair = |x: usize, kp: usize| unsafe {
        if x >= xn {
            return 0;
        }
        let lo = src.bits(x0 + x, k0 + 2 * kp);
        let hi = if 2 * kp + 1 < kn {
            src.bits(x0 + x, k0 + 2 * kp + 1)
        } else {
            0
        };
        lo | hi << 16
    };
    // SAFETY: as above.
    unsafe {
        // Walk the source in memory order where one exists.
        if src.sk() == 1 {
            for x in 0..w {
                for kp in 0..kcp {
                    *out.add(kp * w + x) = pair(x, kp);
                }
            }
        } else {
            for kp in 0..kcp {
                for x in 0..w {
                    *out.add(kp * w + x) = pair(x, kp);
                }
            }
        }
    }
}

/// [`Kernel::tile`] in f32 arithmetic on widened pairs, fused multiply-adds when `FMA`; inlined
/// into a caller compiled for the CPU's vector width.
///
/// # Safety
/// As [`Kernel::tile`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_portable<const FMA: bool>(
    kcp: usize,
    a: *const u32,
    b: *const u32,
    dst: *mut f32,
    dst_rs: usize,
    mr: usize,
    nr: usize,
    add: bool,
) {
    // SAFETY: the panels hold kcp pair rows of MR and NR lanes.
    let (a, b) = unsafe {
        (
            std::slice::from_raw_parts(a, kcp * MR),
            std::slice::from_raw_parts(b, kcp * NR),
        )
    };
    // Sub-tiles of 4 rows × 16 columns keep their sums in registers (8 AVX2 vectors); skipped
    // where they lie wholly outside the edge of dst.
    const SR: usize = 4;
    const SC: usize = 16;
    let lo = |p: u32| f32::from_bits(p << 16);
    let hi = |p: u32| f32::from_bits(p & 0xffff_0000);
    for r0 in (0..mr).step_by(SR) {
        for c0 in (0..nr).step_by(SC) {
            let mut acc = [[0f32; SC]; SR];
            for kp in 0..kcp {
                let bp = &b[kp * NR + c0..][..SC];
                let b0: [f32; SC] = std::array::from_fn(|j| lo(bp[j]));
                let b1: [f32; SC] = std::array::from_fn(|j| hi(bp[j]));
                for (row, &p) in acc.iter_mut().zip(&a[kp * MR + r0..][..SR]) {
                    let (a0, a1) = (lo(p), hi(p));
                    for j in 0..SC {
                        row[j] = if FMA {
                            a1.mul_add(b1[j], a0.mul_add(b0[j], row[j]))
                        } else {
                            row[j] + a0 * b0[j] + a1 * b1[j]
                        };
                    }
                }
            }
            for (i, row) in acc.iter().enumerate().take(mr - r0) {
                let cols = SC.min(nr - c0);
                // SAFETY: row r0 + i < mr, columns c0..c0 + cols ≤ nr of dst are writable by
                // the contract.
                let d = unsafe {
                    std::slice::from_raw_parts_mut(dst.add((r0 + i) * dst_rs + c0), cols)
                };
                for (d, &v) in d.iter_mut().zip(row) {
                    *d = if add { *d + v } else { v };
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod native {
    //! The x86-64 kernels: AVX512-BF16, and the portable one compiled for AVX2 and FMA.

    use std::arch::x86_64::*;
    use std::mem::transmute;

    use super::{Kernel, MR, NR, Src, pack_panels, pack_scalar, tile_portable};

    /// The portable kernel with 256-bit vectors and fused multiply-adds.
    pub(super) struct PortableFma;

    impl Kernel for PortableFma {
        unsafe fn pack(
            out: *mut u32,
            w: usize,
            src: Src,
            x0: usize,
            xn: usize,
            k0: usize,
            kn: usize,
        ) {
            // SAFETY: forwarded from the caller.
            unsafe { pack_scalar(out, w, src, x0, xn, k0, kn) }
        }

        unsafe fn tile(
            kcp: usize,
            a: *const u32,
            b: *const u32,
            dst: *mut f32,
            dst_rs: usize,
            mr: usize,
            nr: usize,
            add: bool,
        ) {
            // SAFETY: forwarded from the caller, who checked for AVX2 and FMA.
            unsafe { tile_fma(kcp, a, b, dst, dst_rs, mr, nr, add) }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_fma(
        kcp: usize,
        a: *const u32,
        b: *const u32,
        dst: *mut f32,
        dst_rs: usize,
        mr: usize,
        nr: usize,
        add: bool,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { tile_portable::<true>(kcp, a, b, dst, dst_rs, mr, nr, add) }
    }

    /// The AVX512-BF16 kernel.
    pub(super) struct Native;

    impl Kernel for Native {
        unsafe fn pack(
            out: *mut u32,
            w: usize,
            src: Src,
            x0: usize,
            xn: usize,
            k0: usize,
            kn: usize,
        ) {
            // SAFETY: forwarded from the caller, who checked for AVX512-BF16.
            unsafe { pack_avx512(out, w, src, x0, xn, k0, kn) }
        }

        unsafe fn pack_lhs(out: *mut u32, src: Src, x0: usize, xn: usize, k0: usize, kn: usize) {
            match src {
                // SAFETY: forwarded from the caller, who checked for AVX512-BF16.
                Src::F32 { ptr, sx: 1, sk } => unsafe {
                    pack_lhs_rows_avx512(out, ptr, sk, x0, xn, k0, kn)
                },
                // SAFETY: forwarded from the caller.
                _ => unsafe { pack_panels::<Self>(out, src, x0, xn, k0, kn) },
            }
        }

        unsafe fn tile(
            kcp: usize,
            a: *const u32,
            b: *const u32,
            dst: *mut f32,
            dst_rs: usize,
            mr: usize,
            nr: usize,
            add: bool,
        ) {
            // SAFETY: forwarded from the caller, who checked for AVX512-BF16.
            unsafe { tile_avx512(kcp, a, b, dst, dst_rs, mr, nr, add) }
        }
    }

    /// The mask of the first `lanes` (≤ 16) lanes.
    fn mask(lanes: usize) -> __mmask16 {
        ((1u32 << lanes) - 1) as __mmask16
    }

    /// 16 lanes, each a bf16 of `lo` in the low half and of `hi` in the high half.
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn interleave(lo: __m256bh, hi: __m256bh) -> __m512i {
        // SAFETY: __m256bh and __m256i are both 32 bytes of plain bits.
        let (lo, hi) = unsafe {
            (
                transmute::<__m256bh, __m256i>(lo),
                transmute::<__m256bh, __m256i>(hi),
            )
        };
        _mm512_or_si512(
            _mm512_cvtepu16_epi32(lo),
            _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(hi)),
        )
    }

    /// The first `lanes` (≤ 16) u16s at `p` zero-extended to 32-bit lanes.
    ///
    /// # Safety
    /// The `lanes` u16s are readable.
    #[target_feature(enable = "avx512f")]
    unsafe fn load_u16(p: *const u16, lanes: usize) -> __m512i {
        let mut tmp = [0u16; 16];
        // SAFETY: lanes u16s readable by the contract; tmp holds 16.
        unsafe {
            let v = if lanes == 16 {
                _mm256_loadu_si256(p.cast())
            } else {
                std::ptr::copy_nonoverlapping(p, tmp.as_mut_ptr(), lanes);
                _mm256_loadu_si256(tmp.as_ptr().cast())
            };
            _mm512_cvtepu16_epi32(v)
        }
    }

    /// The first `lanes` (≤ 16) lanes of `v` stored at `p`.
    ///
    /// # Safety
    /// The `lanes` u32s are writable.
    #[target_feature(enable = "avx512f")]
    unsafe fn store(p: *mut u32, lanes: usize, v: __m512i) {
        // SAFETY: forwarded from the caller; the mask keeps the store within the lanes.
        unsafe {
            if lanes == 16 {
                _mm512_storeu_si512(p.cast(), v);
            } else {
                _mm512_mask_storeu_epi32(p.cast(), mask(lanes), v);
            }
        }
    }

    /// Rows `r[x]` of 16 lanes (pair rows kp) as 8 vectors of two pair rows of 8 lanes each:
    /// `out[q]` = `r[0..8][2q]` then `r[0..8][2q + 1]`.
    #[target_feature(enable = "avx512f")]
    fn transpose_8x16(r: [__m512i; MR]) -> [__m512i; MR] {
        // t: pairs of rows interleaved within 128-bit lanes; u[j] (u[4 + j]): lane L holds
        // pair row 4L + j of rows 0..4 (4..8).
        let t = [
            _mm512_unpacklo_epi32(r[0], r[1]),
            _mm512_unpackhi_epi32(r[0], r[1]),
            _mm512_unpacklo_epi32(r[2], r[3]),
            _mm512_unpackhi_epi32(r[2], r[3]),
            _mm512_unpacklo_epi32(r[4], r[5]),
            _mm512_unpackhi_epi32(r[4], r[5]),
            _mm512_unpacklo_epi32(r[6], r[7]),
            _mm512_unpackhi_epi32(r[6], r[7]),
        ];
        let u = [
            _mm512_unpacklo_epi64(t[0], t[2]),
            _mm512_unpackhi_epi64(t[0], t[2]),
            _mm512_unpacklo_epi64(t[1], t[3]),
            _mm512_unpackhi_epi64(t[1], t[3]),
            _mm512_unpacklo_epi64(t[4], t[6]),
            _mm512_unpackhi_epi64(t[4], t[6]),
            _mm512_unpacklo_epi64(t[5], t[7]),
            _mm512_unpackhi_epi64(t[5], t[7]),
        ];
        // p[j][h]: lanes 2h, 2h + 1 of u[j], then the same of u[4 + j].
        let p = |j: usize| {
            [
                _mm512_shuffle_i32x4::<0x44>(u[j], u[4 + j]),
                _mm512_shuffle_i32x4::<0xEE>(u[j], u[4 + j]),
            ]
        };
        let (p0, p1, p2, p3) = (p(0), p(1), p(2), p(3));
        [
            _mm512_shuffle_i32x4::<0x88>(p0[0], p1[0]),
            _mm512_shuffle_i32x4::<0x88>(p2[0], p3[0]),
            _mm512_shuffle_i32x4::<0xDD>(p0[0], p1[0]),
            _mm512_shuffle_i32x4::<0xDD>(p2[0], p3[0]),
            _mm512_shuffle_i32x4::<0x88>(p0[1], p1[1]),
            _mm512_shuffle_i32x4::<0x88>(p2[1], p3[1]),
            _mm512_shuffle_i32x4::<0xDD>(p0[1], p1[1]),
            _mm512_shuffle_i32x4::<0xDD>(p2[1], p3[1]),
        ]
    }

    /// [`Kernel::pack_lhs`] of an f32 `lhs` whose rows are contiguous (the transposed output
    /// gradient of a weight gradient): each k row of the block is read once, 16 rows at a time
    /// into two panels, rather than once per panel in half-line pieces; for a source far
    /// larger than the caches (the vocabulary head's) this keeps the reads sequential.
    ///
    /// # Safety
    /// As [`Kernel::pack_lhs`] for `Src::F32 { ptr, sx: 1, sk }`, and the CPU has AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn pack_lhs_rows_avx512(
        out: *mut u32,
        ptr: *const f32,
        sk: usize,
        x0: usize,
        xn: usize,
        k0: usize,
        kn: usize,
    ) {
        let (kcp, panels) = (kn.div_ceil(2), xn.div_ceil(MR));
        // SAFETY: reads are of rows x0.. < x0 + xn (the masks), columns k0.. < k0 + kn, in
        // bounds by the contract; writes are of pair row kp < kcp of panel q < panels.
        unsafe {
            for kp in 0..kcp {
                let row = ptr.wrapping_add(x0 + (k0 + 2 * kp) * sk);
                let has_hi = 2 * kp + 1 < kn;
                for q in (0..panels).step_by(2) {
                    let c = q * MR;
                    let m = mask((xn - c).min(16));
                    // k rows lie a whole row of the source apart (16 KiB for the head), too
                    // far for the hardware prefetchers: fetch four pair rows ahead.
                    if 2 * kp + 9 < kn {
                        _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(8 * sk + c).cast());
                        _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(9 * sk + c).cast());
                    }
                    let lo = _mm512_maskz_loadu_ps(m, row.wrapping_add(c));
                    let hi = if has_hi {
                        _mm512_maskz_loadu_ps(m, row.wrapping_add(sk + c))
                    } else {
                        _mm512_setzero_ps()
                    };
                    let v = interleave(_mm512_cvtneps_pbh(lo), _mm512_cvtneps_pbh(hi));
                    let at = |q: usize| out.add((q * kcp + kp) * MR).cast::<__m256i>();
                    _mm256_storeu_si256(at(q), _mm512_castsi512_si256(v));
                    if q + 1 < panels {
                        _mm256_storeu_si256(at(q + 1), _mm512_extracti64x4_epi64::<1>(v));
                    }
                }
            }
        }
    }

    /// [`Kernel::pack`] with vector rounding where the operand is contiguous along x or k.
    ///
    /// # Safety
    /// As [`Kernel::pack`], and the CPU has AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn pack_avx512(
        out: *mut u32,
        w: usize,
        src: Src,
        x0: usize,
        xn: usize,
        k0: usize,
        kn: usize,
    ) {
        let kcp = kn.div_ceil(2);
        // SAFETY: every read below is of an element (x0 + x < x0 + xn, k0 + kk < k0 + kn),
        // in bounds by the contract (masked lanes read nothing), and every write is of a lane
        // kp < kcp, x < w of the panel.
        unsafe {
            match src {
                // x contiguous: two k rows of 16 x at a time, one pair per lane.
                Src::F32 { ptr, sx: 1, sk } => {
                    for kp in 0..kcp {
                        let row = ptr.wrapping_add(x0 + (k0 + 2 * kp) * sk);
                        let has_hi = 2 * kp + 1 < kn;
                        for c in (0..w).step_by(16) {
                            let m = mask(xn.saturating_sub(c).min(16));
                            let lo = _mm512_maskz_loadu_ps(m, row.wrapping_add(c));
                            let hi = if has_hi {
                                _mm512_maskz_loadu_ps(m, row.wrapping_add(sk + c))
                            } else {
                                _mm512_setzero_ps()
                            };
                            let v = interleave(_mm512_cvtneps_pbh(lo), _mm512_cvtneps_pbh(hi));
                            store(out.add(kp * w + c), (w - c).min(16), v);
                        }
                    }
                }
                Src::Bf16 { ptr, sx: 1, sk } => {
                    let ptr: *const u16 = ptr.cast();
                    for kp in 0..kcp {
                        let row = ptr.wrapping_add(x0 + (k0 + 2 * kp) * sk);
                        let has_hi = 2 * kp + 1 < kn;
                        for c in (0..w).step_by(16) {
                            let lanes = xn.saturating_sub(c).min(16);
                            let lo = load_u16(row.wrapping_add(c), lanes);
                            let v = if has_hi {
                                let hi = load_u16(row.wrapping_add(sk + c), lanes);
                                _mm512_or_si512(lo, _mm512_slli_epi32::<16>(hi))
                            } else {
                                lo
                            };
                            store(out.add(kp * w + c), (w - c).min(16), v);
                        }
                    }
                }
                // k contiguous: 32 k values of one x rounded at once, the 16 pairs then
                // spread down the panel's column x.
                Src::F32 { ptr, sx, sk: 1 } if w == MR && xn == MR => {
                    for kp in (0..kcp).step_by(16) {
                        let left = kn - 2 * kp;
                        let rows: [__m512i; MR] = std::array::from_fn(|x| {
                            let row = ptr.add((x0 + x) * sx + k0 + 2 * kp);
                            let first = _mm512_maskz_loadu_ps(mask(left.min(16)), row);
                            let second = if left > 16 {
                                _mm512_maskz_loadu_ps(mask((left - 16).min(16)), row.add(16))
                            } else {
                                _mm512_setzero_ps()
                            };
                            transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(second, first))
                        });
                        let pairs = (kcp - kp).min(16);
                        for (q, v) in transpose_8x16(rows).into_iter().enumerate() {
                            if 2 * q < pairs {
                                let lanes = if 2 * q + 1 < pairs { 16 } else { 8 };
                                store(out.add((kp + 2 * q) * MR), lanes, v);
                            }
                        }
                    }
                }
                Src::F32 { ptr, sx, sk: 1 } => {
                    for x in 0..w {
                        if x >= xn {
                            for kp in 0..kcp {
                                *out.add(kp * w + x) = 0;
                            }
                            continue;
                        }
                        let row = ptr.add((x0 + x) * sx + k0);
                        for kp in (0..kcp).step_by(16) {
                            let left = kn - 2 * kp;
                            let first = _mm512_maskz_loadu_ps(mask(left.min(16)), row.add(2 * kp));
                            let second = if left > 16 {
                                _mm512_maskz_loadu_ps(
                                    mask((left - 16).min(16)),
                                    row.add(2 * kp + 16),
                                )
                            } else {
                                _mm512_setzero_ps()
                            };
                            let pairs: [u32; 16] = transmute(_mm512_cvtne2ps_pbh(second, first));
                            for (j, &pair) in pairs.iter().enumerate().take(kcp - kp) {
                                *out.add((kp + j) * w + x) = pair;
                            }
                        }
                    }
                }
                // k contiguous bf16: the pairs are already 32-bit words in memory.
                Src::Bf16 { ptr, sx, sk: 1 } => {
                    let ptr: *const u16 = ptr.cast();
                    for x in 0..w {
                        for kp in 0..kcp {
                            *out.add(kp * w + x) = if x >= xn {
                                0
                            } else {
                                let at = ptr.add((x0 + x) * sx + k0 + 2 * kp);
                                if 2 * kp + 1 < kn {
                                    at.cast::<u32>().read_unaligned()
                                } else {
                                    u32::from(*at)
                                }
                            };
                        }
                    }
                }
                _ => pack_scalar(out, w, src, x0, xn, k0, kn),
            }
        }
    }

    /// [`Kernel::tile`]: 24 accumulators, per pair row three `rhs` vectors and eight broadcast
    /// `lhs` pairs.
    ///
    /// # Safety
    /// As [`Kernel::tile`], and the CPU has AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_avx512(
        kcp: usize,
        a: *const u32,
        b: *const u32,
        dst: *mut f32,
        dst_rs: usize,
        mr: usize,
        nr: usize,
        add: bool,
    ) {
        const V: usize = NR / 16;
        // The dst tile is read (or written) only after the k loop, which is long enough to
        // hide fetching its lines; in a training step dst is rarely in cache (the input
        // gradients are 2048 rows), and without this each tile waits for it at the end.
        for i in 0..mr {
            let d = dst.wrapping_add(i * dst_rs);
            for c in (0..nr).step_by(16).chain([nr - 1]) {
                _mm_prefetch::<_MM_HINT_ET0>(d.wrapping_add(c).cast());
            }
        }
        let mut acc = [[_mm512_setzero_ps(); V]; MR];
        // SAFETY: pair row kp < kcp of both panels is in bounds; the 512-bit values are
        // reinterpreted as 32 bf16s (plain bits).
        unsafe {
            for kp in 0..kcp {
                let bp = b.add(kp * NR);
                let bv: [__m512bh; V] = [
                    transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp.cast())),
                    transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp.add(16).cast())),
                    transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp.add(32).cast())),
                ];
                let ap = a.add(kp * MR);
                for (i, row) in acc.iter_mut().enumerate() {
                    let ai: __m512bh = transmute(_mm512_set1_epi32(*ap.add(i) as i32));
                    for (c, &bj) in row.iter_mut().zip(&bv) {
                        *c = _mm512_dpbf16_ps(*c, ai, bj);
                    }
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            if i >= mr {
                break;
            }
            for (j, &v) in row.iter().enumerate() {
                let c = 16 * j;
                if c >= nr {
                    break;
                }
                let m = mask((nr - c).min(16));
                // SAFETY: row i < mr, columns c.. < nr of dst are writable by the contract;
                // the masks keep the loads and stores within them.
                unsafe {
                    let d = dst.add(i * dst_rs + c);
                    let v = if add {
                        _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, d))
                    } else {
                        v
                    };
                    _mm512_mask_storeu_ps(d, m, v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cpu::random;

    /// A kernel under test: runs `run::<K>` for one [`Path`].
    type Runner = unsafe fn(usize, usize, usize, *mut f32, usize, bool, Src, Src, bool);

    /// Every kernel this CPU can run, by name.
    fn kernels() -> Vec<(&'static str, Runner)> {
        let mut kernels: Vec<(&'static str, Runner)> = vec![("portable", run::<Portable>)];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                kernels.push(("portable-avx2", run::<native::PortableFma>));
            }
            if crate::engine::cpu_has_native_bf16() {
                kernels.push(("avx512-bf16", run::<native::Native>));
            }
        }
        kernels
    }

    /// How a `rows × cols` matrix is stored.
    #[derive(Clone, Copy, Debug)]
    enum Layout {
        RowMajor,
        Transposed,
        /// Neither stride 1: every other element of rows padded by 3.
        Strided,
    }

    /// Storage of a matrix in a layout, as f32 or bf16.
    struct Matrix {
        rows: usize,
        cols: usize,
        layout: Layout,
        f32s: Vec<f32>,
        bf16s: Option<Vec<bf16>>,
    }

    impl Matrix {
        fn new(values: &[f32], rows: usize, cols: usize, layout: Layout, half: bool) -> Matrix {
            let (rs, cs) = strides(rows, cols, layout);
            let mut f32s = vec![f32::NAN; (rows - 1) * rs + (cols - 1) * cs + 1];
            for r in 0..rows {
                for c in 0..cols {
                    f32s[r * rs + c * cs] = values[r * cols + c];
                }
            }
            let bf16s = half.then(|| f32s.iter().map(|&x| bf16::from_f32(x)).collect());
            Matrix {
                rows,
                cols,
                layout,
                f32s,
                bf16s,
            }
        }

        fn operand(&self) -> Operand {
            let (row_stride, col_stride) = strides(self.rows, self.cols, self.layout);
            match &self.bf16s {
                Some(h) => Operand::Bf16(View {
                    ptr: h.as_ptr(),
                    row_stride,
                    col_stride,
                }),
                None => Operand::F32(View {
                    ptr: self.f32s.as_ptr(),
                    row_stride,
                    col_stride,
                }),
            }
        }
    }

    fn strides(rows: usize, cols: usize, layout: Layout) -> (usize, usize) {
        match layout {
            Layout::RowMajor => (cols, 1),
            Layout::Transposed => (1, rows),
            Layout::Strided => (2 * cols + 3, 2),
        }
    }

    fn rounded(x: f32) -> f64 {
        bf16::from_f32(x).to_f64()
    }

    /// Runs `kernel` on `lhs · rhs` into a dst of row stride n + 3 (random when accumulating)
    /// and checks every element against f64 sums of the rounded operands, and the padding.
    #[allow(clippy::too_many_arguments)]
    fn check(
        name: &str,
        kernel: Runner,
        a: &[f32],
        b: &[f32],
        (m, n, k): (usize, usize, usize),
        (lhs, rhs): (&Matrix, &Matrix),
        accumulate: bool,
        parallel: bool,
    ) {
        let dst_rs = n + 3;
        let init: Vec<f32> = random(m * dst_rs, 9).iter().map(|&x| x as f32).collect();
        let mut dst = init.clone();
        // SAFETY: the matrices hold m×k and k×n elements in their layouts, dst m rows of
        // dst_rs ≥ n.
        unsafe {
            kernel(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                dst_rs,
                accumulate,
                Src::lhs(lhs.operand()),
                Src::rhs(rhs.operand()),
                parallel,
            )
        };
        let what = format!(
            "{name} m={m} n={n} k={k} {:?}·{:?} accumulate={accumulate}",
            lhs.layout, rhs.layout
        );
        for i in 0..m {
            for j in 0..n {
                let (mut sum, mut scale) = (0.0, 0.0);
                for kk in 0..k {
                    let p = rounded(a[i * k + kk]) * rounded(b[kk * n + j]);
                    sum += p;
                    scale += p.abs();
                }
                let before = f64::from(init[i * dst_rs + j]);
                if accumulate {
                    sum += before;
                    scale += before.abs();
                }
                let got = f64::from(dst[i * dst_rs + j]);
                assert!(
                    (got - sum).abs() <= 1e-5 * scale,
                    "{what}: ({i}, {j}) is {got}, not {sum}"
                );
            }
            for j in n..dst_rs {
                assert_eq!(dst[i * dst_rs + j], init[i * dst_rs + j], "{what}: padding");
            }
        }
    }

    fn values(len: usize, seed: u64) -> Vec<f32> {
        random(len, seed).iter().map(|&x| x as f32).collect()
    }

    /// The three layouts the model uses: forward, input gradient, weight gradient.
    const MODEL: [((Layout, bool), (Layout, bool)); 3] = [
        ((Layout::RowMajor, false), (Layout::Transposed, true)),
        ((Layout::RowMajor, false), (Layout::RowMajor, true)),
        ((Layout::Transposed, false), (Layout::RowMajor, false)),
    ];

    #[test]
    fn model_layouts_match_f64_sums_of_rounded_operands() {
        let sizes = [
            (1, 1, 1),
            (7, 33, 5),
            (13, 50, 3),
            (64, 48, 512),
            (100, 70, 2051),
            (9, 97, 800),
        ];
        for (name, kernel) in kernels() {
            for (s, &(m, n, k)) in sizes.iter().enumerate() {
                let (a, b) = (values(m * k, s as u64), values(k * n, 100 + s as u64));
                for ((la, ha), (lb, hb)) in MODEL {
                    let lhs = Matrix::new(&a, m, k, la, ha);
                    let rhs = Matrix::new(&b, k, n, lb, hb);
                    for accumulate in [false, true] {
                        let ops = (&lhs, &rhs);
                        check(name, kernel, &a, &b, (m, n, k), ops, accumulate, true);
                    }
                }
            }
        }
    }

    #[test]
    fn every_layout_and_type_matches_f64_sums() {
        let layouts = [Layout::RowMajor, Layout::Transposed, Layout::Strided];
        for (name, kernel) in kernels() {
            for (s, &(m, n, k)) in [
                (1, 1, 1),
                (7, 33, 5),
                (13, 50, 3),
                (9, 49, 40),
                (17, 20, 64),
            ]
            .iter()
            .enumerate()
            {
                let (a, b) = (values(m * k, s as u64), values(k * n, 100 + s as u64));
                for (c, (la, lb)) in layouts
                    .iter()
                    .flat_map(|&la| layouts.iter().map(move |&lb| (la, lb)))
                    .enumerate()
                {
                    for (ha, hb) in [(false, false), (true, true), (false, true), (true, false)] {
                        let lhs = Matrix::new(&a, m, k, la, ha);
                        let rhs = Matrix::new(&b, k, n, lb, hb);
                        let ops = (&lhs, &rhs);
                        check(name, kernel, &a, &b, (m, n, k), ops, c % 2 == 0, false);
                    }
                }
            }
        }
    }

    #[test]
    fn serial_and_parallel_products_agree() {
        let (m, n, k) = (70, 150, 400);
        let (a, b) = (values(m * k, 1), values(k * n, 2));
        let lhs = Matrix::new(&a, m, k, Layout::RowMajor, false);
        let rhs = Matrix::new(&b, k, n, Layout::RowMajor, false);
        for (name, kernel) in kernels() {
            let mut out = [vec![0.0; m * n], vec![0.0; m * n]];
            for (dst, parallel) in out.iter_mut().zip([false, true]) {
                // SAFETY: m×k and k×n operands, an m×n dst.
                unsafe {
                    kernel(
                        m,
                        n,
                        k,
                        dst.as_mut_ptr(),
                        n,
                        false,
                        Src::lhs(lhs.operand()),
                        Src::rhs(rhs.operand()),
                        parallel,
                    )
                };
            }
            // The same tiles and k blocks in the same order: bit for bit.
            assert_eq!(out[0], out[1], "{name}");
        }
    }

    #[test]
    fn f32_operands_round_to_nearest_even() {
        // Halfway between two bf16s (ulp 2^-7 at 1): ties go to the even mantissa.
        let tie_down = 1.0 + 2f32.powi(-8);
        let tie_up = 1.0 + 3.0 * 2f32.powi(-8);
        let above = 1.0 + 2f32.powi(-8) + 2f32.powi(-20);
        let expected = [1.0, 1.0 + 2f32.powi(-6), 1.0 + 2f32.powi(-7)];
        let (m, k) = (20, 3);
        let a: Vec<f32> = (0..m * k)
            .map(|i| [tie_down, tie_up, above][i % 3] * if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let identity: Vec<f32> = (0..k * k)
            .map(|i| if i / k == i % k { 1.0 } else { 0.0 })
            .collect();
        for (name, kernel) in kernels() {
            for layout in [Layout::RowMajor, Layout::Transposed, Layout::Strided] {
                // `a` as lhs (times I) and as rhs (I times aᵀ).
                let t: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
                let cases = [
                    (
                        m,
                        k,
                        Matrix::new(&a, m, k, layout, false),
                        Matrix::new(&identity, k, k, Layout::RowMajor, true),
                    ),
                    (
                        k,
                        m,
                        Matrix::new(&identity, k, k, Layout::RowMajor, true),
                        Matrix::new(&t, k, m, layout, false),
                    ),
                ];
                for (rows, cols, lhs, rhs) in cases {
                    let mut dst = vec![0.0; rows * cols];
                    // SAFETY: rows×k and k×cols operands, a rows×cols dst.
                    unsafe {
                        kernel(
                            rows,
                            cols,
                            k,
                            dst.as_mut_ptr(),
                            cols,
                            false,
                            Src::lhs(lhs.operand()),
                            Src::rhs(rhs.operand()),
                            false,
                        )
                    };
                    for i in 0..m {
                        for kk in 0..k {
                            let got = if rows == m {
                                dst[i * k + kk]
                            } else {
                                dst[kk * m + i]
                            };
                            let want = expected[(i * k + kk) % 3]
                                * if (i * k + kk) % 2 == 0 { 1.0 } else { -1.0 };
                            assert_eq!(got, want, "{name} {layout:?} ({i}, {kk})");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn kernel_name_names_the_path_taken() {
        if crate::engine::cpu_has_native_bf16() {
            assert_eq!(kernel_name(), "avx512-bf16");
        } else {
            assert!(kernel_name().starts_with("portable"), "{}", kernel_name());
        }
    }
}
