//! `x · W` for a few rows of `x` (a generation step: one token per sequence) against a weight
//! matrix, on every thread.
//!
//! Why: candle's CPU matmul (the `gemm` crate) runs a one-row product as a matrix-vector loop on a
//! single thread, however many the machine has, and for a few rows packs the whole weight matrix
//! into its tile layout on every call: at GPT-Neo-125M shapes that packing took a third of the time
//! of batch-8 decoding. Here every weight is read once, straight from the checkpoint's layout, and
//! the output features are split across rayon's threads. Each output is summed by one task in a
//! fixed order, so results do not depend on the thread count.

use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::error::Result;

/// The most rows of `x` that go through this kernel; larger products are real matrix products,
/// where gemm's packing pays off.
pub(crate) const MAX_ROWS: usize = 16;

/// Output features computed by one rayon task: enough work per task to amortise scheduling,
/// enough tasks to balance threads even for a 768-wide projection.
const COLUMNS_PER_TASK: usize = 64;

/// `x [m, k] · weight [k, n]`: through the kernel when `x` has at most [`MAX_ROWS`] rows, both are
/// `f32` on the CPU and `weight` is the transpose of a row-major `[n, k]` matrix (an `nn.Linear`
/// weight or a tied LM head, `.t()`); through candle's matmul otherwise (GPT-2's row-major `Conv1D`
/// weights among them: gemm beat a column-split kernel on those). A single row on a single thread
/// stays with gemm too: its matrix-vector loop is what this kernel adds threads to. Differentiable
/// either way.
pub(crate) fn matmul(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (rows, _) = x.dims2()?;
    let lowest = if rayon::current_num_threads() > 1 {
        1
    } else {
        2
    };
    let fits = (lowest..=MAX_ROWS).contains(&rows)
        && [x, weight]
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
        && is_transposed_row_major(weight.layout());
    Ok(if fits {
        x.contiguous()?.apply_op2(weight, SkinnyMatmul)?
    } else {
        x.matmul(weight)?
    })
}

/// Whether a `[k, n]` layout is the transpose of a row-major `[n, k]`: output feature `j` is a
/// contiguous row of `k` weights.
fn is_transposed_row_major(layout: &Layout) -> bool {
    matches!((layout.dims(), layout.stride()), (&[k, _], &[1, column]) if column == k)
}

struct SkinnyMatmul;

impl CustomOp2 for SkinnyMatmul {
    fn name(&self) -> &'static str {
        "skinny-matmul"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some((x_start, x_end)) = x_layout.contiguous_offsets() else {
            bail!("skinny-matmul: x must be contiguous, got {x_layout:?}")
        };
        if !is_transposed_row_major(weight_layout) {
            bail!("skinny-matmul: the weight must be a transposed row-major matrix, got {weight_layout:?}")
        }
        let (rows, depth) = x_layout.shape().dims2()?;
        let (_, columns) = weight_layout.shape().dims2()?;
        let product = Product {
            x: &x.as_slice::<f32>()?[x_start..x_end],
            weight: &weight.as_slice::<f32>()?[weight_layout.start_offset()..],
            rows,
            depth,
            columns,
        };
        Ok((
            CpuStorage::F32(product.compute(Kernel::detect())),
            Shape::from((rows, columns)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _result: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(&weight.t()?)?), Some(x.t()?.matmul(grad)?)))
    }
}

/// One product's operands: `x` is row-major `[rows, depth]`; `weight` holds output feature `j`'s
/// `depth` weights at `j * depth`.
struct Product<'a> {
    x: &'a [f32],
    weight: &'a [f32],
    rows: usize,
    depth: usize,
    columns: usize,
}

impl Product<'_> {
    /// The row-major `[rows, columns]` result.
    fn compute(&self, kernel: Kernel) -> Vec<f32> {
        // Each task fills a block of `COLUMNS_PER_TASK` output features for every row, stored
        // row-major within the block, then the blocks are interleaved into the result.
        let block_len = self.rows * COLUMNS_PER_TASK;
        let mut blocks = vec![0f32; self.rows * self.columns];
        let fill = |(index, block): (usize, &mut [f32])| {
            self.block(kernel, index * COLUMNS_PER_TASK, block)
        };
        // With one thread the calling thread does the work: handing each product to the pool's
        // only worker and waiting costs a context switch per call.
        if rayon::current_num_threads() > 1 {
            blocks.par_chunks_mut(block_len).enumerate().for_each(fill);
        } else {
            blocks.chunks_mut(block_len).enumerate().for_each(fill);
        }
        if self.rows == 1 {
            return blocks;
        }
        let mut out = vec![0f32; self.rows * self.columns];
        for (index, block) in blocks.chunks(block_len).enumerate() {
            let width = block.len() / self.rows;
            for (row, values) in block.chunks(width).enumerate() {
                let start = row * self.columns + index * COLUMNS_PER_TASK;
                out[start..start + width].copy_from_slice(values);
            }
        }
        out
    }

    /// Output features `first..first + block.len() / rows` of every row, in tiles of up to four
    /// rows against two or four weight rows: each loaded weight vector feeds several
    /// multiply-adds, and the sums stay in registers (at most eight 8-lane accumulators).
    fn block(&self, kernel: Kernel, first: usize, block: &mut [f32]) {
        let mut row = 0;
        while row < self.rows {
            row += match self.rows - row {
                1 => self.row_tile::<1, 4>(kernel, row, first, block),
                2 => self.row_tile::<2, 4>(kernel, row, first, block),
                3 => self.row_tile::<3, 2>(kernel, row, first, block),
                _ => self.row_tile::<4, 2>(kernel, row, first, block),
            };
        }
    }

    /// Rows `row..row + R` against the block's output features, `J` at a time; returns `R`.
    fn row_tile<const R: usize, const J: usize>(
        &self,
        kernel: Kernel,
        row: usize,
        first: usize,
        block: &mut [f32],
    ) -> usize {
        let (depth, width) = (self.depth, block.len() / self.rows);
        let x: [&[f32]; R] = std::array::from_fn(|r| &self.x[(row + r) * depth..][..depth]);
        let weights = |feature: usize| &self.weight[(first + feature) * depth..][..depth];
        let mut feature = 0;
        while feature < width {
            // Whole tiles of `J` features; a ragged end goes one feature at a time, its tile
            // filled with copies of that feature's weights.
            let count = if feature + J <= width { J } else { 1 };
            let w: [&[f32]; J] = std::array::from_fn(|j| weights(feature + j.min(count - 1)));
            let dots = kernel.dot_tile(&x, &w);
            for (r, dots) in dots.iter().enumerate() {
                block[(row + r) * width + feature..][..count].copy_from_slice(&dots[..count]);
            }
            feature += count;
        }
        R
    }
}

/// How a tile of dot products is computed: with AVX2 and FMA where the CPU has them (gemm
/// dispatches the same way at run time), portable code elsewhere.
#[derive(Debug, Clone, Copy)]
enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Kernel::Avx2Fma;
        }
        Kernel::Portable
    }

    /// `dot(x[r], w[j])` for every pair; all rows have the same length.
    fn dot_tile<const R: usize, const J: usize>(
        self,
        x: &[&[f32]; R],
        w: &[&[f32]; J],
    ) -> [[f32; J]; R] {
        match self {
            Kernel::Portable => dot_tile_portable(x, w),
            // SAFETY: `detect` picks this kernel only on CPUs with AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => unsafe { dot_tile_avx2_fma(x, w) },
        }
    }
}

fn dot_tile_portable<const R: usize, const J: usize>(
    x: &[&[f32]; R],
    w: &[&[f32]; J],
) -> [[f32; J]; R] {
    std::array::from_fn(|r| {
        std::array::from_fn(|j| x[r].iter().zip(w[j]).map(|(a, b)| a * b).sum())
    })
}

/// [`dot_tile_portable`] in 8-lane registers: the `R * J` sums share every vector load.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_tile_avx2_fma<const R: usize, const J: usize>(
    x: &[&[f32]; R],
    w: &[&[f32]; J],
) -> [[f32; J]; R] {
    use std::arch::x86_64::{
        _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps, _mm256_storeu_ps,
    };
    const LANES: usize = 8;
    let depth = x[0].len();
    let vectorised = depth - depth % LANES;
    let mut sums = [[_mm256_setzero_ps(); J]; R];
    for p in (0..vectorised).step_by(LANES) {
        let mut w_vectors = [_mm256_setzero_ps(); J];
        for j in 0..J {
            // SAFETY: the slice holds the `LANES` floats read.
            w_vectors[j] = unsafe { _mm256_loadu_ps(w[j][p..p + LANES].as_ptr()) };
        }
        for r in 0..R {
            // SAFETY: as above.
            let x_vector = unsafe { _mm256_loadu_ps(x[r][p..p + LANES].as_ptr()) };
            for j in 0..J {
                sums[r][j] = _mm256_fmadd_ps(x_vector, w_vectors[j], sums[r][j]);
            }
        }
    }
    let mut dots = [[0f32; J]; R];
    for r in 0..R {
        for j in 0..J {
            let mut lanes = [0f32; LANES];
            // SAFETY: `lanes` has room for the `LANES` floats written.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sums[r][j]) };
            let tail = dot_tile_portable(&[&x[r][vectorised..]], &[&w[j][vectorised..]])[0][0];
            dots[r][j] = lanes.iter().sum::<f32>() + tail;
        }
    }
    dots
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    /// `x · weight` in f64 by the definition.
    fn naive(x: &[Vec<f32>], weight: &[Vec<f32>]) -> Vec<Vec<f64>> {
        x.iter()
            .map(|row| {
                (0..weight[0].len())
                    .map(|j| {
                        row.iter()
                            .zip(weight)
                            .map(|(&a, w)| f64::from(a) * f64::from(w[j]))
                            .sum()
                    })
                    .collect()
            })
            .collect()
    }

    fn random(rows: usize, columns: usize, seed: u64) -> Tensor {
        let values: Vec<f32> = (0..rows * columns)
            .map(|i| ((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        Tensor::from_vec(values, (rows, columns), &Device::Cpu).unwrap()
    }

    #[test]
    fn equals_the_definition_on_one_thread_and_several() {
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(equals_the_definition_for_every_kernel_row_tile_and_ragged_size);
        }
    }

    fn equals_the_definition_for_every_kernel_row_tile_and_ragged_size() {
        // Depth 45 leaves a tail after the 8-lane loop; 203 columns a partial last block and
        // features left over after the tiles of two and four; the row counts use every tile.
        let (depth, columns) = (45, 203);
        let weight = random(columns, depth, 2);
        let weight_data: Vec<f32> = weight.flatten_all().unwrap().to_vec1().unwrap();
        let weight = weight.t().unwrap();
        assert!(is_transposed_row_major(weight.layout()));
        for rows in 1..=MAX_ROWS {
            let x = random(rows, depth, rows as u64);
            let x_data: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let expected = naive(&x.to_vec2().unwrap(), &weight.to_vec2().unwrap());
            let product = Product {
                x: &x_data,
                weight: &weight_data,
                rows,
                depth,
                columns,
            };
            let through_candle: Vec<f32> = matmul(&x, &weight)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for (what, got) in [
                ("detected kernel via matmul", through_candle),
                ("portable kernel", product.compute(Kernel::Portable)),
            ] {
                for (got, expected) in got.iter().zip(expected.iter().flatten()) {
                    assert!(
                        (f64::from(*got) - expected).abs() < 1e-4,
                        "{what}, {rows} rows: {got} vs {expected}"
                    );
                }
            }
        }
    }

    #[test]
    fn gradients_equal_candle_matmul() {
        let x = Var::from_tensor(&random(4, 40, 4)).unwrap();
        let in_out = Var::from_tensor(&random(40, 70, 5)).unwrap();
        let out_in = Var::from_tensor(&random(70, 40, 6)).unwrap();
        let upstream = random(4, 70, 7);
        // The transposed weight goes through the kernel, the row-major one through candle.
        for (var, weight) in [
            (&in_out, in_out.as_tensor().clone()),
            (&out_in, out_in.t().unwrap()),
        ] {
            let grads_of = |product: Tensor| {
                let loss = (product * &upstream).unwrap().sum_all().unwrap();
                let grads = loss.backward().unwrap();
                [&x, var].map(|var| grads.get(var.as_tensor()).unwrap().clone())
            };
            let ours = grads_of(matmul(&x, &weight).unwrap());
            let candle = grads_of(x.matmul(&weight).unwrap());
            for (ours, candle) in ours.iter().zip(&candle) {
                let diff = (ours - candle).unwrap().abs().unwrap().max_all().unwrap();
                assert!(diff.to_scalar::<f32>().unwrap() < 1e-4);
            }
        }
    }
}
