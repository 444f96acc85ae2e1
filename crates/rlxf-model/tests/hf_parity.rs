//! Logits parity with `transformers` on fixtures written by
//! `tests/reference/make_parity_fixtures.py` (tiny random GPT-Neo with global and local layers,
//! tiny random GPT-2; one plain sequence and one left-padded batch), and on the Llama fixtures of
//! `tests/reference/make_llama_fixtures.py` (grouped-query attention with a tied head; one key/value
//! head per query head with an untied head, projection biases and a wide head_dim).

mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use rlxf_model::{load_pretrained, CausalLm};

use common::{fixture, max_abs_diff};

const TOLERANCE: f64 = 1e-4;

fn check_parity(model_dir: &str, expected_from: &str) {
    let model = load_pretrained(
        fixture(model_dir).to_str().unwrap(),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let expected = candle_core::safetensors::load(
        fixture(expected_from).join("expected_logits.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let to_u32 = |name: &str| expected[name].to_dtype(DType::U32).unwrap();

    let single = model.forward(&to_u32("single_ids"), None, None).unwrap();
    let diff = max_abs_diff(&single, &expected["single_logits"]);
    println!("{model_dir}: single sequence max |dlogit| = {diff:e}");
    assert!(
        diff <= TOLERANCE,
        "{model_dir}: single sequence differs by {diff}"
    );

    // Left-padded batch: padded positions' outputs are meaningless in both libraries, so compare
    // real positions only.
    let mask = to_u32("batch_mask");
    let batch = model
        .forward(&to_u32("batch_ids"), Some(&mask), None)
        .unwrap();
    let expected_batch = &expected["batch_logits"];
    let mask_rows = mask.to_vec2::<u32>().unwrap();
    let mut worst = 0f64;
    for (row, real) in mask_rows.iter().enumerate() {
        let first_real = real.iter().position(|&m| m == 1).unwrap();
        let ours = batch.i((row, first_real..)).unwrap();
        let theirs = expected_batch.i((row, first_real..)).unwrap();
        worst = worst.max(max_abs_diff(&ours, &theirs));
    }
    println!("{model_dir}: left-padded batch max |dlogit| = {worst:e}");
    assert!(
        worst <= TOLERANCE,
        "{model_dir}: padded batch differs by {worst}"
    );
    // The test would be vacuous if the logits were near constant.
    let spread = expected_batch
        .flatten_all()
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap();
    assert!(spread.to_scalar::<f32>().unwrap() > 1.0);
}

#[test]
fn gpt_neo_matches_transformers() {
    check_parity("tiny-gpt-neo", "tiny-gpt-neo");
}

#[test]
fn gpt_neo_from_pytorch_bin_matches_transformers() {
    check_parity("tiny-gpt-neo-bin", "tiny-gpt-neo");
}

#[test]
fn gpt2_matches_transformers() {
    check_parity("tiny-gpt2", "tiny-gpt2");
}

#[test]
fn llama_with_grouped_query_attention_matches_transformers() {
    check_parity("tiny-llama", "tiny-llama");
}

#[test]
fn llama_untied_with_biases_matches_transformers() {
    check_parity("tiny-llama-untied", "tiny-llama-untied");
}

#[test]
fn bf16_model_stays_close_to_f32() {
    let dir = fixture("tiny-gpt-neo");
    let ids = Tensor::new(&[[5u32, 17, 300, 42, 9, 1, 77, 500]], &Device::Cpu).unwrap();
    let full = load_pretrained(dir.to_str().unwrap(), &Device::Cpu, DType::F32).unwrap();
    let half = load_pretrained(dir.to_str().unwrap(), &Device::Cpu, DType::BF16).unwrap();
    let a = full.forward(&ids, None, None).unwrap();
    let b = half.forward(&ids, None, None).unwrap();
    assert_eq!(b.dtype(), DType::BF16);
    let diff = max_abs_diff(&a, &b);
    assert!(diff < 0.5, "bf16 drifted by {diff}");
}
