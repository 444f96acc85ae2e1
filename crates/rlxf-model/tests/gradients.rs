//! Gradients flow through every part of the model: backprop through a sequence log-prob loss on a
//! left-padded batch matches central finite differences (f64) for a layer-norm weight, attention
//! weights of global and local layers, an MLP bias and the embeddings; for Llama, the RMSNorm
//! scales, every projection under grouped-query attention and rotary embeddings, and both head kinds.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use rlxf_model::{continuation_logprobs, ContinuationBatch, LoadedModel, Padding};

use common::{
    random_model, small_gpt2_config, small_llama_config, small_neo_config,
    small_untied_llama_config,
};

fn loss(model: &LoadedModel, batch: &ContinuationBatch) -> Tensor {
    let logprobs = continuation_logprobs(model, batch).unwrap();
    logprobs.sums().unwrap().sum_all().unwrap()
}

fn var(model: &LoadedModel, name: &str) -> Var {
    let data = model.varmap.data().lock().unwrap();
    data.get(name)
        .unwrap_or_else(|| panic!("no variable {name}"))
        .clone()
}

/// Adds `delta` to element `flat_index` of `var`.
fn nudge(var: &Var, flat_index: usize, delta: f64) {
    let mut values = var
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    values[flat_index] += delta;
    let updated = Tensor::from_vec(values, var.shape(), &Device::Cpu).unwrap();
    var.set(&updated).unwrap();
}

fn check_gradients(model: &LoadedModel, params: &[(&str, usize)]) {
    let batch = ContinuationBatch::new(
        &[vec![5, 9, 23, 4], vec![17, 2]],
        &[vec![8, 30, 1, 66, 12], vec![44, 3]],
        Padding::Left,
        0,
        &Device::Cpu,
    )
    .unwrap();
    let grads = loss(model, &batch).backward().unwrap();
    let step = 1e-5;
    for &(name, index) in params {
        let var = var(model, name);
        let analytic = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"))
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()[index];
        nudge(&var, index, step);
        let plus = loss(model, &batch).to_scalar::<f64>().unwrap();
        nudge(&var, index, -2.0 * step);
        let minus = loss(model, &batch).to_scalar::<f64>().unwrap();
        nudge(&var, index, step);
        let numeric = (plus - minus) / (2.0 * step);
        let error = (analytic - numeric).abs() / numeric.abs().max(1e-3);
        println!("{name}[{index}]: backprop {analytic:.8e}, finite difference {numeric:.8e}");
        assert!(analytic.abs() > 1e-6, "{name}: gradient vanished");
        assert!(
            error < 1e-5,
            "{name}[{index}]: backprop {analytic} vs finite difference {numeric}"
        );
    }
}

#[test]
fn gpt_neo_gradients_match_finite_differences() {
    let model = random_model(small_neo_config(), 21, DType::F64);
    check_gradients(
        &model,
        &[
            ("transformer.h.0.ln_1.weight", 3),
            ("transformer.h.0.attn.attention.q_proj.weight", 17),
            ("transformer.h.1.attn.attention.k_proj.weight", 40),
            ("transformer.h.1.attn.attention.out_proj.bias", 2),
            ("transformer.h.1.mlp.c_fc.bias", 5),
            ("transformer.ln_f.bias", 7),
            // Row 9 (token 9) is both an input embedding and, through the tied head, an output.
            ("transformer.wte.weight", 9 * 16 + 4),
            ("transformer.wpe.weight", 16 + 1),
        ],
    );
}

#[test]
fn gpt2_gradients_match_finite_differences() {
    let model = random_model(small_gpt2_config(), 22, DType::F64);
    check_gradients(
        &model,
        &[
            ("transformer.h.1.ln_2.weight", 6),
            ("transformer.h.0.attn.c_attn.weight", 5 * 48 + 20),
            ("transformer.h.0.attn.c_proj.weight", 33),
            ("transformer.h.1.mlp.c_proj.weight", 101),
            ("transformer.wte.weight", 30 * 16 + 11),
        ],
    );
}

#[test]
fn llama_gradients_match_finite_differences() {
    let model = random_model(small_llama_config(), 23, DType::F64);
    check_gradients(
        &model,
        &[
            ("model.layers.0.input_layernorm.weight", 3),
            ("model.layers.0.self_attn.q_proj.weight", 5 * 16 + 9),
            // Key/value heads are shared by two query heads each (grouped-query attention).
            ("model.layers.1.self_attn.k_proj.weight", 7 * 16 + 2),
            ("model.layers.1.self_attn.v_proj.weight", 3 * 16 + 11),
            ("model.layers.1.self_attn.o_proj.weight", 40),
            ("model.layers.0.mlp.gate_proj.weight", 101),
            ("model.layers.1.mlp.up_proj.weight", 57),
            ("model.layers.1.mlp.down_proj.weight", 77),
            ("model.layers.1.post_attention_layernorm.weight", 6),
            ("model.norm.weight", 12),
            // Tied head: token 9's row is both an input embedding and an output.
            ("model.embed_tokens.weight", 9 * 16 + 4),
        ],
    );
}

#[test]
fn untied_llama_head_and_biases_get_gradients() {
    let model = random_model(small_untied_llama_config(), 24, DType::F64);
    check_gradients(
        &model,
        &[
            ("lm_head.weight", 8 * 16 + 3),
            ("model.layers.0.self_attn.q_proj.bias", 5),
            ("model.layers.1.mlp.down_proj.bias", 2),
        ],
    );
}
