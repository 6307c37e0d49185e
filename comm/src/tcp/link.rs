//! One rail connection to one peer: the writer task that sends message shares (through the
//! fault layer) and the reader task that feeds frames to the matching engine.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch};

use super::Core;
use super::fault::Bucket;
use super::wire::{FrameHeader, HEADER_BYTES, KIND_BYE, KIND_DATA};
use crate::error::{Error, Result};
use crate::telemetry::Record;

/// The completion of one send: how many shares are still on their way, and the first error.
#[derive(Debug)]
pub(crate) struct SendTicket {
    state: Mutex<(usize, Option<Error>)>,
    cv: Condvar,
    /// For an eager send (completed to its caller before it was written): the peer's count of
    /// bytes in flight, and this send's bytes, given back once every share is finished.
    credit: Option<(Arc<AtomicUsize>, usize)>,
}

impl SendTicket {
    pub(crate) fn new(shares: usize) -> Arc<Self> {
        Arc::new(SendTicket {
            state: Mutex::new((shares, None)),
            cv: Condvar::new(),
            credit: None,
        })
    }

    /// A ticket for an eager send of `bytes`, counted in `in_flight` until it is written.
    pub(crate) fn eager(shares: usize, in_flight: Arc<AtomicUsize>, bytes: usize) -> Arc<Self> {
        Arc::new(SendTicket {
            state: Mutex::new((shares, None)),
            cv: Condvar::new(),
            credit: Some((in_flight, bytes)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, Option<Error>)> {
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
        self.cv.notify_all();
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
            s = self
                .cv
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
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
    /// Send the goodbye frame and close the sending half.
    Bye,
}

/// The handle a `TcpComm` keeps for one connection.
pub(crate) struct LinkTx {
    pub(crate) jobs: mpsc::UnboundedSender<Job>,
}

/// Starts the writer and reader tasks of the connection to world rank `peer` on `rail`.
pub(crate) fn spawn(
    rt: &tokio::runtime::Handle,
    core: &Arc<Core>,
    stream: tokio::net::TcpStream,
    peer: usize,
    rail: usize,
) -> (
    LinkTx,
    tokio::task::JoinHandle<()>,
    tokio::task::JoinHandle<()>,
) {
    let (kill_tx, kill_rx) = watch::channel(false);
    core.faults.register_kill(rail, peer, kill_tx.clone());
    let (jobs, rx) = mpsc::unbounded_channel();
    let (r, w) = stream.into_split();
    let writer = rt.spawn(write_loop(
        Arc::clone(core),
        w,
        rx,
        kill_rx.clone(),
        peer,
        rail,
    ));
    let reader = rt.spawn(read_loop(Arc::clone(core), r, kill_tx, kill_rx, peer, rail));
    (LinkTx { jobs }, writer, reader)
}

fn rail_down(rail: usize, peer: usize, reason: impl Into<String>) -> Error {
    Error::RailDown {
        rail,
        peer,
        reason: reason.into(),
    }
}

async fn write_loop(
    core: Arc<Core>,
    w: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Job>,
    mut kill: watch::Receiver<bool>,
    peer: usize,
    rail: usize,
) {
    let mut w = BufWriter::with_capacity(64 << 10, w);
    let mut bucket = Bucket::new();
    loop {
        let job = tokio::select! {
            j = rx.recv() => j,
            _ = kill.wait_for(|k| *k) => None,
        };
        let Some(job) = job else { break };
        match job {
            Job::Bye => {
                let h = FrameHeader {
                    kind: KIND_BYE,
                    ..Default::default()
                };
                let _ = w.write_all(&h.encode()).await;
                let _ = w.flush().await;
                let _ = w.shutdown().await;
                break;
            }
            Job::Share(mut share) => {
                let result = tokio::select! {
                    r = write_share(&core, &mut w, &mut share, &mut bucket, peer, rail) => r,
                    _ = kill.wait_for(|k| *k) => Err(rail_down(rail, peer, "connection dropped")),
                };
                let failed = result.is_err();
                if let Err(e) = &result {
                    tracing::warn!(rail, peer, "ferry-tcp: send failed: {e}");
                    core.link_failed(peer, rail, e.clone());
                }
                share.finish(result);
                if failed {
                    break;
                }
            }
        }
    }
    // Later shares are dropped with the channel, which fails their tickets.
    rx.close();
    while let Ok(mut job) = rx.try_recv() {
        if let Job::Share(s) = &mut job {
            s.finish(Err(rail_down(rail, peer, "the connection is closed")));
        }
    }
}

async fn write_share(
    core: &Core,
    w: &mut BufWriter<OwnedWriteHalf>,
    share: &mut Share,
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
        w.write_all(&h.encode()).await.map_err(io)?;
        let payload = &share.data[done..done + n];
        // Under a cap, write in pieces so the pacing is smooth.
        for piece in payload.chunks(64 << 10) {
            let f = core.faults.current(rail, peer);
            if let Some(until) = f.stall_until.filter(|u| *u > Instant::now()) {
                w.flush().await.map_err(io)?;
                tokio::time::sleep_until(until.into()).await;
            }
            if let Some(rate) = f.cap {
                let pause = bucket.take(piece.len(), rate);
                if !pause.is_zero() {
                    w.flush().await.map_err(io)?;
                    tokio::time::sleep(pause).await;
                }
            }
            w.write_all(piece).await.map_err(io)?;
        }
        done += n;
        if done >= len {
            break;
        }
    }
    w.flush().await.map_err(io)?;
    let end = core.telemetry.now_ns();
    core.telemetry.record(
        Record::new("send", len as u64, share.start_ns, end)
            .with_peer(peer)
            .with_rail(rail)
            .with_wait(write_start.saturating_sub(share.start_ns)),
    );
    Ok(())
}

async fn read_loop(
    core: Arc<Core>,
    r: OwnedReadHalf,
    kill_tx: watch::Sender<bool>,
    mut kill: watch::Receiver<bool>,
    peer: usize,
    rail: usize,
) {
    let mut r = BufReader::with_capacity(64 << 10, r);
    let outcome = tokio::select! {
        o = read_frames(&core, &mut r, peer, rail) => o,
        _ = kill.wait_for(|k| *k) => Err(rail_down(rail, peer, "connection dropped")),
    };
    match outcome {
        Ok(()) => core.link_bye(peer, rail),
        Err(e) => {
            if !core.closing() {
                tracing::warn!(rail, peer, "ferry-tcp: {e}");
            }
            // Stop the writer too, so the socket closes and the peer sees the rail down.
            let _ = kill_tx.send(true);
            core.link_failed(peer, rail, e);
        }
    }
}

/// Reads frames until the peer's goodbye (`Ok`) or a failure.
async fn read_frames(
    core: &Core,
    r: &mut BufReader<OwnedReadHalf>,
    peer: usize,
    rail: usize,
) -> Result<()> {
    let io = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            rail_down(
                rail,
                peer,
                "the peer closed the connection without a goodbye",
            )
        } else {
            rail_down(rail, peer, e.to_string())
        }
    };
    let mut share_start = 0u64;
    loop {
        let mut hb = [0u8; HEADER_BYTES];
        r.read_exact(&mut hb).await.map_err(io)?;
        let arrived = core.telemetry.now_ns();
        let h = FrameHeader::decode(&hb, core.config.frame_bytes, core.config.max_message_bytes)
            .map_err(|e| rail_down(rail, peer, e.to_string()))?;
        if h.kind == KIND_BYE {
            return Ok(());
        }
        if h.offset == h.share_offset {
            share_start = arrived;
        }
        let mut payload = vec![0u8; h.len as usize];
        r.read_exact(&mut payload).await.map_err(io)?;
        let share_done = h.offset + h.len as u64 == h.share_offset + h.share_len;
        {
            let mut engine = core.engine();
            engine
                .frame(peer, &h, payload)
                .map_err(|e| rail_down(rail, peer, e.to_string()))?;
        }
        core.cv.notify_all();
        if share_done {
            core.telemetry.record(
                Record::new("recv", h.share_len, share_start, core.telemetry.now_ns())
                    .with_peer(peer)
                    .with_rail(rail),
            );
        }
    }
}
