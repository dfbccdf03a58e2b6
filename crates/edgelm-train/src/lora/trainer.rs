//! The LoRA training loop: [`crate::train::Trainer`]'s update (accumulation, clipping, AdamW
//! on the schedule, NaN stop, data order) over the adapters only, and checkpoints holding
//! the adapters and their AdamW moments (`lora.*`, `adam_m.*`, `adam_v.*`).

use std::collections::HashMap;
use std::path::Path;

use super::base::FrozenBase;
use super::model::{backward, forward, LoraWorkspace};
use super::{LoraConfig, LoraParams};
use crate::optim::{clip_grad_norm, AdamW};
use crate::st::{self, TensorFile, WriteTensor, CONFIG_KEY};
use crate::train::{permutation, Cursor, Dataset, StepStats, TrainOptions};
use crate::TrainError;

/// Version tag of the LoRA checkpoint layout.
pub const LORA_CHECKPOINT_FORMAT: &str = "edgelm-lora-checkpoint-1";

/// A LoRA run in memory: frozen base, adapters, optimizer, buffers and data cursor.
pub struct LoraTrainer {
    /// The frozen base.
    pub base: FrozenBase,
    /// The adapters being trained.
    pub lora: LoraParams,
    /// Their optimizer (weight decay on every adapter matrix).
    pub opt: AdamW,
    /// The run's options.
    pub options: TrainOptions,
    /// The data cursor.
    pub cursor: Cursor,
    ws: LoraWorkspace,
    grads: Vec<f32>,
    tokens: Vec<u32>,
    targets: Vec<u32>,
    order: Vec<usize>,
    order_epoch: Option<u64>,
}

impl LoraTrainer {
    /// A fresh run (buffers allocated here, once).
    pub fn new(
        base: FrozenBase,
        lora: LoraParams,
        options: TrainOptions,
    ) -> Result<LoraTrainer, TrainError> {
        if options.accum == 0 {
            return Err(TrainError::BadConfig {
                key: "accum".into(),
                reason: "must be positive".into(),
            });
        }
        let ws = LoraWorkspace::new(&base, &lora, options.batch, options.seq_len)?;
        let n = lora.n_params();
        let n_tok = options.batch * options.seq_len;
        Ok(LoraTrainer {
            opt: AdamW::for_tensor(options.adamw, n, true),
            grads: vec![0.0; n],
            ws,
            base,
            lora,
            options,
            cursor: Cursor { epoch: 0, index: 0 },
            tokens: vec![0; n_tok],
            targets: vec![0; n_tok],
            order: Vec::new(),
            order_epoch: None,
        })
    }

    /// Updates done.
    pub fn step_count(&self) -> u64 {
        self.opt.step
    }

    /// Bytes of the step's buffers (workspace, gradients, moments, adapters).
    pub fn buffer_bytes(&self) -> usize {
        self.ws.bytes()
            + 4 * (self.grads.len() + self.opt.m.len() + self.opt.v.len())
            + 4 * self.lora.n_params()
    }

    fn next_batch(&mut self, data: &Dataset) -> Result<(), TrainError> {
        let n = data.len();
        let t = self.options.seq_len;
        if n == 0 || data.seq_len() != t {
            return Err(TrainError::BadBatch(format!(
                "the training data has {n} windows of {} tokens; need at least one of {t}",
                data.seq_len()
            )));
        }
        for b in 0..self.options.batch {
            if self.cursor.index >= n {
                self.cursor.epoch += 1;
                self.cursor.index = 0;
            }
            if self.order_epoch != Some(self.cursor.epoch) || self.order.len() != n {
                self.order = permutation(n, self.options.seed, self.cursor.epoch);
                self.order_epoch = Some(self.cursor.epoch);
            }
            data.fill(
                self.order[self.cursor.index],
                &mut self.tokens[b * t..(b + 1) * t],
                &mut self.targets[b * t..(b + 1) * t],
            );
            self.cursor.index += 1;
        }
        Ok(())
    }

    /// One update of the adapters: `accum` micro-batches, clipping, AdamW. Dropout masks
    /// are drawn from (seed, step, micro-batch), so a resumed run repeats them.
    pub fn step(&mut self, data: &Dataset) -> Result<StepStats, TrainError> {
        let k = self.options.accum;
        self.grads.fill(0.0);
        let mut loss_sum = 0.0f64;
        for micro in 0..k {
            self.next_batch(data)?;
            let seed = self
                .options
                .seed
                .wrapping_mul(0x2545_F491_4F6C_DD1D)
                .wrapping_add(self.opt.step.wrapping_mul(1 << 20) + micro as u64);
            let loss = forward(
                &self.base,
                &self.lora,
                &mut self.ws,
                &self.tokens,
                &self.targets,
                Some(seed),
            )?;
            if !loss.is_finite() {
                return Err(TrainError::NonFinite {
                    step: self.opt.step + 1,
                    what: "loss",
                });
            }
            loss_sum += loss as f64;
            backward(
                &self.base,
                &self.lora,
                &mut self.ws,
                &mut self.grads,
                1.0 / k as f32,
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
        self.opt.update(&mut self.lora.values, &self.grads, lr);
        Ok(StepStats {
            step: self.opt.step,
            loss: (loss_sum / k as f64) as f32,
            lr,
            grad_norm,
            tokens: k * self.options.batch * self.options.seq_len,
        })
    }

    /// Mean loss per target token over the first `max_batches` batches of `data` (no
    /// dropout, no gradients).
    pub fn eval(&mut self, data: &Dataset, max_batches: usize) -> Result<f32, TrainError> {
        let (b, t) = (self.options.batch, self.options.seq_len);
        let n_batches = data.len().div_ceil(b).min(max_batches);
        if n_batches == 0 || data.seq_len() != t {
            return Err(TrainError::BadBatch(format!(
                "the evaluation data has {} windows of {} tokens; need one of {t}",
                data.len(),
                data.seq_len()
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
            let loss = forward(
                &self.base,
                &self.lora,
                &mut self.ws,
                &self.tokens,
                &self.targets,
                None,
            )?;
            sum += loss as f64 * self.ws.n_valid() as f64;
            count += self.ws.n_valid();
        }
        Ok((sum / count as f64) as f32)
    }

    fn named<'a>(&'a self, prefix: &str, values: &'a [f32]) -> Vec<(String, WriteTensor<'a>)> {
        let r = self.lora.config().rank;
        let mut out = Vec::new();
        for (i, s) in self.lora.specs().iter().enumerate() {
            let (ra, rb) = self.lora.ranges(i);
            out.push((
                format!("{prefix}{}.lora_a", s.base_name()),
                WriteTensor::F32(vec![r, s.n_in], &values[ra]),
            ));
            out.push((
                format!("{prefix}{}.lora_b", s.base_name()),
                WriteTensor::F32(vec![s.n_out, r], &values[rb]),
            ));
        }
        out
    }

    fn read_named(
        &self,
        f: &TensorFile,
        prefix: &str,
        values: &mut [f32],
    ) -> Result<(), TrainError> {
        let r = self.lora.config().rank;
        for (i, s) in self.lora.specs().iter().enumerate() {
            let (ra, rb) = self.lora.ranges(i);
            for (suffix, shape, range) in [
                ("lora_a", vec![r, s.n_in], ra),
                ("lora_b", vec![s.n_out, r], rb),
            ] {
                let name = format!("{prefix}{}.{suffix}", s.base_name());
                let (found, v) = f.f32(&name)?;
                if found != shape.as_slice() {
                    return Err(TrainError::TensorMismatch {
                        name,
                        expected: format!("shape {shape:?}"),
                        found: format!("shape {found:?}"),
                    });
                }
                values[range].copy_from_slice(v);
            }
        }
        Ok(())
    }

    fn config_json(&self) -> String {
        serde_json::to_string(&crate::ConfigFile::from_model_config(self.base.config()))
            .expect("a config serializes")
    }

    /// Writes a checkpoint: adapters (`lora.*`), AdamW moments (`adam_m.*`, `adam_v.*`),
    /// and in the metadata the base's config, the LoRA config, the options, step and cursor.
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        let mut tensors = self.named("lora.", &self.lora.values);
        tensors.extend(self.named("adam_m.", &self.opt.m));
        tensors.extend(self.named("adam_v.", &self.opt.v));
        let json = |v: serde_json::Result<String>| v.expect("plain data serializes");
        let meta = HashMap::from([
            (CONFIG_KEY.to_string(), self.config_json()),
            (
                "edgelm.format".to_string(),
                LORA_CHECKPOINT_FORMAT.to_string(),
            ),
            ("edgelm.step".to_string(), self.opt.step.to_string()),
            (
                "edgelm.lora".to_string(),
                json(serde_json::to_string(self.lora.config())),
            ),
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

    /// Restores a run saved by [`LoraTrainer::save`] on `base` (whose config must be the
    /// checkpoint's). Options and the LoRA config come from the checkpoint, `total_steps`
    /// overriding the schedule's length when given.
    pub fn resume(
        base: FrozenBase,
        path: &Path,
        total_steps: Option<u64>,
    ) -> Result<LoraTrainer, TrainError> {
        let f = TensorFile::read(path)?;
        let what = path.display().to_string();
        let meta = |k: &str| {
            f.metadata.get(k).ok_or_else(|| TrainError::Checkpoint {
                path: what.clone(),
                reason: format!("no {k} in the metadata (not an edgelm LoRA checkpoint)"),
            })
        };
        let format = meta("edgelm.format")?;
        if format != LORA_CHECKPOINT_FORMAT {
            return Err(TrainError::Checkpoint {
                path: what.clone(),
                reason: format!("format {format} (expected {LORA_CHECKPOINT_FORMAT})"),
            });
        }
        let base_cfg = serde_json::to_string(&crate::ConfigFile::from_model_config(base.config()))
            .expect("a config serializes");
        let ckpt_cfg = meta(CONFIG_KEY)?;
        if *ckpt_cfg != base_cfg {
            return Err(TrainError::Checkpoint {
                path: what.clone(),
                reason: format!(
                    "it was made for another model: its config is {ckpt_cfg}, this model's is \
                     {base_cfg}"
                ),
            });
        }
        let parse_err = |k: &str, e: &dyn std::fmt::Display| TrainError::Checkpoint {
            path: what.clone(),
            reason: format!("bad {k}: {e}"),
        };
        let lcfg: LoraConfig =
            serde_json::from_str(meta("edgelm.lora")?).map_err(|e| parse_err("edgelm.lora", &e))?;
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
        let lora = LoraParams::new(base.config(), lcfg, 0)?;
        let mut tr = LoraTrainer::new(base, lora, options)?;
        let mut v = std::mem::take(&mut tr.lora.values);
        tr.read_named(&f, "lora.", &mut v)?;
        tr.lora.values = v;
        let mut m = std::mem::take(&mut tr.opt.m);
        tr.read_named(&f, "adam_m.", &mut m)?;
        tr.opt.m = m;
        let mut vv = std::mem::take(&mut tr.opt.v);
        tr.read_named(&f, "adam_v.", &mut vv)?;
        tr.opt.v = vv;
        tr.opt.step = step;
        tr.cursor = cursor;
        Ok(tr)
    }
}
