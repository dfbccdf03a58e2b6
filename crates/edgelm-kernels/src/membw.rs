//! Memory read bandwidth, measured the way decode reads weights: every worker of the pool
//! streams through its share of a buffer much larger than the caches.

use std::time::Instant;

use crate::ThreadPool;

/// Best-of-`reps` read bandwidth in bytes/s over a `bytes`-long buffer (rounded down to whole
/// 64 KiB chunks; at least one chunk), split across `pool`'s threads.
pub fn read_bandwidth(pool: &ThreadPool, bytes: usize, reps: usize) -> f64 {
    const CHUNK: usize = 64 * 1024;
    let n_chunks = (bytes / CHUNK).max(1);
    let words = CHUNK / 8;
    // Non-zero contents, so every page is really backed by memory.
    let buf: Vec<u64> = (0..n_chunks * words).map(|i| i as u64 | 1).collect();
    let mut best = 0.0f64;
    for _ in 0..reps.max(1) {
        let total = std::sync::atomic::AtomicU64::new(0);
        let t0 = Instant::now();
        pool.for_each_chunk(n_chunks, 1, |r| {
            let part = &buf[r.start * words..r.end * words];
            // Eight independent sums let the loop keep several loads in flight.
            let mut acc = [0u64; 8];
            for c in part.chunks_exact(8) {
                for (a, &x) in acc.iter_mut().zip(c) {
                    *a = a.wrapping_add(x);
                }
            }
            let s = acc.iter().fold(0u64, |a, &b| a.wrapping_add(b));
            total.fetch_add(s, std::sync::atomic::Ordering::Relaxed);
        });
        let secs = t0.elapsed().as_secs_f64();
        std::hint::black_box(total.into_inner());
        best = best.max((n_chunks * CHUNK) as f64 / secs);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidth_is_positive_and_finite() {
        let pool = ThreadPool::new(2).expect("pool");
        let bw = read_bandwidth(&pool, 4 << 20, 2);
        assert!(bw.is_finite() && bw > 1e6, "{bw}");
    }
}
