//! [`Stream`] (an ordered queue of GPU work) and [`Event`] (a marker in it, used for timing and
//! for making one stream wait for another).
//!
//! Both wrap cudarc's [`CudaStream`] and [`CudaEvent`]; a `Stream` is cheap to clone. Events made
//! here always record timing, so [`Event::elapsed_ms`] works on any pair recorded on one device.
//! See the [stream](https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__STREAM.html) and
//! [event](https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__EVENT.html) driver docs.
//!
//! Not done yet: stream priorities, host callbacks, CUDA graphs.

use std::sync::Arc;

use cudarc::driver::{CudaEvent, CudaStream, DeviceRepr, ValidAsZeroBits, sys as dsys};

use crate::buffer::DeviceBuffer;
use crate::device::Gpu;
use crate::error::{DriverResultExt, GpuError, Result};

/// A CUDA stream on one device. Work queued on one stream runs in order.
#[derive(Clone)]
pub struct Stream {
    gpu: Gpu,
    pub(crate) inner: Arc<CudaStream>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("ordinal", &self.gpu.ordinal())
            .field("handle", &self.inner.cu_stream())
            .finish()
    }
}

impl Stream {
    pub(crate) fn new(gpu: Gpu, inner: Arc<CudaStream>) -> Self {
        Stream { gpu, inner }
    }

    /// The device this stream belongs to.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Blocks the calling thread until all work queued so far has finished.
    pub fn synchronize(&self) -> Result<()> {
        self.inner.synchronize().during("cuStreamSynchronize")
    }

    /// Creates an event and records the work queued so far into it.
    pub fn record_event(&self) -> Result<Event> {
        let event = Event::new(&self.gpu)?;
        event.record(self)?;
        Ok(event)
    }

    /// Makes later work on this stream wait until `event` has completed (the host does not block).
    pub fn wait_event(&self, event: &Event) -> Result<()> {
        self.inner.wait(&event.inner).during("cuStreamWaitEvent")
    }

    /// Allocates `len` zeroed elements on this device; the buffer's copies run on this stream.
    pub fn alloc_zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        len: usize,
    ) -> Result<DeviceBuffer<T>> {
        DeviceBuffer::zeros(self, len)
    }

    /// Allocates a device buffer holding a copy of `src` (blocking until the copy is done).
    pub fn clone_htod<T: DeviceRepr>(&self, src: &[T]) -> Result<DeviceBuffer<T>> {
        DeviceBuffer::from_host(self, src)
    }
}

/// A point in a stream's work. Records timing.
pub struct Event {
    pub(crate) inner: CudaEvent,
    gpu: Gpu,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("ordinal", &self.gpu.ordinal())
            .finish_non_exhaustive()
    }
}

impl Event {
    pub(crate) fn new(gpu: &Gpu) -> Result<Event> {
        let inner = gpu
            .ctx()
            .new_event(Some(dsys::CUevent_flags::CU_EVENT_DEFAULT))
            .during("cuEventCreate")?;
        Ok(Event {
            inner,
            gpu: gpu.clone(),
        })
    }

    /// Records the work queued on `stream` so far; the event completes when that work has.
    /// The stream must belong to the same device.
    pub fn record(&self, stream: &Stream) -> Result<()> {
        if !self.gpu.same_device(stream.gpu()) {
            return Err(GpuError::InvalidArgument {
                what: format!(
                    "event of device {} recorded on a stream of device {}",
                    self.gpu.ordinal(),
                    stream.gpu().ordinal()
                ),
            });
        }
        self.inner.record(&stream.inner).during("cuEventRecord")
    }

    /// Blocks until the recorded work has completed.
    pub fn synchronize(&self) -> Result<()> {
        self.inner.synchronize().during("cuEventSynchronize")
    }

    /// Whether the recorded work has completed, without blocking.
    pub fn is_complete(&self) -> Result<bool> {
        self.inner.try_is_complete().during("cuEventQuery")
    }

    /// Milliseconds of GPU time from `self` (the start) to `end`, waiting for both to complete.
    /// Resolution is about half a microsecond. Call it as `start.elapsed_ms(&end)` or
    /// `Event::elapsed_ms(&start, &end)`.
    pub fn elapsed_ms(&self, end: &Event) -> Result<f32> {
        self.inner
            .elapsed_ms(&end.inner)
            .during("cuEventElapsedTime")
    }
}
