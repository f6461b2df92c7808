//! Decoding one token at a time with a KV cache, as llama2.c's `run.c` does: each step runs the
//! new token through every layer, appends its keys and values to the cache, and attends over
//! the cached positions, so a sequence of n tokens costs n single-row passes instead of n full
//! forward passes.

use super::llama::{ATTN_NORM, EMBED, FFN_NORM, W_DOWN, W_GATE, W_UP, WK, WO, WQ, WV, layer_index};
use super::memory::{Footprint, decoder_bytes};
use super::{Allocation, Llama, ModelDims, ModelError, Shape};
use crate::engine::{Backend, EngineError, Input, MatvecWeight};

/// Per-layer keys and values of the positions decoded so far, and the step's working buffers.
pub struct Decoder<B: Backend> {
    k_cache: Vec<B::Buf>,
    v_cache: Vec<B::Buf>,
    /// Positions in the cache.
    len: usize,
    capacity: usize,
    token: B::Tokens,
    x: B::Buf,
    ln: B::Buf,
    rstd: B::Buf,
    q: B::Buf,
    k: B::Buf,
    v: B::Buf,
    attn: B::Buf,
    tmp: B::Buf,
    gate: B::Buf,
    up: B::Buf,
    act: B::Buf,
    logits: B::Buf,
}

impl<B: Backend> Decoder<B> {
    /// Positions decoded so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most positions the cache holds (at most the model's `max_seq_len`).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every position, keeping the buffers.
    pub fn reset(&mut self) {
        self.len = 0;
    }

    fn allocate(b: &B, dims: &ModelDims, positions: usize) -> Result<Self, EngineError> {
        let (c, kv, h) = (
            dims.dim,
            dims.n_kv_heads * dims.head_dim(),
            dims.hidden_dim(),
        );
        let cache = || {
            (0..dims.n_layers)
                .map(|_| b.zeros(positions.saturating_mul(kv)))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Decoder {
            k_cache: cache()?,
            v_cache: cache()?,
            len: 0,
            capacity: positions,
            token: b.tokens(1)?,
            x: b.zeros(c)?,
            ln: b.zeros(c)?,
            rstd: b.zeros(1)?,
            q: b.zeros(c)?,
            k: b.zeros(kv)?,
            v: b.zeros(kv)?,
            attn: b.zeros(c)?,
            tmp: b.zeros(c)?,
            gate: b.zeros(h)?,
            up: b.zeros(h)?,
            act: b.zeros(h)?,
            logits: b.zeros(dims.vocab_size)?,
        })
    }

    /// The floats held, field by field (the destructuring names every field, so a new buffer
    /// cannot be left out): checks the decoder's share of a [`Footprint`].
    #[cfg(test)]
    pub(super) fn floats_held(&self, b: &B) -> usize {
        let Decoder {
            k_cache,
            v_cache,
            len: _,
            capacity: _,
            token: _,
            x,
            ln,
            rstd,
            q,
            k,
            v,
            attn,
            tmp,
            gate,
            up,
            act,
            logits,
        } = self;
        let caches: usize = k_cache.iter().chain(v_cache).map(|t| b.len(t)).sum();
        caches
            + [x, ln, rstd, q, k, v, attn, tmp, gate, up, act, logits]
                .iter()
                .map(|t| b.len(t))
                .sum::<usize>()
    }
}

impl<S: Shape, B: Backend> Llama<S, B> {
    /// An empty decoder for this model with room for `positions` positions (at most
    /// `max_seq_len`): what a generation will use, so a long context costs nothing unused.
    pub fn decoder(&self, positions: usize) -> Result<Decoder<B>, ModelError> {
        let dims = self.dims();
        let positions = positions.clamp(1, dims.max_seq_len);
        let what = Allocation::DecoderCache { positions };
        let needed = decoder_bytes(&dims, positions);
        if self.backend().in_host_memory() {
            Footprint {
                parts: vec![
                    (self.parameters_allocation(), self.parameters_bytes()),
                    (what, needed),
                ],
            }
            .check("generating")?;
        }
        Decoder::allocate(self.backend(), &dims, positions)
            .map_err(ModelError::allocating(what, needed))
    }

    /// Runs `token` at the decoder's next position and returns the logits for the token after
    /// it (on the host).
    pub fn decode_step(
        &self,
        decoder: &mut Decoder<B>,
        token: u32,
    ) -> Result<Vec<B::Float>, ModelError> {
        // A single token is little work per op: run the whole step on one of rayon's workers, so
        // that the ops' parallel loops start there instead of each waking the pool from outside.
        rayon::scope(|_| self.decode_in_pool(decoder, token))
    }

    fn decode_in_pool(
        &self,
        decoder: &mut Decoder<B>,
        token: u32,
    ) -> Result<Vec<B::Float>, ModelError> {
        let dims = self.dims();
        if token as usize >= dims.vocab_size {
            return Err(ModelError::TokenOutOfRange {
                token,
                vocab: dims.vocab_size,
            });
        }
        let pos = decoder.len;
        if pos >= decoder.capacity {
            return Err(ModelError::SequenceTooLong {
                seq: pos + 1,
                max: decoder.capacity,
            });
        }
        let b = self.backend();
        let p = self.params().tensors();
        let d = decoder;
        let (c, kv, h, hd) = (
            dims.dim,
            dims.n_kv_heads * dims.head_dim(),
            dims.hidden_dim(),
            dims.head_dim(),
        );
        let (eps, theta) = (self.config().norm_eps, self.config().rope_theta);

        b.upload_tokens(&mut d.token, &[token])?;
        b.embedding_forward(&mut d.x, &d.token, &p[EMBED], c);
        // Under bf16 precision the matmuls read the weights' bf16 copies (half the bytes a token
        // streams through), as the full forward pass does.
        let linear = |index| match self.half_weight(index) {
            Some(w) => MatvecWeight::Half(w),
            None => MatvecWeight::Full(&p[index]),
        };
        for l in 0..dims.n_layers {
            let at = |which| layer_index(l, which);
            b.rmsnorm_forward(&mut d.ln, &mut d.rstd, &d.x, &p[at(ATTN_NORM)], c, eps);
            b.matvec_many(
                &mut [&mut d.q, &mut d.k, &mut d.v],
                &d.ln,
                &[linear(at(WQ)), linear(at(WK)), linear(at(WV))],
                c,
            );
            b.rope_forward_at(&mut d.q, pos, dims.n_heads, hd, theta);
            b.rope_forward_at(&mut d.k, pos, dims.n_kv_heads, hd, theta);
            b.write_at(&mut d.k_cache[l], pos * kv, &d.k);
            b.write_at(&mut d.v_cache[l], pos * kv, &d.v);
            b.attention_decode(
                &mut d.attn,
                &d.q,
                &d.k_cache[l],
                &d.v_cache[l],
                pos + 1,
                dims.n_heads,
                dims.n_kv_heads,
                hd,
            );
            b.matvec_many(&mut [&mut d.tmp], &d.attn, &[linear(at(WO))], c);
            b.add_assign(&mut d.x, &d.tmp);

            b.rmsnorm_forward(&mut d.ln, &mut d.rstd, &d.x, &p[at(FFN_NORM)], c, eps);
            b.matvec_many(
                &mut [&mut d.gate, &mut d.up],
                &d.ln,
                &[linear(at(W_GATE)), linear(at(W_UP))],
                c,
            );
            b.swiglu_forward(&mut d.act, Input::Full(&d.gate), Input::Full(&d.up));
            b.matvec_many(&mut [&mut d.tmp], &d.act, &[linear(at(W_DOWN))], h);
            b.add_assign(&mut d.x, &d.tmp);
        }
        b.rmsnorm_forward(
            &mut d.ln,
            &mut d.rstd,
            &d.x,
            &p[self.final_norm_index()],
            c,
            eps,
        );
        b.matvec_many(
            &mut [&mut d.logits],
            &d.ln,
            &[linear(self.output_index())],
            c,
        );
        let logits = b.download(&d.logits)?;
        d.len += 1;
        Ok(logits)
    }
}
