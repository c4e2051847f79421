//! The run loop every binary shares.

use std::sync::Arc;
use std::time::Duration;

use kedge_bus::Bus;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::{admin, signals};

/// How [`run`] runs a process.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Address of the admin server (`/metrics`, `/healthz`, `/readyz`).
    pub admin_address: String,
    /// How long shutdown waits for modules before giving up.
    pub grace: Duration,
}

/// Why a process ended badly.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The admin server could not listen.
    #[error("admin server cannot listen on {address}")]
    AdminBind {
        /// The configured address.
        address: String,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    /// One or more modules failed.
    #[error("module {module} failed: {reason}")]
    ModuleFailed {
        /// The first module that failed.
        module: String,
        /// Its error.
        reason: String,
    },
    /// Modules were still running when the grace period ended.
    #[error("modules still running after the {grace:?} grace period: {modules:?}")]
    ShutdownTimedOut {
        /// The grace period.
        grace: Duration,
        /// The modules that did not stop.
        modules: Vec<String>,
    },
}

/// Starts `bus` and the admin server, waits for a signal or a module failure,
/// then shuts down within `options.grace`.
pub async fn run(bus: Bus, registry: Registry, options: RunOptions) -> Result<(), RunError> {
    let listener = TcpListener::bind(&options.admin_address)
        .await
        .map_err(|source| RunError::AdminBind {
            address: options.admin_address.clone(),
            source,
        })?;
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "admin server listening");
    }
    let running = bus.start();
    let token = running.token();
    signals::spawn_handler(token.clone()).map_err(RunError::Signals)?;

    let router = admin::router(Arc::new(registry), running.readiness());
    let admin_token = token.clone();
    running.tracker().spawn(
        async move {
            if let Err(error) = admin::serve(listener, router, admin_token.clone()).await {
                tracing::error!(%error, "admin server failed; stopping the process");
                admin_token.cancel();
            }
        }
        .instrument(tracing::info_span!("admin")),
    );

    token.cancelled().await;
    let report = running.shutdown(options.grace).await;
    if let Some((module, reason)) = report.failed.into_iter().next() {
        return Err(RunError::ModuleFailed { module, reason });
    }
    if report.timed_out {
        return Err(RunError::ShutdownTimedOut {
            grace: options.grace,
            modules: report.still_running,
        });
    }
    tracing::info!("stopped cleanly");
    Ok(())
}
