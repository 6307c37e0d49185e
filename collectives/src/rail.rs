//! `RailBalancer`: re-weights a multi-rail transport from its own telemetry, so each rail
//! carries a share of every large message in proportion to the bandwidth it delivers now.
//!
//! 1. Read the telemetry records newer than the last read that name a rail (`rail: Some(i)`):
//!    one per rail share of a striped send or receive.
//! 2. Per rail and direction, turn the batch into one throughput: its bytes over the time the
//!    rail was busy with them (the union of the records' intervals, so shares queued behind
//!    each other are not counted as slow), skipping records under `min_bytes` (latency, not
//!    bandwidth, dominates those).
//! 3. Keep the last `window` throughputs per rail and direction (records named `"recv"` are
//!    the receiver's view, all others the sender's); a rail's estimate is the lower of the two
//!    directions' medians, so one slow or fast outlier moves nothing and a lasting change wins
//!    after `window / 2 + 1` samples. Each view alone overestimates in its own way: a send
//!    "completes" when its bytes enter the socket buffer, so a rail whose shares fit in that
//!    buffer looks infinitely fast to the sender (on the test bed this drove the weights of a
//!    2 Gbit and a 200 Mbit rail to an even split); a receiver that falls behind reads
//!    buffered bytes faster than the wire delivered them.
//! 4. Weights are the estimates normalised to sum to 1; a rail with no samples yet keeps its
//!    prior (from the topology's line rates), scaled to the measured rails; every live rail
//!    keeps at least `min_share`, so a slowed rail is still measured and can win back traffic
//!    when it recovers. Dropped rails (the anomaly detector's call) get 0.
//!
//! [`RailBalancer::after_op`] runs this every `every` operations and hands the weights to
//! [`ferry_comm::Comm::set_rail_weights`].

use std::collections::VecDeque;

use ferry_comm::{Comm, Record, Telemetry};

use crate::error::{Result, invalid};

/// Re-weights the rails of a communicator from live telemetry; see the module docs.
#[derive(Clone, Debug)]
pub struct RailBalancer {
    prior: Vec<f64>,
    /// Per rail: the sender's samples, then the receiver's.
    samples: Vec<VecDeque<f64>>,
    samples_in: Vec<VecDeque<f64>>,
    /// The group (NIC) of each rail: rails of one group share a link, so they are measured
    /// together and split the group's estimate by their priors.
    group: Vec<usize>,
    dropped: Vec<bool>,
    window: usize,
    every: u64,
    min_bytes: u64,
    min_share: f64,
    next_seq: u64,
    ops: u64,
    updates: u64,
    /// Whether the weights may differ from those last set on the communicator (new samples,
    /// a rail dropped or restored, new priors); [`RailBalancer::after_op`] sets them only then,
    /// so small operations, which add no samples, cost no lock or sort.
    changed: bool,
}

impl RailBalancer {
    /// A balancer for rails whose expected rates are `prior` (any unit, e.g. Gbit/s from the
    /// topology's NICs); pass equal values when nothing is known.
    pub fn new(prior: &[f64]) -> Result<Self> {
        let prior = ferry_comm::check_rail_weights(prior, prior.len())
            .map_err(|e| invalid(e.to_string()))?;
        Ok(RailBalancer {
            samples: vec![VecDeque::new(); prior.len()],
            samples_in: vec![VecDeque::new(); prior.len()],
            dropped: vec![false; prior.len()],
            group: (0..prior.len()).collect(),
            prior,
            window: 5,
            every: 4,
            min_bytes: 64 << 10,
            min_share: 0.01,
            next_seq: 0,
            ops: 0,
            updates: 0,
            changed: true,
        })
    }

    /// Declares which rails share a link: `group[i]` names rail `i`'s NIC (several TCP
    /// connections per NIC, as `btl_tcp_links` opens, are several rails of one group). The
    /// rates of rails that share a link depend on each other's weights, so measuring them one
    /// by one makes the weights wander; grouped, the bytes and busy time of a NIC's rails are
    /// pooled into one estimate, split among its rails by their priors. Default: every rail its
    /// own group.
    pub fn with_groups(mut self, group: &[usize]) -> Result<Self> {
        if group.len() != self.rails() {
            return Err(invalid(format!(
                "{} rail groups for {} rails",
                group.len(),
                self.rails()
            )));
        }
        self.group = group.to_vec();
        Ok(self)
    }

    /// Re-weight every `k` operations (default 4).
    pub fn every(mut self, k: u64) -> Self {
        self.every = k.max(1);
        self
    }

    /// Throughputs kept per rail for the median (default 5).
    pub fn window(mut self, w: usize) -> Self {
        self.window = w.max(1);
        self
    }

    /// Records shorter than this are ignored (default 64 KiB).
    pub fn min_bytes(mut self, b: u64) -> Self {
        self.min_bytes = b;
        self
    }

    /// The least share a live rail keeps (default 0.01).
    pub fn min_share(mut self, s: f64) -> Self {
        self.min_share = s.clamp(0.0, 1.0 / self.prior.len() as f64);
        self
    }

    /// Number of rails.
    pub fn rails(&self) -> usize {
        self.prior.len()
    }

    /// How many times [`RailBalancer::update`] has run.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// Takes rail `i` out of use (weight 0) until [`RailBalancer::restore`]; refuses to drop the
    /// last live rail.
    pub fn drop_rail(&mut self, i: usize) -> Result<()> {
        if i >= self.rails() {
            return Err(invalid(format!("rail {i} of {}", self.rails())));
        }
        if self.dropped.iter().enumerate().all(|(j, d)| *d || j == i) {
            return Err(invalid(format!("rail {i} is the last live rail")));
        }
        self.dropped[i] = true;
        self.changed = true;
        Ok(())
    }

    /// Puts a dropped rail back, with its old samples forgotten.
    pub fn restore(&mut self, i: usize) -> Result<()> {
        if i >= self.rails() {
            return Err(invalid(format!("rail {i} of {}", self.rails())));
        }
        self.dropped[i] = false;
        self.samples[i].clear();
        self.samples_in[i].clear();
        self.changed = true;
        Ok(())
    }

    /// Starts over from new priors (e.g. rates just probed): forgets every sample, so the
    /// weights are the priors until new measurements arrive.
    pub fn reset_priors(&mut self, prior: &[f64]) -> Result<()> {
        let prior = ferry_comm::check_rail_weights(prior, self.rails())
            .map_err(|e| invalid(e.to_string()))?;
        self.prior = prior;
        self.samples.iter_mut().for_each(VecDeque::clear);
        self.samples_in.iter_mut().for_each(VecDeque::clear);
        self.changed = true;
        Ok(())
    }

    /// Adds records (those naming a rail of this balancer and long enough) to the windows:
    /// one sample per rail and direction per call, the bytes of that rail's records over the
    /// time the rail was busy with them (the union of their intervals). Shares queued behind
    /// others on the same connection overlap in time, so dividing each share's bytes by its
    /// own duration would count the queueing as slowness, more on the rail with the deeper
    /// queue, and make the weights swing; the union measures what the rail delivered while it
    /// had work.
    pub fn ingest(&mut self, records: &[Record]) {
        // (bytes, intervals) per rail, for the sender's records and the receiver's.
        // Indexed by group; every rail of a group gets the group's sample.
        type Batch = Vec<(u64, Vec<(u64, u64)>)>;
        let groups = self.group.iter().max().map_or(0, |g| g + 1);
        let mut out: Batch = vec![(0, Vec::new()); groups];
        let mut inn: Batch = vec![(0, Vec::new()); groups];
        for r in records {
            self.next_seq = self.next_seq.max(r.seq + 1);
            let Some(rail) = r.rail.map(usize::from).filter(|&i| i < self.rails()) else {
                continue;
            };
            let end = r.end_ns.saturating_sub(r.wait_ns);
            if r.bytes < self.min_bytes || end <= r.start_ns {
                continue;
            }
            let g = self.group[rail];
            let b = if r.op == "recv" {
                &mut inn[g]
            } else {
                &mut out[g]
            };
            b.0 += r.bytes;
            b.1.push((r.start_ns, end));
        }
        let group = &self.group;
        for (batch, samples) in [(out, &mut self.samples), (inn, &mut self.samples_in)] {
            for (g, (bytes, mut spans)) in batch.into_iter().enumerate() {
                let busy = union_ns(&mut spans);
                if bytes == 0 || busy == 0 {
                    continue;
                }
                for (rail, q) in samples.iter_mut().enumerate() {
                    if group[rail] != g {
                        continue;
                    }
                    if q.len() == self.window {
                        q.pop_front();
                    }
                    q.push_back(bytes as f64 * 1e9 / busy as f64);
                    self.changed = true;
                }
            }
        }
    }

    /// Each rail's estimate in bytes per second: the lower of its sender-side and
    /// receiver-side window medians (`None` without samples).
    pub fn throughput(&self) -> Vec<Option<f64>> {
        let median = |q: &VecDeque<f64>| {
            let mut v: Vec<f64> = q.iter().copied().collect();
            if v.is_empty() {
                return None;
            }
            v.sort_by(f64::total_cmp);
            let m = v.len() / 2;
            Some(if v.len() % 2 == 1 {
                v[m]
            } else {
                (v[m - 1] + v[m]) / 2.0
            })
        };
        self.samples
            .iter()
            .zip(&self.samples_in)
            .map(|(out, inn)| match (median(out), median(inn)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            })
            .collect()
    }

    /// The weights the current estimates give (step 4 of the module docs).
    pub fn weights(&self) -> Vec<f64> {
        let live = |i: usize| !self.dropped[i];
        // A rail's part of its group's estimate: the group's rate times the rail's share of the
        // group's live priors (the whole estimate for a rail alone in its group).
        let group_prior = |g: usize| -> f64 {
            (0..self.rails())
                .filter(|&j| self.group[j] == g && live(j))
                .map(|j| self.prior[j])
                .sum()
        };
        let est: Vec<Option<f64>> = self
            .throughput()
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                let gp = group_prior(self.group[i]);
                e.map(|e| if gp > 0.0 { e * self.prior[i] / gp } else { e })
            })
            .collect();
        // Scale of the priors against measured rates: measured bytes/s per unit of prior.
        let (m, p) = (0..self.rails())
            .filter(|&i| live(i))
            .filter_map(|i| est[i].map(|e| (e, self.prior[i])))
            .fold((0.0, 0.0), |(m, p), (e, q)| (m + e, p + q));
        let scale = if p > 0.0 { m / p } else { 1.0 };
        let raw: Vec<f64> = (0..self.rails())
            .map(|i| {
                if live(i) {
                    est[i].unwrap_or(self.prior[i] * scale)
                } else {
                    0.0
                }
            })
            .collect();
        let total: f64 = raw.iter().sum();
        let mut w: Vec<f64> = raw
            .iter()
            .map(|x| if total > 0.0 { x / total } else { 0.0 })
            .collect();
        let lives = (0..self.rails()).filter(|&i| live(i)).count();
        if total <= 0.0 {
            return (0..self.rails())
                .map(|i| if live(i) { 1.0 / lives as f64 } else { 0.0 })
                .collect();
        }
        for (i, x) in w.iter_mut().enumerate() {
            if live(i) {
                *x = x.max(self.min_share);
            }
        }
        let total: f64 = w.iter().sum();
        w.iter().map(|x| x / total).collect()
    }

    /// Reads the telemetry records since the last read and returns the new weights.
    pub fn update(&mut self, telemetry: &Telemetry) -> Vec<f64> {
        let recs = telemetry.since(self.next_seq);
        self.ingest(&recs);
        self.updates += 1;
        self.weights()
    }

    /// Counts one operation; every `every` operations, updates from `telemetry` and sets the
    /// weights on `comm` (only where its rail count matches, and only when they may have
    /// changed since the last time). Returns the weights it set.
    pub fn after_op<C: Comm>(
        &mut self,
        comm: &C,
        telemetry: &Telemetry,
    ) -> Result<Option<Vec<f64>>> {
        self.ops += 1;
        if self.ops % self.every != 0 || comm.rail_count() != self.rails() {
            return Ok(None);
        }
        let recs = telemetry.since(self.next_seq);
        self.ingest(&recs);
        self.updates += 1;
        if !self.changed {
            return Ok(None);
        }
        let w = self.weights();
        comm.set_rail_weights(&w)?;
        self.changed = false;
        tracing::debug!(rank = comm.rank(), weights = ?w, "rails re-weighted");
        Ok(Some(w))
    }
}

/// Total length of the union of the intervals `[start, end)` (sorted in place).
fn union_ns(spans: &mut [(u64, u64)]) -> u64 {
    spans.sort_unstable();
    let mut total = 0;
    let mut current: Option<(u64, u64)> = None;
    for &(a, b) in spans.iter() {
        match current {
            Some((s, e)) if a <= e => current = Some((s, e.max(b))),
            Some((s, e)) => {
                total += e - s;
                current = Some((a, b));
            }
            None => current = Some((a, b)),
        }
    }
    total + current.map_or(0, |(s, e)| e - s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GBIT: f64 = 1e9 / 8.0; // bytes per second in one Gbit/s

    /// One striped operation of `bytes` over rails of true rates `gbit` with weights `w`: each
    /// rail's share takes share / rate (plus noise), and records itself as TcpComm does.
    fn striped(
        t: &Telemetry,
        bytes: f64,
        w: &[f64],
        gbit: &[f64],
        noise: &mut impl FnMut() -> f64,
    ) {
        let start = t.now_ns();
        for (i, (&wi, &g)) in w.iter().zip(gbit).enumerate() {
            let share = bytes * wi;
            let ns = (share / (g * GBIT) * 1e9 * noise()) as u64;
            t.record(
                Record::new("send", share as u64, start, start + ns.max(1))
                    .with_rail(i)
                    .with_peer(1),
            );
        }
    }

    /// A small deterministic generator (xorshift) for noise in 0.8..1.2 with rare 5x outliers.
    fn noise(seed: u64) -> impl FnMut() -> f64 {
        let mut s = seed.max(1);
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s % 10_000) as f64 / 10_000.0;
            if s % 23 == 0 { 5.0 } else { 0.8 + 0.4 * u }
        }
    }

    fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
    }

    #[test]
    fn after_op_sets_weights_only_when_they_may_have_changed() {
        ferry_comm::ThreadComm::run(1, |comm| {
            let t = Telemetry::default();
            let mut b = RailBalancer::new(&[1.0]).unwrap().every(1);
            // The first operation sets the priors' weights.
            assert!(b.after_op(&comm, &t).unwrap().is_some());
            // Operations with only short shares add no samples: nothing to set.
            t.record(Record::new("send", 100, 0, 1_000).with_rail(0));
            assert!(b.after_op(&comm, &t).unwrap().is_none());
            assert!(b.after_op(&comm, &t).unwrap().is_none());
            // A long share is a sample: the weights are set again.
            t.record(Record::new("send", 1 << 20, 0, 1_000_000).with_rail(0));
            assert!(b.after_op(&comm, &t).unwrap().is_some());
            assert!(b.after_op(&comm, &t).unwrap().is_none());
            // New priors change the weights without a sample.
            b.reset_priors(&[2.0]).unwrap();
            assert!(b.after_op(&comm, &t).unwrap().is_some());
            assert_eq!(b.updates(), 6);
        });
    }

    #[test]
    fn rails_of_one_nic_are_measured_together() {
        // Two NICs, two connections each: 1 GB/s and 0.1 GB/s links. Each connection's share
        // goes at a rate that depends on its sibling's; pooled per NIC the estimate is right.
        let t = Telemetry::new(256);
        let mut b = RailBalancer::new(&[1.0, 1.0, 1.0, 1.0])
            .unwrap()
            .with_groups(&[0, 0, 1, 1])
            .unwrap()
            .min_bytes(1);
        assert!(b.clone().with_groups(&[0, 1]).is_err());
        // One op: NIC 0 moves 2 MB in 2 ms (its two connections overlapping), NIC 1 0.2 MB in 2 ms.
        for (rail, bytes, end) in [
            (0, 1_000_000, 2_000_000),
            (1, 1_000_000, 1_500_000),
            (2, 100_000, 2_000_000),
            (3, 100_000, 1_000_000),
        ] {
            t.record(Record::new("send", bytes, 0, end).with_rail(rail));
        }
        let w = b.update(&t);
        assert!(
            close(
                &w,
                &[10.0 / 22.0, 10.0 / 22.0, 1.0 / 22.0, 1.0 / 22.0],
                1e-9
            ),
            "{w:?}"
        );
    }

    #[test]
    fn busy_time_is_the_union_of_intervals() {
        assert_eq!(union_ns(&mut []), 0);
        assert_eq!(union_ns(&mut [(5, 10)]), 5);
        assert_eq!(union_ns(&mut [(20, 30), (0, 10), (5, 12)]), 22);
        assert_eq!(union_ns(&mut [(0, 10), (2, 3), (10, 15)]), 15);
    }

    #[test]
    fn queued_shares_are_not_counted_as_slow() {
        // Four 1 MB shares queued at once on a 1 GB/s rail finish at 1, 2, 3, 4 ms: each
        // share's own duration says 0.25-1 GB/s, the rail delivered 1 GB/s.
        let t = Telemetry::new(64);
        let mut b = RailBalancer::new(&[1.0]).unwrap();
        for k in 1..=4u64 {
            t.record(Record::new("send", 1_000_000, 0, k * 1_000_000).with_rail(0));
        }
        b.update(&t);
        let est = b.throughput()[0].unwrap();
        assert!((est - 1e9).abs() < 1e3, "{est}");
    }

    #[test]
    fn converges_after_a_rail_is_throttled() {
        let t = Telemetry::new(4096);
        let mut b = RailBalancer::new(&[2.0, 2.0]).unwrap().every(1);
        let mut n = noise(7);
        let mut w = b.weights();
        assert!(close(&w, &[0.5, 0.5], 1e-12));
        let mut truth = [2.0, 2.0];
        for _ in 0..6 {
            striped(&t, 16e6, &w, &truth, &mut n);
            w = b.update(&t);
        }
        assert!(close(&w, &[0.5, 0.5], 0.1), "{w:?}");
        // Rail 1 throttled from 2 to 0.5 Gbit/s: the fair split is 0.8 / 0.2.
        truth = [2.0, 0.5];
        let mut converged_at = None;
        for op in 1..=10 {
            striped(&t, 16e6, &w, &truth, &mut n);
            w = b.update(&t);
            if converged_at.is_none() && close(&w, &[0.8, 0.2], 0.05) {
                converged_at = Some(op);
            }
        }
        let at = converged_at.expect("weights never reached 0.8 / 0.2");
        assert!(at <= 4, "took {at} updates");
        assert!(close(&w, &[0.8, 0.2], 0.05), "{w:?}");
        // And back when the rail recovers.
        truth = [2.0, 2.0];
        for _ in 0..6 {
            striped(&t, 16e6, &w, &truth, &mut n);
            w = b.update(&t);
        }
        assert!(close(&w, &[0.5, 0.5], 0.1), "{w:?}");
    }

    #[test]
    fn priors_small_records_and_dropped_rails() {
        let t = Telemetry::new(64);
        let mut b = RailBalancer::new(&[2.0, 0.2]).unwrap();
        assert!(close(&b.weights(), &[2.0 / 2.2, 0.2 / 2.2], 1e-12));
        // Small records say nothing about bandwidth.
        t.record(Record::new("send", 100, 0, 1_000_000).with_rail(0));
        assert!(close(&b.update(&t), &[2.0 / 2.2, 0.2 / 2.2], 1e-12));
        // One measured rail scales the other's prior.
        t.record(Record::new("send", 1 << 20, 0, 1_000_000).with_rail(0));
        let w = b.update(&t);
        assert!(close(&w, &[2.0 / 2.2, 0.2 / 2.2], 1e-9), "{w:?}");
        b.drop_rail(1).unwrap();
        assert_eq!(b.weights(), [1.0, 0.0]);
        assert!(b.drop_rail(0).is_err());
        assert!(b.drop_rail(5).is_err());
        b.restore(1).unwrap();
        assert!(b.weights()[1] > 0.0);
        assert!(RailBalancer::new(&[1.0, -1.0]).is_err());
        assert!(RailBalancer::new(&[]).is_err());
    }

    #[test]
    fn the_slower_direction_wins() {
        let t = Telemetry::new(64);
        let mut b = RailBalancer::new(&[2.0, 0.2]).unwrap();
        // The sender saw both shares vanish into socket buffers at once (the slow rail's
        // looks as fast as the fast one's); the receiver saw them arrive at 2 and 0.2 Gbit/s.
        for _ in 0..5 {
            t.record(Record::new("send", 1 << 20, 0, 1_000).with_rail(0));
            t.record(Record::new("send", 1 << 17, 0, 125).with_rail(1));
            t.record(Record::new("recv", 1 << 20, 0, 4_194_304).with_rail(0));
            t.record(Record::new("recv", 1 << 17, 0, 5_242_880).with_rail(1));
        }
        let w = b.update(&t);
        assert!(close(&w, &[2.0 / 2.2, 0.2 / 2.2], 1e-9), "{w:?}");
        // Only one direction measured: that one counts.
        let t = Telemetry::new(64);
        let mut b = RailBalancer::new(&[1.0, 1.0]).unwrap();
        t.record(Record::new("recv", 1 << 20, 0, 1_000_000).with_rail(0));
        t.record(Record::new("recv", 1 << 20, 0, 3_000_000).with_rail(1));
        let w = b.update(&t);
        assert!(close(&w, &[0.75, 0.25], 1e-9), "{w:?}");
    }

    #[test]
    fn a_very_slow_rail_keeps_its_floor() {
        let t = Telemetry::new(64);
        let mut b = RailBalancer::new(&[1.0, 1.0]).unwrap().min_share(0.02);
        for _ in 0..5 {
            t.record(Record::new("send", 1 << 20, 0, 1_000_000).with_rail(0));
            t.record(Record::new("send", 1 << 20, 0, 1_000_000_000).with_rail(1));
        }
        let w = b.update(&t);
        assert!(w[1] > 0.019 && w[1] < 0.02, "{w:?}");
    }
}
