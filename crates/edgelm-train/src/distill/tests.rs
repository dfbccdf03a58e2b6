//! Distillation: each divergence and its gradient against finite differences, the top-k
//! summary, student construction, the teacher cache (round trip, reuse equals fresh,
//! refusal of a mismatched or corrupt file) and a tiny end-to-end run that lowers the KL.

use std::sync::Arc;

use edgelm_gguf::{GgmlType, GgufFile, GgufWriter, Value};
use edgelm_model::ModelConfig;

use super::loss::top_k_row;
use super::*;
use crate::optim::{AdamWConfig, Schedule};
use crate::train::{Dataset, TrainOptions, Trainer};
use crate::{forward, ConfigFile, TrainModel, Workspace};

struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| scale * self.uniform()).collect()
    }
}

/// The teacher row of `logits` at `tau` with `k` kept.
fn teacher_row(logits: &[f32], k: usize, tau: f32) -> (Vec<u32>, Vec<f32>, f32) {
    let (mut ids, mut logp) = (vec![0u32; k], vec![0f32; k]);
    let tail = top_k_row(logits, k, tau, &mut Vec::new(), &mut ids, &mut logp);
    (ids, logp, tail)
}

fn d_of(div: Divergence, s: &[f32], row: TeacherRow<'_>, tau: f32) -> f64 {
    let mut g = vec![0.0; s.len()];
    divergence_row(div, s, row, tau, 1.0, &mut g)
}

#[test]
fn divergence_gradients_match_finite_differences() {
    let v = 13;
    let mut rng = Rng(3);
    for div in [Divergence::Kl, Divergence::ReverseKl, Divergence::Jsd] {
        for &tau in &[1.0f32, 2.0, 0.7] {
            for &k in &[1usize, 4, 13] {
                let t = rng.vec(v, 3.0);
                let (ids, logp, tail) = teacher_row(&t, k, tau);
                let row = TeacherRow {
                    ids: &ids,
                    logp: &logp,
                    log_tail: tail,
                };
                let mut s = rng.vec(v, 2.0);
                let scale = 0.5;
                let mut g = vec![0.0; v];
                let d = divergence_row(div, &s, row, tau, scale, &mut g);
                assert!(d >= -1e-9, "{div:?} τ {tau} k {k}: D = {d}");
                let gmax = g.iter().fold(0.0f32, |a, x| a.max(x.abs())) as f64;
                for i in 0..v {
                    let h = 1e-2f32;
                    let orig = s[i];
                    s[i] = orig + h;
                    let dp = d_of(div, &s, row, tau);
                    s[i] = orig - h;
                    let dm = d_of(div, &s, row, tau);
                    s[i] = orig;
                    let fd = scale as f64 * (dp - dm) / (2.0 * h as f64);
                    let err = (g[i] as f64 - fd).abs();
                    assert!(
                        err <= 2e-3 * gmax.max(1e-3) + 1e-6,
                        "{div:?} τ {tau} k {k} [{i}]: analytic {} vs finite difference {fd}",
                        g[i]
                    );
                }
                // Logits shift-invariance: the gradient sums to zero.
                let sum: f64 = g.iter().map(|&x| x as f64).sum();
                assert!(sum.abs() < 1e-5, "{div:?}: Σ grad = {sum}");
            }
        }
    }
}

#[test]
fn divergences_vanish_at_the_teacher_and_kl_is_exact_without_a_tail() {
    let v = 17;
    let mut rng = Rng(9);
    let t = rng.vec(v, 4.0);
    for div in [Divergence::Kl, Divergence::ReverseKl, Divergence::Jsd] {
        for k in [3, 8, 17] {
            let (ids, logp, tail) = teacher_row(&t, k, 1.5);
            let row = TeacherRow {
                ids: &ids,
                logp: &logp,
                log_tail: tail,
            };
            let d = d_of(div, &t, row, 1.5);
            assert!(d.abs() < 1e-6, "{div:?} k {k}: D(teacher, teacher) = {d}");
        }
    }
    // With every token kept, the forward KL is the full-vocabulary KL.
    let s = rng.vec(v, 2.0);
    let (ids, logp, tail) = teacher_row(&t, v, 1.0);
    assert_eq!(tail, f32::NEG_INFINITY);
    let row = TeacherRow {
        ids: &ids,
        logp: &logp,
        log_tail: tail,
    };
    let ls = |x: &[f32]| {
        let m = x.iter().copied().fold(f32::MIN, f32::max) as f64;
        let z: f64 = x.iter().map(|&a| (a as f64 - m).exp()).sum();
        x.iter()
            .map(|&a| a as f64 - m - z.ln())
            .collect::<Vec<f64>>()
    };
    let (lp, lq) = (ls(&t), ls(&s));
    let full: f64 = (0..v).map(|i| lp[i].exp() * (lp[i] - lq[i])).sum();
    let d = d_of(Divergence::Kl, &s, row, 1.0);
    assert!((d - full).abs() < 1e-5, "{d} vs {full}");
}

#[test]
fn top_k_keeps_the_largest_and_accounts_for_all_mass() {
    let logits = [0.5f32, 3.0, -1.0, 3.0, 2.0, 0.0];
    let (ids, logp, tail) = teacher_row(&logits, 3, 2.0);
    assert_eq!(ids, [1, 3, 4]); // ties to the lower id
    let mass: f64 = logp.iter().map(|&x| (x as f64).exp()).sum::<f64>() + (tail as f64).exp();
    assert!((mass - 1.0).abs() < 1e-6, "{mass}");
    let z: f64 = logits.iter().map(|&x| (x as f64 / 2.0).exp()).sum();
    assert!((logp[2] as f64 - (1.0 - z.ln())).abs() < 1e-6);
}

#[test]
fn ignored_positions_get_no_gradient() {
    let (v, n) = (7, 3);
    let mut rng = Rng(4);
    let t = rng.vec(n * v, 2.0);
    let s = rng.vec(n * v, 2.0);
    let rows: Vec<_> = t.chunks(v).map(|r| teacher_row(r, 3, 1.0)).collect();
    let mut d = vec![1.0; n * v];
    let targets = [1, crate::IGNORE, 2];
    let mean = divergence_batch(
        Divergence::Kl,
        1.0,
        &s,
        &targets,
        |i| TeacherRow {
            ids: &rows[i].0,
            logp: &rows[i].1,
            log_tail: rows[i].2,
        },
        1.0,
        &mut d,
    );
    assert!(d[v..2 * v].iter().all(|&x| x == 0.0));
    let one = |i: usize| {
        d_of(
            Divergence::Kl,
            &s[i * v..(i + 1) * v],
            TeacherRow {
                ids: &rows[i].0,
                logp: &rows[i].1,
                log_tail: rows[i].2,
            },
            1.0,
        )
    };
    assert!((mean - (one(0) + one(2)) / 2.0).abs() < 1e-9);
}

fn config(n_layer: usize, n_vocab: usize) -> ModelConfig {
    ConfigFile {
        arch: "llama".into(),
        n_layer,
        n_embd: 32,
        n_head: 4,
        n_head_kv: 2,
        head_dim: None,
        n_ff: 48,
        n_vocab,
        n_ctx_train: 64,
        rms_eps: 1e-5,
        rope_theta: None,
        tied_output: true,
    }
    .to_model_config()
    .unwrap()
}

/// A random model whose weights are large enough for peaked, layer-dependent outputs.
fn random_model(n_layer: usize, n_vocab: usize, seed: u64) -> TrainModel {
    let mut m = TrainModel::random(config(n_layer, n_vocab), seed).unwrap();
    let mut rng = Rng(seed);
    for p in m.params.iter_mut() {
        *p = if *p == 1.0 { 1.0 } else { 0.25 * rng.uniform() };
    }
    m
}

/// `m` as an F32 GGUF that the inference engine loads.
fn to_gguf(m: &TrainModel) -> Arc<GgufFile> {
    let c = m.config();
    let mut w = GgufWriter::new();
    for (k, v) in [
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::U32(c.n_layer as u32)),
        ("llama.embedding_length", Value::U32(c.n_embd as u32)),
        ("llama.attention.head_count", Value::U32(c.n_head as u32)),
        (
            "llama.attention.head_count_kv",
            Value::U32(c.n_head_kv as u32),
        ),
        ("llama.feed_forward_length", Value::U32(c.n_ff as u32)),
        ("llama.context_length", Value::U32(c.n_ctx_train as u32)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(c.rms_eps),
        ),
        ("llama.vocab_size", Value::U32(c.n_vocab as u32)),
    ] {
        w.add_metadata(k, v).unwrap();
    }
    for spec in m.layout().specs() {
        let dims: Vec<u64> = spec.shape.iter().rev().map(|&d| d as u64).collect();
        let bytes: Vec<u8> = m.params[spec.range()]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        w.add_tensor(spec.name.clone(), &dims, GgmlType::F32, bytes)
            .unwrap();
    }
    Arc::new(GgufFile::from_bytes(w.to_bytes()).unwrap())
}

#[test]
fn layer_picks_and_student_construction() {
    assert_eq!(
        pick_layers(30, 15, LayerPick::Even).unwrap(),
        [0, 2, 4, 6, 8, 10, 12, 15, 17, 19, 21, 23, 25, 27, 29]
    );
    assert_eq!(pick_layers(30, 4, LayerPick::Ends).unwrap(), [0, 1, 28, 29]);
    assert_eq!(pick_layers(30, 3, LayerPick::Ends).unwrap(), [0, 1, 29]);
    assert_eq!(pick_layers(5, 1, LayerPick::Even).unwrap(), [0]);
    assert!(pick_layers(5, 6, LayerPick::Even).is_err());
    assert!(pick_layers(5, 0, LayerPick::Ends).is_err());

    let t = random_model(4, 23, 1);
    let s = student_from_layers(&t, &[1, 3]).unwrap();
    assert_eq!(s.config().n_layer, 2);
    assert!(s.layout().n_params() < t.layout().n_params());
    for spec in s.layout().specs() {
        let src = if let Some(rest) = spec.name.strip_prefix("blk.0.") {
            format!("blk.1.{rest}")
        } else if let Some(rest) = spec.name.strip_prefix("blk.1.") {
            format!("blk.3.{rest}")
        } else {
            spec.name.clone()
        };
        let want = t.tensor(&src).unwrap();
        assert_eq!(
            s.tensor(&spec.name).unwrap(),
            want,
            "{} from {src}",
            spec.name
        );
        assert_eq!(t.layout().get(&src).unwrap().shape, spec.shape);
    }
    for bad in [&[][..], &[1, 1], &[2, 1], &[0, 4]] {
        let e = student_from_layers(&t, bad).expect_err("refused");
        assert!(e.to_string().contains("student_layers"), "{e}");
    }
}

#[test]
fn exported_student_has_its_own_block_count_and_loads() {
    let t = random_model(3, 23, 2);
    let src = to_gguf(&t);
    let s = student_from_layers(&t, &[0, 2]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.gguf");
    s.write_gguf(&src, &p, crate::ExportType::F32).unwrap();
    let f = GgufFile::open(&p).unwrap();
    assert_eq!(ModelConfig::from_gguf(&f).unwrap().n_layer, 2);
    assert!(f.tensor("blk.2.attn_q.weight").is_none());
    let back = TrainModel::from_gguf(&f).unwrap();
    assert_eq!(back.params, s.params);
    edgelm_model::Model::load(Arc::new(f)).unwrap();
}

fn header(k: usize) -> CacheHeader {
    CacheHeader {
        teacher: "t".into(),
        data: "d".into(),
        n_windows: 5,
        seq_len: 8,
        k,
        temperature: 1.0,
        n_vocab: 23,
    }
}

#[test]
fn cached_targets_equal_fresh_ones_and_mismatches_are_refused() {
    let t = random_model(2, 23, 5);
    let file = to_gguf(&t);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kd.cache");
    let windows: Vec<Vec<u32>> = (0..5)
        .map(|w| (0..8).map(|i| ((w * 7 + i * 3) % 23) as u32).collect())
        .collect();
    let mut fresh = Vec::new();
    {
        let teacher = Teacher::new(Arc::clone(&file), 1, 8, 4, 1.0).unwrap();
        let cache = TeacherCache::open(&path, header(4)).unwrap();
        let mut src = TeacherSource::new(Some(teacher), Some(cache));
        for w in [3, 0, 4] {
            fresh.push((w, src.targets(w, &windows[w]).unwrap()));
        }
        assert_eq!((src.computed, src.reused), (3, 0));
        // Asked again: from the cache.
        assert_eq!(src.targets(0, &windows[0]).unwrap(), fresh[1].1);
        assert_eq!(src.reused, 1);
    }
    // Reopened without a teacher: the same bytes.
    let cache = TeacherCache::open(&path, header(4)).unwrap();
    assert_eq!(cache.len(), 3);
    let mut src = TeacherSource::new(None, Some(cache));
    for (w, f) in &fresh {
        assert_eq!(&src.targets(*w, &windows[*w]).unwrap(), f);
    }
    let e = src.targets(1, &windows[1]).unwrap_err();
    assert!(e.to_string().contains("not in the cache"), "{e}");
    // The cached rows are the engine's top-k of a fresh forward.
    let mut teacher = Teacher::new(Arc::clone(&file), 1, 8, 4, 1.0).unwrap();
    assert_eq!(teacher.targets(&windows[3]).unwrap(), fresh[0].1);

    // Another k, temperature, teacher or data: refused with the reason.
    let mut h = header(8);
    let e = TeacherCache::open(&path, h.clone())
        .unwrap_err()
        .to_string();
    assert!(e.contains("top-k 4 (this run: 8)"), "{e}");
    h = header(4);
    h.temperature = 2.0;
    let e = TeacherCache::open(&path, h).unwrap_err().to_string();
    assert!(e.contains("temperature"), "{e}");
    h = header(4);
    h.teacher = "other".into();
    let e = TeacherCache::open(&path, h).unwrap_err().to_string();
    assert!(e.contains("another teacher"), "{e}");
    h = header(4);
    h.data = "other".into();
    let e = TeacherCache::open(&path, h).unwrap_err().to_string();
    assert!(e.contains("other training data"), "{e}");

    // A record cut short is dropped (and overwritten by the next append).
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let mut c = TeacherCache::open(&path, header(4)).unwrap();
    assert_eq!(c.len(), 2);
    c.insert(1, fresh[0].1.clone()).unwrap();
    drop(c);
    let c = TeacherCache::open(&path, header(4)).unwrap();
    assert_eq!(c.len(), 3);
    assert_eq!(c.get(1).unwrap(), &fresh[0].1);

    // Not a cache; a hostile record.
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"hello, world, not a cache file").unwrap();
    let e = TeacherCache::open(&junk, header(4))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not an edgelm teacher cache"), "{e}");
    let mut bad = bytes.clone();
    let rec = 4 + 8 * 4 * 8 + 8 * 4;
    let first = bytes.len() - 3 * rec;
    bad[first..first + 4].copy_from_slice(&99u32.to_le_bytes());
    std::fs::write(&path, &bad).unwrap();
    let e = TeacherCache::open(&path, header(4))
        .unwrap_err()
        .to_string();
    assert!(e.contains("window 99"), "{e}");
}

/// Mean forward KL of `m` from the teacher over `windows`.
fn mean_kl(m: &TrainModel, teacher: &mut Teacher, windows: &[Vec<u32>]) -> f64 {
    let t = windows[0].len();
    let mut ws = Workspace::new(m, 1, t).unwrap();
    let mut sum = 0.0;
    for w in windows {
        let targets = vec![0u32; t];
        forward(m, &mut ws, w, &targets).unwrap();
        let tt = teacher.targets(w).unwrap();
        let mut d = vec![0.0; t * m.config().n_vocab];
        sum += divergence_batch(
            Divergence::Kl,
            1.0,
            ws.logits().unwrap(),
            &targets,
            |i| tt.row(i),
            1.0,
            &mut d,
        );
    }
    sum / windows.len() as f64
}

#[test]
fn a_tiny_distillation_lowers_the_kl() {
    let v = 23;
    let t_model = random_model(3, v, 11);
    let file = to_gguf(&t_model);
    let student = student_from_layers(&t_model, &[0]).unwrap();
    let mut rng = Rng(17);
    let stream: Vec<u32> = (0..1200)
        .map(|_| ((rng.uniform() + 1.0) * 0.5 * v as f32) as u32 % v as u32)
        .collect();
    let (seq, b) = (16, 2);
    let data = Dataset::from_stream(&stream, seq);
    let probe: Vec<Vec<u32>> = (0..4)
        .map(|i| stream[i * 97..i * 97 + seq].to_vec())
        .collect();
    let mut probe_teacher = Teacher::new(Arc::clone(&file), 1, seq, v, 1.0).unwrap();
    let before = mean_kl(&student, &mut probe_teacher, &probe);
    let opts = TrainOptions {
        batch: b,
        seq_len: seq,
        accum: 1,
        schedule: Schedule {
            max_lr: 3e-3,
            min_lr: 3e-4,
            warmup_steps: 2,
            total_steps: 60,
        },
        adamw: AdamWConfig {
            weight_decay: 0.0,
            ..AdamWConfig::default()
        },
        clip: 1.0,
        seed: 1,
    };
    let mut tr = Trainer::new(student, opts).unwrap();
    let teacher = Teacher::new(Arc::clone(&file), 1, seq, 8, 2.0).unwrap();
    let mut dl = DistillLoss::new(
        DistillOptions {
            divergence: Divergence::Kl,
            temperature: 2.0,
            alpha: 0.1,
        },
        TeacherSource::new(Some(teacher), None),
        b * seq,
        v,
    )
    .unwrap();
    for _ in 0..60 {
        tr.step_with(&data, Some(&mut dl)).unwrap();
    }
    let after = mean_kl(&tr.model, &mut probe_teacher, &probe);
    eprintln!("KL(teacher ‖ student) {before:.4} -> {after:.4}");
    assert!(before > 0.05, "{before}");
    assert!(after < 0.6 * before, "{before} -> {after}");
}

#[test]
fn bad_options_are_refused() {
    let t = random_model(1, 23, 1);
    let file = to_gguf(&t);
    assert!(Teacher::new(Arc::clone(&file), 1, 8, 0, 1.0).is_err());
    assert!(Teacher::new(Arc::clone(&file), 1, 8, 4, 0.0).is_err());
    for (temperature, alpha) in [(0.0, 0.5), (f32::NAN, 0.5), (1.0, 1.5), (1.0, -0.1)] {
        let o = DistillOptions {
            divergence: Divergence::Jsd,
            temperature,
            alpha,
        };
        assert!(o.validate().is_err(), "{o:?}");
    }
    assert_eq!(Divergence::from_name("rkl"), Some(Divergence::ReverseKl));
    assert_eq!(Divergence::from_name("kld"), None);
}

/// Logits of `m` on `tokens` (one sequence), from the training forward.
fn train_logits(m: &TrainModel, tokens: &[u32]) -> Vec<f32> {
    let mut ws = Workspace::new(m, 1, tokens.len()).unwrap();
    forward(m, &mut ws, tokens, &vec![0u32; tokens.len()]).unwrap();
    ws.logits().unwrap().to_vec()
}

#[test]
fn a_student_that_keeps_every_width_is_the_teacher() {
    let t = random_model(2, 23, 5);
    for pick in [WidthPick::First, WidthPick::Magnitude] {
        let keep = pick_width(&t, Widths::of(t.config()), pick).unwrap();
        let s = student_from_width(&t, &keep).unwrap();
        assert_eq!(s.config(), t.config());
        assert_eq!(s.params, t.params, "{pick:?}");
    }
}

#[test]
fn dropping_heads_and_neurons_equals_zeroing_their_outputs() {
    // Teacher: 4 query heads over 2 key/value heads (D = 8), FFN 48. The student keeps one
    // key/value head with one of its query heads and 20 neurons per block, all channels.
    let t = random_model(2, 23, 7);
    let w = Widths {
        n_embd: 32,
        n_head: 1,
        n_head_kv: 1,
        n_ff: 20,
    };
    for pick in [WidthPick::First, WidthPick::Magnitude] {
        let keep = pick_width(&t, w, pick).unwrap();
        let s = student_from_width(&t, &keep).unwrap();
        assert_eq!(
            (s.config().n_head, s.config().n_head_kv, s.config().n_ff),
            (1, 1, 20)
        );
        // The teacher with the dropped query heads' W_o columns and the dropped neurons'
        // down columns zeroed computes the same function.
        let mut z = t.clone();
        for (il, b) in keep.blocks.iter().enumerate() {
            let spec = z
                .layout()
                .get(&format!("blk.{il}.attn_output.weight"))
                .unwrap()
                .clone();
            for (i, x) in z.params[spec.range()].iter_mut().enumerate() {
                if !b.q_heads.contains(&((i % 32) / 8)) {
                    *x = 0.0;
                }
            }
            let spec = z
                .layout()
                .get(&format!("blk.{il}.ffn_down.weight"))
                .unwrap()
                .clone();
            for (i, x) in z.params[spec.range()].iter_mut().enumerate() {
                if !b.ff.contains(&(i % 48)) {
                    *x = 0.0;
                }
            }
            assert_eq!(b.q_heads[0] / 2, b.kv_heads[0], "query head in its group");
        }
        let tokens = [1u32, 5, 9, 2, 22, 7, 7, 3];
        let (a, b) = (train_logits(&s, &tokens), train_logits(&z, &tokens));
        let max = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(max < 1e-4, "{pick:?}: max |Δlogit| {max}");
        assert!(
            train_logits(&t, &tokens) != a,
            "the pruning changed the function"
        );
    }
}

#[test]
fn magnitude_keeps_the_strongest_channels_heads_and_neurons() {
    let mut t = random_model(1, 23, 9);
    let zero = |t: &mut TrainModel, name: &str, keep: &dyn Fn(usize) -> bool| {
        let spec = t.layout().get(name).unwrap().clone();
        for (i, x) in t.params[spec.range()].iter_mut().enumerate() {
            if !keep(i) {
                *x = 0.0;
            }
        }
    };
    // Residual channel 5 receives nothing; query head 1 (of group 0) writes nothing through
    // W_o; key/value head 0's values are tiny; neuron 3 has no down column.
    zero(&mut t, "token_embd.weight", &|i| i % 32 != 5);
    zero(&mut t, "blk.0.attn_output.weight", &|i| {
        i / 32 != 5 && (i % 32) / 8 != 1
    });
    zero(&mut t, "blk.0.ffn_down.weight", &|i| {
        i / 48 != 5 && i % 48 != 3
    });
    let spec = t.layout().get("blk.0.attn_v.weight").unwrap().clone();
    for x in &mut t.params[spec.range()][..8 * 32] {
        *x *= 1e-3;
    }
    let w = Widths {
        n_embd: 31,
        n_head: 1,
        n_head_kv: 1,
        n_ff: 47,
    };
    let keep = pick_width(&t, w, WidthPick::Magnitude).unwrap();
    assert_eq!(keep.embd, (0..32).filter(|&i| i != 5).collect::<Vec<_>>());
    assert_eq!(keep.blocks[0].kv_heads, [1]);
    assert_eq!(
        keep.blocks[0].ff,
        (0..48).filter(|&i| i != 3).collect::<Vec<_>>()
    );
    let w2 = Widths {
        n_head: 2,
        n_head_kv: 2,
        ..w
    };
    let keep2 = pick_width(&t, w2, WidthPick::Magnitude).unwrap();
    assert_eq!(keep2.blocks[0].q_heads, [0, 2], "head 1 writes nothing");
    let s = student_from_width(&t, &keep).unwrap();
    // Gathered values: the embedding without column 5; the FFN-down matrix without row 5
    // and column 3.
    let (te, se) = (
        t.tensor("token_embd.weight").unwrap(),
        s.tensor("token_embd.weight").unwrap(),
    );
    assert_eq!(se.len(), 23 * 31);
    assert_eq!(se[31 + 5], te[32 + 6]);
    let (td, sd) = (
        t.tensor("blk.0.ffn_down.weight").unwrap(),
        s.tensor("blk.0.ffn_down.weight").unwrap(),
    );
    assert_eq!(sd[5 * 47 + 3], td[6 * 48 + 4]);
    let (tq, sq) = (
        t.tensor("blk.0.attn_k.weight").unwrap(),
        s.tensor("blk.0.attn_k.weight").unwrap(),
    );
    assert_eq!(
        sq[..31],
        tq[8 * 32..8 * 32 + 31]
            .iter()
            .take(5)
            .chain(&tq[8 * 32 + 6..9 * 32])
            .copied()
            .collect::<Vec<_>>()[..]
    );
}

#[test]
fn bad_widths_are_refused() {
    let t = random_model(1, 23, 1);
    let full = Widths::of(t.config());
    for (w, key) in [
        (Widths { n_embd: 0, ..full }, "n_embd"),
        (Widths { n_embd: 33, ..full }, "n_embd"),
        (Widths { n_ff: 49, ..full }, "n_ff"),
        (Widths { n_head: 3, ..full }, "n_head"),
        (
            Widths {
                n_head: 4,
                n_head_kv: 1,
                ..full
            },
            "n_head",
        ),
        (
            Widths {
                n_head_kv: 3,
                ..full
            },
            "n_head_kv",
        ),
    ] {
        let e = pick_width(&t, w, WidthPick::First)
            .expect_err("refused")
            .to_string();
        assert!(e.contains(key), "{w:?}: {e}");
    }
    let mut keep = pick_width(&t, Widths { n_ff: 10, ..full }, WidthPick::First).unwrap();
    keep.blocks[0].ff[3] = 99;
    assert!(student_from_width(&t, &keep).is_err());
}

#[test]
fn a_narrower_exported_student_loads_and_matches_the_training_forward() {
    let t = random_model(3, 23, 4);
    let src = to_gguf(&t);
    let base = student_from_layers(&t, &[0, 2]).unwrap();
    // 24 channels with 2 heads of D = 8 (key_length written: 24 / 2 != 8), then 16 with 2.
    for (n_embd, n_head) in [(24, 2), (16, 2)] {
        let w = Widths {
            n_embd,
            n_head,
            n_head_kv: 1,
            n_ff: 40,
        };
        let keep = pick_width(&base, w, WidthPick::Magnitude).unwrap();
        let s = student_from_width(&base, &keep).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.gguf");
        s.write_gguf(&src, &p, crate::ExportType::F32).unwrap();
        let f = Arc::new(GgufFile::open(&p).unwrap());
        let cfg = ModelConfig::from_gguf(&f).unwrap();
        assert_eq!(cfg, *s.config());
        let back = TrainModel::from_gguf(&f).unwrap();
        assert_eq!(back.params, s.params);
        let tokens = [3u32, 1, 4, 1, 5, 9, 2, 6];
        let want = train_logits(&s, &tokens);
        let m = edgelm_model::Model::load(Arc::clone(&f)).unwrap();
        let mut state = m.new_state(tokens.len(), tokens.len()).unwrap();
        let pool = edgelm_kernels::ThreadPool::new(1).unwrap();
        let got = m
            .forward(&pool, &mut state, &tokens, edgelm_model::Logits::All)
            .unwrap();
        let max = want
            .iter()
            .zip(got)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        // The engine's KV cache is F16 (relative rounding 2^-11); a wrong head layout or
        // width would move the logits by their own size.
        let scale = want.iter().fold(0f32, |a, x| a.max(x.abs()));
        assert!(
            max < 1e-3 * scale.max(1.0),
            "{n_embd}/{n_head}: max |Δlogit| {max} of logits up to {scale}"
        );
    }
}
