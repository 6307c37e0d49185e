//! The collective algorithms, over any [`Comm`], as plain functions of a communicator and
//! buffers. [`crate::Collectives`] wraps them with plans, telemetry and rail balancing.
//!
//! Reduction orders (what a float result is bit for bit; integer results never depend on it):
//! - **ring** (reduce-scatter then all-gather): block `b` (of the partition in [`blocks`]) is
//!   `x[b+1] ⊕ x[b+2] ⊕ ... ⊕ x[b]`, left to right, indices mod p.
//! - **recursive doubling**: with `q` the largest power of two ≤ p and `e = p - q`, ranks
//!   `2i, 2i+1` (i < e) first fold into `x[2i] ⊕ x[2i+1]`; the `q` survivors, in rank order,
//!   then combine pairwise at distance 1, 2, 4, ... (`v[j] ⊕ v[j ^ d]`, commutative, so both
//!   partners hold the same bits); folded ranks get the result back.
//! - **reduce to a root** (binomial tree, ranks relative to the root): at distance d = 1, 2, 4,
//!   ... relative rank `v` (a multiple of 2d) combines `acc[v] ⊕ acc[v + d]`.
//! - **hierarchical**: the tree reduce inside each node to its lowest rank, ring or recursive
//!   doubling (as planned) among the node leaders in rank order, a broadcast inside the node.
//!
//! `crate::check` holds sequential references that follow these orders, so floats are tested
//! bit for bit too.

use std::cell::Cell;
use std::ops::Range;
use std::time::{Duration, Instant};

use ferry_comm::{Comm, Source, TagMatch};

use crate::error::{Result, invalid};
use crate::reduce::{Element, ReduceOp, combine_into, combine_into_ordered};

/// Tags the collectives use (below the 32767 the standard guarantees).
pub(crate) mod tags {
    use ferry_comm::Tag;
    pub(crate) const REDUCE_SCATTER: Tag = 32001;
    pub(crate) const ALLGATHER: Tag = 32002;
    pub(crate) const DOUBLING: Tag = 32003;
    pub(crate) const REDUCE: Tag = 32004;
    pub(crate) const BROADCAST: Tag = 32005;
    pub(crate) const SCATTER: Tag = 32006;
    pub(crate) const BARRIER: Tag = 32007;
    /// Halo exchange: this plus the caller's channel number.
    pub(crate) const HALO: Tag = 16384;
}

/// The block of `n` elements that rank `r` of `p` owns in the ring algorithms: the first
/// `n % p` ranks own `n / p + 1` elements, the rest `n / p`, in rank order.
pub fn blocks(n: usize, p: usize) -> Vec<Range<usize>> {
    let (q, rem) = (n / p, n % p);
    let mut start = 0;
    (0..p)
        .map(|r| {
            let len = q + usize::from(r < rem);
            let range = start..start + len;
            start += len;
            range
        })
        .collect()
}

pub(crate) fn bytes<T: Element>(s: &[T]) -> &[u8] {
    bytemuck::cast_slice(s)
}

pub(crate) fn bytes_mut<T: Element>(s: &mut [T]) -> &mut [u8] {
    bytemuck::cast_slice_mut(s)
}

/// A shared view of block `a` and an exclusive view of block `b` of `buf` (disjoint ranges).
fn split_two<T>(buf: &mut [T], a: Range<usize>, b: Range<usize>) -> (&[T], &mut [T]) {
    debug_assert!(a.end <= b.start || b.end <= a.start || a.is_empty() || b.is_empty());
    if a.is_empty() {
        return (&[], &mut buf[b]);
    }
    if a.end <= b.start {
        let (lo, hi) = buf.split_at_mut(b.start);
        (&lo[a], &mut hi[..b.len()])
    } else {
        let (lo, hi) = buf.split_at_mut(a.start);
        (&hi[..a.len()], &mut lo[b])
    }
}

/// One collective's run on one rank: the communicator, the pipeline chunk, and the time spent
/// blocked on receives (the telemetry's `wait`).
pub(crate) struct Run<'a, C: Comm> {
    pub(crate) comm: &'a C,
    /// Bytes per pipelined message of the ring algorithms (at least one element).
    pub(crate) chunk_bytes: usize,
    wait: Cell<Duration>,
}

impl<'a, C: Comm> Run<'a, C> {
    pub(crate) fn new(comm: &'a C, chunk_bytes: usize) -> Self {
        Run {
            comm,
            chunk_bytes: chunk_bytes.max(1),
            wait: Cell::new(Duration::ZERO),
        }
    }

    /// Time spent blocked on receives so far.
    pub(crate) fn waited(&self) -> Duration {
        self.wait.get()
    }

    /// Adds waiting done on other communicators (the levels of a hierarchical run).
    pub(crate) fn add_wait(&self, d: Duration) {
        self.wait.set(self.wait.get() + d);
    }

    fn timed<R>(&self, f: impl FnOnce() -> R) -> R {
        let t = Instant::now();
        let r = f();
        self.wait.set(self.wait.get() + t.elapsed());
        r
    }

    fn chunk_elems<T>(&self) -> usize {
        (self.chunk_bytes / std::mem::size_of::<T>().max(1)).max(1)
    }

    fn right(&self) -> usize {
        (self.comm.rank() + 1) % self.comm.size()
    }

    fn left(&self) -> usize {
        (self.comm.rank() + self.comm.size() - 1) % self.comm.size()
    }

    /// Sends `send` to `right` and reduces what `left` sends into `acc`, in pipelined chunks:
    /// every chunk's receive is posted first, then every send, and each chunk is reduced as it
    /// arrives, so reduction overlaps the transfer of the chunks behind it.
    fn step_reduce<T: Element>(&self, send: &[T], acc: &mut [T], op: ReduceOp) -> Result<()> {
        let chunk = self.chunk_elems::<T>();
        let mut tmp = vec![T::zeroed(); acc.len()];
        let (right, left) = (self.right(), self.left());
        self.comm.scope(|s| -> Result<()> {
            let mut recvs = Vec::new();
            for c in tmp.chunks_mut(chunk) {
                recvs.push(s.irecv(
                    Source::Rank(left),
                    TagMatch::Tag(tags::REDUCE_SCATTER),
                    bytes_mut(c),
                )?);
            }
            for c in send.chunks(chunk) {
                let _sent = s.isend(right, tags::REDUCE_SCATTER, bytes(c))?;
            }
            for (r, dst) in recvs.into_iter().zip(acc.chunks_mut(chunk)) {
                let (_, got) = self.timed(|| r.wait())?;
                let got: &[T] = bytemuck::cast_slice(got);
                // acc = incoming partial ⊕ own: the ring order of the module docs.
                combine_into_ordered(op, dst, got, true);
            }
            Ok(())
        })?
    }

    /// Sends `send` to `right` and receives `left`'s block into `dst`, in pipelined chunks.
    fn step_copy<T: Element>(&self, send: &[T], dst: &mut [T], tag: ferry_comm::Tag) -> Result<()> {
        let chunk = self.chunk_elems::<T>();
        let (right, left) = (self.right(), self.left());
        self.comm.scope(|s| -> Result<()> {
            let mut recvs = Vec::new();
            for c in dst.chunks_mut(chunk) {
                recvs.push(s.irecv(Source::Rank(left), TagMatch::Tag(tag), bytes_mut(c))?);
            }
            for c in send.chunks(chunk) {
                let _sent = s.isend(right, tag, bytes(c))?;
            }
            for r in recvs {
                self.timed(|| r.wait())?;
            }
            Ok(())
        })?
    }

    /// Ring reduce-scatter in place over the partition `parts` (one range per rank): afterwards
    /// this rank's range holds the reduction of every rank's range (order in the module docs).
    pub(crate) fn ring_reduce_scatter<T: Element>(
        &self,
        buf: &mut [T],
        parts: &[Range<usize>],
        op: ReduceOp,
    ) -> Result<()> {
        let (p, r) = (self.comm.size(), self.comm.rank());
        // Step k: send block r-k-1, receive and reduce block r-k-2 (mod p); after p-1 steps
        // block r has passed through every rank, starting at r+1.
        for k in 0..p.saturating_sub(1) {
            let s = (r + 2 * p - k - 1) % p;
            let q = (r + 2 * p - k - 2) % p;
            let (send, acc) = split_two(buf, parts[s].clone(), parts[q].clone());
            self.step_reduce(send, acc, op)?;
        }
        Ok(())
    }

    /// Ring all-gather in place over `parts`: every rank's range travels once round the ring.
    pub(crate) fn ring_allgather<T: Element>(
        &self,
        buf: &mut [T],
        parts: &[Range<usize>],
    ) -> Result<()> {
        let (p, r) = (self.comm.size(), self.comm.rank());
        for k in 0..p.saturating_sub(1) {
            let s = (r + p - k) % p;
            let q = (r + 2 * p - k - 1) % p;
            let (send, dst) = split_two(buf, parts[s].clone(), parts[q].clone());
            self.step_copy(send, dst, tags::ALLGATHER)?;
        }
        Ok(())
    }

    /// Ring all-reduce: reduce-scatter then all-gather over [`blocks`].
    pub(crate) fn ring_allreduce<T: Element>(&self, buf: &mut [T], op: ReduceOp) -> Result<()> {
        let parts = blocks(buf.len(), self.comm.size());
        self.ring_reduce_scatter(buf, &parts, op)?;
        self.ring_allgather(buf, &parts)
    }

    /// Recursive-doubling all-reduce, for any rank count (see the module docs for the fold of
    /// the ranks beyond the largest power of two).
    pub(crate) fn doubling_allreduce<T: Element>(&self, buf: &mut [T], op: ReduceOp) -> Result<()> {
        let (p, r) = (self.comm.size(), self.comm.rank());
        if p == 1 {
            return Ok(());
        }
        let q = 1usize << (usize::BITS - 1 - p.leading_zeros());
        let extra = p - q;
        let mut tmp = vec![T::zeroed(); buf.len()];
        // 1. Fold: among ranks 0..2e, even ranks hand their data to the next odd rank and sit out.
        let virt = if r < 2 * extra {
            if r % 2 == 0 {
                self.comm.send(r + 1, tags::DOUBLING, bytes(buf))?;
                self.timed(|| {
                    self.comm.recv(
                        Source::Rank(r + 1),
                        TagMatch::Tag(tags::DOUBLING),
                        bytes_mut(buf),
                    )
                })?;
                return Ok(());
            }
            self.timed(|| {
                self.comm.recv(
                    Source::Rank(r - 1),
                    TagMatch::Tag(tags::DOUBLING),
                    bytes_mut(&mut tmp),
                )
            })?;
            combine_into_ordered(op, buf, &tmp, true); // x[2i] ⊕ x[2i+1]
            r / 2
        } else {
            r - extra
        };
        let real = |v: usize| if v < extra { 2 * v + 1 } else { v + extra };
        // 2. Exchange with the partner at distance 1, 2, 4, ... among the q survivors.
        let mut d = 1;
        while d < q {
            let partner = real(virt ^ d);
            self.timed(|| {
                self.comm.sendrecv(
                    partner,
                    tags::DOUBLING,
                    bytes(buf),
                    Source::Rank(partner),
                    TagMatch::Tag(tags::DOUBLING),
                    bytes_mut(&mut tmp),
                )
            })?;
            // The lower virtual rank's data first, on both sides, so both compute the same bits.
            combine_into_ordered(op, buf, &tmp, virt > (virt ^ d));
            d <<= 1;
        }
        // 3. Unfold: hand the result back to the rank that sat out.
        if r < 2 * extra {
            self.comm.send(r - 1, tags::DOUBLING, bytes(buf))?;
        }
        Ok(())
    }

    /// Binomial-tree reduce to `root`; only the root's `buf` holds the result afterwards
    /// (other ranks' buffers hold partial results).
    pub(crate) fn tree_reduce<T: Element>(
        &self,
        buf: &mut [T],
        op: ReduceOp,
        root: usize,
    ) -> Result<()> {
        let p = self.comm.size();
        let v = (self.comm.rank() + p - root) % p;
        let mut tmp = vec![T::zeroed(); buf.len()];
        let mut d = 1;
        while d < p {
            if v & d != 0 {
                let parent = (v - d + root) % p;
                self.comm.send(parent, tags::REDUCE, bytes(buf))?;
                break;
            }
            if v + d < p {
                let child = (v + d + root) % p;
                self.timed(|| {
                    self.comm.recv(
                        Source::Rank(child),
                        TagMatch::Tag(tags::REDUCE),
                        bytes_mut(&mut tmp),
                    )
                })?;
                combine_into(op, buf, &tmp); // acc[v] ⊕ acc[v + d]
            }
            d <<= 1;
        }
        Ok(())
    }

    /// Binomial-tree broadcast from `root` (latency-bound messages).
    pub(crate) fn tree_broadcast(&self, buf: &mut [u8], root: usize) -> Result<()> {
        let p = self.comm.size();
        let v = (self.comm.rank() + p - root) % p;
        // Receive from the parent: the rank that differs in v's lowest set bit.
        let mut d = 1;
        while d < p {
            if v & d != 0 {
                let parent = (v - d + root) % p;
                self.timed(|| {
                    self.comm
                        .recv(Source::Rank(parent), TagMatch::Tag(tags::BROADCAST), buf)
                })?;
                break;
            }
            d <<= 1;
        }
        // Send to children at distances below that bit, largest first.
        d >>= 1;
        while d > 0 {
            if v + d < p {
                self.comm.send((v + d + root) % p, tags::BROADCAST, buf)?;
            }
            d >>= 1;
        }
        Ok(())
    }

    /// Broadcast for large messages: the root scatters one block to each rank, then a ring
    /// all-gather (van de Geijn), so the root sends each byte once.
    pub(crate) fn scatter_allgather_broadcast(&self, buf: &mut [u8], root: usize) -> Result<()> {
        let (p, r) = (self.comm.size(), self.comm.rank());
        let parts = blocks(buf.len(), p);
        if r == root {
            self.comm.scope(|s| -> Result<()> {
                for (dest, part) in parts.iter().enumerate() {
                    if dest != root {
                        let _sent = s.isend(dest, tags::SCATTER, &buf[part.clone()])?;
                    }
                }
                Ok(())
            })??;
        } else {
            self.timed(|| {
                self.comm.recv(
                    Source::Rank(root),
                    TagMatch::Tag(tags::SCATTER),
                    &mut buf[parts[r].clone()],
                )
            })?;
        }
        let u8s: &mut [u8] = buf;
        self.ring_allgather_bytes(u8s, &parts)
    }

    fn ring_allgather_bytes(&self, buf: &mut [u8], parts: &[Range<usize>]) -> Result<()> {
        let (p, r) = (self.comm.size(), self.comm.rank());
        for k in 0..p.saturating_sub(1) {
            let s = (r + p - k) % p;
            let q = (r + 2 * p - k - 1) % p;
            let (send, dst) = split_two(buf, parts[s].clone(), parts[q].clone());
            let chunk = self.chunk_bytes;
            let (right, left) = (self.right(), self.left());
            self.comm.scope(|sc| -> Result<()> {
                let mut recvs = Vec::new();
                for c in dst.chunks_mut(chunk) {
                    recvs.push(sc.irecv(Source::Rank(left), TagMatch::Tag(tags::ALLGATHER), c)?);
                }
                for c in send.chunks(chunk) {
                    let _sent = sc.isend(right, tags::ALLGATHER, c)?;
                }
                for rq in recvs {
                    self.timed(|| rq.wait())?;
                }
                Ok(())
            })??;
        }
        Ok(())
    }

    /// Dissemination barrier: ceil(log2 p) rounds of empty messages at distance 1, 2, 4, ...
    pub(crate) fn barrier(&self) -> Result<()> {
        let (p, r) = (self.comm.size(), self.comm.rank());
        let mut d = 1;
        while d < p {
            self.timed(|| {
                self.comm.sendrecv(
                    (r + d) % p,
                    tags::BARRIER,
                    &[],
                    Source::Rank((r + p - d) % p),
                    TagMatch::Tag(tags::BARRIER),
                    &mut [],
                )
            })?;
            d <<= 1;
        }
        Ok(())
    }

    /// Gathers every rank's byte string (of any length) onto every rank, in rank order.
    pub(crate) fn allgather_varied(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        let p = self.comm.size();
        let mut lens = vec![0i64; p];
        lens[self.comm.rank()] = mine.len() as i64;
        let parts = blocks(p, p);
        self.ring_allgather(&mut lens, &parts)?;
        let mut offsets = Vec::with_capacity(p);
        let mut at = 0usize;
        for &l in &lens {
            let l = usize::try_from(l).map_err(|_| invalid("a rank's contribution is too long"))?;
            offsets.push(at..at + l);
            at += l;
        }
        let mut all = vec![0u8; at];
        all[offsets[self.comm.rank()].clone()].copy_from_slice(mine);
        self.ring_allgather_bytes(&mut all, &offsets)?;
        Ok(offsets.into_iter().map(|o| all[o].to_vec()).collect())
    }
}

/// Node-local and leader communicators for the hierarchical algorithms.
pub(crate) struct Hierarchy<C> {
    /// The ranks on this rank's node, ordered by world rank; local rank 0 is the leader.
    pub(crate) local: C,
    /// The node leaders, ordered by world rank; `None` on ranks that are not leaders.
    pub(crate) leaders: Option<C>,
}

impl<C: Comm> Hierarchy<C> {
    /// Splits `comm` by `node_of[rank]` (collective over `comm`).
    pub(crate) fn build(comm: &C, node_of: &[usize]) -> Result<Self> {
        if node_of.len() != comm.size() {
            return Err(invalid(format!(
                "node membership lists {} ranks for a communicator of {}",
                node_of.len(),
                comm.size()
            )));
        }
        let me = node_of[comm.rank()];
        let color = u32::try_from(me).map_err(|_| invalid("node id over u32::MAX"))?;
        let local = comm
            .split(Some(color), comm.rank() as i32)?
            .ok_or_else(|| invalid("split gave no node communicator"))?;
        let leader = node_of[..comm.rank()].iter().all(|&n| n != me);
        let leaders = comm.split(leader.then_some(0), comm.rank() as i32)?;
        Ok(Hierarchy { local, leaders })
    }
}
