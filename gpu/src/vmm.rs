//! [`VmmHostBuffer`]: pinned host memory allocated through CUDA's virtual memory management
//! API (`cuMemCreate` with a host NUMA location, `cuMemMap`, `cuMemSetAccess`) and mapped at one
//! address for the CPU and every GPU of the process.
//!
//! Why a second kind of pinned memory: `cuMemHostAlloc` memory is mapped for the GPU with small
//! pages, so random reads spread over a large table miss the GPU's address-translation caches
//! (ferry's gather measured a ceiling of about 32M distinct 64 KiB windows per second on an H100,
//! whatever the host's page size). Memory from `cuMemCreate` is handed out in chunks of the
//! allocation granularity (2 MiB on x86-64 hosts), which lets the driver map it with large GPU
//! pages. Whether that helps is measured by `ferry-bench gather --vmm`, not assumed.
//! See [`cuMemCreate`](https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__VA.html).
//!
//! The memory needs CUDA 12.2 or newer (host locations of `cuMemCreate`); older drivers give
//! [`GpuError::Driver`] naming the call. Host slices and device access to the same bytes are
//! ordered by the caller, as for [`crate::MappedHostBuffer`].
//!
//! Not done yet: sharing the memory with other processes (host allocations are not IPC
//! capable), growing a buffer.

use cudarc::driver::sys as dsys;

use crate::device::Gpu;
use crate::error::{self, GpuError, Result};

/// Pinned host memory on one NUMA node, from `cuMemCreate`, mapped read-write for the CPU and
/// for every GPU at the same address, zero-filled. Unmapped and released on drop (errors there
/// are recorded on the [`Gpu`], never a panic).
pub struct VmmHostBuffer {
    gpu: Gpu,
    ptr: dsys::CUdeviceptr,
    /// Bytes asked for.
    len: usize,
    /// Bytes reserved and mapped: `len` rounded up to the granularity.
    mapped: usize,
}

// SAFETY: the buffer exclusively owns its mapping, like a `Vec<u8>`; the mapping is not tied to
// a thread, and `Gpu` is `Send + Sync`.
unsafe impl Send for VmmHostBuffer {}
// SAFETY: shared access only hands out `&[u8]`; mutation needs `&mut self`.
unsafe impl Sync for VmmHostBuffer {}

impl std::fmt::Debug for VmmHostBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmmHostBuffer")
            .field("ptr", &format_args!("{:#x}", self.ptr))
            .field("len", &self.len)
            .field("mapped", &self.mapped)
            .finish()
    }
}

fn host_numa(node: usize) -> dsys::CUmemLocation {
    dsys::CUmemLocation {
        type_: dsys::CUmemLocationType::CU_MEM_LOCATION_TYPE_HOST_NUMA,
        id: node as i32,
    }
}

/// The allocation properties of pinned memory on host NUMA node `node`.
fn host_prop(node: usize) -> dsys::CUmemAllocationProp {
    dsys::CUmemAllocationProp {
        type_: dsys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED,
        requestedHandleTypes: dsys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_NONE,
        location: host_numa(node),
        win32HandleMetaData: std::ptr::null_mut(),
        allocFlags: dsys::CUmemAllocationProp_st__bindgen_ty_1 {
            compressionType: 0,
            gpuDirectRDMACapable: 0,
            usage: 0,
            reserved: [0; 4],
        },
    }
}

impl VmmHostBuffer {
    /// The allocation granularity (bytes) the driver recommends for host memory on `node`.
    pub fn granularity(gpu: &Gpu, node: usize) -> Result<usize> {
        gpu.bind()?;
        let prop = host_prop(node);
        let mut g = 0usize;
        // SAFETY: valid out-pointer and property struct; the context is current.
        let code = unsafe {
            dsys::cuMemGetAllocationGranularity(
                &mut g,
                &prop,
                dsys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_RECOMMENDED,
            )
        };
        error::check("cuMemGetAllocationGranularity", code)?;
        Ok(g.max(1))
    }

    /// Allocates `len` bytes of pinned memory on host NUMA node `numa_node`, maps it for the
    /// CPU and every GPU, and zero-fills it with the host's threads.
    pub fn new(gpu: &Gpu, len: usize, numa_node: usize) -> Result<Self> {
        if len == 0 || len > isize::MAX as usize {
            return Err(GpuError::InvalidArgument {
                what: format!("a VMM host buffer of {len} bytes (needs 1 to isize::MAX)"),
            });
        }
        let gran = Self::granularity(gpu, numa_node)?;
        let mapped = len.div_ceil(gran) * gran;
        let prop = host_prop(numa_node);
        let mut handle: dsys::CUmemGenericAllocationHandle = 0;
        // SAFETY: valid out-pointer and properties; `mapped` is a multiple of the granularity.
        let code = unsafe { dsys::cuMemCreate(&mut handle, mapped, &prop, 0) };
        code.result().map_err(|e| error::alloc(mapped, e))?;
        let mut ptr: dsys::CUdeviceptr = 0;
        // SAFETY: valid out-pointer; size and alignment are multiples of the granularity.
        let code = unsafe { dsys::cuMemAddressReserve(&mut ptr, mapped, gran, 0, 0) };
        if let Err(e) = error::check("cuMemAddressReserve", code) {
            // SAFETY: `handle` came from cuMemCreate and is released once.
            unsafe { dsys::cuMemRelease(handle) };
            return Err(e);
        }
        // SAFETY: `ptr..ptr+mapped` was just reserved and `handle` holds `mapped` bytes.
        let code = unsafe { dsys::cuMemMap(ptr, mapped, 0, handle, 0) };
        // The mapping keeps the memory alive; the handle is not needed after it.
        // SAFETY: `handle` came from cuMemCreate and is released once.
        let released = unsafe { dsys::cuMemRelease(handle) };
        if let Err(e) = error::check("cuMemMap", code) {
            // SAFETY: the range was reserved above and nothing is mapped in it.
            unsafe { dsys::cuMemAddressFree(ptr, mapped) };
            return Err(e);
        }
        // From here on, Drop unmaps and frees the range.
        let mut buf = VmmHostBuffer {
            gpu: gpu.clone(),
            ptr,
            len,
            mapped,
        };
        error::check("cuMemRelease", released)?;
        let devices = Gpu::device_count()?;
        let mut access: Vec<dsys::CUmemAccessDesc> = (0..devices)
            .map(|d| dsys::CUmemAccessDesc {
                location: dsys::CUmemLocation {
                    type_: dsys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
                    id: d as i32,
                },
                flags: dsys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
            })
            .collect();
        access.push(dsys::CUmemAccessDesc {
            location: host_numa(numa_node),
            flags: dsys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
        });
        // SAFETY: the range is fully mapped and `access` holds `access.len()` descriptors.
        let code = unsafe { dsys::cuMemSetAccess(ptr, mapped, access.as_ptr(), access.len()) };
        error::check("cuMemSetAccess", code)?;
        zero_fill(buf.as_mut_slice());
        Ok(buf)
    }

    /// Length in bytes (as asked for; the mapping is rounded up to the granularity).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: a VMM host buffer holds at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address of the first byte, for the host and for kernels alike.
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }

    /// The host address of the first byte.
    pub fn host_ptr(&self) -> *const u8 {
        self.ptr as *const u8
    }

    /// The bytes, for the host. Synchronize any kernel writing them first.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` is mapped read-write for the host for our lifetime, and
        // writes need `&mut self`; device writes are the caller's to order (module docs).
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }

    /// The bytes, for the host to write.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only host reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr as *mut u8, self.len) }
    }
}

/// Zeroes `bytes` with one thread per core (a 32 GiB table takes seconds on one thread).
fn zero_fill(bytes: &mut [u8]) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = bytes.len().div_ceil(threads).max(1 << 20);
    std::thread::scope(|s| {
        for part in bytes.chunks_mut(chunk) {
            s.spawn(|| part.fill(0));
        }
    });
}

impl Drop for VmmHostBuffer {
    fn drop(&mut self) {
        if let Err(e) = self.gpu.ctx().bind_to_thread() {
            self.gpu.record_drop_error("cuCtxSetCurrent", e);
        }
        // SAFETY: the range was reserved and mapped in `new` and is unmapped and freed once.
        let code = unsafe { dsys::cuMemUnmap(self.ptr, self.mapped) };
        if let Err(e) = code.result() {
            self.gpu.record_drop_error("cuMemUnmap", e);
        }
        // SAFETY: as above; the range is no longer mapped.
        let code = unsafe { dsys::cuMemAddressFree(self.ptr, self.mapped) };
        if let Err(e) = code.result() {
            self.gpu.record_drop_error("cuMemAddressFree", e);
        }
    }
}
