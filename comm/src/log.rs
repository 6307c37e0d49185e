//! Logging: `FERRY_LOG` sets the `tracing` filter for every ferry program (read once).

/// The environment variable holding the `tracing` filter, e.g. `FERRY_LOG=debug` or
/// `FERRY_LOG=ferry_comm=debug`. Unset means warnings only.
pub const FERRY_LOG: &str = "FERRY_LOG";

/// Installs a `tracing` subscriber that writes to stderr with the filter from [`FERRY_LOG`].
/// Each operation's span is printed when it closes, with its fields (rank, peer, tag, bytes)
/// and the time it took.
/// Calling it again, or after another subscriber was installed, does nothing.
pub fn init_logging() {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_env(FERRY_LOG)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
            .try_init();
    });
}
