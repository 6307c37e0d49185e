//! `TcpComm`: the multi-rail TCP backend of [`Comm`], on a tokio runtime it owns.
//!
//! Each rank has one or more *rails*, each a local IP address bound to one NIC. At bootstrap
//! rail `i` of every rank connects to rail `i` of every other rank (see [`bootstrap`] for the
//! authenticated handshake), through MPI ([`TcpComm::bootstrap_over`]) or a rendezvous address
//! ([`TcpComm::rendezvous`]). A message is sent whole on the rail of highest weight when it is
//! short, else striped across the rails in proportion to [`Comm::rail_weights`], or sent on a
//! named rail ([`TcpComm::send_on`]); the receiver reassembles it and releases messages from
//! each sender in the order they were sent, so MPI's matching and non-overtaking rules hold
//! whatever order the rails deliver in (see [`engine`]).
//!
//! The `Comm` methods are synchronous. Every wait is bounded by [`TcpConfig::timeout`].
//!
//! *Small messages take the direct path*, as Open MPI's TCP BTL does (the calling thread does
//! the socket I/O): on a 2-core machine each hand-off between the caller and an I/O thread
//! costs a context switch, and those hand-offs, not the network, were most of a small message's
//! time (see [`link`] for who may touch a socket when).
//! - A share of at most 64 KiB whose connection has nothing queued and no injected fault is
//!   written by the calling thread with one non-blocking `writev`; what the socket buffer does
//!   not take goes to the connection's writer task as the rest of that frame. Every other
//!   share (long, queued behind others, or faulted) goes to the writer task, which applies the
//!   faults, so the fault layer still sees every byte: a link with a fault has no direct path.
//! - A blocking receive of at most 64 KiB claims the connections its message can come on (the
//!   source's rails; every peer's for `Source::Any`), reads them itself and sleeps in `poll(2)`
//!   between reads, so the kernel wakes the receiving thread itself when bytes arrive; the
//!   reader tasks of those connections stand aside meanwhile. Frames read either way go through
//!   the same parser into the same engine, which releases each sender's messages in sequence
//!   order, so matching and non-overtaking do not depend on which thread read what, nor on
//!   which path or rail carried a message.
//! - Everything else is as before: long shares go to writer tasks, long receives sleep on the
//!   engine until a reader task completes them. Sends are eager; whenever no calling thread
//!   reads a connection its reader task does, so sockets are always drained and two ranks
//!   sending to each other never deadlock.
//!
//! - No tokio thread wakes for an arrival on a connection a calling thread reads: the writer
//!   task's socket is registered for writing only, and the reader task drops its read
//!   registration while a calling thread drives the connection (see [`link`]).
//!
//! Measured (`ferry-tcp-bench --latency`, loopback, 2-core VM, alternating in the same
//! minutes): 8 B one way 41 us before, 14-19 us with the direct path alone, 9.5-11 us with the
//! tokio wake-ups gone too, level with a plain blocking socket pair (8.5-12 us when the machine
//! is busy; slower when it idles, as a sleeping thread wakes slowly in this VM and the direct
//! path polls before it sleeps). See bench/RESULTS.md for the test bed.
//!
//! Failures are typed: a connection that closes without the peer's goodbye, or a protocol
//! error from it, is [`Error::RailDown`] for operations with that peer; once every rail to a
//! peer is closed it is [`Error::PeerGone`]. [`FaultInjector`] adds delay, a bandwidth cap,
//! stalls and dropped connections per rail and peer. Every rail share of every send and
//! receive becomes a [`crate::Record`] in [`Comm::telemetry`] (peer = world rank).
//!
//! Not done yet: a receive that another thread's message to this rank completes, or that
//! completes another way while its thread sleeps in `poll(2)`, is seen within 10 ms; a reader
//! task that stepped aside reads again within 2 ms (at once for a thread that sleeps on the
//! engine, a blocking probe or a `test_raw`); non-blocking tests (`test_raw`) do not read
//! sockets themselves; a short receive busy-polls `TcpConfig::busy_poll` (50 us) before it sleeps,
//! which costs a core meanwhile. A rail that dies is not routed around (operations with that peer fail with
//! `RailDown`; the sender would need to re-send the lost shares on a live rail); buffering of
//! unexpected messages is bounded per message (`max_message_bytes`), not in total.

mod bootstrap;
mod config;
mod engine;
mod fault;
mod link;
mod poll;
#[cfg(test)]
mod tests;
mod wire;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use self::config::{
    DEFAULT_BUSY_POLL, FERRY_TCP_BUSY_POLL_US, FERRY_TCP_FAULTS, FERRY_TCP_RAILS,
    FERRY_TCP_TIMEOUT_MS, FERRY_TCP_TOKEN, TcpConfig,
};
pub use self::fault::{Fault, FaultInjector};

use self::engine::{Engine, Msg, Posted, RecvBuf};
use self::link::{Link, SendTicket, Share};
use self::wire::FrameHeader;
use crate::comm::{
    Comm, Source, Status, Tag, TagMatch, check_rail_weights, check_rank, check_recv, check_send,
    recv_span, send_span,
};
use crate::error::{Error, Result};
use crate::split::{self, SplitTransport};
use crate::telemetry::Telemetry;

/// Tags on a communicator's internal context.
const TAG_BARRIER: Tag = 1;

/// How long a blocking receive that cannot read the sockets itself polls for its message before
/// it sleeps.
const SPIN_BEFORE_PARK: Duration = Duration::from_micros(200);

/// Shares up to this long are written by the calling thread when their connection is idle,
/// and receives of buffers up to this long read their peers' sockets themselves (the direct
/// path; see the module docs).
const DIRECT_MAX_BYTES: usize = 64 << 10;

/// The longest a receive on the direct path sleeps in `poll(2)` before it looks at the engine
/// again (for completions that come another way: a failed writer, another thread).
const DIRECT_POLL_SLICE: Duration = Duration::from_millis(10);

/// Most bytes of eager (queued, not yet written) sends towards one peer.
const EAGER_IN_FLIGHT_BYTES: usize = 4 << 20;

/// Tags the MPI bootstrap uses on the communicator it is given.
const TAG_BOOT_TOKEN: Tag = 32001;
const TAG_BOOT_ROW: Tag = 32002;
const TAG_BOOT_TABLE: Tag = 32003;

/// State shared by the tasks and handles of one rank.
pub(crate) struct Core {
    world_rank: usize,
    rails: usize,
    config: TcpConfig,
    engine: Mutex<Engine>,
    cv: Condvar,
    /// Threads asleep on `cv` (changed under the engine lock), so the reader path makes the
    /// wake-up system call only when someone sleeps.
    sleepers: AtomicUsize,
    telemetry: Arc<Telemetry>,
    faults: Arc<FaultInjector>,
    /// Per peer: rails closed with a goodbye, rails closed otherwise.
    closed: Mutex<Vec<(usize, usize)>>,
    closing: AtomicBool,
}

impl Core {
    fn engine(&self) -> MutexGuard<'_, Engine> {
        // Engine updates complete before anything can panic inside them (all checks come
        // first), so a poisoned lock still guards a consistent engine.
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the threads asleep on the engine, if any. Call after changing the engine (and
    /// releasing its lock): a sleeper counts itself under the lock before it sleeps, so it either
    /// saw the change or is counted here.
    fn notify(&self) {
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            self.cv.notify_all();
        }
    }

    /// Sleeps on the engine's condition variable until notified or `timeout` passes.
    fn sleep<'a>(
        &'a self,
        engine: MutexGuard<'a, Engine>,
        timeout: Duration,
    ) -> MutexGuard<'a, Engine> {
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let engine = self
            .cv
            .wait_timeout(engine, timeout)
            .unwrap_or_else(|e| e.into_inner())
            .0;
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        engine
    }

    fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// A connection to `peer` on `rail` ended with the peer's goodbye.
    fn link_bye(&self, peer: usize, _rail: usize) {
        let all = {
            let mut c = self.closed.lock().unwrap_or_else(|e| e.into_inner());
            c[peer].0 += 1;
            c[peer].0 + c[peer].1 >= self.rails
        };
        if all {
            self.engine().peer_broken(
                peer,
                Error::PeerGone {
                    rank: peer,
                    what: "receive",
                },
            );
        }
        self.notify();
    }

    /// A connection to `peer` on `rail` failed.
    fn link_failed(&self, peer: usize, _rail: usize, e: Error) {
        let all = {
            let mut c = self.closed.lock().unwrap_or_else(|e| e.into_inner());
            c[peer].1 += 1;
            c[peer].0 + c[peer].1 >= self.rails
        };
        let mut engine = self.engine();
        engine.peer_broken(peer, e);
        if all {
            engine.peer_broken(
                peer,
                Error::PeerGone {
                    rank: peer,
                    what: "receive",
                },
            );
        }
        drop(engine);
        self.notify();
    }

    fn timeout(&self, what: &str) -> Error {
        Error::Timeout {
            what: what.to_string(),
            millis: self.config.timeout.as_millis() as u64,
        }
    }
}

/// What all communicators of one `TcpComm` job on this rank share; dropping it closes the
/// connections.
struct Inner {
    core: Arc<Core>,
    rt: Option<tokio::runtime::Runtime>,
    /// `links[peer][rail]`, `None` for this rank itself.
    links: Vec<Vec<Option<Arc<Link>>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    readers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Next message number towards each world rank.
    next_seq: Vec<AtomicU64>,
    /// Bytes of eager sends towards each world rank that are not written yet.
    eager_in_flight: Vec<Arc<AtomicUsize>>,
    weights: RwLock<Vec<f64>>,
    /// Counter for context ids this rank allocates as a split leader.
    next_ctx: AtomicU64,
    refused: Arc<AtomicU64>,
    listen_addrs: Vec<String>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.core.closing.store(true, Ordering::Release);
        for link in self.links.iter().flatten().flatten() {
            link.bye();
        }
        let Some(rt) = self.rt.take() else { return };
        let readers: Vec<_> =
            std::mem::take(&mut *self.readers.lock().unwrap_or_else(|e| e.into_inner()));
        let linger = self.core.config.linger;
        // Wait for the peers' goodbyes (bounded), so no socket closes with unread data.
        let waited = rt.block_on(async {
            tokio::time::timeout(linger, async {
                for r in readers {
                    let _ = r.await;
                }
            })
            .await
        });
        if waited.is_err() {
            tracing::warn!(
                rank = self.core.world_rank,
                "ferry-tcp: some peers did not close within {linger:?}; closing anyway"
            );
        }
        for t in std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner())) {
            t.abort();
        }
        rt.shutdown_timeout(Duration::from_millis(200));
    }
}

/// A communicator over TCP with one or more rails per rank; see the module docs.
///
/// `TcpComm` is `Send` and `Sync`: weights and faults may be changed from other threads while
/// one thread communicates. Sub-communicators from [`Comm::split`] share the connections.
pub struct TcpComm {
    inner: Arc<Inner>,
    /// Point-to-point context; the internal context is `ctx + 1`.
    ctx: u64,
    rank: usize,
    /// World rank of each rank of this communicator.
    group: Arc<Vec<usize>>,
}

impl std::fmt::Debug for TcpComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpComm")
            .field("rank", &self.rank)
            .field("size", &self.group.len())
            .field("ctx", &self.ctx)
            .field("rails", &self.inner.core.config.rails)
            .finish()
    }
}

/// A pending `TcpComm` operation.
#[derive(Debug)]
pub struct TcpRequest(RequestKind);

#[derive(Debug)]
enum RequestKind {
    Send {
        ticket: Arc<SendTicket>,
        status: Status,
    },
    Recv {
        id: u64,
        source: Source,
        len: usize,
    },
    Done(Option<Result<Status>>),
}

fn runtime(cfg: &TcpConfig) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.io_threads.max(1))
        .thread_name("ferry-tcp-io")
        .enable_all()
        .build()
        .map_err(|e| Error::Io {
            what: "starting the I/O runtime".into(),
            message: e.to_string(),
        })
}

impl TcpComm {
    /// Bootstraps through an existing communicator (normally the [`crate::MpiComm`] of
    /// `mpirun`'s world): every rank binds its rails, rank 0 generates the job token (unless
    /// `config.token` is set) and gathers and distributes the address table, then the ranks
    /// connect. Collective over `comm`; uses tags 32001 to 32003 on it. The new
    /// communicator has `comm`'s ranks and size.
    pub fn bootstrap_over<C: Comm>(comm: &C, config: TcpConfig) -> Result<TcpComm> {
        config.validate()?;
        let (rank, size) = (comm.rank(), comm.size());
        let rt = runtime(&config)?;
        let bound = rt.block_on(bootstrap::bind_rails(&config));
        // 1. The token: rank 0 makes it and sends it to everyone.
        let token = if rank == 0 {
            let t = match &config.token {
                Some(t) => t.clone(),
                None => config::random_token()?,
            };
            for r in 1..size {
                comm.send(r, TAG_BOOT_TOKEN, &t)?;
            }
            t
        } else {
            comm.recv_vec(Source::Rank(0), TagMatch::Tag(TAG_BOOT_TOKEN))?
                .1
        };
        // 2. The table: rows to rank 0, the whole table back. A rank that could not bind sends
        // an empty row, so every rank fails the same table check instead of hanging.
        let (listeners, mine) = match bound {
            Ok((l, a)) => (l, a),
            Err(e) => {
                tracing::error!("ferry-tcp: {e}");
                (Vec::new(), Vec::new())
            }
        };
        let table = if rank == 0 {
            let mut table = vec![mine.clone()];
            for r in 1..size {
                let (_, row) = comm.recv_vec(Source::Rank(r), TagMatch::Tag(TAG_BOOT_ROW))?;
                let t = wire::decode_table(&row)?;
                table.push(t.into_iter().next().unwrap_or_default());
            }
            let enc = wire::encode_table(&table);
            for r in 1..size {
                comm.send(r, TAG_BOOT_TABLE, &enc)?;
            }
            table
        } else {
            comm.send(0, TAG_BOOT_ROW, &wire::encode_table(&vec![mine.clone()]))?;
            let (_, enc) = comm.recv_vec(Source::Rank(0), TagMatch::Tag(TAG_BOOT_TABLE))?;
            wire::decode_table(&enc)?
        };
        bootstrap::check_table(&table, size, config.rails.len())?;
        Self::connect(rt, config, rank, table, token, listeners, mine)
    }

    /// Bootstraps through a rendezvous address (`host:port`) without MPI: rank 0 listens
    /// there, the other ranks register with it, and rank 0 hands out the address table. The
    /// job token must be in `config.token` (every rank the same; [`TcpConfig::with_env`] reads
    /// [`FERRY_TCP_TOKEN`]); registrations with another token are refused and logged.
    pub fn rendezvous(addr: &str, rank: usize, size: usize, config: TcpConfig) -> Result<TcpComm> {
        config.validate()?;
        if size == 0 || rank >= size || size > wire::MAX_RANKS {
            return Err(Error::InvalidArgument(format!(
                "rank {rank} of a job of {size} ranks"
            )));
        }
        let Some(token) = config.token.clone() else {
            return Err(Error::InvalidArgument(format!(
                "the rendezvous bootstrap needs a job token ({FERRY_TCP_TOKEN})"
            )));
        };
        let rt = runtime(&config)?;
        let (listeners, mine) = rt.block_on(bootstrap::bind_rails(&config))?;
        let refused = Arc::new(AtomicU64::new(0));
        let table = rt.block_on(bootstrap::rendezvous(
            addr,
            rank,
            size,
            &config,
            &token,
            mine.clone(),
            &refused,
        ))?;
        let comm = Self::connect(rt, config, rank, table, token, listeners, mine)?;
        comm.inner
            .refused
            .fetch_add(refused.load(Ordering::Relaxed), Ordering::Relaxed);
        Ok(comm)
    }

    fn connect(
        rt: tokio::runtime::Runtime,
        config: TcpConfig,
        rank: usize,
        table: wire::Table,
        token: Vec<u8>,
        listeners: Vec<tokio::net::TcpListener>,
        mine: Vec<String>,
    ) -> Result<TcpComm> {
        let size = table.len();
        let rails = config.rails.len();
        let refused = Arc::new(AtomicU64::new(0));
        let conns = rt.block_on(bootstrap::connect_all(
            &config,
            rank,
            table,
            token,
            listeners,
            Arc::clone(&refused),
        ))?;
        let faults = Arc::new(FaultInjector::new(rails, size));
        if let Ok(spec) = std::env::var(FERRY_TCP_FAULTS) {
            for (rail, peer, f) in FaultInjector::parse(&spec)? {
                faults.inject(rail, peer, f)?;
            }
        }
        let core = Arc::new(Core {
            world_rank: rank,
            rails,
            engine: Mutex::new(Engine::new(rank, size)),
            cv: Condvar::new(),
            sleepers: AtomicUsize::new(0),
            telemetry: Arc::new(Telemetry::new(config.telemetry_capacity)),
            faults,
            closed: Mutex::new(vec![(0, 0); size]),
            closing: AtomicBool::new(false),
            config,
        });
        let mut links: Vec<Vec<Option<Arc<Link>>>> = (0..size)
            .map(|_| (0..rails).map(|_| None).collect())
            .collect();
        let mut tasks = Vec::new();
        let mut readers = Vec::new();
        let mut conns: Vec<_> = conns
            .into_iter()
            .collect::<HashMap<_, _>>()
            .into_iter()
            .collect();
        conns.sort_by_key(|((p, r), _)| (*p, *r));
        for ((peer, rail), stream) in conns {
            let (link, w, r) = link::spawn(rt.handle(), &core, stream, peer, rail)?;
            links[peer][rail] = Some(link);
            tasks.push(w);
            readers.push(r);
        }
        let weights = vec![1.0 / rails as f64; rails];
        Ok(TcpComm {
            inner: Arc::new(Inner {
                core,
                rt: Some(rt),
                links,
                tasks: Mutex::new(tasks),
                readers: Mutex::new(readers),
                next_seq: (0..size).map(|_| AtomicU64::new(0)).collect(),
                eager_in_flight: (0..size).map(|_| Arc::new(AtomicUsize::new(0))).collect(),
                weights: RwLock::new(weights),
                next_ctx: AtomicU64::new(1),
                refused,
                listen_addrs: mine,
            }),
            ctx: 0,
            rank,
            group: Arc::new((0..size).collect()),
        })
    }

    /// The fault-injection switchboard of this rank's connections.
    pub fn faults(&self) -> &FaultInjector {
        &self.inner.core.faults
    }

    /// The rail addresses this rank listens on ("ip:port", one per rail).
    pub fn listen_addrs(&self) -> &[String] {
        &self.inner.listen_addrs
    }

    /// The local address of each rail.
    pub fn rails(&self) -> &[IpAddr] {
        &self.inner.core.config.rails
    }

    /// How many connection attempts (or rendezvous registrations) this rank has refused.
    pub fn refused_connections(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// The world rank (of the bootstrap communicator) of rank `rank` of this communicator;
    /// telemetry and faults name peers by world rank.
    pub fn world_rank_of(&self, rank: usize) -> Result<usize> {
        check_rank(rank, self.size())?;
        Ok(self.group[rank])
    }

    /// Sends `buf` to `dest` whole on `rail`, whatever the weights (MPI_Send semantics).
    pub fn send_on(&self, rail: usize, dest: usize, tag: Tag, buf: &[u8]) -> Result<()> {
        if rail >= self.rail_count() {
            return Err(Error::InvalidArgument(format!(
                "rail {rail}, but there are {} rails",
                self.rail_count()
            )));
        }
        check_send(self, dest, tag)?;
        let mut req = self.start_send(self.ctx, dest, tag, buf, Some(rail))?;
        self.wait_raw(&mut req).map(|_| ())
    }

    fn core(&self) -> &Core {
        &self.inner.core
    }

    /// Splits `len` bytes into (rail, offset, len) shares.
    fn plan_shares(&self, len: usize, rail: Option<usize>) -> Vec<(usize, usize, usize)> {
        if let Some(r) = rail {
            return vec![(r, 0, len)];
        }
        let w = self
            .inner
            .weights
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let best = (0..w.len())
            .max_by(|&a, &b| w[a].total_cmp(&w[b]).then(b.cmp(&a)))
            .unwrap_or(0);
        let active = w.iter().filter(|x| **x > 0.0).count();
        if len < self.core().config.stripe_min_bytes || active <= 1 {
            return vec![(best, 0, len)];
        }
        let mut shares = Vec::new();
        let mut off = 0;
        let last = (0..w.len()).rev().find(|&i| w[i] > 0.0).unwrap_or(best);
        for (i, wi) in w.iter().enumerate() {
            if *wi <= 0.0 {
                continue;
            }
            let n = if i == last {
                len - off
            } else {
                ((len as f64 * wi) as usize).min(len - off)
            };
            if n > 0 {
                shares.push((i, off, n));
                off += n;
            }
        }
        shares
    }

    /// Starts a send on context `ctx`: copies the bytes and queues one share per rail.
    fn start_send(
        &self,
        ctx: u64,
        dest: usize,
        tag: Tag,
        buf: &[u8],
        rail: Option<usize>,
    ) -> Result<TcpRequest> {
        let core = self.core();
        let status = Status {
            source: self.rank,
            tag,
            bytes: buf.len(),
        };
        if buf.len() > core.config.max_message_bytes {
            return Err(Error::TooLarge {
                bytes: buf.len(),
                limit: core.config.max_message_bytes,
            });
        }
        let world_dest = self.group[dest];
        if world_dest == core.world_rank {
            core.engine().accept(Msg {
                ctx,
                source: self.rank,
                tag,
                data: buf.to_vec(),
            });
            core.notify();
            return Ok(TcpRequest(RequestKind::Done(Some(Ok(status)))));
        }
        if let Some(e) = core.engine().broken(world_dest) {
            return Err(match e {
                Error::PeerGone { rank, .. } => Error::PeerGone {
                    rank: *rank,
                    what: "send",
                },
                e => e.clone(),
            });
        }
        let shares = self.plan_shares(buf.len(), rail);
        let data = Bytes::copy_from_slice(buf);
        // A message sent whole (not striped) is complete for its sender once its bytes are
        // copied and queued, as MPI lets a standard-mode send complete once the buffer may be
        // reused; the caller does not wait for the writer thread. The bytes queued that way
        // per peer are bounded; beyond the bound, sends wait for their writes again.
        let in_flight = &self.inner.eager_in_flight[world_dest];
        let eager = shares.len() == 1
            && buf.len() < core.config.stripe_min_bytes
            && in_flight.load(Ordering::Acquire) + buf.len() <= EAGER_IN_FLIGHT_BYTES;
        let ticket = if eager {
            in_flight.fetch_add(buf.len(), Ordering::AcqRel);
            SendTicket::eager(1, Arc::clone(in_flight), buf.len())
        } else {
            SendTicket::new(shares.len())
        };
        let start_ns = core.telemetry.now_ns();
        let seq = self.inner.next_seq[world_dest].fetch_add(1, Ordering::Relaxed);
        for (r, off, n) in shares {
            let share = Share {
                header: FrameHeader {
                    source: self.rank as u32,
                    tag,
                    ctx,
                    seq,
                    total: buf.len() as u64,
                    share_offset: off as u64,
                    share_len: n as u64,
                    ..Default::default()
                },
                data: data.slice(off..off + n),
                start_ns,
                ticket: Some(Arc::clone(&ticket)),
                rail: r,
                peer: world_dest,
            };
            match &self.inner.links[world_dest][r] {
                Some(link) => link.submit(core, share, n <= DIRECT_MAX_BYTES),
                // Dropping the share fails the ticket.
                None => drop(share),
            }
        }
        if eager {
            return Ok(TcpRequest(RequestKind::Done(Some(Ok(status)))));
        }
        Ok(TcpRequest(RequestKind::Send { ticket, status }))
    }

    /// Posts a receive of `len` bytes at `buf` on context `ctx`.
    fn post_recv(&self, ctx: u64, source: Source, tag: TagMatch, buf: *mut u8, len: usize) -> u64 {
        let mut engine = self.core().engine();
        engine.post(Posted {
            id: 0,
            ctx,
            source,
            tag,
            buf: RecvBuf(buf),
            len,
            group: Arc::clone(&self.group),
        })
    }

    /// Waits for posted receive `id` (from `source`, into `len` bytes) until the timeout;
    /// withdraws it on expiry.
    ///
    /// 1. Completed already (an unexpected message matched at post): done.
    /// 2. The common case, a short receive from peers whose connections no other thread is
    ///    reading: this thread reads those sockets itself and sleeps in `poll(2)` between reads
    ///    ([`TcpComm::read_until`]), so the kernel wakes it when bytes arrive.
    /// 3. Otherwise (a long receive, a message to itself, another thread reading): poll the
    ///    engine briefly, then sleep on the condition variable the reader tasks signal.
    fn wait_recv(&self, id: u64, source: Source, len: usize, what: &'static str) -> Result<Status> {
        let core = self.core();
        if let Some(r) = core.engine().take_completed(id) {
            return r;
        }
        let deadline = Instant::now() + core.config.timeout;
        if len <= DIRECT_MAX_BYTES
            && let Some(driving) = self.drive(source)
            && let Some(r) = self.read_until(&driving, id, deadline, what)
        {
            return r;
        }
        // The reader tasks complete this receive: any that stepped aside read again now.
        self.wake_readers(source);
        // Poll briefly before sleeping: a reply to a small message usually arrives within
        // tens of microseconds, and waking a thread parked on the condition variable costs
        // about as much again. Yielding between polls lets the I/O threads run on a busy core.
        let spin_until = Instant::now() + SPIN_BEFORE_PARK;
        loop {
            if let Some(r) = core.engine().take_completed(id) {
                return r;
            }
            if Instant::now() >= spin_until {
                break;
            }
            std::thread::yield_now();
        }
        let mut engine = core.engine();
        loop {
            if let Some(r) = engine.take_completed(id) {
                return r;
            }
            engine.fail_if_blocked_forever(id);
            if let Some(r) = engine.take_completed(id) {
                return r;
            }
            let now = Instant::now();
            if now >= deadline {
                return match engine.withdraw(id) {
                    Some(r) => r,
                    None => Err(core.timeout(what)),
                };
            }
            engine = core.sleep(engine, deadline - now);
        }
    }

    /// The connections a message matching `source` can come on.
    fn links_of(&self, source: Source) -> impl Iterator<Item = &Arc<Link>> {
        let me = self.core().world_rank;
        let peers = match source {
            Source::Rank(r) => &self.group[r..r + 1],
            Source::Any => &self.group[..],
        };
        peers
            .iter()
            .filter(move |&&w| w != me)
            .flat_map(|&w| self.inner.links[w].iter().flatten())
    }

    /// Claims the reading of every connection a message matching `source` can come on; `None`
    /// when there is none (a message to itself) or another thread reads one of them.
    fn drive(&self, source: Source) -> Option<Vec<link::Driving>> {
        let claimed = self
            .links_of(source)
            .map(|link| link.try_drive())
            .collect::<Option<Vec<_>>>()?;
        (!claimed.is_empty()).then_some(claimed)
    }

    /// Has the reader tasks that stepped aside for a calling thread read `source`'s connections
    /// again (for a wait that relies on them).
    fn wake_readers(&self, source: Source) {
        for link in self.links_of(source) {
            link.wake_reader();
        }
    }

    /// Reads the `driving` connections on this thread until posted receive `id` completes or
    /// `deadline` passes (then withdraws it); `None` once every one of them has ended, with the
    /// receive still posted.
    fn read_until(
        &self,
        driving: &[link::Driving],
        id: u64,
        deadline: Instant,
        what: &'static str,
    ) -> Option<Result<Status>> {
        let core = self.core();
        // Nothing is read before the first poll(2), which says which sockets have bytes (a
        // read of each would cost a system call per connection; bench runs use 6 per peer).
        let mut ready = vec![false; driving.len()];
        // On the test bed, a sleeping receiver's wake-up was most of a small all-reduce's time
        // (as Open MPI's busy-polling avoids); `busy_poll` says how long to avoid it.
        let spin_until = Instant::now() + core.config.busy_poll;
        let (mut live, mut fds) = (Vec::new(), Vec::new());
        loop {
            live.clear();
            for (d, ready) in driving.iter().zip(&ready) {
                if *ready && !d.link().read_now(core) {
                    continue;
                }
                live.push(d);
            }
            {
                let mut engine = core.engine();
                if let Some(r) = engine.take_completed(id) {
                    return Some(r);
                }
                engine.fail_if_blocked_forever(id);
                if let Some(r) = engine.take_completed(id) {
                    return Some(r);
                }
                if Instant::now() >= deadline {
                    return Some(match engine.withdraw(id) {
                        Some(r) => r,
                        None => Err(core.timeout(what)),
                    });
                }
            }
            if live.is_empty() {
                return None;
            }
            fds.clear();
            fds.extend(live.iter().map(|d| d.link().fd()));
            let now = Instant::now();
            let wait = if now < spin_until {
                Duration::ZERO
            } else {
                deadline
                    .saturating_duration_since(now)
                    .min(DIRECT_POLL_SLICE)
            };
            let mut woke = Vec::new();
            poll::wait_readable(&fds, wait, &mut woke);
            if wait.is_zero() && !woke.contains(&true) {
                // Busy-polling: let a thread waiting for this core (the sender, on a busy
                // machine) run before looking again.
                std::thread::yield_now();
            }
            // Links that ended are not polled again; the others are read if they woke.
            ready.clear();
            let mut k = 0;
            for d in driving {
                if k < live.len() && std::ptr::eq(live[k], d) {
                    ready.push(woke[k]);
                    k += 1;
                } else {
                    ready.push(false);
                }
            }
        }
    }

    fn recv_on(
        &self,
        ctx: u64,
        source: Source,
        tag: TagMatch,
        buf: &mut [u8],
        what: &'static str,
    ) -> Result<Status> {
        let id = self.post_recv(ctx, source, tag, buf.as_mut_ptr(), buf.len());
        // The buffer stays borrowed until `wait_recv` returns, which is after the receive has
        // completed or been withdrawn, so the engine never writes to it later.
        self.wait_recv(id, source, buf.len(), what)
    }

    fn send_ctx(&self, ctx: u64, dest: usize, tag: Tag, buf: &[u8]) -> Result<()> {
        let mut req = self.start_send(ctx, dest, tag, buf, None)?;
        self.wait_raw(&mut req).map(|_| ())
    }

    fn probe_on(&self, source: Source, tag: TagMatch, block: bool) -> Result<Option<Status>> {
        let core = self.core();
        let deadline = Instant::now() + core.config.timeout;
        self.wake_readers(source);
        let mut engine = core.engine();
        loop {
            if let Some(i) = engine.find_unexpected(self.ctx, source, tag) {
                return Ok(Some(engine.status_of(i)));
            }
            if !block {
                return Ok(None);
            }
            engine.check_gone(source, &self.group, "probe")?;
            let now = Instant::now();
            if now >= deadline {
                return Err(core.timeout("probe"));
            }
            engine = core.sleep(engine, deadline - now);
        }
    }

    fn internal_ctx(&self) -> u64 {
        self.ctx + 1
    }
}

impl Comm for TcpComm {
    type RawRequest = TcpRequest;

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
        self.send_ctx(self.ctx, dest, tag, buf)
    }

    fn recv(&self, source: Source, tag: TagMatch, buf: &mut [u8]) -> Result<Status> {
        let _span = recv_span(self.rank, source, tag, buf.len());
        check_recv(self, source, tag)?;
        self.recv_on(self.ctx, source, tag, buf, "receive")
    }

    fn probe(&self, source: Source, tag: TagMatch) -> Result<Status> {
        check_recv(self, source, tag)?;
        self.probe_on(source, tag, true)?
            .ok_or_else(|| self.core().timeout("probe"))
    }

    fn iprobe(&self, source: Source, tag: TagMatch) -> Result<Option<Status>> {
        check_recv(self, source, tag)?;
        self.probe_on(source, tag, false)
    }

    fn barrier(&self) -> Result<()> {
        let _span = tracing::debug_span!("barrier", rank = self.rank).entered();
        // Dissemination barrier: in round k, send to rank+2^k and hear from rank-2^k.
        let n = self.size();
        let mut step = 1;
        while step < n {
            let to = (self.rank + step) % n;
            let from = (self.rank + n - step) % n;
            self.send_ctx(self.internal_ctx(), to, TAG_BARRIER, &[])?;
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

    fn telemetry(&self) -> Option<&Arc<Telemetry>> {
        Some(&self.inner.core.telemetry)
    }

    fn rail_count(&self) -> usize {
        self.inner.core.rails
    }

    fn rail_weights(&self) -> Vec<f64> {
        self.inner
            .weights
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_rail_weights(&self, weights: &[f64]) -> Result<()> {
        let w = check_rail_weights(weights, self.rail_count())?;
        *self
            .inner
            .weights
            .write()
            .unwrap_or_else(|e| e.into_inner()) = w;
        Ok(())
    }

    fn split(&self, color: Option<u32>, key: i32) -> Result<Option<Self>> {
        let _span = tracing::debug_span!("split", rank = self.rank, ?color, key).entered();
        // The leader's context is unique across the job: its world rank is in the high bits.
        let joined = split::split(self, self.rank, self.size(), color, key, || {
            let k = self.inner.next_ctx.fetch_add(1, Ordering::Relaxed);
            ((self.group[self.rank] as u64 + 1) << 32) | (k << 1)
        })?;
        Ok(joined.map(|j| TcpComm {
            inner: Arc::clone(&self.inner),
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
    ) -> Result<TcpRequest> {
        check_send(self, dest, tag)?;
        let bytes: &[u8] = if len == 0 {
            &[]
        } else {
            // SAFETY: the caller guarantees `buf..buf+len` is valid for reads and unwritten
            // until the request completes (isend_raw's contract); `start_send` copies the bytes
            // before returning, so nothing reads them later.
            unsafe { std::slice::from_raw_parts(buf, len) }
        };
        self.start_send(self.ctx, dest, tag, bytes, None)
    }

    unsafe fn irecv_raw(
        &self,
        source: Source,
        tag: TagMatch,
        buf: *mut u8,
        len: usize,
    ) -> Result<TcpRequest> {
        check_recv(self, source, tag)?;
        let id = self.post_recv(self.ctx, source, tag, buf, len);
        Ok(TcpRequest(RequestKind::Recv { id, source, len }))
    }

    fn test_raw(&self, request: &mut TcpRequest) -> Result<Option<Status>> {
        match &mut request.0 {
            RequestKind::Send { ticket, status } => match ticket.poll() {
                None => Ok(None),
                Some(r) => r.map(|()| Some(*status)),
            },
            RequestKind::Recv { id, source, .. } => {
                let done = self.core().engine().take_completed(*id);
                match done {
                    Some(r) => r.map(Some),
                    None => {
                        self.wake_readers(*source);
                        Ok(None)
                    }
                }
            }
            RequestKind::Done(r) => match r.take() {
                Some(r) => r.map(Some),
                None => Err(Error::InvalidArgument("request already completed".into())),
            },
        }
    }

    fn wait_raw(&self, request: &mut TcpRequest) -> Result<Status> {
        match &mut request.0 {
            RequestKind::Send { ticket, status } => {
                let deadline = Instant::now() + self.core().config.timeout;
                match ticket.wait_until(deadline) {
                    Some(r) => r.map(|()| *status),
                    None => Err(self.core().timeout("send")),
                }
            }
            RequestKind::Recv { id, source, len } => self.wait_recv(*id, *source, *len, "receive"),
            RequestKind::Done(r) => r
                .take()
                .unwrap_or_else(|| Err(Error::InvalidArgument("request already completed".into()))),
        }
    }
}

impl SplitTransport for TcpComm {
    fn split_send(&self, dest: usize, tag: Tag, buf: &[u8]) -> Result<()> {
        self.send_ctx(self.internal_ctx(), dest, tag, buf)
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
