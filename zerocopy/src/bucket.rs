//! [`Bucketing`]: the GPU counting sort of a batch's indices by 64 KiB windows of the table
//! ([`BUCKET_SRC`]), queued on a stream without waiting, so that both the one-shot
//! [`crate::Gatherer`] and the double-buffered [`crate::GatherPipeline`] use the same path.
//!
//! Steps, all on the caller's stream:
//! 1. Clear the bucket counters.
//! 2. Count the indices per bucket (`idx >> shift`, out-of-range ones in the last bucket).
//! 3. Turn the counts into exclusive offsets (one block).
//! 4. Scatter each index and its batch position to its bucket's next slot.
//!
//! The gather then reads the table window by window and writes each row to its position.

use ferry_gpu::{DeviceBuffer, Kernel, LaunchConfig, Stream};

use crate::error::{Result, invalid};
use crate::index::GatherIndex;
use crate::kernel::BUCKET_SRC;
use crate::table::TableView;

/// Bytes of table per bucket, about: rows per bucket are the power of two at or below this
/// over the row size (at least one row).
pub(crate) const WINDOW_BYTES: usize = 65_536;

/// The bucketing kernels for one table shape and index type.
#[derive(Debug, Clone)]
pub(crate) struct Bucketing {
    shift: i32,
    buckets: usize,
    zero: Kernel,
    count: Kernel,
    scan: Kernel,
    scatter: Kernel,
}

/// Device scratch for bucketing batches of up to `capacity` indices.
#[derive(Debug)]
pub(crate) struct BucketScratch<I> {
    counts: DeviceBuffer<u32>,
    /// The indices in bucket order.
    pub(crate) sorted: DeviceBuffer<I>,
    /// `pos[k]`: the batch position `sorted[k]` came from.
    pub(crate) pos: DeviceBuffer<i64>,
}

impl<I> BucketScratch<I> {
    /// The most indices this scratch can bucket.
    pub(crate) fn capacity(&self) -> usize {
        self.sorted.len()
    }
}

impl Bucketing {
    /// Kernels for tables shaped like `table`, compiled (once per process) for `I`.
    pub(crate) fn new<I: GatherIndex>(stream: &Stream, table: &TableView<'_>) -> Result<Self> {
        let rows_per_window = (WINDOW_BYTES / table.row_bytes().max(1)).max(1);
        let shift = (usize::BITS - 1 - rows_per_window.leading_zeros()) as i32;
        let buckets = (table.rows() >> shift) + 1;
        let defines = [format!("-DIDX_BITS={}", 8 * size_of::<I>())];
        let defines: Vec<&str> = defines.iter().map(String::as_str).collect();
        let gpu = stream.gpu();
        Ok(Bucketing {
            shift,
            buckets,
            zero: gpu.kernel_with_options(BUCKET_SRC, "ferry_bucket_zero", &defines)?,
            count: gpu.kernel_with_options(BUCKET_SRC, "ferry_bucket_count", &defines)?,
            scan: gpu.kernel_with_options(BUCKET_SRC, "ferry_bucket_scan", &defines)?,
            scatter: gpu.kernel_with_options(BUCKET_SRC, "ferry_bucket_scatter", &defines)?,
        })
    }

    /// Scratch for batches of up to `capacity` indices, on `stream`.
    pub(crate) fn scratch<I: GatherIndex>(
        &self,
        stream: &Stream,
        capacity: usize,
    ) -> Result<BucketScratch<I>> {
        Ok(BucketScratch {
            counts: stream.alloc_zeros(self.buckets)?,
            sorted: stream.alloc_zeros(capacity)?,
            pos: stream.alloc_zeros(capacity)?,
        })
    }

    /// Queues the four kernels that bucket the first `n` indices of `idx` into
    /// `scratch.sorted` / `scratch.pos`; does not wait.
    pub(crate) fn enqueue<I: GatherIndex>(
        &self,
        stream: &Stream,
        idx: &DeviceBuffer<I>,
        n: usize,
        scratch: &mut BucketScratch<I>,
    ) -> Result<()> {
        if n > idx.len() || n > scratch.capacity() {
            return Err(invalid(format!(
                "bucketing {n} indices from a buffer of {} with scratch for {}",
                idx.len(),
                scratch.capacity()
            )));
        }
        if scratch.counts.len() != self.buckets {
            return Err(invalid("bucket scratch made for another table shape"));
        }
        if n == 0 {
            return Ok(());
        }
        let grid = |items: usize| LaunchConfig {
            grid_dim: (items.div_ceil(256).clamp(1, 65_535) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let one_block = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        };
        let (n64, nb64, shift) = (n as i64, self.buckets as i64, self.shift);
        let BucketScratch {
            counts,
            sorted,
            pos,
        } = scratch;
        // SAFETY: each launch's arguments match its kernel's parameters in order and type (see
        // BUCKET_SRC); `counts` holds `nb` counters, `idx` at least `n` indices and `sorted`/`pos`
        // at least `n` entries (checked above); every kernel loops below those bounds and bucket
        // numbers are clamped into `0..nb`. The buffers are tracked by the launches, so their
        // frees and host copies wait for these kernels.
        unsafe {
            self.zero
                .launch_builder(stream)
                .arg_buffer_mut(counts)
                .arg(&nb64)
                .launch(grid(self.buckets))?;
            self.count
                .launch_builder(stream)
                .arg_buffer(idx)
                .arg(&n64)
                .arg(&shift)
                .arg_buffer_mut(counts)
                .arg(&nb64)
                .launch(grid(n))?;
            self.scan
                .launch_builder(stream)
                .arg_buffer_mut(counts)
                .arg(&nb64)
                .launch(one_block)?;
            self.scatter
                .launch_builder(stream)
                .arg_buffer(idx)
                .arg(&n64)
                .arg(&shift)
                .arg_buffer_mut(counts)
                .arg(&nb64)
                .arg_buffer_mut(sorted)
                .arg_buffer_mut(pos)
                .launch(grid(n))?;
        }
        Ok(())
    }
}
