//! `ferry-bench pingpong-ddt`: a derived-datatype ping-pong between 2 ranks, through plain
//! Open MPI and through libferry_mpi.so, beside a contiguous ping-pong of the same packed size.
//!
//! The command is an orchestrator: it launches `mpirun -np 2` of itself in worker mode twice,
//! once without and once with `LD_PRELOAD=libferry_mpi.so`, and merges what the workers
//! measured. Each worker times, per type, MPI_Send/MPI_Recv round trips of the derived type
//! and of `MPI_BYTE`s of its packed size, checks that the echoed data equals what was sent,
//! and writes JSON. `ratio` = Open MPI time / interposed time; `vs_contiguous` = interposed time
//! / contiguous time (the target: at most 1.5).

use std::path::{Path, PathBuf};
use std::time::Instant;

use ferry_comm::datatype::MpiType;
use ferry_comm::{Comm, MpiRuntime};
use ferry_datatypes::testing::Recipe;

use crate::launch;
use crate::report::{median, read_json_lines, write_json_lines};

/// Options of `ferry-bench pingpong-ddt`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Round trips per repetition.
    #[arg(long, default_value_t = 50)]
    iters: usize,
    /// Repetitions; the median is reported.
    #[arg(long, default_value_t = 7)]
    reps: usize,
    /// Only run cases whose name contains this.
    #[arg(long)]
    filter: Option<String>,
    /// The interposer to preload (default: libferry_mpi.so next to this executable).
    #[arg(long)]
    interposer: Option<PathBuf>,
    /// Extra arguments for mpirun, e.g. "--bind-to core".
    #[arg(
        long,
        default_value = "--bind-to core --map-by core",
        allow_hyphen_values = true
    )]
    mpirun_args: String,
    /// Write one JSON record per case to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Internal: run as one rank of the measurement and write raw records here.
    #[arg(long, hide = true)]
    worker: Option<PathBuf>,
}

/// What one worker run measured for one type.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
struct Raw {
    name: String,
    bytes: usize,
    ddt_us: f64,
    contiguous_us: f64,
    checked: bool,
}

#[derive(serde::Serialize, Debug)]
struct Record {
    bench: &'static str,
    name: String,
    bytes: usize,
    openmpi_us: f64,
    ferry_us: f64,
    contiguous_us: f64,
    /// Open MPI time / ferry (interposed) time.
    ratio: f64,
    /// ferry time / contiguous time of the same packed size.
    vs_contiguous: f64,
    /// Open MPI time / contiguous time.
    openmpi_vs_contiguous: f64,
}

/// The types: the vector of 4-byte blocks at stride 8 (1 MiB packed), and the
/// application types of `ferry-bench pack` scaled to about 1 MiB.
fn cases() -> Vec<(String, Box<Recipe>, usize)> {
    let floats = Box::new(Recipe::Named { size: 4 });
    let mut v = vec![(
        "vector 4 B blocks stride 8, 1 MiB".to_string(),
        Box::new(Recipe::Vector {
            count: 1 << 18,
            blocklen: 1,
            stride: 2,
            old: floats,
        }),
        1,
    )];
    for (name, recipe, count) in crate::pack::cases(0.125) {
        if !name.contains("sweep") && !name.starts_with("2D") && !name.starts_with("3D") {
            v.push((name, recipe, count));
        }
    }
    v
}

pub(crate) fn run(args: &Args) -> Result<(), String> {
    if let Some(out) = &args.worker {
        return worker(args, out);
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let lib = launch::interposer(args.interposer.as_ref())?;
    let dir = std::env::temp_dir().join(format!("ferry-pingpong-ddt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let plain = dir.join("openmpi.json");
    let ferry = dir.join("ferry.json");
    launch(args, &exe, None, &plain)?;
    launch(args, &exe, Some(&lib), &ferry)?;
    let (plain, ferry): (Vec<Raw>, Vec<Raw>) = (read_json_lines(&plain)?, read_json_lines(&ferry)?);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "ferry-bench pingpong-ddt: 2 ranks, median of {} x {} round trips; times are one way",
        args.reps, args.iters
    );
    println!(
        "{:<38} {:>9} {:>11} {:>11} {:>11} {:>7} {:>9} {:>9}",
        "type", "bytes", "OpenMPI us", "ferry us", "contig us", "ratio", "ferry/ct", "ompi/ct"
    );
    let mut records = Vec::new();
    for (p, f) in plain.iter().zip(&ferry) {
        if !(p.checked && f.checked) {
            return Err(format!(
                "{}: received data differs from what was sent",
                p.name
            ));
        }
        let contiguous_us = p.contiguous_us.min(f.contiguous_us);
        let r = Record {
            bench: "pingpong-ddt",
            name: p.name.clone(),
            bytes: p.bytes,
            openmpi_us: p.ddt_us,
            ferry_us: f.ddt_us,
            contiguous_us,
            ratio: p.ddt_us / f.ddt_us,
            vs_contiguous: f.ddt_us / contiguous_us,
            openmpi_vs_contiguous: p.ddt_us / contiguous_us,
        };
        println!(
            "{:<38} {:>9} {:>11.1} {:>11.1} {:>11.1} {:>7.2} {:>9.2} {:>9.2}",
            r.name,
            r.bytes,
            r.openmpi_us,
            r.ferry_us,
            r.contiguous_us,
            r.ratio,
            r.vs_contiguous,
            r.openmpi_vs_contiguous
        );
        records.push(r);
    }
    if let Some(path) = &args.json {
        write_json_lines(path, &records)?;
        println!("wrote {} records to {}", records.len(), path.display());
    }
    Ok(())
}

fn launch(args: &Args, exe: &Path, preload: Option<&Path>, out: &Path) -> Result<(), String> {
    let mut worker_args = vec![
        "pingpong-ddt".to_string(),
        "--iters".into(),
        args.iters.to_string(),
        "--reps".into(),
        args.reps.to_string(),
    ];
    if let Some(f) = &args.filter {
        worker_args.extend(["--filter".into(), f.clone()]);
    }
    worker_args.extend(["--worker".into(), out.display().to_string()]);
    let cmd = launch::mpirun(2, &args.mpirun_args, preload, exe, &worker_args);
    let what = if preload.is_some() {
        "the interposed run"
    } else {
        "the plain run"
    };
    launch::output(cmd, what).map(|stdout| print!("{stdout}"))
}

fn worker(args: &Args, out: &Path) -> Result<(), String> {
    let runtime = MpiRuntime::init().map_err(|e| e.to_string())?;
    let world = runtime.world().map_err(|e| e.to_string())?;
    if world.size() < 2 {
        return Err("pingpong-ddt needs 2 ranks".into());
    }
    let (rank, peer) = (world.rank(), 1 - world.rank().min(1));
    let mut raws = Vec::new();
    for (name, recipe, count) in cases() {
        if args
            .filter
            .as_ref()
            .is_some_and(|f| !name.contains(f.as_str()))
        {
            continue;
        }
        if rank > 1 {
            continue;
        }
        let ty = recipe.try_build().map_err(|e| e.to_string())?;
        let committed = ty.commit();
        // SAFETY: MPI is initialised for the whole run.
        let ddt = unsafe { MpiType::from_recipe(&recipe) }.map_err(|e| e.to_string())?;
        let bytes = ty.size() * count;
        // SAFETY: as above.
        let contiguous = unsafe {
            MpiType::from_recipe(&Recipe::Contiguous {
                count: bytes,
                old: Box::new(Recipe::Named { size: 1 }),
            })
        }
        .map_err(|e| e.to_string())?;
        let (lo, hi) = committed
            .footprint(count)
            .map_err(|e| e.to_string())?
            .ok_or("empty type")?;
        let (base, span) = (lo.min(0), (hi.max(0) - lo.min(0)) as usize);
        let origin = (-base) as usize;
        let mut src = vec![0u8; span];
        for (i, b) in src.iter_mut().enumerate() {
            *b = (i.wrapping_mul(2654435761) >> 9) as u8 ^ rank as u8;
        }
        let mut dst = vec![0xEEu8; span];
        let round_trips =
            |t: &MpiType, n: usize, src: &[u8], dst: &mut [u8]| -> Result<f64, String> {
                let e = |e: ferry_comm::datatype::DatatypeError| e.to_string();
                let start = Instant::now();
                for _ in 0..args.iters {
                    // SAFETY: both buffers cover the type's footprint around `origin`.
                    unsafe {
                        if rank == 0 {
                            t.send(src.as_ptr().add(origin), n, peer as i32, 5)
                                .map_err(e)?;
                            t.recv(dst.as_mut_ptr().add(origin), n, peer as i32, 5)
                                .map_err(e)?;
                        } else {
                            t.recv(dst.as_mut_ptr().add(origin), n, peer as i32, 5)
                                .map_err(e)?;
                            t.send(dst.as_ptr().add(origin), n, peer as i32, 5)
                                .map_err(e)?;
                        }
                    }
                }
                Ok(start.elapsed().as_secs_f64() * 1e6 / (2 * args.iters) as f64)
            };
        let mut ddt_t = Vec::new();
        let mut contiguous_t = Vec::new();
        let (mut packed_src, mut packed_dst) = (vec![0u8; bytes], vec![1u8; bytes]);
        let mut checked = true;
        for _ in 0..args.reps {
            dst.fill(0xEE);
            ddt_t.push(round_trips(&ddt, count, &src, &mut dst)?);
            if rank == 0 {
                committed
                    .pack(&src, origin, count, &mut packed_src)
                    .map_err(|e| e.to_string())?;
                committed
                    .pack(&dst, origin, count, &mut packed_dst)
                    .map_err(|e| e.to_string())?;
                checked &= packed_src == packed_dst;
            }
            let mut cdst = vec![0u8; bytes];
            let csrc = packed_src.clone();
            let e = |e: ferry_comm::datatype::DatatypeError| e.to_string();
            let start = Instant::now();
            for _ in 0..args.iters {
                // SAFETY: `csrc` and `cdst` hold `bytes` bytes, one element of `contiguous`.
                unsafe {
                    if rank == 0 {
                        contiguous
                            .send(csrc.as_ptr(), 1, peer as i32, 6)
                            .map_err(e)?;
                        contiguous
                            .recv(cdst.as_mut_ptr(), 1, peer as i32, 6)
                            .map_err(e)?;
                    } else {
                        contiguous
                            .recv(cdst.as_mut_ptr(), 1, peer as i32, 6)
                            .map_err(e)?;
                        contiguous
                            .send(cdst.as_ptr(), 1, peer as i32, 6)
                            .map_err(e)?;
                    }
                }
            }
            contiguous_t.push(start.elapsed().as_secs_f64() * 1e6 / (2 * args.iters) as f64);
        }
        raws.push(Raw {
            name,
            bytes,
            ddt_us: median(ddt_t),
            contiguous_us: median(contiguous_t),
            checked,
        });
    }
    if rank == 0 {
        write_json_lines(out, &raws)?;
    }
    world.barrier().map_err(|e| e.to_string())?;
    Ok(())
}
