//! The node's own object: registration, status and Lease (edged.md §1.6,
//! §1.7, protocol.md §6).
//!
//! - **Registration**: `insert default/node/<name>` with the whole Node
//!   (labels `kubernetes.io/{os,arch,hostname}`,
//!   `node-role.kubernetes.io/{edge,agent}` and `nodeLabels`, taints,
//!   status), retried with back-off until the cloud has it; an existing
//!   Node (409) counts as registered.
//! - **Status**: every `nodeStatusUpdateFrequency` (10 s) the status is
//!   recomputed and sent as a strategic-merge patch `default/nodepatch/<name>`
//!   when it changed, and at least every `nodeStatusReportFrequency`
//!   (5 min).
//! - **Lease**: every quarter of `nodeLeaseDurationSeconds` (10 s of 40 s)
//!   `kube-node-lease/lease/<name>` is renewed: read, then replaced with a
//!   new `renewTime`, or created when the cloud has none.
//!
//! With the link down every call fails at once and is tried again at the
//! next tick; nothing queues.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::host::HostFacts;
use super::metaclient::{MetaClient, MetaError};
use super::runtime::Runtime;
use kedge_apis::quantity;

/// The label every edge node carries.
pub const EDGE_ROLE_LABEL: &str = "node-role.kubernetes.io/edge";
/// The label KubeEdge adds next to [`EDGE_ROLE_LABEL`].
pub const AGENT_ROLE_LABEL: &str = "node-role.kubernetes.io/agent";

/// How edged registers and reports the node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSettings {
    /// The node's name.
    pub name: String,
    /// The namespace the node's messages name (`registerNodeNamespace`).
    pub namespace: String,
    /// The node's IP.
    pub ip: IpAddr,
    /// Register the node at start (`registerNode`).
    pub register: bool,
    /// Register it schedulable (`registerSchedulable`).
    pub schedulable: bool,
    /// Extra labels (`nodeLabels`).
    pub labels: BTreeMap<String, String>,
    /// Taints to register with, as Kubernetes JSON.
    pub taints: Vec<Value>,
    /// `maxPods`, the node's pod capacity.
    pub max_pods: u32,
    /// Reserved for the system and Kubernetes (`systemReserved` +
    /// `kubeReserved`), subtracted from capacity.
    pub reserved: BTreeMap<String, String>,
    /// How many images the status lists (`nodeStatusMaxImages`; -1: all).
    pub max_images: i32,
    /// How often the status is checked (`nodeStatusUpdateFrequency`).
    pub status_update: Duration,
    /// How often it is sent even unchanged (`nodeStatusReportFrequency`).
    pub status_report: Duration,
    /// The Lease's duration (`nodeLeaseDurationSeconds`).
    pub lease_duration: Duration,
    /// edged's root directory; its filesystem is the node's storage.
    pub root_directory: PathBuf,
}

/// The Kubelet version a Kedge edge node reports.
pub fn kubelet_version() -> String {
    format!(
        "v1.{}.0-kedge.{}",
        kedge_apiserver::discovery::KUBERNETES_MINOR,
        env!("CARGO_PKG_VERSION")
    )
}

/// Keeps the node registered and its status and Lease current.
pub struct NodeReporter {
    settings: NodeSettings,
    client: MetaClient,
    runtime: Arc<dyn Runtime>,
    /// The last status sent, with its heartbeat times blanked.
    last_sent: Option<Value>,
    last_sent_at: Option<Instant>,
    /// When each condition last changed, by type.
    transitions: BTreeMap<String, (String, String)>,
}

impl std::fmt::Debug for NodeReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeReporter")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl NodeReporter {
    /// A reporter for the node `settings` describe.
    pub fn new(settings: NodeSettings, client: MetaClient, runtime: Arc<dyn Runtime>) -> Self {
        Self {
            settings,
            client,
            runtime,
            last_sent: None,
            last_sent_at: None,
            transitions: BTreeMap::new(),
        }
    }

    /// Registers the node, then reports status and renews the Lease until
    /// `cancel` fires.
    pub async fn run(mut self, cancel: CancellationToken) {
        if self.settings.register {
            let mut delay = Duration::from_millis(500);
            loop {
                match self.register().await {
                    Ok(()) => break,
                    Err(error) => tracing::debug!(%error, "node registration failed; retrying"),
                }
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            tracing::info!(node = %self.settings.name, "node registered");
        }
        let mut status = tokio::time::interval(self.settings.status_update);
        let mut lease =
            tokio::time::interval((self.settings.lease_duration / 4).max(Duration::from_secs(1)));
        status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        lease.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = status.tick() => {
                    if let Err(error) = self.report_status().await {
                        tracing::debug!(%error, "node status not sent");
                    }
                }
                _ = lease.tick() => {
                    if let Err(error) = self.renew_lease().await {
                        tracing::debug!(%error, "node lease not renewed");
                    }
                }
            }
        }
    }

    /// Creates the Node in the cloud (a Node that exists already counts).
    pub async fn register(&mut self) -> Result<(), MetaError> {
        let status = self.status().await;
        let s = &self.settings;
        let mut labels: BTreeMap<String, String> = BTreeMap::from([
            ("kubernetes.io/os".to_owned(), "linux".to_owned()),
            (
                "kubernetes.io/arch".to_owned(),
                status["nodeInfo"]["architecture"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ),
            ("kubernetes.io/hostname".to_owned(), s.name.clone()),
            (EDGE_ROLE_LABEL.to_owned(), String::new()),
            (AGENT_ROLE_LABEL.to_owned(), String::new()),
        ]);
        labels.extend(s.labels.clone());
        let mut spec = json!({});
        if !s.taints.is_empty() {
            spec["taints"] = Value::Array(s.taints.clone());
        }
        if !s.schedulable {
            spec["unschedulable"] = Value::Bool(true);
        }
        let node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": s.name, "labels": labels},
            "spec": spec,
            "status": status,
        });
        match self
            .client
            .insert(
                &s.namespace,
                kedge_message::resource_type::NODE,
                &s.name,
                node,
            )
            .await
        {
            Ok(_) => {}
            Err(error) if error.code() == 409 => {}
            Err(error) => return Err(error),
        }
        self.remember_sent(&status);
        Ok(())
    }

    /// Sends the status if it changed or the report period passed.
    pub async fn report_status(&mut self) -> Result<bool, MetaError> {
        let status = self.status().await;
        let due = self
            .last_sent_at
            .is_none_or(|at| at.elapsed() >= self.settings.status_report);
        if !due && self.last_sent.as_ref() == Some(&without_heartbeats(&status)) {
            return Ok(false);
        }
        let patch = json!({"status": status});
        self.client
            .patch_status(
                &self.settings.namespace,
                kedge_message::resource_type::NODE_PATCH,
                &self.settings.name,
                &patch,
            )
            .await?;
        self.remember_sent(&status);
        Ok(true)
    }

    fn remember_sent(&mut self, status: &Value) {
        self.last_sent = Some(without_heartbeats(status));
        self.last_sent_at = Some(Instant::now());
    }

    /// Renews the node's Lease, creating it when the cloud has none.
    pub async fn renew_lease(&mut self) -> Result<(), MetaError> {
        let name = self.settings.name.clone();
        let now = micro_time();
        let seconds = self.settings.lease_duration.as_secs();
        let current = self.client.get(LEASE_NAMESPACE, LEASE, &name).await?;
        match current {
            Some(mut lease) => {
                lease["spec"]["renewTime"] = Value::String(now);
                lease["spec"]["holderIdentity"] = Value::String(name.clone());
                lease["spec"]["leaseDurationSeconds"] = json!(seconds);
                self.client
                    .update(LEASE_NAMESPACE, LEASE, &name, lease)
                    .await?;
            }
            None => {
                let lease = json!({
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": name, "namespace": LEASE_NAMESPACE},
                    "spec": {
                        "holderIdentity": name,
                        "leaseDurationSeconds": seconds,
                        "renewTime": now,
                    },
                });
                self.client
                    .insert(LEASE_NAMESPACE, LEASE, &name, lease)
                    .await?;
            }
        }
        Ok(())
    }

    /// The node's status now: capacity, allocatable, conditions,
    /// addresses, nodeInfo and images.
    pub async fn status(&mut self) -> Value {
        let s = &self.settings;
        let root = s.root_directory.clone();
        let host = tokio::task::spawn_blocking(move || HostFacts::read(&root))
            .await
            .unwrap_or_default();
        let runtime_version = match self.runtime.version().await {
            Ok(v) => format!("{}://{}", v.runtime_name, v.runtime_version),
            Err(_) => String::new(),
        };
        let runtime_status = self.runtime.status().await;
        let (ready, ready_reason, ready_message) = match &runtime_status {
            Ok(status) if status.runtime_ready() && status.network_ready() => (
                true,
                "KubeletReady".to_owned(),
                "edged is posting ready status".to_owned(),
            ),
            Ok(status) => {
                let failing = status
                    .conditions
                    .iter()
                    .filter(|c| !c.status)
                    .map(|c| format!("{}: {} {}", c.kind, c.reason, c.message))
                    .collect::<Vec<_>>();
                (
                    false,
                    "KubeletNotReady".to_owned(),
                    if failing.is_empty() {
                        "container runtime is not ready".to_owned()
                    } else {
                        failing.join("; ")
                    },
                )
            }
            Err(error) => (
                false,
                "KubeletNotReady".to_owned(),
                format!("container runtime is down: {error}"),
            ),
        };
        let memory_pressure =
            host.memory_available_bytes > 0 && host.memory_available_bytes < EVICTION_MEMORY_BYTES;
        let disk_pressure =
            host.storage_bytes > 0 && host.storage_available_bytes * 10 < host.storage_bytes;
        let conditions = vec![
            self.condition(
                "MemoryPressure",
                memory_pressure,
                if memory_pressure {
                    "KubeletHasInsufficientMemory"
                } else {
                    "KubeletHasSufficientMemory"
                },
                if memory_pressure {
                    "edged has insufficient memory available"
                } else {
                    "edged has sufficient memory available"
                },
            ),
            self.condition(
                "DiskPressure",
                disk_pressure,
                if disk_pressure {
                    "KubeletHasDiskPressure"
                } else {
                    "KubeletHasNoDiskPressure"
                },
                if disk_pressure {
                    "edged has disk pressure"
                } else {
                    "edged has no disk pressure"
                },
            ),
            self.condition(
                "PIDPressure",
                false,
                "KubeletHasSufficientPID",
                "edged has sufficient PID available",
            ),
            self.condition("Ready", ready, &ready_reason, &ready_message),
        ];
        let s = &self.settings;
        let cpu_millis = i64::try_from(host.cpus * 1000).unwrap_or(i64::MAX);
        let memory = i64::try_from(host.memory_bytes).unwrap_or(i64::MAX);
        let storage = i64::try_from(host.storage_bytes).unwrap_or(i64::MAX);
        let reserved = |key: &str, parse: fn(&str) -> Option<i64>| {
            s.reserved.get(key).and_then(|q| parse(q)).unwrap_or(0)
        };
        let capacity = json!({
            "cpu": host.cpus.to_string(),
            "memory": format!("{}Ki", memory / 1024),
            "ephemeral-storage": format!("{}Ki", storage / 1024),
            "pods": s.max_pods.to_string(),
        });
        let allocatable = json!({
            "cpu": format!("{}m", (cpu_millis - reserved("cpu", quantity::millis)).max(0)),
            "memory": format!(
                "{}Ki",
                ((memory - reserved("memory", quantity::units) - EVICTION_MEMORY_BYTES as i64) / 1024).max(0)
            ),
            "ephemeral-storage": format!(
                "{}",
                (storage - reserved("ephemeral-storage", quantity::units) - storage / 10).max(0)
            ),
            "pods": s.max_pods.to_string(),
        });
        let images = self.images().await;
        json!({
            "capacity": capacity,
            "allocatable": allocatable,
            "conditions": conditions,
            "addresses": [
                {"type": "InternalIP", "address": s.ip.to_string()},
                {"type": "Hostname", "address": s.name},
            ],
            "nodeInfo": {
                "machineID": host.machine_id,
                "systemUUID": host.machine_id,
                "bootID": host.boot_id,
                "kernelVersion": host.kernel_version,
                "osImage": host.os_image,
                "containerRuntimeVersion": runtime_version,
                "kubeletVersion": kubelet_version(),
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": host.architecture,
            },
            "images": images,
        })
    }

    /// The images to list, biggest first, at most `max_images`.
    async fn images(&self) -> Vec<Value> {
        if self.settings.max_images == 0 {
            return Vec::new();
        }
        let mut images = self.runtime.list_images().await.unwrap_or_default();
        images.sort_by_key(|image| std::cmp::Reverse(image.size));
        if let Ok(max) = usize::try_from(self.settings.max_images) {
            images.truncate(max);
        }
        images
            .into_iter()
            .map(|image| {
                let mut names = image.repo_digests.clone();
                names.extend(image.repo_tags.clone());
                json!({"names": names, "sizeBytes": image.size})
            })
            .collect()
    }

    /// A node condition, keeping its last transition time while its
    /// status stays the same.
    fn condition(&mut self, kind: &str, status: bool, reason: &str, message: &str) -> Value {
        let status = if status { "True" } else { "False" };
        let now = rfc3339();
        let entry = self
            .transitions
            .entry(kind.to_owned())
            .or_insert_with(|| (status.to_owned(), now.clone()));
        if entry.0 != status {
            *entry = (status.to_owned(), now.clone());
        }
        json!({
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": entry.1,
        })
    }
}

/// The Lease namespace.
const LEASE_NAMESPACE: &str = "kube-node-lease";
/// The Lease resource type.
const LEASE: &str = kedge_message::resource_type::LEASE;
/// The hard eviction threshold `memory.available<100Mi`, held back from
/// allocatable and the MemoryPressure line.
const EVICTION_MEMORY_BYTES: u64 = 100 * 1024 * 1024;

/// `status` without the condition heartbeat times, to tell a real change
/// from a new heartbeat.
fn without_heartbeats(status: &Value) -> Value {
    let mut status = status.clone();
    if let Some(conditions) = status.get_mut("conditions").and_then(Value::as_array_mut) {
        for condition in conditions {
            if let Some(map) = condition.as_object_mut() {
                map.remove("lastHeartbeatTime");
            }
        }
    }
    status
}

/// Now as RFC 3339 with seconds (Kubernetes `Time`).
pub fn rfc3339() -> String {
    format!("{:.0}", jiff::Timestamp::now())
}

/// `time` as RFC 3339 with seconds (Kubernetes `Time`).
pub fn rfc3339_of(time: std::time::SystemTime) -> String {
    jiff::Timestamp::try_from(time).map_or_else(|_| rfc3339(), |t| format!("{t:.0}"))
}

/// Now as RFC 3339 with microseconds (Kubernetes `MicroTime`).
fn micro_time() -> String {
    format!("{:.6}", jiff::Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_alone_are_no_change() {
        let a =
            json!({"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": "1"}]});
        let b =
            json!({"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": "2"}]});
        let c =
            json!({"conditions": [{"type": "Ready", "status": "False", "lastHeartbeatTime": "2"}]});
        assert_eq!(without_heartbeats(&a), without_heartbeats(&b));
        assert_ne!(without_heartbeats(&a), without_heartbeats(&c));
        assert!(kubelet_version().starts_with("v1."));
    }
}
