//! The crate's error type, [`GpuError`], and the conversions from cudarc's driver and NVRTC errors.
//!
//! Every fallible call in ferry-gpu returns [`Result<T>`]. Driver errors carry the name of the
//! CUDA call that failed and the driver's own message (`CUDA_ERROR_OUT_OF_MEMORY: out of memory`),
//! so a log line says what failed without a lookup.
//!
//! Not done yet: errors do not carry a backtrace or the CUDA error code as a number.

use cudarc::driver::{DriverError, sys::CUresult};

/// What went wrong in a GPU call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GpuError {
    /// The CUDA driver library (`libcuda.so.1`) could not be loaded or initialised: this machine
    /// has no NVIDIA driver, or only a stub, or one too old for these bindings.
    #[error("no usable CUDA driver: {detail}")]
    NoDriver {
        /// Why, in words, with what was searched.
        detail: String,
    },
    /// The driver works but there is no device with this ordinal.
    #[error("no CUDA device with ordinal {ordinal}: the CUDA driver reports {count} device(s)")]
    NoDevice {
        /// The ordinal asked for.
        ordinal: usize,
        /// How many devices the driver reports.
        count: usize,
    },
    /// The NVRTC runtime compiler (`libnvrtc.so`) could not be loaded, so kernels cannot be built.
    #[error("NVRTC (the CUDA runtime compiler) is not available: {detail}")]
    NoCompiler {
        /// Why, in words, with what was searched.
        detail: String,
    },
    /// A CUDA driver call failed.
    #[error("CUDA driver call {call} failed: {message}")]
    Driver {
        /// The driver API function (`cuMemHostRegister`, ...).
        call: &'static str,
        /// The driver's error name and description.
        message: String,
    },
    /// NVRTC rejected a kernel source; `log` is NVRTC's compile log.
    #[error("compiling CUDA kernel `{name}` failed:\n{log}")]
    Compile {
        /// The kernel (entry point) name that was asked for.
        name: String,
        /// NVRTC's program log (or the failing step when there is no log).
        log: String,
    },
    /// An allocation (device, pinned host or managed) failed.
    #[error("allocating {bytes} bytes failed: {message}")]
    Alloc {
        /// Bytes requested.
        bytes: usize,
        /// The driver's error name and description.
        message: String,
    },
    /// An argument was out of range (for example a host slice whose length differs from a buffer's).
    #[error("invalid argument: {what}")]
    InvalidArgument {
        /// What was wrong.
        what: String,
    },
}

/// `Result` with [`GpuError`].
pub type Result<T, E = GpuError> = std::result::Result<T, E>;

/// Formats a driver error as `NAME: description`, falling back to the numeric code.
pub(crate) fn describe(err: DriverError) -> String {
    let name = err
        .error_name()
        .ok()
        .map(|s| s.to_string_lossy().into_owned());
    let text = err
        .error_string()
        .ok()
        .map(|s| s.to_string_lossy().into_owned());
    match (name, text) {
        (Some(n), Some(t)) => format!("{n}: {t}"),
        (Some(n), None) => n,
        _ => format!("{:?} (code {})", err.0, err.0 as u32),
    }
}

/// Builds [`GpuError::Driver`] for `call`.
pub(crate) fn driver(call: &'static str, err: DriverError) -> GpuError {
    GpuError::Driver {
        call,
        message: describe(err),
    }
}

/// Builds [`GpuError::Alloc`] for `bytes`.
pub(crate) fn alloc(bytes: usize, err: DriverError) -> GpuError {
    GpuError::Alloc {
        bytes,
        message: describe(err),
    }
}

/// Converts a raw `CUresult` into `Ok(())` or a [`GpuError::Driver`] naming `call`.
pub(crate) fn check(call: &'static str, code: CUresult) -> Result<()> {
    code.result().map_err(|e| driver(call, e))
}

/// Extension to tag cudarc results with the driver call they made.
pub(crate) trait DriverResultExt<T> {
    /// Maps a [`DriverError`] to [`GpuError::Driver`] naming `call`.
    fn during(self, call: &'static str) -> Result<T>;
}

impl<T> DriverResultExt<T> for std::result::Result<T, DriverError> {
    fn during(self, call: &'static str) -> Result<T> {
        self.map_err(|e| driver(call, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_mentions_what_failed() {
        let e = GpuError::NoDriver {
            detail: "libcuda.so.1 not found".into(),
        };
        assert!(e.to_string().contains("CUDA driver"));
        let e = GpuError::NoDevice {
            ordinal: 3,
            count: 1,
        };
        assert_eq!(
            e.to_string(),
            "no CUDA device with ordinal 3: the CUDA driver reports 1 device(s)"
        );
        let e = GpuError::Compile {
            name: "k".into(),
            log: "error: expected a \";\"".into(),
        };
        assert!(e.to_string().contains("expected a"));
    }
}
