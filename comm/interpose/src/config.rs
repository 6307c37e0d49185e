//! Every environment knob of the interposer, with its default, read once at MPI_Init.

/// `FERRY_INTERPOSE`: `off` (or `0`, `false`) makes every export a pure pass-through to
/// `PMPI_*`. Default: on.
pub(crate) const FERRY_INTERPOSE: &str = "FERRY_INTERPOSE";

/// `FERRY_PACK_MIN_BYTES`: messages with fewer packed bytes than this go through the library's
/// own datatype path. Default: 0 (ferry handles every non-contiguous type it supports).
pub(crate) const FERRY_PACK_MIN_BYTES: &str = "FERRY_PACK_MIN_BYTES";

/// `FERRY_LIBRARY_BLOCK_BYTES`: types whose mean contiguous block is at least this many bytes
/// go through the library's own datatype path, which moves large blocks as fast as ferry does
/// and overlaps packing with sending (measured with `ferry-bench pack`, `pingpong-ddt` and the
/// halo3d exchange: ferry gains nothing from 128-byte blocks up and pays for staging). Default 128.
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
            library_block_bytes: number(FERRY_LIBRARY_BLOCK_BYTES, 128),
        }
    }
}
