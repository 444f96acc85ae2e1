//! Rollouts: sample responses from the policy, then score every response token under the policy
//! (log-prob, entropy, value) and under the frozen reference model (log-prob).
//!
//! Log-probs are those of the temperature-scaled distribution `softmax(logits / T)` the tokens
//! were drawn from, for the policy and the reference alike (as TRL's `PPOTrainer` and
//! `RLOOTrainer` compute them): the policy gradient is then on-policy, and the KL penalty
//! compares the two models at the same temperature.
//!
//! A step's sampling is fixed by one seed (drawn by the caller from the run's rollout RNG, which
//! checkpoints store) and each response's key (its index in the step), so a resumed run samples
//! the same responses as an uninterrupted one.

use candle_core::{DType, Tensor, D};
use rlxf_model::{
    fused_ops, generate_keyed, CausalLm, ContinuationBatch, GenerationConfig, LoadedModel, Padding,
    ScalarHead, Tokenizer,
};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// The `[rollout]` table of an RL config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutConfig {
    /// Sampling temperature (Lee et al. 2023: 0.9).
    pub temperature: f64,
    /// Most tokens per response, EOS included (TRL `PPOConfig.response_length`: 53).
    pub max_new_tokens: usize,
    /// Prompts longer than this many tokens keep their end (the turn the reply answers).
    pub max_prompt_length: usize,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            temperature: 0.9,
            max_new_tokens: 53,
            max_prompt_length: 512,
        }
    }
}

impl RolloutConfig {
    pub fn validate(&self, origin: &std::path::Path, model_context: usize) -> Result<()> {
        let invalid = |field: &str, reason: String| TrainError::InvalidConfig {
            path: origin.to_path_buf(),
            field: format!("rollout.{field}"),
            reason,
        };
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(invalid(
                "temperature",
                "must be a positive number (policy-gradient methods need sampling)".into(),
            ));
        }
        if self.max_new_tokens == 0 {
            return Err(invalid("max_new_tokens", "must be at least 1".into()));
        }
        if self.max_prompt_length == 0
            || self.max_prompt_length + self.max_new_tokens > model_context
        {
            return Err(invalid(
                "max_prompt_length",
                format!(
                    "must be at least 1, and with max_new_tokens ({}) fit the model's context of \
                     {model_context} tokens",
                    self.max_new_tokens
                ),
            ));
        }
        Ok(())
    }
}

/// The policy: a causal LM and, for actor-critic methods, a value head over its hidden states.
pub struct Policy {
    pub model: LoadedModel,
    pub value_head: Option<ScalarHead>,
}

/// One sampled response and what the updates need of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Index of the prompt in the step's batch.
    pub prompt_index: usize,
    pub prompt: Vec<u32>,
    /// Sampled tokens, EOS included when the policy ended the reply.
    pub response: Vec<u32>,
    /// The decoded response without EOS.
    pub text: String,
    /// Per response token: `log π_T` when sampled, `log π_ref,T`, and the entropy of `π_T`.
    pub logprobs: Vec<f64>,
    pub ref_logprobs: Vec<f64>,
    pub entropy: Vec<f64>,
    /// Per response token: the value head's estimate before the token (empty without a head).
    pub values: Vec<f64>,
}

/// Per-token outputs of one forward pass over `prompt ++ response` rows, right-padded to the
/// longest response: `[rows, max_response]`, zero where `mask` is 0.
pub struct TokenScores {
    /// Differentiable with respect to the model's variables.
    pub logprobs: Tensor,
    /// Detached.
    pub entropy: Tensor,
    /// The value head at the position predicting each token; differentiable.
    pub values: Option<Tensor>,
    pub mask: Tensor,
}

/// Runs `model` once over the rows and scores each response token at temperature `temperature`
/// (and reads `value_head`, if given, at the same positions).
pub fn score_tokens(
    model: &dyn CausalLm,
    value_head: Option<&ScalarHead>,
    prompts: &[Vec<u32>],
    responses: &[Vec<u32>],
    temperature: f64,
) -> Result<TokenScores> {
    if responses.iter().any(Vec::is_empty) {
        return Err(TrainError::InvalidInput(
            "a response to score has no tokens".into(),
        ));
    }
    // Padded positions are masked, so any in-vocabulary id serves as padding.
    let batch = ContinuationBatch::new(prompts, responses, Padding::Right, 0, model.device())?;
    let (rows, len) = batch.input_ids.dims2()?;
    let mask = batch.continuation_mask().clone();
    let max_response = mask.dim(1)?;
    let hidden = model.hidden_states(&batch.input_ids, Some(&batch.attention_mask), None)?;
    let hidden_size = hidden.dim(D::Minus1)?;
    let predictors = hidden
        .reshape((rows * len, hidden_size))?
        .index_select(batch.predictor_index(), 0)?;
    let logits = (model
        .logits_from_hidden(&predictors)?
        .to_dtype(DType::F32)?
        / temperature)?;
    let picked =
        fused_ops::token_logprobs(&logits, batch.targets())?.reshape((rows, max_response))?;
    let entropy = fused_ops::softmax_entropy(&logits)?.reshape((rows, max_response))?;
    let values = value_head
        .map(|head| -> Result<Tensor> {
            let per_token = predictors.reshape((rows, max_response, hidden_size))?;
            Ok((head.scores(&per_token)?.to_dtype(DType::F32)? * &mask)?)
        })
        .transpose()?;
    Ok(TokenScores {
        logprobs: (picked * &mask)?,
        entropy: (entropy * &mask)?,
        values,
        mask,
    })
}

/// Row `i` of a `[rows, len]` tensor, cut to `lengths[i]`, as f64s.
pub fn rows_to_vecs(tensor: &Tensor, lengths: &[usize]) -> Result<Vec<Vec<f64>>> {
    let rows = tensor.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    Ok(rows
        .into_iter()
        .zip(lengths)
        .map(|(mut row, &length)| {
            row.truncate(length);
            row
        })
        .collect())
}

/// Samples `samples_per_prompt` responses to each prompt (consecutive in the result) and scores
/// them; forward passes run `forward_batch` rows at a time, without gradients.
#[allow(clippy::too_many_arguments)]
pub fn rollout(
    policy: &Policy,
    reference: &LoadedModel,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    samples_per_prompt: usize,
    config: &RolloutConfig,
    seed: u64,
    forward_batch: usize,
) -> Result<Vec<Sample>> {
    let rows: Vec<(usize, Vec<u32>)> = prompts
        .iter()
        .enumerate()
        .flat_map(|(index, prompt)| {
            std::iter::repeat_n((index, prompt.clone()), samples_per_prompt)
        })
        .collect();
    let row_prompts: Vec<Vec<u32>> = rows.iter().map(|(_, prompt)| prompt.clone()).collect();
    let keys: Vec<u64> = (0..rows.len() as u64).collect();
    let generation = GenerationConfig {
        max_new_tokens: config.max_new_tokens,
        temperature: config.temperature,
        top_k: None,
        top_p: None,
        seed,
        stop_strings: Vec::new(),
        stop_at_eos: true,
    };
    // Sampling and scoring go through a view of the policy that records no autograd graph:
    // nothing here is differentiated, and a graph would keep every activation of every decode
    // step and scoring pass alive.
    let sampler = policy.model.inference_model()?;
    let generations = generate_keyed(
        sampler.as_ref(),
        tokenizer,
        &row_prompts,
        &keys,
        &generation,
    )?;

    let mut samples = Vec::with_capacity(rows.len());
    let chunks = rows
        .chunks(forward_batch.max(1))
        .zip(generations.chunks(forward_batch.max(1)));
    for (chunk_rows, chunk_generations) in chunks {
        let prompts: Vec<Vec<u32>> = chunk_rows.iter().map(|(_, p)| p.clone()).collect();
        let responses: Vec<Vec<u32>> = chunk_generations
            .iter()
            .map(|g| g.token_ids.clone())
            .collect();
        let lengths: Vec<usize> = responses.iter().map(Vec::len).collect();
        let policy_scores = score_tokens(
            sampler.as_ref(),
            policy.value_head.as_ref(),
            &prompts,
            &responses,
            config.temperature,
        )?;
        let reference_scores =
            score_tokens(reference, None, &prompts, &responses, config.temperature)?;
        let logprobs = rows_to_vecs(&policy_scores.logprobs.detach(), &lengths)?;
        let ref_logprobs = rows_to_vecs(&reference_scores.logprobs, &lengths)?;
        let entropy = rows_to_vecs(&policy_scores.entropy, &lengths)?;
        let values = match &policy_scores.values {
            Some(values) => rows_to_vecs(&values.detach(), &lengths)?,
            None => vec![Vec::new(); lengths.len()],
        };
        let per_row = logprobs
            .into_iter()
            .zip(ref_logprobs)
            .zip(entropy)
            .zip(values);
        for (((&(prompt_index, ref prompt), generation), response), scores) in chunk_rows
            .iter()
            .zip(chunk_generations)
            .zip(responses)
            .zip(per_row)
        {
            let (((logprobs, ref_logprobs), entropy), values) = scores;
            samples.push(Sample {
                prompt_index,
                prompt: prompt.clone(),
                response,
                text: generation.text.clone(),
                logprobs,
                ref_logprobs,
                entropy,
                values,
            });
        }
    }
    Ok(samples)
}
