//! Batched decoding of several sequences (`Model::forward_decode`) on the real SmolLM2-135M
//! model gives each sequence bit-for-bit the logits it gets decoded alone. Skipped, with a
//! message, when the model is absent.

use std::path::PathBuf;
use std::sync::Arc;

use edgelm_gguf::GgufFile;
use edgelm_kernels::ThreadPool;
use edgelm_model::{Logits, Model, State};

fn model_path() -> Option<PathBuf> {
    let p = std::env::var_os("EDGELM_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/edgelm/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    if p.exists() {
        Some(p)
    } else {
        eprintln!("SKIPPED: real model {} is absent", p.display());
        None
    }
}

#[test]
fn real_model_decode_many_is_bit_identical() {
    let Some(path) = model_path() else { return };
    let file = Arc::new(GgufFile::open(&path).expect("open"));
    let model = Model::load(file).expect("load");
    let v = model.config().n_vocab;
    let pool = ThreadPool::new(2).expect("pool");
    let prompts: [&[u32]; 5] = [
        &[1, 504, 3458, 253, 655],
        &[1, 1345, 314, 260, 3575, 282, 4649, 47, 378, 4553],
        &[42],
        &[
            7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26,
        ],
        &[300, 301],
    ];
    let new = |p: &[u32]| -> State {
        let mut s = model.new_state(256, 64).expect("state");
        model
            .forward(&pool, &mut s, p, Logits::Last)
            .expect("prompt");
        s
    };
    let mut alone: Vec<State> = prompts.iter().map(|p| new(p)).collect();
    let mut batched: Vec<State> = prompts.iter().map(|p| new(p)).collect();
    let mut batch = model.new_decode_batch(prompts.len()).expect("batch");
    for step in 0..4u32 {
        let tokens: Vec<u32> = (0..prompts.len() as u32)
            .map(|i| 100 + step * 31 + i * 977)
            .collect();
        let mut seqs: Vec<&mut State> = batched.iter_mut().collect();
        let rows = model
            .forward_decode(&pool, &mut batch, &mut seqs, &tokens)
            .expect("batched decode")
            .to_vec();
        for (i, &tok) in tokens.iter().enumerate() {
            let one = model
                .forward(&pool, &mut alone[i], &[tok], Logits::Last)
                .expect("decode alone");
            assert!(
                one == &rows[i * v..(i + 1) * v],
                "step {step}, sequence {i}: batched logits differ from decoding alone"
            );
        }
    }
}
