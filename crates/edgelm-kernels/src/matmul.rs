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
    matmul_many(
        pool,
        &mut [MatmulJob { ty, w, n_rows, out }],
        n_cols,
        act,
        n_tokens,
    )
}

/// One matrix of [`matmul_many`]: `n_rows` rows of `ty` weights and its `[n_tokens][n_rows]`
/// output.
pub struct MatmulJob<'a> {
    /// Weight type.
    pub ty: GgmlType,
    /// Weight rows.
    pub w: &'a [u8],
    /// Number of rows.
    pub n_rows: usize,
    /// Output, token-major.
    pub out: &'a mut [f32],
}

/// Checked description of one job, shared by the parallel tasks.
struct Prepared<'a> {
    dot: crate::dispatch::VecDotFn,
    dot4: Option<crate::dispatch::VecDot4Fn>,
    dot2x4: Option<crate::dispatch::VecDot2x4Fn>,
    dot4x4: Option<crate::dispatch::VecDot4x4Fn>,
    /// With `to_q8_0`: Q8_0's 4 × 4 tile and single dot, run on rows rewritten as Q8_0.
    via_q8_0: Option<(
        crate::dispatch::ToQ8_0Fn,
        crate::dispatch::VecDot4x4Fn,
        crate::dispatch::VecDotFn,
    )>,
    /// Prompt batches: a 4 × 4 tile over rows packed once per group of four (`crate::packed`).
    packed: Option<crate::dispatch::PackedTile>,
    dot_pre: Option<crate::dispatch::VecDotPreFn>,
    dot_pre_rows: Option<crate::dispatch::VecDotPreRowsFn>,
    act_block_bytes: usize,
    /// F16 scale fields leading each activation block (what `dot_pre` takes converted).
    act_scale_fields: usize,
    w: &'a [u8],
    w_row: usize,
    /// Bytes per weight block.
    w_block_bytes: usize,
    n_rows: usize,
    out_ptr: OutPtr,
}

/// Most matrices one [`matmul_many`] call takes.
pub const MAX_MATMUL_JOBS: usize = 4;

/// Several matrices multiplied with the same activations (Q, K and V; gate and up) in one
/// parallel section, which saves a fork-join per extra matrix. Every weight type must share
/// one activation type (the `vec_dot_type` `act` is quantized to); at most
/// [`MAX_MATMUL_JOBS`] jobs. Results are those of [`matmul`] for each job.
pub fn matmul_many(
    pool: &ThreadPool,
    jobs: &mut [MatmulJob<'_>],
    n_cols: usize,
    act: &[u8],
    n_tokens: usize,
) -> Result<(), KernelError> {
    let overflow = |what| KernelError::Overflow { what };
    if jobs.len() > MAX_MATMUL_JOBS {
        return Err(KernelError::TooManyMatmulJobs {
            n: jobs.len(),
            max: MAX_MATMUL_JOBS,
        });
    }
    // A fixed array: no allocation per call.
    let mut prepared: [Option<Prepared<'_>>; MAX_MATMUL_JOBS] = [const { None }; MAX_MATMUL_JOBS];
    let mut act_ty0 = None;
    let mut total_rows = 0usize;
    for (slot, job) in prepared.iter_mut().zip(jobs.iter_mut()) {
        let ty = job.ty;
        // One table row gives the type's dot product, its activation type and its tile forms.
        let row = kernels().row(ty, "vec_dot")?;
        let dot = row
            .vec_dot
            .ok_or(KernelError::Unsupported { ty, op: "vec_dot" })?;
        let act_ty = row.vec_dot_type;
        if let Some(given) = act_ty0 {
            if given != act_ty {
                return Err(KernelError::ActivationTypeMismatch {
                    weight: ty,
                    wanted: act_ty,
                    given,
                });
            }
        }
        act_ty0 = Some(act_ty);
        let w_row = row_bytes(ty, n_cols)?;
        let a_row = row_bytes(act_ty, n_cols)?;
        let w_len = job
            .n_rows
            .checked_mul(w_row)
            .ok_or_else(|| overflow("matmul weights"))?;
        let a_len = n_tokens
            .checked_mul(a_row)
            .ok_or_else(|| overflow("matmul activations"))?;
        let o_len = n_tokens
            .checked_mul(job.n_rows)
            .ok_or_else(|| overflow("matmul output"))?;
        check_len(ty, "matmul weights", w_len, job.w.len())?;
        check_len(act_ty, "matmul activations", a_len, act.len())?;
        check_len(GgmlType::F32, "matmul output", o_len, job.out.len())?;
        total_rows = total_rows
            .checked_add(job.n_rows)
            .ok_or_else(|| overflow("matmul rows"))?;
        *slot = Some(Prepared {
            dot,
            dot4: row.vec_dot4,
            dot2x4: row.vec_dot2x4,
            dot4x4: row.vec_dot4x4,
            via_q8_0: match row.to_q8_0 {
                Some(conv) => {
                    let q8 = kernels().row(GgmlType::Q8_0, "vec_dot4x4")?;
                    match (q8.vec_dot4x4, q8.vec_dot) {
                        (Some(tile), Some(one)) => Some((conv, tile, one)),
                        _ => None,
                    }
                }
                None => None,
            },
            packed: kernels().packed_tile(ty),
            dot_pre: row.vec_dot_pre,
            dot_pre_rows: row.vec_dot_pre_rows,
            act_block_bytes: act_ty.type_size(),
            act_scale_fields: match act_ty {
                GgmlType::Q8_1 => 2,
                _ => 1,
            },
            w: job.w,
            w_row,
            w_block_bytes: ty.type_size(),
            n_rows: job.n_rows,
            out_ptr: OutPtr(job.out.as_mut_ptr()),
        });
    }
    let Some(act_ty) = act_ty0 else {
        return Ok(());
    };
    if n_tokens == 0 || total_rows == 0 {
        return Ok(());
    }
    let a_row = row_bytes(act_ty, n_cols)?;
    let prepared = &prepared;
    pool.for_each_chunk(total_rows, MIN_ROWS_PER_TASK, move |range| {
        // Split the range over the concatenated rows at matrix boundaries.
        let mut first = 0usize;
        for p in prepared.iter().flatten() {
            let (lo, hi) = (first, first + p.n_rows);
            first = hi;
            let start = range.start.max(lo);
            let end = range.end.min(hi);
            if start < end {
                run_rows(p, (start - lo)..(end - lo), act, a_row, n_cols, n_tokens);
            }
        }
    });
    Ok(())
}

/// The rows `rows` of one job, for every token.
fn run_rows(
    p: &Prepared<'_>,
    rows: std::ops::Range<usize>,
    act: &[u8],
    a_row: usize,
    n_cols: usize,
    n_tokens: usize,
) {
    let (dot, dot4, dot2x4, dot4x4, dot_pre) = (p.dot, p.dot4, p.dot2x4, p.dot4x4, p.dot_pre);
    let (w, w_row, n_rows, act_block_bytes) = (p.w, p.w_row, p.n_rows, p.act_block_bytes);
    let out_ptr = p.out_ptr;
    let put = |t: usize, r: usize, v: f32| {
        // SAFETY: t < n_tokens and r < n_rows, so t * n_rows + r < o_len == out.len();
        // row r belongs to this task alone, so no other thread writes this element, and
        // `out` stays mutably borrowed until for_each_chunk returns.
        unsafe { *out_ptr.0.add(t * n_rows + r) = v };
    };
    let act_row = |t: usize| &act[t * a_row..(t + 1) * a_row];
    // Prompt batches of K-quant rows: whole groups of four rows through the packed tile.
    let mut rows = rows;
    if let Some(tile) = &p.packed {
        rows.start = crate::packed::run_rows(
            tile,
            (dot, n_cols),
            (w, w_row, p.w_block_bytes),
            rows.clone(),
            n_tokens,
            act_row,
            put,
        );
    }
    // Blocks of tokens whose activations stay in L1 while this task's weight rows pass.
    for t0 in (0..n_tokens).step_by(TOKEN_BLOCK) {
        let t1 = (t0 + TOKEN_BLOCK).min(n_tokens);
        let mut r = rows.start;
        // Tiles of R weight rows × 4 tokens: the largest the table has first.
        macro_rules! tiles {
            ($tile:expr, $rr:literal) => {
                while r + $rr <= rows.end && t1 - t0 >= 4 {
                    let wr: [&[u8]; $rr] =
                        std::array::from_fn(|i| &w[(r + i) * w_row..(r + i + 1) * w_row]);
                    let mut t = t0;
                    while t + 4 <= t1 {
                        let v = $tile(n_cols, wr, std::array::from_fn(|j| act_row(t + j)));
                        for (i, vi) in v.into_iter().enumerate() {
                            for (j, vj) in vi.into_iter().enumerate() {
                                put(t + j, r + i, vj);
                            }
                        }
                        t += 4;
                    }
                    for t in t..t1 {
                        for (i, w_i) in wr.iter().enumerate() {
                            put(t, r + i, dot(n_cols, w_i, act_row(t)));
                        }
                    }
                    r += $rr;
                }
            };
        }
        // Q5_0 rows rewritten as Q8_0 once per 4-row group and token block, then Q8_0's tile:
        // the unpacking is shared by the whole token block instead of one token quad.
        if let Some((conv, tile, one)) = p.via_q8_0 {
            let q8_row = w_row / p.w_block_bytes * GgmlType::Q8_0.type_size();
            if q8_row <= MAX_PREPARED_BLOCKS * GgmlType::Q8_0.type_size() && t1 - t0 >= 4 {
                let mut buf = [0u8; 4 * MAX_PREPARED_BLOCKS * 34];
                let conv_rows = |r: usize, buf: &mut [u8]| {
                    for i in 0..4 {
                        conv(
                            &w[(r + i) * w_row..(r + i + 1) * w_row],
                            &mut buf[i * q8_row..(i + 1) * q8_row],
                        );
                    }
                };
                while r + 4 <= rows.end {
                    conv_rows(r, &mut buf);
                    let wr: [&[u8]; 4] =
                        std::array::from_fn(|i| &buf[i * q8_row..(i + 1) * q8_row]);
                    let mut t = t0;
                    while t + 4 <= t1 {
                        let v = tile(n_cols, wr, std::array::from_fn(|j| act_row(t + j)));
                        for (i, vi) in v.into_iter().enumerate() {
                            for (j, vj) in vi.into_iter().enumerate() {
                                put(t + j, r + i, vj);
                            }
                        }
                        t += 4;
                    }
                    for t in t..t1 {
                        for (i, w_i) in wr.iter().enumerate() {
                            put(t, r + i, one(n_cols, w_i, act_row(t)));
                        }
                    }
                    r += 4;
                }
            }
        }
        if let Some(dot4x4) = dot4x4 {
            tiles!(dot4x4, 4);
        }
        if let Some(dot2x4) = dot2x4 {
            tiles!(dot2x4, 2);
        }
        // Decode shape (one token, Q8_0 activations): the activation's block scales are
        // converted to f32 once for all of this task's rows.
        // Q8_1 blocks lead with two F16 fields (d, s), Q8_0 blocks with one (d).
        if let (Some(dot_pre), true) = (dot_pre, t1 - t0 == 1) {
            let a = act_row(t0);
            let n_blocks = a.len() / act_block_bytes;
            let fields = p.act_scale_fields;
            if n_blocks <= MAX_PREPARED_BLOCKS && (1..=2).contains(&fields) {
                let mut scales = [0.0f32; 2 * MAX_PREPARED_BLOCKS];
                for (sc, b) in scales
                    .chunks_exact_mut(fields)
                    .zip(a.chunks_exact(act_block_bytes))
                {
                    for (f, s) in sc.iter_mut().enumerate() {
                        *s = crate::f16_to_f32(u16::from_le_bytes([b[2 * f], b[2 * f + 1]]));
                    }
                }
                let scales = &scales[..fields * n_blocks];
                if let Some(dot_pre_rows) = p.dot_pre_rows {
                    let n = rows.end - r;
                    // SAFETY: t0 < n_tokens and r + n <= n_rows, so the n elements from
                    // t0 * n_rows + r lie inside `out`; rows r.. belong to this task alone, and
                    // `out` stays mutably borrowed until for_each_chunk returns.
                    let o = unsafe {
                        std::slice::from_raw_parts_mut(out_ptr.0.add(t0 * n_rows + r), n)
                    };
                    dot_pre_rows(n_cols, &w[r * w_row..rows.end * w_row], a, scales, o);
                    continue;
                }
                for r in r..rows.end {
                    crate::arch::prefetch_row_ahead(w, r, w_row);
                    let w_r = &w[r * w_row..(r + 1) * w_row];
                    put(t0, r, dot_pre(n_cols, w_r, a, scales));
                }
                continue;
            }
        }
        for r in r..rows.end {
            if t1 - t0 == 1 {
                // Decode: each row is read once; ask for a later one meanwhile.
                crate::arch::prefetch_row_ahead(w, r, w_row);
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::lcg;

    /// Prompt batches through every tile path (4 × 4, Q5_0 rewritten as Q8_0, 2 × 4, 1 × 4, and
    /// the leftover rows and tokens): each element equals the table's single-row dot bit for bit.
    #[test]
    fn batch_tiles_equal_single_dots() {
        let pool = ThreadPool::new(2).expect("pool");
        let k = kernels();
        let mut s = 11u64;
        let n_cols = 160;
        for ty in [GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4_1] {
            let act_ty = k.vec_dot_type(ty).expect("act");
            for (n_rows, n_tokens) in [(23usize, 37usize), (8, 4), (5, 70)] {
                let x: Vec<f32> = (0..n_tokens * n_cols)
                    .map(|_| (lcg(&mut s) as f32 / (1u64 << 31) as f32 - 0.5) * 2.0)
                    .collect();
                let mut act = Vec::new();
                quantize_activations(act_ty, &x, n_tokens, n_cols, &mut act).expect("q");
                let wr = row_bytes(ty, n_cols).expect("rb");
                let mut w: Vec<u8> = (0..n_rows * wr).map(|_| lcg(&mut s) as u8).collect();
                for b in w.chunks_exact_mut(ty.type_size()) {
                    let d = (lcg(&mut s) as f32 / (1u64 << 31) as f32) * 0.01;
                    b[0..2].copy_from_slice(&crate::f32_to_f16(d).to_le_bytes());
                    if ty == GgmlType::Q4_1 {
                        b[2..4].copy_from_slice(&crate::f32_to_f16(-d).to_le_bytes());
                    }
                }
                let mut out = vec![0.0f32; n_tokens * n_rows];
                matmul(&pool, ty, &w, n_rows, n_cols, &act, n_tokens, &mut out).expect("mm");
                let ar = row_bytes(act_ty, n_cols).expect("ar");
                for t in 0..n_tokens {
                    for r in 0..n_rows {
                        let want = k
                            .vec_dot(
                                ty,
                                n_cols,
                                &w[r * wr..(r + 1) * wr],
                                &act[t * ar..(t + 1) * ar],
                            )
                            .expect("dot");
                        assert_eq!(
                            out[t * n_rows + r].to_bits(),
                            want.to_bits(),
                            "{ty} {n_rows}x{n_tokens}: token {t} row {r}"
                        );
                    }
                }
            }
        }
    }

    /// Q5_0 rows rewritten as Q8_0: the table's form writes the scalar reference's bytes, and
    /// the rewritten row dequantizes to the same values.
    #[test]
    fn q5_0_to_q8_0_is_exact() {
        let mut s = 3u64;
        let n = 96;
        let src: Vec<u8> = (0..row_bytes(GgmlType::Q5_0, n).expect("rb"))
            .map(|_| lcg(&mut s) as u8)
            .collect();
        let mut src = src;
        for b in src.chunks_exact_mut(22) {
            b[0..2].copy_from_slice(&crate::f32_to_f16(0.25).to_le_bytes());
        }
        let q8 = row_bytes(GgmlType::Q8_0, n).expect("rb");
        let scalar = crate::Kernels::scalar();
        let mut a = vec![0u8; q8];
        let mut b = vec![1u8; q8];
        (scalar
            .row(GgmlType::Q5_0, "to_q8_0")
            .expect("row")
            .to_q8_0
            .expect("scalar"))(&src, &mut a);
        let conv = kernels()
            .row(GgmlType::Q5_0, "to_q8_0")
            .expect("row")
            .to_q8_0
            .expect("table");
        conv(&src, &mut b);
        assert_eq!(a, b);
        let (mut f5, mut f8) = (vec![0.0f32; n], vec![0.0f32; n]);
        crate::dequantize_row(GgmlType::Q5_0, &src, &mut f5).expect("dq5");
        crate::dequantize_row(GgmlType::Q8_0, &a, &mut f8).expect("dq8");
        assert_eq!(f5, f8);
    }

    /// Q4_1, Q5_1 (both with Q8_1 activations) and Q8_0 weights: `matmul_many` gives each job
    /// exactly what `matmul` gives it alone, for decode and batch shapes; mixed activation
    /// types are refused.
    #[test]
    fn many_equals_one_by_one() {
        let pool = ThreadPool::new(2).expect("pool");
        let mut s = 5u64;
        let n_cols = 96;
        for n_tokens in [1usize, 3, 9] {
            let x: Vec<f32> = (0..n_tokens * n_cols)
                .map(|_| (lcg(&mut s) as f32 / (1u64 << 31) as f32 - 0.5) * 2.0)
                .collect();
            let mut act = Vec::new();
            quantize_activations(GgmlType::Q8_1, &x, n_tokens, n_cols, &mut act).expect("q");
            let mut weights = Vec::new();
            for (ty, n_rows) in [(GgmlType::Q4_1, 37usize), (GgmlType::Q5_1, 21)] {
                let mut w: Vec<u8> = (0..n_rows * row_bytes(ty, n_cols).expect("rb"))
                    .map(|_| lcg(&mut s) as u8)
                    .collect();
                for b in w.chunks_exact_mut(ty.type_size()) {
                    let d = (lcg(&mut s) as f32 / (1u64 << 31) as f32) * 0.01;
                    b[0..2].copy_from_slice(&crate::f32_to_f16(d).to_le_bytes());
                    b[2..4].copy_from_slice(&crate::f32_to_f16(-d).to_le_bytes());
                }
                weights.push((ty, n_rows, w));
            }
            let mut alone: Vec<Vec<f32>> = Vec::new();
            for (ty, n_rows, w) in &weights {
                let mut out = vec![0.0f32; n_tokens * n_rows];
                matmul(&pool, *ty, w, *n_rows, n_cols, &act, n_tokens, &mut out).expect("mm");
                alone.push(out);
            }
            let mut o0 = vec![0.0f32; n_tokens * weights[0].1];
            let mut o1 = vec![0.0f32; n_tokens * weights[1].1];
            let mut jobs = [
                MatmulJob {
                    ty: weights[0].0,
                    w: &weights[0].2,
                    n_rows: weights[0].1,
                    out: &mut o0,
                },
                MatmulJob {
                    ty: weights[1].0,
                    w: &weights[1].2,
                    n_rows: weights[1].1,
                    out: &mut o1,
                },
            ];
            matmul_many(&pool, &mut jobs, n_cols, &act, n_tokens).expect("many");
            assert_eq!(o0, alone[0], "n_tokens={n_tokens}");
            assert_eq!(o1, alone[1], "n_tokens={n_tokens}");
            // Q8_0 weights want Q8_0 activations: mixing them is an error, not a wrong result.
            let w8 = vec![0u8; 4 * row_bytes(GgmlType::Q8_0, n_cols).expect("rb")];
            let mut o8 = vec![0.0f32; n_tokens * 4];
            let mut o0b = vec![0.0f32; n_tokens * weights[0].1];
            let mut mixed = [
                MatmulJob {
                    ty: weights[0].0,
                    w: &weights[0].2,
                    n_rows: weights[0].1,
                    out: &mut o0b,
                },
                MatmulJob {
                    ty: GgmlType::Q8_0,
                    w: &w8,
                    n_rows: 4,
                    out: &mut o8,
                },
            ];
            assert!(matches!(
                matmul_many(&pool, &mut mixed, n_cols, &act, n_tokens),
                Err(KernelError::ActivationTypeMismatch { .. })
            ));
        }
    }
}
