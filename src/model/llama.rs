//! The LLaMA2 decoder: parameters named as Hugging Face names them, activations allocated once
//! per (batch, seq), and a forward and a backward pass that list every op in order, each layer's
//! backward mirroring its forward (as llm.c's `train_gpt2.c` does).

use std::marker::PhantomData;

use super::ModelDims;
use super::shape::Shape;
use crate::engine::{AttentionShape, Backend, Float, Rng};

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

/// One parameter tensor: its Hugging Face name, shape, and whether weight decay applies.
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
    pub tensors: Vec<B::Buf>,
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
}

/// Buffers of one layer's forward pass, kept for its backward pass.
struct LayerActs<B: Backend> {
    input: B::Buf,
    ln1_rstd: B::Buf,
    q: B::Buf,
    k: B::Buf,
    v: B::Buf,
    probs: B::Buf,
    attn: B::Buf,
    mid: B::Buf,
    ln2_rstd: B::Buf,
    gate: B::Buf,
    up: B::Buf,
}

/// Every activation and activation gradient of one (batch, seq), allocated once.
struct Activations<B: Backend> {
    batch: usize,
    seq: usize,
    inputs: B::Tokens,
    targets: B::Tokens,
    layers: Vec<LayerActs<B>>,
    out: B::Buf,
    lnf: B::Buf,
    lnf_rstd: B::Buf,
    /// Logits after the forward pass; their gradient after the loss.
    logits: B::Buf,
    losses: B::Buf,
    tmp: B::Buf,
    /// The normalised input of the sublayer at hand; recomputed in the backward pass (from the
    /// kept `1/rms`) rather than kept for every layer.
    ln: B::Buf,
    /// `silu(gate) · up` of the layer at hand: recomputed in the backward pass rather than kept
    /// for every layer.
    act: B::Buf,
    /// Working space of the attention backward pass.
    d_probs: B::Buf,
    d_resid: B::Buf,
    d_ln: B::Buf,
    d_q: B::Buf,
    d_k: B::Buf,
    d_v: B::Buf,
    d_attn: B::Buf,
    d_gate: B::Buf,
    d_up: B::Buf,
    d_act: B::Buf,
}

impl<B: Backend> Activations<B> {
    fn new(backend: &B, dims: &ModelDims, batch: usize, seq: usize) -> Self {
        let n = batch * seq;
        let (c, kv, h, v) = (
            dims.dim,
            dims.n_kv_heads * dims.head_dim(),
            dims.hidden_dim(),
            dims.vocab_size,
        );
        let z = |len: usize| backend.zeros(len);
        let layers = (0..dims.n_layers)
            .map(|_| LayerActs {
                input: z(n * c),
                ln1_rstd: z(n),
                q: z(n * c),
                k: z(n * kv),
                v: z(n * kv),
                probs: z(batch * dims.n_heads * seq * seq),
                attn: z(n * c),
                mid: z(n * c),
                ln2_rstd: z(n),
                gate: z(n * h),
                up: z(n * h),
            })
            .collect();
        Activations {
            batch,
            seq,
            inputs: backend.tokens(n),
            targets: backend.tokens(n),
            layers,
            out: z(n * c),
            lnf: z(n * c),
            lnf_rstd: z(n),
            logits: z(n * v),
            losses: z(n),
            tmp: z(n * c),
            ln: z(n * c),
            act: z(n * h),
            d_probs: z(batch * dims.n_heads * seq * seq),
            d_resid: z(n * c),
            d_ln: z(n * c),
            d_q: z(n * c),
            d_k: z(n * kv),
            d_v: z(n * kv),
            d_attn: z(n * c),
            d_gate: z(n * h),
            d_up: z(n * h),
            d_act: z(n * h),
        }
    }
}

/// A LLaMA2 decoder on a backend: parameters, gradients and activations.
pub struct Llama<S: Shape, B: Backend> {
    shape: S,
    pub config: LlamaConfig,
    pub backend: B,
    pub layout: Vec<ParamInfo>,
    /// Whether weight decay applies to each tensor (the 2-D weights), in layout order.
    decay: Vec<bool>,
    pub params: Params<S, B>,
    pub grads: Params<S, B>,
    acts: Option<Activations<B>>,
}

/// A mistake in how a model is called (sizes that do not fit, tokens out of range).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
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

impl<S: Shape, B: Backend> Llama<S, B> {
    /// A model initialised as llama2.c does: weights normal(0, 0.02), the residual projections
    /// (`o_proj`, `down_proj`) with std 0.02/√(2·layers), norms at 1.
    pub fn new(backend: B, shape: S, config: LlamaConfig, seed: u64) -> Self {
        let dims = shape.dims();
        let layout = param_layout(&dims, &config);
        let mut rng = Rng::new(seed);
        let residual_std = 0.02 / (2.0 * dims.n_layers as f64).sqrt();
        let tensors = layout
            .iter()
            .map(|info| {
                let host: Vec<B::Float> = if info.shape.len() == 1 {
                    vec![B::Float::from_f64(1.0); info.numel()]
                } else {
                    let residual = info.name.ends_with("o_proj.weight")
                        || info.name.ends_with("down_proj.weight");
                    let std = if residual { residual_std } else { 0.02 };
                    (0..info.numel())
                        .map(|_| B::Float::from_f64(rng.normal() * std))
                        .collect()
                };
                backend.upload(&host)
            })
            .collect();
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
        Ok(Self::assemble(
            backend,
            shape,
            config,
            layout,
            params.tensors,
        ))
    }

    fn assemble(
        backend: B,
        shape: S,
        config: LlamaConfig,
        layout: Vec<ParamInfo>,
        tensors: Vec<B::Buf>,
    ) -> Self {
        let grads = layout.iter().map(|i| backend.zeros(i.numel())).collect();
        Llama {
            shape,
            config,
            backend,
            decay: layout.iter().map(|i| i.decay).collect(),
            layout,
            params: Params::from_tensors(tensors),
            grads: Params::from_tensors(grads),
            acts: None,
        }
    }

    pub fn dims(&self) -> ModelDims {
        self.shape.dims()
    }

    pub fn num_params(&self) -> usize {
        self.layout.iter().map(ParamInfo::numel).sum()
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
        let n = batch * seq;
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
        if self
            .acts
            .as_ref()
            .is_none_or(|a| a.batch != batch || a.seq != seq)
        {
            self.acts = Some(Activations::new(&self.backend, &dims, batch, seq));
        }
        let acts = self.acts.as_mut().expect("allocated above");
        let b = &self.backend;
        let p = &self.params.tensors;
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

        b.upload_tokens(&mut acts.inputs, inputs);
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
            b.matmul_forward(&mut a.q, &acts.ln, w(WQ), c, c);
            b.matmul_forward(&mut a.k, &acts.ln, w(WK), c, kv);
            b.matmul_forward(&mut a.v, &acts.ln, w(WV), c, kv);
            b.rope_forward(&mut a.q, seq, dims.n_heads, dims.head_dim(), theta);
            b.rope_forward(&mut a.k, seq, dims.n_kv_heads, dims.head_dim(), theta);
            b.attention_forward(&mut a.attn, &mut a.probs, &a.q, &a.k, &a.v, attention);
            b.matmul_forward(&mut acts.tmp, &a.attn, w(WO), c, c);
            b.add(&mut a.mid, &a.input, &acts.tmp);
            b.rmsnorm_forward(&mut acts.ln, &mut a.ln2_rstd, &a.mid, w(FFN_NORM), c, eps);
            b.matmul_forward(&mut a.gate, &acts.ln, w(W_GATE), c, h);
            b.matmul_forward(&mut a.up, &acts.ln, w(W_UP), c, h);
            b.swiglu_forward(&mut acts.act, &a.gate, &a.up);
            b.matmul_forward(&mut acts.tmp, &acts.act, w(W_DOWN), h, c);
            let next = match rest.first_mut() {
                Some(next) => &mut next.input,
                None => &mut acts.out,
            };
            b.add(next, &a.mid, &acts.tmp);
        }
        let norm = &p[1 + dims.n_layers * PER_LAYER];
        b.rmsnorm_forward(&mut acts.lnf, &mut acts.lnf_rstd, &acts.out, norm, c, eps);
        let output = if self.config.tie_embeddings {
            &p[EMBED]
        } else {
            &p[p.len() - 1]
        };
        b.matmul_forward(&mut acts.logits, &acts.lnf, output, c, v);

        let Some(targets) = targets else {
            return Ok(None);
        };
        b.upload_tokens(&mut acts.targets, targets);
        b.cross_entropy_fused(
            &mut acts.losses,
            &mut acts.logits,
            &acts.targets,
            v,
            grad_scale,
        );
        Ok(Some(b.sum(&acts.losses) / n as f64))
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
        b.fill_zero(&mut acts.d_ln);
        b.matmul_backward(
            &mut acts.d_ln,
            &mut g[output_index],
            &acts.logits,
            &acts.lnf,
            &p[output_index],
            c,
            v,
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
            b.swiglu_forward(&mut acts.act, &a.gate, &a.up);
            b.fill_zero(&mut acts.d_act);
            b.matmul_backward(
                &mut acts.d_act,
                &mut g[i(W_DOWN)],
                &acts.d_resid,
                &acts.act,
                &p[i(W_DOWN)],
                h,
                c,
            );
            b.fill_zero(&mut acts.d_gate);
            b.fill_zero(&mut acts.d_up);
            b.swiglu_backward(
                &mut acts.d_gate,
                &mut acts.d_up,
                &acts.d_act,
                &a.gate,
                &a.up,
            );
            b.rmsnorm_forward(
                &mut acts.ln,
                &mut a.ln2_rstd,
                &a.mid,
                &p[i(FFN_NORM)],
                c,
                eps,
            );
            b.fill_zero(&mut acts.d_ln);
            b.matmul_backward(
                &mut acts.d_ln,
                &mut g[i(W_GATE)],
                &acts.d_gate,
                &acts.ln,
                &p[i(W_GATE)],
                c,
                h,
            );
            b.matmul_backward(
                &mut acts.d_ln,
                &mut g[i(W_UP)],
                &acts.d_up,
                &acts.ln,
                &p[i(W_UP)],
                c,
                h,
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
            b.fill_zero(&mut acts.d_attn);
            b.matmul_backward(
                &mut acts.d_attn,
                &mut g[i(WO)],
                &acts.d_resid,
                &a.attn,
                &p[i(WO)],
                c,
                c,
            );
            b.fill_zero(&mut acts.d_q);
            b.fill_zero(&mut acts.d_k);
            b.fill_zero(&mut acts.d_v);
            b.attention_backward(
                &mut acts.d_q,
                &mut acts.d_k,
                &mut acts.d_v,
                &acts.d_attn,
                &a.probs,
                &a.q,
                &a.k,
                &a.v,
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
            b.fill_zero(&mut acts.d_ln);
            b.matmul_backward(
                &mut acts.d_ln,
                &mut g[i(WQ)],
                &acts.d_q,
                &acts.ln,
                &p[i(WQ)],
                c,
                c,
            );
            b.matmul_backward(
                &mut acts.d_ln,
                &mut g[i(WK)],
                &acts.d_k,
                &acts.ln,
                &p[i(WK)],
                c,
                kv,
            );
            b.matmul_backward(
                &mut acts.d_ln,
                &mut g[i(WV)],
                &acts.d_v,
                &acts.ln,
                &p[i(WV)],
                c,
                kv,
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

    /// The per-token losses of the last forward pass with targets (`batch × seq`), on the host:
    /// evaluation sums them to leave out padding rows.
    pub fn token_losses(&self) -> Option<Vec<B::Float>> {
        self.acts.as_ref().map(|a| self.backend.download(&a.losses))
    }

    /// The logits of the last forward pass without targets (`batch × seq × vocab`), on the host.
    pub fn logits(&self) -> Option<Vec<B::Float>> {
        self.acts.as_ref().map(|a| self.backend.download(&a.logits))
    }
}
