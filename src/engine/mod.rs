//! The tensor engine: a [`Backend`] trait over device buffers and the fused ops a LLaMA2 decoder
//! needs, each with its hand-derived backward pass, in the manner of llm.c.
//!
//! The model and the optimizer are written against [`Backend`] only, so a GPU backend can take
//! the CPU's place without touching them. Backward passes accumulate (`+=`) into their gradient
//! buffers, so the caller zeroes them once per optimizer step; the exceptions, which overwrite
//! because the model has them write their buffers first, are [`Backend::attention_backward`]
//! and [`Backend::swiglu_backward`], and the input gradient of a matmul's backward pass when
//! asked to ([`Write::Overwrite`]): no zeroing pass before them.
//!
//! Under bf16 precision the activations kept for a backward pass may be bf16 ([`Saved`]): the
//! ops that read them take an [`Input`], floats or bf16 widened as read.
//!
//! Allocation and transfers between host and device return [`EngineError`]: an out-of-memory is
//! an error the caller words for the user, never a panic or an abort.

use crate::collective::Collective;

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod device;
mod error;
mod float;
pub mod optimizer;
mod precision;
pub mod profile;
mod rng;
mod vmath;

pub use cpu::Cpu;
#[cfg(feature = "cuda")]
pub use cuda::Cuda;
pub use device::{Device, DeviceError, DeviceInfo, OnDevice};
pub use error::EngineError;
pub(crate) use error::{host_copy, host_vec};
pub use float::Float;
pub use optimizer::{Optimizer, OptimizerKind, OptimizerSettings, clip_factor, grad_norm};
pub use precision::{
    NO_BF16_INSTRUCTIONS_VAR, Precision, PrecisionSetting, bf16_instructions_disabled,
    cpu_has_native_bf16, matmul_kernel,
};
pub use rng::Rng;

/// Shapes of the attention op: batch, sequence, heads, kv heads, head size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// One parameter tensor: its name (Hugging Face's, for a model), shape, and whether weight
/// decay applies.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub decay: bool,
}

impl ParamInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A matmul weight as [`Backend::matvec_many`] reads it: the float tensor, or its bf16 copy
/// (under bf16 precision).
pub enum MatvecWeight<'a, B: Backend + ?Sized> {
    Full(&'a B::Buf),
    Half(&'a B::Half),
}

impl<B: Backend + ?Sized> Clone for MatvecWeight<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend + ?Sized> Copy for MatvecWeight<'_, B> {}

/// An activation kept from the forward pass for the backward pass: floats (`F`, a backend's
/// `Buf`), or (under bf16 precision) bf16 values (`H`, its `Half`), which halves the largest
/// part of a training step's memory. Generic over the buffer types rather than the backend, so
/// that a wrapper backend with the same buffers passes it through.
pub enum Saved<F, H> {
    Full(F),
    Half(H),
}

/// [`Saved`] with a backend's buffer types.
pub type SavedOf<B> = Saved<<B as Backend>::Buf, <B as Backend>::Half>;

impl<F, H> Saved<F, H> {
    /// `len` zeros, in bf16 under bf16 precision.
    pub fn zeros<B>(backend: &B, len: usize, precision: Precision) -> Result<Self, EngineError>
    where
        B: Backend<Buf = F, Half = H> + ?Sized,
    {
        Ok(match precision {
            Precision::F32 => Saved::Full(backend.zeros(len)?),
            Precision::Bf16 => Saved::Half(backend.half_zeros(len)?),
        })
    }

    /// Where an op computes these values in floats: this buffer itself, or, when the values
    /// are kept in bf16, `work`, to be rounded into it by [`Saved::keep`].
    pub fn floats<'a>(&'a mut self, work: &'a mut F) -> &'a mut F {
        match self {
            Saved::Full(buf) => buf,
            Saved::Half(_) => work,
        }
    }

    /// Rounds the floats computed in `work` into this bf16 buffer; nothing for floats (they
    /// were computed in place).
    pub fn keep<B>(&mut self, backend: &B, work: &F)
    where
        B: Backend<Buf = F, Half = H> + ?Sized,
    {
        if let Saved::Half(kept) = self {
            backend.round_to_half(kept, work);
        }
    }

    /// The values, for an op to read.
    pub fn input(&self) -> Input<'_, F, H> {
        match self {
            Saved::Full(buf) => Input::Full(buf),
            Saved::Half(buf) => Input::Half(buf),
        }
    }
}

/// Values an op reads in either form: floats, or bf16 values it widens as it reads them.
pub enum Input<'a, F, H> {
    Full(&'a F),
    Half(&'a H),
}

/// [`Input`] with a backend's buffer types.
pub type InputOf<'a, B> = Input<'a, <B as Backend>::Buf, <B as Backend>::Half>;

impl<F, H> Clone for Input<'_, F, H> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<F, H> Copy for Input<'_, F, H> {}

/// What attention's backward pass reads from its forward pass: the probabilities, the rotated
/// queries and keys, and the values.
pub struct AttentionKept<'a, F, H> {
    pub probs: Input<'a, F, H>,
    pub q: Input<'a, F, H>,
    pub k: Input<'a, F, H>,
    pub v: Input<'a, F, H>,
}

/// [`AttentionKept`] with a backend's buffer types.
pub type AttentionKeptOf<'a, B> = AttentionKept<'a, <B as Backend>::Buf, <B as Backend>::Half>;

impl<F, H> Clone for AttentionKept<'_, F, H> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<F, H> Copy for AttentionKept<'_, F, H> {}

/// Whether an op adds its result to what a buffer holds or replaces it: the first of the
/// products summed into an input gradient replaces, so no zeroing pass comes before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    Overwrite,
    Accumulate,
}

/// Hyperparameters of one AdamW step for one tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// The bias corrections of this step, `1 - beta1^step` and `1 - beta2^step` (step from 1):
    /// the same for every tensor, so the optimizer computes them once per step.
    pub correction1: f64,
    pub correction2: f64,
    /// What gradient clipping multiplies the gradient by (1 when it does not clip), applied as
    /// the gradient is read: no pass of its own over every gradient.
    pub grad_scale: f64,
}

impl AdamW {
    /// The bias corrections of step `step` (from 1).
    pub fn corrections(beta1: f64, beta2: f64, step: u64) -> (f64, f64) {
        let step = i32::try_from(step).unwrap_or(i32::MAX);
        (1.0 - beta1.powi(step), 1.0 - beta2.powi(step))
    }
}

/// Hyperparameters of one Muon step for one matrix (Keller Jordan's Muon, as the modded-nanogpt
/// speedruns use it): momentum, then the update orthogonalised by a quintic Newton–Schulz
/// iteration, scaled so tall matrices take steps of the same RMS as square ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Muon {
    pub lr: f64,
    pub momentum: f64,
    /// Step along `grad + momentum · buffer` (Nesterov) rather than along the buffer.
    pub nesterov: bool,
    /// Newton–Schulz iterations (5 in the published recipe).
    pub ns_steps: usize,
    /// Decoupled: the weights shrink by `lr · weight_decay` before the step.
    pub weight_decay: f64,
    /// Gradient clipping's factor, as [`AdamW::grad_scale`].
    pub grad_scale: f64,
}

/// The quintic Newton–Schulz coefficients of Muon: chosen by its authors to push every singular
/// value into roughly [0.7, 1.2] in five iterations, not to converge to exactly 1.
pub const NEWTON_SCHULZ: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);

/// Device memory and the ops of the model, forward and backward.
///
/// Buffers hold `Self::Float` values in row-major order; `n` is the number of rows (batch ×
/// sequence), `c` the row width.
pub trait Backend: Send + Sync {
    type Float: Float;
    /// A buffer of floats in the backend's memory.
    type Buf: Send + Sync;
    /// A buffer of token ids in the backend's memory.
    type Tokens: Send + Sync;
    /// A buffer of bf16 values in the backend's memory: the weights' matmul copies under bf16
    /// precision (see [`Precision`]).
    type Half: Send + Sync;

    /// Waits until the ops queued so far have finished (a GPU's are asynchronous); for timing.
    fn synchronize(&self) {}

    /// Whether the buffers live in host memory, where an allocation beyond the machine's memory
    /// is not refused but ends with the kernel killing the process (so callers check first).
    fn in_host_memory(&self) -> bool {
        false
    }

    /// A buffer of `len` zeros.
    fn zeros(&self, len: usize) -> Result<Self::Buf, EngineError>;
    /// A new buffer holding `data`.
    fn upload(&self, data: &[Self::Float]) -> Result<Self::Buf, EngineError>;
    /// The buffer's values in host memory.
    fn download(&self, buf: &Self::Buf) -> Result<Vec<Self::Float>, EngineError>;
    /// Overwrites `buf` with `data` (of the same length).
    fn upload_into(&self, buf: &mut Self::Buf, data: &[Self::Float]) -> Result<(), EngineError>;
    /// Overwrites `tokens` with `data` (of the same length).
    fn upload_tokens(&self, tokens: &mut Self::Tokens, data: &[u32]) -> Result<(), EngineError>;
    /// A token buffer of `len` zeros.
    fn tokens(&self, len: usize) -> Result<Self::Tokens, EngineError>;
    fn len(&self, buf: &Self::Buf) -> usize;
    fn fill_zero(&self, buf: &mut Self::Buf);
    fn copy(&self, dst: &mut Self::Buf, src: &Self::Buf);
    /// `dst = src[offset..offset + len(dst)]`: a tensor's part of a flat buffer.
    fn read_at(&self, dst: &mut Self::Buf, src: &Self::Buf, offset: usize);
    /// `dst[offset..offset + len(src)] += src`: a micro-batch's gradient into the step's sum.
    fn add_at(&self, dst: &mut Self::Buf, offset: usize, src: &Self::Buf);

    /// Sums `buf` element-wise over the ranks of `world`, in place: the gradient all-reduce.
    /// This default goes through host memory ([`all_reduce_sum_through_host`]); a backend with a
    /// device-side path (NCCL, after [`Backend::join_collective`]) takes it instead.
    fn all_reduce_sum(
        &self,
        buf: &mut Self::Buf,
        world: &dyn Collective,
    ) -> Result<(), EngineError> {
        all_reduce_sum_through_host(self, buf, world)
    }

    /// Prepares the backend's own transport for the ranks of `world` (a GPU backend's NCCL
    /// communicator); called once on every rank before training. Nothing to do by default.
    fn join_collective(&mut self, _world: &dyn Collective) -> Result<(), EngineError> {
        Ok(())
    }

    /// `out[r] = table[tokens[r]]`.
    fn embedding_forward(
        &self,
        out: &mut Self::Buf,
        tokens: &Self::Tokens,
        table: &Self::Buf,
        c: usize,
    );
    /// `dtable[tokens[r]] += dout[r]`.
    fn embedding_backward(
        &self,
        dtable: &mut Self::Buf,
        tokens: &Self::Tokens,
        dout: &Self::Buf,
        c: usize,
    );

    /// `out = x / rms(x) * w`; keeps `1/rms` per row in `rstd` for the backward pass.
    fn rmsnorm_forward(
        &self,
        out: &mut Self::Buf,
        rstd: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        c: usize,
        eps: f64,
    );
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_backward(
        &self,
        dx: &mut Self::Buf,
        dw: &mut Self::Buf,
        dout: &Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        rstd: &Self::Buf,
        c: usize,
    );

    /// `out[n, oc] = inp[n, ic] · w[oc, ic]` (a Hugging Face `Linear` without bias).
    fn matmul_forward(
        &self,
        out: &mut Self::Buf,
        inp: &Self::Buf,
        w: &Self::Buf,
        ic: usize,
        oc: usize,
    );
    /// `dinp += dout · w` (or `dinp = dout · w` when `dinp_write` is [`Write::Overwrite`]),
    /// `dw += doutᵀ · inp`.
    #[allow(clippy::too_many_arguments)]
    fn matmul_backward(
        &self,
        dinp: &mut Self::Buf,
        dw: &mut Self::Buf,
        dout: &Self::Buf,
        inp: &Self::Buf,
        w: &Self::Buf,
        ic: usize,
        oc: usize,
        dinp_write: Write,
    );

    /// `outs[j] = inp · ws[j]ᵀ` for one input row of `ic` values, `outs[j]` as long as `ws[j]`
    /// has rows: the matrices of a decoding step that read the same input (q, k and v; gate and
    /// up), which a backend may run as one parallel region instead of one per matrix.
    fn matvec_many(
        &self,
        outs: &mut [&mut Self::Buf],
        inp: &Self::Buf,
        ws: &[MatvecWeight<'_, Self>],
        ic: usize,
    ) {
        for (out, w) in outs.iter_mut().zip(ws) {
            let oc = self.len(out);
            match *w {
                MatvecWeight::Full(w) => self.matmul_forward(out, inp, w, ic, oc),
                MatvecWeight::Half(w) => self.matmul_forward_half(out, inp, w, ic, oc),
            }
        }
    }

    /// A bf16 buffer of `len` zeros.
    fn half_zeros(&self, len: usize) -> Result<Self::Half, EngineError>;
    fn half_len(&self, buf: &Self::Half) -> usize;
    /// `dst = src` rounded to bf16 (to nearest, ties to even); both of the same length.
    fn round_to_half(&self, dst: &mut Self::Half, src: &Self::Buf);
    /// The values of a bf16 buffer in host memory, widened (exactly) to floats.
    fn download_half(&self, buf: &Self::Half) -> Result<Vec<Self::Float>, EngineError>;
    /// [`Backend::matmul_forward`] in bf16: `inp` rounded to bf16, `w` a bf16 copy, the
    /// products summed in f32 (at least).
    fn matmul_forward_half(
        &self,
        out: &mut Self::Buf,
        inp: &Self::Buf,
        w: &Self::Half,
        ic: usize,
        oc: usize,
    );
    /// [`Backend::matmul_backward`] in bf16: `dout` and `inp` rounded to bf16, `w` a bf16
    /// copy, the products summed in f32 (at least) into the float gradients.
    #[allow(clippy::too_many_arguments)]
    fn matmul_backward_half(
        &self,
        dinp: &mut Self::Buf,
        dw: &mut Self::Buf,
        dout: &Self::Buf,
        inp: &Self::Buf,
        w: &Self::Half,
        ic: usize,
        oc: usize,
        dinp_write: Write,
    );

    /// Rotates each head of `x` (rows of `heads × head_dim`, position = row mod `seq`) in place,
    /// in Hugging Face's `rotate_half` layout.
    fn rope_forward(
        &self,
        x: &mut Self::Buf,
        seq: usize,
        heads: usize,
        head_dim: usize,
        theta: f64,
    );
    /// The inverse rotation of the gradient, in place.
    fn rope_backward(
        &self,
        dx: &mut Self::Buf,
        seq: usize,
        heads: usize,
        head_dim: usize,
        theta: f64,
    );

    /// Rotates one token's heads (a single row) as position `position`: the decoding step.
    fn rope_forward_at(
        &self,
        x: &mut Self::Buf,
        position: usize,
        heads: usize,
        head_dim: usize,
        theta: f64,
    );

    /// Attention of one token's query heads over the first `len` positions of a key/value cache
    /// (`[positions, kv_heads, head_dim]`): the decoding step with a KV cache.
    #[allow(clippy::too_many_arguments)]
    fn attention_decode(
        &self,
        out: &mut Self::Buf,
        q: &Self::Buf,
        k_cache: &Self::Buf,
        v_cache: &Self::Buf,
        len: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
    );

    /// Copies `src` into `dst` starting at element `offset` (a row of a cache).
    fn write_at(&self, dst: &mut Self::Buf, offset: usize, src: &Self::Buf);

    /// Causal grouped-query attention; keeps the probabilities in `probs` (`batch × heads × seq ×
    /// seq`, floats or bf16).
    fn attention_forward(
        &self,
        out: &mut Self::Buf,
        probs: &mut SavedOf<Self>,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        shape: AttentionShape,
    );
    /// The floats of working space [`Backend::attention_backward`] needs: by default as many
    /// as the probabilities (a backend that works block by block in space of its own needs none).
    fn attention_scratch_len(&self, shape: AttentionShape) -> usize {
        shape
            .batch
            .saturating_mul(shape.heads)
            .saturating_mul(shape.seq)
            .saturating_mul(shape.seq)
    }
    /// Overwrites (does not accumulate into) `dq`, `dk`, `dv`. `scratch` holds
    /// [`Backend::attention_scratch_len`] floats of working space.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        dq: &mut Self::Buf,
        dk: &mut Self::Buf,
        dv: &mut Self::Buf,
        dout: &Self::Buf,
        kept: AttentionKeptOf<'_, Self>,
        scratch: &mut Self::Buf,
        shape: AttentionShape,
    );

    /// `out = silu(gate) * up`.
    fn swiglu_forward(&self, out: &mut Self::Buf, gate: InputOf<'_, Self>, up: InputOf<'_, Self>);
    /// [`Backend::swiglu_forward`] on floats that also rounds `gate` and `up` into the bf16
    /// copies kept for the backward pass: a backend may do both in one pass over them.
    fn swiglu_forward_keeping(
        &self,
        out: &mut Self::Buf,
        gate: &Self::Buf,
        up: &Self::Buf,
        kept_gate: &mut Self::Half,
        kept_up: &mut Self::Half,
    ) {
        self.swiglu_forward(out, Input::Full(gate), Input::Full(up));
        self.round_to_half(kept_gate, gate);
        self.round_to_half(kept_up, up);
    }
    /// Overwrites (does not accumulate into) `dgate` and `dup`.
    fn swiglu_backward(
        &self,
        dgate: &mut Self::Buf,
        dup: &mut Self::Buf,
        dout: &Self::Buf,
        gate: InputOf<'_, Self>,
        up: InputOf<'_, Self>,
    );

    /// `out = a + b`.
    fn add(&self, out: &mut Self::Buf, a: &Self::Buf, b: &Self::Buf);
    /// `acc += x`.
    fn add_assign(&self, acc: &mut Self::Buf, x: &Self::Buf);

    /// Softmax and cross-entropy of each row of `logits` against `targets`: writes the losses and
    /// turns `logits` into their gradient, scaled by `grad_scale` (e.g. 1 / tokens).
    fn cross_entropy_fused(
        &self,
        losses: &mut Self::Buf,
        logits: &mut Self::Buf,
        targets: &Self::Tokens,
        vocab: usize,
        grad_scale: f64,
    );

    /// Sum of a buffer, accumulated in f64 in a fixed order.
    fn sum(&self, buf: &Self::Buf) -> f64;
    /// Sum of squares of a buffer, accumulated in f64 in a fixed order.
    fn sum_squares(&self, buf: &Self::Buf) -> f64;
    /// Σ over `bufs` of their sums of squares, in a fixed order: the squared global gradient
    /// norm. One call, so a GPU reads one number back per step rather than one per tensor.
    fn sum_squares_all(&self, bufs: &[Self::Buf]) -> f64 {
        bufs.iter().map(|buf| self.sum_squares(buf)).sum()
    }
    /// One AdamW step of a tensor (decoupled weight decay).
    fn adamw(
        &self,
        param: &mut Self::Buf,
        grad: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        hp: AdamW,
    );

    /// The floats of working space [`Backend::muon`] needs for a `rows × cols` matrix: two
    /// copies of the matrix (the iterate and the next one) and two square Gram-sized products.
    fn muon_scratch_len(&self, rows: usize, cols: usize) -> usize {
        optimizer::muon_scratch_floats(rows, cols)
    }
    /// One Muon step of a `rows × cols` weight matrix: `momentum = μ·momentum + grad`, the
    /// update (`grad + μ·momentum` with Nesterov) normalised and orthogonalised by
    /// `hp.ns_steps` quintic Newton–Schulz iterations on its smaller Gram matrix, then
    /// `param = param·(1 − lr·wd) − lr·√max(1, rows/cols)·update`. `scratch` holds at least
    /// [`Backend::muon_scratch_len`] floats.
    #[allow(clippy::too_many_arguments)]
    fn muon(
        &self,
        param: &mut Self::Buf,
        grad: &Self::Buf,
        momentum: &mut Self::Buf,
        scratch: &mut Self::Buf,
        rows: usize,
        cols: usize,
        hp: Muon,
    );
}

/// [`Backend::all_reduce_sum`] through host memory: download, sum over the ranks of `world`
/// (MPI), upload; nothing at all for one rank. The default, and a GPU backend's fallback when it
/// has no device-side transport.
pub fn all_reduce_sum_through_host<B: Backend + ?Sized>(
    backend: &B,
    buf: &mut B::Buf,
    world: &dyn Collective,
) -> Result<(), EngineError> {
    if world.size() == 1 {
        return Ok(());
    }
    let mut host = backend.download(buf)?;
    B::Float::all_reduce_sum(world, &mut host);
    backend.upload_into(buf, &host)
}
