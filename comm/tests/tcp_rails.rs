//! `TcpComm` over real loopback sockets, ranks as threads of this process bootstrapped through
//! a rendezvous address: striping by weights, weights changed mid-stream, the fault layer,
//! per-rail telemetry, refused tokens and peers, timeouts and dropped connections.

use std::time::{Duration, Instant};

use ferry_comm::{Comm, Error, Fault, Source, TagMatch, TcpComm, TcpConfig};

const TOKEN: &[u8] = b"rails-test-token-0123456789abcdef";

fn config(timeout: Duration) -> TcpConfig {
    let mut c = TcpConfig::new(TcpConfig::parse_rails("127.0.0.1,127.0.0.2").unwrap());
    c.token = Some(TOKEN.to_vec());
    c.timeout = timeout;
    c.linger = Duration::from_secs(2);
    c
}

/// A rendezvous address no rail can take: a loopback address of its own per call (the rails
/// bind ports of 127.0.0.1 and .2, and a port freed here could go to a parallel test's rail).
fn free_addr() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ip = format!("127.0.{}.{}", 10 + n / 250 % 240, 1 + n % 250);
    let l = std::net::TcpListener::bind(format!("{ip}:0")).unwrap();
    l.local_addr().unwrap().to_string()
}

/// Runs `f` on `n` ranks (threads) of one job and returns the results in rank order.
fn job<R: Send>(
    n: usize,
    cfg: impl Fn(usize) -> TcpConfig + Sync,
    f: impl Fn(TcpComm) -> R + Sync,
) -> Vec<R> {
    let addr = free_addr();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|r| {
                let (addr, cfg, f) = (&addr, &cfg, &f);
                s.spawn(move || f(TcpComm::rendezvous(addr, r, n, cfg(r)).expect("bootstrap")))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(131).wrapping_add(seed * 7919) % 253) as u8)
        .collect()
}

#[test]
fn striping_follows_the_weights_and_delivers_identical_bytes() {
    let weights: [[f64; 2]; 4] = [[0.9, 0.1], [0.0, 1.0], [1.0, 0.0], [0.5, 0.5]];
    let len = (3 << 20) + 7;
    let out = job(
        2,
        |_| config(Duration::from_secs(20)),
        |c| {
            let t = c.telemetry().unwrap().clone();
            let mut per_case = Vec::new();
            for (k, w) in weights.iter().enumerate() {
                let first = t.total();
                if c.rank() == 0 {
                    c.set_rail_weights(w).unwrap();
                    c.send(1, k as i32, &pattern(k, len)).unwrap();
                } else {
                    let mut b = vec![0u8; len];
                    let st = c
                        .recv(Source::Rank(0), TagMatch::Tag(k as i32), &mut b)
                        .unwrap();
                    assert_eq!(st.bytes, len);
                    assert!(b == pattern(k, len), "weights {w:?}: bytes differ");
                }
                c.barrier().unwrap();
                // Bytes per rail of this message's shares, from this rank's telemetry.
                let op = if c.rank() == 0 { "send" } else { "recv" };
                let mut rails = [0u64; 2];
                for r in t.since(first) {
                    if r.op == op && r.peer == Some(1 - c.rank() as u32) && r.bytes > 1000 {
                        rails[r.rail.unwrap() as usize] += r.bytes;
                    }
                }
                per_case.push(rails);
            }
            per_case
        },
    );
    for rank_cases in &out {
        for (w, rails) in weights.iter().zip(rank_cases) {
            assert_eq!(rails[0] + rails[1], len as u64, "weights {w:?}: {rails:?}");
            for i in 0..2 {
                let want = w[i] * len as f64;
                assert!(
                    (rails[i] as f64 - want).abs() <= 2.0,
                    "weights {w:?}: rail {i} carried {} bytes, want about {want}",
                    rails[i]
                );
            }
        }
    }
}

#[test]
fn weights_changed_mid_stream_keep_order_and_bytes() {
    let count = 120;
    let size_of = |i: usize| (100 << 10) + i * 997 + if i % 7 == 0 { 0 } else { 1 << 16 };
    let out = job(
        2,
        |_| config(Duration::from_secs(30)),
        |c| {
            if c.rank() == 0 {
                let stop = std::sync::atomic::AtomicBool::new(false);
                std::thread::scope(|s| {
                    let flipper = s.spawn(|| {
                        let ws = [[0.9, 0.1], [0.1, 0.9], [0.0, 1.0], [1.0, 0.0], [0.5, 0.5]];
                        let mut k = 0;
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            c.set_rail_weights(&ws[k % ws.len()]).unwrap();
                            k += 1;
                            std::thread::sleep(Duration::from_micros(300));
                        }
                        k
                    });
                    let bufs: Vec<Vec<u8>> = (0..count).map(|i| pattern(i, size_of(i))).collect();
                    c.scope(|sc| {
                        let reqs: Vec<_> = bufs
                            .iter()
                            .enumerate()
                            .map(|(i, b)| sc.isend(1, (i % 3) as i32, b).unwrap())
                            .collect();
                        for r in reqs {
                            r.wait().unwrap();
                        }
                    })
                    .unwrap();
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    assert!(
                        flipper.join().unwrap() > 1,
                        "the weights changed during the stream"
                    );
                });
                Vec::new()
            } else {
                // Receive by tag in the order 2, 0, 1: within a tag, messages must come in order.
                let mut seen = Vec::new();
                for tag in [2, 0, 1] {
                    for i in (0..count).filter(|i| i % 3 == tag as usize) {
                        let (st, b) = c.recv_vec(Source::Rank(0), TagMatch::Tag(tag)).unwrap();
                        assert_eq!(st.bytes, size_of(i), "message {i}");
                        assert!(b == pattern(i, size_of(i)), "message {i}: bytes differ");
                        seen.push(i);
                    }
                }
                seen
            }
        },
    );
    assert_eq!(out[1].len(), count);
}

#[test]
fn a_bandwidth_cap_slows_its_rail_and_only_its_rail() {
    let len = 4 << 20;
    let cap = 10e6;
    let out = job(
        2,
        |_| config(Duration::from_secs(30)),
        |c| {
            let data = vec![3u8; len];
            let mut times = Vec::new();
            if c.rank() == 0 {
                c.faults()
                    .inject(1, Some(1), Fault::BandwidthCap(cap))
                    .unwrap();
                for rail in [0, 1] {
                    let t = Instant::now();
                    c.send_on(rail, 1, rail as i32, &data).unwrap();
                    // The receiver acknowledges, so the time covers the whole transfer.
                    c.recv(Source::Rank(1), TagMatch::Tag(9), &mut []).unwrap();
                    times.push(t.elapsed());
                }
                let records = c.telemetry().unwrap().snapshot();
                let slow = records
                    .iter()
                    .find(|r| r.op == "send" && r.rail == Some(1) && r.bytes == len as u64)
                    .expect("a send record on rail 1");
                times.push(Duration::from_nanos(slow.duration_ns()));
            } else {
                let mut b = vec![0u8; len];
                for rail in [0, 1] {
                    c.recv(Source::Rank(0), TagMatch::Tag(rail), &mut b)
                        .unwrap();
                    assert!(b == data);
                    c.send(0, 9, &[]).unwrap();
                }
            }
            times
        },
    );
    let (fast, slow, recorded) = (out[0][0], out[0][1], out[0][2]);
    let expected = Duration::from_secs_f64(len as f64 / cap);
    assert!(
        slow >= expected / 2,
        "capped rail took {slow:?}, expected about {expected:?}"
    );
    assert!(fast < slow, "uncapped {fast:?} vs capped {slow:?}");
    assert!(
        recorded >= expected / 2,
        "telemetry shows {recorded:?} on the capped rail"
    );
}

#[test]
fn delay_and_stall_hold_messages_back() {
    // Small sends complete to their sender once queued (eager), so the hold-up is measured
    // where it shows: at the receiver, from a barrier both ranks leave together.
    let out = job(
        2,
        |_| config(Duration::from_secs(20)),
        |c| {
            c.barrier().unwrap();
            if c.rank() == 0 {
                c.faults()
                    .inject(0, None, Fault::Delay(Duration::from_millis(200)))
                    .unwrap();
                c.faults()
                    .inject(1, None, Fault::Delay(Duration::from_millis(200)))
                    .unwrap();
                c.send(1, 1, b"late").unwrap();
                // Clear the delay once the receiver has the message, then stall both rails.
                c.recv(Source::Rank(1), TagMatch::Tag(3), &mut []).unwrap();
                c.faults().clear_all();
                c.faults()
                    .inject(0, Some(1), Fault::Stall(Duration::from_millis(300)))
                    .unwrap();
                c.faults()
                    .inject(1, Some(1), Fault::Stall(Duration::from_millis(300)))
                    .unwrap();
                c.send(1, 2, b"stalled").unwrap();
                c.recv(Source::Rank(1), TagMatch::Tag(4), &mut []).unwrap();
                Vec::new()
            } else {
                let mut b = [0u8; 16];
                let t = Instant::now();
                c.recv(Source::Rank(0), TagMatch::Tag(1), &mut b).unwrap();
                let delayed = t.elapsed();
                let t = Instant::now();
                c.send(0, 3, &[]).unwrap();
                c.recv(Source::Rank(0), TagMatch::Tag(2), &mut b).unwrap();
                let stalled = t.elapsed();
                c.send(0, 4, &[]).unwrap();
                vec![delayed, stalled]
            }
        },
    );
    assert!(
        out[1][0] >= Duration::from_millis(150),
        "delay: {:?}",
        out[1][0]
    );
    assert!(
        out[1][1] >= Duration::from_millis(200),
        "stall: {:?}",
        out[1][1]
    );
}

#[test]
fn a_dropped_connection_is_rail_down_on_both_sides() {
    let out = job(
        2,
        |_| config(Duration::from_secs(10)),
        |c| {
            let t = Instant::now();
            let e = if c.rank() == 0 {
                c.send(1, 1, b"before").unwrap();
                c.recv(Source::Rank(1), TagMatch::Tag(2), &mut []).unwrap();
                c.faults()
                    .inject(1, Some(1), Fault::DropConnection)
                    .unwrap();
                std::thread::sleep(Duration::from_millis(200));
                c.send(1, 3, b"after").err()
            } else {
                let mut b = [0u8; 8];
                c.recv(Source::Rank(0), TagMatch::Tag(1), &mut b).unwrap();
                c.send(0, 2, &[]).unwrap();
                c.recv(Source::Rank(0), TagMatch::Tag(3), &mut b).err()
            };
            (e, t.elapsed())
        },
    );
    for (rank, (e, took)) in out.iter().enumerate() {
        assert!(
            matches!(
                e,
                Some(Error::RailDown { rail: 1, .. } | Error::PeerGone { .. })
            ),
            "rank {rank}: {e:?}"
        );
        assert!(*took < Duration::from_secs(8), "rank {rank} took {took:?}");
    }
}

#[test]
fn a_timed_out_receive_loses_no_later_message() {
    // Rank 0 times out after 400 ms; rank 1, which waits for rank 0, has 10 s.
    let limit = |r: usize| Duration::from_millis(if r == 0 { 400 } else { 10_000 });
    let out = job(
        2,
        |r| config(limit(r)),
        |c| {
            if c.rank() == 0 {
                let mut b = [0u8; 8];
                let t = Instant::now();
                let e = c.recv(Source::Rank(1), TagMatch::Tag(5), &mut b).err();
                let took = t.elapsed();
                c.send(1, 6, &[]).unwrap();
                let st = c.recv(Source::Rank(1), TagMatch::Tag(5), &mut b).unwrap();
                assert_eq!(&b[..st.bytes], b"now");
                format!("{e:?} {took:?}")
            } else {
                c.recv(Source::Rank(0), TagMatch::Tag(6), &mut []).unwrap();
                c.send(0, 5, b"now").unwrap();
                String::new()
            }
        },
    );
    assert!(out[0].starts_with("Some(Timeout"), "{}", out[0]);
}

#[test]
fn a_wrong_token_is_refused_at_the_rendezvous() {
    let addr = free_addr();
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|r| {
                let addr = &addr;
                s.spawn(move || {
                    let mut c = config(Duration::from_secs(2));
                    if r == 1 {
                        c.token = Some(b"an-impostor-token-0123456789".to_vec());
                    }
                    TcpComm::rendezvous(addr, r, 2, c).err()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        matches!(results[1], Some(Error::Refused(_))),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(results[0], Some(Error::Timeout { .. })),
        "{:?}",
        results[0]
    );
}

#[test]
fn strangers_on_a_rail_are_refused_and_the_job_goes_on() {
    use std::io::{Read, Write};
    let out = job(
        2,
        |_| config(Duration::from_secs(10)),
        |c| {
            if c.rank() == 0 {
                let addr: std::net::SocketAddr = c.listen_addrs()[0].parse().unwrap();
                // 1. Not a ferry hello at all.
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
                let mut reply = [0u8; 9];
                s.read_exact(&mut reply).unwrap();
                assert_ne!(reply[8], 0, "junk accepted");
                // 2. A well-formed hello from "rank 1" with the wrong token.
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                let mut hello = b"FERRYTC1".to_vec();
                for v in [1u32, 2, 0, 2] {
                    hello.extend_from_slice(&v.to_le_bytes());
                }
                let token = b"not-the-token-0123456789abcdef";
                hello.extend_from_slice(&(token.len() as u16).to_le_bytes());
                hello.extend_from_slice(token);
                s.write_all(&hello).unwrap();
                s.read_exact(&mut reply).unwrap();
                assert_eq!(reply[8], 1, "wrong token not refused as such");
                // 3. The right token after the bootstrap: a duplicate, refused too.
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                let mut hello = b"FERRYTC1".to_vec();
                for v in [1u32, 2, 0, 2] {
                    hello.extend_from_slice(&v.to_le_bytes());
                }
                hello.extend_from_slice(&(TOKEN.len() as u16).to_le_bytes());
                hello.extend_from_slice(TOKEN);
                s.write_all(&hello).unwrap();
                s.read_exact(&mut reply).unwrap();
                assert_ne!(reply[8], 0, "a second connection for rank 1 accepted");
                let deadline = Instant::now() + Duration::from_secs(5);
                while c.refused_connections() < 3 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                assert_eq!(c.refused_connections(), 3);
            }
            // The job still works.
            c.barrier().unwrap();
            let peer = 1 - c.rank();
            let mut b = [0u8; 5];
            c.sendrecv(
                peer,
                1,
                b"hello",
                Source::Rank(peer),
                TagMatch::Tag(1),
                &mut b,
            )
            .unwrap();
            b
        },
    );
    assert_eq!(out, vec![*b"hello", *b"hello"]);
}

#[test]
fn rail_weights_are_checked() {
    job(
        1,
        |_| config(Duration::from_secs(5)),
        |c| {
            assert_eq!(c.rail_count(), 2);
            assert_eq!(c.rail_weights(), vec![0.5, 0.5]);
            assert!(matches!(
                c.set_rail_weights(&[1.0]),
                Err(Error::InvalidArgument(_))
            ));
            assert!(matches!(
                c.set_rail_weights(&[0.0, 0.0]),
                Err(Error::InvalidArgument(_))
            ));
            assert!(matches!(
                c.set_rail_weights(&[-1.0, 2.0]),
                Err(Error::InvalidArgument(_))
            ));
            c.set_rail_weights(&[3.0, 1.0]).unwrap();
            assert_eq!(c.rail_weights(), vec![0.75, 0.25]);
            assert!(matches!(
                c.send_on(2, 0, 0, b"x"),
                Err(Error::InvalidArgument(_))
            ));
        },
    );
}
