//! Mixed precision: a bf16 forward over f32 parameters (`LoadedModel::set_compute_dtype`) against
//! the f32 forward of the same weights, for GPT-Neo, GPT-2 and Llama (tied and untied heads):
//! logits and log-probs agree to bf16 precision, log-probs come out f32, and every f32 master
//! parameter receives an f32 gradient close to the f32 one. The fused ops' wrappers widen bf16
//! inputs to the f32 kernels (checked against the f32 kernel on the same values), and setting the
//! compute dtype back to the parameters' dtype gives the plain forward bit for bit.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use rlxf_model::config::Activation;
use rlxf_model::{
    continuation_logprobs, continuation_logprobs_vec, fused_ops, generate, CausalLm,
    ContinuationBatch, GenerationConfig, GptNeoConfig, LoadedModel, ModelConfig, Padding,
    Tokenizer,
};

use common::{
    ids, max_abs_diff, random_model, random_tensor, small_gpt2_config, small_llama_config,
    small_neo_config, small_untied_llama_config,
};

fn architectures() -> Vec<(&'static str, ModelConfig)> {
    vec![
        ("gpt-neo", small_neo_config()),
        ("gpt2", small_gpt2_config()),
        ("llama", small_llama_config()),
        ("llama-untied", small_untied_llama_config()),
    ]
}

/// A model and the same weights computing in bf16.
fn f32_and_bf16(config: ModelConfig, seed: u64) -> (LoadedModel, LoadedModel) {
    let full = random_model(config.clone(), seed, DType::F32);
    let mut mixed = random_model(config, seed, DType::F32);
    mixed.set_compute_dtype(DType::BF16).unwrap();
    (full, mixed)
}

fn scale(tensor: &Tensor) -> f64 {
    tensor
        .to_dtype(DType::F64)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn l2(tensor: &Tensor) -> f64 {
    tensor
        .to_dtype(DType::F64)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
        .sqrt()
}

/// A left-padded batch (padding, positions from the mask) longer than GPT-Neo's local window.
fn batch() -> ContinuationBatch {
    ContinuationBatch::new(
        &[vec![5, 9, 23, 4, 61, 7], vec![17, 2]],
        &[vec![8, 30, 1, 66, 12, 40, 3], vec![44, 3, 90]],
        Padding::Left,
        0,
        &Device::Cpu,
    )
    .unwrap()
}

#[test]
fn bf16_logits_match_f32_to_bf16_precision() {
    let input = ids(&[
        &[3, 14, 15, 92, 65, 35, 89, 79],
        &[2, 71, 82, 81, 8, 28, 1, 83],
    ]);
    for (name, config) in architectures() {
        let full = random_model(config.clone(), 7, DType::F32);
        let reference = full.forward(&input, None, None).unwrap();
        // Relative RMS error of the logits with the forward in `dtype`.
        let error = |dtype: DType| {
            let mut model = random_model(config.clone(), 7, DType::F32);
            model.set_compute_dtype(dtype).unwrap();
            let logits = model.forward(&input, None, None).unwrap();
            assert_eq!(logits.dtype(), dtype, "{name}: hidden states in {dtype:?}");
            l2(&(logits.to_dtype(DType::F32).unwrap() - &reference).unwrap()) / l2(&reference)
        };
        let (bf16, f16) = (error(DType::BF16), error(DType::F16));
        println!("{name}: relative RMS logit error, bf16 {bf16:.5}, f16 {f16:.6}");
        // bf16 rounds to 8 significant bits (2^-9 relative); a few roundings per layer through
        // two layers and the head give about 1% here. A structural mistake (a norm in the wrong
        // dtype or place, a lost bias or cast) would not shrink with the precision: f16, three
        // more bits, must be several times closer.
        assert!(bf16 < 0.03, "{name}: bf16 relative error {bf16}");
        assert!(f16 < bf16 / 4.0, "{name}: f16 error {f16} vs bf16 {bf16}");
    }
}

#[test]
fn bf16_logprobs_are_f32_and_gradients_reach_every_f32_master() {
    let batch = batch();
    for (name, config) in architectures() {
        let (full, mixed) = f32_and_bf16(config, 11);
        let reference = continuation_logprobs(&full, &batch).unwrap();
        let logprobs = continuation_logprobs(&mixed, &batch).unwrap();
        assert_eq!(logprobs.logprobs.dtype(), DType::F32, "{name}");
        let relative =
            max_abs_diff(&logprobs.logprobs, &reference.logprobs) / scale(&reference.logprobs);
        println!("{name}: log-probs, max |bf16 - f32| / max |f32| = {relative:.5}");
        assert!(
            relative < 0.03,
            "{name}: relative log-prob error {relative}"
        );

        let reference_grads = reference
            .sums()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let grads = logprobs
            .sums()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let full_vars = full.varmap.data().lock().unwrap();
        let mixed_vars = mixed.varmap.data().lock().unwrap();
        assert!(!mixed_vars.is_empty());
        let mut worst = 0.0f64;
        for (param, var) in mixed_vars.iter() {
            assert_eq!(var.dtype(), DType::F32, "{name}: {param} stays f32");
            let grad = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient for {param}"));
            assert_eq!(grad.dtype(), DType::F32, "{name}: {param} gradient dtype");
            let norm = l2(grad);
            assert!(
                norm.is_finite() && norm > 0.0,
                "{name}: {param} gradient norm {norm}"
            );
            let expected = reference_grads.get(full_vars[param].as_tensor()).unwrap();
            // Measured at most about 0.06 (the backward's bf16 matmuls round too); a gradient
            // that missed a path (a detached cast, a head in the wrong dtype) is off by O(1).
            let error = l2(&(grad - expected).unwrap()) / l2(expected);
            assert!(
                error < 0.1,
                "{name}: {param} gradient differs from f32 by {error} (relative L2)"
            );
            worst = worst.max(error);
        }
        println!("{name}: largest relative L2 gradient error {worst:.4}");
    }
}

#[test]
fn compute_dtype_equal_to_the_parameters_is_the_plain_forward() {
    let input = ids(&[&[3, 14, 15, 92, 65, 35]]);
    for (name, config) in architectures() {
        let plain = random_model(config.clone(), 5, DType::F32);
        let mut round_trip = random_model(config, 5, DType::F32);
        round_trip.set_compute_dtype(DType::BF16).unwrap();
        round_trip.set_compute_dtype(DType::F32).unwrap();
        assert_eq!(round_trip.compute_dtype(), DType::F32);
        let expected = plain.forward(&input, None, None).unwrap();
        let logits = round_trip.forward(&input, None, None).unwrap();
        assert_eq!(logits.dtype(), DType::F32);
        assert_eq!(max_abs_diff(&logits, &expected), 0.0, "{name}");
    }
}

#[test]
fn compute_dtype_survives_into_inference_without_a_graph() {
    let mut model = random_model(small_neo_config(), 3, DType::F32);
    model.set_compute_dtype(DType::BF16).unwrap();
    let model = model.into_inference().unwrap();
    assert_eq!(model.compute_dtype(), DType::BF16);
    let logits = model.forward(&ids(&[&[1, 2, 3]]), None, None).unwrap();
    assert_eq!(logits.dtype(), DType::BF16);
    let grads = logits
        .to_dtype(DType::F32)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let vars = model.varmap.all_vars();
    assert!(vars.iter().all(|var| grads.get(var.as_tensor()).is_none()));
    // Setting it again keeps the model detached.
    let mut model = model;
    model.set_compute_dtype(DType::F32).unwrap();
    let logits = model.forward(&ids(&[&[1, 2, 3]]), None, None).unwrap();
    let grads = logits.sum_all().unwrap().backward().unwrap();
    assert!(vars.iter().all(|var| grads.get(var.as_tensor()).is_none()));
}

#[test]
fn a_non_float_compute_dtype_is_refused() {
    let mut model = random_model(small_neo_config(), 3, DType::F32);
    let err = model.set_compute_dtype(DType::U32).unwrap_err();
    assert!(err.to_string().contains("U32"), "{err}");
    assert_eq!(model.compute_dtype(), DType::F32);
}

#[test]
fn bf16_generation_with_the_kv_cache_scores_like_f32() {
    let mut model = LoadedModel::init_random(
        ModelConfig::GptNeo(GptNeoConfig::tiny()),
        3,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let tokenizer = Tokenizer::gpt2();
    let prompts = vec![tokenizer.encode("Hi there").unwrap(), vec![464, 2068]];
    let config = GenerationConfig {
        max_new_tokens: 20,
        temperature: 0.0,
        stop_at_eos: false,
        ..GenerationConfig::default()
    };
    model.set_compute_dtype(DType::BF16).unwrap();
    let generations = generate(&model, &tokenizer, &prompts, &config).unwrap();
    model.set_compute_dtype(DType::F32).unwrap();
    let continuations: Vec<Vec<u32>> = generations.iter().map(|g| g.token_ids.clone()).collect();
    let rescored =
        continuation_logprobs_vec(&model, &prompts, &continuations, Padding::Left).unwrap();
    for (generation, expected) in generations.iter().zip(&rescored) {
        assert_eq!(generation.token_ids.len(), 20);
        for (&got, &want) in generation.logprobs.iter().zip(expected) {
            // Log-probs of ~50k-way softmaxes (about -10.8): bf16 logits carry ~0.05 of error.
            assert!((got - want).abs() < 0.2, "bf16 {got} vs f32 {want}");
        }
    }
}

/// Runs `op` on bf16 activations (the first input) with f32 weights (the others) and checks it
/// against the f32 kernel on the same (bf16-representable) values: the output in
/// `expected_dtype`, equal to the f32 result after the same rounding, and f32 gradients for the
/// f32 inputs equal to the f32 kernel's.
fn check_widened(
    name: &str,
    shapes: &[&[usize]],
    expected_dtype: DType,
    op: impl Fn(&[Tensor]) -> Tensor,
) {
    let values: Vec<Tensor> = shapes
        .iter()
        .enumerate()
        .map(|(i, shape)| {
            // Round to bf16 first so both paths see exactly the same numbers.
            random_tensor(shape, 3 + i as u64, DType::F32)
                .to_dtype(DType::BF16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
        })
        .collect();
    let full_vars: Vec<Var> = values
        .iter()
        .map(|v| Var::from_tensor(v).unwrap())
        .collect();
    let mixed_vars: Vec<Var> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let dtype = if i == 0 { DType::BF16 } else { DType::F32 };
            Var::from_tensor(&v.to_dtype(dtype).unwrap()).unwrap()
        })
        .collect();
    let full_inputs: Vec<Tensor> = full_vars.iter().map(|v| v.as_tensor().clone()).collect();
    let mixed_inputs: Vec<Tensor> = mixed_vars.iter().map(|v| v.as_tensor().clone()).collect();
    let expected = op(&full_inputs);
    let output = op(&mixed_inputs);
    assert_eq!(output.dtype(), expected_dtype, "{name}: output dtype");
    let rounded = expected.to_dtype(expected_dtype).unwrap();
    assert_eq!(max_abs_diff(&output, &rounded), 0.0, "{name}: values");

    let weights = random_tensor(expected.dims(), 99, DType::F32);
    let loss = |out: &Tensor| {
        (out.to_dtype(DType::F32).unwrap() * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let full_grads = loss(&expected).backward().unwrap();
    let mixed_grads = loss(&output).backward().unwrap();
    for (i, (full, mixed)) in full_vars.iter().zip(&mixed_vars).enumerate() {
        let want = full_grads.get(full.as_tensor()).unwrap();
        let got = mixed_grads
            .get(mixed.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient for input {i}"));
        assert_eq!(got.dtype(), mixed.dtype(), "{name}: gradient {i} dtype");
        // The bf16 input's gradient is the f32 one rounded to bf16; the f32 weights' gradients
        // differ only by the bf16 rounding of the output gradient on the way back.
        let error = max_abs_diff(got, want) / scale(want);
        assert!(error < 1e-2, "{name}: gradient {i} off by {error}");
    }
}

#[test]
fn fused_wrappers_widen_bf16_inputs_to_the_f32_kernels() {
    let rows: &[usize] = &[3, 5, 16];
    let width: &[usize] = &[16];
    check_widened("layer_norm", &[rows, width, width], DType::BF16, |t| {
        fused_ops::layer_norm(&t[0], &t[1], &t[2], 1e-5).unwrap()
    });
    check_widened("rms_norm", &[rows, width], DType::BF16, |t| {
        fused_ops::rms_norm(&t[0], &t[1], 1e-6).unwrap()
    });
    for activation in [Activation::GeluTanh, Activation::GeluErf] {
        check_widened("gelu", &[rows], DType::BF16, |t| {
            fused_ops::gelu(&t[0], activation).unwrap()
        });
    }
    check_widened("swiglu", &[rows, rows], DType::BF16, |t| {
        fused_ops::swiglu(&t[0], &t[1]).unwrap()
    });
    let mask = Tensor::zeros((1, 1, 4, 6), DType::F32, &Device::Cpu).unwrap();
    check_widened("masked_softmax", &[&[2, 3, 4, 6]], DType::BF16, |t| {
        fused_ops::masked_softmax(&t[0], &mask, 0.5).unwrap()
    });
    let targets = Tensor::new(&[3u32, 0, 7, 7, 1], &Device::Cpu).unwrap();
    check_widened("token_logprobs", &[&[5, 9]], DType::F32, |t| {
        fused_ops::token_logprobs(&t[0], &targets).unwrap()
    });
    check_widened(
        "lm_head_token_logprobs",
        &[&[5, 16], &[9, 16]],
        DType::F32,
        |t| fused_ops::lm_head_token_logprobs(&t[0], &t[1], &targets).unwrap(),
    );
    let logits = random_tensor(&[5, 9], 4, DType::F32)
        .to_dtype(DType::BF16)
        .unwrap();
    let entropy = fused_ops::softmax_entropy(&logits).unwrap();
    let expected = fused_ops::softmax_entropy(&logits.to_dtype(DType::F32).unwrap()).unwrap();
    assert_eq!(entropy.dtype(), DType::F32);
    assert_eq!(max_abs_diff(&entropy, &expected), 0.0);
}
