//! `MpiComm`: the production backend, point-to-point over the MPI library (Open MPI 4.1 in CI
//! and on the GPU machines) through rsmpi's `mpi::ffi`.
//!
//! Each `MpiComm` owns a duplicate of the communicator it was made from, with
//! `MPI_ERRORS_RETURN` set on it, so ferry's traffic never matches the application's and every
//! MPI failure comes back as an [`Error`] instead of aborting the job. rsmpi's safe layer starts
//! and ends MPI ([`MpiRuntime`]); the calls themselves go through `mpi::ffi` because rsmpi's
//! safe calls do not return MPI error codes.
//!
//! A receive posts straight into the caller's buffer (no probe first), so a message that
//! arrives later takes MPI's fast pre-posted path; see [`Comm::recv`] for truncation.
//!
//! Not done yet: messages over `i32::MAX` bytes are refused with [`Error::TooLarge`] rather than
//! split; the handle is neither `Send` nor `Sync`.

use std::ffi::{c_int, c_void};
use std::mem::MaybeUninit;
use std::sync::Arc;

use mpi::ffi;

use crate::comm::{
    Comm, Source, Status, Tag, TagMatch, check_recv, check_send, recv_span, send_span,
};
use crate::error::{Error, Result};

/// MPI started by ferry; MPI_Finalize runs when the runtime and every communicator made from it
/// have been dropped.
pub struct MpiRuntime {
    universe: Arc<mpi::environment::Universe>,
    threading: mpi::Threading,
}

impl std::fmt::Debug for MpiRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiRuntime")
            .field("threading", &self.threading)
            .finish()
    }
}

impl MpiRuntime {
    /// Initialises MPI, asking for `MPI_THREAD_MULTIPLE` (MPI-3.1 §12.4.3).
    ///
    /// Fails if MPI was already initialised by someone else: then wrap their communicator
    /// with [`MpiComm::from_raw`].
    pub fn init() -> Result<Self> {
        if mpi::environment::is_initialized() {
            return Err(Error::MpiUnavailable(
                "MPI is already initialised; wrap an existing communicator with MpiComm::from_raw"
                    .into(),
            ));
        }
        let (universe, threading) = mpi::initialize_with_threading(mpi::Threading::Multiple)
            .ok_or_else(|| Error::MpiUnavailable("MPI_Init_thread failed".into()))?;
        Ok(MpiRuntime {
            universe: Arc::new(universe),
            threading,
        })
    }

    /// The thread support level MPI granted.
    pub fn threading(&self) -> mpi::Threading {
        self.threading
    }

    /// A ferry communicator over all processes (a duplicate of MPI_COMM_WORLD).
    pub fn world(&self) -> Result<MpiComm> {
        // SAFETY: MPI is initialised (we hold the universe), and RSMPI_COMM_WORLD is a valid
        // predefined handle for as long as it is.
        let mut comm = unsafe { MpiComm::from_raw(ffi::RSMPI_COMM_WORLD)? };
        comm.keep_alive = Some(Arc::clone(&self.universe));
        Ok(comm)
    }

    /// The MPI library's version string (MPI_Get_library_version).
    pub fn library_version(&self) -> String {
        mpi::environment::library_version()
            .map(|v| v.trim_end_matches(['\0', ' ', '\n']).to_string())
            .unwrap_or_else(|_| "unknown".into())
    }
}

/// A ferry communicator over MPI; see the module docs.
pub struct MpiComm {
    raw: ffi::MPI_Comm,
    rank: usize,
    size: usize,
    tag_ub: Tag,
    /// Keeps MPI initialised while this communicator exists, when ferry started MPI.
    keep_alive: Option<Arc<mpi::environment::Universe>>,
}

impl std::fmt::Debug for MpiComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiComm")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .finish()
    }
}

/// A pending `MpiComm` operation.
#[derive(Debug)]
pub struct MpiRequest {
    raw: ffi::MPI_Request,
    kind: RequestKind,
}

#[derive(Debug, Clone, Copy)]
enum RequestKind {
    Send { tag: Tag, bytes: usize },
    Recv { bytes: usize },
}

/// Converts an MPI return code into a `Result`.
fn check(call: &'static str, code: c_int) -> Result<()> {
    if code == ffi::MPI_SUCCESS as c_int {
        return Ok(());
    }
    Err(Error::Mpi {
        call,
        code,
        message: error_string(code),
    })
}

fn error_string(code: c_int) -> String {
    let mut buf = vec![0u8; ffi::MPI_MAX_ERROR_STRING as usize + 1];
    let mut len: c_int = 0;
    // SAFETY: `buf` holds MPI_MAX_ERROR_STRING bytes as MPI_Error_string requires.
    let rc = unsafe { ffi::MPI_Error_string(code, buf.as_mut_ptr().cast(), &mut len) };
    if rc != ffi::MPI_SUCCESS as c_int {
        return format!("unknown MPI error {code}");
    }
    buf.truncate(len.max(0) as usize);
    String::from_utf8_lossy(&buf).into_owned()
}

fn error_class(code: c_int) -> c_int {
    let mut class = code;
    // SAFETY: plain out-parameter call.
    unsafe { ffi::MPI_Error_class(code, &mut class) };
    class
}

fn source_raw(source: Source) -> c_int {
    match source {
        // Ranks were checked against the size, which is a c_int.
        Source::Rank(r) => r as c_int,
        // SAFETY: reading an immutable constant exported by rsmpi's C shim.
        Source::Any => unsafe { ffi::RSMPI_ANY_SOURCE },
    }
}

fn tag_raw(tag: TagMatch) -> c_int {
    match tag {
        TagMatch::Tag(t) => t,
        // SAFETY: reading an immutable constant exported by rsmpi's C shim.
        TagMatch::Any => unsafe { ffi::RSMPI_ANY_TAG },
    }
}

fn byte_type() -> ffi::MPI_Datatype {
    // SAFETY: reading an immutable predefined handle exported by rsmpi's C shim.
    unsafe { ffi::RSMPI_UINT8_T }
}

fn count_of(bytes: usize) -> Result<c_int> {
    c_int::try_from(bytes).map_err(|_| Error::TooLarge {
        bytes,
        limit: c_int::MAX as usize,
    })
}

fn status_bytes(status: &ffi::MPI_Status) -> usize {
    let mut count: c_int = 0;
    // SAFETY: `status` was filled by MPI for a receive or probe of bytes.
    unsafe { ffi::MPI_Get_count(status, byte_type(), &mut count) };
    count.max(0) as usize
}

impl MpiComm {
    /// Wraps an existing communicator: duplicates it (MPI_Comm_dup, collective over `raw`) and
    /// sets `MPI_ERRORS_RETURN` on the duplicate, so the application's handle is untouched.
    ///
    /// # Safety
    /// MPI must be initialised and not finalised, and `raw` must be a valid intracommunicator,
    /// for as long as the returned value lives.
    pub unsafe fn from_raw(raw: ffi::MPI_Comm) -> Result<Self> {
        let mut dup = MaybeUninit::<ffi::MPI_Comm>::uninit();
        // SAFETY: the caller guarantees `raw` is a valid communicator of a live MPI.
        check("MPI_Comm_dup", unsafe {
            ffi::MPI_Comm_dup(raw, dup.as_mut_ptr())
        })?;
        // SAFETY: MPI_Comm_dup succeeded, so it wrote the new handle.
        let dup = unsafe { dup.assume_init() };
        // SAFETY: `dup` is a valid communicator we own.
        unsafe { Self::adopt(dup) }
    }

    /// Takes ownership of a communicator handle that ferry created.
    ///
    /// # Safety
    /// `raw` must be a valid intracommunicator that nobody else frees.
    unsafe fn adopt(raw: ffi::MPI_Comm) -> Result<Self> {
        // SAFETY: `raw` is a valid communicator (caller's contract); the handler is predefined.
        unsafe {
            check(
                "MPI_Comm_set_errhandler",
                ffi::MPI_Comm_set_errhandler(raw, ffi::RSMPI_ERRORS_RETURN),
            )?;
        }
        let (mut rank, mut size): (c_int, c_int) = (0, 0);
        // SAFETY: see above.
        unsafe {
            check("MPI_Comm_rank", ffi::MPI_Comm_rank(raw, &mut rank))?;
            check("MPI_Comm_size", ffi::MPI_Comm_size(raw, &mut size))?;
        }
        let mut value: *mut c_int = std::ptr::null_mut();
        let mut flag: c_int = 0;
        // SAFETY: for MPI_TAG_UB, MPI stores a pointer to an int in `value` (MPI-3.1 §8.1.2).
        unsafe {
            check(
                "MPI_Comm_get_attr",
                ffi::MPI_Comm_get_attr(
                    raw,
                    ffi::MPI_TAG_UB as c_int,
                    (&mut value as *mut *mut c_int).cast::<c_void>(),
                    &mut flag,
                ),
            )?;
        }
        let tag_ub = if flag != 0 && !value.is_null() {
            // SAFETY: MPI set `flag`, so `value` points at the attribute's int.
            unsafe { *value }
        } else {
            32767
        };
        Ok(MpiComm {
            raw,
            rank: rank as usize,
            size: size as usize,
            tag_ub,
            keep_alive: None,
        })
    }

    /// The underlying (duplicated) MPI handle, for calls ferry does not wrap.
    pub fn as_raw(&self) -> ffi::MPI_Comm {
        self.raw
    }

    fn probe_status(&self, source: Source, tag: TagMatch) -> Result<ffi::MPI_Status> {
        let mut status = MaybeUninit::<ffi::MPI_Status>::uninit();
        // SAFETY: valid communicator; `status` is an out-parameter.
        check("MPI_Probe", unsafe {
            ffi::MPI_Probe(
                source_raw(source),
                tag_raw(tag),
                self.raw,
                status.as_mut_ptr(),
            )
        })?;
        // SAFETY: MPI_Probe succeeded and filled the status.
        Ok(unsafe { status.assume_init() })
    }

    fn finish(
        &self,
        request: &MpiRequest,
        code: c_int,
        status: &ffi::MPI_Status,
    ) -> Result<Status> {
        match request.kind {
            RequestKind::Send { tag, bytes } => {
                check("MPI_Wait (send)", code)?;
                Ok(Status {
                    source: self.rank,
                    tag,
                    bytes,
                })
            }
            RequestKind::Recv { bytes } => {
                self.finish_recv("MPI_Wait (receive)", bytes, code, status)
            }
        }
    }

    /// Turns a receive's return code and status into a `Status` or a typed error.
    fn finish_recv(
        &self,
        call: &'static str,
        buffer_bytes: usize,
        code: c_int,
        status: &ffi::MPI_Status,
    ) -> Result<Status> {
        if code != ffi::MPI_SUCCESS as c_int {
            let class = error_class(code);
            let in_status = if class == ffi::MPI_ERR_IN_STATUS as c_int {
                error_class(status.MPI_ERROR)
            } else {
                class
            };
            if in_status == ffi::MPI_ERR_TRUNCATE as c_int {
                return Err(Error::Truncated {
                    message_bytes: None,
                    buffer_bytes,
                    source_rank: status.MPI_SOURCE.max(0) as usize,
                    tag: status.MPI_TAG,
                });
            }
            check(call, code)?;
        }
        Ok(Status {
            source: status.MPI_SOURCE as usize,
            tag: status.MPI_TAG,
            bytes: status_bytes(status),
        })
    }
}

impl Drop for MpiComm {
    fn drop(&mut self) {
        if mpi::environment::is_finalized() {
            tracing::warn!("an MpiComm outlived MPI_Finalize; its handle could not be freed");
            return;
        }
        // SAFETY: `raw` is a communicator we own (a duplicate or a split result).
        let rc = unsafe { ffi::MPI_Comm_free(&mut self.raw) };
        if rc != ffi::MPI_SUCCESS as c_int {
            tracing::warn!(error = %error_string(rc), "MPI_Comm_free failed");
        }
    }
}

impl Comm for MpiComm {
    type RawRequest = MpiRequest;

    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn tag_ub(&self) -> Tag {
        self.tag_ub
    }

    fn send(&self, dest: usize, tag: Tag, buf: &[u8]) -> Result<()> {
        let _span = send_span(self.rank, dest, tag, buf.len());
        check_send(self, dest, tag)?;
        let count = count_of(buf.len())?;
        // SAFETY: `buf` is valid for `count` bytes for the duration of this blocking call.
        check("MPI_Send", unsafe {
            ffi::MPI_Send(
                buf.as_ptr().cast(),
                count,
                byte_type(),
                dest as c_int,
                tag,
                self.raw,
            )
        })
    }

    fn recv(&self, source: Source, tag: TagMatch, buf: &mut [u8]) -> Result<Status> {
        let _span = recv_span(self.rank, source, tag, buf.len());
        check_recv(self, source, tag)?;
        let count = count_of(buf.len())?;
        let mut status = MaybeUninit::<ffi::MPI_Status>::zeroed();
        // SAFETY: `buf` is valid for writes of `count` bytes during this blocking call.
        let code = unsafe {
            ffi::MPI_Recv(
                buf.as_mut_ptr().cast(),
                count,
                byte_type(),
                source_raw(source),
                tag_raw(tag),
                self.raw,
                status.as_mut_ptr(),
            )
        };
        // SAFETY: zero-initialised and possibly filled by MPI; every field is a plain integer.
        let status = unsafe { status.assume_init() };
        self.finish_recv("MPI_Recv", buf.len(), code, &status)
    }

    fn probe(&self, source: Source, tag: TagMatch) -> Result<Status> {
        let _span =
            tracing::debug_span!("probe", rank = self.rank, peer = %source, tag = %tag).entered();
        check_recv(self, source, tag)?;
        let s = self.probe_status(source, tag)?;
        Ok(Status {
            source: s.MPI_SOURCE as usize,
            tag: s.MPI_TAG,
            bytes: status_bytes(&s),
        })
    }

    fn iprobe(&self, source: Source, tag: TagMatch) -> Result<Option<Status>> {
        check_recv(self, source, tag)?;
        let mut flag: c_int = 0;
        let mut status = MaybeUninit::<ffi::MPI_Status>::uninit();
        // SAFETY: valid communicator; out-parameters are locals.
        check("MPI_Iprobe", unsafe {
            ffi::MPI_Iprobe(
                source_raw(source),
                tag_raw(tag),
                self.raw,
                &mut flag,
                status.as_mut_ptr(),
            )
        })?;
        if flag == 0 {
            return Ok(None);
        }
        // SAFETY: flag is set, so MPI filled the status.
        let s = unsafe { status.assume_init() };
        Ok(Some(Status {
            source: s.MPI_SOURCE as usize,
            tag: s.MPI_TAG,
            bytes: status_bytes(&s),
        }))
    }

    fn barrier(&self) -> Result<()> {
        let _span = tracing::debug_span!("barrier", rank = self.rank).entered();
        // SAFETY: valid communicator.
        check("MPI_Barrier", unsafe { ffi::MPI_Barrier(self.raw) })
    }

    fn split(&self, color: Option<u32>, key: i32) -> Result<Option<Self>> {
        let _span = tracing::debug_span!("split", rank = self.rank, ?color, key).entered();
        let color_raw = match color {
            Some(c) => c_int::try_from(c).map_err(|_| Error::Mpi {
                call: "MPI_Comm_split",
                code: ffi::MPI_ERR_ARG as c_int,
                message: format!("color {c} does not fit a C int"),
            })?,
            // SAFETY: reading an immutable constant exported by rsmpi's C shim.
            None => unsafe { ffi::RSMPI_UNDEFINED },
        };
        let mut out = MaybeUninit::<ffi::MPI_Comm>::uninit();
        // SAFETY: valid communicator; `out` is an out-parameter.
        check("MPI_Comm_split", unsafe {
            ffi::MPI_Comm_split(self.raw, color_raw, key, out.as_mut_ptr())
        })?;
        // SAFETY: MPI_Comm_split succeeded and wrote a handle (maybe MPI_COMM_NULL).
        let out = unsafe { out.assume_init() };
        // SAFETY: reading an immutable predefined handle.
        if out == unsafe { ffi::RSMPI_COMM_NULL } {
            return Ok(None);
        }
        // SAFETY: `out` is a fresh communicator that we own.
        let mut comm = unsafe { Self::adopt(out)? };
        comm.keep_alive = self.keep_alive.clone();
        Ok(Some(comm))
    }

    unsafe fn isend_raw(
        &self,
        dest: usize,
        tag: Tag,
        buf: *const u8,
        len: usize,
    ) -> Result<MpiRequest> {
        let _span = tracing::debug_span!("isend", rank = self.rank, peer = dest, tag, bytes = len)
            .entered();
        check_send(self, dest, tag)?;
        let count = count_of(len)?;
        let mut raw = MaybeUninit::<ffi::MPI_Request>::uninit();
        // SAFETY: the caller keeps `buf` valid and unwritten until completion (isend_raw contract).
        check("MPI_Isend", unsafe {
            ffi::MPI_Isend(
                buf.cast(),
                count,
                byte_type(),
                dest as c_int,
                tag,
                self.raw,
                raw.as_mut_ptr(),
            )
        })?;
        Ok(MpiRequest {
            // SAFETY: MPI_Isend succeeded and wrote the request.
            raw: unsafe { raw.assume_init() },
            kind: RequestKind::Send { tag, bytes: len },
        })
    }

    unsafe fn irecv_raw(
        &self,
        source: Source,
        tag: TagMatch,
        buf: *mut u8,
        len: usize,
    ) -> Result<MpiRequest> {
        let _span = tracing::debug_span!("irecv", rank = self.rank, peer = %source, tag = %tag, bytes = len).entered();
        check_recv(self, source, tag)?;
        let count = count_of(len)?;
        let mut raw = MaybeUninit::<ffi::MPI_Request>::uninit();
        // SAFETY: the caller keeps `buf` valid and exclusive until completion (irecv_raw contract).
        check("MPI_Irecv", unsafe {
            ffi::MPI_Irecv(
                buf.cast(),
                count,
                byte_type(),
                source_raw(source),
                tag_raw(tag),
                self.raw,
                raw.as_mut_ptr(),
            )
        })?;
        Ok(MpiRequest {
            // SAFETY: MPI_Irecv succeeded and wrote the request.
            raw: unsafe { raw.assume_init() },
            kind: RequestKind::Recv { bytes: len },
        })
    }

    fn test_raw(&self, request: &mut MpiRequest) -> Result<Option<Status>> {
        let mut flag: c_int = 0;
        let mut status = MaybeUninit::<ffi::MPI_Status>::zeroed();
        // SAFETY: `request.raw` is an active request we started; out-parameters are locals.
        let code = unsafe { ffi::MPI_Test(&mut request.raw, &mut flag, status.as_mut_ptr()) };
        if code == ffi::MPI_SUCCESS as c_int && flag == 0 {
            return Ok(None);
        }
        // SAFETY: zero-initialised and possibly filled by MPI; every field is a plain integer.
        let status = unsafe { status.assume_init() };
        self.finish(request, code, &status).map(Some)
    }

    fn wait_raw(&self, request: &mut MpiRequest) -> Result<Status> {
        let mut status = MaybeUninit::<ffi::MPI_Status>::zeroed();
        // SAFETY: `request.raw` is an active request we started; `status` is a local.
        let code = unsafe { ffi::MPI_Wait(&mut request.raw, status.as_mut_ptr()) };
        // SAFETY: zero-initialised and possibly filled by MPI; every field is a plain integer.
        let status = unsafe { status.assume_init() };
        self.finish(request, code, &status)
    }
}
