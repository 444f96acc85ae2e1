//! RLOO (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for
//! Learning from Human Feedback in LLMs"), as TRL's `RLOOTrainer` runs it: `k` responses per
//! prompt, each response's reward (`score·w − β·Σ KL`) minus the mean reward of the other `k − 1`
//! as its advantage, no value head, and PPO's clipped loss on the ratio of whole-response
//! probabilities over several epochs of minibatches.

use std::path::Path;

use candle_core::D;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::rl::advantages::{leave_one_out_baselines, whiten};
use crate::rl::config::{check_counts, check_ranges, AlgorithmParams};
use crate::rl::losses::clipped_policy_loss;
use crate::rl::rollout::TokenScores;
use crate::rl::runner::{padded, total, Algorithm, Experience, LossOutput};
use crate::TrainError;

/// The `[algorithm]` table of `rlxf train rloo`. Defaults are TRL's `RLOOConfig` (v0.11 to
/// v0.15, the REINFORCE-style trainer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rloo {
    /// Responses per prompt (TRL `rloo_k`: 2).
    pub k: usize,
    /// Passes over each rollout batch (TRL `num_ppo_epochs`: 4).
    pub epochs: usize,
    /// Minibatches per pass (TRL `num_mini_batches`: 1).
    pub minibatches: usize,
    /// Clip ε of the response-level ratio (TRL `cliprange`: 0.2).
    pub cliprange: f64,
    /// Whiten advantages over the batch (TRL `normalize_advantage`: off).
    pub normalize_advantages: bool,
}

impl Default for Rloo {
    fn default() -> Self {
        Self {
            k: 2,
            epochs: 4,
            minibatches: 1,
            cliprange: 0.2,
            normalize_advantages: false,
        }
    }
}

impl AlgorithmParams for Rloo {
    const NAME: &'static str = "rloo";
    /// TRL `RLOOConfig.learning_rate`.
    const DEFAULT_LR: f64 = 3e-6;

    fn validate(&self, origin: &Path) -> Result<()> {
        if self.k < 2 {
            return Err(TrainError::InvalidConfig {
                path: origin.to_path_buf(),
                field: "algorithm.k".into(),
                reason: "the leave-one-out baseline needs at least 2 responses per prompt".into(),
            });
        }
        check_counts(
            origin,
            &[("epochs", self.epochs), ("minibatches", self.minibatches)],
        )?;
        check_ranges(origin, &[("cliprange", self.cliprange, 0.0..=1.0)])
    }
}

impl Algorithm for Rloo {
    fn samples_per_prompt(&self) -> usize {
        self.k
    }

    fn uses_value_head(&self) -> bool {
        false
    }

    fn epochs(&self) -> usize {
        self.epochs
    }

    fn minibatches(&self) -> usize {
        self.minibatches
    }

    fn prepare(&self, experiences: &mut [Experience]) -> Result<()> {
        let rewards: Vec<f64> = experiences.iter().map(|e| e.rewards.iter().sum()).collect();
        let baselines = leave_one_out_baselines(&rewards, self.k);
        let mut advantages: Vec<f64> = rewards
            .iter()
            .zip(&baselines)
            .map(|(reward, baseline)| reward - baseline)
            .collect();
        if self.normalize_advantages {
            whiten(&mut advantages, true);
        }
        for (experience, advantage) in experiences.iter_mut().zip(advantages) {
            experience.advantages = vec![advantage];
        }
        Ok(())
    }

    fn loss_units(&self, experiences: &[&Experience]) -> f64 {
        experiences.len() as f64
    }

    fn loss(&self, scores: &TokenScores, experiences: &[&Experience]) -> Result<LossOutput> {
        let width = scores.mask.dim(1)?;
        let device = scores.mask.device();
        let old: Vec<&[f64]> = experiences
            .iter()
            .map(|e| e.sample.logprobs.as_slice())
            .collect();
        let old_logprobs = padded(&old, width, device)?;
        let logprob_diff = (&scores.logprobs - old_logprobs)?
            .mul(&scores.mask)?
            .sum(D::Minus1)?;
        let advantages: Vec<&[f64]> = experiences
            .iter()
            .map(|e| e.advantages.as_slice())
            .collect();
        let advantages = padded(&advantages, 1, device)?.squeeze(1)?;
        let policy = clipped_policy_loss(&logprob_diff, &advantages, self.cliprange)?;
        let policy_sum = policy.losses.sum_all()?;
        let metric_sums = vec![
            ("pg_loss", total(&policy_sum)?),
            ("clipfrac", total(&policy.clipped)?),
            ("approx_kl", 0.5 * total(&logprob_diff.detach().sqr()?)?),
        ];
        Ok(LossOutput {
            loss_sum: policy_sum,
            metric_sums,
        })
    }
}
