//! ferry-gpu: the CUDA layer of ferry: devices, streams and events, NVRTC kernels compiled
//! once per process, device / pinned-mapped / registered / managed memory, and pointer
//! classification.
//!
//! It is the only ferry crate that touches cudarc's `result` and `sys` layers; the rest of ferry
//! uses the types below. The CUDA driver and NVRTC are loaded at run time, so this crate builds
//! and its tests pass (by skipping) on machines without CUDA: [`Gpu::open`] returns
//! [`GpuError::NoDriver`] there instead of panicking, and [`classify`] answers
//! [`MemoryKind::Host`].
//!
//! | CUDA concept | ferry-gpu |
//! | --- | --- |
//! | device + primary context (`cuDevicePrimaryCtxRetain`) | [`Gpu`] |
//! | `CUstream` | [`Stream`] |
//! | `CUevent`, `cuEventElapsedTime` | [`Event`], [`Event::elapsed_ms`] |
//! | NVRTC program + `CUmodule` + `CUfunction` | [`Gpu::kernel`] -> [`Kernel`] |
//! | `cuLaunchKernel` | [`Kernel::launch_builder`] -> [`Launch`] |
//! | `cuMemAlloc` | [`DeviceBuffer`] |
//! | `cuMemHostAlloc(PORTABLE \| DEVICEMAP)` | [`MappedHostBuffer`] |
//! | `cuMemHostRegister(PORTABLE \| DEVICEMAP)` | [`HostRegistration`] |
//! | `cuMemCreate` (host NUMA) + `cuMemMap` + `cuMemSetAccess` | [`VmmHostBuffer`] |
//! | `cuMemAllocManaged` | [`ManagedBuffer`] |
//! | `cuPointerGetAttributes` | [`classify`] -> [`MemoryKind`] |
//!
//! ```no_run
//! use ferry_gpu::{Gpu, LaunchConfig};
//!
//! # fn main() -> ferry_gpu::Result<()> {
//! let gpu = Gpu::open(0)?;
//! let stream = gpu.default_stream();
//! let scale = gpu.kernel(
//!     r#"extern "C" __global__ void scale(float *x, float a, int n) {
//!         int i = blockIdx.x * blockDim.x + threadIdx.x;
//!         if (i < n) x[i] *= a;
//!     }"#,
//!     "scale",
//! )?;
//! let mut x = stream.clone_htod(&[1.0f32, 2.0, 3.0])?;
//! let (a, n) = (2.0f32, 3i32);
//! // SAFETY: (float*, float, int) matches the kernel, which stays within the 3 elements.
//! unsafe {
//!     scale
//!         .launch_builder(&stream)
//!         .arg_buffer_mut(&mut x)
//!         .arg(&a)
//!         .arg(&n)
//!         .launch(LaunchConfig::for_num_elems(3))?;
//! }
//! assert_eq!(x.clone_dtoh()?, [2.0, 4.0, 6.0]);
//! # Ok(())
//! # }
//! ```
//!
//! Not done yet: asynchronous copies, multi-device peer access, cuBLAS, CUDA graphs, and an
//! on-disk kernel cache.

mod buffer;
mod device;
mod error;
mod host;
mod kernel;
mod loader;
mod managed;
mod pointer;
mod stream;
mod vmm;

pub use buffer::DeviceBuffer;
pub use cudarc::driver::{DeviceRepr, LaunchConfig, ValidAsZeroBits};
pub use device::{Gpu, gpu_available};
pub use error::{GpuError, Result};
pub use host::{HostRegistration, MappedHostBuffer, Plain};
pub use kernel::{Kernel, KernelCacheStats, Launch, kernel_cache_stats};
pub use managed::ManagedBuffer;
pub use pointer::{AsAddress, MemoryKind, classify, try_classify};
pub use stream::{Event, Stream};
pub use vmm::VmmHostBuffer;
