//! The count of what a cloud module refused from edge nodes, by reason:
//! `kedge_<module>_refused_total{reason="…"}` for CloudHub,
//! EdgeController and DeviceController alike.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// The label of a refusal.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

/// Refusals counted by reason; clones count into the same counters.
#[derive(Debug, Clone, Default)]
pub struct Refusals(Family<ReasonLabel, Counter>);

impl Refusals {
    /// Registers the counter as `refused` with `help` in `registry` (a
    /// module's sub-registry, which gives the prefix).
    pub fn register(&self, registry: &mut Registry, help: &str) {
        registry.register("refused", help, self.0.clone());
    }

    /// Counts one refusal for `reason`.
    pub fn count(&self, reason: &str) {
        self.0
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// How many refusals were counted for `reason`.
    pub fn get(&self, reason: &str) -> u64 {
        self.0
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .get()
    }
}
