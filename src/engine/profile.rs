//! A [`Backend`] that times every op of the backend it wraps: the per-op table of
//! `tinyllm bench train --ops`, taken on the code users run rather than on isolated kernels.
//!
//! Each op synchronizes the device before and after it (a no-op on the CPU), so a GPU's queued
//! work is charged to the op that queued it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::collective::Collective;

use super::{
    AdamW, AttentionKeptOf, AttentionShape, Backend, EngineError, InputOf, Muon, SavedOf, Write,
};

/// Time and calls of one op.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OpTotal {
    pub time: Duration,
    pub calls: u64,
}

/// `B` with every op timed while recording is on.
pub struct Profiled<B: Backend> {
    inner: B,
    recording: AtomicBool,
    totals: Mutex<BTreeMap<&'static str, OpTotal>>,
}

impl<B: Backend> Profiled<B> {
    /// Wraps `inner`; nothing is recorded until [`Profiled::record`].
    pub fn new(inner: B) -> Self {
        Profiled {
            inner,
            recording: AtomicBool::new(false),
            totals: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Starts or stops adding the ops' times to the totals.
    pub fn record(&self, on: bool) {
        self.recording.store(on, Ordering::Relaxed);
    }

    /// The totals so far, by op name.
    pub fn totals(&self) -> BTreeMap<&'static str, OpTotal> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, OpTotal>> {
        // A panic while holding the lock leaves only plain numbers behind: still usable.
        self.totals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn timed<R>(&self, op: &'static str, f: impl FnOnce(&B) -> R) -> R {
        if !self.recording.load(Ordering::Relaxed) {
            return f(&self.inner);
        }
        self.inner.synchronize();
        let started = Instant::now();
        let result = f(&self.inner);
        self.inner.synchronize();
        let elapsed = started.elapsed();
        let mut totals = self.lock();
        let total = totals.entry(op).or_default();
        total.time += elapsed;
        total.calls += 1;
        result
    }
}

impl<B: Backend> Backend for Profiled<B> {
    type Float = B::Float;
    type Buf = B::Buf;
    type Tokens = B::Tokens;
    type Half = B::Half;

    fn synchronize(&self) {
        self.inner.synchronize();
    }
    fn in_host_memory(&self) -> bool {
        self.inner.in_host_memory()
    }
    fn zeros(&self, len: usize) -> Result<B::Buf, EngineError> {
        self.timed("zeros", |b| b.zeros(len))
    }
    fn upload(&self, data: &[B::Float]) -> Result<B::Buf, EngineError> {
        self.timed("upload", |b| b.upload(data))
    }
    fn download(&self, buf: &B::Buf) -> Result<Vec<B::Float>, EngineError> {
        self.timed("download", |b| b.download(buf))
    }
    fn upload_into(&self, buf: &mut B::Buf, data: &[B::Float]) -> Result<(), EngineError> {
        self.timed("upload", |b| b.upload_into(buf, data))
    }
    fn upload_tokens(&self, tokens: &mut B::Tokens, data: &[u32]) -> Result<(), EngineError> {
        self.timed("upload_tokens", |b| b.upload_tokens(tokens, data))
    }
    fn tokens(&self, len: usize) -> Result<B::Tokens, EngineError> {
        self.timed("zeros", |b| b.tokens(len))
    }
    fn len(&self, buf: &B::Buf) -> usize {
        self.inner.len(buf)
    }
    fn fill_zero(&self, buf: &mut B::Buf) {
        self.timed("fill_zero", |b| b.fill_zero(buf))
    }
    fn copy(&self, dst: &mut B::Buf, src: &B::Buf) {
        self.timed("copy", |b| b.copy(dst, src))
    }

    fn read_at(&self, dst: &mut B::Buf, src: &B::Buf, offset: usize) {
        self.timed("read_at", |b| b.read_at(dst, src, offset))
    }

    fn add_at(&self, dst: &mut B::Buf, offset: usize, src: &B::Buf) {
        self.timed("add_at", |b| b.add_at(dst, offset, src))
    }

    fn all_reduce_sum(&self, buf: &mut B::Buf, world: &dyn Collective) -> Result<(), EngineError> {
        self.timed("all_reduce", |b| b.all_reduce_sum(buf, world))
    }

    fn join_collective(&mut self, world: &dyn Collective) -> Result<(), EngineError> {
        self.inner.join_collective(world)
    }

    fn embedding_forward(&self, out: &mut B::Buf, tokens: &B::Tokens, table: &B::Buf, c: usize) {
        self.timed("embedding_forward", |b| {
            b.embedding_forward(out, tokens, table, c)
        })
    }
    fn embedding_backward(&self, dtable: &mut B::Buf, tokens: &B::Tokens, dout: &B::Buf, c: usize) {
        self.timed("embedding_backward", |b| {
            b.embedding_backward(dtable, tokens, dout, c)
        })
    }

    fn rmsnorm_forward(
        &self,
        out: &mut B::Buf,
        rstd: &mut B::Buf,
        x: &B::Buf,
        w: &B::Buf,
        c: usize,
        eps: f64,
    ) {
        self.timed("rmsnorm_forward", |b| {
            b.rmsnorm_forward(out, rstd, x, w, c, eps)
        })
    }
    fn rmsnorm_backward(
        &self,
        dx: &mut B::Buf,
        dw: &mut B::Buf,
        dout: &B::Buf,
        x: &B::Buf,
        w: &B::Buf,
        rstd: &B::Buf,
        c: usize,
    ) {
        self.timed("rmsnorm_backward", |b| {
            b.rmsnorm_backward(dx, dw, dout, x, w, rstd, c)
        })
    }

    fn matmul_forward(&self, out: &mut B::Buf, inp: &B::Buf, w: &B::Buf, ic: usize, oc: usize) {
        self.timed("matmul_forward", |b| b.matmul_forward(out, inp, w, ic, oc))
    }
    fn matmul_backward(
        &self,
        dinp: &mut B::Buf,
        dw: &mut B::Buf,
        dout: &B::Buf,
        inp: &B::Buf,
        w: &B::Buf,
        ic: usize,
        oc: usize,
        dinp_write: Write,
    ) {
        self.timed("matmul_backward", |b| {
            b.matmul_backward(dinp, dw, dout, inp, w, ic, oc, dinp_write)
        })
    }

    fn half_zeros(&self, len: usize) -> Result<B::Half, EngineError> {
        self.timed("zeros", |b| b.half_zeros(len))
    }
    fn half_len(&self, buf: &B::Half) -> usize {
        self.inner.half_len(buf)
    }
    fn round_to_half(&self, dst: &mut B::Half, src: &B::Buf) {
        self.timed("round_to_half", |b| b.round_to_half(dst, src))
    }
    fn download_half(&self, buf: &B::Half) -> Result<Vec<B::Float>, EngineError> {
        self.timed("download", |b| b.download_half(buf))
    }
    fn matmul_forward_half(
        &self,
        out: &mut B::Buf,
        inp: &B::Buf,
        w: &B::Half,
        ic: usize,
        oc: usize,
    ) {
        self.timed("matmul_forward_half", |b| {
            b.matmul_forward_half(out, inp, w, ic, oc)
        })
    }
    fn matmul_backward_half(
        &self,
        dinp: &mut B::Buf,
        dw: &mut B::Buf,
        dout: &B::Buf,
        inp: &B::Buf,
        w: &B::Half,
        ic: usize,
        oc: usize,
        dinp_write: Write,
    ) {
        self.timed("matmul_backward_half", |b| {
            b.matmul_backward_half(dinp, dw, dout, inp, w, ic, oc, dinp_write)
        })
    }

    fn rope_forward(&self, x: &mut B::Buf, seq: usize, heads: usize, head_dim: usize, theta: f64) {
        self.timed("rope_forward", |b| {
            b.rope_forward(x, seq, heads, head_dim, theta)
        })
    }
    fn rope_backward(
        &self,
        dx: &mut B::Buf,
        seq: usize,
        heads: usize,
        head_dim: usize,
        theta: f64,
    ) {
        self.timed("rope_backward", |b| {
            b.rope_backward(dx, seq, heads, head_dim, theta)
        })
    }
    fn rope_forward_at(
        &self,
        x: &mut B::Buf,
        position: usize,
        heads: usize,
        head_dim: usize,
        theta: f64,
    ) {
        self.timed("rope_forward_at", |b| {
            b.rope_forward_at(x, position, heads, head_dim, theta)
        })
    }
    fn attention_decode(
        &self,
        out: &mut B::Buf,
        q: &B::Buf,
        k_cache: &B::Buf,
        v_cache: &B::Buf,
        len: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
    ) {
        self.timed("attention_decode", |b| {
            b.attention_decode(out, q, k_cache, v_cache, len, heads, kv_heads, head_dim)
        })
    }
    fn write_at(&self, dst: &mut B::Buf, offset: usize, src: &B::Buf) {
        self.timed("write_at", |b| b.write_at(dst, offset, src))
    }

    fn attention_forward(
        &self,
        out: &mut B::Buf,
        probs: &mut SavedOf<B>,
        q: &B::Buf,
        k: &B::Buf,
        v: &B::Buf,
        shape: AttentionShape,
    ) {
        self.timed("attention_forward", |b| {
            b.attention_forward(out, probs, q, k, v, shape)
        })
    }
    fn attention_scratch_len(&self, shape: AttentionShape) -> usize {
        self.inner.attention_scratch_len(shape)
    }
    fn attention_backward(
        &self,
        dq: &mut B::Buf,
        dk: &mut B::Buf,
        dv: &mut B::Buf,
        dout: &B::Buf,
        kept: AttentionKeptOf<'_, B>,
        scratch: &mut B::Buf,
        shape: AttentionShape,
    ) {
        self.timed("attention_backward", |b| {
            b.attention_backward(dq, dk, dv, dout, kept, scratch, shape)
        })
    }

    fn swiglu_forward(&self, out: &mut B::Buf, gate: InputOf<'_, B>, up: InputOf<'_, B>) {
        self.timed("swiglu_forward", |b| b.swiglu_forward(out, gate, up))
    }
    fn swiglu_forward_keeping(
        &self,
        out: &mut B::Buf,
        gate: &B::Buf,
        up: &B::Buf,
        kept_gate: &mut B::Half,
        kept_up: &mut B::Half,
    ) {
        self.timed("swiglu_forward", |b| {
            b.swiglu_forward_keeping(out, gate, up, kept_gate, kept_up)
        })
    }
    fn swiglu_backward(
        &self,
        dgate: &mut B::Buf,
        dup: &mut B::Buf,
        dout: &B::Buf,
        gate: InputOf<'_, B>,
        up: InputOf<'_, B>,
    ) {
        self.timed("swiglu_backward", |b| {
            b.swiglu_backward(dgate, dup, dout, gate, up)
        })
    }

    fn add(&self, out: &mut B::Buf, a: &B::Buf, b_: &B::Buf) {
        self.timed("add", |b| b.add(out, a, b_))
    }
    fn add_assign(&self, acc: &mut B::Buf, x: &B::Buf) {
        self.timed("add_assign", |b| b.add_assign(acc, x))
    }

    fn cross_entropy_fused(
        &self,
        losses: &mut B::Buf,
        logits: &mut B::Buf,
        targets: &B::Tokens,
        vocab: usize,
        grad_scale: f64,
    ) {
        self.timed("cross_entropy", |b| {
            b.cross_entropy_fused(losses, logits, targets, vocab, grad_scale)
        })
    }

    fn sum(&self, buf: &B::Buf) -> f64 {
        self.timed("sum", |b| b.sum(buf))
    }
    fn sum_squares(&self, buf: &B::Buf) -> f64 {
        self.timed("sum_squares", |b| b.sum_squares(buf))
    }
    fn sum_squares_all(&self, bufs: &[B::Buf]) -> f64 {
        self.timed("sum_squares", |b| b.sum_squares_all(bufs))
    }
    fn adamw(&self, param: &mut B::Buf, grad: &B::Buf, m: &mut B::Buf, v: &mut B::Buf, hp: AdamW) {
        self.timed("adamw", |b| b.adamw(param, grad, m, v, hp))
    }
    fn muon_scratch_len(&self, rows: usize, cols: usize) -> usize {
        self.inner.muon_scratch_len(rows, cols)
    }
    fn muon(
        &self,
        param: &mut B::Buf,
        grad: &B::Buf,
        momentum: &mut B::Buf,
        scratch: &mut B::Buf,
        rows: usize,
        cols: usize,
        hp: Muon,
    ) {
        self.timed("muon", |b| {
            b.muon(param, grad, momentum, scratch, rows, cols, hp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Cpu;

    #[test]
    fn records_only_while_on_and_forwards_results() {
        let cpu = Profiled::new(Cpu::<f32>::new());
        let mut a = cpu.upload(&[1.0, 2.0]).unwrap();
        assert!(cpu.totals().is_empty());
        cpu.record(true);
        let b = cpu.upload(&[3.0, 4.0]).unwrap();
        cpu.add_assign(&mut a, &b);
        cpu.add_assign(&mut a, &b);
        cpu.record(false);
        cpu.fill_zero(&mut a);
        let totals = cpu.totals();
        assert_eq!(totals["add_assign"].calls, 2);
        assert_eq!(totals["upload"].calls, 1);
        assert!(!totals.contains_key("fill_zero"));
        assert_eq!(cpu.inner().download(&a).unwrap(), [0.0, 0.0]);
    }
}
