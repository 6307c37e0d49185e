//! ferry-mpi: the MPI interposer, built as `libferry_mpi.so`.
//!
//! Loaded with `LD_PRELOAD` (or linked before libmpi), it intercepts MPI_Init, Init_thread,
//! Finalize, the datatype calls (Type_commit, Type_free, Pack, Unpack, Pack_size),
//! point-to-point (Send, Recv, Isend, Irecv, Sendrecv) and every completion call (Wait, Waitall,
//! Waitany, Waitsome, Test, Testall, Testany, Testsome, Request_free).
//!
//! 1. At MPI_Type_commit, ferry reads the type through MPI_Type_get_envelope/contents into its
//!    IR, checks it against MPI's own size and extents, and caches the canonical layout.
//! 2. A send or receive of a non-contiguous type ferry knows is packed by ferry's engine and
//!    carried as MPI_PACKED bytes; Open MPI accepts such messages against any matching type on
//!    the other side, so peers without the interposer interoperate.
//! 3. Non-blocking operations return the library's own request; ferry keeps the staging buffer
//!    beside it and unpacks in whichever completion call finishes it. No fabricated handle ever
//!    reaches the application.
//! 4. Everything else forwards to `PMPI_*` unchanged. Panics are caught at the boundary.
//!
//! `FERRY_INTERPOSE=off` makes it a pure pass-through; `FERRY_LOG` turns on tracing.
//!
//! Known library bug, and what ferry does about it: Open MPI 4.1 writes a truncated message
//! whole, past the receive count, when the message is above its eager limit (shared-memory
//! single-copy and self transports; `MPI_Recv` of 8000 of 16000 `MPI_BYTE`s writes 8000 bytes
//! past the buffer, interposer or not). ferry's blocking receive matches the message first
//! (MPI_Mprobe) and stages all of it, so truncation returns MPI_ERR_TRUNCATE with nothing
//! overrun. A truncated MPI_Irecv or MPI_Sendrecv above the eager limit still lets the library
//! overrun ferry's staging buffer, as it would overrun the application's buffer without ferry.
//!
//! Not done yet: GPU buffers (the GPU-datatype issue); a measured model for when the library's
//! own path is faster (today every supported non-contiguous type is packed by ferry, above
//! `FERRY_PACK_MIN_BYTES`); MPI_Type_dup'ed committed types pass through; persistent requests,
//! MPI_Mrecv and collectives pass through.

mod config;
mod engine;
mod exports;
mod state;

pub use crate::exports::*;
