//! [`DeviceBuffer<T>`]: `len` elements of `T` in device memory, with blocking host copies.
//!
//! Wraps cudarc's [`CudaSlice<T>`], which frees the memory on drop (stream-ordered where the
//! device supports memory pools) and tracks reads and writes with events, so kernels launched
//! with [`crate::Launch::arg_buffer`] on other streams wait for earlier writers.
//!
//! Names follow the crate's rule: `clone_*` allocates the destination, `copy_*` fills an
//! existing one. Every copy here blocks until it has finished, so the host slice can be reused
//! (or was filled) when it returns, whatever kind of host memory it is.
//!
//! Not done yet: asynchronous copies from pinned memory, sub-views, peer copies between devices.

use cudarc::driver::{CudaSlice, DevicePtr, DeviceRepr, ValidAsZeroBits};

use crate::error::{self, DriverResultExt, GpuError, Result};
use crate::stream::Stream;

/// `len` elements of `T` in device memory.
pub struct DeviceBuffer<T> {
    pub(crate) slice: CudaSlice<T>,
    stream: Stream,
    ptr: u64,
}

impl<T> std::fmt::Debug for DeviceBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceBuffer")
            .field("ordinal", &self.stream.gpu().ordinal())
            .field("device_ptr", &format_args!("{:#x}", self.ptr))
            .field("len", &self.slice.len())
            .field("elem", &std::any::type_name::<T>())
            .finish()
    }
}

impl<T> DeviceBuffer<T> {
    fn wrap(slice: CudaSlice<T>, stream: &Stream) -> Self {
        let ptr = {
            let (ptr, _record) = slice.device_ptr(slice.stream());
            ptr
        };
        DeviceBuffer {
            slice,
            stream: stream.clone(),
            ptr,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.slice.len()
    }

    /// True when the buffer has no elements.
    pub fn is_empty(&self) -> bool {
        self.slice.is_empty()
    }

    /// Size in bytes.
    pub fn num_bytes(&self) -> usize {
        self.slice.num_bytes()
    }

    /// The device address of the first element, for kernel arguments and pointer classification.
    ///
    /// Work that uses the raw address is not tracked: order it with the buffer's
    /// [`stream`](Self::stream) yourself (or pass the buffer with [`crate::Launch::arg_buffer`]).
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }

    /// The stream the buffer was allocated on, which its copies and its free use.
    pub fn stream(&self) -> &Stream {
        &self.stream
    }
}

impl<T: DeviceRepr> DeviceBuffer<T> {
    pub(crate) fn zeros(stream: &Stream, len: usize) -> Result<Self>
    where
        T: ValidAsZeroBits,
    {
        let bytes = len.saturating_mul(size_of::<T>());
        let slice = stream
            .inner
            .alloc_zeros::<T>(len)
            .map_err(|e| error::alloc(bytes, e))?;
        Ok(Self::wrap(slice, stream))
    }

    pub(crate) fn from_host(stream: &Stream, src: &[T]) -> Result<Self> {
        let bytes = std::mem::size_of_val(src);
        // SAFETY: the memory is left unset here and filled by the copy right below before
        // anyone can read it; on a failed copy the buffer is dropped unread.
        let slice = unsafe { stream.inner.alloc::<T>(src.len()) }.map_err(|e| error::alloc(bytes, e))?;
        let mut buf = Self::wrap(slice, stream);
        buf.copy_htod(src)?;
        Ok(buf)
    }

    /// Fills the first `src.len()` elements from host memory; blocks until the copy is done.
    /// Errors if `src` is longer than the buffer.
    pub fn copy_htod(&mut self, src: &[T]) -> Result<()> {
        if src.len() > self.len() {
            return Err(GpuError::InvalidArgument {
                what: format!(
                    "copy_htod of {} elements into a device buffer of {}",
                    src.len(),
                    self.len()
                ),
            });
        }
        if src.is_empty() {
            return Ok(());
        }
        let stream = &self.stream.inner;
        stream
            .memcpy_htod(src, &mut self.slice)
            .during("cuMemcpyHtoDAsync")?;
        self.stream.synchronize()
    }

    /// Fills `dst` with the first `dst.len()` elements; blocks until the copy is done.
    /// Errors if `dst` is longer than the buffer.
    pub fn copy_dtoh(&self, dst: &mut [T]) -> Result<()> {
        if dst.len() > self.len() {
            return Err(GpuError::InvalidArgument {
                what: format!(
                    "copy_dtoh of a device buffer of {} elements into {}",
                    self.len(),
                    dst.len()
                ),
            });
        }
        if dst.is_empty() {
            return Ok(());
        }
        let stream = &self.stream.inner;
        let view = self.slice.slice(0..dst.len());
        stream
            .memcpy_dtoh(&view, dst)
            .during("cuMemcpyDtoHAsync")?;
        self.stream.synchronize()
    }

    /// Copies the whole buffer into a new `Vec`; blocks until the copy is done.
    pub fn clone_dtoh(&self) -> Result<Vec<T>> {
        if self.is_empty() {
            return Ok(Vec::new());
        }
        let v = self
            .stream
            .inner
            .clone_dtoh(&self.slice)
            .during("cuMemcpyDtoHAsync")?;
        self.stream.synchronize()?;
        Ok(v)
    }

    /// Fills this buffer from another device buffer of the same length (device to device, on
    /// this buffer's stream); blocks until the copy is done.
    pub fn copy_dtod(&mut self, src: &DeviceBuffer<T>) -> Result<()> {
        if src.len() != self.len() {
            return Err(GpuError::InvalidArgument {
                what: format!(
                    "copy_dtod between device buffers of {} and {} elements",
                    src.len(),
                    self.len()
                ),
            });
        }
        if src.is_empty() {
            return Ok(());
        }
        let stream = &self.stream.inner;
        stream
            .memcpy_dtod(&src.slice, &mut self.slice)
            .during("cuMemcpyDtoDAsync")?;
        self.stream.synchronize()
    }
}
