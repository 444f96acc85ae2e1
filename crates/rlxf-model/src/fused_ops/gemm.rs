//! Matrix products over strided views of custom ops' slices, on the `gemm` crate (the kernels
//! candle's own CPU matmul uses) or, for f32 on AVX2 machines without AVX-512, on
//! [`super::gemm_avx2`]; and the buffer an op keeps from forward for backward.

use std::sync::{Mutex, MutexGuard, PoisonError};

use candle_core::CpuStorage;

use super::Real;

/// A matrix inside a slice: element `(i, j)` is `data[i * row_stride + j * col_stride]`, so a
/// transpose is the same data with the strides swapped.
#[derive(Clone, Copy)]
pub(super) struct MatrixView<'a, T> {
    pub(super) data: &'a [T],
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) row_stride: usize,
    pub(super) col_stride: usize,
}

impl<'a, T> MatrixView<'a, T> {
    pub(super) fn row_major(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The same matrix over `data` (of another element type, the same layout).
    pub(super) fn with_data<U>(self, data: &'a [U]) -> MatrixView<'a, U> {
        assert_eq!(data.len(), self.data.len(), "with_data: another layout");
        MatrixView {
            data,
            rows: self.rows,
            cols: self.cols,
            row_stride: self.row_stride,
            col_stride: self.col_stride,
        }
    }

    pub(super) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Whether every element lies inside `data` (what makes the `gemm` call sound).
    pub(super) fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
                < self.data.len()
    }
}

/// `dst = a · b`, or `dst += a · b` with `accumulate`; `dst` is row-major `[a.rows, b.cols]`. On
/// rayon's threads.
pub(super) fn gemm_into<T: Real>(
    dst: &mut [T],
    a: MatrixView<T>,
    b: MatrixView<T>,
    accumulate: bool,
) {
    let parallelism = gemm::Parallelism::Rayon(rayon::current_num_threads());
    gemm_into_with(dst, a, b, accumulate, parallelism);
}

/// [`gemm_into`] on the threads `parallelism` names: `Parallelism::None` inside tasks that are
/// already parallel.
pub(super) fn gemm_into_with<T: Real>(
    dst: &mut [T],
    a: MatrixView<T>,
    b: MatrixView<T>,
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    assert_eq!(
        dst.len(),
        a.rows * b.cols,
        "gemm_into: [{}, {}] · [{}, {}] into {} elements",
        a.rows,
        a.cols,
        b.rows,
        b.cols,
        dst.len()
    );
    // SAFETY: `dst` holds exactly the `[a.rows, b.cols]` row-major result and is borrowed
    // mutably, so nothing else accesses it.
    unsafe { gemm_raw(dst.as_mut_ptr(), b.cols, a, b, accumulate, parallelism) }
}

/// `dst = a · b` (`dst += a · b` with `accumulate`) for the `[a.rows, b.cols]` matrix at `dst`
/// whose rows lie `dst_row_stride` elements apart (a block of a wider matrix). Panics unless
/// `a.cols == b.rows` and both views lie inside their slices.
///
/// # Safety
///
/// Every element `dst + i * dst_row_stride + j` (`i < a.rows`, `j < b.cols`) must be valid for
/// reads and writes, and nothing else may access those elements during the call.
pub(super) unsafe fn gemm_raw<T: Real>(
    dst: *mut T,
    dst_row_stride: usize,
    a: MatrixView<T>,
    b: MatrixView<T>,
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    assert!(
        a.cols == b.rows && a.in_bounds() && b.in_bounds(),
        "gemm: [{}, {}] · [{}, {}] out of bounds",
        a.rows,
        a.cols,
        b.rows,
        b.cols
    );
    #[cfg(target_arch = "x86_64")]
    if let (Some(a_data), Some(b_data)) = (T::as_f32(a.data), T::as_f32(b.data)) {
        if avx2_kernel_fits(a.rows, b.cols) {
            let threads = match parallelism {
                gemm::Parallelism::None => 1,
                gemm::Parallelism::Rayon(threads) => threads,
            };
            // SAFETY: as for gemm below; `T` is `f32` (its data viewed as `f32`) and the kernel's
            // instructions are there (`avx2_kernel_fits`).
            unsafe {
                super::gemm_avx2::matmul(
                    a.rows,
                    b.cols,
                    a.cols,
                    dst.cast(),
                    dst_row_stride,
                    super::gemm_avx2::RawMatrix::of(a.with_data(a_data)),
                    super::gemm_avx2::RawMatrix::of(b.with_data(b_data)),
                    accumulate,
                    threads,
                )
            };
            return;
        }
    }
    // SAFETY: the assertion keeps every element gemm reads inside `a.data` and `b.data`; the
    // caller vouches for the elements it writes, which overlap neither (`a` and `b` are shared
    // borrows, the destination is exclusively the caller's).
    unsafe {
        gemm::gemm(
            a.rows,
            b.cols,
            a.cols,
            dst,
            1,
            dst_row_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            // dst = alpha * dst + beta * a · b; alpha is ignored when dst is not read.
            T::one(),
            T::one(),
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Whether an f32 product of `rows × cols` goes to the AVX2 kernel: on machines with AVX2 and
/// FMA but not AVX-512 (where gemm's AVX-512 kernels were measured fast), and outside decoding's
/// few-row products, which would fill a fraction of its six-row tiles.
#[cfg(target_arch = "x86_64")]
fn avx2_kernel_fits(rows: usize, cols: usize) -> bool {
    // The feature checks are cached by std: an atomic load each.
    rows >= 24
        && cols >= 16
        && super::gemm_avx2::available()
        && !std::arch::is_x86_feature_detected!("avx512f")
}

/// A buffer a custom op's forward keeps for its backward, in the op instance itself: candle keeps
/// the very instance forward ran with in the graph and drops it with the graph (at once when
/// nothing is tracked). Backward only reads it, so a second backward over the same graph works.
#[derive(Default)]
pub(super) struct SavedForBackward(Mutex<Option<CpuStorage>>);

impl SavedForBackward {
    pub(super) fn lock(&self) -> MutexGuard<'_, Option<CpuStorage>> {
        // A panic elsewhere while holding the lock leaves the buffer whole: it is only ever replaced.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
