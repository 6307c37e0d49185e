//! The matching engine of a `TcpComm` rank: reassembly of striped messages, release in
//! sequence order, and MPI matching (MPI-3.1 §3.5).
//!
//! Every message from world rank `p` carries a sequence number counted by `p` for this rank.
//! Its frames may arrive on any rail in any order; the message is *released* only when it is
//! complete and every earlier message from `p` has been released, so non-overtaking holds per
//! (source, tag) whatever the rails do. A released message goes to the first posted receive
//! that matches it, else to the unexpected queue; a new receive first takes the oldest matching
//! unexpected message. This is `ThreadComm`'s rule, driven by the reader tasks instead of the
//! rank's own thread; blocking callers sleep on the condition variable beside the engine.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::comm::{Source, Status, Tag, TagMatch, receive_outcome};
use crate::error::{Error, Result};

/// A released message.
pub(crate) struct Msg {
    pub(crate) ctx: u64,
    /// Sender's rank in the communicator of `ctx`.
    pub(crate) source: usize,
    pub(crate) tag: Tag,
    pub(crate) data: Vec<u8>,
}

/// A message of which some frames have arrived.
struct Partial {
    ctx: u64,
    source: u32,
    tag: Tag,
    data: Vec<u8>,
    received: usize,
}

/// A receive buffer handed over by `irecv_raw` or a blocking receive.
pub(crate) struct RecvBuf(pub(crate) *mut u8);

// SAFETY: the pointer is only written while the engine lock is held, into a buffer that the
// caller of `irecv_raw` keeps valid and untouched until the request completes (its contract),
// and a blocking receive keeps its `&mut [u8]` borrowed until it has removed its posted entry.
unsafe impl Send for RecvBuf {}

/// A receive posted and not yet matched.
pub(crate) struct Posted {
    pub(crate) id: u64,
    pub(crate) ctx: u64,
    pub(crate) source: Source,
    pub(crate) tag: TagMatch,
    pub(crate) buf: RecvBuf,
    pub(crate) len: usize,
    /// World rank of every rank of the receive's communicator.
    pub(crate) group: Arc<Vec<usize>>,
}

/// Per-sender receive state.
#[derive(Default)]
struct PeerIn {
    next_seq: u64,
    partial: BTreeMap<u64, Partial>,
    /// Why nothing more can come from this peer, once that is so.
    broken: Option<Error>,
}

/// One rank's receive side.
pub(crate) struct Engine {
    world_rank: usize,
    peers: Vec<PeerIn>,
    unexpected: Vec<Msg>,
    posted: Vec<Posted>,
    completed: HashMap<u64, Result<Status>>,
    next_id: u64,
}

impl Engine {
    pub(crate) fn new(world_rank: usize, size: usize) -> Self {
        Engine {
            world_rank,
            peers: (0..size).map(|_| PeerIn::default()).collect(),
            unexpected: Vec::new(),
            posted: Vec::new(),
            completed: HashMap::new(),
            next_id: 0,
        }
    }

    pub(crate) fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Stores one data frame from world rank `peer`; releases whatever it completes. A frame
    /// that contradicts earlier ones is a protocol error (the caller closes the connection).
    pub(crate) fn frame(
        &mut self,
        peer: usize,
        h: &super::wire::FrameHeader,
        payload: Vec<u8>,
    ) -> Result<()> {
        let p = &mut self.peers[peer];
        let bad = |why: &str| Err(Error::InvalidArgument(format!("protocol error: {why}")));
        if h.seq < p.next_seq {
            return bad("a frame of a message already delivered");
        }
        let total = h.total as usize;
        let entry = match p.partial.entry(h.seq) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                // The first frame of a whole message in one piece is the message.
                let data = if h.offset == 0 && payload.len() == total {
                    Vec::new()
                } else {
                    vec![0u8; total]
                };
                v.insert(Partial {
                    ctx: h.ctx,
                    source: h.source,
                    tag: h.tag,
                    data,
                    received: 0,
                })
            }
        };
        if entry.ctx != h.ctx || entry.source != h.source || entry.tag != h.tag {
            return bad("frames of one message disagree on its envelope");
        }
        if entry.received + payload.len() > total {
            return bad("more bytes than the message's length");
        }
        if entry.data.is_empty() && total > 0 {
            entry.data = payload;
        } else if !payload.is_empty() {
            let off = h.offset as usize;
            entry.data[off..off + payload.len()].copy_from_slice(&payload);
        }
        entry.received += h.len as usize;
        if entry.received == total {
            self.release(peer);
        }
        Ok(())
    }

    /// Releases the complete messages of `peer` that are next in sequence.
    fn release(&mut self, peer: usize) {
        loop {
            let p = &mut self.peers[peer];
            let next = p.next_seq;
            let done = p
                .partial
                .get(&next)
                .is_some_and(|m| m.received == m.data.len());
            if !done {
                return;
            }
            let m = p.partial.remove(&next).expect("checked above");
            p.next_seq += 1;
            self.accept(Msg {
                ctx: m.ctx,
                source: m.source as usize,
                tag: m.tag,
                data: m.data,
            });
        }
    }

    /// A message from this rank to itself: released at once, in program order.
    pub(crate) fn accept(&mut self, m: Msg) {
        let hit = self
            .posted
            .iter()
            .position(|p| p.ctx == m.ctx && p.source.matches(m.source) && p.tag.matches(m.tag));
        match hit {
            Some(i) => {
                let p = self.posted.remove(i);
                let result = deliver(&p.buf, p.len, &m);
                self.completed.insert(p.id, result);
            }
            None => self.unexpected.push(m),
        }
    }

    /// Marks `peer` as unable to send anything more (for `why`); fails the receives that only
    /// it could have matched. A first reason sticks.
    pub(crate) fn peer_broken(&mut self, peer: usize, why: Error) {
        let p = &mut self.peers[peer];
        match (&p.broken, &why) {
            (None, _) => p.broken = Some(why),
            // A rail failure first, then the whole peer: say the peer has gone.
            (Some(Error::RailDown { .. }), Error::PeerGone { .. }) => p.broken = Some(why),
            _ => {}
        }
        let mut failed = Vec::new();
        self.posted.retain(|q| match q.source {
            Source::Rank(r) if q.group[r] == peer => {
                failed.push(q.id);
                false
            }
            _ => true,
        });
        for id in failed {
            let e = self.peer_error(peer, "receive");
            self.completed.insert(id, Err(e));
        }
    }

    /// The error for an operation that needs world rank `peer`, if it is broken.
    pub(crate) fn broken(&self, peer: usize) -> Option<&Error> {
        self.peers[peer].broken.as_ref()
    }

    fn peer_error(&self, peer: usize, what: &'static str) -> Error {
        match &self.peers[peer].broken {
            Some(Error::PeerGone { rank, .. }) => Error::PeerGone { rank: *rank, what },
            Some(e) => e.clone(),
            None => Error::PeerGone { rank: peer, what },
        }
    }

    pub(crate) fn find_unexpected(&self, ctx: u64, source: Source, tag: TagMatch) -> Option<usize> {
        self.unexpected
            .iter()
            .position(|m| m.ctx == ctx && source.matches(m.source) && tag.matches(m.tag))
    }

    /// Describes unexpected message `i` (for probes).
    pub(crate) fn status_of(&self, i: usize) -> Status {
        let m = &self.unexpected[i];
        Status {
            source: m.source,
            tag: m.tag,
            bytes: m.data.len(),
        }
    }

    /// Fails if no live rank of `group` can send a message matching `source` any more.
    pub(crate) fn check_gone(
        &self,
        source: Source,
        group: &[usize],
        what: &'static str,
    ) -> Result<()> {
        match source {
            Source::Rank(r) if self.peers[group[r]].broken.is_some() => {
                Err(self.peer_error(group[r], what))
            }
            Source::Any
                if group.len() > 1
                    && group
                        .iter()
                        .all(|&w| w == self.world_rank || self.peers[w].broken.is_some()) =>
            {
                let w = group
                    .iter()
                    .copied()
                    .find(|&w| w != self.world_rank)
                    .unwrap_or(0);
                Err(self.peer_error(w, what))
            }
            _ => Ok(()),
        }
    }

    /// Posts a receive, or completes it at once from the unexpected queue or with the error of
    /// a broken peer. Returns its id.
    pub(crate) fn post(&mut self, mut p: Posted) -> u64 {
        let id = self.new_id();
        p.id = id;
        if let Some(i) = self.find_unexpected(p.ctx, p.source, p.tag) {
            let m = self.unexpected.remove(i);
            let result = deliver(&p.buf, p.len, &m);
            self.completed.insert(id, result);
        } else if let Source::Rank(r) = p.source {
            if self.peers[p.group[r]].broken.is_some() {
                let e = self.peer_error(p.group[r], "receive");
                self.completed.insert(id, Err(e));
            } else {
                self.posted.push(p);
            }
        } else {
            self.posted.push(p);
        }
        id
    }

    /// Takes the outcome of request `id` if it has completed.
    pub(crate) fn take_completed(&mut self, id: u64) -> Option<Result<Status>> {
        self.completed.remove(&id)
    }

    /// For a caller about to sleep on posted receive `id`: fails it if nobody can match it.
    pub(crate) fn fail_if_blocked_forever(&mut self, id: u64) {
        let Some(i) = self.posted.iter().position(|p| p.id == id) else {
            return;
        };
        let (source, group) = (self.posted[i].source, Arc::clone(&self.posted[i].group));
        if let Err(e) = self.check_gone(source, &group, "receive") {
            self.posted.remove(i);
            self.completed.insert(id, Err(e));
        }
    }

    /// Withdraws posted receive `id` (on timeout). Returns its outcome if it completed in the
    /// meantime, `None` if it was withdrawn unmatched.
    pub(crate) fn withdraw(&mut self, id: u64) -> Option<Result<Status>> {
        if let Some(i) = self.posted.iter().position(|p| p.id == id) {
            self.posted.remove(i);
            return None;
        }
        self.completed.remove(&id)
    }
}

/// Copies a message into a receive buffer, MPI's truncation rule included.
pub(crate) fn deliver(buf: &RecvBuf, len: usize, m: &Msg) -> Result<Status> {
    let n = m.data.len().min(len);
    if n > 0 {
        // SAFETY: the buffer `buf.0..buf.0+len` is valid and exclusively ours until this
        // receive completes, which is now (see `RecvBuf`); `n <= len`, and `m.data` is a
        // separate allocation.
        unsafe { std::ptr::copy_nonoverlapping(m.data.as_ptr(), buf.0, n) };
    }
    receive_outcome(m.data.len(), len, m.source, m.tag)
}
