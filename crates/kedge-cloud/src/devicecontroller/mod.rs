//! DeviceController: keeps edge nodes' devices and the cluster's Device
//! objects in step (devices.md §2).
//!
//! * Downstream ([`downstream`]): Devices bound to edge nodes, and their
//!   DeviceModels, go to their nodes through CloudHub, with membership
//!   updates.
//! * Upstream ([`upstream`]): twin and state reports from DeviceTwin are
//!   written to the Device's status and acknowledged.

pub mod downstream;
pub mod upstream;

use std::sync::Arc;

use kedge_bus::{Module, ModuleContext, ModuleError};
use kedge_message::{group, module};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;

use crate::cloudhub::objectsync::SyncRecords;
use crate::cluster::ClusterClient;
use crate::refusals::Refusals;
use downstream::Downstream;
use upstream::Upstream;

/// Reports written at once.
const REPORTS_IN_FLIGHT: usize = 64;

/// DeviceController's counters.
#[derive(Debug, Clone, Default)]
pub struct DeviceControllerMetrics {
    /// Reports acknowledged.
    acknowledged: Counter,
    /// Reports refused or not written, by reason.
    refused: Refusals,
}

impl DeviceControllerMetrics {
    /// Registers the counters under `kedge_devicecontroller_` in
    /// `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let sub = registry.sub_registry_with_prefix("kedge_devicecontroller");
        sub.register(
            "acknowledged",
            "Device reports from edge nodes written and acknowledged",
            metrics.acknowledged.clone(),
        );
        metrics.refused.register(
            sub,
            "Device reports from edge nodes refused or not written, by reason",
        );
        metrics
    }
}

/// The DeviceController module.
pub struct DeviceController {
    cluster: ClusterClient,
    records: SyncRecords,
    metrics: DeviceControllerMetrics,
}

impl DeviceController {
    /// A controller for the devices of `cluster`; status it writes from a
    /// node's report moves that node's `records` along.
    pub fn new(
        cluster: ClusterClient,
        records: SyncRecords,
        metrics: DeviceControllerMetrics,
    ) -> Self {
        Self {
            cluster,
            records,
            metrics,
        }
    }
}

impl Module for DeviceController {
    fn name(&self) -> &str {
        module::DEVICE_CONTROLLER
    }

    fn group(&self) -> &str {
        group::DEVICE_CONTROLLER
    }

    async fn run(self, mut ctx: ModuleContext) -> Result<(), ModuleError> {
        let client = tokio::select! {
            () = ctx.cancelled() => return Ok(()),
            client = self.cluster.get() => client?,
        };
        let token = ctx.token().clone();
        let downstream = Downstream::new(&client, ctx.bus().clone());
        let upstream = Upstream::new(client, downstream.caches(), self.records.clone());
        let tasks = tokio_util::task::TaskTracker::new();
        tasks.spawn(downstream.run(token.clone()));
        ctx.set_ready();

        let permits = Arc::new(Semaphore::new(REPORTS_IN_FLIGHT));
        while let Some(msg) = ctx.recv().await {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let (upstream, bus, metrics) =
                (upstream.clone(), ctx.bus().clone(), self.metrics.clone());
            tasks.spawn(async move {
                let _permit = permit;
                match upstream.handle(&msg).await {
                    Ok(Some(answer)) => {
                        metrics.acknowledged.inc();
                        if let Err(error) = bus.send(module::CLOUD_HUB, answer).await {
                            tracing::debug!(%error, "cannot hand an acknowledgement to cloudhub");
                        }
                    }
                    Ok(None) => {}
                    Err(refusal) => {
                        metrics.refused.count(refusal.reason());
                        tracing::info!(
                            resource = %msg.router.resource,
                            reason = refusal.reason(),
                            "refused a device report from an edge node"
                        );
                    }
                }
            });
        }
        tasks.close();
        tasks.wait().await;
        Ok(())
    }
}
