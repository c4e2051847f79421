//! Full hollow edge nodes: edgecore's own modules on an in-memory container
//! runtime, many in one process, for `edgemark --full`.
//!
//! A link-level hollow node ([`HollowNode`](crate::hollow::HollowNode))
//! only keeps a link to the cloud and acknowledges what it is sent. A full
//! hollow node ([`HollowEdgeCore`]) is edgecore without the host: its own
//! [`kedge_bus`] bus carrying the real EdgeHub (`websocket`), MetaManager
//! (`metamanager`, with its own SQLite database) and edged (`edged`), edged
//! running pods on a [`FakeRuntime`] of its own. The node registers itself,
//! reports its status, renews its Lease, and runs the pods the cloud
//! schedules to it (sandboxes and containers held in memory, pod IPs from
//! 10.88.0.0/16) and reports them Running, all with the messages a real
//! edgecore sends. edgecore's other modules (eventbus, servicebus, twin,
//! edgestream) are not started, and the MetaServer is off.
//!
//! Everything the node keeps on disk (MetaManager's database, EdgeHub's
//! outbox, edged's root directory and the pods' log directories) is under
//! the node's data directory, never under `/var`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kedge_apis::config::HostInfo;
use kedge_apis::config::edgecore::EdgeCoreConfig;
use kedge_bus::{BusBuilder, BusConfig, BusError, ShutdownReport};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

use crate::edged::runtime::{FakeRuntime, Runtime};
use crate::edged::{Edged, EdgedSettings};
use crate::edgehub::{Dialer, EdgeHub, EdgeHubMetrics, EdgeHubSettings};
use crate::metamanager::{MetaManager, MetaManagerSettings};

/// One full hollow edge node: EdgeHub, MetaManager and edged on a bus of
/// their own, edged on its own [`FakeRuntime`].
pub struct HollowEdgeCore {
    name: String,
    edge_hub: EdgeHubSettings,
    meta_manager: MetaManagerSettings,
    edged: EdgedSettings,
    dialer: Arc<dyn Dialer>,
    runtime: FakeRuntime,
    edge_hub_metrics: EdgeHubMetrics,
}

impl std::fmt::Debug for HollowEdgeCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HollowEdgeCore")
            .field("name", &self.name)
            .field("edge_hub", &self.edge_hub)
            .field("meta_manager", &self.meta_manager)
            .field("edged", &self.edged)
            .finish_non_exhaustive()
    }
}

impl HollowEdgeCore {
    /// Node `name`, keeping its files under `data_dir`, reporting `node_ip`
    /// as its address and reaching the cloud through `dialer`; otherwise
    /// edgecore's defaults.
    pub fn new(
        name: impl Into<String>,
        data_dir: &Path,
        node_ip: IpAddr,
        dialer: Arc<dyn Dialer>,
    ) -> Self {
        let name = name.into();
        let config = edgecore_config(&name, data_dir, node_ip);
        let mut edged = EdgedSettings::from_config(&config);
        edged.log_root = data_dir.join("pod-logs");
        // Hollow nodes have no static pods (and must not read the host's).
        edged.static_pod_path = std::path::PathBuf::new();
        Self {
            edge_hub: EdgeHubSettings::from_config(&config),
            meta_manager: MetaManagerSettings::from_config(&config),
            edged,
            dialer,
            // The fake runtime pulls any image: none needs to be there.
            runtime: FakeRuntime::default(),
            edge_hub_metrics: EdgeHubMetrics::default(),
            name,
        }
    }

    /// The same node sending keepalives every `heartbeat` (EdgeHub's
    /// default is 15 s).
    #[must_use]
    pub fn with_heartbeat(mut self, heartbeat: Duration) -> Self {
        self.edge_hub.heartbeat = heartbeat;
        self
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's container runtime; clones share its sandboxes and
    /// containers.
    pub fn runtime(&self) -> &FakeRuntime {
        &self.runtime
    }

    /// The node's EdgeHub counters; clones share them.
    pub fn edge_hub_metrics(&self) -> &EdgeHubMetrics {
        &self.edge_hub_metrics
    }

    /// Runs the node until `shutdown` is cancelled or a module fails, then
    /// stops its modules, waiting at most `grace` for them.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> Result<ShutdownReport, BusError> {
        let span = info_span!("hollow", node = %self.name);
        self.run_inner(shutdown, grace).instrument(span).await
    }

    async fn run_inner(
        self,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> Result<ShutdownReport, BusError> {
        let hub = EdgeHub::new(self.edge_hub, self.dialer).with_metrics(self.edge_hub_metrics);
        let runtime: Arc<dyn Runtime> = Arc::new(self.runtime);
        let mut builder = BusBuilder::new(BusConfig::default());
        // In edgecore's registration order.
        builder
            .register(Edged::with_runtime(self.edged, runtime), true)?
            .register(hub, true)?
            .register(MetaManager::new(self.meta_manager), true)?;
        // Each node's bus metrics stay private: thousands of nodes would
        // register the same names.
        let bus = builder.build(&mut Registry::default()).start();
        let failed = bus.token();
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = failed.cancelled() => {}
        }
        Ok(bus.shutdown(grace).await)
    }
}

/// edgecore's default configuration for node `name` with its files under
/// `data_dir`, its address `node_ip` and the MetaServer off.
fn edgecore_config(name: &str, data_dir: &Path, node_ip: IpAddr) -> EdgeCoreConfig {
    // The host's address only sets the defaults of EdgeHub's cloud
    // addresses, which the node's dialer replaces.
    let mut config = EdgeCoreConfig::default_config(&HostInfo::new(name, Ipv4Addr::LOCALHOST));
    let under = |file: &str| data_dir.join(file).to_string_lossy().into_owned();
    config.database.data_source = under("edgecore.db");
    config.modules.meta_manager.meta_server.enable = false;
    let flags = &mut config.modules.edged.tailored_kubelet_flag;
    flags.hostname_override = name.to_owned();
    flags.node_ip = node_ip.to_string();
    flags.root_directory = under("edged");
    config
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use kedge_message::{Message, operation};
    use kedge_transport::link::{Link, Peer, memory_pair};

    use super::*;
    use crate::edgehub::{DialError, DialFuture};

    /// Hands out one in-memory link, then fails.
    struct OneLink(Mutex<Option<Link>>);

    impl Dialer for OneLink {
        fn dial(&self) -> DialFuture {
            let link = self.0.lock().expect("link").take();
            Box::pin(async move { link.ok_or_else(|| DialError::Unavailable("used".into())) })
        }
    }

    fn peer(node: &str) -> Peer {
        Peer {
            node_id: node.into(),
            project_id: "p".into(),
            address: None,
        }
    }

    #[test]
    fn the_node_keeps_its_files_under_its_data_dir() {
        let dir = Path::new("/data/hollow-7");
        let node = HollowEdgeCore::new(
            "hollow-7",
            dir,
            IpAddr::from([127, 0, 0, 9]),
            Arc::new(OneLink(Mutex::new(None))),
        )
        .with_heartbeat(Duration::from_secs(2));
        assert_eq!(node.name(), "hollow-7");
        assert_eq!(node.edged.node.name, "hollow-7");
        assert_eq!(node.edged.node.ip, IpAddr::from([127, 0, 0, 9]));
        assert_eq!(node.edged.node.root_directory, dir.join("edged"));
        assert_eq!(node.edged.log_root, dir.join("pod-logs"));
        assert_eq!(node.meta_manager.database_path, dir.join("edgecore.db"));
        assert_eq!(node.meta_manager.node_name, "hollow-7");
        assert!(node.meta_manager.meta_server.is_none());
        assert_eq!(node.edge_hub.outbox_path, dir.join("edgehub.db"));
        assert_eq!(node.edge_hub.heartbeat, Duration::from_secs(2));
    }

    #[tokio::test]
    async fn the_node_registers_itself_over_its_link_and_stops() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut cloud, edge) = memory_pair(peer("cloud"), peer("hollow-0"), 64);
        let node = HollowEdgeCore::new(
            "hollow-0",
            dir.path(),
            IpAddr::from([127, 0, 0, 1]),
            Arc::new(OneLink(Mutex::new(Some(edge)))),
        );
        let connected = node.edge_hub_metrics().clone();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(node.run(shutdown.clone(), Duration::from_secs(10)));

        let registration = async {
            loop {
                let msg: Message = cloud.receiver.recv().await.expect("the link is open");
                if msg.router.operation == operation::INSERT
                    && msg.router.resource == "default/node/hollow-0"
                {
                    return msg;
                }
            }
        };
        let msg = tokio::time::timeout(Duration::from_secs(30), registration)
            .await
            .expect("the node registers");
        assert_eq!(msg.content["metadata"]["name"], "hollow-0");
        assert!(connected.is_connected());
        assert!(dir.path().join("edgecore.db").exists());

        shutdown.cancel();
        let report = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the node stops")
            .expect("the task ends")
            .expect("the bus builds");
        assert!(report.is_clean(), "{report:?}");
    }
}
