//! An f32 matrix product for AVX2/FMA machines: BLIS's blocking (a 6 × 16 register tile over
//! packed panels of both operands) with threads that each own a whole slice of the result, pack
//! their own panels and never wait for one another until the product is done. The `gemm` crate
//! instead splits one product's inner loops across threads, with two barriers per depth block.
//! On a two-core AVX2 host the training step's products ran a few percent faster this way
//! (BENCHMARKS.md, 2026-11-29, third session); machines with AVX-512 keep gemm's kernels.

use std::arch::x86_64::{
    __m256, _mm256_add_ps, _mm256_broadcast_ss, _mm256_fmadd_ps, _mm256_loadu_ps,
    _mm256_permute2f128_ps, _mm256_setzero_ps, _mm256_shuffle_ps, _mm256_storeu_ps,
    _mm256_unpackhi_ps, _mm256_unpacklo_ps, _mm_prefetch, _MM_HINT_T0,
};
use std::cell::RefCell;

/// Rows of the register tile: with [`TILE_COLS`], 12 of the 16 vector registers accumulate.
const TILE_ROWS: usize = 6;
/// Columns of the register tile: two 8-lane vectors.
const TILE_COLS: usize = 16;
/// Depth of one packed block: a `DEPTH_BLOCK × TILE_COLS` panel of `b` (16 KiB) stays in L1.
const DEPTH_BLOCK: usize = 256;
/// Rows of `a` packed at once: `ROW_BLOCK × DEPTH_BLOCK` (120 KiB) stays in L2.
const ROW_BLOCK: usize = 120;
/// Columns of `b` packed at once: `DEPTH_BLOCK × COL_BLOCK` (3 MiB) in the shared L3.
const COL_BLOCK: usize = 3072;
/// Products below this many multiply-adds run on one thread: a fork costs more than it saves.
const PARALLEL_MIN_MULTIPLY_ADDS: usize = 1 << 20;

/// A read-only matrix: element `(i, j)` at `ptr + i * row_stride + j * col_stride`.
#[derive(Clone, Copy)]
pub(super) struct RawMatrix {
    pub(super) ptr: *const f32,
    pub(super) row_stride: isize,
    pub(super) col_stride: isize,
}

impl RawMatrix {
    pub(super) fn of(view: super::MatrixView<'_, f32>) -> Self {
        Self {
            ptr: view.data.as_ptr(),
            row_stride: view.row_stride as isize,
            col_stride: view.col_stride as isize,
        }
    }

    /// # Safety
    /// `(row, col)` must lie inside the matrix.
    #[inline(always)]
    unsafe fn at(&self, row: usize, col: usize) -> f32 {
        unsafe {
            *self
                .ptr
                .offset(row as isize * self.row_stride + col as isize * self.col_stride)
        }
    }

    fn offset(self, row: usize, col: usize) -> Self {
        Self {
            ptr: self
                .ptr
                .wrapping_offset(row as isize * self.row_stride + col as isize * self.col_stride),
            ..self
        }
    }
}

/// The destination, shared by the threads; each writes only its own slice.
#[derive(Clone, Copy)]
struct Destination {
    ptr: *mut f32,
    row_stride: usize,
}

impl Destination {
    /// The destination's block from `(row, col)` on. A method (not `ptr.add` at the call) also
    /// makes closures capture the whole `Destination`, which is `Send`, not its raw pointer.
    fn offset(self, row: usize, col: usize) -> Self {
        Self {
            ptr: self.ptr.wrapping_add(row * self.row_stride + col),
            ..self
        }
    }
}

// SAFETY: the threads of one product write disjoint slices of the destination and only read the
// operands; the caller of `matmul` keeps all three alive and unaliased for the call.
unsafe impl Send for Destination {}
unsafe impl Sync for Destination {}
unsafe impl Send for RawMatrix {}
unsafe impl Sync for RawMatrix {}

/// Whether this machine runs the kernel (AVX2 and FMA).
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// `dst = a · b` (or `dst += a · b` with `accumulate`) for `a: [rows, depth]`, `b: [depth,
/// cols]`, and `dst` row-major with rows `dst_row_stride` elements apart; on rayon's threads.
///
/// # Safety
/// [`available`] must hold; every element of `a`, `b` and the `[rows, cols]` block at `dst` must
/// be valid, `dst`'s for writes, and nothing else may access `dst`'s block during the call.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn matmul(
    rows: usize,
    cols: usize,
    depth: usize,
    dst: *mut f32,
    dst_row_stride: usize,
    a: RawMatrix,
    b: RawMatrix,
    accumulate: bool,
    threads: usize,
) {
    let dst = Destination {
        ptr: dst,
        row_stride: dst_row_stride,
    };
    let threads = if rows * cols * depth < PARALLEL_MIN_MULTIPLY_ADDS {
        1
    } else {
        threads.max(1)
    };
    // Split the dimension whose slices repack the smaller operand: each thread packs all of `a`
    // when the columns are split, all of `b` when the rows are.
    let split_cols = cols >= rows;
    let (extent, unit) = if split_cols {
        (cols, TILE_COLS)
    } else {
        (rows, TILE_ROWS)
    };
    let units = extent.div_ceil(unit);
    let threads = threads.min(units);
    let slice = |t: usize| {
        let start = (units * t / threads) * unit;
        let end = ((units * (t + 1) / threads) * unit).min(extent);
        (start, end)
    };
    let run = |t: usize| {
        let (start, end) = slice(t);
        // SAFETY: the slices of different threads are disjoint blocks of the destination.
        unsafe {
            if split_cols {
                matmul_serial(
                    rows,
                    end - start,
                    depth,
                    dst.offset(0, start),
                    a,
                    b.offset(0, start),
                    accumulate,
                )
            } else {
                matmul_serial(
                    end - start,
                    cols,
                    depth,
                    dst.offset(start, 0),
                    a.offset(start, 0),
                    b,
                    accumulate,
                )
            }
        }
    };
    if threads == 1 {
        run(0);
    } else {
        rayon::scope(|scope| {
            for t in 1..threads {
                let run = &run;
                scope.spawn(move |_| run(t));
            }
            run(0);
        });
    }
}

thread_local! {
    /// Each thread's packed panels, kept between products so packing allocates nothing.
    static PACKED: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// One thread's whole product (BLIS's five loops around the register tile).
unsafe fn matmul_serial(
    rows: usize,
    cols: usize,
    depth: usize,
    dst: Destination,
    a: RawMatrix,
    b: RawMatrix,
    accumulate: bool,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    if depth == 0 {
        if !accumulate {
            for i in 0..rows {
                // SAFETY: row `i` of the destination block is the caller's to write.
                unsafe { std::slice::from_raw_parts_mut(dst.ptr.add(i * dst.row_stride), cols) }
                    .fill(0.0);
            }
        }
        return;
    }
    PACKED.with(|packed| {
        let (packed_a, packed_b) = &mut *packed.borrow_mut();
        let col_block = cols.min(COL_BLOCK).next_multiple_of(TILE_COLS);
        let row_block = rows.min(ROW_BLOCK).next_multiple_of(TILE_ROWS);
        let depth_block = depth.min(DEPTH_BLOCK);
        let packed_a = aligned(packed_a, row_block * depth_block + STEP_OVERHANG);
        let packed_b = aligned(packed_b, depth_block * col_block);
        for col_start in (0..cols).step_by(COL_BLOCK) {
            let block_cols = (cols - col_start).min(COL_BLOCK);
            for depth_start in (0..depth).step_by(DEPTH_BLOCK) {
                let block_depth = (depth - depth_start).min(DEPTH_BLOCK);
                // The first depth block writes the destination unless the product accumulates.
                let add = accumulate || depth_start > 0;
                // SAFETY (both packs): the blocks lie inside the operands.
                unsafe {
                    pack_b(
                        packed_b,
                        b.offset(depth_start, col_start),
                        block_depth,
                        block_cols,
                    )
                };
                for row_start in (0..rows).step_by(ROW_BLOCK) {
                    let block_rows = (rows - row_start).min(ROW_BLOCK);
                    unsafe {
                        pack_a(
                            packed_a,
                            a.offset(row_start, depth_start),
                            block_rows,
                            block_depth,
                        )
                    };
                    for tile_col in (0..block_cols).step_by(TILE_COLS) {
                        let b_panel = &packed_b[tile_col * block_depth..];
                        for tile_row in (0..block_rows).step_by(TILE_ROWS) {
                            let a_panel = &packed_a[tile_row * block_depth..];
                            let out = dst.offset(row_start + tile_row, col_start + tile_col);
                            // SAFETY: both panels hold `block_depth` full tile steps; the tile's
                            // valid part lies inside the destination block.
                            unsafe {
                                tile_6x16(
                                    block_depth,
                                    a_panel.as_ptr(),
                                    b_panel.as_ptr(),
                                    out,
                                    (block_rows - tile_row).min(TILE_ROWS),
                                    (block_cols - tile_col).min(TILE_COLS),
                                    add,
                                )
                            };
                        }
                    }
                }
            }
        }
    });
}

/// `len` elements of `buffer` starting on a cache line, so no vector load of a panel straddles
/// two lines.
fn aligned(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    const LINE_FLOATS: usize = 64 / size_of::<f32>();
    if buffer.len() < len + LINE_FLOATS {
        buffer.resize(len + LINE_FLOATS, 0.0);
    }
    let skip = buffer.as_ptr().align_offset(64);
    &mut buffer[skip..skip + len]
}

/// Packs `a`'s `[rows, depth]` block as panels of [`TILE_ROWS`] rows, each stored depth-major
/// (the tile's rows of one depth step together); rows past the block are zeros. `packed` holds
/// [`STEP_OVERHANG`] elements past the last panel.
unsafe fn pack_a(packed: &mut [f32], a: RawMatrix, rows: usize, depth: usize) {
    let whole_rows = rows - rows % TILE_ROWS;
    if a.col_stride == 1 {
        // Row-major: six rows by eight depths at a time through a transpose.
        let whole_depth = depth - depth % 8;
        for panel_start in (0..whole_rows).step_by(TILE_ROWS) {
            for p in (0..whole_depth).step_by(8) {
                // SAFETY: the 6 × 8 block lies inside `a`; its eight steps (and the two
                // elements after them) inside `packed`.
                unsafe {
                    pack_rows_6x8(
                        a.offset(panel_start, p),
                        packed[panel_start * depth + p * TILE_ROWS..].as_mut_ptr(),
                    )
                };
            }
            pack_a_scalar(
                packed,
                a,
                panel_start..panel_start + TILE_ROWS,
                whole_depth..depth,
                depth,
            );
        }
        pack_a_scalar(packed, a, whole_rows..rows, 0..depth, depth);
    } else {
        for p in 0..depth {
            // Depth outermost: with contiguous columns (a transposed operand), one pass per
            // depth reads a column's run of rows once.
            for panel_start in (0..whole_rows).step_by(TILE_ROWS) {
                let step = &mut packed[panel_start * depth + p * TILE_ROWS..][..TILE_ROWS];
                if a.row_stride == 1 {
                    // SAFETY: the six elements lie inside the block.
                    step.copy_from_slice(unsafe {
                        std::slice::from_raw_parts(a.offset(panel_start, p).ptr, TILE_ROWS)
                    });
                } else {
                    pack_a_scalar(step, a.offset(panel_start, p), 0..TILE_ROWS, 0..1, 1);
                }
            }
        }
        pack_a_scalar(packed, a, whole_rows..rows, 0..depth, depth);
    }
}

/// The packing of `a`'s rows `rows` (within one panel or a last, partial one) at depths
/// `depths`, element by element; the panel's rows past the block are zeros.
fn pack_a_scalar(
    packed: &mut [f32],
    a: RawMatrix,
    rows: std::ops::Range<usize>,
    depths: std::ops::Range<usize>,
    depth: usize,
) {
    if rows.is_empty() {
        return;
    }
    let panel_start = rows.start - rows.start % TILE_ROWS;
    for p in depths {
        let step = &mut packed[panel_start * depth + p * TILE_ROWS..][..TILE_ROWS];
        for (i, value) in step.iter_mut().enumerate() {
            let row = panel_start + i;
            *value = if rows.contains(&row) {
                // SAFETY: `rows` and `depths` lie inside the caller's block of `a`.
                unsafe { a.at(row, p) }
            } else {
                0.0
            };
        }
    }
}

/// Elements [`pack_rows_6x8`] writes past its last step: it stores each six-element step as
/// eight lanes (the last two zeros), which the next step overwrites.
const STEP_OVERHANG: usize = 8 - TILE_ROWS;

/// Writes six contiguous rows of eight elements at `source` (`col_stride` 1) as eight depth
/// steps of six at `out`, and [`STEP_OVERHANG`] zeros after them.
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_rows_6x8(source: RawMatrix, out: *mut f32) {
    // SAFETY: the caller's 6 × 8 block and output.
    unsafe {
        let row = |i: usize| _mm256_loadu_ps(source.ptr.offset(i as isize * source.row_stride));
        let zero = _mm256_setzero_ps();
        let steps = transpose_8x8([row(0), row(1), row(2), row(3), row(4), row(5), zero, zero]);
        for (p, step) in steps.into_iter().enumerate() {
            _mm256_storeu_ps(out.add(p * TILE_ROWS), step);
        }
    }
}

/// Packs `b`'s `[depth, cols]` block as panels of [`TILE_COLS`] columns, each stored depth-major;
/// columns past the block are zeros.
unsafe fn pack_b(packed: &mut [f32], b: RawMatrix, depth: usize, cols: usize) {
    for panel_start in (0..cols).step_by(TILE_COLS) {
        let panel = &mut packed[panel_start * depth..(panel_start + TILE_COLS) * depth];
        let panel_cols = (cols - panel_start).min(TILE_COLS);
        let source = b.offset(0, panel_start);
        if panel_cols == TILE_COLS && b.col_stride == 1 {
            for (p, step) in panel.chunks_exact_mut(TILE_COLS).enumerate() {
                // SAFETY: the row's sixteen elements lie inside the block.
                step.copy_from_slice(unsafe {
                    std::slice::from_raw_parts(source.offset(p, 0).ptr, TILE_COLS)
                });
            }
        } else if panel_cols == TILE_COLS && b.row_stride == 1 {
            // Columns contiguous (a transposed row-major weight): eight-by-eight transposes.
            let whole = depth - depth % 8;
            for p in (0..whole).step_by(8) {
                for half in 0..2 {
                    // SAFETY: an 8 × 8 block inside `b`, into its place in the panel.
                    unsafe {
                        pack_columns_8x8(
                            source.offset(p, half * 8),
                            panel[p * TILE_COLS + half * 8..].as_mut_ptr(),
                            TILE_COLS,
                        )
                    };
                }
            }
            for p in whole..depth {
                for j in 0..TILE_COLS {
                    panel[p * TILE_COLS + j] = unsafe { source.at(p, j) };
                }
            }
        } else {
            for (p, step) in panel.chunks_exact_mut(TILE_COLS).enumerate() {
                for (j, value) in step.iter_mut().enumerate() {
                    *value = if j < panel_cols {
                        unsafe { source.at(p, j) }
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// Writes the 8 × 8 block of `source` (whose columns are contiguous: `row_stride` 1) row by row
/// to `out`, rows `out_stride` apart.
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_columns_8x8(source: RawMatrix, out: *mut f32, out_stride: usize) {
    // SAFETY: the caller's block; column `j` is eight contiguous elements at `j * col_stride`.
    unsafe {
        let column = |j: usize| _mm256_loadu_ps(source.ptr.offset(j as isize * source.col_stride));
        let columns = [
            column(0),
            column(1),
            column(2),
            column(3),
            column(4),
            column(5),
            column(6),
            column(7),
        ];
        for (p, row) in transpose_8x8(columns).into_iter().enumerate() {
            _mm256_storeu_ps(out.add(p * out_stride), row);
        }
    }
}

/// The transpose of eight vectors of eight: interleave pairs, then quadruples, then swap the
/// 128-bit halves.
#[target_feature(enable = "avx2,fma")]
fn transpose_8x8(v: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(v[0], v[1]);
    let t1 = _mm256_unpackhi_ps(v[0], v[1]);
    let t2 = _mm256_unpacklo_ps(v[2], v[3]);
    let t3 = _mm256_unpackhi_ps(v[2], v[3]);
    let t4 = _mm256_unpacklo_ps(v[4], v[5]);
    let t5 = _mm256_unpackhi_ps(v[4], v[5]);
    let t6 = _mm256_unpacklo_ps(v[6], v[7]);
    let t7 = _mm256_unpackhi_ps(v[6], v[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

/// The register tile: `dst (+)= a_panel · b_panel` over `depth` steps, for the `rows × cols`
/// top-left part of the 6 × 16 tile at `dst`.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_6x16(
    depth: usize,
    a_panel: *const f32,
    b_panel: *const f32,
    dst: Destination,
    rows: usize,
    cols: usize,
    add: bool,
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; TILE_ROWS];
    for i in 0..rows {
        // SAFETY: row `i` of the tile is inside the destination; prefetching is only a hint.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(dst.ptr.add(i * dst.row_stride) as *const i8) };
    }
    let (mut a, mut b) = (a_panel, b_panel);
    for _ in 0..depth {
        // SAFETY: each depth step reads one tile column of the `a` panel and one tile row of the
        // `b` panel, `depth` steps in all.
        unsafe {
            let b0 = _mm256_loadu_ps(b);
            let b1 = _mm256_loadu_ps(b.add(8));
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm256_broadcast_ss(&*a.add(i));
                row[0] = _mm256_fmadd_ps(ai, b0, row[0]);
                row[1] = _mm256_fmadd_ps(ai, b1, row[1]);
            }
            a = a.add(TILE_ROWS);
            b = b.add(TILE_COLS);
        }
    }
    // SAFETY: the writes below stay inside the tile's valid `rows × cols` part.
    unsafe {
        if cols == TILE_COLS {
            for (i, row) in acc.iter().enumerate().take(rows) {
                let out = dst.ptr.add(i * dst.row_stride);
                store(out, row[0], add);
                store(out.add(8), row[1], add);
            }
        } else {
            let mut tile = [0f32; TILE_COLS];
            for (i, row) in acc.iter().enumerate().take(rows) {
                _mm256_storeu_ps(tile.as_mut_ptr(), row[0]);
                _mm256_storeu_ps(tile.as_mut_ptr().add(8), row[1]);
                let out = std::slice::from_raw_parts_mut(dst.ptr.add(i * dst.row_stride), cols);
                for (o, &v) in out.iter_mut().zip(&tile) {
                    *o = if add { *o + v } else { v };
                }
            }
        }
    }
}

#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn store(out: *mut f32, value: __m256, add: bool) {
    // SAFETY: the caller's eight elements at `out`.
    unsafe {
        let value = if add {
            _mm256_add_ps(_mm256_loadu_ps(out), value)
        } else {
            value
        };
        _mm256_storeu_ps(out, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused_ops::test_matrices::{assert_close, matrix, product_in_f64, storages, views};
    use crate::fused_ops::MatrixView;

    /// Checks `matmul` against the product summed in f64, for one shape, every pair of operand
    /// layouts, with and without accumulation, on `threads`: into a block of a wider destination,
    /// whose columns past the block must survive.
    fn check(rows: usize, cols: usize, depth: usize, threads: usize) {
        let (a, b) = (matrix(rows * depth, 1), matrix(depth * cols, 2));
        let product = product_in_f64(
            MatrixView::row_major(&a, rows, depth),
            MatrixView::row_major(&b, depth, cols),
            f64::from,
        );
        let (a_stored, b_stored) = (storages(&a, rows, depth), storages(&b, depth, cols));
        let dst_row_stride = cols + 3;
        let initial = matrix(rows * dst_row_stride, 3);
        for (a_view, a_layout) in views(&a_stored, rows, depth) {
            for (b_view, b_layout) in views(&b_stored, depth, cols) {
                for accumulate in [false, true] {
                    let mut dst = initial.clone();
                    // SAFETY: `available` holds (the callers check), the views lie in their
                    // storage and `dst` holds `rows` rows of `dst_row_stride`.
                    unsafe {
                        matmul(
                            rows,
                            cols,
                            depth,
                            dst.as_mut_ptr(),
                            dst_row_stride,
                            RawMatrix::of(a_view),
                            RawMatrix::of(b_view),
                            accumulate,
                            threads,
                        )
                    };
                    let what = format!(
                        "[{rows}, {depth}] · [{depth}, {cols}], {a_layout} a, {b_layout} b, \
                         accumulate {accumulate}, {threads} threads"
                    );
                    for (i, (got, before)) in dst
                        .chunks(dst_row_stride)
                        .zip(initial.chunks(dst_row_stride))
                        .enumerate()
                    {
                        assert_eq!(
                            got[cols..],
                            before[cols..],
                            "{what}: row {i} past the block"
                        );
                        let want: Vec<f64> = product[i * cols..(i + 1) * cols]
                            .iter()
                            .zip(&before[..cols])
                            .map(|(&p, &b)| p + if accumulate { f64::from(b) } else { 0.0 })
                            .collect();
                        assert_close(
                            &got[..cols],
                            &want,
                            depth.max(1),
                            &format!("{what}, row {i}"),
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn matches_a_sum_in_f64_for_every_layout_and_partial_tile() {
        if !available() {
            eprintln!("skipped: this CPU lacks AVX2 or FMA");
            return;
        }
        // Rows around the six-row tile, columns around the 16-column tile and the eight-wide
        // transposes, depths around the eight-step packing and the depth block.
        for (rows, cols, depth) in [
            (1, 1, 1),
            (5, 15, 7),
            (6, 16, 8),
            (7, 17, 9),
            (13, 40, 31),
            (12, 32, DEPTH_BLOCK + 3),
        ] {
            check(rows, cols, depth, 1);
        }
    }

    #[test]
    fn blocks_and_threads_cover_the_whole_product() {
        if !available() {
            eprintln!("skipped: this CPU lacks AVX2 or FMA");
            return;
        }
        // More rows than a row block, more columns than a column block, and products above the
        // threading threshold split by rows and by columns, over two and three threads.
        check(ROW_BLOCK + 7, 20, 9, 1);
        check(3, COL_BLOCK + 21, 5, 2);
        check(130, 100, 90, 2);
        check(100, 130, 90, 3);
        check(250, 40, 120, 2);
    }

    #[test]
    fn an_empty_depth_writes_zeros_or_leaves_the_sum() {
        if !available() {
            eprintln!("skipped: this CPU lacks AVX2 or FMA");
            return;
        }
        check(7, 18, 0, 1);
    }
}
