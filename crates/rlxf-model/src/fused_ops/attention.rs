//! Causal self-attention in one op: `softmax(scale · Q Kᵀ + mask) V` per (batch, head) pair, from
//! the projections' `[batch, seq, heads * head_dim]` outputs straight to the merged-heads output.
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

/// Sizes of one call: `[batch, seq, heads * head_dim]` inputs.
#[derive(Clone, Copy)]
struct Dims {
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
}

impl Dims {
    fn of(layout: &Layout, heads: usize) -> candle_core::Result<Self> {
        let (batch, seq, width) = layout.shape().dims3()?;
        Ok(Self {
            batch,
            seq,
            heads,
            head_dim: width / heads,
        })
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
    /// `block = a · b`, single-threaded.
    fn set_product(&mut self, a: MatrixView<T>, b: MatrixView<T>) {
        assert!(a.rows == self.dims.seq && b.cols == self.dims.head_dim);
        if a.rows == 0 {
            return;
        }
        // SAFETY: the `[seq, head_dim]` matrix with rows `width` apart from `start` lies inside
        // the buffer `head_blocks` split (its last element, `(seq - 1) * width + head * head_dim
        // + head_dim - 1` past the batch row's start, precedes the next batch row), and no other
        // block holds any of its elements; `&mut self` keeps this block's writes exclusive.
        unsafe { gemm_raw(self.start, self.dims.width(), a, b, false, SERIAL) }
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
        let dims = Dims::of(query_layout, self.heads)?;
        let (mask, mask_layout) = self.mask.storage_and_layout();
        let Storage::Cpu(mask) = &*mask else {
            bail!("{}: the mask is not on the CPU", self.name())
        };
        let mask_batch = mask_layout.dims()[0];
        let (seq, name) = (dims.seq, self.name());
        let storage = with_real!(query.dtype(), name, |T| {
            let query = HeadRows::<T>::of(query, query_layout, dims, name)?;
            let key = HeadRows::<T>::of(key, key_layout, dims, name)?;
            let value = HeadRows::<T>::of(value, value_layout, dims, name)?;
            let mask = slice_of::<T>(mask, mask_layout, name)?;
            let scale = T::of(self.scale);
            let mut out = vec![T::zero(); dims.batch * seq * dims.width()];
            // One pair: `probs = softmax(scale · Q Kᵀ + mask)` row by row, then `O = P V`.
            let attend_pair = |pair: usize, probs: &mut [T], mut out: HeadBlock<T>| {
                let (batch, head) = dims.pair(pair);
                let q = query.head(batch, head);
                gemm_into_with(probs, q, key.head(batch, head).t(), false, SERIAL);
                for (i, row) in probs.chunks_mut(seq).enumerate() {
                    let start = mask_row_start(pair * seq + i, dims.heads, seq, seq, mask_batch);
                    masked_softmax_row(row, &mask[start..start + seq], scale);
                }
                let probs = MatrixView::row_major(&*probs, seq, seq);
                out.set_product(probs, value.head(batch, head));
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
        Ok((
            Some(grads.get(0)?),
            Some(grads.get(1)?),
            Some(grads.get(2)?),
        ))
    }
}

/// `[dL/dQ, dL/dK, dL/dV]` stacked, `[3, batch, seq, width]`, from the saved probabilities `P` and
/// the output's gradient `dO`, per pair: `dV = Pᵀ dO`, `dP = dO Vᵀ`,
/// `dS = scale · P ⊙ (dP − rowsum(dP ⊙ P))` (the softmax backward), `dQ = dS K`, `dK = dSᵀ Q`.
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
        let dims = Dims::of(query_layout, self.heads)?;
        let (seq, name) = (dims.seq, self.name());
        let size = dims.batch * seq * dims.width();
        let storage = with_real!(query.dtype(), name, |T| {
            let query = HeadRows::<T>::of(query, query_layout, dims, name)?;
            let key = HeadRows::<T>::of(key, key_layout, dims, name)?;
            let value = HeadRows::<T>::of(value, value_layout, dims, name)?;
            let grad = HeadRows::<T>::of(self.grad.0, self.grad.1, dims, name)?;
            let probs = self.probs.as_slice::<T>()?;
            let scale = T::of(self.scale);
            let mut out = vec![T::zero(); 3 * size];
            let (query_grad, rest) = out.split_at_mut(size);
            let (key_grad, value_grad) = rest.split_at_mut(size);
            let blocks = head_blocks(query_grad, dims)
                .into_iter()
                .zip(head_blocks(key_grad, dims))
                .zip(head_blocks(value_grad, dims))
                .collect::<Vec<_>>();
            blocks.into_par_iter().enumerate().for_each_init(
                || vec![T::zero(); seq * seq],
                |scores_grad, (pair, ((mut query_grad, mut key_grad), mut value_grad))| {
                    let (batch, head) = dims.pair(pair);
                    let pair_probs = &probs[pair * seq * seq..(pair + 1) * seq * seq];
                    let p = MatrixView::row_major(pair_probs, seq, seq);
                    let d_out = grad.head(batch, head);
                    value_grad.set_product(p.t(), d_out);
                    let v = value.head(batch, head);
                    gemm_into_with(scores_grad, d_out, v.t(), false, SERIAL);
                    for (row, p_row) in scores_grad
                        .chunks_mut(seq.max(1))
                        .zip(pair_probs.chunks(seq.max(1)))
                    {
                        softmax_grad_row(row, p_row, scale);
                    }
                    let ds = MatrixView::row_major(scores_grad, seq, seq);
                    query_grad.set_product(ds, key.head(batch, head));
                    key_grad.set_product(ds.t(), query.head(batch, head));
                },
            );
            T::to_cpu_storage_owned(out)
        });
        Ok((storage, Shape::from((3, dims.batch, seq, dims.width()))))
    }
}

/// Multi-head causal self-attention without a KV cache: `softmax(scale · q kᵀ + mask) v` per
/// head, for `query`, `key` and `value` `[batch, seq, num_heads * head_dim]` (the projections'
/// outputs, heads not split) and the additive `mask` `[batch or 1, 1, seq, seq]` (causal, window
/// and padding combined; no gradient). Returns `[batch, seq, num_heads * head_dim]` with the heads
/// merged, differentiable in `query`, `key` and `value`. A fully masked query row (padding)
/// attends uniformly, as the composition does.
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
    if key.dims() != query.dims() || value.dims() != query.dims() {
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
        let split = |t: &Tensor| split_heads(t, batch, seq, num_heads, width / num_heads);
        return attend(
            &split(query)?,
            &split(key)?,
            &split(value)?,
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
