//! AWQ (Lin et al., 2023): activation-aware per-input-channel scales, folded into the
//! preceding operation so that the model computes the same function, then ordinary rounding
//! (or GPTQ) of the scaled weights into the same ggml blocks.
//!
//! For a group of weights that read the same input `x` (per layer: `attn_q/k/v` after
//! `attn_norm`, `ffn_gate/up` after `ffn_norm`, `ffn_down` after `silu(gate)·up`), a scale
//! `s_j > 0` per input channel multiplies the weights' column `j` and divides the input:
//! `W x = (W diag(s)) (x / s)`. The division is folded into the operation that produces `x`
//! — the RMSNorm weight (`g / s`) or, for `ffn_down`, the rows of `ffn_up` (its output
//! channel `j` divided by `s_j`, which divides the product `silu(gate)·up` by `s_j`). This
//! is exact in real arithmetic. `attn_v → attn_output` is not folded: with grouped-query
//! attention one row of `attn_v` feeds several columns of `attn_output`.
//!
//! Scales are searched as in AWQ: `s = m^α` with `m_j` the RMS of input channel `j` on the
//! calibration text (from the GPTQ Hessian's diagonal), normalised by `sqrt(max · min)`, for
//! `α` on a grid; the chosen `α` minimises the group's output error on the calibration
//! inputs, `Σ (w − ŵ) H (w − ŵ)ᵀ` with `ŵ = Q(w · s) / s` (exact, from `H = Xᵀ X`; over a
//! sample of rows), where `Q` is the quantizer that will be used: importance-weighted
//! round-to-nearest with the importance of the scaled input (`imatrix / s²`). `α = 0` is
//! `s = 1`, so the search never picks scales worse than none on its objective.

use std::collections::BTreeMap;

use edgelm_gguf::{GgmlType, GgufFile, GgufWriter};

use crate::gptq::Hessian;

/// Why AWQ could not run.
#[derive(Debug, thiserror::Error)]
pub enum AwqError {
    /// A tensor the fold needs is missing or shaped unexpectedly.
    #[error("AWQ: {0}")]
    Model(String),
    /// Quantizing a candidate failed.
    #[error("AWQ: {0}")]
    Quant(#[from] crate::QuantError),
    /// Reading a tensor failed.
    #[error("AWQ: {0}")]
    Read(#[from] crate::model::ModelError),
    /// Writing the scaled model failed.
    #[error("AWQ: {0}")]
    Gguf(#[from] edgelm_gguf::GgufError),
}

/// One group of weights sharing an input, and where the input's scale is folded.
#[derive(Debug, Clone)]
pub struct Group {
    /// The Hessian key of the shared input ([`crate::gptq::hessian_key`]).
    pub key: String,
    /// The weights scaled by column.
    pub weights: Vec<String>,
    /// The tensor that absorbs `1/s`: a 1-D norm weight, or a 2-D weight whose rows are the
    /// input's channels.
    pub fold_into: String,
}

/// The groups of a llama-style model with `n_layers` blocks.
pub fn llama_groups(n_layers: usize) -> Vec<Group> {
    let mut g = Vec::new();
    for i in 0..n_layers {
        let b = |s: &str| format!("blk.{i}.{s}.weight");
        g.push(Group {
            key: b("attn_q"),
            weights: vec![b("attn_q"), b("attn_k"), b("attn_v")],
            fold_into: b("attn_norm"),
        });
        g.push(Group {
            key: b("ffn_gate"),
            weights: vec![b("ffn_gate"), b("ffn_up")],
            fold_into: b("ffn_norm"),
        });
        g.push(Group {
            key: b("ffn_down"),
            weights: vec![b("ffn_down")],
            fold_into: b("ffn_up"),
        });
    }
    g
}

/// Search settings.
#[derive(Debug, Clone)]
pub struct AwqOptions {
    /// Exponents tried (AWQ uses 20 steps of 0.05).
    pub alphas: Vec<f32>,
    /// Rows of each weight the error is measured on (evenly spaced).
    pub sample_rows: usize,
}

impl Default for AwqOptions {
    fn default() -> Self {
        AwqOptions {
            alphas: (0..10).map(|k| k as f32 * 0.1).collect(),
            sample_rows: 64,
        }
    }
}

/// What the search chose for one group.
#[derive(Debug, Clone)]
pub struct GroupResult {
    /// The group's input key.
    pub key: String,
    /// Chosen exponent.
    pub alpha: f32,
    /// Output error on the sampled rows without scaling (`α = 0`) and with the chosen one.
    pub error_before: f64,
    /// See `error_before`.
    pub error_after: f64,
    /// The scales (one per input channel).
    pub scales: Vec<f32>,
}

fn hessian_error(h: &Hessian, d: &[f32]) -> f64 {
    crate::gptq::quadratic_error(h, d)
}

/// The input scales `m^α / sqrt(max · min)` for per-channel RMS `m`.
fn scales_for(rms: &[f32], alpha: f32) -> Vec<f32> {
    let s: Vec<f32> = rms.iter().map(|&m| m.max(1e-5).powf(alpha)).collect();
    let (mx, mn) = s
        .iter()
        .fold((0.0f32, f32::MAX), |(a, b), &v| (a.max(v), b.min(v)));
    let norm = (mx * mn).sqrt();
    s.iter().map(|v| v / norm).collect()
}

/// Output error of quantizing `w` (sampled rows of `n`) to `ty` with input scales `s` and
/// importance `qw` (of the unscaled input).
fn candidate_error(
    ty: GgmlType,
    w: &[f32],
    n: usize,
    s: &[f32],
    qw: &[f32],
    h: &Hessian,
) -> Result<f64, AwqError> {
    let scaled: Vec<f32> = w
        .chunks_exact(n)
        .flat_map(|r| r.iter().zip(s).map(|(a, b)| a * b))
        .collect();
    let qws: Vec<f32> = qw.iter().zip(s).map(|(q, b)| q / (b * b)).collect();
    let rows = w.len() / n;
    let mut bytes = vec![0u8; rows * crate::row_bytes(ty, n)?];
    crate::quantize_rows_weighted(ty, &scaled, n, &mut bytes, &qws, rows)?;
    let mut deq = vec![0.0f32; w.len()];
    edgelm_kernels::dequantize_row(ty, &bytes, &mut deq)
        .map_err(|_| AwqError::Model(format!("cannot decode {ty} (no dequantizer)")))?;
    let d: Vec<f32> = w
        .chunks_exact(n)
        .zip(deq.chunks_exact(n))
        .flat_map(|(a, b)| {
            a.iter()
                .zip(b)
                .zip(s)
                .map(|((x, y), sc)| x - y / sc)
                .collect::<Vec<_>>()
        })
        .collect();
    Ok(hessian_error(h, &d))
}

/// Searches each group's scales. `target` gives the type each weight will be quantized to
/// (groups whose weights are not all quantized to a block type keep `s = 1`); `importance`
/// the importance vector of a weight (an imatrix entry, or `diag(H)/tokens`).
pub fn search(
    file: &GgufFile,
    groups: &[Group],
    hessians: &BTreeMap<String, Hessian>,
    target: &dyn Fn(&str) -> Option<GgmlType>,
    importance: &dyn Fn(&str) -> Option<Vec<f32>>,
    opts: &AwqOptions,
    mut progress: impl FnMut(&GroupResult),
) -> Result<Vec<GroupResult>, AwqError> {
    let mut out = Vec::new();
    for g in groups {
        let Some(h) = hessians.get(&g.key).filter(|h| h.count() > 0) else {
            continue;
        };
        let n = h.n();
        let tys: Option<Vec<GgmlType>> = g
            .weights
            .iter()
            .map(|w| target(w).filter(|t| crate::gptq_grid::group_len(*t).is_some()))
            .collect();
        let Some(tys) = tys else { continue };
        let rms: Vec<f32> = (0..n)
            .map(|i| ((h.get(i, i) / h.count() as f64).sqrt()) as f32)
            .collect();
        // Sampled rows of every weight, with its importance.
        let mut parts = Vec::new();
        for (name, &ty) in g.weights.iter().zip(&tys) {
            let t = file
                .tensor(name)
                .ok_or_else(|| AwqError::Model(format!("{name} is missing")))?;
            if t.row_len() != n || t.dims.len() != 2 || !n.is_multiple_of(ty.block_size()) {
                continue;
            }
            let w = crate::model::tensor_to_f32(file, t)?;
            let rows = t.n_rows();
            let step = rows.div_ceil(opts.sample_rows.max(1)).max(1);
            let sample: Vec<f32> = (0..rows)
                .step_by(step)
                .flat_map(|r| w[r * n..(r + 1) * n].iter().copied())
                .collect();
            let qw = importance(name).unwrap_or_else(|| rms.iter().map(|m| m * m).collect());
            parts.push((ty, sample, qw));
        }
        if parts.is_empty() {
            continue;
        }
        let mut best: Option<(f32, f64, Vec<f32>)> = None;
        let mut before = 0.0;
        for &alpha in &opts.alphas {
            let s = scales_for(&rms, alpha);
            let mut err = 0.0;
            for (ty, sample, qw) in &parts {
                err += candidate_error(*ty, sample, n, &s, qw, h)?;
            }
            if alpha == 0.0 {
                before = err;
            }
            if best.as_ref().is_none_or(|b| err < b.1) {
                best = Some((alpha, err, s));
            }
        }
        let (alpha, err, scales) = best.expect("at least one alpha");
        let r = GroupResult {
            key: g.key.clone(),
            alpha,
            error_before: before,
            error_after: err,
            scales,
        };
        progress(&r);
        out.push(r);
    }
    Ok(out)
}

/// The model with every group's scales folded in: weights' columns multiplied by `s`, the
/// fold tensor divided by `s` (norm elements, or rows). Changed tensors are written as F32;
/// everything else (metadata, other tensors) is copied.
pub fn apply(
    file: &GgufFile,
    groups: &[Group],
    results: &[GroupResult],
) -> Result<Vec<u8>, AwqError> {
    let by_key: BTreeMap<&str, &GroupResult> =
        results.iter().map(|r| (r.key.as_str(), r)).collect();
    let mut changed: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let get = |name: &str, changed: &mut BTreeMap<String, Vec<f32>>| -> Result<(), AwqError> {
        if !changed.contains_key(name) {
            let t = file
                .tensor(name)
                .ok_or_else(|| AwqError::Model(format!("{name} is missing")))?;
            changed.insert(name.to_owned(), crate::model::tensor_to_f32(file, t)?);
        }
        Ok(())
    };
    for g in groups {
        let Some(r) = by_key.get(g.key.as_str()) else {
            continue;
        };
        let s = &r.scales;
        let n = s.len();
        for w in &g.weights {
            get(w, &mut changed)?;
            let v = changed.get_mut(w).expect("inserted");
            if !v.len().is_multiple_of(n) || file.tensor(w).map(|t| t.row_len()) != Some(n) {
                return Err(AwqError::Model(format!("{w} does not have rows of {n}")));
            }
            for row in v.chunks_exact_mut(n) {
                for (x, sc) in row.iter_mut().zip(s) {
                    *x *= sc;
                }
            }
        }
        get(&g.fold_into, &mut changed)?;
        let t = file.tensor(&g.fold_into).expect("read above");
        let v = changed.get_mut(&g.fold_into).expect("inserted");
        if t.dims.len() == 1 && v.len() == n {
            for (x, sc) in v.iter_mut().zip(s) {
                *x /= sc;
            }
        } else if t.dims.len() == 2 && t.n_rows() == n {
            let k = t.row_len();
            for (row, sc) in v.chunks_exact_mut(k).zip(s) {
                for x in row {
                    *x /= sc;
                }
            }
        } else {
            return Err(AwqError::Model(format!(
                "{} cannot absorb {n} input scales (dims {:?})",
                g.fold_into, t.dims
            )));
        }
    }
    let mut w = GgufWriter::new();
    for (key, value) in file.metadata().iter() {
        w.add_metadata(key, value.clone())?;
    }
    for t in file.tensors() {
        match changed.get(&t.name) {
            Some(v) => w.add_tensor(
                t.name.clone(),
                &t.dims,
                GgmlType::F32,
                bytemuck::cast_slice::<f32, u8>(v).to_vec(),
            )?,
            None => w.add_tensor(t.name.clone(), &t.dims, t.ty, file.tensor_data(t))?,
        }
    }
    Ok(w.to_bytes())
}

/// The Hessian of the scaled input `x / s`: `H'[i,j] = H[i,j] / (s_i s_j)`.
pub fn scale_hessian(h: &Hessian, s: &[f32]) -> Hessian {
    h.scaled(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rmsnorm(x: &[f32], g: &[f32]) -> Vec<f32> {
        let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
        let r = 1.0 / (ms + 1e-5).sqrt();
        x.iter().zip(g).map(|(a, b)| a * r * b).collect()
    }

    fn matvec(w: &[f32], x: &[f32]) -> Vec<f32> {
        w.chunks_exact(x.len())
            .map(|r| r.iter().zip(x).map(|(a, b)| a * b).sum())
            .collect()
    }

    fn silu(v: f32) -> f32 {
        v / (1.0 + (-v).exp())
    }

    /// One llama block's attention inputs and MLP, as the model computes them.
    fn block(f: &GgufFile, x: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let t = |n: &str| {
            crate::model::tensor_to_f32(f, f.tensor(&format!("blk.0.{n}.weight")).unwrap()).unwrap()
        };
        let a = rmsnorm(x, &t("attn_norm"));
        let (q, k, v) = (
            matvec(&t("attn_q"), &a),
            matvec(&t("attn_k"), &a),
            matvec(&t("attn_v"), &a),
        );
        let m = rmsnorm(x, &t("ffn_norm"));
        let (gate, up) = (matvec(&t("ffn_gate"), &m), matvec(&t("ffn_up"), &m));
        let hdn: Vec<f32> = gate.iter().zip(&up).map(|(g, u)| silu(*g) * u).collect();
        let mut out = q;
        out.extend(k);
        (out, v, hdn.clone(), matvec(&t("ffn_down"), &hdn))
    }

    fn tiny_model(n: usize, ff: usize, rng: &mut rand::rngs::StdRng) -> GgufFile {
        let mut w = GgufWriter::new();
        w.add_metadata("general.architecture", "llama").unwrap();
        let mut add = |name: &str, dims: &[u64]| {
            let len: u64 = dims.iter().product();
            let v: Vec<f32> = (0..len).map(|_| rng.gen::<f32>() - 0.5).collect();
            w.add_tensor(
                format!("blk.0.{name}.weight"),
                dims,
                GgmlType::F32,
                bytemuck::cast_slice::<f32, u8>(&v).to_vec(),
            )
            .unwrap();
        };
        add("attn_norm", &[n as u64]);
        add("attn_q", &[n as u64, n as u64]);
        add("attn_k", &[n as u64, 32]);
        add("attn_v", &[n as u64, 32]);
        add("ffn_norm", &[n as u64]);
        add("ffn_gate", &[n as u64, ff as u64]);
        add("ffn_up", &[n as u64, ff as u64]);
        add("ffn_down", &[ff as u64, n as u64]);
        GgufFile::from_bytes(w.to_bytes()).unwrap()
    }

    #[test]
    fn folded_scales_compute_the_same_function() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (n, ff) = (64, 96);
        let f = tiny_model(n, ff, &mut rng);
        let groups = llama_groups(1);
        let results: Vec<GroupResult> = groups
            .iter()
            .map(|g| {
                let width = if g.key.contains("ffn_down") { ff } else { n };
                GroupResult {
                    key: g.key.clone(),
                    alpha: 0.5,
                    error_before: 0.0,
                    error_after: 0.0,
                    scales: (0..width).map(|_| 0.25 + 4.0 * rng.gen::<f32>()).collect(),
                }
            })
            .collect();
        let scaled = GgufFile::from_bytes(apply(&f, &groups, &results).unwrap()).unwrap();
        let x: Vec<f32> = (0..n).map(|_| 3.0 * (rng.gen::<f32>() - 0.5)).collect();
        let (a, b) = (block(&f, &x), block(&scaled, &x));
        let close = |p: &[f32], q: &[f32]| {
            p.iter()
                .zip(q)
                .all(|(u, v)| (u - v).abs() <= 1e-4 * (1.0 + u.abs()))
        };
        assert!(close(&a.0, &b.0), "q/k differ");
        assert!(close(&a.1, &b.1), "v differs");
        assert!(close(&a.3, &b.3), "ffn output differs");
        // The scales are really there: ffn_down's input is divided by them.
        let s = &results[2].scales;
        assert!(a
            .2
            .iter()
            .zip(&b.2)
            .zip(s)
            .all(|((u, v), sc)| (u / sc - v).abs() <= 1e-4 * (1.0 + u.abs())));
        // And the weights changed.
        let q0 = crate::model::tensor_to_f32(&f, f.tensor("blk.0.attn_q.weight").unwrap()).unwrap();
        let q1 =
            crate::model::tensor_to_f32(&scaled, scaled.tensor("blk.0.attn_q.weight").unwrap())
                .unwrap();
        assert!(q0.iter().zip(&q1).any(|(u, v)| (u - v).abs() > 1e-3));
    }

    #[test]
    fn search_lowers_the_output_error_with_outlier_channels() {
        // Inputs with a few large channels: AWQ's scales protect them, lowering the error
        // of importance-weighted rounding; α = 0 is always a candidate.
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let (n, ff) = (256, 256);
        let f = tiny_model(n, ff, &mut rng);
        let mut hs = BTreeMap::new();
        for key in [
            "blk.0.attn_q.weight",
            "blk.0.ffn_gate.weight",
            "blk.0.ffn_down.weight",
        ] {
            let t = 512;
            let x: Vec<f32> = (0..t * n)
                .map(|i| {
                    let big = if (i % n) % 37 == 0 { 20.0 } else { 1.0 };
                    big * (rng.gen::<f32>() - 0.5)
                })
                .collect();
            let mut h = Hessian::new(n);
            h.accumulate(&x).unwrap();
            hs.insert(key.to_string(), h);
        }
        let groups = llama_groups(1);
        let target = |_: &str| Some(GgmlType::Q4_0);
        let res = search(
            &f,
            &groups,
            &hs,
            &target,
            &|_: &str| None,
            &AwqOptions::default(),
            |_| {},
        )
        .unwrap();
        assert_eq!(res.len(), 3);
        for r in &res {
            assert!(
                r.error_after <= r.error_before,
                "{}: {} > {}",
                r.key,
                r.error_after,
                r.error_before
            );
        }
        assert!(res
            .iter()
            .any(|r| r.alpha > 0.0 && r.error_after < 0.95 * r.error_before));
    }

    #[test]
    fn hessian_error_is_the_quadratic_form() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let n = 20;
        let x: Vec<f32> = (0..50 * n).map(|_| rng.gen::<f32>() - 0.5).collect();
        let mut h = Hessian::new(n);
        h.accumulate(&x).unwrap();
        let d: Vec<f32> = (0..2 * n).map(|_| rng.gen::<f32>() - 0.5).collect();
        let mut want = 0.0f64;
        for xr in x.chunks_exact(n) {
            for dr in d.chunks_exact(n) {
                let y: f64 = xr.iter().zip(dr).map(|(a, b)| (a * b) as f64).sum();
                want += y * y;
            }
        }
        let got = hessian_error(&h, &d);
        assert!((got - want).abs() < 1e-3 * want, "{got} vs {want}");
        // Scaling: the error of d against x/s equals that of d/s against x.
        let s: Vec<f32> = (0..n).map(|_| 0.5 + rng.gen::<f32>()).collect();
        let hs = scale_hessian(&h, &s);
        let ds: Vec<f32> = d
            .chunks_exact(n)
            .flat_map(|r| r.iter().zip(&s).map(|(a, b)| a / b).collect::<Vec<_>>())
            .collect();
        let (e1, e2) = (hessian_error(&hs, &d), hessian_error(&h, &ds));
        assert!((e1 - e2).abs() < 1e-6 * e2.abs().max(1e-12), "{e1} vs {e2}");
    }
}
