//! `ThreadComm`: N ranks as threads of one process, exchanging messages over crossbeam channels.
//!
//! Each rank has one inbox channel shared by all its communicators. Matching follows MPI
//! (MPI-3.1 §3.5): the rank's own thread drains its inbox in arrival order and gives each
//! message to the first posted receive that matches it, else queues it as unexpected; a new
//! receive first takes the oldest matching unexpected message. Sends are eager (the bytes are
//! copied into the message), so they complete at once. When a rank's thread ends (or panics),
//! a notice goes to every rank, so a receive that can no longer be matched fails with
//! [`Error::PeerGone`] instead of hanging.
//!
//! Not done yet: no timeouts on blocking calls (a peer that lives but never sends still blocks).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::{Receiver, Sender};

use crate::comm::{
    Comm, Source, Status, Tag, TagMatch, check_recv, check_send, receive_outcome, recv_span,
    send_span,
};
use crate::error::{Error, Result};
use crate::split::{self, SplitTransport};

/// Tags used on a communicator's internal (collective) context.
const TAG_BARRIER: Tag = 1;

/// What travels between rank threads.
enum Packet {
    Message(Envelope),
    /// The thread of this world rank has ended.
    Gone(usize),
}

struct Envelope {
    /// Context id: which communicator (and whether its point-to-point or internal half).
    ctx: u64,
    /// Sender's rank within that communicator.
    source: usize,
    tag: Tag,
    data: Vec<u8>,
}

/// State shared by all ranks of one `ThreadComm::run`.
struct World {
    inboxes: Vec<Sender<Packet>>,
    next_ctx: AtomicU64,
}

/// A receive posted by `irecv_raw` and not yet matched.
struct Posted {
    id: u64,
    ctx: u64,
    source: Source,
    tag: TagMatch,
    buf: *mut u8,
    len: usize,
    /// World rank of each communicator rank, to tell whether a named source has gone.
    world_of_source: Option<usize>,
    /// World ranks of the communicator, for any-source receives.
    group: Arc<Vec<usize>>,
}

/// One rank's matching engine; owned by that rank's thread.
struct Engine {
    world_rank: usize,
    inbox: Receiver<Packet>,
    unexpected: Vec<Envelope>,
    posted: Vec<Posted>,
    completed: HashMap<u64, Result<Status>>,
    gone: HashSet<usize>,
    next_id: u64,
}

/// A pending `ThreadComm` operation.
#[derive(Debug)]
pub struct ThreadRequest {
    id: u64,
}

/// A communicator whose ranks are threads of this process; see the module docs.
///
/// Created by [`ThreadComm::run`]; lives on the thread it was given to (it is neither `Send`
/// nor `Sync`, like a rank).
pub struct ThreadComm {
    world: Arc<World>,
    engine: Rc<RefCell<Engine>>,
    /// Point-to-point context; the internal context is `ctx + 1`.
    ctx: u64,
    rank: usize,
    /// World rank of each rank of this communicator.
    group: Arc<Vec<usize>>,
}

impl std::fmt::Debug for ThreadComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadComm")
            .field("rank", &self.rank)
            .field("size", &self.group.len())
            .field("ctx", &self.ctx)
            .finish()
    }
}

impl ThreadComm {
    /// Runs `f` on `n` threads, each with the world communicator of its rank, and returns the
    /// results in rank order. A panic on any rank is re-raised here after all threads ended;
    /// peers waiting on the panicked rank get [`Error::PeerGone`] rather than hanging.
    pub fn run<F, R>(n: usize, f: F) -> Vec<R>
    where
        F: Fn(ThreadComm) -> R + Sync,
        R: Send,
    {
        assert!(n > 0, "ThreadComm::run needs at least one rank");
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..n).map(|_| crossbeam_channel::unbounded()).unzip();
        let world = Arc::new(World {
            inboxes: senders,
            next_ctx: AtomicU64::new(2),
        });
        let group = Arc::new((0..n).collect::<Vec<_>>());
        let f = &f;
        let outcomes: Vec<std::thread::Result<R>> = std::thread::scope(|s| {
            let handles: Vec<_> = receivers
                .into_iter()
                .enumerate()
                .map(|(rank, inbox)| {
                    let world = Arc::clone(&world);
                    let group = Arc::clone(&group);
                    std::thread::Builder::new()
                        .name(format!("ferry-rank-{rank}"))
                        .spawn_scoped(s, move || {
                            let engine = Engine {
                                world_rank: rank,
                                inbox,
                                unexpected: Vec::new(),
                                posted: Vec::new(),
                                completed: HashMap::new(),
                                gone: HashSet::new(),
                                next_id: 0,
                            };
                            let comm = ThreadComm {
                                world: Arc::clone(&world),
                                engine: Rc::new(RefCell::new(engine)),
                                ctx: 0,
                                rank,
                                group,
                            };
                            let out =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(comm)));
                            for inbox in &world.inboxes {
                                // A rank that already ended has dropped its receiver; ignore.
                                let _ = inbox.send(Packet::Gone(rank));
                            }
                            out
                        })
                        .expect("ferry-comm: cannot spawn a rank thread")
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("rank thread"))
                .collect()
        });
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    }

    fn world_rank_of(&self, rank: usize) -> usize {
        self.group[rank]
    }

    fn send_on(&self, ctx: u64, dest: usize, tag: Tag, data: Vec<u8>) -> Result<()> {
        let world_dest = self.world_rank_of(dest);
        let envelope = Envelope {
            ctx,
            source: self.rank,
            tag,
            data,
        };
        self.world.inboxes[world_dest]
            .send(Packet::Message(envelope))
            .map_err(|_| Error::PeerGone {
                rank: dest,
                what: "send",
            })
    }

    /// Blocking receive on context `ctx`. An over-long message is consumed and its prefix
    /// delivered, as in MPI.
    fn recv_on(
        &self,
        ctx: u64,
        source: Source,
        tag: TagMatch,
        buf: &mut [u8],
        what: &'static str,
    ) -> Result<Status> {
        let mut engine = self.engine.borrow_mut();
        loop {
            engine.drain(false);
            if let Some(i) = engine.find_unexpected(ctx, source, tag) {
                let m = engine.unexpected.remove(i);
                let n = m.data.len().min(buf.len());
                buf[..n].copy_from_slice(&m.data[..n]);
                if m.data.len() > buf.len() {
                    return Err(Error::Truncated {
                        message_bytes: Some(m.data.len()),
                        buffer_bytes: buf.len(),
                        source_rank: m.source,
                        tag: m.tag,
                    });
                }
                return Ok(Status {
                    source: m.source,
                    tag: m.tag,
                    bytes: n,
                });
            }
            engine.check_gone(source, &self.group, what)?;
            engine.drain(true);
        }
    }

    fn probe_on(
        &self,
        ctx: u64,
        source: Source,
        tag: TagMatch,
        block: bool,
    ) -> Result<Option<Status>> {
        let mut engine = self.engine.borrow_mut();
        loop {
            engine.drain(false);
            if let Some(i) = engine.find_unexpected(ctx, source, tag) {
                let m = &engine.unexpected[i];
                return Ok(Some(Status {
                    source: m.source,
                    tag: m.tag,
                    bytes: m.data.len(),
                }));
            }
            if !block {
                return Ok(None);
            }
            engine.check_gone(source, &self.group, "probe")?;
            engine.drain(true);
        }
    }

    fn internal_ctx(&self) -> u64 {
        self.ctx + 1
    }
}

impl Engine {
    /// Moves arrived packets into posted receives or the unexpected queue. With `block`, waits
    /// for at least one packet first.
    fn drain(&mut self, block: bool) {
        if block {
            match self.inbox.recv() {
                Ok(p) => self.accept(p),
                // Cannot happen while `World` holds every sender; nothing more will arrive.
                Err(_) => return,
            }
        }
        while let Ok(p) = self.inbox.try_recv() {
            self.accept(p);
        }
    }

    fn accept(&mut self, packet: Packet) {
        let m = match packet {
            Packet::Gone(rank) => {
                self.gone.insert(rank);
                self.fail_unmatchable_posted();
                return;
            }
            Packet::Message(m) => m,
        };
        let hit = self
            .posted
            .iter()
            .position(|p| p.ctx == m.ctx && p.source.matches(m.source) && p.tag.matches(m.tag));
        match hit {
            Some(i) => {
                let p = self.posted.remove(i);
                let result = deliver(&p, &m);
                self.completed.insert(p.id, result);
            }
            None => self.unexpected.push(m),
        }
    }

    fn find_unexpected(&self, ctx: u64, source: Source, tag: TagMatch) -> Option<usize> {
        self.unexpected
            .iter()
            .position(|m| m.ctx == ctx && source.matches(m.source) && tag.matches(m.tag))
    }

    /// Fails posted receives from a named rank that has gone. (An any-source receive can still
    /// be matched by a send to self, so it fails only when its owner blocks on it.)
    fn fail_unmatchable_posted(&mut self) {
        let gone = &self.gone;
        let mut failed = Vec::new();
        self.posted.retain(|p| match (p.source, p.world_of_source) {
            (Source::Rank(r), Some(w)) if gone.contains(&w) => {
                failed.push((p.id, r));
                false
            }
            _ => true,
        });
        for (id, rank) in failed {
            self.completed.insert(
                id,
                Err(Error::PeerGone {
                    rank,
                    what: "receive",
                }),
            );
        }
    }

    /// For a rank about to block on posted receive `id`: fails it if no live rank can match it.
    fn fail_if_blocked_forever(&mut self, id: u64) {
        let Some(i) = self.posted.iter().position(|p| p.id == id) else {
            return;
        };
        let p = &self.posted[i];
        if let Err(e) = self.check_gone(p.source, &p.group, "receive") {
            self.posted.remove(i);
            self.completed.insert(id, Err(e));
        }
    }

    /// For a blocking call: fails if no live rank can send a matching message any more.
    fn check_gone(&self, source: Source, group: &[usize], what: &'static str) -> Result<()> {
        match source {
            Source::Rank(r) if self.gone.contains(&group[r]) => {
                Err(Error::PeerGone { rank: r, what })
            }
            Source::Any
                if group.len() > 1
                    && group
                        .iter()
                        .all(|w| *w == self.world_rank || self.gone.contains(w)) =>
            {
                let rank = group
                    .iter()
                    .position(|w| *w != self.world_rank)
                    .unwrap_or(0);
                Err(Error::PeerGone { rank, what })
            }
            _ => Ok(()),
        }
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

/// Copies a message into a posted receive's buffer.
fn deliver(p: &Posted, m: &Envelope) -> Result<Status> {
    let n = m.data.len().min(p.len);
    // SAFETY: `irecv_raw`'s contract keeps `p.buf..p.buf+p.len` valid and exclusively ours
    // until the request completes, which is now; `n <= p.len`, and `m.data` is a separate Vec.
    unsafe { std::ptr::copy_nonoverlapping(m.data.as_ptr(), p.buf, n) };
    receive_outcome(m.data.len(), p.len, m.source, m.tag)
}

impl Comm for ThreadComm {
    type RawRequest = ThreadRequest;

    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.group.len()
    }

    fn tag_ub(&self) -> Tag {
        Tag::MAX
    }

    fn send(&self, dest: usize, tag: Tag, buf: &[u8]) -> Result<()> {
        let _span = send_span(self.rank, dest, tag, buf.len());
        check_send(self, dest, tag)?;
        self.send_on(self.ctx, dest, tag, buf.to_vec())
    }

    fn recv(&self, source: Source, tag: TagMatch, buf: &mut [u8]) -> Result<Status> {
        let _span = recv_span(self.rank, source, tag, buf.len());
        check_recv(self, source, tag)?;
        self.recv_on(self.ctx, source, tag, buf, "receive")
    }

    fn probe(&self, source: Source, tag: TagMatch) -> Result<Status> {
        let _span =
            tracing::debug_span!("probe", rank = self.rank, peer = %source, tag = %tag).entered();
        check_recv(self, source, tag)?;
        Ok(self
            .probe_on(self.ctx, source, tag, true)?
            .expect("blocking probe returns a status"))
    }

    fn iprobe(&self, source: Source, tag: TagMatch) -> Result<Option<Status>> {
        check_recv(self, source, tag)?;
        self.probe_on(self.ctx, source, tag, false)
    }

    fn barrier(&self) -> Result<()> {
        let _span = tracing::debug_span!("barrier", rank = self.rank).entered();
        // Dissemination barrier: in round k, send to rank+2^k and hear from rank-2^k.
        let n = self.size();
        let mut step = 1;
        while step < n {
            let to = (self.rank + step) % n;
            let from = (self.rank + n - step) % n;
            self.send_on(self.internal_ctx(), to, TAG_BARRIER, Vec::new())?;
            self.recv_on(
                self.internal_ctx(),
                Source::Rank(from),
                TagMatch::Tag(TAG_BARRIER),
                &mut [],
                "barrier",
            )?;
            step *= 2;
        }
        Ok(())
    }

    fn split(&self, color: Option<u32>, key: i32) -> Result<Option<Self>> {
        let _span = tracing::debug_span!("split", rank = self.rank, ?color, key).entered();
        let joined = split::split(self, self.rank, self.size(), color, key, || {
            self.world.next_ctx.fetch_add(2, Ordering::Relaxed)
        })?;
        Ok(joined.map(|j| ThreadComm {
            world: Arc::clone(&self.world),
            engine: Rc::clone(&self.engine),
            ctx: j.ctx,
            rank: j.rank,
            group: Arc::new(j.members.iter().map(|&r| self.group[r]).collect()),
        }))
    }

    unsafe fn isend_raw(
        &self,
        dest: usize,
        tag: Tag,
        buf: *const u8,
        len: usize,
    ) -> Result<ThreadRequest> {
        let _span = tracing::debug_span!("isend", rank = self.rank, peer = dest, tag, bytes = len)
            .entered();
        check_send(self, dest, tag)?;
        // SAFETY: the caller guarantees `buf..buf+len` is valid for reads (isend_raw contract).
        let data = unsafe { std::slice::from_raw_parts(buf, len) }.to_vec();
        self.send_on(self.ctx, dest, tag, data)?;
        let mut engine = self.engine.borrow_mut();
        let id = engine.new_id();
        engine.completed.insert(
            id,
            Ok(Status {
                source: self.rank,
                tag,
                bytes: len,
            }),
        );
        Ok(ThreadRequest { id })
    }

    unsafe fn irecv_raw(
        &self,
        source: Source,
        tag: TagMatch,
        buf: *mut u8,
        len: usize,
    ) -> Result<ThreadRequest> {
        let _span = tracing::debug_span!("irecv", rank = self.rank, peer = %source, tag = %tag, bytes = len).entered();
        check_recv(self, source, tag)?;
        let mut engine = self.engine.borrow_mut();
        engine.drain(false);
        let id = engine.new_id();
        let posted = Posted {
            id,
            ctx: self.ctx,
            source,
            tag,
            buf,
            len,
            world_of_source: match source {
                Source::Rank(r) => Some(self.group[r]),
                Source::Any => None,
            },
            group: Arc::clone(&self.group),
        };
        match engine.find_unexpected(self.ctx, source, tag) {
            Some(i) => {
                let m = engine.unexpected.remove(i);
                let result = deliver(&posted, &m);
                engine.completed.insert(id, result);
            }
            None => {
                engine.posted.push(posted);
                engine.fail_unmatchable_posted();
            }
        }
        Ok(ThreadRequest { id })
    }

    fn test_raw(&self, request: &mut ThreadRequest) -> Result<Option<Status>> {
        let mut engine = self.engine.borrow_mut();
        engine.drain(false);
        match engine.completed.remove(&request.id) {
            Some(r) => r.map(Some),
            None => Ok(None),
        }
    }

    fn wait_raw(&self, request: &mut ThreadRequest) -> Result<Status> {
        let mut engine = self.engine.borrow_mut();
        loop {
            engine.drain(false);
            if let Some(r) = engine.completed.remove(&request.id) {
                return r;
            }
            engine.fail_if_blocked_forever(request.id);
            if let Some(r) = engine.completed.remove(&request.id) {
                return r;
            }
            engine.drain(true);
        }
    }
}

impl SplitTransport for ThreadComm {
    fn split_send(&self, dest: usize, tag: Tag, buf: &[u8]) -> Result<()> {
        self.send_on(self.internal_ctx(), dest, tag, buf.to_vec())
    }

    fn split_recv(&self, source: usize, tag: Tag, buf: &mut [u8]) -> Result<()> {
        self.recv_on(
            self.internal_ctx(),
            Source::Rank(source),
            TagMatch::Tag(tag),
            buf,
            "split",
        )
        .map(|_| ())
    }
}
