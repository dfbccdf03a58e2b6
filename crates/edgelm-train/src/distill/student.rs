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
        let src = teacher
            .tensor(&src_name)
            .ok_or_else(|| TrainError::MissingTensor {
                name: src_name.clone(),
                file: "the teacher".into(),
            })?;
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
