//! Runs the collectives' correctness suite (`ferry_collectives::check`) over `MpiComm` as a
//! real multi-process job: `mpirun -np 4 ferry-collectives-check [--thorough]
//! [--ranks-per-node N]`. Exits non-zero if any case fails on any rank.

use ferry_collectives::check::{CheckOptions, run_checks};
use ferry_comm::{Comm, MpiRuntime, Source, TagMatch};

fn usage(msg: &str) -> ! {
    eprintln!(
        "ferry-collectives-check: {msg}\nusage: ferry-collectives-check [--thorough] [--ranks-per-node N]"
    );
    std::process::exit(2);
}

fn main() {
    ferry_comm::init_logging();
    let mut opts = CheckOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--thorough" => opts.thorough = true,
            "--ranks-per-node" => {
                opts.ranks_per_node = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n: &usize| n > 0)
                    .unwrap_or_else(|| usage("--ranks-per-node needs a positive number"))
            }
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    let runtime = MpiRuntime::init().unwrap_or_else(|e| usage(&e.to_string()));
    let world = runtime.world().unwrap_or_else(|e| usage(&e.to_string()));
    // The suite gets its own communicator; `world` stays for the summary.
    let own = match world.split(Some(0), world.rank() as i32) {
        Ok(Some(c)) => c,
        other => usage(&format!("split failed: {other:?}")),
    };
    let (rank, size) = (world.rank(), world.size());
    let t = std::time::Instant::now();
    let results = run_checks(own, &opts);
    let failed: Vec<_> = results.iter().filter(|r| r.failure.is_some()).collect();
    for r in &failed {
        eprintln!(
            "rank {rank}: FAILED {}: {}",
            r.name,
            r.failure.as_deref().unwrap_or("")
        );
    }
    // Rank 0 learns every rank's failure count, then prints the summary.
    const TAG: i32 = 999;
    let mut total = failed.len() as u64;
    if rank == 0 {
        for _ in 1..size {
            let mut b = [0u8; 8];
            match world.recv(Source::Any, TagMatch::Tag(TAG), &mut b) {
                Ok(_) => total += u64::from_le_bytes(b),
                Err(e) => {
                    eprintln!("ferry-collectives-check: {e}");
                    total += 1;
                }
            }
        }
        println!(
            "ferry-collectives-check on {size} ranks ({} per node{}): {} cases x {size} ranks in {:.2?}, {total} failures",
            opts.ranks_per_node,
            if opts.thorough { ", thorough" } else { "" },
            results.len(),
            t.elapsed()
        );
    } else if let Err(e) = world.send(0, TAG, &(failed.len() as u64).to_le_bytes()) {
        eprintln!("ferry-collectives-check: {e}");
        total += 1;
    }
    drop(world);
    drop(runtime);
    std::process::exit(i32::from(total != 0));
}
