//! Matrix products with bf16 operands and f32 sums: the matmuls of a mixed-precision forward and
//! backward, as PyTorch's bf16 autocast takes them. AVX512-BF16's `vdpbf16ps` multiplies pairs
//! of bf16 values and adds both products to an f32 lane, twice the multiply-adds per instruction
//! of an f32 FMA, and the operands are half the bytes. On CPUs without it the operands are rounded
//! to bf16 the same way, widened back and multiplied by f32 gemm: the same products, summed in
//! another order.
//!
//! Both operands are packed first (the classic GotoBLAS/BLIS scheme): the right-hand side into
//! panels of [`PANEL_COLS`] columns, the left-hand side into panels of [`PANEL_ROWS`] rows, each
//! as consecutive pairs along the depth, one `u32` per pair, the order `vdpbf16ps` reads them in.
//! A packed operand can be built from a strided view of `bf16` or of `f32` (rounded to nearest
//! even as it is packed), so transposed operands and f32 gradients need no copy of their own.

use candle_core::CpuStorage;
use half::bf16;
use rayon::prelude::*;

use super::{gemm_into, gemm_raw, MatrixView, Real};

/// Rows of one output tile: six rows × four 16-lane vectors are 24 of the 32 vector registers,
/// leaving room for the four right-hand-side vectors and the broadcast left-hand-side pair.
const PANEL_ROWS: usize = 6;
/// Columns of one output tile (four 16-lane vectors).
const PANEL_COLS: usize = 64;
/// Depth pairs a tile sums before the next right-hand-side panel: one packed right-hand-side
/// panel of this depth is 16 KiB, and stays in L1 while it meets every left-hand-side panel of
/// its task.
const BLOCK_PAIRS: usize = 64;
/// Left-hand-side panels (rows) and right-hand-side panels (columns) of one parallel task.
const TASK_ROW_PANELS: usize = 16;
const TASK_COL_PANELS: usize = 4;

/// An element a packed operand is made from: bf16 as it is, f32 rounded to the nearest bf16.
pub(crate) trait Bf16Operand: Copy + Send + Sync {
    fn to_bf16(self) -> bf16;

    /// Up to 16 consecutive values as bf16 bits, those past `mask` zero (and not read).
    ///
    /// # Safety
    ///
    /// The CPU must have the features [`Bf16Kernel::Avx512Bf16`] needs, and the `mask`ed
    /// elements from `at` must be valid for reads.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load_bf16x16(
        at: *const Self,
        mask: std::arch::x86_64::__mmask16,
    ) -> std::arch::x86_64::__m256i;
}

impl Bf16Operand for bf16 {
    fn to_bf16(self) -> bf16 {
        self
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load_bf16x16(
        at: *const Self,
        mask: std::arch::x86_64::__mmask16,
    ) -> std::arch::x86_64::__m256i {
        // SAFETY: the caller vouches for the masked elements; the rest are not read.
        unsafe { std::arch::x86_64::_mm256_maskz_loadu_epi16(mask, at.cast()) }
    }
}

impl Bf16Operand for f32 {
    fn to_bf16(self) -> bf16 {
        bf16::from_f32(self)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn load_bf16x16(
        at: *const Self,
        mask: std::arch::x86_64::__mmask16,
    ) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        // SAFETY: the caller vouches for the masked elements; the rest are not read.
        let values = unsafe { _mm512_maskz_loadu_ps(mask, at) };
        // SAFETY: both are 256-bit vectors of plain bits.
        unsafe { std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(values)) }
    }
}

/// How the products are computed: `vdpbf16ps` where the CPU has AVX512-BF16, f32 gemm over the
/// widened operands elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bf16Kernel {
    WidenedF32,
    #[cfg(target_arch = "x86_64")]
    Avx512Bf16,
}

impl Bf16Kernel {
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512bf16")
        {
            return Bf16Kernel::Avx512Bf16;
        }
        Bf16Kernel::WidenedF32
    }
}

/// One operand of [`gemm_bf16`], packed for `kernel`.
pub(crate) struct PackedOperand {
    /// The depth (`k`) of the product.
    depth: usize,
    /// Rows of a left-hand side, columns of a right-hand side.
    len: usize,
    data: Packed,
}

enum Packed {
    /// `[len / width][depth / 2][width]` pairs, zero-padded at the ragged ends.
    #[cfg(target_arch = "x86_64")]
    Pairs(Vec<u32>),
    /// The operand rounded to bf16 and widened back, row-major as gemm takes it (`[len, depth]`
    /// for a left-hand side, `[depth, len]` for a right-hand side).
    Widened(Vec<f32>),
}

impl PackedOperand {
    /// The left-hand side `a` (`[m, k]`) of `a · b`.
    pub(crate) fn lhs<T: Bf16Operand>(a: MatrixView<T>, kernel: Bf16Kernel) -> Self {
        Self::pack(a, a.t(), PANEL_ROWS, kernel)
    }

    /// The right-hand side `b` (`[k, n]`) of `a · b`.
    pub(crate) fn rhs<T: Bf16Operand>(b: MatrixView<T>, kernel: Bf16Kernel) -> Self {
        Self::pack(b, b, PANEL_COLS, kernel)
    }

    /// Packs `depth_major` (`[k, len]`: the operand itself for a right-hand side, its transpose
    /// for a left-hand side) into panels of `width`, or widens `operand` row-major.
    fn pack<T: Bf16Operand>(
        operand: MatrixView<T>,
        depth_major: MatrixView<T>,
        width: usize,
        kernel: Bf16Kernel,
    ) -> Self {
        assert!(operand.in_bounds(), "gemm_bf16: operand out of bounds");
        let (depth, len) = (depth_major.rows, depth_major.cols);
        let data = match kernel {
            Bf16Kernel::WidenedF32 => Packed::Widened(widened(operand)),
            #[cfg(target_arch = "x86_64")]
            Bf16Kernel::Avx512Bf16 => Packed::Pairs(avx512::pairs_in_panels(depth_major, width)),
        };
        Self { depth, len, data }
    }
}

/// `operand` rounded to bf16 and back to f32, row-major.
fn widened<T: Bf16Operand>(operand: MatrixView<T>) -> Vec<f32> {
    let mut out = vec![0.0; operand.rows * operand.cols];
    out.par_chunks_mut(operand.cols.max(1))
        .enumerate()
        .for_each(|(i, row)| {
            for (j, out) in row.iter_mut().enumerate() {
                *out = operand.data[i * operand.row_stride + j * operand.col_stride]
                    .to_bf16()
                    .to_f32();
            }
        });
    out
}

/// How a product takes its operands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum Operands {
    /// As they are: `f32` or `f64` gemm.
    #[default]
    Exact,
    /// Rounded to bf16, summed in `f32`, as the products of a mixed-precision forward (PyTorch's
    /// bf16 autocast); for `f32` operands only.
    Bf16,
}

/// The right-hand side of one or several products: a view, or packed once for bf16 products.
pub(super) enum Rhs<'a, T> {
    Exact(MatrixView<'a, T>),
    Bf16(PackedOperand),
}

impl<'a, T: Real> Rhs<'a, T> {
    /// `b` for products that take their operands as `operands` says. Panics for bf16 operands
    /// unless `T` is `f32`.
    pub(super) fn new(b: MatrixView<'a, T>, operands: Operands) -> Self {
        match operands {
            Operands::Exact => Rhs::Exact(b),
            Operands::Bf16 => {
                let data = T::as_f32(b.data).expect("bf16 products take f32 operands");
                Rhs::Bf16(PackedOperand::rhs(b.with_data(data), Bf16Kernel::detect()))
            }
        }
    }

    /// `dst = a · self` (`dst += a · self` with `accumulate`), `dst` row-major; on rayon's threads.
    pub(super) fn product_into(&self, dst: &mut [T], a: MatrixView<T>, accumulate: bool) {
        match self {
            Rhs::Exact(b) => gemm_into(dst, a, *b, accumulate),
            Rhs::Bf16(b) => {
                let (Some(dst), Some(a_data)) = (T::as_f32_mut(dst), T::as_f32(a.data)) else {
                    unreachable!("a bf16 right-hand side is packed from f32 only")
                };
                let a = PackedOperand::lhs(a.with_data(a_data), Bf16Kernel::detect());
                gemm_bf16_packed(dst, &a, b, accumulate);
            }
        }
    }
}

/// Values converted per parallel task by [`narrowed_to_bf16`].
const NARROW_CHUNK: usize = 1 << 14;

/// `values` rounded to the nearest bf16 (ties to even), as a bf16 tensor's storage; in parallel.
pub(crate) fn narrowed_to_bf16(values: &[f32]) -> CpuStorage {
    let kernel = Bf16Kernel::detect();
    let mut out = vec![bf16::ZERO; values.len()];
    out.par_chunks_mut(NARROW_CHUNK)
        .zip(values.par_chunks(NARROW_CHUNK))
        .for_each(|(out, values)| match kernel {
            Bf16Kernel::WidenedF32 => {
                for (out, &value) in out.iter_mut().zip(values) {
                    *out = bf16::from_f32(value);
                }
            }
            // SAFETY: `detect` chose this kernel, so the CPU has the features it needs.
            #[cfg(target_arch = "x86_64")]
            Bf16Kernel::Avx512Bf16 => unsafe { avx512::narrow(values, out) },
        });
    CpuStorage::BF16(out)
}

/// `dst = a · b` (`dst += a · b` with `accumulate`) for bf16 operands, f32 sums, `dst` row-major
/// `[a.rows, b.cols]`; on rayon's threads.
pub(crate) fn gemm_bf16<A: Bf16Operand, B: Bf16Operand>(
    dst: &mut [f32],
    a: MatrixView<A>,
    b: MatrixView<B>,
    accumulate: bool,
) {
    let kernel = Bf16Kernel::detect();
    let (a, b) = (PackedOperand::lhs(a, kernel), PackedOperand::rhs(b, kernel));
    gemm_bf16_packed(dst, &a, &b, accumulate);
}

/// [`gemm_bf16`] over operands already packed (a right-hand side used for several products is
/// packed once). Panics unless both were packed for the same kernel and their depths match.
pub(crate) fn gemm_bf16_packed(
    dst: &mut [f32],
    a: &PackedOperand,
    b: &PackedOperand,
    accumulate: bool,
) {
    let (rows, cols) = (a.len, b.len);
    assert!(
        a.depth == b.depth && dst.len() == rows * cols,
        "gemm_bf16: [{rows}, {}] · [{}, {cols}] into {} elements",
        a.depth,
        b.depth,
        dst.len()
    );
    match (&a.data, &b.data) {
        (Packed::Widened(a_data), Packed::Widened(b_data)) => gemm_raw_f32(
            dst,
            MatrixView::row_major(a_data, rows, a.depth),
            MatrixView::row_major(b_data, b.depth, cols),
            accumulate,
        ),
        #[cfg(target_arch = "x86_64")]
        (Packed::Pairs(a_pairs), Packed::Pairs(b_pairs)) => {
            avx512::product(dst, (a_pairs, rows), (b_pairs, cols), a.depth, accumulate)
        }
        #[allow(unreachable_patterns)]
        _ => panic!("gemm_bf16: operands packed for different kernels"),
    }
}

fn gemm_raw_f32(dst: &mut [f32], a: MatrixView<f32>, b: MatrixView<f32>, accumulate: bool) {
    let parallelism = gemm::Parallelism::Rayon(rayon::current_num_threads());
    // SAFETY: `dst` holds exactly the `[a.rows, b.cols]` row-major result (checked by the
    // caller) and is borrowed mutably.
    unsafe { gemm_raw(dst.as_mut_ptr(), b.cols, a, b, accumulate, parallelism) }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use rayon::prelude::*;

    use half::bf16;

    use super::{
        Bf16Operand, MatrixView, BLOCK_PAIRS, PANEL_COLS, PANEL_ROWS, TASK_COL_PANELS,
        TASK_ROW_PANELS,
    };

    /// Depth pairs of one panel [`pairs_in_panels`] writes at a time when it walks the source
    /// column by column: 64 pairs of a 64-column panel are 16 KiB, which stay in L1.
    const PACK_BLOCK_PAIRS: usize = 64;

    /// `m` (`[k, len]`) as `[len / width][k / 2][width]` `u32` pairs (depth `2p` in the low half,
    /// `2p + 1` in the high half: the pair `vdpbf16ps` multiplies with the pair in the same lane of
    /// the other operand), the ragged panel and an odd depth's last pair padded with zeros;
    /// panels in parallel.
    pub(super) fn pairs_in_panels<T: Bf16Operand>(m: MatrixView<T>, width: usize) -> Vec<u32> {
        let pairs = m.rows.div_ceil(2);
        let panels = m.cols.div_ceil(width);
        let mut out = vec![0u32; panels * pairs * width];
        if pairs == 0 {
            return out;
        }
        assert!(m.in_bounds(), "gemm_bf16: operand out of bounds");
        out.par_chunks_mut(pairs * width)
            .enumerate()
            .for_each(|(panel, out)| {
                let first = panel * width;
                let cols = width.min(m.cols - first);
                // SAFETY: `Bf16Kernel::detect` chose this kernel, so the CPU has the features;
                // `m` lies inside its slice (asserted) and `out` is the panel's.
                unsafe {
                    if m.col_stride == 1 {
                        pack_rows_contiguous(m, first, cols, width, out);
                    } else if m.row_stride == 1 {
                        pack_depth_contiguous(m, first, cols, width, out);
                    } else {
                        pack_strided(m, first, cols, width, out);
                    }
                }
            });
        out
    }

    /// `out[i] = values[i]` rounded to bf16, 16 at a time.
    ///
    /// # Safety
    ///
    /// The CPU must have the features of [`super::Bf16Kernel::Avx512Bf16`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn narrow(values: &[f32], out: &mut [bf16]) {
        assert_eq!(values.len(), out.len());
        for start in (0..values.len()).step_by(16) {
            let mask = first_lanes(values.len() - start);
            // SAFETY: the masked lanes are elements `start ..` of both slices.
            unsafe {
                let rounded = f32::load_bf16x16(values[start..].as_ptr(), mask);
                _mm256_mask_storeu_epi16(out[start..].as_mut_ptr().cast(), mask, rounded);
            }
        }
    }

    /// The mask of the first `lanes` (at most 16) lanes.
    fn first_lanes(lanes: usize) -> __mmask16 {
        ((1u32 << lanes.min(16)) - 1) as __mmask16
    }

    /// One panel of `cols` columns from `first`, for a source whose rows (each depth) are
    /// contiguous: two rows' values interleaved, 16 columns at a time.
    ///
    /// # Safety
    ///
    /// The CPU must have the features of [`super::Bf16Kernel::Avx512Bf16`], and `m` must lie
    /// inside its slice.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn pack_rows_contiguous<T: Bf16Operand>(
        m: MatrixView<T>,
        first: usize,
        cols: usize,
        width: usize,
        out: &mut [u32],
    ) {
        for (p, out) in out.chunks_exact_mut(width).enumerate() {
            let row = |k: usize| m.data[k * m.row_stride + first..].as_ptr();
            for j in (0..cols).step_by(16) {
                let mask = first_lanes(cols - j);
                // SAFETY: the masked lanes are columns `first + j ..` of rows inside `m`.
                let low =
                    unsafe { _mm512_cvtepu16_epi32(T::load_bf16x16(row(2 * p).add(j), mask)) };
                let high = if 2 * p + 1 < m.rows {
                    // SAFETY: as above.
                    let high = unsafe { T::load_bf16x16(row(2 * p + 1).add(j), mask) };
                    _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(high))
                } else {
                    _mm512_setzero_si512()
                };
                // SAFETY: the masked lanes are `out[j..cols]`.
                unsafe {
                    _mm512_mask_storeu_epi32(
                        out[j..].as_mut_ptr().cast(),
                        mask,
                        _mm512_or_si512(low, high),
                    )
                };
            }
        }
    }

    /// One panel of `cols` columns from `first`, for a source whose columns are contiguous
    /// along the depth: 16 pairs of a column at a time, [`PACK_BLOCK_PAIRS`] pairs of every
    /// column before the next pairs.
    ///
    /// # Safety
    ///
    /// As [`pack_rows_contiguous`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn pack_depth_contiguous<T: Bf16Operand>(
        m: MatrixView<T>,
        first: usize,
        cols: usize,
        width: usize,
        out: &mut [u32],
    ) {
        let pairs = m.rows.div_ceil(2);
        for block in (0..pairs).step_by(PACK_BLOCK_PAIRS) {
            let block_end = (block + PACK_BLOCK_PAIRS).min(pairs);
            for j in 0..cols {
                let column = &m.data[(first + j) * m.col_stride..];
                for p in (block..block_end).step_by(16) {
                    let depth = 2 * p;
                    let at = column[depth..].as_ptr();
                    // SAFETY: the masked lanes are depths `depth ..` of a column inside `m`.
                    let (low, high) = unsafe {
                        (
                            T::load_bf16x16(at, first_lanes(m.rows - depth)),
                            T::load_bf16x16(
                                at.wrapping_add(16),
                                first_lanes(m.rows.saturating_sub(depth + 16)),
                            ),
                        )
                    };
                    let mut lanes = [0u32; 16];
                    // SAFETY: `lanes` is 64 bytes; the 32 bf16 values in depth order are the
                    // 16 pairs.
                    unsafe {
                        _mm512_storeu_si512(
                            lanes.as_mut_ptr().cast(),
                            _mm512_inserti64x4::<1>(_mm512_castsi256_si512(low), high),
                        )
                    };
                    for (i, &pair) in lanes.iter().enumerate().take(block_end - p) {
                        out[(p + i) * width + j] = pair;
                    }
                }
            }
        }
    }

    /// One panel for a source with neither stride 1, element by element.
    fn pack_strided<T: Bf16Operand>(
        m: MatrixView<T>,
        first: usize,
        cols: usize,
        width: usize,
        out: &mut [u32],
    ) {
        let at = |k: usize, j: usize| {
            if k < m.rows {
                m.data[k * m.row_stride + j * m.col_stride].to_bf16()
            } else {
                bf16::ZERO
            }
        };
        for (p, out) in out.chunks_exact_mut(width).enumerate() {
            for (j, out) in out[..cols].iter_mut().enumerate() {
                let (low, high) = (at(2 * p, first + j), at(2 * p + 1, first + j));
                *out = u32::from(low.to_bits()) | (u32::from(high.to_bits()) << 16);
            }
        }
    }

    /// The output, shared by tasks that each write their own disjoint block of it.
    #[derive(Clone, Copy)]
    struct Output {
        ptr: *mut f32,
        cols: usize,
    }
    // SAFETY: tasks write disjoint blocks (see `product`), and the borrow of the slice the
    // pointer comes from outlives them.
    unsafe impl Send for Output {}
    unsafe impl Sync for Output {}

    impl Output {
        /// Where element `(row, col)` is.
        ///
        /// # Safety
        ///
        /// `(row, col)` must lie inside the output.
        unsafe fn at(self, row: usize, col: usize) -> *mut f32 {
            // SAFETY: the caller keeps the offset inside the output.
            unsafe { self.ptr.add(row * self.cols + col) }
        }
    }

    /// `dst (+)= a · b` from packed pairs: `a` as `(panels, rows)`, `b` as `(panels, cols)`.
    pub(super) fn product(
        dst: &mut [f32],
        (a, rows): (&[u32], usize),
        (b, cols): (&[u32], usize),
        depth: usize,
        accumulate: bool,
    ) {
        let pairs = depth.div_ceil(2);
        let (row_panels, col_panels) = (rows.div_ceil(PANEL_ROWS), cols.div_ceil(PANEL_COLS));
        assert!(
            a.len() == row_panels * pairs * PANEL_ROWS
                && b.len() == col_panels * pairs * PANEL_COLS
                && dst.len() == rows * cols
        );
        if pairs == 0 {
            if !accumulate {
                dst.fill(0.0);
            }
            return;
        }
        let out = Output {
            ptr: dst.as_mut_ptr(),
            cols,
        };
        let row_tasks = row_panels.div_ceil(TASK_ROW_PANELS);
        let col_tasks = col_panels.div_ceil(TASK_COL_PANELS);
        (0..row_tasks * col_tasks).into_par_iter().for_each(|task| {
            let row_panel_range = (task / col_tasks) * TASK_ROW_PANELS
                ..((task / col_tasks + 1) * TASK_ROW_PANELS).min(row_panels);
            let col_panel_range = (task % col_tasks) * TASK_COL_PANELS
                ..((task % col_tasks + 1) * TASK_COL_PANELS).min(col_panels);
            for block_start in (0..pairs).step_by(BLOCK_PAIRS) {
                let block = BLOCK_PAIRS.min(pairs - block_start);
                let add = accumulate || block_start > 0;
                for col_panel in col_panel_range.clone() {
                    let b_start = (col_panel * pairs + block_start) * PANEL_COLS;
                    let b_panel = &b[b_start..b_start + block * PANEL_COLS];
                    let first_col = col_panel * PANEL_COLS;
                    for row_panel in row_panel_range.clone() {
                        let a_start = (row_panel * pairs + block_start) * PANEL_ROWS;
                        let a_panel = &a[a_start..a_start + block * PANEL_ROWS];
                        let first_row = row_panel * PANEL_ROWS;
                        let tile = Tile {
                            rows: PANEL_ROWS.min(rows - first_row),
                            cols: PANEL_COLS.min(cols - first_col),
                            add,
                        };
                        // SAFETY: `product` runs only where `Bf16Kernel::detect` found
                        // AVX512F and AVX512-BF16; the tile's elements lie inside `dst`
                        // (`rows * cols` elements, asserted) and belong to this task alone,
                        // since tasks cover disjoint panel ranges.
                        unsafe {
                            let corner = out.at(first_row, first_col);
                            tile_6x64(a_panel, b_panel, corner, cols, tile);
                        }
                    }
                }
            }
        });
    }

    /// Which part of a 6 × 64 tile is inside the output, and whether it adds to it.
    #[derive(Clone, Copy)]
    struct Tile {
        rows: usize,
        cols: usize,
        add: bool,
    }

    /// One 6 × 64 tile: `a` holds `pairs × 6` and `b` `pairs × 64` packed pairs of one depth
    /// block; the sums are stored (or added) at `corner`, rows `stride` apart, masked to the
    /// tile's `rows × cols`.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX512F and AVX512-BF16, and `corner + r * stride + c` must be valid for
    /// reads and writes for `r < tile.rows`, `c < tile.cols`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile_6x64(a: &[u32], b: &[u32], corner: *mut f32, stride: usize, tile: Tile) {
        const VECTORS: usize = PANEL_COLS / 16;
        let pairs = b.len() / PANEL_COLS;
        assert!(a.len() == pairs * PANEL_ROWS && b.len() == pairs * PANEL_COLS);
        let mut sums = [[_mm512_setzero_ps(); VECTORS]; PANEL_ROWS];
        for p in 0..pairs {
            // SAFETY: `p < pairs` and the lengths are asserted above.
            let (a_pairs, b_pairs) = unsafe {
                (
                    a.as_ptr().add(p * PANEL_ROWS),
                    b.as_ptr().add(p * PANEL_COLS),
                )
            };
            let b_vectors: [__m512bh; VECTORS] = std::array::from_fn(|v| {
                // SAFETY: as above; the vectors are the pair's 64 columns.
                unsafe { bf16_pairs(_mm512_loadu_si512(b_pairs.add(16 * v).cast())) }
            });
            for (r, row_sums) in sums.iter_mut().enumerate() {
                // SAFETY: as above.
                let a_pair = bf16_pairs(_mm512_set1_epi32(unsafe { *a_pairs.add(r) } as i32));
                for (sum, &b_vector) in row_sums.iter_mut().zip(&b_vectors) {
                    *sum = _mm512_dpbf16_ps(*sum, a_pair, b_vector);
                }
            }
        }
        for (r, row_sums) in sums.iter().enumerate().take(tile.rows) {
            for (v, &sum) in row_sums.iter().enumerate() {
                let lanes = tile.cols.saturating_sub(16 * v).min(16);
                if lanes == 0 {
                    break;
                }
                let mask = ((1u32 << lanes) - 1) as __mmask16;
                // SAFETY: lanes past `tile.cols` are masked off; the caller vouches for the rest.
                unsafe {
                    let at = corner.add(r * stride + 16 * v);
                    let value = if tile.add {
                        _mm512_add_ps(_mm512_maskz_loadu_ps(mask, at), sum)
                    } else {
                        sum
                    };
                    _mm512_mask_storeu_ps(at, mask, value);
                }
            }
        }
    }

    /// The 32 bf16 values in `v`'s 16 `u32` lanes, as `vdpbf16ps` takes them.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn bf16_pairs(v: __m512i) -> __m512bh {
        // SAFETY: both are 512-bit vectors of plain bits.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused_ops::test_matrices::{assert_close, matrix, product_in_f64, storages, views};

    /// `a · b` in f64 from the bf16-rounded operands: the definition the kernels sum in f32.
    fn reference(a: MatrixView<f32>, b: MatrixView<f32>) -> Vec<f64> {
        product_in_f64(a, b, |x| f64::from(bf16::from_f32(x).to_f32()))
    }

    fn kernels() -> Vec<Bf16Kernel> {
        let mut kernels = vec![Bf16Kernel::WidenedF32];
        if Bf16Kernel::detect() != Bf16Kernel::WidenedF32 {
            kernels.push(Bf16Kernel::detect());
        }
        kernels
    }

    fn check_products<T: Bf16Operand + Default>(
        a: &[T],
        b: &[T],
        (m, k, n): (usize, usize, usize),
    ) {
        let wide = |x: &[T]| -> Vec<f32> { x.iter().map(|x| x.to_bf16().to_f32()).collect() };
        let (a_wide, b_wide) = (wide(a), wide(b));
        let want = reference(
            MatrixView::row_major(&a_wide, m, k),
            MatrixView::row_major(&b_wide, k, n),
        );
        let (a_stored, b_stored) = (storages(a, m, k), storages(b, k, n));
        for kernel in kernels() {
            for (a, a_layout) in views(&a_stored, m, k) {
                for (b, b_layout) in views(&b_stored, k, n) {
                    let mut got = vec![f32::NAN; m * n];
                    let (pa, pb) = (PackedOperand::lhs(a, kernel), PackedOperand::rhs(b, kernel));
                    gemm_bf16_packed(&mut got, &pa, &pb, false);
                    let what = format!("{kernel:?}, {a_layout} a, {b_layout} b");
                    assert_close(&got, &want, k, &what);
                }
            }
        }
    }

    #[test]
    fn products_match_the_definition_for_ragged_shapes_strides_and_depth_blocks() {
        // Rows not a multiple of the 6-row panels (nor of a task's 96), columns not a multiple of
        // the 64-column panels (nor of a task's 256), depths spanning three depth blocks
        // (2 × 64 pairs and a few more): every padded and masked edge, for each way an operand
        // can be stored. The odd depth pads its last pair with a zero; the even one fills it.
        // Packed depth-first, 16 pairs (32 values) are loaded at a time: the odd depth ends in a
        // chunk of 5 values (the upper 16 all masked off), the even one in a chunk of 26 (the
        // upper 16 partly masked).
        for k in [2 * 2 * BLOCK_PAIRS + 5, 2 * 2 * BLOCK_PAIRS + 26] {
            let (m, n) = (101, 263);
            let (a, b) = (matrix(m * k, 1), matrix(k * n, 2));
            check_products(&a, &b, (m, k, n));
            let narrow = |x: Vec<f32>| -> Vec<bf16> { x.into_iter().map(bf16::from_f32).collect() };
            check_products(&narrow(a), &narrow(b), (m, k, n));
        }
    }

    #[test]
    fn narrowing_rounds_to_nearest_even_as_half_does() {
        let mut values = matrix(1000, 6);
        // Halfway cases both ways, the extremes, and values that round up into the next binade.
        values.extend([
            f32::from_bits(0x3f80_8000),
            f32::from_bits(0x3f81_8000),
            f32::from_bits(0x3f80_8001),
            f32::from_bits(0x3fff_ffff),
            f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            1e-30,
        ]);
        let CpuStorage::BF16(got) = narrowed_to_bf16(&values) else {
            panic!("bf16 storage")
        };
        for (&value, got) in values.iter().zip(got) {
            assert_eq!(got.to_bits(), bf16::from_f32(value).to_bits(), "{value:e}");
        }
        let CpuStorage::BF16(nan) = narrowed_to_bf16(&[f32::NAN]) else {
            panic!("bf16 storage")
        };
        assert!(nan[0].is_nan());
    }

    #[test]
    fn accumulates_onto_the_output_and_takes_bf16_operands() {
        let (m, k, n) = (13, 7, 70);
        let a_data = matrix(m * k, 3);
        let b_data: Vec<bf16> = matrix(k * n, 4).into_iter().map(bf16::from_f32).collect();
        let b_wide: Vec<f32> = b_data.iter().map(|x| x.to_f32()).collect();
        let start = matrix(m * n, 5);
        let product = reference(
            MatrixView::row_major(&a_data, m, k),
            MatrixView::row_major(&b_wide, k, n),
        );
        let want: Vec<f64> = start
            .iter()
            .zip(&product)
            .map(|(&s, &p)| f64::from(s) + p)
            .collect();
        for kernel in kernels() {
            let mut got = start.clone();
            let a = PackedOperand::lhs(MatrixView::row_major(&a_data, m, k), kernel);
            let b = PackedOperand::rhs(MatrixView::row_major(&b_data, k, n), kernel);
            gemm_bf16_packed(&mut got, &a, &b, true);
            assert_close(&got, &want, k, &format!("{kernel:?}"));
        }
    }

    #[test]
    fn an_empty_depth_gives_zeros_or_leaves_the_output() {
        for kernel in kernels() {
            let (a, b) = (vec![0f32; 0], vec![0f32; 0]);
            let pa = PackedOperand::lhs(MatrixView::row_major(&a, 3, 0), kernel);
            let pb = PackedOperand::rhs(MatrixView::row_major(&b, 0, 5), kernel);
            let mut out = vec![7.0; 15];
            gemm_bf16_packed(&mut out, &pa, &pb, true);
            assert!(out.iter().all(|&x| x == 7.0), "{kernel:?}");
            gemm_bf16_packed(&mut out, &pa, &pb, false);
            assert!(out.iter().all(|&x| x == 0.0), "{kernel:?}");
        }
    }
}
