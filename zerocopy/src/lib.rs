//! ferry-zerocopy: GPU threads gather feature rows straight from pinned, device-mapped host
//! memory (PyTorch-Direct, Min et al. VLDB'21; DGL's UVA index-select).
//!
//! | concept | ferry-zerocopy |
//! | --- | --- |
//! | feature table in `cuMemHostAlloc(DEVICEMAP)` / `cuMemHostRegister` memory | [`HostTable`], [`TableView`] |
//! | UVA index-select kernel | [`Gatherer`], [`GatherOptions`], [`IndexBatch`] |
//! | indices sorted on the GPU by table window first (the fast path for random rows) | [`Gatherer::gather_device_bucketed`] |
//! | launch shape (vector width, lanes per row, 128-byte alignment) | [`launch_shape`], [`LaunchShape`] |
//! | double-buffered batches on a stream with events (GPU-bucketed like [`Gatherer`]; several batches per pass for large tables) | [`GatherPipeline`], [`Gathered`] |
//! | one table for every GPU of a process; one shared-memory table for every rank of a host | [`HostTable::view`], [`HostTable::create_shared`], [`HostTable::open_shared`] |
//! | hwloc-style placement on the GPU's NUMA node | [`gpu_numa_node`], [`NumaPlacement`] |
//! | CPU gather + `cudaMemcpy` baseline | [`CpuGather`], [`gather_rows_cpu`] |
//! | sequential mapped read (the ceiling) | [`stream_copy`] |
//!
//! Not done yet: asynchronous index uploads in the pipeline, read-only registration of files,
//! tables split across NUMA nodes.

mod bucket;
mod cpu;
mod error;
mod gather;
mod index;
mod kernel;
mod numa;
mod pipeline;
mod shape;
mod table;

pub use cpu::{CpuGather, gather_rows_cpu};
pub use error::{Result, ZeroCopyError};
pub use gather::{GatherOptions, Gatherer, IndexBatch, stream_copy};
pub use index::{GatherIndex, sort_with_positions, validate_indices};
pub use numa::{NumaPlacement, gpu_numa_node};
pub use pipeline::{GatherPipeline, Gathered};
pub use shape::{LaunchShape, align_shift_words, launch_shape, vector_bytes};
pub use table::{HostTable, TableView, pattern_byte};
