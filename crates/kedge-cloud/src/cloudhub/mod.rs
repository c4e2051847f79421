//! CloudHub: the hub edge nodes connect to (protocol.md §2.5–2.6, §3, §5).
//!
//! * [`objectsync`]: what each node acknowledged, in memory and written to
//!   ObjectSync / ClusterObjectSync in batches.
//! * [`queue`]: each node's bounded, coalescing outbound queue and its
//!   ACK tracking.
//! * [`hub`]: the sessions of all nodes: admission, replacement, the node
//!   limit and downstream dispatch.
//! * [`secrets`]: the CA, server certificate and join token in Secrets.
//!
//! [`CloudHubModule`] puts them together: it loads or makes the CA, serves
//! the certificate server, WebSocket and (when enabled) QUIC listeners,
//! renews the join token, admits each authenticated link as its node's
//! session, and sends each downstream bus message to its node.
//! * [`session`]: one node's session: upstream routing and authorization,
//!   keepalive, and writing the queue out.

pub mod hub;
pub mod objectsync;
pub mod queue;
pub mod secrets;
pub mod session;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use kedge_apis::config::cloudcore::CloudHub;
use kedge_bus::{BusHandle, Module, ModuleContext, ModuleError};
use kedge_message::{Message, delivery, group, module, operation, resource};
use kedge_transport::ca::ClientAuth;
use kedge_transport::certserver::{self, CertServerConfig, CertServerMetrics, CertServerState};
use kedge_transport::limits::{LinkLimits, RateLimit};
use kedge_transport::link::Link;
use kedge_transport::metrics::LinkMetrics;
use kedge_transport::{quic, ws};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::ClusterClient;
use hub::{Hub, HubConfig, HubEvents, HubMetrics};
use objectsync::SyncRecords;
use queue::Acked;
use session::SessionConfig;

/// The metrics of CloudHub and its listeners.
#[derive(Debug, Clone, Default)]
pub struct CloudHubMetrics {
    /// Sessions, refusals and acknowledgements.
    pub hub: HubMetrics,
    /// The WebSocket and QUIC listeners.
    pub link: LinkMetrics,
    /// The certificate server.
    pub certs: CertServerMetrics,
}

impl CloudHubMetrics {
    /// Registers every metric in `registry`.
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        Self {
            hub: HubMetrics::register(registry),
            link: LinkMetrics::register(registry),
            certs: CertServerMetrics::register(registry),
        }
    }
}

/// The CloudHub module.
pub struct CloudHubModule {
    config: CloudHub,
    cluster: ClusterClient,
    records: SyncRecords,
    metrics: CloudHubMetrics,
}

impl CloudHubModule {
    /// CloudHub as `config` (cloudcore.yaml's `modules.cloudHub`) says,
    /// using `cluster` for its Secrets and ObjectSyncs and sharing
    /// `records` with the SyncController.
    pub fn new(
        config: CloudHub,
        cluster: ClusterClient,
        records: SyncRecords,
        metrics: CloudHubMetrics,
    ) -> Self {
        Self {
            config,
            cluster,
            records,
            metrics,
        }
    }
}

/// Where sessions deliver: the module bus and the acknowledgement records.
#[derive(Clone)]
struct BusEvents {
    bus: BusHandle,
    records: SyncRecords,
}

impl HubEvents for BusEvents {
    async fn deliver(&self, group: &'static str, msg: Message) {
        if let Err(error) = self.bus.send_to_group(group, msg).await {
            tracing::debug!(group, %error, "cannot deliver an edge message");
        }
    }

    fn acked(&self, node: &str, acked: Acked) {
        self.records.acked(node, &acked);
    }

    fn connection(&self, node: &str, connected: bool) {
        // The set is what the sync controller relies on; the event only
        // makes it look at a new node at once, and may be dropped.
        self.records.set_connected(node, connected);
        let event = if connected {
            operation::CONNECTED
        } else {
            operation::DISCONNECTED
        };
        let msg = Message::new(
            module::CLOUD_HUB,
            group::CLOUD_HUB,
            event,
            format!("node/{node}"),
            serde_json::json!({"event_type": event, "timestamp": kedge_message::now_millis() / 1000, "client_id": node}),
        );
        if self.bus.has_module(module::SYNC_CONTROLLER)
            && let Err(error) = self.bus.try_send(module::SYNC_CONTROLLER, msg)
        {
            tracing::debug!(node, %error, "sync controller busy: the node waits for its next round");
        }
    }

    fn acknowledged(&self, node: &str) -> HashMap<String, u64> {
        self.records.acknowledged(node)
    }
}

fn parse_ip(what: &str, value: &str) -> Result<IpAddr, String> {
    value
        .parse()
        .map_err(|_| format!("modules.cloudHub.{what} {value:?} is not an IP address"))
}

fn port(what: &str, value: u32) -> Result<u16, String> {
    u16::try_from(value).map_err(|_| format!("modules.cloudHub.{what} {value} is not a port"))
}

async fn bind(what: &str, address: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(address)
        .await
        .map_err(|error| format!("cannot listen on {address} for {what}: {error}"))
}

impl Module for CloudHubModule {
    fn name(&self) -> &str {
        module::CLOUD_HUB
    }

    fn group(&self) -> &str {
        group::CLOUD_HUB
    }

    async fn run(self, mut ctx: ModuleContext) -> Result<(), ModuleError> {
        let token = ctx.token().clone();
        let client = tokio::select! {
            () = token.cancelled() => return Ok(()),
            client = self.cluster.get() => client?,
        };
        let config = &self.config;
        crate::crds::install(&client, crate::crds::definitions()).await?;
        secrets::ensure_namespace(&client).await?;
        let ca = Arc::new(secrets::load_or_create_ca(&client).await?);
        let ips = config
            .advertise_address
            .iter()
            .map(|ip| parse_ip("advertiseAddress", ip))
            .collect::<Result<Vec<_>, _>>()?;
        let server =
            secrets::load_or_issue_server_certificate(&client, &ca, &ips, &config.dns_names)
                .await?;
        let refresh = Duration::from_secs(
            u64::try_from(config.token_refresh_duration.max(1)).unwrap_or(12) * 3600,
        );
        secrets::publish_token(&client, &ca, 2 * refresh).await?;
        self.records
            .load(&client)
            .await
            .map_err(|error| format!("cannot list ObjectSyncs: {error}"))?;

        let tasks = TaskTracker::new();
        tasks.spawn(
            self.records
                .clone()
                .write(client.clone(), token.child_token()),
        );
        {
            let (client, ca, token) = (client.clone(), ca.clone(), token.clone());
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        () = token.cancelled() => return,
                        () = tokio::time::sleep(refresh) => {}
                    }
                    if let Err(error) = secrets::publish_token(&client, &ca, 2 * refresh).await {
                        tracing::warn!(%error, "cannot renew the join token");
                    }
                }
            });
        }

        // The listeners stop after the sessions, so that every session
        // closes its link itself, asking its node to reconnect within the
        // restart window.
        let listening = CancellationToken::new();
        let _stop_listening = listening.clone().drop_guard();
        let (accepted_tx, mut accepted) = mpsc::channel::<Link>(1024);
        let mut limits = LinkLimits::default();
        limits.buffer = limits.buffer.max(256);
        limits.rate = Some(RateLimit {
            per_second: u32::try_from(config.node_message_qps).unwrap_or(1),
            burst: u32::try_from(config.node_message_burst).unwrap_or(1),
        });
        limits.max_handshakes = usize::try_from(config.max_handshakes).unwrap_or(1);
        limits.handshake_queue = usize::try_from(config.handshake_queue).unwrap_or(0);
        if config.https.enable {
            let address = SocketAddr::new(
                parse_ip("https.address", &config.https.address)?,
                port("https.port", config.https.port)?,
            );
            let listener = bind("the certificate server", address).await?;
            let tls = ca.server_config(&server, ClientAuth::Optional)?;
            let cert_config = CertServerConfig {
                node_cert_validity: Duration::from_secs(
                    u64::try_from(config.edge_cert_signing_duration.max(1)).unwrap_or(365)
                        * 24
                        * 3600,
                ),
                ..CertServerConfig::default()
            };
            let state = CertServerState::new(ca.clone(), cert_config, self.metrics.certs.clone());
            tasks.spawn(certserver::serve(
                listener,
                Arc::new(tls),
                state,
                listening.clone(),
            ));
        }
        if config.websocket.enable {
            let address = SocketAddr::new(
                parse_ip("websocket.address", &config.websocket.address)?,
                port("websocket.port", config.websocket.port)?,
            );
            let listener = bind("WebSocket", address).await?;
            let tls = ca.server_config(&server, ClientAuth::Required)?;
            tasks.spawn(ws::serve(
                listener,
                Arc::new(tls),
                limits.clone(),
                self.metrics.link.clone(),
                accepted_tx.clone(),
                listening.clone(),
            ));
        }
        if config.quic.enable {
            let address = SocketAddr::new(
                parse_ip("quic.address", &config.quic.address)?,
                port("quic.port", config.quic.port)?,
            );
            let tls = ca.server_config(&server, ClientAuth::Required)?;
            let endpoint = quic::server_endpoint(address, &tls, ca.key_der())?;
            tasks.spawn(quic::serve(
                endpoint,
                limits.clone(),
                self.metrics.link.clone(),
                accepted_tx.clone(),
                listening.clone(),
            ));
        }
        drop(accepted_tx);

        let sessions = TaskTracker::new();
        let hub = Hub::new(
            HubConfig {
                node_limit: usize::try_from(config.node_limit.max(1)).unwrap_or(1),
                session: SessionConfig {
                    keepalive_timeout: Duration::from_secs(
                        u64::try_from(config.keepalive_interval.max(1)).unwrap_or(30),
                    ),
                    ..SessionConfig::default()
                },
                restart_reconnect_rate: u32::try_from(config.restart_reconnect_rate).unwrap_or(0),
                ..HubConfig::default()
            },
            BusEvents {
                bus: ctx.bus().clone(),
                records: self.records.clone(),
            },
            self.metrics.hub.clone(),
            sessions.clone(),
            CancellationToken::new(),
        );
        ctx.set_ready();
        tracing::info!(
            websocket = config.websocket.enable,
            quic = config.quic.enable,
            certificates = config.https.enable,
            "cloudhub serving"
        );
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                link = accepted.recv() => match link {
                    Some(link) => hub.accept(link),
                    None => token.cancelled().await,
                },
                msg = ctx.recv() => {
                    let Some(msg) = msg else { break };
                    if delivery::needs_ack(&msg)
                        && let Some(node) = resource::target_node(&msg.router.resource)
                    {
                        self.records.expect(node, &msg);
                    }
                    hub.dispatch(msg);
                }
            }
        }
        hub.stop();
        sessions.close();
        sessions.wait().await;
        listening.cancel();
        tasks.close();
        tasks.wait().await;
        Ok(())
    }
}
