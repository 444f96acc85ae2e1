//! Losses on given log-probabilities and rewards. Each returns one loss per example so a trainer
//! can sum over micro-batches and divide by the size of the whole optimiser batch.

use candle_core::{DType, Tensor};
use rlxf_model::ContinuationLogProbs;

use crate::error::{Result, TrainError};

/// `log σ(x)` computed as `−(relu(−x) + log(1 + e^{−|x|}))`: no overflow for large `|x|`, and made
/// of ops candle differentiates.
pub fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let softplus_of_neg = (x.neg()?.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    Ok(softplus_of_neg.neg()?)
}

/// Cross-entropy of a logistic model `P(first preferred) = σ(z)` against a target probability
/// `q` of the first being preferred: `−(q·log σ(z) + (1 − q)·log σ(−z))`, per element. With `q = 1`
/// it is `−log σ(z)`. Uses `log σ(−z) = log σ(z) − z`.
pub fn soft_logistic_loss(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let targets = targets.to_dtype(logits.dtype())?;
    let one_minus_q = targets.affine(-1.0, 1.0)?;
    Ok((log_sigmoid(logits)?.neg()? + (one_minus_q * logits)?)?)
}

/// Checks a soft label lies in [0, 1].
pub fn check_label(label: f64, origin: &str, record: &str) -> Result<()> {
    if (0.0..=1.0).contains(&label) {
        Ok(())
    } else {
        Err(TrainError::InvalidRecord {
            origin: origin.to_string(),
            record: record.to_string(),
            field: "label".to_string(),
            reason: format!("soft label {label} is outside [0, 1]"),
        })
    }
}

/// Bradley–Terry reward-model loss per pair, `[batch]`. Without labels every pair's chosen reply
/// is preferred (`−log σ(r_c − r_r)`); with soft labels `p` (the probability the chosen reply is
/// better, as an AI labeler gives it) it is the cross-entropy against `p`, as in Lee et al. 2023
/// (RLAIF): `−(p·log σ(r_c − r_r) + (1 − p)·log σ(r_r − r_c))`.
pub fn bradley_terry_loss(
    chosen_rewards: &Tensor,
    rejected_rewards: &Tensor,
    soft_labels: Option<&Tensor>,
) -> Result<Tensor> {
    let margin = (chosen_rewards - rejected_rewards)?;
    match soft_labels {
        Some(labels) => soft_logistic_loss(&margin, labels),
        None => Ok(log_sigmoid(&margin)?.neg()?),
    }
}

/// DPO hyper-parameters (Rafailov et al. 2023; TRL `DPOConfig`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpoLossConfig {
    /// Strength of the implicit KL penalty; 0.1 in the paper and TRL.
    pub beta: f64,
    /// Conservative DPO (TRL `label_smoothing`): the probability that a pair's label is flipped.
    pub label_smoothing: f64,
}

impl Default for DpoLossConfig {
    fn default() -> Self {
        Self {
            beta: 0.1,
            label_smoothing: 0.0,
        }
    }
}

/// Per-pair DPO losses and the implicit rewards `β·(log π − log π_ref)`.
pub struct DpoLoss {
    /// `[batch]`, differentiable.
    pub losses: Tensor,
    /// `[batch]`, detached.
    pub chosen_rewards: Tensor,
    /// `[batch]`, detached.
    pub rejected_rewards: Tensor,
}

/// TRL `DPOTrainer.dpo_loss` with `loss_type="sigmoid"`, on sequence log-probabilities `[batch]`:
///
/// ```text
/// h    = (log π(c) − log π(r)) − (log π_ref(c) − log π_ref(r))
/// loss = −(1 − ε)·log σ(β·h) − ε·log σ(−β·h)
/// ```
///
/// Soft labels `p` (probability the chosen reply is better) generalise the hard label 1: the
/// target becomes `q = p·(1 − ε) + (1 − p)·ε`, which is TRL's loss when `p = 1`.
pub fn dpo_loss(
    policy_chosen: &Tensor,
    policy_rejected: &Tensor,
    reference_chosen: &Tensor,
    reference_rejected: &Tensor,
    config: DpoLossConfig,
    soft_labels: Option<&Tensor>,
) -> Result<DpoLoss> {
    let policy_margin = (policy_chosen - policy_rejected)?;
    let reference_margin = (reference_chosen - reference_rejected)?;
    let logits = ((policy_margin - reference_margin)? * config.beta)?;
    let eps = config.label_smoothing;
    let targets = match soft_labels {
        Some(labels) => labels
            .to_dtype(logits.dtype())?
            .affine(1.0 - 2.0 * eps, eps)?,
        None => {
            Tensor::full(1.0 - eps, logits.dims(), logits.device())?.to_dtype(logits.dtype())?
        }
    };
    let losses = soft_logistic_loss(&logits, &targets)?;
    let chosen_rewards = ((policy_chosen - reference_chosen)? * config.beta)?.detach();
    let rejected_rewards = ((policy_rejected - reference_rejected)? * config.beta)?.detach();
    Ok(DpoLoss {
        losses,
        chosen_rewards,
        rejected_rewards,
    })
}

/// Summary statistics of paired scores (implicit DPO rewards or reward-model scores).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PairStats {
    pub pairs: usize,
    /// Fraction of pairs whose chosen score is strictly higher.
    pub accuracy: f64,
    pub mean_chosen: f64,
    pub mean_rejected: f64,
    /// Mean of `chosen − rejected`.
    pub mean_margin: f64,
    /// Standard deviation of the margins (population).
    pub margin_std: f64,
}

impl PairStats {
    pub fn of(chosen: &[f64], rejected: &[f64]) -> Self {
        let pairs = chosen.len().min(rejected.len());
        if pairs == 0 {
            return Self::default();
        }
        let n = pairs as f64;
        let margins: Vec<f64> = chosen.iter().zip(rejected).map(|(c, r)| c - r).collect();
        let mean_margin = margins.iter().sum::<f64>() / n;
        let variance = margins
            .iter()
            .map(|m| (m - mean_margin).powi(2))
            .sum::<f64>()
            / n;
        Self {
            pairs,
            accuracy: margins.iter().filter(|&&m| m > 0.0).count() as f64 / n,
            mean_chosen: chosen[..pairs].iter().sum::<f64>() / n,
            mean_rejected: rejected[..pairs].iter().sum::<f64>() / n,
            mean_margin,
            margin_std: variance.sqrt(),
        }
    }
}

/// Summed negative log-likelihood of the continuation tokens (prompt tokens never enter
/// [`ContinuationLogProbs`]), a scalar; divide by the batch's token count for the mean.
pub fn sft_loss_sum(logprobs: &ContinuationLogProbs) -> Result<Tensor> {
    Ok(logprobs.logprobs.sum_all()?.neg()?)
}

/// A tensor's values as f64s (for metrics).
pub fn to_f64s(tensor: &Tensor) -> Result<Vec<f64>> {
    Ok(tensor.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?)
}
