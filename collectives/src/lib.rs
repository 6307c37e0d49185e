//! ferry-collectives: topology- and heterogeneous-NIC-aware collectives over any
//! [`ferry_comm::Comm`] backend (MPI, threads, multi-rail TCP).
//!
//! | MPI / NCCL concept                          | ferry                                        |
//! |---------------------------------------------|----------------------------------------------|
//! | `MPI_Allreduce` (in place, out of place)    | [`Collectives::allreduce`], [`Collectives::allreduce_into`] |
//! | ring / recursive doubling / hierarchical    | [`Algorithm`], [`Collectives::allreduce_with`] |
//! | `MPI_Reduce_scatter_block`, `MPI_Allgather` | [`Collectives::reduce_scatter`], [`Collectives::allgather`] |
//! | `MPI_Bcast`, `MPI_Reduce`, `MPI_Barrier`    | [`Collectives::broadcast`], [`Collectives::reduce`], [`Collectives::barrier`] |
//! | `MPI_SUM` / `MIN` / `MAX` / `PROD`          | [`ReduceOp`] on [`Element`] types (i32, i64, f32, f64, f16, bf16) |
//! | `MPI_Neighbor_alltoallw`                    | [`Collectives::halo_exchange_typed`] ([`HaloRegion`]) |
//! | NCCL's topology file / graph search         | [`Topology`], [`Planner`], [`Plan`]           |
//! | hwloc / `nvidia-smi topo -m` (PIX ... SYS)  | [`Node::discover`], [`Locality`], [`Node::nearest_nic`] |
//! | Open MPI's `btl_tcp_bandwidth_<if>` weights | [`RailBalancer`] (measured, live), [`Collectives::probe_rails`] (at start-up) |
//! | Holmes' NIC-class-aware 3D parallel groups  | [`holmes_groups`], [`Groups::split`]          |
//!
//! Discovery ([`Node::discover`]) reads sysfs and hwloc; planners and group formation take a
//! [`Topology`] value and never call MPI or hwloc, so they
//! are tested on the fixture files in `collectives/tests/fixtures/`. [`check`] is the
//! correctness suite that `cargo test` runs over threads at 1 to 17 ranks and
//! `ferry-collectives-check` runs under `mpirun`.
//!
//! Not done yet: anomaly detection and traffic planning (the C4 issue), the fabric simulator.

mod algo;
pub mod check;
mod collectives;
mod error;
mod halo;
mod holmes;
mod hwloc;
mod plan;
mod probe;
mod rail;
mod reduce;
mod topology;

pub use crate::algo::blocks;
pub use crate::collectives::Collectives;
pub use crate::error::{Error, Result};
pub use crate::halo::{HaloRecv, HaloRegion, HaloSend, MAX_CHANNEL};
pub use crate::holmes::{
    Crossings, GroupComms, Groups, ParallelDims, holmes_groups, megatron_groups,
};
pub use crate::plan::{Algorithm, Flat, Plan, Planner};
pub use crate::probe::{RailProbe, Reprobe};
pub use crate::rail::RailBalancer;
pub use crate::reduce::{Element, ReduceOp};
pub use crate::topology::{Gpu, Locality, Nic, NicClass, NicRole, Node, Topology};
