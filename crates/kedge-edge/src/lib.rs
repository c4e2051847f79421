//! The edge side of Kedge: edgecore and its modules.
//!
//! edgecore is a set of modules on one [`kedge_bus`], named and grouped as
//! in KubeEdge v1.15 so that messages route the same way: `edged` (group
//! `edged`), `websocket` (EdgeHub, group `hub`), `eventbus` and `servicebus`
//! (group `bus`), `metamanager` (group `meta`), `twin` (group `twin`) and
//! `edgestream` (group `edgestream`), each enabled by its
//! `modules.<name>.enable` field of edgecore.yaml.
//!
//! [`EdgeCore`] describes the binary to [`kedge_runtime::component::main`].
//! EdgeHub ([`edgehub`]), MetaManager with its MetaServer
//! ([`metamanager`]), edged ([`edged`]), DeviceTwin ([`devicetwin`]) and
//! EventBus ([`eventbus`]) are implemented. Each other
//! module is registered as
//! a [`PendingModule`] until its implementation lands: it takes part in
//! start-up, readiness and shutdown, and answers every message with an
//! error saying it has no handler yet.

pub mod devicetwin;
pub mod edged;
pub mod edgehub;
pub mod eventbus;
pub mod hollow;
pub mod hollow_edgecore;
pub mod metamanager;
#[cfg(test)]
mod testing;

use std::path::Path;
use std::sync::Arc;

use kedge_apis::config::edgecore::EdgeCoreConfig;
use kedge_apis::config::{ConfigError, HostInfo};
use kedge_bus::{BusBuilder, BusError};
use kedge_message::{group, module};
use kedge_runtime::PendingModule;
use kedge_runtime::component::Component;
use kedge_transport::metrics::LinkMetrics;
use prometheus_client::registry::Registry;

/// edgecore, as [`kedge_runtime::component::main`] runs it.
#[derive(Debug, Clone, Copy)]
pub struct EdgeCore;

/// The file edgecore reads when `--config` is not given, as in KubeEdge.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/kubeedge/config/edgecore.yaml";

impl Component for EdgeCore {
    type Config = EdgeCoreConfig;

    const NAME: &'static str = "edgecore";
    const ABOUT: &'static str = "The Kedge edge component: runs pods and devices on an edge host and keeps them running offline.";
    const DEFAULT_CONFIG_PATH: &'static str = DEFAULT_CONFIG_PATH;

    fn default_config_yaml(host: &HostInfo) -> Result<String, ConfigError> {
        EdgeCoreConfig::default_config(host).to_yaml()
    }

    fn min_config_yaml(host: &HostInfo) -> Result<String, ConfigError> {
        EdgeCoreConfig::min_config(host).to_yaml()
    }

    fn load(path: &Path) -> Result<EdgeCoreConfig, ConfigError> {
        EdgeCoreConfig::load(path)
    }

    fn monitor_address(config: &EdgeCoreConfig) -> String {
        config.monitor_server.bind_address.clone()
    }

    fn register_modules(
        builder: &mut BusBuilder,
        config: &EdgeCoreConfig,
        registry: &mut Registry,
    ) -> Result<(), BusError> {
        if config.modules.db_test.enable {
            tracing::warn!(
                "modules.dbTest is a KubeEdge test module that Kedge does not have; ignored"
            );
        }
        for (name, group, enabled) in modules(config) {
            if name == module::EDGE_HUB {
                builder.register(edge_hub(config, registry), enabled)?;
            } else if name == module::EDGED {
                let settings = edged::EdgedSettings::from_config(config);
                builder.register(edged::Edged::new(settings), enabled)?;
            } else if name == module::EVENT_BUS {
                // The embedded MQTT broker's metrics: kedge_eventbus_broker_*.
                let metrics = eventbus::broker::BrokerMetrics::register(registry);
                let event_bus = eventbus::EventBus::from_config(config).with_metrics(metrics);
                builder.register(event_bus, enabled)?;
            } else if name == module::DEVICE_TWIN {
                let settings = devicetwin::DeviceTwinSettings::from_config(config);
                let metrics = devicetwin::dmi::DmiMetrics::register(registry);
                builder.register(
                    devicetwin::DeviceTwin::new(settings).with_metrics(metrics),
                    enabled,
                )?;
            } else if name == module::META_MANAGER {
                let settings = metamanager::MetaManagerSettings::from_config(config);
                builder.register(metamanager::MetaManager::new(settings), enabled)?;
            } else {
                builder.register(PendingModule::new(name, group), enabled)?;
            }
        }
        Ok(())
    }
}

/// EdgeHub as edgecore.yaml configures it, dialling the cloud with
/// [`edgehub::CloudDialer`], its metrics (`kedge_edgehub_*`) and the
/// link's (`kedge_link_*`) registered in `registry`.
pub fn edge_hub(config: &EdgeCoreConfig, registry: &mut Registry) -> edgehub::EdgeHub {
    let dialer = edgehub::CloudDialer::from_config(config, LinkMetrics::register(registry));
    let bootstrap = dialer.bootstrap().clone();
    let hub = edgehub::EdgeHub::new(
        edgehub::EdgeHubSettings::from_config(config),
        Arc::new(dialer),
    )
    .with_metrics(edgehub::EdgeHubMetrics::register(registry));
    if config.modules.edge_hub.rotate_certificates {
        hub.with_renewal(bootstrap)
    } else {
        hub
    }
}

/// edgecore's modules as `(name, group, enabled)`, in KubeEdge's
/// registration order.
pub fn modules(config: &EdgeCoreConfig) -> [(&'static str, &'static str, bool); 7] {
    let m = &config.modules;
    [
        (module::EDGED, group::EDGED, m.edged.enable),
        (module::EDGE_HUB, group::HUB, m.edge_hub.enable),
        (module::EVENT_BUS, group::BUS, m.event_bus.enable),
        (module::META_MANAGER, group::META, m.meta_manager.enable),
        (module::SERVICE_BUS, group::BUS, m.service_bus.enable),
        (module::DEVICE_TWIN, group::TWIN, m.device_twin.enable),
        (
            module::EDGE_STREAM,
            group::EDGE_STREAM,
            m.edge_stream.enable,
        ),
    ]
}

/// Opens one of edgecore's SQLite databases the way every edge store
/// wants it: waiting up to 5 s for a lock (set first: DeviceTwin and
/// MetaManager open `edgecore.db` at the same moment, and switching a file
/// to WAL takes a lock), in WAL mode, with `synchronous = FULL`.
pub(crate) fn open_database(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let connection = rusqlite::Connection::open(path)?;
    connection.busy_timeout(std::time::Duration::from_secs(5))?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    Ok(connection)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> EdgeCoreConfig {
        EdgeCoreConfig::default_config(&HostInfo::new("edge-1", [127, 0, 0, 1].into()))
    }

    #[test]
    fn default_modules_follow_kubeedge_defaults() {
        let enabled: Vec<&str> = modules(&config())
            .into_iter()
            .filter(|(_, _, enabled)| *enabled)
            .map(|(name, _, _)| name)
            .collect();
        assert_eq!(
            enabled,
            ["edged", "websocket", "eventbus", "metamanager", "twin"]
        );
    }

    #[test]
    fn enabled_modules_are_registered_on_the_bus() {
        let mut config = config();
        config.modules.service_bus.enable = true;
        let mut builder = BusBuilder::new(kedge_bus::BusConfig::default());
        let mut registry = Registry::default();
        EdgeCore::register_modules(&mut builder, &config, &mut registry).expect("modules register");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert!(text.contains("kedge_eventbus_broker_clients"), "{text}");
        let bus = builder.build(&mut Registry::default());
        let handle = bus.handle();
        assert!(handle.has_module("websocket"));
        assert!(handle.has_module("metamanager"));
        assert!(handle.has_module("servicebus"));
        assert!(!handle.has_module("edgestream"));
    }

    #[test]
    fn edge_hub_metrics_are_registered() {
        let mut registry = Registry::default();
        let hub = edge_hub(&config(), &mut registry);
        assert_eq!(hub.settings().heartbeat, std::time::Duration::from_secs(15));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert!(text.contains("kedge_edgehub_connects_total"), "{text}");
        assert!(text.contains("kedge_edgehub_outbox_depth"), "{text}");
    }
}
