//! One rank of a `TcpComm` job bootstrapped through a rendezvous address, without MPI; the
//! process tests (`comm/tests/tcp_processes.rs`) start several of these.
//!
//! `ferry-tcp-rank --rendezvous HOST:PORT --rank R --size N [--rails IP,IP] [--scenario S]
//! [--large-bytes N]`, with the job token in `FERRY_TCP_TOKEN`. Scenarios:
//! `conformance` (default) runs the suite and exits 0 if every case passed;
//! `slow-sender` (rank 1) caps its rails at 1 MB/s and sends rank 0 a 64 MiB message, to be
//! killed mid-send; `recv-from-dying` (rank 0) receives that message and exits 0 if the receive
//! fails with `PeerGone` or `RailDown` (printing the error and how long it took).

use std::time::Instant;

use ferry_comm::conformance::{Options, run_suite};
use ferry_comm::{Comm, Error, Fault, Source, TagMatch, TcpComm, TcpConfig};

fn main() {
    ferry_comm::init_logging();
    match run() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("ferry-tcp-rank: {e}");
            std::process::exit(2);
        }
    }
}

fn run() -> Result<i32, String> {
    let (mut addr, mut rank, mut size) = (None, None, None);
    let mut rails = "127.0.0.1,127.0.0.2".to_string();
    let mut scenario = "conformance".to_string();
    let mut options = Options::default();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<usize>().map_err(|_| format!("bad {flag} {v}"));
        match flag.as_str() {
            "--rendezvous" => addr = Some(v),
            "--rank" => rank = Some(num(&v)?),
            "--size" => size = Some(num(&v)?),
            "--rails" => rails = v,
            "--scenario" => scenario = v,
            "--large-bytes" => options.large_bytes = num(&v)?,
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    let (addr, rank, size) = match (addr, rank, size) {
        (Some(a), Some(r), Some(s)) => (a, r, s),
        _ => return Err("--rendezvous, --rank and --size are required".into()),
    };
    let config = TcpConfig::new(TcpConfig::parse_rails(&rails).map_err(|e| e.to_string())?)
        .with_env()
        .map_err(|e| e.to_string())?;
    let comm = TcpComm::rendezvous(&addr, rank, size, config).map_err(|e| e.to_string())?;
    match scenario.as_str() {
        "conformance" => {
            let results = run_suite(&comm, &options);
            let mut failures = 0;
            for r in &results {
                if let Some(f) = &r.failure {
                    failures += 1;
                    let f: String = f.chars().take(400).collect();
                    println!("rank {rank}: FAIL {}: {f}", r.name);
                }
            }
            println!("rank {rank}: {} cases, {failures} failures", results.len());
            Ok(if failures == 0 { 0 } else { 1 })
        }
        "slow-sender" => {
            for rail in 0..comm.rail_count() {
                comm.faults()
                    .inject(rail, None, Fault::BandwidthCap(1e6))
                    .map_err(|e| e.to_string())?;
            }
            println!("rank {rank}: sending");
            let r = comm.send(0, 1, &vec![7u8; 64 << 20]);
            println!("rank {rank}: send ended: {r:?}");
            Ok(0)
        }
        "recv-from-dying" => {
            let mut buf = vec![0u8; 64 << 20];
            let start = Instant::now();
            let r = comm.recv(Source::Rank(1), TagMatch::Tag(1), &mut buf);
            let secs = start.elapsed().as_secs_f64();
            println!("rank {rank}: receive ended after {secs:.2} s: {r:?}");
            Ok(match r {
                Err(Error::PeerGone { .. } | Error::RailDown { .. }) => 0,
                _ => 1,
            })
        }
        s => Err(format!("unknown scenario {s}")),
    }
}
