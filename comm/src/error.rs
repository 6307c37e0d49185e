//! The one error type of ferry-comm: every backend reports the same failures the same way.

use crate::Tag;

/// What went wrong in a communication call.
///
/// Every backend maps its failures onto these variants, so code written against [`crate::Comm`]
/// handles errors once. A call that returns an error has not changed any user-visible state
/// unless its documentation says so (see [`Error::Truncated`]).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// A peer rank that is not in this communicator (MPI_ERR_RANK).
    #[error("rank {rank} is out of range for a communicator of size {size}")]
    InvalidRank {
        /// The rank that was asked for.
        rank: usize,
        /// The communicator's size.
        size: usize,
    },
    /// A tag outside `0..=tag_ub` (MPI_ERR_TAG); `tag_ub` is the communicator's upper bound.
    #[error("tag {tag} is invalid: tags must lie in 0..={tag_ub}")]
    InvalidTag {
        /// The tag that was given.
        tag: Tag,
        /// The largest legal tag of this communicator.
        tag_ub: Tag,
    },
    /// The message is longer than the receive buffer (MPI_ERR_TRUNCATE).
    ///
    /// As in MPI, the message is consumed and its first `buffer_bytes` are in the buffer.
    /// [`crate::Comm::recv_vec`] receives messages of unknown length without this risk.
    #[error(
        "message truncated: {} does not fit the {buffer_bytes}-byte receive buffer (from rank {source_rank}, tag {tag})",
        match message_bytes { Some(n) => format!("a message of {n} bytes"), None => "the message".to_string() }
    )]
    Truncated {
        /// The message length, where the backend knows it.
        message_bytes: Option<usize>,
        /// The receive buffer's length.
        buffer_bytes: usize,
        /// The sender.
        source_rank: usize,
        /// The message's tag.
        tag: Tag,
    },
    /// A message longer than the backend can carry in one piece.
    #[error("a message of {bytes} bytes is longer than this backend's limit of {limit} bytes")]
    TooLarge {
        /// The message length.
        bytes: usize,
        /// The backend's limit.
        limit: usize,
    },
    /// The peer rank has left (its thread or process ended) and the operation can never complete.
    #[error("rank {rank} has gone: {what} can never complete")]
    PeerGone {
        /// The rank that vanished (for an any-source receive, the last one to go).
        rank: usize,
        /// The operation that was waiting.
        what: &'static str,
    },
    /// An error reported by the MPI library, with its own description.
    #[error("{call} failed with MPI error {code}: {message}")]
    Mpi {
        /// The MPI function.
        call: &'static str,
        /// The MPI error code.
        code: i32,
        /// `MPI_Error_string` of the code.
        message: String,
    },
    /// A derived datatype does not fit the buffer it was given (see `ferry_datatypes::PackError`).
    #[error("datatype error: {0}")]
    Datatype(String),
    /// MPI could not be initialised, or was used in a state that does not allow the call.
    #[error("MPI is unavailable: {0}")]
    MpiUnavailable(String),
    /// An argument outside what the call accepts (for example rail weights that do not match the
    /// number of rails); the message says which.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An operation did not complete within its time limit.
    #[error("{what} timed out after {millis} ms")]
    Timeout {
        /// The operation.
        what: String,
        /// The limit, in milliseconds.
        millis: u64,
    },
    /// One rail (network path) to a peer failed: its connection closed without the peer's
    /// goodbye, or an I/O or protocol error ended it. Messages that needed that connection can
    /// never complete.
    #[error("rail {rail} to rank {peer} is down: {reason}")]
    RailDown {
        /// The rail's index.
        rail: usize,
        /// The peer's rank (in the world communicator of the transport).
        peer: usize,
        /// What ended the connection.
        reason: String,
    },
    /// A connection or bootstrap step was refused by the other side (wrong job token, unknown
    /// peer, mismatched job); the message says why.
    #[error("refused: {0}")]
    Refused(String),
    /// An I/O error outside a peer's connection (binding a rail address, reaching the
    /// rendezvous address).
    #[error("{what}: {message}")]
    Io {
        /// What was being done.
        what: String,
        /// The operating system's description.
        message: String,
    },
}

/// `Result` with ferry-comm's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
