//! Certificate rotation (protocol.md §4.3): the node certificate is
//! renewed at a random 70–90 % of its lifetime, authenticated by the
//! certificate itself, and saved where the dialer reads it, so the next
//! connection uses it. The open connection keeps the old certificate,
//! which stays valid for the rest of its lifetime.

use std::time::{Duration, SystemTime};

use kedge_transport::bootstrap::{self, BootstrapConfig, EdgeCredentials};
use tokio_util::sync::CancellationToken;

/// How long to wait before looking again when no certificate is on disk
/// yet (the dialer fetches the first one with the join token).
const NOT_JOINED_POLL: Duration = Duration::from_secs(30);
/// The first wait after a failed renewal; it doubles up to
/// [`RETRY_MAX`] (KubeEdge: 2 s doubling, then 32 s).
const RETRY_FIRST: Duration = Duration::from_secs(2);
/// The longest wait between failed renewals.
const RETRY_MAX: Duration = Duration::from_secs(32);

/// Keeps the node certificate of `config` renewed until `shutdown`.
pub async fn keep_renewed(config: BootstrapConfig, shutdown: CancellationToken) {
    let mut retry = RETRY_FIRST;
    loop {
        let wait = match EdgeCredentials::load(&config) {
            Ok(Ok(credentials)) => {
                let deadline = bootstrap::renewal_deadline(&credentials);
                let until = deadline
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                tracing::debug!(node = %config.node_name, in_secs = until.as_secs(), "next certificate renewal");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(until) => {}
                }
                match bootstrap::renew(&credentials, &config).await {
                    Ok(_) => {
                        tracing::info!(node = %config.node_name, "node certificate renewed");
                        retry = RETRY_FIRST;
                        continue;
                    }
                    Err(error) => {
                        tracing::warn!(node = %config.node_name, %error, retry_in = ?retry, "cannot renew the node certificate");
                        let wait = retry;
                        retry = (retry * 2).min(RETRY_MAX);
                        wait
                    }
                }
            }
            Ok(Err(_)) | Err(_) => NOT_JOINED_POLL,
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}
