//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use rlxf_model::{AttentionKind, Gpt2Config, GptNeoConfig, LlamaConfig, LoadedModel, ModelConfig};

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A tensor of fixed pseudo-random values in [-2, 2) (a small LCG keeps the inputs fixed without a
/// random-number dependency).
pub fn random_tensor(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
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

/// Largest absolute difference between two tensors of the same shape, computed in f64 (exact for
/// f32 and bf16 inputs, and fine enough for the f64 finite-difference checks).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
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

/// A small GPT-Neo whose local window (3) is shorter than the test sequences.
pub fn small_neo_config() -> ModelConfig {
    ModelConfig::GptNeo(GptNeoConfig {
        vocab_size: 97,
        max_position_embeddings: 32,
        hidden_size: 16,
        num_layers: 2,
        attention_types: vec![(vec![AttentionKind::Global, AttentionKind::Local], 1)],
        num_heads: 2,
        window_size: 3,
        ..GptNeoConfig::tiny()
    })
}

pub fn small_gpt2_config() -> ModelConfig {
    ModelConfig::Gpt2(Gpt2Config {
        vocab_size: 97,
        n_positions: 32,
        n_embd: 16,
        n_layer: 2,
        n_head: 2,
        ..Gpt2Config::tiny()
    })
}

/// A small Llama with grouped-query attention (4 query heads, 2 key/value heads) and a tied head.
pub fn small_llama_config() -> ModelConfig {
    ModelConfig::Llama(LlamaConfig {
        vocab_size: 97,
        hidden_size: 16,
        intermediate_size: 24,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        max_position_embeddings: 32,
        ..LlamaConfig::tiny()
    })
}

/// The small Llama with an untied head and biases on every projection.
pub fn small_untied_llama_config() -> ModelConfig {
    let ModelConfig::Llama(config) = small_llama_config() else {
        unreachable!("small_llama_config is a Llama")
    };
    ModelConfig::Llama(LlamaConfig {
        tie_word_embeddings: false,
        attention_bias: true,
        mlp_bias: true,
        ..config
    })
}

/// A random model with weights large enough (std 0.3) that logits vary strongly with the input,
/// so equality tests are sensitive.
pub fn random_model(config: ModelConfig, seed: u64, dtype: DType) -> LoadedModel {
    let config = match config {
        ModelConfig::GptNeo(c) => ModelConfig::GptNeo(GptNeoConfig {
            initializer_range: 0.3,
            ..c
        }),
        ModelConfig::Gpt2(c) => ModelConfig::Gpt2(Gpt2Config {
            initializer_range: 0.3,
            ..c
        }),
        ModelConfig::Llama(c) => ModelConfig::Llama(LlamaConfig {
            initializer_range: 0.3,
            ..c
        }),
    };
    LoadedModel::init_random(config, seed, &Device::Cpu, dtype).unwrap()
}

pub fn ids(rows: &[&[u32]]) -> Tensor {
    let width = rows[0].len();
    let flat: Vec<u32> = rows.iter().flat_map(|row| row.iter().copied()).collect();
    Tensor::from_vec(flat, (rows.len(), width), &Device::Cpu).unwrap()
}
