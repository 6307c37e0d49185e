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
//! 4. MPI_Pack and MPI_Unpack of a type ferry knows go to whichever engine measured faster for
//!    that type, direction and size class (`model.rs`): the first 8 calls of each alternate
//!    between ferry's engine and the library's, timed, and later calls keep the one with the
//!    lower best time per byte. Both produce the same bytes, so only speed changes; through the
//!    interposer no type packs slower than with the library by more than the trials' noise.
//!    Sends and receives keep a block-size rule (`FERRY_LIBRARY_BLOCK_BYTES`, default 32 B:
//!    types with longer mean blocks go to the library), because their time includes waiting
//!    for the peer; setting `FERRY_LIBRARY_BLOCK_BYTES` applies that rule to MPI_Pack and
//!    MPI_Unpack as well, instead of measuring.
//! 5. Everything else forwards to `PMPI_*` unchanged. Panics are caught at the boundary.
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
//! Not done yet: GPU buffers (the GPU-datatype issue); a measured model for sends and receives
//! (they use the block-size rule); the pack model never measures again once decided;
//! MPI_Type_dup'ed committed types pass through; persistent requests, MPI_Mrecv and
//! collectives pass through.

mod config;
mod engine;
mod exports;
mod model;
mod state;

pub use crate::exports::*;
