//! One rail connection to one peer ([`Link`]): the direct path, on which the calling thread
//! writes a small share to the socket itself and reads the socket itself while it waits for a
//! receive; the writer task, which sends every other share (through the fault layer); and the
//! reader task, which reads whenever no calling thread does. Both readers feed frames through
//! one parser ([`ReadState`]) to the matching engine.
//!
//! Who may touch the byte stream, so frames never interleave and never split between readers:
//! - writes: while jobs are queued for the writer task (`Gate::queued > 0`) only the writer task
//!   writes; otherwise a calling thread may write a whole frame under the gate's lock, and what
//!   does not fit in the socket buffer goes to the writer task as the rest of that frame;
//! - reads: every read and the parse of what it read happen under the `ReadState` lock; while a
//!   calling thread drives the link (`driven`), the reader task reads nothing.
//!
//! Wake-ups: a socket registered with tokio's epoll for reading wakes a tokio thread at every
//! arrival, which on a 2-core machine takes the core a receiving thread needs. So the writer
//! task's registration is for writing only, and the reader task holds a read registration
//! only while no calling thread drives the link: when it finds the link driven it deregisters
//! (`parked`) and registers again after `REARM` or when a thread that sleeps on the engine asks
//! ([`Link::wake_reader`]). Registering reports bytes already waiting, so none are stranded, and
//! letting go of a link wakes no thread.

use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::time::Instant;

use bytes::Bytes;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{Notify, mpsc, watch};

use super::Core;
use super::fault::{Bucket, LinkFaults};
use super::wire::{FrameHeader, HEADER_BYTES, KIND_BYE, KIND_DATA};
use crate::error::{Error, Result};
use crate::telemetry::Record;

/// Most bytes one turn of the reader task parses before it lets other tasks run.
const READER_TURN_BYTES: usize = 4 << 20;
/// The read buffer of a connection: several small frames per system call.
const READ_BUFFER_BYTES: usize = 64 << 10;
/// How long a reader task that stepped aside for a calling thread waits before it looks again.
const REARM: std::time::Duration = std::time::Duration::from_millis(2);

/// The completion of one send: how many shares are still on their way, and the first error.
#[derive(Debug)]
pub(crate) struct SendTicket {
    /// Shares still on their way, the first error, threads waiting.
    state: Mutex<(usize, Option<Error>, usize)>,
    cv: Condvar,
    /// For an eager send (completed to its caller before it was written): the peer's count of
    /// bytes in flight, and this send's bytes, given back once every share is finished.
    credit: Option<(Arc<AtomicUsize>, usize)>,
}

impl SendTicket {
    pub(crate) fn new(shares: usize) -> Arc<Self> {
        Arc::new(SendTicket {
            state: Mutex::new((shares, None, 0)),
            cv: Condvar::new(),
            credit: None,
        })
    }

    /// A ticket for an eager send of `bytes`, counted in `in_flight` until it is written.
    pub(crate) fn eager(shares: usize, in_flight: Arc<AtomicUsize>, bytes: usize) -> Arc<Self> {
        Arc::new(SendTicket {
            state: Mutex::new((shares, None, 0)),
            cv: Condvar::new(),
            credit: Some((in_flight, bytes)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, Option<Error>, usize)> {
        // Updates are a decrement and an assignment, consistent even after a panic elsewhere.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn finish(&self, result: Result<()>) {
        let mut s = self.lock();
        let was = s.0;
        s.0 = s.0.saturating_sub(1);
        if let Err(e) = result {
            s.1.get_or_insert(e);
        }
        if was == 1
            && let Some((in_flight, bytes)) = &self.credit
        {
            in_flight.fetch_sub(*bytes, Ordering::Release);
        }
        if s.2 > 0 {
            self.cv.notify_all();
        }
    }

    /// `Some` once every share has been written (or one failed).
    pub(crate) fn poll(&self) -> Option<Result<()>> {
        let s = self.lock();
        match (&s.1, s.0) {
            (Some(e), _) => Some(Err(e.clone())),
            (None, 0) => Some(Ok(())),
            _ => None,
        }
    }

    /// Waits until [`SendTicket::poll`] has an answer or `deadline` passes (then `None`).
    pub(crate) fn wait_until(&self, deadline: Instant) -> Option<Result<()>> {
        let mut s = self.lock();
        loop {
            match (&s.1, s.0) {
                (Some(e), _) => return Some(Err(e.clone())),
                (None, 0) => return Some(Ok(())),
                _ => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            s.2 += 1;
            s = self
                .cv
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            s.2 -= 1;
        }
    }
}

/// One rail's share of one message.
pub(crate) struct Share {
    /// The header of its frames; `offset` and `len` are filled per frame.
    pub(crate) header: FrameHeader,
    /// The share's bytes (`header.share_len` of them).
    pub(crate) data: Bytes,
    /// When the send started, on the telemetry clock.
    pub(crate) start_ns: u64,
    pub(crate) ticket: Option<Arc<SendTicket>>,
    /// The rail and world rank it goes to (for the error if it is never written).
    pub(crate) rail: usize,
    pub(crate) peer: usize,
}

impl Share {
    fn finish(&mut self, result: Result<()>) {
        if let Some(t) = self.ticket.take() {
            t.finish(result);
        }
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        // A share dropped unwritten (its link died) must not leave its sender waiting.
        self.finish(Err(Error::RailDown {
            rail: self.rail,
            peer: self.peer,
            reason: "the connection closed before the share was written".into(),
        }));
    }
}

/// What a writer task is asked to do.
pub(crate) enum Job {
    Share(Share),
    /// The end of a share's single frame, of which a calling thread wrote the beginning.
    Rest(Share, Vec<u8>),
    /// Send the goodbye frame and close the sending half.
    Bye,
}

/// Who writes to the socket (see the module docs).
#[derive(Default)]
struct Gate {
    /// Jobs given to the writer task and not finished.
    queued: usize,
    /// The writer task has ended; nothing more is written.
    closed: bool,
}

/// One connection to world rank `peer` on `rail`, shared by the `TcpComm` handles (which send
/// and read on it directly) and its reader and writer tasks.
pub(crate) struct Link {
    pub(crate) peer: usize,
    pub(crate) rail: usize,
    /// A duplicate of the socket's descriptor (the same open socket, so non-blocking as tokio
    /// set it up) for the calling thread's reads, writes and shutdown.
    sock: std::net::TcpStream,
    jobs: mpsc::UnboundedSender<Job>,
    gate: Mutex<Gate>,
    rx: Mutex<ReadState>,
    /// A calling thread reads this link (see [`Link::try_drive`]).
    driven: AtomicBool,
    /// The reader task has stepped aside (no read registration).
    parked: AtomicBool,
    /// Wakes a parked reader task (a thread sleeps on the engine, or the link has ended).
    resume: Notify,
    kill: watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks leaves them consistent before anything can panic (the
    // parser checks a frame before it changes state), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Link {
    /// Sends `share` on this link. With `direct`, and when nothing is queued for the writer
    /// task and no fault applies to the link, the calling thread writes the share's single
    /// frame itself without blocking; what the socket does not take goes to the writer task.
    /// A share that cannot be written (the link is closed) is dropped, which fails its ticket.
    pub(crate) fn submit(&self, core: &Core, mut share: Share, direct: bool) {
        let mut gate = lock(&self.gate);
        // A dropped connection takes nothing more, even before its tasks have seen the drop.
        if gate.closed || *self.kill.borrow() {
            drop(share);
            return;
        }
        if direct
            && gate.queued == 0
            && share.data.len() <= core.config.frame_bytes
            && core.faults.current(self.rail, self.peer) == LinkFaults::default()
        {
            let mut h = share.header;
            h.kind = KIND_DATA;
            h.offset = h.share_offset;
            h.len = share.data.len() as u32;
            let head = h.encode();
            let frame = HEADER_BYTES + share.data.len();
            match write_some(&self.sock, &head, &share.data) {
                Ok(n) if n == frame => {
                    record_send(core, &share, share.start_ns, self.peer, self.rail);
                    share.finish(Ok(()));
                    return;
                }
                Ok(n) if n > 0 => {
                    let mut rest = Vec::with_capacity(frame - n);
                    if n < HEADER_BYTES {
                        rest.extend_from_slice(&head[n..]);
                        rest.extend_from_slice(&share.data);
                    } else {
                        rest.extend_from_slice(&share.data[n - HEADER_BYTES..]);
                    }
                    gate.queued += 1;
                    let _ = self.jobs.send(Job::Rest(share, rest));
                    return;
                }
                // Nothing written (the socket buffer is full, or the connection failed, which
                // the writer task then reports): the writer task sends it all.
                _ => {}
            }
        }
        gate.queued += 1;
        // A refused job drops the share, whose drop fails the ticket.
        let _ = self.jobs.send(Job::Share(share));
    }

    /// Asks the writer task to say goodbye and close the sending half.
    pub(crate) fn bye(&self) {
        let _ = self.jobs.send(Job::Bye);
    }

    fn job_done(&self) {
        let mut gate = lock(&self.gate);
        gate.queued = gate.queued.saturating_sub(1);
    }

    /// Makes the calling thread this link's reader until the returned guard drops; `None` if
    /// another thread drives it already.
    pub(crate) fn try_drive(self: &Arc<Self>) -> Option<Driving> {
        self.driven
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Driving(Arc::clone(self)))
    }

    /// Asks a reader task that stepped aside to read again now (for a thread about to sleep on
    /// the engine, which needs the reader task; costs nothing when it has not stepped aside).
    pub(crate) fn wake_reader(&self) {
        if self.parked.load(Ordering::Acquire) {
            self.resume.notify_one();
        }
    }

    /// The socket's descriptor, for `poll(2)`.
    pub(crate) fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Reads and parses what has arrived, on the calling thread, until the socket has nothing
    /// more (or a few MiB were read). `false` once the link has ended.
    pub(crate) fn read_now(&self, core: &Core) -> bool {
        self.read_locked(core, &mut lock(&self.rx))
    }

    fn read_locked(&self, core: &Core, st: &mut ReadState) -> bool {
        if st.finished {
            return false;
        }
        // poll(2) reports what is left, so a short read ends the turn (`Until::Short`).
        let outcome = st.pump(core, self.peer, self.rail, Until::Short, |b| {
            (&self.sock).read(b)
        });
        match outcome {
            Ok(Pumped::Idle | Pumped::More) => true,
            Ok(Pumped::Bye) => {
                self.end(core, st, Ok(()));
                false
            }
            Err(e) => {
                self.end(core, st, Err(e));
                false
            }
        }
    }

    /// Ends the receiving side: on the peer's goodbye (`Ok`) or a failure, which also stops
    /// the writer and shuts the socket, so the peer sees the rail down too.
    fn end(&self, core: &Core, st: &mut ReadState, outcome: Result<()>) {
        if st.finished {
            return;
        }
        st.finished = true;
        match outcome {
            Ok(()) => core.link_bye(self.peer, self.rail),
            Err(e) => {
                if !core.closing() {
                    tracing::warn!(rail = self.rail, peer = self.peer, "ferry-tcp: {e}");
                }
                let _ = self.kill.send(true);
                let _ = self.sock.shutdown(std::net::Shutdown::Both);
                core.link_failed(self.peer, self.rail, e);
            }
        }
        self.resume.notify_one();
    }
}

/// A calling thread's claim on reading a link; dropping it hands reading back to the reader
/// task.
pub(crate) struct Driving(Arc<Link>);

impl Driving {
    pub(crate) fn link(&self) -> &Link {
        &self.0
    }
}

impl Drop for Driving {
    fn drop(&mut self) {
        // The reader task registers again after REARM (or when asked), and registering reports
        // whatever arrived meanwhile (see the module docs).
        self.0.driven.store(false, Ordering::Release);
    }
}

/// Writes as much of `head` then `body` as the socket takes now, without blocking; the count
/// written, or the error if nothing was.
fn write_some(sock: &std::net::TcpStream, head: &[u8], body: &[u8]) -> std::io::Result<usize> {
    let total = head.len() + body.len();
    let mut done = 0;
    while done < total {
        let r = if done < head.len() {
            (&*sock).write_vectored(&[IoSlice::new(&head[done..]), IoSlice::new(body)])
        } else {
            (&*sock).write(&body[done - head.len()..])
        };
        match r {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(done)
}

fn record_send(core: &Core, share: &Share, write_start: u64, peer: usize, rail: usize) {
    core.telemetry.record(
        Record::new(
            "send",
            share.data.len() as u64,
            share.start_ns,
            core.telemetry.now_ns(),
        )
        .with_peer(peer)
        .with_rail(rail)
        .with_wait(write_start.saturating_sub(share.start_ns)),
    );
}

/// Sets up the connection to world rank `peer` on `rail` and starts its writer and reader
/// tasks.
pub(crate) fn spawn(
    rt: &tokio::runtime::Handle,
    core: &Arc<Core>,
    stream: tokio::net::TcpStream,
    peer: usize,
    rail: usize,
) -> Result<(
    Arc<Link>,
    tokio::task::JoinHandle<()>,
    tokio::task::JoinHandle<()>,
)> {
    let io = |what: &str, e: std::io::Error| Error::Io {
        what: format!("{what} the socket of rail {rail} to rank {peer}"),
        message: e.to_string(),
    };
    // Out of tokio's registration for reading and writing (see the module docs); the
    // descriptor stays non-blocking. The calling threads use `sock`, the tasks duplicates.
    let sock = stream.into_std().map_err(|e| io("taking", e))?;
    let dup = || {
        sock.as_fd()
            .try_clone_to_owned()
            .map(std::net::TcpStream::from)
    };
    let (wsock, rsock) = (
        dup().map_err(|e| io("duplicating", e))?,
        dup().map_err(|e| io("duplicating", e))?,
    );
    let w = {
        let _rt = rt.enter();
        register(wsock, Interest::WRITABLE).map_err(|(_, e)| io("registering", e))?
    };
    let (kill, kill_rx) = watch::channel(false);
    core.faults.register_kill(rail, peer, kill.clone());
    let (jobs, rx) = mpsc::unbounded_channel();
    let link = Arc::new(Link {
        peer,
        rail,
        sock,
        jobs,
        gate: Mutex::new(Gate::default()),
        rx: Mutex::new(ReadState::new()),
        driven: AtomicBool::new(false),
        parked: AtomicBool::new(false),
        resume: Notify::new(),
        kill,
    });
    let writer = rt.spawn(write_loop(
        Arc::clone(core),
        Arc::clone(&link),
        w,
        rx,
        kill_rx.clone(),
    ));
    let reader = rt.spawn(read_loop(
        Arc::clone(core),
        Arc::clone(&link),
        rsock,
        kill_rx,
    ));
    Ok((link, writer, reader))
}

fn rail_down(rail: usize, peer: usize, reason: impl Into<String>) -> Error {
    Error::RailDown {
        rail,
        peer,
        reason: reason.into(),
    }
}

/// The writer task's socket: registered with tokio for writing only.
type Writer = AsyncFd<std::net::TcpStream>;

/// Registers `sock` with the current tokio runtime's reactor for `interest` (the socket is
/// handed back on failure).
fn register(
    sock: std::net::TcpStream,
    interest: Interest,
) -> std::result::Result<AsyncFd<std::net::TcpStream>, (std::net::TcpStream, std::io::Error)> {
    // SAFETY: a `std::net::TcpStream` owns its descriptor, which stays open and the same for
    // as long as the stream lives, and the `AsyncFd` owns the stream until it drops it or
    // hands it back with `into_inner`.
    unsafe { AsyncFd::register_with_interest(sock, interest) }.map_err(|e| e.into_parts())
}

/// Writes `head` then `body` whole, waiting for room in the socket buffer as needed.
async fn write_all(w: &Writer, mut head: &[u8], mut body: &[u8]) -> std::io::Result<()> {
    while !head.is_empty() || !body.is_empty() {
        let mut g = w.writable().await?;
        let r = g.try_io(|s| {
            s.get_ref()
                .write_vectored(&[IoSlice::new(head), IoSlice::new(body)])
        });
        match r {
            Ok(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(Ok(n)) => {
                let h = n.min(head.len());
                head = &head[h..];
                body = &body[n - h..];
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(e),
            // Not writable after all: readiness was cleared; wait again.
            Err(_) => {}
        }
    }
    Ok(())
}

async fn write_loop(
    core: Arc<Core>,
    link: Arc<Link>,
    w: Writer,
    mut rx: mpsc::UnboundedReceiver<Job>,
    mut kill: watch::Receiver<bool>,
) {
    let (peer, rail) = (link.peer, link.rail);
    let mut bucket = Bucket::new();
    loop {
        let job = tokio::select! {
            j = rx.recv() => j,
            _ = kill.wait_for(|k| *k) => None,
        };
        let Some(job) = job else { break };
        let (mut share, rest) = match job {
            Job::Bye => {
                let h = FrameHeader {
                    kind: KIND_BYE,
                    ..Default::default()
                };
                let _ = write_all(&w, &h.encode(), &[]).await;
                let _ = link.sock.shutdown(std::net::Shutdown::Write);
                break;
            }
            Job::Share(share) => (share, None),
            Job::Rest(share, rest) => (share, Some(rest)),
        };
        let result = tokio::select! {
            r = async {
                match &rest {
                    Some(rest) => write_rest(&core, &w, &share, rest).await,
                    None => write_share(&core, &w, &share, &mut bucket, peer, rail).await,
                }
            } => r,
            _ = kill.wait_for(|k| *k) => Err(rail_down(rail, peer, "connection dropped")),
        };
        let failed = result.is_err();
        if let Err(e) = &result {
            tracing::warn!(rail, peer, "ferry-tcp: send failed: {e}");
            core.link_failed(peer, rail, e.clone());
        }
        share.finish(result);
        link.job_done();
        if failed {
            break;
        }
    }
    lock(&link.gate).closed = true;
    // Later shares are dropped with the channel, which fails their tickets.
    rx.close();
    while let Ok(mut job) = rx.try_recv() {
        if let Job::Share(s) | Job::Rest(s, _) = &mut job {
            s.finish(Err(rail_down(rail, peer, "the connection is closed")));
        }
    }
}

/// Writes the end of a frame a calling thread began (no faults applied to it when it started,
/// so none are applied to its end).
async fn write_rest(core: &Core, w: &Writer, share: &Share, rest: &[u8]) -> Result<()> {
    let io = |e: std::io::Error| rail_down(share.rail, share.peer, e.to_string());
    write_all(w, rest, &[]).await.map_err(io)?;
    record_send(core, share, share.start_ns, share.peer, share.rail);
    Ok(())
}

async fn write_share(
    core: &Core,
    w: &Writer,
    share: &Share,
    bucket: &mut Bucket,
    peer: usize,
    rail: usize,
) -> Result<()> {
    let io = |e: std::io::Error| rail_down(rail, peer, e.to_string());
    let faults = core.faults.current(rail, peer);
    if let Some(until) = faults.stall_until {
        tokio::time::sleep_until(until.into()).await;
    }
    if let Some(d) = faults.delay {
        tokio::time::sleep(d).await;
    }
    let write_start = core.telemetry.now_ns();
    let frame = core.config.frame_bytes;
    let len = share.data.len();
    let mut done = 0;
    loop {
        let n = (len - done).min(frame);
        let mut h = share.header;
        h.kind = KIND_DATA;
        h.offset = h.share_offset + done as u64;
        h.len = n as u32;
        let head = h.encode();
        let payload = &share.data[done..done + n];
        // Under a cap, write in pieces so the pacing is smooth; the header goes with the first.
        let mut head: &[u8] = &head;
        for piece in payload.chunks(64 << 10) {
            let f = core.faults.current(rail, peer);
            if let Some(until) = f.stall_until.filter(|u| *u > Instant::now()) {
                tokio::time::sleep_until(until.into()).await;
            }
            if let Some(rate) = f.cap {
                let pause = bucket.take(piece.len(), rate);
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            write_all(w, head, piece).await.map_err(io)?;
            head = &[];
        }
        if !head.is_empty() {
            write_all(w, head, &[]).await.map_err(io)?;
        }
        done += n;
        if done >= len {
            break;
        }
    }
    record_send(core, share, write_start, peer, rail);
    Ok(())
}

/// When a turn of reading stops (besides the peer's goodbye and errors).
#[derive(Clone, Copy, PartialEq)]
enum Until {
    /// When the socket would block (tokio's readiness is cleared only then).
    WouldBlock,
    /// Also after a read that did not fill the space offered.
    Short,
}

/// What one turn of reading found.
enum Pumped {
    /// The socket has nothing more now.
    Idle,
    /// The turn's byte budget is spent; more may be waiting.
    More,
    /// The peer said goodbye.
    Bye,
}

/// A connection's receive side: buffered bytes not yet parsed and the frame being read.
struct ReadState {
    buf: Box<[u8]>,
    /// Unparsed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// The frame whose payload is being read, the payload, and how much of it has arrived.
    frame: Option<(FrameHeader, Vec<u8>, usize)>,
    /// When the first frame of the current share arrived (telemetry clock).
    share_start: u64,
    /// The link has ended (goodbye or failure); nothing more is read.
    finished: bool,
}

impl ReadState {
    fn new() -> Self {
        ReadState {
            buf: vec![0u8; READ_BUFFER_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
            frame: None,
            share_start: 0,
            finished: false,
        }
    }

    /// Reads with `read` (non-blocking) and parses until `until`, the peer's goodbye, or a few
    /// MiB; complete frames go to the engine.
    fn pump(
        &mut self,
        core: &Core,
        peer: usize,
        rail: usize,
        until: Until,
        mut read: impl FnMut(&mut [u8]) -> std::io::Result<usize>,
    ) -> Result<Pumped> {
        let (mut taken, mut short) = (0, false);
        loop {
            if self.parse(core, peer, rail)? {
                return Ok(Pumped::Bye);
            }
            if short {
                return Ok(Pumped::Idle);
            }
            if taken >= READER_TURN_BYTES {
                return Ok(Pumped::More);
            }
            // A long payload with nothing buffered is read straight into place; everything
            // else through the buffer, so a system call brings several small frames.
            let r = match &mut self.frame {
                Some((_, payload, have))
                    if self.start == self.end && payload.len() - *have >= READ_BUFFER_BYTES / 2 =>
                {
                    let want = payload.len() - *have;
                    read(&mut payload[*have..]).inspect(|&n| {
                        *have += n;
                        short = until == Until::Short && n < want;
                    })
                }
                _ => {
                    if self.start == self.end {
                        (self.start, self.end) = (0, 0);
                    } else if self.buf.len() - self.end < HEADER_BYTES {
                        self.buf.copy_within(self.start..self.end, 0);
                        (self.start, self.end) = (0, self.end - self.start);
                    }
                    let want = self.buf.len() - self.end;
                    read(&mut self.buf[self.end..]).inspect(|&n| {
                        self.end += n;
                        short = until == Until::Short && n < want;
                    })
                }
            };
            match r {
                Ok(0) => {
                    return Err(rail_down(
                        rail,
                        peer,
                        "the peer closed the connection without a goodbye",
                    ));
                }
                Ok(n) => taken += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(Pumped::Idle),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(rail_down(rail, peer, e.to_string())),
            }
        }
    }

    /// Parses the buffered bytes into frames and hands complete ones to the engine; `true` at
    /// the peer's goodbye.
    fn parse(&mut self, core: &Core, peer: usize, rail: usize) -> Result<bool> {
        loop {
            if let Some((h, payload, have)) = &mut self.frame {
                let n = (payload.len() - *have).min(self.end - self.start);
                payload[*have..*have + n].copy_from_slice(&self.buf[self.start..self.start + n]);
                *have += n;
                self.start += n;
                if *have < payload.len() {
                    return Ok(false);
                }
                let h = *h;
                let Some((_, payload, _)) = self.frame.take() else {
                    unreachable!("matched above")
                };
                self.deliver(core, peer, rail, &h, payload)?;
                continue;
            }
            if self.end - self.start < HEADER_BYTES {
                return Ok(false);
            }
            let hb: &[u8; HEADER_BYTES] = self.buf[self.start..self.start + HEADER_BYTES]
                .try_into()
                .expect("HEADER_BYTES long");
            let arrived = core.telemetry.now_ns();
            let h = FrameHeader::decode(hb, core.config.frame_bytes, core.config.max_message_bytes)
                .map_err(|e| rail_down(rail, peer, e.to_string()))?;
            self.start += HEADER_BYTES;
            if h.kind == KIND_BYE {
                return Ok(true);
            }
            if h.offset == h.share_offset {
                self.share_start = arrived;
            }
            // The length was checked against the frame limit by `decode`.
            self.frame = Some((h, vec![0u8; h.len as usize], 0));
        }
    }

    fn deliver(
        &mut self,
        core: &Core,
        peer: usize,
        rail: usize,
        h: &FrameHeader,
        payload: Vec<u8>,
    ) -> Result<()> {
        let share_done = h.offset + h.len as u64 == h.share_offset + h.share_len;
        core.engine()
            .frame(peer, h, payload)
            .map_err(|e| rail_down(rail, peer, e.to_string()))?;
        core.notify();
        if share_done {
            core.telemetry.record(
                Record::new(
                    "recv",
                    h.share_len,
                    self.share_start,
                    core.telemetry.now_ns(),
                )
                .with_peer(peer)
                .with_rail(rail),
            );
        }
        Ok(())
    }
}

/// What one wake-up of the reader task leads to.
enum Step {
    /// Wait again (nothing to read, or the lock was busy).
    Again,
    /// The turn's budget is spent; let other tasks run, then read on.
    More,
    /// A calling thread drives the link: step aside.
    Aside,
    /// The link has ended.
    Done,
    /// The connection was dropped by the fault layer (handled outside `select!`, whose
    /// `wait_for` arm holds the kill switch's read lock that ending the link needs).
    Killed,
}

/// Reads frames whenever no calling thread drives the link, until the peer's goodbye or a
/// failure (see the module docs for when it holds a read registration).
async fn read_loop(
    core: Arc<Core>,
    link: Arc<Link>,
    sock: std::net::TcpStream,
    mut kill: watch::Receiver<bool>,
) {
    let (peer, rail) = (link.peer, link.rail);
    let mut spare = Some(sock);
    let mut watch: Option<AsyncFd<std::net::TcpStream>> = None;
    loop {
        if watch.is_none() && !link.driven.load(Ordering::Acquire) {
            let Some(sock) = spare.take() else { return };
            match register(sock, Interest::READABLE) {
                Ok(a) => {
                    watch = Some(a);
                    link.parked.store(false, Ordering::Release);
                }
                Err((_, e)) => {
                    let mut st = lock(&link.rx);
                    link.end(&core, &mut st, Err(rail_down(rail, peer, e.to_string())));
                    return;
                }
            }
        }
        let step = match &watch {
            Some(a) => tokio::select! {
                g = a.readable() => match g {
                    Ok(mut g) => link.turn(&core, |b| match g.try_io(|s| s.get_ref().read(b)) {
                        Ok(r) => r,
                        Err(_) => Err(std::io::ErrorKind::WouldBlock.into()),
                    }),
                    Err(e) => link.fail(&core, rail_down(rail, peer, e.to_string())),
                },
                _ = link.resume.notified() => Step::Again,
                _ = kill.wait_for(|k| *k) => Step::Killed,
            },
            None => tokio::select! {
                _ = link.resume.notified() => Step::Again,
                _ = tokio::time::sleep(REARM) => Step::Again,
                _ = kill.wait_for(|k| *k) => Step::Killed,
            },
        };
        match step {
            Step::Again => {}
            Step::More => tokio::task::yield_now().await,
            Step::Aside => {
                link.parked.store(true, Ordering::Release);
                spare = watch.take().map(AsyncFd::into_inner);
            }
            Step::Done => return,
            Step::Killed => {
                link.fail(&core, rail_down(rail, peer, "connection dropped"));
                return;
            }
        }
    }
}

impl Link {
    /// One turn of the reader task: reads with `read` unless a calling thread drives the link.
    fn turn(&self, core: &Core, read: impl FnMut(&mut [u8]) -> std::io::Result<usize>) -> Step {
        // A calling thread holds the lock only while it reads, so a busy lock means "later".
        let mut st = match self.rx.try_lock() {
            Ok(st) => st,
            Err(TryLockError::WouldBlock) => return Step::Again,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
        };
        if st.finished {
            return Step::Done;
        }
        // Checked under the lock: once a calling thread has read under it, this task reads
        // nothing until the thread lets go.
        if self.driven.load(Ordering::Acquire) {
            return Step::Aside;
        }
        match st.pump(core, self.peer, self.rail, Until::WouldBlock, read) {
            Ok(Pumped::Idle) => Step::Again,
            Ok(Pumped::More) => Step::More,
            Ok(Pumped::Bye) => {
                self.end(core, &mut st, Ok(()));
                Step::Done
            }
            Err(e) => {
                self.end(core, &mut st, Err(e));
                Step::Done
            }
        }
    }

    /// Ends the link with `e` (unless it has ended already).
    fn fail(&self, core: &Core, e: Error) -> Step {
        self.end(core, &mut lock(&self.rx), Err(e));
        Step::Done
    }
}
