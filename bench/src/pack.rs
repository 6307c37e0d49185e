//! `ferry-bench pack`: ferry's pack and unpack beside Open MPI's MPI_Pack and MPI_Unpack in the
//! same process, on the datatypes of real applications and on strided sweeps, with a plain
//! memcpy of the packed size as the bandwidth ceiling.
//!
//! Each type is built once as a recipe, then through ferry's constructors and through MPI's, so
//! both engines see the very same type. Before timing, ferry's packed bytes are compared with
//! MPI_Pack's, and ferry's unpack with MPI_Unpack's; a mismatch stops the benchmark.
//! `ratio` = Open MPI time / ferry time (above 1: ferry is faster).
//!
//! Two optional comparisons, timed in the same repetitions:
//! - Under `LD_PRELOAD=libferry_mpi.so`, MPI_Pack and MPI_Unpack as an application calls them
//!   (through the interposer, which picks an engine per type by measuring) beside PMPI_Pack and
//!   PMPI_Unpack (the library): `interposed_ratio` and `interposed_unpack_ratio`, which the
//!   interposer keeps at 1 or above where it works. The interposer's trial calls run before
//!   the timed repetitions.
//! - `--stream-ab`: ferry with every long block written by streaming stores and with none
//!   (`ferry_datatypes::StreamThresholds`), for types whose blocks are 256 bytes and more.

use std::time::Instant;

use ferry_comm::MpiRuntime;
use ferry_comm::datatype::{Entry, MpiType};
use ferry_datatypes::testing::Recipe;
use ferry_datatypes::{Order, StreamThresholds, set_stream_thresholds};

use crate::report::{median, write_json_lines};

/// Options of `ferry-bench pack`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Only run cases whose name contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Timed repetitions of each operation; the median is reported.
    #[arg(long, default_value_t = 15)]
    reps: usize,
    /// Scale of the problem sizes (1 = about 4-16 MiB packed per case).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Write one JSON record per case to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Also time ferry with streaming stores forced on and off (types with blocks of 256 B
    /// and more).
    #[arg(long)]
    stream_ab: bool,
}

#[derive(serde::Serialize, Debug)]
struct Record {
    bench: &'static str,
    name: String,
    /// Packed bytes per operation.
    bytes: usize,
    /// Mean contiguous block length, in bytes.
    block_bytes: f64,
    ferry_pack_us: f64,
    mpi_pack_us: f64,
    /// Open MPI pack time / ferry pack time.
    ratio: f64,
    ferry_unpack_us: f64,
    mpi_unpack_us: f64,
    unpack_ratio: f64,
    memcpy_us: f64,
    /// memcpy time / ferry pack time: the fraction of memcpy bandwidth ferry reaches.
    ferry_of_memcpy: f64,
    /// MPI_Pack through libferry_mpi.so (when preloaded), and Open MPI pack time / that.
    interposed_pack_us: Option<f64>,
    interposed_ratio: Option<f64>,
    interposed_unpack_us: Option<f64>,
    interposed_unpack_ratio: Option<f64>,
    /// ferry with every long block streamed, and with none (`--stream-ab`).
    ferry_pack_streamed_us: Option<f64>,
    ferry_pack_unstreamed_us: Option<f64>,
    ferry_unpack_streamed_us: Option<f64>,
    ferry_unpack_unstreamed_us: Option<f64>,
    checked: bool,
}

/// Whether libferry_mpi.so is preloaded, so that `MPI_Pack` binds to it.
fn interposed() -> bool {
    std::env::var("LD_PRELOAD").is_ok_and(|v| v.contains("libferry_mpi"))
}

fn named(size: usize) -> Box<Recipe> {
    Box::new(Recipe::Named { size })
}

fn vector(count: usize, blocklen: usize, stride: isize, old: Box<Recipe>) -> Box<Recipe> {
    Box::new(Recipe::Vector {
        count,
        blocklen,
        stride,
        old,
    })
}

fn hvector(count: usize, blocklen: usize, stride: isize, old: Box<Recipe>) -> Box<Recipe> {
    Box::new(Recipe::HVector {
        count,
        blocklen,
        stride,
        old,
    })
}

fn subarray(
    sizes: &[usize],
    subsizes: &[usize],
    starts: &[usize],
    old: Box<Recipe>,
) -> Box<Recipe> {
    Box::new(Recipe::Subarray {
        sizes: sizes.to_vec(),
        subsizes: subsizes.to_vec(),
        starts: starts.to_vec(),
        order: Order::C,
        old,
    })
}

/// Deterministic pseudo-random numbers for the irregular (indexed) application types.
fn lcg(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

/// The cases: (name, recipe, count).
pub(crate) fn cases(scale: f64) -> Vec<(String, Box<Recipe>, usize)> {
    let s = |n: usize| ((n as f64 * scale.cbrt()).round() as usize).max(2);
    let mut v: Vec<(String, Box<Recipe>, usize)> = Vec::new();
    // WRF: 3D float fields A[z][y][x] with halo width 3 (ddtbench WRF_x/y_vec and _sa).
    let (z, y, x, w) = (s(64), s(128), s(128), 3);
    v.push((
        "WRF x face, vector".into(),
        hvector(
            z,
            1,
            (y * x * 4) as isize,
            vector(y, w, x as isize, named(4)),
        ),
        4,
    ));
    v.push((
        "WRF x face, subarray".into(),
        subarray(&[z, y, x], &[z, y, w], &[0, 0, 3], named(4)),
        4,
    ));
    v.push((
        "WRF y face, vector".into(),
        vector(z, w * x, (y * x) as isize, named(4)),
        4,
    ));
    v.push((
        "WRF y face, subarray".into(),
        subarray(&[z, y, x], &[z, w, x], &[0, 3, 0], named(4)),
        4,
    ));
    // MILC su3: 4D lattice of 3-complex-double vectors (48 B), a z face as nested vectors.
    let l = s(24);
    let su3 = Box::new(Recipe::Contiguous {
        count: 6,
        old: named(8),
    });
    let row = vector(l, 1, l as isize, su3); // x-stride over one z plane
    v.push((
        "MILC su3 z face, nested vectors".into(),
        hvector(l * l, 1, (l * l * l * 48) as isize, row),
        2,
    ));
    // NAS LU: u[z][y][x][5] doubles; x and y faces.
    let (n, c) = (s(96), 5);
    v.push((
        "NAS LU x face".into(),
        vector(n * n, c, (n * c) as isize, named(8)),
        2,
    ));
    v.push((
        "NAS LU y face".into(),
        vector(n, n * c, (n * n * c) as isize, named(8)),
        2,
    ));
    // NAS MG: 3D doubles; x face (single doubles) and y face (rows).
    let m = s(256);
    v.push((
        "NAS MG x face".into(),
        vector(m * m, 1, m as isize, named(8)),
        1,
    ));
    v.push((
        "NAS MG y face".into(),
        vector(m, m, (m * m) as isize, named(8)),
        1,
    ));
    // 2D FFT transpose: a column of complex doubles resized to one element, count = columns.
    let f = s(512);
    let complex = Box::new(Recipe::Contiguous {
        count: 2,
        old: named(8),
    });
    let column = Box::new(Recipe::Resized {
        lb: 0,
        extent: 16,
        old: vector(f, 1, f as isize, complex),
    });
    v.push(("FFT2D transpose, vector of resized".into(), column, f));
    // SPECFEM3D: gathers of single floats at irregular increasing offsets (indexed_block).
    let mut rng = 7u64;
    let mut displs = Vec::new();
    let mut at = 0isize;
    for _ in 0..s(200_000) {
        at += 1 + (lcg(&mut rng) % 6) as isize;
        displs.push(at);
    }
    v.push((
        "SPECFEM3D, indexed_block of floats".into(),
        Box::new(Recipe::IndexedBlock {
            blocklen: 3,
            displs: displs.iter().map(|d| d * 3).collect(),
            old: named(4),
        }),
        1,
    ));
    // LAMMPS: atoms' x, v, f (3 doubles each) chosen irregularly (indexed, varied blocks).
    let (mut blocklens, mut displs, mut at) = (Vec::new(), Vec::new(), 0isize);
    for _ in 0..s(60_000) {
        at += 3 * (1 + (lcg(&mut rng) % 4) as isize);
        let b = 3 * (1 + (lcg(&mut rng) % 3) as usize);
        displs.push(at);
        blocklens.push(b);
        at += b as isize;
    }
    v.push((
        "LAMMPS, indexed atoms".into(),
        Box::new(Recipe::Indexed {
            blocklens,
            displs,
            old: named(8),
        }),
        1,
    ));
    // Sweeps: 2D (vector, every other block) and 3D (subarray interior) with blocks 1..512 B.
    for b in [1usize, 2, 4, 8, 16, 32, 64, 128, 256, 512] {
        let total = (8usize << 20) as f64 * scale;
        let count = ((total / b as f64) as usize).max(1);
        v.push((
            format!("2D strided, {b} B blocks"),
            hvector(
                count,
                1,
                (2 * b) as isize,
                Box::new(Recipe::Contiguous {
                    count: b,
                    old: named(1),
                }),
            ),
            1,
        ));
        let edge = ((total / b as f64).sqrt() as usize).max(2);
        v.push((
            format!("3D subarray, {b} B blocks"),
            subarray(
                &[edge + 2, edge + 2, 2 * b],
                &[edge, edge, b],
                &[1, 1, b / 2],
                named(1),
            ),
            1,
        ));
    }
    v
}

pub(crate) fn run(args: &Args) -> Result<(), String> {
    if args.reps == 0 || args.scale <= 0.0 {
        return Err("--reps must be at least 1 and --scale positive".into());
    }
    let runtime = MpiRuntime::init().map_err(|e| e.to_string())?;
    let through = interposed();
    println!(
        "ferry-bench pack: ferry vs {} (median of {} reps){}",
        runtime.library_version().lines().next().unwrap_or(""),
        args.reps,
        if through {
            "; MPI_Pack/MPI_Unpack through libferry_mpi.so as `interp`"
        } else {
            ""
        }
    );
    println!(
        "{:<38} {:>9} {:>7} {:>10} {:>10} {:>7} {:>10} {:>10} {:>7} {:>8} {:>7} {:>7}",
        "type",
        "bytes",
        "block",
        "ferry us",
        "MPI us",
        "ratio",
        "f unpk us",
        "MPI unpk",
        "ratio",
        "%memcpy",
        "interp",
        "i unpk"
    );
    let mut records = Vec::new();
    for (name, recipe, count) in cases(args.scale) {
        if args
            .filter
            .as_ref()
            .is_some_and(|f| !name.contains(f.as_str()))
        {
            continue;
        }
        let record = measure(&name, &recipe, count, args, through)?;
        let or_dash = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}"));
        println!(
            "{:<38} {:>9} {:>7.1} {:>10.1} {:>10.1} {:>7.2} {:>10.1} {:>10.1} {:>7.2} {:>7.0}% {:>7} {:>7}",
            record.name,
            record.bytes,
            record.block_bytes,
            record.ferry_pack_us,
            record.mpi_pack_us,
            record.ratio,
            record.ferry_unpack_us,
            record.mpi_unpack_us,
            record.unpack_ratio,
            100.0 * record.ferry_of_memcpy,
            or_dash(record.interposed_ratio),
            or_dash(record.interposed_unpack_ratio),
        );
        if let (Some(ps), Some(pu), Some(us), Some(uu)) = (
            record.ferry_pack_streamed_us,
            record.ferry_pack_unstreamed_us,
            record.ferry_unpack_streamed_us,
            record.ferry_unpack_unstreamed_us,
        ) {
            println!(
                "{:<38} streamed / unstreamed: pack {ps:.1} / {pu:.1} us, unpack {us:.1} / {uu:.1} us",
                ""
            );
        }
        records.push(record);
    }
    if let Some(path) = &args.json {
        write_json_lines(path, &records)?;
        println!("wrote {} records to {}", records.len(), path.display());
    }
    Ok(())
}

/// The timed operations of one case; the index of each one's times in [`measure`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    FerryPack,
    MpiPack,
    FerryUnpack,
    MpiUnpack,
    Memcpy,
    InterposedPack,
    InterposedUnpack,
    FerryPackStreamed,
    FerryPackUnstreamed,
    FerryUnpackStreamed,
    FerryUnpackUnstreamed,
}

fn measure(
    name: &str,
    recipe: &Recipe,
    count: usize,
    args: &Args,
    through: bool,
) -> Result<Record, String> {
    let ty = recipe.try_build().map_err(|e| format!("{name}: {e}"))?;
    let committed = ty.commit();
    // SAFETY: MPI is initialised for the whole benchmark.
    let mpi_type = unsafe { MpiType::from_recipe(recipe) }.map_err(|e| format!("{name}: {e}"))?;
    let (lo, hi) = committed
        .footprint(count)
        .map_err(|e| e.to_string())?
        .ok_or("empty type")?;
    let base = lo.min(0);
    let span = (hi.max(0) - base) as usize;
    let origin = (-base) as usize;
    let bytes = ty.size() * count;
    let mut src = vec![0u8; span];
    for (i, b) in src.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2654435761) >> 7) as u8;
    }
    let mut ours = vec![0u8; bytes];
    let mut theirs = vec![0u8; bytes];
    let mpi_pack = |out: &mut [u8]| {
        // SAFETY: `src` covers the footprint around `origin`.
        unsafe { mpi_type.pack(src.as_ptr().add(origin), count, out) }.expect("MPI_Pack");
    };
    let mpi_unpack = |packed: &[u8], dst: &mut [u8]| {
        // SAFETY: `dst` covers the footprint around `origin`.
        unsafe { mpi_type.unpack(packed, dst.as_mut_ptr().add(origin), count) }
            .expect("MPI_Unpack");
    };
    // Check before timing.
    committed
        .pack(&src, origin, count, &mut ours)
        .map_err(|e| e.to_string())?;
    mpi_pack(&mut theirs);
    if ours != theirs {
        return Err(format!(
            "{name}: ferry's packed bytes differ from MPI_Pack's"
        ));
    }
    let mut dst_ours = vec![0u8; span];
    let mut dst_theirs = vec![0u8; span];
    committed
        .unpack(&ours, &mut dst_ours, origin, count)
        .map_err(|e| e.to_string())?;
    mpi_unpack(&theirs, &mut dst_theirs);
    if dst_ours != dst_theirs {
        return Err(format!("{name}: ferry's unpack differs from MPI_Unpack's"));
    }
    let (ours_packed, theirs_packed) = (ours.clone(), theirs.clone());
    let mut copy_into = vec![0u8; bytes];
    let copy_src = vec![1u8; bytes];
    let mut dst_interposed = vec![0u8; span];
    let mut interposed_out = vec![0u8; bytes];
    let interposed_pack = |out: &mut [u8]| {
        // SAFETY: `src` covers the footprint around `origin`.
        unsafe { mpi_type.pack_through(Entry::Interposable, src.as_ptr().add(origin), count, out) }
            .expect("MPI_Pack");
    };
    let interposed_unpack = |packed: &[u8], dst: &mut [u8]| {
        // SAFETY: `dst` covers the footprint around `origin`.
        unsafe {
            mpi_type.unpack_through(
                Entry::Interposable,
                packed,
                dst.as_mut_ptr().add(origin),
                count,
            )
        }
        .expect("MPI_Unpack");
    };
    let mut ops = vec![
        Op::FerryPack,
        Op::MpiPack,
        Op::FerryUnpack,
        Op::MpiUnpack,
        Op::Memcpy,
    ];
    if through {
        // Check every engine the interposer may pick (its trials alternate between them),
        // which also leaves it decided before the timing.
        for _ in 0..10 {
            interposed_pack(&mut interposed_out);
            if interposed_out != ours_packed {
                return Err(format!("{name}: MPI_Pack through the interposer differs"));
            }
            interposed_unpack(&ours_packed, &mut dst_interposed);
            if dst_interposed != dst_theirs {
                return Err(format!("{name}: MPI_Unpack through the interposer differs"));
            }
        }
        ops.extend([Op::InterposedPack, Op::InterposedUnpack]);
    }
    let stream_ab = args.stream_ab && bytes as f64 / blocks(&committed, count) as f64 >= 256.0;
    if stream_ab {
        ops.extend([
            Op::FerryPackStreamed,
            Op::FerryPackUnstreamed,
            Op::FerryUnpackStreamed,
            Op::FerryUnpackUnstreamed,
        ]);
    }
    let streamed = StreamThresholds { pack: 0, unpack: 0 };
    let mut t: Vec<Vec<f64>> = vec![Vec::new(); Op::FerryUnpackUnstreamed as usize + 1];
    // Each repetition times every operation back to back, in reverse order every other
    // repetition, so cache and clock state favour none; repetition 0 is the warm-up.
    for rep in 0..=args.reps {
        if rep % 2 == 1 {
            ops.reverse();
        }
        for &op in &ops {
            set_stream_thresholds(match op {
                Op::FerryPackStreamed | Op::FerryUnpackStreamed => streamed,
                Op::FerryPackUnstreamed | Op::FerryUnpackUnstreamed => StreamThresholds::NEVER,
                _ => StreamThresholds::DEFAULT,
            });
            let start = Instant::now();
            match op {
                Op::FerryPack | Op::FerryPackStreamed | Op::FerryPackUnstreamed => {
                    committed
                        .pack(&src, origin, count, &mut ours)
                        .expect("checked above");
                }
                Op::MpiPack => mpi_pack(&mut theirs),
                Op::FerryUnpack | Op::FerryUnpackStreamed | Op::FerryUnpackUnstreamed => {
                    committed
                        .unpack(&ours_packed, &mut dst_ours, origin, count)
                        .expect("checked above");
                }
                Op::MpiUnpack => mpi_unpack(&theirs_packed, &mut dst_theirs),
                Op::Memcpy => copy_into.copy_from_slice(std::hint::black_box(&copy_src)),
                Op::InterposedPack => interposed_pack(&mut interposed_out),
                Op::InterposedUnpack => interposed_unpack(&ours_packed, &mut dst_interposed),
            }
            let us = start.elapsed().as_secs_f64() * 1e6;
            if rep > 0 {
                t[op as usize].push(us);
            }
        }
    }
    set_stream_thresholds(StreamThresholds::DEFAULT);
    if ours != theirs || dst_ours != dst_theirs {
        return Err(format!("{name}: ferry's bytes changed while timed"));
    }
    let time = |op: Op| (!t[op as usize].is_empty()).then(|| median(t[op as usize].clone()));
    let [
        ferry_pack_us,
        mpi_pack_us,
        ferry_unpack_us,
        mpi_unpack_us,
        memcpy_us,
    ] = [
        Op::FerryPack,
        Op::MpiPack,
        Op::FerryUnpack,
        Op::MpiUnpack,
        Op::Memcpy,
    ]
    .map(|op| time(op).unwrap_or(f64::NAN));
    let interposed_pack_us = time(Op::InterposedPack);
    let interposed_unpack_us = time(Op::InterposedUnpack);
    Ok(Record {
        bench: "pack",
        name: name.to_string(),
        bytes,
        block_bytes: bytes as f64 / blocks(&committed, count) as f64,
        ferry_pack_us,
        mpi_pack_us,
        ratio: mpi_pack_us / ferry_pack_us,
        ferry_unpack_us,
        mpi_unpack_us,
        unpack_ratio: mpi_unpack_us / ferry_unpack_us,
        memcpy_us,
        ferry_of_memcpy: memcpy_us / ferry_pack_us,
        interposed_pack_us,
        interposed_ratio: interposed_pack_us.map(|us| mpi_pack_us / us),
        interposed_unpack_us,
        interposed_unpack_ratio: interposed_unpack_us.map(|us| mpi_unpack_us / us),
        ferry_pack_streamed_us: time(Op::FerryPackStreamed),
        ferry_pack_unstreamed_us: time(Op::FerryPackUnstreamed),
        ferry_unpack_streamed_us: time(Op::FerryUnpackStreamed),
        ferry_unpack_unstreamed_us: time(Op::FerryUnpackUnstreamed),
        checked: true,
    })
}

/// The contiguous blocks that `count` elements of the type pack.
fn blocks(committed: &ferry_datatypes::Committed, count: usize) -> usize {
    let layout = committed.layout();
    layout.blocks().len().max(1)
        * layout
            .levels()
            .iter()
            .map(|l| l.count)
            .product::<usize>()
            .max(1)
        * count
}
