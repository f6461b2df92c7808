//! The LLaMA2 decoder: parameters named as Hugging Face names them, activations allocated once
//! per (batch, seq), and a forward and a backward pass that list every op in order, each layer's
//! backward mirroring its forward (as llm.c's `train_gpt2.c` does).
//!
//! Longer than most files on purpose: the forward and the backward pass stay side by side, so
//! each step of the backward can be read against the forward step it undoes.

use std::marker::PhantomData;

use super::ModelDims;
use super::memory::{ActivationSizes, Activations, Allocation, Footprint, TooLarge, float_bytes};
use super::shape::Shape;
pub use crate::engine::ParamInfo;
use crate::engine::{
    AttentionKept, AttentionShape, Backend, EngineError, Float, Optimizer, OptimizerSettings,
    Precision, Rng, Saved, Write, grad_norm, host_vec, optimizer,
};
use crate::fsutil::human_bytes;

/// What, besides its shape, defines a model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LlamaConfig {
    pub norm_eps: f64,
    pub rope_theta: f64,
    /// The output head shares the token embedding's weights.
    pub tie_embeddings: bool,
}

impl Default for LlamaConfig {
    fn default() -> Self {
        LlamaConfig {
            norm_eps: 1e-5,
            rope_theta: 10000.0,
            tie_embeddings: true,
        }
    }
}

/// Where each tensor sits in the parameter list.
pub(super) const EMBED: usize = 0;
pub(super) const PER_LAYER: usize = 9;
pub(super) const ATTN_NORM: usize = 0;
pub(super) const WQ: usize = 1;
pub(super) const WK: usize = 2;
pub(super) const WV: usize = 3;
pub(super) const WO: usize = 4;
pub(super) const FFN_NORM: usize = 5;
pub(super) const W_GATE: usize = 6;
pub(super) const W_UP: usize = 7;
pub(super) const W_DOWN: usize = 8;

pub(super) fn layer_index(layer: usize, which: usize) -> usize {
    1 + layer * PER_LAYER + which
}

/// The parameter tensors of a model of this shape, in the order they are stored.
pub fn param_layout(dims: &ModelDims, config: &LlamaConfig) -> Vec<ParamInfo> {
    let (c, v, kv, h) = (
        dims.dim,
        dims.vocab_size,
        dims.n_kv_heads * dims.head_dim(),
        dims.hidden_dim(),
    );
    let info = |name: String, shape: Vec<usize>| ParamInfo {
        decay: shape.len() == 2,
        name,
        shape,
    };
    let mut layout = vec![info("model.embed_tokens.weight".into(), vec![v, c])];
    for l in 0..dims.n_layers {
        let p = format!("model.layers.{l}");
        layout.extend([
            info(format!("{p}.input_layernorm.weight"), vec![c]),
            info(format!("{p}.self_attn.q_proj.weight"), vec![c, c]),
            info(format!("{p}.self_attn.k_proj.weight"), vec![kv, c]),
            info(format!("{p}.self_attn.v_proj.weight"), vec![kv, c]),
            info(format!("{p}.self_attn.o_proj.weight"), vec![c, c]),
            info(format!("{p}.post_attention_layernorm.weight"), vec![c]),
            info(format!("{p}.mlp.gate_proj.weight"), vec![h, c]),
            info(format!("{p}.mlp.up_proj.weight"), vec![h, c]),
            info(format!("{p}.mlp.down_proj.weight"), vec![c, h]),
        ]);
    }
    layout.push(info("model.norm.weight".into(), vec![c]));
    if !config.tie_embeddings {
        layout.push(info("lm_head.weight".into(), vec![v, c]));
    }
    layout
}

/// A model's parameters (or gradients): one buffer per tensor, typed by the model's shape so
/// that the parameters of one preset cannot be given to a model of another.
pub struct Params<S: Shape, B: Backend> {
    tensors: Vec<B::Buf>,
    _shape: PhantomData<S>,
}

impl<S: Shape, B: Backend> Params<S, B> {
    /// Wraps buffers laid out as [`param_layout`] says.
    pub fn from_tensors(tensors: Vec<B::Buf>) -> Self {
        Params {
            tensors,
            _shape: PhantomData,
        }
    }

    /// The buffers, in [`param_layout`] order.
    pub fn tensors(&self) -> &[B::Buf] {
        &self.tensors
    }
}

impl<S: Shape, B: Backend> Clone for Params<S, B>
where
    B::Buf: Clone,
{
    fn clone(&self) -> Self {
        Params::from_tensors(self.tensors.clone())
    }
}

/// A LLaMA2 decoder on a backend: parameters, gradients and activations.
///
/// The state is private, so the buffers always match the layout: read it through the accessors,
/// copy weights in and out with [`Llama::load_params`] and [`Llama::state_tensors`].
pub struct Llama<S: Shape, B: Backend> {
    shape: S,
    config: LlamaConfig,
    backend: B,
    layout: Vec<ParamInfo>,
    /// Whether weight decay applies to each tensor (the 2-D weights), in layout order.
    decay: Vec<bool>,
    params: Params<S, B>,
    grads: Params<S, B>,
    /// Under bf16 precision, the bf16 copies of the 2-D weights that the matmuls read (`None`
    /// for the norms), in layout order; remade whenever the weights change.
    half: Option<Vec<Option<B::Half>>>,
    acts: Option<Activations<B>>,
}

/// The bytes of the bf16 copies of a layout's 2-D weights.
fn half_copy_bytes(layout: &[ParamInfo]) -> u64 {
    let values: usize = layout
        .iter()
        .filter(|i| i.shape.len() == 2)
        .map(ParamInfo::numel)
        .sum();
    values as u64 * 2
}

/// The weights as the matmuls read them: the float tensors, or their bf16 copies.
struct Linear<'a, B: Backend> {
    backend: &'a B,
    params: &'a [B::Buf],
    half: Option<&'a [Option<B::Half>]>,
}

impl<B: Backend> Linear<'_, B> {
    fn half(&self, index: usize) -> Option<&B::Half> {
        self.half.map(|half| {
            half[index]
                .as_ref()
                .expect("every matmul weight has a bf16 copy under bf16")
        })
    }

    /// `out = inp · wᵀ` with weight `index`.
    fn forward(&self, out: &mut B::Buf, inp: &B::Buf, index: usize, ic: usize, oc: usize) {
        match self.half(index) {
            Some(w) => self.backend.matmul_forward_half(out, inp, w, ic, oc),
            None => self
                .backend
                .matmul_forward(out, inp, &self.params[index], ic, oc),
        }
    }

    /// `dinp (+)= dout · w`, `dw += doutᵀ · inp` with weight `index`.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        dinp: &mut B::Buf,
        dw: &mut B::Buf,
        dout: &B::Buf,
        inp: &B::Buf,
        index: usize,
        ic: usize,
        oc: usize,
        dinp_write: Write,
    ) {
        let b = self.backend;
        match self.half(index) {
            Some(w) => b.matmul_backward_half(dinp, dw, dout, inp, w, ic, oc, dinp_write),
            None => {
                let w = &self.params[index];
                b.matmul_backward(dinp, dw, dout, inp, w, ic, oc, dinp_write)
            }
        }
    }
}

/// A mistake in how a model is called (sizes that do not fit, tokens out of range), or memory
/// the device could not give it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error(
        "out of memory on {device}: {what} need {} (could not allocate {}); {}",
        human_bytes(*needed),
        human_bytes(*failed),
        what.remedy()
    )]
    OutOfMemory {
        device: String,
        what: Allocation,
        /// Bytes of the whole allocation.
        needed: u64,
        /// Bytes of the buffer the device refused.
        failed: u64,
    },
    /// More memory than the machine has, found before anything was allocated.
    #[error("{0}; {remedy}", remedy = .0.footprint.largest().remedy())]
    TooLarge(#[from] TooLarge),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("sequence length {seq} is above the model's max_seq_len {max}")]
    SequenceTooLong { seq: usize, max: usize },
    #[error("expected {expected} tokens (batch × seq), got {got}")]
    TokenCount { expected: usize, got: usize },
    #[error("token id {token} is outside the model's vocabulary of {vocab}")]
    TokenOutOfRange { token: u32, vocab: usize },
    #[error("parameter {name} has {got} values, the model expects {expected}")]
    ParamSize {
        name: String,
        expected: usize,
        got: usize,
    },
    #[error("expected {expected} parameter tensors, got {got}")]
    ParamCount { expected: usize, got: usize },
}

impl ModelError {
    /// Turns an engine error met while allocating `what` (`needed` bytes in all) into the
    /// model's: an out-of-memory gains what it was for and the setting to lower.
    pub fn allocating(what: Allocation, needed: u64) -> impl Fn(EngineError) -> ModelError {
        move |error| match error {
            EngineError::OutOfMemory { device, bytes } => ModelError::OutOfMemory {
                device,
                what,
                needed,
                failed: bytes,
            },
            other => ModelError::Engine(other),
        }
    }
}

impl<S: Shape, B: Backend> Llama<S, B> {
    /// A model initialised as llama2.c does: weights normal(0, 0.02), the residual projections
    /// (`o_proj`, `down_proj`) with std 0.02/√(2·layers), norms at 1.
    pub fn new(backend: B, shape: S, config: LlamaConfig, seed: u64) -> Result<Self, ModelError> {
        let dims = shape.dims();
        let layout = param_layout(&dims, &config);
        let params: usize = layout.iter().map(ParamInfo::numel).sum();
        let on_host = ModelError::allocating(
            Allocation::HostWeights { params },
            float_bytes::<B::Float>(params, 1),
        );
        let on_device = ModelError::allocating(
            Allocation::Parameters { params },
            float_bytes::<B::Float>(params, 2),
        );
        let mut rng = Rng::new(seed);
        let residual_std = 0.02 / (2.0 * dims.n_layers as f64).sqrt();
        let mut tensors = Vec::with_capacity(layout.len());
        for info in &layout {
            let mut host =
                host_vec(info.numel(), B::Float::from_f64(1.0), "cpu").map_err(&on_host)?;
            if info.shape.len() == 2 {
                let residual =
                    info.name.ends_with("o_proj.weight") || info.name.ends_with("down_proj.weight");
                let std = if residual { residual_std } else { 0.02 };
                host.iter_mut()
                    .for_each(|x| *x = B::Float::from_f64(rng.normal() * std));
            }
            tensors.push(backend.upload(&host).map_err(&on_device)?);
        }
        Self::assemble(backend, shape, config, layout, tensors)
    }

    /// A model with the given parameters, checked against the layout.
    pub fn with_params(
        backend: B,
        shape: S,
        config: LlamaConfig,
        params: Params<S, B>,
    ) -> Result<Self, ModelError> {
        let layout = param_layout(&shape.dims(), &config);
        if layout.len() != params.tensors.len() {
            return Err(ModelError::ParamCount {
                expected: layout.len(),
                got: params.tensors.len(),
            });
        }
        for (info, tensor) in layout.iter().zip(&params.tensors) {
            let got = backend.len(tensor);
            if got != info.numel() {
                return Err(ModelError::ParamSize {
                    name: info.name.clone(),
                    expected: info.numel(),
                    got,
                });
            }
        }
        Self::assemble(backend, shape, config, layout, params.tensors)
    }

    /// The model around its parameters, with zeroed gradients.
    fn assemble(
        backend: B,
        shape: S,
        config: LlamaConfig,
        layout: Vec<ParamInfo>,
        tensors: Vec<B::Buf>,
    ) -> Result<Self, ModelError> {
        let params: usize = layout.iter().map(ParamInfo::numel).sum();
        let grads = layout
            .iter()
            .map(|i| backend.zeros(i.numel()))
            .collect::<Result<_, _>>()
            .map_err(ModelError::allocating(
                Allocation::Parameters { params },
                float_bytes::<B::Float>(params, 2),
            ))?;
        Ok(Llama {
            shape,
            config,
            backend,
            decay: layout.iter().map(|i| i.decay).collect(),
            layout,
            params: Params::from_tensors(tensors),
            grads: Params::from_tensors(grads),
            half: None,
            acts: None,
        })
    }

    /// The precision of the model's matmuls: f32, or bf16 operands read from bf16 copies of
    /// the weights (made here, and remade after every change to the weights).
    pub fn set_precision(&mut self, precision: Precision) -> Result<(), ModelError> {
        self.half = None;
        // The kept activations change type with the precision.
        self.acts = None;
        if precision == Precision::Bf16 {
            let params = self.num_params();
            let context = ModelError::allocating(
                Allocation::Parameters { params },
                half_copy_bytes(&self.layout),
            );
            let half = self
                .layout
                .iter()
                .map(|info| {
                    (info.shape.len() == 2)
                        .then(|| self.backend.half_zeros(info.numel()))
                        .transpose()
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(context)?;
            self.half = Some(half);
            self.refresh_half();
        }
        Ok(())
    }

    pub fn precision(&self) -> Precision {
        if self.half.is_some() {
            Precision::Bf16
        } else {
            Precision::F32
        }
    }

    /// Remakes the bf16 copies from the weights.
    fn refresh_half(&mut self) {
        if let Some(half) = &mut self.half {
            for (copy, tensor) in half.iter_mut().zip(&self.params.tensors) {
                if let Some(copy) = copy {
                    self.backend.round_to_half(copy, tensor);
                }
            }
        }
    }

    /// The bf16 copy of weight `index`, under bf16 precision.
    pub(super) fn half_weight(&self, index: usize) -> Option<&B::Half> {
        self.half.as_ref().and_then(|half| half[index].as_ref())
    }

    pub fn dims(&self) -> ModelDims {
        self.shape.dims()
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The backend the model's buffers live on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The parameter tensors, in storage order.
    pub fn layout(&self) -> &[ParamInfo] {
        &self.layout
    }

    pub fn params(&self) -> &Params<S, B> {
        &self.params
    }

    /// The gradients accumulated since the last [`Llama::zero_grad`].
    pub fn grads(&self) -> &Params<S, B> {
        &self.grads
    }

    /// The weights in host memory, in [`Llama::layout`] order (what a checkpoint saves).
    pub fn state_tensors(&self) -> Result<Vec<Vec<B::Float>>, ModelError> {
        let params = self.num_params();
        let context = ModelError::allocating(
            Allocation::HostWeights { params },
            float_bytes::<B::Float>(params, 1),
        );
        self.params
            .tensors
            .iter()
            .map(|t| self.backend.download(t).map_err(&context))
            .collect()
    }

    /// Overwrites the weights with host values in [`Llama::layout`] order (a checkpoint's),
    /// every size checked before anything is written.
    pub fn load_params(&mut self, tensors: &[Vec<B::Float>]) -> Result<(), ModelError> {
        if tensors.len() != self.layout.len() {
            return Err(ModelError::ParamCount {
                expected: self.layout.len(),
                got: tensors.len(),
            });
        }
        for (info, values) in self.layout.iter().zip(tensors) {
            if values.len() != info.numel() {
                return Err(ModelError::ParamSize {
                    name: info.name.clone(),
                    expected: info.numel(),
                    got: values.len(),
                });
            }
        }
        for (tensor, values) in self.params.tensors.iter_mut().zip(tensors) {
            self.backend.upload_into(tensor, values)?;
        }
        self.refresh_half();
        Ok(())
    }

    /// A fresh optimizer for this model's parameters (zeroed state).
    pub fn optimizer(&self, settings: OptimizerSettings) -> Result<Optimizer<B>, ModelError> {
        let params = self.num_params();
        let floats = optimizer::state_floats(&self.layout, settings.kind);
        Optimizer::new(&self.backend, &self.layout, settings).map_err(ModelError::allocating(
            Allocation::OptimizerMoments {
                params,
                optimizer: settings.kind,
            },
            float_bytes::<B::Float>(floats, 1),
        ))
    }

    /// The global L2 norm of the gradients.
    pub fn grad_norm(&self) -> f64 {
        grad_norm(&self.backend, &self.grads.tensors)
    }

    /// One optimizer step of the parameters along the gradients times `grad_scale` (clipping's
    /// factor, 1 for none), at the schedule's learning rate `lr`; the weights' bf16 copies are
    /// remade from the stepped f32 weights.
    pub fn optimizer_step(&mut self, optimizer: &mut Optimizer<B>, lr: f64, grad_scale: f64) {
        optimizer.step(
            &self.backend,
            &mut self.params.tensors,
            &self.grads.tensors,
            lr,
            grad_scale,
        );
        self.refresh_half();
    }

    pub fn num_params(&self) -> usize {
        self.layout.iter().map(ParamInfo::numel).sum()
    }

    /// The weights and gradients the model holds, as a memory footprint names them.
    pub(super) fn parameters_allocation(&self) -> Allocation {
        Allocation::Parameters {
            params: self.num_params(),
        }
    }

    pub(super) fn parameters_bytes(&self) -> u64 {
        float_bytes::<B::Float>(self.num_params(), 2)
    }

    /// Whether weight decay applies to each tensor.
    pub fn decay_mask(&self) -> &[bool] {
        &self.decay
    }

    pub(super) fn output_index(&self) -> usize {
        if self.config.tie_embeddings {
            EMBED
        } else {
            self.layout.len() - 1
        }
    }

    pub(super) fn final_norm_index(&self) -> usize {
        1 + self.dims().n_layers * PER_LAYER
    }

    /// A buffer the size of every gradient together, for [`Llama::add_grads_into`].
    pub fn flat_gradient_buffer(&self) -> Result<B::Buf, ModelError> {
        let total = self.num_params();
        self.backend.zeros(total).map_err(ModelError::allocating(
            Allocation::FlatGradients { params: total },
            float_bytes::<B::Float>(total, 1),
        ))
    }

    /// Writes (`first`) or adds every gradient into `flat`, one after another in layout order:
    /// the step's sum over micro-batches, and what the ranks of a job all-reduce in one call.
    pub fn add_grads_into(&self, flat: &mut B::Buf, first: bool) {
        let mut offset = 0;
        for grad in &self.grads.tensors {
            if first {
                self.backend.write_at(flat, offset, grad);
            } else {
                self.backend.add_at(flat, offset, grad);
            }
            offset += self.backend.len(grad);
        }
    }

    /// Replaces every gradient by its part of `flat` (laid out as [`Llama::add_grads_into`]).
    pub fn load_grads(&mut self, flat: &B::Buf) {
        let mut offset = 0;
        for grad in &mut self.grads.tensors {
            self.backend.read_at(grad, flat, offset);
            offset += self.backend.len(grad);
        }
    }

    pub fn zero_grad(&mut self) {
        for grad in &mut self.grads.tensors {
            self.backend.fill_zero(grad);
        }
    }

    /// Runs the model on `batch × seq` tokens. With targets, returns the mean cross-entropy
    /// and leaves the logits' gradient (scaled by `grad_scale`, e.g. 1/(tokens · accumulation
    /// steps)) ready for [`Llama::backward`]; without, returns `None` and keeps the logits.
    pub fn forward(
        &mut self,
        inputs: &[u32],
        targets: Option<&[u32]>,
        batch: usize,
        seq: usize,
        grad_scale: f64,
    ) -> Result<Option<f64>, ModelError> {
        let dims = self.dims();
        let n = batch.saturating_mul(seq);
        if seq > dims.max_seq_len {
            return Err(ModelError::SequenceTooLong {
                seq,
                max: dims.max_seq_len,
            });
        }
        for tokens in std::iter::once(inputs).chain(targets) {
            if tokens.len() != n {
                return Err(ModelError::TokenCount {
                    expected: n,
                    got: tokens.len(),
                });
            }
            if let Some(&token) = tokens.iter().find(|&&t| t as usize >= dims.vocab_size) {
                return Err(ModelError::TokenOutOfRange {
                    token,
                    vocab: dims.vocab_size,
                });
            }
        }
        self.allocate_activations(batch, seq)?;
        let acts = self.acts.as_mut().expect("allocated above");
        let b = &self.backend;
        let p = &self.params.tensors;
        let linear = Linear {
            backend: b,
            params: p,
            half: self.half.as_deref(),
        };
        let (c, kv, h, v) = (
            dims.dim,
            dims.n_kv_heads * dims.head_dim(),
            dims.hidden_dim(),
            dims.vocab_size,
        );
        let (eps, theta) = (self.config.norm_eps, self.config.rope_theta);
        let attention = AttentionShape {
            batch,
            seq,
            heads: dims.n_heads,
            kv_heads: dims.n_kv_heads,
            head_dim: dims.head_dim(),
        };

        b.upload_tokens(&mut acts.inputs, inputs)?;
        b.embedding_forward(&mut acts.layers[0].input, &acts.inputs, &p[EMBED], c);
        for l in 0..dims.n_layers {
            let w = |which| &p[layer_index(l, which)];
            let (done, rest) = acts.layers.split_at_mut(l + 1);
            let a = &mut done[l];
            b.rmsnorm_forward(
                &mut acts.ln,
                &mut a.ln1_rstd,
                &a.input,
                w(ATTN_NORM),
                c,
                eps,
            );
            // q, k, v (and gate, up) in floats: in the layer's buffers, or, when those are
            // bf16, in the gradient buffers (free until the backward pass), then rounded.
            let q = a.q.floats(&mut acts.d_q);
            let k = a.k.floats(&mut acts.d_k);
            let v = a.v.floats(&mut acts.d_v);
            linear.forward(q, &acts.ln, layer_index(l, WQ), c, c);
            linear.forward(k, &acts.ln, layer_index(l, WK), c, kv);
            linear.forward(v, &acts.ln, layer_index(l, WV), c, kv);
            b.rope_forward(q, seq, dims.n_heads, dims.head_dim(), theta);
            b.rope_forward(k, seq, dims.n_kv_heads, dims.head_dim(), theta);
            b.attention_forward(&mut a.attn, &mut a.probs, q, k, v, attention);
            a.q.keep(b, &acts.d_q);
            a.k.keep(b, &acts.d_k);
            a.v.keep(b, &acts.d_v);
            linear.forward(&mut acts.tmp, &a.attn, layer_index(l, WO), c, c);
            b.add(&mut a.mid, &a.input, &acts.tmp);
            b.rmsnorm_forward(&mut acts.ln, &mut a.ln2_rstd, &a.mid, w(FFN_NORM), c, eps);
            let gate = a.gate.floats(&mut acts.d_gate);
            linear.forward(gate, &acts.ln, layer_index(l, W_GATE), c, h);
            let up = a.up.floats(&mut acts.d_up);
            linear.forward(up, &acts.ln, layer_index(l, W_UP), c, h);
            match (&mut a.gate, &mut a.up) {
                (Saved::Half(kept_gate), Saved::Half(kept_up)) => b.swiglu_forward_keeping(
                    &mut acts.act,
                    &acts.d_gate,
                    &acts.d_up,
                    kept_gate,
                    kept_up,
                ),
                (gate, up) => {
                    gate.keep(b, &acts.d_gate);
                    up.keep(b, &acts.d_up);
                    b.swiglu_forward(&mut acts.act, gate.input(), up.input());
                }
            }
            linear.forward(&mut acts.tmp, &acts.act, layer_index(l, W_DOWN), h, c);
            let next = match rest.first_mut() {
                Some(next) => &mut next.input,
                None => &mut acts.out,
            };
            b.add(next, &a.mid, &acts.tmp);
        }
        let norm = &p[1 + dims.n_layers * PER_LAYER];
        b.rmsnorm_forward(&mut acts.lnf, &mut acts.lnf_rstd, &acts.out, norm, c, eps);
        let output = if self.config.tie_embeddings {
            EMBED
        } else {
            p.len() - 1
        };
        linear.forward(&mut acts.logits, &acts.lnf, output, c, v);

        let Some(targets) = targets else {
            return Ok(None);
        };
        b.upload_tokens(&mut acts.targets, targets)?;
        b.cross_entropy_fused(
            &mut acts.losses,
            &mut acts.logits,
            &acts.targets,
            v,
            grad_scale,
        );
        Ok(Some(b.sum(&acts.losses) / n as f64))
    }

    /// Makes the buffers of a forward and backward pass of `batch × seq` tokens, unless those of
    /// the last pass have that size. [`Llama::forward`] calls it; calling it first reports an
    /// out-of-memory before any input is prepared.
    pub fn allocate_activations(&mut self, batch: usize, seq: usize) -> Result<(), ModelError> {
        let dims = self.dims();
        if seq > dims.max_seq_len {
            return Err(ModelError::SequenceTooLong {
                seq,
                max: dims.max_seq_len,
            });
        }
        if self
            .acts
            .as_ref()
            .is_some_and(|a| a.batch == batch && a.seq == seq)
        {
            return Ok(());
        }
        // The old buffers go first, so their memory is free for the new ones.
        self.acts = None;
        let precision = self.precision();
        let needed = ActivationSizes::on(&dims, batch, seq, &self.backend, precision)
            .bytes::<B::Float>(dims.n_layers);
        if self.backend.in_host_memory() {
            // Host memory past the machine's is not refused by the allocator but taken until
            // the kernel kills the process: refuse it here.
            Footprint {
                parts: vec![
                    (self.parameters_allocation(), self.parameters_bytes()),
                    (Allocation::Activations { batch, seq }, needed),
                ],
            }
            .check("this pass")?;
        }
        let acts = Activations::new(&self.backend, &dims, batch, seq, precision).map_err(
            ModelError::allocating(Allocation::Activations { batch, seq }, needed),
        )?;
        self.acts = Some(acts);
        Ok(())
    }

    /// Accumulates the gradient of the loss of the last forward pass (with targets) into
    /// `grads`.
    pub fn backward(&mut self) {
        let dims = self.dims();
        let (output_index, final_norm) = (self.output_index(), self.final_norm_index());
        let acts = self
            .acts
            .as_mut()
            .expect("backward needs a forward pass with targets first");
        let b = &self.backend;
        let p = &self.params.tensors;
        let g = &mut self.grads.tensors;
        let linear = Linear {
            backend: b,
            params: p,
            half: self.half.as_deref(),
        };
        let (c, kv, h, v) = (
            dims.dim,
            dims.n_kv_heads * dims.head_dim(),
            dims.hidden_dim(),
            dims.vocab_size,
        );
        let (eps, theta) = (self.config.norm_eps, self.config.rope_theta);
        let attention = AttentionShape {
            batch: acts.batch,
            seq: acts.seq,
            heads: dims.n_heads,
            kv_heads: dims.n_kv_heads,
            head_dim: dims.head_dim(),
        };

        // Head and final norm.
        linear.backward(
            &mut acts.d_ln,
            &mut g[output_index],
            &acts.logits,
            &acts.lnf,
            output_index,
            c,
            v,
            Write::Overwrite,
        );
        b.fill_zero(&mut acts.d_resid);
        b.rmsnorm_backward(
            &mut acts.d_resid,
            &mut g[final_norm],
            &acts.d_ln,
            &acts.out,
            &p[final_norm],
            &acts.lnf_rstd,
            c,
        );

        for l in (0..dims.n_layers).rev() {
            let a = &mut acts.layers[l];
            let i = |which| layer_index(l, which);
            // Feed-forward: next = mid + down(silu(gate(ln2)) · up(ln2)).
            b.swiglu_forward(&mut acts.act, a.gate.input(), a.up.input());
            linear.backward(
                &mut acts.d_act,
                &mut g[i(W_DOWN)],
                &acts.d_resid,
                &acts.act,
                i(W_DOWN),
                h,
                c,
                Write::Overwrite,
            );
            // Overwrites d_gate, d_up (and attention_backward d_q, d_k, d_v): no zeroing.
            b.swiglu_backward(
                &mut acts.d_gate,
                &mut acts.d_up,
                &acts.d_act,
                a.gate.input(),
                a.up.input(),
            );
            b.rmsnorm_forward(
                &mut acts.ln,
                &mut a.ln2_rstd,
                &a.mid,
                &p[i(FFN_NORM)],
                c,
                eps,
            );
            linear.backward(
                &mut acts.d_ln,
                &mut g[i(W_GATE)],
                &acts.d_gate,
                &acts.ln,
                i(W_GATE),
                c,
                h,
                Write::Overwrite,
            );
            linear.backward(
                &mut acts.d_ln,
                &mut g[i(W_UP)],
                &acts.d_up,
                &acts.ln,
                i(W_UP),
                c,
                h,
                Write::Accumulate,
            );
            b.rmsnorm_backward(
                &mut acts.d_resid,
                &mut g[i(FFN_NORM)],
                &acts.d_ln,
                &a.mid,
                &p[i(FFN_NORM)],
                &a.ln2_rstd,
                c,
            );
            // Attention: mid = input + o(attention(rope(q(ln1)), rope(k(ln1)), v(ln1))).
            linear.backward(
                &mut acts.d_attn,
                &mut g[i(WO)],
                &acts.d_resid,
                &a.attn,
                i(WO),
                c,
                c,
                Write::Overwrite,
            );
            b.attention_backward(
                &mut acts.d_q,
                &mut acts.d_k,
                &mut acts.d_v,
                &acts.d_attn,
                AttentionKept {
                    probs: a.probs.input(),
                    q: a.q.input(),
                    k: a.k.input(),
                    v: a.v.input(),
                },
                &mut acts.d_probs,
                attention,
            );
            b.rope_backward(
                &mut acts.d_q,
                acts.seq,
                dims.n_heads,
                dims.head_dim(),
                theta,
            );
            b.rope_backward(
                &mut acts.d_k,
                acts.seq,
                dims.n_kv_heads,
                dims.head_dim(),
                theta,
            );
            b.rmsnorm_forward(
                &mut acts.ln,
                &mut a.ln1_rstd,
                &a.input,
                &p[i(ATTN_NORM)],
                c,
                eps,
            );
            linear.backward(
                &mut acts.d_ln,
                &mut g[i(WQ)],
                &acts.d_q,
                &acts.ln,
                i(WQ),
                c,
                c,
                Write::Overwrite,
            );
            linear.backward(
                &mut acts.d_ln,
                &mut g[i(WK)],
                &acts.d_k,
                &acts.ln,
                i(WK),
                c,
                kv,
                Write::Accumulate,
            );
            linear.backward(
                &mut acts.d_ln,
                &mut g[i(WV)],
                &acts.d_v,
                &acts.ln,
                i(WV),
                c,
                kv,
                Write::Accumulate,
            );
            b.rmsnorm_backward(
                &mut acts.d_resid,
                &mut g[i(ATTN_NORM)],
                &acts.d_ln,
                &a.input,
                &p[i(ATTN_NORM)],
                &a.ln1_rstd,
                c,
            );
        }
        b.embedding_backward(&mut g[EMBED], &acts.inputs, &acts.d_resid, c);
    }

    /// The per-token losses of the last forward pass with targets (`batch × seq`), on the host
    /// (`None` before any pass): evaluation sums them to leave out padding rows.
    pub fn token_losses(&self) -> Result<Option<Vec<B::Float>>, ModelError> {
        self.download_activation(|a| &a.losses)
    }

    /// The logits of the last forward pass without targets (`batch × seq × vocab`), on the host
    /// (`None` before any pass).
    pub fn logits(&self) -> Result<Option<Vec<B::Float>>, ModelError> {
        self.download_activation(|a| &a.logits)
    }

    /// The floats and tokens of the activations held, counted buffer by buffer.
    #[cfg(test)]
    pub(super) fn activation_counts(&self) -> Option<(u128, u128, u128)> {
        self.acts.as_ref().map(|a| a.counts(&self.backend))
    }

    fn download_activation(
        &self,
        buffer: impl Fn(&Activations<B>) -> &B::Buf,
    ) -> Result<Option<Vec<B::Float>>, ModelError> {
        let Some(acts) = &self.acts else {
            return Ok(None);
        };
        let buf = buffer(acts);
        let needed = float_bytes::<B::Float>(self.backend.len(buf), 1);
        let what = Allocation::Activations {
            batch: acts.batch,
            seq: acts.seq,
        };
        self.backend
            .download(buf)
            .map(Some)
            .map_err(ModelError::allocating(what, needed))
    }
}
