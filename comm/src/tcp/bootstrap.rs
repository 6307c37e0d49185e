//! How the ranks of a `TcpComm` job find and authenticate each other.
//!
//! 1. Every rank binds one listener per rail (its rail address, port 0).
//! 2. The address table (`table[rank][rail]` = "ip:port") and the job token reach every rank,
//!    either through an existing communicator (MPI under `mpirun`: rank 0 makes the token and
//!    gathers and hands out the table) or through a rendezvous address where rank 0 listens
//!    and each other rank registers with the token from its environment.
//! 3. Rank `r` connects to every lower rank on every rail, from its own rail address, and says
//!    hello (rank, size, rail, token). The acceptor checks the token, that the rank is higher
//!    than its own, that the source address is that rank's rail address in the table, and that
//!    the connection is not a duplicate; it answers with a verdict. Anything else is refused
//!    and logged. After the bootstrap the listeners stay open and refuse every newcomer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::config::TcpConfig;
use super::wire::{
    self, HELLO_FIXED, HELLO_MAGIC, Hello, MAX_ADDR, MAX_RAILS, RENDEZVOUS_MAGIC, Reader, Table,
    Verdict,
};
use crate::error::{Error, Result};

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |e| Error::Io {
        what,
        message: e.to_string(),
    }
}

fn timeout_err(what: &str, d: Duration) -> Error {
    Error::Timeout {
        what: what.into(),
        millis: d.as_millis() as u64,
    }
}

/// Binds one listener per rail; returns them and their addresses.
pub(crate) async fn bind_rails(cfg: &TcpConfig) -> Result<(Vec<TcpListener>, Vec<String>)> {
    let mut listeners = Vec::new();
    let mut addrs = Vec::new();
    for ip in &cfg.rails {
        let l = TcpListener::bind(SocketAddr::new(*ip, 0))
            .await
            .map_err(io_err(format!("binding a listener on rail address {ip}")))?;
        let a = l
            .local_addr()
            .map_err(io_err("reading a listener address"))?;
        addrs.push(a.to_string());
        listeners.push(l);
    }
    Ok((listeners, addrs))
}

/// Checks that the table describes a job of `size` ranks with `rails` rails each.
pub(crate) fn check_table(table: &Table, size: usize, rails: usize) -> Result<()> {
    if table.len() != size {
        return Err(Error::InvalidArgument(format!(
            "address table has {} ranks for a job of {size}",
            table.len()
        )));
    }
    for (r, row) in table.iter().enumerate() {
        if row.len() != rails {
            return Err(Error::InvalidArgument(format!(
                "rank {r} has {} rails, this rank {rails}: every rank needs the same number",
                row.len()
            )));
        }
        for a in row {
            a.parse::<SocketAddr>().map_err(|_| {
                Error::InvalidArgument(format!("rank {r} sent a bad address {a:?}"))
            })?;
        }
    }
    Ok(())
}

/// What a rail listener needs to judge a hello.
pub(crate) struct Gate {
    pub(crate) rank: usize,
    pub(crate) size: usize,
    pub(crate) rails: usize,
    pub(crate) token: Vec<u8>,
    pub(crate) table: Table,
    /// Set once the bootstrap has all its connections: every later hello is refused.
    pub(crate) sealed: AtomicBool,
    pub(crate) refused: Arc<AtomicU64>,
}

/// Accepts connections on one rail forever: valid hellos during the bootstrap go to `out`,
/// everything else is refused and logged.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    rail: usize,
    gate: Arc<Gate>,
    out: mpsc::UnboundedSender<(usize, usize, TcpStream)>,
    handshake_limit: Duration,
) {
    let seen = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    loop {
        let Ok((stream, from)) = listener.accept().await else {
            continue;
        };
        let (gate, out, seen) = (Arc::clone(&gate), out.clone(), Arc::clone(&seen));
        tokio::spawn(async move {
            let judged =
                tokio::time::timeout(handshake_limit, judge(stream, from, rail, &gate, &seen))
                    .await;
            match judged {
                Ok(Ok((peer, stream))) => {
                    let _ = out.send((peer, rail, stream));
                }
                Ok(Err(why)) => {
                    gate.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(rail, %from, "ferry-tcp: refused a connection: {why}");
                }
                Err(_) => {
                    gate.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(rail, %from, "ferry-tcp: refused a connection: no hello in time");
                }
            }
        });
    }
}

/// Reads and judges one hello; answers with the verdict.
async fn judge(
    mut s: TcpStream,
    from: SocketAddr,
    rail: usize,
    gate: &Gate,
    seen: &std::sync::Mutex<std::collections::HashSet<usize>>,
) -> std::result::Result<(usize, TcpStream), String> {
    let mut fixed = [0u8; HELLO_FIXED];
    s.read_exact(&mut fixed).await.map_err(|e| e.to_string())?;
    let verdict = match Hello::decode_fixed(&fixed) {
        None => (Verdict::BadMagic, 0),
        Some((h, n)) => {
            let mut token = vec![0u8; n];
            s.read_exact(&mut token).await.map_err(|e| e.to_string())?;
            let peer = h.rank as usize;
            let expected_ip = gate
                .table
                .get(peer)
                .and_then(|row| row.get(rail))
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .map(|a| a.ip());
            let v = if !wire::token_eq(&token, &gate.token) {
                Verdict::BadToken
            } else if h.size as usize != gate.size
                || h.rails as usize != gate.rails
                || h.rail as usize != rail
            {
                Verdict::WrongJob
            } else if peer <= gate.rank || peer >= gate.size || expected_ip != Some(from.ip()) {
                Verdict::UnknownPeer
            } else if gate.sealed.load(Ordering::Acquire)
                || !seen.lock().unwrap_or_else(|e| e.into_inner()).insert(peer)
            {
                Verdict::Duplicate
            } else {
                Verdict::Accepted
            };
            (v, peer)
        }
    };
    let mut reply = HELLO_MAGIC.to_vec();
    reply.push(verdict.0 as u8);
    let _ = s.write_all(&reply).await;
    if verdict.0 == Verdict::Accepted {
        Ok((verdict.1, s))
    } else {
        Err(format!(
            "{} (claimed rank {})",
            verdict.0.describe(),
            verdict.1
        ))
    }
}

/// Connects from local rail address `local` to `to` and says hello; fails if refused.
async fn connect_one(
    local: std::net::IpAddr,
    to: SocketAddr,
    hello: Hello,
    peer: usize,
) -> Result<TcpStream> {
    let rail = hello.rail as usize;
    let sock = if local.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(io_err("creating a socket"))?;
    sock.bind(SocketAddr::new(local, 0))
        .map_err(io_err(format!("binding rail {rail} to {local}")))?;
    let mut s = sock.connect(to).await.map_err(io_err(format!(
        "connecting rail {rail} to rank {peer} at {to}"
    )))?;
    s.set_nodelay(true).map_err(io_err("setting TCP_NODELAY"))?;
    s.write_all(&hello.encode())
        .await
        .map_err(io_err("sending the hello"))?;
    let mut reply = [0u8; 9];
    s.read_exact(&mut reply).await.map_err(io_err(format!(
        "reading rank {peer}'s verdict on rail {rail}"
    )))?;
    let v = Verdict::from_u8(reply[8]);
    if &reply[..8] != HELLO_MAGIC || v != Verdict::Accepted {
        return Err(Error::Refused(format!(
            "rank {peer} refused rail {rail}: {}",
            v.describe()
        )));
    }
    Ok(s)
}

/// Step 3: connects to lower ranks and accepts higher ones; returns every connection by
/// (peer, rail). Leaves the listeners running (sealed) to refuse latecomers.
pub(crate) async fn connect_all(
    cfg: &TcpConfig,
    rank: usize,
    table: Table,
    token: Vec<u8>,
    listeners: Vec<TcpListener>,
    refused: Arc<AtomicU64>,
) -> Result<HashMap<(usize, usize), TcpStream>> {
    let size = table.len();
    let rails = cfg.rails.len();
    check_table(&table, size, rails)?;
    let deadline = Instant::now() + cfg.timeout;
    let gate = Arc::new(Gate {
        rank,
        size,
        rails,
        token: token.clone(),
        table: table.clone(),
        sealed: AtomicBool::new(false),
        refused,
    });
    let (tx, mut rx) = mpsc::unbounded_channel();
    for (rail, l) in listeners.into_iter().enumerate() {
        tokio::spawn(accept_loop(
            l,
            rail,
            Arc::clone(&gate),
            tx.clone(),
            cfg.timeout.min(Duration::from_secs(10)),
        ));
    }
    drop(tx);
    let mut conns = HashMap::new();
    let mut dials = tokio::task::JoinSet::new();
    for (peer, row) in table.iter().enumerate().take(rank) {
        for (rail, local) in cfg.rails.iter().enumerate() {
            let to: SocketAddr = row[rail].parse().expect("checked by check_table");
            let hello = Hello {
                rank: rank as u32,
                size: size as u32,
                rail: rail as u32,
                rails: rails as u32,
                token: token.clone(),
            };
            let local = *local;
            dials.spawn(async move {
                connect_one(local, to, hello, peer)
                    .await
                    .map(|s| (peer, rail, s))
            });
        }
    }
    let expected_in = (size - rank - 1) * rails;
    let mut got_in = 0;
    let all = async {
        while let Some(r) = dials.join_next().await {
            let (peer, rail, s) = r.map_err(|e| Error::Io {
                what: "a connecting task".into(),
                message: e.to_string(),
            })??;
            conns.insert((peer, rail), s);
        }
        while got_in < expected_in {
            match rx.recv().await {
                Some((peer, rail, s)) => {
                    if conns.insert((peer, rail), s).is_none() {
                        got_in += 1;
                    }
                }
                None => break,
            }
        }
        Ok::<_, Error>(())
    };
    match tokio::time::timeout_at(deadline, all).await {
        Ok(r) => r?,
        Err(_) => {
            let missing: Vec<_> = (0..size)
                .flat_map(|p| (0..rails).map(move |r| (p, r)))
                .filter(|&(p, r)| p != rank && !conns.contains_key(&(p, r)))
                .collect();
            return Err(Error::Timeout {
                what: format!("connecting rails (missing (rank, rail) {missing:?})"),
                millis: cfg.timeout.as_millis() as u64,
            });
        }
    }
    gate.sealed.store(true, Ordering::Release);
    for s in conns.values() {
        s.set_nodelay(true).map_err(io_err("setting TCP_NODELAY"))?;
    }
    Ok(conns)
}

/// Step 2 through a rendezvous address: returns the address table. Rank 0 listens at `addr`
/// and waits for every other rank's registration; the others connect (retrying until the
/// timeout, since rank 0 may start later) and register.
pub(crate) async fn rendezvous(
    addr: &str,
    rank: usize,
    size: usize,
    cfg: &TcpConfig,
    token: &[u8],
    mine: Vec<String>,
    refused: &AtomicU64,
) -> Result<Table> {
    let limit = cfg.timeout;
    let deadline = Instant::now() + limit;
    if rank == 0 {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(io_err(format!("binding the rendezvous address {addr}")))?;
        let mut table: Table = vec![Vec::new(); size];
        table[0] = mine;
        let mut waiting: Vec<(usize, TcpStream)> = Vec::new();
        let gather = async {
            while waiting.len() < size - 1 {
                let (mut s, from) = listener
                    .accept()
                    .await
                    .map_err(io_err("accepting at the rendezvous"))?;
                let reg = tokio::time::timeout(
                    Duration::from_secs(10).min(limit),
                    read_registration(&mut s),
                )
                .await
                .unwrap_or_else(|_| Err(Error::Refused("no registration in time".into())));
                let verdict = match &reg {
                    Err(_) => Verdict::BadMagic,
                    Ok((_, _, t, _)) if !wire::token_eq(t, token) => Verdict::BadToken,
                    Ok((_, n, _, _)) if *n as usize != size => Verdict::WrongJob,
                    Ok((r, _, _, _)) if *r == 0 || *r as usize >= size => Verdict::UnknownPeer,
                    Ok((r, _, _, _)) if !table[*r as usize].is_empty() => Verdict::Duplicate,
                    Ok(_) => Verdict::Accepted,
                };
                if verdict != Verdict::Accepted {
                    refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%from, "ferry-tcp: rendezvous refused a registration: {}{}",
                        verdict.describe(),
                        reg.as_ref().err().map(|e| format!(" ({e})")).unwrap_or_default());
                    let mut reply = RENDEZVOUS_MAGIC.to_vec();
                    reply.push(verdict as u8);
                    let _ = s.write_all(&reply).await;
                    continue;
                }
                let (r, _, _, addrs) = reg.expect("accepted");
                table[r as usize] = addrs;
                waiting.push((r as usize, s));
            }
            Ok::<_, Error>(())
        };
        match tokio::time::timeout_at(deadline, gather).await {
            Ok(r) => r?,
            Err(_) => {
                let missing: Vec<usize> = (1..size).filter(|r| table[*r].is_empty()).collect();
                return Err(Error::Timeout {
                    what: format!("rendezvous at {addr} (ranks {missing:?} never registered)"),
                    millis: limit.as_millis() as u64,
                });
            }
        }
        let body = wire::encode_table(&table);
        let mut reply = RENDEZVOUS_MAGIC.to_vec();
        reply.push(Verdict::Accepted as u8);
        reply.extend_from_slice(&(body.len() as u32).to_le_bytes());
        reply.extend_from_slice(&body);
        for (r, mut s) in waiting {
            s.write_all(&reply)
                .await
                .map_err(io_err(format!("sending the table to rank {r}")))?;
        }
        return Ok(table);
    }
    // Other ranks: connect with retries, register, read the table.
    let mut s = loop {
        match TcpStream::connect(addr).await {
            Ok(s) => break s,
            Err(e) if Instant::now() + Duration::from_millis(50) < deadline => {
                tracing::debug!("ferry-tcp: rendezvous {addr} not reachable yet: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                return Err(Error::Io {
                    what: format!("reaching the rendezvous address {addr}"),
                    message: e.to_string(),
                });
            }
        }
    };
    let mut reg = Vec::new();
    reg.extend_from_slice(RENDEZVOUS_MAGIC);
    let mut body = Vec::new();
    body.extend_from_slice(&(rank as u32).to_le_bytes());
    body.extend_from_slice(&(size as u32).to_le_bytes());
    body.extend_from_slice(&(token.len() as u16).to_le_bytes());
    body.extend_from_slice(token);
    body.extend_from_slice(&(mine.len() as u16).to_le_bytes());
    for a in &mine {
        wire::put_str(&mut body, a);
    }
    reg.extend_from_slice(&(body.len() as u32).to_le_bytes());
    reg.extend_from_slice(&body);
    let exchange = async {
        s.write_all(&reg)
            .await
            .map_err(io_err("registering at the rendezvous"))?;
        let mut head = [0u8; 9];
        s.read_exact(&mut head)
            .await
            .map_err(io_err("reading the rendezvous verdict"))?;
        let v = Verdict::from_u8(head[8]);
        if &head[..8] != RENDEZVOUS_MAGIC || v != Verdict::Accepted {
            return Err(Error::Refused(format!(
                "the rendezvous at {addr} refused rank {rank}: {}",
                v.describe()
            )));
        }
        let mut n = [0u8; 4];
        s.read_exact(&mut n)
            .await
            .map_err(io_err("reading the table length"))?;
        let n = u32::from_le_bytes(n) as usize;
        let bound = 4 + size * (2 + MAX_RAILS * (1 + MAX_ADDR));
        if n > bound {
            return Err(Error::InvalidArgument(format!(
                "an address table of {n} bytes"
            )));
        }
        let mut body = vec![0u8; n];
        s.read_exact(&mut body)
            .await
            .map_err(io_err("reading the table"))?;
        wire::decode_table(&body)
    };
    tokio::time::timeout_at(deadline, exchange)
        .await
        .map_err(|_| timeout_err(&format!("rendezvous at {addr}"), limit))?
}

/// Reads one registration: (rank, size, token, rail addresses).
async fn read_registration(s: &mut TcpStream) -> Result<(u32, u32, Vec<u8>, Vec<String>)> {
    let mut head = [0u8; 12];
    s.read_exact(&mut head)
        .await
        .map_err(io_err("reading a registration"))?;
    if &head[..8] != RENDEZVOUS_MAGIC {
        return Err(Error::InvalidArgument("not a ferry registration".into()));
    }
    let n = u32::from_le_bytes(head[8..12].try_into().expect("4")) as usize;
    if n > 4 + 4 + 2 + wire::MAX_TOKEN + 2 + MAX_RAILS * (1 + MAX_ADDR) {
        return Err(Error::InvalidArgument(format!(
            "a registration of {n} bytes"
        )));
    }
    let mut body = vec![0u8; n];
    s.read_exact(&mut body)
        .await
        .map_err(io_err("reading a registration"))?;
    let mut r = Reader::new(&body);
    let rank = r.u32()?;
    let size = r.u32()?;
    let tn = r.u16()? as usize;
    let token = r.take(tn)?.to_vec();
    let k = r.u16()? as usize;
    if k > MAX_RAILS {
        return Err(Error::InvalidArgument(format!("{k} rails")));
    }
    let addrs = (0..k).map(|_| r.str()).collect::<Result<Vec<_>>>()?;
    Ok((rank, size, token, addrs))
}
