//! Finding and initialising the CUDA driver (`libcuda.so.1`) and NVRTC (`libnvrtc.so`) at run time.
//!
//! cudarc loads both libraries lazily and *panics* when one is missing. Everything in ferry-gpu
//! calls [`driver`] (or [`nvrtc`]) first, which answers from a process-wide cache:
//!
//! 1. Ask cudarc's own loader whether one of its candidate names loads (`is_culib_present`).
//! 2. If not, look in the usual install folders (`$CUDA_HOME/lib64`, `/usr/local/cuda/lib64`,
//!    `/usr/local/nvidia/lib64`, ...) and `dlopen` a candidate found there by full path, keeping
//!    it open. The dynamic loader then matches cudarc's later `dlopen("libnvrtc.so.13")` against
//!    the already-loaded library's SONAME, so cudarc uses it.
//! 3. For the driver, call `cuInit(0)` inside `catch_unwind` (a driver too old for the CUDA 13
//!    bindings makes cudarc panic on a missing symbol) and turn stub libraries, missing devices
//!    and old drivers into [`GpuError::NoDriver`] / [`GpuError::NoDevice`].
//!
//! Not done yet: no environment variable of our own names an extra search folder; the
//! `LD_LIBRARY_PATH` of the process and the folders above are all that is searched.

use std::ffi::{CString, c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cudarc::driver::{result as dresult, sys as dsys};

use crate::error::{GpuError, Result};

/// Runs `f`, returning the panic message if it panicked.
fn catch<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".to_string())
    })
}

/// Runs `f`, turning a panic inside cudarc (a library or symbol that could not be loaded)
/// into [`GpuError::NoDriver`] with the panic message.
pub(crate) fn guard<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch(f).unwrap_or_else(|msg| {
        Err(GpuError::NoDriver {
            detail: format!(
                "{what}: the CUDA driver library could not be used ({msg}); \
                 the installed NVIDIA driver may be older than CUDA 13"
            ),
        })
    })
}

/// Like [`guard`] for NVRTC calls: a panic becomes [`GpuError::NoCompiler`].
pub(crate) fn guard_nvrtc<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch(f).unwrap_or_else(|msg| {
        Err(GpuError::NoCompiler {
            detail: format!(
                "{what}: the NVRTC library could not be used ({msg}); \
                 it may be older than CUDA 13"
            ),
        })
    })
}

/// Makes sure the driver library is loadable and `cuInit` succeeded. Cached for the process.
pub(crate) fn driver() -> Result<()> {
    static STATE: OnceLock<Result<()>> = OnceLock::new();
    STATE.get_or_init(load_and_init_driver).clone()
}

/// Like [`driver`] but without the error: `true` when driver calls can be made.
pub(crate) fn driver_ready() -> bool {
    driver().is_ok()
}

/// Makes sure NVRTC is loadable. Cached for the process.
pub(crate) fn nvrtc() -> Result<()> {
    static STATE: OnceLock<Result<()>> = OnceLock::new();
    STATE.get_or_init(load_nvrtc).clone()
}

fn load_and_init_driver() -> Result<()> {
    if !driver_present() {
        let searched = search_dirs(DRIVER_DIRS);
        preload("cuda", &searched);
        if !driver_present() {
            return Err(GpuError::NoDriver {
                detail: format!(
                    "the NVIDIA driver library libcuda.so.1 was not found (searched the dynamic \
                     loader path, LD_LIBRARY_PATH, and {}); install the NVIDIA driver or run on \
                     a machine with a GPU",
                    display_dirs(&searched)
                ),
            });
        }
    }
    guard("cuInit", || match dresult::init() {
        Ok(()) => Ok(()),
        Err(e) => Err(init_error(e)),
    })
}

/// Maps a failing `cuInit` to the error a user understands.
fn init_error(e: dresult::DriverError) -> GpuError {
    use dsys::CUresult as R;
    let message = crate::error::describe(e);
    match e.0 {
        R::CUDA_ERROR_NO_DEVICE => GpuError::NoDevice {
            ordinal: 0,
            count: 0,
        },
        R::CUDA_ERROR_STUB_LIBRARY => GpuError::NoDriver {
            detail: format!(
                "only the CUDA stub library was found, not a real NVIDIA driver ({message})"
            ),
        },
        R::CUDA_ERROR_SYSTEM_DRIVER_MISMATCH | R::CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE => {
            GpuError::NoDriver {
                detail: format!("the NVIDIA driver cannot be used ({message})"),
            }
        }
        _ => GpuError::NoDriver {
            detail: format!("cuInit failed ({message})"),
        },
    }
}

fn load_nvrtc() -> Result<()> {
    if nvrtc_present() {
        return Ok(());
    }
    let searched = search_dirs(NVRTC_DIRS);
    preload("nvrtc-builtins", &searched);
    preload("nvrtc", &searched);
    if nvrtc_present() {
        return Ok(());
    }
    Err(GpuError::NoCompiler {
        detail: format!(
            "libnvrtc.so was not found (searched the dynamic loader path, LD_LIBRARY_PATH, and {}); \
             install the CUDA toolkit's NVRTC or add its lib folder to LD_LIBRARY_PATH",
            display_dirs(&searched)
        ),
    })
}

fn driver_present() -> bool {
    // SAFETY: `is_culib_present` only tries `dlopen` on cudarc's candidate names and closes
    // what it opened; loading the NVIDIA driver library runs no code of ours.
    unsafe { dsys::is_culib_present() }
}

fn nvrtc_present() -> bool {
    // SAFETY: as in `driver_present`, this only opens and closes candidate libraries.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Folders that may hold `libcuda.so.1` outside the loader path. The CUDA forward-compatibility
/// folder (`/usr/local/cuda/compat`) is left out on purpose: its driver must match the kernel module.
const DRIVER_DIRS: &[&str] = &[
    "/usr/local/nvidia/lib64",
    "/usr/local/nvidia/lib",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/usr/lib/wsl/lib",
];

/// Folders that may hold `libnvrtc.so.*`; `$CUDA_HOME`, `$CUDA_PATH` and `$CUDA_ROOT` come first.
const NVRTC_DIRS: &[&str] = &[
    "/usr/local/cuda/lib64",
    "/usr/local/cuda/targets/x86_64-linux/lib",
    "/usr/local/cuda/targets/sbsa-linux/lib",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib64",
];

fn search_dirs(fixed: &[&str]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"] {
        if let Some(root) = std::env::var_os(var) {
            let root = PathBuf::from(root);
            dirs.push(root.join("lib64"));
            dirs.push(root.join("lib"));
        }
    }
    dirs.extend(fixed.iter().map(PathBuf::from));
    dirs.retain(|d| d.is_dir());
    dirs.dedup();
    dirs
}

fn display_dirs(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        "no CUDA install folder exists".to_string()
    } else {
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Opens, by full path and for the rest of the process, the first library in `dirs` whose file
/// name is `lib<name>.so` or `lib<name>.so.<version>`.
fn preload(name: &str, dirs: &[PathBuf]) {
    let prefix = format!("lib{name}.so");
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|f| f.to_str())
                    .is_some_and(|f| f == prefix || f.starts_with(&format!("{prefix}.")))
            })
            .collect();
        // The longest name is the most specific version (libnvrtc.so.13.0.48 over libnvrtc.so).
        found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        for path in found {
            if open_forever(&path) {
                tracing::debug!(library = %path.display(), "preloaded CUDA library");
                return;
            }
        }
    }
}

#[cfg(unix)]
fn open_forever(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;

    unsafe extern "C" {
        fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
    }
    const RTLD_NOW: c_int = 2;

    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call; the handle is
    // deliberately never closed, so the library stays mapped for the rest of the process.
    let handle = unsafe { dlopen(c_path.as_ptr(), RTLD_NOW) };
    !handle.is_null()
}

#[cfg(not(unix))]
fn open_forever(_path: &Path) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_dirs_only_lists_existing_folders() {
        for d in search_dirs(NVRTC_DIRS) {
            assert!(d.is_dir(), "{}", d.display());
        }
    }

    #[test]
    fn guard_turns_panic_into_no_driver() {
        let r: Result<()> = guard("test", || panic!("Missing symbol cuFoo"));
        match r {
            Err(GpuError::NoDriver { detail }) => assert!(detail.contains("cuFoo"), "{detail}"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
