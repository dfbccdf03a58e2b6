//! The few kernel entry points the forward pass uses, adapted to the model's types in one
//! place: activation quantization, matmul against a file-backed [`Matrix`], row dequantization.

use edgelm_gguf::{GgmlType, GgufFile};
use edgelm_kernels::ThreadPool;

use crate::weights::Matrix;
use crate::ModelError;

/// Bytes that `n_rows` rows of `n_cols` activations take once quantized to `ty`.
pub(crate) fn act_bytes(ty: GgmlType, n_rows: usize, n_cols: usize) -> usize {
    n_rows * (n_cols / ty.block_size() * ty.type_size())
}

/// Quantizes `x` ([rows, n_cols] row-major) to `ty` into the front of `out`; returns the bytes.
/// Rows are quantized in parallel.
pub(crate) fn quantize<'a>(
    pool: &ThreadPool,
    ty: GgmlType,
    x: &[f32],
    n_cols: usize,
    out: &'a mut [u8],
    op: &str,
) -> Result<&'a [u8], ModelError> {
    let n_rows = x.len() / n_cols;
    let n_bytes = act_bytes(ty, n_rows, n_cols);
    let dst = &mut out[..n_bytes];
    let row = n_bytes / n_rows.max(1);
    let err = |source| ModelError::Kernel {
        op: format!("quantize activations for {op}"),
        source,
    };
    if n_rows == 0 || row == 0 {
        return Ok(dst);
    }
    // Every row has the same type and lengths, so an error (a wrong type) comes from all of
    // them; the first one recorded is reported.
    let error = std::sync::Mutex::new(None);
    pool.for_each_row_mut(dst, row, 4, |i, d| {
        let xr = &x[i * n_cols..(i + 1) * n_cols];
        if let Err(e) = edgelm_kernels::quantize_activation(ty, xr, d) {
            error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(e);
        }
    });
    if let Some(e) = error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(err(e));
    }
    Ok(dst)
}

/// `out[t, o] = sum_i W[o, i] * act[t, i]` for `n_tokens` quantized activation rows.
pub(crate) fn matmul(
    pool: &ThreadPool,
    file: &GgufFile,
    w: &Matrix,
    act: &[u8],
    n_tokens: usize,
    out: &mut [f32],
) -> Result<(), ModelError> {
    edgelm_kernels::matmul(
        pool,
        w.ty,
        w.data(file),
        w.n_out,
        w.n_in,
        act,
        n_tokens,
        &mut out[..n_tokens * w.n_out],
    )
    .map_err(|source| ModelError::Kernel {
        op: format!("matmul {}", w.name),
        source,
    })
}

/// Dequantizes row `row` of `w` into `out` ([n_in]).
pub(crate) fn dequantize_row(
    file: &GgufFile,
    w: &Matrix,
    row: usize,
    out: &mut [f32],
) -> Result<(), ModelError> {
    let rb = w.row_bytes();
    let bytes = &w.data(file)[row * rb..(row + 1) * rb];
    edgelm_kernels::dequantize_row(w.ty, bytes, out).map_err(|source| ModelError::Kernel {
        op: format!("dequantize row {row} of {}", w.name),
        source,
    })
}
