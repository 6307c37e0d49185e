//! The error type of ferry-collectives: transport failures, bad arguments, bad topology files.

use std::path::PathBuf;

/// What went wrong in a collective, a topology file or a plan.
///
/// A collective that fails part-way leaves its output buffer in an unspecified state (as MPI
/// does), but never panics or hangs on bad arguments: those are checked before any message moves.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The transport failed (a peer left, a message was truncated, a timeout, ...).
    #[error(transparent)]
    Comm(#[from] ferry_comm::Error),
    /// An argument the call does not accept; the message says which and why.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A topology (from a file or discovery) is inconsistent; the message names the entry.
    #[error("topology: {0}")]
    Topology(String),
    /// A topology file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A topology file is not valid TOML for a [`crate::Topology`].
    #[error("{}: {message}", path.as_ref().map_or("<string>".to_string(), |p| p.display().to_string()))]
    Parse {
        /// The file, if the text came from one.
        path: Option<PathBuf>,
        /// The parser's message (with line and column).
        message: String,
    },
    /// Groups cannot be formed as asked (sizes that do not multiply up, and so on).
    #[error("groups: {0}")]
    Groups(String),
    /// A derived datatype does not fit its buffer in a halo exchange.
    #[error("datatype: {0}")]
    Datatype(#[from] ferry_datatypes::PackError),
}

/// `Result` with ferry-collectives' [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}
