//! [`ManagedBuffer<T>`]: CUDA managed ("unified") memory from `cuMemAllocManaged`, reachable
//! from the host and every device at one address, migrated by the driver on demand.
//!
//! ferry uses it mostly as one more memory class to test against (an MPI buffer can be managed
//! memory, and the interposer must recognise it). Host access synchronizes the device context
//! first, because devices without concurrent managed access fault when the host touches managed
//! memory while a kernel runs. Keep allocations small and within the device's free memory.
//! See [`cuMemAllocManaged`](https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__MEM.html#group__CUDA__MEM_1gb347ded34dc326af404aa02af5388a32).
//!
//! Not done yet: prefetch and advice (`cuMemPrefetchAsync`, `cuMemAdvise`), stream attachment.

use std::marker::PhantomData;

use cudarc::driver::{result as dresult, sys as dsys};

use crate::buffer::checked_bytes;
use crate::device::Gpu;
use crate::error::{self, DriverResultExt, GpuError, Result};
use crate::host::Plain;

/// `len` elements of `T` in managed memory (attached globally), zero-filled.
pub struct ManagedBuffer<T: Plain> {
    gpu: Gpu,
    ptr: dsys::CUdeviceptr,
    len: usize,
    _elem: PhantomData<T>,
}

// SAFETY: the buffer exclusively owns its allocation, like a `Vec<T>` of `Send` elements;
// managed memory is not tied to a thread.
unsafe impl<T: Plain> Send for ManagedBuffer<T> {}
// SAFETY: shared access only hands out `&[T]`; mutation needs `&mut self`.
unsafe impl<T: Plain> Sync for ManagedBuffer<T> {}

impl<T: Plain> std::fmt::Debug for ManagedBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedBuffer")
            .field("ptr", &format_args!("{:#x}", self.ptr))
            .field("len", &self.len)
            .field("elem", &std::any::type_name::<T>())
            .finish()
    }
}

impl<T: Plain> ManagedBuffer<T> {
    /// Allocates `len` zeroed elements of managed memory. Errors with [`GpuError::Alloc`] when
    /// the device does not support managed memory.
    pub fn zeros(gpu: &Gpu, len: usize) -> Result<Self> {
        let bytes = checked_bytes::<T>(len)?;
        if bytes == 0 {
            return Ok(ManagedBuffer {
                gpu: gpu.clone(),
                ptr: 0,
                len,
                _elem: PhantomData,
            });
        }
        if !gpu.supports_managed_memory()? {
            return Err(GpuError::Alloc {
                bytes,
                message: format!("device {} does not support managed memory", gpu.ordinal()),
            });
        }
        gpu.bind()?;
        // SAFETY: `bytes` is non-zero and the context is current; the memory is zeroed below
        // before anyone reads it.
        let ptr = unsafe {
            dresult::malloc_managed(bytes, dsys::CUmemAttach_flags::CU_MEM_ATTACH_GLOBAL)
        }
        .map_err(|e| error::alloc(bytes, e))?;
        let buf = ManagedBuffer {
            gpu: gpu.clone(),
            ptr,
            len,
            _elem: PhantomData,
        };
        // SAFETY: `ptr..ptr+bytes` is the allocation just made, owned by `buf`.
        unsafe { dresult::memset_d8_sync(ptr, 0, bytes) }.during("cuMemsetD8")?;
        gpu.synchronize()?;
        Ok(buf)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the buffer has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address of the first element, the same for host and device (0 when empty).
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }

    /// The elements, for the host, after waiting for all work on the device.
    pub fn as_slice(&self) -> Result<&[T]> {
        if self.ptr == 0 {
            return Ok(&[]);
        }
        self.gpu.synchronize()?;
        // SAFETY: a live managed allocation of `len` elements, host-accessible now that the
        // device is idle; zero-filled at allocation, and `T: Plain` accepts any bits.
        Ok(unsafe { std::slice::from_raw_parts(self.ptr as usize as *const T, self.len) })
    }

    /// The elements, for the host to write, after waiting for all work on the device.
    pub fn as_mut_slice(&mut self) -> Result<&mut [T]> {
        if self.ptr == 0 {
            return Ok(&mut []);
        }
        self.gpu.synchronize()?;
        // SAFETY: as in `as_slice`, with exclusive access through `&mut self`.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.ptr as usize as *mut T, self.len) })
    }
}

impl<T: Plain> Drop for ManagedBuffer<T> {
    fn drop(&mut self) {
        if self.ptr == 0 {
            return;
        }
        if let Err(e) = self.gpu.ctx().bind_to_thread() {
            self.gpu.record_drop_error("cuCtxSetCurrent", e);
        }
        // SAFETY: `ptr` came from `cuMemAllocManaged` and is freed exactly once, here.
        if let Err(e) = unsafe { dresult::memory_free(self.ptr) } {
            self.gpu.record_drop_error("cuMemFree", e);
        }
    }
}
