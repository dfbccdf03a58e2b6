//! The thread pool matrix ops run on. Backed by rayon for now; a purpose-built spinning pool
//! can replace it behind the same API.

use std::ops::Range;

use rayon::prelude::*;

use crate::KernelError;

/// A fixed-size pool of worker threads.
pub struct ThreadPool {
    pool: rayon::ThreadPool,
    n_threads: usize,
}

impl ThreadPool {
    /// A pool of `n_threads` workers; 0 means one per available CPU.
    pub fn new(n_threads: usize) -> Result<ThreadPool, KernelError> {
        let n_threads = if n_threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            n_threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n_threads)
            .thread_name(|i| format!("edgelm-worker-{i}"))
            .build()
            .map_err(|e| KernelError::ThreadPool {
                n_threads,
                message: e.to_string(),
            })?;
        Ok(ThreadPool { pool, n_threads })
    }

    /// Number of worker threads.
    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Calls `f` on disjoint ranges covering `0..n_items`, in parallel. Each range holds at
    /// least `min_chunk` items (except when fewer remain); the split does not depend on timing,
    /// only on `n_items`, `min_chunk` and the thread count. With one thread, or a single
    /// chunk, `f` runs on the calling thread.
    pub fn for_each_chunk(
        &self,
        n_items: usize,
        min_chunk: usize,
        f: impl Fn(Range<usize>) + Sync + Send,
    ) {
        if n_items == 0 {
            return;
        }
        // A few chunks per thread balance uneven progress without much scheduling overhead.
        let target_chunks = self.n_threads * 4;
        let chunk = n_items.div_ceil(target_chunks).max(min_chunk.max(1));
        let n_chunks = n_items.div_ceil(chunk);
        if self.n_threads == 1 || n_chunks == 1 {
            f(0..n_items);
            return;
        }
        self.pool.install(|| {
            (0..n_chunks).into_par_iter().for_each(|c| {
                let start = c * chunk;
                f(start..(start + chunk).min(n_items));
            });
        });
    }
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("n_threads", &self.n_threads)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn chunks_cover_every_item_exactly_once() {
        for n_threads in [1, 2, 3] {
            let pool = ThreadPool::new(n_threads).expect("pool");
            assert_eq!(pool.n_threads(), n_threads);
            for (n, min_chunk) in [(0, 1), (1, 1), (7, 2), (100, 1), (1000, 64), (5, 0)] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                pool.for_each_chunk(n, min_chunk, |r| {
                    assert!(r.len() >= min_chunk.min(n) || r.end == n, "chunk {r:?}");
                    for i in r {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    }
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }
}
