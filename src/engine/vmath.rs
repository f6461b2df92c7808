//! Vectorised f32 kernels for the elementwise parts of the step: a fast `exp` and the loops that
//! call it (softmax rows, SwiGLU). Each kernel is written once as portable Rust that compilers
//! vectorise, and compiled three times: with AVX-512, with AVX2 + FMA (both chosen at run time)
//! and for the baseline target.
//!
//! The exp is Cephes' `expf`: Cody-Waite reduction `x = n·ln2 + r`, `|r| ≤ ln2/2`, a degree-7
//! polynomial for `e^r`, and `2^n` built in the exponent bits. Its relative error is at most
//! 1.2e-7 on every seventh f32 with |x| ≤ 87 (measured against f64; the tests hold it to 2e-7).
//! Results below the normal range round through two scalings (to 0 below about −104), −∞ gives
//! 0, +∞ and overflow give +∞, NaN stays NaN.

use half::bf16;

const LANES: usize = 16;
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 · 2²³: adding it rounds to an integer (ties to even) that sits in the low mantissa bits.
const ROUND: f32 = 12_582_912.0;
const P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// `e^x`, branch-free so loops of it vectorise. `FMA` only where the CPU has fused multiply-add
/// (elsewhere `mul_add` is a slow library call).
#[inline(always)]
pub(crate) fn exp<const FMA: bool>(x: f32) -> f32 {
    // Beyond these, e^x is 0 or +∞ in f32; clamping keeps 2^n's exponents valid (NaN passes).
    let x = x.clamp(-104.0, 89.0);
    let t = madd::<FMA>(x, LOG2E, ROUND);
    let n = t - ROUND;
    let ni = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = madd::<FMA>(n, -LN2_HI, x);
    let r = madd::<FMA>(n, -LN2_LO, r);
    let mut p = P[0];
    for &c in &P[1..] {
        p = madd::<FMA>(p, r, c);
    }
    let p = madd::<FMA>(p, r * r, r + 1.0);
    // 2^n in two factors, each a normal float for n in [-150, 128].
    let half = ni >> 1;
    let scale = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
    p * scale(half) * scale(ni - half)
}

/// Largest element (NaNs skipped), −∞ for none.
#[inline(always)]
fn max_kernel<const FMA: bool>(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
        }
    }
    lanes
        .iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

/// `xs[i] = e^(xs[i] − shift)`, returning their sum (in 16 lanes, a fixed order).
#[inline(always)]
fn exp_sum_kernel<const FMA: bool>(xs: &mut [f32], shift: f32) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let mut chunks = xs.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            let e = exp::<FMA>(c[i] - shift);
            c[i] = e;
            lanes[i] += e;
        }
    }
    let mut rest = 0.0;
    for x in chunks.into_remainder() {
        *x = exp::<FMA>(*x - shift);
        rest += *x;
    }
    lanes.iter().sum::<f32>() + rest
}

#[inline(always)]
fn swiglu_kernel<const FMA: bool>(out: &mut [f32], gate: &[f32], up: &[f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g * u / (1.0 + exp::<FMA>(-g));
    }
}

#[inline(always)]
fn swiglu_backward_kernel<const FMA: bool>(
    dgate: &mut [f32],
    dup: &mut [f32],
    dout: &[f32],
    gate: &[f32],
    up: &[f32],
) {
    let n = dgate.len();
    let (dup, dout, gate, up) = (&mut dup[..n], &dout[..n], &gate[..n], &up[..n]);
    for i in 0..n {
        let (g, u, d) = (gate[i], up[i], dout[i]);
        let s = 1.0 / (1.0 + exp::<FMA>(-g));
        dgate[i] = d * u * s * (1.0 + g * (1.0 - s));
        dup[i] = d * g * s;
    }
}

/// Rounds to bf16 (to nearest, ties to even) by integer arithmetic on the bits, NaN kept a quiet
/// NaN: branch-free, so that with AVX-512 the loop becomes vector adds and a 32-to-16-bit
/// narrowing (about 7x the scalar loop here).
#[inline(always)]
fn round_to_bf16_kernel<const FMA: bool>(dst: &mut [bf16], src: &[f32]) {
    let n = dst.len().min(src.len());
    let (dst, src) = (&mut dst[..n], &src[..n]);
    for i in 0..n {
        let bits = src[i].to_bits();
        let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
        let nan = (bits & 0x7fff_ffff) > 0x7f80_0000;
        let out = if nan { (bits >> 16) | 0x40 } else { rounded };
        dst[i] = bf16::from_bits(out as u16);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

fn level() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx2") && has!("fma") {
            return Level::Avx512;
        }
        if has!("avx2") && has!("fma") {
            return Level::Avx2;
        }
    }
    Level::Portable
}

/// A public function running `$kernel` at the best level the CPU has, and a module of the same
/// name whose `at` runs it at a given level (for tests of each).
macro_rules! multiversion {
    ($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? = $kernel:ident) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            $name::at(level(), $($arg),*)
        }

        mod $name {
            use super::*;

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma")]
            fn avx512($($arg: $ty),*) $(-> $ret)? {
                $kernel::<true>($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            fn avx2($($arg: $ty),*) $(-> $ret)? {
                $kernel::<true>($($arg),*)
            }

            /// `level` must be [`level()`] or below it.
            pub(super) fn at(level: Level, $($arg: $ty),*) $(-> $ret)? {
                match level {
                    // SAFETY: callers pass a level the CPU has (`level()` or below).
                    #[cfg(target_arch = "x86_64")]
                    Level::Avx512 => unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    #[cfg(target_arch = "x86_64")]
                    Level::Avx2 => unsafe { avx2($($arg),*) },
                    Level::Portable => $kernel::<false>($($arg),*),
                }
            }
        }
    };
}

multiversion!(
    /// The largest element of `xs` (NaNs skipped), −∞ for an empty slice.
    max(xs: &[f32]) -> f32 = max_kernel
);
multiversion!(
    /// `xs[i] = e^(xs[i] − shift)`; returns their sum.
    exp_sum(xs: &mut [f32], shift: f32) -> f32 = exp_sum_kernel
);
multiversion!(
    /// `out = silu(gate) · up`.
    swiglu(out: &mut [f32], gate: &[f32], up: &[f32]) = swiglu_kernel
);
multiversion!(
    /// `dgate = dout · up · σ(g)(1 + g(1 − σ(g)))`, `dup = dout · silu(g)` (overwritten).
    swiglu_backward(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) = swiglu_backward_kernel
);
multiversion!(
    /// `dst[i] = src[i]` rounded to bf16 (to nearest, ties to even).
    round_to_bf16(dst: &mut [bf16], src: &[f32]) = round_to_bf16_kernel
);

#[cfg(test)]
mod tests {
    use super::*;

    fn levels() -> Vec<Level> {
        let mut all = vec![Level::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if level() != Level::Portable {
                all.push(Level::Avx2);
            }
            if level() == Level::Avx512 {
                all.push(Level::Avx512);
            }
        }
        all
    }

    /// Every f32 in [-87, 88] at a fine stride, and the edges.
    #[test]
    fn exp_is_within_2e_7_of_the_true_value_at_every_level() {
        let xs: Vec<f32> = (0..2_000_000)
            .map(|i| -87.0 + 175.0 * i as f32 / 2_000_000.0)
            .chain([0.0, -0.0, 1e-8, -1e-8, 0.5, -0.5, 0.346_573_6, -0.346_573_6])
            .collect();
        for level in levels() {
            let mut ys = xs.clone();
            exp_sum::at(level, &mut ys, 0.0);
            let worst = xs
                .iter()
                .zip(&ys)
                .map(|(&x, &y)| {
                    let truth = (x as f64).exp();
                    ((y as f64 - truth) / truth).abs()
                })
                .fold(0.0f64, f64::max);
            assert!(worst <= 2e-7, "{level:?}: relative error {worst:e}");
        }
    }

    #[test]
    fn exp_handles_the_edges_at_every_level() {
        let xs = [
            f32::NEG_INFINITY,
            -1000.0,
            -104.0,
            89.0,
            1000.0,
            f32::INFINITY,
            f32::NAN,
            88.7,
            -87.5,
        ];
        for level in levels() {
            let mut ys = xs;
            exp_sum::at(level, &mut ys, 0.0);
            assert_eq!(&ys[..3], &[0.0, 0.0, 0.0], "{level:?}");
            assert!(ys[3..6].iter().all(|y| *y == f32::INFINITY), "{level:?}");
            assert!(ys[6].is_nan(), "{level:?}");
            for (x, y) in xs[7..].iter().zip(&ys[7..]) {
                let truth = (*x as f64).exp();
                assert!(((*y as f64 - truth) / truth).abs() < 1e-6, "{level:?}: {x}");
            }
        }
    }

    /// Ties, carries into the exponent, the largest finite values, infinities, subnormals and
    /// NaNs round as the `half` crate rounds them.
    #[test]
    fn bf16_rounding_matches_the_half_crate_at_every_level() {
        let mut xs: Vec<f32> = [
            0x0000_0000u32,
            0x8000_0000,
            0x3f80_8000,
            0x3f81_8000,
            0x3f80_7fff,
            0x3fff_ffff,
            0x7f7f_ffff,
            0xff7f_ffff,
            0x0000_0001,
            0x807f_ffff,
            0x7f80_0000,
            0xff80_0000,
            0x7fc0_0000,
            0x7f80_0001,
            0xffff_ffff,
        ]
        .map(f32::from_bits)
        .to_vec();
        xs.extend((0..5000).map(|i| ((i * 7919 % 20011) as f32 - 10005.0) * 3.7e-3));
        for level in levels() {
            let mut out = vec![bf16::ZERO; xs.len()];
            round_to_bf16::at(level, &mut out, &xs);
            for (x, y) in xs.iter().zip(&out) {
                let want = bf16::from_f32(*x);
                if x.is_nan() {
                    assert!(y.is_nan(), "{level:?}: {x:e}");
                } else {
                    assert_eq!(y.to_bits(), want.to_bits(), "{level:?}: {x:e}");
                }
            }
        }
    }

    #[test]
    fn kernels_agree_with_plain_loops_at_every_level() {
        let n = 100;
        let gate: Vec<f32> = (0..n).map(|i| (i as f32 - 50.0) / 7.0).collect();
        let up: Vec<f32> = (0..n).map(|i| ((i * 13 % 17) as f32 - 8.0) / 3.0).collect();
        let dout: Vec<f32> = (0..n).map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0).collect();
        let close = |a: f32, b: f64| ((a as f64) - b).abs() <= 1e-6 * (1.0 + b.abs());
        for level in levels() {
            assert_eq!(max::at(level, &gate), gate[n - 1]);
            assert_eq!(max::at(level, &[]), f32::NEG_INFINITY);
            assert_eq!(max::at(level, &[f32::NAN, 1.0, f32::NAN]), 1.0);
            let mut row = gate.clone();
            let sum = exp_sum::at(level, &mut row, 2.0);
            let truth: f64 = gate.iter().map(|&g| (g as f64 - 2.0).exp()).sum();
            assert!(close(sum, truth), "{level:?}: {sum} vs {truth}");
            let mut out = vec![0.0; n];
            swiglu::at(level, &mut out, &gate, &up);
            let (mut dgate, mut dup) = (vec![9.0; n], vec![9.0; n]);
            swiglu_backward::at(level, &mut dgate, &mut dup, &dout, &gate, &up);
            for i in 0..n {
                let (g, u, d) = (gate[i] as f64, up[i] as f64, dout[i] as f64);
                let s = 1.0 / (1.0 + (-g).exp());
                assert!(close(out[i], g * s * u), "{level:?}");
                assert!(
                    close(dgate[i], d * u * s * (1.0 + g * (1.0 - s))),
                    "{level:?}"
                );
                assert!(close(dup[i], d * g * s), "{level:?}");
            }
        }
    }
}
