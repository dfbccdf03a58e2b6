//! Block formats, one file per ggml type. Each file holds the `#[repr(C)]` block (the layout
//! *is* the file format, mirrored from ggml's `ggml-common.h`, with a `const` size assertion),
//! the scalar `dequantize_row` that defines the format (bit-exact with ggml's
//! `dequantize_row_*`), and the scalar reference dot product with the same integer sums and
//! scale combination as ggml's `ggml_vec_dot_*_generic`.
//!
//! Half-precision fields are stored as `[u8; 2]` (little-endian f16 bits) rather than `u16`, so
//! every block has alignment 1 and can be viewed in place over any byte slice (mmapped tensor
//! data has no alignment guarantee) with `bytemuck`, without `unsafe`.

// The loops index several arrays in lockstep exactly as ggml's C does, which keeps them easy to
// check against the reference line by line.
#![allow(clippy::needless_range_loop)]

pub mod bf16;
pub mod f16;
pub mod f32;
pub mod q2_k;
pub mod q3_k;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_0;
pub mod q5_1;
pub mod q5_k;
pub mod q6_k;
pub mod q8_0;
pub mod q8_1;
pub mod q8_k;

pub use q2_k::BlockQ2K;
pub use q3_k::BlockQ3K;
pub use q4_0::BlockQ4_0;
pub use q4_1::BlockQ4_1;
pub use q4_k::BlockQ4K;
pub use q5_0::BlockQ5_0;
pub use q5_1::BlockQ5_1;
pub use q5_k::BlockQ5K;
pub use q6_k::BlockQ6K;
pub use q8_0::BlockQ8_0;
pub use q8_1::BlockQ8_1;
pub use q8_k::BlockQ8K;

/// Elements per super-block of the K-quants.
pub const QK_K: usize = 256;

/// Reads a little-endian f16 field.
#[inline(always)]
pub(crate) fn f16le(b: [u8; 2]) -> f32 {
    crate::convert::f16_to_f32(u16::from_le_bytes(b))
}

/// `x.round_ties_even()` for |x| < 2²² (and ±inf, NaN), without a libm call (x86-64's baseline
/// has no `roundss`): adding and subtracting 1.5·2²³ rounds to an integer, ties to even. No
/// branch, so loops over it vectorise (a fallback call would be made for every element).
/// Activation quantizers only pass |x| <= 128; larger finite inputs would be off by at most 1,
/// which their clamp to [-128, 127] hides.
#[inline(always)]
pub(crate) fn round_ties_even(x: f32) -> f32 {
    const M: f32 = 12_582_912.0;
    (x + M) - M
}

/// Encodes an f32 as a little-endian f16 field (round to nearest even).
#[inline(always)]
pub(crate) fn to_f16le(x: f32) -> [u8; 2] {
    crate::convert::f32_to_f16(x).to_le_bytes()
}

/// ggml's `nearest_int`: round to nearest, ties to even, via the 1.5·2^23 magic number.
/// Valid for |x| <= 4194303 (as ggml asserts); outside that ggml's result is garbage, ours is
/// the same bit trick, so the two agree everywhere.
#[inline(always)]
pub(crate) fn nearest_int(x: f32) -> i32 {
    let val = x + 12_582_912.0;
    (val.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K
/// super-block.
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Views a byte slice as blocks. Callers have checked that `bytes.len()` is a multiple of the
/// block size; the blocks have alignment 1 so the cast cannot fail otherwise.
#[inline(always)]
pub(crate) fn blocks<B: bytemuck::Pod>(bytes: &[u8]) -> &[B] {
    bytemuck::cast_slice(bytes)
}

/// Mutable twin of [`blocks`].
#[inline(always)]
pub(crate) fn blocks_mut<B: bytemuck::Pod>(bytes: &mut [u8]) -> &mut [B] {
    bytemuck::cast_slice_mut(bytes)
}

#[cfg(test)]
mod round_tests {
    #[test]
    fn fast_round_ties_even_matches_std() {
        let mut x = -300.0f32;
        while x < 300.0 {
            for v in [x, x + 0.5, -x - 0.5, f32::from_bits(x.to_bits() + 1)] {
                assert_eq!(super::round_ties_even(v), v.round_ties_even(), "{v}");
            }
            x += 0.173;
        }
        for v in [
            0.5f32,
            1.5,
            2.5,
            -0.5,
            -2.5,
            4_194_303.5,
            5e6,
            f32::INFINITY,
        ] {
            assert_eq!(super::round_ties_even(v), v.round_ties_even(), "{v}");
        }
        assert!(super::round_ties_even(f32::NAN).is_nan());
    }
}
