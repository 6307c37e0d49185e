//! The collectives' correctness suite (`ferry_collectives::check`) over `ThreadComm` at every
//! rank count from 1 to 17, against sequential references.

use std::time::Instant;

use ferry_collectives::check::{CheckOptions, run_checks};
use ferry_comm::ThreadComm;

fn suite_at(p: usize) {
    let opts = CheckOptions {
        // Every type with every operator at a few counts, a sample of pairs at the others.
        thorough: matches!(p, 2 | 3 | 5),
        ranks_per_node: if p % 3 == 0 { 3 } else { 2 },
        ..CheckOptions::default()
    };
    let t = Instant::now();
    let per_rank = ThreadComm::run(p, |comm| run_checks(comm, &opts));
    let mut failures = Vec::new();
    for (rank, results) in per_rank.iter().enumerate() {
        for r in results {
            if let Some(f) = &r.failure {
                failures.push(format!("p={p} rank {rank}: {}: {f}", r.name));
            }
        }
    }
    println!(
        "p={p}: {} cases per rank in {:.2?}",
        per_rank[0].len(),
        t.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn one_to_six_ranks() {
    (1..=6).for_each(suite_at);
}

#[test]
fn seven_to_twelve_ranks() {
    (7..=12).for_each(suite_at);
}

#[test]
fn thirteen_to_seventeen_ranks() {
    (13..=17).for_each(suite_at);
}
