//! Wire-level tests of `TcpComm`: a rank played by hand over plain sockets sends a bogus frame
//! header, and the real rank refuses it without allocating, reporting a typed error; and the
//! direct path (the calling thread's own socket I/O) against the writer and reader tasks:
//! order across paths and rails, no deadlock, faults and telemetry.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::wire::{self, FrameHeader, HELLO_MAGIC, Hello, KIND_DATA, RENDEZVOUS_MAGIC};
use super::{Fault, TcpComm, TcpConfig};
use crate::comm::{Comm, Source, TagMatch};
use crate::error::Error;

const TOKEN: &[u8] = b"wire-test-token-0123456789abcdef";

/// Registers a hand-played rank 1 at the rendezvous and connects its rail 0 to rank 0.
fn impostor_rank_1(addr: &str) -> TcpStream {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mine = listener.local_addr().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("rendezvous unreachable: {e}"),
        }
    };
    let mut body = Vec::new();
    body.extend_from_slice(&1u32.to_le_bytes());
    body.extend_from_slice(&2u32.to_le_bytes());
    body.extend_from_slice(&(TOKEN.len() as u16).to_le_bytes());
    body.extend_from_slice(TOKEN);
    body.extend_from_slice(&1u16.to_le_bytes());
    wire::put_str(&mut body, &mine);
    let mut reg = RENDEZVOUS_MAGIC.to_vec();
    reg.extend_from_slice(&(body.len() as u32).to_le_bytes());
    reg.extend_from_slice(&body);
    s.write_all(&reg).unwrap();
    let mut head = [0u8; 13];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head[8], 0, "registration refused");
    let mut table = vec![0u8; u32::from_le_bytes(head[9..13].try_into().unwrap()) as usize];
    s.read_exact(&mut table).unwrap();
    let table = wire::decode_table(&table).unwrap();
    let mut rail = TcpStream::connect(table[0][0].as_str()).unwrap();
    let hello = Hello {
        rank: 1,
        size: 2,
        rail: 0,
        rails: 1,
        token: TOKEN.to_vec(),
    };
    rail.write_all(&hello.encode()).unwrap();
    let mut reply = [0u8; 9];
    rail.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[..8], HELLO_MAGIC);
    assert_eq!(reply[8], 0, "rail hello refused");
    rail
}

/// A loopback address with a port free now (for a rendezvous).
fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string()
}

fn bogus_header_gives_a_typed_error(h: FrameHeader) {
    let addr = free_addr();
    std::thread::scope(|s| {
        let a = &addr;
        let real = s.spawn(move || {
            let mut c = TcpConfig::new(vec!["127.0.0.1".parse().unwrap()]);
            c.token = Some(TOKEN.to_vec());
            c.timeout = Duration::from_secs(10);
            c.max_message_bytes = 1 << 30;
            c.linger = Duration::from_millis(200);
            let comm = TcpComm::rendezvous(a, 0, 2, c).unwrap();
            let t = Instant::now();
            let mut b = [0u8; 16];
            let e = comm.recv(Source::Rank(1), TagMatch::Any, &mut b).err();
            (e, t.elapsed())
        });
        let mut rail = impostor_rank_1(&addr);
        rail.write_all(&h.encode()).unwrap();
        // Keep the connection open: the real rank must end it, not our close.
        let (e, took) = real.join().unwrap();
        assert!(
            matches!(&e, Some(Error::RailDown { reason, .. } | Error::Refused(reason)) if reason.contains("bad frame header"))
                || matches!(e, Some(Error::PeerGone { .. })),
            "{e:?}"
        );
        assert!(took < Duration::from_secs(5), "took {took:?}");
        drop(rail);
    });
}

#[test]
fn an_oversized_message_header_is_refused() {
    bogus_header_gives_a_typed_error(FrameHeader {
        kind: KIND_DATA,
        len: 16,
        total: 1 << 40,
        share_len: 1 << 40,
        ..Default::default()
    });
}

#[test]
fn an_oversized_frame_is_refused() {
    bogus_header_gives_a_typed_error(FrameHeader {
        kind: KIND_DATA,
        len: u32::MAX,
        total: 1 << 20,
        share_len: 1 << 20,
        ..Default::default()
    });
}

/// Runs `f(rank, comm)` on two ranks (rank 0 on this thread, rank 1 on another; rendezvous
/// bootstrap) with two loopback rails; returns what each returned, in rank order.
fn pair<R: Send>(f: impl Fn(usize, TcpComm) -> R + Sync) -> Vec<R> {
    let addr = free_addr();
    let rank = |r: usize| {
        let rails = TcpConfig::parse_rails("127.0.0.1,127.0.0.2").unwrap();
        let mut c = TcpConfig::new(rails);
        c.token = Some(TOKEN.to_vec());
        c.timeout = Duration::from_secs(30);
        c.linger = Duration::from_millis(500);
        f(r, TcpComm::rendezvous(&addr, r, 2, c).unwrap())
    };
    std::thread::scope(|s| {
        let one = s.spawn(|| rank(1));
        let zero = rank(0);
        vec![zero, one.join().unwrap()]
    })
}

/// Message `i`'s length: small ones (direct path) between long striped ones (writer tasks).
fn mixed_len(i: usize) -> usize {
    match i % 5 {
        0 => 3 << 20,
        1 => 8,
        2 => 64 << 10,
        3 => 0,
        _ => 700,
    }
}

fn mixed_payload(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|k| (k * 31 + i * 7) as u8).collect()
}

#[test]
fn small_and_long_messages_keep_their_order_across_paths_and_rails() {
    const N: usize = 60;
    pair(|r, c| {
        if r == 0 {
            // A delay on rail 1 holds the long messages' second shares back, so the direct
            // small messages behind them reach the peer first and must wait their turn.
            c.faults()
                .inject(1, None, Fault::Delay(Duration::from_millis(2)))
                .unwrap();
            for i in 0..N {
                c.send(1, 5, &mixed_payload(i, mixed_len(i))).unwrap();
            }
        } else {
            let mut buf = vec![0u8; 3 << 20];
            for i in 0..N {
                // Some receives are posted late, so their messages wait as unexpected ones.
                if i % 7 == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let n = mixed_len(i);
                // Short receives take the direct path only with short buffers.
                let want = if n <= 64 << 10 { 64 << 10 } else { buf.len() };
                let st = c
                    .recv(Source::Rank(0), TagMatch::Tag(5), &mut buf[..want])
                    .unwrap();
                assert_eq!(st.bytes, n, "message {i}");
                assert!(buf[..n] == mixed_payload(i, n)[..], "message {i} differs");
            }
        }
        c.barrier().unwrap();
    });
}

#[test]
fn two_ranks_flooding_each_other_do_not_deadlock() {
    // Far more than the socket buffers hold, in both directions, before either receives: the
    // direct writes must give way to the writer tasks, and the reader tasks must drain.
    const N: usize = 400;
    pair(|r, c| {
        let peer = 1 - r;
        let data: Vec<Vec<u8>> = (0..N).map(|i| mixed_payload(i, 48 << 10)).collect();
        c.scope(|s| {
            let sends: Vec<_> = data.iter().map(|d| s.isend(peer, 9, d).unwrap()).collect();
            let mut buf = vec![0u8; 48 << 10];
            for (i, d) in data.iter().enumerate() {
                let st = c
                    .recv(Source::Rank(peer), TagMatch::Tag(9), &mut buf)
                    .unwrap();
                assert_eq!(st.bytes, 48 << 10);
                assert!(buf == *d, "message {i} differs");
            }
            for q in sends {
                q.wait().unwrap();
            }
        })
        .unwrap();
        c.barrier().unwrap();
    });
}

#[test]
fn direct_sends_and_receives_are_in_the_telemetry() {
    let recs = pair(|r, c| {
        let t = c.telemetry().unwrap().total();
        // Both ranks mark the ring first: a receive share is recorded when it arrives, which
        // could otherwise be before the receiver reads `t` (this failed once in CI).
        c.barrier().unwrap();
        let mut b = [0u8; 8];
        if r == 0 {
            c.send(1, 1, b"01234567").unwrap();
            c.recv(Source::Rank(1), TagMatch::Tag(2), &mut b).unwrap();
        } else {
            c.recv(Source::Rank(0), TagMatch::Tag(1), &mut b).unwrap();
            c.send(0, 2, b"76543210").unwrap();
        }
        c.telemetry().unwrap().since(t)
    });
    for (r, recs) in recs.iter().enumerate() {
        for op in ["send", "recv"] {
            assert!(
                recs.iter().any(|x| x.op == op
                    && x.bytes == 8
                    && x.peer == Some(1 - r as u32)
                    && x.rail.is_some()),
                "rank {r} has no {op} record of 8 bytes: {recs:?}"
            );
        }
    }
}

#[test]
fn a_delay_holds_back_small_messages_too() {
    let took = pair(|r, c| {
        let mut b = [0u8; 4];
        let t = Instant::now();
        if r == 0 {
            for rail in 0..2 {
                c.faults()
                    .inject(rail, None, Fault::Delay(Duration::from_millis(30)))
                    .unwrap();
            }
            c.send(1, 1, b"ping").unwrap();
            c.recv(Source::Rank(1), TagMatch::Tag(2), &mut b).unwrap();
        } else {
            c.recv(Source::Rank(0), TagMatch::Tag(1), &mut b).unwrap();
            c.send(0, 2, b"pong").unwrap();
        }
        t.elapsed()
    });
    assert!(took[0] >= Duration::from_millis(30), "{:?}", took[0]);
}
