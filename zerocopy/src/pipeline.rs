//! [`GatherPipeline`]: batches of host indices in, device feature batches out, double-buffered
//! so that checking and uploading the next group of batches and consuming the previous one
//! overlap the gather of the current one.
//!
//! A *group* is `group` consecutive batches gathered in one pass (1 by default,
//! [`GatherPipeline::grouped`] for more). Steps for group `g`, in slot `g % 2` (free: its last
//! group was consumed one step ago):
//! 1. Check each batch's indices on the host (the error names the batch and the first bad
//!    index) and append them to the group.
//! 2. Upload the group's indices into the slot's index buffer (sorted on the host, with output
//!    positions, when [`GatherOptions::sort`] asks; the common case uploads them as they are).
//! 3. Queue on the pipeline's own stream: the GPU bucketing of the indices by table window
//!    when [`GatherOptions::bucket`] is on (the default, as in [`crate::Gatherer`]), then the
//!    gather; record an event after it.
//! 4. Wait for group `g - 1`'s event and hand each of its batches to the consumer as a
//!    [`Gathered`] window of the slot's output.
//!
//! Why groups: a random row costs the GPU an address translation for its 64 KiB window of the
//! table, and the GPU resolves about 30M distinct windows a second (bench/RESULTS.md). A batch
//! of 1M rows spread over a 32 GiB table touches about 440K windows, so it is bound by
//! translations, not by PCIe; gathering 8 batches in one bucketed pass touches each window
//! once for about 16 rows. The price is memory: a slot holds `group` batches of output.
//!
//! Every buffer (indices, bucketing scratch, output) is allocated once per slot, for
//! `group * max_batch` indices.
//!
//! Batches already on the device ([`GatherPipeline::run_device`], e.g. a GPU sampler's output)
//! skip steps 1-2: each is copied into the slot on the device, and the gather kernel reports an
//! index out of range, naming the batch and position.
//!
//! Not done yet: asynchronous index uploads (ferry-gpu's copies block the host), more than two
//! slots, handing batches to a consumer on another thread.

use ferry_gpu::{DeviceBuffer, Event, Gpu, MappedHostBuffer, Stream};
use rayon::prelude::*;

use crate::bucket::{BucketScratch, Bucketing};
use crate::error::{Result, invalid};
use crate::gather::{GatherOptions, Launcher};
use crate::index::{GatherIndex, sort_with_positions, validate_indices};
use crate::table::TableView;

/// One buffer set of the two.
#[derive(Debug)]
struct Slot<I> {
    /// Room for `group * max_batch` indices; the group fills a prefix.
    idx: DeviceBuffer<I>,
    /// Output positions of host-sorted batches (with [`GatherOptions::sort`]).
    out_pos: Option<DeviceBuffer<i64>>,
    /// Bucketing scratch (with [`GatherOptions::bucket`] and no host sort).
    buckets: Option<BucketScratch<I>>,
    out: DeviceBuffer<u8>,
    bad: DeviceBuffer<u64>,
    done: Option<Event>,
    /// The group's batches: (batch number, first row in `out`, rows).
    members: Vec<(usize, usize, usize)>,
}

/// One gathered batch: `rows` rows of `row_bytes` bytes at byte `offset` of a pipeline slot's
/// device buffer. Valid only inside the consumer call that receives it.
#[derive(Debug, Clone, Copy)]
pub struct Gathered<'a> {
    buffer: &'a DeviceBuffer<u8>,
    offset: usize,
    rows: usize,
    row_bytes: usize,
}

impl<'a> Gathered<'a> {
    /// The slot's whole output buffer (other batches of the group share it).
    pub fn buffer(&self) -> &'a DeviceBuffer<u8> {
        self.buffer
    }

    /// Byte offset of this batch's first row in [`buffer`](Self::buffer).
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Rows in the batch.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes in the batch: rows x row bytes.
    pub fn len_bytes(&self) -> usize {
        self.rows * self.row_bytes
    }

    /// Device address of the batch's first row, for the consumer's kernels.
    pub fn device_ptr(&self) -> u64 {
        self.buffer.device_ptr() + self.offset as u64
    }

    /// Copies the batch's rows to the host (blocking).
    pub fn to_host(&self) -> Result<Vec<u8>> {
        let mut v = vec![0u8; self.len_bytes()];
        self.buffer.copy_dtoh_at(self.offset, &mut v)?;
        Ok(v)
    }
}

/// A double-buffered stream of gathers from one table on its own CUDA stream.
#[derive(Debug)]
pub struct GatherPipeline<'t, I: GatherIndex> {
    table: TableView<'t>,
    launcher: Launcher,
    bucketing: Option<Bucketing>,
    slots: [Slot<I>; 2],
    max_batch: usize,
    group: usize,
    /// The group being assembled on the host, in pinned memory so that its upload runs at
    /// the link's speed (a pageable copy of 8M indices took longer than their gather).
    staged: MappedHostBuffer,
    /// Indices in `staged`.
    staged_len: usize,
    _index: std::marker::PhantomData<I>,
}

impl<'t, I: GatherIndex> GatherPipeline<'t, I> {
    /// A pipeline over `table` for batches of up to `max_batch` indices, one batch per pass;
    /// allocates two output buffers of `max_batch * row_bytes` bytes, and per slot room for
    /// `max_batch` indices and their bucketing (or sorting) scratch.
    pub fn new(
        gpu: &Gpu,
        table: TableView<'t>,
        max_batch: usize,
        options: GatherOptions,
    ) -> Result<Self> {
        Self::grouped(gpu, table, max_batch, 1, options)
    }

    /// A pipeline that gathers `group` consecutive batches (of up to `max_batch` indices each)
    /// in one bucketed pass, for tables so large that address translation bounds a single
    /// batch (module docs); allocates two output buffers of `group * max_batch * row_bytes`
    /// bytes. Batches still reach the consumer one by one, in order, and the last group may
    /// be short.
    pub fn grouped(
        gpu: &Gpu,
        table: TableView<'t>,
        max_batch: usize,
        group: usize,
        options: GatherOptions,
    ) -> Result<Self> {
        if group == 0 {
            return Err(invalid("a pipeline group holds at least one batch"));
        }
        let stream = gpu.new_stream()?;
        let upload = gpu.new_stream()?;
        let capacity = max_batch
            .checked_mul(group)
            .ok_or_else(|| invalid(format!("{group} batches of {max_batch} rows overflow")))?;
        let bytes = capacity
            .checked_mul(table.row_bytes())
            .ok_or_else(|| invalid(format!("{group} batches of {max_batch} rows overflow")))?;
        let bucketing = if options.bucket && !options.sort {
            Some(Bucketing::new::<I>(&stream, &table)?)
        } else {
            None
        };
        let slot = || -> Result<Slot<I>> {
            Ok(Slot {
                // On the upload stream: their blocking copies then wait for nothing on the
                // pipeline's stream (the kernels that read them wait for the copies).
                idx: upload.alloc_zeros(capacity)?,
                out_pos: if options.sort {
                    Some(upload.alloc_zeros(capacity)?)
                } else {
                    None
                },
                buckets: match &bucketing {
                    Some(b) => Some(b.scratch(&stream, capacity)?),
                    None => None,
                },
                out: stream.alloc_zeros(bytes)?,
                bad: upload.clone_htod(&[u64::MAX])?,
                done: None,
                members: Vec::with_capacity(group),
            })
        };
        Ok(GatherPipeline {
            table,
            launcher: Launcher::new(&stream, options)?,
            slots: [slot()?, slot()?],
            bucketing,
            max_batch,
            group,
            staged: MappedHostBuffer::new(gpu, capacity * size_of::<I>())?,
            staged_len: 0,
            _index: std::marker::PhantomData,
        })
    }

    /// Batches gathered per pass.
    pub fn group(&self) -> usize {
        self.group
    }

    /// The stream the gathers run on.
    pub fn stream(&self) -> &Stream {
        &self.launcher.stream
    }

    /// Gathers every batch in order and calls `consume(batch_number, &gathered)` for each,
    /// where [`Gathered`] locates the batch's rows on the device. `consume` must be done with
    /// them when it returns (work it queues on other streams must be finished or use tracked
    /// launches), because the buffer is refilled two groups later.
    pub fn run<B, F>(&mut self, batches: B, mut consume: F) -> Result<()>
    where
        B: IntoIterator,
        B::Item: AsRef<[I]>,
        F: FnMut(usize, &Gathered<'_>) -> Result<()>,
    {
        let stage = |p: &mut Self, slot, first, b, batch: B::Item| {
            p.stage_host(slot, first, b, batch.as_ref())
        };
        let outcome = self.run_groups(batches, &mut consume, stage, true);
        self.after_run(outcome)
    }

    /// Like [`run`](Self::run), with batches of indices already on the device (each buffer
    /// whole is one batch, e.g. a sampler's output; the work that fills it must be finished).
    /// They are copied into the pipeline's slots on the device and checked there: an index out
    /// of range is reported by the gather kernel, naming the batch and position. Host sorting
    /// ([`GatherOptions::sort`]) needs host indices and is refused here.
    pub fn run_device<'b, B, F>(&mut self, batches: B, mut consume: F) -> Result<()>
    where
        B: IntoIterator<Item = &'b DeviceBuffer<I>>,
        F: FnMut(usize, &Gathered<'_>) -> Result<()>,
    {
        if self.slots[0].out_pos.is_some() {
            return Err(invalid(
                "GatherPipeline::run_device: host sorting needs host indices (use run, or the \
                 default GPU bucketing)",
            ));
        }
        let outcome = self.run_groups(batches, &mut consume, Self::stage_device, false);
        self.after_run(outcome)
    }

    /// Leaves the pipeline ready for the next run, and no kernel running past an error.
    fn after_run(&mut self, outcome: Result<()>) -> Result<()> {
        self.staged_len = 0;
        for slot in &mut self.slots {
            slot.members.clear();
        }
        if outcome.is_err() {
            // The first error is the one to report.
            let _ = self.launcher.stream.synchronize();
        }
        outcome
    }

    /// Checks host batch `b` and appends it to the staged group at `first`; returns its length.
    fn stage_host(&mut self, _slot: usize, first: usize, b: usize, idx: &[I]) -> Result<usize> {
        self.check_len(b, idx.len())?;
        validate_indices(idx, self.table.rows()).map_err(|e| invalid(format!("batch {b}: {e}")))?;
        let dst = &mut self.staged.as_typed_mut::<I>()[first..first + idx.len()];
        // In pieces on every core: one thread copies 8 MB (1M i64 indices) in about 1 ms, a
        // group of 16 batches in 16.
        dst.par_chunks_mut(1 << 16)
            .zip(idx.par_chunks(1 << 16))
            .for_each(|(d, s)| d.copy_from_slice(s));
        self.staged_len = first + idx.len();
        Ok(idx.len())
    }

    /// Copies device batch `b` into slot `slot`'s indices at `first`; returns its length.
    fn stage_device(
        &mut self,
        slot: usize,
        first: usize,
        b: usize,
        idx: &DeviceBuffer<I>,
    ) -> Result<usize> {
        self.check_len(b, idx.len())?;
        // The slot's last group was consumed one step ago, so its index buffer is free.
        self.slots[slot].idx.copy_dtod_at(first, idx)?;
        Ok(idx.len())
    }

    fn check_len(&self, b: usize, len: usize) -> Result<()> {
        if len > self.max_batch {
            return Err(invalid(format!(
                "batch {b} has {len} indices; the pipeline takes up to {}",
                self.max_batch
            )));
        }
        Ok(())
    }

    /// The loop of `run` and `run_device`: `stage` puts batch `b` at `first` of the group
    /// bound for a slot; every `group` batches (and at the end) the group is launched and the
    /// previous one handed to the consumer.
    fn run_groups<T, B, F>(
        &mut self,
        batches: B,
        consume: &mut F,
        stage: impl Fn(&mut Self, usize, usize, usize, T) -> Result<usize>,
        from_host: bool,
    ) -> Result<()>
    where
        B: IntoIterator<Item = T>,
        F: FnMut(usize, &Gathered<'_>) -> Result<()>,
    {
        let mut pending: Option<usize> = None;
        let mut groups = 0usize;
        let mut members: Vec<(usize, usize, usize)> = Vec::with_capacity(self.group);
        let mut n = 0usize;
        let mut batches = batches.into_iter().enumerate().peekable();
        while let Some((b, batch)) = batches.next() {
            let s = groups % 2;
            let len = stage(self, s, n, b, batch)?;
            members.push((b, n, len));
            n += len;
            if members.len() < self.group && batches.peek().is_some() {
                continue;
            }
            groups += 1;
            self.launch(s, std::mem::take(&mut members), n, from_host)?;
            members = Vec::with_capacity(self.group);
            n = 0;
            self.staged_len = 0;
            if let Some(p) = pending {
                self.finish(p, consume)?;
            }
            pending = Some(s);
        }
        if let Some(p) = pending {
            self.finish(p, consume)?;
        }
        Ok(())
    }

    /// Waits for slot `p`'s group and hands its batches to the consumer.
    fn finish<F>(&mut self, p: usize, consume: &mut F) -> Result<()>
    where
        F: FnMut(usize, &Gathered<'_>) -> Result<()>,
    {
        let (row_bytes, rows) = (self.table.row_bytes(), self.table.rows());
        finish(&mut self.slots[p], row_bytes, rows, consume)
    }

    /// Uploads the staged group into slot `s` (when it came from the host; device batches are
    /// in the slot already) and queues the bucketing and gather of its `n` indices.
    fn launch(
        &mut self,
        s: usize,
        members: Vec<(usize, usize, usize)>,
        n: usize,
        from_host: bool,
    ) -> Result<()> {
        let idx = &self.staged.as_typed::<I>()[..self.staged_len];
        let slot = &mut self.slots[s];
        // The slot's last gather finished (its event was waited for) one step ago, so its
        // buffers are free; each copy below blocks until done.
        match &mut slot.out_pos {
            Some(out_pos) if from_host => {
                let (sorted, positions) = sort_with_positions(idx);
                slot.idx.copy_htod(&sorted)?;
                out_pos.copy_htod(&positions)?;
            }
            _ if from_host => slot.idx.copy_htod(idx)?,
            _ => {}
        }
        slot.bad.copy_htod(&[u64::MAX])?;
        let stream = &self.launcher.stream;
        let (gather_idx, gather_pos) = match (&self.bucketing, &mut slot.buckets) {
            (Some(bucketing), Some(scratch)) => {
                bucketing.enqueue(stream, &slot.idx, n, scratch)?;
                (&scratch.sorted, Some(&scratch.pos))
            }
            _ => (&slot.idx, slot.out_pos.as_ref()),
        };
        // SAFETY: the table is borrowed for 't, beyond the pipeline, whose `Drop` and error
        // path synchronize the stream; the host reads `out` and `bad` only after the slot's
        // `done` event has completed, and rewrites the slot's buffers only after that.
        unsafe {
            self.launcher.enqueue(
                self.table,
                gather_idx,
                n,
                gather_pos,
                &mut slot.out,
                &mut slot.bad,
            )
        }?;
        slot.done = Some(self.launcher.stream.record_event()?);
        slot.members = members;
        Ok(())
    }
}

/// Waits for a slot's gather, checks its flag and hands each batch to the consumer.
fn finish<I: GatherIndex, F>(
    slot: &mut Slot<I>,
    row_bytes: usize,
    table_rows: usize,
    consume: &mut F,
) -> Result<()>
where
    F: FnMut(usize, &Gathered<'_>) -> Result<()>,
{
    if let Some(done) = slot.done.take() {
        done.synchronize()?;
    }
    let members = std::mem::take(&mut slot.members);
    let flag = slot.bad.clone_dtoh()?[0];
    if flag != u64::MAX {
        let k = flag as usize;
        let at = members
            .iter()
            .find(|&&(_, first, rows)| (first..first + rows).contains(&k));
        // Unsorted groups keep their indices in group order: name the bad one.
        let mut index = [I::default()];
        let value = match slot.out_pos {
            None if k < slot.idx.len() => {
                slot.idx.copy_dtoh_at(k, &mut index)?;
                format!("index {} ", index[0].to_i64())
            }
            _ => String::new(),
        };
        return Err(invalid(match at {
            Some(&(b, first, _)) => format!(
                "batch {b}: {value}at position {} is out of range for a table of {table_rows} \
                 rows (found by the gather kernel)",
                k - first
            ),
            None => format!("the gather kernel flagged position {k} of a group"),
        }));
    }
    for (b, first, rows) in members {
        let gathered = Gathered {
            buffer: &slot.out,
            offset: first * row_bytes,
            rows,
            row_bytes,
        };
        consume(b, &gathered)?;
    }
    Ok(())
}

impl<I: GatherIndex> Drop for GatherPipeline<'_, I> {
    fn drop(&mut self) {
        if let Err(e) = self.launcher.stream.synchronize() {
            tracing::warn!("GatherPipeline: synchronizing its stream on drop failed: {e}");
        }
    }
}
