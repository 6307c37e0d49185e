//! The crate's error type, [`ZeroCopyError`]: GPU failures, pinning failures and bad indices.

use ferry_gpu::GpuError;

/// What went wrong while building a table or gathering rows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ZeroCopyError {
    /// A GPU call failed.
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// Host memory for a feature table could not be pinned and mapped for the device.
    #[error(
        "pinning {bytes} bytes of host memory for a feature table failed ({how}): {source}; \
         check free memory and the locked-memory limit (`ulimit -l`)"
    )]
    Pin {
        /// Bytes that were to be pinned.
        bytes: usize,
        /// How: `cuMemHostAlloc` for an allocation, `cuMemHostRegister` for memory in place.
        how: &'static str,
        /// The underlying GPU error.
        source: GpuError,
    },
    /// An index named a row outside the table; nothing was read for it.
    #[error(
        "index {index} at position {position} of the batch is out of range for a table of {rows} rows"
    )]
    IndexOutOfRange {
        /// Position of the first bad index in the caller's batch.
        position: usize,
        /// The bad index.
        index: i64,
        /// Rows in the table.
        rows: usize,
    },
    /// An argument was inconsistent (sizes, offsets, lengths).
    #[error("invalid argument: {what}")]
    InvalidArgument {
        /// What was wrong.
        what: String,
    },
    /// A file could not be opened or mapped.
    #[error("{what}: {message}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The operating system's message.
        message: String,
    },
}

/// `Result` with [`ZeroCopyError`].
pub type Result<T, E = ZeroCopyError> = std::result::Result<T, E>;

/// Builds [`ZeroCopyError::InvalidArgument`].
pub(crate) fn invalid(what: impl Into<String>) -> ZeroCopyError {
    ZeroCopyError::InvalidArgument { what: what.into() }
}
