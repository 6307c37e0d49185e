//! Runs the `Comm` conformance suite over `MpiComm` as a real multi-process job:
//! `mpirun -np 4 ferry-comm-conformance`. Exits non-zero if any case fails on any rank.

use ferry_comm::conformance::{Options, cases, run_suite};
use ferry_comm::{Comm, MpiComm, MpiRuntime, Source, TagMatch};

fn main() {
    ferry_comm::init_logging();
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
    let results = run_suite(&world, &Options::default());
    let failed: Vec<_> = results
        .iter()
        .filter_map(|r| r.failure.as_ref().map(|f| (r.name, f)))
        .collect();
    for (name, f) in &failed {
        let f: String = f.chars().take(400).collect();
        eprintln!("rank {}: FAILED {name}: {f}", world.rank());
    }
    // Rank 0 learns every rank's failure count, then prints the summary.
    let total = gather_failures(&world, failed.len());
    if world.rank() == 0 {
        for r in &results {
            println!(
                "{} {}",
                if r.failure.is_none() { "ok  " } else { "FAIL" },
                r.name
            );
        }
        let cases = cases::<MpiComm>().len();
        println!(
            "MpiComm conformance on {} ranks ({}): {} cases x {} ranks, {} failures",
            world.size(),
            runtime.library_version().lines().next().unwrap_or(""),
            cases,
            world.size(),
            total
        );
    }
    drop(world);
    drop(runtime);
    std::process::exit(if failed.is_empty() && total == 0 {
        0
    } else {
        1
    });
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
