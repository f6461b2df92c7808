//! What a model allocates: the buffers of a forward and backward pass, and the byte counts an
//! out-of-memory message gives, computed from the same sizes the buffers are made with.

use std::fmt;
use std::sync::OnceLock;

use super::ModelDims;
use crate::engine::{
    AttentionShape, Backend, EngineError, OptimizerKind, Precision, Saved, SavedOf,
};
use crate::fsutil::human_bytes;

/// What a model allocates, so that an out-of-memory message says what did not fit and which
/// setting makes it smaller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// The weights and their gradients on the device.
    Parameters { params: usize },
    /// A copy of the weights in host memory (initialising, saving).
    HostWeights { params: usize },
    /// The optimizer's state: AdamW's two moments per weight, or one momentum per weight of the
    /// matrices Muon steps (and its working space).
    OptimizerMoments {
        params: usize,
        optimizer: OptimizerKind,
    },
    /// The sum of a step's gradients over micro-batches (and what the ranks all-reduce).
    FlatGradients { params: usize },
    /// The buffers of one forward and backward pass.
    Activations { batch: usize, seq: usize },
    /// The decoder's KV cache and working buffers.
    DecoderCache { positions: usize },
    /// The RoPE tables of llama2.c's legacy `model.bin`.
    RopeTables { positions: usize },
}

impl Allocation {
    /// The setting to lower when this does not fit.
    pub fn remedy(&self) -> &'static str {
        match self {
            Allocation::Parameters { .. }
            | Allocation::HostWeights { .. }
            | Allocation::FlatGradients { .. }
            | Allocation::OptimizerMoments { .. } => {
                "choose a smaller model (model.dim, model.n_layers, model.vocab_size)"
            }
            // A batch of one is a single sequence: `score`'s text, or a training window.
            Allocation::Activations { batch: 1, .. } => {
                "use a shorter sequence (a shorter text to score, or a lower train.seq_len)"
            }
            Allocation::Activations { .. } => "lower train.batch_size (or train.seq_len)",
            Allocation::RopeTables { .. } => {
                "export with --format llama2c-v1, which has no tables, or train a model with a shorter context (model.max_seq_len)"
            }
            Allocation::DecoderCache { .. } => {
                "ask for fewer new tokens (--max-new-tokens, sample.max_new_tokens) or give a shorter prompt"
            }
        }
    }
}

impl std::fmt::Display for Allocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = |params: usize| {
            let params = params as f64;
            match params {
                p if p >= 1e9 => format!("{:.1}B", p / 1e9),
                p if p >= 1e6 => format!("{:.1}M", p / 1e6),
                p if p >= 1e3 => format!("{:.1}k", p / 1e3),
                p => format!("{p}"),
            }
        };
        match *self {
            Allocation::Parameters { params } => write!(
                f,
                "the weights and gradients of a {}-parameter model",
                count(params)
            ),
            Allocation::HostWeights { params } => write!(
                f,
                "a host copy of the weights of a {}-parameter model",
                count(params)
            ),
            Allocation::OptimizerMoments { params, optimizer } => write!(
                f,
                "{} of a {}-parameter model",
                match optimizer {
                    OptimizerKind::AdamW => "the AdamW moments",
                    OptimizerKind::Muon => "the AdamW moments and Muon momentum",
                },
                count(params)
            ),
            Allocation::FlatGradients { params } => write!(
                f,
                "the summed gradients of a {}-parameter model",
                count(params)
            ),
            Allocation::Activations { batch, seq } => {
                write!(f, "the activations of batch {batch} × seq {seq}")
            }
            Allocation::DecoderCache { positions } => {
                write!(f, "the decoder's buffers for {positions} positions")
            }
            Allocation::RopeTables { positions } => {
                write!(f, "run.c's RoPE tables for {positions} positions")
            }
        }
    }
}

/// The most memory a job in host memory may plan for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimit {
    pub bytes: u64,
    pub source: LimitSource,
}

/// Where a [`MemoryLimit`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSource {
    /// `MemTotal` in `/proc/meminfo`.
    Machine,
    /// The control group's `memory.max`, below the machine's memory.
    Cgroup,
    /// The `TINYLLM_MEMORY_LIMIT` environment variable.
    Environment,
}

impl fmt::Display for MemoryLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = human_bytes(self.bytes);
        match self.source {
            LimitSource::Machine => write!(f, "this machine's {bytes}"),
            LimitSource::Cgroup => write!(f, "the {bytes} this process's cgroup may use"),
            LimitSource::Environment => write!(f, "the {bytes} TINYLLM_MEMORY_LIMIT allows"),
        }
    }
}

/// The variable that sets the memory tinyllm plans for (bytes, or a number with k, M, G or T),
/// in place of what the machine reports: for a machine shared with other work.
pub const MEMORY_LIMIT_VAR: &str = "TINYLLM_MEMORY_LIMIT";

/// The memory a job may plan for: `TINYLLM_MEMORY_LIMIT` when set, else the machine's memory
/// or the cgroup's limit if lower; `None` where neither is known (then nothing is refused).
/// Read once per process.
pub fn memory_limit() -> Option<MemoryLimit> {
    static LIMIT: OnceLock<Option<MemoryLimit>> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        if let Ok(value) = std::env::var(MEMORY_LIMIT_VAR) {
            match parse_size(&value) {
                Some(bytes) => {
                    return Some(MemoryLimit {
                        bytes,
                        source: LimitSource::Environment,
                    });
                }
                None => tracing::warn!(
                    "{MEMORY_LIMIT_VAR}={value:?} is not a size such as 8G or 8000000000; using the machine's memory"
                ),
            }
        }
        machine_limit()
    })
}

/// `MemTotal`, or the cgroup's limit (v2 `memory.max`, v1 `memory.limit_in_bytes`) if lower.
fn machine_limit() -> Option<MemoryLimit> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let machine = MemoryLimit {
        bytes: kb.saturating_mul(1024),
        source: LimitSource::Machine,
    };
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|path| {
        std::fs::read_to_string(path)
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
    });
    Some(match cgroup {
        Some(bytes) if bytes < machine.bytes => MemoryLimit {
            bytes,
            source: LimitSource::Cgroup,
        },
        _ => machine,
    })
}

/// `8000000000`, `8G`, `8GB`, `512M`, `1.5T`: decimal units, as tinyllm prints sizes.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(number_end);
    let number: f64 = number.parse().ok()?;
    let unit = unit.trim();
    let unit = unit
        .strip_suffix(['B', 'b'])
        .filter(|u| !u.is_empty())
        .unwrap_or(unit);
    let scale = match unit {
        "" => 1e0,
        "k" | "K" => 1e3,
        "M" | "m" => 1e6,
        "G" | "g" => 1e9,
        "T" | "t" => 1e12,
        _ => return None,
    };
    let bytes = number * scale;
    (bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// What a job holds in memory at once, part by part, counted before anything is allocated.
#[derive(Debug, Clone, PartialEq)]
pub struct Footprint {
    pub parts: Vec<(Allocation, u64)>,
}

impl Footprint {
    /// Training on the CPU: the weights and gradients, the optimizer's state, the activations of
    /// one micro-batch, a host copy of the weights (made when a checkpoint is written), and the
    /// flat sum of the gradients when a step sums several micro-batches (`summed_gradients`:
    /// accumulation or data-parallel ranks).
    pub fn training(
        dims: &ModelDims,
        tie_embeddings: bool,
        batch: usize,
        seq: usize,
        optimizer: OptimizerKind,
        summed_gradients: bool,
    ) -> Self {
        let params = clamp(dims.num_params(tie_embeddings));
        let optimizer_bytes =
            float_bytes::<f32>(clamp(optimizer_floats(dims, tie_embeddings, optimizer)), 1);
        let activations = ActivationSizes::new(dims, batch, seq).bytes::<f32>(dims.n_layers);
        let mut footprint = Footprint {
            parts: vec![
                (
                    Allocation::Parameters { params },
                    float_bytes::<f32>(params, 2),
                ),
                (
                    Allocation::OptimizerMoments { params, optimizer },
                    optimizer_bytes,
                ),
                (Allocation::Activations { batch, seq }, activations),
                (
                    Allocation::HostWeights { params },
                    float_bytes::<f32>(params, 1),
                ),
            ],
        };
        if summed_gradients {
            footprint.parts.push((
                Allocation::FlatGradients { params },
                float_bytes::<f32>(params, 1),
            ));
        }
        footprint
    }

    /// Generating `positions` tokens: the weights as read from their file, the model's weights
    /// and gradients, and the decoder's buffers.
    pub fn sampling(dims: &ModelDims, tie_embeddings: bool, positions: usize) -> Self {
        let params = clamp(dims.num_params(tie_embeddings));
        Footprint {
            parts: vec![
                (
                    Allocation::HostWeights { params },
                    float_bytes::<f32>(params, 1),
                ),
                (
                    Allocation::Parameters { params },
                    float_bytes::<f32>(params, 2),
                ),
                (
                    Allocation::DecoderCache { positions },
                    decoder_bytes(dims, positions),
                ),
            ],
        }
    }

    pub fn total(&self) -> u64 {
        self.parts
            .iter()
            .fold(0u64, |sum, (_, bytes)| sum.saturating_add(*bytes))
    }

    /// The largest part: what to make smaller.
    pub fn largest(&self) -> Allocation {
        self.parts
            .iter()
            .max_by_key(|(_, bytes)| *bytes)
            .map(|(what, _)| *what)
            .expect("a footprint has parts")
    }

    /// Refuses a footprint above [`memory_limit`] (the `job`, e.g. "training", names it).
    pub fn check(self, job: &'static str) -> Result<(), TooLarge> {
        match memory_limit() {
            Some(limit) if self.total() > limit.bytes => Err(TooLarge {
                job,
                footprint: self,
                limit,
            }),
            _ => Ok(()),
        }
    }
}

/// A parameter count as a `usize` (counts are bounded by [`super::MAX_PARAMS`]).
/// The floats of an optimizer's state for a model of these dimensions, in `u128` like
/// [`ModelDims::num_params`]: two moments per weight under AdamW; under Muon one momentum per
/// weight of the block matrices, plus the working space of the largest of them.
fn optimizer_floats(dims: &ModelDims, tie_embeddings: bool, kind: OptimizerKind) -> u128 {
    let params = dims.num_params(tie_embeddings);
    if kind == OptimizerKind::AdamW {
        return 2 * params;
    }
    let [c, kv, h] = [
        dims.dim,
        dims.n_kv_heads.saturating_mul(dims.head_dim()),
        dims.hidden_dim(),
    ];
    let shapes = [(c, c), (kv, c), (h, c), (c, h)];
    let numel = |(rows, cols): (usize, usize)| rows as u128 * cols as u128;
    let block_matrices =
        dims.n_layers as u128 * (2 * numel((c, c)) + 2 * numel((kv, c)) + 3 * numel((h, c)));
    let scratch = shapes
        .iter()
        .map(|&(rows, cols)| {
            let side = rows.min(cols) as u128;
            2 * numel((rows, cols)) + 2 * side * side
        })
        .max()
        .unwrap_or(0);
    2 * (params - block_matrices) + block_matrices + scratch
}

fn clamp(params: u128) -> usize {
    usize::try_from(params).unwrap_or(usize::MAX)
}

/// A job that would need more memory than there is, found before anything was allocated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct TooLarge {
    pub job: &'static str,
    pub footprint: Footprint,
    pub limit: MemoryLimit,
}

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .footprint
            .parts
            .iter()
            .filter(|(_, bytes)| *bytes > 0)
            .map(|(what, bytes)| format!("{} for {what}", human_bytes(*bytes)))
            .collect();
        write!(
            f,
            "{} needs about {} of memory ({}), more than {}",
            self.job,
            human_bytes(self.footprint.total()),
            parts.join(", "),
            self.limit
        )
    }
}

/// Bytes of the decoder's buffers for `positions` positions (as [`super::Decoder`] makes them).
pub(super) fn decoder_bytes(dims: &ModelDims, positions: usize) -> u64 {
    let [c, kv, h, v, layers, positions] = [
        dims.dim,
        dims.n_kv_heads * dims.head_dim(),
        dims.hidden_dim(),
        dims.vocab_size,
        dims.n_layers,
        positions,
    ]
    .map(|x| x as u128);
    let floats = 2 * layers * positions * kv + 5 * c + 1 + 2 * kv + 3 * h + v;
    u64::try_from(floats * 4).unwrap_or(u64::MAX)
}

/// Bytes of `copies` × `len` values of `F`, saturated at `u64::MAX`.
pub(super) fn float_bytes<F>(len: usize, copies: u128) -> u64 {
    let bytes = len as u128 * copies * std::mem::size_of::<F>() as u128;
    u64::try_from(bytes).unwrap_or(u64::MAX)
}

/// Buffers of one layer's forward pass, kept for its backward pass. Under bf16 precision the
/// ones that feed only attention, SwiGLU and matmul operands (q, k, v, the probabilities, gate
/// and up) are kept in bf16, which those ops round to anyway or read within bf16 tolerance; the
/// residual stream (`input`, `mid`), the norms' `1/rms` and the attention output stay f32.
pub(super) struct LayerActs<B: Backend> {
    pub(super) input: B::Buf,
    pub(super) ln1_rstd: B::Buf,
    pub(super) q: SavedOf<B>,
    pub(super) k: SavedOf<B>,
    pub(super) v: SavedOf<B>,
    pub(super) probs: SavedOf<B>,
    pub(super) attn: B::Buf,
    pub(super) mid: B::Buf,
    pub(super) ln2_rstd: B::Buf,
    pub(super) gate: SavedOf<B>,
    pub(super) up: SavedOf<B>,
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
    /// Working space of the attention backward pass (as long as the backend asks).
    pub(super) d_probs: B::Buf,
    pub(super) d_resid: B::Buf,
    pub(super) d_ln: B::Buf,
    /// The gradients of q, k, v, gate and up. Free during the forward pass, they then hold the
    /// float q, k, v, gate and up of the layer at hand, before those are rounded to the
    /// layer's bf16 copies (under bf16 precision).
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
    /// The attention backward pass's working space.
    scratch: usize,
    /// Whether the kept activations that may be are bf16.
    half: bool,
}

impl ActivationSizes {
    /// The sizes in f32 with working space as large as the probabilities: the most any
    /// backend and precision allocates.
    pub(super) fn new(dims: &ModelDims, batch: usize, seq: usize) -> Self {
        let probs = batch
            .saturating_mul(dims.n_heads)
            .saturating_mul(seq)
            .saturating_mul(seq);
        ActivationSizes {
            n: batch.saturating_mul(seq),
            c: dims.dim,
            kv: dims.n_kv_heads * dims.head_dim(),
            h: dims.hidden_dim(),
            v: dims.vocab_size,
            probs,
            scratch: probs,
            half: false,
        }
    }

    /// The sizes on `backend` in `precision`.
    pub(super) fn on<B: Backend>(
        dims: &ModelDims,
        batch: usize,
        seq: usize,
        backend: &B,
        precision: Precision,
    ) -> Self {
        ActivationSizes {
            scratch: backend.attention_scratch_len(attention_shape(dims, batch, seq)),
            half: precision == Precision::Bf16,
            ..Self::new(dims, batch, seq)
        }
    }

    /// The floats, the bf16 values and the tokens of every buffer [`Activations::new`]
    /// allocates, exactly.
    pub(super) fn counts(&self, n_layers: usize) -> (u128, u128, u128) {
        let [n, c, kv, h, v, probs, scratch] = [
            self.n,
            self.c,
            self.kv,
            self.h,
            self.v,
            self.probs,
            self.scratch,
        ]
        .map(|x| x as u128);
        let kept = probs + n * c + 2 * n * kv + 2 * n * h;
        let floats_per_layer = 3 * n * c + 2 * n;
        let shared = 8 * n * c + 2 * n + n * v + 4 * n * h + scratch + 2 * n * kv;
        let layers = n_layers as u128;
        if self.half {
            (layers * floats_per_layer + shared, layers * kept, 2 * n)
        } else {
            (layers * (floats_per_layer + kept) + shared, 0, 2 * n)
        }
    }

    /// The bytes of the activations with floats of type `F`, saturated at `u64::MAX`.
    pub(super) fn bytes<F>(&self, n_layers: usize) -> u64 {
        let (floats, halves, tokens) = self.counts(n_layers);
        let bytes = floats * std::mem::size_of::<F>() as u128 + halves * 2 + tokens * 4;
        u64::try_from(bytes).unwrap_or(u64::MAX)
    }
}

/// The attention shape of a pass of `batch × seq` tokens.
pub(super) fn attention_shape(dims: &ModelDims, batch: usize, seq: usize) -> AttentionShape {
    AttentionShape {
        batch,
        seq,
        heads: dims.n_heads,
        kv_heads: dims.n_kv_heads,
        head_dim: dims.head_dim(),
    }
}

impl<B: Backend> Activations<B> {
    /// Every buffer of one (batch, seq), the kept ones in bf16 under bf16 precision. Lengths
    /// saturate rather than wrap, so a size too large to count is an allocation the backend
    /// refuses, never a small buffer.
    pub(super) fn new(
        backend: &B,
        dims: &ModelDims,
        batch: usize,
        seq: usize,
        precision: Precision,
    ) -> Result<Self, EngineError> {
        let ActivationSizes {
            n,
            c,
            kv,
            h,
            v,
            probs,
            scratch,
            half: _,
        } = ActivationSizes::on(dims, batch, seq, backend, precision);
        let z = |rows: usize, width: usize| backend.zeros(rows.saturating_mul(width));
        let kept = |rows: usize, width: usize| {
            Saved::zeros(backend, rows.saturating_mul(width), precision)
        };
        let layers = (0..dims.n_layers)
            .map(|_| {
                // The attention probabilities, quadratic in seq, first: a size that cannot fit
                // fails before anything else is allocated.
                Ok(LayerActs {
                    probs: kept(probs, 1)?,
                    input: z(n, c)?,
                    ln1_rstd: z(n, 1)?,
                    q: kept(n, c)?,
                    k: kept(n, kv)?,
                    v: kept(n, kv)?,
                    attn: z(n, c)?,
                    mid: z(n, c)?,
                    ln2_rstd: z(n, 1)?,
                    gate: kept(n, h)?,
                    up: kept(n, h)?,
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
            d_probs: z(scratch, 1)?,
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

    /// The floats, bf16 values and tokens held, counted field by field (the destructuring names
    /// every field, so a new buffer cannot be left out): checks [`ActivationSizes::counts`].
    #[cfg(test)]
    pub(super) fn counts(&self, backend: &B) -> (u128, u128, u128) {
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
        let mut halves = 0;
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
            floats += [input, ln1_rstd, attn, mid, ln2_rstd]
                .iter()
                .map(|b| backend.len(b))
                .sum::<usize>();
            for kept in [q, k, v, probs, gate, up] {
                match kept {
                    Saved::Full(buf) => floats += backend.len(buf),
                    Saved::Half(buf) => halves += backend.half_len(buf),
                }
            }
        }
        // inputs and targets: one token per row each.
        (floats as u128, halves as u128, 2 * (batch * seq) as u128)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Preset;

    #[test]
    fn sizes_read_as_tinyllm_prints_them() {
        assert_eq!(parse_size("8000000000"), Some(8_000_000_000));
        assert_eq!(parse_size("8G"), Some(8_000_000_000));
        assert_eq!(parse_size(" 8 GB "), Some(8_000_000_000));
        assert_eq!(parse_size("1.5T"), Some(1_500_000_000_000));
        assert_eq!(parse_size("512M"), Some(512_000_000));
        for bad in ["", "G", "8X", "-1G", "0", "1e99T", "eight"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    /// A single sequence too long to fit is not fixed by a smaller batch (`score`, or a batch of one).
    #[test]
    fn one_sequence_too_long_asks_for_a_shorter_one() {
        assert!(
            Allocation::Activations { batch: 1, seq: 9 }
                .remedy()
                .contains("a shorter sequence")
        );
        assert!(
            Allocation::Activations { batch: 2, seq: 9 }
                .remedy()
                .contains("lower train.batch_size")
        );
    }

    #[test]
    fn a_footprint_sums_its_parts_and_names_the_largest() {
        let dims = Preset::Tutorial.dims();
        let small = Footprint::training(&dims, true, 8, 256, OptimizerKind::AdamW, true);
        assert!(small.total() < 1 << 32, "{}", small.total());
        let wide = Footprint::training(&dims, true, 1 << 20, 256, OptimizerKind::AdamW, true);
        assert_eq!(
            wide.largest(),
            Allocation::Activations {
                batch: 1 << 20,
                seq: 256
            }
        );
        let limit = MemoryLimit {
            bytes: 8_000_000_000,
            source: LimitSource::Environment,
        };
        let message = TooLarge {
            job: "training",
            footprint: wide,
            limit,
        }
        .to_string();
        assert!(message.starts_with("training needs about "), "{message}");
        assert!(
            message.ends_with("more than the 8.0 GB TINYLLM_MEMORY_LIMIT allows"),
            "{message}"
        );
        let sampling = Footprint::sampling(&dims, true, 300);
        assert_eq!(
            sampling.largest(),
            Allocation::Parameters {
                params: dims.num_params(true) as usize
            }
        );
    }

    /// The footprint counts the floats the optimizers allocate, for both kinds.
    #[test]
    fn optimizer_state_is_counted_as_the_optimizer_allocates_it() {
        for tie in [true, false] {
            let dims = Preset::Tutorial.dims();
            let config = crate::model::LlamaConfig {
                tie_embeddings: tie,
                ..Default::default()
            };
            let layout = crate::model::param_layout(&dims, &config);
            for kind in [OptimizerKind::AdamW, OptimizerKind::Muon] {
                assert_eq!(
                    optimizer_floats(&dims, tie, kind),
                    crate::engine::optimizer::state_floats(&layout, kind) as u128,
                    "{kind:?}, tied {tie}"
                );
            }
            assert!(
                optimizer_floats(&dims, tie, OptimizerKind::Muon)
                    < optimizer_floats(&dims, tie, OptimizerKind::AdamW)
            );
        }
    }
}
