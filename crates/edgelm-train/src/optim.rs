//! AdamW (PyTorch's `torch.optim.AdamW` update, operation for operation), the learning-rate
//! schedule (linear warm-up, cosine decay) and gradient clipping by global norm.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::params::ParamLayout;

/// AdamW hyper-parameters (PyTorch's defaults except the weight decay, 0.1 as GPT-style
/// training uses).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// β₁.
    pub beta1: f32,
    /// β₂.
    pub beta2: f32,
    /// ε.
    pub eps: f32,
    /// Decoupled weight decay, applied to matrices only (not to norm weights).
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

/// AdamW state: first and second moments and the step count.
#[derive(Debug, Clone)]
pub struct AdamW {
    /// Hyper-parameters.
    pub config: AdamWConfig,
    /// First moment, one per parameter.
    pub m: Vec<f32>,
    /// Second moment, one per parameter.
    pub v: Vec<f32>,
    /// Updates applied so far.
    pub step: u64,
    /// (range, decayed) per tensor.
    groups: Vec<(std::ops::Range<usize>, bool)>,
}

impl AdamW {
    /// Zero moments for the parameters of `layout`.
    pub fn new(config: AdamWConfig, layout: &ParamLayout) -> AdamW {
        let n = layout.n_params();
        AdamW {
            config,
            m: vec![0.0; n],
            v: vec![0.0; n],
            step: 0,
            groups: layout
                .specs()
                .iter()
                .map(|s| (s.range(), s.is_matrix()))
                .collect(),
        }
    }

    /// Zero moments for one tensor of `n` values (`decayed`: whether weight decay applies).
    pub fn for_tensor(config: AdamWConfig, n: usize, decayed: bool) -> AdamW {
        AdamW {
            config,
            m: vec![0.0; n],
            v: vec![0.0; n],
            step: 0,
            groups: vec![(0..n, decayed)],
        }
    }

    /// One update of `params` with `grads` at learning rate `lr`, as PyTorch computes it:
    /// `p ← p·(1 − lr·wd)`, `m ← m + (1−β₁)(g − m)`, `v ← β₂v + (1−β₂)g²`,
    /// `p ← p − (lr / (1−β₁ᵗ)) · m / (√v / √(1−β₂ᵗ) + ε)`.
    pub fn update(&mut self, params: &mut [f32], grads: &[f32], lr: f32) {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let step_size = lr / bc1;
        for (range, decayed) in &self.groups {
            let decay = if *decayed {
                1.0 - lr * c.weight_decay
            } else {
                1.0
            };
            let r = range.clone();
            params[r.clone()]
                .par_chunks_mut(4096)
                .zip(grads[r.clone()].par_chunks(4096))
                .zip(self.m[r.clone()].par_chunks_mut(4096))
                .zip(self.v[r].par_chunks_mut(4096))
                .for_each(|(((p, g), m), v)| {
                    for i in 0..p.len() {
                        p[i] *= decay;
                        m[i] += (g[i] - m[i]) * (1.0 - c.beta1);
                        v[i] = v[i] * c.beta2 + (1.0 - c.beta2) * g[i] * g[i];
                        let denom = v[i].sqrt() / bc2_sqrt + c.eps;
                        p[i] -= step_size * m[i] / denom;
                    }
                });
        }
    }
}

/// Linear warm-up to `max_lr` over `warmup_steps`, then cosine decay to `min_lr` at
/// `total_steps` (and `min_lr` after).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Peak learning rate.
    pub max_lr: f32,
    /// Final learning rate.
    pub min_lr: f32,
    /// Warm-up steps.
    pub warmup_steps: u64,
    /// Steps of the whole run.
    pub total_steps: u64,
}

impl Schedule {
    /// The learning rate of update `step` (0-based): `max_lr·(step+1)/warmup` during warm-up,
    /// then `min_lr + ½(1 + cos(π·progress))·(max_lr − min_lr)`.
    pub fn lr(&self, step: u64) -> f32 {
        if step < self.warmup_steps {
            return self.max_lr * (step + 1) as f32 / self.warmup_steps as f32;
        }
        if step >= self.total_steps {
            return self.min_lr;
        }
        let span = (self.total_steps - self.warmup_steps).max(1) as f64;
        let progress = (step - self.warmup_steps) as f64 / span;
        let coeff = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        (self.min_lr as f64 + coeff * (self.max_lr - self.min_lr) as f64) as f32
    }
}

/// The global L2 norm of `grads` (summed in f64); when it exceeds `max_norm` (> 0), scales
/// the gradients by `max_norm / (norm + 1e-6)` as PyTorch's `clip_grad_norm_` does. Returns
/// the norm before clipping.
pub fn clip_grad_norm(grads: &mut [f32], max_norm: f32) -> f32 {
    // Partial sums collected in order and added serially: the same result at any thread count
    // and scheduling (a resumed run must repeat the uninterrupted one bit for bit).
    let partial: Vec<f64> = grads
        .par_chunks(4096)
        .map(|c| c.iter().map(|&g| g as f64 * g as f64).sum::<f64>())
        .collect();
    let sq: f64 = partial.iter().sum();
    let norm = sq.sqrt() as f32;
    if max_norm > 0.0 && norm > max_norm {
        let coef = max_norm / (norm + 1e-6);
        grads.par_iter_mut().for_each(|g| *g *= coef);
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_by_cosine() {
        let s = Schedule {
            max_lr: 1e-3,
            min_lr: 1e-4,
            warmup_steps: 4,
            total_steps: 14,
        };
        let close = |a: f32, b: f32| (a - b).abs() < 1e-9;
        assert!(close(s.lr(0), 2.5e-4));
        assert!(close(s.lr(3), 1e-3));
        assert!(close(s.lr(4), 1e-3)); // progress 0: cos 0 = 1
        assert!(close(s.lr(9), 5.5e-4)); // halfway: (max + min) / 2
        assert!(close(s.lr(14), 1e-4));
        assert!(close(s.lr(100), 1e-4));
        // 2.5 of 10 decay steps: min + (1 + cos(π/4))/2 · (max − min)
        let want = 1e-4 + 0.5 * (1.0 + std::f32::consts::FRAC_1_SQRT_2) * 9e-4;
        let s2 = Schedule {
            total_steps: 12,
            ..s
        };
        assert!(close(s2.lr(6), want), "{} vs {want}", s2.lr(6));
    }

    #[test]
    fn clipping_scales_to_the_max_norm_only_above_it() {
        let mut g = vec![3.0f32, 4.0];
        assert_eq!(clip_grad_norm(&mut g, 10.0), 5.0);
        assert_eq!(g, [3.0, 4.0]);
        assert_eq!(clip_grad_norm(&mut g, 1.0), 5.0);
        let n = (g[0] * g[0] + g[1] * g[1]).sqrt();
        assert!((n - 1.0).abs() < 1e-6);
        assert!((g[0] / g[1] - 0.75).abs() < 1e-6);
        assert_eq!(clip_grad_norm(&mut g, 0.0), n, "0 disables clipping");
    }

    #[test]
    fn adamw_first_step_moves_each_weight_by_lr_times_sign() {
        // Step 1: m̂ = g, v̂ = g², so the update is lr·g/(|g| + ε) ≈ lr·sign(g), after decay.
        let cfg = crate::ConfigFile {
            arch: "llama".into(),
            n_layer: 1,
            n_embd: 4,
            n_head: 2,
            n_head_kv: 1,
            head_dim: None,
            n_ff: 4,
            n_vocab: 3,
            n_ctx_train: 8,
            rms_eps: 1e-5,
            rope_theta: None,
            tied_output: true,
        }
        .to_model_config()
        .unwrap();
        let layout = ParamLayout::new(&cfg).unwrap();
        let mut opt = AdamW::new(AdamWConfig::default(), &layout);
        let n = layout.n_params();
        let mut p = vec![1.0f32; n];
        let g: Vec<f32> = (0..n)
            .map(|i| if i % 2 == 0 { 0.5 } else { -2.0 })
            .collect();
        let lr = 0.01;
        opt.update(&mut p, &g, lr);
        for spec in layout.specs() {
            let decay = if spec.is_matrix() {
                1.0 - lr * 0.1
            } else {
                1.0
            };
            for i in spec.range() {
                let want = decay - lr * g[i].signum();
                assert!(
                    (p[i] - want).abs() < 1e-6,
                    "{}[{i}]: {} vs {want}",
                    spec.name,
                    p[i]
                );
            }
        }
    }
}
