//! The interposer's process-wide state: settings, the table of committed datatypes ferry
//! handles, the table of pending requests whose buffers ferry owns, and a pool of staging
//! buffers.
//!
//! Handles are keys by value (Open MPI's handles are pointers). A datatype entry is an `Arc`, so
//! a request that uses a type keeps its layout alive even if the application frees the type
//! while the request is pending (MPI-3.1 §4.1.9 allows that).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use ferry_datatypes::Committed;
use mpi::ffi;

use crate::config::Config;
use crate::model::Model;

/// What ferry knows of one committed datatype.
pub(crate) struct TypeEntry {
    /// The canonical layout, ready to pack.
    pub(crate) committed: Committed,
    /// MPI_Type_size, in bytes.
    pub(crate) size: usize,
    /// The type's true lower bound: zero unless it addresses memory by absolute addresses
    /// (with MPI_BOTTOM) or has displacements away from the buffer's start.
    pub(crate) true_lb: isize,
    /// True if the type's bytes are one contiguous run, so the library needs no help.
    pub(crate) contiguous: bool,
    /// Mean length of the contiguous blocks of one element, in bytes.
    pub(crate) mean_block: f64,
    /// Which engine serves this type's MPI_Pack and MPI_Unpack calls, by measurement.
    pub(crate) model: Model,
}

/// A request ferry started on the application's behalf, and the staging buffer it owns.
pub(crate) enum Pending {
    /// A send of packed bytes; the buffer is returned to the pool on completion.
    Send { staging: Vec<u8> },
    /// A receive of packed bytes that is unpacked into the application's buffer on completion.
    Recv {
        staging: Vec<u8>,
        user: UserBuffer,
        count: usize,
        ty: Arc<TypeEntry>,
    },
}

/// An application buffer address kept across calls.
#[derive(Clone, Copy)]
pub(crate) struct UserBuffer(pub(crate) *mut u8);

// SAFETY: the address is only dereferenced by the MPI call that completes the request, as the
// application's own call would; the interposer moves it between threads only as MPI would.
unsafe impl Send for UserBuffer {}

/// Counters of what the interposer did, reported at MPI_Finalize (`FERRY_LOG=info`).
#[derive(Default)]
pub(crate) struct Stats {
    /// Operations (sends, receives, packs, unpacks) whose bytes ferry's engine moved.
    pub(crate) handled: AtomicUsize,
    /// MPI_Pack and MPI_Unpack calls ferry served.
    pub(crate) packs: AtomicUsize,
    /// MPI_Pack and MPI_Unpack calls ferry could serve that went to the library (trials and
    /// cells where the library measured faster).
    pub(crate) packs_left: AtomicUsize,
    /// Committed types ferry describes, and those it left to the library.
    pub(crate) types_known: AtomicUsize,
    pub(crate) types_left: AtomicUsize,
    /// Whether [`Stats::report`] has run.
    reported: AtomicBool,
}

impl Stats {
    pub(crate) fn bump(counter: &AtomicUsize) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Logs the counters (`FERRY_LOG=info`), once: at MPI_Finalize, or at exit for a program
    /// whose MPI_Finalize did not come through the interposer (Fortran's `mpi_finalize`) or
    /// that ended in MPI_Abort.
    pub(crate) fn report(&self) {
        if self.reported.swap(true, Ordering::Relaxed) {
            return;
        }
        let load = |c: &AtomicUsize| c.load(Ordering::Relaxed);
        tracing::info!(
            handled = load(&self.handled),
            packs = load(&self.packs),
            packs_left = load(&self.packs_left),
            types_known = load(&self.types_known),
            types_left = load(&self.types_left),
            "ferry interposer summary"
        );
    }
}

/// Reports the counters at process exit if MPI_Finalize has not (registered with `atexit`).
extern "C" fn report_at_exit() {
    // Nothing may unwind out of an exit handler.
    let _ = std::panic::catch_unwind(|| {
        if let Some(s) = STATE.get() {
            s.stats.report();
        }
    });
}

pub(crate) struct State {
    pub(crate) config: Config,
    /// MPI_TAG_UB, read once at MPI_Init.
    pub(crate) tag_ub: std::ffi::c_int,
    pub(crate) stats: Stats,
    types: RwLock<HashMap<usize, Arc<TypeEntry>>>,
    requests: Mutex<HashMap<usize, Pending>>,
    /// Requests the application released with MPI_Request_free; ferry completes them.
    detached: Mutex<Vec<(ffi::MPI_Request, Pending)>>,
    detached_count: AtomicUsize,
    pool: Mutex<Vec<Vec<u8>>>,
}

// SAFETY: the raw MPI_Request handles in `detached` are plain values; MPI is initialised with
// the application's thread level and every access to them goes through the mutex.
unsafe impl Send for State {}
// SAFETY: as above; all interior state is behind locks.
unsafe impl Sync for State {}

static STATE: OnceLock<State> = OnceLock::new();

/// Largest total size of idle staging buffers kept for reuse.
const POOL_LIMIT_BYTES: usize = 512 << 20;

/// Sets up the state once, after the library's MPI_Init succeeded.
pub(crate) fn init() {
    ferry_comm::init_logging();
    let config = Config::from_env();
    unsafe extern "C" {
        /// `int atexit(void (*)(void))` of the C library.
        fn atexit(handler: extern "C" fn()) -> std::ffi::c_int;
    }
    // SAFETY: registers a handler that takes no arguments and never unwinds.
    unsafe { atexit(report_at_exit) };
    let _ = STATE.set(State {
        config,
        tag_ub: tag_ub(),
        stats: Stats::default(),
        types: RwLock::new(HashMap::new()),
        requests: Mutex::new(HashMap::new()),
        detached: Mutex::new(Vec::new()),
        detached_count: AtomicUsize::new(0),
        pool: Mutex::new(Vec::new()),
    });
    tracing::info!(
        enabled = config.enabled,
        pack_threads = ferry_datatypes::pack_threads(),
        pack_parallel_bytes = ferry_datatypes::pack_parallel_bytes(),
        "ferry interposer active"
    );
}

/// The state, if ferry is initialised and enabled.
pub(crate) fn active() -> Option<&'static State> {
    STATE.get().or_else(init_late).filter(|s| s.config.enabled)
}

/// Sets up the state at the first intercepted call of a program whose MPI_Init did not come
/// through the interposer, if MPI is initialised and not finalised: Open MPI's Fortran
/// `mpi_init` calls `PMPI_Init` itself, so a Fortran program that uses a C library (BLACS,
/// for ScaLAPACK) reaches ferry only through that library's calls.
fn init_late() -> Option<&'static State> {
    let (mut initialized, mut finalized) = (0, 0);
    // SAFETY: both may be called at any time, before MPI_Init and after MPI_Finalize too;
    // each writes one int through a valid pointer.
    let ok = unsafe {
        ffi::PMPI_Initialized(&mut initialized) == ffi::MPI_SUCCESS as std::ffi::c_int
            && ffi::PMPI_Finalized(&mut finalized) == ffi::MPI_SUCCESS as std::ffi::c_int
    };
    if !ok || initialized == 0 || finalized != 0 {
        return None;
    }
    init();
    STATE.get()
}

/// A handle's identity: Open MPI's handles are pointers to library objects.
trait HandleKey {
    fn key(self) -> usize;
}

impl HandleKey for ffi::MPI_Datatype {
    fn key(self) -> usize {
        self.0 as usize
    }
}

impl HandleKey for ffi::MPI_Request {
    fn key(self) -> usize {
        self.0 as usize
    }
}

/// MPI_TAG_UB of MPI_COMM_WORLD (MPI-3.1 §8.1.2); 32767, the standard's minimum, if unreadable.
fn tag_ub() -> std::ffi::c_int {
    let mut value: *mut std::ffi::c_int = std::ptr::null_mut();
    let mut flag: std::ffi::c_int = 0;
    // SAFETY: for MPI_TAG_UB, MPI stores a pointer to an int in `value`; MPI is initialised.
    let rc = unsafe {
        ffi::PMPI_Comm_get_attr(
            ffi::RSMPI_COMM_WORLD,
            ffi::MPI_TAG_UB as std::ffi::c_int,
            (&mut value as *mut *mut std::ffi::c_int).cast(),
            &mut flag,
        )
    };
    if rc == ffi::MPI_SUCCESS as std::ffi::c_int && flag != 0 && !value.is_null() {
        // SAFETY: MPI set `flag`, so `value` points at the attribute's int.
        unsafe { *value }
    } else {
        32767
    }
}

fn key(handle: impl HandleKey) -> usize {
    handle.key()
}

impl State {
    pub(crate) fn insert_type(&self, handle: ffi::MPI_Datatype, entry: TypeEntry) {
        self.types
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key(handle), Arc::new(entry));
    }

    pub(crate) fn remove_type(&self, handle: ffi::MPI_Datatype) {
        self.types
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key(handle));
    }

    pub(crate) fn lookup_type(&self, handle: ffi::MPI_Datatype) -> Option<Arc<TypeEntry>> {
        self.types
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key(handle))
            .cloned()
    }

    pub(crate) fn insert_request(&self, request: ffi::MPI_Request, pending: Pending) {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key(request), pending);
    }

    pub(crate) fn take_request(&self, request: ffi::MPI_Request) -> Option<Pending> {
        let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        if map.is_empty() {
            return None;
        }
        map.remove(&key(request))
    }

    pub(crate) fn has_requests(&self) -> bool {
        !self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    pub(crate) fn detach(&self, request: ffi::MPI_Request, pending: Pending) {
        self.detached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((request, pending));
        self.detached_count.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes the detached requests if there are any (cheap when there are none).
    pub(crate) fn take_detached(&self) -> Vec<(ffi::MPI_Request, Pending)> {
        if self.detached_count.load(Ordering::Relaxed) == 0 {
            return Vec::new();
        }
        let v = std::mem::take(&mut *self.detached.lock().unwrap_or_else(|p| p.into_inner()));
        self.detached_count.fetch_sub(v.len(), Ordering::Relaxed);
        v
    }

    /// A staging buffer of exactly `len` bytes, reused when one of enough capacity is idle.
    pub(crate) fn staging(&self, len: usize) -> Vec<u8> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = pool
            .iter()
            .position(|b| b.capacity() >= len && b.capacity() <= 2 * len.max(4096))
        {
            let mut b = pool.swap_remove(i);
            b.resize(len, 0);
            return b;
        }
        drop(pool);
        vec![0u8; len]
    }

    /// Returns a staging buffer to the pool (or frees it if the pool is full).
    pub(crate) fn recycle(&self, buf: Vec<u8>) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let held: usize = pool.iter().map(Vec::capacity).sum();
        if held + buf.capacity() <= POOL_LIMIT_BYTES {
            pool.push(buf);
        }
    }

    /// Drops every cached type and staging buffer (at MPI_Finalize).
    pub(crate) fn clear(&self) {
        self.types
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}
