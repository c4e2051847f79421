//! EdgeHub's Prometheus metrics, under `kedge_edgehub_*`.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Why EdgeHub dropped a message (the `reason` label of
/// `kedge_edgehub_messages_dropped_total`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum DropReason {
    /// Upstream: not a durable report, and the cloud is not connected.
    Offline,
    /// Upstream: the link closed while the message was being sent.
    LinkClosed,
    /// Upstream: the outbox was full and its oldest report made room.
    OutboxFull,
    /// Upstream: the outbox could not store the report.
    OutboxError,
    /// Either way: the operation is a viaduct control word (`ping`,
    /// `pong`, `config`) that the transport answers, not the application.
    ControlOperation,
    /// Downstream: a reply that no synchronous request waits for.
    NoWaiter,
    /// Downstream: a group EdgeHub does not route.
    UnknownGroup,
    /// Downstream: the target module or group is not enabled.
    NoModule,
    /// Downstream: the target's delivery queue was full.
    QueueFull,
    /// Downstream: the target module has stopped.
    ModuleStopped,
}

impl DropReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Offline => "offline",
            Self::LinkClosed => "link_closed",
            Self::OutboxFull => "outbox_full",
            Self::OutboxError => "outbox_error",
            Self::ControlOperation => "control_operation",
            Self::NoWaiter => "no_waiter",
            Self::UnknownGroup => "unknown_group",
            Self::NoModule => "no_module",
            Self::QueueFull => "queue_full",
            Self::ModuleStopped => "module_stopped",
        }
    }
}

impl EncodeLabelValue for DropReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: DropReason,
}

/// EdgeHub's counters and gauges. Clones share the same values.
#[derive(Clone, Debug, Default)]
pub struct EdgeHubMetrics {
    connects: Counter,
    disconnects: Counter,
    dial_failures: Counter,
    messages_up: Counter,
    messages_down: Counter,
    keepalives: Counter,
    dropped: Family<ReasonLabels, Counter>,
    outbox_depth: Gauge,
    outbox_resent: Counter,
    outbox_acked: Counter,
    connected: Gauge,
}

impl EdgeHubMetrics {
    /// Creates the metrics and registers them in `registry` under
    /// `kedge_edgehub_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let r = registry.sub_registry_with_prefix("kedge_edgehub");
        r.register(
            "connects",
            "Links to the cloud established",
            metrics.connects.clone(),
        );
        r.register(
            "disconnects",
            "Links to the cloud that ended",
            metrics.disconnects.clone(),
        );
        r.register(
            "dial_failures",
            "Attempts to reach the cloud that failed",
            metrics.dial_failures.clone(),
        );
        r.register(
            "messages_up",
            "Messages sent to the cloud, keepalives and resent reports included",
            metrics.messages_up.clone(),
        );
        r.register(
            "messages_down",
            "Messages received from the cloud",
            metrics.messages_down.clone(),
        );
        r.register(
            "keepalives",
            "Keepalives sent to the cloud",
            metrics.keepalives.clone(),
        );
        r.register(
            "messages_dropped",
            "Messages EdgeHub dropped, by reason",
            metrics.dropped.clone(),
        );
        r.register(
            "outbox_depth",
            "Status reports waiting for the cloud's acknowledgement",
            metrics.outbox_depth.clone(),
        );
        r.register(
            "outbox_resent",
            "Status reports resent after a reconnect",
            metrics.outbox_resent.clone(),
        );
        r.register(
            "outbox_acked",
            "Status reports the cloud acknowledged",
            metrics.outbox_acked.clone(),
        );
        r.register(
            "connected",
            "1 while a link to the cloud is up, else 0",
            metrics.connected.clone(),
        );
        metrics
    }

    pub(crate) fn dropped(&self, reason: DropReason) {
        self.dropped.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        if connected {
            self.connects.inc();
            self.connected.set(1);
        } else {
            self.disconnects.inc();
            self.connected.set(0);
        }
    }

    pub(crate) fn dial_failed(&self) {
        self.dial_failures.inc();
    }

    pub(crate) fn sent_up(&self) {
        self.messages_up.inc();
    }

    pub(crate) fn keepalive_sent(&self) {
        self.keepalives.inc();
        self.messages_up.inc();
    }

    pub(crate) fn received_down(&self) {
        self.messages_down.inc();
    }

    pub(crate) fn set_outbox_depth(&self, depth: usize) {
        self.outbox_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    pub(crate) fn outbox_resent(&self) {
        self.outbox_resent.inc();
    }

    pub(crate) fn outbox_acked(&self) {
        self.outbox_acked.inc();
    }

    /// Links established so far.
    pub fn connects(&self) -> u64 {
        self.connects.get()
    }

    /// Links that ended so far.
    pub fn disconnects(&self) -> u64 {
        self.disconnects.get()
    }

    /// Failed attempts to reach the cloud so far.
    pub fn dial_failures(&self) -> u64 {
        self.dial_failures.get()
    }

    /// Messages sent to the cloud so far (keepalives included).
    pub fn messages_up(&self) -> u64 {
        self.messages_up.get()
    }

    /// Messages received from the cloud so far.
    pub fn messages_down(&self) -> u64 {
        self.messages_down.get()
    }

    /// Keepalives sent so far.
    pub fn keepalives(&self) -> u64 {
        self.keepalives.get()
    }

    /// Messages dropped for `reason` so far.
    pub fn dropped_count(&self, reason: DropReason) -> u64 {
        self.dropped.get_or_create(&ReasonLabels { reason }).get()
    }

    /// Status reports waiting for an acknowledgement.
    pub fn outbox_depth(&self) -> i64 {
        self.outbox_depth.get()
    }

    /// Status reports resent after reconnects so far.
    pub fn outbox_resent_count(&self) -> u64 {
        self.outbox_resent.get()
    }

    /// Status reports acknowledged so far.
    pub fn outbox_acked_count(&self) -> u64 {
        self.outbox_acked.get()
    }

    /// Whether a link to the cloud is up.
    pub fn is_connected(&self) -> bool {
        self.connected.get() == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn metrics_are_exported_under_the_edgehub_prefix() {
        let mut registry = Registry::default();
        let metrics = EdgeHubMetrics::register(&mut registry);
        metrics.set_connected(true);
        metrics.dropped(DropReason::NoWaiter);
        metrics.set_outbox_depth(3);
        let mut text = String::new();
        encode(&mut text, &registry).expect("encodes");
        assert!(text.contains("kedge_edgehub_connects_total 1"), "{text}");
        assert!(
            text.contains("kedge_edgehub_messages_dropped_total{reason=\"no_waiter\"} 1"),
            "{text}"
        );
        assert!(text.contains("kedge_edgehub_outbox_depth 3"), "{text}");
        assert_eq!(metrics.dropped_count(DropReason::NoWaiter), 1);
        assert!(metrics.is_connected());
    }
}
