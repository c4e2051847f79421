//! Bus metrics, registered in the process's Prometheus registry.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

use kedge_message::Message;

/// Labels of every per-module bus metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModuleLabels {
    module: String,
}

/// The metric families of one bus.
#[derive(Clone, Default)]
pub(crate) struct BusMetrics {
    sent: Family<ModuleLabels, Counter>,
    inbox_full: Family<ModuleLabels, Counter>,
    sync_timeouts: Family<ModuleLabels, Counter>,
}

impl BusMetrics {
    /// Creates the families and registers them under `kedge_bus_*`.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let bus = registry.sub_registry_with_prefix("kedge_bus");
        bus.register(
            "messages_sent",
            "Messages put into a module's inbox",
            metrics.sent.clone(),
        );
        bus.register(
            "inbox_full",
            "Sends that found a module's inbox full (the sender waited or gave up)",
            metrics.inbox_full.clone(),
        );
        bus.register(
            "sync_timeouts",
            "Synchronous requests to a module that got no response in time",
            metrics.sync_timeouts.clone(),
        );
        metrics
    }

    /// The counters of one module, resolved once so sends only touch atomics.
    pub(crate) fn for_module(&self, module: &str) -> ModuleCounters {
        let labels = ModuleLabels {
            module: module.to_owned(),
        };
        ModuleCounters {
            sent: self.sent.get_or_create(&labels).clone(),
            inbox_full: self.inbox_full.get_or_create(&labels).clone(),
            sync_timeouts: self.sync_timeouts.get_or_create(&labels).clone(),
        }
    }
}

/// One module's counters.
#[derive(Clone, Debug)]
pub(crate) struct ModuleCounters {
    pub(crate) sent: Counter,
    pub(crate) inbox_full: Counter,
    pub(crate) sync_timeouts: Counter,
}

/// Reports each inbox's current depth at scrape time.
#[derive(Debug)]
pub(crate) struct InboxDepth {
    inboxes: Arc<Vec<(String, mpsc::Sender<Message>)>>,
}

impl InboxDepth {
    pub(crate) fn new(inboxes: Vec<(String, mpsc::Sender<Message>)>) -> Self {
        Self {
            inboxes: Arc::new(inboxes),
        }
    }
}

impl Collector for InboxDepth {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let depth = Family::<ModuleLabels, Gauge>::default();
        for (module, tx) in self.inboxes.iter() {
            let queued = tx.max_capacity() - tx.capacity();
            depth
                .get_or_create(&ModuleLabels {
                    module: module.clone(),
                })
                .set(i64::try_from(queued).unwrap_or(i64::MAX));
        }
        let metric = encoder.encode_descriptor(
            "kedge_bus_inbox_depth",
            "Messages waiting in a module's inbox",
            None,
            depth.metric_type(),
        )?;
        depth.encode(metric)
    }
}
