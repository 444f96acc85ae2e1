//! Fused CPU kernels with hand-written backward passes for the training hot spots: layer and RMS norm,
//! the attention softmax (with its scale and mask), causal self-attention (scores, softmax and
//! values in one op), rotary position embeddings, GELU, SwiGLU, bias addition and linear layers,
//! and the log-probability of target tokens under a softmax over the vocabulary (from logits, or
//! from hidden states with the LM head's product in the same op). The ops built on matrix products
//! (`attention`, `linear`, `lm_head`) live in child modules over the `gemm` crate, and, for the
//! bf16 operands of a mixed-precision forward, over `gemm_bf16` (AVX512-BF16 dot products); the
//! rotary embedding (no matrix product) has a child module of its own.
//!
//! Why: the differentiable compositions these replace (`layer_norm_slow`, `ops::softmax`,
//! `log_softmax` + `gather`, candle's GELU backward) build every intermediate as a fresh tensor,
//! forward and again in backward — about ten full-size temporaries per op, which on CPU costs more
//! time in allocation, page faults and memory traffic than in arithmetic. Each kernel here is one or
//! two passes over its rows, and each backward is itself one kernel (a forward-only custom op),
//! so candle's autograd sees a single node per fused op.
//!
//! The kernels run on CPU tensors of `f32` or `f64`. Half-precision (`bf16`, `f16`) inputs, those of
//! a mixed-precision forward, are widened to `f32` and the result cast back (log-probabilities and
//! entropies stay `f32`), as PyTorch autocast runs these ops in `f32`; the exceptions are autocast's
//! bf16 matmuls: `linear` takes bf16 operands as they are and the LM head rounds its operands to
//! bf16, both summing in `f32`. On any other device each
//! public function falls back to the differentiable composition it replaces, so callers need not
//! care.
//! Every kernel and every backward is tested against those compositions and against finite
//! differences (`tests/fused_ops.rs`).

use candle_core::{
    backend::BackendStorage, bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout,
    Shape, Tensor, WithDType, D,
};
use num_traits::{Float, NumAssign, One, Zero};
use rayon::prelude::*;

use crate::config::Activation;
use crate::error::Result;

/// Rows handed to one rayon task at least: a row of a few hundred floats is too little work to
/// schedule on its own.
const MIN_ROWS_PER_TASK: usize = 16;

/// The float types the kernels are written for.
trait Real: Float + NumAssign + WithDType + Send + Sync {
    fn of(value: f64) -> Self {
        <Self as WithDType>::from_f64(value)
    }

    /// `e^x` for the kernels' inner loops: libm's for `f64` (the reference precision the tests
    /// compare at 1e-12), [`exp_f32`] for `f32`.
    fn exp_kernel(self) -> Self {
        self.exp()
    }

    /// `tanh(x) = 1 - 2 / (e^{2x} + 1)`, through [`Real::exp_kernel`].
    fn tanh_kernel(self) -> Self {
        let two = Self::of(2.0);
        Self::one() - two / ((two * self).exp_kernel() + Self::one())
    }

    /// `values` as `f32`, if that is what they are: products with bf16 operands (a mixed-precision
    /// forward) take their operands and sums in `f32`.
    fn as_f32(_values: &[Self]) -> Option<&[f32]> {
        None
    }

    fn as_f32_mut(_values: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
}
impl Real for f32 {
    #[inline(always)]
    fn exp_kernel(self) -> Self {
        exp_f32(self)
    }

    fn as_f32(values: &[Self]) -> Option<&[f32]> {
        Some(values)
    }

    fn as_f32_mut(values: &mut [Self]) -> Option<&mut [f32]> {
        Some(values)
    }
}
impl Real for f64 {
    fn tanh_kernel(self) -> Self {
        self.tanh()
    }
}

/// `e^x` in `f32` to within 2.5e-7 relative error (Cephes' `expf`: `x = n ln2 + r`, a degree-7 polynomial for `e^r`
/// on `|r| <= ln2 / 2`, then `2^n` through the exponent bits). Unlike libm's `expf`/`tanhf`, which
/// profiles showed at ≈ 10% of a GPT-Neo training step (GELU, softmax, log-softmax), it has no
/// branches or calls, so LLVM vectorises the loops that use it.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    /// Above this `e^x` overflows `f32`; below the other bound the result would be subnormal.
    const MAX_INPUT: f32 = 88.722_83;
    const MIN_INPUT: f32 = -87.336_55;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let clamped = x.clamp(MIN_INPUT, MAX_INPUT);
    // Round to nearest by adding and subtracting 1.5 * 2^23 (exact in f32 arithmetic, and unlike
    // `round_ties_even` no libm call on baseline x86-64). 2^n must be a normal f32, so n is kept
    // in [-126, 127]; near the top `r` then grows up to ln2.
    const ROUNDING_SHIFT: f32 = 12_582_912.0;
    let n = ((clamped * std::f32::consts::LOG2_E + ROUNDING_SHIFT) - ROUNDING_SHIFT).min(127.0);
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let poly = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e_r = poly * r * r + r + 1.0;
    let result = e_r * f32::from_bits((((n as i32) + 127) as u32) << 23);
    if x > MAX_INPUT {
        f32::INFINITY
    } else if x < MIN_INPUT {
        0.0
    } else {
        result
    }
}

/// Whether `tensor` can go through the fused kernels.
fn fusable(tensor: &Tensor) -> bool {
    tensor.device().is_cpu() && matches!(tensor.dtype(), DType::F32 | DType::F64)
}

/// The dtype the kernels (and softmax-like reductions generally: attention scores, log-sums-exp
/// over a vocabulary) run in for inputs of `dtype`: `f64` for `f64`, `f32` otherwise, since a
/// log-sum-exp over 50k half-precision logits loses the target's probability.
pub(crate) fn kernel_dtype(dtype: DType) -> DType {
    match dtype {
        DType::F64 => DType::F64,
        _ => DType::F32,
    }
}

/// `inputs` cast to the dtype the kernels run in for the first of them: `f64` for `f64`, `f32`
/// for everything else. Half-precision (`bf16`, `f16`) tensors of a mixed-precision forward have
/// no kernels, and PyTorch autocast runs norms, softmax and log-softmax in `f32` too; weights
/// in another dtype than the activations (f32 masters of a bf16 forward) join them. `None` when
/// every input already has that dtype, so the f32 and f64 paths copy nothing.
fn in_kernel_dtype<const N: usize>(inputs: [&Tensor; N]) -> Result<Option<[Tensor; N]>> {
    let dtype = kernel_dtype(inputs[0].dtype());
    if inputs.iter().all(|input| input.dtype() == dtype) {
        return Ok(None);
    }
    let cast = inputs
        .iter()
        .map(|input| input.to_dtype(dtype))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Some(cast.try_into().expect("one cast per input")))
}

/// The contiguous data of a custom op's input.
fn slice_of<'a, T: WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [T]> {
    let data = storage.as_slice::<T>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{op}: input must be contiguous"),
    }
}

/// Width of the last dimension (the rows the kernels normalise over).
fn row_width(layout: &Layout) -> usize {
    layout.dims().last().copied().unwrap_or(1)
}

/// Number of rows of the last dimension's width, and that width.
fn rows_and_width(layout: &Layout) -> (usize, usize) {
    let width = row_width(layout);
    (layout.shape().elem_count() / width.max(1), width)
}

/// Runs `$body` with `$t` bound to the Rust type of `$dtype` (`f32` or `f64`).
macro_rules! with_real {
    ($dtype:expr, $op:expr, |$t:ident| $body:expr) => {
        match $dtype {
            candle_core::DType::F32 => {
                type $t = f32;
                $body
            }
            candle_core::DType::F64 => {
                type $t = f64;
                $body
            }
            other => candle_core::bail!("{}: unsupported dtype {other:?}", $op),
        }
    };
}

/// `out[row] = f(row of each input)`, rows in parallel.
fn map_rows<T: Real>(
    width: usize,
    rows: usize,
    row_fn: impl Fn(usize, &mut [T]) + Send + Sync,
) -> Vec<T> {
    let mut out = vec![T::zero(); rows * width];
    out.par_chunks_mut(width.max(1))
        .with_min_len(MIN_ROWS_PER_TASK)
        .enumerate()
        .for_each(|(row, out_row)| row_fn(row, out_row));
    out
}

// ---------------------------------------------------------------------------------------------
// Layer norm

/// Which normalisation: layer norm centres each row and adds a bias; RMS norm (Llama) does
/// neither. With the mean taken as 0 and the bias as 0, the formulas below are the same for both.
#[derive(Debug, Clone, Copy)]
struct Norm {
    eps: f64,
    centered: bool,
}

/// Mean (0 for RMS norm) and `1 / sqrt(var + eps)` of a row (biased variance, as `nn.LayerNorm`;
/// the mean square for RMS norm).
fn mean_rstd<T: Real>(row: &[T], norm: Norm) -> (T, T) {
    let n = T::of(row.len() as f64);
    let eps = T::of(norm.eps);
    let mean = if norm.centered {
        row.iter().fold(T::zero(), |sum, &v| sum + v) / n
    } else {
        T::zero()
    };
    let var = row.iter().fold(T::zero(), |sum, &v| {
        let d = v - mean;
        sum + d * d
    }) / n;
    (mean, (var + eps).sqrt().recip())
}

/// `(x - mean) * rstd * weight + bias`; RMS norm passes a zero bias.
struct NormOp(Norm);

impl CustomOp3 for NormOp {
    fn name(&self) -> &'static str {
        "fused-norm"
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
        let (rows, width) = rows_and_width(x_layout);
        let storage = with_real!(x.dtype(), self.name(), |T| {
            let x = slice_of::<T>(x, x_layout, self.name())?;
            let weight = slice_of::<T>(weight, weight_layout, self.name())?;
            let bias = slice_of::<T>(bias, bias_layout, self.name())?;
            T::to_cpu_storage_owned(map_rows(width, rows, |row, out| {
                let x = &x[row * width..(row + 1) * width];
                let (mean, rstd) = mean_rstd(x, self.0);
                for i in 0..width {
                    out[i] = (x[i] - mean) * rstd * weight[i] + bias[i];
                }
            }))
        });
        Ok((storage, x_layout.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let grad_x = x.apply_op3_no_bwd(weight, &grad, &NormInputGrad(self.0))?;
        let param_grads = x.apply_op2_no_bwd(&grad, &NormParamGrads(self.0))?;
        Ok((
            Some(grad_x),
            Some(param_grads.get(0)?),
            Some(param_grads.get(1)?),
        ))
    }
}

/// `dL/dx` of layer norm: with `x̂ = (x - mean) * rstd` and `g = dy * weight`,
/// `dx = rstd * (g - mean(g) - x̂ * mean(g * x̂))`; for RMS norm (no centring) the `mean(g)` term
/// goes.
struct NormInputGrad(Norm);

impl CustomOp3 for NormInputGrad {
    fn name(&self) -> &'static str {
        "fused-norm-input-grad"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, width) = rows_and_width(x_layout);
        let storage = with_real!(x.dtype(), self.name(), |T| {
            let x = slice_of::<T>(x, x_layout, self.name())?;
            let weight = slice_of::<T>(weight, weight_layout, self.name())?;
            let grad = slice_of::<T>(grad, grad_layout, self.name())?;
            let n = T::of(width as f64);
            let centered = if self.0.centered { T::one() } else { T::zero() };
            T::to_cpu_storage_owned(map_rows(width, rows, |row, out| {
                let span = row * width..(row + 1) * width;
                let (x, dy) = (&x[span.clone()], &grad[span]);
                let (mean, rstd) = mean_rstd(x, self.0);
                let (mut g_sum, mut g_xhat_sum) = (T::zero(), T::zero());
                for i in 0..width {
                    let g = dy[i] * weight[i];
                    g_sum += g;
                    g_xhat_sum += g * (x[i] - mean) * rstd;
                }
                let (g_mean, g_xhat_mean) = (centered * g_sum / n, g_xhat_sum / n);
                for i in 0..width {
                    let xhat = (x[i] - mean) * rstd;
                    out[i] = rstd * (dy[i] * weight[i] - g_mean - xhat * g_xhat_mean);
                }
            }))
        });
        Ok((storage, x_layout.shape().clone()))
    }
}

/// `[dL/dweight, dL/dbias]` of the norm as one `[2, width]` tensor: `Σ_rows dy * x̂` and
/// `Σ_rows dy`, summed per rayon task and then across tasks.
struct NormParamGrads(Norm);

impl CustomOp2 for NormParamGrads {
    fn name(&self) -> &'static str {
        "fused-norm-param-grads"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let width = row_width(x_layout);
        let storage = with_real!(x.dtype(), self.name(), |T| {
            let x = slice_of::<T>(x, x_layout, self.name())?;
            let grad = slice_of::<T>(grad, grad_layout, self.name())?;
            let sums = x
                .par_chunks(width)
                .zip(grad.par_chunks(width))
                .with_min_len(MIN_ROWS_PER_TASK)
                .fold(
                    || vec![T::zero(); 2 * width],
                    |mut sums, (x, dy)| {
                        let (mean, rstd) = mean_rstd(x, self.0);
                        let (weight_grad, bias_grad) = sums.split_at_mut(width);
                        for i in 0..width {
                            weight_grad[i] += dy[i] * (x[i] - mean) * rstd;
                            bias_grad[i] += dy[i];
                        }
                        sums
                    },
                )
                .reduce(
                    || vec![T::zero(); 2 * width],
                    |mut a, b| {
                        a.iter_mut().zip(&b).for_each(|(a, &b)| *a += b);
                        a
                    },
                );
            T::to_cpu_storage_owned(sums)
        });
        Ok((storage, Shape::from((2, width))))
    }
}

/// `nn.LayerNorm` over the last dimension: `(x - mean) / sqrt(var + eps) * weight + bias`.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if let Some([wide, weight, bias]) = in_kernel_dtype([x, weight, bias])? {
        return Ok(layer_norm(&wide, &weight, &bias, eps)?.to_dtype(x.dtype())?);
    }
    if !fusable(x) {
        return Ok(candle_nn::ops::layer_norm_slow(
            x, weight, bias, eps as f32,
        )?);
    }
    let norm = Norm {
        eps,
        centered: true,
    };
    Ok(x.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, NormOp(norm))?)
}

/// Llama's `RMSNorm` over the last dimension: `x / sqrt(mean(x²) + eps) * weight`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if let Some([wide, weight]) = in_kernel_dtype([x, weight])? {
        return Ok(rms_norm(&wide, &weight, eps)?.to_dtype(x.dtype())?);
    }
    if !fusable(x) {
        return Ok(candle_nn::ops::rms_norm_slow(x, weight, eps as f32)?);
    }
    let norm = Norm {
        eps,
        centered: false,
    };
    let no_bias = weight.zeros_like()?;
    Ok(x.contiguous()?
        .apply_op3(&weight.contiguous()?, &no_bias, NormOp(norm))?)
}

// ---------------------------------------------------------------------------------------------
// Attention softmax

/// `softmax(scores * scale + mask)` over the last dimension. `scores` is `[batch, heads, queries,
/// keys]`; the additive `mask` is `[batch or 1, 1, queries, keys]` and broadcast over heads (and
/// batch), as the attention masks are. The mask gets no gradient.
struct MaskedSoftmaxOp {
    scale: f64,
}

/// For each row of the scores, the start of its mask row: rows are `(b, h, q)` flattened and the
/// mask is `[mask_batch, 1, queries, keys]`.
fn mask_row_start(
    row: usize,
    heads: usize,
    queries: usize,
    keys: usize,
    mask_batch: usize,
) -> usize {
    let (b, q) = (row / (heads * queries), row % queries);
    let b = if mask_batch == 1 { 0 } else { b };
    (b * queries + q) * keys
}

impl CustomOp2 for MaskedSoftmaxOp {
    fn name(&self) -> &'static str {
        "fused-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        scores: &CpuStorage,
        scores_layout: &Layout,
        mask: &CpuStorage,
        mask_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, heads, queries, keys) = scores_layout.shape().dims4()?;
        let (mask_batch, mask_heads, mask_queries, mask_keys) = mask_layout.shape().dims4()?;
        if !(mask_batch == 1 || mask_batch == batch)
            || mask_heads != 1
            || (mask_queries, mask_keys) != (queries, keys)
        {
            bail!(
                "{}: mask {:?} does not broadcast to scores {:?}",
                self.name(),
                mask_layout.dims(),
                scores_layout.dims()
            );
        }
        let rows = batch * heads * queries;
        let storage = with_real!(scores.dtype(), self.name(), |T| {
            let scores = slice_of::<T>(scores, scores_layout, self.name())?;
            let mask = slice_of::<T>(mask, mask_layout, self.name())?;
            let scale = T::of(self.scale);
            T::to_cpu_storage_owned(map_rows(keys, rows, |row, out| {
                out.copy_from_slice(&scores[row * keys..(row + 1) * keys]);
                let mask_start = mask_row_start(row, heads, queries, keys, mask_batch);
                masked_softmax_row(out, &mask[mask_start..mask_start + keys], scale);
            }))
        });
        Ok((storage, scores_layout.shape().clone()))
    }

    fn bwd(
        &self,
        _scores: &Tensor,
        _mask: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let input_grad = SoftmaxInputGrad { scale: self.scale };
        Ok((
            Some(res.apply_op2_no_bwd(&grad.contiguous()?, &input_grad)?),
            None,
        ))
    }
}

/// One row of [`MaskedSoftmaxOp`] in place: `row` holds the scores and becomes
/// `softmax(scores * scale + mask)`. A fully masked row ([`f32::MIN`] everywhere, a padding
/// query) comes out uniform.
fn masked_softmax_row<T: Real>(row: &mut [T], mask: &[T], scale: T) {
    let mut max = T::neg_infinity();
    for (value, &masked) in row.iter_mut().zip(mask) {
        *value = *value * scale + masked;
        max = Float::max(max, *value);
    }
    let mut sum = T::zero();
    for value in row.iter_mut() {
        *value = (*value - max).exp_kernel();
        sum += *value;
    }
    let inverse = sum.recip();
    row.iter_mut().for_each(|value| *value *= inverse);
}

/// One row of [`SoftmaxInputGrad`] in place: `grad` holds `dy` and becomes
/// `scale * y * (dy - Σ dy * y)` for the softmax output `probs` (`y`).
fn softmax_grad_row<T: Real>(grad: &mut [T], probs: &[T], scale: T) {
    let dot = probs
        .iter()
        .zip(grad.iter())
        .fold(T::zero(), |s, (&y, &dy)| s + y * dy);
    for (grad, &y) in grad.iter_mut().zip(probs) {
        *grad = scale * y * (*grad - dot);
    }
}

/// `dL/dscores` from the softmax output `y`: `scale * y * (dy - Σ dy * y)`.
struct SoftmaxInputGrad {
    scale: f64,
}

impl CustomOp2 for SoftmaxInputGrad {
    fn name(&self) -> &'static str {
        "fused-softmax-input-grad"
    }

    fn cpu_fwd(
        &self,
        probs: &CpuStorage,
        probs_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, width) = rows_and_width(probs_layout);
        let storage = with_real!(probs.dtype(), self.name(), |T| {
            let probs = slice_of::<T>(probs, probs_layout, self.name())?;
            let grad = slice_of::<T>(grad, grad_layout, self.name())?;
            let scale = T::of(self.scale);
            T::to_cpu_storage_owned(map_rows(width, rows, |row, out| {
                let span = row * width..(row + 1) * width;
                out.copy_from_slice(&grad[span.clone()]);
                softmax_grad_row(out, &probs[span], scale);
            }))
        });
        Ok((storage, probs_layout.shape().clone()))
    }
}

/// `softmax(scores * scale + mask)` over the last dimension, differentiable in `scores`:
/// `scores` `[batch, heads, queries, keys]`, additive `mask` `[batch or 1, 1, queries, keys]`.
pub fn masked_softmax(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    if let Some([wide]) = in_kernel_dtype([scores])? {
        return Ok(masked_softmax(&wide, mask, scale)?.to_dtype(scores.dtype())?);
    }
    if !fusable(scores) {
        let scaled = if scale == 1.0 {
            scores.clone()
        } else {
            (scores * scale)?
        };
        return Ok(candle_nn::ops::softmax(
            &scaled.broadcast_add(mask)?,
            D::Minus1,
        )?);
    }
    let mask = mask.to_dtype(scores.dtype())?.contiguous()?;
    Ok(scores
        .contiguous()?
        .apply_op2(&mask, MaskedSoftmaxOp { scale })?)
}

// ---------------------------------------------------------------------------------------------
// Causal self-attention: scores, masked softmax and the product with the values in one op (its
// own file for its size; declared here, after `with_real!`, which it uses).

mod attention;
pub use attention::causal_self_attention;

// ---------------------------------------------------------------------------------------------
// GELU

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_CUBIC: f64 = 0.044_715;
const INV_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
/// `1 / sqrt(2 pi)`, the standard normal density's constant.
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

trait Erf {
    fn erf(self) -> Self;
}
impl Erf for f32 {
    fn erf(self) -> Self {
        candle_core::cpu::erf::erf_f32(self)
    }
}
impl Erf for f64 {
    fn erf(self) -> Self {
        candle_core::cpu::erf::erf_f64(self)
    }
}

/// GELU and its derivative at `x`.
#[inline(always)]
fn gelu_and_slope<T: Real + Erf>(x: T, activation: Activation) -> (T, T) {
    let half = T::of(0.5);
    match activation {
        // HF `gelu_new`: 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³))).
        Activation::GeluTanh => {
            let (c, a) = (T::of(SQRT_2_OVER_PI), T::of(GELU_CUBIC));
            let t = (c * (x + a * x * x * x)).tanh_kernel();
            let slope = half * (T::one() + t)
                + half * x * (T::one() - t * t) * c * (T::one() + T::of(3.0) * a * x * x);
            (half * x * (T::one() + t), slope)
        }
        // Exact GELU: x Φ(x) = 0.5 x (1 + erf(x / √2)); slope Φ(x) + x φ(x).
        Activation::GeluErf => {
            let cdf = half * (T::one() + (x * T::of(INV_SQRT_2)).erf());
            let density = T::of(INV_SQRT_2PI) * (-half * x * x).exp_kernel();
            (x * cdf, cdf + x * density)
        }
    }
}

struct GeluOp {
    activation: Activation,
}

/// `out = gelu(x)`, with the variant matched once, outside the loop: matched per value, the loop
/// stayed scalar (about 15 ns a value, 6% of a batch-8 GPT-Neo generation step); with a constant
/// variant it vectorises.
fn gelu_chunk<T: Real + Erf>(out: &mut [T], x: &[T], activation: Activation) {
    let apply = |out: &mut [T], variant: Activation| {
        for (out, &x) in out.iter_mut().zip(x) {
            *out = gelu_and_slope(x, variant).0;
        }
    };
    match activation {
        Activation::GeluTanh => apply(out, Activation::GeluTanh),
        Activation::GeluErf => apply(out, Activation::GeluErf),
    }
}

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "fused-gelu"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let storage = with_real!(x.dtype(), self.name(), |T| {
            let x = slice_of::<T>(x, layout, self.name())?;
            let mut out = vec![T::zero(); x.len()];
            out.par_chunks_mut(4096)
                .zip(x.par_chunks(4096))
                .for_each(|(out, x)| gelu_chunk(out, x, self.activation));
            T::to_cpu_storage_owned(out)
        });
        Ok((storage, layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let input_grad = GeluInputGrad {
            activation: self.activation,
        };
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &input_grad)?))
    }
}

/// `dL/dx = dy * gelu'(x)`.
struct GeluInputGrad {
    activation: Activation,
}

impl CustomOp2 for GeluInputGrad {
    fn name(&self) -> &'static str {
        "fused-gelu-input-grad"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let storage = with_real!(x.dtype(), self.name(), |T| {
            let x = slice_of::<T>(x, x_layout, self.name())?;
            let grad = slice_of::<T>(grad, grad_layout, self.name())?;
            let mut out = vec![T::zero(); x.len()];
            out.par_iter_mut()
                .zip(x.par_iter().zip(grad.par_iter()))
                .with_min_len(4096)
                .for_each(|(out, (&x, &dy))| *out = dy * gelu_and_slope(x, self.activation).1);
            T::to_cpu_storage_owned(out)
        });
        Ok((storage, x_layout.shape().clone()))
    }
}

/// GELU in the variant the model's config names, differentiable.
pub fn gelu(x: &Tensor, activation: Activation) -> Result<Tensor> {
    if let Some([wide]) = in_kernel_dtype([x])? {
        return Ok(gelu(&wide, activation)?.to_dtype(x.dtype())?);
    }
    if !fusable(x) {
        return Ok(match activation {
            Activation::GeluTanh => x.gelu()?,
            Activation::GeluErf => x.gelu_erf()?,
        });
    }
    Ok(x.contiguous()?.apply_op1(GeluOp { activation })?)
}

// ---------------------------------------------------------------------------------------------
// SwiGLU

/// `silu(g) = g * sigmoid(g)` and its derivative `s * (1 + g * (1 - s))`.
#[inline(always)]
fn silu_and_slope<T: Real>(g: T) -> (T, T) {
    let s = (T::one() + (-g).exp_kernel()).recip();
    (g * s, s * (T::one() + g * (T::one() - s)))
}

/// `silu(gate) * up`, Llama's gated MLP activation.
struct SwiGluOp;

impl CustomOp2 for SwiGluOp {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(
        &self,
        gate: &CpuStorage,
        gate_layout: &Layout,
        up: &CpuStorage,
        up_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if gate_layout.shape() != up_layout.shape() {
            bail!(
                "{}: gate {:?} and up {:?} differ in shape",
                self.name(),
                gate_layout.dims(),
                up_layout.dims()
            );
        }
        let storage = with_real!(gate.dtype(), self.name(), |T| {
            let gate = slice_of::<T>(gate, gate_layout, self.name())?;
            let up = slice_of::<T>(up, up_layout, self.name())?;
            let mut out = vec![T::zero(); gate.len()];
            out.par_iter_mut()
                .zip(gate.par_iter().zip(up.par_iter()))
                .with_min_len(4096)
                .for_each(|(out, (&g, &u))| *out = silu_and_slope(g).0 * u);
            T::to_cpu_storage_owned(out)
        });
        Ok((storage, gate_layout.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grads = gate.apply_op3_no_bwd(up, &grad.contiguous()?, &SwiGluGrads)?;
        Ok((Some(grads.get(0)?), Some(grads.get(1)?)))
    }
}

/// `[dL/dgate, dL/dup]` stacked: `dy * up * silu'(gate)` and `dy * silu(gate)`.
struct SwiGluGrads;

impl CustomOp3 for SwiGluGrads {
    fn name(&self) -> &'static str {
        "fused-swiglu-grads"
    }

    fn cpu_fwd(
        &self,
        gate: &CpuStorage,
        gate_layout: &Layout,
        up: &CpuStorage,
        up_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let storage = with_real!(gate.dtype(), self.name(), |T| {
            let gate = slice_of::<T>(gate, gate_layout, self.name())?;
            let up = slice_of::<T>(up, up_layout, self.name())?;
            let grad = slice_of::<T>(grad, grad_layout, self.name())?;
            let mut out = vec![T::zero(); 2 * gate.len()];
            let (gate_grad, up_grad) = out.split_at_mut(gate.len());
            gate_grad
                .par_iter_mut()
                .zip(up_grad.par_iter_mut())
                .zip(gate.par_iter().zip(up.par_iter()).zip(grad.par_iter()))
                .with_min_len(4096)
                .for_each(|((gate_grad, up_grad), ((&g, &u), &dy))| {
                    let (silu, slope) = silu_and_slope(g);
                    *gate_grad = dy * u * slope;
                    *up_grad = dy * silu;
                });
            T::to_cpu_storage_owned(out)
        });
        let mut dims = vec![2];
        dims.extend_from_slice(gate_layout.dims());
        Ok((storage, Shape::from(dims)))
    }
}

/// `silu(gate) * up`, differentiable in both.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if let Some([gate_wide, up]) = in_kernel_dtype([gate, up])? {
        return Ok(swiglu(&gate_wide, &up)?.to_dtype(gate.dtype())?);
    }
    if !fusable(gate) {
        return Ok((gate.silu()? * up)?);
    }
    Ok(gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGluOp)?)
}

// ---------------------------------------------------------------------------------------------
// Target-token log-probabilities

/// `log_softmax(x)` needs the row's log-sum-exp; computed with the max subtracted.
fn log_sum_exp<T: Real>(row: &[T]) -> T {
    let max = row.iter().fold(T::neg_infinity(), |m, &v| Float::max(m, v));
    let sum = row
        .iter()
        .fold(T::zero(), |s, &v| s + (v - max).exp_kernel());
    max + sum.ln()
}

fn target_of(targets: &[u32], row: usize, width: usize, op: &str) -> candle_core::Result<usize> {
    let target = targets[row] as usize;
    if target >= width {
        bail!("{op}: target {target} of row {row} is outside the {width} classes");
    }
    Ok(target)
}

struct TokenLogProbsOp;

impl CustomOp2 for TokenLogProbsOp {
    fn name(&self) -> &'static str {
        "fused-token-logprobs"
    }

    fn cpu_fwd(
        &self,
        logits: &CpuStorage,
        logits_layout: &Layout,
        targets: &CpuStorage,
        targets_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, width) = rows_and_width(logits_layout);
        let targets = slice_of::<u32>(targets, targets_layout, self.name())?;
        for row in 0..rows {
            target_of(targets, row, width, self.name())?;
        }
        let storage = with_real!(logits.dtype(), self.name(), |T| {
            let logits = slice_of::<T>(logits, logits_layout, self.name())?;
            T::to_cpu_storage_owned(map_rows(1, rows, |row, out| {
                let logits = &logits[row * width..(row + 1) * width];
                out[0] = logits[targets[row] as usize] - log_sum_exp(logits);
            }))
        });
        Ok((storage, Shape::from(rows)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let logits_grad = logits.apply_op3_no_bwd(targets, &grad, &TokenLogProbsLogitsGrad)?;
        Ok((Some(logits_grad), None))
    }
}

/// `dL/dlogits = dy * (onehot(target) - softmax(logits))`, row by row.
struct TokenLogProbsLogitsGrad;

impl CustomOp3 for TokenLogProbsLogitsGrad {
    fn name(&self) -> &'static str {
        "fused-token-logprobs-grad"
    }

    fn cpu_fwd(
        &self,
        logits: &CpuStorage,
        logits_layout: &Layout,
        targets: &CpuStorage,
        targets_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, width) = rows_and_width(logits_layout);
        let targets = slice_of::<u32>(targets, targets_layout, self.name())?;
        let storage = with_real!(logits.dtype(), self.name(), |T| {
            let logits = slice_of::<T>(logits, logits_layout, self.name())?;
            let grad = slice_of::<T>(grad, grad_layout, self.name())?;
            T::to_cpu_storage_owned(map_rows(width, rows, |row, out| {
                let dy = grad[row];
                if dy == T::zero() {
                    return; // masked-out positions: the gradient row stays zero
                }
                let logits = &logits[row * width..(row + 1) * width];
                let lse = log_sum_exp(logits);
                for (out, &logit) in out.iter_mut().zip(logits) {
                    *out = -dy * (logit - lse).exp_kernel();
                }
                out[targets[row] as usize] += dy;
            }))
        });
        Ok((storage, logits_layout.shape().clone()))
    }
}

/// `log_softmax(logits)[row, targets[row]]` for `[rows, classes]` logits and `[rows]` `u32`
/// targets, as a `[rows]` tensor: the per-token log-likelihood, without materialising the
/// `[rows, classes]` log-probabilities (forward) or their gradient graph (backward).
pub fn token_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    // Log-probabilities stay in the kernel's dtype: they feed losses (f32 under autocast too).
    if let Some([logits]) = in_kernel_dtype([logits])? {
        return token_logprobs(&logits, targets);
    }
    let rows = logits.dim(0)?;
    let targets = targets.flatten_all()?.to_dtype(DType::U32)?.contiguous()?;
    if targets.dim(0)? != rows {
        return Err(crate::ModelError::InvalidInput(format!(
            "{} targets for {rows} rows of logits",
            targets.dim(0)?
        )));
    }
    if !fusable(logits) {
        let log_probs = candle_nn::ops::log_softmax(logits, D::Minus1)?;
        return Ok(log_probs.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?);
    }
    Ok(logits.contiguous()?.apply_op2(&targets, TokenLogProbsOp)?)
}

// ---------------------------------------------------------------------------------------------
// Matrix products (on `gemm`, or the AVX2 kernel), and buffers kept for backward

mod gemm;
#[cfg(target_arch = "x86_64")]
mod gemm_avx2;
use gemm::{gemm_into, gemm_into_with, gemm_raw, MatrixView, SavedForBackward};
mod gemm_bf16;
use gemm_bf16::{Operands, Rhs};
#[cfg(test)]
mod test_matrices;

// ---------------------------------------------------------------------------------------------
// LM head and target-token log-probabilities in one op

mod lm_head;
pub use lm_head::lm_head_token_logprobs;

// ---------------------------------------------------------------------------------------------
// Bias and linear (affine) layers

mod linear;
pub use linear::{add_bias, linear, WeightLayout};

// ---------------------------------------------------------------------------------------------
// Rotary position embeddings

mod rotary;
pub use rotary::rotary_embedding;

// ---------------------------------------------------------------------------------------------
// Entropy

/// `H = -Σ p log p = lse - Σ p x` of `softmax(x)`, row by row. Forward only: RL logs the policy's
/// entropy, it does not train on it.
struct SoftmaxEntropyOp;

impl CustomOp1 for SoftmaxEntropyOp {
    fn name(&self) -> &'static str {
        "fused-softmax-entropy"
    }

    fn cpu_fwd(
        &self,
        logits: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, width) = rows_and_width(layout);
        let storage = with_real!(logits.dtype(), self.name(), |T| {
            let logits = slice_of::<T>(logits, layout, self.name())?;
            T::to_cpu_storage_owned(map_rows(1, rows, |row, out| {
                let logits = &logits[row * width..(row + 1) * width];
                let lse = log_sum_exp(logits);
                let expected_logit = logits
                    .iter()
                    .fold(T::zero(), |sum, &x| sum + (x - lse).exp_kernel() * x);
                out[0] = lse - expected_logit;
            }))
        });
        let mut dims = layout.dims().to_vec();
        dims.pop();
        Ok((storage, Shape::from(dims)))
    }
}

/// Entropy of `softmax(logits)` over the last dimension (one value per row), without a gradient.
pub fn softmax_entropy(logits: &Tensor) -> Result<Tensor> {
    if let Some([logits]) = in_kernel_dtype([logits])? {
        return softmax_entropy(&logits);
    }
    let logits = logits.detach();
    if !fusable(&logits) {
        let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        return Ok((log_probs.exp()? * log_probs)?.sum(D::Minus1)?.neg()?);
    }
    Ok(logits.contiguous()?.apply_op1_no_bwd(&SoftmaxEntropyOp)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`exp_f32`] against `f64` `exp` over the whole range the kernels see, including where
    /// `f32` overflows and underflows.
    #[test]
    fn exp_f32_matches_exp_to_single_precision() {
        let mut worst = 0.0f64;
        for i in 0..=400_000 {
            let x = -90.0 + 180.0 * f64::from(i) / 400_000.0;
            let got = f64::from(exp_f32(x as f32));
            let want = f64::from(x as f32).exp();
            if want > f64::from(f32::MAX) {
                assert_eq!(got, f64::INFINITY, "x = {x}");
            } else if want < f64::from(f32::MIN_POSITIVE) {
                assert!(
                    got == 0.0 || got <= f64::from(f32::MIN_POSITIVE) * 1.01,
                    "x = {x}: {got}"
                );
            } else {
                let relative = ((got - want) / want).abs();
                // Within ln2/2 of overflow `r` reaches ln2 (2^n stops at 2^127): a little looser.
                let allowed = if x < 88.3 { 2.5e-7 } else { 4e-7 };
                assert!(relative < allowed, "x = {x}: relative error {relative:e}");
                worst = worst.max(relative);
            }
        }
        assert!(worst > 0.0, "compared nothing");
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
    }

    /// `tanh` through `exp_f32`, the GELU's inner function, against libm's `tanh` in `f64`.
    #[test]
    fn tanh_kernel_matches_tanh() {
        for i in 0..=20_000 {
            let x = -20.0 + 40.0 * f64::from(i) / 20_000.0;
            let got = f64::from((x as f32).tanh_kernel());
            let want = f64::from(x as f32).tanh();
            assert!((got - want).abs() < 3e-7, "x = {x}: {got} vs {want}");
        }
    }
}
