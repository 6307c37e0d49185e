//! `TcpConfig`: the rails, limits, timeouts and job token of a `TcpComm`, and the environment
//! knobs that fill them (one place for every `FERRY_TCP_*` variable).

use std::net::IpAddr;
use std::time::Duration;

use crate::error::{Error, Result};

/// Environment variable: the job token for the rendezvous bootstrap (every rank must see the
/// same value; at least 16 bytes).
pub const FERRY_TCP_TOKEN: &str = "FERRY_TCP_TOKEN";
/// Environment variable: the rails, as comma-separated local IP addresses.
pub const FERRY_TCP_RAILS: &str = "FERRY_TCP_RAILS";
/// Environment variable: the operation timeout in milliseconds.
pub const FERRY_TCP_TIMEOUT_MS: &str = "FERRY_TCP_TIMEOUT_MS";
/// Environment variable: faults to inject from the start (see [`crate::FaultInjector::parse`]).
pub const FERRY_TCP_FAULTS: &str = "FERRY_TCP_FAULTS";
/// Environment variable: how many microseconds a blocking receive busy-polls its sockets
/// before it sleeps (see [`TcpConfig::busy_poll`]).
pub const FERRY_TCP_BUSY_POLL_US: &str = "FERRY_TCP_BUSY_POLL_US";

/// The default busy-poll: measured on the test bed (2 cores) and over loopback on a 16-core
/// node, polling 1 ms instead was no faster at any size (bench/RESULTS.md), and a rank that
/// polls takes a core the others may need.
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(50);

/// How a [`crate::TcpComm`] runs; see each field.
#[derive(Clone, Debug)]
pub struct TcpConfig {
    /// The local address of each rail (one per NIC). Rail `i` of every rank connects to rail
    /// `i` of every other rank, so all ranks need the same number of rails.
    pub rails: Vec<IpAddr>,
    /// The per-job secret every connection presents. The MPI bootstrap generates one on rank 0
    /// when this is `None`; the rendezvous bootstrap requires it (see [`FERRY_TCP_TOKEN`]).
    pub token: Option<Vec<u8>>,
    /// Limit for every blocking operation (send, receive, probe, wait, barrier, split) and for
    /// the bootstrap; on expiry the call fails with [`Error::Timeout`] and leaves nothing
    /// pending.
    pub timeout: Duration,
    /// The longest message accepted from a peer (and sent); longer ones are
    /// [`Error::TooLarge`] when sending, and a protocol error that closes the connection when a
    /// peer announces one.
    pub max_message_bytes: usize,
    /// The longest frame on the wire; a message share is cut into frames of at most this size.
    pub frame_bytes: usize,
    /// Messages shorter than this go whole on the rail of highest weight; longer ones are
    /// striped across rails in proportion to the weights.
    pub stripe_min_bytes: usize,
    /// How long dropping the last handle waits for peers to acknowledge the close.
    pub linger: Duration,
    /// Records kept by the telemetry ring.
    pub telemetry_capacity: usize,
    /// Worker threads of the tokio runtime that does the I/O (at least 1).
    pub io_threads: usize,
    /// How long a blocking receive of a short message, reading its peers' sockets itself,
    /// busy-polls them (`poll(2)` without a timeout) before it sleeps in `poll(2)`. Waking a
    /// sleeping thread costs tens of microseconds, as much as a small message's whole trip;
    /// a busy-polling one takes a core. Default: [`DEFAULT_BUSY_POLL`];
    /// [`FERRY_TCP_BUSY_POLL_US`] overrides it.
    pub busy_poll: Duration,
}

impl TcpConfig {
    /// A configuration with the given rails and defaults for the rest: 120 s timeout, 4 GiB
    /// message limit, 1 MiB frames, striping from 64 KiB, 5 s linger.
    pub fn new(rails: Vec<IpAddr>) -> Self {
        TcpConfig {
            io_threads: rails.len().clamp(2, 4),
            rails,
            token: None,
            timeout: Duration::from_secs(120),
            max_message_bytes: 4 << 30,
            frame_bytes: 1 << 20,
            stripe_min_bytes: 64 << 10,
            linger: Duration::from_secs(5),
            telemetry_capacity: crate::telemetry::DEFAULT_CAPACITY,
            busy_poll: DEFAULT_BUSY_POLL,
        }
    }

    /// Parses a comma-separated list of rail addresses ("127.0.0.1,127.0.0.2").
    pub fn parse_rails(list: &str) -> Result<Vec<IpAddr>> {
        let rails: Vec<IpAddr> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse()
                    .map_err(|_| Error::InvalidArgument(format!("rail {s:?} is not an IP address")))
            })
            .collect::<Result<_>>()?;
        if rails.is_empty() {
            return Err(Error::InvalidArgument("no rails given".into()));
        }
        Ok(rails)
    }

    /// Applies the environment: [`FERRY_TCP_RAILS`], [`FERRY_TCP_TOKEN`] and
    /// [`FERRY_TCP_TIMEOUT_MS`] and [`FERRY_TCP_BUSY_POLL_US`] override the fields when set.
    pub fn with_env(mut self) -> Result<Self> {
        if let Ok(r) = std::env::var(FERRY_TCP_RAILS) {
            self.rails = Self::parse_rails(&r)?;
        }
        if let Ok(t) = std::env::var(FERRY_TCP_TOKEN) {
            self.token = Some(t.into_bytes());
        }
        if let Ok(ms) = std::env::var(FERRY_TCP_TIMEOUT_MS) {
            let ms: u64 = ms.parse().map_err(|_| {
                Error::InvalidArgument(format!("{FERRY_TCP_TIMEOUT_MS}={ms} is not a number"))
            })?;
            self.timeout = Duration::from_millis(ms);
        }
        if let Ok(us) = std::env::var(FERRY_TCP_BUSY_POLL_US) {
            let us: u64 = us.parse().map_err(|_| {
                Error::InvalidArgument(format!(
                    "{FERRY_TCP_BUSY_POLL_US}={us} is not a whole number of microseconds"
                ))
            })?;
            self.busy_poll = Duration::from_micros(us);
        }
        Ok(self)
    }

    /// Checks the fields; every bootstrap calls this first.
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.rails.is_empty() || self.rails.len() > super::wire::MAX_RAILS {
            return bad(format!(
                "{} rails given; 1 to {} are supported",
                self.rails.len(),
                super::wire::MAX_RAILS
            ));
        }
        if let Some(t) = &self.token {
            if t.len() < 16 || t.len() > super::wire::MAX_TOKEN {
                return bad(format!(
                    "the job token has {} bytes; 16 to {} are needed",
                    t.len(),
                    super::wire::MAX_TOKEN
                ));
            }
        }
        if self.frame_bytes == 0 || self.frame_bytes > u32::MAX as usize {
            return bad(format!("frame_bytes {} out of range", self.frame_bytes));
        }
        if self.timeout.is_zero() {
            return bad("the timeout is zero".into());
        }
        Ok(())
    }
}

/// A fresh random job token: 32 random bytes, hex-encoded (64 bytes).
pub(crate) fn random_token() -> Result<Vec<u8>> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| Error::Io {
        what: "generating the job token".into(),
        message: e.to_string(),
    })?;
    Ok(raw
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rails_parse_and_validate() {
        let r = TcpConfig::parse_rails("127.0.0.1, 127.0.0.2").unwrap();
        assert_eq!(r.len(), 2);
        assert!(TcpConfig::parse_rails("").is_err());
        assert!(TcpConfig::parse_rails("eth0").is_err());
        let mut c = TcpConfig::new(r);
        c.validate().unwrap();
        c.token = Some(b"short".to_vec());
        assert!(matches!(c.validate(), Err(Error::InvalidArgument(_))));
        assert_eq!(random_token().unwrap().len(), 64);
        assert_ne!(random_token().unwrap(), random_token().unwrap());
    }
}
