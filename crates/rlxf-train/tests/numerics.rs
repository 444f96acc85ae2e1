//! Optimiser, clipping and losses against reference values from `scripts/make_fixtures.py`
//! (torch.optim.AdamW, TRL's DPO sigmoid loss, the soft Bradley–Terry loss), the SFT loss against a
//! direct log-softmax computation, and every trainer loss's gradient against central finite
//! differences on a tiny f64 model.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use rlxf_model::{AttentionKind, CausalLm, GptNeoConfig, LoadedModel, ModelConfig};
use rlxf_train::dpo::DpoObjective;
use rlxf_train::losses::{bradley_terry_loss, dpo_loss, to_f64s, DpoLossConfig};
use rlxf_train::optim::{clip_coefficient, global_grad_norm, AdamW, AdamWConfig, NamedParam};
use rlxf_train::reward::RewardObjective;
use rlxf_train::setup::EncodedPair;
use rlxf_train::sft::{SftExample, SftObjective};
use rlxf_train::Objective;
use serde_json::Value;

fn fixture() -> Value {
    let text = include_str!("fixtures/reference.json");
    serde_json::from_str(text).unwrap()
}

fn floats(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

fn assert_close(actual: &[f64], expected: &[f64], tolerance: f64, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= tolerance * (1.0 + e.abs()),
            "{what}[{i}]: {a} vs reference {e}"
        );
    }
}

/// Runs the fixture's AdamW trajectory in `dtype` and compares every step's parameters.
fn check_adamw(dtype: DType, tolerance: f64) {
    let fixture = fixture();
    let adam = &fixture["adamw"];
    let betas = floats(&adam["betas"]);
    let config = AdamWConfig {
        beta1: betas[0],
        beta2: betas[1],
        eps: adam["eps"].as_f64().unwrap(),
        weight_decay: adam["weight_decay"].as_f64().unwrap(),
    };
    let names = ["decayed", "not_decayed"];
    let shape = |name: &str| -> Vec<usize> {
        adam["shapes"][name]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect()
    };
    let tensor = |values: Vec<f64>, name: &str| {
        Tensor::from_vec(values, shape(name), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    };
    let params: Vec<NamedParam> = names
        .iter()
        .map(|&name| NamedParam {
            name: name.to_string(),
            var: Var::from_tensor(&tensor(floats(&adam["initial"][name]), name)).unwrap(),
            decay: name == "decayed",
        })
        .collect();
    let vars: Vec<Var> = params.iter().map(|p| p.var.clone()).collect();
    let mut optimizer = AdamW::new(params, config).unwrap();
    let max_norm = adam["max_norm"].as_f64().unwrap();
    for (index, step) in adam["steps"].as_array().unwrap().iter().enumerate() {
        let grads: Vec<Option<Tensor>> = names
            .iter()
            .map(|&name| Some(tensor(floats(&step["grads"][name]), name)))
            .collect();
        let norm = global_grad_norm(&grads).unwrap();
        assert_close(
            &[norm],
            &[step["grad_norm"].as_f64().unwrap()],
            tolerance,
            "grad norm",
        );
        let lr = step["lr"].as_f64().unwrap();
        optimizer
            .step(&grads, lr, clip_coefficient(norm, Some(max_norm)))
            .unwrap();
        for (var, name) in vars.iter().zip(names) {
            let actual = to_f64s(var.as_tensor()).unwrap();
            let expected = floats(&step["params_after"][name]);
            assert_close(
                &actual,
                &expected,
                tolerance,
                &format!("step {} {name}", index + 1),
            );
        }
    }
}

#[test]
fn adamw_matches_torch_in_f64() {
    check_adamw(DType::F64, 1e-12);
}

#[test]
fn adamw_matches_torch_in_f32() {
    check_adamw(DType::F32, 2e-6);
}

#[test]
fn adamw_state_round_trips_through_safetensors() {
    let make = || {
        let var =
            Var::from_tensor(&Tensor::new(&[1.0f32, -2.0, 3.0], &Device::Cpu).unwrap()).unwrap();
        let params = vec![NamedParam {
            name: "w".into(),
            var: var.clone(),
            decay: true,
        }];
        (
            var,
            AdamW::new(
                params,
                AdamWConfig {
                    weight_decay: 0.1,
                    ..Default::default()
                },
            )
            .unwrap(),
        )
    };
    let grad = |values: [f32; 3]| vec![Some(Tensor::new(&values, &Device::Cpu).unwrap())];
    let (var_a, mut a) = make();
    let (var_b, mut b) = make();
    a.step(&grad([0.5, -1.0, 2.0]), 1e-2, 1.0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("optimizer.safetensors");
    a.save(&path).unwrap();
    b.load(&path).unwrap();
    var_b.set(var_a.as_tensor()).unwrap();
    a.step(&grad([1.0, 1.0, -3.0]), 1e-2, 1.0).unwrap();
    b.step(&grad([1.0, 1.0, -3.0]), 1e-2, 1.0).unwrap();
    assert_eq!(
        to_f64s(var_a.as_tensor()).unwrap(),
        to_f64s(var_b.as_tensor()).unwrap()
    );
}

#[test]
fn clipping_matches_hand_computed_values() {
    // |(3, 4)| = 5 and |(12)| = 12 give a global norm of 13.
    let grads = vec![
        Some(Tensor::new(&[3.0f32, 4.0], &Device::Cpu).unwrap()),
        None,
        Some(Tensor::new(&[12.0f32], &Device::Cpu).unwrap()),
    ];
    assert_eq!(global_grad_norm(&grads).unwrap(), 13.0);
    assert!((clip_coefficient(13.0, Some(6.5)) - 6.5 / (13.0 + 1e-6)).abs() < 1e-15);
    assert_eq!(clip_coefficient(13.0, Some(20.0)), 1.0);
    assert_eq!(clip_coefficient(13.0, None), 1.0);
}

fn tensor_f64(values: Vec<f64>) -> Tensor {
    Tensor::new(values, &Device::Cpu).unwrap()
}

#[test]
fn dpo_loss_matches_trl_sigmoid_loss() {
    let fixture = fixture();
    let dpo = &fixture["dpo"];
    let logps = |key: &str| tensor_f64(floats(&dpo["logps"][key]));
    for case in dpo["cases"].as_array().unwrap() {
        let config = DpoLossConfig {
            beta: case["beta"].as_f64().unwrap(),
            label_smoothing: case["label_smoothing"].as_f64().unwrap(),
        };
        let loss = dpo_loss(
            &logps("pi_c"),
            &logps("pi_r"),
            &logps("ref_c"),
            &logps("ref_r"),
            config,
            None,
        )
        .unwrap();
        let what = format!("{config:?}");
        assert_close(
            &to_f64s(&loss.losses).unwrap(),
            &floats(&case["losses"]),
            1e-12,
            &what,
        );
        assert_close(
            &to_f64s(&loss.chosen_rewards).unwrap(),
            &floats(&case["chosen_rewards"]),
            1e-12,
            &what,
        );
        assert_close(
            &to_f64s(&loss.rejected_rewards).unwrap(),
            &floats(&case["rejected_rewards"]),
            1e-12,
            &what,
        );
        // A soft label of 1 is the hard label.
        let ones = tensor_f64(vec![1.0; 7]);
        let soft = dpo_loss(
            &logps("pi_c"),
            &logps("pi_r"),
            &logps("ref_c"),
            &logps("ref_r"),
            config,
            Some(&ones),
        )
        .unwrap();
        assert_close(
            &to_f64s(&soft.losses).unwrap(),
            &floats(&case["losses"]),
            1e-12,
            &what,
        );
    }
}

#[test]
fn bradley_terry_matches_reference_with_hard_and_soft_labels() {
    let fixture = fixture();
    let bt = &fixture["bradley_terry"];
    let chosen = tensor_f64(floats(&bt["chosen"]));
    let rejected = tensor_f64(floats(&bt["rejected"]));
    let labels = tensor_f64(floats(&bt["labels"]));
    let hard = bradley_terry_loss(&chosen, &rejected, None).unwrap();
    assert_close(
        &to_f64s(&hard).unwrap(),
        &floats(&bt["hard_losses"]),
        1e-12,
        "hard",
    );
    let soft = bradley_terry_loss(&chosen, &rejected, Some(&labels)).unwrap();
    assert_close(
        &to_f64s(&soft).unwrap(),
        &floats(&bt["soft_losses"]),
        1e-12,
        "soft",
    );
    // Far from 0 the stable log-sigmoid neither overflows nor loses the value.
    let far = bradley_terry_loss(
        &tensor_f64(vec![-800.0, 800.0]),
        &tensor_f64(vec![0.0, 0.0]),
        None,
    )
    .unwrap();
    assert_close(&to_f64s(&far).unwrap(), &[800.0, 0.0], 1e-12, "far");
}

fn tiny_model(dtype: DType) -> LoadedModel {
    let config = GptNeoConfig {
        num_layers: 2,
        attention_types: vec![(vec![AttentionKind::Global, AttentionKind::Local], 1)],
        hidden_size: 16,
        num_heads: 2,
        window_size: 4,
        ..GptNeoConfig::tiny()
    };
    LoadedModel::init_random(ModelConfig::GptNeo(config), 7, &Device::Cpu, dtype).unwrap()
}

#[test]
fn sft_loss_equals_a_direct_log_softmax_over_reply_tokens() {
    let model = tiny_model(DType::F32);
    let examples = vec![
        SftExample {
            prompt: vec![10, 20, 30],
            reply: vec![40, 50],
        },
        SftExample {
            prompt: vec![7],
            reply: vec![8, 9, 11, 12],
        },
    ];
    // Reference: each row alone, unpadded, full logits, log-softmax by hand in f64.
    let mut nll = 0.0;
    let mut reply_tokens = 0;
    for example in &examples {
        let ids: Vec<u32> = example
            .prompt
            .iter()
            .chain(&example.reply)
            .copied()
            .collect();
        let input = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = model
            .forward(&input, None, None)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let rows: Vec<Vec<f64>> = logits.to_dtype(DType::F64).unwrap().to_vec2().unwrap();
        for (j, &token) in example.reply.iter().enumerate() {
            let row = &rows[example.prompt.len() + j - 1];
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let log_sum = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
            nll -= row[token as usize] - log_sum;
            reply_tokens += 1;
        }
    }
    let expected = nll / reply_tokens as f64;
    let objective = SftObjective::new(model, 50256, examples.clone(), Vec::new(), 8);
    let actual = objective.mean_nll(&examples).unwrap();
    assert!(
        (actual - expected).abs() < 1e-4 * expected,
        "{actual} vs {expected}"
    );
    assert_eq!(objective.loss_units(&[0, 1]), 6.0);
}

/// Perturbs element `index` of `var` by `delta`.
fn nudge(var: &Var, index: usize, delta: f64) {
    let mut values = to_f64s(var.as_tensor()).unwrap();
    values[index] += delta;
    let tensor = Tensor::from_vec(values, var.dims(), &Device::Cpu).unwrap();
    var.set(&tensor.to_dtype(var.dtype()).unwrap()).unwrap();
}

/// Compares the backward gradient of the objective's mean loss on all its examples with central
/// differences, for a few elements of a few parameters.
fn check_gradients(objective: &mut dyn Objective, params: &[(&str, usize)]) {
    let examples: Vec<usize> = (0..objective.num_examples()).collect();
    let units = objective.loss_units(&examples);
    let loss_of = |objective: &mut dyn Objective| -> f64 {
        let out = objective.micro_batch(&examples).unwrap();
        to_f64s(&out.loss_sum).unwrap()[0] / units
    };
    let vars: HashMap<String, Var> = objective.model().varmap.data().lock().unwrap().clone();
    let loss = (objective.micro_batch(&examples).unwrap().loss_sum / units).unwrap();
    let grads = loss.backward().unwrap();
    for &(name, index) in params {
        let var = vars
            .get(name)
            .unwrap_or_else(|| panic!("no parameter {name}"));
        let analytic = to_f64s(grads.get(var.as_tensor()).expect("gradient")).unwrap()[index];
        let h = 1e-5;
        nudge(var, index, h);
        let plus = loss_of(objective);
        nudge(var, index, -2.0 * h);
        let minus = loss_of(objective);
        nudge(var, index, h);
        let numeric = (plus - minus) / (2.0 * h);
        assert!(
            (analytic - numeric).abs() <= 1e-6 + 1e-4 * numeric.abs(),
            "{name}[{index}]: backward {analytic} vs finite difference {numeric}"
        );
        assert!(
            analytic.abs() > 1e-9,
            "{name}[{index}]: zero gradient tests nothing"
        );
    }
}

const CHECKED: [(&str, usize); 5] = [
    ("transformer.h.0.attn.attention.q_proj.weight", 3),
    ("transformer.h.1.mlp.c_fc.weight", 17),
    ("transformer.h.0.ln_1.weight", 2),
    ("transformer.ln_f.bias", 5),
    ("transformer.wte.weight", 40 * 16 + 3),
];

fn pairs() -> Vec<EncodedPair> {
    vec![
        EncodedPair {
            id: "a".into(),
            prompt: vec![10, 20, 30],
            chosen: vec![40, 41],
            rejected: vec![42, 43, 44],
            label: 1.0,
        },
        EncodedPair {
            id: "b".into(),
            prompt: vec![5, 6],
            chosen: vec![40, 7, 8, 9],
            rejected: vec![11],
            label: 0.7,
        },
    ]
}

#[test]
fn sft_gradients_match_finite_differences() {
    let examples = pairs()
        .iter()
        .map(|p| SftExample {
            prompt: p.prompt.clone(),
            reply: p.chosen.clone(),
        })
        .collect();
    let mut objective = SftObjective::new(tiny_model(DType::F64), 50256, examples, Vec::new(), 8);
    check_gradients(&mut objective, &CHECKED);
}

#[test]
fn reward_gradients_match_finite_differences() {
    let mut objective =
        RewardObjective::new(tiny_model(DType::F64), 3, 50256, pairs(), Vec::new(), 8).unwrap();
    // The final layer norm's bias adds the same `w · b` to both scores of a pair, so its gradient
    // through the margin is exactly 0: check its scale instead.
    let mut checked: Vec<_> = CHECKED
        .iter()
        .copied()
        .filter(|(name, _)| *name != "transformer.ln_f.bias")
        .collect();
    checked.extend([("transformer.ln_f.weight", 5), ("score.weight", 4)]);
    check_gradients(&mut objective, &checked);
}

#[test]
fn dpo_gradients_match_finite_differences() {
    // Reference log-probs away from the policy's so the loss is not at its symmetric point.
    let reference = HashMap::from([
        ("a".to_string(), (-20.0, -25.0)),
        ("b".to_string(), (-30.0, -12.0)),
    ]);
    let config = DpoLossConfig {
        beta: 0.5,
        label_smoothing: 0.1,
    };
    let mut objective = DpoObjective::new(
        tiny_model(DType::F64),
        50256,
        config,
        pairs(),
        Vec::new(),
        reference,
        8,
    )
    .unwrap();
    check_gradients(&mut objective, &CHECKED);
}

#[test]
fn truncation_keeps_the_end_of_the_prompt_and_cuts_replies_to_fit() {
    use rlxf_train::setup::{encode_pair, Lengths, ModelBundle};
    let bundle = ModelBundle {
        model: tiny_model(DType::F32),
        tokenizer: rlxf_model::Tokenizer::gpt2(),
        template: rlxf_model::ChatTemplate::HumanAssistant,
    };
    let words = |n: usize, word: &str| (0..n).map(|_| format!(" {word}")).collect::<String>();
    let tokens = |text: &str| bundle.tokenizer.encode(text).unwrap();
    let pair = rlxf_data::PreferencePair {
        id: "p".into(),
        prompt: format!(
            "\n\nHuman:{}{}\n\nAssistant:",
            words(20, "a"),
            words(10, "b")
        ),
        chosen: words(3, "yes"),
        rejected: words(30, "no"),
        context: None,
    };
    let full_prompt = tokens(&pair.prompt);
    let eos = bundle.tokenizer.eos_id();
    // Everything fits: nothing is cut and both replies end with EOS.
    let roomy = encode_pair(
        &bundle,
        &pair,
        Lengths {
            max_length: 200,
            max_prompt_length: 100,
        },
        1.0,
    )
    .unwrap();
    assert_eq!(roomy.prompt, full_prompt);
    assert_eq!(roomy.chosen, [tokens(&pair.chosen), vec![eos]].concat());
    // Too long: the prompt keeps its last 16 tokens, the longer reply is cut to 40 - 16.
    let tight = encode_pair(
        &bundle,
        &pair,
        Lengths {
            max_length: 40,
            max_prompt_length: 16,
        },
        1.0,
    )
    .unwrap();
    assert_eq!(tight.prompt, full_prompt[full_prompt.len() - 16..]);
    assert_eq!(tight.chosen, roomy.chosen);
    assert_eq!(tight.rejected, roomy.rejected[..24]);
}

#[test]
fn dpo_soft_labels_reduce_to_the_soft_bradley_terry_loss() {
    // With beta = 1, no smoothing and a zero reference, DPO's logits are the policy margins, so
    // soft-label DPO must equal the fixture's soft Bradley-Terry loss.
    let fixture = fixture();
    let bt = &fixture["bradley_terry"];
    let chosen = tensor_f64(floats(&bt["chosen"]));
    let rejected = tensor_f64(floats(&bt["rejected"]));
    let labels = tensor_f64(floats(&bt["labels"]));
    let zeros = tensor_f64(vec![0.0; 7]);
    let plain = DpoLossConfig {
        beta: 1.0,
        label_smoothing: 0.0,
    };
    let loss = dpo_loss(&chosen, &rejected, &zeros, &zeros, plain, Some(&labels)).unwrap();
    assert_close(
        &to_f64s(&loss.losses).unwrap(),
        &floats(&bt["soft_losses"]),
        1e-12,
        "soft DPO",
    );
    // Smoothing eps turns label p into q = p(1 - eps) + (1 - p) eps (hand-derived from TRL's loss,
    // which is the case p = 1).
    let smoothed = DpoLossConfig {
        beta: 1.0,
        label_smoothing: 0.2,
    };
    let loss = dpo_loss(&chosen, &rejected, &zeros, &zeros, smoothed, Some(&labels)).unwrap();
    let softplus = |x: f64| (1.0 + x.exp()).ln();
    let expected: Vec<f64> = floats(&bt["chosen"])
        .iter()
        .zip(floats(&bt["rejected"]))
        .zip(floats(&bt["labels"]))
        .map(|((c, r), p)| {
            let z = c - r;
            let q = p * 0.8 + (1.0 - p) * 0.2;
            q * softplus(-z) + (1.0 - q) * softplus(z)
        })
        .collect();
    assert_close(
        &to_f64s(&loss.losses).unwrap(),
        &expected,
        1e-12,
        "smoothed soft DPO",
    );
}
