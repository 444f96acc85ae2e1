//! The KV cache and batching change nothing: incremental logits equal full recomputation, with and
//! without left padding, and a padded batch equals its rows run alone.

mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use rlxf_model::{CausalLm, ModelConfig};

use common::{
    ids, max_abs_diff, random_model, small_gpt2_config, small_llama_config, small_neo_config,
    small_untied_llama_config,
};

const TOLERANCE: f32 = 1e-4;
const TOKENS: [u32; 10] = [3, 41, 7, 88, 19, 5, 60, 2, 33, 71];

fn configs() -> [ModelConfig; 4] {
    [
        small_neo_config(),
        small_gpt2_config(),
        small_llama_config(),
        small_untied_llama_config(),
    ]
}

#[test]
fn cached_steps_equal_full_recompute() {
    for config in configs() {
        let model = random_model(config.clone(), 11, DType::F32);
        let full = model.forward(&ids(&[&TOKENS]), None, None).unwrap();
        let mut cache = model.new_cache();
        // A 4-token prefill, then one token per step, longer than the local window.
        let prefill = model
            .forward(&ids(&[&TOKENS[..4]]), None, Some(&mut cache))
            .unwrap();
        assert!(max_abs_diff(&prefill, &full.i((.., ..4)).unwrap()) <= TOLERANCE);
        for step in 4..TOKENS.len() {
            let logits = model
                .forward(&ids(&[&TOKENS[step..=step]]), None, Some(&mut cache))
                .unwrap();
            let diff = max_abs_diff(&logits, &full.i((.., step..=step)).unwrap());
            assert!(
                diff <= TOLERANCE,
                "{}: step {step} differs by {diff}",
                config.model_type()
            );
        }
        assert_eq!(cache.seq_len(), TOKENS.len());
    }
}

#[test]
fn left_padded_batch_with_cache_equals_rows_alone() {
    let short = &TOKENS[..6];
    let pad = 0u32;
    let padded_short: Vec<u32> = std::iter::repeat_n(pad, 4)
        .chain(short.iter().copied())
        .collect();
    let mask_rows: [Vec<u32>; 2] = [vec![1; 10], [vec![0; 4], vec![1; 6]].concat()];
    let mask_flat: Vec<u32> = mask_rows.iter().flatten().copied().collect();
    let mask = Tensor::from_vec(mask_flat, (2, 10), &Device::Cpu).unwrap();
    let batch_ids = ids(&[&TOKENS, &padded_short]);
    for config in configs() {
        let model = random_model(config.clone(), 12, DType::F32);
        let kind = config.model_type();
        let full = model.forward(&batch_ids, Some(&mask), None).unwrap();

        let alone_long = model.forward(&ids(&[&TOKENS]), None, None).unwrap();
        let alone_short = model.forward(&ids(&[short]), None, None).unwrap();
        let diff = max_abs_diff(&full.i(0).unwrap(), &alone_long.i(0).unwrap());
        assert!(diff <= TOLERANCE, "{kind}: batched row 0 differs by {diff}");
        let diff = max_abs_diff(&full.i((1, 4..)).unwrap(), &alone_short.i(0).unwrap());
        assert!(
            diff <= TOLERANCE,
            "{kind}: padded row 1 differs from unpadded by {diff}"
        );

        let mut cache = model.new_cache();
        let prefill = model
            .forward(
                &batch_ids.i((.., ..7)).unwrap(),
                Some(&mask.i((.., ..7)).unwrap()),
                Some(&mut cache),
            )
            .unwrap();
        assert!(max_abs_diff(&prefill.i(0).unwrap(), &full.i((0, ..7)).unwrap()) <= TOLERANCE);
        assert!(
            max_abs_diff(&prefill.i((1, 4..)).unwrap(), &full.i((1, 4..7)).unwrap()) <= TOLERANCE
        );
        for step in 7..10 {
            let logits = model
                .forward(
                    &batch_ids.i((.., step..=step)).unwrap(),
                    Some(&mask.i((.., ..=step)).unwrap()),
                    Some(&mut cache),
                )
                .unwrap();
            let diff = max_abs_diff(&logits, &full.i((.., step..=step)).unwrap());
            assert!(
                diff <= TOLERANCE,
                "{kind}: cached step {step} differs by {diff}"
            );
        }
    }
}

#[test]
fn masks_of_the_wrong_shape_are_rejected() {
    let model = random_model(small_neo_config(), 1, DType::F32);
    let mask = Tensor::ones((1, 5), DType::U32, &Device::Cpu).unwrap();
    let err = model
        .forward(&ids(&[&TOKENS[..4]]), Some(&mask), None)
        .unwrap_err();
    assert!(err.is_bad_input());
    assert!(err.to_string().contains("[1, 5]"), "{err}");
}
