//! Writes the synthetic F32 model that the quantization fixtures are made from:
//! `make_quant_fixture OUT.gguf`. A llama-architecture header (2 layers, width 576, 9 heads,
//! 3 KV heads) over small tensors of awkward shapes — rows of 576 (K-quant fallbacks), 96
//! (only 32-blocks fit), 100 (no block fits: F16), 256/512/768/1536 — filled with rows of
//! different kinds: Gaussian-like noise, noise with outliers, zeros, constants, values below
//! ggml's GROUP_MAX_EPS, one-signed rows, a large range, exact halves (rounding ties) and
//! half-zero rows. Deterministic (own LCG); see scripts/gen_quant_fixtures.sh.
//!
//! With a second argument it also writes an importance matrix for the model's 2-D weights in
//! llama-imatrix's GGUF format (positive values over four orders of magnitude, a few zeros).
use edgelm_gguf::{GgmlType, GgufWriter, Value};

struct Lcg(u64);

impl Lcg {
    fn uniform(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }

    fn normal(&mut self) -> f32 {
        (0..4).map(|_| self.uniform()).sum::<f32>() - 2.0
    }
}

fn row(kind: usize, n: usize, rng: &mut Lcg) -> Vec<f32> {
    (0..n)
        .map(|i| match kind {
            0 => 0.02 * rng.normal(),
            1 => {
                let v = 0.02 * rng.normal();
                if rng.uniform() < 0.02 {
                    v * 50.0
                } else {
                    v
                }
            }
            2 => 0.0,
            3 => 0.7,
            4 => {
                if i % 3 == 0 {
                    1e-20
                } else {
                    0.0
                }
            }
            5 => rng.uniform(),
            6 => -rng.uniform() - 0.1,
            7 => 1000.0 * rng.normal(),
            8 => ((i * 7) % 17) as f32 * 0.5 - 4.0,
            _ => {
                if (i / 16) % 2 == 0 {
                    0.0
                } else {
                    0.05 * rng.normal()
                }
            }
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .ok_or("usage: make_quant_fixture OUT.gguf [IMATRIX.gguf]")?;
    let imatrix_out = std::env::args().nth(2);
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", "llama")?;
    w.add_metadata("general.name", "edgelm quantization fixture")?;
    w.add_metadata("general.file_type", Value::U32(0))?;
    w.add_metadata("llama.block_count", Value::U32(2))?;
    w.add_metadata("llama.context_length", Value::U32(128))?;
    w.add_metadata("llama.embedding_length", Value::U32(576))?;
    w.add_metadata("llama.feed_forward_length", Value::U32(1536))?;
    w.add_metadata("llama.attention.head_count", Value::U32(9))?;
    w.add_metadata("llama.attention.head_count_kv", Value::U32(3))?;
    w.add_metadata("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5))?;
    w.add_metadata("llama.rope.freq_base", Value::F32(10000.0))?;
    let shapes: &[(&str, &[u64])] = &[
        ("token_embd.weight", &[576, 4]),
        ("output_norm.weight", &[576]),
        ("blk.0.attn_norm.weight", &[576]),
        ("blk.0.attn_q.weight", &[512, 4]),
        ("blk.0.attn_k.weight", &[576, 2]),
        ("blk.0.attn_v.weight", &[768, 4]),
        ("blk.0.attn_output.weight", &[256, 4]),
        ("blk.0.ffn_gate.weight", &[96, 4]),
        ("blk.0.ffn_up.weight", &[100, 2]),
        ("blk.0.ffn_down.weight", &[1536, 2]),
        ("blk.1.attn_v.weight", &[256, 4]),
        ("blk.1.ffn_down.weight", &[512, 2]),
    ];
    let mut rng = Lcg(0x5eed);
    let mut kind = 0;
    let mut stats = std::collections::BTreeMap::new();
    for (name, dims) in shapes {
        let n_per_row = dims[0] as usize;
        let n_rows: u64 = dims[1..].iter().product();
        let mut data = Vec::new();
        for _ in 0..n_rows {
            let values = if dims.len() == 1 {
                row(5, n_per_row, &mut rng)
            } else {
                row(kind % 10, n_per_row, &mut rng)
            };
            kind += 1;
            for v in values {
                data.extend_from_slice(&v.to_le_bytes());
            }
        }
        w.add_tensor(*name, dims, GgmlType::F32, data)?;
        if dims.len() == 2 && *name != "token_embd.weight" {
            let in_sum2: Vec<f32> = (0..n_per_row)
                .map(|i| {
                    if i % 37 == 5 {
                        0.0
                    } else {
                        7.0 * 10f32.powf(4.0 * rng.uniform() - 2.0)
                    }
                })
                .collect();
            stats.insert(
                name.to_string(),
                edgelm_quant::imatrix::Stats {
                    in_sum2,
                    counts: vec![7.0],
                },
            );
        }
    }
    w.write_file(&out)?;
    if let Some(p) = imatrix_out {
        edgelm_quant::imatrix::write_gguf(&stats, &["synthetic".to_owned()], 1, 512)?
            .write_file(p)?;
    }
    Ok(())
}
