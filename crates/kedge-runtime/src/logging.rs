//! Log output through `tracing`.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// Installs the global `tracing` subscriber, writing to standard error
/// (with colours only when that is a terminal).
///
/// `RUST_LOG` wins when set; otherwise `verbosity` picks the level: 0 info,
/// 1 debug, 2 or more trace. Calling it twice is harmless (the second call
/// does nothing), so tests may call it freely.
pub fn init(verbosity: u8) {
    let level = match verbosity {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
