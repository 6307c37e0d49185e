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
