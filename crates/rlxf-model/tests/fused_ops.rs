//! The fused kernels against the differentiable compositions they replace (forward values and
//! every gradient) and against central finite differences in f64.

mod common;

use candle_core::{DType, Device, Tensor, Var, D};
use rlxf_model::config::Activation;
use rlxf_model::fused_ops::{self, WeightLayout};

use common::{max_abs_diff, random_tensor as random};

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

/// What [`fused_ops::causal_self_attention`] replaces: heads split, `softmax(q k^T * scale + mask)
/// v` per head, heads merged back.
fn attention_composition(t: &[Tensor], mask: &Tensor, heads: usize, scale: f64) -> Tensor {
    let (batch, seq, width) = t[0].dims3().unwrap();
    let split = |x: &Tensor| {
        x.reshape((batch, seq, heads, width / heads))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    };
    let scores = split(&t[0]).matmul(&split(&t[1]).t().unwrap()).unwrap();
    let scores = (scores * scale).unwrap().broadcast_add(mask).unwrap();
    candle_nn::ops::softmax(&scores, D::Minus1)
        .unwrap()
        .matmul(&split(&t[2]))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((batch, seq, width))
        .unwrap()
}

/// [`attention_mask`] (`keys == queries`) further limited to a sliding window: query `i` sees keys
/// `i + 1 - window..=i`, as GPT-Neo's local layers.
fn sliding_window_mask(batch: usize, seq: usize, window: usize, dtype: DType) -> Tensor {
    let values: Vec<f32> = (0..seq)
        .flat_map(|q| (0..seq).map(move |k| if q >= k + window { f32::MIN } else { 0.0 }))
        .collect();
    let window = Tensor::from_vec(values, (1, 1, seq, seq), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    attention_mask(batch, seq, seq, dtype)
        .broadcast_minimum(&window)
        .unwrap()
}

/// Query, key and value `[batch, seq, heads * head_dim]` with 3 heads of 4.
const ATTENTION_SHAPES: &[&[usize]] = &[&[2, 7, 12], &[2, 7, 12], &[2, 7, 12]];
const ATTENTION_HEADS: usize = 3;

/// The masks attention sees: causal only (`[1, 1, 7, 7]`); causal with the first key of batch row 1
/// padded, so its first query sees nothing; and a sliding window of 3 on top of that.
fn attention_masks(dtype: DType) -> [(&'static str, Tensor); 3] {
    [
        ("causal", attention_mask(1, 7, 7, dtype)),
        ("padding", attention_mask(2, 7, 7, dtype)),
        ("window", sliding_window_mask(2, 7, 3, dtype)),
    ]
}

#[test]
fn causal_self_attention_matches_the_composition() {
    for dtype in [DType::F64, DType::F32] {
        let tolerance = if dtype == DType::F64 { 1e-12 } else { 2e-5 };
        for (name, mask) in attention_masks(dtype) {
            // GPT-Neo does not scale the scores, GPT-2 scales by 1/sqrt(head_dim).
            for scale in [1.0, 0.5] {
                println!("{dtype:?}, {name} mask, scale {scale}");
                let fused = |t: &[Tensor]| {
                    fused_ops::causal_self_attention(
                        &t[0],
                        &t[1],
                        &t[2],
                        &mask,
                        ATTENTION_HEADS,
                        scale,
                    )
                    .unwrap()
                };
                let reference =
                    |t: &[Tensor]| attention_composition(t, &mask, ATTENTION_HEADS, scale);
                check_against_reference(ATTENTION_SHAPES, dtype, tolerance, fused, reference);
                // Untracked inputs (inference) keep no probabilities: the same values.
                let plain: Vec<Tensor> = ATTENTION_SHAPES
                    .iter()
                    .enumerate()
                    .map(|(i, shape)| random(shape, 10 + i as u64, dtype))
                    .collect();
                let tracked: Vec<Tensor> = plain
                    .iter()
                    .map(|t| Var::from_tensor(t).unwrap().as_tensor().clone())
                    .collect();
                assert_eq!(max_abs_diff(&fused(&plain), &fused(&tracked)), 0.0);
            }
        }
    }
}

/// A padding query that sees no key attends uniformly: its output is the mean of every value row.
#[test]
fn causal_self_attention_of_a_fully_masked_query_is_the_mean_value() {
    let t: Vec<Tensor> = ATTENTION_SHAPES
        .iter()
        .enumerate()
        .map(|(i, shape)| random(shape, 30 + i as u64, DType::F64))
        .collect();
    let mask = attention_mask(2, 7, 7, DType::F64);
    let output =
        fused_ops::causal_self_attention(&t[0], &t[1], &t[2], &mask, ATTENTION_HEADS, 0.5).unwrap();
    let padded_query = output.get(1).unwrap().get(0).unwrap();
    let mean_value = t[2].get(1).unwrap().mean(0).unwrap();
    assert!(max_abs_diff(&padded_query, &mean_value) < 1e-14);
    // Batch row 0 is not padded: its first query sees only the first key.
    let first_query = output.get(0).unwrap().get(0).unwrap();
    let first_value = t[2].get(0).unwrap().get(0).unwrap();
    assert!(max_abs_diff(&first_query, &first_value) < 1e-14);
}

/// GPT-2's query, key and value are strided thirds of one `[batch, seq, 3 * width]` projection:
/// read in place, with the gradients landing in the right thirds.
#[test]
fn causal_self_attention_reads_the_thirds_of_a_fused_projection() {
    let thirds = |t: &[Tensor]| -> Vec<Tensor> {
        (0..3)
            .map(|i| t[0].narrow(2, 12 * i, 12).unwrap())
            .collect()
    };
    for (dtype, tolerance) in [(DType::F64, 1e-12), (DType::F32, 2e-5)] {
        let mask = attention_mask(2, 7, 7, dtype);
        let fused = |t: &[Tensor]| {
            let qkv = thirds(t);
            assert!(!qkv[0].is_contiguous());
            fused_ops::causal_self_attention(&qkv[0], &qkv[1], &qkv[2], &mask, ATTENTION_HEADS, 0.5)
                .unwrap()
        };
        let reference =
            |t: &[Tensor]| attention_composition(&thirds(t), &mask, ATTENTION_HEADS, 0.5);
        check_against_reference(&[&[2, 7, 36]], dtype, tolerance, fused, reference);
    }
}

#[test]
fn causal_self_attention_matches_finite_differences() {
    let shapes: &[&[usize]] = &[&[1, 4, 4], &[1, 4, 4], &[1, 4, 4]];
    for mask in [
        attention_mask(1, 4, 4, DType::F64),
        sliding_window_mask(1, 4, 2, DType::F64),
    ] {
        check_finite_differences(shapes, |t: &[Tensor]| {
            fused_ops::causal_self_attention(&t[0], &t[1], &t[2], &mask, 2, 0.7).unwrap()
        });
    }
}

/// Key/value heads repeated for grouped-query attention, written out for the reference: head `h`
/// of the result is head `h / groups` of `x` (`[batch, seq, kv_heads * head_dim]`).
fn repeat_heads(x: &Tensor, kv_heads: usize, heads: usize) -> Tensor {
    let (batch, seq, width) = x.dims3().unwrap();
    let by_head = x.reshape((batch, seq, kv_heads, width / kv_heads)).unwrap();
    let repeated: Vec<Tensor> = (0..heads)
        .map(|head| by_head.narrow(2, head / (heads / kv_heads), 1).unwrap())
        .collect();
    Tensor::cat(&repeated, 2)
        .unwrap()
        .reshape((batch, seq, heads * width / kv_heads))
        .unwrap()
}

#[test]
fn grouped_query_attention_matches_repeated_heads_and_finite_differences() {
    // 4 query heads of 3 over 2 key/value heads: query heads 0, 1 read key/value head 0.
    let shapes: &[&[usize]] = &[&[2, 7, 12], &[2, 7, 6], &[2, 7, 6]];
    for dtype in [DType::F64, DType::F32] {
        let tolerance = if dtype == DType::F64 { 1e-12 } else { 2e-5 };
        let mask = sliding_window_mask(2, 7, 3, dtype);
        let fused = |t: &[Tensor]| {
            fused_ops::causal_self_attention(&t[0], &t[1], &t[2], &mask, 4, 0.5).unwrap()
        };
        let reference = |t: &[Tensor]| {
            let repeated = [
                t[0].clone(),
                repeat_heads(&t[1], 2, 4),
                repeat_heads(&t[2], 2, 4),
            ];
            attention_composition(&repeated, &mask, 4, 0.5)
        };
        check_against_reference(shapes, dtype, tolerance, fused, reference);
    }
    // 4 query heads of 2 over 2 key/value heads, and over 1 (every query head shares it).
    let mask = attention_mask(1, 4, 4, DType::F64);
    for kv_width in [4, 2] {
        check_finite_differences(&[&[1, 4, 8], &[1, 4, kv_width], &[1, 4, kv_width]], |t| {
            fused_ops::causal_self_attention(&t[0], &t[1], &t[2], &mask, 4, 0.7).unwrap()
        });
    }
}

/// Backward reads the probabilities forward saved and leaves them: a second backward over the
/// same graph gives the same gradients.
#[test]
fn causal_self_attention_supports_repeated_backward() {
    let vars: Vec<Var> = ATTENTION_SHAPES
        .iter()
        .enumerate()
        .map(|(i, shape)| Var::from_tensor(&random(shape, 40 + i as u64, DType::F64)).unwrap())
        .collect();
    let t: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let mask = sliding_window_mask(2, 7, 3, DType::F64);
    let reference = weighted_sum(&attention_composition(&t, &mask, ATTENTION_HEADS, 0.5), 5)
        .backward()
        .unwrap();
    let output =
        fused_ops::causal_self_attention(&t[0], &t[1], &t[2], &mask, ATTENTION_HEADS, 0.5).unwrap();
    let loss = weighted_sum(&output, 5);
    for pass in 0..2 {
        let grads = loss.backward().unwrap();
        for (i, input) in t.iter().enumerate() {
            let diff = max_abs_diff(grads.get(input).unwrap(), reference.get(input).unwrap());
            assert!(
                diff < 1e-12,
                "backward {pass}: gradient {i} differs by {diff}"
            );
        }
    }
}

/// Random f32 parameters (tracked variables) of `shapes` and their bf16 casts, as a
/// mixed-precision forward takes them.
fn f32_parameters_and_bf16_casts(shapes: &[&[usize]], seed: u64) -> (Vec<Tensor>, Vec<Tensor>) {
    let params: Vec<Tensor> = shapes
        .iter()
        .enumerate()
        .map(|(i, shape)| {
            let var = Var::from_tensor(&random(shape, seed + i as u64, DType::F32)).unwrap();
            var.as_tensor().clone()
        })
        .collect();
    let casts = params
        .iter()
        .map(|t| t.to_dtype(DType::BF16).unwrap())
        .collect();
    (params, casts)
}

/// bf16 inputs (a mixed-precision forward) run in f32 and come back in bf16, and their
/// gradients reach the f32 parameters they were cast from.
#[test]
fn causal_self_attention_widens_half_precision() {
    let (t, half) = f32_parameters_and_bf16_casts(ATTENTION_SHAPES, 50);
    let mask = attention_mask(2, 7, 7, DType::F32);
    let output =
        fused_ops::causal_self_attention(&half[0], &half[1], &half[2], &mask, ATTENTION_HEADS, 0.5)
            .unwrap();
    assert_eq!(output.dtype(), DType::BF16);
    let half_wide: Vec<Tensor> = half
        .iter()
        .map(|t| t.to_dtype(DType::F32).unwrap())
        .collect();
    let reference = attention_composition(&half_wide, &mask, ATTENTION_HEADS, 0.5);
    // bf16 keeps 8 bits of mantissa: outputs of magnitude ~2 round by up to ~0.008.
    assert!(max_abs_diff(&output, &reference) < 0.02);
    let grads = weighted_sum(&output.to_dtype(DType::F32).unwrap(), 5)
        .backward()
        .unwrap();
    let reference_grads = weighted_sum(&reference, 5).backward().unwrap();
    for input in &t {
        let grad = grads.get(input).expect("gradient reaches the f32 input");
        assert_eq!(grad.dtype(), DType::F32);
        let diff = max_abs_diff(grad, reference_grads.get(input).unwrap());
        assert!(diff < 0.1, "gradient differs by {diff}");
    }
}

#[test]
fn causal_self_attention_rejects_inputs_that_do_not_fit() {
    let q = random(&[2, 7, 12], 1, DType::F32);
    let mask = attention_mask(2, 7, 7, DType::F32);
    let error = |key: &Tensor, mask: &Tensor, heads: usize| {
        fused_ops::causal_self_attention(&q, key, &q, mask, heads, 1.0)
            .unwrap_err()
            .to_string()
    };
    let message = error(&q, &mask, 5);
    assert!(message.contains("does not split into 5 heads"), "{message}");
    let message = error(&q.narrow(1, 0, 6).unwrap(), &mask, 3);
    assert!(message.contains("differ in shape"), "{message}");
    let message = error(&q, &attention_mask(3, 7, 7, DType::F32), 3);
    assert!(message.contains("does not broadcast"), "{message}");
    let message = error(&q, &attention_mask(1, 6, 7, DType::F32), 3);
    assert!(message.contains("does not broadcast"), "{message}");
    // Key/value heads: 3 heads of 4 cannot share keys 6 wide (not whole heads) or 8 wide (2
    // heads, which do not divide 3).
    for key_width in [6, 8] {
        let key = random(&[2, 7, key_width], 2, DType::F32);
        let message = fused_ops::causal_self_attention(&q, &key, &key, &mask, 3, 1.0)
            .unwrap_err()
            .to_string();
        assert!(message.contains("divides the 3 query heads"), "{message}");
    }
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

/// HF's `apply_rotary_pos_emb` on split heads: `q * cos + rotate_half(q) * sin`, with `q`
/// `[batch, heads, seq, head_dim]` and the angles broadcast over heads, merged back afterwards.
fn rotary_reference(x: &Tensor, cos: &Tensor, sin: &Tensor, heads: usize) -> Tensor {
    let (batch, seq, width) = x.dims3().unwrap();
    let head_dim = width / heads;
    let q = x
        .reshape((batch, seq, heads, head_dim))
        .unwrap()
        .transpose(1, 2)
        .unwrap();
    let first = q.narrow(D::Minus1, 0, head_dim / 2).unwrap();
    let second = q.narrow(D::Minus1, head_dim / 2, head_dim / 2).unwrap();
    let rotate_half = Tensor::cat(&[&second.neg().unwrap(), &first], D::Minus1).unwrap();
    let (cos, sin) = (cos.unsqueeze(1).unwrap(), sin.unsqueeze(1).unwrap());
    let out = (q.broadcast_mul(&cos).unwrap() + rotate_half.broadcast_mul(&sin).unwrap()).unwrap();
    out.transpose(1, 2)
        .unwrap()
        .reshape((batch, seq, width))
        .unwrap()
}

#[test]
fn rotary_embedding_matches_hf_rotate_half_and_finite_differences() {
    // 3 heads of 8; independent random cos and sin for every position and lane (not angles,
    // so that a swapped half of either shows).
    let (heads, angles_shape): (usize, &[usize]) = (3, &[2, 5, 8]);
    let shapes: &[&[usize]] = &[&[2, 5, 24]];
    for (dtype, tolerance) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
        let cos = random(angles_shape, 1, dtype);
        let sin = random(angles_shape, 2, dtype);
        check_against_reference(
            shapes,
            dtype,
            tolerance,
            |t| fused_ops::rotary_embedding(&t[0], &cos, &sin).unwrap(),
            |t| rotary_reference(&t[0], &cos, &sin, heads),
        );
    }
    let cos = random(angles_shape, 1, DType::F64);
    let sin = random(angles_shape, 2, DType::F64);
    check_finite_differences(shapes, |t| {
        fused_ops::rotary_embedding(&t[0], &cos, &sin).unwrap()
    });
}

#[test]
fn rotary_embedding_widens_half_precision_and_gives_the_angles_no_gradient() {
    let x = Var::from_tensor(&random(&[1, 4, 16], 3, DType::BF16)).unwrap();
    let cos = Var::from_tensor(&random(&[1, 4, 8], 4, DType::BF16)).unwrap();
    let sin = Var::from_tensor(&random(&[1, 4, 8], 5, DType::BF16)).unwrap();
    let out = fused_ops::rotary_embedding(&x, &cos, &sin).unwrap();
    assert_eq!(out.dtype(), DType::BF16);
    let wide = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let reference = rotary_reference(&wide(&x), &wide(&cos), &wide(&sin), 2);
    // One bf16 rounding of the f32 result: within 2^-8 relative of values below 8.
    assert!(max_abs_diff(&wide(&out), &reference) < 8.0 / 256.0);
    let grads = out.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&x).is_some());
    assert!(grads.get(&cos).is_none() && grads.get(&sin).is_none());
}

#[test]
fn rotary_embedding_of_no_positions_is_empty() {
    let x = random(&[2, 0, 24], 1, DType::F32);
    let angles = random(&[2, 0, 8], 2, DType::F32);
    let out = fused_ops::rotary_embedding(&x, &angles, &angles).unwrap();
    assert_eq!(out.dims(), &[2, 0, 24]);
}

#[test]
fn rotary_embedding_rejects_angles_that_do_not_fit() {
    let x = random(&[2, 5, 24], 1, DType::F32);
    let error = |cos_shape: &[usize]| {
        let (cos, sin) = (
            random(cos_shape, 2, DType::F32),
            random(cos_shape, 3, DType::F32),
        );
        fused_ops::rotary_embedding(&x, &cos, &sin)
            .unwrap_err()
            .to_string()
    };
    // Other positions than x's, a head size that does not divide the width, an odd head size.
    for shape in [&[2, 4, 8][..], &[2, 5, 10], &[2, 5, 3]] {
        let message = error(shape);
        assert!(
            message.contains("[batch, seq, head_dim]"),
            "{shape:?}: {message}"
        );
    }
}

#[test]
fn add_bias_matches_broadcast_add_and_finite_differences() {
    // 3 * 50 = 150 rows: more than two blocks of the column sums, the last one partial.
    let shapes: &[&[usize]] = &[&[3, 50, 7], &[7]];
    let fused = |t: &[Tensor]| fused_ops::add_bias(&t[0], &t[1]).unwrap();
    let reference = |t: &[Tensor]| t[0].broadcast_add(&t[1]).unwrap();
    check_against_reference(shapes, DType::F64, 1e-12, fused, reference);
    check_against_reference(shapes, DType::F32, 1e-4, fused, reference);
    check_finite_differences(&[&[2, 3, 4], &[4]], fused);
}

#[test]
fn add_bias_rejects_a_bias_of_the_wrong_width() {
    let x = random(&[2, 5], 1, DType::F32);
    let bias = random(&[4], 2, DType::F32);
    let message = fused_ops::add_bias(&x, &bias).unwrap_err().to_string();
    assert!(message.contains("bias [4]"), "{message}");
}

/// `x · W + b` as candle composes it, with the weight in either checkpoint layout.
fn linear_composition(t: &[Tensor], layout: WeightLayout) -> Tensor {
    let weight = match layout {
        WeightLayout::OutIn => t[1].t().unwrap(),
        WeightLayout::InOut => t[1].clone(),
    };
    let output = t[0].broadcast_matmul(&weight).unwrap();
    match t.get(2) {
        Some(bias) => output.broadcast_add(bias).unwrap(),
        None => output,
    }
}

#[test]
fn linear_matches_the_composition_and_finite_differences_in_both_layouts() {
    // 2 * 20 = 40 rows take the fused op; 2 * 3 = 6 rows the generation (skinny) path.
    for (layout, weight) in [(WeightLayout::OutIn, [5, 7]), (WeightLayout::InOut, [7, 5])] {
        for seq in [20, 3] {
            let with_bias: &[&[usize]] = &[&[2, seq, 7], &weight, &[5]];
            let without_bias = &with_bias[..2];
            for shapes in [with_bias, without_bias] {
                let fused =
                    |t: &[Tensor]| fused_ops::linear(&t[0], &t[1], t.get(2), layout).unwrap();
                let reference = |t: &[Tensor]| linear_composition(t, layout);
                check_against_reference(shapes, DType::F64, 1e-12, fused, reference);
                check_against_reference(shapes, DType::F32, 1e-4, fused, reference);
            }
        }
        let fused = |t: &[Tensor]| fused_ops::linear(&t[0], &t[1], t.get(2), layout).unwrap();
        check_finite_differences(&[&[3, 6, 7], &weight, &[5]], fused);
    }
}

/// The largest difference between `got` and `want` relative to `want`'s largest magnitude.
fn relative_diff(got: &Tensor, want: &Tensor) -> f64 {
    let scale = want
        .to_dtype(DType::F64)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    max_abs_diff(got, want) / scale
}

/// A bf16 layer (mixed precision: bf16 casts of f32 parameters) multiplies bf16 operands with
/// f32 sums (`gemm_bf16`), forward and backward: the f32 product of the same bf16 values, rounded
/// once to bf16; gradients reach the f32 parameters.
#[test]
fn linear_in_bf16_is_the_rounded_f32_product_of_the_bf16_operands() {
    for (layout, weight_shape) in [
        (WeightLayout::OutIn, [70, 45]),
        (WeightLayout::InOut, [45, 70]),
    ] {
        // 3 × 17 = 51 rows: the fused op (more than the 16 rows of a generation step).
        let shapes: [&[usize]; 3] = [&[3, 17, 45], &weight_shape, &[70]];
        let (t, half) = f32_parameters_and_bf16_casts(&shapes, 80);
        for with_bias in [true, false] {
            let bias = with_bias.then_some(&half[2]);
            let output = fused_ops::linear(&half[0], &half[1], bias, layout).unwrap();
            assert_eq!(output.dtype(), DType::BF16);
            let inputs = if with_bias { &half[..] } else { &half[..2] };
            let wide: Vec<Tensor> = inputs
                .iter()
                .map(|t| t.to_dtype(DType::F32).unwrap())
                .collect();
            let reference = linear_composition(&wide, layout);
            // One rounding to bf16 (8 bits of mantissa) of the f32 result.
            let diff = relative_diff(&output, &reference);
            assert!(
                diff < 1.0 / 256.0,
                "{layout:?}, bias {with_bias}: output differs by {diff}"
            );
            let grads = weighted_sum(&output.to_dtype(DType::F32).unwrap(), 5)
                .backward()
                .unwrap();
            let reference_grads = weighted_sum(&reference, 5).backward().unwrap();
            for (i, input) in t.iter().take(inputs.len()).enumerate() {
                let grad = grads
                    .get(input)
                    .expect("gradient reaches the f32 parameter");
                assert_eq!(grad.dtype(), DType::F32);
                // The incoming gradient is rounded to bf16 before the product, then the result.
                let diff = relative_diff(grad, reference_grads.get(input).unwrap());
                assert!(
                    diff < 2.0 / 256.0,
                    "{layout:?}, bias {with_bias}: gradient {i} differs by {diff}"
                );
            }
        }
    }
}

#[test]
fn linear_rejects_a_weight_that_does_not_fit() {
    let x = random(&[20, 6], 1, DType::F32);
    let weight = random(&[5, 7], 2, DType::F32);
    let message = fused_ops::linear(&x, &weight, None, WeightLayout::OutIn)
        .unwrap_err()
        .to_string();
    assert!(message.contains("do not fit"), "{message}");
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

/// `log_softmax(hidden · weight^T)` gathered at the targets: what [`fused_ops::lm_head_token_logprobs`]
/// replaces.
fn lm_head_composition(hidden: &Tensor, weight: &Tensor, targets: &Tensor) -> Tensor {
    let logits = hidden.matmul(&weight.t().unwrap()).unwrap();
    candle_nn::ops::log_softmax(&logits, D::Minus1)
        .unwrap()
        .gather(&targets.unsqueeze(1).unwrap(), 1)
        .unwrap()
        .squeeze(1)
        .unwrap()
}

#[test]
fn lm_head_token_logprobs_match_the_composition_and_finite_differences() {
    let targets = Tensor::new(&[3u32, 0, 10, 10, 1], &Device::Cpu).unwrap();
    // hidden [rows, width], weight [vocab, width]
    let shapes: &[&[usize]] = &[&[5, 6], &[11, 6]];
    let fused = |t: &[Tensor]| fused_ops::lm_head_token_logprobs(&t[0], &t[1], &targets).unwrap();
    let reference = |t: &[Tensor]| lm_head_composition(&t[0], &t[1], &targets);
    check_against_reference(shapes, DType::F64, 1e-10, fused, reference);
    check_against_reference(shapes, DType::F32, 2e-5, fused, reference);
    check_finite_differences(shapes, fused);
}

/// More rows than backward's chunk (256) with masked (`dy = 0`) rows scattered through them: the
/// weight gradient accumulates over chunks, the hidden gradient lands on the right rows, masked
/// rows get exactly zero. A second backward over the same graph gives the same gradients.
#[test]
fn lm_head_token_logprobs_gradients_over_chunks_masked_rows_and_repeated_backward() {
    let (rows, width, vocab) = (600, 8, 13);
    let targets: Vec<u32> = (0..rows).map(|row| (row * 7 % vocab) as u32).collect();
    let targets = Tensor::new(targets.as_slice(), &Device::Cpu).unwrap();
    let masked = |row: usize| row % 3 == 1 || (300..420).contains(&row);
    let mask: Vec<f64> = (0..rows)
        .map(|row| if masked(row) { 0.0 } else { 1.0 })
        .collect();
    let mask = Tensor::new(mask.as_slice(), &Device::Cpu).unwrap();
    let hidden = Var::from_tensor(&random(&[rows, width], 1, DType::F64)).unwrap();
    let weight = Var::from_tensor(&random(&[vocab, width], 2, DType::F64)).unwrap();
    let loss = |output: Tensor| weighted_sum(&(output * &mask).unwrap(), 3);

    let reference = loss(lm_head_composition(&hidden, &weight, &targets))
        .backward()
        .unwrap();
    let fused_loss = loss(fused_ops::lm_head_token_logprobs(&hidden, &weight, &targets).unwrap());
    for pass in 0..2 {
        let fused = fused_loss.backward().unwrap();
        for var in [&hidden, &weight] {
            let diff = max_abs_diff(
                fused.get(var.as_tensor()).unwrap(),
                reference.get(var.as_tensor()).unwrap(),
            );
            assert!(diff < 1e-10, "backward {pass}: gradient differs by {diff}");
        }
        let hidden_grad = fused
            .get(hidden.as_tensor())
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        for (row, grad) in hidden_grad.iter().enumerate() {
            let zero = grad.iter().all(|&g| g == 0.0);
            assert_eq!(zero, masked(row), "backward {pass}: row {row}");
        }
    }
}

#[test]
fn lm_head_token_logprobs_fall_back_to_the_composition() {
    let targets = Tensor::new(&[2u32, 0, 4], &Device::Cpu).unwrap();
    let hidden = random(&[3, 4], 1, DType::F32);
    let weight = random(&[5, 4], 2, DType::F32);
    let reference = lm_head_composition(&hidden, &weight, &targets);
    // A strided weight, and half precision (whose logits are upcast to f32 before the softmax).
    let strided = weight.t().unwrap().contiguous().unwrap().t().unwrap();
    assert!(!strided.is_contiguous());
    let from_strided = fused_ops::lm_head_token_logprobs(&hidden, &strided, &targets).unwrap();
    assert!(max_abs_diff(&from_strided, &reference) < 1e-6);
    let (hidden, weight) = (
        hidden.to_dtype(DType::BF16).unwrap(),
        weight.to_dtype(DType::BF16).unwrap(),
    );
    let from_bf16 = fused_ops::lm_head_token_logprobs(&hidden, &weight, &targets).unwrap();
    assert_eq!(from_bf16.dtype(), DType::F32);
    assert!(max_abs_diff(&from_bf16, &reference) < 0.1);
    // bf16 hidden states over an f32 weight (mixed precision): the weight is cast in the product
    // and its gradient comes back in f32.
    let weight = Var::from_tensor(&random(&[5, 4], 2, DType::F32)).unwrap();
    let mixed = fused_ops::lm_head_token_logprobs(&hidden, &weight, &targets).unwrap();
    assert_eq!(mixed.dtype(), DType::F32);
    assert!(max_abs_diff(&mixed, &reference) < 0.1);
    // Its product takes the weight rounded to bf16, as autocast's matmul does, with f32 sums:
    // over the rounded weight the composition agrees to f32 precision, where the unrounded
    // weight's logits differ by about 1e-3.
    let hidden_f32 = hidden.to_dtype(DType::F32).unwrap();
    let rounded_weight = weight
        .to_dtype(DType::BF16)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let over_rounded = lm_head_composition(&hidden_f32, &rounded_weight, &targets);
    assert!(max_abs_diff(&mixed, &over_rounded) < 1e-5);
    let grads = mixed.sum_all().unwrap().backward().unwrap();
    let weight_grad = grads.get(weight.as_tensor()).unwrap();
    let reference_grad = lm_head_composition(&hidden_f32, &weight, &targets)
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(weight_grad.dtype(), DType::F32);
    assert!(max_abs_diff(weight_grad, reference_grad.get(weight.as_tensor()).unwrap()) < 0.05);
    // Backward too: `G = onehot(target) - p` is rounded to bf16 before `dweight = Gᵀ · hidden`
    // (f32 sums), which the f32 composition above only meets to about 1e-3.
    let probs = candle_nn::ops::softmax(
        &hidden_f32.matmul(&rounded_weight.t().unwrap()).unwrap(),
        D::Minus1,
    )
    .unwrap();
    let onehot = candle_nn::encoding::one_hot(targets.clone(), 5, 1f32, 0f32).unwrap();
    let rounded_logits_grad = (onehot - probs)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let rounded_reference = rounded_logits_grad
        .t()
        .unwrap()
        .matmul(&hidden_f32)
        .unwrap();
    assert!(max_abs_diff(weight_grad, &rounded_reference) < 1e-5);
}

#[test]
fn lm_head_token_logprobs_reject_out_of_range_targets_and_mismatched_shapes() {
    let hidden = random(&[3, 4], 1, DType::F32);
    let weight = random(&[5, 4], 2, DType::F32);
    let targets = Tensor::new(&[1u32, 0, 5], &Device::Cpu).unwrap();
    let error = fused_ops::lm_head_token_logprobs(&hidden, &weight, &targets).unwrap_err();
    assert!(error.to_string().contains("target 5 of row 2"), "{error}");
    let narrow = random(&[5, 3], 2, DType::F32);
    let targets = Tensor::new(&[1u32, 0, 4], &Device::Cpu).unwrap();
    let error = fused_ops::lm_head_token_logprobs(&hidden, &narrow, &targets).unwrap_err();
    assert!(error.to_string().contains("does not match"), "{error}");
    let error =
        fused_ops::lm_head_token_logprobs(&hidden, &weight, &targets.narrow(0, 0, 2).unwrap())
            .unwrap_err();
    assert!(
        error.to_string().contains("2 targets for 3 rows"),
        "{error}"
    );
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
