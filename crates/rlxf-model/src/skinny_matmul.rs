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

/// `x · wᵀ` for row-major `x` `[rows, depth]` and `w` `[columns, depth]`, on the calling thread:
/// for products too small to share out (one head's attention scores over the KV cache).
pub(crate) fn product_on_this_thread(x: &[f32], w: &[f32], depth: usize) -> Vec<f32> {
    let product = Product {
        x,
        weight: w,
        rows: x.len() / depth,
        depth,
        columns: w.len() / depth,
    };
    product.compute(Kernel::detect(), false)
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
            CpuStorage::F32(product.compute(Kernel::detect(), true)),
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
    /// The row-major `[rows, columns]` result, on rayon's threads if `parallel`.
    fn compute(&self, kernel: Kernel, parallel: bool) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.columns];
        if out.is_empty() {
            return out;
        }
        // Each task fills `COLUMNS_PER_TASK` output features of every row, in place: its part
        // of each row of the result.
        let mut tasks: Vec<Vec<&mut [f32]>> = (0..self.columns.div_ceil(COLUMNS_PER_TASK))
            .map(|_| Vec::with_capacity(self.rows))
            .collect();
        for row in out.chunks_mut(self.columns) {
            for (task, part) in tasks.iter_mut().zip(row.chunks_mut(COLUMNS_PER_TASK)) {
                task.push(part);
            }
        }
        let fill = |(index, parts): (usize, &mut Vec<&mut [f32]>)| {
            self.block(kernel, index * COLUMNS_PER_TASK, parts)
        };
        // With one thread the calling thread does the work: handing each product to the pool's
        // only worker and waiting costs a context switch per call.
        if parallel && rayon::current_num_threads() > 1 {
            tasks.par_iter_mut().enumerate().for_each(fill);
        } else {
            tasks.iter_mut().enumerate().for_each(fill);
        }
        drop(tasks);
        out
    }

    /// Output features `first..first + parts[0].len()` of every row, written to that row's
    /// `parts[row]`. The features go [`FEATURES_PER_GROUP`] at a time, and each group meets
    /// every row before the next one is read: its weights come from memory once and from L1 for
    /// the other rows, while the first row tile asks for the next group's weights ahead of use
    /// (see [`PREFETCH_ROWS`]). Rows go in tiles of up to four, against two or four weight rows
    /// at a time: each loaded weight vector feeds several multiply-adds, and the sums stay in
    /// registers (at most eight 8-lane accumulators).
    ///
    /// Why this order: decoding reads 0.5 GB of weights per step at GPT-Neo-125M, and at
    /// batch 8 also does 2 GFLOP; the two only overlap if memory is kept busy while the
    /// multiply-adds run. Tiling rows in the outer loop read a block's weights from memory for
    /// the first four rows and from cache for the next four, so memory sat idle half the time;
    /// grouping features without prefetching left it idle while a group was reused from L1. A
    /// batch-8 step's 73 products (2 threads, 2-core EPYC) took 32-37 ms this way against 41-46
    /// ms with rows outer, and 41-49 ms grouped without prefetching; batch 1, bound by memory
    /// either way, is unchanged (21-25 ms).
    fn block(&self, kernel: Kernel, first: usize, parts: &mut [&mut [f32]]) {
        let width = parts[0].len();
        let mut feature = 0;
        while feature < width {
            // Whole groups; a ragged end goes one feature at a time, its tile filled with copies
            // of that feature's weights.
            let count = if feature + FEATURES_PER_GROUP <= width {
                FEATURES_PER_GROUP
            } else {
                1
            };
            let features = Features {
                first: first + feature,
                count,
                column: feature,
            };
            let mut row = 0;
            while row < self.rows {
                row += match self.rows - row {
                    1 => self.row_tile::<1, 4>(kernel, row, features, parts),
                    2 => self.row_tile::<2, 4>(kernel, row, features, parts),
                    3 => self.row_tile::<3, 2>(kernel, row, features, parts),
                    _ => self.row_tile::<4, 2>(kernel, row, features, parts),
                };
            }
            feature += count;
        }
    }

    /// Rows `row..row + R` against the group's features, `J` at a time; returns `R`. The first
    /// row tile of a group prefetches.
    fn row_tile<const R: usize, const J: usize>(
        &self,
        kernel: Kernel,
        row: usize,
        features: Features,
        parts: &mut [&mut [f32]],
    ) -> usize {
        let depth = self.depth;
        let x: [&[f32]; R] = std::array::from_fn(|r| &self.x[(row + r) * depth..][..depth]);
        let last = features.first + features.count - 1;
        let weights = |feature: usize| &self.weight[feature.min(last) * depth..][..depth];
        for offset in (0..features.count).step_by(J) {
            let count = J.min(features.count - offset);
            let w: [&[f32]; J] = std::array::from_fn(|j| weights(features.first + offset + j));
            let dots = kernel.dot_tile(&x, &w, row == 0);
            for (part, dots) in parts[row..row + R].iter_mut().zip(&dots) {
                part[features.column + offset..][..count].copy_from_slice(&dots[..count]);
            }
        }
        R
    }
}

/// Output features computed together for every row, a multiple of every tile's `J`.
const FEATURES_PER_GROUP: usize = 4;

/// How far ahead of the weight rows being multiplied the kernel prefetches, in weight rows: the
/// same rows of the next group (two groups measured alike, four worse, and prefetching into L2
/// from further ahead slower too).
const PREFETCH_ROWS: usize = FEATURES_PER_GROUP;

/// A group of output features within a task's part of the rows.
#[derive(Clone, Copy)]
struct Features {
    /// Index of the first feature in the whole product.
    first: usize,
    count: usize,
    /// Its column within the task's part of each row.
    column: usize,
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

    /// `dot(x[r], w[j])` for every pair; all rows have the same length. With `prefetch`, the
    /// weights [`PREFETCH_ROWS`] rows after each `w[j]` are requested into cache as it goes.
    fn dot_tile<const R: usize, const J: usize>(
        self,
        x: &[&[f32]; R],
        w: &[&[f32]; J],
        prefetch: bool,
    ) -> [[f32; J]; R] {
        match self {
            Kernel::Portable => dot_tile_portable(x, w),
            // SAFETY: `detect` picks this kernel only on CPUs with AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma if prefetch => unsafe { dot_tile_avx2_fma::<R, J, true>(x, w) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => unsafe { dot_tile_avx2_fma::<R, J, false>(x, w) },
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

/// [`dot_tile_portable`] in 8-lane registers: the `R * J` sums share every vector load. With
/// `PREFETCH`, see [`Kernel::dot_tile`].
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_tile_avx2_fma<const R: usize, const J: usize, const PREFETCH: bool>(
    x: &[&[f32]; R],
    w: &[&[f32]; J],
) -> [[f32; J]; R] {
    use std::arch::x86_64::{
        _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps, _mm256_storeu_ps, _mm_prefetch,
        _MM_HINT_T0,
    };
    const LANES: usize = 8;
    let depth = x[0].len();
    let vectorised = depth - depth % LANES;
    let ahead = PREFETCH_ROWS * depth;
    let mut sums = [[_mm256_setzero_ps(); J]; R];
    for p in (0..vectorised).step_by(LANES) {
        // Once per 64-byte line: a prefetch costs a load slot, and with weights already cached
        // twice as many slowed the multiply-adds down.
        if PREFETCH && p % (2 * LANES) == 0 {
            for row in w {
                // A hint, which never faults: the address may lie past the weights' end, so it
                // is computed without claiming to stay inside them.
                _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().wrapping_add(ahead + p).cast());
            }
        }
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
                ("portable kernel", product.compute(Kernel::Portable, true)),
                (
                    "on this thread",
                    product_on_this_thread(&x_data, &weight_data, depth),
                ),
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
