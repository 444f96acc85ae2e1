//! PPO for language models (Schulman et al. 2017; Ziegler et al. 2019; Ouyang et al. 2022), as
//! TRL's `PPOTrainer` runs it: a value head on the policy's hidden states, per-token rewards
//! (`−β·KL` at every token, the score at the last), GAE, whitened advantages, clipped policy and
//! value losses, several epochs of minibatches per rollout batch.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::rl::advantages::gae;
use crate::rl::config::{check_counts, check_ranges, AlgorithmParams};
use crate::rl::losses::{clipped_policy_loss, clipped_value_loss};
use crate::rl::rollout::TokenScores;
use crate::rl::runner::{
    set_advantages, token_count, total, Algorithm, Experience, LossOutput, TokenTargets,
};

/// The `[algorithm]` table of `rlxf train ppo`. Defaults are TRL's `PPOConfig` (v0.11 and
/// later; the same values as in its v0.4 `PPOConfig` and Ziegler et al.'s code).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ppo {
    /// Passes over each rollout batch (TRL `num_ppo_epochs`: 4).
    pub epochs: usize,
    /// Minibatches per pass, one optimiser update each (TRL `num_mini_batches`: 1).
    pub minibatches: usize,
    /// Policy ratio clip ε (TRL `cliprange`: 0.2).
    pub cliprange: f64,
    /// Value clip around the rollout's values (TRL `cliprange_value`: 0.2).
    pub cliprange_value: f64,
    /// Weight of the value loss (TRL `vf_coef`: 0.1).
    pub vf_coef: f64,
    /// Discount (TRL `gamma`: 1).
    pub gamma: f64,
    /// GAE λ (TRL `lam`: 0.95).
    pub lam: f64,
    /// Whiten advantages over the batch's tokens (TRL always does).
    pub whiten_advantages: bool,
}

impl Default for Ppo {
    fn default() -> Self {
        Self {
            epochs: 4,
            minibatches: 1,
            cliprange: 0.2,
            cliprange_value: 0.2,
            vf_coef: 0.1,
            gamma: 1.0,
            lam: 0.95,
            whiten_advantages: true,
        }
    }
}

impl AlgorithmParams for Ppo {
    const NAME: &'static str = "ppo";
    /// TRL `PPOConfig.learning_rate`.
    const DEFAULT_LR: f64 = 3e-6;

    fn validate(&self, origin: &Path) -> Result<()> {
        check_counts(
            origin,
            &[("epochs", self.epochs), ("minibatches", self.minibatches)],
        )?;
        check_ranges(
            origin,
            &[
                ("cliprange", self.cliprange, 0.0..=1.0),
                ("cliprange_value", self.cliprange_value, 0.0..=f64::MAX),
                ("vf_coef", self.vf_coef, 0.0..=f64::MAX),
                ("gamma", self.gamma, 0.0..=1.0),
                ("lam", self.lam, 0.0..=1.0),
            ],
        )
    }
}

impl Algorithm for Ppo {
    fn samples_per_prompt(&self) -> usize {
        1
    }

    fn uses_value_head(&self) -> bool {
        true
    }

    fn epochs(&self) -> usize {
        self.epochs
    }

    fn minibatches(&self) -> usize {
        self.minibatches
    }

    fn prepare(&self, experiences: &mut [Experience]) -> Result<()> {
        set_advantages(experiences, self.whiten_advantages, |experience| {
            gae(
                &experience.rewards,
                &experience.sample.values,
                self.gamma,
                self.lam,
            )
        });
        Ok(())
    }

    fn loss_units(&self, experiences: &[&Experience]) -> f64 {
        token_count(experiences)
    }

    fn loss(&self, scores: &TokenScores, experiences: &[&Experience]) -> Result<LossOutput> {
        let targets = TokenTargets::new(scores, experiences)?;
        let mask = &scores.mask;
        let values = scores
            .values
            .as_ref()
            .ok_or_else(|| TrainError::InvalidInput("PPO needs the value head".into()))?;
        let logprob_diff = (&scores.logprobs - &targets.old_logprobs)?;
        let policy = clipped_policy_loss(&logprob_diff, &targets.advantages, self.cliprange)?;
        let value = clipped_value_loss(
            values,
            &targets.old_values,
            &targets.returns,
            self.cliprange_value,
        )?;
        let policy_sum = (policy.losses * mask)?.sum_all()?;
        let value_sum = (value.losses * mask)?.sum_all()?;
        let approx_kl = (logprob_diff.detach().sqr()? * mask)?;
        let metric_sums = vec![
            ("pg_loss", total(&policy_sum)?),
            ("vf_loss", total(&value_sum)?),
            ("clipfrac", total(&(policy.clipped * mask)?)?),
            ("vf_clipfrac", total(&(value.clipped * mask)?)?),
            ("approx_kl", 0.5 * total(&approx_kl)?),
        ];
        Ok(LossOutput {
            loss_sum: (policy_sum + (value_sum * self.vf_coef)?)?,
            metric_sums,
        })
    }
}
