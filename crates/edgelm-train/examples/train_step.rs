//! Times training steps on a GGUF model: forward, backward and AdamW separately, on fixed
//! token ids. `cargo run --release -p edgelm-train --example train_step -- MODEL.gguf [B T STEPS THREADS]`
//! Prints one line per step and the medians; `EDGELM_CONFIG_OUT=FILE` also writes the model's
//! config JSON (for `bench/train_compare.py`, which times PyTorch on the same shapes).

use std::time::Instant;

use edgelm_gguf::GgufFile;
use edgelm_train::optim::{AdamW, AdamWConfig};
use edgelm_train::{backward, forward, TrainModel, Workspace};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .expect("usage: train_step MODEL.gguf [B T STEPS THREADS]");
    let num = |i: usize, d: usize| args.get(i).map_or(d, |s| s.parse().expect("a number"));
    let (b, t, steps, threads) = (num(2, 2), num(3, 64), num(4, 5), num(5, 2));
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("thread pool");
    let file = GgufFile::open(path).expect("GGUF file");
    let mut model = TrainModel::from_gguf(&file).expect("model");
    if let Some(p) = std::env::var_os("EDGELM_CONFIG_OUT") {
        std::fs::write(p, model.config_json()).expect("write the config");
    }
    let v = model.config().n_vocab as u64;
    let tokens: Vec<u32> = (0..(b * t) as u64)
        .map(|i| ((i * 7919 + 13) * 2654435761 % v) as u32)
        .collect();
    let targets: Vec<u32> = tokens.iter().map(|&x| (x + 1) % v as u32).collect();
    let mut ws = Workspace::new(&model, b, t).expect("workspace");
    let mut grads = vec![0.0f32; model.layout().n_params()];
    let mut opt = AdamW::new(AdamWConfig::default(), model.layout());
    let (mut f_ms, mut b_ms, mut o_ms) = (Vec::new(), Vec::new(), Vec::new());
    for step in 0..steps {
        let t0 = Instant::now();
        let loss = forward(&model, &mut ws, &tokens, &targets).expect("forward");
        let t1 = Instant::now();
        grads.fill(0.0);
        backward(&model, &mut ws, &mut grads, 1.0).expect("backward");
        let t2 = Instant::now();
        opt.update(&mut model.params, &grads, 1e-5);
        let t3 = Instant::now();
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        f_ms.push(ms(t0, t1));
        b_ms.push(ms(t1, t2));
        o_ms.push(ms(t2, t3));
        println!(
            "step {step}: loss {loss:.4} forward {:.0} ms backward {:.0} ms adamw {:.0} ms",
            ms(t0, t1),
            ms(t1, t2),
            ms(t2, t3)
        );
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (f, bw, o) = (med(&mut f_ms), med(&mut b_ms), med(&mut o_ms));
    println!(
        "B={b} T={t} threads={threads}: median forward {f:.0} ms, backward {bw:.0} ms, adamw {o:.0} ms, step {:.0} ms, {:.1} tokens/s",
        f + bw + o,
        (b * t) as f64 / ((f + bw + o) / 1e3)
    );
}
