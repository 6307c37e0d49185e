//! Wire-level tests of `TcpComm`: a rank played by hand over plain sockets sends a bogus frame
//! header, and the real rank refuses it without allocating, reporting a typed error.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::wire::{self, FrameHeader, HELLO_MAGIC, Hello, KIND_DATA, RENDEZVOUS_MAGIC};
use super::{TcpComm, TcpConfig};
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

fn bogus_header_gives_a_typed_error(h: FrameHeader) {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
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
