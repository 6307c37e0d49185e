//! The `Comm` trait: what every ferry transport backend (MPI, threads, TCP) provides.
//!
//! The model is MPI's point-to-point chapter (MPI-3.1 §3) reduced to byte buffers: messages
//! between ranks of a communicator, matched by (source, tag) in the order receives are posted,
//! non-overtaking per (source, tag) (§3.5), with any-source and any-tag wildcards, probes,
//! a barrier and communicator splitting (§6.4.2).

use crate::error::{Error, Result};
use crate::scope::{self, Scope};
use crate::telemetry::Telemetry;
use tracing::span::EnteredSpan;

/// A message tag. Legal tags are `0..=Comm::tag_ub()`.
pub type Tag = i32;

/// Which sender a receive or probe accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// Only messages from this rank.
    Rank(usize),
    /// Messages from any rank (MPI_ANY_SOURCE).
    Any,
}

impl From<usize> for Source {
    fn from(rank: usize) -> Self {
        Source::Rank(rank)
    }
}

/// Which tags a receive or probe accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TagMatch {
    /// Only messages with this tag.
    Tag(Tag),
    /// Messages with any tag (MPI_ANY_TAG).
    Any,
}

impl From<Tag> for TagMatch {
    fn from(tag: Tag) -> Self {
        TagMatch::Tag(tag)
    }
}

impl TagMatch {
    /// Whether a message with `tag` matches.
    pub fn matches(self, tag: Tag) -> bool {
        match self {
            TagMatch::Tag(t) => t == tag,
            TagMatch::Any => true,
        }
    }
}

impl Source {
    /// Whether a message from `rank` matches.
    pub fn matches(self, rank: usize) -> bool {
        match self {
            Source::Rank(r) => r == rank,
            Source::Any => true,
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Rank(r) => write!(f, "{r}"),
            Source::Any => f.write_str("any"),
        }
    }
}

impl std::fmt::Display for TagMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TagMatch::Tag(t) => write!(f, "{t}"),
            TagMatch::Any => f.write_str("any"),
        }
    }
}

/// What a completed operation or a probe reports (MPI_Status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// For a receive or probe: the sender. For a send: this rank.
    pub source: usize,
    /// The message's tag.
    pub tag: Tag,
    /// The message length in bytes (for a receive: the bytes delivered).
    pub bytes: usize,
}

/// A communicator: a group of ranks that exchange tagged byte messages.
///
/// Implemented by [`crate::MpiComm`] (production, under `mpirun`) and [`crate::ThreadComm`]
/// (ranks as threads of one process, for fast deterministic tests); all backends pass the suite
/// in [`crate::conformance`].
///
/// Non-blocking operations are started inside [`Comm::scope`], which borrows their buffers
/// until they complete and waits for any that are still running when it ends, so a buffer can
/// never be freed or reused under a pending operation. The `*_raw` methods are the backend
/// hooks underneath; call them only to build such a safe layer.
///
/// Bad arguments give typed errors ([`Error::InvalidRank`], [`Error::InvalidTag`],
/// [`Error::Truncated`]) and never panic or hang.
pub trait Comm {
    /// The backend's handle for a pending non-blocking operation.
    type RawRequest;

    /// This process's rank, in `0..size()`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// The largest legal tag (MPI_TAG_UB; at least 32767 by the standard).
    fn tag_ub(&self) -> Tag;

    /// Sends `buf` to `dest` with `tag` and returns when `buf` may be reused (MPI_Send).
    fn send(&self, dest: usize, tag: Tag, buf: &[u8]) -> Result<()>;

    /// Receives one matching message into `buf` (MPI_Recv).
    ///
    /// As in MPI (§3.2.4), a message longer than `buf` is an error: [`Error::Truncated`], with
    /// the message consumed and its first `buf.len()` bytes delivered. To receive a message of
    /// unknown length without that risk, use [`Comm::recv_vec`] (or [`Comm::probe`] first).
    fn recv(&self, source: Source, tag: TagMatch, buf: &mut [u8]) -> Result<Status>;

    /// Waits for a matching message and describes it without receiving it (MPI_Probe).
    fn probe(&self, source: Source, tag: TagMatch) -> Result<Status>;

    /// Like [`Comm::probe`], but returns `None` at once if no matching message has arrived
    /// (MPI_Iprobe).
    fn iprobe(&self, source: Source, tag: TagMatch) -> Result<Option<Status>>;

    /// Returns once every rank has entered the barrier (MPI_Barrier).
    fn barrier(&self) -> Result<()>;

    /// The backend's telemetry buffer, if it records its point-to-point traffic (per peer and
    /// per rail). Algorithms above the transport record their own operations into it too, so one
    /// buffer describes the rank. `None` (the default) for backends that do not record.
    fn telemetry(&self) -> Option<&std::sync::Arc<Telemetry>> {
        None
    }

    /// How many rails (network paths, one per NIC) this backend stripes large messages over;
    /// 1 for single-path backends.
    fn rail_count(&self) -> usize {
        1
    }

    /// The share of each large message's bytes that each rail carries, summing to 1.
    fn rail_weights(&self) -> Vec<f64> {
        vec![1.0; self.rail_count()]
            .into_iter()
            .map(|w| w / self.rail_count() as f64)
            .collect()
    }

    /// Sets the shares of the rails for the sends that follow (normalised to sum to 1; a weight
    /// of 0 takes a rail out of use). [`Error::InvalidArgument`] if the length differs from
    /// [`Comm::rail_count`], a weight is negative or not finite, or all are 0.
    fn set_rail_weights(&self, weights: &[f64]) -> Result<()> {
        check_rail_weights(weights, self.rail_count())?;
        Ok(())
    }

    /// Splits into sub-communicators, one per `color`, ordered by (`key`, old rank)
    /// (MPI_Comm_split). A rank that passes `None` takes part but gets no communicator.
    /// Collective: every rank calls it, in the same order relative to other collectives.
    fn split(&self, color: Option<u32>, key: i32) -> Result<Option<Self>>
    where
        Self: Sized;

    /// Starts sending `len` bytes at `buf` (MPI_Isend).
    ///
    /// # Safety
    /// `buf..buf+len` must stay valid for reads, and must not be written, until the request has
    /// completed through [`Comm::test_raw`] or [`Comm::wait_raw`].
    unsafe fn isend_raw(
        &self,
        dest: usize,
        tag: Tag,
        buf: *const u8,
        len: usize,
    ) -> Result<Self::RawRequest>;

    /// Starts receiving into the `len` bytes at `buf` (MPI_Irecv).
    ///
    /// # Safety
    /// `buf..buf+len` must stay valid for writes, and must not be read or written by anyone
    /// else, until the request has completed through [`Comm::test_raw`] or [`Comm::wait_raw`].
    unsafe fn irecv_raw(
        &self,
        source: Source,
        tag: TagMatch,
        buf: *mut u8,
        len: usize,
    ) -> Result<Self::RawRequest>;

    /// Returns `Some` once the request has completed (MPI_Test). After `Some` or an error, the
    /// request is finished and must not be passed here or to `wait_raw` again.
    fn test_raw(&self, request: &mut Self::RawRequest) -> Result<Option<Status>>;

    /// Blocks until the request completes (MPI_Wait). Afterwards the request is finished.
    fn wait_raw(&self, request: &mut Self::RawRequest) -> Result<Status>;

    /// Runs `f` with a [`Scope`] in which non-blocking operations borrow their buffers; waits for
    /// every operation still pending when `f` returns (or panics) before returning.
    ///
    /// Returns `f`'s value, or the first error of an operation that `f` left pending.
    fn scope<'env, F, R>(&'env self, f: F) -> Result<R>
    where
        Self: Sized,
        F: for<'scope> FnOnce(&'scope Scope<'scope, 'env, Self>) -> R,
    {
        scope::run(self, f)
    }

    /// Receives one matching message whole, whatever its length: probes for it, then receives
    /// exactly the probed (source, tag) into a new vector of its size. Non-overtaking order
    /// (MPI-3.1 §3.5) makes that the probed message as long as one thread receives on this
    /// communicator.
    fn recv_vec(&self, source: Source, tag: TagMatch) -> Result<(Status, Vec<u8>)>
    where
        Self: Sized,
    {
        let probed = self.probe(source, tag)?;
        let mut buf = vec![0u8; probed.bytes];
        let status = self.recv(
            Source::Rank(probed.source),
            TagMatch::Tag(probed.tag),
            &mut buf,
        )?;
        buf.truncate(status.bytes);
        Ok((status, buf))
    }

    /// Sends `count` elements of the derived datatype `ty` from `buf` to `dest`: ferry packs
    /// them and sends the packed bytes as one message. `origin` is the index in `buf` of the
    /// element array's start (MPI's buffer address), so types with negative displacements
    /// work; the whole footprint must lie inside `buf`, else [`Error::Datatype`].
    fn send_typed<T: bytemuck::Pod>(
        &self,
        dest: usize,
        tag: Tag,
        buf: &[T],
        origin: usize,
        ty: &ferry_datatypes::Committed,
        count: usize,
    ) -> Result<()>
    where
        Self: Sized,
    {
        let bytes: &[u8] = bytemuck::cast_slice(buf);
        let origin = origin * std::mem::size_of::<T>();
        let size = ty
            .packed_size(count)
            .ok_or_else(|| Error::Datatype(format!("{count} elements overflow")))?;
        let mut packed = vec![0u8; size];
        ty.pack(bytes, origin, count, &mut packed)
            .map_err(|e| Error::Datatype(e.to_string()))?;
        self.send(dest, tag, &packed)
    }

    /// Receives up to `count` elements of `ty` into `buf` (the mirror of
    /// [`Comm::send_typed`]); a shorter message fills the first elements, as in MPI. Returns the
    /// status, whose `bytes` are packed bytes.
    fn recv_typed<T: bytemuck::Pod>(
        &self,
        source: Source,
        tag: TagMatch,
        buf: &mut [T],
        origin: usize,
        ty: &ferry_datatypes::Committed,
        count: usize,
    ) -> Result<Status>
    where
        Self: Sized,
    {
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(buf);
        let origin = origin * std::mem::size_of::<T>();
        let size = ty
            .packed_size(count)
            .ok_or_else(|| Error::Datatype(format!("{count} elements overflow")))?;
        // Check the footprint before anything is received, so a bad buffer loses no message.
        if let Some((lo, hi)) = ty
            .footprint(count)
            .map_err(|e| Error::Datatype(e.to_string()))?
        {
            let inside = origin as isize + lo >= 0 && origin as isize + hi <= bytes.len() as isize;
            if !inside {
                return Err(Error::Datatype(format!(
                    "{count} elements span bytes [{lo}, {hi}) around index {origin}, outside a buffer of {} bytes",
                    bytes.len()
                )));
            }
        }
        let mut packed = vec![0u8; size];
        let status = self.recv(source, tag, &mut packed)?;
        ty.unpack_range(&packed[..status.bytes], bytes, origin, count, 0)
            .map_err(|e| Error::Datatype(e.to_string()))?;
        Ok(status)
    }

    /// Sends `send` to `dest` and receives one message from `source` into `recv`, without
    /// deadlock whatever the peers do first (MPI_Sendrecv).
    fn sendrecv(
        &self,
        dest: usize,
        send_tag: Tag,
        send: &[u8],
        source: Source,
        recv_tag: TagMatch,
        recv: &mut [u8],
    ) -> Result<Status>
    where
        Self: Sized,
    {
        self.scope(|s| {
            let sent = s.isend(dest, send_tag, send)?;
            let status = self.recv(source, recv_tag, recv)?;
            sent.wait()?;
            Ok(status)
        })?
    }
}

/// Checks a destination rank against a communicator size.
/// Checks a rail-weight vector for [`Comm::set_rail_weights`] and returns it normalised.
pub fn check_rail_weights(weights: &[f64], rails: usize) -> Result<Vec<f64>> {
    if weights.len() != rails {
        return Err(Error::InvalidArgument(format!(
            "{} rail weights given for {rails} rails",
            weights.len()
        )));
    }
    if let Some(w) = weights.iter().find(|w| !w.is_finite() || **w < 0.0) {
        return Err(Error::InvalidArgument(format!(
            "rail weight {w} is not a finite non-negative number"
        )));
    }
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        return Err(Error::InvalidArgument("every rail weight is 0".into()));
    }
    Ok(weights.iter().map(|w| w / total).collect())
}

/// What a receive of a `message_bytes` message from `source` with `tag` into a buffer of
/// `buffer_bytes` returns once the bytes that fit were copied (MPI's truncation rule: the
/// prefix is delivered, the message consumed, and the receive reports `Truncated`).
pub(crate) fn receive_outcome(
    message_bytes: usize,
    buffer_bytes: usize,
    source: usize,
    tag: Tag,
) -> Result<Status> {
    if message_bytes > buffer_bytes {
        Err(Error::Truncated {
            message_bytes: Some(message_bytes),
            buffer_bytes,
            source_rank: source,
            tag,
        })
    } else {
        Ok(Status {
            source,
            tag,
            bytes: message_bytes,
        })
    }
}

/// Checks a send's destination and tag against `comm`, as every backend's send does first.
pub(crate) fn check_send<C: Comm + ?Sized>(comm: &C, dest: usize, tag: Tag) -> Result<()> {
    check_rank(dest, comm.size())?;
    check_tag(tag, comm.tag_ub())
}

/// Checks a receive's or probe's source and tag selectors against `comm`.
pub(crate) fn check_recv<C: Comm + ?Sized>(comm: &C, source: Source, tag: TagMatch) -> Result<()> {
    check_source(source, comm.size())?;
    check_tag_match(tag, comm.tag_ub())
}

/// The `tracing` span of a blocking send (`FERRY_LOG`), the same for every backend.
pub(crate) fn send_span(rank: usize, dest: usize, tag: Tag, bytes: usize) -> EnteredSpan {
    tracing::debug_span!("send", rank, peer = dest, tag, bytes).entered()
}

/// The `tracing` span of a blocking receive.
pub(crate) fn recv_span(rank: usize, source: Source, tag: TagMatch, bytes: usize) -> EnteredSpan {
    tracing::debug_span!("recv", rank, peer = %source, tag = %tag, bytes).entered()
}

pub(crate) fn check_rank(rank: usize, size: usize) -> Result<()> {
    if rank < size {
        Ok(())
    } else {
        Err(Error::InvalidRank { rank, size })
    }
}

/// Checks a source selector against a communicator size.
pub(crate) fn check_source(source: Source, size: usize) -> Result<()> {
    match source {
        Source::Rank(r) => check_rank(r, size),
        Source::Any => Ok(()),
    }
}

/// Checks a tag against `0..=tag_ub`.
pub(crate) fn check_tag(tag: Tag, tag_ub: Tag) -> Result<()> {
    if (0..=tag_ub).contains(&tag) {
        Ok(())
    } else {
        Err(Error::InvalidTag { tag, tag_ub })
    }
}

/// Checks a tag selector against `0..=tag_ub`.
pub(crate) fn check_tag_match(tag: TagMatch, tag_ub: Tag) -> Result<()> {
    match tag {
        TagMatch::Tag(t) => check_tag(t, tag_ub),
        TagMatch::Any => Ok(()),
    }
}
