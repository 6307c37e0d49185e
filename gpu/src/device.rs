//! [`Gpu`]: one CUDA device and its primary context, opened once per process and cheap to clone.
//!
//! `Gpu::open(n)` loads the driver (see `loader`), retains device `n`'s primary context through
//! cudarc's [`CudaContext`], and reads the device's name, compute capability and memory once.
//! Opening the same ordinal again while a handle is alive returns that handle, so the per-device
//! module cache (see `kernel`) is shared by everyone in the process.
//!
//! Not done yet: no peer-to-peer access between devices, no non-primary contexts, no NUMA
//! node of the device (that lives with topology discovery).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use cudarc::driver::{CudaContext, result as dresult, sys as dsys};

use crate::error::{DriverResultExt, GpuError, Result};
use crate::kernel::ModuleCache;
use crate::loader;
use crate::stream::{Event, Stream};

/// One CUDA device with its primary context. Clones share the context and the kernel cache.
///
/// Wraps cudarc's [`CudaContext`] (see the
/// [context docs](https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__PRIMARY__CTX.html)).
#[derive(Clone)]
pub struct Gpu {
    pub(crate) inner: Arc<GpuInner>,
}

pub(crate) struct GpuInner {
    pub(crate) ctx: Arc<CudaContext>,
    name: String,
    compute_capability: (u32, u32),
    total_memory: usize,
    pub(crate) modules: ModuleCache,
    drop_errors: Mutex<Vec<GpuError>>,
}

/// How many drop errors a [`Gpu`] keeps for [`Gpu::take_drop_errors`].
const MAX_DROP_ERRORS: usize = 64;

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("ordinal", &self.ordinal())
            .field("name", &self.inner.name)
            .field("compute_capability", &self.inner.compute_capability)
            .field("total_memory", &self.inner.total_memory)
            .finish()
    }
}

/// Open devices by ordinal, so that a second `open` shares the first one's caches.
fn registry() -> &'static Mutex<HashMap<usize, Weak<GpuInner>>> {
    static OPEN: OnceLock<Mutex<HashMap<usize, Weak<GpuInner>>>> = OnceLock::new();
    OPEN.get_or_init(Default::default)
}

/// Any device that is open now, used to make a context current for pointer queries.
pub(crate) fn any_open() -> Option<Gpu> {
    let map = registry().lock().unwrap_or_else(|p| p.into_inner());
    map.values()
        .find_map(Weak::upgrade)
        .map(|inner| Gpu { inner })
}

impl Gpu {
    /// Opens device `ordinal` (0-based, in the driver's order, after `CUDA_VISIBLE_DEVICES`).
    ///
    /// Errors: [`GpuError::NoDriver`] when no usable NVIDIA driver is installed,
    /// [`GpuError::NoDevice`] when `ordinal` is out of range; never panics for either.
    pub fn open(ordinal: usize) -> Result<Gpu> {
        loader::driver().map_err(|e| match e {
            GpuError::NoDevice { count, .. } => GpuError::NoDevice { ordinal, count },
            e => e,
        })?;
        let mut map = registry().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(inner) = map.get(&ordinal).and_then(Weak::upgrade) {
            inner.ctx.bind_to_thread().during("cuCtxSetCurrent")?;
            return Ok(Gpu { inner });
        }
        let count = Self::device_count()?;
        if ordinal >= count {
            return Err(GpuError::NoDevice { ordinal, count });
        }
        let inner = loader::guard("opening the device", || {
            let ctx = CudaContext::new(ordinal).during("cuDevicePrimaryCtxRetain")?;
            let name = ctx.name().during("cuDeviceGetName")?;
            let (major, minor) = ctx.compute_capability().during("cuDeviceGetAttribute")?;
            let total_memory = ctx.total_mem().during("cuDeviceTotalMem")?;
            Ok(Arc::new(GpuInner {
                ctx,
                name,
                compute_capability: (major as u32, minor as u32),
                total_memory,
                modules: ModuleCache::default(),
                drop_errors: Mutex::new(Vec::new()),
            }))
        })?;
        map.retain(|_, w| w.strong_count() > 0);
        map.insert(ordinal, Arc::downgrade(&inner));
        Ok(Gpu { inner })
    }

    /// The number of CUDA devices, or [`GpuError::NoDriver`] when there is no usable driver.
    /// A driver with no devices gives `Ok(0)`.
    pub fn device_count() -> Result<usize> {
        match loader::driver() {
            Ok(()) => {}
            Err(GpuError::NoDevice { .. }) => return Ok(0),
            Err(e) => return Err(e),
        }
        loader::guard("cuDeviceGetCount", || {
            dresult::device::get_count()
                .map(|n| n.max(0) as usize)
                .during("cuDeviceGetCount")
        })
    }

    /// The device ordinal this was opened with.
    pub fn ordinal(&self) -> usize {
        self.inner.ctx.ordinal()
    }

    /// The device's name, as the driver reports it (`NVIDIA H100 80GB HBM3`).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The compute capability as `(major, minor)`, e.g. `(9, 0)` for Hopper.
    pub fn compute_capability(&self) -> (u32, u32) {
        self.inner.compute_capability
    }

    /// Total device memory in bytes.
    pub fn total_memory(&self) -> usize {
        self.inner.total_memory
    }

    /// `(free, total)` device memory in bytes right now.
    pub fn memory_info(&self) -> Result<(usize, usize)> {
        self.inner.ctx.mem_get_info().during("cuMemGetInfo")
    }

    /// A device attribute (see `CUdevice_attribute` in the
    /// [driver docs](https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__DEVICE.html)).
    pub(crate) fn attribute(&self, attr: dsys::CUdevice_attribute) -> Result<i32> {
        self.inner
            .ctx
            .attribute(attr)
            .during("cuDeviceGetAttribute")
    }

    /// The number of streaming multiprocessors.
    pub fn multiprocessor_count(&self) -> Result<u32> {
        self.attribute(dsys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map(|n| n as u32)
    }

    /// Whether the device can use managed memory allocated by [`crate::ManagedBuffer`].
    pub fn supports_managed_memory(&self) -> Result<bool> {
        self.attribute(dsys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY)
            .map(|n| n != 0)
    }

    /// The device's legacy default stream (the "NULL stream").
    pub fn default_stream(&self) -> Stream {
        Stream::new(self.clone(), self.inner.ctx.default_stream())
    }

    /// A new non-blocking stream.
    pub fn new_stream(&self) -> Result<Stream> {
        let s = self.inner.ctx.new_stream().during("cuStreamCreate")?;
        Ok(Stream::new(self.clone(), s))
    }

    /// A new event that records timing (for [`Event::elapsed_ms`]).
    pub fn new_event(&self) -> Result<Event> {
        Event::new(self)
    }

    /// Blocks until all work on this device's context has finished.
    pub fn synchronize(&self) -> Result<()> {
        self.inner.ctx.synchronize().during("cuCtxSynchronize")
    }

    /// Makes this device's context current on the calling thread (done by every call that needs it).
    pub(crate) fn bind(&self) -> Result<()> {
        self.inner.ctx.bind_to_thread().during("cuCtxSetCurrent")
    }

    /// The underlying cudarc context, for code inside ferry-gpu.
    pub(crate) fn ctx(&self) -> &Arc<CudaContext> {
        &self.inner.ctx
    }

    /// Records an error from a `Drop`, which cannot return it: a `tracing` warning now, and an
    /// entry for [`Gpu::take_drop_errors`]. Unlike cudarc's sticky `record_err`, it does not make
    /// the next, unrelated call fail.
    pub(crate) fn record_drop_error(&self, call: &'static str, err: dresult::DriverError) {
        let err = crate::error::driver(call, err);
        tracing::warn!(ordinal = self.ordinal(), error = %err, "CUDA call in drop failed");
        let mut errors = self
            .inner
            .drop_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if errors.len() < MAX_DROP_ERRORS {
            errors.push(err);
        }
    }

    /// Takes the errors that `Drop` of this device's buffers and registrations met (each was
    /// also logged with `tracing::warn!`). At most the first 64 are kept.
    pub fn take_drop_errors(&self) -> Vec<GpuError> {
        let mut errors = self
            .inner
            .drop_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *errors)
    }

    /// True when both handles are the same device context.
    pub fn same_device(&self, other: &Gpu) -> bool {
        Arc::ptr_eq(&self.inner.ctx, &other.inner.ctx)
    }
}

/// `Ok(())` when device 0 can be opened, otherwise the reason in words. Tests and examples use
/// it to skip with a printed reason on machines without a GPU.
pub fn gpu_available() -> std::result::Result<(), String> {
    Gpu::open(0).map(|_| ()).map_err(|e| e.to_string())
}
