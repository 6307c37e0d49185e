//! Compares ferry's datatype engine with the MPI library's on seeded random nested types:
//! sizes and extents, MPI_Pack bytes, MPI_Unpack results, and ferry's reading of the committed
//! MPI handle (MPI_Type_get_envelope/contents) back into its IR.
//!
//! `mpirun -np 1 ferry-datatype-check [--seeds N] [--start S] [--depth D]`; prints the seed of
//! every failure and exits non-zero if there is one.

use std::ffi::c_int;

use ferry_comm::datatype::{mpi_extents, testing::mpi_type_from_recipe, type_from_mpi};
use ferry_comm::{MpiRuntime, datatype::MpiExtents};
use ferry_datatypes::testing::random_type;
use mpi::ffi;

/// Largest buffer footprint a case may have; larger ones are skipped.
const MAX_FOOTPRINT: usize = 32 << 20;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number, not '{v}'"))
        })
        .unwrap_or(default)
}

/// xorshift64*: random bytes for the source buffers.
fn fill(buf: &mut [u8], mut state: u64) {
    state |= 1;
    for chunk in buf.chunks_mut(8) {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let v = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

fn main() {
    let runtime = MpiRuntime::init().unwrap_or_else(|e| {
        eprintln!("ferry-datatype-check: {e}");
        std::process::exit(2);
    });
    let (start, seeds, depth) = (
        arg("--start", 0),
        arg("--seeds", 2000),
        arg("--depth", 4) as usize,
    );
    let (mut checked, mut skipped, mut failures) = (0usize, 0usize, 0usize);
    for seed in start..start + seeds {
        match check(seed, depth) {
            Ok(true) => checked += 1,
            Ok(false) => skipped += 1,
            Err(e) => {
                failures += 1;
                eprintln!("FAIL seed {seed}: {e}");
            }
        }
    }
    let predefined = check_predefined();
    failures += predefined.iter().filter(|r| r.is_err()).count();
    for r in &predefined {
        if let Err(e) = r {
            eprintln!("FAIL predefined: {e}");
        }
    }
    println!(
        "ferry-datatype-check: {} structs of predefined and pair types read and packed like MPI",
        predefined.len()
    );
    println!(
        "ferry-datatype-check: {checked} random types agree with {} ({skipped} skipped as too large), {failures} failures",
        runtime.library_version().lines().next().unwrap_or("MPI")
    );
    drop(runtime);
    std::process::exit(if failures == 0 { 0 } else { 1 });
}

/// Checks one seed; `Ok(false)` when the case is too large to run.
fn check(seed: u64, depth: usize) -> Result<bool, String> {
    let (ty, recipe) = random_type(seed, depth);
    // SAFETY: MPI is initialised.
    let mut handle = unsafe { mpi_type_from_recipe(&recipe) }
        .map_err(|e| format!("building {recipe:?}: {e}"))?;
    let derived = !matches!(recipe, ferry_datatypes::testing::Recipe::Named { .. });
    let result = (|| {
        // SAFETY: `handle` is a valid datatype we own.
        let rc = unsafe { ffi::PMPI_Type_commit(&mut handle) };
        if rc != ffi::MPI_SUCCESS as c_int {
            return Err(format!("MPI_Type_commit failed ({rc})"));
        }
        // 1. Sizes and bounds.
        // SAFETY: committed handle.
        let theirs = unsafe { mpi_extents(handle) }.map_err(|e| e.to_string())?;
        let ours = MpiExtents {
            size: ty.size() as isize,
            lb: ty.lb(),
            extent: ty.extent(),
            true_lb: ty.true_lb(),
            true_extent: ty.true_extent(),
        };
        if !ferry_comm::datatype::extents_agree(&ours, &theirs) {
            return Err(format!(
                "extents: ferry {ours:?}, MPI {theirs:?} for {}",
                ty.describe()
            ));
        }
        // 2. ferry's reading of the MPI handle.
        // SAFETY: committed handle.
        let read_back =
            unsafe { type_from_mpi(handle) }.map_err(|e| format!("reading the handle: {e}"))?;
        let committed = ty.commit();
        let read_committed = read_back.commit();
        // 3. Pack and unpack, `count` elements.
        let count = [1usize, 2, 3][(seed % 3) as usize];
        let Some((lo, hi)) = committed.footprint(count).map_err(|e| e.to_string())? else {
            return Ok(true); // nothing to pack
        };
        // The buffer starts at the lower of the origin and the footprint's start.
        let base = lo.min(0);
        let span = (hi.max(0) - base) as usize;
        let total = ty.size() * count;
        if span > MAX_FOOTPRINT || total > MAX_FOOTPRINT {
            return Ok(false);
        }
        let origin = (-base) as usize;
        let mut src = vec![0u8; span];
        fill(&mut src, seed);
        let mut mine = vec![0xA5u8; total];
        committed
            .pack(&src, origin, count, &mut mine)
            .map_err(|e| format!("ferry pack: {e}"))?;
        let mut theirs = vec![0x5Au8; total];
        let mut position: c_int = 0;
        // SAFETY: `src` covers the footprint around `origin`; `theirs` holds the packed size.
        let rc = unsafe {
            ffi::PMPI_Pack(
                src.as_ptr().add(origin).cast(),
                count as c_int,
                handle,
                theirs.as_mut_ptr().cast(),
                total as c_int,
                &mut position,
                ffi::RSMPI_COMM_WORLD,
            )
        };
        if rc != ffi::MPI_SUCCESS as c_int || position as usize != total {
            return Err(format!(
                "MPI_Pack rc {rc}, position {position}, want {total}"
            ));
        }
        if mine != theirs {
            let first = mine
                .iter()
                .zip(&theirs)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(format!(
                "packed bytes differ from MPI_Pack at byte {first} of {total}; type {}",
                ty.describe()
            ));
        }
        let mut again = vec![0u8; total];
        read_committed
            .pack(&src, origin, count, &mut again)
            .map_err(|e| format!("pack of the read-back type: {e}"))?;
        if again != theirs {
            return Err("the type read back from MPI packs differently".into());
        }
        let mut ours_out = vec![0xC3u8; span];
        committed
            .unpack(&mine, &mut ours_out, origin, count)
            .map_err(|e| format!("ferry unpack: {e}"))?;
        let mut theirs_out = vec![0xC3u8; span];
        let mut position: c_int = 0;
        // SAFETY: `theirs_out` covers the footprint around `origin`.
        let rc = unsafe {
            ffi::PMPI_Unpack(
                theirs.as_ptr().cast(),
                total as c_int,
                &mut position,
                theirs_out.as_mut_ptr().add(origin).cast(),
                count as c_int,
                handle,
                ffi::RSMPI_COMM_WORLD,
            )
        };
        if rc != ffi::MPI_SUCCESS as c_int {
            return Err(format!("MPI_Unpack rc {rc}"));
        }
        if ours_out != theirs_out {
            let first = ours_out
                .iter()
                .zip(&theirs_out)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(format!("unpacked buffers differ at byte {first} of {span}"));
        }
        Ok(true)
    })();
    if derived {
        // SAFETY: a derived type we created.
        unsafe { ffi::PMPI_Type_free(&mut handle) };
    }
    result
}

/// Structs over predefined types with unusual alignment and over the pair types: ferry must
/// read them (not give up) and pack them as MPI does.
fn check_predefined() -> Vec<Result<(), String>> {
    macro_rules! handle {
        ($name:ident) => {
            (
                stringify!($name),
                ffi::MPI_Datatype((&raw mut ffi::$name).cast()),
            )
        };
    }
    let types = [
        handle!(ompi_mpi_long_double),
        handle!(ompi_mpi_c_float_complex),
        handle!(ompi_mpi_c_long_double_complex),
        handle!(ompi_mpi_2int),
        handle!(ompi_mpi_float_int),
        handle!(ompi_mpi_double_int),
        handle!(ompi_mpi_long_int),
        handle!(ompi_mpi_short_int),
        handle!(ompi_mpi_longdbl_int),
        handle!(ompi_mpi_double),
        handle!(ompi_mpi_char),
        // Fortran and C++ types, whose alignments ferry measures too (BLACS builds structs
        // on MPI_COMPLEX).
        handle!(ompi_mpi_cplex),
        handle!(ompi_mpi_dblcplex),
        handle!(ompi_mpi_2real),
        handle!(ompi_mpi_2integer),
        handle!(ompi_mpi_2dblprec),
        handle!(ompi_mpi_2cplex),
        handle!(ompi_mpi_complex8),
        handle!(ompi_mpi_complex16),
        handle!(ompi_mpi_real),
        handle!(ompi_mpi_integer),
        handle!(ompi_mpi_logical),
        handle!(ompi_mpi_cxx_cplex),
        handle!(ompi_mpi_cxx_ldblcplex),
    ];
    types
        .iter()
        .map(|&(name, t)| {
            // struct { char c; T x[2]; char d; } x 3, so padding and alignment both show.
            let chr = ffi::MPI_Datatype((&raw mut ffi::ompi_mpi_char).cast());
            let mut members = [chr, t, chr];
            let (mut lb, mut extent): (ffi::MPI_Aint, ffi::MPI_Aint) = (0, 0);
            // SAFETY: predefined handle; out-parameters are locals.
            unsafe { ffi::PMPI_Type_get_extent(t, &mut lb, &mut extent) };
            let blocklens: [c_int; 3] = [1, 2, 1];
            let displs: [ffi::MPI_Aint; 3] = [0, 16, 16 + 2 * extent];
            let mut s = ffi::MPI_Datatype(std::ptr::null_mut());
            // SAFETY: the arrays hold three entries each.
            unsafe {
                ffi::PMPI_Type_create_struct(
                    3,
                    blocklens.as_ptr(),
                    displs.as_ptr(),
                    members.as_mut_ptr(),
                    &mut s,
                );
                ffi::PMPI_Type_commit(&mut s);
            }
            let result = (|| {
                // SAFETY: committed handle.
                let ty = unsafe { type_from_mpi(s) }.map_err(|e| format!("{name}: {e}"))?;
                let c = ty.commit();
                let count = 3;
                let (lo, hi) = c
                    .footprint(count)
                    .map_err(|e| e.to_string())?
                    .ok_or("empty")?;
                let (base, span) = (lo.min(0), (hi.max(0) - lo.min(0)) as usize);
                let mut src = vec![0u8; span];
                fill(&mut src, 99);
                let total = ty.size() * count;
                let (mut mine, mut theirs) = (vec![0u8; total], vec![1u8; total]);
                c.pack(&src, (-base) as usize, count, &mut mine)
                    .map_err(|e| e.to_string())?;
                let mut pos: c_int = 0;
                // SAFETY: `src` covers the footprint.
                unsafe {
                    ffi::PMPI_Pack(
                        src.as_ptr().add((-base) as usize).cast(),
                        count as c_int,
                        s,
                        theirs.as_mut_ptr().cast(),
                        total as c_int,
                        &mut pos,
                        ffi::RSMPI_COMM_WORLD,
                    )
                };
                if mine != theirs || pos as usize != total {
                    return Err(format!("{name}: struct packs differently from MPI_Pack"));
                }
                Ok(())
            })();
            // SAFETY: a derived type we created.
            unsafe { ffi::PMPI_Type_free(&mut s) };
            result
        })
        .collect()
}
