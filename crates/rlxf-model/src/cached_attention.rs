//! Attention of a generation step's new queries over the keys and values in the KV cache, in one
//! op: `softmax(scale · q kᵀ + mask) v` for every (batch row, query head), with grouped-query
//! attention (a key/value head serves `heads / kv_heads` query heads) read in place.
//!
//! Why: the composition ([`attend`]: `q @ kᵀ`, masked softmax, `@ v`, merge heads) costs a
//! batched matmul per product, which candle runs as one small `gemm` call per (batch row, head)
//! — 2 × 96 calls per layer at batch 8 with GPT-Neo's 12 heads — on one thread: 9% of a batch-8
//! GPT-Neo decoding step went there while the other thread waited. Here each (batch row, head)
//! pair is one small product for the scores (the vectorised kernel of [`skinny_matmul`]), a
//! softmax and a weighted sum of value rows; the pairs run in parallel, and the cache's strided
//! views and un-repeated key/value heads are read where they are.
//!
//! Gradients reach the queries only, as through the composition: cached keys and values are plain
//! buffers (see [`crate::KvCache`]). Keys or values that do track gradients, other devices and
//! dtypes go through the composition.

use candle_core::{
    backend::BackendStorage, bail, CpuStorage, CustomOp3, DType, Layout, Shape, Tensor, Var,
};
use rayon::prelude::*;

use crate::error::{ModelError, Result};
use crate::fused_ops::exp_f32;
use crate::skinny_matmul;
use crate::transformer_blocks::attend;

/// HF's `repeat_kv`: key/value head `i` serves query heads `i * groups .. (i + 1) * groups`.
pub(crate) fn repeat_kv(x: &Tensor, groups: usize) -> Result<Tensor> {
    if groups == 1 {
        return Ok(x.clone());
    }
    let (batch, kv_heads, seq, head_dim) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .broadcast_as((batch, kv_heads, groups, seq, head_dim))?
        .reshape((batch, kv_heads * groups, seq, head_dim))?)
}

/// `softmax(scale · q kᵀ + mask) v` with heads merged, `[batch, seq, heads * head_dim]`, for
/// queries `[batch, heads, seq, head_dim]`, keys and values `[batch, kv_heads, total, head_dim]`
/// (`kv_heads` divides `heads`; any batch and head strides, as the cache's views have) and the
/// additive mask `[batch or 1, 1, seq, total]`; `scale` `None` is 1 (GPT-Neo). Equal to
/// [`attend`] over the keys and values repeated by [`repeat_kv`].
pub(crate) fn cached_attention(
    query: &Tensor,
    key: &Tensor,
    value: &Tensor,
    scale: Option<f64>,
    mask: &Tensor,
) -> Result<Tensor> {
    let (batch, heads, seq, head_dim) = query.dims4()?;
    let (key_batch, kv_heads, total, key_dim) = key.dims4()?;
    let mask_fits = matches!(*mask.dims(), [mask_batch, 1, queries, keys]
        if (mask_batch == 1 || mask_batch == batch) && (queries, keys) == (seq, total));
    if key_batch != batch
        || key_dim != head_dim
        || value.dims() != key.dims()
        || kv_heads == 0
        || heads % kv_heads != 0
        || !mask_fits
    {
        return Err(ModelError::InvalidInput(format!(
            "cached attention: query {:?}, keys {:?}, values {:?} and mask {:?} do not fit",
            query.dims(),
            key.dims(),
            value.dims(),
            mask.dims()
        )));
    }
    let groups = heads / kv_heads;
    let in_kernel = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    // Each head's positions one contiguous `[total, head_dim]` block.
    let rows_adjacent = |t: &Tensor| t.stride()[2..] == [head_dim, 1];
    if ![query, key, value, mask].into_iter().all(in_kernel)
        || !rows_adjacent(key)
        || !rows_adjacent(value)
        || key.track_op()
        || value.track_op()
    {
        return attend(
            query,
            &repeat_kv(key, groups)?,
            &repeat_kv(value, groups)?,
            scale,
            mask,
        );
    }
    let mask = mask.contiguous()?;
    let op = CachedAttentionOp {
        scale,
        mask_values: mask.flatten_all()?.to_vec1()?,
        mask_batch: mask.dim(0)?,
        mask,
    };
    let query = query.contiguous()?;
    Ok(if query.track_op() {
        query.apply_op3(key, value, op)?
    } else {
        query.apply_op3_no_bwd(key, value, &op)?
    })
}

struct CachedAttentionOp {
    scale: Option<f64>,
    /// The mask as the kernel reads it, and as a tensor for the backward composition.
    mask_values: Vec<f32>,
    mask_batch: usize,
    mask: Tensor,
}

/// A `[batch, heads, positions, head_dim]` operand in its storage, each head's positions one
/// contiguous block.
struct Heads<'a> {
    data: &'a [f32],
    start: usize,
    batch_stride: usize,
    head_stride: usize,
    block_len: usize,
}

impl<'a> Heads<'a> {
    fn of(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<Self> {
        let (_, _, positions, head_dim) = layout.shape().dims4()?;
        let stride = layout.stride();
        Ok(Self {
            data: storage.as_slice::<f32>()?,
            start: layout.start_offset(),
            batch_stride: stride[0],
            head_stride: stride[1],
            block_len: positions * head_dim,
        })
    }

    /// `[positions, head_dim]` of one head of one batch row.
    fn block(&self, batch: usize, head: usize) -> &'a [f32] {
        let offset = self.start + batch * self.batch_stride + head * self.head_stride;
        &self.data[offset..offset + self.block_len]
    }
}

impl CustomOp3 for CachedAttentionOp {
    fn name(&self) -> &'static str {
        "cached-attention"
    }

    fn cpu_fwd(
        &self,
        query: &CpuStorage,
        query_layout: &Layout,
        key: &CpuStorage,
        key_layout: &Layout,
        value: &CpuStorage,
        value_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, heads, seq, head_dim) = query_layout.shape().dims4()?;
        let (_, kv_heads, total, _) = key_layout.shape().dims4()?;
        if query.dtype() != DType::F32 || query_layout.contiguous_offsets().is_none() {
            bail!("{}: queries must be contiguous f32", self.name())
        }
        let (query, key, value) = (
            Heads::of(query, query_layout)?,
            Heads::of(key, key_layout)?,
            Heads::of(value, value_layout)?,
        );
        let groups = heads / kv_heads;
        let scale = self.scale.unwrap_or(1.0) as f32;
        // Each (batch row, head) pair fills its `[seq, head_dim]` block; the blocks are then
        // interleaved into merged heads.
        let mut pairs = vec![0f32; batch * heads * seq * head_dim];
        pairs
            .par_chunks_mut(seq * head_dim)
            .enumerate()
            .for_each(|(pair, out)| {
                let (b, head) = (pair / heads, pair % heads);
                let mask_b = if self.mask_batch == 1 { 0 } else { b };
                let mask = &self.mask_values[mask_b * seq * total..][..seq * total];
                let values = value.block(b, head / groups);
                let mut scores = skinny_matmul::product_on_this_thread(
                    query.block(b, head),
                    key.block(b, head / groups),
                    head_dim,
                );
                for ((probs, mask), out) in scores
                    .chunks_exact_mut(total)
                    .zip(mask.chunks_exact(total))
                    .zip(out.chunks_exact_mut(head_dim))
                {
                    for (prob, &masked) in probs.iter_mut().zip(mask) {
                        *prob = *prob * scale + masked;
                    }
                    softmax_in_place(probs);
                    for (&prob, value) in probs.iter().zip(values.chunks_exact(head_dim)) {
                        for (out, &v) in out.iter_mut().zip(value) {
                            *out += prob * v;
                        }
                    }
                }
            });
        let width = heads * head_dim;
        let mut merged = vec![0f32; batch * seq * width];
        for (pair, block) in pairs.chunks_exact(seq * head_dim).enumerate() {
            let (b, head) = (pair / heads, pair % heads);
            for (i, row) in block.chunks_exact(head_dim).enumerate() {
                merged[(b * seq + i) * width + head * head_dim..][..head_dim].copy_from_slice(row);
            }
        }
        Ok((CpuStorage::F32(merged), Shape::from((batch, seq, width))))
    }

    /// The gradient of the composition this op equals, with respect to the queries.
    fn bwd(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let query = Var::from_tensor(&query.detach())?;
        let groups = query.dim(1)? / key.dim(1)?;
        let repeat = |t: &Tensor| repeat_kv(&t.detach(), groups).map_err(candle_core::Error::wrap);
        let merged = attend(
            query.as_tensor(),
            &repeat(key)?,
            &repeat(value)?,
            self.scale,
            &self.mask,
        )
        .map_err(candle_core::Error::wrap)?;
        let grads = (merged * grad.detach())?.sum_all()?.backward()?;
        Ok((grads.get(query.as_tensor()).cloned(), None, None))
    }
}

/// `softmax` of a row of masked scores, as the fused masked softmax computes it: the max
/// subtracted, [`exp_f32`], scaled by the reciprocal of the sum. A row masked everywhere
/// ([`f32::MIN`]) comes out uniform.
fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for value in row.iter_mut() {
        *value = exp_f32(*value - max);
        sum += *value;
    }
    let inverse = sum.recip();
    row.iter_mut().for_each(|value| *value *= inverse);
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, IndexOp};

    use super::*;

    /// Past the 8-lane loop of the score products, with a ragged tail.
    const HEAD_DIM: usize = 12;

    /// Deterministic values in [-1, 1).
    fn values(shape: &[usize], seed: u64) -> Tensor {
        let count: usize = shape.iter().product();
        let data: Vec<f32> = (0..count as u64)
            .map(|i| ((i * 2654435761 + seed * 40503) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    /// Keys or values as the cache hands them out: the first `total` positions of a longer
    /// buffer (strided across heads and batch rows).
    fn cache_view(batch: usize, kv_heads: usize, total: usize, seed: u64) -> Tensor {
        values(&[batch, kv_heads, total + 5, HEAD_DIM], seed)
            .narrow(2, 0, total)
            .unwrap()
    }

    /// A mask with causal, padding and fully masked rows: query `i` (slot `past + i`) sees key
    /// `j <= past + i` unless `j` is padding of its batch row; batch row 1's query 0 sees
    /// nothing.
    fn mask(batch: usize, seq: usize, total: usize) -> Tensor {
        let past = total - seq;
        let data: Vec<f32> = (0..batch)
            .flat_map(|b| {
                (0..seq).flat_map(move |i| {
                    (0..total).map(move |j| {
                        let visible = j <= past + i && j >= b && !(b == 1 && i == 0);
                        if visible {
                            0.0
                        } else {
                            f32::MIN
                        }
                    })
                })
            })
            .collect();
        Tensor::from_vec(data, (batch, 1, seq, total), &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn equals_the_composition_with_grouped_heads_strided_caches_and_masks() {
        let (batch, total) = (3, 7);
        for (heads, kv_heads) in [(4, 4), (4, 2), (6, 1)] {
            for seq in [1, 3] {
                for scale in [None, Some(0.5)] {
                    let query = values(&[batch, heads, seq, HEAD_DIM], 1);
                    let key = cache_view(batch, kv_heads, total, 2);
                    let value = cache_view(batch, kv_heads, total, 3);
                    let mask = mask(batch, seq, total);
                    let groups = heads / kv_heads;
                    let expected = attend(
                        &query,
                        &repeat_kv(&key, groups).unwrap(),
                        &repeat_kv(&value, groups).unwrap(),
                        scale,
                        &mask,
                    )
                    .unwrap();
                    let got = cached_attention(&query, &key, &value, scale, &mask).unwrap();
                    assert_eq!(got.dims(), [batch, seq, heads * HEAD_DIM]);
                    let diff = max_diff(&got, &expected);
                    assert!(diff < 1e-5, "{heads}/{kv_heads} heads, seq {seq}: {diff}");
                    // One mask row for every batch row broadcasts like the composition's.
                    let shared = mask.i(0..1).unwrap();
                    let expected = attend(
                        &query,
                        &repeat_kv(&key, groups).unwrap(),
                        &repeat_kv(&value, groups).unwrap(),
                        scale,
                        &shared,
                    )
                    .unwrap();
                    let got = cached_attention(&query, &key, &value, scale, &shared).unwrap();
                    assert!(max_diff(&got, &expected) < 1e-5);
                }
            }
        }
    }

    #[test]
    fn query_gradients_equal_the_composition() {
        let (batch, heads, kv_heads, seq, total) = (2, 4, 2, 2, 6);
        let query = Var::from_tensor(&values(&[batch, heads, seq, HEAD_DIM], 4)).unwrap();
        let key = cache_view(batch, kv_heads, total, 5);
        let value = cache_view(batch, kv_heads, total, 6);
        let mask = mask(batch, seq, total);
        let upstream = values(&[batch, seq, heads * HEAD_DIM], 7);
        let query_grad = |merged: Tensor| {
            let loss = (merged * &upstream).unwrap().sum_all().unwrap();
            loss.backward()
                .unwrap()
                .get(query.as_tensor())
                .unwrap()
                .clone()
        };
        let ours = query_grad(
            cached_attention(query.as_tensor(), &key, &value, Some(0.5), &mask).unwrap(),
        );
        let composition = query_grad(
            attend(
                query.as_tensor(),
                &repeat_kv(&key, 2).unwrap(),
                &repeat_kv(&value, 2).unwrap(),
                Some(0.5),
                &mask,
            )
            .unwrap(),
        );
        assert!(max_diff(&ours, &composition) < 1e-5);
        assert!(
            composition
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.1
        );
    }

    #[test]
    fn mismatched_shapes_are_rejected() {
        let query = values(&[2, 4, 1, HEAD_DIM], 1);
        let key = cache_view(2, 3, 5, 2);
        assert!(cached_attention(&query, &key, &key, None, &mask(2, 1, 5)).is_err());
        let key = cache_view(2, 2, 5, 2);
        assert!(cached_attention(&query, &key, &key, None, &mask(2, 1, 4)).is_err());
    }
}
