//! `ferry-bench halo3d`: TEMPI's 26-neighbour halo exchange (subarray types, radius R,
//! Q quantities per cell) on host buffers, through plain Open MPI and through libferry_mpi.so,
//! at each rank count.
//!
//! The exchange itself is `examples/halo3d.c`, an ordinary MPI program that checks every ghost
//! cell it receives; this command builds it with `mpicc` if no binary is given, launches it
//! under `mpirun` without and with `LD_PRELOAD`, alternating the two `--launches` times (the
//! same program moves by tens of percent between launches, so one launch each is not a
//! comparison), and reports the medians of the slowest rank's per-phase times with
//! `ratio` = Open MPI time / ferry time.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::launch;
use crate::report::{median, write_json_lines};

/// Options of `ferry-bench halo3d`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Interior cells per side of each rank's block.
    #[arg(long, default_value_t = 64)]
    n: usize,
    /// Halo radius (ghost layers).
    #[arg(long, default_value_t = 3)]
    radius: usize,
    /// Quantities per cell (doubles, interleaved).
    #[arg(long, default_value_t = 8)]
    quantities: usize,
    /// Exchanges per launch (the program reports their mean).
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Rank counts to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "2,4,8")]
    ranks: Vec<usize>,
    /// Launches of each configuration (plain and interposed alternate); medians are reported.
    #[arg(long, default_value_t = 3)]
    launches: usize,
    /// The halo3d program (default: `halo3d` next to this executable, else built from
    /// examples/halo3d.c with mpicc).
    #[arg(long)]
    program: Option<PathBuf>,
    /// The interposer to preload (default: libferry_mpi.so next to this executable).
    #[arg(long)]
    interposer: Option<PathBuf>,
    /// Extra arguments for mpirun, e.g. "--bind-to core --map-by core".
    #[arg(long, default_value = "--bind-to none", allow_hyphen_values = true)]
    mpirun_args: String,
    /// Write one JSON record per rank count to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What one launch of halo3d.c printed (its JSON line).
#[derive(serde::Deserialize, serde::Serialize, Debug, Clone, Copy)]
struct Launch {
    total_ms: f64,
    post_ms: f64,
    send_ms: f64,
    wait_ms: f64,
    wrong_cells: u64,
}

/// Medians over launches.
#[derive(serde::Serialize, Debug, Clone, Copy)]
struct Phases {
    total_ms: f64,
    post_ms: f64,
    send_ms: f64,
    wait_ms: f64,
}

impl Phases {
    fn of(runs: &[Launch]) -> Phases {
        let m = |f: fn(&Launch) -> f64| median(runs.iter().map(f).collect());
        Phases {
            total_ms: m(|l| l.total_ms),
            post_ms: m(|l| l.post_ms),
            send_ms: m(|l| l.send_ms),
            wait_ms: m(|l| l.wait_ms),
        }
    }
}

#[derive(serde::Serialize, Debug)]
struct Record {
    bench: &'static str,
    ranks: usize,
    n: usize,
    radius: usize,
    quantities: usize,
    launches: usize,
    openmpi: Phases,
    ferry: Phases,
    /// Open MPI time / ferry time, per exchange (above 1: ferry is faster).
    ratio: f64,
}

/// The program to run: the given one, `halo3d` beside this executable, or a fresh mpicc build
/// of examples/halo3d.c (found from the current directory).
fn program(args: &Args) -> Result<PathBuf, String> {
    if let Some(p) = &args.program {
        return p
            .exists()
            .then(|| p.clone())
            .ok_or_else(|| format!("{} not found", p.display()));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    if let Some(beside) = exe.parent().map(|d| d.join("halo3d"))
        && beside.exists()
    {
        return Ok(beside);
    }
    let source = Path::new("examples/halo3d.c");
    if !source.exists() {
        return Err(
            "no halo3d program: pass --program, or run from the repository root so \
                    examples/halo3d.c can be built with mpicc"
                .into(),
        );
    }
    let out = std::env::temp_dir().join(format!("ferry-halo3d-{}", std::process::id()));
    let status = Command::new("mpicc")
        .args(["-O2", "-o"])
        .arg(&out)
        .arg(source)
        .status()
        .map_err(|e| format!("cannot run mpicc: {e}"))?;
    if !status.success() {
        return Err(format!("mpicc examples/halo3d.c failed: {status}"));
    }
    Ok(out)
}

/// One launch at `ranks`, checked: every ghost cell must hold its owner's value.
fn launch_once(
    args: &Args,
    program: &Path,
    ranks: usize,
    preload: Option<&Path>,
) -> Result<Launch, String> {
    let prog_args = [args.n, args.radius, args.quantities, args.iters].map(|v| v.to_string());
    let cmd = launch::mpirun(ranks, &args.mpirun_args, preload, program, &prog_args);
    let what = format!(
        "halo3d at {ranks} ranks{}",
        if preload.is_some() {
            " through ferry"
        } else {
            ""
        }
    );
    let stdout = launch::output(cmd, &what)?;
    let line = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| format!("{what} printed no JSON line"))?;
    let run: Launch = serde_json::from_str(line).map_err(|e| format!("{what}: {e}: {line}"))?;
    if run.wrong_cells != 0 {
        return Err(format!("{what}: {} ghost cells are wrong", run.wrong_cells));
    }
    Ok(run)
}

pub(crate) fn run(args: &Args) -> Result<(), String> {
    if args.n < args.radius || args.radius == 0 || args.quantities == 0 || args.iters == 0 {
        return Err("need n >= radius >= 1, quantities >= 1 and iters >= 1".into());
    }
    if args.launches == 0 || args.ranks.is_empty() || args.ranks.contains(&0) {
        return Err("need at least one launch and rank counts >= 1".into());
    }
    let program = program(args)?;
    let lib = launch::interposer(args.interposer.as_ref())?;
    println!(
        "ferry-bench halo3d: N={} R={} Q={}, {} exchanges per launch, median of {} launches; \
         slowest rank, ms per exchange",
        args.n, args.radius, args.quantities, args.iters, args.launches
    );
    println!(
        "{:>5} {:>10} {:>10} {:>7}   {:>26}   {:>26}",
        "ranks", "OpenMPI", "ferry", "ratio", "Open MPI post/send/wait", "ferry post/send/wait"
    );
    let mut records = Vec::new();
    for &ranks in &args.ranks {
        let (mut plain, mut ferry) = (Vec::new(), Vec::new());
        for _ in 0..args.launches {
            plain.push(launch_once(args, &program, ranks, None)?);
            ferry.push(launch_once(args, &program, ranks, Some(&lib))?);
        }
        let (p, f) = (Phases::of(&plain), Phases::of(&ferry));
        let r = Record {
            bench: "halo3d",
            ranks,
            n: args.n,
            radius: args.radius,
            quantities: args.quantities,
            launches: args.launches,
            openmpi: p,
            ferry: f,
            ratio: p.total_ms / f.total_ms,
        };
        let phases = |x: &Phases| format!("{:.3}/{:.3}/{:.3}", x.post_ms, x.send_ms, x.wait_ms);
        println!(
            "{:>5} {:>10.3} {:>10.3} {:>7.2}   {:>26}   {:>26}",
            ranks,
            p.total_ms,
            f.total_ms,
            r.ratio,
            phases(&p),
            phases(&f)
        );
        records.push(r);
    }
    if let Some(path) = &args.json {
        write_json_lines(path, &records)?;
        println!("wrote {} records to {}", records.len(), path.display());
    }
    Ok(())
}
