//! EdgeController: keeps edge nodes and the cluster in step
//! (protocol.md §6).
//!
//! * Downstream ([`downstream`]): pods bound to edge nodes, and the
//!   ConfigMaps and Secrets they use, go to their nodes through CloudHub.
//! * Upstream ([`upstream`]): node registration, node and pod status,
//!   Leases, and queries from the edge are carried out against the API
//!   and answered.
//!
//! Requests are handled concurrently, a bounded number at a time, so that
//! a slow API call holds up only its own node's request; the module's
//! inbox is read all the time.

pub mod downstream;
pub mod locations;
pub mod upstream;

use std::sync::Arc;

use kedge_bus::{Module, ModuleContext, ModuleError};
use kedge_message::{group, module};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;

use crate::cluster::ClusterClient;
use crate::refusals::Refusals;
use downstream::Downstream;
use upstream::Upstream;

/// Upstream requests handled at once.
const REQUESTS_IN_FLIGHT: usize = 64;

/// EdgeController's counters.
#[derive(Debug, Clone, Default)]
pub struct EdgeControllerMetrics {
    /// Upstream requests answered.
    handled: Counter,
    /// Upstream requests refused, by reason.
    refused: Refusals,
}

impl EdgeControllerMetrics {
    /// Registers the counters under `kedge_edgecontroller_` in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let sub = registry.sub_registry_with_prefix("kedge_edgecontroller");
        sub.register(
            "handled",
            "Requests from edge nodes answered",
            metrics.handled.clone(),
        );
        metrics
            .refused
            .register(sub, "Requests from edge nodes refused, by reason");
        metrics
    }
}

/// The EdgeController module.
pub struct EdgeController {
    cluster: ClusterClient,
    metrics: EdgeControllerMetrics,
}

impl EdgeController {
    /// A controller for the edge nodes of `cluster`.
    pub fn new(cluster: ClusterClient, metrics: EdgeControllerMetrics) -> Self {
        Self { cluster, metrics }
    }
}

impl Module for EdgeController {
    fn name(&self) -> &str {
        module::EDGE_CONTROLLER
    }

    fn group(&self) -> &str {
        group::EDGE_CONTROLLER
    }

    async fn run(self, mut ctx: ModuleContext) -> Result<(), ModuleError> {
        let client = tokio::select! {
            () = ctx.cancelled() => return Ok(()),
            client = self.cluster.get() => client?,
        };
        let token = ctx.token().clone();
        let downstream = Downstream::new(&client, ctx.bus().clone());
        let upstream = Upstream::new(client, downstream.caches());
        let tasks = tokio_util::task::TaskTracker::new();
        tasks.spawn(downstream.run(token.clone()));
        ctx.set_ready();

        let permits = Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT));
        loop {
            let msg = tokio::select! {
                () = token.cancelled() => break,
                msg = ctx.recv() => match msg {
                    Some(msg) => msg,
                    None => break,
                },
            };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let (upstream, bus, metrics) =
                (upstream.clone(), ctx.bus().clone(), self.metrics.clone());
            tasks.spawn(async move {
                let _permit = permit;
                let answer = match upstream.handle(&msg).await {
                    Ok(Some(answer)) => answer,
                    Ok(None) => return,
                    Err(refusal) => {
                        metrics.refused.count(refusal.reason());
                        tracing::info!(
                            resource = %msg.router.resource,
                            operation = %msg.router.operation,
                            reason = refusal.reason(),
                            "refused a request from an edge node"
                        );
                        match Upstream::refusal_reply(&msg, refusal) {
                            Some(answer) => answer,
                            None => return,
                        }
                    }
                };
                metrics.handled.inc();
                if let Err(error) = bus.send(module::CLOUD_HUB, answer).await {
                    tracing::debug!(%error, "cannot hand a reply to cloudhub");
                }
            });
        }
        tasks.close();
        tasks.wait().await;
        Ok(())
    }
}
