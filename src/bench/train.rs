//! `tinyllm bench train`: the speed of the training step users run ([`Stepper::step`]: the
//! loader, `grad_accum_steps` micro-batches of forward and backward, clipping, AdamW) on random
//! tokens, and, for a pipeline's settings, what a whole run spends outside the steps
//! (validation passes, checkpoints, the metrics log).

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::{BenchError, matmul_peak_gflops, median, peak_rss_bytes};
use crate::data::loader::{Loader, Share};
use crate::engine::profile::Profiled;
use crate::engine::{
    Backend, Device, DeviceInfo, OptimizerKind, OptimizerSettings, Precision, Rng, matmul_kernel,
};

use crate::fsutil;
use crate::model::{Llama, LlamaConfig, ModelDims, ModelJob, Preset, Shape, run_model};
use crate::train::checkpoint::{Checkpoints, TrainingState};
use crate::train::eval::EvalSet;
use crate::train::metrics::{MetricRecord, MetricsLog};
use crate::train::save_checkpoint;
use crate::train::step::{Batches, StepConfig, Stepper};

/// What to measure.
#[derive(Debug, Clone)]
pub struct TrainBench {
    pub dims: ModelDims,
    /// When the dimensions are a preset's, its compile-time type is used.
    pub preset: Option<Preset>,
    pub step: StepConfig,
    pub warmup_steps: usize,
    pub steps: usize,
    pub device: Device,
    /// The precision of the matmuls, resolved.
    pub precision: Precision,
    /// The optimizer a step runs (a spec's, with `--spec`).
    pub optimizer: OptimizerSettings,
    /// A pipeline's run, to estimate where its time goes.
    pub run: Option<RunPlan>,
    /// Time each backend op of the timed steps too.
    pub ops: bool,
}

/// The parts of a pipeline's train settings that decide what a run does besides its steps.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPlan {
    /// The pipeline's name, for the printout.
    pub pipeline: String,
    pub max_iters: usize,
    pub eval_interval: usize,
    /// Windows of `seq + 1` tokens in one validation pass.
    pub val_windows: usize,
    pub checkpoint_interval: usize,
    pub log_interval: usize,
    /// `train.max_time` in seconds: the run ends with the first step past it.
    pub max_time: Option<f64>,
}

impl RunPlan {
    /// The same run, ending after `steps` steps.
    fn ending_at(&self, steps: usize) -> RunPlan {
        RunPlan {
            max_iters: steps,
            max_time: None,
            ..self.clone()
        }
    }

    /// The run as the trainer would take it: under a time budget, the steps until the first
    /// one that ends past the budget (or `max_iters`), given `seconds(plan)` (the wall time a
    /// plan's steps, validation passes and checkpoints take inside the budget).
    pub fn within_budget(&self, seconds: impl Fn(&RunPlan) -> f64) -> RunPlan {
        let Some(budget) = self.max_time else {
            return self.clone();
        };
        if seconds(self) < budget {
            return self.clone();
        }
        // The first step count whose run reaches the budget (the time grows with the steps).
        let (mut below, mut reaches) = (0, self.max_iters);
        while reaches - below > 1 {
            let mid = below + (reaches - below) / 2;
            if seconds(&self.ending_at(mid)) >= budget {
                reaches = mid;
            } else {
                below = mid;
            }
        }
        self.ending_at(reaches)
    }

    /// Validation passes: every `eval_interval` steps and after the last.
    pub fn evaluations(&self) -> usize {
        every_and_last(self.max_iters, self.eval_interval)
    }

    /// Checkpoints, at most: every `checkpoint_interval` steps, after the last, and after every
    /// validation pass that improves (counted as if each did).
    pub fn checkpoints(&self) -> usize {
        let (n, c, e) = (self.max_iters, self.checkpoint_interval, self.eval_interval);
        let both = c
            .checked_div(gcd(c, e))
            .and_then(|c| c.checked_mul(e))
            .map_or(0, |lcm| n / lcm);
        let last = usize::from(!n.is_multiple_of(c) && !n.is_multiple_of(e));
        n / c + n / e - both + last
    }

    /// Lines of the metrics log (train lines; validation lines ride along with the passes).
    pub fn log_lines(&self) -> usize {
        every_and_last(self.max_iters, self.log_interval)
    }
}

/// Steps among `1..=steps` that are multiples of `interval`, or the last.
fn every_and_last(steps: usize, interval: usize) -> usize {
    steps / interval + usize::from(!steps.is_multiple_of(interval))
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The figures `bench train` prints.
#[derive(Debug, Clone, Serialize)]
pub struct TrainFigures {
    pub model: String,
    /// `cpu`, or the GPU's name.
    pub device: String,
    /// `f32` or `bf16`.
    pub precision: Precision,
    /// The matmul kernel that precision runs on this device.
    pub matmul_kernel: String,
    pub optimizer: OptimizerKind,
    pub params: usize,
    pub batch: usize,
    pub seq: usize,
    pub grad_accum_steps: usize,
    pub threads: usize,
    /// Ranks of the data-parallel job stepping together (1: this process alone); tokens/s
    /// counts all of theirs.
    pub ranks: usize,
    /// With several ranks: the median time a step spent in its gradient all-reduce (waiting
    /// for the slowest rank included), and one all-reduce of the gradients on its own, after
    /// a barrier (the transport alone).
    pub all_reduce_in_step_ms: Option<f64>,
    pub all_reduce_alone_ms: Option<f64>,
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
    /// Where a run of the pipeline would spend its time, when one was given.
    pub run: Option<RunFigures>,
    /// Where a step's time goes, op by op, when asked for.
    pub ops: Option<OpsTable>,
}

/// The timed steps' time per backend op, largest first, then `other` (the step outside backend
/// ops: the loader, the host side of the model).
#[derive(Debug, Clone, Serialize)]
pub struct OpsTable {
    /// The mean step over the timed steps (the rows' denominator; the median is above).
    pub mean_ms_per_step: f64,
    pub rows: Vec<OpRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OpRow {
    pub op: String,
    pub calls_per_step: f64,
    pub ms_per_step: f64,
    /// Fraction of the mean step.
    pub share: f64,
}

impl OpsTable {
    /// The table of `steps` steps that took `total` in all, from the ops' totals over them.
    fn new(
        totals: &std::collections::BTreeMap<&'static str, crate::engine::profile::OpTotal>,
        steps: usize,
        total: std::time::Duration,
    ) -> OpsTable {
        let steps_f = steps.max(1) as f64;
        let step_ms = total.as_secs_f64() * 1e3 / steps_f;
        let mut rows: Vec<OpRow> = totals
            .iter()
            .map(|(op, t)| OpRow {
                op: op.to_string(),
                calls_per_step: t.calls as f64 / steps_f,
                ms_per_step: t.time.as_secs_f64() * 1e3 / steps_f,
                share: 0.0,
            })
            .collect();
        rows.sort_by(|a, b| b.ms_per_step.total_cmp(&a.ms_per_step));
        let in_ops: f64 = rows.iter().map(|r| r.ms_per_step).sum();
        rows.push(OpRow {
            op: "other".into(),
            calls_per_step: 0.0,
            ms_per_step: (step_ms - in_ops).max(0.0),
            share: 0.0,
        });
        for row in &mut rows {
            row.share = row.ms_per_step / step_ms.max(1e-12);
        }
        OpsTable {
            mean_ms_per_step: step_ms,
            rows,
        }
    }
}

impl std::fmt::Display for OpsTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "per op (mean step {:.1} ms):\n  {:<22} {:>9} {:>10} {:>7}",
            self.mean_ms_per_step, "op", "calls/step", "ms/step", "share"
        )?;
        for row in &self.rows {
            write!(
                f,
                "\n  {:<22} {:>9.0} {:>10.2} {:>6.1}%",
                row.op,
                row.calls_per_step,
                row.ms_per_step,
                100.0 * row.share
            )?;
        }
        Ok(())
    }
}

/// A run of a pipeline, estimated from measured parts: steps × the median step, validation
/// passes × one measured pass, checkpoints × one measured checkpoint (written and pruned as the
/// trainer does), log lines × one measured line.
#[derive(Debug, Clone, Serialize)]
pub struct RunFigures {
    pub pipeline: String,
    pub steps: usize,
    /// The run's time budget (seconds), when it has one: `steps` is what fits in it.
    pub max_time: Option<f64>,
    pub step_secs: f64,
    pub evaluations: usize,
    pub validation_pass_secs: f64,
    pub validation_windows: usize,
    pub checkpoints: usize,
    pub checkpoint_secs: f64,
    pub log_lines: usize,
    pub log_line_secs: f64,
}

impl RunFigures {
    /// Seconds of each part: steps, validation, checkpoints, metrics.
    pub fn parts(&self) -> [(&'static str, f64); 4] {
        [
            ("steps", self.steps as f64 * self.step_secs),
            (
                "validation",
                self.evaluations as f64 * self.validation_pass_secs,
            ),
            (
                "checkpoints",
                self.checkpoints as f64 * self.checkpoint_secs,
            ),
            ("metrics log", self.log_lines as f64 * self.log_line_secs),
        ]
    }

    pub fn total_secs(&self) -> f64 {
        self.parts().iter().map(|(_, secs)| secs).sum()
    }
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
    run_model(bench.device, bench.dims, Measure(bench))
}

struct Measure<'a>(&'a TrainBench);

impl ModelJob for Measure<'_> {
    type Output = Result<TrainFigures, BenchError>;
    fn run<S: Shape, B: Backend<Float = f32>>(
        self,
        shape: S,
        backend: B,
        device: &DeviceInfo,
    ) -> Self::Output {
        measure(backend, device, shape, self.0)
    }
}

/// A scratch folder for the benchmark's token shards and checkpoints, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch, BenchError> {
        let dir = std::env::temp_dir().join(format!("tinyllm-bench-{}", fsutil::unique_suffix()));
        std::fs::create_dir_all(&dir).map_err(|e| BenchError::Scratch {
            path: dir.clone(),
            source: e,
        })?;
        Ok(Scratch(dir))
    }

    /// A shard of `tokens` random token ids below `vocab`, in the pretokenize stage's format.
    fn random_shard(
        &self,
        name: &str,
        tokens: usize,
        vocab: usize,
        seed: u64,
    ) -> Result<PathBuf, BenchError> {
        let mut rng = Rng::new(seed);
        let bytes: Vec<u8> = (0..tokens)
            .flat_map(|_| (rng.below(vocab as u64) as u16).to_le_bytes())
            .collect();
        let path = self.0.join(name);
        std::fs::write(&path, bytes).map_err(|e| BenchError::Scratch {
            path: path.clone(),
            source: e,
        })?;
        Ok(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Random-token shards longer than this repeat (the loader wraps into a new epoch), which keeps
/// a long benchmark's scratch file small.
const MAX_SHARD_TOKENS: usize = 1 << 22;

fn measure<S: Shape, B: Backend<Float = f32>>(
    backend: B,
    device: &DeviceInfo,
    shape: S,
    bench: &TrainBench,
) -> Result<TrainFigures, BenchError> {
    let dims = shape.dims();
    let step = StepConfig {
        seq: bench.step.seq.min(dims.max_seq_len),
        ..bench.step
    };
    // A GPU needs larger products than the CPU to reach its peak.
    let peak_size = if device.is_gpu() { 4096 } else { 1024 };
    let peak = matmul_peak_gflops(&backend, peak_size, bench.precision)?;
    let scratch = Scratch::new()?;
    let micro_batches = (bench.warmup_steps + bench.steps) * step.accum;
    let train_tokens = (micro_batches * step.batch * step.seq + 1).min(MAX_SHARD_TOKENS);
    let shard = scratch.random_shard(
        "train.bin",
        train_tokens.max(step.seq + 1),
        dims.vocab_size,
        1,
    )?;
    // Under mpirun the ranks step together, each on its share of the data, as training does.
    let world = crate::collective::world();
    let share = Share {
        rank: world.rank(),
        world: world.size(),
        chunk: step.batch * step.accum,
    };
    let mut loader = Loader::open(&[shard], step.seq, 1337, share)?;
    let mut model = Llama::new(Profiled::new(backend), shape, LlamaConfig::default(), 1337)?;
    model.set_precision(bench.precision)?;
    let optimizer = model.optimizer(bench.optimizer)?;
    // Before any batch is made: a batch too large for memory is an error, not an abort.
    model.allocate_activations(step.batch, step.seq)?;
    let mut stepper = Stepper::new(model, optimizer, step).with_world(world);
    let TimedSteps {
        mut times,
        mut reduce_times,
        ops,
    } = time_steps(
        &mut stepper,
        &mut loader,
        bench.warmup_steps,
        bench.steps,
        bench.ops,
    )?;
    let secs = median(&mut times);
    let (all_reduce_in_step_ms, all_reduce_alone_ms) = if world.size() > 1 {
        let in_step = median(&mut reduce_times);
        let alone = time_all_reduce(&stepper, world, bench.steps.max(5))?;
        (Some(in_step * 1e3), Some(alone * 1e3))
    } else {
        (None, None)
    };
    let run = match &bench.run {
        Some(plan) => Some(measure_run(&mut stepper, &loader, &scratch, plan, secs)?),
        None => None,
    };
    let tokens = step.tokens() * world.size();
    let flops = train_step_flops(&dims, step.batch, step.seq) * (step.accum * world.size()) as f64;
    let achieved = flops / secs / 1e9;
    // Each rank measured its own cores' peak; the job's is theirs together.
    let peak = peak * world.size() as f64;
    Ok(TrainFigures {
        device: device.name.clone(),
        precision: bench.precision,
        matmul_kernel: matmul_kernel(device.device, bench.precision).to_string(),
        optimizer: bench.optimizer.kind,
        model: bench
            .preset
            .map_or_else(|| format!("{dims:?}"), |p| p.name().to_string()),
        params: stepper.model.num_params(),
        batch: step.batch,
        seq: step.seq,
        grad_accum_steps: step.accum,
        threads: rayon::current_num_threads(),
        ranks: world.size(),
        all_reduce_in_step_ms,
        all_reduce_alone_ms,
        steps: bench.steps,
        median_ms_per_step: secs * 1e3,
        tokens_per_sec: tokens as f64 / secs,
        gflops_per_step: flops / 1e9,
        achieved_gflops: achieved,
        matmul_peak_gflops: peak,
        fraction_of_peak: achieved / peak,
        mfu_bf16: device.bf16_peak_gflops.map(|p| achieved / p),
        bf16_peak_gflops: device.bf16_peak_gflops,
        peak_rss_mb: peak_rss_bytes().map(|b| b as f64 / 1e6),
        run,
        ops,
    })
}

/// The median of `times` all-reduces of a buffer the size of the gradients, each after a
/// barrier: what the transport costs once the ranks are in step.
fn time_all_reduce<S: Shape, B: Backend<Float = f32>>(
    stepper: &Stepper<S, B>,
    world: &dyn crate::collective::Collective,
    times: usize,
) -> Result<f64, BenchError> {
    let backend = stepper.model.backend();
    let mut buffer = stepper.model.flat_gradient_buffer()?;
    let mut secs = Vec::with_capacity(times);
    for _ in 0..times {
        world.barrier();
        backend.synchronize();
        let started = Instant::now();
        backend
            .all_reduce_sum(&mut buffer, world)
            .map_err(crate::model::ModelError::from)?;
        backend.synchronize();
        secs.push(started.elapsed().as_secs_f64());
    }
    Ok(median(&mut secs))
}

/// What [`time_steps`] measured.
struct TimedSteps {
    /// Seconds of each timed step.
    times: Vec<f64>,
    /// Seconds of each timed step's gradient all-reduce.
    reduce_times: Vec<f64>,
    ops: Option<OpsTable>,
}

/// Runs `warmup` untimed steps, then `steps` timed ones (seconds each, and the seconds of each
/// one's all-reduce), with their per-op table when `ops` is set.
fn time_steps<S: Shape, B: Backend>(
    stepper: &mut Stepper<S, Profiled<B>>,
    data: &mut impl Batches,
    warmup: usize,
    steps: usize,
    ops: bool,
) -> Result<TimedSteps, BenchError> {
    let mut times = Vec::with_capacity(steps);
    let mut reduce_times = Vec::with_capacity(steps);
    let mut total = std::time::Duration::ZERO;
    for i in 0..warmup + steps {
        let timed = i >= warmup;
        stepper.model.backend().record(ops && timed);
        let started = Instant::now();
        let outcome = stepper.step(data, 1e-4)?;
        stepper.model.backend().synchronize();
        let elapsed = started.elapsed();
        if timed {
            times.push(elapsed.as_secs_f64());
            reduce_times.push(outcome.all_reduce_secs);
            total += elapsed;
        }
    }
    let backend = stepper.model.backend();
    backend.record(false);
    let table = ops.then(|| OpsTable::new(&backend.totals(), steps, total));
    Ok(TimedSteps {
        times,
        reduce_times,
        ops: table,
    })
}

/// Times one validation pass, one checkpoint and one metrics line the way the trainer runs
/// them, for `plan`'s counts of each.
fn measure_run<S: Shape, B: Backend<Float = f32>>(
    stepper: &mut Stepper<S, B>,
    loader: &Loader,
    scratch: &Scratch,
    plan: &RunPlan,
    step_secs: f64,
) -> Result<RunFigures, BenchError> {
    let StepConfig { batch, seq, .. } = stepper.config();
    let vocab = stepper.model.dims().vocab_size;
    let val_tokens = plan.val_windows * seq + 1;
    let val_shard = scratch.random_shard("val.bin", val_tokens, vocab, 2)?;
    let eval = EvalSet::open(&[val_shard], seq, 0, 0.25)?;
    let started = Instant::now();
    eval.evaluate(&mut stepper.model, batch, &crate::collective::Single)?;
    let validation_pass_secs = started.elapsed().as_secs_f64();

    let metrics_path = scratch.path().join("metrics.jsonl");
    let mut log =
        MetricsLog::start(Vec::new(), Some(&metrics_path)).map_err(|e| BenchError::Scratch {
            path: metrics_path.clone(),
            source: e,
        })?;
    let started = Instant::now();
    let lines = 20;
    for step in 1..=lines {
        log.push(MetricRecord::Train {
            step,
            loss: 1.0,
            lr: 1e-4,
            grad_norm: 1.0,
            tokens: step * 1000,
            tokens_per_sec: 1000.0,
            elapsed_secs: step as f64,
        })
        .map_err(|e| BenchError::Scratch {
            path: metrics_path.clone(),
            source: e,
        })?;
    }
    let log_line_secs = started.elapsed().as_secs_f64() / lines as f64;

    let checkpoints = Checkpoints::new(&scratch.path().join("checkpoints"));
    let mut times = Vec::new();
    for step in 1..=3u64 {
        let state = TrainingState {
            step,
            loader: loader.state(),
            tokens_seen: 0,
            elapsed_secs: 0.0,
            best: None,
            loss_since_log: (0.0, 0),
            threads: rayon::current_num_threads(),
            world_size: 1,
        };
        let started = Instant::now();
        save_checkpoint(stepper, &checkpoints, &state, &log)?;
        checkpoints.prune(2, None)?;
        times.push(started.elapsed().as_secs_f64());
    }
    let checkpoint_secs = median(&mut times);
    let figures = |plan: &RunPlan| RunFigures {
        pipeline: plan.pipeline.clone(),
        steps: plan.max_iters,
        max_time: None,
        step_secs,
        evaluations: plan.evaluations(),
        validation_pass_secs,
        validation_windows: eval.windows(),
        checkpoints: plan.checkpoints(),
        checkpoint_secs,
        log_lines: plan.log_lines(),
        log_line_secs,
    };
    // The last step's validation pass and checkpoint come after the budget.
    let within =
        plan.within_budget(|p| figures(p).total_secs() - validation_pass_secs - checkpoint_secs);
    Ok(RunFigures {
        max_time: plan.max_time,
        ..figures(&within)
    })
}

/// The figures as `bench train` prints them without `--json`.
impl std::fmt::Display for TrainFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "model {} ({:.2} M params), batch {} × seq {} × {} micro-batches, {}, {} ({} matmuls), {} threads, {} steps",
            self.model,
            self.params as f64 / 1e6,
            self.batch,
            self.seq,
            self.grad_accum_steps,
            self.device,
            self.precision,
            self.matmul_kernel,
            self.threads,
            self.steps
        )?;
        if self.ranks > 1 {
            write!(f, ", {} ranks (each with the batch above)", self.ranks)?;
        }
        if self.optimizer == OptimizerKind::Muon {
            write!(f, ", Muon for the block matrices")?;
        }
        write!(
            f,
            "\n  median step      {:>10.1} ms",
            self.median_ms_per_step
        )?;
        write!(f, "\n  tokens/s         {:>10.0}", self.tokens_per_sec)?;
        if let (Some(in_step), Some(alone)) = (self.all_reduce_in_step_ms, self.all_reduce_alone_ms)
        {
            write!(
                f,
                "\n  all-reduce       {in_step:>10.1} ms per step ({alone:.1} ms on its own, after a barrier)"
            )?;
        }
        write!(
            f,
            "\n  achieved         {:>10.1} GFLOP/s ({:.1} GFLOP/step)",
            self.achieved_gflops, self.gflops_per_step
        )?;
        write!(
            f,
            "\n  matmul peak      {:>10.1} GFLOP/s ({:.0}% of it)",
            self.matmul_peak_gflops,
            100.0 * self.fraction_of_peak
        )?;
        if let (Some(peak), Some(mfu)) = (self.bf16_peak_gflops, self.mfu_bf16) {
            write!(
                f,
                "\n  bf16 peak        {peak:>10.1} GFLOP/s (MFU {:.1}%)",
                100.0 * mfu
            )?;
        }
        if let Some(rss) = self.peak_rss_mb {
            write!(f, "\n  peak RSS         {rss:>10.0} MB")?;
        }
        if let Some(run) = &self.run {
            write!(f, "\n{run}")?;
        }
        if let Some(ops) = &self.ops {
            write!(f, "\n{ops}")?;
        }
        Ok(())
    }
}

/// The estimate of a whole run: its total, then each part's seconds, share and count.
impl std::fmt::Display for RunFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total = self.total_secs();
        let budget = self.max_time.map_or(String::new(), |secs| {
            format!(
                " in its {} budget",
                crate::pipeline::runner::human_secs(secs)
            )
        });
        write!(
            f,
            "a run of {} ({} steps{budget}), estimated: {}",
            self.pipeline,
            self.steps,
            crate::pipeline::runner::human_secs(total)
        )?;
        let counts = [
            format!("{} × {:.1} ms", self.steps, self.step_secs * 1e3),
            format!(
                "{} × {:.2} s ({} windows)",
                self.evaluations, self.validation_pass_secs, self.validation_windows
            ),
            format!("{} × {:.3} s", self.checkpoints, self.checkpoint_secs),
            format!("{} × {:.3} ms", self.log_lines, self.log_line_secs * 1e3),
        ];
        for ((part, secs), count) in self.parts().iter().zip(counts) {
            write!(
                f,
                "\n  {part:<16} {:>9.1} s {:>5.1}%   {count}",
                secs,
                100.0 * secs / total.max(1e-9)
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Cpu;
    use crate::model::RuntimeShape;
    use crate::train::step::FixedBatch;

    #[test]
    fn the_ops_table_covers_the_step() {
        let dims = ModelDims {
            dim: 32,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 2,
            vocab_size: 64,
            multiple_of: 16,
            max_seq_len: 16,
        };
        let step = StepConfig {
            batch: 2,
            seq: 16,
            accum: 2,
            grad_clip: 1.0,
        };
        let backend = Profiled::new(Cpu::<f32>::new());
        let model = Llama::new(
            backend,
            RuntimeShape::new(dims).unwrap(),
            LlamaConfig::default(),
            1,
        )
        .unwrap();
        let settings = OptimizerSettings {
            kind: OptimizerKind::Muon,
            ..OptimizerSettings::adamw(0.9, 0.95, 0.1)
        };
        let optimizer = model.optimizer(settings).unwrap();
        let mut stepper = Stepper::new(model, optimizer, step);
        let tokens: Vec<u32> = (0..32).map(|i| (i * 7 % 64) as u32).collect();
        let mut data = FixedBatch {
            inputs: tokens.clone(),
            targets: tokens.iter().map(|t| (t + 1) % 64).collect(),
        };
        let TimedSteps {
            times, ops: table, ..
        } = time_steps(&mut stepper, &mut data, 1, 3, true).unwrap();
        let table = table.expect("asked for");
        assert_eq!(times.len(), 3);
        let step_ms = times.iter().sum::<f64>() * 1e3 / 3.0;
        assert!((table.mean_ms_per_step - step_ms).abs() < 1e-6);
        let row = |op: &str| table.rows.iter().find(|r| r.op == op);
        // Two micro-batches of two layers: 2 × (2 × 7 + 1) matmuls forward, 2 × 2 attentions.
        assert_eq!(row("matmul_forward").unwrap().calls_per_step, 30.0);
        assert_eq!(row("attention_forward").unwrap().calls_per_step, 4.0);
        assert_eq!(row("attention_backward").unwrap().calls_per_step, 4.0);
        assert!(row("adamw").is_some() && row("cross_entropy").is_some());
        // Muon steps the 7 matrices of each of the 2 layers; AdamW the rest.
        assert_eq!(row("muon").unwrap().calls_per_step, 14.0);
        assert_eq!(table.rows.last().unwrap().op, "other");
        let in_ops: f64 = table.rows[..table.rows.len() - 1]
            .iter()
            .map(|r| r.ms_per_step)
            .sum();
        assert!(
            in_ops <= step_ms,
            "{in_ops} ms of ops in a {step_ms} ms step"
        );
        let shares: f64 = table.rows.iter().map(|r| r.share).sum();
        assert!((shares - 1.0).abs() < 1e-9, "shares sum to {shares}");
        // Untimed steps leave the totals alone.
        let before = stepper.model.backend().totals();
        time_steps(&mut stepper, &mut data, 1, 1, false).unwrap();
        assert_eq!(stepper.model.backend().totals(), before);
    }

    #[test]
    fn a_plan_counts_what_the_trainer_does() {
        // The ten-minute pipeline: 704 steps, one validation pass at the end, a checkpoint
        // every 100 steps and at the end, a log line every 10 steps and at the end.
        let plan = RunPlan {
            pipeline: "p".into(),
            max_iters: 704,
            eval_interval: 704,
            val_windows: 10,
            checkpoint_interval: 100,
            log_interval: 10,
            max_time: None,
        };
        assert_eq!(plan.evaluations(), 1);
        assert_eq!(plan.checkpoints(), 8);
        assert_eq!(plan.log_lines(), 71);
        let every_50 = RunPlan {
            eval_interval: 50,
            ..plan
        };
        assert_eq!(every_50.evaluations(), 15);
        // Steps 50, 100, …, 700 (14) and 704.
        assert_eq!(every_50.checkpoints(), 15);
    }

    #[test]
    fn a_budget_ends_the_plan_at_the_first_step_past_it() {
        let plan = RunPlan {
            pipeline: "p".into(),
            max_iters: 100_000,
            eval_interval: 100,
            val_windows: 10,
            checkpoint_interval: 1000,
            log_interval: 10,
            max_time: Some(60.0),
        };
        // 0.1 s a step and 2 s a validation pass: 500 steps take 50 s + 5 passes, 10 s.
        let seconds = |p: &RunPlan| p.max_iters as f64 * 0.1 + p.evaluations() as f64 * 2.0;
        let within = plan.within_budget(seconds);
        assert_eq!(within.max_iters, 500);
        assert!(seconds(&within) >= 60.0 && seconds(&within.ending_at(499)) < 60.0);
        let short = RunPlan {
            max_iters: 300,
            ..plan.clone()
        };
        assert_eq!(short.within_budget(seconds).max_iters, 300);
        let unbudgeted = RunPlan {
            max_time: None,
            ..plan
        };
        assert_eq!(unbudgeted.within_budget(seconds).max_iters, 100_000);
    }
}
