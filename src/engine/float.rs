//! The float types the engine computes in: f32 for training, f64 for gradient checks.

use crate::collective::Collective;
use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{AddAssign, MulAssign, SubAssign};

use half::bf16;

use super::vmath;

pub trait Float:
    num_traits::Float
    + AddAssign
    + SubAssign
    + MulAssign
    + Sum
    + Default
    + Debug
    + Send
    + Sync
    + bytemuck::Pod
    + 'static
{
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;

    /// Sums `values` element-wise over the ranks of `world` (in this float's width).
    fn all_reduce_sum(world: &dyn Collective, values: &mut [Self]);

    /// This value rounded to bf16 (to nearest, ties to even).
    fn to_bf16(self) -> bf16 {
        bf16::from_f64(self.to_f64())
    }
    /// A bf16 value, widened exactly.
    fn from_bf16(x: bf16) -> Self {
        Self::from_f64(x.to_f64())
    }

    /// `dst[i] = src[i]` rounded to bf16 (to nearest, ties to even): activations kept in bf16.
    fn round_into_bf16(dst: &mut [bf16], src: &[Self]) {
        assert_eq!(dst.len(), src.len());
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s.to_bf16();
        }
    }
    /// `dst[i] = src[i]` widened exactly.
    fn widen_from_bf16(dst: &mut [Self], src: &[bf16]) {
        assert_eq!(dst.len(), src.len());
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = Self::from_bf16(s);
        }
    }

    /// `Σ a[i] · b[i]` over the shorter length: the matrix-vector products of decoding.
    fn dot(a: &[Self], b: &[Self]) -> Self {
        dot_portable(a, b)
    }

    /// The largest element (NaNs skipped), −∞ for none: a softmax row's shift.
    fn max_of(xs: &[Self]) -> Self {
        xs.iter().fold(Self::neg_infinity(), |m, &x| m.max(x))
    }

    /// `xs[i] = e^(xs[i] − shift)`, returning their sum: a softmax row's numerators. f32 runs a
    /// vectorised polynomial exp; f64 keeps the standard library's, so gradient checks stay
    /// exact.
    fn exp_sum(xs: &mut [Self], shift: Self) -> Self {
        let mut sum = Self::zero();
        for x in xs.iter_mut() {
            *x = (*x - shift).exp();
            sum += *x;
        }
        sum
    }

    /// `out = silu(gate) · up`, elementwise (the exp as in [`Float::exp_sum`]).
    fn swiglu(out: &mut [Self], gate: &[Self], up: &[Self]) {
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = g * u / (Self::one() + (-g).exp());
        }
    }

    /// `dgate = dout · up · σ(g)(1 + g(1 − σ(g)))`, `dup = dout · silu(g)`, both overwritten.
    fn swiglu_backward(
        dgate: &mut [Self],
        dup: &mut [Self],
        dout: &[Self],
        gate: &[Self],
        up: &[Self],
    ) {
        let one = Self::one();
        for ((((dg, du), &d), &g), &u) in dgate.iter_mut().zip(dup).zip(dout).zip(gate).zip(up) {
            let s = one / (one + (-g).exp());
            *dg = d * u * s * (one + g * (one - s));
            *du = d * g * s;
        }
    }
}

/// A dot product with eight running sums, which compilers keep in vector registers.
pub(crate) fn dot_portable<T: Float>(a: &[T], b: &[T]) -> T {
    let mut sums = [T::zero(); 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (a8.remainder(), b8.remainder());
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            sums[i] += x[i] * y[i];
        }
    }
    let mut total = sums.iter().fold(T::zero(), |acc, &s| acc + s);
    for (x, y) in ra.iter().zip(rb) {
        total += *x * *y;
    }
    total
}

/// f32 dot product with AVX2 and FMA: four 8-wide accumulators.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: every load reads 8 floats at i + 8j < n from both slices.
    unsafe {
        while i + 32 <= n {
            for (j, sum) in acc.iter_mut().enumerate() {
                let x = _mm256_loadu_ps(pa.add(i + 8 * j));
                let y = _mm256_loadu_ps(pb.add(i + 8 * j));
                *sum = _mm256_fmadd_ps(x, y, *sum);
            }
            i += 32;
        }
        while i + 8 <= n {
            let x = _mm256_loadu_ps(pa.add(i));
            let y = _mm256_loadu_ps(pb.add(i));
            acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
            i += 8;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut lanes = [0.0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
        let mut total: f32 = lanes.iter().sum();
        for k in i..n {
            total += a[k] * b[k];
        }
        total
    }
}

impl Float for f32 {
    fn all_reduce_sum(world: &dyn Collective, values: &mut [f32]) {
        world.all_reduce_sum_f32(values);
    }
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn to_bf16(self) -> bf16 {
        bf16::from_f32(self)
    }
    fn from_bf16(x: bf16) -> Self {
        x.to_f32()
    }
    fn round_into_bf16(dst: &mut [bf16], src: &[f32]) {
        assert_eq!(dst.len(), src.len());
        vmath::round_to_bf16(dst, src);
    }
    fn widen_from_bf16(dst: &mut [f32], src: &[bf16]) {
        assert_eq!(dst.len(), src.len());
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = f32::from_bits(u32::from(s.to_bits()) << 16);
        }
    }

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: both features were just detected.
            return unsafe { dot_f32_avx2(a, b) };
        }
        dot_portable(a, b)
    }

    fn max_of(xs: &[f32]) -> f32 {
        vmath::max(xs)
    }
    fn exp_sum(xs: &mut [f32], shift: f32) -> f32 {
        vmath::exp_sum(xs, shift)
    }
    fn swiglu(out: &mut [f32], gate: &[f32], up: &[f32]) {
        vmath::swiglu(out, gate, up);
    }
    fn swiglu_backward(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
        vmath::swiglu_backward(dgate, dup, dout, gate, up);
    }
}

impl Float for f64 {
    fn all_reduce_sum(world: &dyn Collective, values: &mut [f64]) {
        world.all_reduce_sum_f64(values);
    }
    fn from_f64(x: f64) -> Self {
        x
    }
    fn to_f64(self) -> f64 {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_products_agree_with_a_plain_sum() {
        for n in [0, 1, 7, 8, 31, 32, 33, 100, 288] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 13 % 7) as f32 - 3.0) / 5.0).collect();
            let plain: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (*x as f64) * (*y as f64))
                .sum();
            assert!((f32::dot(&a, &b) as f64 - plain).abs() < 1e-4, "n = {n}");
            let (a64, b64): (Vec<f64>, Vec<f64>) = (
                a.iter().map(|&x| x as f64).collect(),
                b.iter().map(|&x| x as f64).collect(),
            );
            assert!((f64::dot(&a64, &b64) - plain).abs() < 1e-12, "n = {n}");
        }
    }

    /// The vectorisable f32 rounding agrees with the `half` crate's on ties, carries into the
    /// exponent, infinities, subnormals and NaN.
    #[test]
    fn bulk_bf16_rounding_matches_the_half_crate() {
        let mut values = vec![
            0.0f32,
            -0.0,
            1.0,
            f32::from_bits(0x3f80_8000),
            f32::from_bits(0x3f81_8000),
            f32::from_bits(0x3f80_7fff),
            f32::from_bits(0x3fff_ffff),
            f32::MAX,
            f32::MIN_POSITIVE / 3.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        values.extend((0..1000).map(|i| ((i * 7919 % 2003) as f32 - 1001.0) * 1.37e-3));
        let mut rounded = vec![bf16::ZERO; values.len()];
        f32::round_into_bf16(&mut rounded, &values);
        for (&x, &r) in values.iter().zip(&rounded) {
            assert_eq!(r.to_bits(), bf16::from_f32(x).to_bits(), "{x:e}");
        }
        let mut widened = vec![0.0f32; values.len()];
        f32::widen_from_bf16(&mut widened, &rounded);
        for (&w, &r) in widened.iter().zip(&rounded) {
            assert_eq!(w.to_bits(), r.to_f32().to_bits());
        }
        let mut nan = [bf16::ZERO; 2];
        f32::round_into_bf16(&mut nan, &[f32::NAN, f32::from_bits(0x7f80_0001)]);
        assert!(nan.iter().all(|x| x.is_nan()));
    }
}
