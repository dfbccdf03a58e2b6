//! Quantization with an importance matrix: ggml's `quantize_row_*_impl` paths (taken by
//! llama.cpp when `quant_weights` is given), translated operation for operation. Each row is
//! quantized with the per-column importance `qw` (`qw.len() == x.len()`, one row).
//!
//! Q8_0 and the float types ignore the importance matrix, as in ggml.

#![allow(clippy::needless_range_loop)]

use edgelm_kernels::quant::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    QK_K,
};

use crate::kquants::{make_qx_quants, nearest_int, pack_2bit, GROUP_MAX_EPS};
use crate::{f16_bits, f16_value};

/// ggml `make_qkx3_quants` with weights given. Returns `(scale, -min)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_qkx3_quants(
    x: &[f32],
    weights: &[f32],
    nmax: i32,
    l_out: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let mut l_aux = [0u8; 32];
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max <= min {
        l_out[..n].fill(0);
        return (0.0, -min);
    }
    let nmax_f = nmax as f32;
    let mut iscale = nmax_f / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_mad = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_mad += weights[i] * (diff * diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax_f) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            l_aux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut mad = 0.0f32;
            for i in 0..n {
                let diff = this_scale * l_aux[i] as f32 + this_min - x[i];
                mad += weights[i] * (diff * diff);
            }
            if mad < best_mad {
                l_out[..n].copy_from_slice(&l_aux[..n]);
                best_mad = mad;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// ggml `make_qp_quants`: non-negative values to `0..=nmax` with weights.
fn make_qp_quants(x: &[f32], nmax: i32, l_out: &mut [u8], qw: &[f32]) -> f32 {
    let n = x.len();
    let mut max = 0.0f32;
    for &v in x {
        // MAX(max, x): keeps `max` unless x is larger.
        if v > max {
            max = v;
        }
    }
    if max < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let nmax_f = nmax as f32;
    let mut iscale = nmax_f / max;
    let mut lq = [0i32; 16];
    for i in 0..n {
        lq[i] = nearest_int(iscale * x[i]);
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0.0f32;
    for i in 0..n {
        // L is uint8_t in C: the stored value wraps.
        let li = lq[i] as u8 as f32;
        let diff = x[i] - scale * li;
        best_mse += qw[i] * diff * diff;
    }
    for is in -4i32..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1 * is as f32 + nmax_f) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0.0f32;
        for i in 0..n {
            let l = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * l as f32;
            mse += qw[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    let mut lv = [0u8; 16];
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).min(nmax);
        lv[i] = l as u8;
        let w = qw[i];
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = qw[i];
            let li = lv[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            let mut sl2 = suml2 - w * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != lv[i] as i32 {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        lv[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    l_out[..n].copy_from_slice(&lv[..n]);
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

fn sum_sq(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v * v;
    }
    s
}

/// ggml `quantize_row_q4_0_impl` (one row).
pub fn quantize_row_q4_0(x: &[f32], y: &mut [BlockQ4_0], qw: &[f32]) {
    let sigma2 = sum_sq(x) / x.len() as f32;
    let mut weight = [0.0f32; 32];
    let mut l = [0i8; 32];
    for (ib, b) in y.iter_mut().enumerate() {
        let xb = &x[32 * ib..32 * ib + 32];
        let q = &qw[32 * ib..32 * ib + 32];
        for j in 0..32 {
            weight[j] = q[j] * (sigma2 + xb[j] * xb[j]).sqrt();
        }
        let d = make_qx_quants(xb, 8, &mut l, Some(&weight));
        b.d = f16_bits(d);
        for j in 0..16 {
            b.qs[j] = l[j] as u8 | ((l[j + 16] as u8) << 4);
        }
    }
}

/// ggml `quantize_row_q4_1_impl` (one row).
pub fn quantize_row_q4_1(x: &[f32], y: &mut [BlockQ4_1], qw: &[f32]) {
    let sigma2 = sum_sq(x) / x.len() as f32;
    let mut weight = [0.0f32; 32];
    let mut l = [0u8; 32];
    for (ib, b) in y.iter_mut().enumerate() {
        let xb = &x[32 * ib..32 * ib + 32];
        let q = &qw[32 * ib..32 * ib + 32];
        for j in 0..32 {
            weight[j] = q[j] * (sigma2 + xb[j] * xb[j]).sqrt();
        }
        let (d, min) = make_qkx3_quants(xb, &weight, 15, &mut l, -0.9, 0.05, 36);
        b.d = f16_bits(d);
        b.m = f16_bits(-min);
        for j in 0..16 {
            b.qs[j] = l[j] | (l[j + 16] << 4);
        }
    }
}

fn pack_q5(l: &[u8], qs: &mut [u8; 16]) -> [u8; 4] {
    let mut qh = 0u32;
    for j in 0..16 {
        let (xi0, xi1) = (l[j], l[j + 16]);
        qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= (((xi0 & 0x10) as u32) >> 4) << j;
        qh |= (((xi1 & 0x10) as u32) >> 4) << (j + 16);
    }
    qh.to_le_bytes()
}

/// ggml `quantize_row_q5_0_impl` (one row).
pub fn quantize_row_q5_0(x: &[f32], y: &mut [BlockQ5_0], qw: &[f32]) {
    let sigma2 = sum_sq(x) / x.len() as f32;
    let mut weight = [0.0f32; 32];
    let mut l = [0i8; 32];
    for (ib, b) in y.iter_mut().enumerate() {
        let xb = &x[32 * ib..32 * ib + 32];
        let q = &qw[32 * ib..32 * ib + 32];
        for j in 0..32 {
            weight[j] = q[j] * (sigma2 + xb[j] * xb[j]).sqrt();
        }
        let d = make_qx_quants(xb, 16, &mut l, Some(&weight));
        b.d = f16_bits(d);
        let lu: [u8; 32] = std::array::from_fn(|j| l[j] as u8);
        b.qh = pack_q5(&lu, &mut b.qs);
    }
}

/// ggml `quantize_row_q5_1_impl` (one row).
pub fn quantize_row_q5_1(x: &[f32], y: &mut [BlockQ5_1], qw: &[f32]) {
    let sigma2 = sum_sq(x) / x.len() as f32;
    let mut weight = [0.0f32; 32];
    let mut l = [0u8; 32];
    for (ib, b) in y.iter_mut().enumerate() {
        let xb = &x[32 * ib..32 * ib + 32];
        let q = &qw[32 * ib..32 * ib + 32];
        for j in 0..32 {
            weight[j] = q[j] * (sigma2 + xb[j] * xb[j]).sqrt();
        }
        let (d, min) = make_qkx3_quants(xb, &weight, 31, &mut l, -0.9, 0.05, 36);
        b.d = f16_bits(d);
        b.m = f16_bits(-min);
        b.qh = pack_q5(&l, &mut b.qs);
    }
}

/// ggml `quantize_row_q2_K_impl` (one row).
pub fn quantize_row_q2_k(x: &[f32], y: &mut [BlockQ2K], qw: &[f32]) {
    let mut l = [0u8; QK_K];
    let mut mins = [0.0f32; 16];
    let mut scales = [0.0f32; 16];
    let mut weight = [0.0f32; 16];
    let (mut ls, mut lm) = ([0u8; 16], [0u8; 16]);
    for (i, b) in y.iter_mut().enumerate() {
        let x = &x[QK_K * i..QK_K * (i + 1)];
        let mut sw = [0.0f32; 16];
        let sigma2 = sum_sq(x) / QK_K as f32;
        for j in 0..16 {
            let q = &qw[QK_K * i + 16 * j..QK_K * i + 16 * j + 16];
            for k in 0..16 {
                weight[k] = q[k] * (sigma2 + x[16 * j + k] * x[16 * j + k]).sqrt();
            }
            for k in 0..16 {
                sw[j] += weight[k];
            }
            (scales[j], mins[j]) = make_qkx3_quants(
                &x[16 * j..16 * j + 16],
                &weight,
                3,
                &mut l[16 * j..16 * j + 16],
                -0.9,
                0.05,
                36,
            );
        }
        let dm = make_qp_quants(&scales, 15, &mut ls, &sw);
        let mm = make_qp_quants(&mins, 15, &mut lm, &sw);
        b.d = f16_bits(dm);
        b.dmin = f16_bits(mm);
        let (dm, mm) = (f16_value(b.d), f16_value(b.dmin));
        for j in 0..16 {
            b.scales[j] = ls[j] | (lm[j] << 4);
        }
        for j in 0..16 {
            let d = dm * (b.scales[j] & 0xF) as f32;
            if d == 0.0 {
                continue;
            }
            let m = mm * (b.scales[j] >> 4) as f32;
            for ii in 0..16 {
                l[16 * j + ii] = nearest_int((x[16 * j + ii] + m) / d).clamp(0, 3) as u8;
            }
        }
        pack_2bit(&l, &mut b.qs);
    }
}

/// ggml `quantize_row_q3_K_impl` (one row).
pub fn quantize_row_q3_k(x: &[f32], y: &mut [BlockQ3K], qw: &[f32]) {
    let mut l = [0i8; QK_K];
    let mut scales = [0.0f32; 16];
    let mut weight = [0.0f32; 16];
    let mut sw = [0.0f32; 16];
    let mut ls = [0i8; 16];
    for (i, b) in y.iter_mut().enumerate() {
        let x = &x[QK_K * i..QK_K * (i + 1)];
        let sigma2 = 2.0 * sum_sq(x) / QK_K as f32;
        for j in 0..16 {
            let q = &qw[QK_K * i + 16 * j..QK_K * i + 16 * j + 16];
            for k in 0..16 {
                weight[k] = q[k] * (sigma2 + x[16 * j + k] * x[16 * j + k]).sqrt();
            }
            let mut sumw = 0.0f32;
            for k in 0..16 {
                sumw += weight[k];
            }
            sw[j] = sumw;
            scales[j] = make_qx_quants(
                &x[16 * j..16 * j + 16],
                4,
                &mut l[16 * j..16 * j + 16],
                Some(&weight),
            );
        }
        b.scales = [0; 12];
        let d_block = make_qx_quants(&scales, 32, &mut ls, Some(&sw));
        for j in 0..16 {
            let q = ls[j] as u8;
            if j < 8 {
                b.scales[j] = q & 0xF;
            } else {
                b.scales[j - 8] |= (q & 0xF) << 4;
            }
            b.scales[j % 4 + 8] |= (q >> 4) << (2 * (j / 4));
        }
        b.d = f16_bits(d_block);
        crate::kquants::q3_finish(x, b, &mut l);
    }
}

/// The shared part of Q4_K and Q5_K with weights: scales and mins from `make_qkx3_quants`,
/// their 6-bit codes from `make_qp_quants`, then the final quants.
fn quantize_k4_weighted(
    x: &[f32],
    qw: &[f32],
    nmax: i32,
    clamp_codes: bool,
    packed: &mut [u8; 12],
    l: &mut [u8; QK_K],
) -> ([u8; 2], [u8; 2]) {
    let mut weights = [0.0f32; 32];
    let mut mins = [0.0f32; 8];
    let mut scales = [0.0f32; 8];
    let mut sw = [0.0f32; 8];
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    let sigma2 = 2.0 * sum_sq(x) / QK_K as f32;
    for j in 0..8 {
        let q = &qw[32 * j..32 * j + 32];
        for k in 0..32 {
            weights[k] = q[k] * (sigma2 + x[32 * j + k] * x[32 * j + k]).sqrt();
        }
        let mut sumw = 0.0f32;
        for k in 0..32 {
            sumw += weights[k];
        }
        sw[j] = sumw;
        (scales[j], mins[j]) = make_qkx3_quants(
            &x[32 * j..32 * j + 32],
            &weights,
            nmax,
            &mut l[32 * j..32 * j + 32],
            -0.9,
            0.05,
            36,
        );
    }
    let d_block = make_qp_quants(&scales, 63, &mut ls, &sw);
    let m_block = make_qp_quants(&mins, 63, &mut lm, &sw);
    *packed = [0; 12];
    for j in 0..8 {
        let (mut s, mut m) = (ls[j], lm[j]);
        if clamp_codes {
            s = s.min(63);
            m = m.min(63);
        }
        if j < 4 {
            packed[j] = s;
            packed[j + 4] = m;
        } else {
            packed[j + 4] = (s & 0xF) | ((m & 0xF) << 4);
            packed[j - 4] |= (s >> 4) << 6;
            packed[j] |= (m >> 4) << 6;
        }
    }
    let d = f16_bits(d_block);
    let dmin = f16_bits(m_block);
    crate::kquants::k4_final_quants(x, packed, d, dmin, nmax, l);
    (d, dmin)
}

/// ggml `quantize_row_q4_K_impl` (one row).
pub fn quantize_row_q4_k(x: &[f32], y: &mut [BlockQ4K], qw: &[f32]) {
    let mut l = [0u8; QK_K];
    for (i, b) in y.iter_mut().enumerate() {
        let xs = &x[QK_K * i..QK_K * (i + 1)];
        (b.d, b.dmin) = quantize_k4_weighted(
            xs,
            &qw[QK_K * i..QK_K * (i + 1)],
            15,
            false,
            &mut b.scales,
            &mut l,
        );
        crate::kquants::pack_q4k(&l, &mut b.qs);
    }
}

/// ggml `quantize_row_q5_K_impl` (one row).
pub fn quantize_row_q5_k(x: &[f32], y: &mut [BlockQ5K], qw: &[f32]) {
    let mut l = [0u8; QK_K];
    for (i, b) in y.iter_mut().enumerate() {
        let xs = &x[QK_K * i..QK_K * (i + 1)];
        (b.d, b.dmin) = quantize_k4_weighted(
            xs,
            &qw[QK_K * i..QK_K * (i + 1)],
            31,
            true,
            &mut b.scales,
            &mut l,
        );
        crate::kquants::pack_q5k(&l, b);
    }
}

/// ggml `quantize_row_q6_K_impl` (one row): the reference with `make_qx_quants` weighted by
/// the importance directly.
pub fn quantize_row_q6_k(x: &[f32], y: &mut [BlockQ6K], qw: &[f32]) {
    for (i, b) in y.iter_mut().enumerate() {
        crate::kquants::quantize_block_q6_k(
            &x[QK_K * i..QK_K * (i + 1)],
            b,
            Some(&qw[QK_K * i..QK_K * (i + 1)]),
        );
    }
}
