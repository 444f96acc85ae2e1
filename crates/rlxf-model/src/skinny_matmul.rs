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
/// enough tasks to balance threads even for a 768-wide projection, and a multiple of
/// [`FEATURES_PER_GROUP`], so only a product's last task can end in a ragged group.
const COLUMNS_PER_TASK: usize = 48;

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
    /// every row before the next one is read: its weights come from memory once and from cache
    /// for the other rows, while every row tile asks for the next group's weights ahead of use
    /// (see [`PREFETCH_ROWS`]). Rows go in tiles of up to four against the group's three weight
    /// rows: each loaded weight vector feeds four multiply-adds and each row vector three, and
    /// the twelve 8-lane sums stay in registers (with the three weight vectors and one row
    /// vector, all sixteen AVX2 registers).
    ///
    /// Why this order: decoding reads 0.5 GB of weights per step at GPT-Neo-125M, and at
    /// batch 8 also does 2 GFLOP; the two only overlap if memory is kept busy while the
    /// multiply-adds run. Tiling rows in the outer loop read a block's weights from memory for
    /// the first four rows and from cache for the next four, so memory sat idle half the time;
    /// grouping features without prefetching left it idle while a group was reused from cache.
    /// A batch-8 step's 73 products (2 threads, 2-core EPYC) took 41-46 ms with rows outer,
    /// 41-49 ms grouped without prefetching, and 33-37 ms in groups of four features against
    /// tiles of four rows by two features, prefetched into L1 by the first row tile only. Groups
    /// of three (a load per 1.7 multiply-adds instead of 1.3), prefetched into L2 by every row
    /// tile, with the sums reduced in registers, take 28-31 ms at batch 8 and 15-17 ms at
    /// batch 4 (against 25-27).
    fn block(&self, kernel: Kernel, first: usize, parts: &mut [&mut [f32]]) {
        if let [row] = parts {
            return self.single_row(kernel, first, row);
        }
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
                    1 => self.row_tile::<1>(kernel, row, features, parts),
                    2 => self.row_tile::<2>(kernel, row, features, parts),
                    3 => self.row_tile::<3>(kernel, row, features, parts),
                    _ => self.row_tile::<4>(kernel, row, features, parts),
                };
            }
            feature += count;
        }
    }

    /// One row (decoding a single sequence): each output feature's dot product in turn, so the
    /// weights stream through memory in the order they are stored. With nothing to reuse, a
    /// step is bound by reading the weights; the hardware prefetcher keeps one sequential stream
    /// per thread at full speed, while the tiles' four rows read at once (and prefetched by hand)
    /// reached about three quarters of it. A batch-1 step's 73 products (GPT-Neo-125M, 2
    /// threads, 2-core EPYC, best of 15) took 16-20 ms this way against 23-24 ms in tiles; the
    /// memory floor (0.5 GB at the 30-39 GB/s two threads stream here) is 13-17 ms.
    fn single_row(&self, kernel: Kernel, first: usize, out: &mut [f32]) {
        let x = &self.x[..self.depth];
        for (feature, value) in (first..).zip(out.iter_mut()) {
            *value = kernel.dot(x, &self.weight[feature * self.depth..][..self.depth]);
        }
    }

    /// Rows `row..row + R` against the group's features; returns `R`.
    fn row_tile<const R: usize>(
        &self,
        kernel: Kernel,
        row: usize,
        features: Features,
        parts: &mut [&mut [f32]],
    ) -> usize {
        let depth = self.depth;
        let x: [&[f32]; R] = std::array::from_fn(|r| &self.x[(row + r) * depth..][..depth]);
        let last = features.first + features.count - 1;
        let w: [&[f32]; FEATURES_PER_GROUP] = std::array::from_fn(|j| {
            &self.weight[(features.first + j).min(last) * depth..][..depth]
        });
        let dots = kernel.dot_tile(&x, &w);
        for (part, dots) in parts[row..row + R].iter_mut().zip(&dots) {
            part[features.column..][..features.count].copy_from_slice(&dots[..features.count]);
        }
        R
    }
}

/// Output features computed together for every row.
const FEATURES_PER_GROUP: usize = 3;

/// How far ahead of the weight rows being multiplied the kernel prefetches, in weight rows: the
/// same rows of the next group (into L2: into L1, or two groups ahead, measured alike or
/// slower).
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

    /// `dot(x, w)` for slices of equal length.
    fn dot(self, x: &[f32], w: &[f32]) -> f32 {
        match self {
            Kernel::Portable => scalar_dot(x, w),
            // SAFETY: `detect` picks this kernel only on CPUs with AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => unsafe { dot_avx2_fma(x, w) },
        }
    }

    /// `dot(x[r], w[j])` for every pair; all rows have the same length. The AVX2 kernel asks
    /// for the weights [`PREFETCH_ROWS`] rows after each `w[j]` as it goes.
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
    std::array::from_fn(|r| std::array::from_fn(|j| scalar_dot(x[r], w[j])))
}

/// `dot(x, w)` one product at a time: the portable kernel, and the vector kernels' tails.
fn scalar_dot(x: &[f32], w: &[f32]) -> f32 {
    x.iter().zip(w).map(|(a, b)| a * b).sum()
}

/// [`dot_tile_portable`] in 8-lane registers: the `R * J` sums share every vector load. For
/// the prefetching, see [`Kernel::dot_tile`].
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
        _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps, _mm_prefetch, _MM_HINT_T1,
    };
    const LANES: usize = 8;
    const STEP: usize = 2 * LANES;
    let depth = x[0].len();
    assert!(
        x.iter().all(|row| row.len() == depth) && w.iter().all(|row| row.len() == depth),
        "dot_tile: rows of unequal length"
    );
    let vectorised = depth - depth % LANES;
    let ahead = PREFETCH_ROWS * depth;
    // Raw pointers, lengths checked once above: indexing the slices in the loop put a compare
    // and branch beside every load and spilled three row pointers to the stack. A 4 × 3 tile on
    // one Zen 3 core, best of five: 65 → 73 GFLOP/s at depth 256, 81 → 89 at 768 (in L1), 37 →
    // 51 at 3072 (from L2). Decoding, bound by streaming the weights, moved within noise.
    let x_rows: [*const f32; R] = std::array::from_fn(|r| x[r].as_ptr());
    let w_rows: [*const f32; J] = std::array::from_fn(|j| w[j].as_ptr());
    let mut sums = [[_mm256_setzero_ps(); J]; R];
    let mut p = 0;
    while p < vectorised {
        // Two vectors a step where there are two left: one 64-byte line of each weight row,
        // which gets one prefetch.
        let step = if p + STEP <= vectorised { STEP } else { LANES };
        for row in w_rows {
            // A hint, which never faults: the address may lie past the weights' end, so it is
            // computed without claiming to stay inside them.
            _mm_prefetch::<_MM_HINT_T1>(row.wrapping_add(ahead + p).cast());
        }
        for at in (p..p + step).step_by(LANES) {
            let mut w_vectors = [_mm256_setzero_ps(); J];
            for j in 0..J {
                // SAFETY: `at + LANES <= vectorised <= depth`, the length of every row.
                w_vectors[j] = unsafe { _mm256_loadu_ps(w_rows[j].add(at)) };
            }
            for r in 0..R {
                // SAFETY: as above.
                let x_vector = unsafe { _mm256_loadu_ps(x_rows[r].add(at)) };
                for j in 0..J {
                    sums[r][j] = _mm256_fmadd_ps(x_vector, w_vectors[j], sums[r][j]);
                }
            }
        }
        p += step;
    }
    // Plain loops, not `array::from_fn` closures: a closure has no `target_feature`, so where it
    // was not inlined it called `horizontal_sum` twelve times per tile, and where it borrowed
    // the loop's own sums the borrow kept them in memory, so the loop stored all twelve to the
    // stack on every step (batch-8 decoding at 180-196 tok/s that way, 227-302 without).
    let mut totals = [[0.0; J]; R];
    for (r, row_totals) in totals.iter_mut().enumerate() {
        for (j, total) in row_totals.iter_mut().enumerate() {
            *total =
                horizontal_sum(sums[r][j]) + scalar_dot(&x[r][vectorised..], &w[j][vectorised..]);
        }
    }
    totals
}

/// The sum of a register's eight lanes, in registers: halves, then quarters, then the last
/// pair. Storing the lanes and adding them one by one took a few percent of a batch-8 step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn horizontal_sum(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::{
        _mm256_castps256_ps128, _mm256_extractf128_ps, _mm_add_ps, _mm_add_ss, _mm_cvtss_f32,
        _mm_movehdup_ps, _mm_movehl_ps,
    };
    let halves = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let quarters = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
    _mm_cvtss_f32(_mm_add_ss(quarters, _mm_movehdup_ps(quarters)))
}

/// [`Kernel::dot`] in four independent 8-lane sums, so consecutive multiply-adds do not wait on
/// each other's results.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2_fma(x: &[f32], w: &[f32]) -> f32 {
    use std::arch::x86_64::{_mm256_add_ps, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps};
    const LANES: usize = 8;
    const SUMS: usize = 4;
    let depth = x.len().min(w.len());
    let mut sums = [_mm256_setzero_ps(); SUMS];
    let mut p = 0;
    while p + SUMS * LANES <= depth {
        for (lane_block, sum) in sums.iter_mut().enumerate() {
            let at = p + lane_block * LANES;
            // SAFETY: `at + LANES <= depth`: the floats read lie inside both slices.
            let (x_vector, w_vector) = unsafe {
                (
                    _mm256_loadu_ps(x[at..].as_ptr()),
                    _mm256_loadu_ps(w[at..].as_ptr()),
                )
            };
            *sum = _mm256_fmadd_ps(x_vector, w_vector, *sum);
        }
        p += SUMS * LANES;
    }
    while p + LANES <= depth {
        // SAFETY: as above, `p + LANES <= depth`.
        let (x_vector, w_vector) = unsafe {
            (
                _mm256_loadu_ps(x[p..].as_ptr()),
                _mm256_loadu_ps(w[p..].as_ptr()),
            )
        };
        sums[0] = _mm256_fmadd_ps(x_vector, w_vector, sums[0]);
        p += LANES;
    }
    let total = _mm256_add_ps(
        _mm256_add_ps(sums[0], sums[1]),
        _mm256_add_ps(sums[2], sums[3]),
    );
    horizontal_sum(total) + scalar_dot(&x[p..depth], &w[p..depth])
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
        // Depth 45 = 32 + 8 + 5 takes the single-row dot through its four-sum loop, its 8-lane
        // loop and its tail, and the tiles through a tail after the 8-lane loop; 203 columns
        // (4 tasks of 48 and one of 11 = 3 groups of three and 2 ragged features) a partial last
        // task and a ragged group; the row counts use every tile.
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
