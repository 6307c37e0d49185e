//! Runs the `Comm` conformance suite as a real multi-process job:
//! `mpirun -np 4 ferry-comm-conformance [--backend mpi|tcp] [--rails 127.0.0.1,127.0.0.2]
//! [--large-bytes N]`. With `--backend tcp` the ranks bootstrap a `TcpComm` over the given
//! rails through MPI and run the suite over it. Exits non-zero if any case fails on any rank.

use ferry_comm::conformance::{Options, cases, run_suite};
use ferry_comm::{Comm, MpiComm, MpiRuntime, Source, TagMatch, TcpComm, TcpConfig};

struct Args {
    backend: String,
    rails: String,
    large_bytes: Option<usize>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        backend: "mpi".into(),
        rails: "127.0.0.1,127.0.0.2".into(),
        large_bytes: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--backend" => a.backend = value()?,
            "--rails" => a.rails = value()?,
            "--large-bytes" => {
                let v = value()?;
                a.large_bytes = Some(v.parse().map_err(|_| format!("bad --large-bytes {v}"))?);
            }
            "-h" | "--help" => {
                println!(
                    "usage: ferry-comm-conformance [--backend mpi|tcp] [--rails IP,IP,...] [--large-bytes N]"
                );
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    if a.backend != "mpi" && a.backend != "tcp" {
        return Err(format!("unknown backend {}", a.backend));
    }
    Ok(a)
}

fn main() {
    ferry_comm::init_logging();
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("ferry-comm-conformance: {e}");
        std::process::exit(2);
    });
    let runtime = match MpiRuntime::init() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferry-comm-conformance: {e}");
            std::process::exit(2);
        }
    };
    let world = runtime.world().unwrap_or_else(|e| {
        eprintln!("ferry-comm-conformance: {e}");
        std::process::exit(2);
    });
    let mut options = Options::default();
    if let Some(n) = args.large_bytes {
        options.large_bytes = n;
    }
    let library = runtime
        .library_version()
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    let failed = if args.backend == "tcp" {
        let rails = TcpConfig::parse_rails(&args.rails).unwrap_or_else(|e| {
            eprintln!("ferry-comm-conformance: {e}");
            std::process::exit(2);
        });
        let config = TcpConfig::new(rails.clone())
            .with_env()
            .unwrap_or_else(|e| {
                eprintln!("ferry-comm-conformance: {e}");
                std::process::exit(2);
            });
        match TcpComm::bootstrap_over(&world, config) {
            Ok(tcp) => {
                let label = format!("TcpComm over rails {rails:?}, bootstrapped through MPI");
                suite(&tcp, &world, &options, &label)
            }
            Err(e) => {
                eprintln!("rank {}: TcpComm bootstrap failed: {e}", world.rank());
                gather_failures(&world, 1);
                1
            }
        }
    } else {
        suite(&world, &world, &options, &format!("MpiComm ({library})"))
    };
    drop(world);
    drop(runtime);
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

/// Runs the suite on `comm`, reports, and returns the total failures of all ranks (on rank 0;
/// this rank's own elsewhere).
fn suite<C: Comm>(comm: &C, world: &MpiComm, options: &Options, label: &str) -> usize {
    let results = run_suite(comm, options);
    let failed: Vec<_> = results
        .iter()
        .filter_map(|r| r.failure.as_ref().map(|f| (r.name, f)))
        .collect();
    for (name, f) in &failed {
        let f: String = f.chars().take(400).collect();
        eprintln!("rank {}: FAILED {name}: {f}", world.rank());
    }
    // Rank 0 learns every rank's failure count, then prints the summary.
    let total = gather_failures(world, failed.len());
    if world.rank() == 0 {
        for r in &results {
            println!(
                "{} {}",
                if r.failure.is_none() { "ok  " } else { "FAIL" },
                r.name
            );
        }
        println!(
            "{label} conformance on {} ranks: {} cases x {} ranks, {} failures",
            world.size(),
            cases::<C>().len(),
            world.size(),
            total
        );
    }
    total.max(failed.len())
}

fn gather_failures(world: &MpiComm, mine: usize) -> usize {
    const TAG: i32 = 999;
    if world.rank() != 0 {
        let _ = world.send(0, TAG, &(mine as u64).to_le_bytes());
        return mine;
    }
    let mut total = mine;
    for src in 1..world.size() {
        let mut b = [0u8; 8];
        match world.recv(Source::Rank(src), TagMatch::Tag(TAG), &mut b) {
            Ok(_) => total += u64::from_le_bytes(b) as usize,
            Err(e) => {
                eprintln!("rank 0: no failure count from rank {src}: {e}");
                total += 1;
            }
        }
    }
    total
}
