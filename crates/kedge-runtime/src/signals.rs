//! SIGTERM and SIGINT: the first starts a graceful shutdown, the second
//! forces the exit.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Exit status of a process forced to stop by a second signal.
pub const FORCED_EXIT_CODE: i32 = 130;

/// Spawns the signal watcher. On the first SIGTERM or SIGINT it cancels
/// `token`; on a second one it exits the process at once with
/// [`FORCED_EXIT_CODE`].
pub fn spawn_handler(token: CancellationToken) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(tokio::spawn(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!(
            signal = name,
            "shutting down; a second signal forces the exit"
        );
        token.cancel();
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::warn!(signal = name, "second signal: exiting now");
        std::process::exit(FORCED_EXIT_CODE);
    }))
}
