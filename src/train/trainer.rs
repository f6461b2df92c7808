//! The training loop, one readable page: for each optimizer step, `grad_accum_steps`
//! micro-batches of forward and backward, global-norm clipping, one AdamW step at the scheduled
//! learning rate; a log line every `log_interval` steps, a validation pass every
//! `eval_interval`, a checkpoint every `checkpoint_interval` (and whenever validation improves),
//! and a continuation from the newest good checkpoint when a killed run is started again.
//!
//! In a data-parallel job every rank runs this loop on its share of the data (see
//! [`crate::data::loader`]) and the step sums the ranks' gradients; whatever depends on a clock
//! or on the file system is decided by rank 0 and agreed, so every rank takes the same branch,
//! and rank 0 alone writes checkpoints, metrics and the result.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::checkpoint::{
    self, BestEval, CONFIG_FILE, Checkpoint, CheckpointError, Checkpoints, METRICS_FILE,
    MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, TrainingState,
};
use super::eval::{EvalResult, EvalSet};
use super::metrics::{MetricRecord, MetricsLog, read_jsonl};
use super::schedule::{LrSchedule, TimeBudget, progress};
use super::step::{StepConfig, Stepper};
use crate::collective::Collective;
use crate::data::loader::{Loader, LoaderError, Share};
use crate::engine::{Backend, DeviceInfo, Optimizer, Precision};
use crate::fsutil;
use crate::model::hf_config::{HfConfig, HfConfigError};
use crate::model::safetensors::{self, SafetensorsError};
use crate::model::{
    DispatchError, Llama, LlamaConfig, ModelDims, ModelError, ModelJob, Shape, run_model,
};
use crate::pipeline::spec::TrainConfig;

/// Everything a training run reads.
pub struct TrainJob {
    pub config: TrainConfig,
    /// `config.precision` resolved for the device.
    pub precision: Precision,
    pub dims: ModelDims,
    pub llama: LlamaConfig,
    pub train_shards: Vec<PathBuf>,
    pub eval: EvalSet,
    /// Where checkpoints live between (possibly killed) processes.
    pub checkpoints_dir: PathBuf,
    /// A `metrics.jsonl` to append to as training goes.
    pub live_metrics: Option<PathBuf>,
    pub quiet: bool,
    /// The ranks training together ([`crate::collective::Single`] for one process).
    pub world: &'static dyn Collective,
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
    /// Whether `max_time` ended the run (else `max_iters` did).
    pub stopped_by_time: bool,
    /// Where this process's time went.
    pub time: TimeSplit,
}

/// Where the wall time of a training process goes: optimizer steps, validation passes,
/// checkpoints (writing and pruning), and the metrics log. Counts this process only (a resumed
/// run's earlier processes are in `elapsed_secs`, not here).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct TimeSplit {
    pub steps: u64,
    /// All the steps together.
    pub step_secs: f64,
    /// The median step: what `bench train` reports, robust to a noisy machine's pauses.
    pub median_step_secs: f64,
    pub validation_secs: f64,
    pub checkpoint_secs: f64,
    pub metrics_secs: f64,
}

impl TimeSplit {
    /// Tokens per second of the median optimizer step, as `bench train` measures it.
    pub fn step_tokens_per_sec(&self, tokens_per_step: u64) -> f64 {
        if self.steps == 0 {
            return 0.0;
        }
        tokens_per_step as f64 / self.median_step_secs.max(1e-9)
    }
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
    #[error("train.device: {0}")]
    Dispatch(#[from] DispatchError),
    #[error(
        "{}: the checkpoint was written by a job of {saved} ranks and this one has {now}; the \
         ranks share the data and the batch, so resume it with {saved} ranks",
        path.display()
    )]
    WorldSizeChanged {
        path: PathBuf,
        saved: usize,
        now: usize,
    },
    #[error("rank {rank} has {what} different from rank 0's ({detail})")]
    RanksDisagree {
        rank: usize,
        what: &'static str,
        detail: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A fresh state, or the newest good checkpoint loaded into `run` and `loader` (reporting the
/// damaged ones it skipped). Rank 0 chooses the checkpoint (and removes damaged ones); the other
/// ranks open the same one. Returns the state, the log so far and the checkpoint used.
fn start_or_resume<S: Shape, B: Backend<Float = f32>>(
    run: &mut Stepper<S, B>,
    loader: &mut Loader,
    checkpoints: &Checkpoints,
    world: &dyn Collective,
) -> Result<(TrainingState, Vec<MetricRecord>, Option<Checkpoint>), TrainError> {
    let threads = rayon::current_num_threads();
    const NONE: u64 = u64::MAX;
    let chosen = if world.leads() {
        let found = checkpoints.latest()?;
        for line in &found.damaged {
            eprintln!("  warning: {line}");
        }
        if found.latest.is_none() && !found.damaged.is_empty() {
            eprintln!("  no good checkpoint is left; training starts from step 0");
        }
        world.agree_u64(found.latest.map_or(NONE, |c| c.step))
    } else {
        world.agree_u64(NONE)
    };
    if chosen == NONE {
        let state = TrainingState {
            step: 0,
            loader: loader.state(),
            tokens_seen: 0,
            elapsed_secs: 0.0,
            best: None,
            loss_since_log: (0.0, 0),
            threads,
            world_size: world.size(),
        };
        return Ok((state, Vec::new(), None));
    }
    let checkpoint = checkpoints.verified(chosen)?;
    let (mut state, records) = restore(run, &checkpoint)?;
    if state.world_size != world.size() {
        return Err(TrainError::WorldSizeChanged {
            path: checkpoint.dir.clone(),
            saved: state.world_size,
            now: world.size(),
        });
    }
    loader.restore(state.loader)?;
    if world.leads() {
        eprintln!(
            "  resuming from step {} ({})",
            state.step,
            checkpoint.dir.display()
        );
    }
    if state.threads != threads {
        if world.leads() {
            eprintln!(
                "  warning: the checkpoint was written with {} threads and this process has \
                 {threads}; the result will differ in the last bits from an uninterrupted run",
                state.threads
            );
        }
        state.threads = threads;
    }
    Ok((state, records, Some(checkpoint)))
}

/// Checks that every rank holds the weights rank 0 holds (they come from the same seed or the
/// same checkpoint, so a difference is a broken job: another binary, another file).
fn check_same_weights<S: Shape, B: Backend<Float = f32>>(
    model: &crate::model::Llama<S, B>,
    world: &dyn Collective,
) -> Result<(), TrainError> {
    if world.size() == 1 {
        return Ok(());
    }
    let mut hasher = blake3::Hasher::new();
    for tensor in model.state_tensors()? {
        hasher.update(bytemuck::cast_slice(&tensor));
    }
    let mine = *hasher.finalize().as_bytes();
    let mut rank0 = mine;
    world.broadcast_bytes(&mut rank0, 0);
    // Every rank learns whether any differs, so they fail together rather than hang.
    let mut differs = [f64::from(u8::from(mine != rank0))];
    world.all_reduce_sum_f64(&mut differs);
    if differs[0] > 0.0 {
        return Err(TrainError::RanksDisagree {
            rank: world.rank(),
            what: "initial weights",
            detail: format!(
                "{} of {} ranks differ; same seed, binary and checkpoint expected",
                differs[0],
                world.size()
            ),
        });
    }
    Ok(())
}

/// Trains the model `job` describes on `job.config.device`, continuing from the newest good
/// checkpoint if there is one, and writes the final weights and `config.json` into `out_dir`.
pub fn train(job: &TrainJob, out_dir: &Path) -> Result<TrainOutcome, TrainError> {
    // The ranks of one machine take one GPU each, counting from the one the spec names.
    let device = job.config.device.offset(job.world.local_rank());
    run_model(device, job.dims, Training { job, out_dir })
}

struct Training<'a> {
    job: &'a TrainJob,
    out_dir: &'a Path,
}

impl ModelJob for Training<'_> {
    type Output = Result<TrainOutcome, TrainError>;
    fn run<S: Shape, B: Backend<Float = f32>>(
        self,
        shape: S,
        backend: B,
        _device: &DeviceInfo,
    ) -> Self::Output {
        train_on(backend, shape, self.job, self.out_dir)
    }
}

fn train_on<S: Shape, B: Backend<Float = f32>>(
    mut backend: B,
    shape: S,
    job: &TrainJob,
    out_dir: &Path,
) -> Result<TrainOutcome, TrainError> {
    let cfg = &job.config;
    let world = job.world;
    let leads = world.leads();
    backend.join_collective(world).map_err(ModelError::from)?;
    let mut model = Llama::new(backend, shape, job.llama, cfg.seed)?;
    model.set_precision(job.precision)?;
    let optimizer = model.optimizer(cfg.optimizer_settings())?;
    // Before any batch is read: a batch too large for memory is an error now, not an abort.
    model.allocate_activations(cfg.batch_size, cfg.seq_len)?;
    let mut run = Stepper::new(model, optimizer, StepConfig::of(cfg)).with_world(world);
    let share = Share {
        rank: world.rank(),
        world: world.size(),
        chunk: cfg.batch_size * cfg.grad_accum_steps,
    };
    let mut loader = Loader::open(&job.train_shards, cfg.seq_len, cfg.seed, share)?;
    let checkpoints = Checkpoints::new(&job.checkpoints_dir);

    let (mut state, records, resumed) =
        start_or_resume(&mut run, &mut loader, &checkpoints, world)?;
    check_same_weights(&run.model, world)?;
    let resumed_from = resumed.as_ref().map(|c| c.step);
    if world.size() > 1 && leads {
        let sequences = cfg.batch_size * cfg.grad_accum_steps * world.size();
        eprintln!(
            "  {} ranks over {}: global batch {} × {} accumulation × {} ranks = {sequences} \
             sequences ({} tokens) per step",
            world.size(),
            world.describe(),
            cfg.batch_size,
            cfg.grad_accum_steps,
            world.size(),
            sequences * cfg.seq_len
        );
    }
    let live_metrics = job.live_metrics.as_deref().filter(|_| leads);
    let live_path = job.live_metrics.clone().unwrap_or_default();
    let mut log = MetricsLog::start(records, live_metrics).map_err(io_err(&live_path))?;
    let mut last_good = resumed;

    let schedule = LrSchedule {
        kind: cfg.schedule,
        peak: cfg.lr,
        min: cfg.min_lr.resolve(cfg.lr),
        warmup: cfg.warmup_iters,
        total: cfg.max_iters,
        decay_fraction: cfg.decay_fraction,
    };
    let budget = cfg.max_time;
    // Every rank's tokens: the figures are the job's.
    let tokens_per_step = (run.config().tokens() * world.size()) as u64;
    let bar = TrainBar::new(cfg.max_iters, budget, job.quiet || !leads);
    let started = Instant::now();
    let elapsed_before = state.elapsed_secs;
    // Rank 0's clock: the schedule and the time budget must read the same time on every rank.
    let elapsed = || world.agree_f64(elapsed_before + started.elapsed().as_secs_f64());
    bar.show(
        state.step,
        progress(state.step, cfg.max_iters, elapsed(), budget),
    );
    let mut interval_start = (Instant::now(), state.tokens_seen);

    let mut time = TimeSplit::default();
    let mut step_times = Vec::new();

    // A run resumed from the checkpoint of its last step (its budget spent) takes no more steps.
    let spent = |secs: f64| budget.is_some_and(|b| secs >= b.secs());
    let first_step = if state.step > 0 && spent(state.elapsed_secs) {
        cfg.max_iters as u64 + 1
    } else {
        state.step + 1
    };
    for step in first_step..=cfg.max_iters as u64 {
        let lr = schedule.at(
            step as usize - 1,
            progress(step - 1, cfg.max_iters, elapsed(), budget),
        );
        let step_started = Instant::now();
        let outcome = run.step(&mut loader, lr)?;
        run.model.backend().synchronize();
        let step_secs = step_started.elapsed().as_secs_f64();
        step_times.push(step_secs);
        time.step_secs += step_secs;
        time.steps += 1;
        let (loss, grad_norm) = (outcome.loss, outcome.grad_norm);
        if !outcome.is_finite() {
            bar.bar.finish_and_clear();
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

        state.step = step;
        state.loader = loader.state();
        state.tokens_seen += tokens_per_step;
        state.elapsed_secs = elapsed();
        state.loss_since_log.0 += loss;
        state.loss_since_log.1 += 1;
        // The final validation pass and checkpoint come after the budget, not inside it.
        let last = step == cfg.max_iters as u64 || spent(state.elapsed_secs);
        let secs = interval_start.0.elapsed().as_secs_f64();
        let tokens_per_sec = (state.tokens_seen - interval_start.1) as f64 / secs.max(1e-9);
        bar.show(
            step,
            progress(step, cfg.max_iters, state.elapsed_secs, budget),
        );
        bar.bar.set_message(format!(
            "loss {loss:.3}  lr {lr:.2e}  {tokens_per_sec:.0} tok/s"
        ));
        if step.is_multiple_of(cfg.log_interval as u64) || last {
            let log_started = Instant::now();
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
            time.metrics_secs += log_started.elapsed().as_secs_f64();
            interval_start = (Instant::now(), state.tokens_seen);
        }

        let mut improved = false;
        if step.is_multiple_of(cfg.eval_interval as u64) || last {
            let eval_started = Instant::now();
            let result = job.eval.evaluate(&mut run.model, cfg.batch_size, world)?;
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
            bar.bar.suspend(|| {
                if !leads {
                    return;
                }
                eprintln!(
                    "  step {step}: validation loss {:.4} nats/token, {:.4} bits/byte{}",
                    result.loss,
                    result.bits_per_byte,
                    if improved { " (best so far)" } else { "" }
                )
            });
            time.validation_secs += eval_started.elapsed().as_secs_f64();
            // Throughput figures count training only.
            interval_start = (Instant::now(), state.tokens_seen);
        }
        if (step.is_multiple_of(cfg.checkpoint_interval as u64) || last || improved) && leads {
            let checkpoint_started = Instant::now();
            let checkpoint = save_checkpoint(&run, &checkpoints, &state, &log)?;
            checkpoints.prune(cfg.keep_checkpoints, state.best.map(|b| b.step))?;
            last_good = Some(checkpoint);
            time.checkpoint_secs += checkpoint_started.elapsed().as_secs_f64();
            interval_start = (Instant::now(), state.tokens_seen);
        }
        if last {
            break;
        }
    }
    bar.bar.finish_and_clear();

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
    let best = state.best.ok_or_else(|| TrainError::BadCheckpoint {
        path: job.checkpoints_dir.clone(),
        reason: format!("step {final_step} has no best validation result"),
    })?;
    if leads {
        write_model(&run.model, out_dir)?;
    }
    if best.step != final_step && leads {
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
        stopped_by_time: final_step < cfg.max_iters as u64,
        time: TimeSplit {
            median_step_secs: if step_times.is_empty() {
                0.0
            } else {
                super::metrics::median(&mut step_times)
            },
            ..time
        },
    })
}

/// The progress bar of a run: steps of `max_iters`, or, under a time budget, the schedule's
/// progress (so its ETA is the budget's).
struct TrainBar {
    bar: ProgressBar,
    by_progress: bool,
}

/// Ticks of a progress-driven bar.
const PROGRESS_TICKS: u64 = 1000;

impl TrainBar {
    fn new(max_iters: usize, budget: Option<TimeBudget>, quiet: bool) -> TrainBar {
        let (len, template) = match budget {
            None => (
                max_iters as u64,
                "  train [{bar:25}] {pos}/{len} {msg}  eta {eta}".to_string(),
            ),
            Some(budget) => (
                PROGRESS_TICKS,
                format!(
                    "  train [{{bar:25}}] {{percent}}% of {budget} {{prefix}} {{msg}}  eta {{eta}}"
                ),
            ),
        };
        let bar = ProgressBar::new(len).with_style(
            ProgressStyle::with_template(&template)
                .expect("the template is valid")
                .progress_chars("=> "),
        );
        if quiet {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        TrainBar {
            bar,
            by_progress: budget.is_some(),
        }
    }

    fn show(&self, step: u64, progress: f64) {
        if self.by_progress {
            self.bar
                .set_position((progress * PROGRESS_TICKS as f64).round() as u64);
            self.bar.set_prefix(format!("step {step}"));
        } else {
            self.bar.set_position(step);
        }
    }
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

pub(crate) fn save_checkpoint<S: Shape, B: Backend<Float = f32>>(
    run: &Stepper<S, B>,
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
        &Optimizer::<B>::state_layout(run.model.layout(), run.optimizer.settings().kind),
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
    run: &mut Stepper<S, B>,
    checkpoint: &Checkpoint,
) -> Result<(TrainingState, Vec<MetricRecord>), TrainError> {
    let dir = &checkpoint.dir;
    let params = safetensors::load(&dir.join(MODEL_FILE), run.model.layout())?;
    let moment_layout =
        Optimizer::<B>::state_layout(run.model.layout(), run.optimizer.settings().kind);
    let moments = safetensors::load(&dir.join(OPTIMIZER_FILE), &moment_layout)?;
    run.model.load_params(&params)?;
    let state = checkpoint::read_state(checkpoint)?;
    run.optimizer
        .load_state(run.model.backend(), state.step, &moments)
        .map_err(ModelError::from)?;
    let metrics_path = dir.join(METRICS_FILE);
    let records = read_jsonl(&metrics_path).map_err(io_err(&metrics_path))?;
    Ok((state, records))
}
