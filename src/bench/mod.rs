//! `tinyllm bench …`: figures, not tests. Each benchmark measures what it reports on this
//! machine, in the same process, so ratios within one run are meaningful.

pub mod data;
pub mod generate;
pub mod matmul;
pub mod train;

use std::time::Instant;

pub use crate::train::metrics::median;

use crate::engine::{Backend, Cpu, EngineError, Precision};

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Dispatch(#[from] crate::model::DispatchError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Weights(#[from] crate::model::safetensors::SafetensorsError),
    #[error(transparent)]
    Loader(#[from] crate::data::loader::LoaderError),
    #[error(transparent)]
    Train(#[from] crate::train::TrainError),
    #[error(transparent)]
    Checkpoint(#[from] crate::train::checkpoint::CheckpointError),
    #[error("the benchmark's scratch folder {}: {source}", path.display())]
    Scratch {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Peak resident memory of this process in bytes (Linux `VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The f32 matmul throughput of `backend` (GFLOP/s, best of a few square multiplications of
/// size `n`: 1024 on the CPU, 4096 on a GPU), to compare a model's achieved figure against.
pub fn matmul_peak_gflops<B: Backend<Float = f32>>(
    backend: &B,
    n: usize,
    precision: Precision,
) -> Result<f64, EngineError> {
    let a = backend.upload(&vec![0.5f32; n * n])?;
    let w = backend.upload(&vec![0.25f32; n * n])?;
    let mut w_half = backend.half_zeros(if precision == Precision::Bf16 {
        n * n
    } else {
        0
    })?;
    if precision == Precision::Bf16 {
        backend.round_to_half(&mut w_half, &w);
    }
    let mut out = backend.zeros(n * n)?;
    let mut best = 0.0f64;
    for _ in 0..6 {
        backend.synchronize();
        let started = Instant::now();
        match precision {
            Precision::F32 => backend.matmul_forward(&mut out, &a, &w, n, n),
            Precision::Bf16 => backend.matmul_forward_half(&mut out, &a, &w_half, n, n),
        }
        backend.synchronize();
        let secs = started.elapsed().as_secs_f64();
        best = best.max(2.0 * (n * n * n) as f64 / secs / 1e9);
    }
    Ok(best)
}

/// [`matmul_peak_gflops`] of the CPU backend.
pub fn measure_matmul_peak_gflops() -> Result<f64, EngineError> {
    matmul_peak_gflops(&Cpu::<f32>::new(), 1024, Precision::F32)
}
