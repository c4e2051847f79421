//! The production dialer: the node's certificate from disk (or from the
//! certificate server with the join token), then a WebSocket (or Kedge
//! QUIC) link to CloudHub, all as edgecore.yaml's `modules.edgeHub` says.
//!
//! Credentials are loaded again for every attempt, so a certificate
//! renewed on disk is used from the next reconnect on.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kedge_apis::config::edgecore::EdgeCoreConfig;
use kedge_transport::bootstrap::{BootstrapConfig, ensure_certificates};
use kedge_transport::limits::LinkLimits;
use kedge_transport::metrics::LinkMetrics;
use kedge_transport::quic::connect_quic;
use kedge_transport::ws::{ConnectTarget, connect};

use super::dialer::{DialError, DialFuture, Dialer};

/// Which transport the dialer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudTransport {
    /// WebSocket over TLS (`modules.edgeHub.websocket`), KubeEdge's channel.
    WebSocket,
    /// Kedge's QUIC channel (`modules.edgeHub.quic`); it does not speak
    /// KubeEdge's gQUIC.
    Quic,
}

/// Dials CloudHub as edgecore.yaml configures it.
#[derive(Debug, Clone)]
pub struct CloudDialer {
    transport: CloudTransport,
    target: ConnectTarget,
    bootstrap: BootstrapConfig,
    limits: LinkLimits,
    metrics: LinkMetrics,
}

impl CloudDialer {
    /// The dialer for the transport `config` enables, counting into
    /// `metrics`.
    pub fn from_config(config: &EdgeCoreConfig, metrics: LinkMetrics) -> Self {
        let hub = &config.modules.edge_hub;
        let node = &config.modules.edged.tailored_kubelet_flag.hostname_override;
        let (transport, server, handshake) = if hub.quic.enable {
            (
                CloudTransport::Quic,
                &hub.quic.server,
                hub.quic.handshake_timeout,
            )
        } else {
            (
                CloudTransport::WebSocket,
                &hub.websocket.server,
                hub.websocket.handshake_timeout,
            )
        };
        let handshake = Duration::from_secs(u64::try_from(handshake).unwrap_or(30).max(1));
        let mut bootstrap = BootstrapConfig::new(node.clone(), &hub.http_server, &hub.token);
        bootstrap.ca_file = PathBuf::from(&hub.tls_ca_file);
        bootstrap.cert_file = PathBuf::from(&hub.tls_cert_file);
        bootstrap.key_file = PathBuf::from(&hub.tls_private_key_file);
        bootstrap.request_timeout = handshake;
        Self {
            transport,
            target: ConnectTarget::new(server.clone(), node.clone(), hub.project_id.clone()),
            bootstrap,
            limits: LinkLimits {
                handshake_timeout: handshake,
                ..LinkLimits::client()
            },
            metrics,
        }
    }

    /// The transport used.
    pub fn transport(&self) -> CloudTransport {
        self.transport
    }

    /// Where and as whom it connects.
    pub fn target(&self) -> &ConnectTarget {
        &self.target
    }

    /// How it obtains the node certificate.
    pub fn bootstrap(&self) -> &BootstrapConfig {
        &self.bootstrap
    }
}

impl Dialer for CloudDialer {
    fn dial(&self) -> DialFuture {
        let this = self.clone();
        Box::pin(async move {
            let credentials = ensure_certificates(&this.bootstrap).await.map_err(|e| {
                DialError::Certificates {
                    source: Box::new(e),
                }
            })?;
            let tls = credentials
                .client_config()
                .map_err(|e| DialError::Certificates {
                    source: Box::new(e),
                })?;
            let tls = Arc::new(tls);
            let connected = match this.transport {
                CloudTransport::WebSocket => {
                    connect(&this.target, tls, &this.limits, this.metrics.clone()).await
                }
                CloudTransport::Quic => {
                    connect_quic(&this.target, tls, &this.limits, this.metrics.clone()).await
                }
            };
            connected.map_err(|e| DialError::Connect {
                server: this.target.server.clone(),
                source: Box::new(e),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kedge_apis::config::HostInfo;

    fn config(dir: &std::path::Path) -> EdgeCoreConfig {
        let mut config =
            EdgeCoreConfig::default_config(&HostInfo::new("edge-1", [127, 0, 0, 1].into()));
        let hub = &mut config.modules.edge_hub;
        hub.tls_ca_file = dir.join("ca.crt").display().to_string();
        hub.tls_cert_file = dir.join("node.crt").display().to_string();
        hub.tls_private_key_file = dir.join("node.key").display().to_string();
        hub.websocket.server = "127.0.0.1:10000".to_owned();
        hub.websocket.handshake_timeout = 7;
        config
    }

    #[test]
    fn the_target_comes_from_edgecore_yaml() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dialer = CloudDialer::from_config(&config(dir.path()), LinkMetrics::default());
        assert_eq!(dialer.transport(), CloudTransport::WebSocket);
        let target = dialer.target();
        assert_eq!(target.server, "127.0.0.1:10000");
        assert_eq!(target.node_id, "edge-1");
        assert_eq!(target.project_id, "e632aba927ea4ac2b575ec1603d56f10");
        assert_eq!(
            target.url().expect("url"),
            "wss://127.0.0.1:10000/e632aba927ea4ac2b575ec1603d56f10/edge-1/events"
        );
        let bootstrap = dialer.bootstrap();
        assert_eq!(bootstrap.node_name, "edge-1");
        assert_eq!(bootstrap.server, "https://127.0.0.1:10002");
        assert_eq!(bootstrap.cert_file, dir.path().join("node.crt"));
        assert_eq!(bootstrap.request_timeout, Duration::from_secs(7));
        assert_eq!(dialer.limits.handshake_timeout, Duration::from_secs(7));
        assert_eq!(dialer.limits.rate, None);
    }

    #[test]
    fn quic_is_used_when_enabled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = config(dir.path());
        config.modules.edge_hub.websocket.enable = false;
        config.modules.edge_hub.quic.enable = true;
        config.modules.edge_hub.quic.server = "127.0.0.1:10001".to_owned();
        let dialer = CloudDialer::from_config(&config, LinkMetrics::default());
        assert_eq!(dialer.transport(), CloudTransport::Quic);
        assert_eq!(dialer.target().server, "127.0.0.1:10001");
    }

    #[tokio::test]
    async fn without_certificates_or_token_the_dial_fails_before_the_network() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dialer = CloudDialer::from_config(&config(dir.path()), LinkMetrics::default());
        match dialer.dial().await {
            Err(DialError::Certificates { .. }) => {}
            Err(other) => panic!("expected a certificate error, got {other}"),
            Ok(_) => panic!("expected a certificate error, got a link"),
        }
    }
}
