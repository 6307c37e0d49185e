//! ferry-zerocopy: GPU threads gather feature rows straight from pinned, device-mapped host memory.
//!
//! This crate will hold `HostTable` (pinned + mapped or registered feature tables), the gather
//! kernels (128-byte-aligned warp accesses, vector widths from alignment, optional index sort),
//! the double-buffered `GatherPipeline`, and the CPU-gather baseline.
//!
//! Not done yet: everything above; the zero-copy gather issue fills it. The buffers it builds
//! on (`ferry_gpu::MappedHostBuffer`, `ferry_gpu::HostRegistration`) exist already.
