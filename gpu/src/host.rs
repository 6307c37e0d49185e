//! Pinned host memory that kernels can read and write directly: [`MappedHostBuffer`] (allocated
//! by the driver) and [`HostRegistration`] (the caller's memory, pinned in place).
//!
//! Both use the flags `PORTABLE | DEVICEMAP`: the pages are locked, usable from every context in
//! the process, and mapped into the device address space; [`device_ptr`](MappedHostBuffer::device_ptr)
//! is the address a kernel uses (on every 64-bit platform with unified addressing it equals the
//! host address). Memory is *not* write-combined, so host reads stay fast. This is what the
//! zero-copy gather and the one-shot send method read and write over PCIe.
//! See [`cuMemHostAlloc`](https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__MEM.html#group__CUDA__MEM_1g572ca4011bfcb25034888a14d4e035b9)
//! and [`cuMemHostRegister`](https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__MEM.html#group__CUDA__MEM_1gf0a9fe11544326dabd743b7aa6b54223).
//!
//! Host slices and device access to the same bytes are not ordered by Rust's borrow checker:
//! a kernel launched with the device pointer (an `unsafe` launch) must be finished
//! (synchronize its stream) before the host reads what it wrote, and must not run while the host
//! writes.
//!
//! Not done yet: read-only registration (`CU_MEMHOSTREGISTER_READ_ONLY`, for `PROT_READ` mmaps),
//! NUMA placement of allocations, write-combined allocations.

use std::ffi::c_void;
use std::marker::PhantomData;
use std::ptr::NonNull;

use cudarc::driver::sys as dsys;

use crate::device::Gpu;
use crate::error::{self, GpuError, Result};

/// Types that are valid for every bit pattern and have no padding bytes, so memory can be
/// viewed as a slice of them and as bytes.
///
/// # Safety
///
/// Implement it only for `Copy` types with no padding, no pointers or references, and no
/// invalid bit patterns (so not `bool` or `char`), e.g. `#[repr(C)]` structs of numbers whose
/// fields leave no gaps.
pub unsafe trait Plain: Copy + Send + Sync + 'static {}

macro_rules! plain {
    ($($t:ty),*) => { $(
        // SAFETY: primitive numbers have no padding and accept every bit pattern.
        unsafe impl Plain for $t {}
    )* };
}
plain!(
    u8, i8, u16, i16, u32, i32, u64, i64, u128, i128, usize, isize, f32, f64
);
// SAFETY: an array of padding-free, all-bit-patterns-valid elements has neither padding nor
// invalid bit patterns itself.
unsafe impl<T: Plain, const N: usize> Plain for [T; N] {}

/// Views `len` bytes at `ptr` as `[T]`, dropping a trailing partial element.
///
/// # Safety
/// `ptr..ptr+len` must be valid for reads for `'a` and not written through other references.
unsafe fn typed<'a, T: Plain>(ptr: *const u8, len: usize) -> &'a [T] {
    if size_of::<T>() == 0 || len < size_of::<T>() {
        return &[];
    }
    assert!(
        (ptr as usize) % align_of::<T>() == 0,
        "host memory at {ptr:p} is not aligned for {}",
        std::any::type_name::<T>()
    );
    // SAFETY: aligned (checked), in bounds (len / size elements), valid for any bit pattern
    // (`Plain`), and the caller guarantees validity and no concurrent writes.
    unsafe { std::slice::from_raw_parts(ptr.cast::<T>(), len / size_of::<T>()) }
}

/// Mutable form of [`typed`].
///
/// # Safety
/// `ptr..ptr+len` must be valid for reads and writes for `'a` and not accessed through other
/// references.
unsafe fn typed_mut<'a, T: Plain>(ptr: *mut u8, len: usize) -> &'a mut [T] {
    if size_of::<T>() == 0 || len < size_of::<T>() {
        return &mut [];
    }
    assert!(
        (ptr as usize) % align_of::<T>() == 0,
        "host memory at {ptr:p} is not aligned for {}",
        std::any::type_name::<T>()
    );
    // SAFETY: as in `typed`, and the caller guarantees exclusive access.
    unsafe { std::slice::from_raw_parts_mut(ptr.cast::<T>(), len / size_of::<T>()) }
}

/// Asks the driver for the device address of mapped host memory at `host`.
fn mapped_device_ptr(host: *mut u8) -> Result<u64> {
    let mut dptr: dsys::CUdeviceptr = 0;
    // SAFETY: `dptr` is a valid out-pointer; `host` is inside memory that was allocated or
    // registered with DEVICEMAP in the current context, and the flags argument must be 0.
    let code = unsafe { dsys::cuMemHostGetDevicePointer_v2(&mut dptr, host.cast::<c_void>(), 0) };
    error::check("cuMemHostGetDevicePointer", code)?;
    Ok(dptr)
}

/// Pinned, device-mapped host memory from `cuMemHostAlloc(PORTABLE | DEVICEMAP)`, zero-filled.
///
/// The host sees it as bytes ([`as_slice`](Self::as_slice)) or as any [`Plain`] type
/// ([`as_typed`](Self::as_typed)); kernels use [`device_ptr`](Self::device_ptr). The allocation
/// is page-aligned. Freed with `cuMemFreeHost` on drop (an error there is logged, never a panic).
/// A zero-length buffer allocates nothing and has device pointer 0.
pub struct MappedHostBuffer {
    gpu: Gpu,
    ptr: NonNull<u8>,
    len: usize,
    device_ptr: u64,
}

// SAFETY: the buffer exclusively owns its allocation, like a `Vec<u8>`; pinned PORTABLE memory
// is not tied to a thread or a context, and `Gpu` is `Send + Sync`.
unsafe impl Send for MappedHostBuffer {}
// SAFETY: shared access only hands out `&[u8]`; mutation needs `&mut self`.
unsafe impl Sync for MappedHostBuffer {}

impl std::fmt::Debug for MappedHostBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedHostBuffer")
            .field("host_ptr", &self.ptr)
            .field("device_ptr", &format_args!("{:#x}", self.device_ptr))
            .field("len", &self.len)
            .finish()
    }
}

impl MappedHostBuffer {
    /// Allocates `len` bytes of pinned, device-mapped host memory, zero-filled.
    pub fn new(gpu: &Gpu, len: usize) -> Result<Self> {
        if len == 0 {
            return Ok(MappedHostBuffer {
                gpu: gpu.clone(),
                ptr: NonNull::dangling(),
                len: 0,
                device_ptr: 0,
            });
        }
        if len > isize::MAX as usize {
            return Err(GpuError::InvalidArgument {
                what: format!("a mapped host buffer of {len} bytes"),
            });
        }
        gpu.bind()?;
        let mut raw: *mut c_void = std::ptr::null_mut();
        let flags = dsys::CU_MEMHOSTALLOC_PORTABLE | dsys::CU_MEMHOSTALLOC_DEVICEMAP;
        // SAFETY: `raw` is a valid out-pointer, `len` is non-zero, and the device's context is
        // current on this thread.
        let code = unsafe { dsys::cuMemHostAlloc(&mut raw, len, flags) };
        code.result().map_err(|e| error::alloc(len, e))?;
        let Some(ptr) = NonNull::new(raw.cast::<u8>()) else {
            return Err(GpuError::Alloc {
                bytes: len,
                message: "cuMemHostAlloc returned a null pointer".into(),
            });
        };
        // Build the owner first so that an error below frees the memory.
        let mut buf = MappedHostBuffer {
            gpu: gpu.clone(),
            ptr,
            len,
            device_ptr: 0,
        };
        // SAFETY: the driver just allocated `len` writable bytes at `ptr`, owned by `buf` alone.
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, len) };
        buf.device_ptr = mapped_device_ptr(ptr.as_ptr())?;
        Ok(buf)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The host address of the first byte.
    pub fn host_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// The host address of the first byte, for writing.
    pub fn host_ptr_mut(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The address kernels use for the first byte (`cuMemHostGetDevicePointer`).
    pub fn device_ptr(&self) -> u64 {
        self.device_ptr
    }

    /// The device whose context allocated the buffer.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The bytes, for the host. Synchronize any kernel writing them first.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` is our live allocation (or dangling with len 0), and writes
        // need `&mut self`; device writes are the caller's to order (module docs).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, for the host to write.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only host reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// The memory as `[T]` (`len / size_of::<T>()` elements; the allocation is page-aligned).
    pub fn as_typed<T: Plain>(&self) -> &[T] {
        // SAFETY: our live allocation, shared borrow of `self` (see `as_slice`).
        unsafe { typed(self.ptr.as_ptr(), self.len) }
    }

    /// The memory as `[T]`, for writing.
    pub fn as_typed_mut<T: Plain>(&mut self) -> &mut [T] {
        // SAFETY: our live allocation, exclusive borrow of `self`.
        unsafe { typed_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for MappedHostBuffer {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        if let Err(e) = self.gpu.ctx().bind_to_thread() {
            self.gpu.record_drop_error("cuCtxSetCurrent", e);
        }
        // SAFETY: `ptr` came from `cuMemHostAlloc` and is freed exactly once, here.
        let code = unsafe { dsys::cuMemFreeHost(self.ptr.as_ptr().cast::<c_void>()) };
        if let Err(e) = code.result() {
            self.gpu.record_drop_error("cuMemFreeHost", e);
        }
    }
}

/// The caller's host memory, page-locked and mapped for the device with
/// `cuMemHostRegister(PORTABLE | DEVICEMAP)`, unregistered on drop.
///
/// The safe constructor borrows the region (`&'a mut [T]`) for the registration's life; the
/// `unsafe` one takes a raw pointer and length (e.g. an `mmap` of a feature file). Registering
/// large regions can fail on the locked-memory limit; the error carries the driver's message.
/// An empty region registers nothing and has device pointer 0.
pub struct HostRegistration<'a> {
    gpu: Gpu,
    ptr: *mut u8,
    len: usize,
    device_ptr: u64,
    _region: PhantomData<&'a mut [u8]>,
}

// SAFETY: the registration stands for an exclusive borrow of plain bytes (`&mut [u8]` is
// `Send`); registered PORTABLE memory is not tied to a thread.
unsafe impl Send for HostRegistration<'_> {}
// SAFETY: shared access only hands out `&[u8]`; mutation needs `&mut self`.
unsafe impl Sync for HostRegistration<'_> {}

impl std::fmt::Debug for HostRegistration<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostRegistration")
            .field("host_ptr", &self.ptr)
            .field("device_ptr", &format_args!("{:#x}", self.device_ptr))
            .field("len", &self.len)
            .finish()
    }
}

impl<'a> HostRegistration<'a> {
    /// Pins and maps `region` for the device while the registration lives.
    pub fn new<T: Plain>(gpu: &Gpu, region: &'a mut [T]) -> Result<Self> {
        let len = std::mem::size_of_val(region);
        // SAFETY: `region` is valid for reads and writes of `len` bytes for `'a`, and the
        // exclusive borrow held by the result keeps others from touching it meanwhile.
        unsafe { Self::from_raw(gpu, region.as_mut_ptr().cast::<u8>(), len) }
    }

    /// Pins and maps `len` bytes at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr..ptr+len` must be one readable and writable allocation that stays valid (not freed,
    /// unmapped or reallocated) until the registration is dropped, and while it lives the host
    /// must reach those bytes only through this registration (its slices) or raw pointers that
    /// never overlap those slices' lifetimes.
    pub unsafe fn from_raw(gpu: &Gpu, ptr: *mut u8, len: usize) -> Result<Self> {
        if len == 0 {
            return Ok(HostRegistration {
                gpu: gpu.clone(),
                ptr: NonNull::dangling().as_ptr(),
                len: 0,
                device_ptr: 0,
                _region: PhantomData,
            });
        }
        gpu.bind()?;
        let flags = dsys::CU_MEMHOSTREGISTER_PORTABLE | dsys::CU_MEMHOSTREGISTER_DEVICEMAP;
        // SAFETY: the caller guarantees `ptr..ptr+len` is a valid allocation for the whole
        // registration; the context is current.
        let code = unsafe { dsys::cuMemHostRegister_v2(ptr.cast::<c_void>(), len, flags) };
        if let Err(e) = code.result() {
            let mut message = error::describe(e);
            if matches!(
                e.0,
                dsys::CUresult::CUDA_ERROR_OUT_OF_MEMORY | dsys::CUresult::CUDA_ERROR_NOT_PERMITTED
            ) {
                message.push_str(&format!(
                    " (pinning {len} bytes; the locked-memory limit, `ulimit -l`, may be too low)"
                ));
            }
            return Err(GpuError::Driver {
                call: "cuMemHostRegister",
                message,
            });
        }
        let mut reg = HostRegistration {
            gpu: gpu.clone(),
            ptr,
            len,
            device_ptr: 0,
            _region: PhantomData,
        };
        reg.device_ptr = mapped_device_ptr(ptr)?;
        Ok(reg)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the registered region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The host address of the first byte.
    pub fn host_ptr(&self) -> *const u8 {
        self.ptr
    }

    /// The address kernels use for the first byte (`cuMemHostGetDevicePointer`).
    pub fn device_ptr(&self) -> u64 {
        self.device_ptr
    }

    /// The device whose context registered the region.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The registered bytes. Synchronize any kernel writing them first.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the region is valid for `'a` (constructor contract) and host writes need
        // `&mut self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The registered bytes, for the host to write.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, with exclusive access through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// The registered memory as `[T]` (panics if the region is not aligned for `T`).
    pub fn as_typed<T: Plain>(&self) -> &[T] {
        // SAFETY: as in `as_slice`.
        unsafe { typed(self.ptr, self.len) }
    }

    /// The registered memory as `[T]`, for writing (panics if not aligned for `T`).
    pub fn as_typed_mut<T: Plain>(&mut self) -> &mut [T] {
        // SAFETY: as in `as_mut_slice`.
        unsafe { typed_mut(self.ptr, self.len) }
    }
}

impl Drop for HostRegistration<'_> {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        if let Err(e) = self.gpu.ctx().bind_to_thread() {
            self.gpu.record_drop_error("cuCtxSetCurrent", e);
        }
        // SAFETY: `ptr` was registered by `from_raw` and is unregistered exactly once, here.
        let code = unsafe { dsys::cuMemHostUnregister(self.ptr.cast::<c_void>()) };
        if let Err(e) = code.result() {
            self.gpu.record_drop_error("cuMemHostUnregister", e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_views_drop_partial_elements() {
        let words = [7u64; 2];
        let bytes = words.as_ptr().cast::<u8>();
        // SAFETY: a live local array of 16 bytes, read only.
        let v: &[u32] = unsafe { typed(bytes, 11) };
        assert_eq!(v, &[7, 0]);
        // SAFETY: as above.
        let v: &[u64] = unsafe { typed(bytes, 7) };
        assert!(v.is_empty());
    }
}
