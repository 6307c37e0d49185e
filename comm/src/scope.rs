//! Scoped non-blocking operations: requests that borrow their buffers until they complete.
//!
//! This is `std::thread::scope` for MPI requests: buffers must outlive the scope, every request
//! is registered with the scope, and the scope waits for whatever is still pending when its
//! closure returns or unwinds. Dropping or leaking a request therefore never leaves MPI (or a
//! peer thread) writing into freed memory, which is the hazard rsmpi's `scope` also closes.

use std::cell::RefCell;
use std::marker::PhantomData;

use crate::comm::{Comm, Source, Status, Tag, TagMatch};
use crate::error::Result;

/// The region in which non-blocking operations may borrow buffers; see [`Comm::scope`].
pub struct Scope<'scope, 'env: 'scope, C: Comm> {
    comm: &'env C,
    /// Pending requests by id; `None` once completed.
    slots: RefCell<Vec<Option<C::RawRequest>>>,
    /// Invariant in both lifetimes, as `std::thread::Scope` is.
    _marker: PhantomData<(&'scope mut &'scope (), &'env mut &'env ())>,
}

/// A pending send started by [`Scope::isend`].
#[must_use = "a request is waited for at the end of its scope at the latest; wait or test it to see its result"]
pub struct SendRequest<'scope, 'env, C: Comm> {
    scope: &'scope Scope<'scope, 'env, C>,
    id: usize,
    buf: &'scope [u8],
}

/// A pending receive started by [`Scope::irecv`]; completing it hands the buffer back.
#[must_use = "a request is waited for at the end of its scope at the latest; wait or test it to see its result"]
pub struct RecvRequest<'scope, 'env, C: Comm> {
    scope: &'scope Scope<'scope, 'env, C>,
    id: usize,
    buf: *mut u8,
    len: usize,
    _buf: PhantomData<&'scope mut [u8]>,
}

impl<'scope, 'env, C: Comm> Scope<'scope, 'env, C> {
    /// The communicator this scope runs on.
    pub fn comm(&self) -> &'env C {
        self.comm
    }

    /// Starts sending `buf` to `dest` (MPI_Isend). `buf` stays borrowed until the request
    /// completes or the scope ends.
    pub fn isend(
        &'scope self,
        dest: usize,
        tag: Tag,
        buf: &'scope [u8],
    ) -> Result<SendRequest<'scope, 'env, C>> {
        // SAFETY: `buf` is borrowed shared for 'scope, and the scope waits for the request
        // before 'scope ends (in `run`, also on unwind), so the bytes stay valid and unwritten.
        let raw = unsafe { self.comm.isend_raw(dest, tag, buf.as_ptr(), buf.len())? };
        Ok(SendRequest {
            scope: self,
            id: self.register(raw),
            buf,
        })
    }

    /// Starts receiving into `buf` (MPI_Irecv). `buf` stays borrowed until the request completes,
    /// and completing it hands the buffer back.
    pub fn irecv(
        &'scope self,
        source: Source,
        tag: TagMatch,
        buf: &'scope mut [u8],
    ) -> Result<RecvRequest<'scope, 'env, C>> {
        let (ptr, len) = (buf.as_mut_ptr(), buf.len());
        // SAFETY: `buf` is borrowed exclusively for 'scope and only re-materialised from `ptr`
        // after completion; the scope waits for the request before 'scope ends.
        let raw = unsafe { self.comm.irecv_raw(source, tag, ptr, len)? };
        Ok(RecvRequest {
            scope: self,
            id: self.register(raw),
            buf: ptr,
            len,
            _buf: PhantomData,
        })
    }

    /// The number of requests started in this scope that have not completed.
    pub fn pending(&self) -> usize {
        self.slots.borrow().iter().filter(|s| s.is_some()).count()
    }

    fn register(&self, raw: C::RawRequest) -> usize {
        let mut slots = self.slots.borrow_mut();
        slots.push(Some(raw));
        slots.len() - 1
    }

    /// Waits for request `id`; afterwards its slot is empty whatever the outcome.
    fn wait_slot(&self, id: usize) -> Result<Status> {
        let mut raw = self.slots.borrow_mut()[id]
            .take()
            .expect("ferry-comm: a request completes only once (it is consumed by wait)");
        self.comm.wait_raw(&mut raw)
    }

    /// Tests request `id`; empties its slot once it has completed or failed.
    fn test_slot(&self, id: usize) -> Result<Option<Status>> {
        let mut slots = self.slots.borrow_mut();
        let raw = slots[id]
            .as_mut()
            .expect("ferry-comm: a completed request is consumed and cannot be tested again");
        match self.comm.test_raw(raw) {
            Ok(None) => Ok(None),
            done => {
                slots[id] = None;
                done
            }
        }
    }

    /// Waits for every pending request; returns the first error.
    fn wait_all_pending(&self) -> Result<()> {
        let mut first = Ok(());
        let n = self.slots.borrow().len();
        for id in 0..n {
            if self.slots.borrow()[id].is_some() {
                if let Err(e) = self.wait_slot(id) {
                    if first.is_ok() {
                        first = Err(e);
                    }
                }
            }
        }
        first
    }
}

impl<'scope, 'env, C: Comm> SendRequest<'scope, 'env, C> {
    /// Blocks until the send completes (MPI_Wait) and hands the buffer back.
    pub fn wait(self) -> Result<&'scope [u8]> {
        self.scope.wait_slot(self.id)?;
        Ok(self.buf)
    }

    /// Returns the buffer if the send has completed, or the request if not (MPI_Test).
    pub fn test(self) -> Result<std::result::Result<&'scope [u8], Self>> {
        match self.scope.test_slot(self.id)? {
            Some(_) => Ok(Ok(self.buf)),
            None => Ok(Err(self)),
        }
    }
}

impl<'scope, 'env, C: Comm> RecvRequest<'scope, 'env, C> {
    /// Blocks until the receive completes (MPI_Wait); returns its status and the buffer.
    pub fn wait(self) -> Result<(Status, &'scope mut [u8])> {
        let status = self.scope.wait_slot(self.id)?;
        Ok((status, self.take_buf()))
    }

    /// Returns the status and buffer if the receive has completed, or the request if not
    /// (MPI_Test).
    #[allow(clippy::type_complexity)]
    pub fn test(self) -> Result<std::result::Result<(Status, &'scope mut [u8]), Self>> {
        match self.scope.test_slot(self.id)? {
            Some(status) => Ok(Ok((status, self.take_buf()))),
            None => Ok(Err(self)),
        }
    }

    fn take_buf(&self) -> &'scope mut [u8] {
        // SAFETY: the request has completed, so the backend no longer touches the buffer; it was
        // a `&'scope mut [u8]` handed to `irecv`, and this request (consumed by the caller) was
        // the only holder of that borrow, so recreating it once is unique and in bounds.
        unsafe { std::slice::from_raw_parts_mut(self.buf, self.len) }
    }
}

/// Waits for all `requests` (MPI_Waitall) and returns their statuses in order, or the first
/// error; every request is finished afterwards either way.
pub fn wait_all<'scope, 'env, C: Comm>(
    requests: Vec<RecvRequest<'scope, 'env, C>>,
) -> Result<Vec<Status>> {
    let mut first = None;
    let mut statuses = Vec::with_capacity(requests.len());
    for r in requests {
        match r.wait() {
            Ok((s, _)) => statuses.push(s),
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    match first {
        Some(e) => Err(e),
        None => Ok(statuses),
    }
}

/// Runs a scope; see [`Comm::scope`].
pub(crate) fn run<'env, C, F, R>(comm: &'env C, f: F) -> Result<R>
where
    C: Comm,
    F: for<'scope> FnOnce(&'scope Scope<'scope, 'env, C>) -> R,
{
    /// Waits for what is pending if `f` unwinds, so no buffer is freed under the backend.
    struct WaitOnUnwind<'a, 'scope, 'env, C: Comm>(&'a Scope<'scope, 'env, C>);
    impl<C: Comm> Drop for WaitOnUnwind<'_, '_, '_, C> {
        fn drop(&mut self) {
            if let Err(e) = self.0.wait_all_pending() {
                tracing::warn!(error = %e, "a request pending when its scope unwound failed");
            }
        }
    }

    let scope = Scope {
        comm,
        slots: RefCell::new(Vec::new()),
        _marker: PhantomData,
    };
    let guard = WaitOnUnwind(&scope);
    let value = f(&scope);
    std::mem::forget(guard);
    scope.wait_all_pending()?;
    Ok(value)
}
