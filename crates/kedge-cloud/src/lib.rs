//! The cloud side of Kedge: cloudcore and its modules.
//!
//! cloudcore is a set of modules on one [`kedge_bus`], named and grouped as
//! in KubeEdge v1.15 so that messages route the same way: `cloudhub`,
//! `edgecontroller`, `devicecontroller`, `nodeupgradejobcontroller`,
//! `synccontroller`, `dynamiccontroller`, `cloudStream` and `router`, each
//! enabled by its `modules.<name>.enable` field of cloudcore.yaml.
//!
//! [`CloudCore`] describes the binary to [`kedge_runtime::component::main`].
//! Each module is registered as a [`PendingModule`] until its implementation
//! lands: it takes part in start-up, readiness and shutdown, and answers
//! every message with an error saying it has no handler yet.
//!
//! With `controlPlane.enable` (the default), the [`controlplane`] module runs
//! the embedded Kubernetes-compatible API server next to them.

pub mod cloudhub;
pub mod cluster;
pub mod controlplane;
pub mod crds;
pub mod devicecontroller;
pub mod edgecontroller;
pub mod refusals;
pub mod synccontroller;

use std::path::Path;

use kedge_apis::config::cloudcore::CloudCoreConfig;
use kedge_apis::config::{ConfigError, HostInfo};
use kedge_bus::{BusBuilder, BusError};
use kedge_message::{group, module};
use kedge_runtime::PendingModule;
use kedge_runtime::component::Component;

use cloudhub::objectsync::SyncRecords;
use cloudhub::{CloudHubMetrics, CloudHubModule};
use cluster::ClusterClient;
use devicecontroller::{DeviceController, DeviceControllerMetrics};
use edgecontroller::{EdgeController, EdgeControllerMetrics};
use synccontroller::SyncController;

/// cloudcore, as [`kedge_runtime::component::main`] runs it.
#[derive(Debug, Clone, Copy)]
pub struct CloudCore;

/// The file cloudcore reads when `--config` is not given, as in KubeEdge.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/kubeedge/config/cloudcore.yaml";

impl Component for CloudCore {
    type Config = CloudCoreConfig;

    const NAME: &'static str = "cloudcore";
    const ABOUT: &'static str = "The Kedge cloud component: the hub edge nodes connect to, its controllers, and an embedded Kubernetes-compatible control plane.";
    const DEFAULT_CONFIG_PATH: &'static str = DEFAULT_CONFIG_PATH;

    fn default_config_yaml(host: &HostInfo) -> Result<String, ConfigError> {
        CloudCoreConfig::default_config(host).to_yaml()
    }

    fn min_config_yaml(host: &HostInfo) -> Result<String, ConfigError> {
        CloudCoreConfig::min_config(host).to_yaml()
    }

    fn load(path: &Path) -> Result<CloudCoreConfig, ConfigError> {
        let mut config = CloudCoreConfig::load(path)?;
        config.adjust_for_node_limit();
        Ok(config)
    }

    fn monitor_address(config: &CloudCoreConfig) -> String {
        config.common_config.monitor_server.bind_address.clone()
    }

    fn register_modules(
        builder: &mut BusBuilder,
        config: &CloudCoreConfig,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Result<(), BusError> {
        let cluster = if config.control_plane.enable {
            ClusterClient::embedded()
        } else {
            ClusterClient::external(config.kube_api_config.kube_config.clone())
        };
        let records = SyncRecords::default();
        for (name, group, enabled) in modules(config) {
            match name {
                module::CLOUD_HUB => {
                    builder.register(
                        CloudHubModule::new(
                            config.modules.cloud_hub.clone(),
                            cluster.clone(),
                            records.clone(),
                            CloudHubMetrics::register(registry),
                        ),
                        enabled,
                    )?;
                }
                module::EDGE_CONTROLLER => {
                    builder.register(
                        EdgeController::new(
                            cluster.clone(),
                            EdgeControllerMetrics::register(registry),
                        ),
                        enabled,
                    )?;
                }
                module::DEVICE_CONTROLLER => {
                    builder.register(
                        DeviceController::new(
                            cluster.clone(),
                            records.clone(),
                            DeviceControllerMetrics::register(registry),
                        ),
                        enabled,
                    )?;
                }
                module::SYNC_CONTROLLER => {
                    builder.register(
                        SyncController::new(
                            cluster.clone(),
                            records.clone(),
                            synccontroller::DEFAULT_PERIOD,
                        ),
                        enabled,
                    )?;
                }
                _ => {
                    builder.register(PendingModule::new(name, group), enabled)?;
                }
            }
        }
        builder.register(
            controlplane::ControlPlaneModule::new(config.control_plane.clone(), cluster),
            config.control_plane.enable,
        )?;
        Ok(())
    }
}

/// cloudcore's modules as `(name, group, enabled)`, in KubeEdge's
/// registration order.
pub fn modules(config: &CloudCoreConfig) -> [(&'static str, &'static str, bool); 8] {
    let m = &config.modules;
    [
        (module::CLOUD_HUB, group::CLOUD_HUB, m.cloud_hub.enable),
        (
            module::EDGE_CONTROLLER,
            group::EDGE_CONTROLLER,
            m.edge_controller.enable,
        ),
        (
            module::DEVICE_CONTROLLER,
            group::DEVICE_CONTROLLER,
            m.device_controller.enable,
        ),
        (
            module::NODE_UPGRADE_JOB_CONTROLLER,
            group::NODE_UPGRADE_JOB_CONTROLLER,
            m.node_upgrade_job_controller.enable,
        ),
        (
            module::SYNC_CONTROLLER,
            group::SYNC_CONTROLLER,
            m.sync_controller.enable,
        ),
        (
            module::DYNAMIC_CONTROLLER,
            group::DYNAMIC_CONTROLLER,
            m.dynamic_controller.enable,
        ),
        (
            module::CLOUD_STREAM,
            group::CLOUD_STREAM,
            m.cloud_stream.enable,
        ),
        (module::ROUTER, group::ROUTER, m.router.enable),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_modules_follow_kubeedge_defaults() {
        let config =
            CloudCoreConfig::default_config(&HostInfo::new("cloud", [127, 0, 0, 1].into()));
        let enabled: Vec<&str> = modules(&config)
            .into_iter()
            .filter(|(_, _, enabled)| *enabled)
            .map(|(name, _, _)| name)
            .collect();
        assert_eq!(
            enabled,
            [
                "cloudhub",
                "edgecontroller",
                "devicecontroller",
                "synccontroller"
            ]
        );
    }

    #[test]
    fn enabled_modules_are_registered_on_the_bus() {
        let mut config =
            CloudCoreConfig::default_config(&HostInfo::new("cloud", [127, 0, 0, 1].into()));
        config.modules.router.enable = true;
        config.modules.device_controller.enable = false;
        let mut builder = BusBuilder::new(kedge_bus::BusConfig::default());
        CloudCore::register_modules(
            &mut builder,
            &config,
            &mut prometheus_client::registry::Registry::default(),
        )
        .expect("modules register");
        let bus = builder.build(&mut prometheus_client::registry::Registry::default());
        let handle = bus.handle();
        assert!(handle.has_module("router"));
        assert!(handle.has_module("cloudhub"));
        assert!(!handle.has_module("devicecontroller"));
    }
}
