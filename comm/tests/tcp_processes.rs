//! `TcpComm` as real multi-process jobs without MPI: N processes of `ferry-tcp-rank`
//! bootstrap through a rendezvous address and run the conformance suite; a peer killed in the
//! middle of a receive gives a typed error within the timeout instead of a hang.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "process-test-token-0123456789abcdef";

/// A rendezvous address on a loopback address of its own per call, so that no rank's rail
/// (on 127.0.0.1) of a parallel test can take the port freed here.
fn free_addr() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ip = format!("127.0.{}.{}", 10 + n / 250 % 240, 1 + n % 250);
    std::net::TcpListener::bind(format!("{ip}:0"))
        .and_then(|l| l.local_addr())
        .map(|a| a.to_string())
        .expect("a free loopback port")
}

fn spawn_rank(addr: &str, rank: usize, size: usize, scenario: &str, timeout_ms: u64) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ferry-tcp-rank"))
        .args(["--rendezvous", addr, "--rank", &rank.to_string()])
        .args([
            "--size",
            &size.to_string(),
            "--rails",
            "127.0.0.1,127.0.0.2",
        ])
        .args([
            "--scenario",
            scenario,
            "--large-bytes",
            &((8 << 20) + 3).to_string(),
        ])
        .env("FERRY_TCP_TOKEN", TOKEN)
        .env("FERRY_TCP_TIMEOUT_MS", timeout_ms.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferry-tcp-rank")
}

/// Waits for `child` at most `limit`; kills it after that. Returns (exit success, output).
fn finish(mut child: Child, limit: Duration) -> (bool, String) {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait().expect("try_wait") {
            Some(_) => break,
            None if Instant::now() > deadline => {
                let _ = child.kill();
                break;
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.success(),
        format!(
            "status {:?}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn conformance(n: usize) {
    let addr = free_addr();
    let children: Vec<Child> = (0..n)
        .map(|r| spawn_rank(&addr, r, n, "conformance", 30_000))
        .collect();
    let mut failures = Vec::new();
    for (r, c) in children.into_iter().enumerate() {
        let (ok, out) = finish(c, Duration::from_secs(90));
        if !ok {
            failures.push(format!("rank {r}: {out}"));
        }
    }
    assert!(failures.is_empty(), "{n} ranks:\n{}", failures.join("\n"));
}

#[test]
fn conformance_2_processes() {
    conformance(2);
}

#[test]
fn conformance_3_processes() {
    conformance(3);
}

#[test]
fn a_peer_killed_mid_receive_is_a_typed_error_not_a_hang() {
    let addr = free_addr();
    // A 20 s operation timeout: the receive must end with PeerGone or RailDown well before.
    let receiver = spawn_rank(&addr, 0, 2, "recv-from-dying", 20_000);
    let mut sender = spawn_rank(&addr, 1, 2, "slow-sender", 20_000);
    // Once the capped sender has started, let part of its 64 MiB cross, then kill it.
    let mut line = String::new();
    let mut lines = std::io::BufReader::new(sender.stdout.take().expect("stdout"));
    while !line.contains("sending") {
        line.clear();
        let n = std::io::BufRead::read_line(&mut lines, &mut line).expect("sender output");
        assert!(n > 0, "the sender ended before sending");
    }
    std::thread::sleep(Duration::from_millis(500));
    sender.kill().expect("kill the sender");
    let killed = Instant::now();
    let _ = sender.wait();
    let (ok, out) = finish(receiver, Duration::from_secs(30));
    let after = killed.elapsed();
    assert!(ok, "receiver: {out}");
    assert!(
        after < Duration::from_secs(15),
        "the receiver took {after:?} after the kill: {out}"
    );
}
