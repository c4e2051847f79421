//! MetaManager: module `metamanager` of group `meta`, the edge's store of
//! Kubernetes objects and its go-between for edge modules and the cloud
//! (edged.md §2, protocol.md §5.4, §6).
//!
//! MetaManager is the single writer of edgecore's SQLite database
//! ([`store`]). It
//!
//! * **stores what the cloud sends** (insert, update, delete, and
//!   responses of group `resource` or `func` that EdgeHub routes to group
//!   `meta`), forwards it to `edged` (devices and device models to group
//!   `twin`), and then acknowledges it: a `response` with content `"OK"`
//!   whose parent id is the message's id, sent to EdgeHub. A message that
//!   cannot be stored gets an `error` reply instead, so the cloud resends;
//! * **answers queries of edge modules** (edged, twin): from the store when
//!   the link is down or the object is cached, otherwise from the cloud
//!   through EdgeHub (synchronously, `remoteQueryTimeout`), storing the
//!   cloud's answer and acknowledging it;
//! * **passes edge updates up**: status patches are stored as rows and sent
//!   synchronously (the caller gets the cloud's answer, and the returned
//!   object is stored); other updates go to EdgeHub, whose outbox keeps
//!   status reports until the cloud answers them;
//! * **follows the link state** EdgeHub announces (`cloud_connected`,
//!   `cloud_disconnected`);
//! * runs the **MetaServer** ([`metaserver`]) when
//!   `modules.metaManager.metaServer.enable` is set.
//!
//! [`process`] has the message handling, rule by rule.

pub mod metaserver;
pub mod process;
pub mod store;

use std::path::PathBuf;
use std::time::Duration;

use kedge_apis::config::edgecore::EdgeCoreConfig;
use kedge_bus::{Module, ModuleContext, ModuleError};
use kedge_message::{group, module};
use tokio::sync::watch;

use store::{MetaStore, StoreError};

/// What MetaManager needs to know, from edgecore.yaml.
#[derive(Debug, Clone, PartialEq)]
pub struct MetaManagerSettings {
    /// The SQLite database (`database.dataSource`).
    pub database_path: PathBuf,
    /// The module messages for the cloud go to (`contextSendModule`,
    /// EdgeHub's `websocket`).
    pub cloud_module: String,
    /// How long a request to the cloud may take (`remoteQueryTimeout`,
    /// default 60 s).
    pub remote_query_timeout: Duration,
    /// This node's name, for the MetaServer's requests to the cloud.
    pub node_name: String,
    /// The MetaServer's settings, when it is enabled.
    pub meta_server: Option<metaserver::MetaServerSettings>,
}

impl MetaManagerSettings {
    /// KubeEdge's defaults, with the database at `database_path` and the
    /// MetaServer off.
    pub fn new(database_path: impl Into<PathBuf>, node_name: impl Into<String>) -> Self {
        Self {
            database_path: database_path.into(),
            cloud_module: module::EDGE_HUB.to_owned(),
            remote_query_timeout: Duration::from_secs(60),
            node_name: node_name.into(),
            meta_server: None,
        }
    }

    /// The settings edgecore.yaml gives.
    pub fn from_config(config: &EdgeCoreConfig) -> Self {
        let meta = &config.modules.meta_manager;
        let meta_server = meta
            .meta_server
            .enable
            .then(|| metaserver::MetaServerSettings::new(&meta.meta_server.server));
        let cloud_module = if meta.context_send_module.is_empty() {
            module::EDGE_HUB.to_owned()
        } else {
            meta.context_send_module.clone()
        };
        Self {
            database_path: PathBuf::from(&config.database.data_source),
            cloud_module,
            remote_query_timeout: Duration::from_secs(
                u64::try_from(meta.remote_query_timeout).unwrap_or(0).max(1),
            ),
            node_name: config
                .modules
                .edged
                .tailored_kubelet_flag
                .hostname_override
                .clone(),
            meta_server,
        }
    }
}

/// Why MetaManager stopped.
#[derive(Debug, thiserror::Error)]
pub enum MetaManagerError {
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The MetaServer could not listen.
    #[error("the MetaServer cannot listen on {address}")]
    Listen {
        /// The address.
        address: String,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
}

/// The MetaManager module (`metamanager`, group `meta`).
#[derive(Debug)]
pub struct MetaManager {
    settings: MetaManagerSettings,
}

impl MetaManager {
    /// A MetaManager with `settings`.
    pub fn new(settings: MetaManagerSettings) -> Self {
        Self { settings }
    }

    /// The settings in force.
    pub fn settings(&self) -> &MetaManagerSettings {
        &self.settings
    }
}

impl Module for MetaManager {
    fn name(&self) -> &str {
        module::META_MANAGER
    }

    fn group(&self) -> &str {
        group::META
    }

    async fn run(self, mut ctx: ModuleContext) -> Result<(), ModuleError> {
        let path = self.settings.database_path.clone();
        let store = tokio::task::spawn_blocking(move || MetaStore::open(path))
            .await
            .unwrap_or_else(|join| Err(StoreError::Task(join)))
            .map_err(MetaManagerError::Store)?;
        tracing::info!(database = %store.path().display(), revision = store.revision(), "MetaManager store open");
        let (connected_tx, connected_rx) = watch::channel(false);
        if let Some(server) = &self.settings.meta_server {
            let listener = tokio::net::TcpListener::bind(&server.address)
                .await
                .map_err(|source| MetaManagerError::Listen {
                    address: server.address.clone(),
                    source,
                })?;
            let uplink = metaserver::Uplink::new(
                ctx.bus().clone(),
                self.settings.cloud_module.clone(),
                connected_rx,
                server.write_timeout,
            );
            let api = metaserver::MetaServer::new(store.clone(), uplink, &self.settings.node_name);
            tracing::info!(address = %server.address, "MetaServer listening");
            ctx.spawn(
                "metaserver",
                metaserver::serve(listener, api, ctx.token().clone()),
            );
        }
        ctx.set_ready();
        let processor = process::Processor::new(
            ctx.bus().clone(),
            store,
            self.settings.clone(),
            connected_tx,
        );
        while let Some(msg) = ctx.recv().await {
            processor.handle(&ctx, msg).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kedge_apis::config::HostInfo;

    #[test]
    fn settings_follow_edgecore_yaml() {
        let mut config =
            EdgeCoreConfig::default_config(&HostInfo::new("edge-1", [127, 0, 0, 1].into()));
        let defaults = MetaManagerSettings::from_config(&config);
        assert_eq!(
            defaults,
            MetaManagerSettings::new("/var/lib/kubeedge/edgecore.db", "edge-1")
        );
        config.modules.meta_manager.meta_server.enable = true;
        config.modules.meta_manager.remote_query_timeout = 5;
        let s = MetaManagerSettings::from_config(&config);
        assert_eq!(s.remote_query_timeout, Duration::from_secs(5));
        assert_eq!(
            s.meta_server.map(|m| m.address).as_deref(),
            Some("127.0.0.1:10550")
        );
    }
}
