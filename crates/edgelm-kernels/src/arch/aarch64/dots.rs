//! Quantized dot products with NEON, compiled twice from one source (the `dot_kernels!` macro):
//! module [`plain`] sums 8-bit products with widening multiplies (`smull` + pairwise adds), which
//! every aarch64 CPU has, and module [`sdot`] with the `dotprod` extension's `SDOT`. Both give
//! the same exact 32-bit integers in the same lanes, so the two tables agree bit for bit.
//!
//! Lane layout: a block's 32 products are summed four adjacent at a time into 8 i32 lanes
//! (two `int32x4_t`), exactly the lanes of the AVX2 kernels' `maddubs` + `madd` pair. The f32
//! arithmetic after that is the AVX2 kernels' (see `arch::x86_64`): one fused multiply-add per
//! lane and block into an 8-lane accumulator, then ggml's `hsum_float_8` pairing — so for
//! Q8_0, Q4_1, Q5_0, Q4_K and Q6_K weights the results equal the x86-64 table's bit for bit.
//! Q4_0 and Q5_1 have no AVX2 kernel (x86-64 runs the scalar reference for them); their NEON
//! kernels compute each block's integer sum with SIMD and then combine the blocks with the
//! scalar reference's own f32 expression, so they equal the reference bit for bit.

use std::arch::aarch64::*;
use std::arch::asm;

use crate::quant::{BlockQ5_0, BlockQ8_0};

/// `acc[l] + sum(a[4l..4l+4] * b[4l..4l+4])` for l in 0..4, with widening multiplies: the
/// i8 × i8 products fit i16 exactly, pairwise sums widen to i32, so the lanes are exact.
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn dot4_neon(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let lo = vpaddlq_s16(vmull_s8(vget_low_s8(a), vget_low_s8(b)));
    let hi = vpaddlq_s16(vmull_high_s8(a, b));
    vaddq_s32(acc, vpaddq_s32(lo, hi))
}

/// The same four lanes with one `SDOT` (exact: 32-bit accumulation of the 8-bit products).
#[inline]
#[target_feature(enable = "neon,dotprod")]
pub(super) fn dot4_sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: a register-only instruction of the `dotprod` extension, which this function's
    // callers have (it is enabled on this function and only called from functions that
    // enable it too, installed after `is_aarch64_feature_detected!("dotprod")`).
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// Four F16 values (bits) as f32 (`FCVTL`, base Advanced SIMD; exact). Written in assembly
/// because the F16 vector types of `std::arch` are newer than the crate's minimum Rust.
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn cvt_f16x4_f32(h: uint16x4_t) -> float32x4_t {
    let out: float32x4_t;
    // SAFETY: a register-only base Advanced SIMD instruction.
    unsafe {
        asm!(
            "fcvtl {o:v}.4s, {i:v}.4h",
            o = lateout(vreg) out,
            i = in(vreg) h,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    out
}

/// The upper four F16 values of eight as f32 (`FCVTL2`; exact).
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn cvt_high_f16x8_f32(h: uint16x8_t) -> float32x4_t {
    let out: float32x4_t;
    // SAFETY: a register-only base Advanced SIMD instruction.
    unsafe {
        asm!(
            "fcvtl2 {o:v}.4s, {i:v}.8h",
            o = lateout(vreg) out,
            i = in(vreg) h,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    out
}

/// Eight f32 values as F16 bits (`FCVTN` + `FCVTN2`: round to nearest even under the default
/// FPCR, as F16C's `vcvtps2ph` and the software conversion).
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn cvt_f32x8_f16(lo: float32x4_t, hi: float32x4_t) -> uint16x8_t {
    let out: uint16x8_t;
    // SAFETY: register-only base Advanced SIMD instructions.
    unsafe {
        asm!(
            "fcvtn {o:v}.4h, {lo:v}.4s",
            "fcvtn2 {o:v}.8h, {hi:v}.4s",
            o = out(vreg) out,
            lo = in(vreg) lo,
            hi = in(vreg) hi,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    out
}

/// An F16 field (little-endian bits) as f32, with the hardware conversion (exact).
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn f16s(b: [u8; 2]) -> f32 {
    vgetq_lane_f32::<0>(cvt_f16x4_f32(vdup_n_u16(u16::from_le_bytes(b))))
}

/// Two 16-byte halves of a 32-byte array.
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn load32_i8(p: &[i8; 32]) -> [int8x16_t; 2] {
    // SAFETY: 32 readable bytes, two unaligned 16-byte loads.
    unsafe { [vld1q_s8(p.as_ptr()), vld1q_s8(p.as_ptr().add(16))] }
}

/// 16 bytes of `p` from `offset` (checked).
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn load16_at(p: &[u8], offset: usize) -> uint8x16_t {
    assert!(offset + 16 <= p.len());
    // SAFETY: offset + 16 <= len (checked above), one unaligned 16-byte load.
    unsafe { vld1q_u8(p.as_ptr().add(offset)) }
}

/// 16 signed bytes of `p` from `offset` (checked).
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn load16_i8_at(p: &[i8], offset: usize) -> int8x16_t {
    assert!(offset + 16 <= p.len());
    // SAFETY: offset + 16 <= len (checked above), one unaligned 16-byte load.
    unsafe { vld1q_s8(p.as_ptr().add(offset)) }
}

/// The 16 little-endian i16 `bsums` of a Q8_K block as two vectors.
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn load_bsums(b: &[[u8; 2]; 16]) -> [int16x8_t; 2] {
    let p: *const i16 = b.as_ptr().cast();
    // SAFETY: 32 readable bytes (16 two-byte fields); `vld1q_s16` has no alignment
    // requirement beyond the element's, and aarch64 allows unaligned element access.
    unsafe { [vld1q_s16(p), vld1q_s16(p.add(8))] }
}

/// ggml's `hsum_float_8` on lanes 0..4 (`v[0]`) and 4..8 (`v[1]`): (hi + lo) halves, then
/// (0+2, 1+3), then the two.
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn hsum_float_8(v: [float32x4_t; 2]) -> f32 {
    let s = vaddq_f32(v[1], v[0]);
    let t = vadd_f32(vget_low_f32(s), vget_high_f32(s));
    vget_lane_f32::<0>(t) + vget_lane_f32::<1>(t)
}

/// The 4-lane reduction of ggml's Q4_K `acc_m`: (0+2, 1+3), then the two.
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn hsum_float_4(v: float32x4_t) -> f32 {
    let t = vadd_f32(vget_low_f32(v), vget_high_f32(v));
    vget_lane_f32::<0>(t) + vget_lane_f32::<1>(t)
}

/// Byte k of the result is 0xFF where bit k of `bits` is set (k in 0..16).
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn bytes_from_bits_16(bits: u16) -> uint8x16_t {
    let b = vcombine_u8(vdup_n_u8(bits as u8), vdup_n_u8((bits >> 8) as u8));
    vtstq_u8(b, vreinterpretq_u8_u64(vdupq_n_u64(0x8040_2010_0804_0201)))
}

/// The low nibbles (elements 0..16) and high nibbles (16..32) of a 16-byte array.
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn nibbles(qs: &[u8; 16]) -> [uint8x16_t; 2] {
    // SAFETY: 16 readable bytes, one unaligned load.
    let v = unsafe { vld1q_u8(qs.as_ptr()) };
    [vandq_u8(v, vdupq_n_u8(0x0F)), vshrq_n_u8::<4>(v)]
}

/// A Q8_0 weight block as 32 signed bytes and its scale.
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn unpack_q8_0(b: &BlockQ8_0) -> ([int8x16_t; 2], f32) {
    (load32_i8(&b.qs), f16s(b.d))
}

/// A Q5_0 weight block as 32 signed bytes (-16..15, as ggml's AVX2 kernel builds them:
/// `nibble | (fifth bit ? 0 : 0xF0)`) and its scale.
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn unpack_q5_0(b: &BlockQ5_0) -> ([int8x16_t; 2], f32) {
    let qh = u32::from_le_bytes(b.qh);
    let [lo, hi] = nibbles(&b.qs);
    let f0 = vdupq_n_u8(0xF0);
    let lo = vorrq_u8(lo, vbicq_u8(f0, bytes_from_bits_16(qh as u16)));
    let hi = vorrq_u8(hi, vbicq_u8(f0, bytes_from_bits_16((qh >> 16) as u16)));
    (
        [vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi)],
        f16s(b.d),
    )
}

/// Signed-byte weights (Q8_0, Q5_0, unpacked by `$unpack`) × Q8_0 activations, `R`
/// weight rows × `N` activation rows; `ad`, when given, holds the activation's block
/// scales in f32 (only with `N == 1`). Every result is computed as the single-row
/// kernel computes it: its own 8-lane accumulator, `fma(d_w * d_a, lanes, acc)` per
/// block in order, `hsum_float_8`.
macro_rules! i8w_body {
    ($xs:expr, $ys:expr, $ad:expr, $unpack:ident, $r:expr, $n:expr, $dot:ident) => {{
        let z = vdupq_n_f32(0.0);
        let zi = vdupq_n_s32(0);
        let mut acc = [[[z; 2]; $n]; $r];
        for ib in 0..$xs[0].len() {
            let mut qx = [[vdupq_n_s8(0); 2]; $r];
            let mut dx = [0.0f32; $r];
            for r in 0..$r {
                (qx[r], dx[r]) = $unpack(&$xs[r][ib]);
            }
            for j in 0..$n {
                let yb = &$ys[j][ib];
                let dy = match $ad {
                    Some(ad) => ad[ib],
                    None => f16s(yb.d),
                };
                let qy = load32_i8(&yb.qs);
                for r in 0..$r {
                    let d = dx[r] * dy;
                    let lo = $dot(zi, qx[r][0], qy[0]);
                    let hi = $dot(zi, qx[r][1], qy[1]);
                    acc[r][j][0] = vfmaq_n_f32(acc[r][j][0], vcvtq_f32_s32(lo), d);
                    acc[r][j][1] = vfmaq_n_f32(acc[r][j][1], vcvtq_f32_s32(hi), d);
                }
            }
        }
        let mut out = [[0.0f32; $n]; $r];
        for r in 0..$r {
            for j in 0..$n {
                out[r][j] = hsum_float_8(acc[r][j]);
            }
        }
        out
    }};
}

/// Table entries: each views the bytes as blocks, checks the counts and calls the
/// kernel, which `fill` installed only where the CPU has `$features`.
macro_rules! entries {
    ($what:literal, $one:ident, $four:ident, $two4:ident, $rows:ident, $wb:ty, $ab:ty) => {
        #[doc = concat!("Table entry (", $what, "): one weight row × one activation row.")]
        pub(in super::super) fn $one(_n: usize, w: &[u8], a: &[u8]) -> f32 {
            let (x, y): (&[$wb], &[$ab]) = (blocks(w), blocks(a));
            assert_eq!(x.len(), y.len(), "vec_dot: block counts differ");
            // SAFETY: installed only after the features were detected; lengths
            // checked above.
            unsafe { $rows::<1, 1>([x], [y])[0][0] }
        }

        #[doc = concat!("Table entry (", $what, "): one weight row × four activation rows.")]
        pub(in super::super) fn $four(_n: usize, w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
            let x: &[$wb] = blocks(w);
            let ys = blocks4::<$ab>(a, x.len());
            // SAFETY: as above.
            unsafe { $rows::<1, 4>([x], ys)[0] }
        }

        #[doc = concat!("Table entry (", $what, "): two weight rows × four activation rows.")]
        pub(in super::super) fn $two4(_n: usize, w: [&[u8]; 2], a: [&[u8]; 4]) -> [[f32; 4]; 2] {
            let xs = blocks_n::<$wb, 2>(w);
            let ys = blocks4::<$ab>(a, xs[0].len());
            // SAFETY: as above.
            unsafe { $rows::<2, 4>(xs, ys) }
        }
    };
}

macro_rules! entries_n {
    ($what:literal, $one:ident, $four:ident, $rows:ident, $wb:ty, $ab:ty) => {
        #[doc = concat!("Table entry (", $what, "): one weight row × one activation row.")]
        pub(in super::super) fn $one(_n: usize, w: &[u8], a: &[u8]) -> f32 {
            let (x, y): (&[$wb], &[$ab]) = (blocks(w), blocks(a));
            assert_eq!(x.len(), y.len(), "vec_dot: block counts differ");
            // SAFETY: installed only after the features were detected; lengths
            // checked above.
            unsafe { $rows::<1>(x, [y])[0] }
        }

        #[doc = concat!("Table entry (", $what, "): one weight row × four activation rows.")]
        pub(in super::super) fn $four(_n: usize, w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
            let x: &[$wb] = blocks(w);
            let ys = blocks4::<$ab>(a, x.len());
            // SAFETY: as above.
            unsafe { $rows::<4>(x, ys) }
        }
    };
}

macro_rules! pre_entry {
    ($what:literal, $name:ident, $inner:ident, $wb:ty) => {
        #[doc = concat!("Table entry (", $what, "): one row with prepared activation scales.")]
        pub(in super::super) fn $name(_n: usize, w: &[u8], a: &[u8], ad: &[f32]) -> f32 {
            let (x, y): (&[$wb], &[BlockQ8_0]) = (blocks(w), blocks(a));
            assert!(
                x.len() == y.len() && y.len() == ad.len(),
                "vec_dot_pre: lengths differ"
            );
            // SAFETY: installed only after the features were detected; lengths
            // checked above.
            unsafe { $inner(x, y, ad) }
        }
    };
}

/// The kernels over a lane-sum function `$dot` (`dot4_neon` or `dot4_sdot`), with the target
/// features `$features` enabled.
macro_rules! dot_kernels {
    ($features:literal, $dot:ident, $what:literal) => {
        use std::arch::aarch64::*;

        use super::super::{blocks4, blocks_n};
        use super::*;
        use crate::dispatch::KernelRow;
        use crate::quant::{
            blocks, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8K,
            BlockQ8_0, BlockQ8_1,
        };
        use crate::GgmlType;

        /// Puts this module's kernels into a table row.
        pub(in super::super) fn fill(row: &mut KernelRow) {
            match row.ty {
                GgmlType::Q8_0 => {
                    row.vec_dot = Some(vec_dot_q8_0);
                    row.vec_dot4 = Some(vec_dot4_q8_0);
                    row.vec_dot2x4 = Some(vec_dot2x4_q8_0);
                    row.vec_dot_pre = Some(vec_dot_pre_q8_0);
                }
                GgmlType::Q5_0 => {
                    row.vec_dot = Some(vec_dot_q5_0);
                    row.vec_dot4 = Some(vec_dot4_q5_0);
                    row.vec_dot2x4 = Some(vec_dot2x4_q5_0);
                    row.vec_dot_pre = Some(vec_dot_pre_q5_0);
                }
                GgmlType::Q4_1 => {
                    row.vec_dot = Some(vec_dot_q4_1);
                    row.vec_dot4 = Some(vec_dot4_q4_1);
                    row.vec_dot2x4 = Some(vec_dot2x4_q4_1);
                }
                GgmlType::Q4_0 => {
                    row.vec_dot = Some(vec_dot_q4_0);
                    row.vec_dot4 = Some(vec_dot4_q4_0);
                }
                GgmlType::Q5_1 => {
                    row.vec_dot = Some(vec_dot_q5_1);
                    row.vec_dot4 = Some(vec_dot4_q5_1);
                }
                GgmlType::Q4_K => {
                    row.vec_dot = Some(vec_dot_q4_k);
                    row.vec_dot4 = Some(vec_dot4_q4_k);
                }
                GgmlType::Q6_K => {
                    row.vec_dot = Some(vec_dot_q6_k);
                    row.vec_dot4 = Some(vec_dot4_q6_k);
                }
                _ => {}
            }
        }

        /// # Safety
        /// The CPU must have the enabled features; every `xs[r]` and `ys[j]` as long as
        /// `xs[0]`.
        #[target_feature(enable = $features)]
        unsafe fn q8_0_rows<const R: usize, const N: usize>(
            xs: [&[BlockQ8_0]; R],
            ys: [&[BlockQ8_0]; N],
        ) -> [[f32; N]; R] {
            i8w_body!(xs, ys, None::<&[f32]>, unpack_q8_0, R, N, $dot)
        }

        /// # Safety
        /// As [`q8_0_rows`].
        #[target_feature(enable = $features)]
        unsafe fn q5_0_rows<const R: usize, const N: usize>(
            xs: [&[BlockQ5_0]; R],
            ys: [&[BlockQ8_0]; N],
        ) -> [[f32; N]; R] {
            i8w_body!(xs, ys, None::<&[f32]>, unpack_q5_0, R, N, $dot)
        }

        /// # Safety
        /// As [`q8_0_rows`]; `ad` as long as `x`.
        #[target_feature(enable = $features)]
        unsafe fn q8_0_pre(x: &[BlockQ8_0], y: &[BlockQ8_0], ad: &[f32]) -> f32 {
            i8w_body!([x], [y], Some(ad), unpack_q8_0, 1, 1, $dot)[0][0]
        }

        /// # Safety
        /// As [`q8_0_rows`]; `ad` as long as `x`.
        #[target_feature(enable = $features)]
        unsafe fn q5_0_pre(x: &[BlockQ5_0], y: &[BlockQ8_0], ad: &[f32]) -> f32 {
            i8w_body!([x], [y], Some(ad), unpack_q5_0, 1, 1, $dot)[0][0]
        }

        /// Q4_1 × Q8_1, `R` weight rows × `N` activation rows, each result as the AVX2
        /// kernel computes it: lanes of `nibble * q_a` into `fma(d_w * d_a, lanes, acc)`,
        /// the min term as a scalar chain `summs = fma(m_w, s_a, summs)`, then
        /// `hsum_float_8(acc) + summs`.
        ///
        /// # Safety
        /// As [`q8_0_rows`].
        #[target_feature(enable = $features)]
        unsafe fn q4_1_rows<const R: usize, const N: usize>(
            xs: [&[BlockQ4_1]; R],
            ys: [&[BlockQ8_1]; N],
        ) -> [[f32; N]; R] {
            let z = vdupq_n_f32(0.0);
            let zi = vdupq_n_s32(0);
            let mut acc = [[[z; 2]; N]; R];
            let mut summs = [[0.0f32; N]; R];
            for ib in 0..xs[0].len() {
                let mut qx = [[vdupq_n_s8(0); 2]; R];
                let mut dx = [0.0f32; R];
                let mut mx = [0.0f32; R];
                for r in 0..R {
                    let xb = &xs[r][ib];
                    let [lo, hi] = nibbles(&xb.qs);
                    qx[r] = [vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi)];
                    dx[r] = f16s(xb.d);
                    mx[r] = f16s(xb.m);
                }
                for j in 0..N {
                    let yb = &ys[j][ib];
                    let (dy, sy) = (f16s(yb.d), f16s(yb.s));
                    let qy = load32_i8(&yb.qs);
                    for r in 0..R {
                        summs[r][j] = mx[r].mul_add(sy, summs[r][j]);
                        let d = dx[r] * dy;
                        let lo = $dot(zi, qx[r][0], qy[0]);
                        let hi = $dot(zi, qx[r][1], qy[1]);
                        acc[r][j][0] = vfmaq_n_f32(acc[r][j][0], vcvtq_f32_s32(lo), d);
                        acc[r][j][1] = vfmaq_n_f32(acc[r][j][1], vcvtq_f32_s32(hi), d);
                    }
                }
            }
            let mut out = [[0.0f32; N]; R];
            for r in 0..R {
                for j in 0..N {
                    out[r][j] = hsum_float_8(acc[r][j]) + summs[r][j];
                }
            }
            out
        }

        /// Q4_0 × Q8_0 for `N` activation rows: each block's integer sum with SIMD, then the
        /// scalar reference's `sumf += sumi * d_w * d_a` (bit-identical to it).
        ///
        /// # Safety
        /// As [`q8_0_rows`].
        #[target_feature(enable = $features)]
        unsafe fn q4_0_rows<const N: usize>(x: &[BlockQ4_0], ys: [&[BlockQ8_0]; N]) -> [f32; N] {
            let zi = vdupq_n_s32(0);
            let mut sumf = [0.0f32; N];
            for (ib, xb) in x.iter().enumerate() {
                let [lo, hi] = nibbles(&xb.qs);
                let eight = vdupq_n_s8(8);
                let lo = vsubq_s8(vreinterpretq_s8_u8(lo), eight);
                let hi = vsubq_s8(vreinterpretq_s8_u8(hi), eight);
                let dx = f16s(xb.d);
                for j in 0..N {
                    let yb = &ys[j][ib];
                    let qy = load32_i8(&yb.qs);
                    let sumi = vaddvq_s32($dot($dot(zi, lo, qy[0]), hi, qy[1]));
                    sumf[j] += sumi as f32 * dx * f16s(yb.d);
                }
            }
            sumf
        }

        /// Q5_1 × Q8_1 for `N` activation rows: each block's integer sum with SIMD, then the
        /// scalar reference's `sumf += (d_w * d_a) * sumi + m_w * s_a` (bit-identical to it).
        ///
        /// # Safety
        /// As [`q8_0_rows`].
        #[target_feature(enable = $features)]
        unsafe fn q5_1_rows<const N: usize>(x: &[BlockQ5_1], ys: [&[BlockQ8_1]; N]) -> [f32; N] {
            let zi = vdupq_n_s32(0);
            let mut sumf = [0.0f32; N];
            for (ib, xb) in x.iter().enumerate() {
                let qh = u32::from_le_bytes(xb.qh);
                let [lo, hi] = nibbles(&xb.qs);
                let b4 = vdupq_n_u8(0x10);
                let lo = vorrq_u8(lo, vandq_u8(b4, bytes_from_bits_16(qh as u16)));
                let hi = vorrq_u8(hi, vandq_u8(b4, bytes_from_bits_16((qh >> 16) as u16)));
                let (lo, hi) = (vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi));
                let (dx, mx) = (f16s(xb.d), f16s(xb.m));
                for j in 0..N {
                    let yb = &ys[j][ib];
                    let qy = load32_i8(&yb.qs);
                    let sumi = vaddvq_s32($dot($dot(zi, lo, qy[0]), hi, qy[1]));
                    sumf[j] += (dx * f16s(yb.d)) * sumi as f32 + mx * f16s(yb.s);
                }
            }
            sumf
        }

        /// Q4_K × Q8_K for `N` activation rows, each result as ggml's AVX2 kernel computes
        /// it: lane `l` of the 8 integer lanes sums `scale * (4 adjacent products)` at offsets
        /// `4l..4l+4` of every 32-element sub-block; `acc = fma(d, lanes, acc)`; the mins go
        /// into a 4-lane `acc_m = fma(dmin, madd(mins, pair sums of bsums), acc_m)`.
        ///
        /// # Safety
        /// As [`q8_0_rows`].
        #[target_feature(enable = $features)]
        unsafe fn q4_k_rows<const N: usize>(x: &[BlockQ4K], ys: [&[BlockQ8K]; N]) -> [f32; N] {
            let z = vdupq_n_f32(0.0);
            let zi = vdupq_n_s32(0);
            let mut acc = [[z; 2]; N];
            let mut acc_m = [z; N];
            for (i, xb) in x.iter().enumerate() {
                let xd = f16s(xb.d);
                let xdmin = f16s(xb.dmin);
                let mut sc = [0i32; 8];
                let mut mn = [0u8; 8];
                for k in 0..8 {
                    let (s, m) = crate::quant::scale_min_k4(k, &xb.scales);
                    sc[k] = s as i32;
                    mn[k] = m;
                }
                // SAFETY: 8 readable bytes.
                let mins = vreinterpretq_s16_u16(vmovl_u8(unsafe { vld1_u8(mn.as_ptr()) }));
                // q4[j]: sub-block 2j (low nibbles of bytes 32j..32j+32), then 2j+1 (high).
                let mut q4 = [[vdupq_n_s8(0); 4]; 4];
                for j in 0..4 {
                    for h in 0..2 {
                        let b = load16_at(&xb.qs, 32 * j + 16 * h);
                        q4[j][h] = vreinterpretq_s8_u8(vandq_u8(b, vdupq_n_u8(0x0F)));
                        q4[j][2 + h] = vreinterpretq_s8_u8(vshrq_n_u8::<4>(b));
                    }
                }
                for t in 0..N {
                    let yb = &ys[t][i];
                    let yd = f32::from_le_bytes(yb.d);
                    let d = yd * xd;
                    let dmin = -yd * xdmin;
                    let [b0, b1] = load_bsums(&yb.bsums);
                    let q8s = vpaddq_s16(b0, b1);
                    let prod = vpaddq_s32(
                        vmull_s16(vget_low_s16(mins), vget_low_s16(q8s)),
                        vmull_high_s16(mins, q8s),
                    );
                    acc_m[t] = vfmaq_n_f32(acc_m[t], vcvtq_f32_s32(prod), dmin);
                    let mut s = [zi; 2];
                    for j in 0..4 {
                        for h in 0..2 {
                            for g in 0..2 {
                                let y = load16_i8_at(&yb.qs, 64 * j + 32 * g + 16 * h);
                                let p = $dot(zi, q4[j][2 * g + h], y);
                                s[h] = vmlaq_n_s32(s[h], p, sc[2 * j + g]);
                            }
                        }
                    }
                    acc[t][0] = vfmaq_n_f32(acc[t][0], vcvtq_f32_s32(s[0]), d);
                    acc[t][1] = vfmaq_n_f32(acc[t][1], vcvtq_f32_s32(s[1]), d);
                }
            }
            let mut out = [0.0f32; N];
            for t in 0..N {
                out[t] = hsum_float_8(acc[t]) + hsum_float_4(acc_m[t]);
            }
            out
        }

        /// Q6_K × Q8_K for `N` activation rows, each result as ggml's AVX2 kernel computes
        /// it: unsigned 6-bit quants (0..63) times the activation, lane `l` summing
        /// `scale * (4 adjacent products)` at offsets `4l..4l+4` of every 32-element chunk,
        /// minus `32 * (bsum[2l] * scale[2l] + bsum[2l+1] * scale[2l+1])`; then
        /// `acc = fma(d, lanes, acc)` and `hsum_float_8`.
        ///
        /// # Safety
        /// As [`q8_0_rows`].
        #[target_feature(enable = $features)]
        unsafe fn q6_k_rows<const N: usize>(x: &[BlockQ6K], ys: [&[BlockQ8K]; N]) -> [f32; N] {
            let z = vdupq_n_f32(0.0);
            let zi = vdupq_n_s32(0);
            let mut acc = [[z; 2]; N];
            let m15 = vdupq_n_u8(15);
            for (i, xb) in x.iter().enumerate() {
                let xd = f16s(xb.d);
                // SAFETY: 16 readable bytes.
                let scales = unsafe { vld1q_s8(xb.scales.as_ptr()) };
                let sc16 = [vmovl_s8(vget_low_s8(scales)), vmovl_high_s8(scales)];
                // q6[c]: the 32 quants of chunk c (elements 32c..32c+32), as two halves.
                let mut q6 = [[vdupq_n_s8(0); 2]; 8];
                for j in 0..2 {
                    for h in 0..2 {
                        let ql1 = load16_at(&xb.ql, 64 * j + 16 * h);
                        let ql2 = load16_at(&xb.ql, 64 * j + 32 + 16 * h);
                        let qh = load16_at(&xb.qh, 32 * j + 16 * h);
                        let q = [
                            vorrq_u8(
                                vandq_u8(ql1, m15),
                                vshlq_n_u8::<4>(vandq_u8(qh, vdupq_n_u8(3))),
                            ),
                            vorrq_u8(
                                vandq_u8(ql2, m15),
                                vshlq_n_u8::<2>(vandq_u8(qh, vdupq_n_u8(12))),
                            ),
                            vorrq_u8(vshrq_n_u8::<4>(ql1), vandq_u8(qh, vdupq_n_u8(48))),
                            vorrq_u8(
                                vshrq_n_u8::<4>(ql2),
                                vshrq_n_u8::<2>(vandq_u8(qh, vdupq_n_u8(0xC0))),
                            ),
                        ];
                        for k in 0..4 {
                            q6[4 * j + k][h] = vreinterpretq_s8_u8(q[k]);
                        }
                    }
                }
                for t in 0..N {
                    let yb = &ys[t][i];
                    let d = f32::from_le_bytes(yb.d) * xd;
                    let bs = load_bsums(&yb.bsums);
                    let mut s = [zi; 2];
                    for c in 0..8 {
                        for h in 0..2 {
                            let y = load16_i8_at(&yb.qs, 32 * c + 16 * h);
                            let p = $dot(zi, q6[c][h], y);
                            s[h] = vmlaq_n_s32(s[h], p, xb.scales[2 * c + h] as i32);
                        }
                    }
                    for h in 0..2 {
                        let sub = vpaddq_s32(
                            vmull_s16(vget_low_s16(bs[h]), vget_low_s16(sc16[h])),
                            vmull_high_s16(bs[h], sc16[h]),
                        );
                        s[h] = vsubq_s32(s[h], vshlq_n_s32::<5>(sub));
                    }
                    acc[t][0] = vfmaq_n_f32(acc[t][0], vcvtq_f32_s32(s[0]), d);
                    acc[t][1] = vfmaq_n_f32(acc[t][1], vcvtq_f32_s32(s[1]), d);
                }
            }
            let mut out = [0.0f32; N];
            for t in 0..N {
                out[t] = hsum_float_8(acc[t]);
            }
            out
        }

        entries!(
            $what,
            vec_dot_q8_0,
            vec_dot4_q8_0,
            vec_dot2x4_q8_0,
            q8_0_rows,
            BlockQ8_0,
            BlockQ8_0
        );
        entries!(
            $what,
            vec_dot_q5_0,
            vec_dot4_q5_0,
            vec_dot2x4_q5_0,
            q5_0_rows,
            BlockQ5_0,
            BlockQ8_0
        );
        entries!(
            $what,
            vec_dot_q4_1,
            vec_dot4_q4_1,
            vec_dot2x4_q4_1,
            q4_1_rows,
            BlockQ4_1,
            BlockQ8_1
        );

        entries_n!(
            $what,
            vec_dot_q4_0,
            vec_dot4_q4_0,
            q4_0_rows,
            BlockQ4_0,
            BlockQ8_0
        );
        entries_n!(
            $what,
            vec_dot_q5_1,
            vec_dot4_q5_1,
            q5_1_rows,
            BlockQ5_1,
            BlockQ8_1
        );
        entries_n!(
            $what,
            vec_dot_q4_k,
            vec_dot4_q4_k,
            q4_k_rows,
            BlockQ4K,
            BlockQ8K
        );
        entries_n!(
            $what,
            vec_dot_q6_k,
            vec_dot4_q6_k,
            q6_k_rows,
            BlockQ6K,
            BlockQ8K
        );

        pre_entry!($what, vec_dot_pre_q8_0, q8_0_pre, BlockQ8_0);
        pre_entry!($what, vec_dot_pre_q5_0, q5_0_pre, BlockQ5_0);
    };
}

/// The kernels on plain NEON (every aarch64 CPU).
pub(super) mod plain {
    dot_kernels!("neon", dot4_neon, "NEON");
}

/// The kernels with the `dotprod` extension's `SDOT`.
pub(super) mod sdot {
    dot_kernels!("neon,dotprod", dot4_sdot, "NEON + dotprod");
}
