//! GPT-Neo, exactly as `transformers`' `GPTNeoForCausalLM`: layers alternate global and local
//! (sliding-window) attention per `attention_types`, attention scores are **not** scaled by
//! `1/sqrt(head_dim)`, q/k/v projections have no bias, `out_proj` has one, and the LM head is tied to
//! the token embedding. Tensor names match the HF checkpoint
//! (`transformer.h.N.attn.attention.q_proj.weight`, ...).

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::config::{Activation, AttentionKind, GptNeoConfig};
use crate::error::Result;
use crate::transformer_blocks::{
    Affine, Block, Decoder, DecoderDims, Mlp, QkvProjection, SelfAttention, WeightLayout,
};

/// GPT-Neo's separate `q_proj`, `k_proj`, `v_proj` and `out_proj` (`nn.Linear`, `[out, in]`).
pub struct GptNeoProjections {
    q_proj: Affine,
    k_proj: Affine,
    v_proj: Affine,
    out_proj: Affine,
}

impl QkvProjection for GptNeoProjections {
    fn qkv(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        Ok((
            self.q_proj.forward(x)?,
            self.k_proj.forward(x)?,
            self.v_proj.forward(x)?,
        ))
    }

    fn output(&self, x: &Tensor) -> Result<Tensor> {
        self.out_proj.forward(x)
    }
}

/// A GPT-Neo causal LM; see [`crate::CausalLm`] for the forward conventions.
pub type GptNeo = Decoder<GptNeoProjections>;

impl GptNeo {
    /// Builds the model from `vb` (a `VarMap`-backed builder for training, or any other backend).
    /// Variables missing from a `VarMap` are created with candle's unseeded RNG: use
    /// [`crate::LoadedModel::init_random`] for a reproducible initialisation.
    pub fn new(config: &GptNeoConfig, vb: VarBuilder) -> Result<Self> {
        let hidden = config.hidden_size;
        let stdev = config.initializer_range;
        let activation = Activation::of_validated(&config.activation_function);
        let layer_kinds = config.attention_layers();
        let dims = DecoderDims {
            vocab_size: config.vocab_size,
            hidden_size: hidden,
            max_positions: config.max_position_embeddings,
            layer_norm_epsilon: config.layer_norm_epsilon,
            initializer_range: stdev,
        };
        Decoder::build(vb, &dims, config.num_layers, |layer, vb| {
            let attn_vb = vb.pp("attn").pp("attention");
            let linear = |name: &str, bias: bool| {
                Affine::new(
                    attn_vb.pp(name),
                    hidden,
                    hidden,
                    bias,
                    WeightLayout::OutIn,
                    stdev,
                )
            };
            let projections = GptNeoProjections {
                q_proj: linear("q_proj", false)?,
                k_proj: linear("k_proj", false)?,
                v_proj: linear("v_proj", false)?,
                out_proj: linear("out_proj", true)?,
            };
            let window = match layer_kinds[layer] {
                AttentionKind::Global => None,
                AttentionKind::Local => Some(config.window_size),
            };
            let attention = SelfAttention::new(projections, hidden, config.num_heads, None, window);
            let mlp = Mlp::new(
                vb.pp("mlp"),
                hidden,
                config.inner_size(),
                WeightLayout::OutIn,
                activation,
                stdev,
                stdev,
            )?;
            Block::new(&vb, hidden, config.layer_norm_epsilon, attention, mlp)
        })
    }
}
