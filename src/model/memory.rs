//! What a model allocates: the buffers of a forward and backward pass, and the byte counts an
//! out-of-memory message gives, computed from the same sizes the buffers are made with.

use super::ModelDims;
use crate::engine::{Backend, EngineError};

/// What a model allocates, so that an out-of-memory message says what did not fit and which
/// setting makes it smaller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// The weights and their gradients on the device.
    Parameters { params: usize },
    /// A copy of the weights in host memory (initialising, saving).
    HostWeights { params: usize },
    /// AdamW's two moments per weight.
    OptimizerMoments { params: usize },
    /// The buffers of one forward and backward pass.
    Activations { batch: usize, seq: usize },
    /// The decoder's KV cache and working buffers.
    DecoderCache { positions: usize },
}

impl Allocation {
    /// The setting to lower when this does not fit.
    pub fn remedy(&self) -> &'static str {
        match self {
            Allocation::Parameters { .. }
            | Allocation::HostWeights { .. }
            | Allocation::OptimizerMoments { .. } => {
                "choose a smaller model (model.dim, model.n_layers, model.vocab_size)"
            }
            Allocation::Activations { .. } => "lower train.batch_size (or train.seq_len)",
            Allocation::DecoderCache { .. } => {
                "choose a model with a shorter context (model.max_seq_len) or fewer layers (model.n_layers)"
            }
        }
    }
}

impl std::fmt::Display for Allocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let millions = |params: usize| params as f64 / 1e6;
        match *self {
            Allocation::Parameters { params } => write!(
                f,
                "the weights and gradients of a {:.1}M-parameter model",
                millions(params)
            ),
            Allocation::HostWeights { params } => write!(
                f,
                "the weights of a {:.1}M-parameter model, copied to host memory,",
                millions(params)
            ),
            Allocation::OptimizerMoments { params } => write!(
                f,
                "the AdamW moments of a {:.1}M-parameter model",
                millions(params)
            ),
            Allocation::Activations { batch, seq } => {
                write!(f, "the activations of batch {batch} × seq {seq}")
            }
            Allocation::DecoderCache { positions } => {
                write!(f, "the decoder's buffers for {positions} positions")
            }
        }
    }
}

/// Bytes of `copies` × `len` values of `F`, saturated at `u64::MAX`.
pub(super) fn float_bytes<F>(len: usize, copies: u128) -> u64 {
    let bytes = len as u128 * copies * std::mem::size_of::<F>() as u128;
    u64::try_from(bytes).unwrap_or(u64::MAX)
}

/// Buffers of one layer's forward pass, kept for its backward pass.
pub(super) struct LayerActs<B: Backend> {
    pub(super) input: B::Buf,
    pub(super) ln1_rstd: B::Buf,
    pub(super) q: B::Buf,
    pub(super) k: B::Buf,
    pub(super) v: B::Buf,
    pub(super) probs: B::Buf,
    pub(super) attn: B::Buf,
    pub(super) mid: B::Buf,
    pub(super) ln2_rstd: B::Buf,
    pub(super) gate: B::Buf,
    pub(super) up: B::Buf,
}

/// Every activation and activation gradient of one (batch, seq), allocated once.
pub(super) struct Activations<B: Backend> {
    pub(super) batch: usize,
    pub(super) seq: usize,
    pub(super) inputs: B::Tokens,
    pub(super) targets: B::Tokens,
    pub(super) layers: Vec<LayerActs<B>>,
    pub(super) out: B::Buf,
    pub(super) lnf: B::Buf,
    pub(super) lnf_rstd: B::Buf,
    /// Logits after the forward pass; their gradient after the loss.
    pub(super) logits: B::Buf,
    pub(super) losses: B::Buf,
    pub(super) tmp: B::Buf,
    /// The normalised input of the sublayer at hand; recomputed in the backward pass (from the
    /// kept `1/rms`) rather than kept for every layer.
    pub(super) ln: B::Buf,
    /// `silu(gate) · up` of the layer at hand: recomputed in the backward pass rather than kept
    /// for every layer.
    pub(super) act: B::Buf,
    /// Working space of the attention backward pass.
    pub(super) d_probs: B::Buf,
    pub(super) d_resid: B::Buf,
    pub(super) d_ln: B::Buf,
    pub(super) d_q: B::Buf,
    pub(super) d_k: B::Buf,
    pub(super) d_v: B::Buf,
    pub(super) d_attn: B::Buf,
    pub(super) d_gate: B::Buf,
    pub(super) d_up: B::Buf,
    pub(super) d_act: B::Buf,
}

/// The row counts and widths activation buffers are made of.
pub(super) struct ActivationSizes {
    n: usize,
    c: usize,
    kv: usize,
    h: usize,
    v: usize,
    /// Attention probabilities: batch × heads × seq × seq.
    probs: usize,
}

impl ActivationSizes {
    pub(super) fn new(dims: &ModelDims, batch: usize, seq: usize) -> Self {
        ActivationSizes {
            n: batch.saturating_mul(seq),
            c: dims.dim,
            kv: dims.n_kv_heads * dims.head_dim(),
            h: dims.hidden_dim(),
            v: dims.vocab_size,
            probs: batch
                .saturating_mul(dims.n_heads)
                .saturating_mul(seq)
                .saturating_mul(seq),
        }
    }

    /// The floats and the tokens of every buffer [`Activations::new`] allocates, exactly.
    pub(super) fn counts(&self, n_layers: usize) -> (u128, u128) {
        let [n, c, kv, h, v, probs] =
            [self.n, self.c, self.kv, self.h, self.v, self.probs].map(|x| x as u128);
        let per_layer = 4 * n * c + 2 * n + 2 * n * kv + probs + 2 * n * h;
        let shared = 8 * n * c + 2 * n + n * v + 4 * n * h + probs + 2 * n * kv;
        (n_layers as u128 * per_layer + shared, 2 * n)
    }

    /// The bytes of the activations, saturated at `u64::MAX`.
    pub(super) fn bytes<F>(&self, n_layers: usize) -> u64 {
        let (floats, tokens) = self.counts(n_layers);
        let bytes = floats * std::mem::size_of::<F>() as u128 + tokens * 4;
        u64::try_from(bytes).unwrap_or(u64::MAX)
    }
}

impl<B: Backend> Activations<B> {
    /// Every buffer of one (batch, seq). Lengths saturate rather than wrap, so a size too large
    /// to count is an allocation the backend refuses, never a small buffer.
    pub(super) fn new(
        backend: &B,
        dims: &ModelDims,
        batch: usize,
        seq: usize,
    ) -> Result<Self, EngineError> {
        let ActivationSizes {
            n,
            c,
            kv,
            h,
            v,
            probs,
        } = ActivationSizes::new(dims, batch, seq);
        let z = |rows: usize, width: usize| backend.zeros(rows.saturating_mul(width));
        let layers = (0..dims.n_layers)
            .map(|_| {
                // The attention probabilities, quadratic in seq, first: a size that cannot fit
                // fails before anything else is allocated.
                Ok(LayerActs {
                    probs: z(probs, 1)?,
                    input: z(n, c)?,
                    ln1_rstd: z(n, 1)?,
                    q: z(n, c)?,
                    k: z(n, kv)?,
                    v: z(n, kv)?,
                    attn: z(n, c)?,
                    mid: z(n, c)?,
                    ln2_rstd: z(n, 1)?,
                    gate: z(n, h)?,
                    up: z(n, h)?,
                })
            })
            .collect::<Result<_, EngineError>>()?;
        Ok(Activations {
            batch,
            seq,
            inputs: backend.tokens(n)?,
            targets: backend.tokens(n)?,
            layers,
            out: z(n, c)?,
            lnf: z(n, c)?,
            lnf_rstd: z(n, 1)?,
            logits: z(n, v)?,
            losses: z(n, 1)?,
            tmp: z(n, c)?,
            ln: z(n, c)?,
            act: z(n, h)?,
            d_probs: z(probs, 1)?,
            d_resid: z(n, c)?,
            d_ln: z(n, c)?,
            d_q: z(n, c)?,
            d_k: z(n, kv)?,
            d_v: z(n, kv)?,
            d_attn: z(n, c)?,
            d_gate: z(n, h)?,
            d_up: z(n, h)?,
            d_act: z(n, h)?,
        })
    }

    /// The floats and tokens held, counted field by field (the destructuring names every field,
    /// so a new buffer cannot be left out): checks [`ActivationSizes::counts`].
    #[cfg(test)]
    pub(super) fn counts(&self, backend: &B) -> (u128, u128) {
        let Activations {
            batch,
            seq,
            inputs: _,
            targets: _,
            layers,
            out,
            lnf,
            lnf_rstd,
            logits,
            losses,
            tmp,
            ln,
            act,
            d_probs,
            d_resid,
            d_ln,
            d_q,
            d_k,
            d_v,
            d_attn,
            d_gate,
            d_up,
            d_act,
        } = self;
        let mut floats: usize = [
            out, lnf, lnf_rstd, logits, losses, tmp, ln, act, d_probs, d_resid, d_ln, d_q, d_k,
            d_v, d_attn, d_gate, d_up, d_act,
        ]
        .iter()
        .map(|b| backend.len(b))
        .sum();
        for layer in layers {
            let LayerActs {
                input,
                ln1_rstd,
                q,
                k,
                v,
                probs,
                attn,
                mid,
                ln2_rstd,
                gate,
                up,
            } = layer;
            floats += [
                input, ln1_rstd, q, k, v, probs, attn, mid, ln2_rstd, gate, up,
            ]
            .iter()
            .map(|b| backend.len(b))
            .sum::<usize>();
        }
        // inputs and targets: one token per row each.
        (floats as u128, 2 * (batch * seq) as u128)
    }
}
