//! Every environment knob of the interposer, with its default, read once at MPI_Init.
//!
//! Two more are the datatype engine's, read once by `ferry-datatypes` at the first large pack
//! or unpack, and apply to every packing the interposer does (sends, receives, MPI_Pack,
//! MPI_Unpack); MPI_Init logs their values (`FERRY_LOG=info`):
//! - `FERRY_PACK_THREADS` ([`ferry_datatypes::FERRY_PACK_THREADS`]): the threads that pack or
//!   unpack one large message, the calling thread included. Default: the cores in the
//!   process's affinity mask, at most 8, so a rank bound to one core (`mpirun --bind-to
//!   core`) packs on one thread as before, and a rank given several
//!   (`--map-by ppr:1:socket:PE=4 --bind-to core`) packs on all of them. `1` turns it off.
//!   The threads are a pool of the engine's own, never the application's rayon pool.
//!   Measured with `ferry-bench pingpong-ddt` on an H100 node's 16-core Xeon (bench/RESULTS.md):
//!   the 1 MiB vector of 4-byte blocks went from 3.1-3.4x the contiguous time at one core
//!   per rank to 1.74x at 4 and 1.46x at 8.
//! - `FERRY_PACK_PARALLEL_BYTES` ([`ferry_datatypes::FERRY_PACK_PARALLEL_BYTES`]): the fewest
//!   packed bytes a message needs to be split over those threads. Default 262144 (256 KiB).
//! - `FERRY_PACK_SPIN_US` ([`ferry_datatypes::FERRY_PACK_SPIN_US`]): how long those threads
//!   spin for the next message before they sleep. Default 1000; 0 sleeps at once, which
//!   measured 2.09x contiguous instead of 1.46x at 8 cores per rank (waking a sleeping thread
//!   of a virtual machine costs tens of microseconds per message).

/// `FERRY_INTERPOSE`: `off` (or `0`, `false`) makes every export a pure pass-through to
/// `PMPI_*`. Default: on.
pub(crate) const FERRY_INTERPOSE: &str = "FERRY_INTERPOSE";

/// `FERRY_PACK_MIN_BYTES`: messages with fewer packed bytes than this go through the library's
/// own datatype path. Default: 0 (ferry handles every non-contiguous type it supports).
pub(crate) const FERRY_PACK_MIN_BYTES: &str = "FERRY_PACK_MIN_BYTES";

/// `FERRY_LIBRARY_BLOCK_BYTES`: for sends and receives, types whose mean contiguous block is at
/// least this many bytes go through the library's own datatype path, which moves large blocks as fast as ferry does
/// and overlaps packing with sending through its shared-memory fragments, where ferry packs,
/// sends and unpacks one after the other. Measured on an H100 node's Xeon with Open MPI 4.1.6
/// (`ferry-bench pingpong-ddt`, bench/RESULTS.md): ferry is 1.0-3.0x Open MPI for mean blocks
/// of 4-16 bytes, but 0.78x for NAS LU's 40-byte and LAMMPS's 48-byte blocks, whose pack and
/// unpack it speeds up too little to pay for the extra copy. Default 32. MPI_Pack and MPI_Unpack
/// choose by measuring instead (`model.rs`), unless this is set, in which case the rule
/// applies to them too (so `FERRY_LIBRARY_BLOCK_BYTES=1048576` has ferry pack every type).
pub(crate) const FERRY_LIBRARY_BLOCK_BYTES: &str = "FERRY_LIBRARY_BLOCK_BYTES";

/// The interposer's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    /// Whether ferry handles anything at all.
    pub(crate) enabled: bool,
    /// See [`FERRY_PACK_MIN_BYTES`].
    pub(crate) pack_min_bytes: usize,
    /// See [`FERRY_LIBRARY_BLOCK_BYTES`].
    pub(crate) library_block_bytes: usize,
    /// Whether [`FERRY_LIBRARY_BLOCK_BYTES`] was set, overriding the measured model.
    pub(crate) block_rule_everywhere: bool,
}

impl Config {
    /// Reads the environment (`FERRY_LOG` is read by `ferry_comm::init_logging`).
    pub(crate) fn from_env() -> Config {
        let enabled = !matches!(
            std::env::var(FERRY_INTERPOSE)
                .map(|v| v.to_ascii_lowercase())
                .as_deref(),
            Ok("off" | "0" | "false" | "no")
        );
        let number = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(default)
        };
        Config {
            enabled,
            pack_min_bytes: number(FERRY_PACK_MIN_BYTES, 0),
            library_block_bytes: number(FERRY_LIBRARY_BLOCK_BYTES, 32),
            block_rule_everywhere: std::env::var_os(FERRY_LIBRARY_BLOCK_BYTES).is_some(),
        }
    }
}
