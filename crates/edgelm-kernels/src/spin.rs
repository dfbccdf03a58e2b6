//! A purpose-built fork-join pool for the per-token loop: `n - 1` workers plus the calling
//! thread share each job's chunks through one atomic counter. Idle workers spin briefly on a
//! generation counter (a decode step issues a few hundred small jobs back to back, and a
//! sleeping thread takes tens of microseconds to wake) and then park on a condition variable,
//! so an idle process burns no CPU.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Spin iterations before a worker parks (roughly 50–200 µs on current cores).
const SPIN_LIMIT: u32 = 20_000;

/// A job as the workers see it: a type-erased `&dyn Fn(usize)` and its chunk count.
#[derive(Clone, Copy)]
struct JobRef {
    f: *const (dyn Fn(usize) + Sync),
    n_chunks: usize,
}

struct Shared {
    /// Bumped (Release) after `job` is written for a new job.
    generation: AtomicUsize,
    job: UnsafeCell<Option<JobRef>>,
    next_chunk: AtomicUsize,
    /// Workers that have not yet finished the current job.
    pending: AtomicUsize,
    /// Set when a chunk panicked; the caller re-raises it.
    panicked: AtomicBool,
    shutdown: AtomicBool,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the thread that owns the pool, between jobs, while every
// worker is idle (pending == 0, and workers read `job` only after observing a new generation
// with Acquire ordering, which the Release bump that follows the write publishes). The raw
// closure pointer inside is only dereferenced while the owner blocks in `run`, which keeps the
// closure alive.
unsafe impl Sync for Shared {}
// SAFETY: as above; nothing in Shared is tied to a thread.
unsafe impl Send for Shared {}

/// The spinning pool.
pub(crate) struct SpinPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// `run` is not re-entrant: a job's chunk that calls `run` again runs inline.
    busy: AtomicBool,
}

impl SpinPool {
    /// A pool with `n_threads - 1` workers (the caller is the n-th).
    pub(crate) fn new(n_threads: usize) -> std::io::Result<SpinPool> {
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            next_chunk: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut workers = Vec::new();
        for i in 1..n_threads.max(1) {
            let s = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("edgelm-worker-{i}"))
                .spawn(move || worker(&s, 0));
            match spawned {
                Ok(h) => workers.push(h),
                Err(e) => {
                    // Stop the workers already started before reporting.
                    shutdown(&shared, &mut workers);
                    return Err(e);
                }
            }
        }
        Ok(SpinPool {
            shared,
            workers,
            busy: AtomicBool::new(false),
        })
    }

    /// Runs `f(0..n_chunks)` across the workers and the calling thread; returns when every
    /// chunk has run. A panic in a chunk is re-raised here after all workers are idle.
    pub(crate) fn run(&self, n_chunks: usize, f: &(dyn Fn(usize) + Sync)) {
        if n_chunks == 0 {
            return;
        }
        if self.workers.is_empty()
            || n_chunks == 1
            || self
                .busy
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            (0..n_chunks).for_each(f);
            return;
        }
        let sh = &*self.shared;
        // SAFETY: erasing the lifetime is sound because this function does not return before
        // every worker has finished with the job (pending reaches 0 below, also on panic).
        let f_static: *const (dyn Fn(usize) + Sync) = unsafe {
            std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(f)
        };
        // SAFETY: all workers are idle (previous job finished), so nobody reads `job` now.
        unsafe {
            *sh.job.get() = Some(JobRef {
                f: f_static,
                n_chunks,
            })
        };
        sh.next_chunk.store(0, Ordering::Relaxed);
        sh.pending.store(self.workers.len(), Ordering::Relaxed);
        sh.generation.fetch_add(1, Ordering::SeqCst);
        if sh.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = sh.lock.lock().unwrap_or_else(|e| e.into_inner());
            sh.wake.notify_all();
        }
        let caught =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_chunks(sh, f, n_chunks)));
        let mut spins = 0u32;
        while sh.pending.load(Ordering::Acquire) != 0 {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        self.busy.store(false, Ordering::Release);
        if let Err(p) = caught {
            std::panic::resume_unwind(p);
        }
        if sh.panicked.swap(false, Ordering::Relaxed) {
            panic!("a worker thread panicked while running a parallel job");
        }
    }
}

fn run_chunks(sh: &Shared, f: &(dyn Fn(usize) + Sync), n_chunks: usize) {
    loop {
        let c = sh.next_chunk.fetch_add(1, Ordering::Relaxed);
        if c >= n_chunks {
            break;
        }
        f(c);
    }
}

/// `seen`: the generation when the pool was made (0). It must not be read from `generation` here:
/// the owner may already have started a job before this thread runs.
fn worker(sh: &Shared, mut seen: usize) {
    loop {
        // Wait for a new generation: spin, then park.
        let mut spins = 0u32;
        loop {
            if sh.shutdown.load(Ordering::Acquire) {
                return;
            }
            let g = sh.generation.load(Ordering::Acquire);
            if g != seen {
                seen = g;
                break;
            }
            spins += 1;
            if spins < SPIN_LIMIT {
                std::hint::spin_loop();
                continue;
            }
            let guard = sh.lock.lock().unwrap_or_else(|e| e.into_inner());
            sh.sleepers.fetch_add(1, Ordering::SeqCst);
            // Re-check under the lock: the owner notifies under the same lock after bumping.
            let guard = if sh.generation.load(Ordering::SeqCst) == seen
                && !sh.shutdown.load(Ordering::SeqCst)
            {
                sh.wake.wait(guard).unwrap_or_else(|e| e.into_inner())
            } else {
                guard
            };
            sh.sleepers.fetch_sub(1, Ordering::SeqCst);
            drop(guard);
            spins = 0;
        }
        // SAFETY: the Acquire load of the new generation makes the owner's write visible, and
        // the owner does not touch `job` again until `pending` reaches 0.
        let job = unsafe { *sh.job.get() };
        if let Some(job) = job {
            // SAFETY: the closure outlives the job (see `SpinPool::run`).
            let f = unsafe { &*job.f };
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_chunks(sh, f, job.n_chunks)
            }));
            if r.is_err() {
                sh.panicked.store(true, Ordering::Relaxed);
            }
        }
        sh.pending.fetch_sub(1, Ordering::Release);
    }
}

fn shutdown(sh: &Shared, workers: &mut Vec<JoinHandle<()>>) {
    sh.shutdown.store(true, Ordering::SeqCst);
    {
        let _g = sh.lock.lock().unwrap_or_else(|e| e.into_inner());
        sh.wake.notify_all();
    }
    for h in workers.drain(..) {
        let _ = h.join();
    }
}

impl Drop for SpinPool {
    fn drop(&mut self) {
        shutdown(&self.shared, &mut self.workers);
    }
}
