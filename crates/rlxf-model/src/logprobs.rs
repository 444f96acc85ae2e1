//! Per-token log-probabilities of continuations given prompts: what DPO, PPO, KL estimates and
//! likelihood-based evaluation all need.
//!
//! Prompts and continuations are ragged; [`ContinuationBatch`] pads them into one batch (left or
//! right), the model runs once, and the LM head is applied only at the positions that predict a
//! continuation token (fused with the log-softmax where the model allows). The result is
//! differentiable with respect to the model's variables.

use candle_core::{DType, Device, Tensor, D};

use crate::causal_lm::CausalLm;
use crate::error::{ModelError, Result};
use crate::fused_ops;

/// Where padding goes in a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// `[pad.., prompt, continuation]`: the layout generation uses.
    Left,
    /// `[prompt, continuation, pad..]`.
    Right,
}

/// A padded batch of `prompt ++ continuation` rows plus where each continuation token sits.
pub struct ContinuationBatch {
    /// `[batch, len]` u32.
    pub input_ids: Tensor,
    /// `[batch, len]` u32, 1 for real tokens.
    pub attention_mask: Tensor,
    /// Flat index (`row * len + column`) of the hidden state predicting each continuation token,
    /// `[batch * max_continuation]`.
    predictor_index: Tensor,
    /// The continuation tokens, left-aligned and zero-padded, `[batch * max_continuation, 1]`.
    targets: Tensor,
    /// `[batch, max_continuation]` f32, 1 where a continuation token exists.
    continuation_mask: Tensor,
    continuation_lengths: Vec<usize>,
}

impl ContinuationBatch {
    /// Pads `prompts[i] ++ continuations[i]` with `pad_token_id` (its value never matters: padded
    /// positions are masked). Every prompt needs at least one token, since the first continuation
    /// token is predicted from the prompt's last one.
    pub fn new(
        prompts: &[Vec<u32>],
        continuations: &[Vec<u32>],
        padding: Padding,
        pad_token_id: u32,
        device: &Device,
    ) -> Result<Self> {
        if prompts.len() != continuations.len() {
            return Err(ModelError::InvalidInput(format!(
                "{} prompts but {} continuations",
                prompts.len(),
                continuations.len()
            )));
        }
        if prompts.is_empty() {
            return Err(ModelError::InvalidInput("empty batch".into()));
        }
        if let Some(row) = prompts.iter().position(Vec::is_empty) {
            return Err(ModelError::InvalidInput(format!(
                "prompt {row} is empty; a continuation needs at least one prompt token to be scored"
            )));
        }
        let batch = prompts.len();
        let len = prompts
            .iter()
            .zip(continuations)
            .map(|(prompt, continuation)| prompt.len() + continuation.len())
            .max()
            .expect("non-empty batch");
        let max_continuation = continuations.iter().map(Vec::len).max().unwrap_or(0);

        let mut ids = vec![pad_token_id; batch * len];
        let mut mask = vec![0u32; batch * len];
        let mut predictor = vec![0u32; batch * max_continuation];
        let mut targets = vec![0u32; batch * max_continuation];
        let mut continuation_mask = vec![0f32; batch * max_continuation];
        for (row, (prompt, continuation)) in prompts.iter().zip(continuations).enumerate() {
            let used = prompt.len() + continuation.len();
            let start = match padding {
                Padding::Left => len - used,
                Padding::Right => 0,
            };
            let row_start = row * len + start;
            for (offset, &token) in prompt.iter().chain(continuation).enumerate() {
                ids[row_start + offset] = token;
                mask[row_start + offset] = 1;
            }
            for (j, &token) in continuation.iter().enumerate() {
                let slot = row * max_continuation + j;
                predictor[slot] = (row_start + prompt.len() + j - 1) as u32;
                targets[slot] = token;
                continuation_mask[slot] = 1.0;
            }
        }
        Ok(Self {
            input_ids: Tensor::from_vec(ids, (batch, len), device)?,
            attention_mask: Tensor::from_vec(mask, (batch, len), device)?,
            predictor_index: Tensor::from_vec(predictor, batch * max_continuation, device)?,
            targets: Tensor::from_vec(targets, (batch * max_continuation, 1), device)?,
            continuation_mask: Tensor::from_vec(
                continuation_mask,
                (batch, max_continuation),
                device,
            )?,
            continuation_lengths: continuations.iter().map(Vec::len).collect(),
        })
    }
}

impl ContinuationBatch {
    /// Flat index (`row * len + column`) of the hidden state predicting each continuation token,
    /// `[batch * max_continuation]`: for reading a value head, or applying a custom transform of
    /// the logits, at exactly the positions [`continuation_logprobs`] scores.
    pub fn predictor_index(&self) -> &Tensor {
        &self.predictor_index
    }

    /// The continuation tokens, left-aligned and zero-padded, `[batch * max_continuation, 1]`.
    pub fn targets(&self) -> &Tensor {
        &self.targets
    }

    /// `[batch, max_continuation]` f32, 1 where a continuation token exists.
    pub fn continuation_mask(&self) -> &Tensor {
        &self.continuation_mask
    }

    pub fn continuation_lengths(&self) -> &[usize] {
        &self.continuation_lengths
    }
}

/// Log-probabilities of every continuation token, left-aligned: `logprobs[i, j]` is
/// `log p(continuation_i[j] | prompt_i, continuation_i[..j])`, 0 where `mask` is 0.
pub struct ContinuationLogProbs {
    /// `[batch, max_continuation]`, f32 (f64 for an f64 model); differentiable.
    pub logprobs: Tensor,
    /// `[batch, max_continuation]`, same dtype as `logprobs`.
    pub mask: Tensor,
    pub lengths: Vec<usize>,
}

impl ContinuationLogProbs {
    /// Sum over each continuation, `[batch]` (differentiable): the sequence log-likelihood.
    pub fn sums(&self) -> Result<Tensor> {
        Ok(self.logprobs.sum(D::Minus1)?)
    }

    /// Per-row vectors of the real tokens' log-probs.
    pub fn to_vecs(&self) -> Result<Vec<Vec<f32>>> {
        let rows = self.logprobs.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        Ok(rows
            .into_iter()
            .zip(&self.lengths)
            .map(|(mut row, &length)| {
                row.truncate(length);
                row
            })
            .collect())
    }
}

/// Runs `model` once over `batch` and returns the continuation tokens' log-probs.
pub fn continuation_logprobs(
    model: &dyn CausalLm,
    batch: &ContinuationBatch,
) -> Result<ContinuationLogProbs> {
    let (rows, len) = batch.input_ids.dims2()?;
    let max_continuation = batch.continuation_mask.dim(1)?;
    if max_continuation == 0 {
        // Nothing to score: skip the forward pass (and candle's zero-sized matmuls).
        return Ok(ContinuationLogProbs {
            logprobs: batch.continuation_mask.clone(),
            mask: batch.continuation_mask.clone(),
            lengths: batch.continuation_lengths.clone(),
        });
    }
    let hidden = model.hidden_states(&batch.input_ids, Some(&batch.attention_mask), None)?;
    let hidden_size = hidden.dim(D::Minus1)?;
    let predictors = hidden
        .reshape((rows * len, hidden_size))?
        .index_select(&batch.predictor_index, 0)?;
    let picked = token_logprobs_from_hidden(model, &predictors, &batch.targets)?
        .reshape((rows, max_continuation))?;
    let mask = batch.continuation_mask.to_dtype(picked.dtype())?;
    Ok(ContinuationLogProbs {
        logprobs: (picked * &mask)?,
        mask,
        lengths: batch.continuation_lengths.clone(),
    })
}

/// `log p(targets[row] | hidden[row])` under `model`'s LM head, for final hidden states `[rows,
/// hidden]` and `[rows]` targets: `[rows]`, f32 (f64 for an f64 model), differentiable. Through
/// [`fused_ops::lm_head_token_logprobs`] when the model exposes its head weight (no `[rows,
/// vocab]` logits gradient in backward), else through the model's logits.
pub fn token_logprobs_from_hidden(
    model: &dyn CausalLm,
    hidden: &Tensor,
    targets: &Tensor,
) -> Result<Tensor> {
    match model.lm_head_weight() {
        Some(weight) => fused_ops::lm_head_token_logprobs(hidden, &weight, targets),
        // `token_logprobs` widens half-precision logits to f32 itself.
        None => fused_ops::token_logprobs(&model.logits_from_hidden(hidden)?, targets),
    }
}

/// Convenience: pad, run and return per-row vectors.
pub fn continuation_logprobs_vec(
    model: &dyn CausalLm,
    prompts: &[Vec<u32>],
    continuations: &[Vec<u32>],
    padding: Padding,
) -> Result<Vec<Vec<f32>>> {
    let batch = ContinuationBatch::new(prompts, continuations, padding, 0, model.device())?;
    continuation_logprobs(model, &batch)?.to_vecs()
}
