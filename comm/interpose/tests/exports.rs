//! libferry_mpi.so exports exactly the MPI functions listed in `exports.txt`, and every one of
//! them is defined (not merely referenced), checked with `nm -D`.

use std::path::PathBuf;
use std::process::Command;

fn library() -> Option<PathBuf> {
    // Integration tests run from target/<profile>/deps; the cdylib sits one level up.
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.parent()?;
    let lib = dir.join("libferry_mpi.so");
    lib.exists().then_some(lib)
}

#[test]
fn exported_symbols_match_the_checked_list() {
    let Some(lib) = library() else {
        println!("skipped: libferry_mpi.so not built next to the test binary");
        return;
    };
    let out = match Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&lib)
        .output()
    {
        Ok(o) if o.status.success() => o,
        Ok(o) => panic!("nm failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            println!("skipped: nm is not available ({e})");
            return;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut exported: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let (_addr, kind, name) = (parts.next()?, parts.next()?, parts.next()?);
            (kind == "T"
                && (name.starts_with("MPI_")
                    || name.starts_with("PMPI_")
                    || name.starts_with("mpi_")))
            .then_some(name)
        })
        .collect();
    exported.sort_unstable();
    let listed = include_str!("../exports.txt");
    let mut want: Vec<&str> = listed
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    want.sort_unstable();
    assert_eq!(
        exported, want,
        "libferry_mpi.so's MPI exports differ from exports.txt"
    );
}
