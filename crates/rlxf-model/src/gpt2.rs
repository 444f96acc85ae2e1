//! GPT-2, exactly as `transformers`' `GPT2LMHeadModel`: fused `c_attn` query/key/value projection,
//! HF `Conv1D` weights stored `[in, out]`, attention scores scaled by `1/sqrt(head_dim)` (and by
//! `1/(layer + 1)` when `scale_attn_by_inverse_layer_idx`), learned positions, `gelu_new`, LM head
//! tied to the token embedding.

use candle_core::{Tensor, D};
use candle_nn::VarBuilder;

use crate::config::{Activation, Gpt2Config};
use crate::error::Result;
use crate::transformer_blocks::{
    Affine, Block, Decoder, DecoderDims, Mlp, QkvProjection, SelfAttention, WeightLayout,
};

/// GPT-2's fused `c_attn` (`[hidden, 3 * hidden]`) and `c_proj`.
pub struct Gpt2Projections {
    c_attn: Affine,
    c_proj: Affine,
    hidden: usize,
}

impl QkvProjection for Gpt2Projections {
    fn qkv(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let fused = self.c_attn.forward(x)?;
        let part = |index: usize| fused.narrow(D::Minus1, index * self.hidden, self.hidden);
        Ok((part(0)?, part(1)?, part(2)?))
    }

    fn output(&self, x: &Tensor) -> Result<Tensor> {
        self.c_proj.forward(x)
    }
}

/// A GPT-2 causal LM; see [`crate::CausalLm`] for the forward conventions.
pub type Gpt2 = Decoder<Gpt2Projections>;

impl Gpt2 {
    /// Builds the model from `vb`; see [`crate::GptNeo::new`] about missing variables.
    pub fn new(config: &Gpt2Config, vb: VarBuilder) -> Result<Self> {
        let hidden = config.n_embd;
        let stdev = config.initializer_range;
        // HF's scaled init of the residual projections (GPT-2 paper): 2 residual paths per block.
        let residual_stdev = stdev / ((2 * config.n_layer) as f64).sqrt();
        let activation = Activation::of_validated(&config.activation_function);
        let head_dim = hidden / config.n_head;
        let dims = DecoderDims {
            vocab_size: config.vocab_size,
            hidden_size: hidden,
            max_positions: config.n_positions,
            layer_norm_epsilon: config.layer_norm_epsilon,
            initializer_range: stdev,
        };
        Decoder::build(vb, &dims, config.n_layer, |layer, vb| {
            let attn_vb = vb.pp("attn");
            let conv = WeightLayout::InOut;
            let projections = Gpt2Projections {
                c_attn: Affine::new(attn_vb.pp("c_attn"), hidden, 3 * hidden, true, conv, stdev)?,
                c_proj: Affine::new(
                    attn_vb.pp("c_proj"),
                    hidden,
                    hidden,
                    true,
                    conv,
                    residual_stdev,
                )?,
                hidden,
            };
            let mut scale = 1.0;
            if config.scale_attn_weights {
                scale /= (head_dim as f64).sqrt();
            }
            if config.scale_attn_by_inverse_layer_idx {
                scale /= (layer + 1) as f64;
            }
            let attention =
                SelfAttention::new(projections, hidden, config.n_head, Some(scale), None);
            let mlp = Mlp::new(
                vb.pp("mlp"),
                hidden,
                config.inner_size(),
                conv,
                activation,
                stdev,
                residual_stdev,
            )?;
            Block::new(&vb, hidden, config.layer_norm_epsilon, attention, mlp)
        })
    }
}
