//! The fused kernels against the differentiable compositions they replace (forward values and
//! every gradient) and against central finite differences in f64.

use candle_core::{DType, Device, Tensor, Var, D};
use rlxf_model::config::Activation;
use rlxf_model::fused_ops;

fn random(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    // A small LCG keeps the inputs fixed without a random-number dependency.
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let count: usize = shape.iter().product();
    let values: Vec<f64> = (0..count)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) * 4.0 - 2.0
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
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

/// A scalar loss that weights every output element differently, so every gradient entry matters.
fn weighted_sum(output: &Tensor, seed: u64) -> Tensor {
    let weights = random(output.dims(), seed, output.dtype());
    (output * weights).unwrap().sum_all().unwrap()
}

/// Checks `fused(inputs)` against `reference(inputs)`: values, and the gradients of a weighted sum
/// with respect to every input.
fn check_against_reference(
    shapes: &[&[usize]],
    dtype: DType,
    tolerance: f64,
    fused: impl Fn(&[Tensor]) -> Tensor,
    reference: impl Fn(&[Tensor]) -> Tensor,
) {
    let vars: Vec<Var> = shapes
        .iter()
        .enumerate()
        .map(|(i, shape)| Var::from_tensor(&random(shape, 10 + i as u64, dtype)).unwrap())
        .collect();
    let inputs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let fused_out = fused(&inputs);
    let reference_out = reference(&inputs);
    assert_eq!(fused_out.dims(), reference_out.dims());
    let diff = max_abs_diff(&fused_out, &reference_out);
    assert!(diff < tolerance, "forward differs by {diff}");
    let fused_grads = weighted_sum(&fused_out, 99).backward().unwrap();
    let reference_grads = weighted_sum(&reference_out, 99).backward().unwrap();
    for (i, input) in inputs.iter().enumerate() {
        let fused_grad = fused_grads.get(input).expect("fused gradient present");
        let reference_grad = reference_grads.get(input).expect("reference gradient");
        let diff = max_abs_diff(fused_grad, reference_grad);
        assert!(diff < tolerance, "gradient of input {i} differs by {diff}");
    }
}

/// Central finite differences of the weighted-sum loss for a few entries of each input (f64).
fn check_finite_differences(shapes: &[&[usize]], fused: impl Fn(&[Tensor]) -> Tensor) {
    let inputs: Vec<Var> = shapes
        .iter()
        .enumerate()
        .map(|(i, shape)| Var::from_tensor(&random(shape, 20 + i as u64, DType::F64)).unwrap())
        .collect();
    let tensors: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
    let grads = weighted_sum(&fused(&tensors), 7).backward().unwrap();
    let eps = 1e-6;
    for (i, var) in inputs.iter().enumerate() {
        let analytic = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let original = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        for index in (0..original.len()).step_by(original.len().div_ceil(7)) {
            let loss_at = |delta: f64| {
                let mut values = original.clone();
                values[index] += delta;
                let perturbed = Tensor::from_vec(values, var.dims(), &Device::Cpu).unwrap();
                let mut args = tensors.clone();
                args[i] = perturbed;
                weighted_sum(&fused(&args), 7).to_scalar::<f64>().unwrap()
            };
            let numeric = (loss_at(eps) - loss_at(-eps)) / (2.0 * eps);
            assert!(
                (numeric - analytic[index]).abs() < 1e-6 * (1.0 + numeric.abs()),
                "input {i}[{index}]: finite difference {numeric}, backward {}",
                analytic[index]
            );
        }
    }
}

const LAYER_NORM_SHAPES: &[&[usize]] = &[&[2, 5, 24], &[24], &[24]];

fn fused_layer_norm(t: &[Tensor]) -> Tensor {
    fused_ops::layer_norm(&t[0], &t[1], &t[2], 1e-5).unwrap()
}

#[test]
fn layer_norm_matches_the_composition_and_finite_differences() {
    let reference =
        |t: &[Tensor]| candle_nn::ops::layer_norm_slow(&t[0], &t[1], &t[2], 1e-5).unwrap();
    check_against_reference(
        LAYER_NORM_SHAPES,
        DType::F64,
        1e-12,
        fused_layer_norm,
        reference,
    );
    check_against_reference(
        LAYER_NORM_SHAPES,
        DType::F32,
        2e-5,
        fused_layer_norm,
        reference,
    );
    check_finite_differences(LAYER_NORM_SHAPES, fused_layer_norm);
}

const RMS_NORM_SHAPES: &[&[usize]] = &[&[2, 5, 24], &[24]];

fn fused_rms_norm(t: &[Tensor]) -> Tensor {
    fused_ops::rms_norm(&t[0], &t[1], 1e-6).unwrap()
}

#[test]
fn rms_norm_matches_the_composition_and_finite_differences() {
    let reference = |t: &[Tensor]| candle_nn::ops::rms_norm_slow(&t[0], &t[1], 1e-6).unwrap();
    check_against_reference(
        RMS_NORM_SHAPES,
        DType::F64,
        1e-12,
        fused_rms_norm,
        reference,
    );
    check_against_reference(RMS_NORM_SHAPES, DType::F32, 2e-5, fused_rms_norm, reference);
    check_finite_differences(RMS_NORM_SHAPES, fused_rms_norm);
}

#[test]
fn layer_norm_accepts_strided_input() {
    let x = random(&[6, 4], 3, DType::F32).t().unwrap();
    let weight = random(&[6], 4, DType::F32);
    let bias = random(&[6], 5, DType::F32);
    let fused = fused_ops::layer_norm(&x, &weight, &bias, 1e-5).unwrap();
    let reference = candle_nn::ops::layer_norm_slow(&x, &weight, &bias, 1e-5).unwrap();
    assert!(max_abs_diff(&fused, &reference) < 1e-5);
}

/// A causal mask `[1, 1, queries, keys]` (0 visible, `f32::MIN` hidden) plus, for batch row 1,
/// a hidden first key: the shapes attention uses, broadcast over heads and (for the causal part)
/// batch.
fn attention_mask(batch: usize, queries: usize, keys: usize, dtype: DType) -> Tensor {
    let past = keys - queries;
    let values: Vec<f32> = (0..batch)
        .flat_map(|b| {
            (0..queries).flat_map(move |q| {
                (0..keys).map(move |k| {
                    let hidden = k > past + q || (b == 1 && k == 0);
                    if hidden {
                        f32::MIN
                    } else {
                        0.0
                    }
                })
            })
        })
        .collect();
    Tensor::from_vec(values, (batch, 1, queries, keys), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

const SCORE_SHAPES: &[&[usize]] = &[&[2, 3, 4, 9]];

#[test]
fn masked_softmax_matches_the_composition_and_finite_differences() {
    for (mask_batch, scale) in [(1, 1.0), (2, 0.125)] {
        for dtype in [DType::F64, DType::F32] {
            let mask = attention_mask(mask_batch, 4, 9, dtype);
            let fused = |t: &[Tensor]| fused_ops::masked_softmax(&t[0], &mask, scale).unwrap();
            let reference = |t: &[Tensor]| {
                let scaled = (&t[0] * scale).unwrap().broadcast_add(&mask).unwrap();
                candle_nn::ops::softmax(&scaled, D::Minus1).unwrap()
            };
            let tolerance = if dtype == DType::F64 { 1e-12 } else { 1e-6 };
            check_against_reference(SCORE_SHAPES, dtype, tolerance, fused, reference);
        }
        let mask = attention_mask(mask_batch, 4, 9, DType::F64);
        check_finite_differences(SCORE_SHAPES, |t: &[Tensor]| {
            fused_ops::masked_softmax(&t[0], &mask, scale).unwrap()
        });
    }
}

#[test]
fn masked_softmax_of_a_fully_masked_row_is_uniform() {
    let scores = random(&[1, 1, 1, 4], 2, DType::F32);
    let mask = Tensor::full(f32::MIN, (1, 1, 1, 4), &Device::Cpu).unwrap();
    let probs = fused_ops::masked_softmax(&scores, &mask, 1.0)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(probs, vec![0.25; 4]);
}

#[test]
fn masked_softmax_rejects_a_mask_that_does_not_broadcast() {
    let scores = random(&[2, 3, 4, 9], 2, DType::F32);
    let mask = attention_mask(1, 4, 8, DType::F32);
    let error = fused_ops::masked_softmax(&scores, &mask, 1.0).unwrap_err();
    assert!(error.to_string().contains("does not broadcast"), "{error}");
}

#[test]
fn gelu_matches_candle_and_finite_differences_in_both_variants() {
    let shapes: &[&[usize]] = &[&[3, 50]];
    for (activation, reference) in [
        (
            Activation::GeluTanh,
            (|t: &[Tensor]| t[0].gelu().unwrap()) as fn(&[Tensor]) -> Tensor,
        ),
        (Activation::GeluErf, |t: &[Tensor]| t[0].gelu_erf().unwrap()),
    ] {
        let fused = |t: &[Tensor]| fused_ops::gelu(&t[0], activation).unwrap();
        // candle's own backward rounds its constants to six digits: compare loosely, and pin the
        // exact derivative with finite differences.
        check_against_reference(shapes, DType::F64, 1e-5, fused, reference);
        check_against_reference(shapes, DType::F32, 1e-5, fused, reference);
        check_finite_differences(shapes, fused);
    }
}

#[test]
fn swiglu_matches_the_composition_and_finite_differences() {
    let shapes: &[&[usize]] = &[&[2, 3, 10], &[2, 3, 10]];
    let fused = |t: &[Tensor]| fused_ops::swiglu(&t[0], &t[1]).unwrap();
    let reference = |t: &[Tensor]| (t[0].silu().unwrap() * &t[1]).unwrap();
    check_against_reference(shapes, DType::F64, 1e-12, fused, reference);
    check_against_reference(shapes, DType::F32, 1e-5, fused, reference);
    check_finite_differences(shapes, fused);
}

#[test]
fn token_logprobs_match_log_softmax_gather_and_finite_differences() {
    let targets = Tensor::new(&[3u32, 0, 7, 7, 1], &Device::Cpu).unwrap();
    let shapes: &[&[usize]] = &[&[5, 8]];
    let fused = |t: &[Tensor]| fused_ops::token_logprobs(&t[0], &targets).unwrap();
    let reference = |t: &[Tensor]| {
        candle_nn::ops::log_softmax(&t[0], D::Minus1)
            .unwrap()
            .gather(&targets.unsqueeze(1).unwrap(), 1)
            .unwrap()
            .squeeze(1)
            .unwrap()
    };
    check_against_reference(shapes, DType::F64, 1e-12, fused, reference);
    check_against_reference(shapes, DType::F32, 1e-6, fused, reference);
    check_finite_differences(shapes, fused);
}

#[test]
fn token_logprobs_reject_out_of_range_targets() {
    let logits = random(&[2, 4], 1, DType::F32);
    let targets = Tensor::new(&[1u32, 4], &Device::Cpu).unwrap();
    let error = fused_ops::token_logprobs(&logits, &targets).unwrap_err();
    assert!(error.to_string().contains("target 4 of row 1"), "{error}");
}

#[test]
fn softmax_entropy_matches_the_definition() {
    for dtype in [DType::F64, DType::F32] {
        let logits = random(&[3, 2, 11], 5, dtype);
        let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
        let reference = (log_probs.exp().unwrap() * log_probs)
            .unwrap()
            .sum(D::Minus1)
            .unwrap()
            .neg()
            .unwrap();
        let fused = fused_ops::softmax_entropy(&logits).unwrap();
        assert_eq!(fused.dims(), &[3, 2]);
        assert!(max_abs_diff(&fused, &reference) < 1e-6);
    }
    // A uniform row over 4 classes has entropy ln 4.
    let uniform = Tensor::zeros((1, 4), DType::F64, &Device::Cpu).unwrap();
    let entropy = fused_ops::softmax_entropy(&uniform)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    assert!((entropy[0] - 4f64.ln()).abs() < 1e-12);
}
