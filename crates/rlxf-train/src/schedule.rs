//! Learning-rate schedules: linear warmup, then constant, linear or cosine decay, as Hugging Face
//! `get_scheduler` ("constant_with_warmup", "linear", "cosine") defines them.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decay {
    /// Stay at the peak learning rate after warmup.
    Constant,
    /// Fall linearly to 0 at the last step (HF's default, used by TRL).
    Linear,
    /// Half a cosine from the peak to 0 at the last step.
    Cosine,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub peak_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub decay: Decay,
}

impl Schedule {
    /// The learning rate of optimiser step `step` (0-based): HF's `LambdaLR` multiplier times the
    /// peak, evaluated before the step as HF's scheduler does.
    pub fn lr(&self, step: u64) -> f64 {
        let step = step as f64;
        let warmup = self.warmup_steps as f64;
        if step < warmup {
            return self.peak_lr * step / warmup.max(1.0);
        }
        let decay_steps = (self.total_steps as f64 - warmup).max(1.0);
        let progress = (step - warmup) / decay_steps;
        let factor = match self.decay {
            Decay::Constant => 1.0,
            Decay::Linear => (1.0 - progress).max(0.0),
            Decay::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
        };
        self.peak_lr * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(decay: Decay) -> Schedule {
        Schedule {
            peak_lr: 1e-3,
            warmup_steps: 4,
            total_steps: 14,
            decay,
        }
    }

    #[test]
    fn warmup_rises_linearly_from_zero() {
        for decay in [Decay::Constant, Decay::Linear, Decay::Cosine] {
            let s = schedule(decay);
            let expected = [0.0, 2.5e-4, 5e-4, 7.5e-4, 1e-3];
            for (step, want) in expected.iter().enumerate() {
                assert!(
                    (s.lr(step as u64) - want).abs() < 1e-15,
                    "{decay:?} step {step}"
                );
            }
        }
    }

    #[test]
    fn decays_match_hand_computed_values() {
        // 10 decay steps after warmup: progress at step 4 + k is k / 10.
        let linear = schedule(Decay::Linear);
        assert!((linear.lr(9) - 0.5e-3).abs() < 1e-15);
        assert!((linear.lr(11) - 0.3e-3).abs() < 1e-15);
        assert_eq!(linear.lr(14), 0.0);
        assert_eq!(linear.lr(20), 0.0);
        let cosine = schedule(Decay::Cosine);
        // progress 0.5: (1 + cos(pi/2)) / 2 = 0.5; progress 0.25: (1 + sqrt(2)/2) / 2.
        assert!((cosine.lr(9) - 0.5e-3).abs() < 1e-15);
        let quarter = 1e-3 * (1.0 + std::f64::consts::FRAC_1_SQRT_2) / 2.0;
        let cosine_20 = Schedule {
            total_steps: 24,
            ..cosine
        };
        assert!((cosine_20.lr(9) - quarter).abs() < 1e-15);
        assert!(cosine.lr(14).abs() < 1e-18);
        assert_eq!(schedule(Decay::Constant).lr(13), 1e-3);
    }

    #[test]
    fn no_warmup_starts_at_the_peak() {
        let s = Schedule {
            warmup_steps: 0,
            ..schedule(Decay::Linear)
        };
        assert_eq!(s.lr(0), 1e-3);
        assert!((s.lr(7) - 0.5e-3).abs() < 1e-15);
    }
}
