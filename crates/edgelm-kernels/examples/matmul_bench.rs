//! Single-matrix throughput of `matmul` for the prefill shape: weights of one type × a batch of
//! quantized activations, GMAC/s as the median of repeated runs.
//!
//! `cargo run --release -p edgelm-kernels --example matmul_bench -- [TYPE] [ROWS] [COLS] [TOKENS] [THREADS]`
//! (defaults: Q8_0 1536 576 512 1). Random weights with small block scales.
//!
//! Besides wall time it reports GMAC/s per second of the process's CPU time, which does not
//! count time spent waiting for a core: on a shared machine that is the steadier figure for
//! comparing kernels (with one thread).

use edgelm_kernels::{matmul, quantize_activations, row_bytes, vec_dot_type, GgmlType, ThreadPool};
use std::time::Instant;

fn lcg(s: &mut u64) -> u64 {
    *s = s
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *s >> 33
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ty = match args.first() {
        Some(name) => GgmlType::from_name(name).ok_or(format!("unknown type {name}"))?,
        None => GgmlType::Q8_0,
    };
    let arg = |i: usize, d: usize| -> Result<usize, Box<dyn std::error::Error>> {
        Ok(args.get(i).map(|s| s.parse()).transpose()?.unwrap_or(d))
    };
    let (n_rows, n_cols, n_tokens, n_threads) =
        (arg(1, 1536)?, arg(2, 576)?, arg(3, 512)?, arg(4, 1)?);
    let mut s = 1u64;
    // Random bytes, then every block's leading F16 scale(s) overwritten with a small value.
    let mut w: Vec<u8> = (0..n_rows * row_bytes(ty, n_cols)?)
        .map(|_| lcg(&mut s) as u8)
        .collect();
    let scale = edgelm_kernels::f32_to_f16(0.01).to_le_bytes();
    for b in w.chunks_exact_mut(ty.type_size()) {
        b[..2].copy_from_slice(&scale);
        if matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
            b[2..4].copy_from_slice(&scale);
        }
    }
    let x: Vec<f32> = (0..n_tokens * n_cols)
        .map(|_| lcg(&mut s) as f32 / (1u64 << 31) as f32 - 0.5)
        .collect();
    let mut act = Vec::new();
    quantize_activations(vec_dot_type(ty)?, &x, n_tokens, n_cols, &mut act)?;
    let pool = ThreadPool::new(n_threads)?;
    let mut out = vec![0.0f32; n_rows * n_tokens];
    let mut times = Vec::new();
    let mut cpu = Vec::new();
    for _ in 0..40 {
        let (t, c) = (Instant::now(), cpu_seconds());
        matmul(&pool, ty, &w, n_rows, n_cols, &act, n_tokens, &mut out)?;
        times.push(t.elapsed().as_secs_f64());
        cpu.push(cpu_seconds() - c);
    }
    cpu.sort_by(f64::total_cmp);
    let cpu_med = cpu[cpu.len() / 2];
    times.sort_by(f64::total_cmp);
    let med = times[times.len() / 2];
    let best = times[0];
    let macs = (n_rows * n_cols * n_tokens) as f64;
    println!(
        "{ty} {n_rows}x{n_cols} x {n_tokens} tokens, {n_threads} thread(s): median {:.2} ms, {:.2} GMAC/s; best {:.2} GMAC/s; per CPU second {:.2} GMAC/s (checksum {:.4})",
        med * 1e3,
        macs / med / 1e9,
        macs / best / 1e9,
        macs / cpu_med / 1e9,
        out.iter().map(|v| *v as f64).sum::<f64>()
    );
    Ok(())
}

/// CPU time consumed by this process so far, in seconds.
fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}
