//! GPTQ (Frantar et al., 2022): error-compensating rounding into the *same* ggml block
//! formats, so the result still runs in llama.cpp unchanged.
//!
//! For a weight `W` (rows × n) whose inputs `X` (tokens × n) were seen on calibration text,
//! GPTQ minimises the output error `||X Wᵀ − X Ŵᵀ||²` rather than `||W − Ŵ||²`. With the
//! Hessian `H = Xᵀ X` (damped by `λ = damp · mean(diag H)`), and `U` the upper Cholesky
//! factor of `H⁻¹` (`Uᵀ U = H⁻¹`), every row is quantized one column at a time:
//!
//! ```text
//! q_i   = quant(w_i)                       (with the block's scale)
//! e     = (w_i − q_i) / U[i,i]
//! w_j  -= e · U[i,j]      for j > i       (the error is fed to the columns not yet rounded)
//! ```
//!
//! Block formats: at the first column of each 32-element block the block's scale (and min)
//! is chosen from the *updated* weights as ggml's round-to-nearest quantizer chooses it
//! (`Q4_0`: `d = max / −8`, `Q4_1`: `d = (max − min) / 15`, …), rounded to f16 as stored;
//! the block's values are then rounded one column at a time with that scale (clamped to the
//! format's range, since later columns may have moved outside it).
//!
//! Rows are independent (the update only mixes columns of one row), so they run in parallel
//! over groups of rows, each group sharing the rows of `U` it reads.

use edgelm_gguf::GgmlType;
use rayon::prelude::*;

use crate::{f16_bits, f16_value};

const QK: usize = 32;

/// Why GPTQ could not run.
#[derive(Debug, thiserror::Error)]
pub enum GptqError {
    /// Only the 32-element legacy formats have a GPTQ path.
    #[error("GPTQ supports Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0, not {0}")]
    Unsupported(GgmlType),
    /// Shapes do not fit.
    #[error("GPTQ shape mismatch: {0}")]
    Shape(String),
    /// The Hessian holds NaN or infinite values.
    #[error("the calibration Hessian has a non-finite value at ({row}, {col})")]
    NonFinite {
        /// Row.
        row: usize,
        /// Column.
        col: usize,
    },
    /// No calibration tokens reached this weight.
    #[error("the calibration Hessian is empty (no tokens were seen)")]
    Empty,
    /// Even after damping the Hessian is not positive definite.
    #[error(
        "the damped calibration Hessian is not positive definite (pivot {pivot} at column \
         {col}); use a larger damping"
    )]
    NotPositiveDefinite {
        /// Column where the Cholesky factorisation failed.
        col: usize,
        /// The offending pivot.
        pivot: f64,
    },
    /// A weight is NaN or infinite.
    #[error("weight {index} is not finite")]
    NonFiniteWeight {
        /// Element index.
        index: usize,
    },
}

/// `Xᵀ X` of one weight input, summed over calibration tokens (f64), with the token count.
#[derive(Debug, Clone)]
pub struct Hessian {
    n: usize,
    /// Row-major n × n; only the upper triangle is accumulated (see [`Hessian::get`]).
    h: Vec<f64>,
    count: u64,
}

/// `Σ a_k b_k` in f32 with 8 independent partial sums (vectorises).
#[inline]
fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

impl Hessian {
    /// An empty accumulator for inputs of `n` values.
    pub fn new(n: usize) -> Self {
        Hessian {
            n,
            h: vec![0.0; n * n],
            count: 0,
        }
    }

    /// Input width.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Tokens accumulated.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// `H[i, j]` (symmetric).
    pub fn get(&self, i: usize, j: usize) -> f64 {
        let (a, b) = if i <= j { (i, j) } else { (j, i) };
        self.h[a * self.n + b]
    }

    /// Adds `Xᵀ X` for `x` = rows of `n` values (one per token), in parallel over rows of
    /// `H` on the current rayon pool (the sum of each batch is formed in f32, then added in
    /// f64).
    pub fn accumulate(&mut self, x: &[f32]) -> Result<(), GptqError> {
        let n = self.n;
        if n == 0 || !x.len().is_multiple_of(n) {
            return Err(GptqError::Shape(format!(
                "{} values are not rows of {n}",
                x.len()
            )));
        }
        let t = x.len() / n;
        if t == 0 {
            return Ok(());
        }
        // Xᵀ: n rows of t values, so that every H[i, j] is one contiguous dot product.
        let mut xt = vec![0.0f32; n * t];
        for (k, row) in x.chunks_exact(n).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                xt[i * t + k] = v;
            }
        }
        self.h.par_chunks_mut(n).enumerate().for_each(|(i, hrow)| {
            let xi = &xt[i * t..(i + 1) * t];
            for j in i..n {
                hrow[j] += dot8(xi, &xt[j * t..(j + 1) * t]) as f64;
            }
        });
        self.count += t as u64;
        Ok(())
    }
}

/// The upper-triangular `U` (row-major n × n) with `Uᵀ U = (H + λ I)⁻¹`, where
/// `λ = damp · mean(diag H)`; columns that never saw a non-zero input (`H[i,i] = 0`) get
/// `H[i,i] = 1` first, as in the GPTQ reference. Computed in f64 as `U = P L⁻¹ P`, where
/// `P` reverses the index order and `L` is the lower Cholesky factor of `P (H + λI) P`.
pub fn inverse_cholesky_upper(h: &Hessian, damp: f64) -> Result<Vec<f64>, GptqError> {
    let n = h.n;
    if h.count == 0 || n == 0 {
        return Err(GptqError::Empty);
    }
    for i in 0..n {
        for j in i..n {
            if !h.get(i, j).is_finite() {
                return Err(GptqError::NonFinite { row: i, col: j });
            }
        }
    }
    let mut diag: Vec<f64> = (0..n).map(|i| h.get(i, i)).collect();
    for d in diag.iter_mut() {
        if *d <= 0.0 {
            *d = 1.0;
        }
    }
    let lambda = damp.max(0.0) * diag.iter().sum::<f64>() / n as f64;
    let r = |i: usize| n - 1 - i;
    // Lower Cholesky of the reversed matrix, row by row: A = P (H + λI) P.
    let mut l = vec![0.0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let a = if i == j {
                diag[r(i)] + lambda
            } else {
                h.get(r(i), r(j))
            };
            let (li, lj) = (&l[i * n..i * n + j], &l[j * n..j * n + j]);
            let s = a - li.iter().zip(lj).map(|(x, y)| x * y).sum::<f64>();
            if i == j {
                if s.is_nan() || s <= 0.0 {
                    return Err(GptqError::NotPositiveDefinite {
                        col: r(i),
                        pivot: s,
                    });
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    // X = L⁻¹ (lower), row by row: X[i,:] = (e_i − Σ_{k<i} L[i,k] X[k,:]) / L[i,i].
    let mut xinv = vec![0.0f64; n * n];
    for i in 0..n {
        let mut row = vec![0.0f64; i + 1];
        row[i] = 1.0;
        for k in 0..i {
            let c = l[i * n + k];
            if c != 0.0 {
                for (dst, &src) in row[..=k].iter_mut().zip(&xinv[k * n..k * n + k + 1]) {
                    *dst -= c * src;
                }
            }
        }
        let inv = 1.0 / l[i * n + i];
        for (dst, v) in xinv[i * n..i * n + i + 1].iter_mut().zip(&row) {
            *dst = v * inv;
        }
    }
    // U = P X P.
    let mut u = vec![0.0f64; n * n];
    for i in 0..n {
        for j in i..n {
            u[i * n + j] = xinv[r(i) * n + r(j)];
        }
    }
    Ok(u)
}

/// The block parameters GPTQ uses for one 32-value block (f16-rounded, as stored).
#[derive(Clone, Copy)]
struct BlockParams {
    d: f32,
    m: f32,
    d_bits: [u8; 2],
    m_bits: [u8; 2],
}

/// How one legacy type maps values to integers.
#[derive(Clone, Copy)]
struct Format {
    /// Symmetric with `d = signed_absmax / div` and `q = round(x/d) + offset`, or asymmetric
    /// with `d = (max − min) / levels`, `q = round((x − min)/d)`.
    symmetric: bool,
    div: f32,
    offset: i32,
    qmin: i32,
    qmax: i32,
}

fn format(ty: GgmlType) -> Result<Format, GptqError> {
    let f = |symmetric, div, offset, qmin, qmax| Format {
        symmetric,
        div,
        offset,
        qmin,
        qmax,
    };
    Ok(match ty {
        GgmlType::Q4_0 => f(true, -8.0, 8, 0, 15),
        GgmlType::Q5_0 => f(true, -16.0, 16, 0, 31),
        GgmlType::Q8_0 => f(true, 127.0, 0, -127, 127),
        GgmlType::Q4_1 => f(false, 15.0, 0, 0, 15),
        GgmlType::Q5_1 => f(false, 31.0, 0, 0, 31),
        other => return Err(GptqError::Unsupported(other)),
    })
}

impl Format {
    /// The scale (and min) ggml's round-to-nearest quantizer picks for `x`.
    fn params(&self, x: &[f32]) -> BlockParams {
        let (d, m) = if self.symmetric {
            // Q8_0 uses |x|max / 127; Q4_0/Q5_0 the signed value of largest magnitude / −8.
            let (mut amax, mut max) = (0.0f32, 0.0f32);
            for &v in x {
                if amax < v.abs() {
                    amax = v.abs();
                    max = v;
                }
            }
            let top = if self.div > 0.0 { amax } else { max };
            (top / self.div, 0.0)
        } else {
            let min = x.iter().copied().fold(f32::MAX, f32::min);
            let max = x.iter().copied().fold(-f32::MAX, f32::max);
            ((max - min) / self.div, min)
        };
        let (d_bits, m_bits) = (f16_bits(d), f16_bits(m));
        BlockParams {
            d: f16_value(d_bits),
            m: f16_value(m_bits),
            d_bits,
            m_bits,
        }
    }

    /// Integer code and the value it decodes to.
    #[inline]
    fn quant(&self, x: f32, p: &BlockParams) -> (i32, f32) {
        if self.symmetric {
            let q = if p.d != 0.0 {
                ((x / p.d).round() as i32 + self.offset).clamp(self.qmin, self.qmax)
            } else {
                self.offset
            };
            (q, (q - self.offset) as f32 * p.d)
        } else {
            let q = if p.d != 0.0 {
                (((x - p.m) / p.d).round() as i32).clamp(self.qmin, self.qmax)
            } else {
                0
            };
            (q, q as f32 * p.d + p.m)
        }
    }
}

/// Writes one block's bytes from its parameters and 32 codes (ggml's layouts).
fn pack(ty: GgmlType, p: &BlockParams, q: &[i32], out: &mut [u8]) {
    let nib = |q: &[i32], qs: &mut [u8]| {
        for j in 0..QK / 2 {
            qs[j] = (q[j] as u8 & 0x0F) | ((q[j + QK / 2] as u8 & 0x0F) << 4);
        }
    };
    let high = |q: &[i32]| -> [u8; 4] {
        let mut qh = 0u32;
        for (j, &v) in q.iter().enumerate() {
            qh |= (((v as u32) >> 4) & 1) << j;
        }
        qh.to_le_bytes()
    };
    match ty {
        GgmlType::Q4_0 => {
            out[..2].copy_from_slice(&p.d_bits);
            nib(q, &mut out[2..18]);
        }
        GgmlType::Q4_1 => {
            out[..2].copy_from_slice(&p.d_bits);
            out[2..4].copy_from_slice(&p.m_bits);
            nib(q, &mut out[4..20]);
        }
        GgmlType::Q5_0 => {
            out[..2].copy_from_slice(&p.d_bits);
            out[2..6].copy_from_slice(&high(q));
            nib(q, &mut out[6..22]);
        }
        GgmlType::Q5_1 => {
            out[..2].copy_from_slice(&p.d_bits);
            out[2..4].copy_from_slice(&p.m_bits);
            out[4..8].copy_from_slice(&high(q));
            nib(q, &mut out[8..24]);
        }
        GgmlType::Q8_0 => {
            out[..2].copy_from_slice(&p.d_bits);
            for (o, &v) in out[2..34].iter_mut().zip(q) {
                *o = v as i8 as u8;
            }
        }
        _ => unreachable!("format() rejected other types"),
    }
}

/// Options of [`quantize_rows_gptq`].
#[derive(Debug, Clone, Copy)]
pub struct GptqOptions {
    /// Damping as a fraction of the Hessian's mean diagonal (GPTQ's `percdamp`, 0.01).
    pub damp: f64,
}

impl Default for GptqOptions {
    fn default() -> Self {
        GptqOptions { damp: 0.01 }
    }
}

/// Rows handled together (they share each row of `U` read).
const ROW_GROUP: usize = 16;

/// Quantizes `w` (rows of `n_per_row`, the Hessian's width) to `ty` with GPTQ; returns the
/// blocks, `n_rows × row_bytes(ty, n_per_row)` bytes, decodable by ggml's dequantizers.
pub fn quantize_rows_gptq(
    ty: GgmlType,
    w: &[f32],
    n_per_row: usize,
    h: &Hessian,
    opts: &GptqOptions,
) -> Result<Vec<u8>, GptqError> {
    let fmt = format(ty)?;
    if n_per_row == 0 || !n_per_row.is_multiple_of(QK) || !w.len().is_multiple_of(n_per_row) {
        return Err(GptqError::Shape(format!(
            "{} weights are not rows of {n_per_row} (a multiple of {QK})",
            w.len()
        )));
    }
    if h.n() != n_per_row {
        return Err(GptqError::Shape(format!(
            "the Hessian is {0}×{0} but the rows have {n_per_row} values",
            h.n()
        )));
    }
    if let Some(index) = w.iter().position(|v| !v.is_finite()) {
        return Err(GptqError::NonFiniteWeight { index });
    }
    let n = n_per_row;
    let u64s = inverse_cholesky_upper(h, opts.damp)?;
    let u: Vec<f32> = u64s.iter().map(|&v| v as f32).collect();
    let block_bytes = ty.type_size();
    let row_size = n / QK * block_bytes;
    let mut out = vec![0u8; w.len() / n * row_size];
    out.par_chunks_mut(ROW_GROUP * row_size)
        .zip(w.par_chunks(ROW_GROUP * n))
        .for_each(|(dst, src)| {
            let g = src.len() / n;
            let mut work = src.to_vec();
            let mut params = vec![fmt.params(&[0.0]); g];
            let mut codes = vec![0i32; g * QK];
            for i in 0..n {
                let (b, k) = (i / QK, i % QK);
                if k == 0 {
                    for (r, p) in params.iter_mut().enumerate() {
                        *p = fmt.params(&work[r * n + i..r * n + i + QK]);
                    }
                }
                let urow = &u[i * n..(i + 1) * n];
                let uii = urow[i];
                for r in 0..g {
                    let row = &mut work[r * n..(r + 1) * n];
                    let x = row[i];
                    let (q, deq) = fmt.quant(x, &params[r]);
                    codes[r * QK + k] = q;
                    let e = (x - deq) / uii;
                    for (wj, &uj) in row[i + 1..].iter_mut().zip(&urow[i + 1..]) {
                        *wj -= e * uj;
                    }
                }
                if k == QK - 1 {
                    for (r, p) in params.iter().enumerate() {
                        let at = r * row_size + b * block_bytes;
                        pack(
                            ty,
                            p,
                            &codes[r * QK..(r + 1) * QK],
                            &mut dst[at..at + block_bytes],
                        );
                    }
                }
            }
        });
    Ok(out)
}

/// The Hessian an input is accumulated under: weights that read the same input share one
/// (`attn_k`/`attn_v` use `attn_q`'s, `ffn_up` uses `ffn_gate`'s).
pub fn hessian_key(weight: &str) -> String {
    weight
        .replace(".attn_k.", ".attn_q.")
        .replace(".attn_v.", ".attn_q.")
        .replace(".ffn_up.", ".ffn_gate.")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn randn(rng: &mut rand::rngs::StdRng) -> f32 {
        // Sum of uniforms: roughly normal, enough here.
        (0..4).map(|_| rng.gen::<f32>() - 0.5).sum::<f32>() * 1.7
    }

    /// X with correlated columns (as real activations are), W random.
    fn layer(n: usize, rows: usize, t: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let k = 8;
        let basis: Vec<f32> = (0..k * n).map(|_| randn(&mut rng)).collect();
        let mut x = vec![0.0f32; t * n];
        for row in x.chunks_exact_mut(n) {
            let c: Vec<f32> = (0..k).map(|_| randn(&mut rng)).collect();
            for (j, v) in row.iter_mut().enumerate() {
                *v = 0.3 * randn(&mut rng) + (0..k).map(|a| c[a] * basis[a * n + j]).sum::<f32>();
            }
        }
        let w: Vec<f32> = (0..rows * n).map(|_| randn(&mut rng) * 0.05).collect();
        (x, w)
    }

    fn output_error(x: &[f32], w: &[f32], wq: &[f32], n: usize) -> f64 {
        let mut e = 0.0f64;
        for xr in x.chunks_exact(n) {
            for (a, b) in w.chunks_exact(n).zip(wq.chunks_exact(n)) {
                let y: f32 = xr.iter().zip(a).map(|(p, q)| p * q).sum();
                let yq: f32 = xr.iter().zip(b).map(|(p, q)| p * q).sum();
                e += ((y - yq) as f64).powi(2);
            }
        }
        e.sqrt()
    }

    fn decode(ty: GgmlType, q: &[u8], len: usize) -> Vec<f32> {
        let mut y = vec![0.0f32; len];
        edgelm_kernels::dequantize_row(ty, q, &mut y).unwrap();
        y
    }

    #[test]
    fn gptq_beats_rtn_on_output_error_and_decodes() {
        let (n, rows, t) = (128, 24, 512);
        let (x, w) = layer(n, rows, t, 11);
        let mut h = Hessian::new(n);
        h.accumulate(&x[..200 * n]).unwrap();
        h.accumulate(&x[200 * n..]).unwrap();
        assert_eq!(h.count(), t as u64);
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
        ] {
            let g = quantize_rows_gptq(ty, &w, n, &h, &GptqOptions::default()).unwrap();
            let r = crate::quantize(ty, &w, n).unwrap();
            assert_eq!(g.len(), r.len());
            let (wg, wr) = (decode(ty, &g, w.len()), decode(ty, &r, w.len()));
            let (eg, er) = (output_error(&x, &w, &wg, n), output_error(&x, &w, &wr, n));
            eprintln!("{ty}: output error GPTQ {eg:.4} RTN {er:.4}");
            assert!(eg < 0.8 * er, "{ty}: GPTQ {eg} vs RTN {er}");
            // Every decoded value is on its block's grid, near the weight.
            let max_dev = w
                .iter()
                .zip(&wg)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(max_dev < 0.2, "{ty}: max |w - ŵ| {max_dev}");
        }
    }

    #[test]
    fn decoded_values_match_the_internal_quantizer() {
        // With H = I (no correlation), GPTQ is plain rounding with the format's grid: the
        // decoded blocks equal the values the algorithm used.
        let n = 64;
        let mut h = Hessian::new(n);
        let mut eye = vec![0.0f32; n * n];
        for i in 0..n {
            eye[i * n + i] = 1.0;
        }
        h.accumulate(&eye).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let w: Vec<f32> = (0..4 * n).map(|_| randn(&mut rng)).collect();
        for ty in [GgmlType::Q4_0, GgmlType::Q5_1, GgmlType::Q8_0] {
            let fmt = format(ty).unwrap();
            let g = quantize_rows_gptq(ty, &w, n, &h, &GptqOptions::default()).unwrap();
            let y = decode(ty, &g, w.len());
            for (blk, yb) in w.chunks_exact(QK).zip(y.chunks_exact(QK)) {
                let p = fmt.params(blk);
                for (&a, &b) in blk.iter().zip(yb) {
                    let (_, deq) = fmt.quant(a, &p);
                    assert!(
                        (deq - b).abs() <= 1e-6 * (1.0 + deq.abs()),
                        "{ty}: {deq} {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn inverse_cholesky_is_correct() {
        let n = 40;
        let (x, _) = layer(n, 1, 100, 3);
        let mut h = Hessian::new(n);
        h.accumulate(&x).unwrap();
        let damp = 0.01;
        let u = inverse_cholesky_upper(&h, damp).unwrap();
        let lambda = damp * (0..n).map(|i| h.get(i, i)).sum::<f64>() / n as f64;
        // (Uᵀ U)(H + λI) = I.
        for i in 0..n {
            for j in 0..n {
                let mut s = 0.0;
                for k in 0..n {
                    let hinv_ik: f64 = (0..n).map(|a| u[a * n + i] * u[a * n + k]).sum();
                    let hkj = h.get(k, j) + if k == j { lambda } else { 0.0 };
                    s += hinv_ik * hkj;
                }
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((s - want).abs() < 1e-8, "({i},{j}) = {s}");
            }
            for j in 0..i {
                assert_eq!(u[i * n + j], 0.0);
            }
        }
    }

    #[test]
    fn singular_and_bad_hessians() {
        let n = 32;
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let w: Vec<f32> = (0..2 * n).map(|_| randn(&mut rng)).collect();
        // Rank one, with dead columns: damping makes it usable.
        let mut h = Hessian::new(n);
        let mut x = vec![0.0f32; n];
        for (j, v) in x.iter_mut().enumerate().take(n / 2) {
            *v = j as f32;
        }
        h.accumulate(&x).unwrap();
        let g = quantize_rows_gptq(GgmlType::Q4_0, &w, n, &h, &GptqOptions::default()).unwrap();
        assert!(decode(GgmlType::Q4_0, &g, w.len())
            .iter()
            .all(|v| v.is_finite()));
        // Without damping the same Hessian is rejected clearly.
        assert!(matches!(
            quantize_rows_gptq(GgmlType::Q4_0, &w, n, &h, &GptqOptions { damp: 0.0 }),
            Err(GptqError::NotPositiveDefinite { .. })
        ));
        // NaN activations.
        let mut bad = Hessian::new(n);
        x[3] = f32::NAN;
        bad.accumulate(&x).unwrap();
        assert!(matches!(
            quantize_rows_gptq(GgmlType::Q4_0, &w, n, &bad, &GptqOptions::default()),
            Err(GptqError::NonFinite { .. })
        ));
        // Empty, wrong width, unsupported type, non-finite weight.
        assert!(matches!(
            quantize_rows_gptq(
                GgmlType::Q4_0,
                &w,
                n,
                &Hessian::new(n),
                &GptqOptions::default()
            ),
            Err(GptqError::Empty)
        ));
        assert!(matches!(
            quantize_rows_gptq(GgmlType::Q4_0, &w, 64, &h, &GptqOptions::default()),
            Err(GptqError::Shape(_))
        ));
        assert!(matches!(
            quantize_rows_gptq(GgmlType::Q4_K, &w, n, &h, &GptqOptions::default()),
            Err(GptqError::Unsupported(_))
        ));
        let mut wn = w.clone();
        wn[7] = f32::INFINITY;
        assert!(matches!(
            quantize_rows_gptq(GgmlType::Q8_0, &wn, n, &h, &GptqOptions::default()),
            Err(GptqError::NonFiniteWeight { index: 7 })
        ));
    }

    #[test]
    fn keys_share_inputs() {
        assert_eq!(hessian_key("blk.3.attn_k.weight"), "blk.3.attn_q.weight");
        assert_eq!(hessian_key("blk.3.attn_v.weight"), "blk.3.attn_q.weight");
        assert_eq!(hessian_key("blk.3.ffn_up.weight"), "blk.3.ffn_gate.weight");
        assert_eq!(
            hessian_key("blk.3.ffn_down.weight"),
            "blk.3.ffn_down.weight"
        );
    }
}
