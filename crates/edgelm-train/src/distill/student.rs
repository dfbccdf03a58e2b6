//! A smaller student built from the teacher: a subset of its blocks, in order, with every
//! other tensor (embedding, final norm, output) copied.

use crate::model::TrainModel;
use crate::TrainError;

/// How `--keep-layers N` picks N of the teacher's blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerPick {
    /// Evenly spaced, first and last included: block `round(i·(L−1)/(N−1))`.
    Even,
    /// The first ⌈N/2⌉ and the last ⌊N/2⌋ blocks.
    Ends,
}

/// The teacher blocks (of `n_teacher`) a student of `n_keep` blocks starts from.
pub fn pick_layers(
    n_teacher: usize,
    n_keep: usize,
    pick: LayerPick,
) -> Result<Vec<usize>, TrainError> {
    if n_keep == 0 || n_keep > n_teacher {
        return Err(TrainError::BadConfig {
            key: "keep_layers".into(),
            reason: format!("{n_keep} blocks of a teacher with {n_teacher}: need 1..={n_teacher}"),
        });
    }
    Ok(match pick {
        LayerPick::Even if n_keep == 1 => vec![0],
        LayerPick::Even => (0..n_keep)
            .map(|i| ((i * (n_teacher - 1)) as f64 / (n_keep - 1) as f64).round() as usize)
            .collect(),
        LayerPick::Ends => {
            let first = n_keep.div_ceil(2);
            (0..first)
                .chain(n_teacher - (n_keep - first)..n_teacher)
                .collect()
        }
    })
}

/// The teacher's tensor `name`, or an error naming it.
fn teacher_tensor<'a>(teacher: &'a TrainModel, name: &str) -> Result<&'a [f32], TrainError> {
    teacher
        .tensor(name)
        .ok_or_else(|| TrainError::MissingTensor {
            name: name.into(),
            file: "the teacher".into(),
        })
}

/// A student made of the teacher's blocks `layers` (strictly increasing, each below the
/// teacher's block count): student block `i` is a copy of teacher block `layers[i]`; the
/// embedding, final norm and output matrix are copied.
pub fn student_from_layers(
    teacher: &TrainModel,
    layers: &[usize],
) -> Result<TrainModel, TrainError> {
    let n_teacher = teacher.config().n_layer;
    let bad = |reason: String| TrainError::BadConfig {
        key: "student_layers".into(),
        reason,
    };
    if layers.is_empty() {
        return Err(bad("no blocks selected".into()));
    }
    if let Some(&l) = layers.iter().find(|&&l| l >= n_teacher) {
        return Err(bad(format!(
            "block {l} does not exist: the teacher has {n_teacher}"
        )));
    }
    if layers.windows(2).any(|w| w[0] >= w[1]) {
        return Err(bad(format!("{layers:?} is not strictly increasing")));
    }
    let mut cfg = teacher.config().clone();
    cfg.n_layer = layers.len();
    let mut student = TrainModel::from_params(
        cfg.clone(),
        vec![0.0; crate::ParamLayout::new(&cfg)?.n_params()],
    )?
    .with_rope_freqs(teacher.rope_freqs().map(|r| r.to_vec()));
    let specs = student.layout().specs().to_vec();
    for spec in &specs {
        let src_name = match spec.name.strip_prefix("blk.") {
            Some(rest) => {
                let (idx, tail) = rest
                    .split_once('.')
                    .ok_or_else(|| bad(format!("tensor name {}", spec.name)))?;
                let i: usize = idx
                    .parse()
                    .map_err(|_| bad(format!("tensor name {}", spec.name)))?;
                format!("blk.{}.{tail}", layers[i])
            }
            None => spec.name.clone(),
        };
        let src = teacher_tensor(teacher, &src_name)?;
        if src.len() != spec.len() {
            return Err(TrainError::TensorMismatch {
                name: spec.name.clone(),
                expected: format!("{} values", spec.len()),
                found: format!("{} in the teacher's {src_name}", src.len()),
            });
        }
        student.params[spec.range()].copy_from_slice(src);
    }
    Ok(student)
}

/// The widths of a narrower student (`--student-embd/-heads/-kv-heads/-ff`); each at most the
/// teacher's. The head dimension stays the teacher's, so heads are kept or dropped whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Widths {
    /// Residual width (C).
    pub n_embd: usize,
    /// Query heads (H).
    pub n_head: usize,
    /// Key/value heads (KV); H must be a multiple of it, with at most the teacher's query
    /// heads per key/value head.
    pub n_head_kv: usize,
    /// Feed-forward width.
    pub n_ff: usize,
}

impl Widths {
    /// The widths of `cfg`.
    pub fn of(cfg: &edgelm_model::ModelConfig) -> Widths {
        Widths {
            n_embd: cfg.n_embd,
            n_head: cfg.n_head,
            n_head_kv: cfg.n_head_kv,
            n_ff: cfg.n_ff,
        }
    }
}

/// How a narrower student picks which channels, heads and neurons of the teacher it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WidthPick {
    /// The first ones (plain truncation).
    First,
    /// The largest by weight magnitude (structured magnitude pruning): a residual channel by
    /// the energy written into it (its embedding column and every block's attention-output
    /// and FFN-down rows), a key/value head by `‖W_v rows‖ · Σ ‖W_o columns‖` of its query
    /// heads, a query head by `‖W_q rows‖ · ‖W_o columns‖`, an FFN neuron by
    /// `‖gate row‖ · ‖up row‖ · ‖down column‖`.
    Magnitude,
}

/// What one block of a narrower student keeps of the teacher's (teacher indices, increasing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockKeep {
    /// Key/value heads.
    pub kv_heads: Vec<usize>,
    /// Query heads, grouped by kept key/value head (student head `h` attends with student
    /// key/value head `h / (H / KV)`, as in the teacher).
    pub q_heads: Vec<usize>,
    /// FFN neurons.
    pub ff: Vec<usize>,
}

/// The teacher indices a narrower student keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WidthKeep {
    /// Residual channels.
    pub embd: Vec<usize>,
    /// Per block.
    pub blocks: Vec<BlockKeep>,
}

/// Squared L2 norms of the rows of the row-major `[rows, cols]` matrix `m`.
fn row_sq(m: &[f32], cols: usize) -> Vec<f64> {
    m.chunks_exact(cols)
        .map(|r| r.iter().map(|&x| f64::from(x) * f64::from(x)).sum())
        .collect()
}

/// Squared L2 norms of the columns of the row-major `[rows, cols]` matrix `m`.
fn col_sq(m: &[f32], cols: usize) -> Vec<f64> {
    let mut s = vec![0f64; cols];
    for r in m.chunks_exact(cols) {
        for (a, &x) in s.iter_mut().zip(r) {
            *a += f64::from(x) * f64::from(x);
        }
    }
    s
}

/// Sums of `v` over consecutive groups of `g`.
fn group_sums(v: &[f64], g: usize) -> Vec<f64> {
    v.chunks_exact(g).map(|c| c.iter().sum()).collect()
}

/// The `k` indices of `0..n` with the largest `score` (ties to the lower index), increasing;
/// with `score == None`, the first `k`.
fn top(n: usize, k: usize, score: Option<&[f64]>) -> Vec<usize> {
    let Some(s) = score else {
        return (0..k).collect();
    };
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx.sort_unstable();
    idx
}

/// Checks `w` against the teacher's config.
fn check_widths(t: &edgelm_model::ModelConfig, w: Widths) -> Result<(), TrainError> {
    let bad = |key: &str, reason: String| TrainError::BadConfig {
        key: key.into(),
        reason,
    };
    for (key, v, max) in [
        ("n_embd", w.n_embd, t.n_embd),
        ("n_head", w.n_head, t.n_head),
        ("n_head_kv", w.n_head_kv, t.n_head_kv),
        ("n_ff", w.n_ff, t.n_ff),
    ] {
        if v == 0 || v > max {
            return Err(bad(
                key,
                format!("{v} for a student of a teacher with {max}: need 1..={max}"),
            ));
        }
    }
    if !w.n_head.is_multiple_of(w.n_head_kv) {
        return Err(bad(
            "n_head",
            format!(
                "{} query heads are not a multiple of {} key/value heads",
                w.n_head, w.n_head_kv
            ),
        ));
    }
    let (g_t, g_s) = (t.n_head / t.n_head_kv, w.n_head / w.n_head_kv);
    if g_s > g_t {
        return Err(bad(
            "n_head",
            format!(
                "{g_s} query heads per key/value head, but the teacher has {g_t}: heads are \
                 kept whole, so a student has at most the teacher's"
            ),
        ));
    }
    Ok(())
}

/// The channels, heads and neurons a student of widths `w` keeps of `teacher`.
pub fn pick_width(
    teacher: &TrainModel,
    w: Widths,
    pick: WidthPick,
) -> Result<WidthKeep, TrainError> {
    let cfg = teacher.config();
    check_widths(cfg, w)?;
    let (c, d, ff) = (cfg.n_embd, cfg.head_dim, cfg.n_ff);
    let qd = cfg.q_dim();
    let g_t = cfg.n_head / cfg.n_head_kv;
    let g_s = w.n_head / w.n_head_kv;
    let get = |name: String| teacher_tensor(teacher, &name);
    let magnitude = pick == WidthPick::Magnitude;
    let embd = if magnitude {
        let mut s = col_sq(get("token_embd.weight".into())?, c);
        for il in 0..cfg.n_layer {
            for (name, cols) in [("attn_output", qd), ("ffn_down", ff)] {
                for (a, r) in s
                    .iter_mut()
                    .zip(row_sq(get(format!("blk.{il}.{name}.weight"))?, cols))
                {
                    *a += r;
                }
            }
        }
        top(c, w.n_embd, Some(&s))
    } else {
        top(c, w.n_embd, None)
    };
    let mut blocks = Vec::with_capacity(cfg.n_layer);
    for il in 0..cfg.n_layer {
        let m = |s: &str| get(format!("blk.{il}.{s}.weight"));
        if !magnitude {
            let kv_heads = top(cfg.n_head_kv, w.n_head_kv, None);
            let q_heads = kv_heads
                .iter()
                .flat_map(|&g| (0..g_s).map(move |j| g * g_t + j))
                .collect();
            blocks.push(BlockKeep {
                kv_heads,
                q_heads,
                ff: top(ff, w.n_ff, None),
            });
            continue;
        }
        let sqrt = |v: Vec<f64>| v.into_iter().map(f64::sqrt).collect::<Vec<_>>();
        // Per query head: ‖W_q rows‖, ‖W_o columns‖.
        let q_norm = sqrt(group_sums(&row_sq(m("attn_q")?, c), d));
        let o_norm = sqrt(group_sums(&col_sq(m("attn_output")?, qd), d));
        let v_norm = sqrt(group_sums(&row_sq(m("attn_v")?, c), d));
        let kv_score: Vec<f64> = (0..cfg.n_head_kv)
            .map(|g| v_norm[g] * o_norm[g * g_t..(g + 1) * g_t].iter().sum::<f64>())
            .collect();
        let kv_heads = top(cfg.n_head_kv, w.n_head_kv, Some(&kv_score));
        let mut q_heads = Vec::with_capacity(w.n_head);
        for &g in &kv_heads {
            let s: Vec<f64> = (g * g_t..(g + 1) * g_t)
                .map(|h| q_norm[h] * o_norm[h])
                .collect();
            q_heads.extend(top(g_t, g_s, Some(&s)).into_iter().map(|j| g * g_t + j));
        }
        let (gate, up) = (row_sq(m("ffn_gate")?, c), row_sq(m("ffn_up")?, c));
        let down = col_sq(m("ffn_down")?, ff);
        let ff_score: Vec<f64> = (0..ff)
            .map(|i| (gate[i] * up[i] * down[i]).sqrt())
            .collect();
        blocks.push(BlockKeep {
            kv_heads,
            q_heads,
            ff: top(ff, w.n_ff, Some(&ff_score)),
        });
    }
    Ok(WidthKeep { embd, blocks })
}

/// The rows `rows` and columns `cols` of the row-major matrix `m` with `n_cols` columns.
fn gather(m: &[f32], n_cols: usize, rows: &[usize], cols: &[usize], out: &mut [f32]) {
    let mut o = out.iter_mut();
    for &r in rows {
        let row = &m[r * n_cols..(r + 1) * n_cols];
        for &c in cols {
            *o.next().expect("sized by the layout") = row[c];
        }
    }
}

/// Row indices of whole heads of dimension `d`.
fn head_rows(heads: &[usize], d: usize) -> Vec<usize> {
    heads.iter().flat_map(|&h| h * d..(h + 1) * d).collect()
}

/// A narrower student: `teacher` with only the residual channels, heads and FFN neurons of
/// `keep` (from [`pick_width`]); every kept weight is copied, so a student that keeps
/// everything is the teacher. RMSNorm then averages over the kept channels only.
pub fn student_from_width(
    teacher: &TrainModel,
    keep: &WidthKeep,
) -> Result<TrainModel, TrainError> {
    let tc = teacher.config();
    let d = tc.head_dim;
    let bad = |reason: String| TrainError::BadConfig {
        key: "width".into(),
        reason,
    };
    if keep.blocks.len() != tc.n_layer {
        return Err(bad(format!(
            "{} blocks kept for a teacher of {}",
            keep.blocks.len(),
            tc.n_layer
        )));
    }
    let first = keep.blocks.first().ok_or_else(|| bad("no blocks".into()))?;
    let w = Widths {
        n_embd: keep.embd.len(),
        n_head: first.q_heads.len(),
        n_head_kv: first.kv_heads.len(),
        n_ff: first.ff.len(),
    };
    check_widths(tc, w)?;
    let in_range =
        |v: &[usize], n: usize| v.windows(2).all(|p| p[0] < p[1]) && v.iter().all(|&i| i < n);
    let g_t = tc.n_head / tc.n_head_kv;
    if !in_range(&keep.embd, tc.n_embd) {
        return Err(bad(
            "residual channels out of range or not increasing".into()
        ));
    }
    for (il, b) in keep.blocks.iter().enumerate() {
        let groups_ok = b.q_heads.len() == w.n_head
            && b.q_heads
                .iter()
                .enumerate()
                .all(|(j, &h)| b.kv_heads.get(j / (w.n_head / w.n_head_kv)) == Some(&(h / g_t)));
        if b.kv_heads.len() != w.n_head_kv
            || b.ff.len() != w.n_ff
            || !groups_ok
            || !in_range(&b.kv_heads, tc.n_head_kv)
            || !in_range(&b.ff, tc.n_ff)
            || !b.q_heads.windows(2).all(|p| p[0] < p[1])
        {
            return Err(bad(format!(
                "block {il}: inconsistent head or neuron selection"
            )));
        }
    }
    let mut cfg = tc.clone();
    cfg.n_embd = w.n_embd;
    cfg.n_head = w.n_head;
    cfg.n_head_kv = w.n_head_kv;
    cfg.n_ff = w.n_ff;
    let mut student = TrainModel::from_params(
        cfg.clone(),
        vec![0.0; crate::ParamLayout::new(&cfg)?.n_params()],
    )?
    .with_rope_freqs(teacher.rope_freqs().map(|r| r.to_vec()));
    let all_vocab: Vec<usize> = (0..tc.n_vocab).collect();
    let one = [0usize];
    let head_d: Vec<usize> = (0..d).collect();
    let specs = student.layout().specs().to_vec();
    for spec in &specs {
        let src = teacher_tensor(teacher, &spec.name)?;
        let (block, tail) = match spec.name.strip_prefix("blk.") {
            Some(rest) => {
                let (i, tail) = rest
                    .split_once('.')
                    .ok_or_else(|| bad(format!("tensor name {}", spec.name)))?;
                let i: usize = i
                    .parse()
                    .map_err(|_| bad(format!("tensor name {}", spec.name)))?;
                (Some(&keep.blocks[i]), tail)
            }
            None => (None, spec.name.as_str()),
        };
        let e = keep.embd.clone();
        // (rows, columns, teacher columns); a vector is one row.
        let (rows, cols, n_cols): (Vec<usize>, Vec<usize>, usize) = match (block, tail) {
            (None, "token_embd.weight" | "output.weight") => (all_vocab.clone(), e, tc.n_embd),
            (None, _) | (Some(_), "attn_norm.weight" | "ffn_norm.weight") => {
                (one.to_vec(), e, tc.n_embd)
            }
            (Some(b), "attn_q.weight") => (head_rows(&b.q_heads, d), e, tc.n_embd),
            (Some(b), "attn_k.weight" | "attn_v.weight") => {
                (head_rows(&b.kv_heads, d), e, tc.n_embd)
            }
            (Some(b), "attn_q.bias") => (one.to_vec(), head_rows(&b.q_heads, d), tc.q_dim()),
            (Some(b), "attn_k.bias" | "attn_v.bias") => {
                (one.to_vec(), head_rows(&b.kv_heads, d), tc.kv_dim())
            }
            (Some(_), "attn_q_norm.weight" | "attn_k_norm.weight") => {
                (one.to_vec(), head_d.clone(), d)
            }
            (Some(b), "attn_output.weight") => (e, head_rows(&b.q_heads, d), tc.q_dim()),
            (Some(b), "ffn_gate.weight" | "ffn_up.weight") => (b.ff.clone(), e, tc.n_embd),
            (Some(b), "ffn_down.weight") => (e, b.ff.clone(), tc.n_ff),
            (Some(_), other) => return Err(bad(format!("no width rule for blk.*.{other}"))),
        };
        if rows.len() * cols.len() != spec.len() || src.len() % n_cols != 0 {
            return Err(TrainError::TensorMismatch {
                name: spec.name.clone(),
                expected: format!("{} values", spec.len()),
                found: format!("{} x {} kept of the teacher's", rows.len(), cols.len()),
            });
        }
        gather(src, n_cols, &rows, &cols, &mut student.params[spec.range()]);
    }
    Ok(student)
}
