//! Generation on a tiny deterministic mock model with a real KV cache, where every expected value
//! can be recomputed by brute force: cache vs. full recomputation, batched vs. unbatched, seeded
//! sampling, filters that collapse to greedy, returned log-probs vs. a full forward, stop strings.

use candle_core::{Device, IndexOp, Tensor};
use rlxf_model::tokenizer::Tokenizer;
use rlxf_model::{
    generate, generate_keyed, CausalLm, FinishReason, GenerationConfig, KvCache, Result,
};

/// A one-layer "attention" model over the GPT-2 vocabulary restricted to a few ids that matter.
///
/// Keys are `(token, position)` pairs, position taken from the attention mask as the trait
/// requires (`cumsum(mask) - 1`). The hidden state of a query is a mask-weighted sum over the
/// keys it may see (causal, padding excluded) of features of each key, and the logits are a fixed
/// nonlinear function of it. Any cache, mask or position mistake changes the logits.
struct MockLm {
    device: Device,
    vocab: usize,
    max_context: usize,
}

const HIDDEN: usize = 4;

impl MockLm {
    fn new(max_context: usize) -> Self {
        Self {
            device: Device::Cpu,
            vocab: 50257,
            max_context,
        }
    }

    fn features(token: u32, position: u32) -> [f32; HIDDEN] {
        let t = token as f32;
        let p = position as f32;
        [
            (t * 0.37).sin(),
            (t * 0.11 + p * 0.5).cos(),
            (p * 0.7).sin() * 0.5,
            ((t * 13.0 + p) % 7.0) / 7.0,
        ]
    }
}

/// The ids the mock prefers: letters and the HH stop marker pieces, so sampled text is decodable
/// and stop strings actually occur.
const FAVOURED: [u32; 8] = [64, 65, 66, 198, 20490, 25, 50256, 220];

impl CausalLm for MockLm {
    fn device(&self) -> &Device {
        &self.device
    }
    fn vocab_size(&self) -> usize {
        self.vocab
    }
    fn hidden_size(&self) -> usize {
        HIDDEN
    }
    fn num_layers(&self) -> usize {
        1
    }
    fn max_context(&self) -> usize {
        self.max_context
    }

    fn hidden_states(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (batch, seq) = input_ids.dims2()?;
        let past = cache.as_ref().map_or(0, |cache| cache.seq_len());
        let total = past + seq;
        let mask: Vec<Vec<u32>> = match attention_mask {
            Some(mask) => mask.to_vec2()?,
            None => vec![vec![1; total]; batch],
        };
        assert_eq!(mask[0].len(), total, "mask covers cached and new positions");
        let ids: Vec<Vec<u32>> = input_ids.to_vec2()?;
        // New keys `[batch, 1, seq, 2]` of (token, position), appended to the cache.
        let mut new_keys = Vec::with_capacity(batch * seq * 2);
        for (row, row_ids) in ids.iter().enumerate() {
            for (offset, &token) in row_ids.iter().enumerate() {
                let position = mask[row][..=past + offset]
                    .iter()
                    .sum::<u32>()
                    .saturating_sub(1);
                new_keys.extend([token as f32, position as f32]);
            }
        }
        let new_keys = Tensor::from_vec(new_keys, (batch, 1, seq, 2), &self.device)?;
        let keys = match cache {
            Some(cache) => cache.append(0, &new_keys, &new_keys)?.0,
            None => new_keys,
        };
        let keys: Vec<Vec<Vec<f32>>> = keys.squeeze(1)?.to_vec3()?;
        let mut hidden = Vec::with_capacity(batch * seq * HIDDEN);
        for row in 0..batch {
            for offset in 0..seq {
                let query = past + offset;
                let mut state = [0f32; HIDDEN];
                for key in 0..=query {
                    if mask[row][key] == 0 {
                        continue;
                    }
                    let features =
                        Self::features(keys[row][key][0] as u32, keys[row][key][1] as u32);
                    let weight = 1.0 / (1.0 + (query - key) as f32);
                    for (s, f) in state.iter_mut().zip(features) {
                        *s += weight * f;
                    }
                }
                hidden.extend(state);
            }
        }
        Ok(Tensor::from_vec(
            hidden,
            (batch, seq, HIDDEN),
            &self.device,
        )?)
    }

    fn logits_from_hidden(&self, hidden: &Tensor) -> Result<Tensor> {
        let dims = hidden.dims().to_vec();
        let flat: Vec<f32> = hidden.flatten_all()?.to_vec1()?;
        let rows = flat.len() / HIDDEN;
        let mut logits = vec![-4.0f32; rows * self.vocab];
        for row in 0..rows {
            let h = &flat[row * HIDDEN..(row + 1) * HIDDEN];
            let out = &mut logits[row * self.vocab..(row + 1) * self.vocab];
            for (rank, &id) in FAVOURED.iter().enumerate() {
                let r = rank as f32;
                out[id as usize] =
                    2.0 * (h[0] * (r + 1.0) + h[1] * r * 0.5 + h[2] - h[3] * r).sin() + h[3];
            }
            // A little mass everywhere else, varying with the state, so log-probs are not trivial.
            for (id, logit) in out.iter_mut().enumerate().step_by(997) {
                *logit += (h[1] + id as f32 * 0.001).cos();
            }
        }
        let mut shape = dims;
        *shape.last_mut().unwrap() = self.vocab;
        Ok(Tensor::from_vec(logits, shape, &self.device)?)
    }
}

fn tokenizer() -> Tokenizer {
    Tokenizer::gpt2()
}

const PROMPTS: [&[u32]; 3] = [&[64, 65, 66, 198], &[20490], &[66, 66, 25, 64, 220, 65, 65]];

fn prompts() -> Vec<Vec<u32>> {
    PROMPTS.iter().map(|p| p.to_vec()).collect()
}

fn no_eos(config: GenerationConfig) -> GenerationConfig {
    GenerationConfig {
        stop_at_eos: false,
        ..config
    }
}

/// Greedy decoding by re-running the whole unpadded sequence through the model at every step.
fn greedy_by_recomputation(model: &MockLm, prompt: &[u32], steps: usize) -> Vec<u32> {
    let mut ids = prompt.to_vec();
    for _ in 0..steps {
        let input = Tensor::new(ids.as_slice(), &model.device)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = model.forward(&input, None, None).unwrap();
        let last: Vec<f32> = logits.i((0, ids.len() - 1)).unwrap().to_vec1().unwrap();
        ids.push(rlxf_model::sampling::argmax(&last) as u32);
    }
    ids[prompt.len()..].to_vec()
}

#[test]
fn kv_cache_greedy_equals_full_recomputation() {
    let model = MockLm::new(64);
    let config = no_eos(GenerationConfig::greedy(12));
    let outputs = generate(&model, &tokenizer(), &prompts(), &config).unwrap();
    for (prompt, output) in PROMPTS.iter().zip(&outputs) {
        assert_eq!(
            output.token_ids,
            greedy_by_recomputation(&model, prompt, 12)
        );
        assert_eq!(output.finish_reason, FinishReason::MaxNewTokens);
    }
    // The mock must not be trivially constant, or the comparison above proves nothing.
    let distinct: std::collections::HashSet<_> =
        outputs.iter().flat_map(|o| o.token_ids.clone()).collect();
    assert!(distinct.len() >= 3, "{outputs:?}");
}

#[test]
fn batched_equals_unbatched_for_greedy_and_seeded_sampling() {
    let model = MockLm::new(64);
    for config in [
        no_eos(GenerationConfig::greedy(10)),
        GenerationConfig {
            max_new_tokens: 10,
            temperature: 1.3,
            seed: 11,
            ..GenerationConfig::default()
        },
        GenerationConfig {
            max_new_tokens: 10,
            temperature: 0.8,
            top_k: Some(4),
            top_p: Some(0.9),
            seed: 5,
            ..GenerationConfig::default()
        },
    ] {
        let batched = generate(&model, &tokenizer(), &prompts(), &config).unwrap();
        for (index, prompt) in prompts().into_iter().enumerate() {
            let alone =
                generate_keyed(&model, &tokenizer(), &[prompt], &[index as u64], &config).unwrap();
            assert_eq!(
                alone[0].token_ids, batched[index].token_ids,
                "row {index}, {config:?}"
            );
            assert_eq!(alone[0].finish_reason, batched[index].finish_reason);
            for (a, b) in alone[0].logprobs.iter().zip(&batched[index].logprobs) {
                assert!((a - b).abs() < 1e-5);
            }
        }
    }
}

#[test]
fn seeded_sampling_is_reproducible_and_seed_dependent() {
    let model = MockLm::new(64);
    let config = |seed| {
        no_eos(GenerationConfig {
            max_new_tokens: 16,
            temperature: 1.5,
            seed,
            ..GenerationConfig::default()
        })
    };
    let first = generate(&model, &tokenizer(), &prompts(), &config(3)).unwrap();
    let again = generate(&model, &tokenizer(), &prompts(), &config(3)).unwrap();
    assert_eq!(first, again);
    let other = generate(&model, &tokenizer(), &prompts(), &config(4)).unwrap();
    assert_ne!(
        first.iter().map(|o| &o.token_ids).collect::<Vec<_>>(),
        other.iter().map(|o| &o.token_ids).collect::<Vec<_>>()
    );
    // Rows draw from different streams: identical prompts need not sample identically.
    let same_prompt = vec![PROMPTS[0].to_vec(); 4];
    let rows = generate(&model, &tokenizer(), &same_prompt, &config(3)).unwrap();
    assert!(rows.iter().any(|row| row.token_ids != rows[0].token_ids));
}

#[test]
fn top_k_one_and_tiny_top_p_equal_greedy() {
    let model = MockLm::new(64);
    let greedy = generate(
        &model,
        &tokenizer(),
        &prompts(),
        &no_eos(GenerationConfig::greedy(10)),
    )
    .unwrap();
    for config in [
        GenerationConfig {
            top_k: Some(1),
            ..GenerationConfig::default()
        },
        GenerationConfig {
            top_p: Some(1e-6),
            ..GenerationConfig::default()
        },
    ] {
        let config = no_eos(GenerationConfig {
            max_new_tokens: 10,
            temperature: 2.0,
            seed: 9,
            ..config
        });
        let sampled = generate(&model, &tokenizer(), &prompts(), &config).unwrap();
        assert_eq!(sampled, greedy, "{config:?}");
    }
}

#[test]
fn logprobs_equal_log_softmax_of_a_full_forward() {
    let model = MockLm::new(64);
    let config = no_eos(GenerationConfig {
        max_new_tokens: 8,
        temperature: 0.7,
        top_k: Some(3),
        seed: 2,
        ..GenerationConfig::default()
    });
    let outputs = generate(&model, &tokenizer(), &prompts(), &config).unwrap();
    for (prompt, output) in PROMPTS.iter().zip(&outputs) {
        let sequence: Vec<u32> = prompt.iter().chain(&output.token_ids).copied().collect();
        let input = Tensor::new(sequence.as_slice(), &model.device)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = model
            .forward(&input, None, None)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let log_probs = candle_nn::ops::log_softmax(&logits, 1)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (step, (&token, &logprob)) in output.token_ids.iter().zip(&output.logprobs).enumerate()
        {
            // The token at sequence index prompt.len() + step was predicted from the position before.
            let expected = log_probs[prompt.len() + step - 1][token as usize];
            assert!(
                (logprob - expected).abs() < 1e-4,
                "step {step}: {logprob} vs {expected}"
            );
        }
    }
}

#[test]
fn stops_on_eos_and_stop_strings_and_truncates_the_text() {
    let model = MockLm::new(64);
    let tokenizer = tokenizer();
    // Greedy continuations without stopping, as the reference for where stops must land.
    let free = generate(
        &model,
        &tokenizer,
        &prompts(),
        &no_eos(GenerationConfig::greedy(40)),
    )
    .unwrap();
    let mut saw_stop = false;
    for stop in ["\n", "a", ":"] {
        let config = GenerationConfig {
            stop_strings: vec![stop.to_string()],
            ..GenerationConfig::greedy(40)
        };
        let outputs = generate(&model, &tokenizer, &prompts(), &config).unwrap();
        for (free, output) in free.iter().zip(&outputs) {
            let eos_at = free
                .token_ids
                .iter()
                .position(|&id| id == tokenizer.eos_id());
            let text_before_eos = tokenizer
                .decode(&free.token_ids[..eos_at.unwrap_or(free.token_ids.len())])
                .unwrap();
            match text_before_eos.find(stop) {
                Some(at) => {
                    saw_stop = true;
                    assert_eq!(output.finish_reason, FinishReason::StopString);
                    assert_eq!(output.text, text_before_eos[..at]);
                    let kept_text = tokenizer.decode(&output.token_ids).unwrap();
                    assert!(kept_text.starts_with(&output.text) && kept_text.len() >= at);
                    // Dropping the last kept token would no longer cover the text.
                    if let Some((_, shorter)) = output.token_ids.split_last() {
                        assert!(tokenizer.decode(shorter).unwrap().len() < at);
                    }
                    assert_eq!(output.logprobs.len(), output.token_ids.len());
                    assert_eq!(output.logprobs[..], free.logprobs[..output.token_ids.len()]);
                }
                None if eos_at.is_some() => {
                    assert_eq!(output.finish_reason, FinishReason::Eos);
                    assert_eq!(output.token_ids, free.token_ids[..=eos_at.unwrap()]);
                    assert_eq!(*output.token_ids.last().unwrap(), tokenizer.eos_id());
                    assert_eq!(output.text, text_before_eos);
                }
                None => assert_eq!(output.finish_reason, FinishReason::MaxNewTokens),
            }
        }
    }
    assert!(saw_stop, "the mock never produced a stop string: {free:?}");
}

#[test]
fn eos_ends_a_row_while_others_continue() {
    let model = MockLm::new(64);
    let tokenizer = tokenizer();
    // Sample many rows until some hit EOS early and others do not, then check each row alone.
    let rows: Vec<Vec<u32>> = (0..12).map(|i| PROMPTS[i % 3].to_vec()).collect();
    let config = GenerationConfig {
        max_new_tokens: 12,
        temperature: 1.0,
        seed: 1,
        ..GenerationConfig::default()
    };
    let outputs = generate(&model, &tokenizer, &rows, &config).unwrap();
    let eos_rows: Vec<_> = outputs
        .iter()
        .filter(|o| o.finish_reason == FinishReason::Eos)
        .collect();
    assert!(
        !eos_rows.is_empty() && eos_rows.len() < outputs.len(),
        "{outputs:?}"
    );
    for output in &eos_rows {
        assert_eq!(*output.token_ids.last().unwrap(), tokenizer.eos_id());
        assert!(!output.token_ids[..output.token_ids.len() - 1].contains(&tokenizer.eos_id()));
        assert!(!output.text.contains("<|endoftext|>"));
    }
    for (index, prompt) in rows.iter().enumerate() {
        let alone = generate_keyed(
            &model,
            &tokenizer,
            std::slice::from_ref(prompt),
            &[index as u64],
            &config,
        )
        .unwrap();
        assert_eq!(alone[0], outputs[index], "row {index}");
    }
}

#[test]
fn context_limit_and_invalid_inputs() {
    let model = MockLm::new(10);
    let outputs = generate(
        &model,
        &tokenizer(),
        &prompts(),
        &no_eos(GenerationConfig::greedy(50)),
    )
    .unwrap();
    for (prompt, output) in PROMPTS.iter().zip(&outputs) {
        assert_eq!(output.finish_reason, FinishReason::ContextFull);
        assert_eq!(prompt.len() + output.token_ids.len(), 10);
    }
    let bad =
        |config: GenerationConfig| generate(&model, &tokenizer(), &prompts(), &config).unwrap_err();
    assert!(bad(GenerationConfig {
        temperature: -1.0,
        ..Default::default()
    })
    .is_bad_input());
    assert!(bad(GenerationConfig {
        top_p: Some(0.0),
        ..Default::default()
    })
    .is_bad_input());
    assert!(bad(GenerationConfig {
        top_k: Some(0),
        ..Default::default()
    })
    .is_bad_input());
    let err = generate(
        &model,
        &tokenizer(),
        &[vec![1, 2], vec![]],
        &GenerationConfig::default(),
    )
    .unwrap_err();
    assert!(
        err.is_bad_input() && err.to_string().contains("prompt 1"),
        "{err}"
    );
    let err = generate(
        &model,
        &tokenizer(),
        &[vec![0; 10]],
        &GenerationConfig::default(),
    )
    .unwrap_err();
    assert!(err.is_bad_input(), "{err}");
    let err = generate(
        &model,
        &tokenizer(),
        &[vec![60_000]],
        &GenerationConfig::default(),
    )
    .unwrap_err();
    assert!(err.is_bad_input(), "{err}");
    assert!(
        generate(&model, &tokenizer(), &[], &GenerationConfig::default())
            .unwrap()
            .is_empty()
    );
    let zero = generate(
        &model,
        &tokenizer(),
        &prompts(),
        &GenerationConfig::greedy(0),
    )
    .unwrap();
    assert!(zero
        .iter()
        .all(|o| o.token_ids.is_empty() && o.finish_reason == FinishReason::MaxNewTokens));
}
