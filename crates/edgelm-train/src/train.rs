//! The training loop: packed token windows, micro-batches accumulated into one update,
//! clipping, AdamW on the warm-up + cosine schedule, evaluation, and checkpoints that resume
//! exactly (weights, AdamW moments and step, the data cursor and its seed).

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::model::{backward_mixed, forward, TrainModel, Workspace};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig, Schedule};
use crate::st::{self, TensorFile, CONFIG_KEY};
use crate::TrainError;

/// Hyper-parameters of a run (stored in its checkpoints).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    /// Sequences per micro-batch (B).
    pub batch: usize,
    /// Tokens per sequence (T).
    pub seq_len: usize,
    /// Micro-batches accumulated into one update.
    pub accum: usize,
    /// Learning-rate schedule (its `total_steps` is the run's length).
    pub schedule: Schedule,
    /// Optimizer.
    pub adamw: AdamWConfig,
    /// Global gradient-norm clip (0: none).
    pub clip: f32,
    /// Seed of the data order.
    pub seed: u64,
}

/// Training data as windows of `T + 1` tokens: a window gives `T` inputs and their `T` next
/// tokens. Windows tile the token stream with stride `T` (documents packed back to back).
/// Where a mask is present, a next token is a target only where its mask is set (chat data:
/// the assistant's tokens); windows without any target are dropped.
#[derive(Debug, Clone)]
pub struct Dataset {
    t: usize,
    /// [n_windows, T + 1]
    windows: Vec<u32>,
    /// [n_windows, T + 1], or empty: every next token is a target.
    mask: Vec<bool>,
}

impl Dataset {
    /// Windows of `t + 1` tokens over `stream`; a tail shorter than a window is dropped.
    pub fn from_stream(stream: &[u32], t: usize) -> Dataset {
        Dataset::from_masked(stream, None, t)
    }

    /// Windows over `stream` where `mask[i]` says whether token `i` is trained on (as a
    /// target). `mask`, when given, has the length of `stream`.
    pub fn from_masked(stream: &[u32], mask: Option<&[bool]>, t: usize) -> Dataset {
        let (mut windows, mut wmask) = (Vec::new(), Vec::new());
        let mut start = 0;
        while t > 0 && start + t < stream.len() {
            let r = start..start + t + 1;
            match mask {
                Some(m) if !m[r.start + 1..r.end].iter().any(|&x| x) => {}
                Some(m) => {
                    windows.extend_from_slice(&stream[r.clone()]);
                    wmask.extend_from_slice(&m[r]);
                }
                None => windows.extend_from_slice(&stream[r]),
            }
            start += t;
        }
        Dataset {
            t,
            windows,
            mask: wmask,
        }
    }

    /// Number of windows.
    pub fn len(&self) -> usize {
        self.windows.len() / (self.t + 1)
    }

    /// True when the stream was shorter than one window.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tokens per window's inputs (T).
    pub fn seq_len(&self) -> usize {
        self.t
    }

    #[cfg(test)]
    fn window(&self, i: usize) -> &[u32] {
        &self.windows[i * (self.t + 1)..(i + 1) * (self.t + 1)]
    }

    /// Writes window `i`'s inputs and targets ([T] each).
    pub(crate) fn fill(&self, i: usize, inputs: &mut [u32], targets: &mut [u32]) {
        let w = i * (self.t + 1)..(i + 1) * (self.t + 1);
        let win = &self.windows[w.clone()];
        inputs.copy_from_slice(&win[..self.t]);
        targets.copy_from_slice(&win[1..]);
        if !self.mask.is_empty() {
            for (tgt, &m) in targets.iter_mut().zip(&self.mask[w.start + 1..w.end]) {
                if !m {
                    *tgt = crate::IGNORE;
                }
            }
        }
    }

    /// Splits off the last `fraction` of windows (at least one when there are two or more
    /// and `fraction > 0`) as a held-out set: (train, eval).
    pub fn split(mut self, fraction: f64) -> (Dataset, Dataset) {
        let n = self.len();
        let n_eval = if n >= 2 && fraction > 0.0 {
            ((n as f64 * fraction).ceil() as usize).clamp(1, n - 1)
        } else {
            0
        };
        let cut = (n - n_eval) * (self.t + 1);
        let eval = self.windows.split_off(cut);
        let eval_mask = if self.mask.is_empty() {
            Vec::new()
        } else {
            self.mask.split_off(cut)
        };
        let t = self.t;
        (
            self,
            Dataset {
                t,
                windows: eval,
                mask: eval_mask,
            },
        )
    }
}

/// Where the data order stands: epoch `epoch` visits windows in a permutation seeded by
/// (`seed`, `epoch`); `index` windows of it are consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Passes completed.
    pub epoch: u64,
    /// Windows consumed in this pass.
    pub index: usize,
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The window order of one epoch (Fisher–Yates with SplitMix64).
pub(crate) fn permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut s = seed ^ epoch.wrapping_mul(0xD134_2543_DE82_EF95);
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (splitmix(&mut s) % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

/// What one update did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Updates done, this one included.
    pub step: u64,
    /// Mean training loss over the update's micro-batches.
    pub loss: f32,
    /// Learning rate used.
    pub lr: f32,
    /// Gradient norm before clipping.
    pub grad_norm: f32,
    /// Tokens processed by this update.
    pub tokens: usize,
}

/// A loss added to the data's cross-entropy, computed from the model's logits (distillation:
/// a divergence from a teacher's distribution). The objective of a micro-batch is
/// `ce_weight() · cross-entropy + extra`.
pub trait ExtraLoss {
    /// Weight of the data cross-entropy in the objective.
    fn ce_weight(&self) -> f32;
    /// One micro-batch: `windows` ([B], indices into the training [`Dataset`]), its `tokens`
    /// and `targets` ([B, T]) and the forward's `logits` ([N, V]). Returns the extra loss
    /// (mean over the targets not [`crate::IGNORE`]d) and its gradient with respect to the
    /// logits times `scale` ([N, V]).
    fn loss_and_grad(
        &mut self,
        windows: &[usize],
        tokens: &[u32],
        targets: &[u32],
        logits: &[f32],
        scale: f32,
    ) -> Result<(f32, &[f32]), TrainError>;
}

/// A training run in memory: model, optimizer, buffers and data cursor.
pub struct Trainer {
    /// The model being trained.
    pub model: TrainModel,
    /// Its optimizer.
    pub opt: AdamW,
    /// The run's options.
    pub options: TrainOptions,
    /// The data cursor.
    pub cursor: Cursor,
    ws: Workspace,
    grads: Vec<f32>,
    tokens: Vec<u32>,
    targets: Vec<u32>,
    order: Vec<usize>,
    order_epoch: Option<u64>,
    /// The dataset windows of the current micro-batch ([B]).
    batch_windows: Vec<usize>,
}

impl Trainer {
    /// A fresh run of `model` with `options` (buffers allocated here, once).
    pub fn new(model: TrainModel, options: TrainOptions) -> Result<Trainer, TrainError> {
        if options.accum == 0 {
            return Err(TrainError::BadConfig {
                key: "accum".into(),
                reason: "must be positive".into(),
            });
        }
        let ws = Workspace::new(&model, options.batch, options.seq_len)?;
        let n = model.layout().n_params();
        let n_tok = options.batch * options.seq_len;
        Ok(Trainer {
            opt: AdamW::new(options.adamw, model.layout()),
            grads: vec![0.0; n],
            ws,
            model,
            options,
            cursor: Cursor { epoch: 0, index: 0 },
            tokens: vec![0; n_tok],
            targets: vec![0; n_tok],
            order: Vec::new(),
            order_epoch: None,
            batch_windows: vec![0; options.batch],
        })
    }

    /// Updates done.
    pub fn step_count(&self) -> u64 {
        self.opt.step
    }

    /// Fills the batch buffers with the next `B` windows of `data` in the cursor's order.
    fn next_batch(&mut self, data: &Dataset) -> Result<(), TrainError> {
        let n = data.len();
        if n == 0 || data.t != self.options.seq_len {
            return Err(TrainError::BadBatch(format!(
                "the training data has {n} windows of {} tokens; need at least one of {}",
                data.t, self.options.seq_len
            )));
        }
        let t = self.options.seq_len;
        for b in 0..self.options.batch {
            if self.cursor.index >= n {
                self.cursor.epoch += 1;
                self.cursor.index = 0;
            }
            if self.order_epoch != Some(self.cursor.epoch) || self.order.len() != n {
                self.order = permutation(n, self.options.seed, self.cursor.epoch);
                self.order_epoch = Some(self.cursor.epoch);
            }
            self.batch_windows[b] = self.order[self.cursor.index];
            data.fill(
                self.order[self.cursor.index],
                &mut self.tokens[b * t..(b + 1) * t],
                &mut self.targets[b * t..(b + 1) * t],
            );
            self.cursor.index += 1;
        }
        Ok(())
    }

    /// One update: `accum` micro-batches, clipping, AdamW. A non-finite loss or gradient
    /// stops before the weights change ([`TrainError::NonFinite`]).
    pub fn step(&mut self, data: &Dataset) -> Result<StepStats, TrainError> {
        self.step_with(data, None)
    }

    /// [`Trainer::step`] with an extra loss on the logits; the reported loss is the whole
    /// objective (`ce_weight · cross-entropy + extra`).
    pub fn step_with(
        &mut self,
        data: &Dataset,
        mut extra: Option<&mut dyn ExtraLoss>,
    ) -> Result<StepStats, TrainError> {
        let k = self.options.accum;
        self.grads.fill(0.0);
        let mut loss_sum = 0.0f64;
        for _ in 0..k {
            self.next_batch(data)?;
            let mut loss = forward(&self.model, &mut self.ws, &self.tokens, &self.targets)?;
            let scale = 1.0 / k as f32;
            let (ce_weight, dextra) = match extra.as_deref_mut() {
                None => (1.0, None),
                Some(x) => {
                    let w = x.ce_weight();
                    let logits = self
                        .ws
                        .logits()
                        .ok_or_else(|| TrainError::BadBatch("the forward kept no logits".into()))?;
                    let (e, d) = x.loss_and_grad(
                        &self.batch_windows,
                        &self.tokens,
                        &self.targets,
                        logits,
                        scale,
                    )?;
                    loss = w * loss + e;
                    (w, Some(d))
                }
            };
            if !loss.is_finite() {
                return Err(TrainError::NonFinite {
                    step: self.opt.step + 1,
                    what: "loss",
                });
            }
            loss_sum += loss as f64;
            backward_mixed(
                &self.model,
                &mut self.ws,
                &mut self.grads,
                ce_weight * scale,
                dextra,
            )?;
        }
        let grad_norm = clip_grad_norm(&mut self.grads, self.options.clip);
        if !grad_norm.is_finite() {
            return Err(TrainError::NonFinite {
                step: self.opt.step + 1,
                what: "gradient norm",
            });
        }
        let lr = self.options.schedule.lr(self.opt.step);
        self.opt.update(&mut self.model.params, &self.grads, lr);
        Ok(StepStats {
            step: self.opt.step,
            loss: (loss_sum / k as f64) as f32,
            lr,
            grad_norm,
            tokens: k * self.options.batch * self.options.seq_len,
        })
    }

    /// Mean loss per target token over the first `max_batches` batches of `data` (no
    /// gradients). A last partial batch is padded with sequences whose targets are ignored.
    pub fn eval(&mut self, data: &Dataset, max_batches: usize) -> Result<f32, TrainError> {
        let (b, t) = (self.options.batch, self.options.seq_len);
        let n_batches = data.len().div_ceil(b).min(max_batches);
        if n_batches == 0 || data.t != t {
            return Err(TrainError::BadBatch(format!(
                "the evaluation data has {} windows of {} tokens; need one of {t}",
                data.len(),
                data.t
            )));
        }
        let (mut sum, mut count) = (0.0f64, 0usize);
        for i in 0..n_batches {
            for j in 0..b {
                let k = i * b + j;
                let (inp, tgt) = (
                    &mut self.tokens[j * t..(j + 1) * t],
                    &mut self.targets[j * t..(j + 1) * t],
                );
                data.fill(k.min(data.len() - 1), inp, tgt);
                if k >= data.len() {
                    tgt.fill(crate::IGNORE);
                }
            }
            let loss = forward(&self.model, &mut self.ws, &self.tokens, &self.targets)?;
            sum += loss as f64 * self.ws.n_valid() as f64;
            count += self.ws.n_valid();
        }
        Ok((sum / count as f64) as f32)
    }

    /// Writes a checkpoint: weights (`params.*`), AdamW moments (`adam_m.*`, `adam_v.*`) and
    /// in the metadata the config, the options, the step and the data cursor.
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        let mut tensors = self.model.named_tensors("params.", &self.model.params);
        tensors.extend(self.model.named_tensors("adam_m.", &self.opt.m));
        tensors.extend(self.model.named_tensors("adam_v.", &self.opt.v));
        let json = |v: serde_json::Result<String>| v.expect("plain data serializes");
        let meta = HashMap::from([
            (CONFIG_KEY.to_string(), self.model.config_json()),
            ("edgelm.format".to_string(), CHECKPOINT_FORMAT.to_string()),
            ("edgelm.step".to_string(), self.opt.step.to_string()),
            (
                "edgelm.options".to_string(),
                json(serde_json::to_string(&self.options)),
            ),
            (
                "edgelm.cursor".to_string(),
                json(serde_json::to_string(&self.cursor)),
            ),
        ]);
        st::write(path, tensors, meta)
    }

    /// Restores a run saved by [`Trainer::save`] onto `model` (whose config must be the
    /// checkpoint's: a checkpoint of another model is refused). Options come from the
    /// checkpoint except `total_steps`, which `total_steps` overrides when given.
    pub fn resume(
        model: TrainModel,
        path: &Path,
        total_steps: Option<u64>,
    ) -> Result<Trainer, TrainError> {
        let f = TensorFile::read(path)?;
        let what = path.display().to_string();
        let meta = |k: &str| {
            f.metadata.get(k).ok_or_else(|| TrainError::Checkpoint {
                path: what.clone(),
                reason: format!("no {k} in the metadata (not an edgelm training checkpoint)"),
            })
        };
        if meta("edgelm.format")? != CHECKPOINT_FORMAT {
            return Err(TrainError::Checkpoint {
                path: what.clone(),
                reason: format!(
                    "format {} (expected {CHECKPOINT_FORMAT})",
                    meta("edgelm.format")?
                ),
            });
        }
        let ckpt_cfg = meta(CONFIG_KEY)?;
        if *ckpt_cfg != model.config_json() {
            return Err(TrainError::Checkpoint {
                path: what.clone(),
                reason: format!(
                    "it was made for another model: its config is {ckpt_cfg}, this model's is {}",
                    model.config_json()
                ),
            });
        }
        let parse_err = |k: &str, e: &dyn std::fmt::Display| TrainError::Checkpoint {
            path: what.clone(),
            reason: format!("bad {k}: {e}"),
        };
        let mut options: TrainOptions = serde_json::from_str(meta("edgelm.options")?)
            .map_err(|e| parse_err("edgelm.options", &e))?;
        if let Some(n) = total_steps {
            options.schedule.total_steps = n;
        }
        let cursor: Cursor = serde_json::from_str(meta("edgelm.cursor")?)
            .map_err(|e| parse_err("edgelm.cursor", &e))?;
        let step: u64 = meta("edgelm.step")?
            .parse()
            .map_err(|e| parse_err("edgelm.step", &e))?;
        let mut tr = Trainer::new(model, options)?;
        let mut params = std::mem::take(&mut tr.model.params);
        tr.model.read_values(&f, "params.", &mut params)?;
        tr.model.params = params;
        tr.model.read_values(&f, "adam_m.", &mut tr.opt.m)?;
        tr.model.read_values(&f, "adam_v.", &mut tr.opt.v)?;
        tr.opt.step = step;
        tr.cursor = cursor;
        Ok(tr)
    }
}

/// Version tag of the checkpoint layout.
pub const CHECKPOINT_FORMAT: &str = "edgelm-train-checkpoint-1";

#[cfg(test)]
mod tests;
