//! Collectives over `TcpComm` with two rails on real loopback sockets (ranks as threads,
//! rendezvous bootstrap): rail probing finds a rail capped by the fault layer and weights it
//! down; the rail balancer, fed by the transport's own telemetry, moves the weights the same
//! way during all-reduces; results stay exact.

use std::time::Duration;

use ferry_collectives::{Collectives, RailBalancer, ReduceOp, Reprobe};
use ferry_comm::{Comm, Fault, TcpComm, TcpConfig};

const TOKEN: &[u8] = b"collectives-rails-token-0123456789";

fn job<R: Send>(n: usize, f: impl Fn(TcpComm) -> R + Sync) -> Vec<R> {
    // A loopback address of its own per job for the rendezvous, so that no parallel test's
    // rail (on 127.0.0.1 / .2) can take the port freed here.
    let addr = {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ip = format!("127.0.{}.{}", 10 + n / 250 % 240, 1 + n % 250);
        let l = std::net::TcpListener::bind(format!("{ip}:0")).unwrap();
        l.local_addr().unwrap().to_string()
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|r| {
                let (addr, f) = (&addr, &f);
                s.spawn(move || {
                    let mut c =
                        TcpConfig::new(TcpConfig::parse_rails("127.0.0.1,127.0.0.2").unwrap());
                    c.token = Some(TOKEN.to_vec());
                    c.timeout = Duration::from_secs(60);
                    f(TcpComm::rendezvous(addr, r, n, c).expect("bootstrap"))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Rail 1 capped at 8 MB/s on every link; rail 0 is loopback (hundreds of MB/s).
fn cap_rail_1(c: &TcpComm) {
    for peer in 0..c.size() {
        if peer != c.rank() {
            c.faults()
                .inject(1, Some(peer), Fault::BandwidthCap(8e6))
                .unwrap();
        }
    }
}

#[test]
fn probing_finds_the_capped_rail() {
    let out = job(2, |c| {
        cap_rail_1(&c);
        let coll = Collectives::new(c);
        let probe = coll.probe_rails(1 << 20, 2).unwrap();
        (probe, coll.comm().rail_weights())
    });
    for (rank, (probe, weights)) in out.iter().enumerate() {
        let r = &probe.bytes_per_second;
        assert!(r[1] < 12e6, "rank {rank}: capped rail measured at {r:?}");
        assert!(
            r[0] > 3.0 * r[1],
            "rank {rank}: open rail not faster: {r:?}"
        );
        assert!(
            probe.weights[1] < 0.25,
            "rank {rank}: weights {:?}",
            probe.weights
        );
        // The comm normalises what it is given again, so compare to rounding.
        assert!(
            probe
                .weights
                .iter()
                .zip(weights)
                .all(|(a, b)| (a - b).abs() < 1e-12),
            "rank {rank}: weights were not set on the comm: {:?} vs {weights:?}",
            probe.weights
        );
        // Every rank settles on the same figures (the minimum over ranks).
        assert_eq!(probe.bytes_per_second, out[0].0.bytes_per_second);
    }
}

#[test]
fn the_balancer_weights_down_a_capped_rail_during_allreduces() {
    let out = job(2, |c| {
        cap_rail_1(&c);
        let balancer = RailBalancer::new(&[0.5, 0.5]).unwrap().every(1);
        let coll = Collectives::new(c).with_rail_balancer(balancer);
        let n: i32 = 1 << 18; // 1 MiB of i32
        let mut last = Vec::new();
        for op in 0..6 {
            let mut v: Vec<i32> = (0..n)
                .map(|i| i ^ (op * 7 + coll.comm().rank() as i32))
                .collect();
            let expect: Vec<i32> = (0..n)
                .map(|i| (i ^ (op * 7)).wrapping_add(i ^ (op * 7 + 1)))
                .collect();
            coll.allreduce(&mut v, ReduceOp::Sum).unwrap();
            assert!(v == expect, "op {op}: wrong sum");
            last = coll.comm().rail_weights();
        }
        last
    });
    for (rank, w) in out.iter().enumerate() {
        assert!(
            w[1] < 0.2,
            "rank {rank}: the capped rail still carries {w:?}"
        );
    }
}

#[test]
fn a_rail_capped_mid_stream_is_probed_again_and_weighted_down() {
    let out = job(2, |c| {
        let balancer = RailBalancer::new(&[0.5, 0.5]).unwrap().every(1);
        let mut reprobe = Reprobe::new(1 << 20);
        reprobe.probe_bytes = 1 << 20;
        // The cap makes an operation about 10x slower; a loaded CI machine moves them by less
        // than 3x, which must not trigger probes of its own.
        reprobe.factor = 3.0;
        let coll = Collectives::new(c)
            .with_rail_balancer(balancer)
            .with_reprobe(reprobe);
        let n: i32 = 1 << 18; // 1 MiB of i32
        let mut probes_before_cap = 0;
        for op in 0..16 {
            if op == 6 {
                probes_before_cap = coll.reprobe().unwrap().probes();
                // Both ranks cap their rail 0 after the same operation.
                let c = coll.comm();
                c.faults()
                    .inject(0, Some(1 - c.rank()), Fault::BandwidthCap(8e6))
                    .unwrap();
            }
            let r = coll.comm().rank() as i32;
            let mut v: Vec<i32> = (0..n).map(|i| i ^ (op * 5 + r)).collect();
            let expect: Vec<i32> = (0..n)
                .map(|i| (i ^ (op * 5)).wrapping_add(i ^ (op * 5 + 1)))
                .collect();
            coll.allreduce(&mut v, ReduceOp::Sum).unwrap();
            assert!(v == expect, "op {op}: wrong sum");
        }
        (
            coll.reprobe().unwrap().probes() - probes_before_cap,
            coll.comm().rail_weights(),
        )
    });
    for (rank, (probes, w)) in out.iter().enumerate() {
        assert!(
            *probes >= 1,
            "rank {rank}: the slowdown after the cap never triggered a probe"
        );
        assert!(
            w[0] < 0.2,
            "rank {rank}: the capped rail still carries {w:?}"
        );
    }
    assert_eq!(out[0].0, out[1].0, "both ranks probe together");
}
