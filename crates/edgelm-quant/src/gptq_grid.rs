//! The quantization grid GPTQ rounds onto, for every ggml block type it supports.
//!
//! GPTQ fixes a block's parameters (scales, mins, and for the K-quants the sub-block scales
//! and their super-block scales) when the block's first column is reached, then rounds the
//! block's values one column at a time onto that grid. Here:
//!
//! - [`choose`] picks the parameters of one *scale group* (32 values for the legacy types, a
//!   256-value super-block for the K-quants) from the current values and a per-column
//!   importance, with ggml's importance-weighted searches (`quantize_row_*_impl`: weighted
//!   `make_qx_quants`, `make_qkx3_quants`, `make_qp_quants`), and returns the block bytes;
//! - [`affine`] reads back, per element, the value a stored code `c` decodes to as
//!   `a · c + b` — by decoding the block with every code 0 and every code 1 through
//!   edgelm-kernels' dequantizers, so it agrees with the kernels by construction;
//! - [`pack`] writes chosen codes into the block bytes (ggml's layouts).

use edgelm_gguf::GgmlType;
use edgelm_kernels::quant::{BlockQ3K, BlockQ5K, BlockQ6K, QK_K};

use crate::kquants::{make_qx_quants, pack_2bit, pack_q4k, pack_q5k};
use crate::weighted::make_qkx3_quants;
use crate::{f16_bits, QuantError};

/// Values that share one set of block parameters (GPTQ's group), or `None` when GPTQ has no
/// grid for `ty`.
pub fn group_len(ty: GgmlType) -> Option<usize> {
    use GgmlType::*;
    match ty {
        Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 => Some(32),
        Q2_K | Q3_K | Q4_K | Q5_K | Q6_K => Some(QK_K),
        _ => None,
    }
}

/// The range of stored codes (as ggml stores them: unsigned with an offset, except Q8_0).
pub fn code_range(ty: GgmlType) -> (i32, i32) {
    use GgmlType::*;
    match ty {
        Q4_0 | Q4_1 | Q4_K => (0, 15),
        Q5_0 | Q5_1 | Q5_K => (0, 31),
        Q8_0 => (-127, 127),
        Q2_K => (0, 3),
        Q3_K => (0, 7),
        Q6_K => (0, 63),
        _ => (0, 0),
    }
}

/// Chooses the parameters of one group `x` (`group_len(ty)` values) with the per-column
/// importance `qw`, writing the block(s) into `out` (`row_bytes(ty, x.len())` bytes). For
/// the legacy types `sigma2` is the mean square of the row (ggml weights each value by
/// `qw · sqrt(sigma2 + x²)` with the row's `sigma2`); the K-quants compute theirs per
/// super-block as ggml does. Q8_0 has no weighted path in ggml and uses `|x|max / 127`.
pub fn choose(
    ty: GgmlType,
    x: &[f32],
    qw: &[f32],
    sigma2: f32,
    out: &mut [u8],
) -> Result<(), QuantError> {
    use GgmlType::*;
    let weights =
        || -> [f32; 32] { std::array::from_fn(|j| qw[j] * (sigma2 + x[j] * x[j]).sqrt()) };
    match ty {
        Q4_0 | Q5_0 => {
            let nmax = if ty == Q4_0 { 8 } else { 16 };
            let mut l = [0i8; 32];
            let d = make_qx_quants(x, nmax, &mut l, Some(&weights()));
            out[..2].copy_from_slice(&f16_bits(d));
        }
        Q4_1 | Q5_1 => {
            let nmax = if ty == Q4_1 { 15 } else { 31 };
            let mut l = [0u8; 32];
            let (d, min) = make_qkx3_quants(x, &weights(), nmax, &mut l, -0.9, 0.05, 36);
            out[..2].copy_from_slice(&f16_bits(d));
            out[2..4].copy_from_slice(&f16_bits(-min));
        }
        Q8_0 => crate::quantize_rows(ty, x, x.len(), out)?,
        Q2_K | Q3_K | Q4_K | Q5_K | Q6_K => crate::quantize_row_weighted(ty, x, qw, out)?,
        other => return Err(QuantError::Unsupported(other)),
    }
    Ok(())
}

/// Writes the stored codes `c` (in [`code_range`]) of one group into its block bytes.
pub fn pack(ty: GgmlType, c: &[i32], out: &mut [u8]) {
    use GgmlType::*;
    let nib = |c: &[i32], qs: &mut [u8]| {
        for j in 0..16 {
            qs[j] = (c[j] as u8 & 0x0F) | ((c[j + 16] as u8 & 0x0F) << 4);
        }
    };
    let high = |c: &[i32]| -> [u8; 4] {
        let mut qh = 0u32;
        for (j, &v) in c.iter().enumerate() {
            qh |= (((v as u32) >> 4) & 1) << j;
        }
        qh.to_le_bytes()
    };
    let codes = || -> [u8; QK_K] { std::array::from_fn(|j| c[j] as u8) };
    match ty {
        Q4_0 => nib(c, &mut out[2..18]),
        Q4_1 => nib(c, &mut out[4..20]),
        Q5_0 => {
            out[2..6].copy_from_slice(&high(c));
            nib(c, &mut out[6..22]);
        }
        Q5_1 => {
            out[4..8].copy_from_slice(&high(c));
            nib(c, &mut out[8..24]);
        }
        Q8_0 => {
            for (o, &v) in out[2..34].iter_mut().zip(c) {
                *o = v as i8 as u8;
            }
        }
        Q2_K => {
            let b: &mut edgelm_kernels::quant::BlockQ2K = bytemuck::from_bytes_mut(out);
            pack_2bit(&codes(), &mut b.qs);
        }
        Q3_K => {
            let b: &mut BlockQ3K = bytemuck::from_bytes_mut(out);
            b.hmask = [0; QK_K / 8];
            let mut lu = [0u8; QK_K];
            for (j, v) in lu.iter_mut().enumerate() {
                let mut q = c[j] as u8;
                if q > 3 {
                    b.hmask[j % (QK_K / 8)] |= 1 << (j / (QK_K / 8));
                    q -= 4;
                }
                *v = q;
            }
            pack_2bit(&lu, &mut b.qs);
        }
        Q4_K => {
            let b: &mut edgelm_kernels::quant::BlockQ4K = bytemuck::from_bytes_mut(out);
            pack_q4k(&codes(), &mut b.qs);
        }
        Q5_K => {
            let b: &mut BlockQ5K = bytemuck::from_bytes_mut(out);
            pack_q5k(&codes(), b);
        }
        Q6_K => {
            let b: &mut BlockQ6K = bytemuck::from_bytes_mut(out);
            let l = codes();
            for (n, (ql, qh)) in (0..QK_K)
                .step_by(128)
                .zip(b.ql.chunks_exact_mut(64).zip(b.qh.chunks_exact_mut(32)))
            {
                for k in 0..32 {
                    let q = |o: usize| l[n + k + o];
                    ql[k] = (q(0) & 0xF) | ((q(64) & 0xF) << 4);
                    ql[k + 32] = (q(32) & 0xF) | ((q(96) & 0xF) << 4);
                    qh[k] = (q(0) >> 4)
                        | ((q(32) >> 4) << 2)
                        | ((q(64) >> 4) << 4)
                        | ((q(96) >> 4) << 6);
                }
            }
        }
        _ => unreachable!("choose() rejected other types"),
    }
}

/// Per element of one group whose parameters are in `block`: stored code `c` decodes to
/// `a[j] · c + b[j]`. `scratch` is a copy area of the block's size.
pub fn affine(
    ty: GgmlType,
    block: &[u8],
    scratch: &mut [u8],
    a: &mut [f32],
    b: &mut [f32],
) -> Result<(), QuantError> {
    let g = a.len();
    let mut c = vec![0i32; g];
    scratch.copy_from_slice(block);
    pack(ty, &c, scratch);
    edgelm_kernels::dequantize_row(ty, scratch, b).map_err(|_| QuantError::Unsupported(ty))?;
    c.fill(1);
    pack(ty, &c, scratch);
    edgelm_kernels::dequantize_row(ty, scratch, a).map_err(|_| QuantError::Unsupported(ty))?;
    for (aj, bj) in a.iter_mut().zip(b.iter()) {
        *aj -= bj;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    const TYPES: [GgmlType; 10] = [
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

    #[test]
    fn packed_codes_decode_as_the_affine_map_says() {
        // For random blocks and random codes, the kernels' dequantizer gives a·c + b.
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for ty in TYPES {
            let g = group_len(ty).unwrap();
            let (lo, hi) = code_range(ty);
            for _ in 0..20 {
                let x: Vec<f32> = (0..g).map(|_| rng.gen::<f32>() - 0.4).collect();
                let qw: Vec<f32> = (0..g).map(|_| rng.gen::<f32>() + 0.01).collect();
                let size = crate::row_bytes(ty, g).unwrap();
                let mut blk = vec![0u8; size];
                choose(ty, &x, &qw, 0.1, &mut blk).unwrap();
                let (mut a, mut b) = (vec![0.0; g], vec![0.0; g]);
                let mut scratch = vec![0u8; size];
                affine(ty, &blk, &mut scratch, &mut a, &mut b).unwrap();
                let c: Vec<i32> = (0..g).map(|_| rng.gen_range(lo..=hi)).collect();
                pack(ty, &c, &mut blk);
                let mut y = vec![0.0f32; g];
                edgelm_kernels::dequantize_row(ty, &blk, &mut y).unwrap();
                for j in 0..g {
                    let want = a[j] * c[j] as f32 + b[j];
                    assert!(
                        (want - y[j]).abs() <= 1e-5 * (1.0 + y[j].abs()),
                        "{ty} [{j}] code {}: {want} vs {}",
                        c[j],
                        y[j]
                    );
                }
                // The grid reaches the data: the nearest code is within one step of x.
                for j in 0..g {
                    if a[j] != 0.0 {
                        let q = ((x[j] - b[j]) / a[j]).round().clamp(lo as f32, hi as f32);
                        let err = (a[j] * q + b[j] - x[j]).abs();
                        assert!(err <= a[j].abs() * 3.0 + 0.05, "{ty}: {err}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_chosen_block_is_importance_weighted_rtn() {
        // Packing the round-to-nearest codes onto the chosen grid reproduces ggml's
        // importance-weighted quantizer for the K-quants (whose choice is the whole impl).
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        for ty in [
            GgmlType::Q2_K,
            GgmlType::Q3_K,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ] {
            let x: Vec<f32> = (0..QK_K).map(|_| rng.gen::<f32>() - 0.5).collect();
            let qw: Vec<f32> = (0..QK_K).map(|_| rng.gen::<f32>() + 0.01).collect();
            let size = crate::row_bytes(ty, QK_K).unwrap();
            let mut blk = vec![0u8; size];
            choose(ty, &x, &qw, 0.0, &mut blk).unwrap();
            let mut want = vec![0u8; size];
            crate::quantize_rows_weighted(ty, &x, QK_K, &mut want, &qw, 1).unwrap();
            assert_eq!(blk, want, "{ty}");
        }
    }
}
