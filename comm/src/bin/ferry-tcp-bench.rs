//! Loopback throughput of `TcpComm`, one rail against two, in one process (two ranks as
//! threads, rendezvous bootstrap): `ferry-tcp-bench [--mib 64] [--iters 8] [--cap-mbs 0]`.
//! With `--cap-mbs X` every rail is capped at X MB/s by the fault layer, which stands in for
//! NICs of known speed; two equal rails should then carry about twice one. Checks the bytes
//! of every message before it reports, prints a table with the ratio, and one JSON line.
//!
//! `ferry-tcp-bench --latency [--iters 20000] [--rounds 5]` is a small-message ping-pong (8 B
//! to 64 KiB) over one rail, beside the same ping-pong over a plain blocking
//! `std::net::TcpStream` pair in the same process (the kernel's own loopback latency),
//! alternating the two `--rounds` times per size (the machine is shared; one round says
//! little), reporting the median and the minimum one-way microseconds and the ratio of the
//! medians: what TcpComm's matching, framing and threads add to a message.

use std::time::Instant;

use ferry_comm::{Comm, Fault, Source, TagMatch, TcpComm, TcpConfig};

fn main() {
    let mut mib = 64usize;
    let mut iters = 8usize;
    let mut cap = 0.0f64;
    let mut latency = false;
    let mut rounds = 5usize;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--latency" {
            latency = true;
            iters = iters.max(20_000);
            continue;
        }
        let v = it.next().unwrap_or_default();
        match flag.as_str() {
            "--mib" => mib = v.parse().expect("--mib N"),
            "--iters" => iters = v.parse().expect("--iters N"),
            "--cap-mbs" => cap = v.parse().expect("--cap-mbs X"),
            "--rounds" => rounds = v.parse().expect("--rounds N"),
            _ => {
                eprintln!(
                    "usage: ferry-tcp-bench [--mib N] [--iters N] [--cap-mbs X] | --latency [--iters N] [--rounds N]"
                );
                std::process::exit(2);
            }
        }
    }
    if latency {
        return latencies(iters, rounds.max(1));
    }
    let one = run("127.0.0.1", mib << 20, iters, cap);
    let two = run("127.0.0.1,127.0.0.2", mib << 20, iters, cap);
    println!("message {mib} MiB x {iters}, rail cap {cap} MB/s (0 = none), loopback");
    println!("{:>8} {:>12}", "rails", "GB/s");
    println!("{:>8} {:>12.3}", 1, one);
    println!("{:>8} {:>12.3}", 2, two);
    println!("two rails / one rail = {:.2}", two / one);
    println!(
        "{{\"bench\":\"tcp-rails\",\"bytes\":{},\"iters\":{iters},\"cap_mbs\":{cap},\"one_rail_gbs\":{one:.4},\"two_rails_gbs\":{two:.4},\"ratio\":{:.3}}}",
        mib << 20,
        two / one
    );
}

/// Sends `iters` messages of `len` bytes from rank 0 to rank 1; returns GB/s.
fn run(rails: &str, len: usize, iters: usize, cap: f64) -> f64 {
    let times = two_ranks(rails, |r, c| {
        if cap > 0.0 {
            for rail in 0..c.rail_count() {
                c.faults()
                    .inject(rail, None, Fault::BandwidthCap(cap * 1e6))
                    .expect("cap");
            }
        }
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut buf = vec![0u8; len];
        // One warm-up message, then the timed ones, each acknowledged.
        let mut start = Instant::now();
        for i in 0..=iters {
            if i == 1 {
                start = Instant::now();
            }
            if r == 0 {
                c.send(1, 0, &data).expect("send");
                c.recv(Source::Rank(1), TagMatch::Tag(1), &mut [])
                    .expect("ack");
            } else {
                c.recv(Source::Rank(0), TagMatch::Tag(0), &mut buf)
                    .expect("recv");
                assert!(buf == data, "payload differs");
                c.send(0, 1, &[]).expect("ack");
            }
        }
        (r == 0).then(|| start.elapsed())
    });
    let t = times[0].expect("rank 0 timed").as_secs_f64();
    (len * iters) as f64 / t / 1e9
}

/// One-way latency of `TcpComm` and of a plain TCP socket pair, per message size, alternating
/// the two `rounds` times.
fn latencies(iters: usize, rounds: usize) {
    println!(
        "ping-pong over loopback, one rail, {iters} round trips x {rounds} rounds; one-way microseconds, median (min)"
    );
    println!(
        "{:>8} {:>18} {:>18} {:>8}",
        "bytes", "TcpComm", "raw TCP", "ratio"
    );
    for len in [8usize, 1024, 16 << 10, 64 << 10] {
        let (mut ferry, mut raw) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            ferry.push(tcp_comm_pingpong(len, iters));
            raw.push(raw_pingpong(len, iters));
        }
        let (f, fmin) = median_min(&mut ferry);
        let (r, rmin) = median_min(&mut raw);
        println!(
            "{len:>8} {:>18} {:>18} {:>8.2}",
            format!("{f:.2} ({fmin:.2})"),
            format!("{r:.2} ({rmin:.2})"),
            f / r
        );
        println!(
            "{{\"bench\":\"tcp-latency\",\"bytes\":{len},\"iters\":{iters},\"rounds\":{rounds},\"tcpcomm_us\":{f:.3},\"tcpcomm_us_min\":{fmin:.3},\"raw_tcp_us\":{r:.3},\"raw_tcp_us_min\":{rmin:.3},\"ratio\":{:.3}}}",
            f / r
        );
    }
}

/// The median and the minimum of `v` (not empty).
fn median_min(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0])
}

/// Runs `step` `iters / 10` times untimed, then `iters` times; returns the timed part.
fn time_iters(iters: usize, mut step: impl FnMut()) -> std::time::Duration {
    for _ in 0..iters / 10 {
        step();
    }
    let start = Instant::now();
    for _ in 0..iters {
        step();
    }
    start.elapsed()
}

/// One-way microseconds of a `len`-byte ping-pong between two TcpComm ranks (threads).
fn tcp_comm_pingpong(len: usize, iters: usize) -> f64 {
    let times = two_ranks("127.0.0.1", |r, c| {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8 ^ r as u8).collect();
        let mut buf = vec![0u8; len];
        let took = time_iters(iters, || {
            if r == 0 {
                c.send(1, 0, &data).expect("send");
                c.recv(Source::Rank(1), TagMatch::Tag(0), &mut buf)
                    .expect("recv");
            } else {
                c.recv(Source::Rank(0), TagMatch::Tag(0), &mut buf)
                    .expect("recv");
                c.send(0, 0, &data).expect("send");
            }
        });
        let expect: Vec<u8> = (0..len).map(|i| (i % 251) as u8 ^ (1 - r) as u8).collect();
        assert!(buf == expect, "payload differs");
        (r == 0).then_some(took)
    });
    times[0].expect("rank 0 timed").as_secs_f64() * 1e6 / (2 * iters) as f64
}

/// The same ping-pong over a plain blocking socket pair (no framing, no matching).
fn raw_pingpong(len: usize, iters: usize) -> f64 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    std::thread::scope(|s| {
        let echo = s.spawn(move || {
            let (mut sock, _) = listener.accept().expect("accept");
            sock.set_nodelay(true).expect("nodelay");
            let mut buf = vec![0u8; len];
            for _ in 0..iters + iters / 10 {
                sock.read_exact(&mut buf).expect("read");
                sock.write_all(&buf).expect("write");
            }
        });
        let mut sock = std::net::TcpStream::connect(addr).expect("connect");
        sock.set_nodelay(true).expect("nodelay");
        let data = vec![7u8; len];
        let mut buf = vec![0u8; len];
        let t = time_iters(iters, || {
            sock.write_all(&data).expect("write");
            sock.read_exact(&mut buf).expect("read");
        });
        echo.join().expect("echo");
        assert!(buf == data, "payload differs");
        t.as_secs_f64() * 1e6 / (2 * iters) as f64
    })
}

/// Runs `f(rank, comm)` on two TcpComm ranks (threads of this process, rendezvous bootstrap,
/// rails `rails`) and returns what each returned, in rank order.
fn two_ranks<R: Send>(rails: &str, f: impl Fn(usize, TcpComm) -> R + Sync) -> Vec<R> {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .to_string();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|r| {
                let (addr, f) = (&addr, &f);
                s.spawn(move || {
                    let mut cfg = TcpConfig::new(TcpConfig::parse_rails(rails).expect("rails"));
                    cfg.token = Some(b"ferry-tcp-bench-token-0123456789".to_vec());
                    f(r, TcpComm::rendezvous(addr, r, 2, cfg).expect("bootstrap"))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("rank")).collect()
    })
}
