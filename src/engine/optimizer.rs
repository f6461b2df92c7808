//! The optimizer and gradient clipping, over any backend's buffers.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{AdamW, Backend, EngineError, Muon, ParamInfo};

/// Which optimizer steps the block matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// AdamW for every tensor.
    #[default]
    AdamW,
    /// Muon for the 2-D weights of the transformer blocks, AdamW for the embeddings, the head
    /// and the norms (which Muon's authors leave to AdamW: they are not hidden-layer matrices).
    Muon,
}

/// Everything an [`Optimizer`] needs besides the learning rate, which follows the schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimizerSettings {
    pub kind: OptimizerKind,
    pub beta1: f64,
    pub beta2: f64,
    /// AdamW's decoupled weight decay, on the 2-D weights it steps.
    pub weight_decay: f64,
    /// Muon's learning rate as a multiple of the schedule's, so warmup and decay apply to both.
    pub muon_lr_scale: f64,
    pub muon_momentum: f64,
    pub muon_weight_decay: f64,
    pub muon_ns_steps: usize,
}

impl OptimizerSettings {
    /// Muon's published defaults, used when the kind is Muon and a caller gives no others.
    pub const MUON_MOMENTUM: f64 = 0.95;
    pub const MUON_NS_STEPS: usize = 5;

    /// AdamW for every tensor.
    pub fn adamw(beta1: f64, beta2: f64, weight_decay: f64) -> Self {
        OptimizerSettings {
            kind: OptimizerKind::AdamW,
            beta1,
            beta2,
            weight_decay,
            muon_lr_scale: 1.0,
            muon_momentum: Self::MUON_MOMENTUM,
            muon_weight_decay: 0.0,
            muon_ns_steps: Self::MUON_NS_STEPS,
        }
    }
}

/// Whether Muon steps tensor `info` under [`OptimizerKind::Muon`]: the 2-D weights of the
/// blocks (attention and MLP projections).
pub fn muon_applies(info: &ParamInfo) -> bool {
    info.shape.len() == 2 && info.name.starts_with("model.layers.")
}

/// The working space of a Muon step of a `rows × cols` matrix, as the CPU lays it out: the
/// iterate and the next one, and two Gram-sized squares.
pub fn muon_scratch_floats(rows: usize, cols: usize) -> usize {
    let side = rows.min(cols);
    2 * rows * cols + 2 * side * side
}

/// The floats an optimizer of `kind` holds for parameters laid out as `layout`: its state and
/// (for Muon) the largest working space, counted before anything is allocated.
pub fn state_floats(layout: &[ParamInfo], kind: OptimizerKind) -> usize {
    let state: usize = Optimizer::<super::Cpu<f32>>::state_layout(layout, kind)
        .iter()
        .map(ParamInfo::numel)
        .sum();
    let scratch = if kind == OptimizerKind::Muon {
        layout
            .iter()
            .filter(|info| muon_applies(info))
            .map(|info| muon_scratch_floats(info.shape[0], info.shape[1]))
            .max()
            .unwrap_or(0)
    } else {
        0
    };
    state + scratch
}

/// How one tensor is stepped, with its state.
enum Slot<B: Backend> {
    AdamW {
        m: B::Buf,
        v: B::Buf,
        decay: bool,
    },
    Muon {
        momentum: B::Buf,
        rows: usize,
        cols: usize,
    },
}

/// AdamW moments for the tensors AdamW steps and a momentum buffer for those Muon steps.
///
/// The state is private: a checkpoint reads it with [`Optimizer::state_tensors`] and restores
/// it with [`Optimizer::load_state`], both in the order and under the names of
/// [`Optimizer::state_layout`].
pub struct Optimizer<B: Backend> {
    settings: OptimizerSettings,
    eps: f64,
    /// Optimizer steps taken so far.
    step: u64,
    /// One per parameter tensor, in layout order.
    slots: Vec<Slot<B>>,
    /// Newton–Schulz working space shared by the Muon tensors (stepped one after another).
    scratch: Option<B::Buf>,
}

impl<B: Backend> Optimizer<B> {
    /// Zeroed state for parameters laid out as `layout`.
    pub fn new(
        backend: &B,
        layout: &[ParamInfo],
        settings: OptimizerSettings,
    ) -> Result<Self, EngineError> {
        let muon = |info: &ParamInfo| settings.kind == OptimizerKind::Muon && muon_applies(info);
        let slots = layout
            .iter()
            .map(|info| {
                let zeros = || backend.zeros(info.numel());
                Ok(if muon(info) {
                    Slot::Muon {
                        momentum: zeros()?,
                        rows: info.shape[0],
                        cols: info.shape[1],
                    }
                } else {
                    Slot::AdamW {
                        m: zeros()?,
                        v: zeros()?,
                        decay: info.decay,
                    }
                })
            })
            .collect::<Result<_, EngineError>>()?;
        let scratch_len = Self::scratch_len(backend, layout, settings.kind);
        let scratch = (scratch_len > 0)
            .then(|| backend.zeros(scratch_len))
            .transpose()?;
        Ok(Optimizer {
            settings,
            eps: 1e-8,
            step: 0,
            slots,
            scratch,
        })
    }

    /// The floats of Muon working space for `layout`: the largest any of its tensors needs.
    pub fn scratch_len(backend: &B, layout: &[ParamInfo], kind: OptimizerKind) -> usize {
        if kind != OptimizerKind::Muon {
            return 0;
        }
        layout
            .iter()
            .filter(|info| muon_applies(info))
            .map(|info| backend.muon_scratch_len(info.shape[0], info.shape[1]))
            .max()
            .unwrap_or(0)
    }

    pub fn settings(&self) -> OptimizerSettings {
        self.settings
    }

    /// Optimizer steps taken so far.
    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// One step over every tensor at the schedule's learning rate `lr` (Muon's is
    /// `lr · muon_lr_scale`).
    /// `grad_scale` multiplies every gradient as it is read ([`clip_factor`]'s, 1 for none).
    pub fn step(
        &mut self,
        backend: &B,
        params: &mut [B::Buf],
        grads: &[B::Buf],
        lr: f64,
        grad_scale: f64,
    ) {
        assert_eq!(params.len(), self.slots.len());
        self.step += 1;
        let s = self.settings;
        let (correction1, correction2) = AdamW::corrections(s.beta1, s.beta2, self.step);
        for ((param, grad), slot) in params.iter_mut().zip(grads).zip(&mut self.slots) {
            match slot {
                Slot::AdamW { m, v, decay } => {
                    let hp = AdamW {
                        lr,
                        beta1: s.beta1,
                        beta2: s.beta2,
                        eps: self.eps,
                        weight_decay: if *decay { s.weight_decay } else { 0.0 },
                        correction1,
                        correction2,
                        grad_scale,
                    };
                    backend.adamw(param, grad, m, v, hp);
                }
                Slot::Muon {
                    momentum,
                    rows,
                    cols,
                } => {
                    let hp = Muon {
                        lr: lr * s.muon_lr_scale,
                        momentum: s.muon_momentum,
                        nesterov: true,
                        ns_steps: s.muon_ns_steps,
                        weight_decay: s.muon_weight_decay,
                        grad_scale,
                    };
                    let scratch = self
                        .scratch
                        .as_mut()
                        .expect("a Muon tensor has working space");
                    backend.muon(param, grad, momentum, scratch, *rows, *cols, hp);
                }
            }
        }
    }

    /// The names and shapes of the optimizer's state for parameters laid out as `params`: the
    /// AdamW tensors' first moments as `m.<param>`, then their second moments as `v.<param>`,
    /// then the Muon tensors' momentum as `momentum.<param>` (the tensors of a checkpoint's
    /// optimizer file, in its order; under AdamW alone, the layout of the files written before
    /// Muon existed).
    pub fn state_layout(params: &[ParamInfo], kind: OptimizerKind) -> Vec<ParamInfo> {
        let muon = |info: &ParamInfo| kind == OptimizerKind::Muon && muon_applies(info);
        let named = |prefix: &'static str, info: &ParamInfo| ParamInfo {
            name: format!("{prefix}.{}", info.name),
            ..info.clone()
        };
        let adamw = || params.iter().filter(|info| !muon(info));
        adamw()
            .map(|info| named("m", info))
            .chain(adamw().map(|info| named("v", info)))
            .chain(
                params
                    .iter()
                    .filter(|info| muon(info))
                    .map(|info| named("momentum", info)),
            )
            .collect()
    }

    /// The state buffers in [`Optimizer::state_layout`] order.
    fn state_buffers(&self) -> impl Iterator<Item = &B::Buf> {
        let firsts = self.slots.iter().filter_map(|slot| match slot {
            Slot::AdamW { m, .. } => Some(m),
            Slot::Muon { .. } => None,
        });
        let seconds = self.slots.iter().filter_map(|slot| match slot {
            Slot::AdamW { v, .. } => Some(v),
            Slot::Muon { .. } => None,
        });
        let momenta = self.slots.iter().filter_map(|slot| match slot {
            Slot::Muon { momentum, .. } => Some(momentum),
            Slot::AdamW { .. } => None,
        });
        firsts.chain(seconds).chain(momenta)
    }

    /// The state in host memory, in [`Optimizer::state_layout`] order.
    pub fn state_tensors(&self, backend: &B) -> Result<Vec<Vec<B::Float>>, EngineError> {
        self.state_buffers().map(|t| backend.download(t)).collect()
    }

    /// Restores the state (in [`Optimizer::state_layout`] order) and the count of steps taken,
    /// so the next step continues exactly where the saved run was. A count or length that does
    /// not match leaves the state as it was.
    pub fn load_state(
        &mut self,
        backend: &B,
        step: u64,
        tensors: &[Vec<B::Float>],
    ) -> Result<(), EngineError> {
        let expected = self.state_buffers().count();
        if tensors.len() != expected {
            return Err(EngineError::TensorCount {
                expected,
                got: tensors.len(),
            });
        }
        // Every length is checked before anything is overwritten.
        for (buffer, values) in self.state_buffers().zip(tensors) {
            if backend.len(buffer) != values.len() {
                return Err(EngineError::LengthMismatch {
                    expected: backend.len(buffer),
                    got: values.len(),
                });
            }
        }
        let (mut firsts, mut seconds, mut momenta) = (Vec::new(), Vec::new(), Vec::new());
        for slot in &mut self.slots {
            match slot {
                Slot::AdamW { m, v, .. } => {
                    firsts.push(m);
                    seconds.push(v);
                }
                Slot::Muon { momentum, .. } => momenta.push(momentum),
            }
        }
        for (buffer, values) in firsts
            .into_iter()
            .chain(seconds)
            .chain(momenta)
            .zip(tensors)
        {
            backend.upload_into(buffer, values)?;
        }
        self.step = step;
        Ok(())
    }
}

/// The global L2 norm of all gradients.
pub fn grad_norm<B: Backend>(backend: &B, grads: &[B::Buf]) -> f64 {
    backend.sum_squares_all(grads).sqrt()
}

/// What clipping to `max_norm` (> 0; 0 never clips) multiplies gradients of global norm `norm`
/// by: 1 at or below it, `max_norm / (norm + 1e-6)` above. The optimizer applies it as it reads
/// each gradient ([`Optimizer::step`]), the same product as scaling the gradients first.
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Cpu;

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let cpu = Cpu::<f64>::new();
        let grads = vec![vec![3.0, 0.0], vec![4.0]];
        let norm = grad_norm(&cpu, &grads);
        assert!((norm - 5.0).abs() < 1e-12);
        let factor = clip_factor(norm, 1.0);
        assert!((norm * factor - 1.0).abs() < 1e-6);
        assert_eq!(clip_factor(0.1, 1.0), 1.0);
        assert_eq!(clip_factor(5.0, 0.0), 1.0, "0 never clips");
    }

    /// Clipping inside the optimizer is the step on gradients scaled beforehand, bit for bit.
    #[test]
    fn a_step_with_a_clip_factor_is_the_step_on_scaled_gradients() {
        let cpu = Cpu::<f32>::new();
        let layout = vec![param("w", vec![4, 8]), param("norm", vec![8])];
        let mut rng = crate::engine::Rng::new(9);
        let mut random = |n: usize| (0..n).map(|_| rng.normal() as f32).collect::<Vec<f32>>();
        let params = vec![random(32), random(8)];
        let grads = vec![random(32), random(8)];
        for kind in [OptimizerKind::AdamW, OptimizerKind::Muon] {
            let settings = OptimizerSettings {
                kind,
                ..OptimizerSettings::adamw(0.9, 0.95, 0.1)
            };
            let factor = clip_factor(grad_norm(&cpu, &grads), 0.5);
            assert!(factor < 1.0);
            let mut fused = Optimizer::new(&cpu, &layout, settings).unwrap();
            let mut fused_params = params.clone();
            fused.step(&cpu, &mut fused_params, &grads, 1e-2, factor);
            let mut scaled_grads = grads.clone();
            // What clipping did before the optimizer took the factor: scale in place, in f32.
            for g in scaled_grads.iter_mut().flatten() {
                *g *= factor as f32;
            }
            let mut plain = Optimizer::new(&cpu, &layout, settings).unwrap();
            let mut plain_params = params.clone();
            plain.step(&cpu, &mut plain_params, &scaled_grads, 1e-2, 1.0);
            assert_eq!(fused_params, plain_params, "{kind:?}");
        }
    }

    fn param(name: &str, shape: Vec<usize>) -> ParamInfo {
        ParamInfo {
            name: name.into(),
            decay: shape.len() == 2,
            shape,
        }
    }

    /// The state names its tensors `m.<param>` then `v.<param>` (then `momentum.<param>` for
    /// Muon's), and an optimizer loaded from another's state takes the same next step, bit for
    /// bit.
    #[test]
    fn state_round_trips_and_resumes_exactly() {
        let cpu = Cpu::<f32>::new();
        let layout = [
            param("model.layers.0.mlp.up_proj.weight", vec![2, 2]),
            param("model.norm.weight", vec![3]),
        ];
        let names = |kind| -> Vec<String> {
            Optimizer::<Cpu<f32>>::state_layout(&layout, kind)
                .into_iter()
                .map(|info| info.name)
                .collect()
        };
        assert_eq!(
            names(OptimizerKind::AdamW),
            [
                "m.model.layers.0.mlp.up_proj.weight",
                "m.model.norm.weight",
                "v.model.layers.0.mlp.up_proj.weight",
                "v.model.norm.weight"
            ]
        );
        assert_eq!(
            names(OptimizerKind::Muon),
            [
                "m.model.norm.weight",
                "v.model.norm.weight",
                "momentum.model.layers.0.mlp.up_proj.weight"
            ]
        );

        for (kind, count) in [(OptimizerKind::AdamW, 4), (OptimizerKind::Muon, 3)] {
            let settings = OptimizerSettings {
                kind,
                muon_lr_scale: 2.0,
                ..OptimizerSettings::adamw(0.9, 0.95, 0.1)
            };
            let grads = vec![vec![0.5, -1.0, 0.25, 2.0], vec![-0.1, 0.3, 1.0]];
            let mut params = vec![vec![1.0, 2.0, -1.0, 0.5], vec![1.0, 1.0, 1.0]];
            let mut first = Optimizer::new(&cpu, &layout, settings).unwrap();
            for _ in 0..3 {
                first.step(&cpu, &mut params, &grads, 1e-2, 1.0);
            }
            let state = first.state_tensors(&cpu).unwrap();
            assert_eq!(state.len(), count);

            let mut second = Optimizer::new(&cpu, &layout, settings).unwrap();
            second
                .load_state(&cpu, first.steps_taken(), &state)
                .unwrap();
            assert_eq!(second.steps_taken(), 3);
            let mut resumed = params.clone();
            first.step(&cpu, &mut params, &grads, 1e-2, 1.0);
            second.step(&cpu, &mut resumed, &grads, 1e-2, 1.0);
            assert_eq!(params, resumed);

            assert_eq!(
                second.load_state(&cpu, 3, &state[..count - 1]),
                Err(EngineError::TensorCount {
                    expected: count,
                    got: count - 1
                })
            );
        }
    }

    /// A state from the other optimizer is refused whole: nothing is overwritten.
    #[test]
    fn a_state_of_the_other_optimizer_is_refused_before_anything_is_written() {
        let cpu = Cpu::<f32>::new();
        let layout = [
            param("model.layers.0.mlp.up_proj.weight", vec![2, 3]),
            param("model.norm.weight", vec![2]),
        ];
        let adamw = OptimizerSettings::adamw(0.9, 0.95, 0.1);
        let muon = OptimizerSettings {
            kind: OptimizerKind::Muon,
            ..adamw
        };
        let saved = Optimizer::new(&cpu, &layout, adamw).unwrap();
        let mut state = saved.state_tensors(&cpu).unwrap();
        state[0][0] = 1.0;
        let mut target = Optimizer::new(&cpu, &layout, muon).unwrap();
        let before = target.state_tensors(&cpu).unwrap();
        assert!(target.load_state(&cpu, 5, &state).is_err());
        // Same count, wrong lengths: still refused.
        let mixed = vec![vec![0.0; 2], vec![0.0; 2], vec![1.0; 5]];
        assert_eq!(
            target.load_state(&cpu, 5, &mixed),
            Err(EngineError::LengthMismatch {
                expected: 6,
                got: 5
            })
        );
        assert_eq!(target.state_tensors(&cpu).unwrap(), before);
        assert_eq!(target.steps_taken(), 0);
    }
}
