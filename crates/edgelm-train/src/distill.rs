//! Knowledge distillation: a student learns a teacher's next-token distributions.
//!
//! The teacher runs on the inference engine (`edgelm-model`, its quantized file as it is) and
//! is summarised per position by its top-k tokens and the mass of the rest
//! ([`teacher`]); the student is any [`TrainModel`] with the teacher's vocabulary, e.g. a
//! subset of the teacher's blocks ([`student`]). The objective of a batch is
//! `α · cross-entropy(data) + (1 − α) · τ² · D(teacher ‖ student)` with D a divergence at
//! temperature τ ([`loss`]), averaged over the positions that have a target; the τ² keeps
//! the gradient's scale independent of τ (Hinton et al.). [`DistillLoss`] plugs it into the
//! training loop as a [`crate::train::ExtraLoss`].

pub mod loss;
pub mod student;
pub mod teacher;

use rayon::prelude::*;

pub use loss::{divergence_row, Divergence, TeacherRow};
pub use student::{
    pick_layers, pick_width, student_from_layers, student_from_width, BlockKeep, LayerPick,
    WidthKeep, WidthPick, Widths,
};
pub use teacher::{CacheHeader, Teacher, TeacherCache, WindowTargets};

use crate::train::ExtraLoss;
use crate::{TrainError, IGNORE};

/// Hyper-parameters of the distillation objective.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DistillOptions {
    /// The divergence.
    pub divergence: Divergence,
    /// Temperature τ of both distributions.
    pub temperature: f32,
    /// Weight α of the data cross-entropy; the divergence has 1 − α.
    pub alpha: f32,
}

impl DistillOptions {
    /// Checks τ > 0 and α in [0, 1].
    pub fn validate(&self) -> Result<(), TrainError> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(TrainError::BadConfig {
                key: "temperature".into(),
                reason: format!("{} is not a positive number", self.temperature),
            });
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(TrainError::BadConfig {
                key: "alpha".into(),
                reason: format!("{} is not in [0, 1]", self.alpha),
            });
        }
        Ok(())
    }
}

/// Mean divergence over the rows of `logits` ([N, V]) whose target is not ignored, against
/// the teacher `rows(i)`; writes `scale · ∂mean/∂logits` into `dlogits` (rows without a
/// target get 0). Returns the mean.
pub fn divergence_batch<'a>(
    div: Divergence,
    temperature: f32,
    logits: &[f32],
    targets: &[u32],
    rows: impl Fn(usize) -> TeacherRow<'a> + Sync,
    scale: f32,
    dlogits: &mut [f32],
) -> f64 {
    let n = targets.len();
    let v = logits.len() / n.max(1);
    let n_valid = targets.iter().filter(|&&x| x != IGNORE).count().max(1);
    let s = scale / n_valid as f32;
    let sum: f64 = dlogits
        .par_chunks_mut(v)
        .zip(logits.par_chunks(v))
        .enumerate()
        .map(|(i, (d, l))| {
            if targets[i] == IGNORE {
                d.fill(0.0);
                0.0
            } else {
                divergence_row(div, l, rows(i), temperature, s, d)
            }
        })
        .sum();
    sum / n_valid as f64
}

/// Where the teacher's targets come from.
pub struct TeacherSource {
    teacher: Option<Teacher>,
    cache: Option<TeacherCache>,
    /// Windows computed by the teacher (not found in the cache).
    pub computed: usize,
    /// Windows read from the cache.
    pub reused: usize,
}

impl TeacherSource {
    /// The teacher, with or without a cache (a complete cache needs no teacher, but the
    /// teacher is needed for every window the cache lacks).
    pub fn new(teacher: Option<Teacher>, cache: Option<TeacherCache>) -> TeacherSource {
        TeacherSource {
            teacher,
            cache,
            computed: 0,
            reused: 0,
        }
    }

    /// The cache, if any.
    pub fn cache(&self) -> Option<&TeacherCache> {
        self.cache.as_ref()
    }

    /// Targets of dataset window `window` whose inputs are `tokens`.
    pub fn targets(&mut self, window: usize, tokens: &[u32]) -> Result<WindowTargets, TrainError> {
        if let Some(t) = self.cache.as_ref().and_then(|c| c.get(window)) {
            self.reused += 1;
            return Ok(t.clone());
        }
        let teacher = self.teacher.as_mut().ok_or_else(|| TrainError::BadConfig {
            key: "teacher".into(),
            reason: format!("window {window} is not in the cache and no teacher is loaded"),
        })?;
        let t = teacher.targets(tokens)?;
        self.computed += 1;
        if let Some(c) = self.cache.as_mut() {
            c.insert(window, t.clone())?;
        }
        Ok(t)
    }
}

/// The distillation term of the objective, for [`crate::train::Trainer::step_with`].
pub struct DistillLoss {
    /// The objective's options.
    pub options: DistillOptions,
    /// The teacher.
    pub source: TeacherSource,
    dlogits: Vec<f32>,
    batch: Vec<WindowTargets>,
    /// Sum of the raw divergence (before weights) over micro-batches since the last reset.
    pub div_sum: f64,
    /// Micro-batches summed into `div_sum`.
    pub div_count: usize,
}

impl DistillLoss {
    /// The term for micro-batches of `n_rows` positions of a `n_vocab` vocabulary.
    pub fn new(
        options: DistillOptions,
        source: TeacherSource,
        n_rows: usize,
        n_vocab: usize,
    ) -> Result<DistillLoss, TrainError> {
        options.validate()?;
        let n = n_rows.checked_mul(n_vocab).ok_or(TrainError::Overflow {
            what: "distillation gradient",
        })?;
        Ok(DistillLoss {
            options,
            source,
            dlogits: vec![0.0; n],
            batch: Vec::new(),
            div_sum: 0.0,
            div_count: 0,
        })
    }

    /// Mean raw divergence since the last call (NaN when none), and resets it.
    pub fn take_mean_divergence(&mut self) -> f64 {
        let m = self.div_sum / self.div_count as f64;
        self.div_sum = 0.0;
        self.div_count = 0;
        m
    }
}

impl ExtraLoss for DistillLoss {
    fn ce_weight(&self) -> f32 {
        self.options.alpha
    }

    fn loss_and_grad(
        &mut self,
        windows: &[usize],
        tokens: &[u32],
        targets: &[u32],
        logits: &[f32],
        scale: f32,
    ) -> Result<(f32, &[f32]), TrainError> {
        let b = windows.len();
        let t = tokens.len() / b.max(1);
        if logits.len() != self.dlogits.len() || tokens.len() != b * t {
            return Err(TrainError::BadBatch(format!(
                "{} logits for a distillation buffer of {}",
                logits.len(),
                self.dlogits.len()
            )));
        }
        self.batch.clear();
        for (i, &w) in windows.iter().enumerate() {
            let wt = self.source.targets(w, &tokens[i * t..(i + 1) * t])?;
            if wt.log_tail.len() != t {
                return Err(TrainError::BadBatch(format!(
                    "teacher targets for {} positions, windows of {t}",
                    wt.log_tail.len()
                )));
            }
            self.batch.push(wt);
        }
        let o = self.options;
        let weight = (1.0 - o.alpha) * o.temperature * o.temperature;
        let batch = &self.batch;
        let d = divergence_batch(
            o.divergence,
            o.temperature,
            logits,
            targets,
            |i| batch[i / t].row(i % t),
            scale * weight,
            &mut self.dlogits,
        );
        self.div_sum += d;
        self.div_count += 1;
        Ok(((weight as f64 * d) as f32, &self.dlogits))
    }
}

#[cfg(test)]
mod tests;
