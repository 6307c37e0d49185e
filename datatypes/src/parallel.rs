//! Large pack and unpack calls split over the cores the process may run on.
//!
//! A call that moves at least [`FERRY_PACK_PARALLEL_BYTES`] packed bytes (default 256 KiB)
//! splits its byte range `[first, first + len)` into contiguous segments of at least
//! [`MIN_SEGMENT`] bytes, one per thread, and each thread copies its segment with the same
//! byte-range code that serves MPI_Pack's `position` (so segments may start and end
//! mid-block). The calling thread copies the first segment itself; a [`Pool`] of
//! `threads - 1` workers of the engine's own, made at the first such call, copies the others,
//! and the call returns when all are done. No rayon pool is used, the global one least of
//! all (the application may own it).
//!
//! `threads` is [`FERRY_PACK_THREADS`] if set, else the number of cores in the process's
//! affinity mask (`sched_getaffinity`, through [`std::thread::available_parallelism`], which
//! also honours a cgroup CPU quota) capped at 8; 1 turns the pool off. An MPI rank bound to
//! one core (`mpirun --bind-to core`) therefore packs exactly as before, and one given
//! several (`--map-by ppr:1:socket:PE=4`, say) packs on all of them. The workers inherit the
//! mask of the thread that made them.
//!
//! Waking a sleeping thread costs tens of microseconds on a virtual machine (a futex wake,
//! then an interrupt to a halted virtual CPU), as much as copying a segment. So a worker
//! spins for [`FERRY_PACK_SPIN_US`] microseconds (default 1000) after its last segment before
//! it sleeps, as OpenMP runtimes do (`KMP_BLOCKTIME`, `OMP_WAIT_POLICY`): in a ping-pong or
//! a halo exchange the next message comes well within that. Spinning only uses cores of the
//! process's own mask; `FERRY_PACK_SPIN_US=0` makes workers sleep at once.
//!
//! Writes of neighbouring segments never touch the same byte: packing writes disjoint
//! ranges of the packed buffer, and unpacking writes disjoint sets of the type map's bytes
//! (no kernel writes a gap byte, see `narrow.rs`), so segments only ever share cache lines.
//! One split call runs at a time; a call that finds the pool busy (another application
//! thread's) copies its segments itself, one after the other.
//!
//! Not done yet: the threshold is one number for every machine and block size; it could be
//! measured at the first calls, as the interposer's model does for MPI_Pack.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// Environment variable: the threads a large call uses (1 = off). Default: the cores in the
/// process's affinity mask, at most 8.
pub const FERRY_PACK_THREADS: &str = "FERRY_PACK_THREADS";

/// Environment variable: the fewest packed bytes a call must move to be split. Default
/// 262144 (256 KiB).
pub const FERRY_PACK_PARALLEL_BYTES: &str = "FERRY_PACK_PARALLEL_BYTES";

/// Environment variable: how long, in microseconds, a worker spins waiting for the next
/// segment before it sleeps. Default 1000.
pub const FERRY_PACK_SPIN_US: &str = "FERRY_PACK_SPIN_US";

/// The default of [`FERRY_PACK_SPIN_US`].
const DEFAULT_SPIN_US: u64 = 1000;

/// The default of [`FERRY_PACK_PARALLEL_BYTES`].
const DEFAULT_PARALLEL_BYTES: usize = 256 << 10;

/// The most threads the default takes from the affinity mask.
const DEFAULT_MAX_THREADS: usize = 8;

/// The fewest packed bytes of one segment: below this, waking a thread costs more than it
/// saves.
pub(crate) const MIN_SEGMENT: usize = 64 << 10;

/// The process's setting, read once.
struct Setting {
    threads: usize,
    min_bytes: usize,
    spin: Duration,
    /// `threads - 1` workers, made at the first call that splits.
    pool: OnceLock<Option<Pool>>,
}

fn setting() -> &'static Setting {
    static SETTING: OnceLock<Setting> = OnceLock::new();
    SETTING.get_or_init(|| {
        let number = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
        };
        let spin_us = number(FERRY_PACK_SPIN_US).map_or(DEFAULT_SPIN_US, |n| n as u64);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Setting {
            threads: number(FERRY_PACK_THREADS)
                .filter(|&n| n > 0)
                .unwrap_or(cores.min(DEFAULT_MAX_THREADS)),
            min_bytes: number(FERRY_PACK_PARALLEL_BYTES).unwrap_or(DEFAULT_PARALLEL_BYTES),
            spin: Duration::from_micros(spin_us),
            pool: OnceLock::new(),
        }
    })
}

/// The threads that pack and unpack calls of at least [`pack_parallel_bytes`] packed bytes
/// use, the calling one included; 1 when they are not split (see [`FERRY_PACK_THREADS`]).
pub fn pack_threads() -> usize {
    setting().threads
}

/// The fewest packed bytes a pack or unpack call moves to be split over [`pack_threads`]
/// threads (see [`FERRY_PACK_PARALLEL_BYTES`]).
pub fn pack_parallel_bytes() -> usize {
    setting().min_bytes
}

/// How many segments a call moving `len` packed bytes is split into (1: not split).
pub(crate) fn segments(len: usize) -> usize {
    let s = setting();
    if s.threads <= 1 || len < s.min_bytes {
        return 1;
    }
    s.threads.min(len / MIN_SEGMENT).max(1)
}

/// The process's pool for calls split into segments, if its threads could be started.
pub(crate) fn pool() -> Option<&'static Pool> {
    let s = setting();
    s.pool
        .get_or_init(|| Pool::new(s.threads - 1, s.spin))
        .as_ref()
}

/// Calls `copy(offset, n)` for `segments` contiguous segments that partition `[0, len)`,
/// each but the last a multiple of 64 bytes long: the first on this thread, the others on
/// `pool`'s workers (or, without a pool or with a busy one, on this thread after it).
/// Returns when every call has returned; a panic in any of them is raised here after that.
pub(crate) fn for_each_segment<F>(pool: Option<&Pool>, len: usize, segments: usize, copy: F)
where
    F: Fn(usize, usize) + Sync,
{
    let each = len.div_ceil(segments.max(1)).next_multiple_of(64);
    let segment = |i: usize| {
        let (a, b) = ((i * each).min(len), ((i + 1) * each).min(len));
        if a < b {
            copy(a, b - a);
        }
    };
    match pool {
        Some(pool) if segments > 1 => pool.run(segments, &segment),
        _ => (0..segments.max(1)).for_each(segment),
    }
}

/// Worker threads that spin, then sleep, between split calls (see the module doc).
pub(crate) struct Pool {
    shared: Arc<Shared>,
    threads: Vec<Thread>,
    /// Held by the one split call running on the workers.
    busy: Mutex<()>,
}

/// What the caller and the workers share.
struct Shared {
    /// Bumped once per split call, after `remaining` and `job` are set; workers wait for it
    /// to change.
    generation: AtomicU64,
    /// The current call's segment function and segment count.
    job: Mutex<Option<Job>>,
    /// Workers' segments of the current call not finished yet.
    remaining: AtomicUsize,
    /// Whether a worker's segment of the current call panicked.
    panicked: AtomicBool,
    spin: Duration,
}

/// One split call as the workers see it: worker `i` runs segment `i + 1` if there is one.
#[derive(Clone, Copy)]
struct Job {
    /// The call's generation: a worker runs each generation's segment at most once, even
    /// when it reads the job of a later generation than the one that woke it.
    generation: u64,
    /// The caller's segment function, its lifetime erased; valid while the call runs, which
    /// is as long as any worker has a segment of it left (see [`Pool::run`]).
    segment: *const (dyn Fn(usize) + Sync),
    segments: usize,
}

// SAFETY: the pointee is `Sync`, so calling it from a worker is sound; `Pool::run` keeps it
// alive until every worker given a segment of it has finished.
unsafe impl Send for Job {}

impl Pool {
    /// Starts `workers` threads spinning `spin` before they sleep; `None` if any thread could
    /// not be started (the calls then copy on the calling thread alone).
    pub(crate) fn new(workers: usize, spin: Duration) -> Option<Pool> {
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            job: Mutex::new(None),
            remaining: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            spin,
        });
        let mut threads = Vec::with_capacity(workers);
        for i in 0..workers {
            let shared = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name(format!("ferry-pack-{i}"))
                .spawn(move || work(&shared, i))
                .ok()?;
            threads.push(handle.thread().clone());
        }
        Some(Pool {
            shared,
            threads,
            busy: Mutex::new(()),
        })
    }

    /// Runs `segment(i)` for every `i` in `0..segments`: 0 on this thread, the others on the
    /// workers (those beyond the workers on this thread too).
    fn run(&self, segments: usize, segment: &(dyn Fn(usize) + Sync)) {
        let on_workers = (segments - 1).min(self.threads.len());
        let Ok(_busy) = self.busy.try_lock() else {
            (0..segments).for_each(segment);
            return;
        };
        let sh = &*self.shared;
        // SAFETY: only the lifetime is erased; this function does not return (nor unwind)
        // before `remaining` is back to zero, i.e. before every worker with a segment of
        // this call has returned from it, and workers call it only for this generation.
        let erased: *const (dyn Fn(usize) + Sync + 'static) =
            unsafe { std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), _>(segment) };
        // `remaining` first: a worker that woke for an earlier call may read this job as soon
        // as it is set. (Every segment of earlier calls is done: they waited for zero.)
        sh.panicked.store(false, Ordering::Relaxed);
        sh.remaining.store(on_workers, Ordering::Release);
        let generation = sh.generation.load(Ordering::Relaxed) + 1;
        *sh.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(Job {
            generation,
            segment: erased,
            segments: on_workers + 1,
        });
        sh.generation.store(generation, Ordering::Release);
        for t in &self.threads[..on_workers] {
            // Cheap for a spinning worker (it only sets its token); wakes a sleeping one.
            t.unpark();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| {
            segment(0);
            (on_workers + 1..segments).for_each(segment);
        }));
        let mut polls = 0u32;
        while sh.remaining.load(Ordering::Acquire) != 0 {
            polls = polls.wrapping_add(1);
            if polls % 64 == 0 {
                // A worker may wait for a core (more runnable threads than cores).
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        if let Err(e) = mine {
            resume_unwind(e);
        }
        if sh.panicked.load(Ordering::Relaxed) {
            panic!("a pack segment panicked on a ferry-pack worker");
        }
    }
}

/// Worker `i`'s loop: wait for a generation later than the last job it read (spinning, then
/// sleeping), read the job, run segment `i + 1` of it if there is one, report it done.
fn work(sh: &Shared, i: usize) {
    // Generation 0 is the pool's start, which has no job: a worker that starts after the
    // first call was posted must still run it.
    let mut seen = 0;
    loop {
        let since = Instant::now();
        let mut polls = 0u32;
        loop {
            if sh.generation.load(Ordering::Acquire) > seen {
                break;
            }
            polls = polls.wrapping_add(1);
            if polls % 64 != 0 {
                std::hint::spin_loop();
            } else if since.elapsed() < sh.spin {
                // Cede the core to any other runnable thread of the mask now and then.
                std::thread::yield_now();
            } else {
                // A timeout, so that a wake-up lost to any race costs at most this.
                std::thread::park_timeout(Duration::from_millis(50));
            }
        }
        let job = *sh.job.lock().unwrap_or_else(|e| e.into_inner());
        let Some(job) = job else { continue };
        if job.generation <= seen {
            // This job was read early (set, its generation not yet published) and is done.
            continue;
        }
        seen = job.generation;
        if i + 1 < job.segments {
            // SAFETY: this worker has a segment of the current call, whose caller waits for
            // `remaining` to reach zero before the function goes out of scope.
            let f = unsafe { &*job.segment };
            if catch_unwind(AssertUnwindSafe(|| f(i + 1))).is_err() {
                sh.panicked.store(true, Ordering::Relaxed);
            }
            sh.remaining.fetch_sub(1, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Pool, for_each_segment};
    use std::sync::Mutex;
    use std::time::Duration;

    #[test]
    fn segments_partition_the_range() {
        let spinning = Pool::new(3, Duration::from_millis(1)).unwrap();
        let sleeping = Pool::new(2, Duration::ZERO).unwrap();
        for len in [0usize, 1, 63, 64, 65, 1000, 4096, 100_003] {
            for segments in 1..=6 {
                for p in [None, Some(&spinning), Some(&sleeping)] {
                    let seen = Mutex::new(Vec::new());
                    for_each_segment(p, len, segments, |a, n| seen.lock().unwrap().push((a, n)));
                    let mut seen = seen.into_inner().unwrap();
                    seen.sort();
                    let mut at = 0;
                    for &(a, n) in &seen {
                        assert_eq!(a, at, "len {len} segments {segments}: {seen:?}");
                        assert!(n > 0);
                        at += n;
                    }
                    assert_eq!(at, len, "len {len} segments {segments}: {seen:?}");
                    assert!(seen.len() <= segments);
                    assert!(seen.iter().rev().skip(1).all(|&(_, n)| n % 64 == 0));
                }
            }
        }
    }

    #[test]
    fn segments_run_on_workers_and_panics_reach_the_caller() {
        let pool = Pool::new(3, Duration::from_millis(1)).unwrap();
        let names = Mutex::new(Vec::new());
        for_each_segment(Some(&pool), 4 << 16, 4, |_, _| {
            let name = std::thread::current().name().unwrap_or("").to_string();
            names.lock().unwrap().push(name);
        });
        let names = names.into_inner().unwrap();
        assert_eq!(
            names
                .iter()
                .filter(|n| n.starts_with("ferry-pack-"))
                .count(),
            3,
            "{names:?}"
        );
        let caught = std::panic::catch_unwind(|| {
            for_each_segment(Some(&pool), 4 << 16, 4, |a, _| {
                assert!(a == 0, "segment at {a}")
            });
        });
        assert!(caught.is_err());
        // The pool still works after a worker's segment panicked.
        let count = Mutex::new(0);
        for_each_segment(Some(&pool), 4 << 16, 4, |_, _| *count.lock().unwrap() += 1);
        assert_eq!(count.into_inner().unwrap(), 4);
    }
}
