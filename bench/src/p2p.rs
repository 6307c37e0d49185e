//! `ferry-bench p2p`: ping-pong latency and bandwidth through `MpiComm`, beside the same
//! ping-pong through plain rsmpi in the same run.
//!
//! Ranks pair up (0 with 1, 2 with 3, ...); every pair runs at once. For each size, the two
//! implementations alternate for `--reps` repetitions of `iters` round trips each, and the
//! median repetition of each is reported. The odd rank of a pair echoes what it received, and the
//! even rank checks the echo against what it sent before anything is reported.
//! Latency is half a round trip; bandwidth is bytes over that latency.

use std::time::Instant;

use ferry_comm::{Comm, MpiComm, MpiRuntime, Source, TagMatch};
use mpi::traits::{Communicator, Destination, Source as _};

use crate::report::{parse_bytes, write_json_lines};

/// Options of `ferry-bench p2p`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Smallest message (e.g. 1, 4K, 1MiB).
    #[arg(long, default_value = "1", value_parser = parse_bytes)]
    min_bytes: usize,
    /// Largest message; sizes double from the smallest.
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
    max_bytes: usize,
    /// Round trips per repetition (default: about 64 MiB moved each way, 4 to 20000).
    #[arg(long)]
    iters: Option<usize>,
    /// Repetitions of each implementation per size; the median is reported.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Write one JSON record per (pair, size) to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// One measured case.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
struct Record {
    bench: String,
    pair: usize,
    ranks: usize,
    bytes: usize,
    iters: usize,
    ferry_latency_us: f64,
    rsmpi_latency_us: f64,
    ferry_bandwidth_gbs: f64,
    rsmpi_bandwidth_gbs: f64,
    /// ferry bandwidth / rsmpi bandwidth.
    ratio: f64,
    latency_diff_us: f64,
    checked: bool,
}

const TAG: i32 = 17;
const TAG_RESULTS: i32 = 18;

pub(crate) fn run(args: &Args) -> Result<(), String> {
    if args.min_bytes == 0 || args.min_bytes > args.max_bytes {
        return Err(format!(
            "need 0 < --min-bytes <= --max-bytes (got {} and {})",
            args.min_bytes, args.max_bytes
        ));
    }
    if args.reps == 0 {
        return Err("--reps must be at least 1".into());
    }
    let runtime = MpiRuntime::init().map_err(|e| e.to_string())?;
    let ferry = runtime.world().map_err(|e| e.to_string())?;
    let plain = mpi::topology::SimpleCommunicator::world();
    let (rank, size) = (ferry.rank(), ferry.size());
    if size < 2 {
        return Err("p2p needs at least 2 ranks: mpirun -np 2 ferry-bench p2p".into());
    }
    let pairs = size / 2;
    let active = rank < 2 * pairs;
    let peer = rank ^ 1;
    let leader = rank % 2 == 0;

    let mut sizes = Vec::new();
    let mut s = args.min_bytes;
    while s <= args.max_bytes {
        sizes.push(s);
        s = match s.checked_mul(2) {
            Some(n) => n,
            None => break,
        };
    }

    let mut records = Vec::new();
    let mut send = vec![0u8; args.max_bytes];
    let mut recv = vec![0u8; args.max_bytes];
    for &bytes in &sizes {
        let iters = args
            .iters
            .unwrap_or_else(|| ((64usize << 20) / bytes.max(4096)).clamp(4, 20000));
        for (i, b) in send[..bytes].iter_mut().enumerate() {
            *b = (i.wrapping_mul(7).wrapping_add(bytes).wrapping_add(rank) % 253) as u8;
        }
        let mut ferry_times = Vec::new();
        let mut plain_times = Vec::new();
        let mut checked = true;
        for _ in 0..args.reps {
            for which in [Impl::Ferry, Impl::Rsmpi] {
                ferry.barrier().map_err(|e| e.to_string())?;
                if !active {
                    continue;
                }
                recv[..bytes].fill(0xEE);
                let t = match which {
                    Impl::Ferry => ping_pong_ferry(
                        &ferry,
                        peer,
                        leader,
                        &send[..bytes],
                        &mut recv[..bytes],
                        iters,
                    )?,
                    Impl::Rsmpi => ping_pong_rsmpi(
                        &plain,
                        peer,
                        leader,
                        &send[..bytes],
                        &mut recv[..bytes],
                        iters,
                    ),
                };
                if leader && recv[..bytes] != send[..bytes] {
                    checked = false;
                }
                match which {
                    Impl::Ferry => ferry_times.push(t),
                    Impl::Rsmpi => plain_times.push(t),
                }
            }
        }
        if !active || !leader {
            continue;
        }
        if !checked {
            return Err(format!(
                "rank {rank}: the echoed {bytes}-byte message differs from what was sent"
            ));
        }
        let lat = |times: &mut Vec<f64>| {
            times.sort_by(f64::total_cmp);
            times[times.len() / 2] / (2.0 * iters as f64) * 1e6
        };
        let (fl, pl) = (lat(&mut ferry_times), lat(&mut plain_times));
        let (fb, pb) = (bytes as f64 / fl / 1e3, bytes as f64 / pl / 1e3);
        records.push(Record {
            bench: "p2p".into(),
            pair: rank / 2,
            ranks: size,
            bytes,
            iters,
            ferry_latency_us: fl,
            rsmpi_latency_us: pl,
            ferry_bandwidth_gbs: fb,
            rsmpi_bandwidth_gbs: pb,
            ratio: fb / pb,
            latency_diff_us: fl - pl,
            checked,
        });
    }

    // Pair leaders send their records to rank 0, which reports.
    if rank != 0 {
        if active && leader {
            let encoded = serde_json::to_vec(&records).map_err(|e| e.to_string())?;
            ferry
                .send(0, TAG_RESULTS, &encoded)
                .map_err(|e| e.to_string())?;
        }
        return Ok(());
    }
    let mut all = records;
    for pair in 1..pairs {
        let st = ferry
            .probe(Source::Rank(2 * pair), TagMatch::Tag(TAG_RESULTS))
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; st.bytes];
        ferry
            .recv(Source::Rank(2 * pair), TagMatch::Tag(TAG_RESULTS), &mut buf)
            .map_err(|e| e.to_string())?;
        let theirs: Vec<Record> = serde_json::from_slice(&buf).map_err(|e| e.to_string())?;
        all.extend(theirs);
    }
    print_table(&all, pairs, &runtime);
    if let Some(path) = &args.json {
        write_json_lines(path, &all)?;
        println!("wrote {} records to {}", all.len(), path.display());
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Impl {
    Ferry,
    Rsmpi,
}

/// Times `iters` round trips through ferry's `MpiComm`; returns seconds.
fn ping_pong_ferry(
    c: &MpiComm,
    peer: usize,
    leader: bool,
    send: &[u8],
    recv: &mut [u8],
    iters: usize,
) -> Result<f64, String> {
    let e = |e: ferry_comm::Error| e.to_string();
    let start = Instant::now();
    for _ in 0..iters {
        if leader {
            c.send(peer, TAG, send).map_err(e)?;
            c.recv(Source::Rank(peer), TagMatch::Tag(TAG), recv)
                .map_err(e)?;
        } else {
            c.recv(Source::Rank(peer), TagMatch::Tag(TAG), recv)
                .map_err(e)?;
            c.send(peer, TAG, recv).map_err(e)?;
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Times `iters` round trips through rsmpi's safe API; returns seconds.
fn ping_pong_rsmpi(
    c: &mpi::topology::SimpleCommunicator,
    peer: usize,
    leader: bool,
    send: &[u8],
    recv: &mut [u8],
    iters: usize,
) -> f64 {
    let p = c.process_at_rank(peer as i32);
    let start = Instant::now();
    for _ in 0..iters {
        if leader {
            p.send_with_tag(send, TAG);
            p.receive_into_with_tag(recv, TAG);
        } else {
            p.receive_into_with_tag(recv, TAG);
            p.send_with_tag(&*recv, TAG);
        }
    }
    start.elapsed().as_secs_f64()
}

fn human(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

fn print_table(all: &[Record], pairs: usize, runtime: &MpiRuntime) {
    println!(
        "ferry-bench p2p: ping-pong, {pairs} pair(s) at once; MpiComm vs plain rsmpi; median of reps"
    );
    println!(
        "MPI: {}",
        runtime
            .library_version()
            .lines()
            .next()
            .unwrap_or("")
            .trim()
    );
    println!(
        "{:>9} {:>8} {:>11} {:>11} {:>9} {:>10} {:>10} {:>7}{}",
        "bytes",
        "iters",
        "ferry us",
        "rsmpi us",
        "diff us",
        "ferry GB/s",
        "rsmpi GB/s",
        "ratio",
        if pairs > 1 {
            "  all pairs ferry GB/s"
        } else {
            ""
        }
    );
    for r in all.iter().filter(|r| r.pair == 0) {
        let total: f64 = all
            .iter()
            .filter(|x| x.bytes == r.bytes)
            .map(|x| x.ferry_bandwidth_gbs)
            .sum();
        println!(
            "{:>9} {:>8} {:>11.3} {:>11.3} {:>9.3} {:>10.3} {:>10.3} {:>7.3}{}",
            human(r.bytes),
            r.iters,
            r.ferry_latency_us,
            r.rsmpi_latency_us,
            r.latency_diff_us,
            r.ferry_bandwidth_gbs,
            r.rsmpi_bandwidth_gbs,
            r.ratio,
            if pairs > 1 {
                format!("  {total:>20.3}")
            } else {
                String::new()
            }
        );
    }
}
