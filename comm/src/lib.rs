//! ferry-comm: the transport layer of ferry.
//!
//! One trait, [`Comm`], and its backends. Every collective, the interposer and the GNN trainers
//! are written against `Comm`, so they run the same over MPI in production and over threads in
//! fast, deterministic tests.
//!
//! | MPI concept                  | ferry                                   |
//! |------------------------------|-----------------------------------------|
//! | `MPI_Comm`                   | [`MpiComm`] (any [`Comm`])              |
//! | `MPI_Init` / `MPI_Finalize`  | [`MpiRuntime::init`] / its drop         |
//! | `MPI_Send` / `MPI_Recv`      | [`Comm::send`] / [`Comm::recv`]         |
//! | `MPI_Isend` / `MPI_Irecv`    | [`Scope::isend`] / [`Scope::irecv`] in [`Comm::scope`] |
//! | `MPI_Request`, `MPI_Wait`    | [`SendRequest`], [`RecvRequest`], `wait` |
//! | `MPI_ANY_SOURCE`, `MPI_ANY_TAG` | [`Source::Any`], [`TagMatch::Any`]   |
//! | `MPI_Status`                 | [`Status`]                              |
//! | `MPI_Comm_split`             | [`Comm::split`]                         |
//!
//! Backends: [`MpiComm`] (over the MPI library, under `mpirun`), [`ThreadComm`] (ranks as
//! threads) and [`TcpComm`] (multi-rail TCP on tokio, bootstrapped through MPI or a rendezvous
//! address). All pass [`conformance`].
//!
//! [`telemetry`] is the bounded record of operations that backends and collectives fill.
//!

mod comm;
pub mod conformance;
pub mod datatype;
mod error;
mod log;
mod mpi;
mod scope;
mod split;
mod tcp;
pub mod telemetry;
mod thread;

pub use crate::comm::{Comm, Source, Status, Tag, TagMatch, check_rail_weights};
pub use crate::error::{Error, Result};
pub use crate::log::{FERRY_LOG, init_logging};
pub use crate::mpi::{MpiComm, MpiRequest, MpiRuntime};
pub use crate::scope::{RecvRequest, Scope, SendRequest, wait_all};
pub use crate::tcp::{
    DEFAULT_BUSY_POLL, FERRY_TCP_BUSY_POLL_US, FERRY_TCP_FAULTS, FERRY_TCP_RAILS,
    FERRY_TCP_TIMEOUT_MS, FERRY_TCP_TOKEN, Fault, FaultInjector, TcpComm, TcpConfig, TcpRequest,
};
pub use crate::telemetry::{Record, Telemetry};
pub use crate::thread::{ThreadComm, ThreadRequest};
