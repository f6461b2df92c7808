//! The learning-rate schedule, and the settings a spec gives it: a linear warmup to the peak
//! over `warmup_iters` steps, then a decay to the minimum, as a function of the run's progress.
//!
//! Progress is `max(steps / max_iters, elapsed / max_time)`: a run with a time budget follows
//! its schedule by the clock and ends with whichever limit comes first, so "ten minutes of
//! training" needs no guess of how many steps a machine takes in ten minutes.

use std::f64::consts::PI;
use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The shape of the decay after the warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Cosine from the peak to the minimum over the whole run after the warmup (nanoGPT's and
    /// the tutorial's).
    #[default]
    Cosine,
    /// Warmup-stable-decay: the peak until the last `decay_fraction` of the run, then a linear
    /// decay to the minimum. The decay starts at a fraction of progress, so under a time budget
    /// it starts when that fraction of the time is spent.
    Wsd,
    /// Like `wsd`, with a `1 − √t` decay (faster at first, gentler at the end), which beat the
    /// linear one in Hägele et al. (2024), "Scaling Laws and Compute-Optimal Training Beyond
    /// Fixed Training Durations".
    WsdSqrt,
}

/// `train.min_lr`: a learning rate, or a fraction of the peak written as a percentage
/// (`"10%"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum MinLr {
    Value(f64),
    Fraction(#[schemars(with = "String")] Percent),
}

impl MinLr {
    /// The minimum learning rate for a peak of `peak`.
    pub fn resolve(self, peak: f64) -> f64 {
        match self {
            MinLr::Value(value) => value,
            MinLr::Fraction(Percent(fraction)) => fraction * peak,
        }
    }
}

impl Default for MinLr {
    fn default() -> Self {
        MinLr::Value(5e-5)
    }
}

/// A fraction written as a percentage, `"10%"`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Percent(pub f64);

impl FromStr for Percent {
    type Err = String;
    fn from_str(text: &str) -> Result<Percent, String> {
        text.trim()
            .strip_suffix('%')
            .and_then(|n| n.trim().parse::<f64>().ok())
            .filter(|p| (0.0..=100.0).contains(p))
            .map(|p| Percent(p / 100.0))
            .ok_or_else(|| {
                format!(
                    "{text:?} is not a learning rate: write a number (1e-4) or a percentage of train.lr from 0% to 100% (\"10%\")"
                )
            })
    }
}

impl TryFrom<String> for Percent {
    type Error = String;
    fn try_from(text: String) -> Result<Percent, String> {
        text.parse()
    }
}

impl From<Percent> for String {
    fn from(Percent(fraction): Percent) -> String {
        format!("{}%", fraction * 100.0)
    }
}

/// The longest time budget a spec may give: far beyond any run, small enough that no
/// arithmetic on it overflows.
pub const MAX_TIME_BUDGET_SECS: f64 = 10_000.0 * 3600.0;

/// A wall-clock budget (`train.max_time`): `"90s"`, `"10m"`, `"2h"`, `"1h30m"`, `"1.5h"`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub struct TimeBudget {
    secs: f64,
}

impl TimeBudget {
    pub fn from_secs(secs: f64) -> Result<TimeBudget, String> {
        if secs.is_finite() && secs > 0.0 && secs <= MAX_TIME_BUDGET_SECS {
            Ok(TimeBudget { secs })
        } else {
            Err(format!(
                "{secs} s is not a time budget: it must be above 0 and at most 10000h"
            ))
        }
    }

    pub fn secs(self) -> f64 {
        self.secs
    }
}

impl FromStr for TimeBudget {
    type Err = String;
    fn from_str(text: &str) -> Result<TimeBudget, String> {
        let bad = || {
            format!(
                "{text:?} is not a duration: write a number with a unit, s, m or h (\"90s\", \"10m\", \"1h30m\")"
            )
        };
        let mut rest = text.trim();
        if rest.is_empty() {
            return Err(bad());
        }
        let mut secs = 0.0;
        while !rest.is_empty() {
            let number_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(bad)?;
            let value: f64 = rest[..number_len].parse().map_err(|_| bad())?;
            let unit = rest[number_len..].chars().next().ok_or_else(bad)?;
            secs += value
                * match unit {
                    's' => 1.0,
                    'm' => 60.0,
                    'h' => 3600.0,
                    _ => return Err(bad()),
                };
            rest = &rest[number_len + 1..];
        }
        TimeBudget::from_secs(secs).map_err(|e| format!("{text:?}: {e}"))
    }
}

impl TryFrom<String> for TimeBudget {
    type Error = String;
    fn try_from(text: String) -> Result<TimeBudget, String> {
        text.parse()
    }
}

impl From<TimeBudget> for String {
    fn from(budget: TimeBudget) -> String {
        budget.to_string()
    }
}

impl fmt::Display for TimeBudget {
    /// Whole hours and minutes as `2h`, `1h30m`, `10m`; anything else in seconds.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.secs;
        if secs.fract() != 0.0 || secs % 60.0 != 0.0 {
            return write!(f, "{secs}s");
        }
        let (hours, minutes) = ((secs / 3600.0).floor(), (secs % 3600.0) / 60.0);
        match (hours > 0.0, minutes > 0.0) {
            (true, true) => write!(f, "{hours}h{minutes}m"),
            (true, false) => write!(f, "{hours}h"),
            _ => write!(f, "{minutes}m"),
        }
    }
}

/// How far a run is, from 0 to 1: the larger of its share of the steps and of the time budget.
pub fn progress(
    steps_done: u64,
    max_iters: usize,
    elapsed_secs: f64,
    budget: Option<TimeBudget>,
) -> f64 {
    let by_steps = steps_done as f64 / max_iters.max(1) as f64;
    let by_time = budget.map_or(0.0, |b| elapsed_secs / b.secs());
    by_steps.max(by_time).clamp(0.0, 1.0)
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    pub peak: f64,
    pub min: f64,
    /// Steps of linear warmup.
    pub warmup: usize,
    /// `max_iters`: a step-limited run reaches `min` at this step.
    pub total: usize,
    /// The share of the run the `wsd` decays take at its end.
    pub decay_fraction: f64,
}

impl LrSchedule {
    /// The learning rate of optimizer step `step` (counted from 0), taken at `progress` (see
    /// [`progress`]; for a run without a time budget, `step / total`).
    pub fn at(&self, step: usize, progress: f64) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / (self.warmup + 1) as f64;
        }
        let progress = progress.clamp(0.0, 1.0);
        let span = self.peak - self.min;
        match self.kind {
            ScheduleKind::Cosine => {
                // Measured from the end of the warmup, so a run without a time budget decays
                // over steps warmup..total exactly as nanoGPT does.
                let warmed = (self.warmup as f64 / self.total.max(1) as f64).min(1.0);
                if warmed >= 1.0 {
                    return self.min;
                }
                let t = ((progress - warmed) / (1.0 - warmed)).clamp(0.0, 1.0);
                self.min + 0.5 * (1.0 + (PI * t).cos()) * span
            }
            ScheduleKind::Wsd | ScheduleKind::WsdSqrt => {
                let decay_start = 1.0 - self.decay_fraction;
                if progress <= decay_start {
                    return self.peak;
                }
                let t = ((progress - decay_start) / self.decay_fraction).min(1.0);
                let left = match self.kind {
                    ScheduleKind::Wsd => 1.0 - t,
                    _ => 1.0 - t.sqrt(),
                };
                self.min + left * span
            }
        }
    }

    /// The learning rate of step `step` of a run limited by steps only.
    pub fn at_step(&self, step: usize) -> f64 {
        self.at(step, step as f64 / self.total.max(1) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(peak: f64, min: f64, warmup: usize, total: usize) -> LrSchedule {
        LrSchedule {
            kind: ScheduleKind::Cosine,
            peak,
            min,
            warmup,
            total,
            decay_fraction: 0.2,
        }
    }

    #[test]
    fn warms_up_linearly_then_decays_to_the_minimum() {
        let s = cosine(1e-3, 1e-4, 9, 109);
        assert!((s.at_step(0) - 1e-4).abs() < 1e-12);
        assert!((s.at_step(4) - 5e-4).abs() < 1e-12);
        assert!(
            (s.at_step(9) - 1e-3).abs() < 1e-12,
            "the peak right after warmup"
        );
        assert!(
            (s.at_step(59) - 5.5e-4).abs() < 1e-12,
            "halfway down the cosine"
        );
        assert!((s.at_step(109) - 1e-4).abs() < 1e-12);
        assert_eq!(s.at_step(500), 1e-4);
        for step in 9..108 {
            assert!(
                s.at_step(step + 1) <= s.at_step(step),
                "decays monotonically"
            );
        }
    }

    #[test]
    fn no_warmup_starts_at_the_peak() {
        let s = cosine(2.0, 0.0, 0, 4);
        assert_eq!(s.at_step(0), 2.0);
        assert!((s.at_step(2) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn time_progress_drives_the_decay_when_it_is_ahead() {
        let budget = TimeBudget::from_secs(100.0).unwrap();
        // 10 of 1000 steps, but 50 of 100 seconds: half way.
        assert_eq!(progress(10, 1000, 50.0, Some(budget)), 0.5);
        assert_eq!(progress(900, 1000, 50.0, Some(budget)), 0.9);
        assert_eq!(progress(10, 1000, 500.0, Some(budget)), 1.0);
        assert_eq!(progress(10, 1000, 50.0, None), 0.01);
        let s = cosine(1.0, 0.0, 0, 1000);
        assert!((s.at(10, 0.5) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn wsd_holds_the_peak_then_decays_over_the_last_fraction() {
        let s = LrSchedule {
            kind: ScheduleKind::Wsd,
            peak: 1.0,
            min: 0.1,
            warmup: 2,
            total: 100,
            decay_fraction: 0.2,
        };
        assert!((s.at(0, 0.0) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.at(5, 0.5), 1.0);
        assert_eq!(s.at(80, 0.8), 1.0);
        assert!((s.at(90, 0.9) - 0.55).abs() < 1e-12, "half way down");
        assert!((s.at(100, 1.0) - 0.1).abs() < 1e-12);
        let sqrt = LrSchedule {
            kind: ScheduleKind::WsdSqrt,
            ..s
        };
        assert_eq!(sqrt.at(80, 0.8), 1.0);
        assert!((sqrt.at(85, 0.85) - (0.1 + 0.9 * 0.5)).abs() < 1e-12);
        assert!((sqrt.at(100, 1.0) - 0.1).abs() < 1e-12);
        assert!(
            sqrt.at(90, 0.9) < s.at(90, 0.9),
            "1 - sqrt decays faster at first"
        );
    }

    #[test]
    fn min_lr_is_a_value_or_a_percentage_of_the_peak() {
        let value: MinLr = serde_json::from_str("1e-4").unwrap();
        assert_eq!(value.resolve(1e-3), 1e-4);
        let fraction: MinLr = serde_json::from_str("\"10%\"").unwrap();
        assert!((fraction.resolve(2e-3) - 2e-4).abs() < 1e-15);
        assert_eq!(serde_json::to_string(&fraction).unwrap(), "\"10%\"");
        assert_eq!(serde_json::to_string(&value).unwrap(), "0.0001");
        assert!(serde_json::from_str::<MinLr>("\"110%\"").is_err());
        assert!(serde_json::from_str::<MinLr>("\"ten\"").is_err());
    }

    #[test]
    fn durations_parse_and_print_back() {
        for (text, secs, shown) in [
            ("10m", 600.0, "10m"),
            ("2h", 7200.0, "2h"),
            ("1h30m", 5400.0, "1h30m"),
            ("1.5h", 5400.0, "1h30m"),
            ("90s", 90.0, "90s"),
            ("0.5s", 0.5, "0.5s"),
        ] {
            let budget: TimeBudget = text.parse().unwrap();
            assert_eq!(budget.secs(), secs, "{text}");
            assert_eq!(budget.to_string(), shown);
            assert_eq!(shown.parse::<TimeBudget>().unwrap(), budget);
        }
        for bad in ["", "10", "m", "10x", "0m", "-5m", "1e9h", "10m5"] {
            assert!(bad.parse::<TimeBudget>().is_err(), "{bad:?} was accepted");
        }
    }
}
