//! The LM head's product and the log-probability of each target token in one op.

use candle_core::{
    backend::BackendStorage, bail, CpuStorage, CustomOp3, DType, Layout, Shape, Tensor, WithDType,
};
use num_traits::Zero;
use rayon::prelude::*;

use super::{
    fusable, in_kernel_dtype, log_sum_exp, slice_of, target_of, token_logprobs, MatrixView,
    Operands, Real, Rhs, SavedForBackward,
};
use crate::error::Result;

/// Rows of the `[rows, vocab]` logits gradient that backward holds at once. Why: the whole
/// gradient is ≈ 200 MB at 4×256 tokens of a 50k vocabulary; a chunk this size is a quarter of a
/// GPT-Neo batch and still deep enough (the `k` of `G^T · hidden`) for gemm to run at full speed.
const LM_HEAD_GRAD_ROWS: usize = 256;

/// `log_softmax(hidden · weight^T)[row, target[row]]` for `hidden` `[rows, width]`, the head
/// `weight` `[vocab, width]` and `u32` targets `[rows]`.
struct LmHeadTokenLogProbsOp {
    /// bf16 operands for the hidden states of a mixed-precision forward, in forward and backward.
    operands: Operands,
    /// `softmax(hidden · weight^T)` from forward, `[rows, vocab]`: backward's `onehot - p` without
    /// recomputing the logits.
    probs: SavedForBackward,
}

impl CustomOp3 for LmHeadTokenLogProbsOp {
    fn name(&self) -> &'static str {
        "fused-lm-head-token-logprobs"
    }

    fn cpu_fwd(
        &self,
        hidden: &CpuStorage,
        hidden_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        targets: &CpuStorage,
        targets_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, width) = hidden_layout.shape().dims2()?;
        let (vocab, weight_width) = weight_layout.shape().dims2()?;
        if weight_width != width || hidden.dtype() != weight.dtype() {
            bail!(
                "{}: hidden {:?} {:?} and weight {:?} {:?} do not match",
                self.name(),
                hidden_layout.dims(),
                hidden.dtype(),
                weight_layout.dims(),
                weight.dtype()
            );
        }
        let targets = slice_of::<u32>(targets, targets_layout, self.name())?;
        for row in 0..rows {
            target_of(targets, row, vocab, self.name())?;
        }
        let storage = with_real!(hidden.dtype(), self.name(), |T| {
            let hidden = slice_of::<T>(hidden, hidden_layout, self.name())?;
            let weight = slice_of::<T>(weight, weight_layout, self.name())?;
            let mut probs = vec![T::zero(); rows * vocab];
            Rhs::new(
                MatrixView::row_major(weight, vocab, width).t(),
                self.operands,
            )
            .product_into(
                &mut probs,
                MatrixView::row_major(hidden, rows, width),
                false,
            );
            let mut out = vec![T::zero(); rows];
            probs
                .par_chunks_mut(vocab.max(1))
                .zip(out.par_iter_mut())
                .enumerate()
                .for_each(|(row, (logits, out))| {
                    let lse = log_sum_exp(logits);
                    *out = logits[targets[row] as usize] - lse;
                    logits
                        .iter_mut()
                        .for_each(|logit| *logit = (*logit - lse).exp_kernel());
                });
            *self.probs.lock() = Some(T::to_cpu_storage_owned(probs));
            T::to_cpu_storage_owned(out)
        });
        Ok((storage, Shape::from(rows)))
    }

    fn bwd(
        &self,
        hidden: &Tensor,
        weight: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, width) = hidden.dims2()?;
        let vocab = weight.dim(0)?;
        let probs = self.probs.lock();
        let Some(probs) = probs.as_ref() else {
            bail!("{}: backward without a forward pass", self.name())
        };
        let grads = LmHeadGrads {
            operands: self.operands,
            probs,
            targets: &targets.to_vec1::<u32>()?,
        };
        let grads = hidden.apply_op3_no_bwd(weight, &grad.contiguous()?, &grads)?;
        Ok((
            Some(grads.narrow(0, 0, rows * width)?.reshape((rows, width))?),
            Some(
                grads
                    .narrow(0, rows * width, vocab * width)?
                    .reshape((vocab, width))?,
            ),
            None,
        ))
    }
}

/// `dL/dhidden` `[rows, width]` and `dL/dweight` `[vocab, width]`, flattened one after the other,
/// from the saved probabilities: with `G = dy * (onehot(target) - p)`, `dhidden = G · weight` and
/// `dweight = G^T · hidden`. `G` is built a chunk of rows at a time and both products are taken
/// per chunk, `dweight` accumulated in place by gemm; rows with `dy = 0` (masked positions) are
/// skipped.
struct LmHeadGrads<'a> {
    operands: Operands,
    probs: &'a CpuStorage,
    targets: &'a [u32],
}

impl CustomOp3 for LmHeadGrads<'_> {
    fn name(&self) -> &'static str {
        "fused-lm-head-token-logprobs-grads"
    }

    fn cpu_fwd(
        &self,
        hidden: &CpuStorage,
        hidden_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, width) = hidden_layout.shape().dims2()?;
        let vocab = weight_layout.dims()[0];
        let storage = with_real!(hidden.dtype(), self.name(), |T| {
            let hidden = slice_of::<T>(hidden, hidden_layout, self.name())?;
            let weight = slice_of::<T>(weight, weight_layout, self.name())?;
            let grad = slice_of::<T>(grad, grad_layout, self.name())?;
            let probs = self.probs.as_slice::<T>()?;
            // Every chunk's `G · weight` has the same right-hand side: packed once.
            let weight = Rhs::new(MatrixView::row_major(weight, vocab, width), self.operands);
            let active: Vec<usize> = (0..rows).filter(|&row| grad[row] != T::zero()).collect();
            let mut out = vec![T::zero(); (rows + vocab) * width];
            let (hidden_grad, weight_grad) = out.split_at_mut(rows * width);
            let chunk_rows = LM_HEAD_GRAD_ROWS.min(active.len());
            let mut logits_grad = vec![T::zero(); chunk_rows * vocab];
            // The chunk's hidden rows and their gradient, gathered: masked rows leave gaps.
            let mut chunk_hidden = vec![T::zero(); chunk_rows * width];
            let mut chunk_hidden_grad = vec![T::zero(); chunk_rows * width];
            for (index, chunk) in active.chunks(LM_HEAD_GRAD_ROWS).enumerate() {
                let n = chunk.len();
                let logits_grad = &mut logits_grad[..n * vocab];
                logits_grad
                    .par_chunks_mut(vocab)
                    .zip(chunk.par_iter())
                    .for_each(|(out, &row)| {
                        let dy = grad[row];
                        let p = &probs[row * vocab..(row + 1) * vocab];
                        out.iter_mut().zip(p).for_each(|(out, &p)| *out = -dy * p);
                        out[self.targets[row] as usize] += dy;
                    });
                for (gathered, &row) in chunk_hidden.chunks_mut(width.max(1)).zip(chunk) {
                    gathered.copy_from_slice(&hidden[row * width..(row + 1) * width]);
                }
                let logits_grad = MatrixView::row_major(&*logits_grad, n, vocab);
                weight.product_into(&mut chunk_hidden_grad[..n * width], logits_grad, false);
                for (gathered, &row) in chunk_hidden_grad.chunks(width.max(1)).zip(chunk) {
                    hidden_grad[row * width..(row + 1) * width].copy_from_slice(gathered);
                }
                Rhs::new(
                    MatrixView::row_major(&chunk_hidden[..n * width], n, width),
                    self.operands,
                )
                .product_into(weight_grad, logits_grad.t(), index > 0);
            }
            T::to_cpu_storage_owned(out)
        });
        Ok((storage, Shape::from((rows + vocab) * width)))
    }
}

/// `log_softmax(hidden · weight^T)[row, targets[row]]`: the LM head and [`token_logprobs`] in one
/// op, for `hidden` `[rows, width]`, a head `weight` `[vocab, width]` (an `nn.Linear` weight or a
/// tied embedding) and `[rows]` `u32` targets; a `[rows]` tensor differentiable in `hidden` and
/// `weight`.
///
/// Why: through `matmul` + [`token_logprobs`], backward materialises the `[rows, vocab]` logits
/// gradient, the `[width, vocab]` gradient of the transposed weight and a strided transpose into
/// the weight's gradient. Here forward keeps the softmax probabilities (in place of the logits
/// the composition keeps) and backward takes both products a chunk of rows at a time, straight
/// into a `[vocab, width]` gradient.
///
/// Half-precision hidden states (a bf16 forward over f32 parameters) are widened to `f32` and go
/// through the same kernel, its products (forward and backward) with operands rounded to bf16
/// and `f32` sums, as PyTorch autocast runs a bf16 model's head. On other devices, or for a non-contiguous weight (copying a whole
/// vocabulary matrix per call would cost more than it saves), this is the composition as the
/// models' heads compute it, the logits upcast to `f32` unless they are `f64` before the
/// log-softmax; the result is `f32` or `f64` either way.
pub fn lm_head_token_logprobs(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
) -> Result<Tensor> {
    // The f32 head of a bf16 forward: bf16 products, f32 softmax; the log-probs come out f32.
    if let Some([wide, weight]) = in_kernel_dtype([hidden, weight])? {
        let operands = match hidden.dtype() {
            DType::BF16 => Operands::Bf16,
            _ => Operands::Exact,
        };
        return lm_head_token_logprobs_with(&wide, &weight, targets, operands);
    }
    lm_head_token_logprobs_with(hidden, weight, targets, Operands::Exact)
}

/// [`lm_head_token_logprobs`] for hidden states and weight of one kernel dtype, whose products
/// take their operands as `operands` says.
fn lm_head_token_logprobs_with(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    operands: Operands,
) -> Result<Tensor> {
    let (rows, width) = hidden.dims2()?;
    let (_, weight_width) = weight.dims2()?;
    if weight_width != width {
        return Err(crate::ModelError::InvalidInput(format!(
            "LM head weight {:?} does not match hidden states {:?}",
            weight.dims(),
            hidden.dims()
        )));
    }
    let targets = targets.flatten_all()?.to_dtype(DType::U32)?.contiguous()?;
    if targets.dim(0)? != rows {
        return Err(crate::ModelError::InvalidInput(format!(
            "{} targets for {rows} rows of hidden states",
            targets.dim(0)?
        )));
    }
    // `in_kernel_dtype` above left `hidden` and `weight` in one kernel dtype.
    if !(fusable(hidden) && fusable(weight) && weight.is_contiguous()) {
        return token_logprobs(&hidden.matmul(&weight.t()?)?, &targets);
    }
    Ok(hidden.contiguous()?.apply_op3(
        weight,
        &targets,
        LmHeadTokenLogProbsOp {
            operands,
            probs: SavedForBackward::default(),
        },
    )?)
}
