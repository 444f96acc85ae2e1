//! The interface every architecture implements.

use candle_core::{Device, Tensor};

use crate::{ModelError, Result};

/// Keys and values of every attention layer for the tokens seen so far, so generation feeds one new
/// token per step instead of the whole sequence.
///
/// Each layer owns two preallocated buffers, `[batch, kv_heads, capacity, head_dim]`; a step writes
/// its positions in place and attention reads a view of the filled part (`[.., seq_len, ..]`, a
/// `narrow` of the buffer). Appending by concatenation instead copies the whole past every step,
/// O(T^2) work and a fresh allocation per layer per token. A full buffer grows to twice its capacity
/// (capped at the model's context), so callers that do not know the final length still append in
/// amortised constant time; callers that do reserve it up front ([`KvCache::reserve`]).
///
/// The cache holds values, not autograd history: gradients do not flow into cached keys and values
/// (training forwards run without a cache). Views it returns stay valid after later appends, which
/// only write positions past them.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<Option<LayerBuffers>>,
    /// Positions the buffers are allocated for when a layer sees its first keys (at least the
    /// length of that first append).
    reserved: usize,
    /// Growth never allocates past this many positions unless one append needs more.
    max_capacity: usize,
}

#[derive(Debug)]
struct LayerBuffers {
    keys: Tensor,
    values: Tensor,
    len: usize,
}

impl LayerBuffers {
    fn capacity(&self) -> usize {
        self.keys.dims()[2]
    }

    fn filled(&self) -> Result<(Tensor, Tensor)> {
        Ok((
            self.keys.narrow(2, 0, self.len)?,
            self.values.narrow(2, 0, self.len)?,
        ))
    }

    /// Moves the filled positions into buffers of `capacity` positions.
    fn reallocate(&mut self, capacity: usize) -> Result<()> {
        let (keys, values) = self.filled()?;
        self.keys = zeroed_buffer(&keys, capacity)?;
        self.values = zeroed_buffer(&values, capacity)?;
        self.keys.slice_set(&keys.contiguous()?, 2, 0)?;
        self.values.slice_set(&values.contiguous()?, 2, 0)?;
        Ok(())
    }
}

/// A `[batch, heads, capacity, head_dim]` buffer of zeros with the batch, heads, head size, dtype
/// and device of `like`.
fn zeroed_buffer(like: &Tensor, capacity: usize) -> Result<Tensor> {
    let (batch, heads, _, head_dim) = like.dims4()?;
    Ok(Tensor::zeros(
        (batch, heads, capacity, head_dim),
        like.dtype(),
        like.device(),
    )?)
}

impl KvCache {
    /// An empty cache that grows without bound (see [`CausalLm::new_cache`] for one capped at a
    /// model's context).
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| None).collect(),
            reserved: 0,
            max_capacity: usize::MAX,
        }
    }

    /// Caps growth by doubling at `max_capacity` positions (a model's context length).
    pub fn with_max_capacity(mut self, max_capacity: usize) -> Self {
        self.max_capacity = max_capacity;
        self
    }

    /// Number of positions already cached (0 for a fresh cache).
    pub fn seq_len(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .next()
            .map_or(0, |layer| layer.len)
    }

    /// Positions the buffers hold before they must grow: the allocated capacity once keys are
    /// cached, the reserved one before.
    pub fn capacity(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .next()
            .map_or(self.reserved, LayerBuffers::capacity)
    }

    /// Number of layers the cache was made for.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Makes room for `total` positions in all (past and future) layers, so appending up to that
    /// length never reallocates. Callers that know the final length (prompt plus new tokens)
    /// reserve it once.
    pub fn reserve(&mut self, total: usize) -> Result<()> {
        self.reserved = self.reserved.max(total);
        for layer in self.layers.iter_mut().flatten() {
            if layer.capacity() < total {
                layer.reallocate(total)?;
            }
        }
        Ok(())
    }

    /// Writes this step's `keys` and `values` (`[batch, kv_heads, seq, head_dim]`) after layer
    /// `index`'s cached positions and returns the keys and values of every position so far.
    pub fn append(
        &mut self,
        index: usize,
        keys: &Tensor,
        values: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (reserved, max_capacity) = (self.reserved, self.max_capacity);
        let num_layers = self.layers.len();
        let slot = self.layers.get_mut(index).ok_or_else(|| {
            ModelError::InvalidInput(format!(
                "KV cache layer {index} does not exist (the cache has {num_layers} layers)"
            ))
        })?;
        if keys.rank() != 4 || keys.dims() != values.dims() {
            return Err(ModelError::InvalidInput(format!(
                "KV cache layer {index}: keys {:?} and values {:?} must both be \
                 [batch, kv_heads, seq, head_dim]",
                keys.dims(),
                values.dims()
            )));
        }
        let seq = keys.dim(2)?;
        let layer = match slot {
            Some(layer) => {
                let (cached, new) = (layer.keys.dims(), keys.dims());
                if (cached[0], cached[1], cached[3]) != (new[0], new[1], new[3]) {
                    return Err(ModelError::InvalidInput(format!(
                        "KV cache layer {index}: new keys {new:?} do not match the cached \
                         [batch, heads, _, head_dim] = {cached:?}"
                    )));
                }
                let needed = layer.len + seq;
                if needed > layer.capacity() {
                    let doubled = (2 * layer.capacity()).min(max_capacity);
                    layer.reallocate(needed.max(doubled))?;
                }
                layer
            }
            None => slot.insert(LayerBuffers {
                keys: zeroed_buffer(keys, reserved.max(seq))?,
                values: zeroed_buffer(values, reserved.max(seq))?,
                len: 0,
            }),
        };
        layer.keys.slice_set(&keys.contiguous()?, 2, layer.len)?;
        layer
            .values
            .slice_set(&values.contiguous()?, 2, layer.len)?;
        layer.len += seq;
        layer.filled()
    }

    /// Keeps only the batch rows `rows` (in that order) in every layer, e.g. to drop finished
    /// sequences from a generation batch. Capacity is kept.
    pub fn select_rows(&mut self, rows: &[usize]) -> Result<()> {
        for layer in self.layers.iter_mut().flatten() {
            let batch = layer.keys.dim(0)?;
            if let Some(&bad) = rows.iter().find(|&&row| row >= batch) {
                return Err(ModelError::InvalidInput(format!(
                    "KV cache row {bad} does not exist (the batch has {batch} rows)"
                )));
            }
            let ids: Vec<u32> = rows.iter().map(|&row| row as u32).collect();
            let ids = Tensor::new(ids.as_slice(), layer.keys.device())?;
            layer.keys = layer.keys.index_select(&ids, 0)?;
            layer.values = layer.values.index_select(&ids, 0)?;
        }
        Ok(())
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
/// - With a cache, the new keys/values are appended to it ([`KvCache::append`]).
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

    /// The LM head's weight as `[vocab, hidden]` (logits are `hidden · weight^T`), for
    /// [`crate::fused_ops::lm_head_token_logprobs`], which scores tokens without materialising
    /// the logits' gradient. `None` for a model whose head is not one such product; callers then
    /// go through [`CausalLm::logits_from_hidden`].
    fn lm_head_weight(&self) -> Option<Tensor> {
        None
    }

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

    /// An empty cache for this model, growing at most to its context length.
    fn new_cache(&self) -> KvCache {
        KvCache::new(self.num_layers()).with_max_capacity(self.max_context())
    }
}
