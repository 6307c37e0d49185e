//! Errors of the datatype constructors and of the pack engine.
//!
//! Not done yet: mapping to MPI error classes, which the interposer does.

use thiserror::Error;

/// Why a datatype constructor refused its arguments.
///
/// MPI reports these as `MPI_ERR_ARG`, `MPI_ERR_COUNT` or `MPI_ERR_TYPE`
/// (MPI-3.1 §8.4); ferry says which argument was wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TypeError {
    /// An argument is outside the range the standard allows.
    #[error("{constructor}: {reason}")]
    InvalidArgument {
        /// The MPI constructor, e.g. `MPI_Type_create_subarray`.
        constructor: &'static str,
        /// What was wrong, as a sentence fragment naming the argument.
        reason: String,
    },
    /// Two argument arrays that must have the same length do not.
    #[error("{constructor}: {first} has {first_len} entries but {second} has {second_len}")]
    LengthMismatch {
        /// The MPI constructor.
        constructor: &'static str,
        /// The name of the first array.
        first: &'static str,
        /// Its length.
        first_len: usize,
        /// The name of the second array.
        second: &'static str,
        /// Its length.
        second_len: usize,
    },
    /// The size, a displacement or a bound of the new type does not fit in `isize`.
    #[error("{constructor}: the type's size or bounds overflow the address range")]
    Overflow {
        /// The MPI constructor.
        constructor: &'static str,
    },
}

impl TypeError {
    pub(crate) fn invalid(constructor: &'static str, reason: impl Into<String>) -> Self {
        TypeError::InvalidArgument {
            constructor,
            reason: reason.into(),
        }
    }

    pub(crate) fn check_len(
        constructor: &'static str,
        first: &'static str,
        first_len: usize,
        second: &'static str,
        second_len: usize,
    ) -> Result<(), Self> {
        if first_len == second_len {
            Ok(())
        } else {
            Err(TypeError::LengthMismatch {
                constructor,
                first,
                first_len,
                second,
                second_len,
            })
        }
    }
}

/// Why a pack or unpack was refused. Nothing is written when an error is returned.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PackError {
    /// The packed output buffer is shorter than the packed bytes to write.
    #[error("output buffer too small: {need} bytes needed, {have} available")]
    OutputTooSmall {
        /// Bytes the operation writes.
        need: usize,
        /// Bytes the output buffer holds.
        have: usize,
    },
    /// The packed input buffer is shorter than the packed bytes to read.
    #[error("packed input too small: {need} bytes needed, {have} available")]
    InputTooSmall {
        /// Bytes the operation reads.
        need: usize,
        /// Bytes the input buffer holds.
        have: usize,
    },
    /// The bytes that `count` elements of the type touch, relative to `origin`, do not lie
    /// inside the memory slice.
    #[error(
        "type footprint [{lo}, {hi}) relative to origin {origin} lies outside a buffer of {len} bytes"
    )]
    OutOfBounds {
        /// First byte touched, relative to the origin (may be negative).
        lo: isize,
        /// One past the last byte touched, relative to the origin.
        hi: isize,
        /// The origin: the index in the slice that the MPI buffer pointer stands for.
        origin: usize,
        /// The slice length.
        len: usize,
    },
    /// A byte range of the packed stream reaches past its end.
    #[error("packed range [{first}, {end}) reaches past the packed size {total}")]
    RangeOutOfBounds {
        /// First byte of the range.
        first: usize,
        /// One past its last byte.
        end: usize,
        /// The packed size of `count` elements.
        total: usize,
    },
    /// The packed size or the footprint of `count` elements overflows the address range.
    #[error("count {count} overflows the address range")]
    Overflow {
        /// The element count asked for.
        count: usize,
    },
}
