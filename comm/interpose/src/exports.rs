//! The exported MPI functions. Each one runs ferry's code inside `guard` (no panic crosses the
//! C boundary) and otherwise forwards to `PMPI_*` with the application's arguments unchanged.
//! The exported names are listed in `exports.txt`; a test compares it with `nm -D`.

#![allow(non_snake_case)]

use std::ffi::{c_char, c_int, c_void};
use std::time::Instant;

use mpi::ffi::{self, MPI_Comm, MPI_Datatype, MPI_Request, MPI_Status};

use crate::engine::{
    SUCCESS, eligible, empty_status, error_class, finish, pack_to_staging, packed, peer_ok, plan,
    progress_detached, request_null, status_ignore, statuses_ignore,
};
use crate::model::{Direction, Engine, Model, Pick};
use crate::state::{self, Pending, Stats, TypeEntry, UserBuffer, active};

/// Runs `f`, turning a panic into MPI_ERR_INTERN instead of unwinding into C.
fn guard(call: &'static str, f: impl FnOnce() -> c_int) -> c_int {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(rc) => rc,
        Err(_) => {
            tracing::error!(
                call,
                "ferry panicked inside the interposer; returning MPI_ERR_INTERN"
            );
            ffi::MPI_ERR_INTERN as c_int
        }
    }
}

/// MPI_Init (MPI-3.1 §8.7): the library's, then ferry's state.
///
/// # Safety
/// Called by an MPI application with MPI's own preconditions.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn MPI_Init(argc: *mut c_int, argv: *mut *mut *mut c_char) -> c_int {
    // SAFETY: the application's arguments, forwarded unchanged.
    let rc = unsafe { ffi::PMPI_Init(argc, argv) };
    if rc == SUCCESS {
        guard("MPI_Init", || {
            state::init();
            SUCCESS
        });
    }
    rc
}

/// MPI_Init_thread (MPI-3.1 §12.4.3).
///
/// # Safety
/// Called by an MPI application with MPI's own preconditions.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn MPI_Init_thread(
    argc: *mut c_int,
    argv: *mut *mut *mut c_char,
    required: c_int,
    provided: *mut c_int,
) -> c_int {
    // SAFETY: the application's arguments, forwarded unchanged.
    let rc = unsafe { ffi::PMPI_Init_thread(argc, argv, required, provided) };
    if rc == SUCCESS {
        guard("MPI_Init_thread", || {
            state::init();
            SUCCESS
        });
    }
    rc
}

/// MPI_Finalize (MPI-3.1 §8.7): completes requests the application released, frees ferry's
/// buffers, then finalises the library.
///
/// # Safety
/// Called by an MPI application with MPI's own preconditions.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn MPI_Finalize() -> c_int {
    guard("MPI_Finalize", || {
        if let Some(s) = active() {
            progress_detached(s, true);
            s.stats.report();
            if s.has_requests() {
                tracing::warn!("MPI_Finalize with requests ferry started still pending");
            }
            s.clear();
        }
        SUCCESS
    });
    // SAFETY: forwarded unchanged.
    unsafe { ffi::PMPI_Finalize() }
}

/// MPI_Type_commit (MPI-3.1 §4.1.9): the library commits, then ferry reads the type's
/// constructors and caches its canonical layout.
///
/// # Safety
/// Called by an MPI application with MPI's own preconditions.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn MPI_Type_commit(datatype: *mut MPI_Datatype) -> c_int {
    // SAFETY: forwarded unchanged.
    let rc = unsafe { ffi::PMPI_Type_commit(datatype) };
    if rc != SUCCESS || datatype.is_null() {
        return rc;
    }
    guard("MPI_Type_commit", || {
        if let Some(s) = active() {
            // SAFETY: the commit succeeded, so `*datatype` is a valid committed handle.
            let handle = unsafe { *datatype };
            // SAFETY: as above; MPI is initialised.
            match unsafe { ferry_comm::datatype::type_from_mpi(handle) } {
                Ok(ty) => {
                    let committed = ty.commit();
                    tracing::debug!(layout = %committed.layout(), "committed");
                    let layout = committed.layout();
                    let contiguous = layout.levels().is_empty()
                        && matches!(layout.blocks(), [b] if b.offset == 0 && b.len == ty.size())
                        && ty.lb() == 0
                        && ty.extent() == ty.size() as isize;
                    let blocks = layout.blocks().len()
                        * layout.levels().iter().map(|l| l.count).product::<usize>();
                    let mean_block = ty.size() as f64 / blocks.max(1) as f64;
                    s.insert_type(
                        handle,
                        TypeEntry {
                            size: ty.size(),
                            true_lb: ty.true_lb(),
                            contiguous,
                            mean_block,
                            committed,
                            model: Model::new(),
                        },
                    );
                    Stats::bump(&s.stats.types_known);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "type left to the library");
                    s.remove_type(handle);
                    Stats::bump(&s.stats.types_left);
                }
            }
        }
        rc
    })
}

/// MPI_Type_free (MPI-3.1 §4.1.10). Requests in flight keep ferry's copy of the layout.
///
/// # Safety
/// Called by an MPI application with MPI's own preconditions.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn MPI_Type_free(datatype: *mut MPI_Datatype) -> c_int {
    let handle = if datatype.is_null() {
        MPI_Datatype(std::ptr::null_mut())
    } else {
        // SAFETY: the application passes a pointer to its handle.
        unsafe { *datatype }
    };
    // SAFETY: forwarded unchanged.
    let rc = unsafe { ffi::PMPI_Type_free(datatype) };
    if rc == SUCCESS {
        guard("MPI_Type_free", || {
            if let Some(s) = active() {
                s.remove_type(handle);
            }
            SUCCESS
        });
    }
    rc
}

/// The step MPI_Pack and MPI_Unpack share. If ferry's engine could serve `count` elements of
/// `datatype` (see [`eligible`]) and the packed range `[*position, *position + bytes)` fits
/// the packed buffer's `capacity`, the type's measured model (`model.rs`; or the block-size
/// rule when `FERRY_LIBRARY_BLOCK_BYTES` is set) picks the engine: ferry runs
/// `copy(type, pos, bytes)` and advances `*position`; the library runs `library()`, the call
/// passed through unchanged. Trial calls are timed and reported to the model. Every other call,
/// and one whose `copy` failed, passes through to the library, which reports any error itself.
///
/// # Safety
/// `position` must be null or the application's valid position pointer.
unsafe fn at_position(
    direction: Direction,
    (datatype, count, user_null): (MPI_Datatype, c_int, bool),
    (packed_null, capacity, position): (bool, c_int, *mut c_int),
    copy: impl FnOnce(&TypeEntry, usize, usize) -> bool,
    library: impl FnOnce() -> c_int,
) -> c_int {
    let Some(s) = active() else {
        return library();
    };
    if position.is_null() || packed_null {
        return library();
    }
    let Some((ty, bytes)) = eligible(s, datatype, count, user_null) else {
        return library();
    };
    // SAFETY: checked non-null; the application's position.
    let pos = unsafe { *position };
    if pos < 0 || (pos as usize).saturating_add(bytes) > capacity.max(0) as usize {
        return library();
    }
    let pick = if s.config.block_rule_everywhere {
        let engine = if ty.mean_block >= s.config.library_block_bytes as f64 {
            Engine::Library
        } else {
            Engine::Ferry
        };
        Pick {
            engine,
            timed: false,
        }
    } else {
        ty.model.pick(direction, bytes)
    };
    let start = pick.timed.then(Instant::now);
    let rc = match pick.engine {
        Engine::Ferry if copy(&ty, pos as usize, bytes) => {
            // SAFETY: checked non-null above.
            unsafe { *position = pos + bytes as c_int };
            Stats::bump(&s.stats.handled);
            Stats::bump(&s.stats.packs);
            SUCCESS
        }
        Engine::Ferry => return library(),
        Engine::Library => {
            Stats::bump(&s.stats.packs_left);
            library()
        }
    };
    if let Some(start) = start
        && rc == SUCCESS
    {
        ty.model
            .record(direction, bytes, pick.engine, start.elapsed());
    }
    rc
}

/// MPI_Pack (MPI-3.1 §4.2).
///
/// # Safety
/// Called by an MPI application with MPI's own preconditions.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn MPI_Pack(
    inbuf: *const c_void,
    incount: c_int,
    datatype: MPI_Datatype,
    outbuf: *mut c_void,
    outsize: c_int,
    position: *mut c_int,
    comm: MPI_Comm,
) -> c_int {
    guard("MPI_Pack", || {
        let pack = |ty: &TypeEntry, pos: usize, bytes: usize| {
            // SAFETY: MPI_Pack's contract: `inbuf` holds `incount` elements and `outbuf` has
            // `outsize` bytes, of which [pos, pos+bytes) were checked to fit.
            unsafe {
                ty.committed.pack_raw(
                    inbuf.cast(),
                    incount as usize,
                    outbuf.cast::<u8>().add(pos),
                    0,
                    bytes,
                )
            }
            .is_ok()
        };
        // SAFETY: forwarded unchanged (also when the arguments are bad: the library reports it).
        let library =
            || unsafe { ffi::PMPI_Pack(inbuf, incount, datatype, outbuf, outsize, position, comm) };
        let user = (datatype, incount, inbuf.is_null());
        // SAFETY: the application's position pointer.
        unsafe {
            at_position(
                Direction::Pack,
                user,
                (outbuf.is_null(), outsize, position),
                pack,
                library,
            )
        }
    })
}

/// MPI_Unpack (MPI-3.1 §4.2).
///
/// # Safety
/// Called by an MPI application with MPI's own preconditions.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn MPI_Unpack(
    inbuf: *const c_void,
    insize: c_int,
    position: *mut c_int,
    outbuf: *mut c_void,
    outcount: c_int,
    datatype: MPI_Datatype,
    comm: MPI_Comm,
) -> c_int {
    guard("MPI_Unpack", || {
        let unpack = |ty: &TypeEntry, pos: usize, bytes: usize| {
            // SAFETY: MPI_Unpack's contract: `inbuf` has `insize` bytes, of which [pos, pos+bytes)
            // were checked, and `outbuf` holds `outcount` elements.
            unsafe {
                ty.committed.unpack_raw(
                    inbuf.cast::<u8>().add(pos),
                    outcount as usize,
                    outbuf.cast(),
                    0,
                    bytes,
                )
            }
            .is_ok()
        };
        // SAFETY: forwarded unchanged.
        let library = || unsafe {
            ffi::PMPI_Unpack(inbuf, insize, position, outbuf, outcount, datatype, comm)
        };
        let user = (datatype, outcount, outbuf.is_null());
        // SAFETY: the application's position pointer.
        unsafe {
            at_position(
                Direction::Unpack,
                user,
                (inbuf.is_null(), insize, position),
                unpack,
                library,
            )
        }
    })
}

/// MPI_Pack_size (MPI-3.1 §4.2): the library's answer, which bounds ferry's packed size.
///
/// # Safety
/// Called by an MPI application with MPI's own preconditions.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn MPI_Pack_size(
    incount: c_int,
    datatype: MPI_Datatype,
    comm: MPI_Comm,
    size: *mut c_int,
) -> c_int {
    // SAFETY: forwarded unchanged.
    unsafe { ffi::PMPI_Pack_size(incount, datatype, comm, size) }
}

/// MPI_Send (MPI-3.1 §3.2): non-contiguous types are packed by ferry and sent as MPI_PACKED.
///
/// # Safety
/// Called by an MPI application with MPI's own preconditions.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn MPI_Send(
    buf: *const c_void,
    count: c_int,
    datatype: MPI_Datatype,
    dest: c_int,
    tag: c_int,
    comm: MPI_Comm,
) -> c_int {
    guard("MPI_Send", || {
        if let Some(s) = active().filter(|s| peer_ok(s, comm, dest, tag, false)) {
            if let Some((ty, bytes)) = plan(s, datatype, count, buf.is_null()) {
                // SAFETY: MPI_Send's contract on `buf`.
                let staging = unsafe { pack_to_staging(s, &ty, buf.cast(), count as usize, bytes) };
                // SAFETY: `staging` holds `bytes` packed bytes.
                let rc = unsafe {
                    ffi::PMPI_Send(
                        staging.as_ptr().cast(),
                        bytes as c_int,
                        packed(),
                        dest,
                        tag,
                        comm,
                    )
                };
                s.recycle(staging);
                return rc;
            }
        }
        // SAFETY: forwarded unchanged.
        unsafe { ffi::PMPI_Send(buf, count, datatype, dest, tag, comm) }
    })
}

/// MPI_Recv (MPI-3.1 §3.2): non-contiguous types are received as MPI_PACKED and unpacked.
///
/// # Safety
/// Called by an MPI application with MPI's own preconditions.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn MPI_Recv(
    buf: *mut c_void,
    count: c_int,
    datatype: MPI_Datatype,
    source: c_int,
    tag: c_int,
    comm: MPI_Comm,
    status: *mut MPI_Status,
) -> c_int {
    guard("MPI_Recv", || {
        if let Some(s) = active().filter(|s| peer_ok(s, comm, source, tag, true)) {
            if let Some((ty, bytes)) = plan(s, datatype, count, buf.is_null()) {
                // 1. Match the message first (MPI_Mprobe), so the staging buffer can hold all of
                //    it: Open MPI 4.1 writes a truncated message whole, past the receive count,
                //    on its shared-memory single-copy path (see the crate docs).
                // 2. Receive exactly that message (MPI_Mrecv) with the application's count.
                let mut message = ffi::MPI_Message(std::ptr::null_mut());
                let mut st = empty_status();
                // SAFETY: out-parameters are locals; invalid arguments make the library fail.
                let rc = unsafe { ffi::PMPI_Mprobe(source, tag, comm, &mut message, &mut st) };
                if rc != SUCCESS {
                    if status != status_ignore() {
                        // SAFETY: the application's status pointer.
                        unsafe { *status = st };
                    }
                    return rc;
                }
                let mut incoming: c_int = 0;
                // SAFETY: `st` describes the matched message.
                unsafe { ffi::PMPI_Get_count(&st, packed(), &mut incoming) };
                let staging = s.staging(bytes.max(incoming.max(0) as usize));
                // SAFETY: `staging` has room for the whole message; `message` is the matched one.
                let rc = unsafe {
                    ffi::PMPI_Mrecv(
                        staging.as_ptr() as *mut c_void,
                        bytes as c_int,
                        packed(),
                        &mut message,
                        &mut st,
                    )
                };
                let pending = Pending::Recv {
                    staging,
                    user: UserBuffer(buf.cast()),
                    count: count as usize,
                    ty,
                };
                // SAFETY: the receive completed; `buf` is the application's receive buffer.
                unsafe { finish(s, pending, &st, rc) };
                if status != status_ignore() {
                    // SAFETY: the application's status pointer.
                    unsafe { *status = st };
                }
                return rc;
            }
        }
        // SAFETY: forwarded unchanged.
        unsafe { ffi::PMPI_Recv(buf, count, datatype, source, tag, comm, status) }
    })
}

/// MPI_Isend (MPI-3.1 §3.7.2): the request handed back is the library's own.
///
/// # Safety
/// Called by an MPI application with MPI's own preconditions.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn MPI_Isend(
    buf: *const c_void,
    count: c_int,
    datatype: MPI_Datatype,
    dest: c_int,
    tag: c_int,
    comm: MPI_Comm,
    request: *mut MPI_Request,
) -> c_int {
    guard("MPI_Isend", || {
        if let (Some(s), false) = (
            active().filter(|s| peer_ok(s, comm, dest, tag, false)),
            request.is_null(),
        ) {
            if let Some((ty, bytes)) = plan(s, datatype, count, buf.is_null()) {
                // SAFETY: MPI_Isend's contract on `buf` (read now, once).
                let staging = unsafe { pack_to_staging(s, &ty, buf.cast(), count as usize, bytes) };
                // SAFETY: `staging` is owned by the table until the request completes.
                let rc = unsafe {
                    ffi::PMPI_Isend(
                        staging.as_ptr().cast(),
                        bytes as c_int,
                        packed(),
                        dest,
                        tag,
                        comm,
                        request,
                    )
                };
                if rc == SUCCESS {
                    // SAFETY: the library wrote the new request.
                    s.insert_request(unsafe { *request }, Pending::Send { staging });
                } else {
                    s.recycle(staging);
                }
                return rc;
            }
        }
        // SAFETY: forwarded unchanged.
        unsafe { ffi::PMPI_Isend(buf, count, datatype, dest, tag, comm, request) }
    })
}

/// MPI_Irecv (MPI-3.1 §3.7.2): unpacked when the request completes in a Wait or Test call.
///
/// # Safety
/// Called by an MPI application with MPI's own preconditions.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn MPI_Irecv(
    buf: *mut c_void,
    count: c_int,
    datatype: MPI_Datatype,
    source: c_int,
    tag: c_int,
    comm: MPI_Comm,
    request: *mut MPI_Request,
) -> c_int {
    guard("MPI_Irecv", || {
        if let (Some(s), false) = (
            active().filter(|s| peer_ok(s, comm, source, tag, true)),
            request.is_null(),
        ) {
            if let Some((ty, bytes)) = plan(s, datatype, count, buf.is_null()) {
                let staging = s.staging(bytes);
                // SAFETY: `staging` is owned by the table until the request completes.
                let rc = unsafe {
                    ffi::PMPI_Irecv(
                        staging.as_ptr() as *mut c_void,
                        bytes as c_int,
                        packed(),
                        source,
                        tag,
                        comm,
                        request,
                    )
                };
                if rc == SUCCESS {
                    let pending = Pending::Recv {
                        staging,
                        user: UserBuffer(buf.cast()),
                        count: count as usize,
                        ty,
                    };
                    // SAFETY: the library wrote the new request.
                    s.insert_request(unsafe { *request }, pending);
                } else {
                    s.recycle(staging);
                }
                return rc;
            }
        }
        // SAFETY: forwarded unchanged.
        unsafe { ffi::PMPI_Irecv(buf, count, datatype, source, tag, comm, request) }
    })
}

/// MPI_Sendrecv (MPI-3.1 §3.10): each side packed by ferry where its type is one ferry handles.
///
/// # Safety
/// Called by an MPI application with MPI's own preconditions.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn MPI_Sendrecv(
    sendbuf: *const c_void,
    sendcount: c_int,
    sendtype: MPI_Datatype,
    dest: c_int,
    sendtag: c_int,
    recvbuf: *mut c_void,
    recvcount: c_int,
    recvtype: MPI_Datatype,
    source: c_int,
    recvtag: c_int,
    comm: MPI_Comm,
    status: *mut MPI_Status,
) -> c_int {
    guard("MPI_Sendrecv", || {
        let Some(s) = active().filter(|s| {
            peer_ok(s, comm, dest, sendtag, false) && peer_ok(s, comm, source, recvtag, true)
        }) else {
            // SAFETY: forwarded unchanged.
            return unsafe {
                ffi::PMPI_Sendrecv(
                    sendbuf, sendcount, sendtype, dest, sendtag, recvbuf, recvcount, recvtype,
                    source, recvtag, comm, status,
                )
            };
        };
        let send_plan = plan(s, sendtype, sendcount, sendbuf.is_null());
        let recv_plan = plan(s, recvtype, recvcount, recvbuf.is_null());
        if send_plan.is_none() && recv_plan.is_none() {
            // SAFETY: forwarded unchanged.
            return unsafe {
                ffi::PMPI_Sendrecv(
                    sendbuf, sendcount, sendtype, dest, sendtag, recvbuf, recvcount, recvtype,
                    source, recvtag, comm, status,
                )
            };
        }
        let send_staging = send_plan.as_ref().map(|(ty, bytes)| {
            // SAFETY: MPI_Sendrecv's contract on `sendbuf`.
            unsafe { pack_to_staging(s, ty, sendbuf.cast(), sendcount as usize, *bytes) }
        });
        let (sb, sc, st_) = match (&send_staging, &send_plan) {
            (Some(b), Some((_, bytes))) => (b.as_ptr().cast::<c_void>(), *bytes as c_int, packed()),
            _ => (sendbuf, sendcount, sendtype),
        };
        let recv_staging = recv_plan.as_ref().map(|(_, bytes)| s.staging(*bytes));
        let (rb, rc_, rt) = match (&recv_staging, &recv_plan) {
            (Some(b), Some((_, bytes))) => (b.as_ptr() as *mut c_void, *bytes as c_int, packed()),
            _ => (recvbuf, recvcount, recvtype),
        };
        let mut st = empty_status();
        // SAFETY: the buffers are the application's or ferry's staging, sized for the counts.
        let rc = unsafe {
            ffi::PMPI_Sendrecv(
                sb, sc, st_, dest, sendtag, rb, rc_, rt, source, recvtag, comm, &mut st,
            )
        };
        if let Some(b) = send_staging {
            s.recycle(b);
        }
        if let (Some(staging), Some((ty, _))) = (recv_staging, recv_plan) {
            let pending = Pending::Recv {
                staging,
                user: UserBuffer(recvbuf.cast()),
                count: recvcount as usize,
                ty,
            };
            // SAFETY: the receive completed; `recvbuf` is the application's buffer.
            unsafe { finish(s, pending, &st, rc) };
        }
        if status != status_ignore() {
            // SAFETY: the application's status pointer.
            unsafe { *status = st };
        }
        rc
    })
}

/// MPI_Wait (MPI-3.1 §3.7.3).
///
/// # Safety
/// Called by an MPI application with MPI's own preconditions.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn MPI_Wait(request: *mut MPI_Request, status: *mut MPI_Status) -> c_int {
    guard("MPI_Wait", || {
        let Some(s) = active() else {
            // SAFETY: forwarded unchanged.
            return unsafe { ffi::PMPI_Wait(request, status) };
        };
        progress_detached(s, false);
        // SAFETY: the application's request pointer (MPI requires it valid).
        let handle = if request.is_null() {
            request_null()
        } else {
            // SAFETY: the application's request pointer, checked non-null.
            unsafe { *request }
        };
        let mut st = empty_status();
        // SAFETY: forwarded with a status of ours.
        let rc = unsafe { ffi::PMPI_Wait(request, &mut st) };
        if let Some(p) = s.take_request(handle) {
            // SAFETY: the request completed.
            unsafe { finish(s, p, &st, rc) };
        }
        if status != status_ignore() {
            // SAFETY: the application's status pointer.
            unsafe { *status = st };
        }
        rc
    })
}

/// MPI_Test (MPI-3.1 §3.7.3).
///
/// # Safety
/// Called by an MPI application with MPI's own preconditions.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn MPI_Test(
    request: *mut MPI_Request,
    flag: *mut c_int,
    status: *mut MPI_Status,
) -> c_int {
    guard("MPI_Test", || {
        let Some(s) = active() else {
            // SAFETY: forwarded unchanged.
            return unsafe { ffi::PMPI_Test(request, flag, status) };
        };
        progress_detached(s, false);
        // SAFETY: the application's request pointer.
        let handle = if request.is_null() {
            request_null()
        } else {
            // SAFETY: the application's request pointer, checked non-null.
            unsafe { *request }
        };
        let mut st = empty_status();
        // SAFETY: forwarded with a status of ours.
        let rc = unsafe { ffi::PMPI_Test(request, flag, &mut st) };
        // SAFETY: `flag` is the application's.
        let done = !flag.is_null() && unsafe { *flag } != 0;
        if done || rc != SUCCESS {
            if let Some(p) = s.take_request(handle) {
                // SAFETY: the request completed.
                unsafe { finish(s, p, &st, rc) };
            }
        }
        if status != status_ignore() {
            // SAFETY: the application's status pointer.
            unsafe { *status = st };
        }
        rc
    })
}

/// Saves the handles of an array of requests before a multiple-completion call.
///
/// # Safety
/// `requests` must point to `count` handles (or be null with `count` 0).
unsafe fn handles(count: c_int, requests: *const MPI_Request) -> Vec<MPI_Request> {
    if count <= 0 || requests.is_null() {
        return Vec::new();
    }
    // SAFETY: caller contract.
    unsafe { std::slice::from_raw_parts(requests, count as usize) }.to_vec()
}

/// The per-request completion code after a multiple-completion call returned `rc`.
fn code_of(rc: c_int, status: &MPI_Status) -> c_int {
    if error_class(rc) == ffi::MPI_ERR_IN_STATUS as c_int {
        status.MPI_ERROR
    } else {
        rc
    }
}

/// After MPI_Waitall or a successful MPI_Testall returned `rc`: finishes every request of
/// `saved` that ferry started and that completed (its per-request code is not
/// MPI_ERR_PENDING).
///
/// # Safety
/// `out` must hold one status per entry of `saved`, written by the library.
unsafe fn complete_all(s: &state::State, saved: &[MPI_Request], out: *const MPI_Status, rc: c_int) {
    for (i, h) in saved.iter().enumerate() {
        // SAFETY: caller contract: `out` holds `saved.len()` statuses.
        let st = unsafe { &*out.add(i) };
        let code = code_of(rc, st);
        if code == ffi::MPI_ERR_PENDING as c_int {
            continue;
        }
        if let Some(p) = s.take_request(*h) {
            // SAFETY: the request completed.
            unsafe { finish(s, p, st, code) };
        }
    }
}

/// MPI_Waitall (MPI-3.1 §3.7.5).
///
/// # Safety
/// Called by an MPI application with MPI's own preconditions.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn MPI_Waitall(
    count: c_int,
    requests: *mut MPI_Request,
    statuses: *mut MPI_Status,
) -> c_int {
    guard("MPI_Waitall", || {
        let Some(s) = active() else {
            // SAFETY: forwarded unchanged.
            return unsafe { ffi::PMPI_Waitall(count, requests, statuses) };
        };
        progress_detached(s, false);
        if !s.has_requests() {
            // SAFETY: forwarded unchanged.
            return unsafe { ffi::PMPI_Waitall(count, requests, statuses) };
        }
        // SAFETY: MPI's contract on `requests`.
        let saved = unsafe { handles(count, requests) };
        let mut local = vec![empty_status(); saved.len()];
        let out = if statuses == statuses_ignore() {
            local.as_mut_ptr()
        } else {
            statuses
        };
        // SAFETY: `out` has room for `count` statuses.
        let rc = unsafe { ffi::PMPI_Waitall(count, requests, out) };
        // SAFETY: the library filled `out` with `count` statuses.
        unsafe { complete_all(s, &saved, out, rc) };
        rc
    })
}

/// MPI_Testall (MPI-3.1 §3.7.5).
///
/// # Safety
/// Called by an MPI application with MPI's own preconditions.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn MPI_Testall(
    count: c_int,
    requests: *mut MPI_Request,
    flag: *mut c_int,
    statuses: *mut MPI_Status,
) -> c_int {
    guard("MPI_Testall", || {
        let Some(s) = active() else {
            // SAFETY: forwarded unchanged.
            return unsafe { ffi::PMPI_Testall(count, requests, flag, statuses) };
        };
        progress_detached(s, false);
        if !s.has_requests() {
            // SAFETY: forwarded unchanged.
            return unsafe { ffi::PMPI_Testall(count, requests, flag, statuses) };
        }
        // SAFETY: MPI's contract on `requests`.
        let saved = unsafe { handles(count, requests) };
        let mut local = vec![empty_status(); saved.len()];
        let out = if statuses == statuses_ignore() {
            local.as_mut_ptr()
        } else {
            statuses
        };
        // SAFETY: `out` has room for `count` statuses.
        let rc = unsafe { ffi::PMPI_Testall(count, requests, flag, out) };
        // SAFETY: `flag` is the application's.
        let all_done = !flag.is_null() && unsafe { *flag } != 0;
        if all_done || rc != SUCCESS {
            // SAFETY: the library filled `out` with `count` statuses.
            unsafe { complete_all(s, &saved, out, rc) };
        }
        rc
    })
}

/// MPI_Waitany (MPI-3.1 §3.7.5).
///
/// # Safety
/// Called by an MPI application with MPI's own preconditions.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn MPI_Waitany(
    count: c_int,
    requests: *mut MPI_Request,
    index: *mut c_int,
    status: *mut MPI_Status,
) -> c_int {
    guard("MPI_Waitany", || {
        let Some(s) = active() else {
            // SAFETY: forwarded unchanged.
            return unsafe { ffi::PMPI_Waitany(count, requests, index, status) };
        };
        progress_detached(s, false);
        // SAFETY: MPI's contract on `requests`.
        let saved = unsafe { handles(count, requests) };
        let mut st = empty_status();
        // SAFETY: forwarded with a status of ours.
        let rc = unsafe { ffi::PMPI_Waitany(count, requests, index, &mut st) };
        complete_indexed(s, &saved, index, &st, rc);
        if status != status_ignore() {
            // SAFETY: the application's status pointer.
            unsafe { *status = st };
        }
        rc
    })
}

/// MPI_Testany (MPI-3.1 §3.7.5).
///
/// # Safety
/// Called by an MPI application with MPI's own preconditions.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn MPI_Testany(
    count: c_int,
    requests: *mut MPI_Request,
    index: *mut c_int,
    flag: *mut c_int,
    status: *mut MPI_Status,
) -> c_int {
    guard("MPI_Testany", || {
        let Some(s) = active() else {
            // SAFETY: forwarded unchanged.
            return unsafe { ffi::PMPI_Testany(count, requests, index, flag, status) };
        };
        progress_detached(s, false);
        // SAFETY: MPI's contract on `requests`.
        let saved = unsafe { handles(count, requests) };
        let mut st = empty_status();
        // SAFETY: forwarded with a status of ours.
        let rc = unsafe { ffi::PMPI_Testany(count, requests, index, flag, &mut st) };
        // SAFETY: `flag` is the application's.
        if !flag.is_null() && unsafe { *flag } != 0 {
            complete_indexed(s, &saved, index, &st, rc);
        }
        if status != status_ignore() {
            // SAFETY: the application's status pointer.
            unsafe { *status = st };
        }
        rc
    })
}

/// Finishes the request a Waitany/Testany call reported through `index`.
fn complete_indexed(
    s: &state::State,
    saved: &[MPI_Request],
    index: *const c_int,
    st: &MPI_Status,
    rc: c_int,
) {
    if index.is_null() {
        return;
    }
    // SAFETY: the application's index pointer, written by the library.
    let i = unsafe { *index };
    if i < 0 || i as usize >= saved.len() {
        return; // MPI_UNDEFINED: nothing completed.
    }
    if let Some(p) = s.take_request(saved[i as usize]) {
        // SAFETY: the request completed.
        unsafe { finish(s, p, st, rc) };
    }
}

/// The signature MPI_Waitsome and MPI_Testsome share.
type SomeFn =
    unsafe extern "C" fn(c_int, *mut MPI_Request, *mut c_int, *mut c_int, *mut MPI_Status) -> c_int;

/// MPI_Waitsome and MPI_Testsome: the library completes some requests (`pmpi`), then ferry
/// finishes those it owns (unpacks receives, recycles staging), with statuses of its own when
/// the application passed MPI_STATUSES_IGNORE.
///
/// # Safety
/// The arguments are the application's, with MPI's own preconditions.
unsafe fn some_completed(
    name: &'static str,
    pmpi: SomeFn,
    incount: c_int,
    requests: *mut MPI_Request,
    outcount: *mut c_int,
    indices: *mut c_int,
    statuses: *mut MPI_Status,
) -> c_int {
    guard(name, || {
        let Some(s) = active() else {
            // SAFETY: forwarded unchanged.
            return unsafe { pmpi(incount, requests, outcount, indices, statuses) };
        };
        progress_detached(s, false);
        // SAFETY: MPI's contract on `requests`.
        let saved = unsafe { handles(incount, requests) };
        let mut local = vec![empty_status(); saved.len()];
        let out = if statuses == statuses_ignore() {
            local.as_mut_ptr()
        } else {
            statuses
        };
        // SAFETY: `out` has room for `incount` statuses.
        let rc = unsafe { pmpi(incount, requests, outcount, indices, out) };
        complete_some(s, &saved, outcount, indices, out, rc);
        rc
    })
}

/// MPI_Waitsome (MPI-3.1 §3.7.5).
///
/// # Safety
/// Called by an MPI application with MPI's own preconditions.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn MPI_Waitsome(
    incount: c_int,
    requests: *mut MPI_Request,
    outcount: *mut c_int,
    indices: *mut c_int,
    statuses: *mut MPI_Status,
) -> c_int {
    // SAFETY: forwarded caller contract.
    unsafe {
        some_completed(
            "MPI_Waitsome",
            ffi::PMPI_Waitsome,
            incount,
            requests,
            outcount,
            indices,
            statuses,
        )
    }
}

/// MPI_Testsome is not in the intercepted list of the issue, but it completes requests too, so
/// ferry must see it: otherwise a receive completed there would never be unpacked.
///
/// # Safety
/// Called by an MPI application with MPI's own preconditions.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn MPI_Testsome(
    incount: c_int,
    requests: *mut MPI_Request,
    outcount: *mut c_int,
    indices: *mut c_int,
    statuses: *mut MPI_Status,
) -> c_int {
    // SAFETY: forwarded caller contract.
    unsafe {
        some_completed(
            "MPI_Testsome",
            ffi::PMPI_Testsome,
            incount,
            requests,
            outcount,
            indices,
            statuses,
        )
    }
}

fn complete_some(
    s: &state::State,
    saved: &[MPI_Request],
    outcount: *const c_int,
    indices: *const c_int,
    out: *const MPI_Status,
    rc: c_int,
) {
    if outcount.is_null() || indices.is_null() {
        return;
    }
    // SAFETY: written by the library.
    let n = unsafe { *outcount };
    for k in 0..n.max(0) as usize {
        // SAFETY: the library wrote `n` indices and statuses.
        let (i, st) = unsafe { (*indices.add(k), &*out.add(k)) };
        let code = code_of(rc, st);
        if i < 0 || i as usize >= saved.len() || code == ffi::MPI_ERR_PENDING as c_int {
            continue;
        }
        if let Some(p) = s.take_request(saved[i as usize]) {
            // SAFETY: the request completed.
            unsafe { finish(s, p, st, code) };
        }
    }
}

/// MPI_Request_free (MPI-3.1 §3.7.3): for a request ferry started, ferry keeps the library's
/// request and completes it later (unpacking a receive), so the semantics the application asked
/// for hold; the application's handle becomes MPI_REQUEST_NULL as usual.
///
/// # Safety
/// Called by an MPI application with MPI's own preconditions.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn MPI_Request_free(request: *mut MPI_Request) -> c_int {
    guard("MPI_Request_free", || {
        if let (Some(s), false) = (active(), request.is_null()) {
            // SAFETY: the application's request pointer.
            let handle = unsafe { *request };
            if let Some(p) = s.take_request(handle) {
                s.detach(handle, p);
                // SAFETY: as above.
                unsafe { *request = request_null() };
                return SUCCESS;
            }
        }
        // SAFETY: forwarded unchanged.
        unsafe { ffi::PMPI_Request_free(request) }
    })
}
