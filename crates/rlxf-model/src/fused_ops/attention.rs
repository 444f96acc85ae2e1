//! Causal self-attention in one op: `softmax(scale · Q Kᵀ + mask) V` per (batch, head) pair, from
//! the projections' `[batch, seq, heads * head_dim]` outputs straight to the merged-heads output.
//! Key and value may have fewer heads than the query (grouped-query attention): each serves a group
//! of query heads where it lies, never repeated into a copy.
//!
//! Why: the composition (split heads ×3, `q @ kᵀ`, masked softmax, `@ v`, merge) is about twelve
//! graph nodes per layer, each with a zero-filled gradient and an add in backward, and keeps both
//! the `[batch, heads, seq, seq]` scores and probabilities alive until backward. Here forward keeps
//! only the probabilities, backward is one kernel, and no head is ever copied: each pair's
//! matrices are strided views of the `[seq, width]` rows, which `gemm` reads and writes in place.

use std::marker::PhantomData;

use candle_core::{
    backend::BackendStorage, bail, CpuStorage, CustomOp3, Layout, Shape, Storage, Tensor, WithDType,
};
use num_traits::Zero;
use rayon::prelude::*;

use super::{
    fusable, gemm_into_with, gemm_raw, in_kernel_dtype, mask_row_start, masked_softmax_row,
    slice_of, softmax_grad_row, MatrixView, Real, SavedForBackward,
};
use crate::error::{ModelError, Result};
use crate::transformer_blocks::{attend, split_heads};

/// Inside the per-pair tasks, which already run in parallel.
const SERIAL: gemm::Parallelism = gemm::Parallelism::None;

/// Sizes of one call: the query `[batch, seq, heads * head_dim]`; key and value
/// `[batch, seq, kv_heads * head_dim]`.
#[derive(Clone, Copy)]
struct Dims {
    batch: usize,
    seq: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Dims {
    fn of(query: &Layout, key: &Layout, heads: usize) -> candle_core::Result<Self> {
        let (batch, seq, width) = query.shape().dims3()?;
        let head_dim = width / heads;
        Ok(Self {
            batch,
            seq,
            heads,
            kv_heads: key.dims()[2] / head_dim,
            head_dim,
        })
    }

    /// The sizes of the key and value, read as the heads of a `[batch, seq, kv_heads * head_dim]`
    /// input of their own.
    fn key_value(&self) -> Self {
        Self {
            heads: self.kv_heads,
            ..*self
        }
    }

    /// Query heads per key/value head.
    fn groups(&self) -> usize {
        self.heads / self.kv_heads
    }

    fn width(&self) -> usize {
        self.heads * self.head_dim
    }

    fn pairs(&self) -> usize {
        self.batch * self.heads
    }

    /// `(batch, head)` of a pair, numbered as the `[batch, heads, ..]` probabilities are.
    fn pair(&self, pair: usize) -> (usize, usize) {
        (pair / self.heads, pair % self.heads)
    }
}

/// The batch and row strides of a `[batch, seq, width]` layout whose columns are adjacent: every
/// contiguous tensor, and the query/key/value thirds GPT-2 narrows out of its fused `c_attn`
/// output (rows `3 * width` apart). `None` otherwise.
fn row_strides(layout: &Layout) -> Option<(usize, usize)> {
    match (layout.dims(), layout.stride()) {
        (&[_, _, width], &[batch_stride, row_stride, column_stride])
            if column_stride == 1 || width == 1 =>
        {
            Some((batch_stride, row_stride))
        }
        _ => None,
    }
}

/// A `[batch, seq, width]` input in its storage, read head by head without copies.
struct HeadRows<'a, T> {
    data: &'a [T],
    start: usize,
    batch_stride: usize,
    row_stride: usize,
    dims: Dims,
}

impl<'a, T: Real> HeadRows<'a, T> {
    fn of(
        storage: &'a CpuStorage,
        layout: &Layout,
        dims: Dims,
        op: &str,
    ) -> candle_core::Result<Self> {
        let Some((batch_stride, row_stride)) = row_strides(layout) else {
            bail!(
                "{op}: input {:?} has strides {:?}",
                layout.dims(),
                layout.stride()
            )
        };
        Ok(Self {
            data: storage.as_slice::<T>()?,
            start: layout.start_offset(),
            batch_stride,
            row_stride,
            dims,
        })
    }

    /// Columns `head * head_dim..(head + 1) * head_dim` of batch row `batch`: `[seq, head_dim]`.
    fn head(&self, batch: usize, head: usize) -> MatrixView<'a, T> {
        let offset = self.start + batch * self.batch_stride + head * self.dims.head_dim;
        MatrixView {
            data: &self.data[offset..],
            rows: self.dims.seq,
            cols: self.dims.head_dim,
            row_stride: self.row_stride,
            col_stride: 1,
        }
    }
}

/// One (batch, head) pair's `[seq, head_dim]` block of a merged-heads `[batch, seq, width]`
/// buffer: that head's columns of every row of that batch row. The blocks interleave in memory,
/// so no safe slice split expresses them; [`head_blocks`] hands each out once from an exclusive
/// borrow of the buffer, which is what makes writing through the raw pointer sound.
struct HeadBlock<'a, T> {
    start: *mut T,
    dims: Dims,
    _buffer: PhantomData<&'a mut [T]>,
}

// SAFETY: a block is the only handle to its elements (see `head_blocks`), like a `&mut [T]`.
unsafe impl<T: Send> Send for HeadBlock<'_, T> {}

/// The blocks of every pair of `buffer`, in pair order.
fn head_blocks<T>(buffer: &mut [T], dims: Dims) -> Vec<HeadBlock<'_, T>> {
    assert_eq!(buffer.len(), dims.batch * dims.seq * dims.width());
    let base = buffer.as_mut_ptr();
    (0..dims.pairs())
        .map(|pair| {
            let (batch, head) = dims.pair(pair);
            let offset = batch * dims.seq * dims.width() + head * dims.head_dim;
            HeadBlock {
                // Wrapping: with `seq = 0` the offset may point past an empty buffer; such a
                // block is never written.
                start: base.wrapping_add(offset),
                dims,
                _buffer: PhantomData,
            }
        })
        .collect()
}

impl<T: Real> HeadBlock<'_, T> {
    /// `block = a · b`, or `block += a · b` with `accumulate`, single-threaded.
    fn product(&mut self, a: MatrixView<T>, b: MatrixView<T>, accumulate: bool) {
        assert!(a.rows == self.dims.seq && b.cols == self.dims.head_dim);
        if a.rows == 0 {
            return;
        }
        // SAFETY: the `[seq, head_dim]` matrix with rows `width` apart from `start` lies inside
        // the buffer `head_blocks` split (its last element, `(seq - 1) * width + head * head_dim
        // + head_dim - 1` past the batch row's start, precedes the next batch row), and no other
        // block holds any of its elements; `&mut self` keeps this block's writes exclusive.
        unsafe { gemm_raw(self.start, self.dims.width(), a, b, accumulate, SERIAL) }
    }
}

/// The forward kernel; the mask and scale ride in the op.
struct CausalSelfAttentionOp {
    /// Additive, `[batch or 1, 1, seq, seq]`, contiguous, in the inputs' dtype; no gradient.
    mask: Tensor,
    heads: usize,
    scale: f64,
    /// Whether candle keeps this op for backward (some input is tracked); otherwise the
    /// probabilities are never stored, only a per-thread `[seq, seq]` scratch is used.
    keep_probs: bool,
    /// `[batch, heads, seq, seq]` softmax probabilities, kept when `keep_probs`.
    probs: SavedForBackward,
}

impl CustomOp3 for CausalSelfAttentionOp {
    fn name(&self) -> &'static str {
        "fused-causal-self-attention"
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
        let dims = Dims::of(query_layout, key_layout, self.heads)?;
        let (mask, mask_layout) = self.mask.storage_and_layout();
        let Storage::Cpu(mask) = &*mask else {
            bail!("{}: the mask is not on the CPU", self.name())
        };
        let mask_batch = mask_layout.dims()[0];
        let (seq, name) = (dims.seq, self.name());
        let storage = with_real!(query.dtype(), name, |T| {
            let query = HeadRows::<T>::of(query, query_layout, dims, name)?;
            let key = HeadRows::<T>::of(key, key_layout, dims.key_value(), name)?;
            let value = HeadRows::<T>::of(value, value_layout, dims.key_value(), name)?;
            let mask = slice_of::<T>(mask, mask_layout, name)?;
            let scale = T::of(self.scale);
            let mut out = vec![T::zero(); dims.batch * seq * dims.width()];
            // One pair: `probs = softmax(scale · Q Kᵀ + mask)` row by row, then `O = P V`.
            let attend_pair = |pair: usize, probs: &mut [T], mut out: HeadBlock<T>| {
                let (batch, head) = dims.pair(pair);
                let key_value_head = head / dims.groups();
                let q = query.head(batch, head);
                gemm_into_with(probs, q, key.head(batch, key_value_head).t(), false, SERIAL);
                for (i, row) in probs.chunks_mut(seq).enumerate() {
                    let start = mask_row_start(pair * seq + i, dims.heads, seq, seq, mask_batch);
                    masked_softmax_row(row, &mask[start..start + seq], scale);
                }
                let probs = MatrixView::row_major(&*probs, seq, seq);
                out.product(probs, value.head(batch, key_value_head), false);
            };
            let blocks = head_blocks(&mut out, dims);
            if self.keep_probs {
                let mut probs = vec![T::zero(); dims.pairs() * seq * seq];
                probs
                    .par_chunks_mut((seq * seq).max(1))
                    .zip(blocks)
                    .enumerate()
                    .for_each(|(pair, (probs, out))| attend_pair(pair, probs, out));
                *self.probs.lock() = Some(T::to_cpu_storage_owned(probs));
            } else {
                blocks.into_par_iter().enumerate().for_each_init(
                    || vec![T::zero(); seq * seq],
                    |probs, (pair, out)| attend_pair(pair, probs, out),
                );
            }
            T::to_cpu_storage_owned(out)
        });
        Ok((storage, Shape::from((dims.batch, seq, dims.width()))))
    }

    fn bwd(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let probs = self.probs.lock();
        let Some(probs) = probs.as_ref() else {
            bail!("{}: backward without saved probabilities", self.name())
        };
        let grad = grad.contiguous()?;
        let (grad_storage, grad_layout) = grad.storage_and_layout();
        let Storage::Cpu(grad_storage) = &*grad_storage else {
            bail!("{}: the gradient is not on the CPU", self.name())
        };
        let grads = query.apply_op3_no_bwd(
            key,
            value,
            &CausalSelfAttentionGrads {
                probs,
                grad: (grad_storage, grad_layout),
                heads: self.heads,
                scale: self.scale,
            },
        )?;
        let (query_size, key_size) = (query.elem_count(), key.elem_count());
        Ok((
            Some(grads.narrow(0, 0, query_size)?.reshape(query.shape())?),
            Some(
                grads
                    .narrow(0, query_size, key_size)?
                    .reshape(key.shape())?,
            ),
            Some(
                grads
                    .narrow(0, query_size + key_size, key_size)?
                    .reshape(value.shape())?,
            ),
        ))
    }
}

/// `dL/dQ`, `dL/dK` and `dL/dV` flattened one after the other, from the saved probabilities `P` and
/// the output's gradient `dO`, per pair: `dV = Pᵀ dO`, `dP = dO Vᵀ`,
/// `dS = scale · P ⊙ (dP − rowsum(dP ⊙ P))` (the softmax backward), `dQ = dS K`, `dK = dSᵀ Q`;
/// the `dK` and `dV` of a key/value head sum over the query heads of its group.
struct CausalSelfAttentionGrads<'a> {
    probs: &'a CpuStorage,
    /// `dO`, `[batch, seq, width]` with adjacent columns (contiguous).
    grad: (&'a CpuStorage, &'a Layout),
    heads: usize,
    scale: f64,
}

impl CustomOp3 for CausalSelfAttentionGrads<'_> {
    fn name(&self) -> &'static str {
        "fused-causal-self-attention-grads"
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
        let dims = Dims::of(query_layout, key_layout, self.heads)?;
        let (seq, name) = (dims.seq, self.name());
        let query_size = query_layout.shape().elem_count();
        let key_size = key_layout.shape().elem_count();
        let storage = with_real!(query.dtype(), name, |T| {
            let query = HeadRows::<T>::of(query, query_layout, dims, name)?;
            let key = HeadRows::<T>::of(key, key_layout, dims.key_value(), name)?;
            let value = HeadRows::<T>::of(value, value_layout, dims.key_value(), name)?;
            let grad = HeadRows::<T>::of(self.grad.0, self.grad.1, dims, name)?;
            let probs = self.probs.as_slice::<T>()?;
            let scale = T::of(self.scale);
            let mut out = vec![T::zero(); query_size + 2 * key_size];
            let (query_grad, rest) = out.split_at_mut(query_size);
            let (key_grad, value_grad) = rest.split_at_mut(key_size);
            // One task per (batch, key/value head): it alone writes that head's dK and dV, summed
            // over its group's query heads in order, and the dQ of those query heads (adjacent
            // in pair order).
            let mut query_blocks = head_blocks(query_grad, dims).into_iter();
            let tasks = head_blocks(key_grad, dims.key_value())
                .into_iter()
                .zip(head_blocks(value_grad, dims.key_value()))
                .map(|blocks| {
                    let group: Vec<_> = query_blocks.by_ref().take(dims.groups()).collect();
                    (group, blocks)
                })
                .collect::<Vec<_>>();
            tasks.into_par_iter().enumerate().for_each_init(
                || vec![T::zero(); seq * seq],
                |scores_grad, (task, (query_grads, (mut key_grad, mut value_grad)))| {
                    let (batch, key_value_head) = dims.key_value().pair(task);
                    let (k, v) = (
                        key.head(batch, key_value_head),
                        value.head(batch, key_value_head),
                    );
                    let first_head = key_value_head * dims.groups();
                    for (member, mut query_grad) in query_grads.into_iter().enumerate() {
                        let head = first_head + member;
                        let pair = batch * dims.heads + head;
                        let pair_probs = &probs[pair * seq * seq..(pair + 1) * seq * seq];
                        let p = MatrixView::row_major(pair_probs, seq, seq);
                        let d_out = grad.head(batch, head);
                        let accumulate = member > 0;
                        value_grad.product(p.t(), d_out, accumulate);
                        gemm_into_with(scores_grad, d_out, v.t(), false, SERIAL);
                        for (row, p_row) in scores_grad
                            .chunks_mut(seq.max(1))
                            .zip(pair_probs.chunks(seq.max(1)))
                        {
                            softmax_grad_row(row, p_row, scale);
                        }
                        let ds = MatrixView::row_major(scores_grad, seq, seq);
                        query_grad.product(ds, k, false);
                        key_grad.product(ds.t(), query.head(batch, head), accumulate);
                    }
                },
            );
            T::to_cpu_storage_owned(out)
        });
        Ok((storage, Shape::from(query_size + 2 * key_size)))
    }
}

/// Multi-head causal self-attention without a KV cache: `softmax(scale · q kᵀ + mask) v` per
/// head, for `query` `[batch, seq, num_heads * head_dim]`, `key` and `value`
/// `[batch, seq, kv_heads * head_dim]` (the projections' outputs, heads not split; `kv_heads`
/// divides `num_heads`, and query head `h` reads key/value head `h / (num_heads / kv_heads)`, as
/// HF's `repeat_kv` for grouped-query attention) and the additive `mask`
/// `[batch or 1, 1, seq, seq]` (causal, window and padding combined; no gradient). Returns
/// `[batch, seq, num_heads * head_dim]` with the heads merged, differentiable in `query`, `key`
/// and `value`. A fully masked query row (padding) attends uniformly, as the composition does.
///
/// CPU `f32`/`f64` inputs go through one fused op (half precision is widened to `f32` and the
/// result cast back, as autocast runs attention's softmax in `f32`); other devices through the
/// composition it replaces (split heads, `q @ kᵀ`, masked softmax, `@ v`, merge heads).
pub fn causal_self_attention(
    query: &Tensor,
    key: &Tensor,
    value: &Tensor,
    mask: &Tensor,
    num_heads: usize,
    scale: f64,
) -> Result<Tensor> {
    if let Some([query_wide, key, value]) = in_kernel_dtype([query, key, value])? {
        let merged = causal_self_attention(&query_wide, &key, &value, mask, num_heads, scale)?;
        return Ok(merged.to_dtype(query.dtype())?);
    }
    let (batch, seq, width) = query.dims3()?;
    if key.dims() != value.dims() || key.dims().get(..2) != query.dims().get(..2) {
        return Err(ModelError::InvalidInput(format!(
            "attention: query {:?}, key {:?} and value {:?} differ in shape",
            query.dims(),
            key.dims(),
            value.dims()
        )));
    }
    if num_heads == 0 || width % num_heads != 0 {
        return Err(ModelError::InvalidInput(format!(
            "attention: width {width} does not split into {num_heads} heads"
        )));
    }
    let (head_dim, key_width) = (width / num_heads, key.dim(2)?);
    let kv_heads = key_width / head_dim.max(1);
    if !key_width.is_multiple_of(head_dim.max(1))
        || kv_heads == 0
        || !num_heads.is_multiple_of(kv_heads)
    {
        return Err(ModelError::InvalidInput(format!(
            "attention: key and value width {key_width} is not a number of {head_dim}-wide \
             heads that divides the {num_heads} query heads"
        )));
    }
    let mask_fits = match *mask.dims() {
        [mask_batch, 1, queries, keys] => {
            (mask_batch == 1 || mask_batch == batch) && (queries, keys) == (seq, seq)
        }
        _ => false,
    };
    if !mask_fits {
        return Err(ModelError::InvalidInput(format!(
            "attention: mask {:?} does not broadcast to [{batch}, 1, {seq}, {seq}]",
            mask.dims()
        )));
    }
    if !fusable(query) || query.elem_count() == 0 {
        let split = |t: &Tensor| split_heads(t, batch, seq, num_heads, head_dim);
        let repeat = |t: &Tensor| repeat_key_value_heads(t, kv_heads, num_heads / kv_heads);
        return attend(
            &split(query)?,
            &split(&repeat(key)?)?,
            &split(&repeat(value)?)?,
            Some(scale),
            mask,
        );
    }
    // A copy only where the columns are not adjacent (never for the models' projections).
    let with_adjacent_columns = |t: &Tensor| match row_strides(t.layout()) {
        Some(_) => Ok(t.clone()),
        None => t.contiguous(),
    };
    let (query, key, value) = (
        with_adjacent_columns(query)?,
        with_adjacent_columns(key)?,
        with_adjacent_columns(value)?,
    );
    let keep_probs = query.track_op() || key.track_op() || value.track_op();
    let op = CausalSelfAttentionOp {
        mask: mask.to_dtype(query.dtype())?.contiguous()?,
        heads: num_heads,
        scale,
        keep_probs,
        probs: SavedForBackward::default(),
    };
    Ok(if keep_probs {
        query.apply_op3(&key, &value, op)?
    } else {
        query.apply_op3_no_bwd(&key, &value, &op)?
    })
}

/// HF's `repeat_kv` on heads not split out: `[batch, seq, kv_heads * head_dim]` to
/// `[batch, seq, kv_heads * groups * head_dim]`, key/value head `k` serving query heads
/// `k * groups..(k + 1) * groups`. For the composition; the fused op reads the heads in place.
fn repeat_key_value_heads(x: &Tensor, kv_heads: usize, groups: usize) -> Result<Tensor> {
    if groups == 1 {
        return Ok(x.clone());
    }
    let (batch, seq, width) = x.dims3()?;
    let head_dim = width / kv_heads;
    Ok(x.reshape((batch, seq, kv_heads, 1, head_dim))?
        .broadcast_as((batch, seq, kv_heads, groups, head_dim))?
        .reshape((batch, seq, width * groups))?)
}
