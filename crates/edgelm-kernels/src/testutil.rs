//! Deterministic pseudo-random inputs shared by the unit tests (one LCG, two views of it).

/// Advances the LCG and returns its top 31 bits.
pub(crate) fn lcg(s: &mut u64) -> u64 {
    *s = s
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *s >> 33
}

/// `n` values uniform in `[-scale, scale)` from the LCG state `seed` (24-bit mantissas).
pub(crate) fn rand_vec(n: usize, scale: f32, seed: &mut u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * scale
        })
        .collect()
}
