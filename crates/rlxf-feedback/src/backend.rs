//! What a labeler asks of a language model, whichever model it is: the log-probabilities of a few
//! answer tokens after a prompt, and (for chain-of-thought) a greedy continuation. A local rlxf model
//! ([`crate::LocalBackend`]) and any OpenAI-compatible server ([`crate::OpenAiBackend`]) implement
//! [`Backend`]; everything above it (labelers, scorers, judges, the cache) is shared.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::template::ChoiceQuery;

/// The answer of a backend to one [`ChoiceQuery`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChoiceAnswer {
    /// `log P(choice | prompt)` under the backend's full next-token distribution, one per choice,
    /// in the query's order. For a choice in [`Self::bounded`] it is an upper bound instead.
    pub logprobs: Vec<f64>,
    /// Choices a server did not list among its top log-probs. Their probability is known only to
    /// be at most the smallest listed one, and that bound is what [`Self::logprobs`] holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bounded: Vec<String>,
    /// The prompt was cut (oldest conversation turns first) to fit the model's context.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

impl ChoiceAnswer {
    /// The soft label: the softmax of the choices' log-probs, i.e. the model's distribution over
    /// the answers given that it answers with one of them (Lee et al. 2023).
    pub fn distribution(&self) -> Vec<f64> {
        let max = self
            .logprobs
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        if !max.is_finite() {
            // Every choice impossible: no information, so no preference.
            return vec![1.0 / self.logprobs.len() as f64; self.logprobs.len()];
        }
        let weights: Vec<f64> = self.logprobs.iter().map(|lp| (lp - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        weights.into_iter().map(|w| w / total).collect()
    }

    /// Probability mass the model puts on the choices together: how far it follows the format
    /// (a small mass means the soft label rests on tokens the model would rarely produce).
    pub fn choice_mass(&self) -> f64 {
        self.logprobs
            .iter()
            .map(|lp| lp.exp())
            .sum::<f64>()
            .min(1.0)
    }
}

/// How a backend continues a prompt for chain-of-thought: greedily, up to `max_new_tokens`, stopping
/// at any of `stop`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletionParams {
    pub max_new_tokens: usize,
    pub stop: Vec<String>,
}

/// Called with `(query index, result)` as each answer arrives; an error stops the run.
pub type OnAnswer<'a, T> = dyn FnMut(usize, T) -> Result<()> + 'a;

/// A language model that answers labeling prompts.
pub trait Backend: Send + Sync {
    /// Names the model and everything about how it is asked that changes its answers (weights
    /// hash, prompt format, server URL and model name): part of every cache key, so a different
    /// labeler never reuses another's answers.
    fn identity(&self) -> String;

    /// Answers every query, calling `on_answer` once per query index as soon as its answer is
    /// known (in any order), so callers can persist answers while the rest are still being
    /// computed. Stops at the first error.
    fn answer_choices(
        &self,
        queries: &[ChoiceQuery],
        on_answer: &mut OnAnswer<'_, ChoiceAnswer>,
    ) -> Result<()>;

    /// Continues `query.text()` greedily for every query (the choices are ignored), calling
    /// `on_text` once per query index with the generated text.
    fn complete(
        &self,
        queries: &[ChoiceQuery],
        params: &CompletionParams,
        on_text: &mut OnAnswer<'_, String>,
    ) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_is_the_softmax_over_the_choices() {
        let answer = ChoiceAnswer {
            logprobs: vec![(0.3f64).ln(), (0.1f64).ln()],
            bounded: Vec::new(),
            truncated: false,
        };
        let probs = answer.distribution();
        assert!((probs[0] - 0.75).abs() < 1e-12);
        assert!((probs[1] - 0.25).abs() < 1e-12);
        assert!((answer.choice_mass() - 0.4).abs() < 1e-12);
    }

    #[test]
    fn impossible_choices_give_no_preference() {
        let answer = ChoiceAnswer {
            logprobs: vec![f64::NEG_INFINITY; 2],
            bounded: Vec::new(),
            truncated: false,
        };
        assert_eq!(answer.distribution(), vec![0.5, 0.5]);
    }
}
