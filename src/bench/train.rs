//! `tinyllm bench train`: the speed of one training step (forward, backward, clipping, AdamW)
//! of a model on random tokens.

use std::time::Instant;

use serde::Serialize;

use super::{BenchError, matmul_peak_gflops, median, peak_rss_bytes};
use crate::engine::{Backend, Cpu, Rng};
use crate::model::{Llama, LlamaConfig, ModelDims, Preset, Shape};
use crate::pipeline::spec::Device;

/// What to measure.
#[derive(Debug, Clone)]
pub struct TrainBench {
    pub dims: ModelDims,
    /// When the dimensions are a preset's, its compile-time type is used.
    pub preset: Option<Preset>,
    pub batch: usize,
    pub seq: usize,
    pub warmup_steps: usize,
    pub steps: usize,
    pub device: Device,
}

/// The figures `bench train` prints.
#[derive(Debug, Clone, Serialize)]
pub struct TrainFigures {
    pub model: String,
    /// `cpu`, or the GPU's name.
    pub device: String,
    pub params: usize,
    pub batch: usize,
    pub seq: usize,
    pub threads: usize,
    pub steps: usize,
    pub median_ms_per_step: f64,
    pub tokens_per_sec: f64,
    pub gflops_per_step: f64,
    pub achieved_gflops: f64,
    pub matmul_peak_gflops: f64,
    pub fraction_of_peak: f64,
    /// A GPU's nominal bf16 peak, when known, and the achieved fraction of it (MFU).
    pub bf16_peak_gflops: Option<f64>,
    pub mfu_bf16: Option<f64>,
    pub peak_rss_mb: Option<f64>,
}

/// Floating-point operations of one training step (forward + backward = 3 × forward), counting
/// every matmul and the attention products.
pub fn train_step_flops(dims: &ModelDims, batch: usize, seq: usize) -> f64 {
    let (c, h, v) = (
        dims.dim as f64,
        dims.hidden_dim() as f64,
        dims.vocab_size as f64,
    );
    let kv = (dims.n_kv_heads * dims.head_dim()) as f64;
    let per_layer_weights = 2.0 * c * c + 2.0 * kv * c + 3.0 * h * c;
    let tokens = (batch * seq) as f64;
    let matmul = 2.0 * tokens * (dims.n_layers as f64 * per_layer_weights + v * c);
    // Causal attention: QKᵀ and PV, each 2·head_dim multiply-adds per visible position.
    let visible = (seq as f64 + 1.0) / 2.0;
    let attention = dims.n_layers as f64 * tokens * 4.0 * dims.dim as f64 * visible;
    3.0 * (matmul + attention)
}

pub fn run(bench: &TrainBench) -> Result<TrainFigures, BenchError> {
    crate::with_shape!(bench.dims, |shape| match bench.device {
        Device::Cpu => measure(Cpu::<f32>::new(), "cpu".into(), None, 1024, shape, bench),
        #[cfg(feature = "cuda")]
        Device::Cuda(ordinal) => {
            let gpu = crate::engine::Cuda::new(ordinal)?;
            let (name, bf16) = (gpu.device_name().to_string(), gpu.bf16_peak_gflops());
            measure(gpu, name, bf16, 4096, shape, bench)
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(BenchError::NoCudaBuild),
    })
}

fn measure<S: Shape, B: Backend<Float = f32>>(
    backend: B,
    device: String,
    bf16_peak_gflops: Option<f64>,
    peak_size: usize,
    shape: S,
    bench: &TrainBench,
) -> Result<TrainFigures, BenchError> {
    let dims = shape.dims();
    let (batch, seq) = (bench.batch, bench.seq.min(dims.max_seq_len));
    let peak = matmul_peak_gflops(&backend, peak_size)?;
    let mut model = Llama::new(backend, shape, LlamaConfig::default(), 1337)?;
    let mut optimizer = model.optimizer(0.9, 0.95, 0.1)?;
    // Before the random batch is made: a batch too large for memory is an error, not an abort.
    model.allocate_activations(batch, seq)?;
    let mut rng = Rng::new(1);
    let n = batch * seq;
    let inputs: Vec<u32> = (0..n)
        .map(|_| rng.below(dims.vocab_size as u64) as u32)
        .collect();
    let targets: Vec<u32> = (0..n)
        .map(|_| rng.below(dims.vocab_size as u64) as u32)
        .collect();
    let mut times = Vec::with_capacity(bench.steps);
    for step in 0..bench.warmup_steps + bench.steps {
        let started = Instant::now();
        model.train_step(&mut optimizer, &inputs, &targets, batch, seq, 1e-4, 1.0)?;
        if step >= bench.warmup_steps {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    let secs = median(&mut times);
    let flops = train_step_flops(&dims, batch, seq);
    let achieved = flops / secs / 1e9;
    Ok(TrainFigures {
        device,
        model: bench
            .preset
            .map_or_else(|| format!("{dims:?}"), |p| p.name().to_string()),
        params: model.num_params(),
        batch,
        seq,
        threads: rayon::current_num_threads(),
        steps: bench.steps,
        median_ms_per_step: secs * 1e3,
        tokens_per_sec: n as f64 / secs,
        gflops_per_step: flops / 1e9,
        achieved_gflops: achieved,
        matmul_peak_gflops: peak,
        fraction_of_peak: achieved / peak,
        mfu_bf16: bf16_peak_gflops.map(|p| achieved / p),
        bf16_peak_gflops,
        peak_rss_mb: peak_rss_bytes().map(|b| b as f64 / 1e6),
    })
}
