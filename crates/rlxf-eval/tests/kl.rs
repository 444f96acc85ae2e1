//! KL to a reference model on tiny random GPT-2s: the batched, padded estimate equals the log-ratio
//! sum computed independently from each model's full unpadded logits (log-softmax in f64 here).

use rlxf_eval::{kl_metric, kl_to_reference, Evaluator, ResponseRecord};
use rlxf_model::{CausalLm, DType, Device, Gpt2Config, LoadedModel, ModelConfig, Tensor};

fn tiny_model(seed: u64) -> LoadedModel {
    let config = ModelConfig::Gpt2(Gpt2Config {
        vocab_size: 61,
        n_positions: 32,
        n_embd: 16,
        n_layer: 2,
        n_head: 2,
        ..Gpt2Config::tiny()
    });
    LoadedModel::init_random(config, seed, &Device::Cpu, DType::F32).unwrap()
}

/// `sum_t log p(response_t | prefix)` from one unpadded forward pass.
fn reference_logprob_sum(model: &dyn CausalLm, prompt: &[u32], response: &[u32]) -> f64 {
    let ids: Vec<u32> = prompt.iter().chain(response).copied().collect();
    let input = Tensor::from_vec(ids.clone(), (1, ids.len()), &Device::Cpu).unwrap();
    let logits = model
        .forward(&input, None, None)
        .unwrap()
        .squeeze(0)
        .unwrap();
    let rows = logits
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    (0..response.len())
        .map(|j| {
            let row = &rows[prompt.len() + j - 1];
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let log_normaliser = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
            row[response[j] as usize] - log_normaliser
        })
        .sum()
}

fn examples() -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let prompts = vec![vec![1, 2, 3], vec![7], vec![4, 5, 6, 8, 9], vec![10, 11]];
    let responses = vec![
        vec![12, 13, 14, 15],
        vec![16, 17],
        vec![],
        vec![18, 19, 20, 21, 22, 23],
    ];
    (prompts, responses)
}

#[test]
fn batched_estimates_match_unpadded_reference_computation() {
    let (policy, reference) = (tiny_model(1), tiny_model(2));
    let (prompts, responses) = examples();
    let estimates = kl_to_reference(&policy, &reference, &prompts, &responses, 3).unwrap();
    assert_eq!(estimates.len(), 4);
    for ((prompt, response), estimate) in prompts.iter().zip(&responses).zip(&estimates) {
        assert_eq!(estimate.tokens, response.len());
        let expected = reference_logprob_sum(&policy, prompt, response)
            - reference_logprob_sum(&reference, prompt, response);
        assert!(
            (estimate.sequence_kl - expected).abs() < 1e-4,
            "{} vs {expected}",
            estimate.sequence_kl
        );
        if !response.is_empty() {
            let mean = expected / response.len() as f64;
            assert!((estimate.mean_token_kl - mean).abs() < 1e-4);
            assert!(estimate.mean_token_k3 >= 0.0);
        }
    }
    // The empty response contributes nothing.
    assert_eq!(
        (estimates[2].sequence_kl, estimates[2].mean_token_k3),
        (0.0, 0.0)
    );
}

#[test]
fn a_model_has_zero_kl_to_itself() {
    let model = tiny_model(3);
    let (prompts, responses) = examples();
    for estimate in kl_to_reference(&model, &model, &prompts, &responses, 2).unwrap() {
        assert_eq!(estimate.sequence_kl, 0.0);
        assert_eq!(estimate.mean_token_k3, 0.0);
    }
}

#[test]
fn mismatched_inputs_are_rejected() {
    let model = tiny_model(4);
    let (prompts, responses) = examples();
    assert!(kl_to_reference(&model, &model, &prompts, &responses[..2], 2).is_err());
    assert!(kl_to_reference(&model, &model, &prompts, &responses, 0).is_err());
}

#[test]
fn kl_estimates_aggregate_as_a_metric() {
    let (policy, reference) = (tiny_model(5), tiny_model(6));
    let (prompts, responses) = examples();
    let estimates = kl_to_reference(&policy, &reference, &prompts, &responses, 4).unwrap();
    let records: Vec<ResponseRecord> = (0..prompts.len())
        .map(|i| ResponseRecord {
            policy: "dpo".into(),
            prompt_id: format!("p{i}"),
            prompt: "\n\nHuman: hi\n\nAssistant:".into(),
            response: format!("reply {i}"),
            context: None,
        })
        .collect();
    let metric = kl_metric(&records, &estimates).unwrap();
    let results = Evaluator::new(vec![Box::new(metric)], Vec::new())
        .evaluate(records)
        .unwrap();
    let cell = results.cell("dpo", "general", "kl_to_reference").unwrap();
    let mean = estimates.iter().map(|e| e.sequence_kl).sum::<f64>() / 4.0;
    assert_eq!(cell.n, 4);
    assert!((cell.value.unwrap() - mean).abs() < 1e-12);
}
