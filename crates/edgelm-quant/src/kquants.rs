//! The K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K): ggml's `quantize_row_q*_K_ref` and their
//! helpers (`make_qx_quants`, `make_q3_quants`, `make_qkx2_quants`), translated operation for
//! operation. llama.cpp's reference build compiles these without fused multiply-add (checked
//! with `objdump` on `libggml-base.so`: no `vfmadd` anywhere) and without reassociation, so
//! plain Rust f32 arithmetic in the same order reproduces every block bit for bit.
//!
//! Every function takes `x.len() == y.len() * 256`.

// The loops index several arrays in lockstep exactly as ggml's C does, which keeps them easy to
// check against the reference line by line.
#![allow(clippy::needless_range_loop)]

use edgelm_kernels::quant::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, QK_K};

use crate::{f16_bits, f16_value};

/// ggml's `GROUP_MAX_EPS`: groups whose largest magnitude is below it quantize to zero.
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: round to nearest, ties to even, via the 1.5·2^23 magic number.
#[inline(always)]
pub(crate) fn nearest_int(x: f32) -> i32 {
    let val = x + 12_582_912.0;
    (val.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// ggml `make_qx_quants` with `rmse_type == 1` (the only one used): weights `qw`, or `x²`
/// without. Quants are written offset by `nmax` into `l_out`.
pub(crate) fn make_qx_quants(x: &[f32], nmax: i32, l_out: &mut [i8], qw: Option<&[f32]>) -> f32 {
    let weight = |i: usize| match qw {
        Some(q) => q[i],
        None => x[i] * x[i],
    };
    let n = x.len();
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let nmax_f = nmax as f32;
    let mut iscale = -nmax_f / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l_out[i] = (l + nmax) as i8;
        let w = weight(i);
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax_f + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for i in 0..n {
            let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
            let w = weight(i);
            sumlx += w * x[i] * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                let l = nearest_int(iscale * x[i]);
                l_out[i] = (nmax + l.clamp(-nmax, nmax - 1)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml `make_q3_quants` with `do_rmse == true`. Quants are written offset by `nmax`.
fn make_q3_quants(x: &[f32], nmax: i32, l_out: &mut [i8]) -> f32 {
    let n = x.len();
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    let mut l_cur = [0i32; 16];
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l_cur[i] = l;
        let w = x[i] * x[i];
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _itry in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = x[i] * x[i];
            let mut slx = sumlx - w * x[i] * l_cur[i] as f32;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * l_cur[i] as f32 * l_cur[i] as f32;
                let new_l = nearest_int(x[i] * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != l_cur[i] {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_cur[i] = new_l;
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
    for i in 0..n {
        l_out[i] = (l_cur[i] + nmax) as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// ggml `make_qkx2_quants`: asymmetric quants in `0..=nmax` with a scale and a min chosen by
/// a grid search over `nstep + 1` candidate scales. Returns `(scale, -min)`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    x: &[f32],
    weights: &[f32],
    nmax: i32,
    l_out: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
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
    if max == min {
        l_out[..n].fill(0);
        return (0.0, -min);
    }
    let nmax_f = nmax as f32;
    let mut iscale = nmax_f / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        let mut diff = scale * l as f32 + min - x[i];
        diff = if use_mad { diff.abs() } else { diff * diff };
        best_error += weights[i] * diff;
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
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let mut diff = this_scale * l_aux[i] as f32 + this_min - x[i];
                diff = if use_mad { diff.abs() } else { diff * diff };
                cur_error += weights[i] * diff;
            }
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&l_aux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// ggml `get_scale_min_k4`.
#[inline(always)]
fn get_scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Packs four 2-bit planes of 32 quants per 128 elements (Q2_K's and Q3_K's `qs`).
pub(crate) fn pack_2bit(l: &[u8; QK_K], qs: &mut [u8; QK_K / 4]) {
    for j in (0..QK_K).step_by(128) {
        for k in 0..32 {
            qs[j / 4 + k] =
                l[j + k] | (l[j + k + 32] << 2) | (l[j + k + 64] << 4) | (l[j + k + 96] << 6);
        }
    }
}

/// ggml `quantize_row_q2_K_ref`.
pub fn quantize_row_q2_k(x: &[f32], y: &mut [BlockQ2K]) {
    const Q4SCALE: f32 = 15.0;
    let mut l = [0u8; QK_K];
    let mut weights = [0.0f32; 16];
    let mut mins = [0.0f32; QK_K / 16];
    let mut scales = [0.0f32; QK_K / 16];
    for (b, x) in y.iter_mut().zip(x.chunks_exact(QK_K)) {
        let mut max_scale = 0.0f32;
        let mut max_min = 0.0f32;
        for j in 0..QK_K / 16 {
            let xs = &x[16 * j..16 * j + 16];
            for k in 0..16 {
                weights[k] = xs[k].abs();
            }
            let (s, m) = make_qkx2_quants(
                xs,
                &weights,
                3,
                &mut l[16 * j..16 * j + 16],
                -0.5,
                0.1,
                15,
                true,
            );
            scales[j] = s;
            mins[j] = m;
            if s > max_scale {
                max_scale = s;
            }
            if m > max_min {
                max_min = m;
            }
        }
        if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for j in 0..QK_K / 16 {
                b.scales[j] = nearest_int(iscale * scales[j]) as u8;
            }
            b.d = f16_bits(max_scale / Q4SCALE);
        } else {
            b.scales = [0; QK_K / 16];
            b.d = f16_bits(0.0);
        }
        if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for j in 0..QK_K / 16 {
                let q = nearest_int(iscale * mins[j]);
                b.scales[j] |= (q << 4) as u8;
            }
            b.dmin = f16_bits(max_min / Q4SCALE);
        } else {
            b.dmin = f16_bits(0.0);
        }
        for j in 0..QK_K / 16 {
            let d = f16_value(b.d) * (b.scales[j] & 0xF) as f32;
            if d == 0.0 {
                continue;
            }
            let dm = f16_value(b.dmin) * (b.scales[j] >> 4) as f32;
            for ii in 0..16 {
                let q = nearest_int((x[16 * j + ii] + dm) / d).clamp(0, 3);
                l[16 * j + ii] = q as u8;
            }
        }
        pack_2bit(&l, &mut b.qs);
    }
}

/// ggml `quantize_row_q3_K_ref`.
pub fn quantize_row_q3_k(x: &[f32], y: &mut [BlockQ3K]) {
    let mut l = [0i8; QK_K];
    let mut scales = [0.0f32; QK_K / 16];
    for (b, x) in y.iter_mut().zip(x.chunks_exact(QK_K)) {
        let mut max_scale = 0.0f32;
        let mut amax = 0.0f32;
        for j in 0..QK_K / 16 {
            scales[j] = make_q3_quants(&x[16 * j..16 * j + 16], 4, &mut l[16 * j..16 * j + 16]);
            let scale = scales[j].abs();
            if scale > amax {
                amax = scale;
                max_scale = scales[j];
            }
        }
        b.scales = [0; 12];
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for j in 0..QK_K / 16 {
                // `int8_t l = nearest_int(...)`: the int is narrowed first, then clamped.
                let q = nearest_int(iscale * scales[j]) as i8 as i32;
                let q = (q.clamp(-32, 31) + 32) as u8;
                if j < 8 {
                    b.scales[j] = q & 0xF;
                } else {
                    b.scales[j - 8] |= (q & 0xF) << 4;
                }
                b.scales[j % 4 + 8] |= (q >> 4) << (2 * (j / 4));
            }
            b.d = f16_bits(1.0 / iscale);
        } else {
            b.d = f16_bits(0.0);
        }
        q3_finish(x, b, &mut l);
    }
}

/// The shared part of Q4_K and Q5_K: per 32-group scales and mins from `make_qkx2_quants`,
/// their 6-bit packing into `scales`, and the final quants in `0..=nmax`. Returns the
/// super-block `d` and `dmin` (f16 bits).
fn quantize_k4_scales(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    packed: &mut [u8; 12],
    l: &mut [u8; QK_K],
) -> ([u8; 2], [u8; 2]) {
    let mut weights = [0.0f32; 32];
    let mut mins = [0.0f32; QK_K / 32];
    let mut scales = [0.0f32; QK_K / 32];
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..QK_K / 32 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for k in 0..32 {
            sum_x2 += xs[k] * xs[k];
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for k in 0..32 {
            weights[k] = av_x + xs[k].abs();
        }
        let (s, m) = make_qkx2_quants(
            xs,
            &weights,
            nmax,
            &mut l[32 * j..32 * j + 32],
            rmin,
            0.1,
            nstep,
            false,
        );
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    *packed = [0; 12];
    for j in 0..QK_K / 32 {
        // `uint8_t ls = nearest_int(...)`: narrowed (wrapping) before the MIN.
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = f16_bits(max_scale / 63.0);
    let dmin = f16_bits(max_min / 63.0);
    k4_final_quants(x, packed, d, dmin, nmax, l);
    (d, dmin)
}

/// Q4_K/Q5_K: the final quants in `0..=nmax` from the packed scales and mins (groups whose
/// scale is 0 keep what `l` holds).
pub(crate) fn k4_final_quants(
    x: &[f32],
    packed: &[u8; 12],
    d: [u8; 2],
    dmin: [u8; 2],
    nmax: i32,
    l: &mut [u8; QK_K],
) {
    for j in 0..QK_K / 32 {
        let (sc, m) = get_scale_min_k4(j, packed);
        let dd = f16_value(d) * sc as f32;
        if dd == 0.0 {
            continue;
        }
        let dm = f16_value(dmin) * m as f32;
        for ii in 0..32 {
            let q = nearest_int((x[32 * j + ii] + dm) / dd).clamp(0, nmax);
            l[32 * j + ii] = q as u8;
        }
    }
}

/// Q4_K's nibbles: 64 elements per 32 bytes, low nibbles first.
pub(crate) fn pack_q4k(l: &[u8; QK_K], qs: &mut [u8; QK_K / 2]) {
    for (j, q) in (0..QK_K).step_by(64).zip(qs.chunks_exact_mut(32)) {
        for k in 0..32 {
            q[k] = l[j + k] | (l[j + k + 32] << 4);
        }
    }
}

/// Q5_K's low nibbles and high-bit planes.
pub(crate) fn pack_q5k(l: &[u8; QK_K], b: &mut BlockQ5K) {
    b.qh = [0; QK_K / 8];
    let (mut m1, mut m2) = (1u8, 2u8);
    for (n, ql) in (0..QK_K).step_by(64).zip(b.qs.chunks_exact_mut(32)) {
        for j in 0..32 {
            let mut l1 = l[n + j];
            if l1 > 15 {
                l1 -= 16;
                b.qh[j] |= m1;
            }
            let mut l2 = l[n + j + 32];
            if l2 > 15 {
                l2 -= 16;
                b.qh[j] |= m2;
            }
            ql[j] = l1 | (l2 << 4);
        }
        m1 <<= 2;
        m2 <<= 2;
    }
}

/// ggml `quantize_row_q4_K_ref`.
pub fn quantize_row_q4_k(x: &[f32], y: &mut [BlockQ4K]) {
    let mut l = [0u8; QK_K];
    for (b, x) in y.iter_mut().zip(x.chunks_exact(QK_K)) {
        (b.d, b.dmin) = quantize_k4_scales(x, 15, -1.0, 20, &mut b.scales, &mut l);
        pack_q4k(&l, &mut b.qs);
    }
}

/// ggml `quantize_row_q5_K_ref`.
pub fn quantize_row_q5_k(x: &[f32], y: &mut [BlockQ5K]) {
    let mut l = [0u8; QK_K];
    for (b, x) in y.iter_mut().zip(x.chunks_exact(QK_K)) {
        (b.d, b.dmin) = quantize_k4_scales(x, 31, -0.5, 15, &mut b.scales, &mut l);
        pack_q5k(&l, b);
    }
}

/// ggml `quantize_row_q6_K_ref`.
pub fn quantize_row_q6_k(x: &[f32], y: &mut [BlockQ6K]) {
    for (b, x) in y.iter_mut().zip(x.chunks_exact(QK_K)) {
        quantize_block_q6_k(x, b, None);
    }
}

/// One Q6_K block: the reference (`qw == None`) or the importance-weighted path (ggml's
/// `quantize_row_q6_K_impl`, which differs only in `make_qx_quants`' weights).
pub(crate) fn quantize_block_q6_k(x: &[f32], b: &mut BlockQ6K, qw: Option<&[f32]>) {
    let mut l = [0i8; QK_K];
    let mut scales = [0.0f32; QK_K / 16];
    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    for ib in 0..QK_K / 16 {
        let scale = make_qx_quants(
            &x[16 * ib..16 * ib + 16],
            32,
            &mut l[16 * ib..16 * ib + 16],
            qw.map(|q| &q[16 * ib..16 * ib + 16]),
        );
        scales[ib] = scale;
        let abs_scale = scale.abs();
        if abs_scale > max_abs_scale {
            max_abs_scale = abs_scale;
            max_scale = scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        *b = bytemuck::Zeroable::zeroed();
        b.d = f16_bits(0.0);
        return;
    }
    let iscale = -128.0 / max_scale;
    b.d = f16_bits(1.0 / iscale);
    for ib in 0..QK_K / 16 {
        b.scales[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
    }
    for j in 0..QK_K / 16 {
        let d = f16_value(b.d) * b.scales[j] as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
            l[16 * j + ii] = (q + 32) as i8;
        }
    }
    for (n, (ql, qh)) in (0..QK_K)
        .step_by(128)
        .zip(b.ql.chunks_exact_mut(64).zip(b.qh.chunks_exact_mut(32)))
    {
        for k in 0..32 {
            let q1 = l[n + k] as u8 & 0xF;
            let q2 = l[n + k + 32] as u8 & 0xF;
            let q3 = l[n + k + 64] as u8 & 0xF;
            let q4 = l[n + k + 96] as u8 & 0xF;
            ql[k] = q1 | (q3 << 4);
            ql[k + 32] = q2 | (q4 << 4);
            qh[k] = (l[n + k] as u8 >> 4)
                | ((l[n + k + 32] as u8 >> 4) << 2)
                | ((l[n + k + 64] as u8 >> 4) << 4)
                | ((l[n + k + 96] as u8 >> 4) << 6);
        }
    }
}

/// The end of Q3_K (reference and weighted): final quants from the packed scales, the high-bit
/// mask and the 2-bit planes. `l` holds the quants (offset 4) of groups whose scale is 0.
pub(crate) fn q3_finish(x: &[f32], b: &mut BlockQ3K, l: &mut [i8; QK_K]) {
    for j in 0..QK_K / 16 {
        let sc = if j < 8 {
            b.scales[j] & 0xF
        } else {
            b.scales[j - 8] >> 4
        };
        let sc = (sc | (((b.scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i32 - 32;
        let d = f16_value(b.d) * sc as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / d).clamp(-4, 3);
            l[16 * j + ii] = (q + 4) as i8;
        }
    }
    b.hmask = [0; QK_K / 8];
    let mut lu = [0u8; QK_K];
    let mut m = 0usize;
    let mut hm = 1u8;
    for j in 0..QK_K {
        let mut v = l[j] as u8;
        if v > 3 {
            b.hmask[m] |= hm;
            v -= 4;
        }
        lu[j] = v;
        m += 1;
        if m == QK_K / 8 {
            m = 0;
            hm <<= 1;
        }
    }
    pack_2bit(&lu, &mut b.qs);
}
