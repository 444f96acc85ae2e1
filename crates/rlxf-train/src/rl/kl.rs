//! The KL leash to the reference (SFT) model: per-token KL estimates, how the reward and the KL
//! penalty combine into per-token rewards, and the adaptive KL controller.
//!
//! For a response sampled from the policy π, with per-token log-ratio
//! `r_t = log π(y_t | ·) − log π_ref(y_t | ·)`, the penalty uses one of Schulman's estimators
//! ("Approximating KL Divergence", 2020), both unbiased for the token's KL under sampling from π:
//! `k1 = r_t` (TRL's default; a single value may be negative) and `k3 = e^{−r_t} − 1 + r_t`
//! (never negative, lower variance).

use serde::{Deserialize, Serialize};

/// Which per-token estimator of `KL(π ‖ π_ref)` the penalty uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlEstimator {
    /// `log π − log π_ref` (TRL `kl_estimator="k1"`, the default).
    K1,
    /// `e^{−(log π − log π_ref)} − 1 + (log π − log π_ref)`.
    K3,
}

impl KlEstimator {
    pub fn estimate(self, policy_logprob: f64, reference_logprob: f64) -> f64 {
        let log_ratio = policy_logprob - reference_logprob;
        match self {
            KlEstimator::K1 => log_ratio,
            KlEstimator::K3 => (-log_ratio).exp() - 1.0 + log_ratio,
        }
    }
}

/// How the score and the KL penalty combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardForm {
    /// `(1 − β)·r − β·KL` (Lee et al. 2023, "RLAIF vs. RLHF", §2.4).
    Rlaif,
    /// `r − β·KL` (Ziegler et al. 2019; Ouyang et al. 2022, InstructGPT).
    Instructgpt,
}

impl RewardForm {
    /// The weight of the score in the objective.
    pub fn score_weight(self, beta: f64) -> f64 {
        match self {
            RewardForm::Rlaif => 1.0 - beta,
            RewardForm::Instructgpt => 1.0,
        }
    }
}

/// The `[kl]` table of an RL config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KlConfig {
    /// KL coefficient β (its starting value when the controller is on). Lee et al. 2023 and TRL
    /// `PPOConfig.kl_coef`: 0.05.
    pub beta: f64,
    pub form: RewardForm,
    pub estimator: KlEstimator,
    /// Adaptive controller (Ziegler et al. 2019): the per-response KL, in nats, β steers toward.
    /// Unset keeps β fixed. Ziegler et al. use 6 (TRL's old `PPOConfig.target`).
    pub target: Option<f64>,
    /// How fast the controller moves β: in responses, as in Ziegler et al. (10000).
    pub horizon: f64,
}

impl Default for KlConfig {
    fn default() -> Self {
        Self {
            beta: 0.05,
            form: RewardForm::Rlaif,
            estimator: KlEstimator::K1,
            target: None,
            horizon: 10_000.0,
        }
    }
}

/// Ziegler et al.'s adaptive KL controller (TRL `AdaptiveKLController`): after each batch of
/// `n` responses with mean KL `kl`, `β ← β·(1 + clip(kl/target − 1, −0.2, 0.2)·n/horizon)`.
/// Without a target β stays fixed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KlController {
    pub beta: f64,
    pub target: Option<f64>,
    pub horizon: f64,
}

impl KlController {
    pub fn new(config: &KlConfig) -> Self {
        Self {
            beta: config.beta,
            target: config.target,
            horizon: config.horizon,
        }
    }

    pub fn update(&mut self, mean_kl: f64, responses: usize) {
        if let Some(target) = self.target {
            let error = (mean_kl / target - 1.0).clamp(-0.2, 0.2);
            self.beta *= 1.0 + error * responses as f64 / self.horizon;
        }
    }
}

/// Per-token rewards of one response: `−β·kl_t` at every token, plus the weighted score at the
/// last token (where the reward model or labeler judged the whole reply).
pub fn token_rewards(score: f64, token_kl: &[f64], beta: f64, form: RewardForm) -> Vec<f64> {
    let mut rewards: Vec<f64> = token_kl.iter().map(|kl| -beta * kl).collect();
    if let Some(last) = rewards.last_mut() {
        *last += form.score_weight(beta) * score;
    }
    rewards
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logs of a distribution over a small vocabulary.
    fn logs(probs: &[f64]) -> Vec<f64> {
        probs.iter().map(|p| p.ln()).collect()
    }

    /// The estimators' expectations under π, computed exactly by weighting each token with its
    /// probability, equal the exact KL `Σ π log(π/π_ref)`.
    #[test]
    fn estimators_are_unbiased_for_the_exact_kl_on_a_small_vocabulary() {
        let policy: [f64; 5] = [0.5, 0.2, 0.15, 0.1, 0.05];
        let reference: [f64; 5] = [0.1, 0.3, 0.2, 0.25, 0.15];
        let exact: f64 = policy
            .iter()
            .zip(&reference)
            .map(|(p, q)| p * (p / q).ln())
            .sum();
        for estimator in [KlEstimator::K1, KlEstimator::K3] {
            let expectation: f64 = policy
                .iter()
                .zip(logs(&policy).iter().zip(logs(&reference)))
                .map(|(p, (lp, lq))| p * estimator.estimate(*lp, lq))
                .sum();
            assert!((expectation - exact).abs() < 1e-12, "{estimator:?}");
        }
        // k3 is never negative, k1 is where the reference is more likely.
        assert!(KlEstimator::K3.estimate(0.1f64.ln(), 0.3f64.ln()) > 0.0);
        assert!(KlEstimator::K1.estimate(0.1f64.ln(), 0.3f64.ln()) < 0.0);
    }

    #[test]
    fn token_rewards_by_hand() {
        let kl = [0.2, -0.1, 0.4];
        // Lee et al.: (1 − 0.1)·2 at the last token.
        let rewards = token_rewards(2.0, &kl, 0.1, RewardForm::Rlaif);
        let expected = [-0.02, 0.01, -0.04 + 1.8];
        for (got, want) in rewards.iter().zip(expected) {
            assert!((got - want).abs() < 1e-12, "{rewards:?}");
        }
        let rewards = token_rewards(2.0, &kl, 0.1, RewardForm::Instructgpt);
        assert!((rewards[2] - (2.0 - 0.04)).abs() < 1e-12);
        assert!(token_rewards(1.0, &[], 0.1, RewardForm::Rlaif).is_empty());
    }

    #[test]
    fn adaptive_controller_by_hand() {
        let config = KlConfig {
            beta: 0.1,
            target: Some(6.0),
            horizon: 100.0,
            ..KlConfig::default()
        };
        let mut controller = KlController::new(&config);
        // KL 9 vs target 6: error 0.5 clipped to 0.2; 10 responses of a horizon of 100.
        controller.update(9.0, 10);
        assert!((controller.beta - 0.1 * 1.02).abs() < 1e-15);
        // KL 5.4: error −0.1.
        controller.update(5.4, 10);
        assert!((controller.beta - 0.1 * 1.02 * 0.99).abs() < 1e-15);
        let mut fixed = KlController::new(&KlConfig::default());
        fixed.update(100.0, 10);
        assert_eq!(fixed.beta, 0.05);
    }
}
