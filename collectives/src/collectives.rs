//! `Collectives`: a communicator with plans, telemetry and rail balancing: the front door of
//! the crate.
//!
//! Every collective (1) opens a `tracing` span `collective{rank, op, bytes}`, (2) runs its
//! algorithm, (3) records one [`Record`] (op name, bytes, start, end, time blocked on receives)
//! into the communicator's telemetry, or into one this object owns when the backend records
//! nothing, and (4) lets the [`RailBalancer`], if any, re-weight the rails.
//!
//! Collectives are called by every rank of the communicator in the same order with matching
//! arguments, as in MPI; they use tags 32001..=32007 and 16384 + channel for halos, so give the
//! object a communicator of its own (for example `comm.split(Some(0), rank)`) if the
//! application sends on those tags too.

use std::cell::{OnceCell, RefCell};
use std::ops::Range;
use std::sync::Arc;

use ferry_comm::{Comm, Record, Telemetry};

use crate::algo::{Hierarchy, Run, blocks};
use crate::error::{Error, Result, invalid};
use crate::halo::{HaloRecv, HaloRegion, HaloSend};
use crate::plan::{Algorithm, Flat, Plan, Planner};
use crate::probe::Reprobe;
use crate::rail::RailBalancer;
use crate::reduce::{Element, ReduceOp};
use crate::topology::{Node, Topology};

/// Collectives over a communicator; see the module docs.
pub struct Collectives<C: Comm> {
    comm: C,
    telemetry: Arc<Telemetry>,
    topology: Option<Topology>,
    node_of: Option<Vec<usize>>,
    planner: Planner,
    balancer: Option<RefCell<RailBalancer>>,
    reprobe: Option<RefCell<Reprobe>>,
    hierarchy: OnceCell<Hierarchy<C>>,
}

impl<C: Comm> std::fmt::Debug for Collectives<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collectives")
            .field("rank", &self.comm.rank())
            .field("size", &self.comm.size())
            .field("planner", &self.planner)
            .finish()
    }
}

impl<C: Comm> Collectives<C> {
    /// Collectives over `comm`, with the default planner, no topology and no rail balancer.
    pub fn new(comm: C) -> Self {
        let telemetry = comm.telemetry().cloned().unwrap_or_default();
        Collectives {
            comm,
            telemetry,
            topology: None,
            node_of: None,
            planner: Planner::default(),
            balancer: None,
            reprobe: None,
            hierarchy: OnceCell::new(),
        }
    }

    /// Uses `topology` for plans and node membership (it must place exactly this
    /// communicator's ranks).
    pub fn with_topology(mut self, topology: Topology) -> Result<Self> {
        if topology.ranks() != self.comm.size() {
            return Err(invalid(format!(
                "the topology places {} ranks; the communicator has {}",
                topology.ranks(),
                self.comm.size()
            )));
        }
        self.node_of = Some(topology.node_of_ranks()?);
        self.topology = Some(topology);
        Ok(self)
    }

    /// Declares which node each rank is on (`node_of[rank]`, any ids), without a topology.
    pub fn with_nodes(mut self, node_of: Vec<usize>) -> Result<Self> {
        if node_of.len() != self.comm.size() {
            return Err(invalid(format!(
                "{} node ids for {} ranks",
                node_of.len(),
                self.comm.size()
            )));
        }
        self.node_of = Some(node_of);
        Ok(self)
    }

    /// Replaces the planner (thresholds and chunk size).
    pub fn with_planner(mut self, planner: Planner) -> Self {
        self.planner = planner;
        self
    }

    /// Re-weights the communicator's rails from telemetry with `balancer`.
    pub fn with_rail_balancer(mut self, balancer: RailBalancer) -> Self {
        self.balancer = Some(RefCell::new(balancer));
        self
    }

    /// The communicator.
    pub fn comm(&self) -> &C {
        &self.comm
    }

    /// Where the collectives record (the communicator's telemetry where it has one).
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// The topology, if one was given.
    pub fn topology(&self) -> Option<&Topology> {
        self.topology.as_ref()
    }

    /// Probes the rails again when large operations slow down (see [`Reprobe`]); the probe's
    /// rates become the rail balancer's new priors.
    pub fn with_reprobe(mut self, reprobe: Reprobe) -> Self {
        self.reprobe = Some(RefCell::new(reprobe));
        self
    }

    /// The re-probe state, if any (how many probes ran).
    pub fn reprobe(&self) -> Option<std::cell::Ref<'_, Reprobe>> {
        self.reprobe.as_ref().map(RefCell::borrow)
    }

    /// The rail balancer, if any (the anomaly detector drops or restores rails through it).
    pub fn rail_balancer(&self) -> Option<std::cell::RefMut<'_, RailBalancer>> {
        self.balancer.as_ref().map(RefCell::borrow_mut)
    }

    /// Learns node membership by host name (collective): ranks that report the same
    /// `/proc/sys/kernel/hostname` share a node.
    pub fn discover_nodes(mut self) -> Result<Self> {
        // sysfs alone: the host name is all this needs, and hwloc's I/O scan takes longer.
        let host = Node::discover_in(std::path::Path::new("/")).name;
        let all =
            Run::new(&self.comm, self.planner.chunk_bytes).allgather_varied(host.as_bytes())?;
        let mut names: Vec<&Vec<u8>> = Vec::new();
        let node_of = all
            .iter()
            .map(|h| match names.iter().position(|n| *n == h) {
                Some(i) => i,
                None => {
                    names.push(h);
                    names.len() - 1
                }
            })
            .collect();
        self.node_of = Some(node_of);
        Ok(self)
    }

    /// Gathers every rank's node description (collective) into one topology: nodes are merged
    /// by name, in the order of their lowest rank, and each lists the ranks that reported it.
    pub fn gather_topology(&self, local: &Node) -> Result<Topology> {
        let mine = Topology {
            name: String::new(),
            nodes: vec![Node {
                ranks: Vec::new(),
                ..local.clone()
            }],
        }
        .to_toml();
        let all =
            Run::new(&self.comm, self.planner.chunk_bytes).allgather_varied(mine.as_bytes())?;
        let mut topo = Topology::default();
        for (rank, text) in all.iter().enumerate() {
            let text = String::from_utf8_lossy(text);
            let t = Topology::from_toml(&text)
                .map_err(|e| Error::Topology(format!("rank {rank}'s node: {e}")))?;
            let node = t
                .nodes
                .into_iter()
                .next()
                .ok_or_else(|| Error::Topology(format!("rank {rank} sent no node")))?;
            match topo.nodes.iter_mut().find(|n| n.name == node.name) {
                Some(n) => n.ranks.push(rank),
                None => topo.nodes.push(Node {
                    ranks: vec![rank],
                    ..node
                }),
            }
        }
        topo.validate()?;
        Ok(topo)
    }

    /// The plan [`Collectives::allreduce`] would use for `len` elements of `T`.
    pub fn plan_allreduce<T: Element>(&self, len: usize) -> Plan {
        let mut plan = self.planner.allreduce(
            self.topology.as_ref(),
            self.comm.size(),
            len * std::mem::size_of::<T>(),
        );
        if self.topology.is_none() && self.node_of.is_some() {
            // Node membership without a topology: hierarchical when it has something to gain.
            let nodes = self.nodes().unwrap_or(1);
            if nodes > 1 && nodes < self.comm.size() {
                plan.nodes = nodes;
                if let Algorithm::Ring | Algorithm::RecursiveDoubling = plan.algorithm {
                    let inter = if plan.algorithm == Algorithm::Ring {
                        Flat::Ring
                    } else {
                        Flat::RecursiveDoubling
                    };
                    plan.algorithm = Algorithm::Hierarchical { inter };
                }
            }
        }
        plan
    }

    fn nodes(&self) -> Option<usize> {
        self.node_of.as_ref().map(|v| {
            let mut v = v.clone();
            v.sort_unstable();
            v.dedup();
            v.len()
        })
    }

    /// Runs one collective: span, algorithm, telemetry record, rail balancing.
    fn run<R>(
        &self,
        op: &'static str,
        bytes: usize,
        f: impl FnOnce(&Run<'_, C>) -> Result<R>,
    ) -> Result<R> {
        let _span =
            tracing::debug_span!("collective", rank = self.comm.rank(), op, bytes).entered();
        let start = self.telemetry.now_ns();
        let run = Run::new(&self.comm, self.planner.chunk_bytes);
        let out = f(&run);
        let end = self.telemetry.now_ns();
        match &out {
            Ok(_) => {
                self.telemetry.record(
                    Record::new(op, bytes as u64, start, end)
                        .with_wait(run.waited().as_nanos() as u64),
                );
                if let Some(b) = &self.balancer {
                    b.borrow_mut().after_op(&self.comm, &self.telemetry)?;
                }
                self.watch_rates(bytes, (end - start) as f64 * 1e-9)?;
            }
            // Bad arguments are the caller's to handle; transport failures are news.
            Err(e @ Error::InvalidArgument(_)) => {
                tracing::debug!(rank = self.comm.rank(), op, error = %e, "collective refused")
            }
            Err(e) => tracing::warn!(rank = self.comm.rank(), op, error = %e, "collective failed"),
        }
        out
    }

    /// After an operation of `bytes` that took `seconds`: the [`Reprobe`] check (collective: the
    /// ranks agree through a one-integer all-reduce, so all probe or none do).
    fn watch_rates(&self, bytes: usize, seconds: f64) -> Result<()> {
        let Some(r) = &self.reprobe else {
            return Ok(());
        };
        if bytes < r.borrow().min_bytes || self.comm.rail_count() < 2 {
            return Ok(());
        }
        let slow = r.borrow_mut().observe(bytes, seconds);
        let mut any = [i32::from(slow)];
        // Outside `run`: the verdict is not an operation of its own for telemetry or balancing.
        Run::new(&self.comm, self.planner.chunk_bytes)
            .doubling_allreduce(&mut any, ReduceOp::Max)?;
        if !r.borrow_mut().verdict(any[0] != 0) {
            return Ok(());
        }
        let probe_bytes = r.borrow().probe_bytes;
        let probe = self.probe_rails(probe_bytes, 1)?;
        tracing::info!(rank = self.comm.rank(), rates = ?probe.bytes_per_second, "operations slowed down: rails probed again");
        if let Some(b) = &self.balancer {
            b.borrow_mut().reset_priors(&probe.weights)?;
        }
        Ok(())
    }

    /// All-reduce in place with the planned algorithm.
    pub fn allreduce<T: Element>(&self, buf: &mut [T], op: ReduceOp) -> Result<()> {
        let alg = self.plan_allreduce::<T>(buf.len()).algorithm;
        self.allreduce_with(alg, buf, op)
    }

    /// All-reduce of `send` into `recv` (equal lengths).
    pub fn allreduce_into<T: Element>(
        &self,
        send: &[T],
        recv: &mut [T],
        op: ReduceOp,
    ) -> Result<()> {
        if send.len() != recv.len() {
            return Err(invalid(format!(
                "allreduce of {} elements into {}",
                send.len(),
                recv.len()
            )));
        }
        recv.copy_from_slice(send);
        self.allreduce(recv, op)
    }

    fn hierarchy(&self) -> Result<&Hierarchy<C>> {
        if let Some(h) = self.hierarchy.get() {
            return Ok(h);
        }
        let node_of = self.node_of.as_ref().ok_or_else(|| {
            invalid("hierarchical algorithms need node membership: with_topology, with_nodes or discover_nodes")
        })?;
        let h = Hierarchy::build(&self.comm, node_of)?;
        Ok(self.hierarchy.get_or_init(|| h))
    }

    /// All-reduce in place with a given algorithm (the reduction order of each is in
    /// [`crate::algo`]'s docs).
    pub fn allreduce_with<T: Element>(
        &self,
        alg: Algorithm,
        buf: &mut [T],
        op: ReduceOp,
    ) -> Result<()> {
        let bytes = std::mem::size_of_val(buf);
        let h = match alg {
            Algorithm::Hierarchical { .. } => Some(self.hierarchy()?),
            _ => None,
        };
        self.run("allreduce", bytes, |run| match alg {
            Algorithm::Ring => run.ring_allreduce(buf, op),
            Algorithm::RecursiveDoubling => run.doubling_allreduce(buf, op),
            Algorithm::Hierarchical { inter } => {
                let h = h.expect("built above");
                let local = Run::new(&h.local, run.chunk_bytes);
                local.tree_reduce(buf, op, 0)?;
                let mut waited = local.waited();
                if let Some(leaders) = &h.leaders {
                    let l = Run::new(leaders, run.chunk_bytes);
                    match inter {
                        Flat::Ring => l.ring_allreduce(buf, op)?,
                        Flat::RecursiveDoubling => l.doubling_allreduce(buf, op)?,
                    }
                    waited += l.waited();
                }
                let b = Run::new(&h.local, run.chunk_bytes);
                b.tree_broadcast(crate::algo::bytes_mut(buf), 0)?;
                run.add_wait(waited + b.waited());
                Ok(())
            }
        })
    }

    /// Reduce-scatter: `send` holds `p` blocks of `recv.len()` elements; block `r` of the
    /// reduction lands in rank `r`'s `recv` (ring order).
    pub fn reduce_scatter<T: Element>(
        &self,
        send: &[T],
        recv: &mut [T],
        op: ReduceOp,
    ) -> Result<()> {
        let p = self.comm.size();
        if send.len() != recv.len() * p {
            return Err(invalid(format!(
                "reduce_scatter of {} elements into blocks of {} over {p} ranks",
                send.len(),
                recv.len()
            )));
        }
        let mut work = send.to_vec();
        let parts: Vec<Range<usize>> = (0..p)
            .map(|r| r * recv.len()..(r + 1) * recv.len())
            .collect();
        self.run("reduce_scatter", std::mem::size_of_val(send), |run| {
            run.ring_reduce_scatter(&mut work, &parts, op)
        })?;
        recv.copy_from_slice(&work[parts[self.comm.rank()].clone()]);
        Ok(())
    }

    /// Reduce-scatter in place over the partition of [`crate::blocks`] (sizes may differ by
    /// one, so any length works); returns this rank's range, which holds its reduced block.
    pub fn reduce_scatter_in_place<T: Element>(
        &self,
        buf: &mut [T],
        op: ReduceOp,
    ) -> Result<Range<usize>> {
        let parts = blocks(buf.len(), self.comm.size());
        self.run("reduce_scatter", std::mem::size_of_val(buf), |run| {
            run.ring_reduce_scatter(buf, &parts, op)
        })?;
        Ok(parts[self.comm.rank()].clone())
    }

    /// All-gather: every rank's `send` (equal lengths) lands in block `r` of every `recv`.
    pub fn allgather<T: Element>(&self, send: &[T], recv: &mut [T]) -> Result<()> {
        let p = self.comm.size();
        if recv.len() != send.len() * p {
            return Err(invalid(format!(
                "allgather of {} elements into {} over {p} ranks",
                send.len(),
                recv.len()
            )));
        }
        let parts: Vec<Range<usize>> = (0..p)
            .map(|r| r * send.len()..(r + 1) * send.len())
            .collect();
        recv[parts[self.comm.rank()].clone()].copy_from_slice(send);
        self.run("allgather", std::mem::size_of_val(recv), |run| {
            run.ring_allgather(recv, &parts)
        })
    }

    /// All-gather in place over the partition of [`crate::blocks`]: each rank's own range is
    /// its contribution.
    pub fn allgather_in_place<T: Element>(&self, buf: &mut [T]) -> Result<()> {
        let parts = blocks(buf.len(), self.comm.size());
        self.run("allgather", std::mem::size_of_val(buf), |run| {
            run.ring_allgather(buf, &parts)
        })
    }

    /// Broadcast from `root`: a binomial tree below the small-message threshold, scatter then
    /// ring all-gather above it.
    pub fn broadcast<T: Element>(&self, buf: &mut [T], root: usize) -> Result<()> {
        if root >= self.comm.size() {
            return Err(Error::Comm(ferry_comm::Error::InvalidRank {
                rank: root,
                size: self.comm.size(),
            }));
        }
        let bytes = std::mem::size_of_val(buf);
        let small = bytes < self.planner.small_bytes || self.comm.size() <= 2;
        let b = crate::algo::bytes_mut(buf);
        self.run("broadcast", bytes, |run| {
            if small {
                run.tree_broadcast(b, root)
            } else {
                run.scatter_allgather_broadcast(b, root)
            }
        })
    }

    /// Reduce to `root` (binomial tree); only the root's `buf` holds the result afterwards.
    pub fn reduce<T: Element>(&self, buf: &mut [T], op: ReduceOp, root: usize) -> Result<()> {
        if root >= self.comm.size() {
            return Err(Error::Comm(ferry_comm::Error::InvalidRank {
                rank: root,
                size: self.comm.size(),
            }));
        }
        self.run("reduce", std::mem::size_of_val(buf), |run| {
            run.tree_reduce(buf, op, root)
        })
    }

    /// Dissemination barrier.
    pub fn barrier(&self) -> Result<()> {
        self.run("barrier", 0, |run| run.barrier())
    }

    /// Neighbour all-to-all of byte buffers (see [`crate::halo`]).
    pub fn halo_exchange(&self, sends: &[HaloSend<'_>], recvs: &mut [HaloRecv<'_>]) -> Result<()> {
        let bytes = sends.iter().map(|s| s.data.len()).sum::<usize>();
        self.run("halo", bytes, |run| run.halo_bytes(sends, recvs))
    }

    /// Halo exchange of regions of `buf` described by datatypes: each send region is packed,
    /// each receive region unpacked; `origin` is the index in `buf` where the regions'
    /// displacements start (in elements of `T`).
    pub fn halo_exchange_typed<T: bytemuck::Pod>(
        &self,
        buf: &mut [T],
        origin: usize,
        sends: &[HaloRegion],
        recvs: &[HaloRegion],
    ) -> Result<()> {
        let bytes = sends
            .iter()
            .map(|s| s.ty.packed_size(s.count).unwrap_or(0))
            .sum::<usize>();
        let origin = origin * std::mem::size_of::<T>();
        let b: &mut [u8] = bytemuck::cast_slice_mut(buf);
        self.run("halo", bytes, |run| run.halo_typed(b, origin, sends, recvs))
    }
}
