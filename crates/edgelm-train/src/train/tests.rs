//! The loop: exact resume, refusal of another model's checkpoint, learning on a pattern,
//! stopping on NaN, data windows.

use super::*;
use crate::ConfigFile;

fn config(n_embd: usize) -> edgelm_model::ModelConfig {
    ConfigFile {
        arch: "llama".into(),
        n_layer: 2,
        n_embd,
        n_head: 4,
        n_head_kv: 2,
        head_dim: None,
        n_ff: 32,
        n_vocab: 17,
        n_ctx_train: 64,
        rms_eps: 1e-5,
        rope_theta: None,
        tied_output: true,
    }
    .to_model_config()
    .unwrap()
}

fn options(total_steps: u64) -> TrainOptions {
    TrainOptions {
        batch: 2,
        seq_len: 8,
        accum: 2,
        schedule: Schedule {
            max_lr: 3e-3,
            min_lr: 3e-4,
            warmup_steps: 2,
            total_steps,
        },
        adamw: AdamWConfig::default(),
        clip: 1.0,
        seed: 5,
    }
}

/// A stream with structure to learn: a repeating 7-token pattern with every 5th token noise.
fn stream(n: usize) -> Vec<u32> {
    let mut s = 3u64;
    (0..n)
        .map(|i| {
            if i % 5 == 4 {
                (splitmix(&mut s) % 17) as u32
            } else {
                [1, 4, 9, 16, 8, 2, 11][i % 7]
            }
        })
        .collect()
}

#[test]
fn resume_repeats_the_uninterrupted_run_exactly() {
    let data = Dataset::from_stream(&stream(300), 8);
    let total = 6;
    let mut a = Trainer::new(TrainModel::random(config(16), 1).unwrap(), options(total)).unwrap();
    let mut losses_a = Vec::new();
    for _ in 0..total {
        losses_a.push(a.step(&data).unwrap().loss);
    }

    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt.safetensors");
    let mut b = Trainer::new(TrainModel::random(config(16), 1).unwrap(), options(total)).unwrap();
    let mut losses_b = Vec::new();
    for _ in 0..3 {
        losses_b.push(b.step(&data).unwrap().loss);
    }
    b.save(&ckpt).unwrap();
    drop(b);
    // A different initialisation: everything must come from the checkpoint.
    let fresh = TrainModel::random(config(16), 99).unwrap();
    let mut b = Trainer::resume(fresh, &ckpt, None).unwrap();
    assert_eq!(b.step_count(), 3);
    for _ in 3..total {
        losses_b.push(b.step(&data).unwrap().loss);
    }
    assert_eq!(losses_a, losses_b);
    assert!(
        a.model.params == b.model.params,
        "weights differ after resume"
    );
    assert!(
        a.opt.m == b.opt.m && a.opt.v == b.opt.v,
        "moments differ after resume"
    );
    assert_eq!(a.cursor, b.cursor);
}

#[test]
fn a_checkpoint_of_another_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt.safetensors");
    let tr = Trainer::new(TrainModel::random(config(16), 1).unwrap(), options(4)).unwrap();
    tr.save(&ckpt).unwrap();
    let other = TrainModel::random(config(32), 1).unwrap();
    let e = Trainer::resume(other, &ckpt, None).err().expect("refused");
    assert!(e.to_string().contains("made for another model"), "{e}");
    // Weights only (no optimizer state): not a checkpoint.
    let plain = dir.path().join("weights.safetensors");
    let m = TrainModel::random(config(16), 1).unwrap();
    st::write(&plain, m.named_tensors("", &m.params), HashMap::new()).unwrap();
    let e = Trainer::resume(m, &plain, None).err().expect("refused");
    assert!(
        e.to_string().contains("not an edgelm training checkpoint"),
        "{e}"
    );
}

#[test]
fn training_learns_a_pattern() {
    let (train, eval) = Dataset::from_stream(&stream(2000), 8).split(0.1);
    let mut opts = options(200);
    opts.schedule.max_lr = 1e-2;
    let mut tr = Trainer::new(TrainModel::random(config(16), 2).unwrap(), opts).unwrap();
    let before = tr.eval(&eval, 8).unwrap();
    // A partial last batch (padded with ignored targets) weighs by its tokens: one window
    // evaluated alone equals the mean over a batch holding it twice.
    let one = Dataset::from_stream(&stream(9), 8);
    assert_eq!(one.len(), 1);
    let alone = tr.eval(&one, 1).unwrap();
    let mut twice = one.clone();
    twice.windows.extend_from_slice(&one.windows);
    assert_eq!(twice.len(), 2);
    assert!((tr.eval(&twice, 1).unwrap() - alone).abs() < 1e-6);
    for _ in 0..200 {
        tr.step(&train).unwrap();
    }
    let after = tr.eval(&eval, 8).unwrap();
    // Uniform guessing is ln 17 = 2.83; the pattern leaves only the noise tokens uncertain
    // (one in five: ~ln(17)/5 + the cost of spotting them).
    eprintln!("eval loss {before:.3} -> {after:.3}");
    assert!(before > 2.5, "{before}");
    assert!(after < 1.5, "{after}");
}

#[test]
fn a_nan_stops_the_step_before_the_weights_change() {
    let data = Dataset::from_stream(&stream(300), 8);
    let mut m = TrainModel::random(config(16), 1).unwrap();
    let r = m.layout().get("blk.0.ffn_up.weight").unwrap().range();
    m.params[r.start] = f32::NAN;
    let mut tr = Trainer::new(m, options(4)).unwrap();
    let before = tr.model.params.clone();
    let e = tr.step(&data).unwrap_err();
    assert!(matches!(e, TrainError::NonFinite { step: 1, .. }), "{e}");
    assert_eq!(tr.step_count(), 0);
    let same = tr
        .model
        .params
        .iter()
        .zip(&before)
        .all(|(a, b)| a == b || (a.is_nan() && b.is_nan()));
    assert!(same, "weights changed");
}

#[test]
fn windows_tile_the_stream_with_one_token_overlap() {
    let s: Vec<u32> = (0..20).collect();
    let d = Dataset::from_stream(&s, 4);
    assert_eq!(d.len(), 4); // 0..5, 4..9, 8..13, 12..17 (17..20 is too short)
    assert_eq!(d.window(1), &[4, 5, 6, 7, 8]);
    let (tr, ev) = d.split(0.25);
    assert_eq!((tr.len(), ev.len()), (3, 1));
    assert_eq!(ev.window(0), &[12, 13, 14, 15, 16]);
    assert!(Dataset::from_stream(&s[..4], 4).is_empty());
    assert_eq!(Dataset::from_stream(&s, 4).split(0.0).1.len(), 0);
    // Every window is visited once per epoch.
    let mut p = permutation(10, 1, 0);
    assert_ne!(p, permutation(10, 1, 1));
    p.sort();
    assert_eq!(p, (0..10).collect::<Vec<_>>());
}
