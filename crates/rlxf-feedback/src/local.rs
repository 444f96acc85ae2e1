//! A local rlxf model as a labeler: the policy's own checkpoint, a same-size model or a bigger one.
//!
//! # Which tokens are "1"
//!
//! The answer is read from the logits after the prompt, restricted to the token ids of the
//! choices. BPE tokenizers have several ids for "1" (`"1"`, `" 1"`, ...); the ones used are the
//! tokens the tokenizer itself produces for the choice right after the ending:
//! `encode(ending + choice)` must be `encode(ending)` followed by the choice's tokens. With the
//! default ending `Preferred Response=` this is the bare digit `"1"` (BPE splits `=` and digits into
//! separate pieces). An ending with trailing whitespace would make the space part of the answer
//! token (`" 1"`) and is rejected with [`FeedbackError::ChoiceMergesWithEnding`] rather than silently
//! read from the wrong id.
//!
//! A choice of several tokens (`10` for a tokenizer that splits digits, as SmolLM2's does) is scored
//! as a whole answer ([`ChoiceTokens`]): the prompt is run with the choice's leading tokens
//! appended and the distributions along them are read. One such sequence usually serves every
//! choice (`…Score=1` gives the distributions after `Score=` and after `Score=1`), so a 1–10 scale
//! costs one forward pass of one more token.
//!
//! # Long prompts
//!
//! A prompt that fits is tokenized as one text, as a server would. A longer one is cut from the
//! start of the item body (the oldest conversation turns), keeping the preamble, the replies and the
//! ending; the answer is flagged [`ChoiceAnswer::truncated`].

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor, D};
use rlxf_model::{generate, load_tokenizer, CausalLm, GenerationConfig, LoadedModel, Tokenizer};

use crate::backend::{Backend, ChoiceAnswer, CompletionParams, OnAnswer};
use crate::choice_tokens::ChoiceTokens;
use crate::error::{FeedbackError, Result};
use crate::template::{ChoiceQuery, PromptFormat};

/// Queries scored in one forward pass unless [`LocalBackend::with_batch_size`] says otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 8;

pub struct LocalBackend {
    model: LoadedModel,
    tokenizer: Tokenizer,
    format: PromptFormat,
    identity: String,
    batch_size: usize,
}

impl LocalBackend {
    /// A backend over `model`. `identity` must change whenever the weights do (see
    /// [`Backend::identity`]); [`Self::load_dir`] derives it from the weight file's hash. The prompt
    /// format is detected from the tokenizer ([`PromptFormat::detect`]).
    pub fn new(model: LoadedModel, tokenizer: Tokenizer, identity: String) -> Result<Self> {
        let format = PromptFormat::detect(&tokenizer)?;
        Ok(Self {
            model,
            tokenizer,
            format,
            identity,
            batch_size: DEFAULT_BATCH_SIZE,
        })
    }

    /// Loads the model in `dir` (config.json, weights, tokenizer) in f32 on `device`.
    pub fn load_dir(dir: &Path, device: &Device) -> Result<Self> {
        let model = LoadedModel::load_dir(dir, device, DType::F32)?.into_inference()?;
        let tokenizer = load_tokenizer(dir)?;
        let weights = rlxf_model::weights::find_weight_file(dir)?;
        let digest = rlxf_data::load::sha256_file(&weights)?;
        let model_type = model.config.model_type();
        Self::new(model, tokenizer, format!("{model_type}:sha256={digest}"))
    }

    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    pub fn with_format(mut self, format: PromptFormat) -> Self {
        self.format = format;
        self
    }

    pub fn format(&self) -> PromptFormat {
        self.format
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The tokens of each choice right after `ending` (see the module docs).
    pub fn choice_tokens(&self, ending: &str, choices: &[String]) -> Result<ChoiceTokens> {
        let (_, before_ending) = self.format.wrappers();
        let context = format!("{before_ending}{ending}");
        let base = self.tokenizer.encode(&context)?;
        let tokens = choices
            .iter()
            .map(|choice| {
                let ids = self.tokenizer.encode(&format!("{context}{choice}"))?;
                match ids.strip_prefix(base.as_slice()) {
                    Some(rest) if !rest.is_empty() => Ok(rest.to_vec()),
                    _ => Err(FeedbackError::ChoiceMergesWithEnding {
                        choice: choice.clone(),
                        ending: ending.to_string(),
                    }),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ChoiceTokens::new(tokens))
    }

    /// Token ids of `query`, cut to leave `reserve` positions free in the model's context.
    /// Returns the ids and whether they were cut.
    ///
    /// A prompt that fits is tokenized as one text, exactly as a server given `query.text()` would
    /// (tokenizing the parts separately would split differently where they meet, e.g. `"\n\n"`).
    fn encode_query(&self, query: &ChoiceQuery, reserve: usize) -> Result<(Vec<u32>, bool)> {
        let (open, close) = self.format.wrappers();
        let budget = self.model.max_context().saturating_sub(reserve);
        let whole = self.tokenizer.encode(&format!(
            "{open}{}{}{close}{}",
            query.prefix, query.body, query.ending
        ))?;
        if whole.len() <= budget {
            return Ok((whole, false));
        }
        let head = self.tokenizer.encode(&format!("{open}{}", query.prefix))?;
        let rest = self
            .tokenizer
            .encode(&format!("{}{close}{}", query.body, query.ending))?;
        let ending_len = self
            .tokenizer
            .encode(&format!("{close}{}", query.ending))?
            .len();
        let excess = (head.len() + rest.len()).saturating_sub(budget);
        if head.len() + ending_len <= budget && excess <= rest.len().saturating_sub(ending_len) {
            return Ok(([head, rest[excess..].to_vec()].concat(), true));
        }
        // Not even the preamble fits: keep the last tokens, which end with the ending.
        if budget == 0 {
            return Err(FeedbackError::InvalidInput(format!(
                "the model's context ({} tokens) leaves no room for a prompt after reserving {reserve}",
                self.model.max_context()
            )));
        }
        Ok((whole[whole.len() - budget..].to_vec(), true))
    }

    /// Log-softmax of the next-token logits at the last `positions` positions of each sequence
    /// (a left-padded batch): `rows[sequence][k]` is the distribution after all but the last
    /// `positions - 1 - k` tokens of the sequence.
    fn trailing_logprobs(
        &self,
        sequences: &[Vec<u32>],
        positions: usize,
    ) -> Result<Vec<Vec<Vec<f32>>>> {
        let device = self.model.device();
        let width = sequences.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(sequences.len() * width);
        let mut mask = Vec::with_capacity(sequences.len() * width);
        for sequence in sequences {
            let padding = width - sequence.len();
            ids.extend(std::iter::repeat_n(self.tokenizer.pad_id(), padding));
            ids.extend_from_slice(sequence);
            mask.extend(std::iter::repeat_n(0u32, padding));
            mask.extend(std::iter::repeat_n(1u32, sequence.len()));
        }
        let ids = Tensor::from_vec(ids, (sequences.len(), width), device)?;
        let mask = Tensor::from_vec(mask, (sequences.len(), width), device)?;
        let hidden = self.model.hidden_states(&ids, Some(&mask), None)?;
        // Left padding puts every row's last real tokens in the last columns; only they need the
        // LM head (the full [batch, seq, vocab] logits would dwarf everything else in memory).
        let last = hidden
            .i((.., width - positions.., ..))?
            .contiguous()?
            .flatten_to(1)?;
        let logits = self.model.logits_from_hidden(&last)?.to_dtype(DType::F32)?;
        let logprobs = candle_nn::ops::log_softmax(&logits, D::Minus1)?.to_vec2::<f32>()?;
        let mut rows = logprobs.into_iter();
        Ok(sequences
            .iter()
            .map(|_| rows.by_ref().take(positions).collect())
            .collect())
    }
}

/// Indexes of `lengths` in batches of at most `batch_size`, longest first, so each batch holds
/// prompts of similar length (less padding).
fn length_sorted_batches(lengths: &[usize], batch_size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&index| std::cmp::Reverse(lengths[index]));
    order.chunks(batch_size).map(<[usize]>::to_vec).collect()
}

impl Backend for LocalBackend {
    fn identity(&self) -> String {
        format!("local:{}:format={}", self.identity, self.format.as_str())
    }

    fn answer_choices(
        &self,
        queries: &[ChoiceQuery],
        on_answer: &mut OnAnswer<'_, ChoiceAnswer>,
    ) -> Result<()> {
        let choices: Vec<ChoiceTokens> = queries
            .iter()
            .map(|query| self.choice_tokens(&query.ending, &query.choices))
            .collect::<Result<_>>()?;
        let encoded: Vec<(Vec<u32>, bool)> = queries
            .iter()
            .zip(&choices)
            .map(|(query, choices)| self.encode_query(query, choices.longest_path()))
            .collect::<Result<_>>()?;
        let lengths: Vec<usize> = encoded
            .iter()
            .zip(&choices)
            .map(|((ids, _), choices)| ids.len() + choices.longest_path())
            .collect();
        for batch in length_sorted_batches(&lengths, self.batch_size) {
            // One sequence per query and path: the prompt with the path's tokens appended.
            let sequences: Vec<(usize, Vec<u32>)> = batch
                .iter()
                .flat_map(|&index| {
                    choices[index]
                        .paths()
                        .into_iter()
                        .map(move |path| (index, path))
                })
                .collect();
            let inputs: Vec<Vec<u32>> = sequences
                .iter()
                .map(|(index, path)| [encoded[*index].0.as_slice(), path].concat())
                .collect();
            let positions = 1 + sequences
                .iter()
                .map(|(_, path)| path.len())
                .max()
                .unwrap_or(0);
            let rows = self.trailing_logprobs(&inputs, positions)?;
            // Each query's distributions after every prefix of its paths.
            let mut by_query: HashMap<usize, HashMap<Vec<u32>, Vec<f32>>> = HashMap::new();
            for ((index, path), mut rows) in sequences.into_iter().zip(rows) {
                let by_prefix = by_query.entry(index).or_default();
                // The last `path.len() + 1` rows follow the prompt and each token of the path.
                let first = positions - 1 - path.len();
                for (len, row) in rows.drain(first..).enumerate() {
                    by_prefix.insert(path[..len].to_vec(), row);
                }
            }
            for &index in &batch {
                let by_prefix = &by_query[&index];
                let answer = ChoiceAnswer {
                    logprobs: choices[index].logprobs(|prefix| &by_prefix[prefix]),
                    bounded: Vec::new(),
                    truncated: encoded[index].1,
                };
                on_answer(index, answer)?;
            }
        }
        Ok(())
    }

    fn complete(
        &self,
        queries: &[ChoiceQuery],
        params: &CompletionParams,
        on_text: &mut OnAnswer<'_, String>,
    ) -> Result<()> {
        let encoded: Vec<Vec<u32>> = queries
            .iter()
            .map(|query| Ok(self.encode_query(query, params.max_new_tokens)?.0))
            .collect::<Result<_>>()?;
        let config = GenerationConfig {
            stop_strings: params.stop.clone(),
            ..GenerationConfig::greedy(params.max_new_tokens)
        };
        let lengths: Vec<usize> = encoded.iter().map(Vec::len).collect();
        for batch in length_sorted_batches(&lengths, self.batch_size) {
            let prompts: Vec<Vec<u32>> = batch.iter().map(|&i| encoded[i].clone()).collect();
            let generations = generate(&self.model, &self.tokenizer, &prompts, &config)?;
            for (&index, generation) in batch.iter().zip(generations) {
                on_text(index, generation.text)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_group_prompts_of_similar_length() {
        let batches = length_sorted_batches(&[3, 10, 1, 7, 5], 2);
        assert_eq!(batches, vec![vec![1, 3], vec![4, 0], vec![2]]);
    }
}
