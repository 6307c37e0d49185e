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

/// `len` elements of `T` in device memory. A zero-length buffer allocates nothing and has
/// device pointer 0.
pub struct DeviceBuffer<T> {
    /// `None` when the buffer is empty: the driver refuses zero-byte allocations.
    pub(crate) slice: Option<CudaSlice<T>>,
    stream: Stream,
    ptr: u64,
    len: usize,
}

impl<T> std::fmt::Debug for DeviceBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceBuffer")
            .field("ordinal", &self.stream.gpu().ordinal())
            .field("device_ptr", &format_args!("{:#x}", self.ptr))
            .field("len", &self.len)
            .field("elem", &std::any::type_name::<T>())
            .finish()
    }
}

impl<T> DeviceBuffer<T> {
    fn wrap(slice: Option<CudaSlice<T>>, stream: &Stream) -> Self {
        let (ptr, len) = match &slice {
            Some(s) => {
                let (ptr, _record) = s.device_ptr(s.stream());
                (ptr, s.len())
            }
            None => (0, 0),
        };
        DeviceBuffer {
            slice,
            stream: stream.clone(),
            ptr,
            len,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the buffer has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Size in bytes.
    pub fn num_bytes(&self) -> usize {
        self.len * size_of::<T>()
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
        if len == 0 {
            return Ok(Self::wrap(None, stream));
        }
        let bytes = checked_bytes::<T>(len)?;
        let slice = stream
            .inner
            .alloc_zeros::<T>(len)
            .map_err(|e| error::alloc(bytes, e))?;
        Ok(Self::wrap(Some(slice), stream))
    }

    pub(crate) fn from_host(stream: &Stream, src: &[T]) -> Result<Self> {
        if src.is_empty() {
            return Ok(Self::wrap(None, stream));
        }
        let bytes = std::mem::size_of_val(src);
        // SAFETY: the memory is left unset here and filled by the copy right below before
        // anyone can read it; on a failed copy the buffer is dropped unread.
        let slice =
            unsafe { stream.inner.alloc::<T>(src.len()) }.map_err(|e| error::alloc(bytes, e))?;
        let mut buf = Self::wrap(Some(slice), stream);
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
        let Some(slice) = self.slice.as_mut().filter(|_| !src.is_empty()) else {
            return Ok(());
        };
        let mut view = slice.slice_mut(0..src.len());
        self.stream
            .inner
            .memcpy_htod(src, &mut view)
            .during("cuMemcpyHtoDAsync")?;
        self.stream.synchronize()
    }

    /// Fills `dst` with the elements from `offset` on; blocks until the copy is done.
    /// Errors if `offset + dst.len()` is past the end of the buffer.
    pub fn copy_dtoh_at(&self, offset: usize, dst: &mut [T]) -> Result<()> {
        let end = offset.checked_add(dst.len()).filter(|&e| e <= self.len());
        let Some(end) = end else {
            return Err(GpuError::InvalidArgument {
                what: format!(
                    "copy_dtoh_at of elements {offset}..+{} from a device buffer of {}",
                    dst.len(),
                    self.len()
                ),
            });
        };
        let Some(slice) = self.slice.as_ref().filter(|_| !dst.is_empty()) else {
            return Ok(());
        };
        let view = slice.slice(offset..end);
        self.stream
            .inner
            .memcpy_dtoh(&view, dst)
            .during("cuMemcpyDtoHAsync")?;
        self.stream.synchronize()
    }

    /// Fills `dst` with the first `dst.len()` elements; blocks until the copy is done.
    /// Errors if `dst` is longer than the buffer.
    pub fn copy_dtoh(&self, dst: &mut [T]) -> Result<()> {
        self.copy_dtoh_at(0, dst)
    }

    /// Copies the whole buffer into a new `Vec`; blocks until the copy is done.
    pub fn clone_dtoh(&self) -> Result<Vec<T>> {
        let Some(slice) = self.slice.as_ref() else {
            return Ok(Vec::new());
        };
        let v = self
            .stream
            .inner
            .clone_dtoh(slice)
            .during("cuMemcpyDtoHAsync")?;
        self.stream.synchronize()?;
        Ok(v)
    }

    /// Copies all of `src` into this buffer's elements from `offset` on; blocks until done.
    /// Errors if `offset + src.len()` is past the end of this buffer.
    pub fn copy_dtod_at(&mut self, offset: usize, src: &DeviceBuffer<T>) -> Result<()> {
        let end = offset.checked_add(src.len()).filter(|&e| e <= self.len());
        let Some(end) = end else {
            return Err(GpuError::InvalidArgument {
                what: format!(
                    "copy_dtod_at of {} elements to element {offset} of a device buffer of {}",
                    src.len(),
                    self.len()
                ),
            });
        };
        let (Some(from), Some(to)) = (src.slice.as_ref(), self.slice.as_mut()) else {
            return Ok(());
        };
        if offset == end {
            return Ok(());
        }
        let mut view = to.slice_mut(offset..end);
        self.stream
            .inner
            .memcpy_dtod(from, &mut view)
            .during("cuMemcpyDtoDAsync")?;
        self.stream.synchronize()
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
        let (Some(from), Some(to)) = (src.slice.as_ref(), self.slice.as_mut()) else {
            return Ok(());
        };
        self.stream
            .inner
            .memcpy_dtod(from, to)
            .during("cuMemcpyDtoDAsync")?;
        self.stream.synchronize()
    }
}

/// `len * size_of::<T>()`, or an error when it overflows `isize`.
pub(crate) fn checked_bytes<T>(len: usize) -> Result<usize> {
    len.checked_mul(size_of::<T>())
        .filter(|&b| b <= isize::MAX as usize)
        .ok_or_else(|| GpuError::InvalidArgument {
            what: format!(
                "{len} elements of {} do not fit in memory",
                std::any::type_name::<T>()
            ),
        })
}
