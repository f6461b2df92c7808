//! The learning-rate schedule: linear warmup to the peak, then cosine decay to the minimum (as
//! nanoGPT and the tutorial's `train.py` do it).

use std::f64::consts::PI;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub peak: f64,
    pub min: f64,
    pub warmup: usize,
    /// The step at which the decay reaches `min`.
    pub total: usize,
}

impl LrSchedule {
    /// The learning rate of optimizer step `step` (counted from 0).
    pub fn at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / (self.warmup + 1) as f64;
        }
        if step >= self.total {
            return self.min;
        }
        let progress = (step - self.warmup) as f64 / (self.total - self.warmup).max(1) as f64;
        let cosine = 0.5 * (1.0 + (PI * progress).cos());
        self.min + cosine * (self.peak - self.min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_linearly_then_decays_to_the_minimum() {
        let s = LrSchedule {
            peak: 1e-3,
            min: 1e-4,
            warmup: 9,
            total: 109,
        };
        assert!((s.at(0) - 1e-4).abs() < 1e-12);
        assert!((s.at(4) - 5e-4).abs() < 1e-12);
        assert!(
            (s.at(9) - 1e-3).abs() < 1e-12,
            "the peak right after warmup"
        );
        assert!((s.at(59) - 5.5e-4).abs() < 1e-12, "halfway down the cosine");
        assert!((s.at(109) - 1e-4).abs() < 1e-12);
        assert_eq!(s.at(500), 1e-4);
        for step in 9..108 {
            assert!(s.at(step + 1) <= s.at(step), "decays monotonically");
        }
    }

    #[test]
    fn no_warmup_starts_at_the_peak() {
        let s = LrSchedule {
            peak: 2.0,
            min: 0.0,
            warmup: 0,
            total: 4,
        };
        assert_eq!(s.at(0), 2.0);
        assert!((s.at(2) - 1.0).abs() < 1e-12);
    }
}
