//! Prompt batches through a packed 4 × 4 tile ([`PackedTile`]): each group of four weight rows
//! is rewritten once per token block into a per-thread scratch buffer (allocated on a thread's
//! first use, then reused), then multiplied with the block's tokens four at a time.

use std::cell::RefCell;
use std::ops::Range;

use crate::dispatch::{PackedTile, VecDotFn};

thread_local! {
    /// This thread's packed rows (64 bytes of slack to align the start to a cache line).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Bytes of activations multiplied with each packed group of rows before the next block of
/// tokens (they stay in L2 while the groups pass; more tokens per pack amortize the packing).
const ACT_BYTES_PER_PACK: usize = 256 * 1024;

/// The weight rows `rows` (`w`: rows of `w_row` bytes, blocks of `w_block_bytes`) × every
/// token, in whole groups of four rows: `put(t, row, value)` for each. Tokens past the last
/// whole quad go through `one` (the row's vector dot) on the unpacked rows. Returns the first
/// row not done (`rows.start` when there are fewer than four tokens).
pub(crate) fn run_rows<'a>(
    tile: &PackedTile,
    (one, n_cols): (VecDotFn, usize),
    (w, w_row, w_block_bytes): (&[u8], usize, usize),
    rows: Range<usize>,
    n_tokens: usize,
    act_row: impl Fn(usize) -> &'a [u8],
    put: impl Fn(usize, usize, f32),
) -> usize {
    let n_groups = (rows.end - rows.start) / 4;
    if n_tokens < 4 || n_groups == 0 || w_block_bytes == 0 {
        return rows.start;
    }
    let len = w_row / w_block_bytes * tile.block_bytes;
    SCRATCH.with(|cell| {
        let Ok(mut buf) = cell.try_borrow_mut() else {
            return rows.start; // not re-entered in practice; the caller's other paths run
        };
        if buf.len() < len + 64 {
            buf.resize(len + 64, 0);
        }
        let off = buf.as_ptr().align_offset(64);
        let off = if off < 64 { off } else { 0 };
        let packed = &mut buf[off..off + len];
        let quads_end = n_tokens / 4 * 4;
        let per_pack = (ACT_BYTES_PER_PACK / act_row(0).len().max(1)).max(4) / 4 * 4;
        for t0 in (0..quads_end).step_by(per_pack) {
            let t1 = (t0 + per_pack).min(quads_end);
            for g in 0..n_groups {
                let r0 = rows.start + 4 * g;
                let wr: [&[u8]; 4] =
                    std::array::from_fn(|i| &w[(r0 + i) * w_row..(r0 + i + 1) * w_row]);
                (tile.pack)(wr, packed);
                for t in (t0..t1).step_by(4) {
                    let v = (tile.dot)(packed, std::array::from_fn(|j| act_row(t + j)));
                    for (i, vi) in v.into_iter().enumerate() {
                        for (j, vj) in vi.into_iter().enumerate() {
                            put(t + j, r0 + i, vj);
                        }
                    }
                }
                if t1 == quads_end {
                    for t in quads_end..n_tokens {
                        for (i, w_i) in wr.iter().enumerate() {
                            put(t, r0 + i, one(n_cols, w_i, act_row(t)));
                        }
                    }
                }
            }
        }
        rows.start + 4 * n_groups
    })
}

#[cfg(test)]
mod tests {
    use crate::testutil::lcg;
    use crate::{kernels, matmul, quantize_activations, row_bytes, GgmlType, ThreadPool};

    /// K-quant prompt batches (Q4_K, Q6_K, Q5_K, Q2_K, Q3_K; the packed tile where the table
    /// has one, and every tail: rows % 4, tokens % 4, fewer than 4 tokens, more tokens than one
    /// pack takes): each element equals the table's single-row dot bit for bit.
    #[test]
    fn packed_batches_equal_single_dots() {
        let k = kernels();
        let mut s = 17u64;
        let n_cols = 512;
        for threads in [1usize, 2] {
            let pool = ThreadPool::new(threads).expect("pool");
            for ty in [
                GgmlType::Q4_K,
                GgmlType::Q6_K,
                GgmlType::Q5_K,
                GgmlType::Q2_K,
                GgmlType::Q3_K,
            ] {
                let act_ty = k.vec_dot_type(ty).expect("act");
                for (n_rows, n_tokens) in [
                    (23usize, 37usize),
                    (8, 4),
                    (5, 70),
                    (4, 3),
                    (18, 1),
                    (36, 66),
                    (6, 903), // more tokens than one pack takes (448 at 512 columns)
                ] {
                    let x: Vec<f32> = (0..n_tokens * n_cols)
                        .map(|_| (lcg(&mut s) as f32 / (1u64 << 31) as f32 - 0.5) * 2.0)
                        .collect();
                    let mut act = Vec::new();
                    quantize_activations(act_ty, &x, n_tokens, n_cols, &mut act).expect("q");
                    let wr = row_bytes(ty, n_cols).expect("rb");
                    let mut w: Vec<u8> = (0..n_rows * wr).map(|_| lcg(&mut s) as u8).collect();
                    let ts = ty.type_size();
                    for b in w.chunks_exact_mut(ts) {
                        let offsets: &[usize] = if ty == GgmlType::Q2_K {
                            &[ts - 4, ts - 2]
                        } else if ty == GgmlType::Q3_K {
                            &[ts - 2]
                        } else if ty != GgmlType::Q6_K {
                            &[0, 2]
                        } else {
                            &[ts - 2]
                        };
                        for &o in offsets {
                            let d = (lcg(&mut s) as f32 / (1u64 << 31) as f32) * 0.01;
                            b[o..o + 2].copy_from_slice(&crate::f32_to_f16(d).to_le_bytes());
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
                                "{ty} {n_rows}x{n_tokens}, {threads} threads: token {t} row {r}"
                            );
                        }
                    }
                }
            }
        }
    }
}
