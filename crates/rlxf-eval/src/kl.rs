//! KL divergence of a policy from a reference model (usually the SFT model) on the policy's own
//! responses, from per-token log-probabilities.
//!
//! For a response `y` sampled from the policy `π` given prompt `x`, with per-token log-ratios
//! `r_t = log π(y_t | x, y_<t) - log π_ref(y_t | x, y_<t)`:
//!
//! * `sequence_kl = Σ_t r_t` is the unbiased single-sample estimate of `KL(π(·|x) || π_ref(·|x))`
//!   (the quantity the RLHF objective penalises);
//! * `mean_token_kl = sequence_kl / T`, the per-token rate, comparable across lengths;
//! * `mean_token_k3 = mean_t(exp(-r_t) - 1 + r_t)`, Schulman's "k3" estimator (2020, "Approximating
//!   KL Divergence"), non-negative per token and lower-variance, also unbiased per token under
//!   sampling from `π`.
//!
//! Averaging `sequence_kl` over prompts estimates the expected KL; single values may be negative.

use std::collections::HashMap;

use rlxf_model::{continuation_logprobs_vec, CausalLm, Padding};
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};
use crate::metric::{MetricInfo, MetricKind, PrecomputedMetric, ResponseRecord};

/// KL estimates for one response.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KlEstimate {
    /// Number of response tokens scored.
    pub tokens: usize,
    pub sequence_kl: f64,
    /// 0 for an empty response.
    pub mean_token_kl: f64,
    /// 0 for an empty response.
    pub mean_token_k3: f64,
}

/// The estimates from the two models' log-probabilities of the same response tokens.
pub fn kl_from_logprobs(policy: &[f32], reference: &[f32]) -> Result<KlEstimate> {
    if policy.len() != reference.len() {
        return Err(EvalError::invalid_argument(
            "reference",
            format!(
                "{} policy log-probs but {} reference log-probs for the same response",
                policy.len(),
                reference.len()
            ),
        ));
    }
    let mut sequence_kl = 0.0;
    let mut k3_sum = 0.0;
    for (&p, &q) in policy.iter().zip(reference) {
        let ratio = f64::from(p) - f64::from(q);
        if !ratio.is_finite() {
            return Err(EvalError::invalid_argument(
                "logprobs",
                format!("log-probs {p} and {q} give a non-finite log-ratio"),
            ));
        }
        sequence_kl += ratio;
        k3_sum += (-ratio).exp() - 1.0 + ratio;
    }
    let tokens = policy.len();
    let per_token = |sum: f64| {
        if tokens == 0 {
            0.0
        } else {
            sum / tokens as f64
        }
    };
    Ok(KlEstimate {
        tokens,
        sequence_kl,
        mean_token_kl: per_token(sequence_kl),
        mean_token_k3: per_token(k3_sum),
    })
}

/// Runs both models over `prompts[i] ++ responses[i]` (token ids, as the policy generated them) in
/// batches of `batch_size` and returns one estimate per response. Empty responses score 0 with 0
/// tokens; both models must share the tokenizer.
pub fn kl_to_reference(
    policy: &dyn CausalLm,
    reference: &dyn CausalLm,
    prompts: &[Vec<u32>],
    responses: &[Vec<u32>],
    batch_size: usize,
) -> Result<Vec<KlEstimate>> {
    if prompts.len() != responses.len() {
        return Err(EvalError::invalid_argument(
            "responses",
            format!(
                "{} prompts but {} responses",
                prompts.len(),
                responses.len()
            ),
        ));
    }
    if batch_size == 0 {
        return Err(EvalError::invalid_argument(
            "batch_size",
            "must be at least 1",
        ));
    }
    if policy.vocab_size() != reference.vocab_size() {
        return Err(EvalError::invalid_argument(
            "reference",
            format!(
                "the policy has {} vocabulary entries and the reference {}; KL needs one tokenizer",
                policy.vocab_size(),
                reference.vocab_size()
            ),
        ));
    }
    let mut estimates = Vec::with_capacity(prompts.len());
    for (batch_prompts, batch_responses) in
        prompts.chunks(batch_size).zip(responses.chunks(batch_size))
    {
        // Empty responses have nothing to score and would only widen the batch.
        let scored: Vec<usize> = (0..batch_prompts.len())
            .filter(|&i| !batch_responses[i].is_empty())
            .collect();
        let mut batch_estimates = vec![kl_from_logprobs(&[], &[])?; batch_prompts.len()];
        if !scored.is_empty() {
            let pick =
                |rows: &[Vec<u32>]| scored.iter().map(|&i| rows[i].clone()).collect::<Vec<_>>();
            let (scored_prompts, scored_responses) = (pick(batch_prompts), pick(batch_responses));
            let policy_logprobs = continuation_logprobs_vec(
                policy,
                &scored_prompts,
                &scored_responses,
                Padding::Left,
            )?;
            let reference_logprobs = continuation_logprobs_vec(
                reference,
                &scored_prompts,
                &scored_responses,
                Padding::Left,
            )?;
            for ((&row, p), q) in scored.iter().zip(&policy_logprobs).zip(&reference_logprobs) {
                batch_estimates[row] = kl_from_logprobs(p, q)?;
            }
        }
        estimates.extend(batch_estimates);
    }
    Ok(estimates)
}

/// The sequence KL of each record's response as a metric (`kl_to_reference`) for the
/// [`crate::Evaluator`]; `estimates[i]` belongs to `records[i]`. Every record must have one.
pub fn kl_metric(
    records: &[ResponseRecord],
    estimates: &[KlEstimate],
) -> Result<PrecomputedMetric> {
    if records.len() != estimates.len() {
        return Err(EvalError::invalid_argument(
            "estimates",
            format!(
                "{} records but {} KL estimates",
                records.len(),
                estimates.len()
            ),
        ));
    }
    let values: HashMap<(String, String), f64> = records
        .iter()
        .zip(estimates)
        .map(|(record, estimate)| {
            (
                (record.policy.clone(), record.prompt_id.clone()),
                estimate.sequence_kl,
            )
        })
        .collect();
    let info = MetricInfo {
        name: "kl_to_reference".into(),
        kind: MetricKind::Mean,
        description:
            "KL(policy || reference) of the reply, summed log-ratio over its tokens (nats)".into(),
        higher_is_better: None,
    };
    Ok(PrecomputedMetric::new(info, values, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_match_hand_computation() {
        // log-ratios 0.5 and -0.25: sum 0.25, mean 0.125,
        // k3 = ((e^-0.5 - 1 + 0.5) + (e^0.25 - 1 - 0.25)) / 2.
        let estimate = kl_from_logprobs(&[-1.0, -2.0], &[-1.5, -1.75]).unwrap();
        assert_eq!(estimate.tokens, 2);
        assert!((estimate.sequence_kl - 0.25).abs() < 1e-12);
        assert!((estimate.mean_token_kl - 0.125).abs() < 1e-12);
        let k3 = ((-0.5f64).exp() - 0.5 + (0.25f64).exp() - 1.25) / 2.0;
        assert!((estimate.mean_token_k3 - k3).abs() < 1e-12);
    }

    #[test]
    fn k3_is_non_negative_even_when_k1_is_negative() {
        let estimate = kl_from_logprobs(&[-3.0], &[-1.0]).unwrap();
        assert!(estimate.sequence_kl < 0.0);
        assert!(estimate.mean_token_k3 > 0.0);
    }

    #[test]
    fn mismatched_and_infinite_inputs_are_rejected() {
        assert!(kl_from_logprobs(&[-1.0], &[]).is_err());
        assert!(kl_from_logprobs(&[-1.0], &[f32::NEG_INFINITY]).is_err());
    }
}
