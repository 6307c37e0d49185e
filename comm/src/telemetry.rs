//! Telemetry: a bounded, always-on record of what a rank sent and received.
//!
//! Every collective and point-to-point operation that a backend or algorithm chooses to record
//! becomes one [`Record`] (operation, peer, rail, bytes, start, end, time spent waiting) in a
//! [`Telemetry`] ring buffer. The buffer keeps the most recent `capacity` records and counts the
//! ones it dropped, so recording never allocates after start-up and never blocks for long.
//! Readers (the anomaly detector, benchmarks, the GNN trainers' summaries) take snapshots or the
//! records newer than a sequence number they remember.
//!
//! Times are nanoseconds since the `Telemetry` was created ([`Telemetry::now_ns`]), so records
//! are cheap to compare inside a rank; ranks do not share a clock.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

/// One recorded operation (or one rail's share of a striped operation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// Sequence number, assigned by [`Telemetry::record`]; increases by one per record.
    pub seq: u64,
    /// What the operation was: `"send"`, `"recv"`, `"allreduce"`, ... (a static name).
    pub op: &'static str,
    /// The peer rank for point-to-point traffic; `None` for a whole collective.
    pub peer: Option<u32>,
    /// The rail (NIC) that carried the bytes, where the backend has several; `None` otherwise.
    pub rail: Option<u16>,
    /// Payload bytes moved by this operation (sent or received).
    pub bytes: u64,
    /// Start, in nanoseconds since the telemetry's creation.
    pub start_ns: u64,
    /// End, in nanoseconds since the telemetry's creation.
    pub end_ns: u64,
    /// Part of `end_ns - start_ns` spent waiting for a peer (blocked on a receive or a flow
    /// control window) rather than moving bytes; 0 where the backend cannot tell.
    pub wait_ns: u64,
}

impl Record {
    /// A record without a sequence number, for [`Telemetry::record`] to fill in.
    pub fn new(op: &'static str, bytes: u64, start_ns: u64, end_ns: u64) -> Self {
        Self {
            seq: 0,
            op,
            peer: None,
            rail: None,
            bytes,
            start_ns,
            end_ns,
            wait_ns: 0,
        }
    }

    /// The same record with its peer set.
    pub fn with_peer(mut self, peer: usize) -> Self {
        self.peer = Some(peer as u32);
        self
    }

    /// The same record with its rail set.
    pub fn with_rail(mut self, rail: usize) -> Self {
        self.rail = Some(rail as u16);
        self
    }

    /// The same record with its waiting time set.
    pub fn with_wait(mut self, wait_ns: u64) -> Self {
        self.wait_ns = wait_ns;
        self
    }

    /// Duration in nanoseconds (0 if the clock went backwards, which `Instant` forbids).
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }

    /// Throughput in bytes per second, `None` for a zero-length interval.
    pub fn bytes_per_second(&self) -> Option<f64> {
        let ns = self.duration_ns();
        (ns > 0).then(|| self.bytes as f64 * 1e9 / ns as f64)
    }
}

/// Default number of records a [`Telemetry`] keeps.
pub const DEFAULT_CAPACITY: usize = 1 << 16;

/// A bounded ring buffer of [`Record`]s, shared between the threads of one rank
/// (wrap it in an `Arc`).
#[derive(Debug)]
pub struct Telemetry {
    epoch: Instant,
    capacity: usize,
    inner: Mutex<Ring>,
}

#[derive(Debug)]
struct Ring {
    records: VecDeque<Record>,
    next_seq: u64,
    dropped: u64,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl Telemetry {
    /// A buffer that keeps the latest `capacity` records (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            epoch: Instant::now(),
            capacity,
            inner: Mutex::new(Ring {
                records: VecDeque::with_capacity(capacity),
                next_seq: 0,
                dropped: 0,
            }),
        }
    }

    /// Nanoseconds since this telemetry was created: the clock of its records.
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// How many records the buffer keeps.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        // A panic while holding this lock cannot leave the ring inconsistent (every update is a
        // single push/pop), so a poisoned lock is still safe to use.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a record, assigning its sequence number, which it returns. The oldest record is
    /// dropped when the buffer is full.
    pub fn record(&self, mut record: Record) -> u64 {
        let mut ring = self.ring();
        record.seq = ring.next_seq;
        ring.next_seq += 1;
        if ring.records.len() == self.capacity {
            ring.records.pop_front();
            ring.dropped += 1;
        }
        ring.records.push_back(record);
        record.seq
    }

    /// Number of records ever recorded (the next sequence number).
    pub fn total(&self) -> u64 {
        self.ring().next_seq
    }

    /// Number of records pushed out of the buffer by newer ones.
    pub fn dropped(&self) -> u64 {
        self.ring().dropped
    }

    /// A copy of every record still in the buffer, oldest first.
    pub fn snapshot(&self) -> Vec<Record> {
        self.ring().records.iter().copied().collect()
    }

    /// The records with `seq >= first` still in the buffer, oldest first. A reader that remembers
    /// the sequence number after its last read sees each record at most once, and can tell from
    /// the first returned `seq` whether it missed some.
    pub fn since(&self, first: u64) -> Vec<Record> {
        let ring = self.ring();
        let oldest = ring.records.front().map_or(ring.next_seq, |r| r.seq);
        let skip = first.saturating_sub(oldest) as usize;
        ring.records.iter().skip(skip).copied().collect()
    }

    /// Removes and returns every record in the buffer, oldest first.
    pub fn drain(&self) -> Vec<Record> {
        self.ring().records.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_records_and_counts_the_dropped() {
        let t = Telemetry::new(3);
        for i in 0..5u64 {
            let seq = t.record(Record::new("send", i, i, i + 1).with_peer(1).with_rail(0));
            assert_eq!(seq, i);
        }
        let snap = t.snapshot();
        assert_eq!(snap.iter().map(|r| r.seq).collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(snap[0].bytes, 2);
        assert_eq!(t.total(), 5);
        assert_eq!(t.dropped(), 2);
        assert_eq!(t.since(0).len(), 3);
        assert_eq!(t.since(4).iter().map(|r| r.seq).collect::<Vec<_>>(), [4]);
        assert!(t.since(5).is_empty());
        assert_eq!(t.drain().len(), 3);
        assert!(t.snapshot().is_empty());
        assert_eq!(t.record(Record::new("recv", 0, 0, 0)), 5);
    }

    #[test]
    fn throughput_and_clock() {
        let r = Record::new("recv", 1000, 0, 1_000_000).with_wait(10);
        assert_eq!(r.bytes_per_second(), Some(1e6));
        assert_eq!(Record::new("recv", 1, 5, 5).bytes_per_second(), None);
        let t = Telemetry::default();
        let a = t.now_ns();
        let b = t.now_ns();
        assert!(b >= a);
        assert_eq!(t.capacity(), DEFAULT_CAPACITY);
    }
}
