//! Bias addition and linear (affine) layers: one graph node each, whose backward writes every
//! gradient straight in its parameter's layout.

use candle_core::{
    backend::BackendStorage, bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout,
    Shape, Tensor, WithDType, D,
};
use half::bf16;
use num_traits::Zero;
use rayon::prelude::*;

use super::gemm_bf16::{gemm_bf16, narrowed_to_bf16};
use super::{
    fusable, gemm_into, map_rows, row_width, rows_and_width, slice_of, MatrixView, Real,
    MIN_ROWS_PER_TASK,
};
use crate::error::Result;
use crate::skinny_matmul;
use crate::transformer_blocks::matmul_last_dim;

/// Rows summed by one task of [`ColumnSums`]; a fixed size, so the order of the float additions
/// (and the result) does not depend on the number of threads.
const ROWS_PER_PARTIAL_SUM: usize = 64;

/// `x + bias` over the last dimension. candle's `broadcast_add` builds a broadcast node whose
/// backward zero-fills and accumulates a full-size gradient and then sums it on one thread; here
/// the gradient of `x` is the incoming gradient itself and the bias gradient one parallel pass.
struct BiasAddOp;

impl CustomOp2 for BiasAddOp {
    fn name(&self) -> &'static str {
        "fused-bias-add"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, width) = rows_and_width(x_layout);
        if bias_layout.dims() != [width] {
            bail!(
                "{}: bias {:?} does not match the last dimension of {:?}",
                self.name(),
                bias_layout.dims(),
                x_layout.dims()
            );
        }
        let storage = with_real!(x.dtype(), self.name(), |T| {
            let x = slice_of::<T>(x, x_layout, self.name())?;
            let bias = slice_of::<T>(bias, bias_layout, self.name())?;
            T::to_cpu_storage_owned(map_rows(width, rows, |row, out| {
                let x = &x[row * width..(row + 1) * width];
                for ((out, &x), &b) in out.iter_mut().zip(x).zip(bias) {
                    *out = x + b;
                }
            }))
        });
        Ok((storage, x_layout.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let bias_grad = grad.apply_op1_no_bwd(&ColumnSums)?;
        Ok((Some(grad), Some(bias_grad)))
    }
}

/// Sums of a `[.., width]` tensor over every row: `[width]`.
struct ColumnSums;

impl CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "fused-column-sums"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let width = row_width(layout);
        let storage = if x.dtype() == DType::BF16 {
            // Summed in f32 (as autocast's bf16 bias gradient is), rounded once.
            let x = slice_of::<bf16>(x, layout, self.name())?;
            let wide: Vec<f32> = x.par_iter().map(|x| x.to_f32()).collect();
            narrowed_to_bf16(&column_sums(&wide, width))
        } else {
            with_real!(x.dtype(), self.name(), |T| {
                let x = slice_of::<T>(x, layout, self.name())?;
                T::to_cpu_storage_owned(column_sums(x, width))
            })
        };
        Ok((storage, Shape::from(width)))
    }
}

/// Sums of the rows of a row-major `[.., width]` slice, blocks of rows in parallel and the block
/// sums added in order (deterministic for any thread count).
fn column_sums<T: Real>(x: &[T], width: usize) -> Vec<T> {
    let partials: Vec<Vec<T>> = x
        .par_chunks(ROWS_PER_PARTIAL_SUM * width.max(1))
        .map(|block| {
            let mut sums = vec![T::zero(); width];
            for row in block.chunks(width.max(1)) {
                sums.iter_mut().zip(row).for_each(|(sum, &v)| *sum += v);
            }
            sums
        })
        .collect();
    let mut sums = vec![T::zero(); width];
    for partial in &partials {
        sums.iter_mut().zip(partial).for_each(|(sum, &v)| *sum += v);
    }
    sums
}

/// `x + bias`, the bias broadcast over every dimension but the last; differentiable in both.
pub fn add_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if !fusable(x) || x.dtype() != bias.dtype() {
        return Ok(x.broadcast_add(bias)?);
    }
    Ok(x.contiguous()?.apply_op2(&bias.contiguous()?, BiasAddOp)?)
}

/// How a checkpoint stores a projection's weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// `nn.Linear`: `[out, in]` (GPT-Neo, Llama).
    OutIn,
    /// HF `Conv1D`: `[in, out]` (GPT-2).
    InOut,
}

impl WeightLayout {
    /// The weight as the `[in, out]` right-hand side of `x · W`.
    fn as_in_out<T>(self, weight: &[T], in_dim: usize, out_dim: usize) -> MatrixView<'_, T> {
        match self {
            WeightLayout::OutIn => MatrixView::row_major(weight, out_dim, in_dim).t(),
            WeightLayout::InOut => MatrixView::row_major(weight, in_dim, out_dim),
        }
    }

    /// The factors of the weight's gradient in its layout, from the output's gradient `dy` and the
    /// input `x` (`[rows, out]` and `[rows, in]`): `dy^T · x` for `[out, in]`, `x^T · dy` for
    /// `[in, out]`.
    fn weight_grad_factors<'a, T>(
        self,
        dy: MatrixView<'a, T>,
        x: MatrixView<'a, T>,
    ) -> (MatrixView<'a, T>, MatrixView<'a, T>) {
        match self {
            WeightLayout::OutIn => (dy.t(), x),
            WeightLayout::InOut => (x.t(), dy),
        }
    }

    /// `(in, out)` from the weight's dims.
    fn in_out(self, dims: &[usize]) -> candle_core::Result<(usize, usize)> {
        match (self, dims) {
            (WeightLayout::OutIn, &[out_dim, in_dim])
            | (WeightLayout::InOut, &[in_dim, out_dim]) => Ok((in_dim, out_dim)),
            _ => bail!("linear: weight {dims:?} is not a matrix"),
        }
    }
}

/// `x · W (+ b)` over the last dimension of `x`. candle's composition (reshape to 2-D, matmul
/// with the transposed weight, reshape back, broadcast bias) is five graph nodes, each with a
/// zero-filled gradient in backward, and returns the weight's gradient transposed, accumulated by
/// a strided copy. This is one node whose backward writes the weight's gradient in its own
/// layout.
struct LinearOp {
    layout: WeightLayout,
}

impl LinearOp {
    fn forward(
        &self,
        x: (&CpuStorage, &Layout),
        weight: (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = "fused-linear";
        let (in_dim, out_dim) = self.layout.in_out(weight.1.dims())?;
        let (rows, width) = rows_and_width(x.1);
        if width != in_dim || bias.is_some_and(|(_, layout)| layout.dims() != [out_dim]) {
            bail!(
                "{name}: input {:?}, weight {:?} and bias {:?} do not fit",
                x.1.dims(),
                weight.1.dims(),
                bias.map(|(_, layout)| layout.dims())
            );
        }
        if x.0.dtype() == DType::BF16 {
            let input = slice_of::<bf16>(x.0, x.1, name)?;
            let weight = slice_of::<bf16>(weight.0, weight.1, name)?;
            let mut out = vec![0f32; rows * out_dim];
            if let Some((bias, bias_layout)) = bias {
                let bias: Vec<f32> = slice_of::<bf16>(bias, bias_layout, name)?
                    .iter()
                    .map(|b| b.to_f32())
                    .collect();
                out.par_chunks_mut(out_dim.max(1))
                    .with_min_len(MIN_ROWS_PER_TASK)
                    .for_each(|row| row.copy_from_slice(&bias));
            }
            gemm_bf16(
                &mut out,
                MatrixView::row_major(input, rows, in_dim),
                self.layout.as_in_out(weight, in_dim, out_dim),
                bias.is_some(),
            );
            return Ok((narrowed_to_bf16(&out), output_shape(x.1, out_dim)));
        }
        let storage = with_real!(x.0.dtype(), name, |T| {
            let input = slice_of::<T>(x.0, x.1, name)?;
            let weight = slice_of::<T>(weight.0, weight.1, name)?;
            let mut out = vec![T::zero(); rows * out_dim];
            // The bias goes in first and gemm accumulates onto it: no extra pass.
            if let Some((bias, bias_layout)) = bias {
                let bias = slice_of::<T>(bias, bias_layout, name)?;
                out.par_chunks_mut(out_dim.max(1))
                    .with_min_len(MIN_ROWS_PER_TASK)
                    .for_each(|row| row.copy_from_slice(bias));
            }
            gemm_into(
                &mut out,
                MatrixView::row_major(input, rows, in_dim),
                self.layout.as_in_out(weight, in_dim, out_dim),
                bias.is_some(),
            );
            T::to_cpu_storage_owned(out)
        });
        Ok((storage, output_shape(x.1, out_dim)))
    }

    /// `dL/dx = dy · W^T` and `dL/dW` in the weight's own layout.
    fn grads(
        &self,
        x: &Tensor,
        weight: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let grad = grad.contiguous()?;
        let input_grad = grad.apply_op2_no_bwd(weight, &LinearInputGrad(self.layout))?;
        let weight_grad = grad.apply_op2_no_bwd(x, &LinearWeightGrad(self.layout))?;
        Ok((input_grad, weight_grad))
    }
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward((x, x_layout), (weight, weight_layout), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (input_grad, weight_grad) = self.grads(x, weight, grad)?;
        Ok((Some(input_grad), Some(weight_grad)))
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "fused-linear-bias"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward(
            (x, x_layout),
            (weight, weight_layout),
            Some((bias, bias_layout)),
        )
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (input_grad, weight_grad) = self.grads(x, weight, grad)?;
        let bias_grad = grad.contiguous()?.apply_op1_no_bwd(&ColumnSums)?;
        Ok((Some(input_grad), Some(weight_grad), Some(bias_grad)))
    }
}

/// `dL/dx = dy · W^T`, `[.., out]` to `[.., in]`.
struct LinearInputGrad(WeightLayout);

impl CustomOp2 for LinearInputGrad {
    fn name(&self) -> &'static str {
        "fused-linear-input-grad"
    }

    fn cpu_fwd(
        &self,
        grad: &CpuStorage,
        grad_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (in_dim, out_dim) = self.0.in_out(weight_layout.dims())?;
        let (rows, _) = rows_and_width(grad_layout);
        if grad.dtype() == DType::BF16 {
            let grad = slice_of::<bf16>(grad, grad_layout, self.name())?;
            let weight = slice_of::<bf16>(weight, weight_layout, self.name())?;
            let mut out = vec![0f32; rows * in_dim];
            gemm_bf16(
                &mut out,
                MatrixView::row_major(grad, rows, out_dim),
                self.0.as_in_out(weight, in_dim, out_dim).t(),
                false,
            );
            return Ok((narrowed_to_bf16(&out), output_shape(grad_layout, in_dim)));
        }
        let storage = with_real!(grad.dtype(), self.name(), |T| {
            let grad = slice_of::<T>(grad, grad_layout, self.name())?;
            let weight = slice_of::<T>(weight, weight_layout, self.name())?;
            let mut out = vec![T::zero(); rows * in_dim];
            gemm_into(
                &mut out,
                MatrixView::row_major(grad, rows, out_dim),
                self.0.as_in_out(weight, in_dim, out_dim).t(),
                false,
            );
            T::to_cpu_storage_owned(out)
        });
        Ok((storage, output_shape(grad_layout, in_dim)))
    }
}

/// `dL/dW` in the weight's layout: `dy^T · x` for `[out, in]`, `x^T · dy` for `[in, out]`.
struct LinearWeightGrad(WeightLayout);

impl CustomOp2 for LinearWeightGrad {
    fn name(&self) -> &'static str {
        "fused-linear-weight-grad"
    }

    fn cpu_fwd(
        &self,
        grad: &CpuStorage,
        grad_layout: &Layout,
        x: &CpuStorage,
        x_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, out_dim) = rows_and_width(grad_layout);
        let in_dim = row_width(x_layout);
        let storage = if grad.dtype() == DType::BF16 {
            let grad = slice_of::<bf16>(grad, grad_layout, self.name())?;
            let x = slice_of::<bf16>(x, x_layout, self.name())?;
            let (a, b) = self.0.weight_grad_factors(
                MatrixView::row_major(grad, rows, out_dim),
                MatrixView::row_major(x, rows, in_dim),
            );
            let mut out = vec![0f32; in_dim * out_dim];
            gemm_bf16(&mut out, a, b, false);
            narrowed_to_bf16(&out)
        } else {
            with_real!(grad.dtype(), self.name(), |T| {
                let grad = slice_of::<T>(grad, grad_layout, self.name())?;
                let x = slice_of::<T>(x, x_layout, self.name())?;
                let (a, b) = self.0.weight_grad_factors(
                    MatrixView::row_major(grad, rows, out_dim),
                    MatrixView::row_major(x, rows, in_dim),
                );
                let mut out = vec![T::zero(); in_dim * out_dim];
                gemm_into(&mut out, a, b, false);
                T::to_cpu_storage_owned(out)
            })
        };
        let shape = match self.0 {
            WeightLayout::OutIn => Shape::from((out_dim, in_dim)),
            WeightLayout::InOut => Shape::from((in_dim, out_dim)),
        };
        Ok((storage, shape))
    }
}

/// `x`'s dims with the last one replaced by `width`.
fn output_shape(x: &Layout, width: usize) -> Shape {
    let mut dims = x.dims().to_vec();
    *dims.last_mut().expect("a matrix") = width;
    Shape::from(dims)
}

/// `x · W + b` over the last dimension of `x`, for a weight stored as `layout` says; differentiable
/// in all three. Products of at most `skinny_matmul::MAX_ROWS` rows (generation steps) go
/// through the crate's skinny-product kernel; bf16 products (a mixed-precision forward) through
/// its bf16 kernel (`gemm_bf16`), bf16 operands with f32 sums as PyTorch autocast's; other devices
/// and dtypes through candle's matmul.
pub fn linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    layout: WeightLayout,
) -> Result<Tensor> {
    let in_dim = x.dim(D::Minus1)?;
    let rows = x.elem_count() / in_dim.max(1);
    let same_dtype = weight.dtype() == x.dtype() && bias.is_none_or(|b| b.dtype() == x.dtype());
    let bf16_on_cpu = x.device().is_cpu() && x.dtype() == DType::BF16;
    if !(fusable(x) || bf16_on_cpu) || !same_dtype || rows <= skinny_matmul::MAX_ROWS {
        let weight = match layout {
            WeightLayout::OutIn => weight.t()?,
            WeightLayout::InOut => weight.clone(),
        };
        let output = matmul_last_dim(x, &weight)?;
        return match bias {
            Some(bias) => add_bias(&output, bias),
            None => Ok(output),
        };
    }
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    let op = LinearOp { layout };
    Ok(match bias {
        Some(bias) => x.apply_op3(&weight, &bias.contiguous()?, op)?,
        None => x.apply_op2(&weight, op)?,
    })
}
