//! The thread pool matrix ops run on: the purpose-built spinning pool ([`crate::spin`]) by
//! default, rayon when `EDGELM_POOL=rayon` (kept to measure one against the other).

use std::ops::Range;

use rayon::prelude::*;

use crate::spin::SpinPool;
use crate::KernelError;

enum Backend {
    Spin(SpinPool),
    Rayon(rayon::ThreadPool),
}

/// A fixed-size pool of worker threads.
pub struct ThreadPool {
    backend: Backend,
    n_threads: usize,
}

/// A raw pointer to rows that parallel tasks write disjoint parts of.
struct RowsPtr<T>(*mut T);
// SAFETY: each task derives a slice of rows no other task touches (see `for_each_row_mut`).
unsafe impl<T: Send> Send for RowsPtr<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for RowsPtr<T> {}

impl ThreadPool {
    /// A pool of `n_threads` workers; 0 means one per available CPU.
    pub fn new(n_threads: usize) -> Result<ThreadPool, KernelError> {
        let n_threads = if n_threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            n_threads
        };
        let use_rayon = std::env::var("EDGELM_POOL").is_ok_and(|v| v.eq_ignore_ascii_case("rayon"));
        Self::build(n_threads, use_rayon)
    }

    fn build(n_threads: usize, use_rayon: bool) -> Result<ThreadPool, KernelError> {
        let backend = if use_rayon {
            Backend::Rayon(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n_threads)
                    .thread_name(|i| format!("edgelm-worker-{i}"))
                    .build()
                    .map_err(|e| KernelError::ThreadPool {
                        n_threads,
                        message: e.to_string(),
                    })?,
            )
        } else {
            Backend::Spin(
                SpinPool::new(n_threads).map_err(|e| KernelError::ThreadPool {
                    n_threads,
                    message: e.to_string(),
                })?,
            )
        };
        Ok(ThreadPool { backend, n_threads })
    }

    /// Name of the backend ("spin" or "rayon").
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Spin(_) => "spin",
            Backend::Rayon(_) => "rayon",
        }
    }

    /// Runs `f(c)` for every chunk index `c < n_chunks`, in parallel.
    fn run(&self, n_chunks: usize, f: &(dyn Fn(usize) + Sync)) {
        match &self.backend {
            Backend::Spin(p) => p.run(n_chunks, f),
            Backend::Rayon(p) => p.install(|| (0..n_chunks).into_par_iter().for_each(f)),
        }
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
        self.run(n_chunks, &|c| {
            let start = c * chunk;
            f(start..(start + chunk).min(n_items));
        });
    }

    /// Calls `f(i, row)` for every `row_len`-long row `i` of `data`, in parallel; each task takes
    /// at least `min_rows` consecutive rows. `data.len()` must be a multiple of `row_len`.
    pub fn for_each_row_mut<T: Send>(
        &self,
        data: &mut [T],
        row_len: usize,
        min_rows: usize,
        f: impl Fn(usize, &mut [T]) + Sync + Send,
    ) {
        if row_len == 0 || data.is_empty() {
            return;
        }
        assert_eq!(data.len() % row_len, 0, "for_each_row_mut: ragged rows");
        let n_rows = data.len() / row_len;
        // One group on one thread: everything runs on the caller.
        let per_task = if self.n_threads == 1 {
            n_rows
        } else {
            n_rows.div_ceil(self.n_threads * 4).max(min_rows.max(1))
        };
        self.for_each_row_group_mut(data, row_len, per_task, |first, rows| {
            for (j, row) in rows.chunks_exact_mut(row_len).enumerate() {
                f(first + j, row);
            }
        });
    }

    /// Calls `f(first_row, rows)` for consecutive groups of `group` rows (`row_len` long) of
    /// `data`, in parallel (the last group may be shorter), handed out last group first.
    pub fn for_each_row_group_mut<T: Send>(
        &self,
        data: &mut [T],
        row_len: usize,
        group: usize,
        f: impl Fn(usize, &mut [T]) + Sync + Send,
    ) {
        if row_len == 0 || data.is_empty() || group == 0 {
            return;
        }
        assert_eq!(
            data.len() % row_len,
            0,
            "for_each_row_group_mut: ragged rows"
        );
        let n_rows = data.len() / row_len;
        let n_groups = n_rows.div_ceil(group);
        if n_groups == 1 {
            f(0, data);
            return;
        }
        let base = RowsPtr(data.as_mut_ptr());
        self.run(n_groups, &|c| {
            let base = &base;
            // Last group first: for causal attention the later query groups see more positions,
            // and handing out the largest tasks first evens the threads' finishing times.
            let c = n_groups - 1 - c;
            let first = c * group;
            let last = (first + group).min(n_rows);
            // SAFETY: group c covers rows first..last, disjoint from every other group's and
            // inside `data`; `data` stays mutably borrowed until `run` returns.
            let rows = unsafe {
                std::slice::from_raw_parts_mut(
                    base.0.add(first * row_len),
                    (last - first) * row_len,
                )
            };
            f(first, rows);
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
        for (n_threads, rayon) in [(1, false), (2, false), (3, false), (2, true), (3, true)] {
            let pool = ThreadPool::build(n_threads, rayon).expect("pool");
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

    #[test]
    fn spin_pool_survives_panics_and_many_small_jobs() {
        let pool = ThreadPool::build(3, false).expect("pool");
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.for_each_chunk(64, 1, |r| assert!(!r.contains(&32), "boom"));
        }));
        assert!(r.is_err(), "the chunk's panic reaches the caller");
        let total = AtomicUsize::new(0);
        for _ in 0..2000 {
            pool.for_each_chunk(8, 1, |r| {
                total.fetch_add(r.len(), Ordering::Relaxed);
            });
        }
        assert_eq!(total.load(Ordering::Relaxed), 16000);
        // Nested use runs inline instead of deadlocking.
        let inner = AtomicUsize::new(0);
        pool.for_each_chunk(4, 1, |_| {
            pool.for_each_chunk(4, 1, |r| {
                inner.fetch_add(r.len(), Ordering::Relaxed);
            })
        });
        assert_eq!(inner.load(Ordering::Relaxed), 16);
    }

    #[test]
    fn row_groups_cover_every_row() {
        for (n_threads, rayon) in [(1, false), (2, false), (3, true)] {
            let pool = ThreadPool::build(n_threads, rayon).expect("pool");
            let mut data = vec![0usize; 130 * 3];
            pool.for_each_row_group_mut(&mut data, 3, 64, |first, rows| {
                assert_eq!(first % 64, 0);
                for (j, r) in rows.chunks_exact_mut(3).enumerate() {
                    r.fill(first + j + 1);
                }
            });
            for (k, x) in data.iter().enumerate() {
                assert_eq!(*x, k / 3 + 1);
            }
        }
    }

    #[test]
    fn rows_are_visited_once_with_their_index() {
        for (n_threads, rayon) in [(1, false), (2, false), (3, false), (2, true), (3, true)] {
            let pool = ThreadPool::build(n_threads, rayon).expect("pool");
            for (n_rows, row_len, min_rows) in [(0, 3, 1), (1, 3, 1), (17, 5, 2), (100, 1, 0)] {
                let mut data = vec![0usize; n_rows * row_len];
                pool.for_each_row_mut(&mut data, row_len, min_rows, |i, row| {
                    for x in row.iter_mut() {
                        *x += i + 1;
                    }
                });
                for (k, x) in data.iter().enumerate() {
                    assert_eq!(*x, k / row_len + 1, "n_threads={n_threads} k={k}");
                }
            }
        }
    }
}
