//! The CPU backend: buffers are `Vec`s in host memory, ops run on rayon's thread pool, matmuls
//! through the `gemm` crate. Generic over the float type, so the same kernels are checked in f64
//! against finite differences and run in f32 for training.

mod attention;
mod embedding;
pub(crate) mod gemm_bf16;
#[cfg(test)]
pub(crate) mod gradcheck;
mod loss;
mod matmul;
pub(crate) mod matvec;
mod muon;
mod norm;
mod optim;
mod rope;
mod swiglu;

use std::marker::PhantomData;

use half::bf16;
use rayon::prelude::*;

use crate::collective::Collective;

use super::{
    AdamW, AttentionKeptOf, AttentionShape, Backend, EngineError, Float, Input, InputOf,
    MatvecWeight, Muon, Saved, SavedOf, Write, host_copy, host_vec,
};

/// The device name in the CPU backend's errors.
const DEVICE: &str = "cpu";

/// The CPU backend, computing in `T` (f32 for training, f64 for checks).
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu<T: Float> {
    _float: PhantomData<T>,
}

impl<T: Float> Cpu<T> {
    pub fn new() -> Self {
        Cpu {
            _float: PhantomData,
        }
    }
}

/// A raw pointer that tasks writing disjoint parts of one buffer may share.
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
// SAFETY: only used where the tasks' index sets are disjoint (see each use).
unsafe impl<T> Sync for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Send for SendPtr<T> {}

/// Values an op reads that may be kept as floats or, under bf16 precision, as bf16.
#[derive(Clone, Copy)]
pub(crate) enum Kept<'a, T> {
    Full(&'a [T]),
    Half(&'a [bf16]),
}

impl<'a, T: Float> Kept<'a, T> {
    fn of(input: InputOf<'a, Cpu<T>>) -> Self {
        match input {
            Input::Full(values) => Kept::Full(values),
            Input::Half(values) => Kept::Half(values),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Kept::Full(values) => values.len(),
            Kept::Half(values) => values.len(),
        }
    }

    /// The `dst.len()` values from `offset`, as floats.
    pub(crate) fn load(&self, offset: usize, dst: &mut [T]) {
        match self {
            Kept::Full(values) => dst.copy_from_slice(&values[offset..][..dst.len()]),
            Kept::Half(values) => T::widen_from_bf16(dst, &values[offset..][..dst.len()]),
        }
    }
}

/// Where an op keeps values for a later one: floats, or (under bf16 precision) bf16.
pub(crate) enum KeptMut<'a, T> {
    Full(&'a mut [T]),
    Half(&'a mut [bf16]),
}

impl<'a, T: Float> KeptMut<'a, T> {
    fn of(saved: &'a mut SavedOf<Cpu<T>>) -> Self {
        match saved {
            Saved::Full(values) => KeptMut::Full(values),
            Saved::Half(values) => KeptMut::Half(values),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            KeptMut::Full(values) => values.len(),
            KeptMut::Half(values) => values.len(),
        }
    }

    /// The destination as a pointer that tasks writing disjoint ranges may share.
    pub(crate) fn shared(self) -> SharedKept<T> {
        match self {
            KeptMut::Full(values) => SharedKept::Full(SendPtr(values.as_mut_ptr()), values.len()),
            KeptMut::Half(values) => SharedKept::Half(SendPtr(values.as_mut_ptr()), values.len()),
        }
    }
}

/// A [`KeptMut`] shared by tasks that write disjoint ranges of it.
pub(crate) enum SharedKept<T> {
    Full(SendPtr<T>, usize),
    Half(SendPtr<bf16>, usize),
}

impl<T: Float> SharedKept<T> {
    /// Writes `src` from `offset`, rounded where the values are kept in bf16.
    ///
    /// # Safety
    /// No other task reads or writes `offset..offset + src.len()` meanwhile.
    pub(crate) unsafe fn store(&self, offset: usize, src: &[T]) {
        match self {
            SharedKept::Full(ptr, len) => {
                assert!(offset + src.len() <= *len);
                // SAFETY: in bounds by the assert; the range is this caller's alone.
                let dst = unsafe { std::slice::from_raw_parts_mut(ptr.0.add(offset), src.len()) };
                dst.copy_from_slice(src);
            }
            SharedKept::Half(ptr, len) => {
                assert!(offset + src.len() <= *len);
                // SAFETY: as above.
                let dst = unsafe { std::slice::from_raw_parts_mut(ptr.0.add(offset), src.len()) };
                T::round_into_bf16(dst, src);
            }
        }
    }
}

impl<T: Float> Backend for Cpu<T> {
    type Float = T;
    type Buf = Vec<T>;
    type Tokens = Vec<u32>;
    type Half = Vec<bf16>;

    fn in_host_memory(&self) -> bool {
        true
    }
    fn zeros(&self, len: usize) -> Result<Vec<T>, EngineError> {
        host_vec(len, T::zero(), DEVICE)
    }
    fn upload(&self, data: &[T]) -> Result<Vec<T>, EngineError> {
        host_copy(data, DEVICE)
    }
    fn download(&self, buf: &Vec<T>) -> Result<Vec<T>, EngineError> {
        host_copy(buf, DEVICE)
    }
    fn upload_into(&self, buf: &mut Vec<T>, data: &[T]) -> Result<(), EngineError> {
        copy_same_length(buf, data)
    }
    fn upload_tokens(&self, tokens: &mut Vec<u32>, data: &[u32]) -> Result<(), EngineError> {
        copy_same_length(tokens, data)
    }
    fn tokens(&self, len: usize) -> Result<Vec<u32>, EngineError> {
        host_vec(len, 0, DEVICE)
    }
    fn len(&self, buf: &Vec<T>) -> usize {
        buf.len()
    }
    fn fill_zero(&self, buf: &mut Vec<T>) {
        buf.par_chunks_mut(1 << 14).for_each(|c| c.fill(T::zero()));
    }
    fn copy(&self, dst: &mut Vec<T>, src: &Vec<T>) {
        dst.copy_from_slice(src);
    }

    fn read_at(&self, dst: &mut Vec<T>, src: &Vec<T>, offset: usize) {
        let len = dst.len();
        dst.copy_from_slice(&src[offset..offset + len]);
    }

    fn add_at(&self, dst: &mut Vec<T>, offset: usize, src: &Vec<T>) {
        dst[offset..offset + src.len()]
            .par_chunks_mut(1 << 12)
            .zip(src.par_chunks(1 << 12))
            .for_each(|(o, x)| {
                for (o, &x) in o.iter_mut().zip(x) {
                    *o += x;
                }
            });
    }

    fn all_reduce_sum(&self, buf: &mut Vec<T>, world: &dyn Collective) -> Result<(), EngineError> {
        T::all_reduce_sum(world, buf);
        Ok(())
    }

    fn embedding_forward(&self, out: &mut Vec<T>, tokens: &Vec<u32>, table: &Vec<T>, c: usize) {
        embedding::forward(out, tokens, table, c);
    }
    fn embedding_backward(&self, dtable: &mut Vec<T>, tokens: &Vec<u32>, dout: &Vec<T>, c: usize) {
        embedding::backward(dtable, tokens, dout, c);
    }

    fn rmsnorm_forward(
        &self,
        out: &mut Vec<T>,
        rstd: &mut Vec<T>,
        x: &Vec<T>,
        w: &Vec<T>,
        c: usize,
        eps: f64,
    ) {
        norm::forward(out, rstd, x, w, c, eps);
    }
    fn rmsnorm_backward(
        &self,
        dx: &mut Vec<T>,
        dw: &mut Vec<T>,
        dout: &Vec<T>,
        x: &Vec<T>,
        w: &Vec<T>,
        rstd: &Vec<T>,
        c: usize,
    ) {
        norm::backward(dx, dw, dout, x, w, rstd, c);
    }

    fn matmul_forward(&self, out: &mut Vec<T>, inp: &Vec<T>, w: &Vec<T>, ic: usize, oc: usize) {
        matmul::forward(out, inp, w, ic, oc);
    }
    fn matmul_backward(
        &self,
        dinp: &mut Vec<T>,
        dw: &mut Vec<T>,
        dout: &Vec<T>,
        inp: &Vec<T>,
        w: &Vec<T>,
        ic: usize,
        oc: usize,
        dinp_write: Write,
    ) {
        matmul::backward(dinp, dw, dout, inp, w, ic, oc, dinp_write);
    }

    fn matvec_many(
        &self,
        outs: &mut [&mut Vec<T>],
        inp: &Vec<T>,
        ws: &[MatvecWeight<'_, Self>],
        ic: usize,
    ) {
        assert_eq!(inp.len(), ic);
        let mut outs: Vec<&mut [T]> = outs.iter_mut().map(|o| &mut o[..]).collect();
        let ws: Vec<matvec::Weight<'_, T>> = ws
            .iter()
            .map(|w| match *w {
                MatvecWeight::Full(w) => matvec::Weight::Full(&w[..]),
                MatvecWeight::Half(w) => matvec::Weight::Half(&w[..]),
            })
            .collect();
        matvec::matvec_many(&mut outs, inp, &ws);
    }

    fn half_zeros(&self, len: usize) -> Result<Vec<bf16>, EngineError> {
        host_vec(len, bf16::ZERO, DEVICE)
    }
    fn half_len(&self, buf: &Vec<bf16>) -> usize {
        buf.len()
    }
    fn round_to_half(&self, dst: &mut Vec<bf16>, src: &Vec<T>) {
        assert_eq!(dst.len(), src.len());
        dst.par_chunks_mut(1 << 14)
            .zip(src.par_chunks(1 << 14))
            .for_each(|(d, s)| T::round_into_bf16(d, s));
    }
    fn download_half(&self, buf: &Vec<bf16>) -> Result<Vec<T>, EngineError> {
        let mut host = host_vec(buf.len(), T::zero(), DEVICE)?;
        for (h, &b) in host.iter_mut().zip(buf) {
            *h = T::from_bf16(b);
        }
        Ok(host)
    }
    fn matmul_forward_half(
        &self,
        out: &mut Vec<T>,
        inp: &Vec<T>,
        w: &Vec<bf16>,
        ic: usize,
        oc: usize,
    ) {
        matmul::forward_half(out, inp, w, ic, oc);
    }
    fn matmul_backward_half(
        &self,
        dinp: &mut Vec<T>,
        dw: &mut Vec<T>,
        dout: &Vec<T>,
        inp: &Vec<T>,
        w: &Vec<bf16>,
        ic: usize,
        oc: usize,
        dinp_write: Write,
    ) {
        matmul::backward_half(dinp, dw, dout, inp, w, ic, oc, dinp_write);
    }

    fn rope_forward(&self, x: &mut Vec<T>, seq: usize, heads: usize, head_dim: usize, theta: f64) {
        rope::forward(x, seq, heads, head_dim, theta);
    }
    fn rope_backward(
        &self,
        dx: &mut Vec<T>,
        seq: usize,
        heads: usize,
        head_dim: usize,
        theta: f64,
    ) {
        rope::backward(dx, seq, heads, head_dim, theta);
    }

    fn rope_forward_at(
        &self,
        x: &mut Vec<T>,
        position: usize,
        heads: usize,
        head_dim: usize,
        theta: f64,
    ) {
        rope::forward_at(x, position, heads, head_dim, theta);
    }

    fn attention_decode(
        &self,
        out: &mut Vec<T>,
        q: &Vec<T>,
        k_cache: &Vec<T>,
        v_cache: &Vec<T>,
        len: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
    ) {
        attention::decode(out, q, k_cache, v_cache, len, heads, kv_heads, head_dim);
    }

    fn write_at(&self, dst: &mut Vec<T>, offset: usize, src: &Vec<T>) {
        dst[offset..offset + src.len()].copy_from_slice(src);
    }

    fn attention_forward(
        &self,
        out: &mut Vec<T>,
        probs: &mut SavedOf<Self>,
        q: &Vec<T>,
        k: &Vec<T>,
        v: &Vec<T>,
        shape: AttentionShape,
    ) {
        attention::forward(out, KeptMut::of(probs), q, k, v, shape);
    }
    fn attention_scratch_len(&self, _shape: AttentionShape) -> usize {
        0
    }
    fn attention_backward(
        &self,
        dq: &mut Vec<T>,
        dk: &mut Vec<T>,
        dv: &mut Vec<T>,
        dout: &Vec<T>,
        kept: AttentionKeptOf<'_, Self>,
        _scratch: &mut Vec<T>,
        shape: AttentionShape,
    ) {
        attention::backward(
            dq,
            dk,
            dv,
            dout,
            Kept::of(kept.probs),
            Kept::of(kept.q),
            Kept::of(kept.k),
            Kept::of(kept.v),
            shape,
        );
    }

    fn swiglu_forward(&self, out: &mut Vec<T>, gate: InputOf<'_, Self>, up: InputOf<'_, Self>) {
        swiglu::forward(out, Kept::of(gate), Kept::of(up));
    }
    fn swiglu_forward_keeping(
        &self,
        out: &mut Vec<T>,
        gate: &Vec<T>,
        up: &Vec<T>,
        kept_gate: &mut Vec<bf16>,
        kept_up: &mut Vec<bf16>,
    ) {
        swiglu::forward_keeping(out, gate, up, kept_gate, kept_up);
    }
    fn swiglu_backward(
        &self,
        dgate: &mut Vec<T>,
        dup: &mut Vec<T>,
        dout: &Vec<T>,
        gate: InputOf<'_, Self>,
        up: InputOf<'_, Self>,
    ) {
        swiglu::backward(dgate, dup, dout, Kept::of(gate), Kept::of(up));
    }

    fn add(&self, out: &mut Vec<T>, a: &Vec<T>, b: &Vec<T>) {
        out.par_chunks_mut(1 << 12)
            .zip(a.par_chunks(1 << 12))
            .zip(b.par_chunks(1 << 12))
            .for_each(|((o, a), b)| {
                for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                    *o = a + b;
                }
            });
    }
    fn add_assign(&self, acc: &mut Vec<T>, x: &Vec<T>) {
        acc.par_chunks_mut(1 << 12)
            .zip(x.par_chunks(1 << 12))
            .for_each(|(o, x)| {
                for (o, &x) in o.iter_mut().zip(x) {
                    *o += x;
                }
            });
    }

    fn cross_entropy_fused(
        &self,
        losses: &mut Vec<T>,
        logits: &mut Vec<T>,
        targets: &Vec<u32>,
        vocab: usize,
        grad_scale: f64,
    ) {
        loss::fused(losses, logits, targets, vocab, grad_scale);
    }

    fn sum(&self, buf: &Vec<T>) -> f64 {
        buf.iter().map(|&v| v.to_f64()).sum()
    }
    fn sum_squares(&self, buf: &Vec<T>) -> f64 {
        optim::sum_squares(buf)
    }
    fn adamw(&self, param: &mut Vec<T>, grad: &Vec<T>, m: &mut Vec<T>, v: &mut Vec<T>, hp: AdamW) {
        optim::adamw(param, grad, m, v, hp);
    }
    fn muon(
        &self,
        param: &mut Vec<T>,
        grad: &Vec<T>,
        momentum: &mut Vec<T>,
        scratch: &mut Vec<T>,
        rows: usize,
        cols: usize,
        hp: Muon,
    ) {
        muon::muon(param, grad, momentum, scratch, rows, cols, hp);
    }
}

fn copy_same_length<V: Copy>(dst: &mut [V], src: &[V]) -> Result<(), EngineError> {
    if dst.len() != src.len() {
        return Err(EngineError::LengthMismatch {
            expected: dst.len(),
            got: src.len(),
        });
    }
    dst.copy_from_slice(src);
    Ok(())
}

/// Standard-normal test data from a seed.
#[cfg(test)]
pub(crate) fn random(len: usize, seed: u64) -> Vec<f64> {
    let mut rng = test_rng(seed);
    (0..len).map(|_| rng.normal()).collect()
}

#[cfg(test)]
pub(crate) fn test_rng(seed: u64) -> super::Rng {
    super::Rng::new(seed)
}

#[cfg(test)]
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_out_of_memory<V: std::fmt::Debug>(result: Result<V, EngineError>, bytes: u64) {
        match result {
            Err(EngineError::OutOfMemory { device, bytes: got }) => {
                assert_eq!(device, "cpu");
                assert_eq!(got, bytes);
            }
            other => panic!("expected an out-of-memory error, got {other:?}"),
        }
    }

    /// Sizes no allocator can serve are errors, not aborts: one past `isize::MAX` bytes, one
    /// whose byte count overflows, and 2^46 floats (256 TB, beyond any address space in use).
    #[test]
    fn impossible_allocations_are_out_of_memory_errors() {
        let cpu = Cpu::<f32>::new();
        assert_out_of_memory(cpu.zeros(usize::MAX / 8), (usize::MAX / 8 * 4) as u64);
        assert_out_of_memory(cpu.zeros(usize::MAX), u64::MAX);
        assert_out_of_memory(cpu.zeros(1 << 46), 1 << 48);
        assert_out_of_memory(cpu.tokens(1 << 46), 1 << 48);
        assert_out_of_memory(Cpu::<f64>::new().zeros(usize::MAX / 8), u64::MAX - 7);
        let message = cpu.zeros(1 << 46).unwrap_err().to_string();
        assert_eq!(message, "out of memory on cpu: could not allocate 281.5 TB");
    }

    #[test]
    fn copies_of_the_wrong_length_are_errors() {
        let cpu = Cpu::<f32>::new();
        let mut buf = cpu.zeros(3).unwrap();
        assert_eq!(
            cpu.upload_into(&mut buf, &[1.0, 2.0]),
            Err(EngineError::LengthMismatch {
                expected: 3,
                got: 2
            })
        );
        cpu.upload_into(&mut buf, &[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(cpu.download(&buf).unwrap(), [1.0, 2.0, 3.0]);
    }
}
