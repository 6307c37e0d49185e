//! Loopback throughput of `TcpComm`, one rail against two, in one process (two ranks as
//! threads, rendezvous bootstrap): `ferry-tcp-bench [--mib 64] [--iters 8] [--cap-mbs 0]`.
//! With `--cap-mbs X` every rail is capped at X MB/s by the fault layer, which stands in for
//! NICs of known speed; two equal rails should then carry about twice one. Checks the bytes
//! of every message before it reports, prints a table with the ratio, and one JSON line.

use std::time::{Duration, Instant};

use ferry_comm::{Comm, Fault, Source, TagMatch, TcpComm, TcpConfig};

fn main() {
    let mut mib = 64usize;
    let mut iters = 8usize;
    let mut cap = 0.0f64;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_default();
        match flag.as_str() {
            "--mib" => mib = v.parse().expect("--mib N"),
            "--iters" => iters = v.parse().expect("--iters N"),
            "--cap-mbs" => cap = v.parse().expect("--cap-mbs X"),
            _ => {
                eprintln!("usage: ferry-tcp-bench [--mib N] [--iters N] [--cap-mbs X]");
                std::process::exit(2);
            }
        }
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
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .to_string();
    let times: Vec<Option<Duration>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|r| {
                let addr = &addr;
                s.spawn(move || {
                    let mut cfg = TcpConfig::new(TcpConfig::parse_rails(rails).expect("rails"));
                    cfg.token = Some(b"ferry-tcp-bench-token-0123456789".to_vec());
                    let c = TcpComm::rendezvous(addr, r, 2, cfg).expect("bootstrap");
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
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("rank")).collect()
    });
    let t = times[0].expect("rank 0 timed").as_secs_f64();
    (len * iters) as f64 / t / 1e9
}
