//! Causal language models for rlxf, on candle.
//!
//! One file per architecture (as candle-transformers does); everything else in the project talks to a
//! model through the [`CausalLm`] trait, so trainers, labelers and evaluators work with any of them.

mod cached_attention;
pub mod causal_lm;
pub mod chat;
pub mod config;
pub mod error;
pub mod fetch;
pub mod fused_ops;
pub mod generate;
pub mod gguf_import;
pub mod gpt2;
pub mod gpt_neo;
pub mod llama;
pub mod loading;
pub mod logprobs;
pub mod sampling;
pub mod scalar_head;
pub mod sentence_encoder;
mod skinny_matmul;
pub mod tokenizer;
mod transformer_blocks;
pub mod weights;

// The tensor types of the public API, so users need not depend on candle themselves.
pub use candle_core::{DType, Device, Tensor};
pub use causal_lm::{CausalLm, KvCache};
pub use chat::{ChatTemplate, Role, Turn};
pub use config::{
    AttentionKind, Gpt2Config, GptNeoConfig, LlamaConfig, ModelConfig, RopeParameters,
    SUPPORTED_MODEL_TYPES,
};
pub use error::{ModelError, Result};
pub use generate::{generate, generate_keyed, FinishReason, Generation, GenerationConfig};
pub use gguf_import::{import_gguf, GgufImport};
pub use gpt2::Gpt2;
pub use gpt_neo::GptNeo;
pub use llama::Llama;
pub use loading::{build_model, load_pretrained, parameter_spec, DynCausalLm, LoadedModel};
pub use logprobs::{
    continuation_logprobs, continuation_logprobs_vec, token_logprobs_from_hidden,
    ContinuationBatch, ContinuationLogProbs, Padding,
};
pub use scalar_head::ScalarHead;
pub use sentence_encoder::{cosine_similarity, SentenceEncoder};
pub use tokenizer::{load_tokenizer, Tokenizer};
pub use transformer_blocks::Decoder;
