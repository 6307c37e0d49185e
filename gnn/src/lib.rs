//! ferry-gnn: full-graph GNN training launched with `mpirun`.
//!
//! This crate will hold CSR graphs, datasets (Cora, our binary format, SBM and R-MAT
//! generators), partitioning, GCN / GraphSAGE / GCNII models with hand-written backward passes,
//! and the `single`, `graph`, `pipe` (GNNPipe) and `hybrid` trainers behind the `ferry-gnn` CLI.
//!
//! Not done yet: everything above; the GNN training issue fills it.
