//! [`Gatherer`]: the zero-copy GPU gather `out[k, :] = table[idx[k], :]` from a mapped
//! [`TableView`] into a [`DeviceBuffer<u8>`], with device-side index checking and an optional
//! host-side index sort; and [`stream_copy`], the sequential-read ceiling.
//!
//! Not done yet: gathers into mapped host output, per-column (partial row) gathers, a
//! device-side sort.

use ferry_gpu::{DeviceBuffer, Gpu, LaunchConfig, Stream};

use crate::bucket::Bucketing;
use crate::error::{Result, ZeroCopyError, invalid};
use crate::index::{GatherIndex, sort_with_positions};
use crate::kernel::{GATHER_SRC, STREAM_COPY_SRC};
use crate::shape::{LaunchShape, launch_shape};
use crate::table::TableView;

/// How a [`Gatherer`] launches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatherOptions {
    /// Start reads of rows over 128 bytes at the 128-byte line below the row (default on).
    pub align_lines: bool,
    /// Sort each batch's indices on the host and gather in sorted order (default off).
    pub sort: bool,
    /// Bucket each unsorted batch's indices on the GPU by 64 KiB table windows before the
    /// gather (default on): random rows of a large table otherwise cost the GPU an address
    /// translation each (see [`Gatherer::gather_device_bucketed`]).
    pub bucket: bool,
    /// Rows each group of lanes has in flight, 1 to 8 (default 4).
    pub unroll: u32,
    /// Cap on the threads launched; `None` fills every SM (8 blocks of 256 per SM).
    pub max_threads: Option<usize>,
    /// Threads per block, a multiple of 32 up to 1024 (default 256).
    pub block_threads: u32,
}

impl Default for GatherOptions {
    fn default() -> Self {
        GatherOptions {
            align_lines: true,
            sort: false,
            bucket: true,
            unroll: 4,
            max_threads: None,
            block_threads: 256,
        }
    }
}

/// A batch of indices on the device, sorted or not, ready for [`Gatherer::gather_batch`].
#[derive(Debug)]
pub struct IndexBatch<I: GatherIndex> {
    idx: DeviceBuffer<I>,
    out_pos: Option<DeviceBuffer<i64>>,
    host: Vec<I>,
    positions: Option<Vec<i64>>,
}

impl<I: GatherIndex> IndexBatch<I> {
    /// Number of indices.
    pub fn len(&self) -> usize {
        self.host.len()
    }

    /// True when the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.host.is_empty()
    }

    /// Whether the batch was sorted (and writes through a permutation).
    pub fn is_sorted(&self) -> bool {
        self.positions.is_some()
    }
}

/// What a launch needs besides its buffers: the stream, the options and the SM count.
#[derive(Debug, Clone)]
pub(crate) struct Launcher {
    pub(crate) stream: Stream,
    pub(crate) options: GatherOptions,
    sm_count: u32,
}

/// Gathers rows of mapped host tables into device buffers on its own stream.
#[derive(Debug)]
pub struct Gatherer {
    launcher: Launcher,
    /// The first bad batch position the kernel saw, `u64::MAX` when none.
    bad: DeviceBuffer<u64>,
}

impl Gatherer {
    /// A gatherer on a new stream of `gpu`.
    pub fn new(gpu: &Gpu, options: GatherOptions) -> Result<Self> {
        Self::on_stream(&gpu.new_stream()?, options)
    }

    /// A gatherer that queues its work on `stream`.
    pub fn on_stream(stream: &Stream, options: GatherOptions) -> Result<Self> {
        Ok(Gatherer {
            launcher: Launcher::new(stream, options)?,
            bad: stream.clone_htod(&[u64::MAX])?,
        })
    }

    /// The options in force.
    pub fn options(&self) -> &GatherOptions {
        &self.launcher.options
    }

    /// The stream the gathers run on.
    pub fn stream(&self) -> &Stream {
        &self.launcher.stream
    }

    /// The shape a gather of `table` into `out` launches with.
    pub fn shape(&self, table: &TableView<'_>, out: &DeviceBuffer<u8>) -> LaunchShape {
        self.launcher.shape(table, out)
    }

    /// Uploads `indices` (sorted first when [`GatherOptions::sort`] is on).
    pub fn prepare<I: GatherIndex>(&self, indices: &[I]) -> Result<IndexBatch<I>> {
        if self.options().sort {
            let (sorted, positions) = sort_with_positions(indices);
            Ok(IndexBatch {
                idx: self.stream().clone_htod(&sorted)?,
                out_pos: Some(self.stream().clone_htod(&positions)?),
                host: sorted,
                positions: Some(positions),
            })
        } else {
            Ok(IndexBatch {
                idx: self.stream().clone_htod(indices)?,
                out_pos: None,
                host: indices.to_vec(),
                positions: None,
            })
        }
    }

    /// Gathers the rows `indices` names from `table` into the first `indices.len() *
    /// row_bytes` bytes of `out`; blocks until done. An out-of-range index is not read and
    /// gives [`ZeroCopyError::IndexOutOfRange`] (other rows may have been written).
    pub fn gather<I: GatherIndex>(
        &mut self,
        table: TableView<'_>,
        indices: &[I],
        out: &mut DeviceBuffer<u8>,
    ) -> Result<()> {
        let batch = self.prepare(indices)?;
        self.gather_batch(table, &batch, out).map(|_| ())
    }

    /// Gathers a prepared batch; blocks until done and returns the kernel's GPU time in
    /// milliseconds (events around the launch alone).
    pub fn gather_batch<I: GatherIndex>(
        &mut self,
        table: TableView<'_>,
        batch: &IndexBatch<I>,
        out: &mut DeviceBuffer<u8>,
    ) -> Result<f32> {
        if self.options().bucket && !batch.is_sorted() {
            return self.gather_device_bucketed(table, &batch.idx, out);
        }
        let ms = self.launch(table, &batch.idx, batch.out_pos.as_ref(), out)?;
        match self.first_bad()? {
            None => Ok(ms),
            Some(position) => {
                // The flag holds the position in the caller's batch; find its index.
                let k = match &batch.positions {
                    Some(p) => p.iter().position(|&q| q as usize == position).unwrap_or(0),
                    None => position,
                };
                Err(ZeroCopyError::IndexOutOfRange {
                    position,
                    index: batch.host[k].to_i64(),
                    rows: table.rows(),
                })
            }
        }
    }

    /// Gathers with indices already on the device (never sorted); blocks until done.
    pub fn gather_device<I: GatherIndex>(
        &mut self,
        table: TableView<'_>,
        indices: &DeviceBuffer<I>,
        out: &mut DeviceBuffer<u8>,
    ) -> Result<()> {
        self.launch(table, indices, None, out)?;
        match self.first_bad()? {
            None => Ok(()),
            Some(k) => Err(ZeroCopyError::IndexOutOfRange {
                position: k,
                index: indices.clone_dtoh()?[k].to_i64(),
                rows: table.rows(),
            }),
        }
    }

    /// Gathers with indices already on the device after bucketing them on the GPU by 64 KiB
    /// windows of the table (a one-pass counting sort on the GPU), so the rows are read
    /// window by window in address order and written to their original positions. Returns the
    /// GPU time of bucketing and gathering together, in milliseconds; blocks until done.
    pub fn gather_device_bucketed<I: GatherIndex>(
        &mut self,
        table: TableView<'_>,
        indices: &DeviceBuffer<I>,
        out: &mut DeviceBuffer<u8>,
    ) -> Result<f32> {
        let n = indices.len();
        if n == 0 {
            return self.launch(table, indices, None, out);
        }
        check_sizes(&table, n, None, out)?;
        let stream = self.stream().clone();
        let bucketing = Bucketing::new::<I>(&stream, &table)?;
        let mut scratch = bucketing.scratch::<I>(&stream, n)?;
        self.bad.copy_htod(&[u64::MAX])?;
        let start = stream.record_event()?;
        bucketing.enqueue(&stream, indices, n, &mut scratch)?;
        // SAFETY: the stream is synchronized below, before this call returns and so before the
        // table can be released or written, or `out` and the flag read, by the host.
        unsafe {
            self.launcher.enqueue(
                table,
                &scratch.sorted,
                n,
                Some(&scratch.pos),
                out,
                &mut self.bad,
            )
        }?;
        let end = stream.record_event()?;
        stream.synchronize()?;
        let ms = start.elapsed_ms(&end)?;
        match self.first_bad()? {
            None => Ok(ms),
            Some(position) => Err(ZeroCopyError::IndexOutOfRange {
                position,
                index: indices.clone_dtoh()?[position].to_i64(),
                rows: table.rows(),
            }),
        }
    }

    /// Reads the kernel's bad-index flag.
    fn first_bad(&self) -> Result<Option<usize>> {
        let flag = self.bad.clone_dtoh()?[0];
        Ok((flag != u64::MAX).then_some(flag as usize))
    }

    /// Resets the flag, launches, synchronizes; returns the kernel time in milliseconds.
    fn launch<I: GatherIndex>(
        &mut self,
        table: TableView<'_>,
        idx: &DeviceBuffer<I>,
        out_pos: Option<&DeviceBuffer<i64>>,
        out: &mut DeviceBuffer<u8>,
    ) -> Result<f32> {
        if idx.is_empty() {
            check_sizes(&table, 0, out_pos, out)?;
            return Ok(0.0);
        }
        self.bad.copy_htod(&[u64::MAX])?;
        let start = self.stream().record_event()?;
        // SAFETY: the stream is synchronized below, before this call returns and so before
        // the table can be released or written, or `out` and the flag read, by the host.
        unsafe {
            self.launcher
                .enqueue(table, idx, idx.len(), out_pos, out, &mut self.bad)
        }?;
        let end = self.stream().record_event()?;
        self.stream().synchronize()?;
        Ok(start.elapsed_ms(&end)?)
    }
}

impl Launcher {
    pub(crate) fn new(stream: &Stream, options: GatherOptions) -> Result<Self> {
        if !(1..=8).contains(&options.unroll) {
            return Err(invalid(format!(
                "unroll {} is not in 1..=8",
                options.unroll
            )));
        }
        if options.block_threads == 0
            || options.block_threads % 32 != 0
            || options.block_threads > 1024
        {
            return Err(invalid(format!(
                "{} threads per block is not a multiple of 32 up to 1024",
                options.block_threads
            )));
        }
        Ok(Launcher {
            stream: stream.clone(),
            options,
            sm_count: stream.gpu().multiprocessor_count()?,
        })
    }

    /// The shape a gather of `table` into `out` launches with.
    pub(crate) fn shape(&self, table: &TableView<'_>, out: &DeviceBuffer<u8>) -> LaunchShape {
        launch_shape(
            table.row_bytes(),
            table.device_ptr() | out.device_ptr(),
            self.options.align_lines,
        )
    }

    /// Queues `ferry_gather` of the first `n` indices of `idx` (and `out_pos`) on the stream
    /// without waiting; `bad` receives the first bad position (reset it to `u64::MAX` first).
    /// Checks sizes; an empty batch queues nothing.
    ///
    /// # Safety
    ///
    /// Until the stream has finished the kernel, the table behind `table` must stay alive and
    /// unwritten by the host, and the host must not read `out` or `bad`.
    pub(crate) unsafe fn enqueue<I: GatherIndex>(
        &self,
        table: TableView<'_>,
        idx: &DeviceBuffer<I>,
        n: usize,
        out_pos: Option<&DeviceBuffer<i64>>,
        out: &mut DeviceBuffer<u8>,
        bad: &mut DeviceBuffer<u64>,
    ) -> Result<()> {
        if n > idx.len() {
            return Err(invalid(format!(
                "gathering {n} rows with {} indices",
                idx.len()
            )));
        }
        check_sizes(&table, n, out_pos, out)?;
        if n == 0 {
            return Ok(());
        }
        if bad.is_empty() {
            return Err(invalid("the bad-index flag buffer is empty"));
        }
        let shape = self.shape(&table, out);
        let defines = [
            format!("-DVEC={}", shape.vec_bytes),
            format!("-DTPR={}", shape.threads_per_row),
            format!("-DUNROLL={}", self.options.unroll),
            format!("-DALIGN={}", u32::from(shape.align_lines)),
            format!("-DIDX_BITS={}", 8 * size_of::<I>()),
        ];
        let defines: Vec<&str> = defines.iter().map(String::as_str).collect();
        let gpu = self.stream.gpu().clone();
        let kernel = gpu.kernel_with_options(GATHER_SRC, "ferry_gather", &defines)?;
        let cfg = self.grid(
            n.div_ceil(self.options.unroll as usize),
            shape.threads_per_row,
        );
        let (table_ptr, rows, row_bytes, n64, null) = (
            table.device_ptr(),
            table.rows() as i64,
            table.row_bytes() as i64,
            n as i64,
            0u64,
        );
        let mut launch = kernel.launch_builder(&self.stream);
        launch
            .arg(&table_ptr)
            .arg(&rows)
            .arg(&row_bytes)
            .arg_buffer(idx)
            .arg(&n64);
        match out_pos {
            Some(p) => launch.arg_buffer(p),
            None => launch.arg(&null),
        };
        launch.arg_buffer_mut(out).arg_buffer_mut(bad);
        // SAFETY: the arguments match `ferry_gather`'s parameters in order and type (u64 for
        // `const unsigned char*`, i64 for `long long`, buffers for pointers). The kernel reads
        // `table` only at rows in `0..rows` of `row_bytes` bytes, reads `idx`/`out_pos` below
        // `n`, writes `out` below `n * row_bytes` (checked; positions are a permutation of
        // `0..n`) and one flag word; the caller keeps the table alive until it finishes.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// A grid for `groups` groups of `tpr` lanes, capped by the options.
    fn grid(&self, groups: usize, tpr: u32) -> LaunchConfig {
        let block = self.options.block_threads as usize;
        let cap_threads = self
            .options
            .max_threads
            .unwrap_or(self.sm_count as usize * 8 * block)
            .max(block);
        let threads = (groups * tpr as usize).min(cap_threads).max(1);
        let blocks = threads.div_ceil(block).min(i32::MAX as usize) as u32;
        LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (block as u32, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}

/// Checks that `out` holds `n` rows and `out_pos` covers them.
fn check_sizes(
    table: &TableView<'_>,
    n: usize,
    out_pos: Option<&DeviceBuffer<i64>>,
    out: &DeviceBuffer<u8>,
) -> Result<()> {
    check_mapped(table)?;
    let rb = table.row_bytes();
    let need = n
        .checked_mul(rb)
        .ok_or_else(|| invalid(format!("{n} rows of {rb} bytes overflow")))?;
    if out.len() < need {
        return Err(invalid(format!(
            "gathering {n} rows of {rb} bytes needs {need} output bytes; the buffer has {}",
            out.len()
        )));
    }
    if out_pos.is_some_and(|p| p.len() < n) {
        return Err(invalid("the output positions must cover the indices"));
    }
    Ok(())
}

/// Refuses a view the GPU cannot read ([`TableView::host_only`]).
pub(crate) fn check_mapped(table: &TableView<'_>) -> Result<()> {
    if table.is_mapped() || table.as_bytes().is_empty() {
        return Ok(());
    }
    Err(invalid(
        "this table view is host memory the GPU cannot read (not pinned and mapped): gather it \
         with the CPU path (gather_rows_cpu or CpuGather)",
    ))
}

/// Copies the first `out.len()` bytes of `table` into `out` with a plain sequential kernel
/// (16-byte loads, four in flight per thread): the ceiling for reading mapped memory. Needs
/// 16-byte-aligned addresses and a multiple of 16 bytes. Returns the kernel's milliseconds.
pub fn stream_copy(
    stream: &Stream,
    table: TableView<'_>,
    out: &mut DeviceBuffer<u8>,
) -> Result<f32> {
    let bytes = out.len();
    check_mapped(&table)?;
    if bytes > table.as_bytes().len() {
        return Err(invalid(format!(
            "copying {bytes} bytes from a view of {}",
            table.as_bytes().len()
        )));
    }
    if bytes % 16 != 0 || table.device_ptr() % 16 != 0 || out.device_ptr() % 16 != 0 {
        return Err(invalid(
            "stream_copy needs 16-byte-aligned addresses and lengths",
        ));
    }
    if bytes == 0 {
        return Ok(0.0);
    }
    let gpu = stream.gpu().clone();
    let kernel = gpu.kernel(STREAM_COPY_SRC, "ferry_stream_copy")?;
    let words = (bytes / 16) as i64;
    let sms = gpu.multiprocessor_count()?;
    let cfg = LaunchConfig {
        grid_dim: (sms * 8, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let src = table.device_ptr();
    let start = stream.record_event()?;
    // SAFETY: (const uint4*, uint4*, long long) matches the kernel; it touches `words` 16-byte
    // words of each side, which fit in the view (checked) and in `out`; the view's borrow keeps
    // the table alive and the stream is synchronized before returning.
    unsafe {
        kernel
            .launch_builder(stream)
            .arg(&src)
            .arg_buffer_mut(out)
            .arg(&words)
            .launch(cfg)
    }?;
    let end = stream.record_event()?;
    stream.synchronize()?;
    Ok(start.elapsed_ms(&end)?)
}
