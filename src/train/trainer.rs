//! The training loop, one readable page: for each optimizer step, `grad_accum_steps`
//! micro-batches of forward and backward, global-norm clipping, one AdamW step at the scheduled
//! learning rate; a log line every `log_interval` steps, a validation pass every
//! `eval_interval`, a checkpoint every `checkpoint_interval` (and whenever validation improves),
//! and a continuation from the newest good checkpoint when a killed run is started again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::checkpoint::{
    BestEval, CONFIG_FILE, Checkpoint, CheckpointError, Checkpoints, METRICS_FILE, MODEL_FILE,
    OPTIMIZER_FILE, STATE_FILE, TrainingState,
};
use super::eval::{EvalResult, EvalSet};
use super::metrics::{MetricRecord, MetricsLog, read_jsonl};
use super::schedule::LrSchedule;
use crate::data::loader::{Loader, LoaderError};
use crate::engine::{AdamWOptimizer, Backend, Cpu};
use crate::fsutil;
use crate::model::hf_config::{HfConfig, HfConfigError};
use crate::model::safetensors::{self, SafetensorsError};
use crate::model::{Llama, LlamaConfig, ModelError, Shape};
use crate::pipeline::spec::Device;
use crate::pipeline::spec::TrainConfig;

/// Everything a training run reads.
pub struct TrainJob {
    pub config: TrainConfig,
    pub llama: LlamaConfig,
    pub train_shards: Vec<PathBuf>,
    pub eval: EvalSet,
    /// Where checkpoints live between (possibly killed) processes.
    pub checkpoints_dir: PathBuf,
    /// A `metrics.jsonl` to append to as training goes.
    pub live_metrics: Option<PathBuf>,
    pub quiet: bool,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub steps: u64,
    pub tokens_seen: u64,
    pub elapsed_secs: f64,
    pub params: usize,
    pub final_eval: EvalResult,
    pub best: BestEval,
    pub records: Vec<MetricRecord>,
    /// The step this process continued from, when it resumed a checkpoint.
    pub resumed_from: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Safetensors(#[from] SafetensorsError),
    #[error(transparent)]
    Config(#[from] HfConfigError),
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    BadCheckpoint { path: PathBuf, reason: String },
    #[error(
        "the loss became {value} at step {step} (lr {lr:.3e}); training stopped. {last_good}. Lower train.lr or raise train.warmup_iters"
    )]
    Diverged {
        step: u64,
        value: String,
        lr: f64,
        last_good: String,
    },
    #[cfg(feature = "cuda")]
    #[error(transparent)]
    Cuda(crate::engine::cuda::CudaError),
    #[error(
        "train.device asks for CUDA, but this tinyllm was built without it: rebuild with `cargo build --release --features cuda`, or set train.device = \"cpu\""
    )]
    NoCudaBuild,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The model and optimizer of one run, on the backend `B`.
struct Run<S: Shape, B: Backend<Float = f32>> {
    model: Llama<S, B>,
    optimizer: AdamWOptimizer<B>,
}

impl<S: Shape, B: Backend<Float = f32>> Run<S, B> {
    /// Zeroes the gradients and sums those of `accum` micro-batches into them, each scaled so
    /// the sum is the gradient of the mean loss over all their tokens. Returns that mean loss
    /// (stopping early once it is not finite).
    fn accumulate_gradients(
        &mut self,
        loader: &mut Loader,
        batch: usize,
        seq: usize,
        accum: usize,
        inputs: &mut Vec<u32>,
        targets: &mut Vec<u32>,
    ) -> Result<f64, ModelError> {
        let grad_scale = 1.0 / (batch * seq * accum) as f64;
        self.model.zero_grad();
        let mut loss = 0.0;
        for _ in 0..accum {
            loader.next_batch(batch, inputs, targets);
            let micro = self
                .model
                .forward(inputs, Some(targets), batch, seq, grad_scale)?
                .expect("a forward pass with targets returns its loss");
            loss += micro / accum as f64;
            if !micro.is_finite() {
                break;
            }
            self.model.backward();
        }
        Ok(loss)
    }
}

/// A fresh state, or the newest good checkpoint loaded into `run` and `loader` (reporting the
/// damaged ones it skipped). Returns the state, the log so far and the checkpoint used.
fn start_or_resume<S: Shape, B: Backend<Float = f32>>(
    run: &mut Run<S, B>,
    loader: &mut Loader,
    checkpoints: &Checkpoints,
) -> Result<(TrainingState, Vec<MetricRecord>, Option<Checkpoint>), TrainError> {
    let threads = rayon::current_num_threads();
    let found = checkpoints.latest()?;
    for line in &found.damaged {
        eprintln!("  warning: {line}");
    }
    let Some(checkpoint) = found.latest else {
        if !found.damaged.is_empty() {
            eprintln!("  no good checkpoint is left; training starts from step 0");
        }
        let state = TrainingState {
            step: 0,
            loader: loader.state(),
            tokens_seen: 0,
            elapsed_secs: 0.0,
            best: None,
            loss_since_log: (0.0, 0),
            threads,
        };
        return Ok((state, Vec::new(), None));
    };
    let (mut state, records) = restore(run, &checkpoint)?;
    loader.restore(state.loader);
    eprintln!(
        "  resuming from step {} ({})",
        state.step,
        checkpoint.dir.display()
    );
    if state.threads != threads {
        eprintln!(
            "  warning: the checkpoint was written with {} threads and this process has {threads}; \
             the result will differ in the last bits from an uninterrupted run",
            state.threads
        );
        state.threads = threads;
    }
    Ok((state, records, Some(checkpoint)))
}

/// Trains a model of shape `shape` as `job` says, continuing from the newest good checkpoint if
/// there is one, and writes the final weights and `config.json` into `out_dir`.
pub fn train<S: Shape>(
    shape: S,
    job: &TrainJob,
    out_dir: &Path,
) -> Result<TrainOutcome, TrainError> {
    match job.config.device {
        Device::Cpu => train_on(Cpu::<f32>::new(), shape, job, out_dir),
        #[cfg(feature = "cuda")]
        Device::Cuda(ordinal) => {
            let backend = crate::engine::Cuda::new(ordinal).map_err(TrainError::Cuda)?;
            train_on(backend, shape, job, out_dir)
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(TrainError::NoCudaBuild),
    }
}

fn train_on<S: Shape, B: Backend<Float = f32>>(
    backend: B,
    shape: S,
    job: &TrainJob,
    out_dir: &Path,
) -> Result<TrainOutcome, TrainError> {
    let cfg = &job.config;
    let mut model = Llama::new(backend, shape, job.llama, cfg.seed)?;
    let optimizer = model.optimizer(cfg.beta1, cfg.beta2, cfg.weight_decay)?;
    // Before any batch is read: a batch too large for memory is an error now, not an abort.
    model.allocate_activations(cfg.batch_size, cfg.seq_len)?;
    let mut run = Run { model, optimizer };
    let mut loader = Loader::open(&job.train_shards, cfg.seq_len, cfg.seed, 0, 1)?;
    let checkpoints = Checkpoints::new(&job.checkpoints_dir);

    let (mut state, records, resumed) = start_or_resume(&mut run, &mut loader, &checkpoints)?;
    let resumed_from = resumed.as_ref().map(|c| c.step);
    let live_path = job.live_metrics.clone().unwrap_or_default();
    let mut log =
        MetricsLog::start(records, job.live_metrics.as_deref()).map_err(io_err(&live_path))?;
    let mut last_good = resumed;

    let schedule = LrSchedule {
        peak: cfg.lr,
        min: cfg.min_lr,
        warmup: cfg.warmup_iters,
        total: cfg.max_iters,
    };
    let (batch, seq, accum) = (cfg.batch_size, cfg.seq_len, cfg.grad_accum_steps);
    let tokens_per_step = (batch * seq * accum) as u64;
    let bar = progress_bar(cfg.max_iters as u64, state.step, job.quiet);
    let started = Instant::now();
    let elapsed_before = state.elapsed_secs;
    let mut interval_start = (Instant::now(), state.tokens_seen);
    let (mut inputs, mut targets) = (Vec::new(), Vec::new());

    for step in state.step + 1..=cfg.max_iters as u64 {
        let lr = schedule.at(step as usize - 1);
        let loss =
            run.accumulate_gradients(&mut loader, batch, seq, accum, &mut inputs, &mut targets)?;
        let grad_norm = run.model.clip_grad_norm(cfg.grad_clip);
        if !loss.is_finite() || !grad_norm.is_finite() {
            bar.finish_and_clear();
            let value = if loss.is_finite() { grad_norm } else { loss };
            return Err(TrainError::Diverged {
                step,
                value: format!("{value}"),
                lr,
                last_good: match &last_good {
                    Some(c) => format!(
                        "The last good checkpoint is step {} in {}",
                        c.step,
                        c.dir.display()
                    ),
                    None => "No checkpoint was written before it".to_string(),
                },
            });
        }
        run.model.optimizer_step(&mut run.optimizer, lr);

        state.step = step;
        state.loader = loader.state();
        state.tokens_seen += tokens_per_step;
        state.elapsed_secs = elapsed_before + started.elapsed().as_secs_f64();
        state.loss_since_log.0 += loss;
        state.loss_since_log.1 += 1;
        let last = step == cfg.max_iters as u64;
        let secs = interval_start.0.elapsed().as_secs_f64();
        let tokens_per_sec = (state.tokens_seen - interval_start.1) as f64 / secs.max(1e-9);
        bar.set_position(step);
        bar.set_message(format!(
            "loss {loss:.3}  lr {lr:.2e}  {tokens_per_sec:.0} tok/s"
        ));
        if step.is_multiple_of(cfg.log_interval as u64) || last {
            let (sum, count) = state.loss_since_log;
            log.push(MetricRecord::Train {
                step,
                loss: sum / count as f64,
                lr,
                grad_norm,
                tokens: state.tokens_seen,
                tokens_per_sec,
                elapsed_secs: state.elapsed_secs,
            })
            .map_err(io_err(&live_path))?;
            state.loss_since_log = (0.0, 0);
            interval_start = (Instant::now(), state.tokens_seen);
        }

        let mut improved = false;
        if step.is_multiple_of(cfg.eval_interval as u64) || last {
            let result = job.eval.evaluate(&mut run.model, batch)?;
            improved = state.best.is_none_or(|b| result.loss < b.val_loss);
            if improved {
                state.best = Some(BestEval {
                    step,
                    val_loss: result.loss,
                    val_bpb: result.bits_per_byte,
                });
            }
            log.push(MetricRecord::Eval {
                step,
                tokens: state.tokens_seen,
                val_loss: result.loss,
                val_bpb: result.bits_per_byte,
            })
            .map_err(io_err(&live_path))?;
            bar.suspend(|| {
                eprintln!(
                    "  step {step}: validation loss {:.4} nats/token, {:.4} bits/byte{}",
                    result.loss,
                    result.bits_per_byte,
                    if improved { " (best so far)" } else { "" }
                )
            });
            // Throughput figures count training only.
            interval_start = (Instant::now(), state.tokens_seen);
        }
        if step.is_multiple_of(cfg.checkpoint_interval as u64) || last || improved {
            let checkpoint = save_checkpoint(&run, &checkpoints, &state, &log)?;
            checkpoints.prune(cfg.keep_checkpoints, state.best.map(|b| b.step))?;
            last_good = Some(checkpoint);
        }
    }
    bar.finish_and_clear();

    let final_step = state.step;
    let final_eval = log
        .records
        .iter()
        .rev()
        .find_map(|r| match r {
            MetricRecord::Eval {
                step,
                tokens,
                val_loss,
                val_bpb,
            } if *step == final_step => Some(EvalResult {
                loss: *val_loss,
                bits_per_byte: *val_bpb,
                tokens: *tokens,
            }),
            _ => None,
        })
        .ok_or_else(|| TrainError::BadCheckpoint {
            path: job.checkpoints_dir.clone(),
            reason: format!("the metrics of step {final_step} have no validation pass"),
        })?;
    let best = state.best.expect("the last step is always evaluated");
    write_model(&run.model, out_dir)?;
    if best.step != final_step {
        let from = checkpoints.dir_of(best.step).join(MODEL_FILE);
        let to = out_dir.join("best.safetensors");
        std::fs::copy(&from, &to).map_err(io_err(&from))?;
    }
    Ok(TrainOutcome {
        steps: final_step,
        tokens_seen: state.tokens_seen,
        elapsed_secs: state.elapsed_secs,
        params: run.model.num_params(),
        final_eval,
        best,
        records: log.records,
        resumed_from,
    })
}

fn progress_bar(total: u64, position: u64, quiet: bool) -> ProgressBar {
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("  train [{bar:25}] {pos}/{len} {msg}  eta {eta}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    if quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_position(position);
    bar
}

/// Writes the weights with Hugging Face names and their `config.json`.
fn write_model<S: Shape, B: Backend<Float = f32>>(
    model: &Llama<S, B>,
    dir: &Path,
) -> Result<(), TrainError> {
    // transformers refuses safetensors files without this metadata.
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    model.save_safetensors(&dir.join(MODEL_FILE), &metadata)?;
    HfConfig::new(model.dims(), model.config()).save(&dir.join(CONFIG_FILE))?;
    Ok(())
}

fn save_checkpoint<S: Shape, B: Backend<Float = f32>>(
    run: &Run<S, B>,
    checkpoints: &Checkpoints,
    state: &TrainingState,
    log: &MetricsLog,
) -> Result<Checkpoint, TrainError> {
    let staging = checkpoints.begin(state.step)?;
    write_model(&run.model, &staging.dir)?;
    let moments = run
        .optimizer
        .state_tensors(run.model.backend())
        .map_err(ModelError::from)?;
    safetensors::save(
        &staging.dir.join(OPTIMIZER_FILE),
        &AdamWOptimizer::<B>::state_layout(run.model.layout()),
        &moments,
        &BTreeMap::new(),
    )?;
    let state_path = staging.dir.join(STATE_FILE);
    let text = serde_json::to_vec_pretty(state).expect("the state serializes");
    fsutil::write_atomic(&state_path, &text).map_err(io_err(&state_path))?;
    let metrics_path = staging.dir.join(METRICS_FILE);
    fsutil::write_atomic(&metrics_path, log.jsonl().as_bytes()).map_err(io_err(&metrics_path))?;
    Ok(checkpoints.commit(staging)?)
}

/// Loads a verified checkpoint into `run`.
fn restore<S: Shape, B: Backend<Float = f32>>(
    run: &mut Run<S, B>,
    checkpoint: &Checkpoint,
) -> Result<(TrainingState, Vec<MetricRecord>), TrainError> {
    let dir = &checkpoint.dir;
    let params = safetensors::load(&dir.join(MODEL_FILE), run.model.layout())?;
    let moment_layout = AdamWOptimizer::<B>::state_layout(run.model.layout());
    let moments = safetensors::load(&dir.join(OPTIMIZER_FILE), &moment_layout)?;
    run.model.load_params(&params)?;
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read(&state_path).map_err(io_err(&state_path))?;
    let state: TrainingState =
        serde_json::from_slice(&text).map_err(|e| TrainError::BadCheckpoint {
            path: state_path.clone(),
            reason: e.to_string(),
        })?;
    run.optimizer
        .load_state(run.model.backend(), state.step, &moments)
        .map_err(ModelError::from)?;
    let metrics_path = dir.join(METRICS_FILE);
    let records = read_jsonl(&metrics_path).map_err(io_err(&metrics_path))?;
    Ok((state, records))
}
