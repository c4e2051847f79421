//! The embedded control plane as a cloudcore module: it opens the cluster
//! store (SQLite in `controlPlane.dataDir`, or etcd), starts the
//! Kubernetes-compatible API server on it, runs the scheduler and the
//! workload controllers against it, and stops them all with cloudcore.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kedge_apis::config::cloudcore::{ControlPlane, StorageBackend};
use kedge_apiserver::server::{self, ApiServerConfig};
use kedge_bus::{Module, ModuleContext, ModuleError};
use kedge_store::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{ClusterClient, client_from_kubeconfig};

/// The module name (and group) of the embedded control plane.
pub const MODULE: &str = "controlplane";
/// The SQLite file of cluster state, in the data dir.
pub const SQLITE_FILE: &str = "state.db";

/// How long the controllers get to finish their work in hand at shutdown.
const CONTROLLERS_GRACE: Duration = Duration::from_secs(10);

/// The embedded control plane module.
#[derive(Debug, Clone)]
pub struct ControlPlaneModule {
    config: ControlPlane,
    cluster: ClusterClient,
}

impl ControlPlaneModule {
    /// The module for `config` (cloudcore.yaml's `controlPlane`); it
    /// provides `cluster` to the other modules once the API is up.
    pub fn new(config: ControlPlane, cluster: ClusterClient) -> Self {
        Self { config, cluster }
    }

    async fn open_store(&self) -> Result<Arc<dyn Store>, ModuleError> {
        match self.config.storage.backend {
            StorageBackend::Sqlite => {
                let path = PathBuf::from(&self.config.data_dir).join(SQLITE_FILE);
                let store = kedge_store::sqlite::SqliteStore::open(&path)
                    .await
                    .map_err(|error| {
                        format!("cannot open the SQLite store {}: {error}", path.display())
                    })?;
                Ok(Arc::new(store))
            }
            StorageBackend::Etcd => {
                let endpoints = &self.config.storage.etcd_endpoints;
                let store = kedge_store::etcd::EtcdStore::connect(endpoints)
                    .await
                    .map_err(|error| format!("cannot reach etcd at {endpoints:?}: {error}"))?;
                Ok(Arc::new(store))
            }
        }
    }
}

impl Module for ControlPlaneModule {
    fn name(&self) -> &str {
        MODULE
    }

    fn group(&self) -> &str {
        MODULE
    }

    async fn run(self, mut ctx: ModuleContext) -> Result<(), ModuleError> {
        std::fs::create_dir_all(&self.config.data_dir).map_err(|error| {
            format!(
                "cannot create controlPlane.dataDir {}: {error}",
                self.config.data_dir
            )
        })?;
        let store = self.open_store().await?;
        let ip: IpAddr = self.config.bind_address.parse().map_err(|_| {
            format!(
                "controlPlane.bindAddress {:?} is not an IP address",
                self.config.bind_address
            )
        })?;
        let port = u16::try_from(self.config.secure_port).map_err(|_| {
            format!(
                "controlPlane.securePort {} is not a port",
                self.config.secure_port
            )
        })?;
        let config = ApiServerConfig {
            bind: SocketAddr::new(ip, port),
            data_dir: PathBuf::from(&self.config.data_dir),
            max_request_body_bytes: usize::try_from(self.config.max_request_body_bytes)
                .unwrap_or(usize::MAX),
            service_cluster_ip_range: self.config.service_cluster_ip_range.clone(),
        };
        // The API server stops after the controllers, so that their
        // requests in flight are answered and they can finish.
        let server_token = CancellationToken::new();
        let _stop_server = server_token.clone().drop_guard();
        let server_tasks = TaskTracker::new();
        let running = server::start(config, store, server_token.clone(), &server_tasks).await?;
        tracing::info!(url = %running.url, kubeconfig = %running.admin_kubeconfig.display(), "embedded control plane ready");
        // The scheduler and controllers are clients of the API, over
        // loopback with the admin credentials, like any other.
        let admin_kubeconfig = running.admin_kubeconfig.to_string_lossy();
        let client = client_from_kubeconfig(&admin_kubeconfig).await?;
        crate::crds::install(&client, crate::crds::definitions()).await?;
        self.cluster.provide(client.clone());
        let controllers_token = ctx.token().child_token();
        let controllers = TaskTracker::new();
        kedge_controllers::run(
            client,
            &self.config.controllers,
            controllers_token.clone(),
            &controllers,
        );
        ctx.set_ready();
        // The control plane takes no bus messages; drain them until shutdown.
        while let Some(message) = ctx.recv().await {
            tracing::debug!(operation = %message.router.operation, "control plane ignores bus messages");
        }
        controllers_token.cancel();
        controllers.close();
        if tokio::time::timeout(CONTROLLERS_GRACE, controllers.wait())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?CONTROLLERS_GRACE, "controllers did not stop in time; leaving them");
        }
        server_token.cancel();
        server_tasks.close();
        server_tasks.wait().await;
        Ok(())
    }
}
