//! Rotary position embeddings (Llama's `rotate_half` form) on a projection whose heads are not
//! split out: one pass forward, one pass backward.
//!
//! Why: written out, each of the query and key projections of every layer took two narrows, a
//! negation, a concatenation, two broadcast products and a sum, forward and again in backward
//! (zero-filled gradients, a split of the concatenation's gradient), each a full-size temporary
//! kept for backward: 60 projections per SmolLM2 step.

use candle_core::{
    backend::BackendStorage, bail, CpuStorage, CustomOp3, Layout, Shape, Tensor, WithDType, D,
};
use rayon::prelude::*;

use super::{fusable, in_kernel_dtype, slice_of, Real, MIN_ROWS_PER_TASK};
use crate::error::Result;

/// The rotation, or its transpose (the inverse rotation: the backward of the forward).
struct Rotation {
    inverse: bool,
}

impl Rotation {
    /// `x` (rows of `width`) rotated head by head; `cos` and `sin` hold one row of `head_dim`
    /// per row of `x`.
    fn rotate<T: Real>(
        &self,
        x: &[T],
        cos: &[T],
        sin: &[T],
        width: usize,
        head_dim: usize,
    ) -> Vec<T> {
        let mut out = vec![T::zero(); x.len()];
        if out.is_empty() {
            return out;
        }
        let rows = out
            .par_chunks_mut(width)
            .zip(x.par_chunks(width))
            .zip(cos.par_chunks(head_dim).zip(sin.par_chunks(head_dim)))
            .with_min_len(MIN_ROWS_PER_TASK);
        // The direction is chosen once, outside the loops, so each loop is branch-free and
        // vectorises.
        if self.inverse {
            rows.for_each(|((out, x), (cos, sin))| rotate_row::<T, true>(out, x, cos, sin));
        } else {
            rows.for_each(|((out, x), (cos, sin))| rotate_row::<T, false>(out, x, cos, sin));
        }
        out
    }
}

/// One row of every head. With `a = x_i`, `b = x_{i+h}` (`h = head_dim / 2`):
/// forward `(a cos_i − b sin_i, b cos_{i+h} + a sin_{i+h})`; inverse, the transposed matrix,
/// `(a cos_i + b sin_{i+h}, b cos_{i+h} − a sin_i)`.
#[inline(always)]
fn rotate_row<T: Real, const INVERSE: bool>(out: &mut [T], x: &[T], cos: &[T], sin: &[T]) {
    let half = cos.len() / 2;
    // Every half re-sliced to exactly `half`, so the indexing below needs no bounds checks.
    let (cos_first, cos_second) = (&cos[..half], &cos[half..2 * half]);
    let (sin_first, sin_second) = (&sin[..half], &sin[half..2 * half]);
    for (out, x) in out
        .chunks_exact_mut(cos.len())
        .zip(x.chunks_exact(cos.len()))
    {
        let (out_first, out_second) = out.split_at_mut(half);
        let (out_first, out_second) = (&mut out_first[..half], &mut out_second[..half]);
        let (x_first, x_second) = (&x[..half], &x[half..2 * half]);
        for i in 0..half {
            let (a, b) = (x_first[i], x_second[i]);
            if INVERSE {
                out_first[i] = a * cos_first[i] + b * sin_second[i];
                out_second[i] = b * cos_second[i] - a * sin_first[i];
            } else {
                out_first[i] = a * cos_first[i] - b * sin_first[i];
                out_second[i] = b * cos_second[i] + a * sin_second[i];
            }
        }
    }
}

impl CustomOp3 for Rotation {
    fn name(&self) -> &'static str {
        if self.inverse {
            "fused-rotary-embedding-grad"
        } else {
            "fused-rotary-embedding"
        }
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        cos: &CpuStorage,
        cos_layout: &Layout,
        sin: &CpuStorage,
        sin_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, seq, width) = x_layout.shape().dims3()?;
        let head_dim = cos_layout.dims().last().copied().unwrap_or(0);
        if cos_layout.dims() != [batch, seq, head_dim]
            || sin_layout.dims() != cos_layout.dims()
            || head_dim == 0
            || head_dim % 2 != 0
            || width % head_dim != 0
        {
            bail!(
                "{}: x {:?} must be [batch, seq, heads * head_dim] and cos {:?}, sin {:?} \
                 [batch, seq, head_dim] with an even head_dim",
                self.name(),
                x_layout.dims(),
                cos_layout.dims(),
                sin_layout.dims()
            );
        }
        let storage = with_real!(x.dtype(), self.name(), |T| {
            let x = slice_of::<T>(x, x_layout, self.name())?;
            let cos = slice_of::<T>(cos, cos_layout, self.name())?;
            let sin = slice_of::<T>(sin, sin_layout, self.name())?;
            T::to_cpu_storage_owned(self.rotate(x, cos, sin, width, head_dim))
        });
        Ok((storage, x_layout.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _result: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let inverse = Rotation {
            inverse: !self.inverse,
        };
        let input_grad = grad.contiguous()?.apply_op3_no_bwd(cos, sin, &inverse)?;
        // The angles are functions of the positions, which have no gradient.
        Ok((Some(input_grad), None, None))
    }
}

/// Rotary position embeddings on `x` `[batch, seq, heads * head_dim]` (a query or key projection,
/// heads not split out), with `cos` and `sin` `[batch, seq, head_dim]` of each position's angles:
/// per head `x * cos + rotate_half(x) * sin`, where `rotate_half` swaps the halves of a head and
/// negates the new first half (HF's `apply_rotary_pos_emb`). Differentiable in `x`; `cos` and
/// `sin` get no gradient.
pub fn rotary_embedding(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if let Some([wide, cos, sin]) = in_kernel_dtype([x, cos, sin])? {
        return Ok(rotary_embedding(&wide, &cos, &sin)?.to_dtype(x.dtype())?);
    }
    if !fusable(x) {
        return rotary_composition(x, cos, sin);
    }
    let (cos, sin) = (cos.detach().contiguous()?, sin.detach().contiguous()?);
    Ok(x.contiguous()?
        .apply_op3(&cos, &sin, Rotation { inverse: false })?)
}

/// [`rotary_embedding`] written out in differentiable tensor ops, for devices without the kernel.
fn rotary_composition(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (batch, seq, width) = x.dims3()?;
    let head_dim = cos.dim(D::Minus1)?;
    let by_head = x.reshape((batch, seq, width / head_dim, head_dim))?;
    let half = head_dim / 2;
    let first = by_head.narrow(D::Minus1, 0, half)?;
    let second = by_head.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&second.neg()?, &first], D::Minus1)?;
    let (cos, sin) = (cos.unsqueeze(2)?, sin.unsqueeze(2)?);
    let rotated = (by_head.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?;
    Ok(rotated.reshape((batch, seq, width))?)
}
