//! Architecture-specific kernels, reached only through the dispatch table.

// Little-endian only: the kernels read the blocks' multi-byte fields in place.
#[cfg(all(target_arch = "aarch64", target_endian = "little"))]
pub(crate) mod aarch64;
#[cfg(test)]
pub(crate) mod lane_model;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_64;

/// How many rows ahead the one-token (decode) loops prefetch their weights: 2, 4 and 8 were
/// measured, 4 kept (docs/performance.md, "What was tried").
pub(crate) const PREFETCH_ROWS: usize = 4;

/// Asks the cache for row `r + PREFETCH_ROWS` of `rows` (rows of `row_len` elements each, the
/// caller about to sum row `r`), if there is one: a hint with no effect on any result. Decode
/// streams the weights once per token, and on the x86 VMs measured here the hardware
/// prefetcher alone left ~25 % of the read bandwidth unused. Elsewhere it does nothing.
#[inline(always)]
pub(crate) fn prefetch_row_ahead<T>(rows: &[T], r: usize, row_len: usize) {
    let ahead = r + PREFETCH_ROWS;
    let Some(row) = rows.get(ahead * row_len..(ahead + 1) * row_len) else {
        return;
    };
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = row.as_ptr().cast::<i8>();
        let n = std::mem::size_of_val(row);
        let mut off = 0;
        while off < n {
            // SAFETY: `off < n`, so the address lies inside `row`; a prefetch reads nothing
            // architecturally and SSE is part of the x86-64 baseline.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.add(off)) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}
