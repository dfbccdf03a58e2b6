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
//! Block formats (`crate::gptq_grid`): at the first column of each scale group (32 values
//! for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0, a 256-value super-block for Q2_K…Q6_K) the group's
//! parameters are chosen from the *updated* weights with ggml's importance-weighted search
//! (the imatrix, or `diag(H)/tokens`, as importance), stored as the format stores them; the
//! group's values are then rounded one column at a time onto that grid (clamped to the
//! format's range, since later columns may have moved outside it).
//!
//! Rows are independent (the update only mixes columns of one row), so they run in parallel
//! over groups of rows, each group sharing the rows of `U` it reads.

use edgelm_gguf::GgmlType;
use rayon::prelude::*;

/// Why GPTQ could not run.
#[derive(Debug, thiserror::Error)]
pub enum GptqError {
    /// Types without a GPTQ grid.
    #[error(
        "GPTQ supports Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K and Q6_K, not {0}"
    )]
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

    /// The Hessian of the input `x / s` (per column): `H[i,j] / (s_i s_j)`.
    pub fn scaled(&self, s: &[f32]) -> Hessian {
        let n = self.n;
        let mut h = self.clone();
        for i in 0..n {
            for j in i..n {
                h.h[i * n + j] /= s[i] as f64 * s[j] as f64;
            }
        }
        h
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

const HESSIAN_MAGIC: &[u8; 8] = b"EGPTQH01";

/// Writes Hessians (name, width, token count, upper triangle in f64) for
/// [`read_hessians`]: a calibration cache, so that the calibration run can be reused.
pub fn write_hessians<'a>(
    out: &mut impl std::io::Write,
    hessians: impl IntoIterator<Item = (&'a String, &'a Hessian)>,
) -> std::io::Result<()> {
    out.write_all(HESSIAN_MAGIC)?;
    for (name, h) in hessians {
        out.write_all(&(name.len() as u32).to_le_bytes())?;
        out.write_all(name.as_bytes())?;
        out.write_all(&(h.n as u32).to_le_bytes())?;
        out.write_all(&h.count.to_le_bytes())?;
        let mut buf = Vec::with_capacity(h.n * 8);
        for i in 0..h.n {
            buf.clear();
            for v in &h.h[i * h.n + i..(i + 1) * h.n] {
                buf.extend_from_slice(&v.to_le_bytes());
            }
            out.write_all(&buf)?;
        }
    }
    Ok(())
}

/// Reads what [`write_hessians`] wrote; truncated or malformed data is an error.
pub fn read_hessians(bytes: &[u8]) -> Result<Vec<(String, Hessian)>, GptqError> {
    let bad = |what: &str| GptqError::Shape(format!("calibration cache: {what}"));
    let rest = bytes
        .strip_prefix(HESSIAN_MAGIC.as_slice())
        .ok_or_else(|| bad("not a GPTQ Hessian file"))?;
    let mut at = 0usize;
    fn take<'b>(rest: &'b [u8], at: &mut usize, k: usize) -> Option<&'b [u8]> {
        let s = rest.get(*at..at.checked_add(k)?)?;
        *at += k;
        Some(s)
    }
    let mut out = Vec::new();
    while at < rest.len() {
        let trunc = || bad("truncated");
        let len = u32::from_le_bytes(
            take(rest, &mut at, 4)
                .ok_or_else(trunc)?
                .try_into()
                .expect("4 bytes"),
        ) as usize;
        let name = String::from_utf8(take(rest, &mut at, len).ok_or_else(trunc)?.to_vec())
            .map_err(|_| bad("bad name"))?;
        let n = u32::from_le_bytes(
            take(rest, &mut at, 4)
                .ok_or_else(trunc)?
                .try_into()
                .expect("4 bytes"),
        ) as usize;
        let count = u64::from_le_bytes(
            take(rest, &mut at, 8)
                .ok_or_else(trunc)?
                .try_into()
                .expect("8 bytes"),
        );
        if n == 0 || n > 1 << 16 {
            return Err(bad("bad width"));
        }
        let mut h = Hessian::new(n);
        h.count = count;
        for i in 0..n {
            let row = take(rest, &mut at, (n - i) * 8).ok_or_else(trunc)?;
            for (j, c) in row.chunks_exact(8).enumerate() {
                h.h[i * n + i + j] = f64::from_le_bytes(c.try_into().expect("8 bytes"));
            }
        }
        out.push((name, h));
    }
    Ok(out)
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
///
/// Each group's parameters (see [`crate::gptq_grid`]) are chosen when its first column is
/// reached, from the error-updated weights, with ggml's importance-weighted search; the
/// importance is `importance` (an imatrix entry, `n_per_row` values) or, without one, the
/// Hessian's diagonal divided by its token count (which is what an importance matrix holds).
pub fn quantize_rows_gptq(
    ty: GgmlType,
    w: &[f32],
    n_per_row: usize,
    h: &Hessian,
    importance: Option<&[f32]>,
    opts: &GptqOptions,
) -> Result<Vec<u8>, GptqError> {
    let gl = crate::gptq_grid::group_len(ty).ok_or(GptqError::Unsupported(ty))?;
    if n_per_row == 0 || !n_per_row.is_multiple_of(gl) || !w.len().is_multiple_of(n_per_row) {
        return Err(GptqError::Shape(format!(
            "{} weights are not rows of {n_per_row} (a multiple of {gl})",
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
    let qw: Vec<f32> = match importance {
        Some(v) if v.len() == n => v.to_vec(),
        Some(v) => {
            return Err(GptqError::Shape(format!(
                "the importance vector has {} values, the rows {n}",
                v.len()
            )))
        }
        None => (0..n)
            .map(|i| (h.get(i, i) / h.count().max(1) as f64) as f32)
            .collect(),
    };
    if let Some(index) = qw.iter().position(|v| !v.is_finite()) {
        return Err(GptqError::NonFinite {
            row: index,
            col: index,
        });
    }
    let u64s = inverse_cholesky_upper(h, opts.damp)?;
    let u: Vec<f32> = u64s.iter().map(|&v| v as f32).collect();
    let (lo, hi) = crate::gptq_grid::code_range(ty);
    let gbytes = crate::row_bytes(ty, gl).map_err(|e| GptqError::Shape(e.to_string()))?;
    let row_size = n / gl * gbytes;
    let mut out = vec![0u8; w.len() / n * row_size];
    out.par_chunks_mut(ROW_GROUP * row_size)
        .zip(w.par_chunks(ROW_GROUP * n))
        .try_for_each(|(dst, src)| -> Result<(), GptqError> {
            let g = src.len() / n;
            let mut work = src.to_vec();
            let sigma2: Vec<f32> = src
                .chunks_exact(n)
                .map(|r| r.iter().map(|v| v * v).sum::<f32>() / n as f32)
                .collect();
            let (mut a, mut b) = (vec![0.0f32; g * gl], vec![0.0f32; g * gl]);
            let mut codes = vec![0i32; g * gl];
            let mut scratch = vec![0u8; gbytes];
            for i in 0..n {
                let (blk, k) = (i / gl, i % gl);
                if k == 0 {
                    for r in 0..g {
                        let at = r * row_size + blk * gbytes;
                        let block = &mut dst[at..at + gbytes];
                        crate::gptq_grid::choose(
                            ty,
                            &work[r * n + i..r * n + i + gl],
                            &qw[i..i + gl],
                            sigma2[r],
                            block,
                        )
                        .map_err(|e| GptqError::Shape(e.to_string()))?;
                        crate::gptq_grid::affine(
                            ty,
                            block,
                            &mut scratch,
                            &mut a[r * gl..(r + 1) * gl],
                            &mut b[r * gl..(r + 1) * gl],
                        )
                        .map_err(|e| GptqError::Shape(e.to_string()))?;
                    }
                }
                let urow = &u[i * n..(i + 1) * n];
                let uii = urow[i];
                for r in 0..g {
                    let row = &mut work[r * n..(r + 1) * n];
                    let x = row[i];
                    let (ar, br) = (a[r * gl + k], b[r * gl + k]);
                    let q = if ar != 0.0 {
                        (((x - br) / ar).round() as i32).clamp(lo, hi)
                    } else {
                        lo.max(0)
                    };
                    codes[r * gl + k] = q;
                    let deq = ar * q as f32 + br;
                    let e = (x - deq) / uii;
                    for (wj, &uj) in row[i + 1..].iter_mut().zip(&urow[i + 1..]) {
                        *wj -= e * uj;
                    }
                }
                if k == gl - 1 {
                    for r in 0..g {
                        let at = r * row_size + blk * gbytes;
                        crate::gptq_grid::pack(
                            ty,
                            &codes[r * gl..(r + 1) * gl],
                            &mut dst[at..at + gbytes],
                        );
                    }
                }
            }
            Ok(())
        })?;
    Ok(out)
}

/// The GPTQ objective `Σ_rows (w − ŵ) H (w − ŵ)ᵀ` (= `‖X Wᵀ − X Ŵᵀ‖²` over the calibration
/// tokens) of a quantized weight `wq` against `w`, both rows of `h.n()` values.
pub fn output_error(h: &Hessian, w: &[f32], wq: &[f32]) -> f64 {
    let d: Vec<f32> = w.iter().zip(wq).map(|(x, y)| x - y).collect();
    quadratic_error(h, &d)
}

/// `Σ_rows d H dᵀ` for rows `d` of `h.n()` values (in f64, parallel over rows).
pub(crate) fn quadratic_error(h: &Hessian, d: &[f32]) -> f64 {
    let n = h.n();
    d.par_chunks(n)
        .map(|d| {
            let mut s = 0.0f64;
            for (i, &di) in d.iter().enumerate() {
                if di == 0.0 {
                    continue;
                }
                let di = di as f64;
                let hrow = &h.h[i * n..(i + 1) * n];
                let mut t = 0.5 * hrow[i] * di;
                for (hij, &dj) in hrow[i + 1..].iter().zip(&d[i + 1..]) {
                    t += hij * dj as f64;
                }
                s += di * t;
            }
            2.0 * s
        })
        .sum()
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
    fn gptq_beats_imatrix_rtn_on_output_error_and_decodes() {
        // The GPTQ objective ‖XWᵀ − XŴᵀ‖ on a layer with correlated inputs: below plain
        // round-to-nearest and below importance-weighted round-to-nearest (llama.cpp's
        // imatrix quantization, with the imatrix of the same inputs).
        let (n, rows, t) = (512, 16, 1024);
        let (x, w) = layer(n, rows, t, 11);
        let mut h = Hessian::new(n);
        h.accumulate(&x[..300 * n]).unwrap();
        h.accumulate(&x[300 * n..]).unwrap();
        assert_eq!(h.count(), t as u64);
        let imatrix: Vec<f32> = (0..n).map(|i| (h.get(i, i) / t as f64) as f32).collect();
        for ty in TYPES {
            let g = quantize_rows_gptq(ty, &w, n, &h, None, &GptqOptions::default()).unwrap();
            let r = crate::quantize(ty, &w, n).unwrap();
            let mut rw = vec![0u8; r.len()];
            crate::quantize_rows_weighted(ty, &w, n, &mut rw, &imatrix, rows).unwrap();
            assert_eq!(g.len(), r.len());
            let (wg, wr, ww) = (
                decode(ty, &g, w.len()),
                decode(ty, &r, w.len()),
                decode(ty, &rw, w.len()),
            );
            let (eg, er, ew) = (
                output_error(&x, &w, &wg, n),
                output_error(&x, &w, &wr, n),
                output_error(&x, &w, &ww, n),
            );
            eprintln!("{ty}: output error GPTQ {eg:.4} RTN {er:.4} imatrix RTN {ew:.4}");
            assert!(eg < 0.8 * er, "{ty}: GPTQ {eg} vs RTN {er}");
            assert!(eg < 0.8 * ew, "{ty}: GPTQ {eg} vs imatrix RTN {ew}");
            // The Hessian form of the objective is the same number.
            let eh = super::output_error(&h, &w, &wg).sqrt();
            assert!((eh - eg).abs() < 1e-3 * eg, "{ty}: {eh} vs {eg}");
            // Every decoded value is on its block's grid, near the weight.
            let max_dev = w
                .iter()
                .zip(&wg)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(max_dev < 0.3, "{ty}: max |w - ŵ| {max_dev}");
        }
    }

    #[test]
    fn without_correlation_gptq_is_importance_weighted_rounding() {
        // With H = I the error feedback is zero: every value is rounded to nearest on the
        // grid ggml's importance-weighted search picked, so the decoded weights equal that
        // quantizer's (up to rare rounding ties).
        let n = 512;
        let mut h = Hessian::new(n);
        let mut eye = vec![0.0f32; n * n];
        for i in 0..n {
            eye[i * n + i] = 1.0;
        }
        h.accumulate(&eye).unwrap();
        let imatrix = vec![1.0 / n as f32; n];
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let w: Vec<f32> = (0..4 * n).map(|_| randn(&mut rng)).collect();
        for ty in [
            GgmlType::Q4_K,
            GgmlType::Q2_K,
            GgmlType::Q3_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ] {
            let g = quantize_rows_gptq(ty, &w, n, &h, None, &GptqOptions::default()).unwrap();
            let mut rw = vec![0u8; g.len()];
            crate::quantize_rows_weighted(ty, &w, n, &mut rw, &imatrix, 4).unwrap();
            let (y, yw) = (decode(ty, &g, w.len()), decode(ty, &rw, w.len()));
            let differ = y.iter().zip(&yw).filter(|(a, b)| a != b).count();
            assert!(differ * 200 < w.len(), "{ty}: {differ} values differ");
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
        let g =
            quantize_rows_gptq(GgmlType::Q4_0, &w, n, &h, None, &GptqOptions::default()).unwrap();
        assert!(decode(GgmlType::Q4_0, &g, w.len())
            .iter()
            .all(|v| v.is_finite()));
        // Without damping the same Hessian is rejected clearly.
        assert!(matches!(
            quantize_rows_gptq(GgmlType::Q4_0, &w, n, &h, None, &GptqOptions { damp: 0.0 }),
            Err(GptqError::NotPositiveDefinite { .. })
        ));
        // NaN activations.
        let mut bad = Hessian::new(n);
        x[3] = f32::NAN;
        bad.accumulate(&x).unwrap();
        assert!(matches!(
            quantize_rows_gptq(GgmlType::Q4_0, &w, n, &bad, None, &GptqOptions::default()),
            Err(GptqError::NonFinite { .. })
        ));
        // Empty, wrong width, unsupported type, non-finite weight.
        assert!(matches!(
            quantize_rows_gptq(
                GgmlType::Q4_0,
                &w,
                n,
                &Hessian::new(n),
                None,
                &GptqOptions::default()
            ),
            Err(GptqError::Empty)
        ));
        assert!(matches!(
            quantize_rows_gptq(GgmlType::Q4_0, &w, 64, &h, None, &GptqOptions::default()),
            Err(GptqError::Shape(_))
        ));
        assert!(matches!(
            quantize_rows_gptq(GgmlType::IQ2_XXS, &w, n, &h, None, &GptqOptions::default()),
            Err(GptqError::Unsupported(_))
        ));
        let mut wn = w.clone();
        wn[7] = f32::INFINITY;
        assert!(matches!(
            quantize_rows_gptq(GgmlType::Q8_0, &wn, n, &h, None, &GptqOptions::default()),
            Err(GptqError::NonFiniteWeight { index: 7 })
        ));
    }

    #[test]
    fn hessian_files_round_trip_and_reject_garbage() {
        let (x, _) = layer(40, 1, 50, 4);
        let mut h = Hessian::new(40);
        h.accumulate(&x).unwrap();
        let name = "blk.0.attn_q.weight".to_string();
        let mut buf = Vec::new();
        write_hessians(&mut buf, [(&name, &h)]).unwrap();
        let back = read_hessians(&buf).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].0, name);
        assert_eq!(back[0].1.count(), 50);
        for i in 0..40 {
            for j in 0..40 {
                assert_eq!(back[0].1.get(i, j), h.get(i, j));
            }
        }
        assert!(read_hessians(&buf[..buf.len() - 3]).is_err());
        assert!(read_hessians(b"garbage!").is_err());
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
