//! Learning-rate schedules, stepped every optimizer iteration. A schedule gives a factor in `[0, 1]`
//! that multiplies every parameter group's base learning rate (so the groups keep their ratios).
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A per-iteration learning-rate schedule.
///
/// Iterations are 0-based optimizer steps. Warmup follows the reference's scheduler (`WarmupLR` with
/// power 1 and a start of 0): during the first `warmup` iterations the factor is `i / warmup`, so the
/// very first step runs at 0.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LrSchedule {
    /// A constant factor of 1.
    Constant,
    /// Linear warmup, then cosine from 1 to 0 at iteration `total` (ActionCLIP's `cosine` policy).
    WarmupCosine {
        /// Warmup iterations.
        warmup: usize,
        /// Total iterations of the run.
        total: usize,
    },
    /// Linear warmup, then a step decay: the factor is multiplied by `gamma` at each milestone
    /// (ActionCLIP's `multistep` policy).
    WarmupMultiStep {
        /// Warmup iterations.
        warmup: usize,
        /// Iterations at which the factor drops, ascending.
        milestones: Vec<usize>,
        /// The drop factor (the reference uses 0.1).
        gamma: f64,
    },
}

impl LrSchedule {
    /// Checks the schedule's parameters.
    pub fn validate(&self) -> Result<()> {
        match self {
            LrSchedule::Constant => Ok(()),
            LrSchedule::WarmupCosine { warmup, total } => {
                if *total == 0 || warmup > total {
                    return Err(Error::Config(format!(
                        "warmup-cosine schedule needs 0 <= warmup ({warmup}) <= total ({total}) and total > 0"
                    )));
                }
                Ok(())
            }
            LrSchedule::WarmupMultiStep { milestones, gamma, .. } => {
                if milestones.windows(2).any(|w| w[0] > w[1]) {
                    return Err(Error::Config(format!("multistep milestones {milestones:?} are not ascending")));
                }
                if !(gamma.is_finite() && *gamma > 0.0) {
                    return Err(Error::Config(format!("multistep gamma {gamma} must be positive")));
                }
                Ok(())
            }
        }
    }

    /// The factor at 0-based iteration `iter`.
    pub fn factor(&self, iter: usize) -> f64 {
        match self {
            LrSchedule::Constant => 1.0,
            LrSchedule::WarmupCosine { warmup, total } => {
                if iter < *warmup {
                    iter as f64 / *warmup as f64
                } else if iter >= *total {
                    0.0
                } else {
                    let span = (*total - *warmup) as f64;
                    let t = (iter - *warmup) as f64 / span;
                    0.5 * (1.0 + (std::f64::consts::PI * t).cos())
                }
            }
            LrSchedule::WarmupMultiStep { warmup, milestones, gamma } => {
                if iter < *warmup {
                    iter as f64 / *warmup as f64
                } else {
                    let passed = milestones.iter().filter(|&&m| iter >= m).count();
                    gamma.powi(passed as i32)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_cosine_shape() {
        let s = LrSchedule::WarmupCosine { warmup: 4, total: 12 };
        let f: Vec<f64> = (0..13).map(|i| s.factor(i)).collect();
        assert_eq!(&f[..5], &[0.0, 0.25, 0.5, 0.75, 1.0]);
        assert!((f[8] - 0.5).abs() < 1e-12);
        assert!(f[11] > 0.0 && f[11] < 0.05);
        assert_eq!(f[12], 0.0);
        assert!(f[4..12].windows(2).all(|w| w[0] >= w[1]));
    }

    #[test]
    fn warmup_multistep_shape() {
        let s = LrSchedule::WarmupMultiStep { warmup: 2, milestones: vec![5, 8], gamma: 0.1 };
        let f: Vec<f64> = (0..10).map(|i| s.factor(i)).collect();
        assert_eq!(f[0], 0.0);
        assert_eq!(f[1], 0.5);
        assert_eq!(f[4], 1.0);
        assert!((f[5] - 0.1).abs() < 1e-15 && (f[9] - 0.01).abs() < 1e-15);
        assert!(LrSchedule::WarmupMultiStep { warmup: 0, milestones: vec![3, 1], gamma: 0.1 }.validate().is_err());
        assert!(LrSchedule::WarmupCosine { warmup: 5, total: 3 }.validate().is_err());
    }
}
