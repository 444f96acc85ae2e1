//! Batched text generation with a KV cache.
//!
//! Prompts are left-padded into one batch with an attention mask, the prompt is run once to fill the
//! cache, then each step feeds one new token per row. A row that finishes (EOS, a stop string, its
//! token budget, the model's context) leaves the batch: its slice of the cache is dropped, so the
//! remaining rows do not pay for it.
//!
//! Every returned token carries its log-probability under the model's **unmodified** distribution
//! (`log_softmax` of the raw logits, before temperature, top-k or top-p), which is what policy
//! gradient methods (PPO, RLOO) and KL penalties need: the probability the policy itself assigns,
//! not the probability of the sampler that happened to draw it.

use candle_core::{DType, IndexOp, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;

use crate::sampling::{log_softmax_at, next_token, SamplingParams};
use crate::tokenizer::Tokenizer;
use crate::{CausalLm, KvCache, ModelError, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Most tokens generated per prompt (EOS included).
    pub max_new_tokens: usize,
    /// 0 = greedy (argmax); otherwise logits are divided by it before sampling.
    pub temperature: f64,
    /// Sample only among the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Sample only among the most likely tokens holding this much probability mass, in (0, 1].
    pub top_p: Option<f64>,
    /// Fixes every random draw: the same seed, prompts and model give the same output.
    pub seed: u64,
    /// A row stops as soon as its generated text contains one of these; the returned text ends
    /// just before it.
    pub stop_strings: Vec<String>,
    /// A row stops when it generates the tokenizer's EOS token.
    pub stop_at_eos: bool,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            temperature: 1.0,
            top_k: None,
            top_p: None,
            seed: 0,
            stop_strings: Vec::new(),
            stop_at_eos: true,
        }
    }
}

impl GenerationConfig {
    /// Greedy decoding of up to `max_new_tokens` tokens, stopping at EOS.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            temperature: 0.0,
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        let invalid =
            |field, message: String| Err(ModelError::InvalidGenerationConfig { field, message });
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return invalid(
                "temperature",
                format!("must be a finite number >= 0, got {}", self.temperature),
            );
        }
        if self.top_k == Some(0) {
            return invalid("top_k", "must be at least 1".to_string());
        }
        if let Some(top_p) = self.top_p {
            if !(top_p > 0.0 && top_p <= 1.0) {
                return invalid("top_p", format!("must be in (0, 1], got {top_p}"));
            }
        }
        if self.stop_strings.iter().any(String::is_empty) {
            return invalid("stop_strings", "a stop string cannot be empty".to_string());
        }
        Ok(())
    }

    fn sampling(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model generated EOS.
    Eos,
    /// The text reached a stop string.
    StopString,
    /// `max_new_tokens` were generated.
    MaxNewTokens,
    /// The sequence filled the model's context window.
    ContextFull,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::StopString => "stop_string",
            FinishReason::MaxNewTokens => "max_new_tokens",
            FinishReason::ContextFull => "context_full",
        }
    }
}

/// One prompt's continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Decoded continuation, without EOS and cut just before a stop string.
    pub text: String,
    /// Generated token ids, EOS included when the row stopped on it (it is an action the policy
    /// took). After a stop string, the tokens up to the one that completes `text`; only when a stop
    /// string starts inside a token does that token's text reach past `text`.
    pub token_ids: Vec<u32>,
    /// `log_softmax(raw logits)[token]` for each of `token_ids` (see the module docs).
    pub logprobs: Vec<f32>,
    pub finish_reason: FinishReason,
}

/// Generates a continuation of each prompt (token ids, no padding). Row `i` draws its random
/// numbers from its own stream, keyed by `i`; see [`generate_keyed`] to choose the keys.
pub fn generate<M: CausalLm + Sync + ?Sized>(
    model: &M,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
) -> Result<Vec<Generation>> {
    let row_keys: Vec<u64> = (0..prompts.len() as u64).collect();
    generate_keyed(model, tokenizer, prompts, &row_keys, config)
}

/// [`generate`] with an explicit random stream per row: row `i` samples from the ChaCha20 stream
/// `row_keys[i]` of `config.seed`. Keying rows by their index in a whole dataset makes sampled
/// outputs independent of how the dataset is split into batches; errors name prompts by key.
///
/// Runs on a thread of rayon's pool (the caller waits): a decoding step makes about a hundred
/// parallel calls (every projection, norm and activation of every layer), and each call made from
/// outside the pool hands its work to the pool and puts the caller to sleep until it is done, two
/// context switches per call. From a thread of the pool, each call works on its share at once
/// while the other threads take theirs.
pub fn generate_keyed<M: CausalLm + Sync + ?Sized>(
    model: &M,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    row_keys: &[u64],
    config: &GenerationConfig,
) -> Result<Vec<Generation>> {
    rayon::scope(|_| generate_in_pool(model, tokenizer, prompts, row_keys, config))
}

fn generate_in_pool<M: CausalLm + ?Sized>(
    model: &M,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    row_keys: &[u64],
    config: &GenerationConfig,
) -> Result<Vec<Generation>> {
    config.validate()?;
    assert_eq!(
        prompts.len(),
        row_keys.len(),
        "one random-stream key per prompt"
    );
    validate_prompts(model, prompts, row_keys)?;
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    let mut rows: Vec<Row> = prompts
        .iter()
        .zip(row_keys)
        .map(|(prompt, &key)| Row::new(prompt.len(), config.seed, key))
        .collect();
    if config.max_new_tokens == 0 {
        return rows
            .into_iter()
            .map(|row| row.finish(tokenizer, FinishReason::MaxNewTokens))
            .collect();
    }

    let device = model.device();
    let max_context = model.max_context();
    let padded_len = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut input = Vec::with_capacity(prompts.len() * padded_len);
    // Left padding of the row at each batch position; the attention mask is rebuilt from it.
    let mut padding: Vec<usize> = Vec::with_capacity(prompts.len());
    for prompt in prompts {
        let pad = padded_len - prompt.len();
        input.extend(std::iter::repeat_n(tokenizer.pad_id(), pad));
        input.extend_from_slice(prompt);
        padding.push(pad);
    }
    let input = Tensor::from_vec(input, (prompts.len(), padded_len), device)?;
    let mut cache = model.new_cache();
    // The last generated token is never fed back, and no row outlives its own context: the
    // shortest prompt's row runs longest. The cache is as wide as the padded batch, so it can
    // outgrow the context when that row keeps going after a long prompt's row has filled it.
    let shortest = prompts.iter().map(Vec::len).min().unwrap_or(0);
    let steps = config.max_new_tokens.min(max_context - shortest);
    cache.reserve(padded_len + steps - 1)?;
    let mut next_logits = last_position_logits(model, &input, &padding, &mut cache)?;

    let sampling = config.sampling();
    let vocab = model.vocab_size();
    // `active[j]` is the row at batch position `j`.
    let mut active: Vec<usize> = (0..rows.len()).collect();
    let mut finished: Vec<Option<FinishReason>> = vec![None; rows.len()];
    while !active.is_empty() {
        let logits_rows = next_logits
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        // Each row's pass over its vocabulary-wide logits on its own thread: rows draw from
        // their own random streams, so the order does not matter.
        let mut active_rows = rows_at(&mut rows, &active);
        active_rows
            .par_iter_mut()
            .zip(logits_rows.par_chunks_exact(vocab))
            .for_each(|(row, logits)| {
                let token = next_token(logits, &sampling, &mut row.rng);
                row.token_ids.push(token);
                row.logprobs.push(log_softmax_at(logits, token as usize));
            });
        let mut still_active = Vec::with_capacity(active.len());
        for (batch_pos, row) in active_rows.into_iter().enumerate() {
            let token = *row.token_ids.last().expect("a token was just generated");
            match row.stop_reason(token, tokenizer, config, max_context)? {
                Some(reason) => finished[active[batch_pos]] = Some(reason),
                None => still_active.push(batch_pos),
            }
        }
        if still_active.is_empty() {
            break;
        }
        if still_active.len() < active.len() {
            // Finished rows leave the batch and the cache, so the others stop paying for them.
            cache.select_rows(&still_active)?;
            padding = still_active.iter().map(|&pos| padding[pos]).collect();
            active = still_active.iter().map(|&pos| active[pos]).collect();
        }
        let last_tokens: Vec<u32> = active
            .iter()
            .map(|&row_index| {
                *rows[row_index]
                    .token_ids
                    .last()
                    .expect("a token was just generated")
            })
            .collect();
        let input = Tensor::from_vec(last_tokens, (active.len(), 1), device)?;
        next_logits = last_position_logits(model, &input, &padding, &mut cache)?;
    }

    rows.into_iter()
        .zip(finished)
        .map(|(row, reason)| row.finish(tokenizer, reason.expect("every row finishes")))
        .collect()
}

/// The rows at the (increasing) indices `active`, in that order.
fn rows_at<'a>(rows: &'a mut [Row], active: &[usize]) -> Vec<&'a mut Row> {
    let mut wanted = active.iter().peekable();
    rows.iter_mut()
        .enumerate()
        .filter_map(|(index, row)| wanted.next_if_eq(&&index).map(|_| row))
        .collect()
}

/// Errors name a prompt by its row key (its index in the caller's whole input).
fn validate_prompts<M: CausalLm + ?Sized>(
    model: &M,
    prompts: &[Vec<u32>],
    row_keys: &[u64],
) -> Result<()> {
    let vocab = model.vocab_size();
    for (prompt, &key) in prompts.iter().zip(row_keys) {
        let index = key as usize;
        if prompt.is_empty() {
            return Err(ModelError::InvalidPrompt {
                index,
                message: "is empty; a model needs at least one token to continue".to_string(),
            });
        }
        if prompt.len() >= model.max_context() {
            return Err(ModelError::InvalidPrompt {
                index,
                message: format!(
                    "has {} tokens, leaving no room in the model's {}-token context",
                    prompt.len(),
                    model.max_context()
                ),
            });
        }
        if let Some(&id) = prompt.iter().find(|&&id| id as usize >= vocab) {
            return Err(ModelError::InvalidPrompt {
                index,
                message: format!("token id {id} is outside the model's vocabulary of {vocab}"),
            });
        }
    }
    Ok(())
}

/// Runs `input` through the model (appending to `cache`) and returns the logits of each row's last
/// position, `[batch, vocab]`. The LM head runs on that position only: logits for a whole
/// left-padded prompt batch would be `batch * seq * vocab` floats, gigabytes for long prompts.
fn last_position_logits<M: CausalLm + ?Sized>(
    model: &M,
    input: &Tensor,
    padding: &[usize],
    cache: &mut KvCache,
) -> Result<Tensor> {
    let seq = input.dim(1)?;
    let mask = attention_mask(padding, cache.seq_len() + seq, model.device())?;
    let hidden = model.hidden_states(input, Some(&mask), Some(cache))?;
    model.logits_from_hidden(&hidden.i((.., seq - 1, ..))?.contiguous()?)
}

/// `[batch, width]` mask of rows whose first `padding[row]` positions are padding.
fn attention_mask(padding: &[usize], width: usize, device: &candle_core::Device) -> Result<Tensor> {
    let flat: Vec<u32> = padding
        .iter()
        .flat_map(|&pad| (0..width).map(move |position| u32::from(position >= pad)))
        .collect();
    Ok(Tensor::from_vec(flat, (padding.len(), width), device)?)
}

/// The generation state of one prompt.
struct Row {
    prompt_len: usize,
    rng: ChaCha20Rng,
    token_ids: Vec<u32>,
    logprobs: Vec<f32>,
    /// Byte offset in the decoded text where a stop string begins, once one has appeared.
    stop_at: Option<usize>,
}

impl Row {
    fn new(prompt_len: usize, seed: u64, key: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        rng.set_stream(key);
        Self {
            prompt_len,
            rng,
            token_ids: Vec::new(),
            logprobs: Vec::new(),
            stop_at: None,
        }
    }

    /// Why the row stops after generating `token`, if it does.
    fn stop_reason(
        &mut self,
        token: u32,
        tokenizer: &Tokenizer,
        config: &GenerationConfig,
        max_context: usize,
    ) -> Result<Option<FinishReason>> {
        if config.stop_at_eos && token == tokenizer.eos_id() {
            return Ok(Some(FinishReason::Eos));
        }
        if !config.stop_strings.is_empty() {
            // Decoding the whole continuation each step (rather than the new token alone) finds
            // stop strings split across tokens and characters split across byte-level tokens.
            let text = tokenizer.decode(&self.token_ids)?;
            self.stop_at = config
                .stop_strings
                .iter()
                .filter_map(|stop| text.find(stop.as_str()))
                .min();
            if self.stop_at.is_some() {
                return Ok(Some(FinishReason::StopString));
            }
        }
        if self.token_ids.len() >= config.max_new_tokens {
            return Ok(Some(FinishReason::MaxNewTokens));
        }
        // The next token would sit at position `prompt_len + generated`, past the last one.
        if self.prompt_len + self.token_ids.len() >= max_context {
            return Ok(Some(FinishReason::ContextFull));
        }
        Ok(None)
    }

    fn finish(mut self, tokenizer: &Tokenizer, finish_reason: FinishReason) -> Result<Generation> {
        let text_ids = match finish_reason {
            FinishReason::Eos => &self.token_ids[..self.token_ids.len() - 1],
            _ => &self.token_ids[..],
        };
        let mut text = tokenizer.decode(text_ids)?;
        if let Some(stop_at) = self.stop_at {
            text.truncate(stop_at);
            // Keep the shortest prefix of tokens whose text covers the reply.
            let mut keep = 0;
            while keep < self.token_ids.len()
                && tokenizer.decode(&self.token_ids[..keep])?.len() < stop_at
            {
                keep += 1;
            }
            self.token_ids.truncate(keep);
            self.logprobs.truncate(keep);
        }
        Ok(Generation {
            text,
            token_ids: self.token_ids,
            logprobs: self.logprobs,
            finish_reason,
        })
    }
}
