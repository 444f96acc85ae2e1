//! The interface every architecture implements.

use candle_core::{Device, Tensor};

use crate::Result;

/// Keys and values of every attention layer for the tokens seen so far, so generation feeds one new
/// token per step instead of the whole sequence. Tensors are `[batch, kv_heads, seq, head_dim]`.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
        }
    }

    /// Number of positions already cached (0 for a fresh cache).
    pub fn seq_len(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .next()
            .map(|(k, _)| k.dims()[2])
            .unwrap_or(0)
    }

    /// Number of layers the cache was made for.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn layer(&self, index: usize) -> Option<&(Tensor, Tensor)> {
        self.layers.get(index).and_then(Option::as_ref)
    }

    pub fn set_layer(&mut self, index: usize, keys: Tensor, values: Tensor) {
        self.layers[index] = Some((keys, values));
    }
}

/// A decoder-only language model.
///
/// Conventions shared by all implementations:
/// - `input_ids` is `[batch, seq]` of `u32`.
/// - `attention_mask`, when given, is `[batch, past + seq]` of `u32` (1 = real token, 0 = padding) and
///   covers the cached positions too. Batches are **left**-padded. Position ids are derived from the
///   mask as Hugging Face `generate` does (`cumsum(mask) - 1`, padding clamped to 0), so a left-padded
///   row gets the same positions as the same row unpadded.
/// - With a cache, the new keys/values are appended to it.
pub trait CausalLm {
    fn device(&self) -> &Device;
    fn vocab_size(&self) -> usize;
    fn hidden_size(&self) -> usize;
    fn num_layers(&self) -> usize;
    /// Longest sequence the model can attend over (learned position table size or trained context).
    fn max_context(&self) -> usize;

    /// Final hidden states (after the last layer norm), `[batch, seq, hidden]`: what value and reward
    /// heads read.
    fn hidden_states(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor>;

    /// Language-model head: `[.., hidden]` to `[.., vocab]` logits.
    fn logits_from_hidden(&self, hidden: &Tensor) -> Result<Tensor>;

    /// Logits for every position, `[batch, seq, vocab]`.
    fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let hidden = self.hidden_states(input_ids, attention_mask, cache)?;
        self.logits_from_hidden(&hidden)
    }

    fn new_cache(&self) -> KvCache {
        KvCache::new(self.num_layers())
    }
}
