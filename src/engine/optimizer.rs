//! The optimizer and gradient clipping, over any backend's buffers.

use super::{AdamW, Backend, EngineError, ParamInfo};

/// AdamW with its moment buffers, one pair per parameter tensor.
///
/// The state is private: a checkpoint reads it with [`AdamWOptimizer::state_tensors`] and
/// restores it with [`AdamWOptimizer::load_state`], both in the order and under the names of
/// [`AdamWOptimizer::state_layout`].
pub struct AdamWOptimizer<B: Backend> {
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    /// Optimizer steps taken so far.
    step: u64,
    m: Vec<B::Buf>,
    v: Vec<B::Buf>,
}

impl<B: Backend> AdamWOptimizer<B> {
    /// Zeroed moments shaped like `params`.
    pub fn new(
        backend: &B,
        params: &[B::Buf],
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
    ) -> Result<Self, EngineError> {
        let zeros = |p: &B::Buf| backend.zeros(backend.len(p));
        Ok(AdamWOptimizer {
            beta1,
            beta2,
            eps: 1e-8,
            weight_decay,
            step: 0,
            m: params.iter().map(zeros).collect::<Result<_, _>>()?,
            v: params.iter().map(zeros).collect::<Result<_, _>>()?,
        })
    }

    /// Optimizer steps taken so far.
    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// One step over every tensor; weight decay applies where `decay[i]` (the 2-D weights).
    pub fn step(
        &mut self,
        backend: &B,
        params: &mut [B::Buf],
        grads: &[B::Buf],
        decay: &[bool],
        lr: f64,
    ) {
        self.step += 1;
        let (correction1, correction2) = AdamW::corrections(self.beta1, self.beta2, self.step);
        for (i, (param, grad)) in params.iter_mut().zip(grads).enumerate() {
            let hp = AdamW {
                lr,
                beta1: self.beta1,
                beta2: self.beta2,
                eps: self.eps,
                weight_decay: if decay[i] { self.weight_decay } else { 0.0 },
                correction1,
                correction2,
            };
            backend.adamw(param, grad, &mut self.m[i], &mut self.v[i], hp);
        }
    }

    /// The names and shapes of the optimizer's state for parameters laid out as `params`: the
    /// first moments as `m.<param>`, then the second moments as `v.<param>` (the tensors of a
    /// checkpoint's optimizer file, in its order).
    pub fn state_layout(params: &[ParamInfo]) -> Vec<ParamInfo> {
        ["m", "v"]
            .iter()
            .flat_map(|prefix| {
                params.iter().map(move |info| ParamInfo {
                    name: format!("{prefix}.{}", info.name),
                    ..info.clone()
                })
            })
            .collect()
    }

    /// The moments in host memory, in [`AdamWOptimizer::state_layout`] order.
    pub fn state_tensors(&self, backend: &B) -> Result<Vec<Vec<B::Float>>, EngineError> {
        self.m
            .iter()
            .chain(&self.v)
            .map(|t| backend.download(t))
            .collect()
    }

    /// Restores the moments (in [`AdamWOptimizer::state_layout`] order) and the count of steps
    /// taken, so the next step continues exactly where the saved run was. A count or length that
    /// does not match leaves the state as it was.
    pub fn load_state(
        &mut self,
        backend: &B,
        step: u64,
        tensors: &[Vec<B::Float>],
    ) -> Result<(), EngineError> {
        if tensors.len() != self.m.len() + self.v.len() {
            return Err(EngineError::TensorCount {
                expected: self.m.len() + self.v.len(),
                got: tensors.len(),
            });
        }
        // Every length is checked before anything is overwritten.
        for (moment, values) in self.m.iter().chain(&self.v).zip(tensors) {
            if backend.len(moment) != values.len() {
                return Err(EngineError::LengthMismatch {
                    expected: backend.len(moment),
                    got: values.len(),
                });
            }
        }
        for (moment, values) in self.m.iter_mut().chain(&mut self.v).zip(tensors) {
            backend.upload_into(moment, values)?;
        }
        self.step = step;
        Ok(())
    }
}

/// The global L2 norm of all gradients; when it exceeds `max_norm` (> 0), scales them down to it.
/// Returns the norm before clipping.
pub fn clip_grad_norm<B: Backend>(backend: &B, grads: &mut [B::Buf], max_norm: f64) -> f64 {
    let norm = grads
        .iter()
        .map(|g| backend.sum_squares(g))
        .sum::<f64>()
        .sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let factor = max_norm / (norm + 1e-6);
        for grad in grads.iter_mut() {
            backend.scale(grad, factor);
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Cpu;

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let cpu = Cpu::<f64>::new();
        let mut grads = vec![vec![3.0, 0.0], vec![4.0]];
        let norm = clip_grad_norm(&cpu, &mut grads, 1.0);
        assert!((norm - 5.0).abs() < 1e-12);
        let after: f64 = grads.iter().flatten().map(|g| g * g).sum::<f64>().sqrt();
        assert!((after - 1.0).abs() < 1e-6);
        let mut small = vec![vec![0.1]];
        clip_grad_norm(&cpu, &mut small, 1.0);
        assert_eq!(small[0][0], 0.1);
    }

    fn param(name: &str, shape: Vec<usize>) -> ParamInfo {
        ParamInfo {
            name: name.into(),
            decay: shape.len() == 2,
            shape,
        }
    }

    /// The state names its tensors `m.<param>` then `v.<param>`, and an optimizer loaded from
    /// another's state takes the same next step, bit for bit.
    #[test]
    fn state_round_trips_and_resumes_exactly() {
        let cpu = Cpu::<f32>::new();
        let layout = [param("a.weight", vec![2, 2]), param("b.weight", vec![3])];
        let names: Vec<String> = AdamWOptimizer::<Cpu<f32>>::state_layout(&layout)
            .into_iter()
            .map(|info| info.name)
            .collect();
        assert_eq!(
            names,
            ["m.a.weight", "m.b.weight", "v.a.weight", "v.b.weight"]
        );

        let decay = [true, false];
        let grads = vec![vec![0.5, -1.0, 0.25, 2.0], vec![-0.1, 0.3, 1.0]];
        let mut params = vec![vec![1.0, 2.0, -1.0, 0.5], vec![1.0, 1.0, 1.0]];
        let mut first = AdamWOptimizer::new(&cpu, &params, 0.9, 0.95, 0.1).unwrap();
        for _ in 0..3 {
            first.step(&cpu, &mut params, &grads, &decay, 1e-2);
        }
        let state = first.state_tensors(&cpu).unwrap();
        assert_eq!(state.len(), 4);

        let mut second = AdamWOptimizer::new(&cpu, &params, 0.9, 0.95, 0.1).unwrap();
        second
            .load_state(&cpu, first.steps_taken(), &state)
            .unwrap();
        assert_eq!(second.steps_taken(), 3);
        let mut resumed = params.clone();
        first.step(&cpu, &mut params, &grads, &decay, 1e-2);
        second.step(&cpu, &mut resumed, &grads, &decay, 1e-2);
        assert_eq!(params, resumed);

        assert_eq!(
            second.load_state(&cpu, 3, &state[..3]),
            Err(EngineError::TensorCount {
                expected: 4,
                got: 3
            })
        );
    }
}
