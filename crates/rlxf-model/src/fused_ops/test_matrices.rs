//! Operands and references for the matrix kernels' tests (`gemm_avx2`, `gemm_bf16`): the same
//! data stored in each layout a kernel must read, and the product summed in f64.

use super::MatrixView;

/// A deterministic pseudo-random matrix in `[-1, 1)`.
pub(super) fn matrix(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// `a · b` summed in f64 over operands widened by `widen` (rounding them first, where the
/// kernel under test does).
pub(super) fn product_in_f64(
    a: MatrixView<f32>,
    b: MatrixView<f32>,
    widen: impl Fn(f32) -> f64,
) -> Vec<f64> {
    let mut out = vec![0.0; a.rows * b.cols];
    for i in 0..a.rows {
        for j in 0..b.cols {
            out[i * b.cols + j] = (0..a.cols)
                .map(|k| {
                    widen(a.data[i * a.row_stride + k * a.col_stride])
                        * widen(b.data[k * b.row_stride + j * b.col_stride])
                })
                .sum();
        }
    }
    out
}

pub(super) fn assert_close(got: &[f32], want: &[f64], depth: usize, what: &str) {
    // f32 sums of `depth` products of magnitude ≤ 1: a few ulps per term at most.
    let tolerance = 4.0 * depth as f64 * f64::from(f32::EPSILON);
    for (index, (&got, &want)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(got) - want).abs() <= tolerance,
            "{what}: element {index}: {got} against {want}"
        );
    }
}

/// `data` (`[rows, cols]` row-major) stored three ways: as it is, transposed (read through
/// swapped strides) and in every other column of a twice-as-wide matrix (neither stride 1).
pub(super) fn storages<T: Copy + Default>(data: &[T], rows: usize, cols: usize) -> [Vec<T>; 3] {
    let transposed = (0..rows * cols)
        .map(|x| data[(x % rows) * cols + x / rows])
        .collect();
    let mut spread = vec![T::default(); rows * cols * 2];
    for (x, &value) in data.iter().enumerate() {
        spread[(x / cols) * 2 * cols + 2 * (x % cols)] = value;
    }
    [data.to_vec(), transposed, spread]
}

/// The views of [`storages`], with what each is.
pub(super) fn views<T>(
    stored: &[Vec<T>; 3],
    rows: usize,
    cols: usize,
) -> [(MatrixView<'_, T>, &'static str); 3] {
    let spread = MatrixView {
        data: &stored[2][..],
        rows,
        cols,
        row_stride: 2 * cols,
        col_stride: 2,
    };
    [
        (MatrixView::row_major(&stored[0], rows, cols), "row-major"),
        (
            MatrixView::row_major(&stored[1], cols, rows).t(),
            "transposed",
        ),
        (spread, "strided"),
    ]
}
