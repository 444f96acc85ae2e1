//! Generation on tiny random GPT-Neo, GPT-2 and Llama (grouped-query attention) models: the KV cache (including GPT-Neo's sliding
//! window, 16 tokens in the tiny config, which these sequences outgrow) against recomputing the whole
//! sequence, left-padded batches against single rows, and the returned log-probs against the
//! separately written `continuation_logprobs`.

use candle_core::{DType, Device, IndexOp, Tensor};
use rlxf_model::{
    continuation_logprobs_vec, generate, generate_keyed, CausalLm, FinishReason, GenerationConfig,
    Gpt2Config, GptNeoConfig, LlamaConfig, LoadedModel, ModelConfig, Padding, Tokenizer,
};

fn tiny_models() -> Vec<(&'static str, LoadedModel)> {
    let device = Device::Cpu;
    vec![
        (
            "gpt-neo",
            LoadedModel::init_random(
                ModelConfig::GptNeo(GptNeoConfig::tiny()),
                3,
                &device,
                DType::F32,
            )
            .unwrap(),
        ),
        (
            "gpt2",
            LoadedModel::init_random(
                ModelConfig::Gpt2(Gpt2Config::tiny()),
                3,
                &device,
                DType::F32,
            )
            .unwrap(),
        ),
        (
            "llama",
            LoadedModel::init_random(
                ModelConfig::Llama(LlamaConfig::tiny()),
                3,
                &device,
                DType::F32,
            )
            .unwrap(),
        ),
    ]
}

fn prompts(tokenizer: &Tokenizer) -> Vec<Vec<u32>> {
    [
        "\n\nHuman: Tell me a story about a dragon.\n\nAssistant:",
        "Hi",
        "The quick brown fox jumps over the lazy dog",
    ]
    .iter()
    .map(|text| tokenizer.encode(text).unwrap())
    .collect()
}

fn greedy_by_recomputation(model: &dyn CausalLm, prompt: &[u32], steps: usize) -> Vec<u32> {
    let mut ids = prompt.to_vec();
    for _ in 0..steps {
        let input = Tensor::new(ids.as_slice(), model.device())
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = model.forward(&input, None, None).unwrap();
        let last: Vec<f32> = logits.i((0, ids.len() - 1)).unwrap().to_vec1().unwrap();
        ids.push(rlxf_model::sampling::argmax(&last) as u32);
    }
    ids[prompt.len()..].to_vec()
}

const STEPS: usize = 24;

#[test]
fn kv_cache_generation_matches_recomputation_and_single_rows() {
    let tokenizer = Tokenizer::gpt2();
    let prompts = prompts(&tokenizer);
    let greedy = GenerationConfig {
        stop_at_eos: false,
        ..GenerationConfig::greedy(STEPS)
    };
    for (name, model) in tiny_models() {
        let batched = generate(&model, &tokenizer, &prompts, &greedy).unwrap();
        for (index, (prompt, output)) in prompts.iter().zip(&batched).enumerate() {
            assert_eq!(output.finish_reason, FinishReason::MaxNewTokens);
            assert_eq!(
                output.token_ids,
                greedy_by_recomputation(&model, prompt, STEPS),
                "{name} row {index}"
            );
            let alone =
                generate(&model, &tokenizer, std::slice::from_ref(prompt), &greedy).unwrap();
            assert_eq!(
                alone[0].token_ids, output.token_ids,
                "{name} row {index} alone"
            );
        }
    }
}

#[test]
fn sampled_logprobs_match_continuation_logprobs_and_batching() {
    let tokenizer = Tokenizer::gpt2();
    let prompts = prompts(&tokenizer);
    let config = GenerationConfig {
        max_new_tokens: 20,
        temperature: 1.0,
        top_k: Some(40),
        seed: 42,
        stop_at_eos: false,
        ..Default::default()
    };
    for (name, model) in tiny_models() {
        let outputs = generate(&model, &tokenizer, &prompts, &config).unwrap();
        let continuations: Vec<Vec<u32>> = outputs.iter().map(|o| o.token_ids.clone()).collect();
        let reference =
            continuation_logprobs_vec(&model, &prompts, &continuations, Padding::Right).unwrap();
        for (output, expected) in outputs.iter().zip(&reference) {
            assert_eq!(output.logprobs.len(), expected.len());
            for (got, want) in output.logprobs.iter().zip(expected) {
                assert!((got - want).abs() < 1e-3, "{name}: {got} vs {want}");
            }
        }
        for (index, prompt) in prompts.iter().enumerate() {
            let alone = generate_keyed(
                &model,
                &tokenizer,
                std::slice::from_ref(prompt),
                &[index as u64],
                &config,
            )
            .unwrap();
            assert_eq!(
                alone[0].token_ids, outputs[index].token_ids,
                "{name} row {index}"
            );
        }
        assert_eq!(
            outputs,
            generate(&model, &tokenizer, &prompts, &config).unwrap(),
            "{name}: same seed, same output"
        );
    }
}

/// Rows reach the context at different steps: each finishes `ContextFull` at its own limit and the
/// others go on, exactly as each does alone. The padded batch then holds more slots than the
/// context (the long prompt's width plus every step), which used to fail the whole batch with
/// `SequenceTooLong`.
#[test]
fn rows_finish_at_their_own_context_limit_while_the_others_continue() {
    let tokenizer = Tokenizer::gpt2();
    let greedy = GenerationConfig {
        stop_at_eos: false,
        ..GenerationConfig::greedy(25)
    };
    let prompt = |len: u32| {
        (0..len)
            .map(|i| (i * 7919 + len) % 50_000)
            .collect::<Vec<u32>>()
    };
    let prompts = [prompt(28), prompt(10), prompt(3)];
    // The tiny models with a 32-token context (GPT-Neo's local window, 16, still shorter).
    for config in [
        ModelConfig::GptNeo(GptNeoConfig {
            max_position_embeddings: 32,
            ..GptNeoConfig::tiny()
        }),
        ModelConfig::Gpt2(Gpt2Config {
            n_positions: 32,
            ..Gpt2Config::tiny()
        }),
        ModelConfig::Llama(LlamaConfig {
            max_position_embeddings: 32,
            ..LlamaConfig::tiny()
        }),
    ] {
        let model = LoadedModel::init_random(config, 5, &Device::Cpu, DType::F32).unwrap();
        let context = model.max_context();
        let outputs = generate(&model, &tokenizer, &prompts, &greedy).unwrap();
        let expected = [
            (FinishReason::ContextFull, context - 28),
            (FinishReason::ContextFull, context - 10),
            (FinishReason::MaxNewTokens, 25),
        ];
        for ((prompt, output), (reason, generated)) in prompts.iter().zip(&outputs).zip(expected) {
            assert_eq!(output.finish_reason, reason);
            assert_eq!(output.token_ids.len(), generated);
            let alone =
                generate(&model, &tokenizer, std::slice::from_ref(prompt), &greedy).unwrap();
            assert_eq!(alone[0].token_ids, output.token_ids);
            for (got, want) in output.logprobs.iter().zip(&alone[0].logprobs) {
                assert!((got - want).abs() < 1e-4, "{got} vs {want}");
            }
        }
    }
}
