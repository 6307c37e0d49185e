//! Fault injection for `TcpComm`, per rail and peer: added delay per message share, a bandwidth
//! cap (token bucket), a stall for a duration, and dropping the connection. The kernel here has
//! no `netem`, so tests and the fault campaign inject network trouble at the sender's writer.
//!
//! Faults apply to what this rank *sends* on a (rail, peer) link; a dropped connection fails
//! both directions, as a pulled cable would.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::error::{Error, Result};

/// One fault; see [`FaultInjector::inject`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Every message share sent on the link waits this long before its first byte.
    Delay(Duration),
    /// The link carries at most this many bytes per second (a token bucket with a burst of
    /// 64 KiB or 10 ms of traffic, whichever is larger).
    BandwidthCap(f64),
    /// Nothing is sent on the link for this long, starting now.
    Stall(Duration),
    /// The connection is closed at once without a goodbye; both ends see the rail down.
    DropConnection,
}

/// The faults in force on one link.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct LinkFaults {
    pub(crate) delay: Option<Duration>,
    pub(crate) cap: Option<f64>,
    pub(crate) stall_until: Option<Instant>,
}

/// The fault switchboard of one `TcpComm` (shared by its sub-communicators); get it with
/// [`crate::TcpComm::faults`]. Changes take effect at the next frame a link sends.
#[derive(Debug)]
pub struct FaultInjector {
    rails: usize,
    size: usize,
    /// Keyed by (rail, peer world rank or `None` for every peer).
    faults: Mutex<HashMap<(usize, Option<usize>), LinkFaults>>,
    /// Kill switches of the live connections, by (rail, peer).
    kills: Mutex<HashMap<(usize, usize), watch::Sender<bool>>>,
}

impl FaultInjector {
    pub(crate) fn new(rails: usize, size: usize) -> Self {
        FaultInjector {
            rails,
            size,
            faults: Mutex::new(HashMap::new()),
            kills: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn register_kill(&self, rail: usize, peer: usize, kill: watch::Sender<bool>) {
        lock(&self.kills).insert((rail, peer), kill);
    }

    /// Injects `fault` on `rail` towards `peer` (a world rank), or towards every peer with
    /// `None`. Delay, cap and stall replace an earlier fault of the same kind on that key.
    /// [`Error::InvalidArgument`] for a rail or peer out of range or a cap that is not positive.
    pub fn inject(&self, rail: usize, peer: Option<usize>, fault: Fault) -> Result<()> {
        if rail >= self.rails {
            return Err(Error::InvalidArgument(format!(
                "fault on rail {rail}, but there are {} rails",
                self.rails
            )));
        }
        if let Some(p) = peer {
            if p >= self.size {
                return Err(Error::InvalidArgument(format!(
                    "fault towards rank {p}, but the job has {} ranks",
                    self.size
                )));
            }
        }
        tracing::info!(rail, ?peer, ?fault, "ferry-tcp: injecting a fault");
        match fault {
            Fault::DropConnection => {
                let kills = lock(&self.kills);
                for ((r, p), k) in kills.iter() {
                    if *r == rail && peer.is_none_or(|q| q == *p) {
                        let _ = k.send(true);
                    }
                }
                return Ok(());
            }
            Fault::BandwidthCap(c) if !(c.is_finite() && c > 0.0) => {
                return Err(Error::InvalidArgument(format!(
                    "bandwidth cap {c} is not a positive number of bytes per second"
                )));
            }
            _ => {}
        }
        let mut faults = lock(&self.faults);
        let f = faults.entry((rail, peer)).or_default();
        match fault {
            Fault::Delay(d) => f.delay = Some(d),
            Fault::BandwidthCap(c) => f.cap = Some(c),
            Fault::Stall(d) => f.stall_until = Some(Instant::now() + d),
            Fault::DropConnection => unreachable!("handled above"),
        }
        Ok(())
    }

    /// Removes the delay, cap and stall set for (`rail`, `peer`) (a dropped connection stays
    /// dropped).
    pub fn clear(&self, rail: usize, peer: Option<usize>) {
        lock(&self.faults).remove(&(rail, peer));
    }

    /// Removes every delay, cap and stall.
    pub fn clear_all(&self) {
        lock(&self.faults).clear();
    }

    /// What applies to the link (rail, peer) now: the entry for the peer, else the one for
    /// every peer.
    pub(crate) fn current(&self, rail: usize, peer: usize) -> LinkFaults {
        let faults = lock(&self.faults);
        if faults.is_empty() {
            return LinkFaults::default();
        }
        let any = faults.get(&(rail, None)).copied().unwrap_or_default();
        let one = faults.get(&(rail, Some(peer))).copied().unwrap_or_default();
        LinkFaults {
            delay: one.delay.or(any.delay),
            cap: one.cap.or(any.cap),
            stall_until: one.stall_until.or(any.stall_until),
        }
    }

    /// Parses a fault list, as in [`super::config::FERRY_TCP_FAULTS`]: entries separated by
    /// `;`, each a set of `key=value` words separated by `,` or spaces: `rail=N` (required),
    /// `peer=N` or `peer=*` (default every peer), and one of `delay_ms=F`, `cap=F` (bytes per
    /// second; suffixes k, M, G multiply by 10^3, 10^6, 10^9), `stall_ms=F`, or the word `drop`.
    /// Example: `rail=1,cap=10M; rail=0,peer=2,delay_ms=5`.
    pub fn parse(spec: &str) -> Result<Vec<(usize, Option<usize>, Fault)>> {
        let mut out = Vec::new();
        for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = |why: &str| Error::InvalidArgument(format!("fault {entry:?}: {why}"));
            let (mut rail, mut peer, mut fault) = (None, None, None);
            for word in entry
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|w| !w.is_empty())
            {
                let (k, v) = word.split_once('=').unwrap_or((word, ""));
                let num = || v.parse::<f64>().map_err(|_| bad("not a number"));
                let ms = |x: f64| Duration::from_secs_f64(x.max(0.0) / 1e3);
                match k {
                    "rail" => rail = Some(v.parse::<usize>().map_err(|_| bad("bad rail"))?),
                    "peer" if v == "*" => peer = None,
                    "peer" => peer = Some(v.parse::<usize>().map_err(|_| bad("bad peer"))?),
                    "delay_ms" => fault = Some(Fault::Delay(ms(num()?))),
                    "stall_ms" => fault = Some(Fault::Stall(ms(num()?))),
                    "cap" => {
                        let (digits, scale) = match v.chars().last() {
                            Some('k') => (&v[..v.len() - 1], 1e3),
                            Some('M') => (&v[..v.len() - 1], 1e6),
                            Some('G') => (&v[..v.len() - 1], 1e9),
                            _ => (v, 1.0),
                        };
                        let c: f64 = digits.parse().map_err(|_| bad("bad cap"))?;
                        fault = Some(Fault::BandwidthCap(c * scale));
                    }
                    "drop" => fault = Some(Fault::DropConnection),
                    _ => return Err(bad(&format!("unknown word {word:?}"))),
                }
            }
            let rail = rail.ok_or_else(|| bad("no rail="))?;
            let fault = fault.ok_or_else(|| bad("no fault (delay_ms, cap, stall_ms, drop)"))?;
            out.push((rail, peer, fault));
        }
        Ok(out)
    }
}

/// A token bucket for one link's bandwidth cap.
#[derive(Debug)]
pub(crate) struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub(crate) fn new() -> Self {
        Bucket {
            tokens: 0.0,
            last: Instant::now(),
        }
    }

    /// Takes `bytes` at `rate` bytes/s; returns how long to wait before sending them.
    pub(crate) fn take(&mut self, bytes: usize, rate: f64) -> Duration {
        let now = Instant::now();
        let burst = (rate * 0.01).max(64.0 * 1024.0);
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * rate).min(burst);
        self.last = now;
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate)
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update under these locks is a single insert or remove, so a poisoned lock still
    // holds consistent data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_fault_lists() {
        let f =
            FaultInjector::parse("rail=1,cap=10M; rail=0 peer=2 delay_ms=5;rail=0,drop").unwrap();
        assert_eq!(f.len(), 3);
        assert_eq!(f[0], (1, None, Fault::BandwidthCap(10e6)));
        assert_eq!(f[1], (0, Some(2), Fault::Delay(Duration::from_millis(5))));
        assert_eq!(f[2], (0, None, Fault::DropConnection));
        assert!(FaultInjector::parse("cap=1").is_err());
        assert!(FaultInjector::parse("rail=0,bogus=1").is_err());
        assert!(FaultInjector::parse("rail=0").is_err());
    }

    #[test]
    fn inject_checks_and_merges() {
        let inj = FaultInjector::new(2, 3);
        assert!(inj.inject(2, None, Fault::Delay(Duration::ZERO)).is_err());
        assert!(
            inj.inject(0, Some(3), Fault::Delay(Duration::ZERO))
                .is_err()
        );
        assert!(inj.inject(0, None, Fault::BandwidthCap(0.0)).is_err());
        inj.inject(1, None, Fault::BandwidthCap(5.0)).unwrap();
        inj.inject(1, Some(2), Fault::Delay(Duration::from_millis(3)))
            .unwrap();
        let f = inj.current(1, 2);
        assert_eq!(f.cap, Some(5.0));
        assert_eq!(f.delay, Some(Duration::from_millis(3)));
        assert_eq!(inj.current(0, 2), LinkFaults::default());
        inj.clear_all();
        assert_eq!(inj.current(1, 2), LinkFaults::default());
    }

    #[test]
    fn bucket_paces_to_the_rate() {
        let mut b = Bucket::new();
        // 1 MB at 1 MB/s with an empty bucket: about one second of debt.
        let w = b.take(1_000_000, 1e6);
        assert!(
            w > Duration::from_millis(900) && w <= Duration::from_secs(1),
            "{w:?}"
        );
    }
}
