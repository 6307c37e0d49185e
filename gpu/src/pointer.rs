//! Pointer classification: what kind of memory an address points into ([`classify`]).
//!
//! One `cuPointerGetAttributes` call asks the driver for the memory type, the managed flag and
//! the device ordinal of the allocation holding the address (any address inside an allocation
//! works, not only its start). The answers map to [`MemoryKind`]:
//!
//! | driver says | [`MemoryKind`] |
//! | --- | --- |
//! | `IS_MANAGED` (from `cuMemAllocManaged`) | `Managed` |
//! | `CU_MEMORYTYPE_DEVICE` / `ARRAY` | `Device { ordinal }` |
//! | `CU_MEMORYTYPE_HOST` (from `cuMemHostAlloc`, `cuMemHostRegister`, `cudaMallocHost`) | `MappedHost` |
//! | no type, or `CUDA_ERROR_INVALID_VALUE` (an address CUDA does not know) | `Host` |
//!
//! Without a usable driver every address is `Host`: nothing else can exist. [`classify`] never
//! fails; [`try_classify`] reports unexpected driver errors instead of answering `Host`.
//! The query needs `cuInit` (done once here) and, on some drivers, a current context: when it
//! answers `CUDA_ERROR_INVALID_CONTEXT`, a device opened by this process is made current and the
//! query repeated. See [`cuPointerGetAttributes`](https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__UNIFIED.html#group__CUDA__UNIFIED_1gf65e9ea532e311dd049166e4894955ad).
//!
//! Under unified addressing (every 64-bit platform CUDA supports today) all pinned host memory
//! is device-accessible, so `MappedHost` is reported for any page-locked memory the driver knows.
//! On systems with HMM or ATS, kernels can also reach plain `Host` memory, but it is still `Host`.
//!
//! Not done yet: the owning context, the allocation's base and size, IPC and VMM attributes.

use std::ffi::c_void;

use cudarc::driver::sys as dsys;

use crate::device;
use crate::error::{self, Result};
use crate::loader;

/// The kind of memory an address points into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemoryKind {
    /// Plain pageable host memory that CUDA does not know (stack, `Vec`, `mmap`).
    Host,
    /// Device memory of the device with this ordinal.
    Device {
        /// The device ordinal the allocation lives on.
        ordinal: usize,
    },
    /// Managed (unified) memory from `cuMemAllocManaged` / `cudaMallocManaged`.
    Managed,
    /// Page-locked host memory the driver knows and maps for devices: allocated with
    /// `cuMemHostAlloc` ([`crate::MappedHostBuffer`]) or registered with `cuMemHostRegister`
    /// ([`crate::HostRegistration`]).
    MappedHost,
}

impl MemoryKind {
    /// True for memory a kernel can address directly (everything but `Host`).
    pub fn is_device_accessible(self) -> bool {
        !matches!(self, MemoryKind::Host)
    }
}

/// Something that names an address: raw pointers, and `u64`/`usize` device addresses.
pub trait AsAddress {
    /// The address as a number.
    fn address(self) -> u64;
}

impl<T: ?Sized> AsAddress for *const T {
    fn address(self) -> u64 {
        self.cast::<u8>() as usize as u64
    }
}

impl<T: ?Sized> AsAddress for *mut T {
    fn address(self) -> u64 {
        self.cast::<u8>() as usize as u64
    }
}

impl AsAddress for u64 {
    fn address(self) -> u64 {
        self
    }
}

impl AsAddress for usize {
    fn address(self) -> u64 {
        self as u64
    }
}

/// What kind of memory `ptr` points into; `Host` when unknown to CUDA or when there is no driver.
/// Accepts `*const T`, `*mut T`, or a `u64` address (e.g. [`crate::DeviceBuffer::device_ptr`]).
pub fn classify(ptr: impl AsAddress) -> MemoryKind {
    let addr = ptr.address();
    try_classify(addr).unwrap_or_else(|e| {
        tracing::debug!(addr = %format_args!("{addr:#x}"), error = %e, "pointer query failed; treating as host memory");
        MemoryKind::Host
    })
}

/// Like [`classify`], but a driver error other than "not a CUDA pointer" is returned.
pub fn try_classify(ptr: impl AsAddress) -> Result<MemoryKind> {
    let addr = ptr.address();
    if addr == 0 || !loader::driver_ready() {
        return Ok(MemoryKind::Host);
    }
    match query(addr) {
        Err(e) if e.0 == dsys::CUresult::CUDA_ERROR_INVALID_CONTEXT => {
            if let Some(gpu) = device::any_open() {
                gpu.bind()?;
                query(addr).map_err(|e| error::driver("cuPointerGetAttributes", e))
            } else {
                Ok(MemoryKind::Host)
            }
        }
        r => r.map_err(|e| error::driver("cuPointerGetAttributes", e)),
    }
}

/// Raw attribute values of one query.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Attributes {
    memory_type: u32,
    is_managed: bool,
    device_ordinal: i32,
}

fn query(addr: u64) -> std::result::Result<MemoryKind, cudarc::driver::DriverError> {
    use dsys::CUpointer_attribute as A;
    let mut attrs = [
        A::CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
        A::CU_POINTER_ATTRIBUTE_IS_MANAGED,
        A::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
    ];
    // Each slot is 8 zeroed bytes, wider than what the driver writes (a 4-byte enum, a bool or
    // 4-byte flag, a 4-byte int), so only the low bytes change on this little-endian target.
    let mut slots = [0u64; 3];
    let mut data: [*mut c_void; 3] = [
        (&mut slots[0] as *mut u64).cast(),
        (&mut slots[1] as *mut u64).cast(),
        (&mut slots[2] as *mut u64).cast(),
    ];
    // SAFETY: `attrs` and `data` hold 3 entries each, every data pointer points to 8 writable
    // bytes that live until the call returns, and the driver is loaded and initialised.
    let code = unsafe {
        dsys::cuPointerGetAttributes(
            attrs.len() as u32,
            attrs.as_mut_ptr(),
            data.as_mut_ptr(),
            addr,
        )
    };
    match code.result() {
        Ok(()) => {}
        Err(e) if e.0 == dsys::CUresult::CUDA_ERROR_INVALID_VALUE => return Ok(MemoryKind::Host),
        Err(e) => return Err(e),
    }
    let a = Attributes {
        memory_type: slots[0] as u32,
        is_managed: (slots[1] & 0xff) != 0,
        device_ordinal: slots[2] as u32 as i32,
    };
    Ok(kind_of(a))
}

/// Maps raw attribute values to a [`MemoryKind`].
fn kind_of(a: Attributes) -> MemoryKind {
    use dsys::CUmemorytype as M;
    if a.is_managed {
        return MemoryKind::Managed;
    }
    match a.memory_type {
        t if t == M::CU_MEMORYTYPE_DEVICE as u32 || t == M::CU_MEMORYTYPE_ARRAY as u32 => {
            MemoryKind::Device {
                ordinal: a.device_ordinal.max(0) as usize,
            }
        }
        t if t == M::CU_MEMORYTYPE_HOST as u32 => MemoryKind::MappedHost,
        t if t == M::CU_MEMORYTYPE_UNIFIED as u32 => MemoryKind::Managed,
        _ => MemoryKind::Host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_table() {
        let a = |memory_type, is_managed, device_ordinal| Attributes {
            memory_type,
            is_managed,
            device_ordinal,
        };
        assert_eq!(kind_of(a(0, false, -1)), MemoryKind::Host);
        assert_eq!(kind_of(a(1, false, 0)), MemoryKind::MappedHost);
        assert_eq!(kind_of(a(2, false, 3)), MemoryKind::Device { ordinal: 3 });
        assert_eq!(kind_of(a(2, true, 0)), MemoryKind::Managed);
        assert_eq!(kind_of(a(4, false, 0)), MemoryKind::Managed);
    }

    #[test]
    fn host_pointers_are_host() {
        let x = 5u32;
        let v: Vec<u8> = (0..64).collect();
        assert_eq!(classify(&x as *const u32), MemoryKind::Host);
        assert_eq!(classify(v.as_ptr()), MemoryKind::Host);
        assert_eq!(classify(0u64), MemoryKind::Host);
        assert!(!MemoryKind::Host.is_device_accessible());
    }
}
