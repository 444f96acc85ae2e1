//! The KV cache and batching change nothing: incremental logits equal full recomputation, with and
//! without left padding, when the cache's buffers grow or are reserved mid-way, and after rows
//! leave the batch; a padded batch equals its rows run alone.

mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use rlxf_model::{CausalLm, KvCache, LoadedModel, ModelConfig};

use common::{
    ids, max_abs_diff, random_model, small_gpt2_config, small_llama_config, small_neo_config,
    small_untied_llama_config,
};

const TOLERANCE: f64 = 1e-4;
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

/// Feeds `tokens[from..]` one position per step (a batch of the rows `tokens`) and checks each
/// step's logits against `full`, the logits of the whole rows without a cache.
fn check_steps(
    model: &LoadedModel,
    cache: &mut KvCache,
    tokens: &[&[u32]],
    from: usize,
    full: &Tensor,
    what: &str,
) {
    for step in from..tokens[0].len() {
        let column: Vec<&[u32]> = tokens.iter().map(|row| &row[step..=step]).collect();
        let logits = model.forward(&ids(&column), None, Some(cache)).unwrap();
        let diff = max_abs_diff(&logits, &full.i((.., step..=step)).unwrap());
        assert!(diff <= TOLERANCE, "{what}: step {step} differs by {diff}");
    }
    assert_eq!(cache.seq_len(), tokens[0].len(), "{what}");
}

#[test]
fn cache_buffers_grow_and_reserve_without_changing_logits() {
    for config in configs() {
        let kind = config.model_type();
        let model = random_model(config.clone(), 13, DType::F32);
        let full = model.forward(&ids(&[&TOKENS]), None, None).unwrap();

        // Allocated for the 2-token prefill, then doubled as the steps outgrow it: 2, 4, 8, 16.
        let mut cache = model.new_cache();
        assert_eq!(cache.capacity(), 0);
        model
            .forward(&ids(&[&TOKENS[..2]]), None, Some(&mut cache))
            .unwrap();
        assert_eq!(cache.capacity(), 2, "{kind}");
        check_steps(&model, &mut cache, &[&TOKENS], 2, &full, kind);
        assert_eq!(cache.capacity(), 16, "{kind}: capacity doubles when full");

        // Reserving after the prefill moves the cached positions into the larger buffers.
        let mut cache = model.new_cache();
        model
            .forward(&ids(&[&TOKENS[..3]]), None, Some(&mut cache))
            .unwrap();
        cache.reserve(TOKENS.len()).unwrap();
        assert_eq!(cache.capacity(), TOKENS.len(), "{kind}");
        check_steps(&model, &mut cache, &[&TOKENS], 3, &full, kind);
        assert_eq!(
            cache.capacity(),
            TOKENS.len(),
            "{kind}: a reserved cache never grows"
        );
    }
}

#[test]
fn cache_growth_stops_at_the_model_context() {
    let model = random_model(small_neo_config(), 14, DType::F32);
    let long: Vec<u32> = (0..32).map(|i| (i * 7 + 3) % 97).collect();
    let full = model.forward(&ids(&[&long]), None, None).unwrap();
    let mut cache = model.new_cache();
    model
        .forward(&ids(&[&long[..20]]), None, Some(&mut cache))
        .unwrap();
    check_steps(&model, &mut cache, &[&long], 20, &full, "gpt_neo");
    // Doubling 20 would allocate 40 positions; the model attends over 32 at most.
    assert_eq!(cache.capacity(), 32);
}

#[test]
fn dropped_rows_leave_the_others_unchanged() {
    let rows: [&[u32]; 3] = [
        &TOKENS,
        &[9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
        &[50, 51, 52, 53, 54, 55, 56, 57, 58, 59],
    ];
    for config in configs() {
        let kind = config.model_type();
        let model = random_model(config.clone(), 15, DType::F32);
        let mut cache = model.new_cache();
        cache.reserve(6).unwrap();
        let prefix: Vec<&[u32]> = rows.iter().map(|row| &row[..5]).collect();
        model
            .forward(&ids(&prefix), None, Some(&mut cache))
            .unwrap();
        // Keep rows 2 and 0, in that order; the buffers then grow past the reserved 6 positions.
        cache.select_rows(&[2, 0]).unwrap();
        let kept = [rows[2], rows[0]];
        let full = model.forward(&ids(&kept), None, None).unwrap();
        check_steps(&model, &mut cache, &kept, 5, &full, kind);
        assert!(cache.capacity() > 6, "{kind}");

        let err = cache.select_rows(&[2]).unwrap_err();
        assert!(
            err.is_bad_input() && err.to_string().contains("row 2"),
            "{err}"
        );
    }
}

#[test]
fn appends_that_do_not_fit_the_cache_are_rejected() {
    let mut cache = KvCache::new(1);
    let keys = Tensor::zeros((1, 2, 3, 4), DType::F32, &Device::Cpu).unwrap();
    let (cached_keys, cached_values) = cache.append(0, &keys, &(&keys + 1.0).unwrap()).unwrap();
    assert_eq!(cached_keys.dims(), [1, 2, 3, 4]);
    assert_eq!(max_abs_diff(&cached_values, &(&keys + 1.0).unwrap()), 0.0);
    for (layer, new_keys, expected) in [
        (
            0,
            Tensor::zeros((1, 3, 1, 4), DType::F32, &Device::Cpu).unwrap(),
            "[1, 3, 1, 4]",
        ),
        (1, keys.clone(), "layer 1 does not exist"),
        (0, keys.squeeze(0).unwrap(), "[2, 3, 4]"),
    ] {
        let err = cache.append(layer, &new_keys, &new_keys).unwrap_err();
        assert!(
            err.is_bad_input() && err.to_string().contains(expected),
            "{err}"
        );
    }
    assert_eq!(cache.seq_len(), 3);
}
