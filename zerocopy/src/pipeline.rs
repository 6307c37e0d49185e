//! [`GatherPipeline`]: batches of host indices in, device feature batches out, double-buffered
//! so that checking and uploading batch `b + 1` and consuming batch `b - 1` overlap the gather
//! of batch `b`.
//!
//! Steps for batch `b`, in slot `b % 2` (free: its last batch was consumed one step ago):
//! 1. Check the indices on the host (the error names the first bad one).
//! 2. Upload them into the slot's index buffer (sorted on the host, with output positions,
//!    when [`GatherOptions::sort`] asks; the common case uploads them as they are).
//! 3. Queue on the pipeline's own stream: the GPU bucketing of the indices by table window
//!    when [`GatherOptions::bucket`] is on (the default, as in [`crate::Gatherer`]), then the
//!    gather; record an event after it.
//! 4. Wait for batch `b - 1`'s event and hand its rows to the consumer.
//!
//! Every buffer (indices, bucketing scratch, output) is allocated once per slot, for
//! `max_batch` indices.
//!
//! Not done yet: asynchronous index uploads (ferry-gpu's copies block the host), batches of
//! indices already on the device, more than two slots, handing batches to a consumer on
//! another thread.

use ferry_gpu::{DeviceBuffer, Event, Gpu, Stream};

use crate::bucket::{BucketScratch, Bucketing};
use crate::error::{Result, invalid};
use crate::gather::{GatherOptions, Launcher};
use crate::index::{GatherIndex, sort_with_positions, validate_indices};
use crate::table::TableView;

/// One buffer set of the two.
#[derive(Debug)]
struct Slot<I> {
    /// Room for `max_batch` indices; the batch fills a prefix.
    idx: DeviceBuffer<I>,
    /// Output positions of host-sorted batches (with [`GatherOptions::sort`]).
    out_pos: Option<DeviceBuffer<i64>>,
    /// Bucketing scratch (with [`GatherOptions::bucket`] and no host sort).
    buckets: Option<BucketScratch<I>>,
    out: DeviceBuffer<u8>,
    bad: DeviceBuffer<u64>,
    done: Option<Event>,
    rows: usize,
    batch: usize,
}

/// A double-buffered stream of gathers from one table on its own CUDA stream.
#[derive(Debug)]
pub struct GatherPipeline<'t, I: GatherIndex> {
    table: TableView<'t>,
    launcher: Launcher,
    bucketing: Option<Bucketing>,
    slots: [Slot<I>; 2],
    max_batch: usize,
}

impl<'t, I: GatherIndex> GatherPipeline<'t, I> {
    /// A pipeline over `table` for batches of up to `max_batch` indices; allocates two output
    /// buffers of `max_batch * row_bytes` bytes, and per slot room for `max_batch` indices
    /// and their bucketing (or sorting) scratch.
    pub fn new(
        gpu: &Gpu,
        table: TableView<'t>,
        max_batch: usize,
        options: GatherOptions,
    ) -> Result<Self> {
        let stream = gpu.new_stream()?;
        let upload = gpu.new_stream()?;
        let bytes = max_batch
            .checked_mul(table.row_bytes())
            .ok_or_else(|| invalid(format!("batches of {max_batch} rows overflow")))?;
        let bucketing = if options.bucket && !options.sort {
            Some(Bucketing::new::<I>(&stream, &table)?)
        } else {
            None
        };
        let slot = || -> Result<Slot<I>> {
            Ok(Slot {
                // On the upload stream: their blocking copies then wait for nothing on the
                // pipeline's stream (the kernels that read them wait for the copies).
                idx: upload.alloc_zeros(max_batch)?,
                out_pos: if options.sort {
                    Some(upload.alloc_zeros(max_batch)?)
                } else {
                    None
                },
                buckets: match &bucketing {
                    Some(b) => Some(b.scratch(&stream, max_batch)?),
                    None => None,
                },
                out: stream.alloc_zeros(bytes)?,
                bad: upload.clone_htod(&[u64::MAX])?,
                done: None,
                rows: 0,
                batch: 0,
            })
        };
        Ok(GatherPipeline {
            table,
            launcher: Launcher::new(&stream, options)?,
            slots: [slot()?, slot()?],
            bucketing,
            max_batch,
        })
    }

    /// The stream the gathers run on.
    pub fn stream(&self) -> &Stream {
        &self.launcher.stream
    }

    /// Gathers every batch in order and calls `consume(batch_number, out, rows)` for each,
    /// where the first `rows * row_bytes` bytes of `out` hold the batch. `consume` must be
    /// done with `out` when it returns (work it queues on other streams must be finished or
    /// use tracked launches), because the buffer is refilled two batches later.
    pub fn run<B, F>(&mut self, batches: B, mut consume: F) -> Result<()>
    where
        B: IntoIterator,
        B::Item: AsRef<[I]>,
        F: FnMut(usize, &DeviceBuffer<u8>, usize) -> Result<()>,
    {
        let outcome = self.run_inner(batches, &mut consume);
        if outcome.is_err() {
            // Leave no kernel running past an error; the first error is the one to report.
            let _ = self.launcher.stream.synchronize();
        }
        outcome
    }

    fn run_inner<B, F>(&mut self, batches: B, consume: &mut F) -> Result<()>
    where
        B: IntoIterator,
        B::Item: AsRef<[I]>,
        F: FnMut(usize, &DeviceBuffer<u8>, usize) -> Result<()>,
    {
        let mut pending: Option<usize> = None;
        for (b, batch) in batches.into_iter().enumerate() {
            let idx = batch.as_ref();
            if idx.len() > self.max_batch {
                return Err(invalid(format!(
                    "batch {b} has {} indices; the pipeline takes up to {}",
                    idx.len(),
                    self.max_batch
                )));
            }
            validate_indices(idx, self.table.rows())?;
            let s = b % 2;
            let n = idx.len();
            let slot = &mut self.slots[s];
            // The slot's last gather finished (its event was waited for) one step ago, so its
            // buffers are free; each copy below blocks until done.
            match &mut slot.out_pos {
                Some(out_pos) => {
                    let (sorted, positions) = sort_with_positions(idx);
                    slot.idx.copy_htod(&sorted)?;
                    out_pos.copy_htod(&positions)?;
                }
                None => slot.idx.copy_htod(idx)?,
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
            // path synchronize the stream; the host reads `out` and `bad` only after the
            // slot's `done` event has completed, and rewrites the slot's buffers only after that.
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
            slot.rows = idx.len();
            slot.batch = b;
            if let Some(p) = pending {
                finish(&self.slots[p], consume)?;
            }
            pending = Some(s);
        }
        if let Some(p) = pending {
            finish(&self.slots[p], consume)?;
        }
        Ok(())
    }
}

/// Waits for a slot's gather, checks its flag and hands it to the consumer.
fn finish<I, F>(slot: &Slot<I>, consume: &mut F) -> Result<()>
where
    F: FnMut(usize, &DeviceBuffer<u8>, usize) -> Result<()>,
{
    if let Some(done) = &slot.done {
        done.synchronize()?;
    }
    let flag = slot.bad.clone_dtoh()?[0];
    if flag != u64::MAX {
        return Err(invalid(format!(
            "the gather kernel flagged position {flag} of batch {} after host validation passed",
            slot.batch
        )));
    }
    consume(slot.batch, &slot.out, slot.rows)
}

impl<I: GatherIndex> Drop for GatherPipeline<'_, I> {
    fn drop(&mut self) {
        if let Err(e) = self.launcher.stream.synchronize() {
            tracing::warn!("GatherPipeline: synchronizing its stream on drop failed: {e}");
        }
    }
}
