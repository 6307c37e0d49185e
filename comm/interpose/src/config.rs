//! Every environment knob of the interposer, with its default, read once at MPI_Init.

/// `FERRY_INTERPOSE`: `off` (or `0`, `false`) makes every export a pure pass-through to
/// `PMPI_*`. Default: on.
pub(crate) const FERRY_INTERPOSE: &str = "FERRY_INTERPOSE";

/// `FERRY_PACK_MIN_BYTES`: messages with fewer packed bytes than this go through the library's
/// own datatype path. Default: 0 (ferry handles every non-contiguous type it supports).
pub(crate) const FERRY_PACK_MIN_BYTES: &str = "FERRY_PACK_MIN_BYTES";

/// The interposer's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    /// Whether ferry handles anything at all.
    pub(crate) enabled: bool,
    /// See [`FERRY_PACK_MIN_BYTES`].
    pub(crate) pack_min_bytes: usize,
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
        let pack_min_bytes = std::env::var(FERRY_PACK_MIN_BYTES)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        Config {
            enabled,
            pack_min_bytes,
        }
    }
}
