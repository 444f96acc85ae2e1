//! A scalar head (reward or value): one linear map from the final hidden state to a number.
//!
//! Stored as HF's `score.weight` (`[1, hidden]`, no bias), the head of
//! `GPTNeoForSequenceClassification` / `GPT2ForSequenceClassification` with `num_labels = 1`, so a
//! reward model saved by [`crate::LoadedModel::save_pretrained`] loads in `transformers` as such.

use candle_core::{DType, Tensor, D};
use candle_nn::{Init, VarBuilder};

use crate::error::{ModelError, Result};
use crate::transformer_blocks::matmul_last_dim;

pub struct ScalarHead {
    weight: Tensor,
}

impl ScalarHead {
    /// HF's name for the head's weight.
    pub const WEIGHT_NAME: &'static str = "score.weight";

    /// Reads (or, from a fresh `VarMap`, creates with N(0, 0.02)) `score.weight` under `vb`.
    pub fn new(hidden_size: usize, vb: VarBuilder) -> Result<Self> {
        let init = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        Ok(Self {
            weight: vb.get_with_hints((1, hidden_size), Self::WEIGHT_NAME, init)?,
        })
    }

    /// One score per position: `[batch, seq, hidden]` to `[batch, seq]`, in the head's dtype:
    /// bf16 hidden states of a mixed-precision forward are widened, since rewards and values feed
    /// losses, which stay f32 (the head is one dot product per position, cheap in any dtype).
    pub fn scores(&self, hidden_states: &Tensor) -> Result<Tensor> {
        let hidden_states = hidden_states.to_dtype(self.weight.dtype())?;
        Ok(matmul_last_dim(&hidden_states, &self.weight.t()?)?.squeeze(D::Minus1)?)
    }

    /// The score at each row's last real token (the last position whose mask is 1; the last
    /// position when there is no mask), `[batch]`. Works for left and right padding alike.
    ///
    /// HF's sequence classifiers find that token from `pad_token_id` in the input ids instead; the
    /// two agree unless the pad token also occurs as a real token at the end of a row.
    pub fn score_last_token(
        &self,
        hidden_states: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (batch, seq, _) = hidden_states.dims3()?;
        let last: Vec<u32> = match attention_mask {
            Some(mask) => {
                if mask.dims() != [batch, seq] {
                    return Err(ModelError::InvalidInput(format!(
                        "attention mask has shape {:?}, hidden states [{batch}, {seq}, ..]",
                        mask.dims()
                    )));
                }
                mask.to_dtype(DType::U32)?
                    .to_vec2::<u32>()?
                    .iter()
                    .map(|row| row.iter().rposition(|&real| real != 0).unwrap_or(0) as u32)
                    .collect()
            }
            None => vec![(seq - 1) as u32; batch],
        };
        let index = Tensor::from_vec(last, (batch, 1), hidden_states.device())?;
        Ok(self.scores(hidden_states)?.gather(&index, 1)?.squeeze(1)?)
    }
}
