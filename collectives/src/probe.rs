//! Rail bandwidth probing at start-up: before the first collective, measure what each rail of a
//! multi-rail transport really carries, so the first operations are striped by measured rates
//! rather than by declared ones (a `tbf`-shaped veth reports 10 Gbit/s in sysfs whatever its
//! shaping; a NIC may negotiate below its rating).
//!
//! Each rail is measured alone: its weight is set to 1 and the others' to 0, and every rank
//! exchanges a buffer with its ring neighbours (send right, receive from the left) a few times.
//! A rank's figure for the rail is the bytes it received over the time it took; the job's
//! figure is the minimum over ranks (a ring runs at its slowest link). Only the transport's
//! public rail hooks are used (`Comm::set_rail_weights`), so this works for any backend.
//!
//! [`Reprobe`] runs it again when large operations slow down: after each operation of at
//! least `min_bytes`, every rank compares its time with the median of the last ones of the same
//! size; the ranks agree (a one-integer all-reduce) whether any of them was slower by
//! `factor`, and after `strikes` such operations in a row they probe the rails and start the
//! rail balancer over from the measured rates. A throttled or failing link changes the rates
//! that a balancer fed by short shares cannot see (a `tbf` bucket's burst makes a little-used
//! rail look fast); a probe that fills each rail alone can.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use ferry_comm::{Comm, Source, TagMatch};

use crate::collectives::Collectives;
use crate::error::Result;
use crate::reduce::ReduceOp;

/// Tag of the probe's ring exchange (the collectives use 32001..=32007).
const PROBE: ferry_comm::Tag = 32008;

/// What [`Collectives::probe_rails`] measured.
#[derive(Clone, Debug, PartialEq)]
pub struct RailProbe {
    /// Bytes per second each rail carried, the minimum over ranks (0 for a rail that failed to
    /// move anything).
    pub bytes_per_second: Vec<f64>,
    /// The weights set afterwards: measured rates, normalised.
    pub weights: Vec<f64>,
}

impl<C: Comm> Collectives<C> {
    /// Measures each rail of the communicator's transport alone (a ring exchange of `bytes`,
    /// `rounds` times), then sets the rail weights in proportion to the measured rates and
    /// returns them. Collective: every rank calls it. With one rail it measures nothing and
    /// returns weight 1.
    ///
    /// Choose `bytes` well above the transport's striping threshold and large enough to fill
    /// the slowest rail for tens of milliseconds (a few MiB on 0.2-2 Gbit/s rails).
    pub fn probe_rails(&self, bytes: usize, rounds: usize) -> Result<RailProbe> {
        let comm = self.comm();
        let rails = comm.rail_count();
        if rails <= 1 || comm.size() == 1 {
            return Ok(RailProbe {
                bytes_per_second: vec![f64::INFINITY; rails.max(1)],
                weights: vec![1.0 / rails.max(1) as f64; rails.max(1)],
            });
        }
        let before = comm.rail_weights();
        let (p, rank) = (comm.size(), comm.rank());
        let (right, left) = ((rank + 1) % p, (rank + p - 1) % p);
        let out = vec![0xA5u8; bytes];
        let mut inbox = vec![0u8; bytes];
        let mut rates = vec![0.0f64; rails];
        for (rail, rate) in rates.iter_mut().enumerate() {
            let mut one_hot = vec![0.0; rails];
            one_hot[rail] = 1.0;
            comm.set_rail_weights(&one_hot)?;
            self.barrier()?;
            let start = Instant::now();
            for _ in 0..rounds.max(1) {
                comm.sendrecv(
                    right,
                    PROBE,
                    &out,
                    Source::Rank(left),
                    TagMatch::Tag(PROBE),
                    &mut inbox,
                )?;
            }
            let seconds = start.elapsed().as_secs_f64();
            *rate = (bytes * rounds.max(1)) as f64 / seconds.max(1e-9);
        }
        // The job's figure per rail: the slowest rank's.
        self.allreduce(&mut rates, ReduceOp::Min)?;
        let total: f64 = rates.iter().sum();
        let weights = if total > 0.0 && total.is_finite() {
            rates.iter().map(|r| r / total).collect()
        } else {
            before
        };
        comm.set_rail_weights(&weights)?;
        tracing::info!(rank, rates = ?rates, weights = ?weights, "rails probed");
        Ok(RailProbe {
            bytes_per_second: rates,
            weights,
        })
    }
}

/// When to probe the rails again; see the module docs and
/// [`Collectives::with_reprobe`](crate::Collectives::with_reprobe).
#[derive(Clone, Debug)]
pub struct Reprobe {
    /// Operations smaller than this are not watched.
    pub min_bytes: usize,
    /// An operation is slow when it takes `factor` times the median of the recent ones.
    pub factor: f64,
    /// Slow operations in a row (agreed by all ranks) that trigger a probe.
    pub strikes: u32,
    /// Bytes each rail moves in the probe (well above a shaper's burst).
    pub probe_bytes: usize,
    history: HashMap<usize, VecDeque<f64>>,
    in_a_row: u32,
    probes: u64,
}

impl Reprobe {
    /// Watches operations of `min_bytes` and more; defaults: factor 1.3, 2 strikes, 4 MiB probes.
    pub fn new(min_bytes: usize) -> Self {
        Reprobe {
            min_bytes,
            factor: 1.3,
            strikes: 2,
            probe_bytes: 4 << 20,
            history: HashMap::new(),
            in_a_row: 0,
            probes: 0,
        }
    }

    /// How many probes have run.
    pub fn probes(&self) -> u64 {
        self.probes
    }

    /// Records an operation's time; whether it is slow against the recent ones of its size.
    pub(crate) fn observe(&mut self, bytes: usize, seconds: f64) -> bool {
        let h = self.history.entry(bytes).or_default();
        let slow = h.len() >= 3 && {
            let mut v: Vec<f64> = h.iter().copied().collect();
            v.sort_by(f64::total_cmp);
            seconds > self.factor * v[v.len() / 2]
        };
        if h.len() == 8 {
            h.pop_front();
        }
        h.push_back(seconds);
        slow
    }

    /// Counts an agreed verdict; true when it is time to probe (and restarts the count and the
    /// history, whose times belong to the old rates).
    pub(crate) fn verdict(&mut self, any_slow: bool) -> bool {
        self.in_a_row = if any_slow { self.in_a_row + 1 } else { 0 };
        if self.in_a_row >= self.strikes.max(1) {
            self.in_a_row = 0;
            self.history.clear();
            self.probes += 1;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_operations_in_a_row_trigger_a_probe() {
        let mut r = Reprobe::new(1);
        for _ in 0..4 {
            assert!(!r.observe(100, 1.0));
            assert!(!r.verdict(false));
        }
        // One slow operation is noise; two in a row are news.
        assert!(r.observe(100, 2.0));
        assert!(!r.verdict(true));
        assert!(!r.observe(100, 1.0));
        assert!(!r.verdict(false));
        assert!(r.observe(100, 2.0));
        assert!(!r.verdict(true));
        assert!(r.observe(100, 2.5));
        assert!(r.verdict(true));
        assert_eq!(r.probes(), 1);
        // The history starts over: the new times are the new normal.
        assert!(!r.observe(100, 2.5));
    }
}
