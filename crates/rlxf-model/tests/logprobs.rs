//! Batched continuation log-probs equal a direct computation: each example run alone, unpadded, with
//! log-softmax done by hand in f64.

mod common;

use candle_core::{DType, Device, IndexOp};
use rlxf_model::{continuation_logprobs_vec, CausalLm, ContinuationBatch, Padding};

use common::{ids, random_model, small_gpt2_config, small_neo_config};

fn direct_logprobs(model: &dyn CausalLm, prompt: &[u32], continuation: &[u32]) -> Vec<f32> {
    let tokens: Vec<u32> = prompt.iter().chain(continuation).copied().collect();
    let logits = model.forward(&ids(&[&tokens]), None, None).unwrap();
    continuation
        .iter()
        .enumerate()
        .map(|(j, &token)| {
            let row: Vec<f32> = logits
                .i((0, prompt.len() + j - 1))
                .unwrap()
                .to_vec1()
                .unwrap();
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let log_sum: f64 = row
                .iter()
                .map(|&x| (x as f64 - max).exp())
                .sum::<f64>()
                .ln();
            (row[token as usize] as f64 - max - log_sum) as f32
        })
        .collect()
}

#[test]
fn batched_logprobs_equal_direct_computation() {
    let prompts = vec![vec![4, 8, 15, 16, 23], vec![42], vec![7, 7, 1]];
    let continuations = vec![vec![3, 9], vec![11, 90, 5, 60, 2], vec![]];
    for config in [small_neo_config(), small_gpt2_config()] {
        let model = random_model(config.clone(), 31, DType::F32);
        for padding in [Padding::Left, Padding::Right] {
            let batched =
                continuation_logprobs_vec(&model, &prompts, &continuations, padding).unwrap();
            for (row, (prompt, continuation)) in prompts.iter().zip(&continuations).enumerate() {
                let expected = direct_logprobs(&model, prompt, continuation);
                assert_eq!(batched[row].len(), expected.len());
                for (got, want) in batched[row].iter().zip(&expected) {
                    assert!(
                        (got - want).abs() < 1e-4,
                        "{} {padding:?} row {row}: {got} vs {want}",
                        config.model_type()
                    );
                }
            }
        }
    }
}

#[test]
fn masks_and_tensors_line_up() {
    let model = random_model(small_neo_config(), 32, DType::F32);
    let batch = ContinuationBatch::new(
        &[vec![1, 2, 3], vec![4]],
        &[vec![5], vec![6, 7]],
        Padding::Left,
        0,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(
        batch.attention_mask.to_vec2::<u32>().unwrap(),
        vec![vec![1, 1, 1, 1], vec![0, 1, 1, 1]]
    );
    let out = rlxf_model::continuation_logprobs(&model, &batch).unwrap();
    assert_eq!(
        out.mask.to_vec2::<f32>().unwrap(),
        vec![vec![1.0, 0.0], vec![1.0, 1.0]]
    );
    assert_eq!(
        batch.input_ids.to_vec2::<u32>().unwrap()[1],
        vec![0, 4, 6, 7]
    );
    let values = out.logprobs.to_vec2::<f32>().unwrap();
    assert_eq!(values[0][1], 0.0);
    assert!(values[1].iter().all(|&v| v < 0.0));
}

#[test]
fn empty_prompts_are_rejected() {
    let err = ContinuationBatch::new(&[vec![]], &[vec![1]], Padding::Left, 0, &Device::Cpu)
        .err()
        .unwrap();
    assert!(err.is_bad_input());
    assert!(err.to_string().contains("prompt 0"), "{err}");
}
