//! Llama, exactly as `transformers`' `LlamaForCausalLM` (also SmolLM2, TinyLlama and other models
//! with `model_type: "llama"`): RMSNorm before attention and MLP, rotary position embeddings
//! (`rotate_half` form, base `rope_theta`), grouped-query attention (`num_key_value_heads` key/value
//! heads shared by groups of query heads), a SwiGLU MLP (`down(silu(gate(x)) * up(x))`), and an LM
//! head that is either tied to the token embedding or its own `lm_head.weight`. Tensor names match
//! the HF checkpoint (`model.layers.N.self_attn.q_proj.weight`, ...).
//!
//! Like the GPT decoders, everything has a backward pass (the fused RMS norm, rotary embeddings,
//! attention and SwiGLU of [`crate::fused_ops`]), so the same forward serves inference and
//! training.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Init, VarBuilder};

use crate::cached_attention::cached_attention;
use crate::causal_lm::{CausalLm, KvCache};
use crate::config::LlamaConfig;
use crate::error::Result;
use crate::fused_ops;
use crate::transformer_blocks::{
    embed, matmul_last_dim, split_heads, Affine, MaskBuilder, WeightLayout,
};

/// `LlamaRMSNorm`: `weight * x / sqrt(mean(x^2) + eps)`, computed in f32 for half-precision inputs.
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(size, "weight", Init::Const(1.0))?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Not candle's `rms_norm`, which has no backward pass.
        fused_ops::rms_norm(x, &self.weight, self.eps)
    }
}

/// Rotary position embeddings: `cos`/`sin` of `position * inv_freq`, each frequency used for both
/// halves of a head (HF's `rotate_half` layout).
struct RotaryEmbedding {
    /// `[1, 1, head_dim / 2]`, f32.
    inv_freq: Tensor,
}

/// `cos` and `sin` of one forward call, `[batch, seq, head_dim]` in the compute dtype.
struct RotaryAngles {
    cos: Tensor,
    sin: Tensor,
}

impl RotaryEmbedding {
    fn new(head_dim: usize, base: f64, device: &Device) -> Result<Self> {
        // HF: 1 / base^(2i / dim), in f32.
        let inv_freq: Vec<f32> = (0..head_dim / 2)
            .map(|i| (1.0 / base.powf((2 * i) as f64 / head_dim as f64)) as f32)
            .collect();
        let half = inv_freq.len();
        Ok(Self {
            inv_freq: Tensor::from_vec(inv_freq, (1, 1, half), device)?,
        })
    }

    /// Angles for `positions` (`[batch, seq]` `u32`).
    fn angles(&self, positions: &Tensor, dtype: DType) -> Result<RotaryAngles> {
        let freqs = positions
            .to_dtype(DType::F32)?
            .unsqueeze(2)?
            .broadcast_mul(&self.inv_freq)?;
        let emb = Tensor::cat(&[&freqs, &freqs], D::Minus1)?;
        Ok(RotaryAngles {
            cos: emb.cos()?.to_dtype(dtype)?,
            sin: emb.sin()?.to_dtype(dtype)?,
        })
    }
}

impl RotaryAngles {
    /// `x * cos + rotate_half(x) * sin` per head of a projection's output `x`
    /// `[batch, seq, heads * head_dim]`, heads not split out.
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        fused_ops::rotary_embedding(x, &self.cos, &self.sin)
    }
}

/// Grouped-query self-attention (`LlamaAttention`).
struct Attention {
    q_proj: Affine,
    k_proj: Affine,
    v_proj: Affine,
    o_proj: Affine,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(config: &LlamaConfig, vb: VarBuilder) -> Result<Self> {
        let hidden = config.hidden_size;
        let head_dim = config.head_size();
        let (heads, kv_heads) = (config.num_attention_heads, config.kv_heads());
        let linear = |name: &str, in_dim, out_dim| {
            linear(config, &vb, name, in_dim, out_dim, config.attention_bias)
        };
        Ok(Self {
            q_proj: linear("q_proj", hidden, heads * head_dim)?,
            k_proj: linear("k_proj", hidden, kv_heads * head_dim)?,
            v_proj: linear("v_proj", hidden, kv_heads * head_dim)?,
            o_proj: linear("o_proj", heads * head_dim, hidden)?,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        rotary: &RotaryAngles,
        mask: &Tensor,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor> {
        let (batch, seq, _) = x.dims3()?;
        let (heads, kv_heads) = (self.num_heads, self.num_kv_heads);
        let split = |t: &Tensor, heads| split_heads(t, batch, seq, heads, self.head_dim);
        let query = rotary.apply(&self.q_proj.forward(x)?)?;
        let key = rotary.apply(&self.k_proj.forward(x)?)?;
        let value = self.v_proj.forward(x)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        // The cache keeps the un-repeated key/value heads: a fraction of the memory under GQA.
        let merged = match cache {
            // A generation step: earlier keys and values come from the cache, un-repeated.
            Some((cache, layer)) if mask.dim(3)? > seq => {
                let (key, value) =
                    cache.append(layer, &split(&key, kv_heads)?, &split(&value, kv_heads)?)?;
                cached_attention(&split(&query, heads)?, &key, &value, Some(scale), mask)?
            }
            // No earlier positions (training, scoring, a generation's prompt pass): one fused
            // op over the unsplit projections, no head split out or repeated. A prompt pass
            // still fills the cache.
            cache => {
                if let Some((cache, layer)) = cache {
                    cache.append(layer, &split(&key, kv_heads)?, &split(&value, kv_heads)?)?;
                }
                fused_ops::causal_self_attention(&query, &key, &value, mask, heads, scale)?
            }
        };
        self.o_proj.forward(&merged)
    }
}

/// An `nn.Linear` (`[out, in]` weight) of the model, HF-initialised.
fn linear(
    config: &LlamaConfig,
    vb: &VarBuilder,
    name: &str,
    in_dim: usize,
    out_dim: usize,
    bias: bool,
) -> Result<Affine> {
    Affine::new(
        vb.pp(name),
        in_dim,
        out_dim,
        bias,
        WeightLayout::OutIn,
        config.initializer_range,
    )
}

/// `LlamaMLP`: `down(silu(gate(x)) * up(x))`.
struct Mlp {
    gate_proj: Affine,
    up_proj: Affine,
    down_proj: Affine,
}

impl Mlp {
    fn new(config: &LlamaConfig, vb: VarBuilder) -> Result<Self> {
        let (hidden, inner) = (config.hidden_size, config.intermediate_size);
        let linear = |name: &str, in_dim, out_dim| {
            linear(config, &vb, name, in_dim, out_dim, config.mlp_bias)
        };
        Ok(Self {
            gate_proj: linear("gate_proj", hidden, inner)?,
            up_proj: linear("up_proj", hidden, inner)?,
            down_proj: linear("down_proj", inner, hidden)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gated = fused_ops::swiglu(&self.gate_proj.forward(x)?, &self.up_proj.forward(x)?)?;
        self.down_proj.forward(&gated)
    }
}

/// `LlamaDecoderLayer`: pre-norm attention and MLP, each added to the residual stream.
struct Layer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Layer {
    fn new(config: &LlamaConfig, vb: VarBuilder) -> Result<Self> {
        let (hidden, eps) = (config.hidden_size, config.rms_norm_eps);
        Ok(Self {
            input_layernorm: RmsNorm::new(hidden, eps, vb.pp("input_layernorm"))?,
            self_attn: Attention::new(config, vb.pp("self_attn"))?,
            post_attention_layernorm: RmsNorm::new(hidden, eps, vb.pp("post_attention_layernorm"))?,
            mlp: Mlp::new(config, vb.pp("mlp"))?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        rotary: &RotaryAngles,
        mask: &Tensor,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor> {
        let attended =
            self.self_attn
                .forward(&self.input_layernorm.forward(x)?, rotary, mask, cache)?;
        let x = (x + attended)?;
        let mlp_out = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&x)?)?;
        Ok((x + mlp_out)?)
    }
}

/// A Llama causal LM; see [`crate::CausalLm`] for the forward conventions.
pub struct Llama {
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    /// `None` when the head is tied to `embed_tokens`.
    lm_head: Option<Tensor>,
    rotary: RotaryEmbedding,
    masks: MaskBuilder,
    hidden_size: usize,
    max_positions: usize,
    /// Dtype of the hidden states (see [`Llama::with_compute_dtype`]).
    compute_dtype: DType,
    device: Device,
}

impl Llama {
    /// Builds the model from `vb`; see [`crate::GptNeo::new`] about missing variables.
    pub fn new(config: &LlamaConfig, vb: VarBuilder) -> Result<Self> {
        let embedding_init = Init::Randn {
            mean: 0.0,
            stdev: config.initializer_range,
        };
        let shape = (config.vocab_size, config.hidden_size);
        let model_vb = vb.pp("model");
        let embed_tokens = model_vb.get_with_hints(shape, "embed_tokens.weight", embedding_init)?;
        let layers = (0..config.num_hidden_layers)
            .map(|layer| Layer::new(config, model_vb.pp(format!("layers.{layer}"))))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(config.hidden_size, config.rms_norm_eps, model_vb.pp("norm"))?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(vb.get_with_hints(shape, "lm_head.weight", embedding_init)?)
        };
        let device = embed_tokens.device().clone();
        Ok(Self {
            rotary: RotaryEmbedding::new(config.head_size(), config.rope_base(), &device)?,
            masks: MaskBuilder::new(&device),
            compute_dtype: embed_tokens.dtype(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            hidden_size: config.hidden_size,
            max_positions: config.max_position_embeddings,
            device,
        })
    }

    /// Runs the forward pass in `dtype`; see [`crate::Decoder::with_compute_dtype`].
    pub fn with_compute_dtype(mut self, dtype: DType) -> Self {
        self.compute_dtype = dtype;
        self
    }

    /// The LM head, `[vocab, hidden]`: its own weight, or the tied embedding.
    fn head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }
}

impl CausalLm for Llama {
    fn device(&self) -> &Device {
        &self.device
    }

    fn vocab_size(&self) -> usize {
        self.embed_tokens.dims()[0]
    }

    fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    fn num_layers(&self) -> usize {
        self.layers.len()
    }

    fn max_context(&self) -> usize {
        self.max_positions
    }

    fn hidden_states(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let dtype = self.compute_dtype;
        let inputs = self.masks.forward_inputs(
            input_ids,
            attention_mask,
            cache.as_deref(),
            self.layers.len(),
            self.max_positions,
            dtype,
        )?;
        let rotary = self.rotary.angles(&inputs.positions, dtype)?;
        let mask = self.masks.layer_mask(&inputs, None)?;
        let mut hidden = embed(&self.embed_tokens, input_ids)?.to_dtype(dtype)?;
        for (index, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|cache| (cache, index));
            hidden = layer.forward(&hidden, &rotary, &mask, layer_cache)?;
        }
        self.norm.forward(&hidden)
    }

    fn logits_from_hidden(&self, hidden: &Tensor) -> Result<Tensor> {
        matmul_last_dim(hidden, &self.head().to_dtype(hidden.dtype())?.t()?)
    }

    fn lm_head_weight(&self) -> Option<Tensor> {
        Some(self.head().clone())
    }
}
