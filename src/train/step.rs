//! One optimizer step, the way training takes it: `grad_accum_steps` micro-batches of forward
//! and backward from the data source with their gradients summed (and summed over the ranks of
//! a data-parallel job), the global gradient norm clipped, one optimizer step (AdamW, or Muon
//! for the block matrices). The train stage and `tinyllm bench train` both run
//! [`Stepper::step`], so the benchmark times the code users run.
//!
//! Summation order: each micro-batch's gradient is computed on its own and added into one flat
//! buffer in micro-batch order; the ranks' buffers are then summed by the collective. So two
//! ranks with one micro-batch each add `g0 + g1` exactly as one process with two micro-batches
//! does, and their weights stay bit-identical to it.

use crate::collective::{Collective, Single};
use crate::data::loader::Loader;
use crate::engine::{Backend, Optimizer, clip_factor};
use crate::model::{Llama, ModelError, Shape};
use crate::pipeline::spec::TrainConfig;

/// Where micro-batches come from: the shuffled loader in training and in the benchmark, a fixed
/// batch in tests that overfit one.
pub trait Batches {
    /// Fills `inputs` and `targets` (each `batch × seq` tokens) with the next batch.
    fn next_batch(&mut self, batch: usize, inputs: &mut Vec<u32>, targets: &mut Vec<u32>);
}

impl Batches for Loader {
    fn next_batch(&mut self, batch: usize, inputs: &mut Vec<u32>, targets: &mut Vec<u32>) {
        Loader::next_batch(self, batch, inputs, targets);
    }
}

/// The same `batch × seq` inputs and targets every time.
pub struct FixedBatch {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
}

impl Batches for FixedBatch {
    fn next_batch(&mut self, _batch: usize, inputs: &mut Vec<u32>, targets: &mut Vec<u32>) {
        inputs.clone_from(&self.inputs);
        targets.clone_from(&self.targets);
    }
}

/// The sizes and clipping of a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepConfig {
    /// Sequences per micro-batch.
    pub batch: usize,
    pub seq: usize,
    /// Micro-batches per optimizer step.
    pub accum: usize,
    /// Global gradient-norm bound (0: no clipping).
    pub grad_clip: f64,
}

impl StepConfig {
    pub fn of(config: &TrainConfig) -> StepConfig {
        StepConfig {
            batch: config.batch_size,
            seq: config.seq_len,
            accum: config.grad_accum_steps,
            grad_clip: config.grad_clip,
        }
    }

    /// Tokens an optimizer step trains on.
    pub fn tokens(&self) -> usize {
        self.batch * self.seq * self.accum
    }
}

/// What a step measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    /// The mean loss over the step's tokens (the first non-finite micro-batch's, if any).
    pub loss: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    /// Seconds spent summing the gradients over the ranks (0 for one process), waiting for
    /// the slowest rank included.
    pub all_reduce_secs: f64,
}

impl StepOutcome {
    /// Whether the step was applied: a non-finite loss or gradient leaves the weights as they were.
    pub fn is_finite(&self) -> bool {
        self.loss.is_finite() && self.grad_norm.is_finite()
    }
}

/// A model, its optimizer and the token buffers of its steps: what a run trains.
pub struct Stepper<S: Shape, B: Backend> {
    pub model: Llama<S, B>,
    pub optimizer: Optimizer<B>,
    config: StepConfig,
    inputs: Vec<u32>,
    targets: Vec<u32>,
    /// The ranks whose gradients each step sums ([`Single`]: this process alone).
    world: &'static dyn Collective,
    /// Every gradient, flat, in layout order: the sum of a step's micro-batches and what the
    /// ranks all-reduce in one call. Only when there is more than one micro-batch to sum.
    flat_grads: Option<B::Buf>,
}

impl<S: Shape, B: Backend> Stepper<S, B> {
    pub fn new(model: Llama<S, B>, optimizer: Optimizer<B>, config: StepConfig) -> Self {
        Stepper {
            model,
            optimizer,
            config,
            inputs: Vec::new(),
            targets: Vec::new(),
            world: &Single,
            flat_grads: None,
        }
    }

    /// Steps as one rank of `world`: each step's gradient and loss are summed over its ranks.
    pub fn with_world(mut self, world: &'static dyn Collective) -> Self {
        self.world = world;
        self
    }

    pub fn config(&self) -> StepConfig {
        self.config
    }

    /// Micro-batches summed per optimizer step over every rank: the accumulation times the ranks.
    pub fn micro_batches_per_step(&self) -> usize {
        self.config.accum * self.world.size()
    }

    /// Adds the gradients the last backward pass left into the flat sum (`first`: replaces it).
    fn gather_grads(&mut self, first: bool) -> Result<(), ModelError> {
        if self.flat_grads.is_none() {
            self.flat_grads = Some(self.model.flat_gradient_buffer()?);
        }
        let flat = self.flat_grads.as_mut().expect("allocated above");
        self.model.add_grads_into(flat, first);
        Ok(())
    }

    /// One optimizer step at learning rate `lr` on the next `accum` micro-batches of `data`.
    /// When the loss or the gradient norm is not finite, the weights are left untouched and the
    /// outcome says so ([`StepOutcome::is_finite`]); the caller decides what divergence means.
    pub fn step(&mut self, data: &mut impl Batches, lr: f64) -> Result<StepOutcome, ModelError> {
        let StepConfig {
            batch,
            seq,
            accum,
            grad_clip,
        } = self.config;
        let micro_batches = self.micro_batches_per_step();
        // Each micro-batch's gradient is scaled so their sum over micro-batches and ranks is
        // the gradient of the mean loss over all the step's tokens.
        let grad_scale = 1.0 / (batch * seq * micro_batches) as f64;
        let summed = micro_batches > 1;
        let mut loss_sum = 0.0;
        for micro_batch in 0..accum {
            self.model.zero_grad();
            data.next_batch(batch, &mut self.inputs, &mut self.targets);
            let micro = self
                .model
                .forward(&self.inputs, Some(&self.targets), batch, seq, grad_scale)?
                .expect("a forward pass with targets returns its loss");
            loss_sum += micro;
            if !micro.is_finite() {
                break;
            }
            self.model.backward();
            if summed {
                self.gather_grads(micro_batch == 0)?;
            }
        }
        let mut all_reduce_secs = 0.0;
        if summed {
            let backend = self.model.backend();
            let flat = self.flat_grads.as_mut().expect("gathered above");
            let started = std::time::Instant::now();
            // Over one rank a sum changes nothing, and the host's path returns at once; a
            // backend's own transport (NCCL) sums even then, which is how one GPU checks it.
            backend
                .all_reduce_sum(flat, self.world)
                .map_err(ModelError::Engine)?;
            if self.world.size() > 1 {
                // A GPU's sum is queued on its stream: the time is the wait for its end.
                backend.synchronize();
                all_reduce_secs = started.elapsed().as_secs_f64();
            }
            self.model.load_grads(flat);
        }
        // Every rank sees the same loss, so every rank takes the same decisions on it.
        let mut loss = [loss_sum];
        self.world.all_reduce_sum_f64(&mut loss);
        let loss = loss[0] / micro_batches as f64;
        let grad_norm = self.model.grad_norm();
        let outcome = StepOutcome {
            loss,
            grad_norm,
            all_reduce_secs,
        };
        if outcome.is_finite() {
            let grad_scale = clip_factor(grad_norm, grad_clip);
            self.model
                .optimizer_step(&mut self.optimizer, lr, grad_scale);
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Cpu, OptimizerKind, OptimizerSettings, Precision, Rng};
    use crate::model::{LlamaConfig, ModelDims, RuntimeShape};

    fn tiny() -> (Stepper<RuntimeShape, Cpu<f32>>, FixedBatch) {
        tiny_with(OptimizerSettings::adamw(0.9, 0.95, 0.1), Precision::F32)
    }

    fn tiny_with(
        settings: OptimizerSettings,
        precision: Precision,
    ) -> (Stepper<RuntimeShape, Cpu<f32>>, FixedBatch) {
        let dims = ModelDims {
            dim: 16,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 2,
            vocab_size: 32,
            multiple_of: 4,
            max_seq_len: 8,
        };
        let shape = RuntimeShape::new(dims).unwrap();
        let mut model = Llama::new(Cpu::<f32>::new(), shape, LlamaConfig::default(), 7).unwrap();
        model.set_precision(precision).unwrap();
        let optimizer = model.optimizer(settings).unwrap();
        let config = StepConfig {
            batch: 2,
            seq: 8,
            accum: 1,
            grad_clip: 1.0,
        };
        let mut rng = Rng::new(1);
        let mut tokens = |n| (0..n).map(|_| rng.below(32) as u32).collect();
        let data = FixedBatch {
            inputs: tokens(16),
            targets: tokens(16),
        };
        (Stepper::new(model, optimizer, config), data)
    }

    #[test]
    fn same_seed_gives_bit_identical_losses() {
        let run = || {
            let (mut stepper, mut data) = tiny();
            (0..5)
                .map(|_| stepper.step(&mut data, 1e-3).unwrap().loss.to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn accumulated_micro_batches_give_the_gradient_of_their_mean_loss() {
        // Two micro-batches of the same batch are one batch counted twice: the same mean loss,
        // and the same step.
        let (mut once, mut data) = tiny();
        let (mut twice, _) = tiny();
        twice.config.accum = 2;
        for _ in 0..3 {
            let a = once.step(&mut data, 1e-2).unwrap();
            let b = twice.step(&mut data, 1e-2).unwrap();
            assert!((a.loss - b.loss).abs() < 1e-5, "{a:?} {b:?}");
            assert!((a.grad_norm - b.grad_norm).abs() < 1e-5, "{a:?} {b:?}");
        }
    }

    #[test]
    fn a_step_that_diverges_leaves_the_weights_alone() {
        let (mut stepper, mut data) = tiny();
        let bits = |s: &Stepper<RuntimeShape, Cpu<f32>>| -> Vec<u32> {
            s.model
                .params()
                .tensors()
                .iter()
                .flatten()
                .map(|w| w.to_bits())
                .collect()
        };
        // A learning rate of infinity ruins the weights in one step, so the next loss is not
        // finite.
        assert!(stepper.step(&mut data, f64::INFINITY).unwrap().is_finite());
        let ruined = bits(&stepper);
        let diverged = stepper.step(&mut data, 1e-3).unwrap();
        assert!(!diverged.is_finite(), "{diverged:?}");
        assert_eq!(bits(&stepper), ruined, "a diverged step is not applied");
    }

    /// Muon for the block matrices (AdamW for the rest) fits a fixed batch, in f32 and in
    /// bf16 (whose matmuls read copies remade from the f32 weights after each step).
    #[test]
    fn a_tiny_run_with_muon_reduces_the_loss() {
        let muon = OptimizerSettings {
            kind: OptimizerKind::Muon,
            muon_lr_scale: 2.0,
            ..OptimizerSettings::adamw(0.9, 0.95, 0.1)
        };
        for precision in [Precision::F32, Precision::Bf16] {
            let (mut stepper, mut data) = tiny_with(muon, precision);
            let before = stepper.model.params().tensors()[2].clone();
            let losses: Vec<f64> = (0..40)
                .map(|_| stepper.step(&mut data, 1e-2).unwrap().loss)
                .collect();
            let (first, last) = (losses[0], losses[39]);
            assert!(last < 0.5 * first, "{precision}: {first} -> {last}");
            // Tensor 2 is layer 0's q_proj, which Muon steps.
            assert_ne!(stepper.model.params().tensors()[2], before);
            assert_eq!(stepper.optimizer.settings().kind, OptimizerKind::Muon);
        }
    }
}
