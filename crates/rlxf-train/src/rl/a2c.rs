//! A2C: REINFORCE with a learned value baseline, the algorithm Lee et al. 2023 ("RLAIF vs.
//! RLHF", §2.4) train their policies with. Per token, the advantage is the Monte-Carlo return
//! (`−β·KL` per token plus the score at the end, discounted by γ) minus the value head's
//! estimate before the token; the policy loss is `−A_t·log π(y_t)`, the value head regresses the
//! return, and each rollout batch gets one update (on-policy, so no ratio or clipping).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::rl::advantages::discounted_returns;
use crate::rl::config::{check_ranges, AlgorithmParams};
use crate::rl::rollout::TokenScores;
use crate::rl::runner::{
    set_advantages, token_count, total, Algorithm, Experience, LossOutput, TokenTargets,
};

/// The `[algorithm]` table of `rlxf train a2c`. Lee et al. do not publish these settings; the
/// defaults are stable-baselines3's `A2C` (value-loss weight 0.5, no advantage normalisation)
/// with γ = 1 as for PPO on text (a reply is one episode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct A2c {
    /// Weight of the value loss `½·(V − G)²` (stable-baselines3 `vf_coef`: 0.5).
    pub vf_coef: f64,
    /// Discount of the per-token rewards.
    pub gamma: f64,
    /// Whiten advantages over the batch's tokens (stable-baselines3 `normalize_advantage`: off).
    pub whiten_advantages: bool,
}

impl Default for A2c {
    fn default() -> Self {
        Self {
            vf_coef: 0.5,
            gamma: 1.0,
            whiten_advantages: false,
        }
    }
}

impl AlgorithmParams for A2c {
    const NAME: &'static str = "a2c";
    /// TRL's PPO rate: RL fine-tuning of a language model wants rates far below SFT's.
    const DEFAULT_LR: f64 = 3e-6;

    fn validate(&self, origin: &Path) -> Result<()> {
        check_ranges(
            origin,
            &[
                ("vf_coef", self.vf_coef, 0.0..=f64::MAX),
                ("gamma", self.gamma, 0.0..=1.0),
            ],
        )
    }
}

impl Algorithm for A2c {
    fn samples_per_prompt(&self) -> usize {
        1
    }

    fn uses_value_head(&self) -> bool {
        true
    }

    fn epochs(&self) -> usize {
        1
    }

    fn minibatches(&self) -> usize {
        1
    }

    fn prepare(&self, experiences: &mut [Experience]) -> Result<()> {
        set_advantages(experiences, self.whiten_advantages, |experience| {
            let returns = discounted_returns(&experience.rewards, self.gamma);
            let advantages = returns
                .iter()
                .zip(&experience.sample.values)
                .map(|(g, v)| g - v)
                .collect();
            (advantages, returns)
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
            .ok_or_else(|| TrainError::InvalidInput("A2C needs the value head".into()))?;
        let policy_sum = (targets.advantages.neg()? * &scores.logprobs)?
            .mul(mask)?
            .sum_all()?;
        let value_sum = ((values - &targets.returns)?.sqr()? * 0.5)?
            .mul(mask)?
            .sum_all()?;
        let metric_sums = vec![
            ("pg_loss", total(&policy_sum)?),
            ("vf_loss", total(&value_sum)?),
        ];
        Ok(LossOutput {
            loss_sum: (policy_sum + (value_sum * self.vf_coef)?)?,
            metric_sums,
        })
    }
}
