//! Link metrics, registered in the process's Prometheus registry under
//! `kedge_link_*`, each labelled with the transport (`ws` or `quic`).
//!
//! A [`LinkMetrics`] is a cheap handle: clones count into the same
//! families, so one handle is built at start-up and passed to every server
//! and client.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The transport a metric is about.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Transport {
    /// WebSocket over TLS.
    Ws,
    /// QUIC.
    Quic,
}

impl Transport {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ws => "ws",
            Self::Quic => "quic",
        }
    }
}

/// Why a frame or a connection was refused.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum RefuseReason {
    /// A frame over [`crate::limits::LinkLimits::max_frame_bytes`]
    /// (incoming, or an outgoing message that was not sent).
    TooLarge,
    /// A frame that is not a JSON message.
    Malformed,
    /// A message over the connection's rate limit; it was dropped.
    RateLimited,
    /// A TLS client without a valid certificate, or whose certificate is
    /// not `system:node:<name>`.
    Unauthorized,
    /// A handshake whose `node_id` is not the certificate's node.
    NodeMismatch,
    /// Any other failed handshake: timeout, missing `node_id`, oversized
    /// or malformed request, TLS failure other than the certificate.
    Handshake,
    /// A new connection while [`crate::limits::LinkLimits::max_handshakes`]
    /// others were handshaking: refused at once, before any TLS work.
    Busy,
}

impl RefuseReason {
    /// Every reason, for dashboards and tests.
    pub const ALL: [Self; 7] = [
        Self::TooLarge,
        Self::Malformed,
        Self::RateLimited,
        Self::Unauthorized,
        Self::NodeMismatch,
        Self::Handshake,
        Self::Busy,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::Malformed => "malformed",
            Self::RateLimited => "rate_limited",
            Self::Unauthorized => "unauthorized",
            Self::NodeMismatch => "node_mismatch",
            Self::Handshake => "handshake",
            Self::Busy => "busy",
        }
    }
}

impl EncodeLabelValue for Transport {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

impl EncodeLabelValue for RefuseReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabels {
    transport: Transport,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    transport: Transport,
    reason: RefuseReason,
}

/// The link metric families. `Default` gives unregistered families, for
/// tests; [`LinkMetrics::register`] the ones a scrape sees.
#[derive(Clone, Debug, Default)]
pub struct LinkMetrics {
    refused: Family<RefusedLabels, Counter>,
    accepted: Family<TransportLabels, Counter>,
    open: Family<TransportLabels, Gauge>,
    waiting: Family<TransportLabels, Gauge>,
    received: Family<TransportLabels, Counter>,
    sent: Family<TransportLabels, Counter>,
}

impl LinkMetrics {
    /// Creates the families and registers them in `registry` as
    /// `kedge_link_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let link = registry.sub_registry_with_prefix("kedge_link");
        link.register(
            "refused",
            "Frames and connections refused, by reason",
            metrics.refused.clone(),
        );
        link.register(
            "connections_accepted",
            "Connections accepted by a server (handshake completed)",
            metrics.accepted.clone(),
        );
        link.register(
            "connections_open",
            "Links currently open, server and client side",
            metrics.open.clone(),
        );
        link.register(
            "handshakes_waiting",
            "Connections a server holds in line for a handshake slot",
            metrics.waiting.clone(),
        );
        link.register(
            "messages_received",
            "Messages read from peers and delivered",
            metrics.received.clone(),
        );
        link.register(
            "messages_sent",
            "Messages written to peers",
            metrics.sent.clone(),
        );
        metrics
    }

    /// Counts one refusal.
    pub fn refuse(&self, transport: Transport, reason: RefuseReason) {
        self.refused
            .get_or_create(&RefusedLabels { transport, reason })
            .inc();
    }

    /// Counts a connection a server accepted.
    pub fn accept(&self, transport: Transport) {
        self.accepted
            .get_or_create(&TransportLabels { transport })
            .inc();
    }

    /// Counts a link as open until the returned guard is dropped.
    pub fn open_guard(&self, transport: Transport) -> GaugeGuard {
        GaugeGuard::raise(&self.open, transport)
    }

    /// Counts a connection as waiting for a handshake slot until the
    /// returned guard is dropped.
    pub fn waiting_guard(&self, transport: Transport) -> GaugeGuard {
        GaugeGuard::raise(&self.waiting, transport)
    }

    /// Counts a message read from a peer and delivered.
    pub fn receive(&self, transport: Transport) {
        self.received
            .get_or_create(&TransportLabels { transport })
            .inc();
    }

    /// Counts a message written to a peer.
    pub fn send(&self, transport: Transport) {
        self.sent
            .get_or_create(&TransportLabels { transport })
            .inc();
    }

    /// Refusals so far for `reason` on `transport`.
    pub fn refused(&self, transport: Transport, reason: RefuseReason) -> u64 {
        self.refused
            .get_or_create(&RefusedLabels { transport, reason })
            .get()
    }

    /// Connections accepted so far on `transport`.
    pub fn accepted(&self, transport: Transport) -> u64 {
        self.accepted
            .get_or_create(&TransportLabels { transport })
            .get()
    }

    /// Links open now on `transport`.
    pub fn open(&self, transport: Transport) -> i64 {
        self.open
            .get_or_create(&TransportLabels { transport })
            .get()
    }

    /// Connections waiting for a handshake slot now on `transport`.
    pub fn waiting(&self, transport: Transport) -> i64 {
        self.waiting
            .get_or_create(&TransportLabels { transport })
            .get()
    }

    /// Messages received so far on `transport`.
    pub fn received(&self, transport: Transport) -> u64 {
        self.received
            .get_or_create(&TransportLabels { transport })
            .get()
    }

    /// Messages sent so far on `transport`.
    pub fn sent(&self, transport: Transport) -> u64 {
        self.sent
            .get_or_create(&TransportLabels { transport })
            .get()
    }
}

/// Keeps a gauge (`kedge_link_connections_open`,
/// `kedge_link_handshakes_waiting`) raised by one while it lives.
#[derive(Debug)]
pub struct GaugeGuard {
    gauge: Gauge,
}

impl GaugeGuard {
    fn raise(family: &Family<TransportLabels, Gauge>, transport: Transport) -> Self {
        let gauge = family.get_or_create(&TransportLabels { transport }).clone();
        gauge.inc();
        Self { gauge }
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn registered_metrics_are_exported_with_their_labels() {
        let mut registry = Registry::default();
        let metrics = LinkMetrics::register(&mut registry);
        let handle = metrics.clone();
        handle.refuse(Transport::Ws, RefuseReason::NodeMismatch);
        handle.accept(Transport::Quic);
        let guard = handle.open_guard(Transport::Ws);
        assert_eq!(metrics.open(Transport::Ws), 1);

        let mut text = String::new();
        encode(&mut text, &registry).expect("encodes");
        assert!(
            text.contains(r#"kedge_link_refused_total{transport="ws",reason="node_mismatch"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kedge_link_connections_accepted_total{transport="quic"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kedge_link_connections_open{transport="ws"} 1"#),
            "{text}"
        );

        drop(guard);
        assert_eq!(metrics.open(Transport::Ws), 0);
        assert_eq!(
            metrics.refused(Transport::Ws, RefuseReason::NodeMismatch),
            1
        );
        assert_eq!(
            metrics.refused(Transport::Quic, RefuseReason::NodeMismatch),
            0
        );
    }
}
