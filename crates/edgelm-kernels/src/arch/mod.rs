//! Architecture-specific kernels, reached only through the dispatch table.

// Little-endian only: the kernels read the blocks' multi-byte fields in place.
#[cfg(all(target_arch = "aarch64", target_endian = "little"))]
pub(crate) mod aarch64;
#[cfg(test)]
pub(crate) mod lane_model;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_64;

/// Asks the cache to fetch `bytes` (a weight row the caller reads next but one) while the
/// current row is summed: a hint with no effect on any result. Decode streams the weights
/// once per token, and on the x86 VMs measured here the hardware prefetcher alone leaves
/// ~25 % of the read bandwidth unused (docs/performance.md). Elsewhere it does nothing.
#[inline(always)]
pub(crate) fn prefetch<T>(bytes: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = bytes.as_ptr().cast::<i8>();
        let n = std::mem::size_of_val(bytes);
        let mut off = 0;
        while off < n {
            // SAFETY: `off < n`, so the address lies inside `bytes`; a prefetch reads nothing
            // architecturally and SSE is part of the x86-64 baseline.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.add(off)) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}
