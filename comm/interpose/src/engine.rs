//! The interposer's decisions and its pack/unpack steps, shared by every export.

use std::ffi::c_int;
use std::sync::Arc;

use mpi::ffi;

use crate::state::{Pending, State, TypeEntry};

pub(crate) const SUCCESS: c_int = ffi::MPI_SUCCESS as c_int;

/// Open MPI's `MPI_PACKED` (the address of its predefined datatype object).
pub(crate) fn packed() -> ffi::MPI_Datatype {
    ffi::MPI_Datatype((&raw mut ffi::ompi_mpi_packed).cast())
}

pub(crate) fn status_ignore() -> *mut ffi::MPI_Status {
    // SAFETY: reading an immutable constant exported by rsmpi's C shim.
    unsafe { ffi::RSMPI_STATUS_IGNORE }
}

pub(crate) fn statuses_ignore() -> *mut ffi::MPI_Status {
    // SAFETY: reading an immutable constant exported by rsmpi's C shim.
    unsafe { ffi::RSMPI_STATUSES_IGNORE }
}

pub(crate) fn request_null() -> ffi::MPI_Request {
    // SAFETY: reading an immutable constant exported by rsmpi's C shim.
    unsafe { ffi::RSMPI_REQUEST_NULL }
}

pub(crate) fn empty_status() -> ffi::MPI_Status {
    // SAFETY: MPI_Status is a plain C struct of integers; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// What ferry will do with `count` elements of `datatype` in a send or receive:
/// `Some((type, packed bytes))` when it packs them itself, `None` when the call passes through
/// to the library unchanged: whatever [`eligible`] refuses, and types with large blocks
/// (`FERRY_LIBRARY_BLOCK_BYTES`).
pub(crate) fn plan(
    state: &State,
    datatype: ffi::MPI_Datatype,
    count: c_int,
    null_buffer: bool,
) -> Option<(Arc<TypeEntry>, usize)> {
    let (entry, bytes) = eligible(state, datatype, count, null_buffer)?;
    if entry.mean_block >= state.config.library_block_bytes as f64 {
        return None;
    }
    crate::state::Stats::bump(&state.stats.handled);
    Some((entry, bytes))
}

/// Whether ferry's engine could serve `count` elements of `datatype`: `Some((type, packed
/// bytes))`, or `None` for calls that always pass through to the library unchanged.
///
/// The library keeps: anything ferry has no committed entry for (predefined, uncommitted,
/// unsupported or duplicated types), contiguous types, zero and negative counts (so the library
/// reports its own errors), messages over `c_int::MAX` packed bytes, messages under
/// `FERRY_PACK_MIN_BYTES`, and null buffers unless the type holds absolute addresses
/// (MPI_BOTTOM).
pub(crate) fn eligible(
    state: &State,
    datatype: ffi::MPI_Datatype,
    count: c_int,
    null_buffer: bool,
) -> Option<(Arc<TypeEntry>, usize)> {
    if count <= 0 {
        return None;
    }
    let entry = state.lookup_type(datatype)?;
    if entry.contiguous {
        return None;
    }
    // A null buffer is MPI_BOTTOM: legal with absolute addresses (a non-zero true lb), else an
    // error the library reports (MPI_ERR_BUFFER) without ferry touching address zero.
    if null_buffer && entry.true_lb == 0 {
        return None;
    }
    let bytes = entry.size.checked_mul(count as usize)?;
    if bytes > c_int::MAX as usize || bytes < state.config.pack_min_bytes || bytes == 0 {
        return None;
    }
    Some((entry, bytes))
}

/// Whether a point-to-point call's peer and tag are ones the library would accept, so ferry may
/// touch the buffers; otherwise the call passes through and the library reports its own error
/// without reading anything. MPI_PROC_NULL passes through too: nothing moves.
pub(crate) fn peer_ok(
    state: &State,
    comm: ffi::MPI_Comm,
    peer: c_int,
    tag: c_int,
    receive: bool,
) -> bool {
    // SAFETY: reading immutable constants exported by rsmpi's C shim.
    let (proc_null, any_source, any_tag) = unsafe {
        (
            ffi::RSMPI_PROC_NULL,
            ffi::RSMPI_ANY_SOURCE,
            ffi::RSMPI_ANY_TAG,
        )
    };
    if peer == proc_null {
        return false;
    }
    let tag_ok = (0..=state.tag_ub).contains(&tag) || (receive && tag == any_tag);
    if !tag_ok {
        return false;
    }
    if receive && peer == any_source {
        return true;
    }
    let (mut inter, mut size): (c_int, c_int) = (0, 0);
    // SAFETY: out-parameter calls; an invalid communicator makes them fail, and then the library
    // reports that error itself.
    unsafe {
        if ffi::PMPI_Comm_test_inter(comm, &mut inter) != SUCCESS {
            return false;
        }
        let rc = if inter != 0 {
            ffi::PMPI_Comm_remote_size(comm, &mut size)
        } else {
            ffi::PMPI_Comm_size(comm, &mut size)
        };
        if rc != SUCCESS {
            return false;
        }
    }
    (0..size).contains(&peer)
}

/// Packs `count` elements at `buf` into a new staging buffer of `bytes` bytes.
///
/// # Safety
/// `buf` must be the application's buffer for a send of `count` elements of `entry`'s type, valid
/// for reads over the type's footprint (MPI's own precondition for the call).
pub(crate) unsafe fn pack_to_staging(
    state: &State,
    entry: &TypeEntry,
    buf: *const u8,
    count: usize,
    bytes: usize,
) -> Vec<u8> {
    let mut staging = state.staging(bytes);
    // SAFETY: forwarded caller contract; `staging` holds exactly the packed size.
    let packed = unsafe {
        entry
            .committed
            .pack_raw(buf, count, staging.as_mut_ptr(), 0, bytes)
    };
    debug_assert!(
        packed.is_ok(),
        "the range was computed from the type: {packed:?}"
    );
    staging
}

/// Completes a request ferry started: unpacks a receive, then recycles the staging buffer.
/// `code` is the request's own completion code.
///
/// # Safety
/// `status` must be the completed request's status, and for a receive the application's buffer
/// must still be valid (MPI's own precondition until completion).
pub(crate) unsafe fn finish(
    state: &State,
    pending: Pending,
    status: &ffi::MPI_Status,
    code: c_int,
) {
    match pending {
        Pending::Send { staging } => state.recycle(staging),
        Pending::Recv {
            staging,
            user,
            count,
            ty,
        } => {
            let mut cancelled: c_int = 0;
            // SAFETY: `status` is a completed request's status.
            unsafe { ffi::PMPI_Test_cancelled(status, &mut cancelled) };
            let delivered = code == SUCCESS || error_class(code) == ffi::MPI_ERR_TRUNCATE as c_int;
            if cancelled == 0 && delivered {
                let mut received: c_int = 0;
                // SAFETY: `status` describes a receive of MPI_PACKED bytes.
                unsafe { ffi::PMPI_Get_count(status, packed(), &mut received) };
                let whole = count.saturating_mul(ty.size);
                let received = (received.max(0) as usize).min(staging.len()).min(whole);
                // SAFETY: `staging` holds `received` packed bytes; `user` is the application's
                // receive buffer for `count` elements (caller contract).
                let unpacked = unsafe {
                    ty.committed
                        .unpack_raw(staging.as_ptr(), count, user.0, 0, received)
                };
                debug_assert!(
                    unpacked.is_ok(),
                    "the range lies inside the stream: {unpacked:?}"
                );
            }
            state.recycle(staging);
        }
    }
}

pub(crate) fn error_class(code: c_int) -> c_int {
    let mut class = code;
    // SAFETY: plain out-parameter call.
    unsafe { ffi::PMPI_Error_class(code, &mut class) };
    class
}

/// Completes the requests the application released with MPI_Request_free, as far as they are
/// done (`block`: wait for all of them, at MPI_Finalize).
pub(crate) fn progress_detached(state: &State, block: bool) {
    let mut still = Vec::new();
    for (mut request, pending) in state.take_detached() {
        let mut status = empty_status();
        let mut flag: c_int = 0;
        let code = if block {
            flag = 1;
            // SAFETY: `request` is an active request ferry kept after the application freed it.
            unsafe { ffi::PMPI_Wait(&mut request, &mut status) }
        } else {
            // SAFETY: as above.
            unsafe { ffi::PMPI_Test(&mut request, &mut flag, &mut status) }
        };
        if flag != 0 || code != SUCCESS {
            // SAFETY: the request completed; its buffers are still owned by `pending` or by the
            // application, which released the request and so promised to keep them until done.
            unsafe { finish(state, pending, &status, code) };
        } else {
            still.push((request, pending));
        }
    }
    for (r, p) in still {
        state.detach(r, p);
    }
}
