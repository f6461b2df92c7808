//! `tinyllm bench generate`: the speed of KV-cache generation, batch 1, from BOS: tokens per
//! second over the new tokens (median of runs), time to the first token, peak memory.

use std::fmt;
use std::time::Instant;

use serde::Serialize;

use super::{BenchError, median, peak_rss_bytes};
use crate::engine::{Backend, Device, DeviceInfo, Precision, Rng};
use crate::generate::folder::ModelFolder;
use crate::generate::sampler::{Sampling, sample};
use crate::model::{Llama, LlamaConfig, ModelJob, Preset, Shape, run_model};
use crate::tokenizer::BOS;

/// What to measure: a random model of some dimensions, or a trained one.
pub struct GenerateBench {
    pub new_tokens: usize,
    pub runs: usize,
    /// The matmuls' precision.
    pub precision: Precision,
}

#[derive(Debug, Clone, Serialize)]
pub struct GenerateFigures {
    pub model: String,
    /// `cpu`, or the GPU's name.
    pub device: String,
    pub params: usize,
    pub threads: usize,
    pub precision: Precision,
    pub new_tokens: usize,
    pub runs: usize,
    /// Tokens per second of each run.
    pub tokens_per_sec_runs: Vec<f64>,
    pub median_tokens_per_sec: f64,
    pub median_first_token_ms: f64,
    pub peak_rss_mb: Option<f64>,
}

/// The figures as `bench generate` prints them without `--json`.
impl fmt::Display for GenerateFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let runs: Vec<String> = self
            .tokens_per_sec_runs
            .iter()
            .map(|t| format!("{t:.0}"))
            .collect();
        writeln!(
            f,
            "model {} ({:.2} M params), batch 1, {} new tokens, {}, {} threads, {}, {} runs",
            self.model,
            self.params as f64 / 1e6,
            self.new_tokens,
            self.device,
            self.threads,
            self.precision,
            self.runs
        )?;
        write!(
            f,
            "  {:.0} tokens/s (median; runs: {}), first token in {:.1} ms, peak RSS {}",
            self.median_tokens_per_sec,
            runs.join(", "),
            self.median_first_token_ms,
            self.peak_rss_mb
                .map_or("unknown".to_string(), |mb| format!("{mb:.0} MB"))
        )
    }
}

/// Which model to generate with.
pub enum Source<'a> {
    /// A preset's shape with llama2.c's random initialisation (speed does not depend on the
    /// weights).
    Preset(Preset),
    /// A trained model folder, named by its path.
    Folder(&'a ModelFolder, String),
}

/// Loads the model on `device` and measures it.
pub fn run(
    source: Source<'_>,
    device: Device,
    bench: &GenerateBench,
) -> Result<GenerateFigures, BenchError> {
    let dims = match &source {
        Source::Preset(preset) => preset.dims(),
        Source::Folder(folder, _) => folder.dims(),
    };
    run_model(device, dims, Measure { source, bench })
}

struct Measure<'a> {
    source: Source<'a>,
    bench: &'a GenerateBench,
}

impl ModelJob for Measure<'_> {
    type Output = Result<GenerateFigures, BenchError>;
    fn run<S: Shape, B: Backend<Float = f32>>(
        self,
        shape: S,
        backend: B,
        device: &DeviceInfo,
    ) -> Self::Output {
        let device = device.name.clone();
        match self.source {
            Source::Preset(preset) => {
                let mut model = Llama::new(backend, shape, LlamaConfig::default(), 1337)?;
                model.set_precision(self.bench.precision)?;
                measure(&model, preset.name().to_string(), device, self.bench)
            }
            Source::Folder(folder, name) => {
                let mut model = folder.load(shape, backend)?;
                model.set_precision(self.bench.precision)?;
                measure(&model, name, device, self.bench)
            }
        }
    }
}

/// Times `bench.runs` generations of `bench.new_tokens` tokens (every token sampled at
/// temperature 1, none taken as a stop) with `model`.
fn measure<S: Shape, B: Backend<Float = f32>>(
    model: &Llama<S, B>,
    name: String,
    device: String,
    bench: &GenerateBench,
) -> Result<GenerateFigures, BenchError> {
    let sampling = Sampling {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
    };
    let new_tokens = bench.new_tokens;
    let mut decoder = model.decoder(new_tokens)?;
    let mut speeds = Vec::new();
    let mut first = Vec::new();
    for run in 0..bench.runs {
        let mut rng = Rng::new(run as u64);
        decoder.reset();
        let started = Instant::now();
        let mut token = BOS;
        for i in 0..new_tokens {
            let logits = model.decode_step(&mut decoder, token)?;
            token = sample(&logits, &sampling, &mut rng);
            if i == 0 {
                first.push(started.elapsed().as_secs_f64() * 1e3);
            }
        }
        speeds.push(new_tokens as f64 / started.elapsed().as_secs_f64());
    }
    let median_tokens_per_sec = median(&mut speeds.clone());
    Ok(GenerateFigures {
        model: name,
        device,
        params: model.num_params(),
        threads: rayon::current_num_threads(),
        precision: model.precision(),
        new_tokens,
        runs: bench.runs,
        tokens_per_sec_runs: speeds,
        median_tokens_per_sec,
        median_first_token_ms: median(&mut first),
        peak_rss_mb: peak_rss_bytes().map(|b| b as f64 / 1e6),
    })
}
