//! edgelm-quant: weight quantization — turning f32 weights into the ggml block formats the
//! way llama.cpp's quantizer does, and choosing per tensor which format to use.
//!
//! - [`quantize_rows`]: round-to-nearest quantizers for F32, F16, BF16, Q4_0, Q4_1, Q5_0,
//!   Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K and Q6_K. They are ggml's `quantize_row_*_ref`
//!   translated operation for operation, so (without an importance matrix, the only case
//!   llama.cpp calls them for) every block is bit-identical with llama-quantize's output.
//! - [`recipe`]: llama.cpp's file types (`Q4_K_M`, `Q3_K_L`, …) and `llama_tensor_get_type`,
//!   the mixed recipes that give some tensors more bits, per-tensor overrides, and the
//!   fallback for rows whose length is not a multiple of the block size.
//!
//! - [`model`]: a whole GGUF model converted as llama-quantize converts it (same tensor and
//!   metadata order), so that without an importance matrix the output *file* is
//!   byte-identical with llama.cpp's; [`compare`] reports block differences otherwise.
//!
//! The crate knows the type table and block layouts (from `edgelm-gguf` / `edgelm-kernels`)
//! and tensor *names* (for the recipes); it reads parsed [`edgelm_gguf::GgufFile`]s and
//! returns [`edgelm_gguf::GgufWriter`]s, leaving paths and I/O to the caller.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod awq;
pub mod compare;
pub mod gptq;
pub mod gptq_grid;
pub mod imatrix;
pub mod kquants;
pub mod legacy;
pub mod model;
pub mod recipe;
pub mod weighted;

use edgelm_gguf::GgmlType;
use edgelm_kernels::quant::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8_0,
};
use rayon::prelude::*;

/// What can go wrong while quantizing.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// The target type has no quantizer here.
    #[error("quantizing to {0} is not supported (supported: {SUPPORTED_NAMES})")]
    Unsupported(GgmlType),
    /// The row length is not a multiple of the type's block size.
    #[error("rows of {n_per_row} elements cannot be stored as {ty} (block size {block_size})")]
    RowNotBlockMultiple {
        /// Target type.
        ty: GgmlType,
        /// Row length.
        n_per_row: usize,
        /// The type's block size.
        block_size: usize,
    },
    /// Source or destination lengths do not match the shape.
    #[error("{what}: expected {expected} {unit}, got {got}")]
    BadLength {
        /// Which buffer.
        what: &'static str,
        /// Expected length.
        expected: usize,
        /// Actual length.
        got: usize,
        /// "elements" or "bytes".
        unit: &'static str,
    },
    /// A weight is too large for F16 (it would become infinite, which ggml's
    /// `ggml_validate_row_data` rejects).
    #[error("weight {index} (row {row}) is {value}: too large for F16 (max 65504)")]
    F16Overflow {
        /// Element index in the tensor.
        index: usize,
        /// Row of that element.
        row: usize,
        /// The value.
        value: f32,
    },
    /// A weight is NaN or infinite (ggml's `ggml_validate_row_data` rejects such data).
    #[error("weight {index} (row {row}) is {value}: cannot quantize non-finite weights")]
    NonFinite {
        /// Element index in the tensor.
        index: usize,
        /// Row of that element.
        row: usize,
        /// The value.
        value: f32,
    },
}

/// Types [`quantize_rows`] can produce.
pub const SUPPORTED_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

const SUPPORTED_NAMES: &str = "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K";

/// f32 → little-endian f16 bits, rounding to nearest even (ggml's `GGML_FP32_TO_FP16`).
#[inline(always)]
pub(crate) fn f16_bits(x: f32) -> [u8; 2] {
    edgelm_kernels::f32_to_f16(x).to_le_bytes()
}

/// Little-endian f16 bits → f32 (exact).
#[inline(always)]
pub(crate) fn f16_value(b: [u8; 2]) -> f32 {
    edgelm_kernels::f16_to_f32(u16::from_le_bytes(b))
}

/// Bytes one row of `n_per_row` elements takes as `ty`, or an error when the row length is
/// not a multiple of the block size.
pub fn row_bytes(ty: GgmlType, n_per_row: usize) -> Result<usize, QuantError> {
    let block_size = ty.block_size();
    if n_per_row == 0 || !n_per_row.is_multiple_of(block_size) {
        return Err(QuantError::RowNotBlockMultiple {
            ty,
            n_per_row,
            block_size,
        });
    }
    Ok(n_per_row / block_size * ty.type_size())
}

/// Quantizes whole blocks: `src.len()` elements (a multiple of the block size) into `dst`
/// (exactly the bytes they take). No validation beyond lengths; see [`quantize_rows`].
fn quantize_blocks(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    use edgelm_kernels::quant as q;
    fn cast<B: bytemuck::Pod>(dst: &mut [u8]) -> &mut [B] {
        bytemuck::cast_slice_mut(dst)
    }
    match ty {
        GgmlType::F32 => q::f32::quantize_row(src, dst),
        GgmlType::F16 => q::f16::quantize_row(src, dst),
        GgmlType::BF16 => q::bf16::quantize_row(src, dst),
        GgmlType::Q4_0 => legacy::quantize_row_q4_0(src, cast::<BlockQ4_0>(dst)),
        GgmlType::Q4_1 => legacy::quantize_row_q4_1(src, cast::<BlockQ4_1>(dst)),
        GgmlType::Q5_0 => legacy::quantize_row_q5_0(src, cast::<BlockQ5_0>(dst)),
        GgmlType::Q5_1 => legacy::quantize_row_q5_1(src, cast::<BlockQ5_1>(dst)),
        GgmlType::Q8_0 => legacy::quantize_row_q8_0(src, cast::<BlockQ8_0>(dst)),
        GgmlType::Q2_K => kquants::quantize_row_q2_k(src, cast::<BlockQ2K>(dst)),
        GgmlType::Q3_K => kquants::quantize_row_q3_k(src, cast::<BlockQ3K>(dst)),
        GgmlType::Q4_K => kquants::quantize_row_q4_k(src, cast::<BlockQ4K>(dst)),
        GgmlType::Q5_K => kquants::quantize_row_q5_k(src, cast::<BlockQ5K>(dst)),
        GgmlType::Q6_K => kquants::quantize_row_q6_k(src, cast::<BlockQ6K>(dst)),
        other => return Err(QuantError::Unsupported(other)),
    }
    Ok(())
}

/// Checks that every weight is finite; the error names the first one that is not.
pub fn check_finite(src: &[f32], n_per_row: usize) -> Result<(), QuantError> {
    match src.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => Err(QuantError::NonFinite {
            index,
            row: index / n_per_row.max(1),
            value: src[index],
        }),
    }
}

/// Quantizes rows of `n_per_row` f32 weights to `ty` into `dst`, in parallel over groups of
/// rows on the current rayon pool. The result does not depend on the number of threads.
/// Non-finite weights are an error (llama.cpp rejects them after quantizing).
pub fn quantize_rows(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    dst: &mut [u8],
) -> Result<(), QuantError> {
    if !SUPPORTED_TYPES.contains(&ty) {
        return Err(QuantError::Unsupported(ty));
    }
    let row_size = row_bytes(ty, n_per_row)?;
    if !src.len().is_multiple_of(n_per_row) {
        return Err(QuantError::BadLength {
            what: "source",
            expected: src.len().div_ceil(n_per_row) * n_per_row,
            got: src.len(),
            unit: "elements",
        });
    }
    let n_rows = src.len() / n_per_row;
    if dst.len() != n_rows * row_size {
        return Err(QuantError::BadLength {
            what: "destination",
            expected: n_rows * row_size,
            got: dst.len(),
            unit: "bytes",
        });
    }
    check_finite(src, n_per_row)?;
    if ty == GgmlType::F16 {
        // 65520 and above round to infinity.
        if let Some(index) = src.iter().position(|v| v.abs() >= 65520.0) {
            return Err(QuantError::F16Overflow {
                index,
                row: index / n_per_row,
                value: src[index],
            });
        }
    }
    // Groups of at least 16 Ki elements, as llama.cpp's chunks, so the scheduling cost
    // stays small next to the work.
    let rows_per_task = (16 * 1024usize).div_ceil(n_per_row).max(1);
    src.par_chunks(rows_per_task * n_per_row)
        .zip(dst.par_chunks_mut(rows_per_task * row_size))
        .try_for_each(|(s, d)| quantize_blocks(ty, s, d))
}

/// One row with an importance vector (`qw.len() == x.len()`): ggml's `quantize_row_*_impl`;
/// types without an importance-weighted path (Q8_0, F32, F16, BF16) ignore `qw`, as in ggml.
pub(crate) fn quantize_row_weighted(
    ty: GgmlType,
    x: &[f32],
    qw: &[f32],
    dst: &mut [u8],
) -> Result<(), QuantError> {
    fn cast<B: bytemuck::Pod>(dst: &mut [u8]) -> &mut [B] {
        bytemuck::cast_slice_mut(dst)
    }
    match ty {
        GgmlType::Q4_0 => weighted::quantize_row_q4_0(x, cast(dst), qw),
        GgmlType::Q4_1 => weighted::quantize_row_q4_1(x, cast(dst), qw),
        GgmlType::Q5_0 => weighted::quantize_row_q5_0(x, cast(dst), qw),
        GgmlType::Q5_1 => weighted::quantize_row_q5_1(x, cast(dst), qw),
        GgmlType::Q2_K => weighted::quantize_row_q2_k(x, cast(dst), qw),
        GgmlType::Q3_K => weighted::quantize_row_q3_k(x, cast(dst), qw),
        GgmlType::Q4_K => weighted::quantize_row_q4_k(x, cast(dst), qw),
        GgmlType::Q5_K => weighted::quantize_row_q5_k(x, cast(dst), qw),
        GgmlType::Q6_K => weighted::quantize_row_q6_k(x, cast(dst), qw),
        other => return Err(QuantError::Unsupported(other)),
    }
    Ok(())
}

/// [`quantize_rows`] with an importance matrix: `importance` holds one vector of `n_per_row`
/// values per group of `rows_per_group` consecutive rows (one group for a 2-D weight, one
/// per expert for a 3-D one), as llama.cpp passes `imatrix + expert * n_per_row`.
pub fn quantize_rows_weighted(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    dst: &mut [u8],
    importance: &[f32],
    rows_per_group: usize,
) -> Result<(), QuantError> {
    use GgmlType::*;
    if !matches!(
        ty,
        Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q2_K | Q3_K | Q4_K | Q5_K | Q6_K
    ) {
        // No importance-weighted path (Q8_0, floats): ggml ignores the matrix.
        return quantize_rows(ty, src, n_per_row, dst);
    }
    let row_size = row_bytes(ty, n_per_row)?;
    let n_rows = src.len() / n_per_row;
    if !src.len().is_multiple_of(n_per_row) || dst.len() != n_rows * row_size {
        return Err(QuantError::BadLength {
            what: "destination",
            expected: n_rows * row_size,
            got: dst.len(),
            unit: "bytes",
        });
    }
    let n_groups = n_rows.div_ceil(rows_per_group.max(1));
    if importance.len() != n_groups * n_per_row {
        return Err(QuantError::BadLength {
            what: "importance matrix",
            expected: n_groups * n_per_row,
            got: importance.len(),
            unit: "values",
        });
    }
    check_finite(src, n_per_row)?;
    check_finite(importance, n_per_row)?;
    src.par_chunks(n_per_row)
        .zip(dst.par_chunks_mut(row_size))
        .enumerate()
        .try_for_each(|(row, (x, d))| {
            let g = row / rows_per_group.max(1);
            quantize_row_weighted(ty, x, &importance[g * n_per_row..(g + 1) * n_per_row], d)
        })
}

/// [`quantize_rows`] into a new buffer.
pub fn quantize(ty: GgmlType, src: &[f32], n_per_row: usize) -> Result<Vec<u8>, QuantError> {
    let row_size = row_bytes(ty, n_per_row)?;
    let mut dst = vec![0u8; src.len() / n_per_row * row_size];
    quantize_rows(ty, src, n_per_row, &mut dst)?;
    Ok(dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Round trip through edgelm-kernels' dequantizers: the error of each type stays within
    /// a budget that shrinks with the bit width (ggml's test-quantize-fns budgets, RMSE).
    #[test]
    fn round_trip_rmse_within_budget() {
        let mut seed = 7u64;
        let n = 4096;
        let x: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
        for (ty, budget) in [
            (GgmlType::F32, 0.0),
            (GgmlType::F16, 0.001),
            (GgmlType::BF16, 0.005),
            (GgmlType::Q8_0, 0.005),
            (GgmlType::Q6_K, 0.012),
            (GgmlType::Q5_0, 0.025),
            (GgmlType::Q5_1, 0.020),
            (GgmlType::Q5_K, 0.020),
            (GgmlType::Q4_0, 0.050),
            (GgmlType::Q4_1, 0.040),
            (GgmlType::Q4_K, 0.040),
            (GgmlType::Q3_K, 0.090),
            (GgmlType::Q2_K, 0.180),
        ] {
            let q = quantize(ty, &x, 256).unwrap();
            let mut y = vec![0.0f32; n];
            edgelm_kernels::dequantize_row(ty, &q, &mut y).unwrap();
            let rmse =
                (x.iter().zip(&y).map(|(a, b)| (a - b).powi(2)).sum::<f32>() / n as f32).sqrt();
            assert!(rmse <= budget, "{ty}: rmse {rmse} > {budget}");
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let x = vec![0.5f32; 256];
        assert!(matches!(
            quantize(GgmlType::IQ2_XXS, &x, 256),
            Err(QuantError::Unsupported(GgmlType::IQ2_XXS))
        ));
        assert!(matches!(
            quantize(GgmlType::Q4_K, &x, 128),
            Err(QuantError::RowNotBlockMultiple { .. })
        ));
        let mut y = x.clone();
        y[300 % 256] = f32::NAN;
        assert!(matches!(
            quantize(GgmlType::Q8_0, &y, 32),
            Err(QuantError::NonFinite {
                index: 44,
                row: 1,
                ..
            })
        ));
        y[44] = f32::INFINITY;
        assert!(matches!(
            quantize(GgmlType::F16, &y, 32),
            Err(QuantError::NonFinite { .. })
        ));
        let mut dst = vec![0u8; 10];
        assert!(matches!(
            quantize_rows(GgmlType::Q8_0, &x, 32, &mut dst),
            Err(QuantError::BadLength { .. })
        ));
    }

    #[test]
    fn zero_and_constant_rows() {
        for ty in SUPPORTED_TYPES {
            for v in [0.0f32, 1.0, -3.5] {
                let x = vec![v; 512];
                let q = quantize(*ty, &x, 512).unwrap();
                let mut y = vec![0.0f32; 512];
                edgelm_kernels::dequantize_row(*ty, &q, &mut y).unwrap();
                for (a, b) in x.iter().zip(&y) {
                    assert!((a - b).abs() <= 0.02 * v.abs() + 1e-6, "{ty} {v}: {b}");
                }
            }
        }
    }
}
