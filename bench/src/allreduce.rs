//! `ferry-bench allreduce`: ferry-collectives' all-reduce (or all-gather, reduce-scatter) over
//! the multi-rail `TcpComm`, under `mpirun` with one rank per host of the network test bed
//! (`scripts/testbed.sh`), in the manner of nccl-tests' `all_reduce_perf`.
//!
//! 1. Rails: `--rails IP,IP` or, by default, this rank's data NICs from the bed's
//!    `topology.toml` (the host whose rail addresses are local here: a UDP socket binds to an
//!    address only where it is an interface's), with their `tbf` rates.
//! 2. `TcpComm` is bootstrapped over MPI; the rail weights start from the rates and a
//!    [`RailBalancer`] re-weights them from the transport's telemetry after every
//!    `--rebalance-every` operations.
//! 3. Sweep mode, for each size from `--min-bytes` to `--max-bytes` (doubling): fill int32
//!    data (rank r, element i: (r + 1)(i mod 1021 + 1), as `bench/c/allreduce_mpi.c` does), run
//!    one warm-up and check it element by element against a sequential reference (the sum over
//!    ranks in rank order, wrapping), pick the iteration count from the slowest rank's warm-up
//!    (fewer for big sizes, capped by `--target-seconds`, `--max-iters` and the whole run's
//!    `--max-seconds`), time them between barriers, check the last result again, and report
//!    the slowest rank's time per operation.
//! 4. Stream mode (`--stream N --size S`): N operations of one size back to back, each timed
//!    (slowest rank), with rank 0's rail weights after it and the bed's rates at that moment
//!    (re-read from `topology.toml` between operations, only for the bound in the record: the
//!    balancer learns from telemetry alone), so a rate change made by a script during the
//!    stream shows how many operations re-weighting takes.
//!
//! Records (JSON lines, `--json`): `bytes`, `time_us`, `algbw_gbps`, `busbw_gbps` (algbw ·
//! 2(p−1)/p for all-reduce, (p−1)/p for the others), `fraction_of_bound` (the bound's time /
//! ferry's time, where the bound is 2(p−1)/p · n / (B_fast + B_slow), or (p−1)/p · n / (..)
//! for the others, with B the bed's `tbf` rates of the slowest host, named in `bound_rates`),
//! and `fraction_of_payload_bound`, the same against the TCP payload those rates can carry
//! ([`PAYLOAD_SHARE`]: a `tbf` rate counts Ethernet frames, headers included).
//!
//! Not done yet: data types other than int32 and operators other than sum in the sweep.

use std::net::{IpAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Instant;

use ferry_collectives::{Algorithm, Collectives, RailBalancer, ReduceOp, Reprobe, Topology};
use ferry_comm::{Comm, MpiRuntime, TcpComm, TcpConfig};
use mpi::collective::SystemOperation;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};

use crate::report::{parse_bytes, write_json_lines};

/// Options of `ferry-bench allreduce`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The collective: allreduce, allgather or reduce-scatter.
    #[arg(long, default_value = "allreduce")]
    op: String,
    /// The algorithm of the all-reduce: auto (the planner's), ring or doubling.
    #[arg(long, default_value = "auto")]
    algorithm: String,
    /// Rail addresses of this rank (comma-separated); default: from the bed's topology.toml.
    #[arg(long)]
    rails: Option<String>,
    /// Use only these of the bed's rails, by NIC name (e.g. `fast`); default: all data NICs.
    #[arg(long, value_delimiter = ',')]
    rail_names: Vec<String>,
    /// The bed's topology.toml (default: $FERRY_TESTBED_DIR/topology.toml, else
    /// /tmp/$FERRY_TESTBED_PREFIX-testbed/topology.toml, prefix "ferry").
    #[arg(long)]
    topology: Option<PathBuf>,
    /// Smallest message of the sweep.
    #[arg(long, default_value = "4", value_parser = parse_bytes)]
    min_bytes: usize,
    /// Largest message of the sweep.
    #[arg(long, default_value = "256MiB", value_parser = parse_bytes)]
    max_bytes: usize,
    /// Seconds of timed operations per size (the iteration count follows from the warm-up).
    #[arg(long, default_value_t = 0.5)]
    target_seconds: f64,
    /// Most timed operations per size.
    #[arg(long, default_value_t = 1000)]
    max_iters: usize,
    /// Budget of the whole sweep in seconds: it stops before a size that would pass it.
    #[arg(long, default_value_t = 300.0)]
    max_seconds: f64,
    /// Stream mode: this many operations of `--size`, each recorded.
    #[arg(long)]
    stream: Option<usize>,
    /// The message size of stream mode.
    #[arg(long, default_value = "16MiB", value_parser = parse_bytes)]
    size: usize,
    /// Re-weight the rails from telemetry every k operations (0: never, weights stay at the
    /// topology's rates).
    #[arg(long, default_value_t = 1)]
    rebalance_every: u64,
    /// The balancer ignores rail shares shorter than this (latency, not bandwidth, rules
    /// them); it must stay under the slow rail's share of a chunk, or that rail is never
    /// measured and merely follows the fast one's estimate scaled by the priors.
    #[arg(long, default_value = "64KiB", value_parser = parse_bytes)]
    balancer_min_bytes: usize,
    /// Probe the rails again (each alone, `--reprobe-bytes`) when operations of at least this
    /// size run 1.3x slower than the recent ones twice in a row (0: never).
    #[arg(long, default_value = "0", value_parser = parse_bytes)]
    reprobe_min_bytes: usize,
    /// Bytes per rail in such a probe.
    #[arg(long, default_value = "4MiB", value_parser = parse_bytes)]
    reprobe_bytes: usize,
    /// Throughput samples the balancer keeps per rail and direction (median).
    #[arg(long, default_value_t = 16)]
    balancer_window: usize,
    /// Bytes per pipelined ring message (the planner's chunk).
    #[arg(long, default_value = "1MiB", value_parser = parse_bytes)]
    chunk_bytes: usize,
    /// TcpComm's striping threshold: shorter messages go whole on the best rail.
    #[arg(long, value_parser = parse_bytes)]
    stripe_min_bytes: Option<usize>,
    /// TCP connections per NIC: each NIC becomes this many rails (the same address, its
    /// rate split evenly), as Open MPI's `btl_tcp_links` opens several connections per
    /// interface pair.
    #[arg(long, default_value_t = 1)]
    links: usize,
    /// TcpComm's I/O threads.
    #[arg(long)]
    io_threads: Option<usize>,
    /// A label copied into every record.
    #[arg(long, default_value = "")]
    label: String,
    /// Write one JSON record per size (or per stream operation) to this file (rank 0).
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Which collective is measured.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Allreduce,
    Allgather,
    ReduceScatter,
}

impl Op {
    fn parse(s: &str) -> Result<Op, String> {
        match s {
            "allreduce" => Ok(Op::Allreduce),
            "allgather" => Ok(Op::Allgather),
            "reduce-scatter" | "reduce_scatter" => Ok(Op::ReduceScatter),
            _ => Err(format!(
                "unknown --op '{s}' (allreduce, allgather or reduce-scatter)"
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Op::Allreduce => "allreduce",
            Op::Allgather => "allgather",
            Op::ReduceScatter => "reduce_scatter",
        }
    }

    /// The bus-bandwidth factor (nccl-tests' convention): bytes each rank must move per byte
    /// of `bytes`.
    fn bus_factor(self, p: usize) -> f64 {
        if p <= 1 {
            return 0.0;
        }
        let p = p as f64;
        match self {
            Op::Allreduce => 2.0 * (p - 1.0) / p,
            Op::Allgather | Op::ReduceScatter => (p - 1.0) / p,
        }
    }
}

/// The bound of an operation of `bytes` with the bed's rates (its time in us and the rates),
/// from the given description or the one read at start.
type BoundFn<'a> = dyn Fn(usize, Option<&Topology>) -> Option<(f64, BoundRates)> + 'a;

/// The share of a `tbf` rate left for TCP payload on the bed's veths (MTU 1500): each full
/// frame of 1514 counted bytes (Ethernet header included) carries 1448 bytes of payload (20 B of
/// IP header, 32 B of TCP header with timestamps). No TCP transport exceeds this share of the
/// nominal bound; the bed's single-stream probe reaches 0.945 of 2 Gbit and 0.97 of 200 Mbit.
const PAYLOAD_SHARE: f64 = 1448.0 / 1514.0;

/// The rates a bound was computed from.
#[derive(serde::Serialize, Clone, Debug)]
struct BoundRates {
    /// Per-rail rates (Gbit/s) of the host with the least total, in rail order.
    rail_gbit: Vec<f64>,
    /// Their sum: B_fast + B_slow.
    total_gbit: f64,
    /// The TCP payload the sum carries: `total_gbit` · [`PAYLOAD_SHARE`].
    payload_total_gbit: f64,
    /// The host they belong to.
    host: String,
    /// Where they came from.
    source: String,
}

/// One size of the sweep, or one operation of a stream.
#[derive(serde::Serialize, Debug)]
struct Record {
    bench: &'static str,
    #[serde(rename = "impl")]
    imp: &'static str,
    op: &'static str,
    mode: &'static str,
    label: String,
    ranks: usize,
    bytes: usize,
    dtype: &'static str,
    reduce: &'static str,
    algorithm: String,
    /// TCP connections per NIC (`--links`).
    links: usize,
    iters: usize,
    /// Per operation, the slowest rank (mean over `iters` in sweep mode).
    time_us: f64,
    /// Rank 0's fastest and median single operation (sweep mode).
    min_op_us: Option<f64>,
    median_op_us: Option<f64>,
    algbw_gbps: f64,
    busbw_gbps: f64,
    bound_time_us: Option<f64>,
    fraction_of_bound: Option<f64>,
    /// The bound's time with the payload rates / ferry's time.
    fraction_of_payload_bound: Option<f64>,
    bound_rates: Option<BoundRates>,
    /// Rank 0's rail weights after the timed operations.
    rail_weights: Vec<f64>,
    rails: Vec<String>,
    /// Stream mode: the operation's index and its start, seconds since the stream began.
    index: Option<usize>,
    at_s: Option<f64>,
    errors: u64,
    loadavg_start: Option<f64>,
    loadavg_end: Option<f64>,
}

fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn default_topology_path() -> PathBuf {
    if let Ok(d) = std::env::var("FERRY_TESTBED_DIR") {
        return Path::new(&d).join("topology.toml");
    }
    let prefix = std::env::var("FERRY_TESTBED_PREFIX").unwrap_or_else(|_| "ferry".into());
    PathBuf::from(format!("/tmp/{prefix}-testbed/topology.toml"))
}

/// Whether `addr` belongs to an interface of this network namespace.
fn is_local(addr: IpAddr) -> bool {
    UdpSocket::bind((addr, 0)).is_ok()
}

/// The rail addresses of a node, in rail order.
fn node_rails(node: &ferry_collectives::Node) -> Result<Vec<IpAddr>, String> {
    node_rails_named(node, &[])
}

/// The addresses of the node's rails named in `names` (all when empty), in rail order.
fn node_rails_named(
    node: &ferry_collectives::Node,
    names: &[String],
) -> Result<Vec<IpAddr>, String> {
    node.rails()
        .filter(|n| names.is_empty() || names.contains(&n.name))
        .map(|n| {
            let a = n
                .address
                .as_deref()
                .ok_or_else(|| format!("node {}: rail {} has no address", node.name, n.name))?;
            a.parse()
                .map_err(|_| format!("node {}: rail address {a:?} is not an IP", node.name))
        })
        .collect()
}

/// The node of `topo` whose rails are all local here.
fn local_node(topo: &Topology) -> Option<usize> {
    topo.nodes
        .iter()
        .position(|n| node_rails(n).is_ok_and(|r| !r.is_empty() && r.iter().all(|a| is_local(*a))))
}

/// The bound's rates: the host (among `hosts`, node indices of the ranks) with the least
/// total rail rate.
fn bound_rates(topo: &Topology, hosts: &[usize], source: &Path) -> Option<BoundRates> {
    hosts
        .iter()
        .filter_map(|&h| topo.nodes.get(h))
        .map(|n| {
            let g: Vec<f64> = n.rails().map(|x| x.gbit.unwrap_or(f64::NAN)).collect();
            BoundRates {
                total_gbit: g.iter().sum(),
                payload_total_gbit: g.iter().sum::<f64>() * PAYLOAD_SHARE,
                rail_gbit: g,
                host: n.name.clone(),
                source: source.display().to_string(),
            }
        })
        .filter(|b| b.total_gbit.is_finite() && b.total_gbit > 0.0)
        .min_by(|a, b| a.total_gbit.total_cmp(&b.total_gbit))
}

/// Rank r's contribution at element i (as in allreduce_mpi.c).
fn value(rank: usize, i: usize) -> i32 {
    ((rank as i32) + 1).wrapping_mul((i % 1021) as i32 + 1)
}

/// Fills this rank's send data: `count` elements starting at global element `first`.
fn fill(buf: &mut [i32], rank: usize, first: usize) {
    for (k, x) in buf.iter_mut().enumerate() {
        *x = value(rank, first + k);
    }
}

/// The sequential reference of the sum at element i: ranks added in rank order, wrapping.
fn reference_sum(p: usize, i: usize) -> i32 {
    (0..p).fold(0i32, |acc, r| acc.wrapping_add(value(r, i)))
}

/// Counts the elements of the result that differ from the sequential reference.
fn check(op: Op, out: &[i32], p: usize, rank: usize) -> u64 {
    let mut bad = 0u64;
    match op {
        Op::Allreduce => {
            // The reference repeats every 1021 elements: compute one period.
            let period: Vec<i32> = (0..1021).map(|i| reference_sum(p, i)).collect();
            for (i, x) in out.iter().enumerate() {
                bad += u64::from(*x != period[i % 1021]);
            }
        }
        Op::ReduceScatter => {
            // This rank's block: elements rank·n .. (rank+1)·n of the reduction.
            let first = rank * out.len();
            for (k, x) in out.iter().enumerate() {
                bad += u64::from(*x != reference_sum(p, first + k));
            }
        }
        Op::Allgather => {
            // Block r is rank r's contribution, generated at its global offset.
            let n = out.len() / p.max(1);
            for (i, x) in out.iter().enumerate() {
                bad += u64::from(*x != value(i / n.max(1), i));
            }
        }
    }
    bad
}

/// Buffers of one size: what each rank sends and where the result lands.
struct Case {
    op: Op,
    send: Vec<i32>,
    out: Vec<i32>,
    rank: usize,
    p: usize,
}

impl Case {
    /// `bytes` is the all-reduce message, the all-gather's result or the reduce-scatter's
    /// input (nccl-tests' sizes); `None` when it has no whole element per rank.
    fn new(op: Op, bytes: usize, rank: usize, p: usize) -> Option<Case> {
        let count = bytes / 4;
        let (send, out) = match op {
            Op::Allreduce => {
                let mut s = vec![0; count];
                fill(&mut s, rank, 0);
                (s, vec![i32::MIN; count])
            }
            Op::Allgather => {
                let n = count / p;
                if n == 0 {
                    return None;
                }
                let mut s = vec![0; n];
                fill(&mut s, rank, rank * n);
                (s, vec![i32::MIN; n * p])
            }
            Op::ReduceScatter => {
                let n = count / p;
                if n == 0 {
                    return None;
                }
                let mut s = vec![0; n * p];
                fill(&mut s, rank, 0);
                (s, vec![i32::MIN; n])
            }
        };
        Some(Case {
            op,
            send,
            out,
            rank,
            p,
        })
    }

    fn bytes(&self) -> usize {
        4 * match self.op {
            Op::Allreduce | Op::Allgather => self.out.len(),
            Op::ReduceScatter => self.send.len(),
        }
    }

    /// One operation. The all-reduce works in place on `out`, refilled from `send` first
    /// (a copy at memory speed, outside nothing: it is part of the timed operation, as an
    /// out-of-place MPI_Allreduce copies too).
    fn run<C: Comm>(
        &mut self,
        coll: &Collectives<C>,
        alg: Option<Algorithm>,
    ) -> Result<(), String> {
        let e = |e: ferry_collectives::Error| e.to_string();
        match self.op {
            Op::Allreduce => {
                self.out.copy_from_slice(&self.send);
                match alg {
                    Some(a) => coll
                        .allreduce_with(a, &mut self.out, ReduceOp::Sum)
                        .map_err(e),
                    None => coll.allreduce(&mut self.out, ReduceOp::Sum).map_err(e),
                }
            }
            Op::Allgather => coll.allgather(&self.send, &mut self.out).map_err(e),
            Op::ReduceScatter => coll
                .reduce_scatter(&self.send, &mut self.out, ReduceOp::Sum)
                .map_err(e),
        }
    }

    fn errors(&self) -> u64 {
        check(self.op, &self.out, self.p, self.rank)
    }

    fn reset(&mut self) {
        self.out.fill(i32::MIN);
    }
}

/// The world communicator of plain rsmpi, for the benchmark's own control traffic (maxima of
/// times, error counts), kept apart from the transport under test.
struct Control {
    world: mpi::topology::SimpleCommunicator,
}

impl Control {
    fn max_f64(&self, x: f64) -> f64 {
        let mut out = 0.0;
        self.world
            .all_reduce_into(&x, &mut out, SystemOperation::max());
        out
    }

    fn max_f64s(&self, x: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; x.len()];
        self.world
            .all_reduce_into(x, &mut out[..], SystemOperation::max());
        out
    }

    fn sum_u64(&self, x: u64) -> u64 {
        let mut out = 0u64;
        self.world
            .all_reduce_into(&x, &mut out, SystemOperation::sum());
        out
    }

    fn all_usize(&self, x: usize) -> Vec<usize> {
        let mut out = vec![0u64; self.world.size() as usize];
        self.world.all_gather_into(&(x as u64), &mut out[..]);
        out.into_iter().map(|v| v as usize).collect()
    }

    fn bcast_usize(&self, x: usize) -> usize {
        let mut v = x as u64;
        self.world.process_at_rank(0).broadcast_into(&mut v);
        v as usize
    }
}

/// What a rank learned about its place on the bed.
struct Placement {
    rails: Vec<IpAddr>,
    /// Prior rail rates (Gbit/s), equal when unknown.
    prior: Vec<f64>,
    topology: Option<(Topology, PathBuf)>,
    /// Node index of every rank (`usize::MAX` where unknown).
    hosts: Vec<usize>,
}

fn place(args: &Args, ctl: &Control) -> Result<Placement, String> {
    let path = args.topology.clone().unwrap_or_else(default_topology_path);
    let topo = match Topology::load(&path) {
        Ok(t) => Some(t),
        Err(e) if args.rails.is_some() => {
            eprintln!(
                "ferry-bench allreduce: no bed description ({e}); rails from --rails, no bound"
            );
            None
        }
        Err(e) => {
            return Err(format!(
                "no --rails and no bed description: {e} (scripts/testbed.sh up, or --topology)"
            ));
        }
    };
    let mine = topo.as_ref().and_then(local_node);
    let rails = match &args.rails {
        Some(r) => TcpConfig::parse_rails(r).map_err(|e| e.to_string())?,
        None => {
            let (t, i) = topo.as_ref().zip(mine).ok_or_else(|| {
                format!(
                    "none of the hosts in {} has its rail addresses here; is this rank inside \
                     a bed namespace (scripts/testbed-mpirun.sh)?",
                    path.display()
                )
            })?;
            let r = node_rails_named(&t.nodes[i], &args.rail_names)?;
            if r.is_empty() {
                return Err(format!(
                    "no rail of {} is named {:?}",
                    t.nodes[i].name, args.rail_names
                ));
            }
            r
        }
    };
    let prior = match (&topo, mine) {
        (Some(t), Some(i)) if args.rails.is_none() => t.nodes[i]
            .rails()
            .filter(|n| args.rail_names.is_empty() || args.rail_names.contains(&n.name))
            .map(|n| n.gbit.unwrap_or(1.0))
            .collect(),
        _ => vec![1.0; rails.len()],
    };
    let hosts = ctl.all_usize(mine.unwrap_or(usize::MAX));
    Ok(Placement {
        rails,
        prior,
        topology: topo.map(|t| (t, path)),
        hosts,
    })
}

pub(crate) fn run(args: &Args) -> Result<(), String> {
    let op = Op::parse(&args.op)?;
    let alg = match args.algorithm.as_str() {
        "auto" => None,
        "ring" => Some(Algorithm::Ring),
        "doubling" => Some(Algorithm::RecursiveDoubling),
        a => {
            return Err(format!(
                "unknown --algorithm '{a}' (auto, ring or doubling)"
            ));
        }
    };
    if args.min_bytes < 4 || args.min_bytes > args.max_bytes {
        return Err(format!(
            "need 4 <= --min-bytes <= --max-bytes (got {} and {})",
            args.min_bytes, args.max_bytes
        ));
    }
    if !(args.target_seconds > 0.0 && args.max_seconds > 0.0) || args.max_iters == 0 {
        return Err("--target-seconds, --max-seconds and --max-iters must be positive".into());
    }
    if args.stream == Some(0) || args.size < 4 {
        return Err("--stream needs at least 1 operation and --size at least 4 bytes".into());
    }
    let runtime = MpiRuntime::init().map_err(|e| e.to_string())?;
    let world = runtime.world().map_err(|e| e.to_string())?;
    let ctl = Control {
        world: mpi::topology::SimpleCommunicator::world(),
    };
    let (rank, p) = (world.rank(), world.size());
    if args.links == 0 || args.links > 8 {
        return Err(format!("--links must be 1 to 8 (got {})", args.links));
    }
    let mut placed = place(args, &ctl)?;
    let k = args.links;
    placed.rails = placed
        .rails
        .iter()
        .flat_map(|a| std::iter::repeat_n(*a, k))
        .collect();
    placed.prior = placed
        .prior
        .iter()
        .flat_map(|g| std::iter::repeat_n(g / k as f64, k))
        .collect();

    let mut config = TcpConfig::new(placed.rails.clone())
        .with_env()
        .map_err(|e| e.to_string())?;
    if let Some(s) = args.stripe_min_bytes {
        config.stripe_min_bytes = s;
    }
    if let Some(t) = args.io_threads {
        config.io_threads = t;
    }
    let tcp = TcpComm::bootstrap_over(&world, config).map_err(|e| format!("rank {rank}: {e}"))?;
    let prior_sum: f64 = placed.prior.iter().sum();
    let start_weights: Vec<f64> = placed.prior.iter().map(|g| g / prior_sum).collect();
    tcp.set_rail_weights(&start_weights)
        .map_err(|e| e.to_string())?;
    let planner = ferry_collectives::Planner {
        chunk_bytes: args.chunk_bytes.max(4),
        ..Default::default()
    };
    let mut coll = Collectives::new(tcp).with_planner(planner);
    if args.rebalance_every > 0 {
        // The `links` connections of one NIC share its link: one group per NIC.
        let groups: Vec<usize> = (0..placed.prior.len()).map(|i| i / k).collect();
        let b = RailBalancer::new(&placed.prior)
            .and_then(|b| b.with_groups(&groups))
            .map_err(|e| e.to_string())?
            .every(args.rebalance_every)
            .min_bytes(args.balancer_min_bytes as u64)
            .window(args.balancer_window);
        coll = coll.with_rail_balancer(b);
    }
    if args.reprobe_min_bytes > 0 {
        let mut r = Reprobe::new(args.reprobe_min_bytes);
        r.probe_bytes = args.reprobe_bytes;
        coll = coll.with_reprobe(r);
    }
    if rank == 0 {
        println!(
            "ferry-bench {}: {p} ranks over TcpComm, rails {:?} (prior {:?} Gbit/s), hosts {:?}",
            op.name(),
            placed.rails,
            placed.prior,
            placed.hosts
        );
    }
    let bound = |bytes: usize, topo: Option<&Topology>| -> Option<(f64, BoundRates)> {
        let (t0, path) = placed.topology.as_ref()?;
        let rates = bound_rates(topo.unwrap_or(t0), &placed.hosts, path)?;
        let secs = op.bus_factor(p) * bytes as f64 * 8.0 / (rates.total_gbit * 1e9);
        Some((secs * 1e6, rates))
    };
    let base = |bytes: usize, algorithm: String, time_us: f64| -> Record {
        let algbw = bytes as f64 * 8.0 / (time_us * 1e3);
        let (bound_time_us, bound_rates) = match bound(bytes, None) {
            Some((t, r)) => (Some(t), Some(r)),
            None => (None, None),
        };
        Record {
            bench: "allreduce",
            imp: "ferry",
            op: op.name(),
            mode: "sweep",
            label: args.label.clone(),
            ranks: p,
            bytes,
            dtype: "int32",
            reduce: "sum",
            algorithm,
            links: args.links,
            iters: 0,
            time_us,
            min_op_us: None,
            median_op_us: None,
            algbw_gbps: algbw,
            busbw_gbps: algbw * op.bus_factor(p),
            fraction_of_bound: bound_time_us.filter(|_| p > 1).map(|b| b / time_us),
            fraction_of_payload_bound: bound_time_us
                .filter(|_| p > 1)
                .map(|b| b / time_us / PAYLOAD_SHARE),
            bound_time_us,
            bound_rates,
            rail_weights: coll.comm().rail_weights(),
            rails: placed.rails.iter().map(|a| a.to_string()).collect(),
            index: None,
            at_s: None,
            errors: 0,
            loadavg_start: None,
            loadavg_end: None,
        }
    };

    let mut records = Vec::new();
    if let Some(n) = args.stream {
        records = stream(args, op, alg, &coll, &ctl, &placed, n, &base, &bound)?;
    } else {
        let start = Instant::now();
        let mut last_op = 0.0f64;
        let mut bytes = args.min_bytes;
        while bytes <= args.max_bytes {
            // Stop before a size whose warm-up and one operation (predicted at twice the last
            // size's time) would pass the budget; rank 0 decides for everyone.
            let go = ctl.bcast_usize(usize::from(
                start.elapsed().as_secs_f64() + 4.0 * last_op <= args.max_seconds,
            ));
            if go == 0 {
                if rank == 0 {
                    eprintln!(
                        "ferry-bench allreduce: stopping before {bytes} bytes: the {} s budget would pass",
                        args.max_seconds
                    );
                }
                break;
            }
            let Some(mut case) = Case::new(op, bytes, rank, p) else {
                bytes *= 2;
                continue;
            };
            let load0 = loadavg();
            let (mut rec, t) = sweep_one(args, alg, &coll, &ctl, &mut case, start, &base)?;
            last_op = t;
            rec.loadavg_start = load0;
            rec.loadavg_end = loadavg();
            if rank == 0 {
                println!(
                    "{:>10} B  {:>6} iters  {:>11.1} us  busbw {:>7.3} Gbit/s  bound {}  {}  weights {:?}",
                    rec.bytes,
                    rec.iters,
                    rec.time_us,
                    rec.busbw_gbps,
                    rec.fraction_of_bound
                        .map_or("-".into(), |f| format!("{:.1}%", 100.0 * f)),
                    rec.algorithm,
                    rec.rail_weights
                        .iter()
                        .map(|w| (w * 1000.0).round() / 1000.0)
                        .collect::<Vec<_>>()
                );
            }
            records.push(rec);
            match bytes.checked_mul(2) {
                Some(b) => bytes = b,
                None => break,
            }
        }
    }
    if rank == 0 {
        if let Some(path) = &args.json {
            write_json_lines(path, &records)?;
            println!("wrote {} records to {}", records.len(), path.display());
        }
    }
    drop(coll);
    drop(world);
    drop(runtime);
    Ok(())
}

/// Measures one size of the sweep; returns its record and the time per operation (s).
fn sweep_one<C: Comm>(
    args: &Args,
    alg: Option<Algorithm>,
    coll: &Collectives<C>,
    ctl: &Control,
    case: &mut Case,
    start: Instant,
    base: &dyn Fn(usize, String, f64) -> Record,
) -> Result<(Record, f64), String> {
    let bytes = case.bytes();
    let algorithm = match (case.op, alg) {
        (Op::Allreduce, Some(a)) => a.to_string(),
        (Op::Allreduce, None) => coll.plan_allreduce::<i32>(case.out.len()).to_string(),
        (_, _) => "ring".into(),
    };
    // 1. Warm-up, checked; then a few more where one is short, for a steadier estimate.
    coll.barrier().map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    case.run(coll, alg)?;
    let mut warm = t0.elapsed().as_secs_f64();
    let mut errors = case.errors();
    if ctl.sum_u64(errors) > 0 {
        return Err(format!(
            "{} of {bytes} bytes: {} wrong elements in the warm-up (rank {}: {errors})",
            case.op.name(),
            ctl.sum_u64(errors),
            case.rank
        ));
    }
    let warm_max = ctl.max_f64(warm);
    let extra = ((0.05 * args.target_seconds / warm_max.max(1e-9)) as usize).min(10);
    if extra >= 2 {
        coll.barrier().map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        for _ in 0..extra {
            case.run(coll, alg)?;
        }
        warm = t0.elapsed().as_secs_f64() / extra as f64;
    }
    let warm_max = ctl.max_f64(warm).max(1e-9);
    // 2. Iterations: about the target, within the caps and what is left of the budget.
    let left = (args.max_seconds - start.elapsed().as_secs_f64()).max(0.0);
    let iters = ((args.target_seconds / warm_max) as usize)
        .min(args.max_iters)
        .min((left / warm_max) as usize)
        .max(1);
    let iters = ctl.bcast_usize(iters);
    // 3. Timed operations between barriers; each one timed too (rank 0 reports min, median).
    case.reset();
    let mut each = Vec::with_capacity(iters);
    coll.barrier().map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    for _ in 0..iters {
        let t = Instant::now();
        case.run(coll, alg)?;
        each.push(t.elapsed().as_secs_f64());
    }
    let elapsed = t0.elapsed().as_secs_f64();
    errors += case.errors();
    let errors = ctl.sum_u64(errors);
    let elapsed = ctl.max_f64(elapsed);
    if errors > 0 {
        return Err(format!(
            "{} of {bytes} bytes: {errors} wrong elements after the timed operations",
            case.op.name()
        ));
    }
    let t = elapsed / iters as f64;
    let mut rec = base(bytes, algorithm, t * 1e6);
    rec.iters = iters;
    each.sort_by(f64::total_cmp);
    rec.min_op_us = each.first().map(|x| x * 1e6);
    rec.median_op_us = Some(crate::report::median(each) * 1e6);
    Ok((rec, t))
}

/// Stream mode: `n` operations of `--size`, each a record.
#[allow(clippy::too_many_arguments)]
fn stream<C: Comm>(
    args: &Args,
    op: Op,
    alg: Option<Algorithm>,
    coll: &Collectives<C>,
    ctl: &Control,
    placed: &Placement,
    n: usize,
    base: &dyn Fn(usize, String, f64) -> Record,
    bound: &BoundFn<'_>,
) -> Result<Vec<Record>, String> {
    let (rank, p) = (coll.comm().rank(), coll.comm().size());
    let mut case = Case::new(op, args.size, rank, p)
        .ok_or_else(|| format!("--size {} has no element per rank", args.size))?;
    let bytes = case.bytes();
    let algorithm = match (op, alg) {
        (Op::Allreduce, Some(a)) => a.to_string(),
        (Op::Allreduce, None) => coll.plan_allreduce::<i32>(case.out.len()).to_string(),
        _ => "ring".into(),
    };
    // Warm-up (checked), so connections and weights have seen traffic.
    case.run(coll, alg)?;
    let errors = ctl.sum_u64(case.errors());
    if errors > 0 {
        return Err(format!("stream warm-up: {errors} wrong elements"));
    }
    let mut times = Vec::with_capacity(n);
    let mut starts = Vec::with_capacity(n);
    let mut weights = Vec::with_capacity(n);
    let mut rates = Vec::with_capacity(n);
    let mut loads = Vec::with_capacity(n);
    let mut errors = 0;
    coll.barrier().map_err(|e| e.to_string())?;
    let t_start = Instant::now();
    for _ in 0..n {
        starts.push(t_start.elapsed().as_secs_f64());
        let t = Instant::now();
        case.run(coll, alg)?;
        times.push(t.elapsed().as_secs_f64());
        weights.push(coll.comm().rail_weights());
        errors += case.errors();
        if rank == 0 {
            // The bed's rates now, for this operation's bound only.
            let now = placed
                .topology
                .as_ref()
                .and_then(|(_, path)| Topology::load(path).ok());
            rates.push(bound(bytes, now.as_ref()));
            loads.push(loadavg());
        }
    }
    let times = ctl.max_f64s(&times);
    let errors = ctl.sum_u64(errors);
    if errors > 0 {
        return Err(format!("stream: {errors} wrong elements"));
    }
    let mut out = Vec::new();
    if rank != 0 {
        return Ok(out);
    }
    for (i, t) in times.iter().enumerate() {
        let mut r = base(bytes, algorithm.clone(), t * 1e6);
        r.mode = "stream";
        r.iters = 1;
        r.index = Some(i);
        r.at_s = Some(starts[i]);
        r.rail_weights = weights[i].clone();
        r.loadavg_end = loads[i];
        let (bt, br) = match rates[i].clone() {
            Some((t, r)) => (Some(t), Some(r)),
            None => (None, None),
        };
        r.fraction_of_bound = bt.map(|b| b / (t * 1e6));
        r.fraction_of_payload_bound = r.fraction_of_bound.map(|f| f / PAYLOAD_SHARE);
        r.bound_time_us = bt;
        r.bound_rates = br;
        println!(
            "op {i:>4} at {:>7.3} s: {:>9.1} ms  busbw {:>6.3} Gbit/s  bound {}  weights {:?}",
            starts[i],
            t * 1e3,
            r.busbw_gbps,
            r.fraction_of_bound
                .map_or("-".into(), |f| format!("{:.1}%", 100.0 * f)),
            r.rail_weights
                .iter()
                .map(|w| (w * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>()
        );
        out.push(r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_match_the_c_baseline_formula() {
        // allreduce_mpi.c checks (i % 1021 + 1) * p (p + 1) / 2.
        for p in 1..6 {
            for i in [0, 1, 1020, 1021, 5000] {
                let want = ((i % 1021 + 1) * p * (p + 1) / 2) as i32;
                assert_eq!(reference_sum(p, i), want);
            }
        }
    }

    #[test]
    fn checks_catch_a_wrong_element() {
        let p = 3;
        // All-reduce.
        let mut out: Vec<i32> = (0..3000).map(|i| reference_sum(p, i)).collect();
        assert_eq!(check(Op::Allreduce, &out, p, 0), 0);
        out[2047] ^= 1;
        assert_eq!(check(Op::Allreduce, &out, p, 0), 1);
        // All-gather: block r is rank r's data at its offset.
        let n = 10;
        let out: Vec<i32> = (0..n * p).map(|i| value(i / n, i)).collect();
        assert_eq!(check(Op::Allgather, &out, p, 1), 0);
        let mut bad = out.clone();
        bad[n] = value(0, n);
        assert_eq!(check(Op::Allgather, &bad, p, 1), 1);
        // Reduce-scatter: rank 2's block.
        let out: Vec<i32> = (2 * n..3 * n).map(|i| reference_sum(p, i)).collect();
        assert_eq!(check(Op::ReduceScatter, &out, p, 2), 0);
        assert_eq!(check(Op::ReduceScatter, &out, p, 1), n as u64);
    }

    #[test]
    fn cases_size_and_bus_factors() {
        assert!(Case::new(Op::Allgather, 4, 0, 2).is_none());
        let c = Case::new(Op::ReduceScatter, 64, 1, 4).unwrap();
        assert_eq!((c.send.len(), c.out.len(), c.bytes()), (16, 4, 64));
        let c = Case::new(Op::Allgather, 64, 1, 4).unwrap();
        assert_eq!((c.send.len(), c.out.len(), c.bytes()), (4, 16, 64));
        assert_eq!(Op::Allreduce.bus_factor(4), 1.5);
        assert_eq!(Op::Allgather.bus_factor(4), 0.75);
        assert_eq!(Op::Allreduce.bus_factor(1), 0.0);
        assert!(Op::parse("alltoall").is_err());
    }

    #[test]
    fn the_bound_takes_the_slowest_host() {
        let topo = Topology::from_toml(
            r#"
[[node]]
name = "h0"
nic = [ { name = "fast", class = "ethernet", gbit = 0.5, address = "10.0.0.1" },
        { name = "slow", class = "ethernet", gbit = 0.2, address = "10.0.1.1" },
        { name = "mgmt", class = "ethernet", address = "10.0.2.1", role = "management" } ]
[[node]]
name = "h1"
nic = [ { name = "fast", class = "ethernet", gbit = 2.0, address = "10.0.0.2" },
        { name = "slow", class = "ethernet", gbit = 0.2, address = "10.0.1.2" } ]
"#,
        )
        .unwrap();
        let b = bound_rates(&topo, &[0, 1], Path::new("t.toml")).unwrap();
        assert_eq!(b.host, "h0");
        assert!((b.total_gbit - 0.7).abs() < 1e-12);
        assert!((b.payload_total_gbit - 0.7 * 1448.0 / 1514.0).abs() < 1e-12);
        assert_eq!(b.rail_gbit, [0.5, 0.2]);
        let b = bound_rates(&topo, &[1], Path::new("t.toml")).unwrap();
        assert!((b.total_gbit - 2.2).abs() < 1e-12);
        assert!(bound_rates(&topo, &[usize::MAX], Path::new("t.toml")).is_none());
        assert_eq!(node_rails(&topo.nodes[0]).unwrap().len(), 2);
        // 127.0.0.1 is local everywhere; a documentation address is nowhere.
        assert!(is_local("127.0.0.1".parse().unwrap()));
        assert!(!is_local("192.0.2.77".parse().unwrap()));
    }
}
