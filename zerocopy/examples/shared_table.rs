//! One feature table shared by every rank of a host: run under `mpirun -np N`. Rank 0 creates
//! the table in POSIX shared memory (`/dev/shm`), fills it and tells the others its name; every
//! rank maps the same file, pins it with `cuMemHostRegister` and gathers random rows on GPU
//! `rank % gpus`, checking them against the pattern. Then rank 0 rewrites one row and every
//! rank must gather the new bytes: proof that the ranks share one table, not copies.
//!
//! Exits 0 with `skipped: ...` on hosts without a GPU, non-zero if any rank saw a wrong row.

use std::path::PathBuf;

use ferry_comm::{Comm, MpiRuntime, Source, TagMatch};
use ferry_gpu::{DeviceBuffer, Gpu, gpu_available};
use ferry_zerocopy::{GatherOptions, GatherPipeline, Gatherer, HostTable, pattern_byte};

const ROWS: usize = 250_000;
const ROW_BYTES: usize = 256;
const SEED: u64 = 0xFEED;
const MARKER_ROW: usize = 4321;

fn main() {
    let runtime = MpiRuntime::init().expect("MPI_Init_thread");
    let world = runtime.world().expect("MPI_COMM_WORLD");
    let (rank, size) = (world.rank(), world.size());
    if let Err(why) = gpu_available() {
        if rank == 0 {
            println!("skipped: shared_table: no GPU ({why})");
        }
        return;
    }
    let outcome = run(&world, rank, size);
    // Every rank reports to rank 0, which prints the verdict for all.
    let line = match &outcome {
        Ok(msg) => format!("ok   rank {rank}: {msg}"),
        Err(e) => format!("FAIL rank {rank}: {e}"),
    };
    let mut failed = outcome.is_err();
    if rank == 0 {
        println!("{line}");
        for _ in 1..size {
            let (_, bytes) = world
                .recv_vec(Source::Any, TagMatch::Tag(2))
                .expect("report from a rank");
            let text = String::from_utf8_lossy(&bytes).to_string();
            failed |= text.starts_with("FAIL");
            println!("{text}");
        }
        println!(
            "shared_table: {size} ranks, one {} MiB table: {}",
            (ROWS * ROW_BYTES) >> 20,
            if failed { "FAILED" } else { "passed" }
        );
    } else {
        world.send(0, 2, line.as_bytes()).expect("report to rank 0");
    }
    if failed {
        std::process::exit(1);
    }
}

fn run(world: &impl Comm, rank: usize, size: usize) -> Result<String, String> {
    let es = |e: ferry_zerocopy::ZeroCopyError| e.to_string();
    let gpus = Gpu::device_count().map_err(|e| e.to_string())?;
    let gpu = Gpu::open(rank % gpus).map_err(|e| e.to_string())?;
    // 1. Rank 0 creates and fills the table, then sends its path to everyone.
    let (mut table, path) = if rank == 0 {
        let path = PathBuf::from(format!(
            "/dev/shm/ferry-shared-table-{}",
            std::process::id()
        ));
        let mut t = HostTable::create_shared(&gpu, &path, ROWS, ROW_BYTES).map_err(es)?;
        t.fill_pattern(SEED);
        for r in 1..size {
            world
                .send(r, 1, path.to_string_lossy().as_bytes())
                .map_err(|e| e.to_string())?;
        }
        (t, path)
    } else {
        let (_, bytes) = world
            .recv_vec(Source::Rank(0), TagMatch::Tag(1))
            .map_err(|e| e.to_string())?;
        let path = PathBuf::from(String::from_utf8_lossy(&bytes).to_string());
        (
            HostTable::open_shared(&gpu, &path, ROW_BYTES).map_err(es)?,
            path,
        )
    };
    world.barrier().map_err(|e| e.to_string())?;
    if rank == 0 {
        // Every rank has mapped it; the name can go (the mappings keep the memory).
        std::fs::remove_file(&path).map_err(|e| format!("removing {}: {e}", path.display()))?;
    }
    // 2. Gather random rows on this rank's GPU and check them against the pattern.
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (rank as u64 + 1);
    let idx: Vec<i64> = (0..100_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % ROWS as u64) as i64
        })
        .collect();
    let mut g = Gatherer::new(&gpu, GatherOptions::default()).map_err(es)?;
    let mut out: DeviceBuffer<u8> = g
        .stream()
        .alloc_zeros(idx.len() * ROW_BYTES)
        .map_err(|e| e.to_string())?;
    g.gather(table.view(), &idx, &mut out).map_err(es)?;
    let got = out.clone_dtoh().map_err(|e| e.to_string())?;
    for (k, &i) in idx.iter().enumerate() {
        for c in 0..ROW_BYTES {
            if got[k * ROW_BYTES + c] != pattern_byte(SEED, i as usize, c) {
                return Err(format!(
                    "row {k} (index {i}) byte {c} differs from the pattern"
                ));
            }
        }
    }
    // 3. Rank 0 rewrites one row; every rank must then gather the new bytes.
    world.barrier().map_err(|e| e.to_string())?;
    if rank == 0 {
        table.row_mut(MARKER_ROW).fill(0x5A);
    }
    world.barrier().map_err(|e| e.to_string())?;
    let marker = [MARKER_ROW as i64, 0, MARKER_ROW as i64];
    let mut p =
        GatherPipeline::<i64>::new(&gpu, table.view(), 3, GatherOptions::default()).map_err(es)?;
    let mut seen = Vec::new();
    p.run([&marker[..]], |_, got| {
        seen = got.to_host()?;
        Ok(())
    })
    .map_err(es)?;
    let ok = seen[..ROW_BYTES].iter().all(|&b| b == 0x5A)
        && seen[2 * ROW_BYTES..].iter().all(|&b| b == 0x5A)
        && (0..ROW_BYTES).all(|c| seen[ROW_BYTES + c] == pattern_byte(SEED, 0, c));
    if !ok {
        return Err("rank 0's write to the shared table is not what this rank gathers".into());
    }
    world.barrier().map_err(|e| e.to_string())?;
    Ok(format!(
        "GPU {} of {gpus} ({}), 100000 rows and the shared marker row gathered right; table at \
         host {:p}, placement {:?}",
        gpu.ordinal(),
        gpu.name(),
        table.host_ptr(),
        table.placement()
    ))
}
