//! edged: module `edged` of group `edged`, runs the node's pods on a
//! container runtime and keeps the node's object current (edged.md).
//!
//! * [`runtime`]: the [`Runtime`](runtime::Runtime) trait, containerd over
//!   CRI v1 and an in-memory fake for hollow nodes;
//! * [`node`]: registration, node status and the node Lease, sent through
//!   MetaManager ([`metaclient`]);
//! * [`pods`]: the pod manager, one worker per pod, turning pods into
//!   sandboxes and containers and reporting their status.
//!
//! At start edged connects to the runtime (retrying until it answers),
//! lists this node's pods from MetaManager's store (which answers offline,
//! so a restarted edgecore picks its pods up without the cloud and adopts
//! the containers already running), removes sandboxes of pods it no
//! longer has, and then follows what MetaManager forwards: pod insert,
//! update and delete, and ConfigMap and Secret changes that volumes
//! depend on. Every `syncFrequency` it lists the pods again. Static pods
//! ([`static_pods`]) are read from `staticPodPath` at start and every
//! 20 s, and their mirror pods kept in the cloud.

pub mod host;
pub mod metaclient;
pub mod node;
pub mod pods;
pub mod runtime;
pub mod static_pods;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kedge_apis::config::edgecore::EdgeCoreConfig;
use kedge_apis::quantity;
use kedge_bus::{Module, ModuleContext, ModuleError};
use kedge_message::resource::EdgeResource;
use kedge_message::{Message, group, module, operation, resource_type};
use serde_json::Value;

use metaclient::MetaClient;
use node::{NodeReporter, NodeSettings};
use pods::PodManager;
use pods::spec::SpecContext;
use pods::status::StatusQueue;
use pods::worker::Shared;
use runtime::Runtime;
use runtime::{CriOptions, CriRuntime};

/// Where pods' container logs go, as the kubelet puts them.
pub const POD_LOG_ROOT: &str = "/var/log/pods";

/// What edged needs to know, from edgecore.yaml.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgedSettings {
    /// The node: name, IP, registration and reporting.
    pub node: NodeSettings,
    /// The CRI socket (`remoteRuntimeEndpoint` without `unix://`).
    pub runtime_endpoint: PathBuf,
    /// Where container logs go.
    pub log_root: PathBuf,
    /// Cluster DNS servers given to pods (`clusterDNS`).
    pub cluster_dns: Vec<String>,
    /// The cluster domain (`clusterDomain`).
    pub cluster_domain: String,
    /// How long a MetaManager call may take.
    pub meta_timeout: Duration,
    /// Time between a pod worker's passes.
    pub pod_sync: Duration,
    /// Time between full relists of the node's pods (`syncFrequency`).
    pub relist: Duration,
    /// The directory of static pod manifests (`staticPodPath`); empty for
    /// none.
    pub static_pod_path: PathBuf,
    /// Time between reads of the static pod manifests (the kubelet's
    /// `fileCheckFrequency`, 20 s).
    pub static_poll: Duration,
}

impl EdgedSettings {
    /// The settings edgecore.yaml gives.
    pub fn from_config(config: &EdgeCoreConfig) -> Self {
        let edged = &config.modules.edged;
        let flags = &edged.tailored_kubelet_flag;
        let kubelet = &edged.tailored_kubelet_config;
        let duration = |d: kedge_apis::config::GoDuration, default: u64| {
            d.to_std()
                .filter(|d| !d.is_zero())
                .unwrap_or(Duration::from_secs(default))
        };
        // systemReserved + kubeReserved, summed in thousandths.
        let mut reserved = kubelet.system_reserved.clone();
        for (resource, amount) in &kubelet.kube_reserved {
            let before = reserved.get(resource).and_then(|q| quantity::millis(q));
            let total = before.unwrap_or(0) + quantity::millis(amount).unwrap_or(0);
            reserved.insert(resource.clone(), format!("{total}m"));
        }
        let taints = if kubelet.register_with_taints.is_empty() {
            &flags.register_with_taints
        } else {
            &kubelet.register_with_taints
        };
        let namespace = if edged.register_node_namespace.is_empty() {
            "default".to_owned()
        } else {
            edged.register_node_namespace.clone()
        };
        let root_directory = PathBuf::from(&flags.root_directory);
        let node = NodeSettings {
            name: flags.hostname_override.clone(),
            namespace,
            ip: host::node_ip(&flags.node_ip, &edged.custom_interface_name),
            register: kubelet.register_node && flags.register_node,
            schedulable: flags.register_schedulable,
            labels: flags.node_labels.clone(),
            taints: taints
                .iter()
                .filter_map(|t| serde_json::to_value(t).ok())
                .collect(),
            max_pods: u32::try_from(kubelet.max_pods).unwrap_or(110),
            reserved,
            max_images: kubelet.node_status_max_images,
            status_update: duration(kubelet.node_status_update_frequency, 10),
            status_report: duration(kubelet.node_status_report_frequency, 300),
            lease_duration: Duration::from_secs(
                u64::try_from(kubelet.node_lease_duration_seconds)
                    .ok()
                    .filter(|s| *s > 0)
                    .unwrap_or(40),
            ),
            root_directory,
        };
        let endpoint = &flags.remote_runtime_endpoint;
        Self {
            node,
            runtime_endpoint: PathBuf::from(endpoint.strip_prefix("unix://").unwrap_or(endpoint)),
            log_root: PathBuf::from(POD_LOG_ROOT),
            cluster_dns: kubelet.cluster_dns.clone(),
            cluster_domain: kubelet.cluster_domain.clone(),
            meta_timeout: Duration::from_secs(
                u64::try_from(config.modules.meta_manager.remote_query_timeout)
                    .unwrap_or(0)
                    .max(1),
            ),
            pod_sync: Duration::from_secs(1),
            relist: duration(kubelet.sync_frequency, 60),
            static_pod_path: PathBuf::from(&kubelet.static_pod_path),
            static_poll: Duration::from_secs(20),
        }
    }
}

/// The edged module (`edged`, group `edged`).
pub struct Edged {
    settings: EdgedSettings,
    runtime: Option<Arc<dyn Runtime>>,
}

impl std::fmt::Debug for Edged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edged")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Edged {
    /// edged on containerd at `settings.runtime_endpoint`.
    pub fn new(settings: EdgedSettings) -> Self {
        Self {
            settings,
            runtime: None,
        }
    }

    /// edged on a given runtime (the fake one for hollow nodes).
    pub fn with_runtime(settings: EdgedSettings, runtime: Arc<dyn Runtime>) -> Self {
        Self {
            settings,
            runtime: Some(runtime),
        }
    }

    /// Connects to the CRI socket, retrying every 2 s until it answers or
    /// edgecore stops.
    async fn connect(&self, ctx: &ModuleContext) -> Option<Arc<dyn Runtime>> {
        let socket = &self.settings.runtime_endpoint;
        loop {
            match CriRuntime::connect(socket, CriOptions::default()).await {
                Ok(runtime) => return Some(Arc::new(runtime)),
                Err(error) => {
                    tracing::warn!(socket = %socket.display(), %error, "container runtime not reachable yet");
                }
            }
            tokio::select! {
                () = ctx.cancelled() => return None,
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }

    /// This node's pods in MetaManager's store, retried until it answers.
    async fn list_pods(&self, client: &MetaClient, ctx: &ModuleContext) -> Option<Vec<Pod>> {
        loop {
            match client.query("default", resource_type::POD, None).await {
                Ok(objects) => {
                    return Some(
                        objects
                            .into_iter()
                            .filter_map(|o| serde_json::from_value::<Pod>(o).ok())
                            .filter(|p| {
                                p.spec.as_ref().and_then(|s| s.node_name.as_deref())
                                    == Some(self.settings.node.name.as_str())
                            })
                            .collect(),
                    );
                }
                Err(error) => tracing::warn!(%error, "listing the node's pods failed"),
            }
            tokio::select! {
                () = ctx.cancelled() => return None,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

impl Edged {
    /// The static pods of `staticPodPath` now; a manifest refused is
    /// logged once per distinct error, kept in `refused`.
    fn read_static_pods(&self, refused: &mut HashSet<String>) -> Vec<Pod> {
        let dir = &self.settings.static_pod_path;
        if dir.as_os_str().is_empty() {
            return Vec::new();
        }
        let (pods, errors) = static_pods::read_dir(dir, &self.settings.node.name);
        let now: HashSet<String> = errors.iter().map(ToString::to_string).collect();
        for error in now.difference(refused) {
            tracing::warn!(%error, "static pod manifest refused");
        }
        *refused = now;
        pods
    }
}

impl Module for Edged {
    fn name(&self) -> &str {
        module::EDGED
    }

    fn group(&self) -> &str {
        group::EDGED
    }

    async fn run(self, mut ctx: ModuleContext) -> Result<(), ModuleError> {
        ctx.set_ready();
        let runtime = match self.runtime.clone() {
            Some(runtime) => runtime,
            None => match self.connect(&ctx).await {
                Some(runtime) => runtime,
                None => return Ok(()),
            },
        };
        let version = runtime.version().await.map_err(ModuleError::from)?;
        tracing::info!(runtime = %version.runtime_name, version = %version.runtime_version, "container runtime connected");
        let client = MetaClient::new(ctx.bus().clone(), self.settings.meta_timeout);
        let host = host::HostFacts::read(&self.settings.node.root_directory);
        let statuses = Arc::new(StatusQueue::default());
        let shared = Arc::new(Shared {
            runtime: runtime.clone(),
            client: client.clone(),
            spec: SpecContext {
                node_name: self.settings.node.name.clone(),
                log_root: self.settings.log_root.clone(),
                cluster_dns: self.settings.cluster_dns.clone(),
                cluster_domain: self.settings.cluster_domain.clone(),
                memory_capacity: i64::try_from(host.memory_bytes).unwrap_or(i64::MAX),
            },
            root: self.settings.node.root_directory.clone(),
            host_ip: self.settings.node.ip.to_string(),
            id_scheme: format!("{}://", version.runtime_name),
            statuses: statuses.clone(),
            sync_period: self.settings.pod_sync,
        });
        let reporter = NodeReporter::new(self.settings.node.clone(), client.clone(), runtime);
        ctx.spawn("node", reporter.run(ctx.token().clone()));
        {
            let client = client.clone();
            let cancel = ctx.token().clone();
            ctx.spawn(
                "pod-status",
                async move { statuses.run(client, cancel).await },
            );
        }
        let mut manager = PodManager::new(shared, ctx.token().clone());
        let Some(pods) = self.list_pods(&client, &ctx).await else {
            return Ok(());
        };
        tracing::info!(pods = pods.len(), "node's pods listed");
        manager.replace_all(pods).await;
        let mut relist = tokio::time::interval(self.settings.relist);
        relist.tick().await;
        let mut statics = tokio::time::interval(self.settings.static_poll);
        let mut refused = HashSet::new();
        let mut mirrors: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            tokio::select! {
                msg = ctx.recv() => match msg {
                    Some(msg) => handle(&mut manager, &msg),
                    None => return Ok(()),
                },
                _ = relist.tick() => {
                    if let Some(pods) = self.list_pods(&client, &ctx).await {
                        manager.replace_all(pods).await;
                    }
                }
                _ = statics.tick() => {
                    let pods = self.read_static_pods(&mut refused);
                    manager.set_static(pods.clone());
                    // One mirror sync at a time; it waits on the cloud.
                    if mirrors.as_ref().is_none_or(tokio::task::JoinHandle::is_finished) {
                        let client = client.clone();
                        let node = self.settings.node.name.clone();
                        mirrors = Some(tokio::spawn(async move {
                            static_pods::sync_mirrors(&client, &node, &pods).await;
                        }));
                    }
                }
            }
        }
    }
}

/// Acts on a message MetaManager forwarded.
fn handle(manager: &mut PodManager, msg: &Message) {
    let Some(resource) = EdgeResource::parse(&msg.router.resource) else {
        tracing::debug!(resource = %msg.router.resource, "edged ignores a message without an object resource");
        return;
    };
    match resource.resource_type {
        resource_type::POD => {
            let Some(pod) = pod_of(&msg.content) else {
                tracing::warn!(resource = %msg.router.resource, "edged refused a pod message whose content is not a pod");
                return;
            };
            match msg.router.operation.as_str() {
                operation::DELETE => manager.remove(&pod),
                operation::INSERT | operation::UPDATE | operation::RESPONSE => manager.upsert(pod),
                other => tracing::debug!(operation = other, "edged ignores this pod operation"),
            }
        }
        resource_type::CONFIGMAP | resource_type::SECRET => manager.refresh_volumes(),
        _ => {}
    }
}

/// The pod a message carries (a bare object, or in `{"Object": ...}`).
fn pod_of(content: &Value) -> Option<Pod> {
    let object = content.get("Object").unwrap_or(content);
    serde_json::from_value(object.clone()).ok()
}
