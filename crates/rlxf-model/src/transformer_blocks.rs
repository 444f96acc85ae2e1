//! The pieces GPT-2 and GPT-Neo share: learned token and position embeddings, pre-norm blocks
//! (layer norm, self-attention, layer norm, MLP), the final layer norm and the LM head tied to the
//! token embedding. The architectures differ only in how attention projects queries, keys and values
//! ([`QkvProjection`]), whether scores are scaled and whether a layer attends over a sliding window.
//!
//! Everything here has a backward pass (candle operations, plus the fused layer norm, causal
//! self-attention and GELU of [`crate::fused_ops`] instead of candle's backward-less
//! `softmax_last_dim` / `layer_norm`), so the same forward serves inference and training.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::cached_attention::cached_attention;
use crate::causal_lm::{CausalLm, KvCache};
use crate::config::Activation;
use crate::error::{ModelError, Result};
use crate::fused_ops;
use crate::skinny_matmul;

/// Added to the scores of positions a query must not see. Finite (HF uses `finfo(float32).min` too),
/// so a row with every position masked (a padding query) gives a uniform softmax instead of NaNs
/// that would poison gradients.
const MASKED_SCORE: f32 = f32::MIN;

/// `nn.LayerNorm`, as a differentiable composition.
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub(crate) fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(size, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(size, "bias", Init::Const(0.0))?,
            eps,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        fused_ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

pub(crate) use crate::fused_ops::WeightLayout;

/// An affine map `x W + b` whose weight keeps the checkpoint's layout, so saving needs no transposes.
pub(crate) struct Affine {
    weight: Tensor,
    bias: Option<Tensor>,
    layout: WeightLayout,
}

impl Affine {
    pub(crate) fn new(
        vb: VarBuilder,
        in_dim: usize,
        out_dim: usize,
        with_bias: bool,
        layout: WeightLayout,
        stdev: f64,
    ) -> Result<Self> {
        let shape = match layout {
            WeightLayout::OutIn => (out_dim, in_dim),
            WeightLayout::InOut => (in_dim, out_dim),
        };
        let weight = vb.get_with_hints(shape, "weight", Init::Randn { mean: 0.0, stdev })?;
        let bias = if with_bias {
            Some(vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            layout,
        })
    }

    /// Runs in `x`'s dtype: with a bf16 compute dtype the (f32) weights are cast in the forward,
    /// a differentiable cast that sends the gradients back to them in f32; `to_dtype` is a
    /// no-op clone when the dtypes agree, so an f32 forward copies nothing.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let bias = match &self.bias {
            Some(bias) => Some(bias.to_dtype(x.dtype())?),
            None => None,
        };
        fused_ops::linear(
            x,
            &self.weight.to_dtype(x.dtype())?,
            bias.as_ref(),
            self.layout,
        )
    }
}

/// `x @ weight` for `x` of any rank, as one 2-D matmul (faster than a broadcast batched matmul);
/// the few rows of a generation step go through [`skinny_matmul`], which uses every thread.
pub(crate) fn matmul_last_dim(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    let in_dim = *dims
        .last()
        .expect("matmul input has at least one dimension");
    let rows = x.elem_count() / in_dim;
    let output = skinny_matmul::matmul(&x.reshape((rows, in_dim))?, weight)?;
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("non-empty") = output.dim(1)?;
    Ok(output.reshape(out_dims)?)
}

/// The feed-forward sublayer: `c_fc`, activation, `c_proj`.
pub(crate) struct Mlp {
    c_fc: Affine,
    c_proj: Affine,
    activation: Activation,
}

impl Mlp {
    /// `c_proj_stdev` differs from the other weights in GPT-2, whose residual projections HF
    /// initialises with `initializer_range / sqrt(2 * n_layer)`.
    pub(crate) fn new(
        vb: VarBuilder,
        hidden: usize,
        inner: usize,
        layout: WeightLayout,
        activation: Activation,
        stdev: f64,
        c_proj_stdev: f64,
    ) -> Result<Self> {
        Ok(Self {
            c_fc: Affine::new(vb.pp("c_fc"), hidden, inner, true, layout, stdev)?,
            c_proj: Affine::new(vb.pp("c_proj"), inner, hidden, true, layout, c_proj_stdev)?,
            activation,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let hidden = self.c_fc.forward(x)?;
        let hidden = fused_ops::gelu(&hidden, self.activation)?;
        self.c_proj.forward(&hidden)
    }
}

/// How an architecture turns hidden states into queries, keys and values, and merges heads back.
pub trait QkvProjection {
    /// `[batch, seq, hidden]` to three `[batch, seq, hidden]` tensors.
    fn qkv(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)>;
    /// The output projection.
    fn output(&self, x: &Tensor) -> Result<Tensor>;
}

/// Multi-head causal self-attention over the projections `P`.
pub(crate) struct SelfAttention<P> {
    projections: P,
    num_heads: usize,
    head_dim: usize,
    /// Factor applied to `q k^T`; `None` for GPT-Neo, which does not scale.
    scale: Option<f64>,
    /// Sliding-window size for local layers; `None` for global attention.
    window: Option<usize>,
}

impl<P: QkvProjection> SelfAttention<P> {
    pub(crate) fn new(
        projections: P,
        hidden: usize,
        num_heads: usize,
        scale: Option<f64>,
        window: Option<usize>,
    ) -> Self {
        Self {
            projections,
            num_heads,
            head_dim: hidden / num_heads,
            scale,
            window,
        }
    }

    /// `mask` is additive, `[batch or 1, 1, seq, past + seq]`, and already combines the causal,
    /// window and padding masks.
    fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor> {
        let (batch, seq, _) = x.dims3()?;
        let (query, key, value) = self.projections.qkv(x)?;
        let split = |t: &Tensor| split_heads(t, batch, seq, self.num_heads, self.head_dim);
        let merged = match cache {
            // A generation step after the prompt: keys and values of earlier positions come
            // from the cache.
            Some((cache, layer)) if mask.dim(3)? > seq => {
                let (key, value) = cache.append(layer, &split(&key)?, &split(&value)?)?;
                cached_attention(&split(&query)?, &key, &value, self.scale, mask)?
            }
            // No earlier positions (training, scoring, a generation's prompt pass): one fused op
            // over the unsplit projections. A prompt pass still fills the cache.
            cache => {
                if let Some((cache, layer)) = cache {
                    cache.append(layer, &split(&key)?, &split(&value)?)?;
                }
                let scale = self.scale.unwrap_or(1.0);
                fused_ops::causal_self_attention(&query, &key, &value, mask, self.num_heads, scale)?
            }
        };
        self.projections.output(&merged)
    }
}

/// `[batch, seq, heads * head_dim]` to `[batch, heads, seq, head_dim]`.
pub(crate) fn split_heads(
    x: &Tensor,
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
) -> Result<Tensor> {
    Ok(x.reshape((batch, seq, heads, head_dim))?
        .transpose(1, 2)?
        .contiguous()?)
}

/// `softmax(q k^T * scale + mask) v` for `[batch, heads, seq, head_dim]` queries and keys/values
/// of the same number of heads, with heads merged back: `[batch, seq, heads * head_dim]`.
pub(crate) fn attend(
    query: &Tensor,
    key: &Tensor,
    value: &Tensor,
    scale: Option<f64>,
    mask: &Tensor,
) -> Result<Tensor> {
    let (batch, heads, seq, head_dim) = query.dims4()?;
    // Like HF, compute scores and softmax in at least f32 even for half-precision weights.
    let score_dtype = fused_ops::kernel_dtype(value.dtype());
    let scores = query
        .to_dtype(score_dtype)?
        .matmul(&key.to_dtype(score_dtype)?.t()?)?;
    let probs =
        fused_ops::masked_softmax(&scores, mask, scale.unwrap_or(1.0))?.to_dtype(value.dtype())?;
    Ok(probs
        .matmul(value)?
        .transpose(1, 2)?
        .reshape((batch, seq, heads * head_dim))?)
}

/// A pre-norm transformer block.
pub(crate) struct Block<P> {
    ln_1: LayerNorm,
    attn: SelfAttention<P>,
    ln_2: LayerNorm,
    mlp: Mlp,
}

impl<P: QkvProjection> Block<P> {
    /// Reads `ln_1` and `ln_2` from `vb`; the architecture builds the attention and MLP.
    pub(crate) fn new(
        vb: &VarBuilder,
        hidden: usize,
        eps: f64,
        attn: SelfAttention<P>,
        mlp: Mlp,
    ) -> Result<Self> {
        Ok(Self {
            ln_1: LayerNorm::new(hidden, eps, vb.pp("ln_1"))?,
            attn,
            ln_2: LayerNorm::new(hidden, eps, vb.pp("ln_2"))?,
            mlp,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor> {
        let x = (self.attn.forward(&self.ln_1.forward(x)?, mask, cache)? + x)?;
        let mlp_out = self.mlp.forward(&self.ln_2.forward(&x)?)?;
        Ok((x + mlp_out)?)
    }
}

/// Sizes the embedding and final norm need.
pub(crate) struct DecoderDims {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub max_positions: usize,
    pub layer_norm_epsilon: f64,
    pub initializer_range: f64,
}

/// What every layer of a decoder needs for one forward call, derived from the input ids, the
/// attention mask and the cache in the same way for every architecture.
pub(crate) struct ForwardInputs {
    /// Position ids of the new tokens, `[batch, seq]` `u32`: `cumsum(mask) - 1` with padding
    /// clamped to 0 (HF `generate`), or `past..past + seq` without a mask.
    pub positions: Tensor,
    seq: usize,
    total: usize,
    dtype: DType,
    /// The attention mask's `[batch, past + seq]` rows (1 = real token), if there is one.
    padding: Option<Vec<Vec<u32>>>,
}

/// Builds [`ForwardInputs`] and the per-layer attention masks.
///
/// Masks are built for each forward call, not kept: a generation step asks for a shape no earlier
/// step had (the key length grows by one), so a table of masks by shape only grew (one entry per
/// step and window kind, for as long as the model lived), while a step's `[batch, 1, 1, past +
/// 1]` mask is no bigger than the padding mask each lookup was combined with. A whole-sequence
/// mask (training) is `batch * seq * (past + seq)` values, written once per forward and window
/// kind: under a millisecond next to a forward of hundreds.
pub(crate) struct MaskBuilder {
    device: Device,
}

impl MaskBuilder {
    pub(crate) fn new(device: &Device) -> Self {
        Self {
            device: device.clone(),
        }
    }

    /// Checks the inputs against the model (`num_layers`, `max_positions`) and derives positions
    /// and the padding; `model_dtype` is the dtype of the hidden states.
    ///
    /// With an attention mask, each row's own length (its real tokens) is checked against
    /// `max_positions`, not the padded width: in a batched generation a short prompt's row keeps
    /// going after a long prompt's row has filled the context, and the cache then holds more
    /// slots than the context, most of them the short row's left padding.
    pub(crate) fn forward_inputs(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&KvCache>,
        num_layers: usize,
        max_positions: usize,
        model_dtype: DType,
    ) -> Result<ForwardInputs> {
        let (batch, seq) = input_ids.dims2()?;
        let past = cache.map_or(0, KvCache::seq_len);
        let total = past + seq;
        if let Some(cache) = cache {
            if cache.num_layers() != num_layers {
                return Err(ModelError::InvalidInput(format!(
                    "KV cache has {} layers, the model {num_layers}",
                    cache.num_layers(),
                )));
            }
        }
        let padding = match attention_mask {
            Some(mask) => {
                if mask.dims() != [batch, total] {
                    return Err(ModelError::InvalidInput(format!(
                        "attention mask has shape {:?}, expected [batch, past + seq] = [{batch}, {total}]",
                        mask.dims()
                    )));
                }
                Some(mask.to_dtype(DType::U32)?.to_vec2::<u32>()?)
            }
            None => None,
        };
        let longest = match &padding {
            Some(rows) => rows
                .iter()
                .map(|row| row.iter().filter(|&&real| real != 0).count())
                .max()
                .unwrap_or(0),
            None => total,
        };
        if longest > max_positions {
            return Err(ModelError::SequenceTooLong {
                length: longest,
                max_positions,
            });
        }
        Ok(ForwardInputs {
            positions: self.positions(batch, seq, past, padding.as_deref())?,
            seq,
            total,
            dtype: fused_ops::kernel_dtype(model_dtype),
            padding,
        })
    }

    fn positions(
        &self,
        batch: usize,
        seq: usize,
        past: usize,
        padding: Option<&[Vec<u32>]>,
    ) -> Result<Tensor> {
        let positions: Vec<u32> = match padding {
            Some(rows) => rows
                .iter()
                .flat_map(|row| {
                    let mut seen = 0u32;
                    let cumulative: Vec<u32> = row
                        .iter()
                        .map(|&real| {
                            seen += u32::from(real != 0);
                            seen.saturating_sub(1)
                        })
                        .collect();
                    cumulative.into_iter().skip(past)
                })
                .collect(),
            None => (0..batch)
                .flat_map(|_| (past..past + seq).map(|p| p as u32))
                .collect(),
        };
        Ok(Tensor::from_vec(positions, (batch, seq), &self.device)?)
    }

    /// The additive mask of a layer attending over `window` (`None`: every earlier position),
    /// `[batch, 1, seq, past + seq]` (`[1, 1, ..]` without padding): 0 where query `i` (absolute
    /// slot `past + i`) may see key `j`, [`MASKED_SCORE`] elsewhere. Causal and sliding-window as
    /// HF's `bias` buffer (`tril`, and for local layers `tril ^ tril(.., -window)`: a local query
    /// sees itself and the `window - 1` slots before it), and padded keys masked.
    pub(crate) fn layer_mask(
        &self,
        inputs: &ForwardInputs,
        window: Option<usize>,
    ) -> Result<Tensor> {
        let (seq, total) = (inputs.seq, inputs.total);
        let past = total - seq;
        let no_padding = [vec![1u32; total]];
        let rows: &[Vec<u32>] = inputs.padding.as_deref().unwrap_or(&no_padding);
        let values: Vec<f32> = rows
            .iter()
            .flat_map(|real| {
                (0..seq).flat_map(move |i| {
                    let query_slot = past + i;
                    (0..total).map(move |key_slot| {
                        let visible = key_slot <= query_slot
                            && window.is_none_or(|w| query_slot - key_slot < w)
                            && real[key_slot] != 0;
                        if visible {
                            0.0
                        } else {
                            MASKED_SCORE
                        }
                    })
                })
            })
            .collect();
        Ok(
            Tensor::from_vec(values, (rows.len(), 1, seq, total), &self.device)?
                .to_dtype(inputs.dtype)?,
        )
    }
}

/// Rows of `table` for `ids`: `[batch, seq]` ids to `[batch, seq, width]`.
pub(crate) fn embed(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (batch, seq) = ids.dims2()?;
    let rows = table.index_select(&ids.flatten_all()?, 0)?;
    Ok(rows.reshape((batch, seq, table.dim(1)?))?)
}

/// A GPT-style decoder: `transformer.{wte, wpe, h.N, ln_f}` plus the tied LM head.
/// [`crate::GptNeo`] and [`crate::Gpt2`] are this type with their attention projections.
pub struct Decoder<P> {
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block<P>>,
    ln_f: LayerNorm,
    hidden_size: usize,
    /// Dtype of the hidden states (see [`Decoder::with_compute_dtype`]).
    compute_dtype: DType,
    device: Device,
    masks: MaskBuilder,
}

impl<P: QkvProjection> Decoder<P> {
    /// `vb` is the model root; `build_block(layer, vb_of_layer)` builds `transformer.h.{layer}`.
    pub(crate) fn build(
        vb: VarBuilder,
        dims: &DecoderDims,
        num_layers: usize,
        mut build_block: impl FnMut(usize, VarBuilder) -> Result<Block<P>>,
    ) -> Result<Self> {
        let vb = vb.pp("transformer");
        let embedding_init = Init::Randn {
            mean: 0.0,
            stdev: dims.initializer_range,
        };
        let wte = vb.get_with_hints(
            (dims.vocab_size, dims.hidden_size),
            "wte.weight",
            embedding_init,
        )?;
        let wpe = vb.get_with_hints(
            (dims.max_positions, dims.hidden_size),
            "wpe.weight",
            embedding_init,
        )?;
        let blocks = (0..num_layers)
            .map(|layer| build_block(layer, vb.pp(format!("h.{layer}"))))
            .collect::<Result<Vec<_>>>()?;
        let ln_f = LayerNorm::new(dims.hidden_size, dims.layer_norm_epsilon, vb.pp("ln_f"))?;
        Ok(Self {
            device: wte.device().clone(),
            masks: MaskBuilder::new(wte.device()),
            compute_dtype: wte.dtype(),
            wte,
            wpe,
            blocks,
            ln_f,
            hidden_size: dims.hidden_size,
        })
    }

    /// Runs the forward pass in `dtype` (bf16 for mixed-precision training) while the parameters
    /// keep theirs: each layer casts its weights to the hidden states' dtype; layer norms, the
    /// attention softmax and (in [`crate::logprobs`]) the log-softmax run in f32. The default is
    /// the parameters' dtype.
    pub fn with_compute_dtype(mut self, dtype: DType) -> Self {
        self.compute_dtype = dtype;
        self
    }

    fn run(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let inputs = self.masks.forward_inputs(
            input_ids,
            attention_mask,
            cache.as_deref(),
            self.blocks.len(),
            self.wpe.dim(0)?,
            self.compute_dtype,
        )?;
        // The rows are looked up in the parameters' dtype and cast once, not the whole tables.
        let mut hidden = (embed(&self.wte, input_ids)? + embed(&self.wpe, &inputs.positions)?)?
            .to_dtype(self.compute_dtype)?;
        let mut masks: HashMap<Option<usize>, Tensor> = HashMap::new();
        for (layer, block) in self.blocks.iter().enumerate() {
            let window = block.attn.window;
            let mask = match masks.entry(window) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => entry.insert(self.masks.layer_mask(&inputs, window)?),
            };
            let layer_cache = cache.as_deref_mut().map(|cache| (cache, layer));
            hidden = block.forward(&hidden, mask, layer_cache)?;
        }
        self.ln_f.forward(&hidden)
    }
}

impl<P: QkvProjection> CausalLm for Decoder<P> {
    fn device(&self) -> &Device {
        &self.device
    }

    fn vocab_size(&self) -> usize {
        self.wte.dims()[0]
    }

    fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    fn num_layers(&self) -> usize {
        self.blocks.len()
    }

    fn max_context(&self) -> usize {
        self.wpe.dims()[0]
    }

    fn hidden_states(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.run(input_ids, attention_mask, cache)
    }

    fn logits_from_hidden(&self, hidden: &Tensor) -> Result<Tensor> {
        matmul_last_dim(hidden, &self.wte.to_dtype(hidden.dtype())?.t()?)
    }

    fn lm_head_weight(&self) -> Option<Tensor> {
        Some(self.wte.clone())
    }
}
