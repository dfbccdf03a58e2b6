//! Matrix × activations: the single entry point the model's linear layers go through.

use crate::dispatch::{check_len, kernels};
use crate::{row_bytes, GgmlType, KernelError, ThreadPool};

/// A raw pointer to the output that worker threads write disjoint elements of.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the pointer is only used to write elements that no other thread touches (each worker
// owns a disjoint range of weight rows, hence disjoint output columns), while the `&mut [f32]`
// it came from is borrowed for the whole parallel section.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// Weight rows each parallel task takes at least (amortizes scheduling).
const MIN_ROWS_PER_TASK: usize = 16;

/// Most activation blocks whose scales the decode path converts ahead (rows of up to 8192
/// values of a 32-element block type).
const MAX_PREPARED_BLOCKS: usize = 256;

/// Tokens whose activation rows a task keeps hot while it passes over its weight rows.
const TOKEN_BLOCK: usize = 32;

/// `out[t][r] = dot(w[r], act[t])` for every weight row `r` and token `t`.
///
/// - `w`: `n_rows` rows of `n_cols` elements of `ty` (`n_rows * row_bytes(ty, n_cols)` bytes);
/// - `act`: `n_tokens` rows of `n_cols` elements already quantized to `vec_dot_type(ty)`
///   (see [`quantize_activations`]);
/// - `out`: `[n_tokens][n_rows]`, token-major.
///
/// Parallel over weight rows; each weight row is read once and multiplied with every token
/// while it is hot in cache. Every element is computed by the same per-row `vec_dot` as
/// [`crate::vec_dot`], so the result does not depend on the thread count.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    pool: &ThreadPool,
    ty: GgmlType,
    w: &[u8],
    n_rows: usize,
    n_cols: usize,
    act: &[u8],
    n_tokens: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let (dot, act_ty) = kernels().vec_dot_fn(ty)?;
    let w_row = row_bytes(ty, n_cols)?;
    let a_row = row_bytes(act_ty, n_cols)?;
    let overflow = |what| KernelError::Overflow { what };
    let w_len = n_rows
        .checked_mul(w_row)
        .ok_or_else(|| overflow("matmul weights"))?;
    let a_len = n_tokens
        .checked_mul(a_row)
        .ok_or_else(|| overflow("matmul activations"))?;
    let o_len = n_tokens
        .checked_mul(n_rows)
        .ok_or_else(|| overflow("matmul output"))?;
    check_len(ty, "matmul weights", w_len, w.len())?;
    check_len(act_ty, "matmul activations", a_len, act.len())?;
    check_len(GgmlType::F32, "matmul output", o_len, out.len())?;
    if o_len == 0 {
        return Ok(());
    }

    let dot4 = kernels().vec_dot4_fn(ty);
    let dot2x4 = kernels().vec_dot2x4_fn(ty);
    let dot_pre = kernels().vec_dot_pre_fn(ty);
    let act_block_bytes = act_ty.type_size();
    let out_ptr = OutPtr(out.as_mut_ptr());
    pool.for_each_chunk(n_rows, MIN_ROWS_PER_TASK, move |rows| {
        let out_ptr = out_ptr;
        let put = |t: usize, r: usize, v: f32| {
            // SAFETY: t < n_tokens and r < n_rows, so t * n_rows + r < o_len == out.len();
            // row r belongs to this task alone, so no other thread writes this element, and
            // `out` stays mutably borrowed until for_each_chunk returns.
            unsafe { *out_ptr.0.add(t * n_rows + r) = v };
        };
        let act_row = |t: usize| &act[t * a_row..(t + 1) * a_row];
        // Blocks of tokens whose activations stay in L1 while this task's weight rows pass.
        for t0 in (0..n_tokens).step_by(TOKEN_BLOCK) {
            let t1 = (t0 + TOKEN_BLOCK).min(n_tokens);
            let mut r = rows.start;
            if let Some(dot2x4) = dot2x4 {
                while r + 2 <= rows.end && t1 - t0 >= 4 {
                    let w2 = [
                        &w[r * w_row..(r + 1) * w_row],
                        &w[(r + 1) * w_row..(r + 2) * w_row],
                    ];
                    let mut t = t0;
                    while t + 4 <= t1 {
                        let v = dot2x4(
                            n_cols,
                            w2,
                            [act_row(t), act_row(t + 1), act_row(t + 2), act_row(t + 3)],
                        );
                        for (i, vi) in v.into_iter().enumerate() {
                            for (j, vj) in vi.into_iter().enumerate() {
                                put(t + j, r + i, vj);
                            }
                        }
                        t += 4;
                    }
                    for t in t..t1 {
                        for (i, w_i) in w2.iter().enumerate() {
                            put(t, r + i, dot(n_cols, w_i, act_row(t)));
                        }
                    }
                    r += 2;
                }
            }
            // Decode shape (one token, Q8_0 activations): the activation's block scales are
            // converted to f32 once for all of this task's rows.
            if let (Some(dot_pre), true) = (dot_pre, t1 - t0 == 1) {
                let a = act_row(t0);
                let n_blocks = a.len() / act_block_bytes;
                if n_blocks <= MAX_PREPARED_BLOCKS {
                    let mut scales = [0.0f32; MAX_PREPARED_BLOCKS];
                    for (sc, b) in scales.iter_mut().zip(a.chunks_exact(act_block_bytes)) {
                        *sc = crate::f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
                    }
                    for r in r..rows.end {
                        let w_r = &w[r * w_row..(r + 1) * w_row];
                        put(t0, r, dot_pre(n_cols, w_r, a, &scales[..n_blocks]));
                    }
                    continue;
                }
            }
            for r in r..rows.end {
                let w_r = &w[r * w_row..(r + 1) * w_row];
                let mut t = t0;
                if let Some(dot4) = dot4 {
                    while t + 4 <= t1 {
                        let v = dot4(
                            n_cols,
                            w_r,
                            [act_row(t), act_row(t + 1), act_row(t + 2), act_row(t + 3)],
                        );
                        for (j, vj) in v.into_iter().enumerate() {
                            put(t + j, r, vj);
                        }
                        t += 4;
                    }
                }
                for t in t..t1 {
                    put(t, r, dot(n_cols, w_r, act_row(t)));
                }
            }
        }
    });
    Ok(())
}

/// Quantizes `n_tokens` rows of `n_cols` f32 values (`x`, token-major) to `act_ty`, one row
/// after the other, into `dst`, which is resized to `n_tokens * row_bytes(act_ty, n_cols)`
/// (the caller keeps it as a reusable scratch buffer).
pub fn quantize_activations(
    act_ty: GgmlType,
    x: &[f32],
    n_tokens: usize,
    n_cols: usize,
    dst: &mut Vec<u8>,
) -> Result<(), KernelError> {
    let k = kernels();
    // An empty conversion checks up front that act_ty is an activation type.
    k.quantize_activation(act_ty, &[], &mut [])?;
    let row = row_bytes(act_ty, n_cols)?;
    let x_len = n_tokens.checked_mul(n_cols).ok_or(KernelError::Overflow {
        what: "activation elements",
    })?;
    check_len(GgmlType::F32, "activations", x_len, x.len())?;
    // x.len() == n_tokens * n_cols bounds this size by the caller's own buffer.
    dst.resize(n_tokens * row, 0);
    if row == 0 {
        return Ok(());
    }
    for (xs, d) in x.chunks_exact(n_cols.max(1)).zip(dst.chunks_exact_mut(row)) {
        k.quantize_activation(act_ty, xs, d)?;
    }
    Ok(())
}
