//! Launching `mpirun` from a benchmark: the orchestrating benchmarks (`pingpong-ddt`, `halo3d`)
//! run an MPI program twice, through plain Open MPI and with `LD_PRELOAD=libferry_mpi.so`, and
//! compare what the two runs measured.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Whether this process runs as root (Open MPI then needs `--allow-run-as-root`).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// `mpirun -np <ranks> <extra...> [-x LD_PRELOAD=<preload>] <program> <args...>`, with
/// `--allow-run-as-root` where needed and `--oversubscribe` (CI machines have 2 cores).
pub(crate) fn mpirun(
    ranks: usize,
    extra: &str,
    preload: Option<&Path>,
    program: &Path,
    args: &[String],
) -> Command {
    let mut cmd = Command::new("mpirun");
    if running_as_root() {
        cmd.arg("--allow-run-as-root");
    }
    cmd.args(["--oversubscribe", "-np", &ranks.to_string()]);
    cmd.args(extra.split_whitespace());
    if let Some(lib) = preload {
        cmd.arg("-x").arg(format!("LD_PRELOAD={}", lib.display()));
    }
    cmd.arg(program).args(args);
    cmd
}

/// Runs `cmd`, failing with `what` and the exit status if it fails; returns its stdout.
pub(crate) fn output(mut cmd: Command, what: &str) -> Result<String, String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run mpirun for {what}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{what} failed: {}", out.status));
    }
    String::from_utf8(out.stdout).map_err(|e| format!("{what}: output is not UTF-8: {e}"))
}

/// The interposer to preload: `explicit`, else `libferry_mpi.so` next to this executable;
/// an error naming how to build it if it does not exist.
pub(crate) fn interposer(explicit: Option<&PathBuf>) -> Result<PathBuf, String> {
    let lib = match explicit {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .parent()
            .map(|d| d.join("libferry_mpi.so"))
            .ok_or("no executable folder")?,
    };
    if !lib.exists() {
        return Err(format!(
            "{} not found: build it (cargo build --release -p ferry-mpi) or pass --interposer",
            lib.display()
        ));
    }
    Ok(lib)
}
