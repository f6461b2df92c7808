//! The optimizer and gradient clipping, over any backend's buffers.

use super::{AdamW, Backend};

/// AdamW with its moment buffers, one pair per parameter tensor.
pub struct AdamWOptimizer<B: Backend> {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Optimizer steps taken so far.
    pub step: u64,
    pub m: Vec<B::Buf>,
    pub v: Vec<B::Buf>,
}

impl<B: Backend> AdamWOptimizer<B> {
    /// Zeroed moments shaped like `params`.
    pub fn new(backend: &B, params: &[B::Buf], beta1: f64, beta2: f64, weight_decay: f64) -> Self {
        let zeros = |p: &B::Buf| backend.zeros(backend.len(p));
        AdamWOptimizer {
            beta1,
            beta2,
            eps: 1e-8,
            weight_decay,
            step: 0,
            m: params.iter().map(zeros).collect(),
            v: params.iter().map(zeros).collect(),
        }
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
        for (i, (param, grad)) in params.iter_mut().zip(grads).enumerate() {
            let hp = AdamW {
                lr,
                beta1: self.beta1,
                beta2: self.beta2,
                eps: self.eps,
                weight_decay: if decay[i] { self.weight_decay } else { 0.0 },
                step: self.step,
            };
            backend.adamw(param, grad, &mut self.m[i], &mut self.v[i], hp);
        }
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
}
