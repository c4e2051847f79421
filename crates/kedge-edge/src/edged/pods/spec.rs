//! A pod's spec as runtime configurations: the sandbox (identity labels,
//! namespaces, host ports, DNS, cgroup parent, security) and each container
//! (command, arguments, environment, mounts, resources, security), as the
//! kubelet's
//! `generatePodSandboxConfig` and `generateContainerConfig` do
//! (edged.md §1.3).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use serde_json::Value;
use sha2::Digest;

use super::fields::{self, NodeFields};
use super::volumes::secret_data;
use crate::edged::metaclient::{MetaClient, MetaError};
use crate::edged::runtime::{
    ContainerConfig, ContainerSecurity, DnsConfig, EnvVar, Labels, Mount, MountPropagation,
    NamespaceMode, NamespaceOptions, PortMapping, Protocol, Resources, SandboxConfig,
    SandboxMetadata, SandboxSecurity,
};
use kedge_apis::quantity;

/// Label: the pod's uid, on sandboxes and containers.
pub const POD_UID: &str = "io.kubernetes.pod.uid";
/// Label: the pod's name.
pub const POD_NAME: &str = "io.kubernetes.pod.name";
/// Label: the pod's namespace.
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// Label: the container's name in its pod.
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// Label: the node whose edged made the sandbox or container, so that a
/// runtime shared with other agents is left alone.
pub const NODE: &str = "io.kubeedge.edged.node";
/// Annotation: the hash of the container's spec; a different hash means
/// the container must be recreated.
pub const CONTAINER_HASH: &str = "io.kubernetes.container.hash";

/// Why a container's configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A referenced ConfigMap or Secret (or a key of it) is missing.
    #[error("{0}")]
    Reference(String),
    /// The security context contradicts itself, e.g. `runAsNonRoot` with
    /// `runAsUser: 0`.
    #[error("{0}")]
    Security(String),
    /// MetaManager did not answer.
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// A pod's QoS class, as Kubernetes derives it from requests and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    /// Every container has equal CPU and memory requests and limits.
    Guaranteed,
    /// Some request or limit, but not Guaranteed.
    Burstable,
    /// No requests or limits at all.
    BestEffort,
}

impl QosClass {
    /// The class of `pod`.
    pub fn of(pod: &Pod) -> Self {
        let Some(spec) = &pod.spec else {
            return Self::BestEffort;
        };
        let mut any = false;
        let mut guaranteed = true;
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            let r = c.resources.as_ref();
            let limits = r.and_then(|r| r.limits.as_ref());
            let requests = r.and_then(|r| r.requests.as_ref());
            for resource in ["cpu", "memory"] {
                let limit = limits.and_then(|l| l.get(resource)).map(|q| q.0.as_str());
                let request = requests
                    .and_then(|l| l.get(resource))
                    .map(|q| q.0.as_str())
                    .or(limit);
                any |= limit.is_some() || request.is_some();
                guaranteed &= limit.is_some() && request == limit;
            }
        }
        match (any, guaranteed) {
            (false, _) => Self::BestEffort,
            (true, true) => Self::Guaranteed,
            (true, false) => Self::Burstable,
        }
    }

    /// The name in pod status and cgroup paths.
    pub fn name(self) -> &'static str {
        match self {
            Self::Guaranteed => "Guaranteed",
            Self::Burstable => "Burstable",
            Self::BestEffort => "BestEffort",
        }
    }
}

/// The cgroup parent of a pod (cgroupfs form, edged.md §3.9).
pub fn cgroup_parent(pod: &Pod) -> String {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    match QosClass::of(pod) {
        QosClass::Guaranteed => format!("/kubepods/pod{uid}"),
        QosClass::Burstable => format!("/kubepods/burstable/pod{uid}"),
        QosClass::BestEffort => format!("/kubepods/besteffort/pod{uid}"),
    }
}

/// What the sandbox and container configurations depend on besides the pod.
#[derive(Debug, Clone)]
pub struct SpecContext {
    /// This node's name.
    pub node_name: String,
    /// The directory pods' logs go under.
    pub log_root: PathBuf,
    /// `clusterDNS`: name servers for `ClusterFirst` pods.
    pub cluster_dns: Vec<String>,
    /// `clusterDomain`.
    pub cluster_domain: String,
    /// The node's memory, for Burstable OOM scores.
    pub memory_capacity: i64,
}

/// Whether the pod uses the host's network.
pub fn host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

/// The sandbox configuration of `pod`, attempt `attempt`.
pub fn sandbox_config(pod: &Pod, attempt: u32, ctx: &SpecContext) -> SandboxConfig {
    let meta = &pod.metadata;
    let spec = pod.spec.clone().unwrap_or_default();
    let name = meta.name.clone().unwrap_or_default();
    let namespace = meta.namespace.clone().unwrap_or_default();
    let uid = meta.uid.clone().unwrap_or_default();
    let mut labels: Labels = meta.labels.clone().unwrap_or_default();
    labels.extend(identity(pod, &ctx.node_name));
    let host = host_network(pod);
    let node_mode = |on: Option<bool>| {
        if on.unwrap_or(false) {
            NamespaceMode::Node
        } else {
            NamespaceMode::Pod
        }
    };
    let port_mappings = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let host_port = u16::try_from(p.host_port?).ok().filter(|p| *p > 0)?;
            Some(PortMapping {
                protocol: match p.protocol.as_deref() {
                    Some("UDP") => Protocol::Udp,
                    Some("SCTP") => Protocol::Sctp,
                    _ => Protocol::Tcp,
                },
                container_port: u16::try_from(p.container_port).unwrap_or(0),
                host_port,
                host_ip: p.host_ip.clone().unwrap_or_default(),
            })
        })
        .collect();
    SandboxConfig {
        metadata: SandboxMetadata {
            name: name.clone(),
            uid: uid.clone(),
            namespace: namespace.clone(),
            attempt,
        },
        hostname: spec.hostname.clone().unwrap_or_else(|| name.clone()),
        log_directory: log_directory(pod, &ctx.log_root).display().to_string(),
        dns: dns(pod, ctx),
        port_mappings,
        labels,
        annotations: meta.annotations.clone().unwrap_or_default(),
        cgroup_parent: cgroup_parent(pod),
        namespaces: NamespaceOptions {
            network: if host {
                NamespaceMode::Node
            } else {
                NamespaceMode::Pod
            },
            pid: if spec.host_pid.unwrap_or(false) {
                NamespaceMode::Node
            } else if spec.share_process_namespace.unwrap_or(false) {
                NamespaceMode::Pod
            } else {
                NamespaceMode::Container
            },
            ipc: node_mode(spec.host_ipc),
        },
        security: sandbox_security(&spec),
        sysctls: spec
            .security_context
            .and_then(|s| s.sysctls)
            .into_iter()
            .flatten()
            .map(|s| (s.name, s.value))
            .collect(),
    }
}

/// The sandbox's security settings: the pod's user, group and
/// supplemental groups, privileged when any container is (as the kubelet
/// does; the runtime refuses a privileged container otherwise).
fn sandbox_security(spec: &PodSpec) -> SandboxSecurity {
    let pod = spec.security_context.as_ref();
    SandboxSecurity {
        privileged: spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| {
                c.security_context
                    .as_ref()
                    .and_then(|s| s.privileged)
                    .unwrap_or(false)
            }),
        run_as_user: pod.and_then(|s| s.run_as_user),
        run_as_group: pod.and_then(|s| s.run_as_group),
        supplemental_groups: pod
            .and_then(|s| s.supplemental_groups.clone())
            .unwrap_or_default(),
    }
}

/// The security settings of `container`: its `securityContext` over the
/// pod's (`runAsUser`, `runAsGroup`, `runAsNonRoot`), with the pod's
/// supplemental groups, as the kubelet's
/// `determineEffectiveSecurityContext`. `runAsNonRoot` with `runAsUser: 0`
/// is an error; without a `runAsUser` the runtime checks the image's user.
fn container_security(pod: &Pod, container: &Container) -> Result<ContainerSecurity, ConfigError> {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let sc = container.security_context.as_ref();
    let run_as_user = sc
        .and_then(|s| s.run_as_user)
        .or_else(|| pod_sc.and_then(|s| s.run_as_user));
    let run_as_non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or_else(|| pod_sc.and_then(|s| s.run_as_non_root))
        .unwrap_or(false);
    if run_as_non_root && run_as_user == Some(0) {
        return Err(ConfigError::Security(format!(
            "container's runAsUser breaks non-root policy (pod: \"{}/{}\", container: {})",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default(),
            container.name
        )));
    }
    let capabilities = sc.and_then(|s| s.capabilities.as_ref());
    Ok(ContainerSecurity {
        run_as_user,
        run_as_group: sc
            .and_then(|s| s.run_as_group)
            .or_else(|| pod_sc.and_then(|s| s.run_as_group)),
        run_as_non_root,
        supplemental_groups: pod_sc
            .and_then(|s| s.supplemental_groups.clone())
            .unwrap_or_default(),
        privileged: sc.and_then(|s| s.privileged).unwrap_or(false),
        readonly_rootfs: sc
            .and_then(|s| s.read_only_root_filesystem)
            .unwrap_or(false),
        add_capabilities: capabilities.and_then(|c| c.add.clone()).unwrap_or_default(),
        drop_capabilities: capabilities
            .and_then(|c| c.drop.clone())
            .unwrap_or_default(),
        no_new_privs: sc.and_then(|s| s.allow_privilege_escalation) == Some(false),
    })
}

/// The directory of a pod's container logs.
pub fn log_directory(pod: &Pod, log_root: &Path) -> PathBuf {
    let meta = &pod.metadata;
    log_root.join(format!(
        "{}_{}_{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
        meta.uid.as_deref().unwrap_or_default()
    ))
}

/// The labels that identify a pod's sandbox and containers.
pub fn identity(pod: &Pod, node: &str) -> Labels {
    let meta = &pod.metadata;
    Labels::from([
        (POD_UID.to_owned(), meta.uid.clone().unwrap_or_default()),
        (POD_NAME.to_owned(), meta.name.clone().unwrap_or_default()),
        (
            POD_NAMESPACE.to_owned(),
            meta.namespace.clone().unwrap_or_default(),
        ),
        (NODE.to_owned(), node.to_owned()),
    ])
}

/// DNS for the pod: cluster DNS for `ClusterFirst` when configured, the
/// pod's own `dnsConfig` for `None`, the runtime's default (the host's
/// resolv.conf) otherwise.
fn dns(pod: &Pod, ctx: &SpecContext) -> Option<DnsConfig> {
    let spec = pod.spec.as_ref()?;
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let host = host_network(pod);
    let mut config = match policy {
        "ClusterFirst" if !host && !ctx.cluster_dns.is_empty() => cluster_dns(pod, ctx),
        "ClusterFirstWithHostNet" if !ctx.cluster_dns.is_empty() => cluster_dns(pod, ctx),
        "None" => DnsConfig::default(),
        _ => return None,
    };
    if let Some(extra) = &spec.dns_config {
        config
            .servers
            .extend(extra.nameservers.clone().unwrap_or_default());
        config
            .searches
            .extend(extra.searches.clone().unwrap_or_default());
        for option in extra.options.iter().flatten() {
            let name = option.name.clone().unwrap_or_default();
            config.options.push(match &option.value {
                Some(value) => format!("{name}:{value}"),
                None => name,
            });
        }
    }
    Some(config)
}

fn cluster_dns(pod: &Pod, ctx: &SpecContext) -> DnsConfig {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let domain = &ctx.cluster_domain;
    DnsConfig {
        servers: ctx.cluster_dns.clone(),
        searches: vec![
            format!("{ns}.svc.{domain}"),
            format!("svc.{domain}"),
            domain.clone(),
        ],
        options: vec!["ndots:5".to_owned()],
    }
}

/// A stable hash of a container's spec: a changed spec means a new
/// container.
pub fn container_hash(container: &Container) -> String {
    let json = serde_json::to_vec(container).unwrap_or_default();
    let digest = sha2::Sha256::digest(&json);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads ConfigMaps and Secrets once per container configuration.
struct References<'a> {
    client: &'a MetaClient,
    namespace: &'a str,
    config_maps: BTreeMap<String, Option<BTreeMap<String, String>>>,
    secrets: BTreeMap<String, Option<BTreeMap<String, Vec<u8>>>>,
}

impl References<'_> {
    async fn config_map(
        &mut self,
        name: &str,
    ) -> Result<Option<&BTreeMap<String, String>>, MetaError> {
        if !self.config_maps.contains_key(name) {
            let object = self
                .client
                .get(
                    self.namespace,
                    kedge_message::resource_type::CONFIGMAP,
                    name,
                )
                .await?;
            let data = object.map(|o| {
                o.get("data")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            });
            self.config_maps.insert(name.to_owned(), data);
        }
        Ok(self.config_maps.get(name).and_then(Option::as_ref))
    }

    async fn secret(
        &mut self,
        name: &str,
    ) -> Result<Option<&BTreeMap<String, Vec<u8>>>, MetaError> {
        if !self.secrets.contains_key(name) {
            let object = self
                .client
                .get(self.namespace, kedge_message::resource_type::SECRET, name)
                .await?;
            self.secrets
                .insert(name.to_owned(), object.as_ref().map(secret_data));
        }
        Ok(self.secrets.get(name).and_then(Option::as_ref))
    }
}

/// The environment of `container`: `envFrom` first, then `env` in order,
/// `$(VAR)` references expanded against what came before.
pub async fn environment(
    pod: &Pod,
    container: &Container,
    client: &MetaClient,
    node: &NodeFields,
) -> Result<Vec<EnvVar>, ConfigError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut refs = References {
        client,
        namespace: &namespace,
        config_maps: BTreeMap::new(),
        secrets: BTreeMap::new(),
    };
    let mut env: Vec<EnvVar> = Vec::new();
    let set = |env: &mut Vec<EnvVar>, name: String, value: String| {
        if let Some(existing) = env.iter_mut().find(|e| e.name == name) {
            existing.value = value;
        } else {
            env.push(EnvVar { name, value });
        }
    };
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        if let Some(cm) = &source.config_map_ref {
            match refs.config_map(&cm.name).await? {
                Some(data) => {
                    for (k, v) in data.clone() {
                        set(&mut env, format!("{prefix}{k}"), v);
                    }
                }
                None if cm.optional.unwrap_or(false) => {}
                None => {
                    return Err(ConfigError::Reference(format!(
                        "configmap {:?} not found",
                        cm.name
                    )));
                }
            }
        }
        if let Some(secret) = &source.secret_ref {
            match refs.secret(&secret.name).await? {
                Some(data) => {
                    for (k, v) in data.clone() {
                        set(
                            &mut env,
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v).into_owned(),
                        );
                    }
                }
                None if secret.optional.unwrap_or(false) => {}
                None => {
                    return Err(ConfigError::Reference(format!(
                        "secret {:?} not found",
                        secret.name
                    )));
                }
            }
        }
    }
    for var in container.env.iter().flatten() {
        let value = if let Some(from) = &var.value_from {
            if let Some(field) = &from.field_ref {
                fields::pod_field(pod, &field.field_path, Some(node)).unwrap_or_default()
            } else if let Some(resource) = &from.resource_field_ref {
                let mut selector = resource.clone();
                if selector
                    .container_name
                    .as_deref()
                    .unwrap_or_default()
                    .is_empty()
                {
                    selector.container_name = Some(container.name.clone());
                }
                fields::resource_field(pod, &selector).unwrap_or_default()
            } else if let Some(key) = &from.config_map_key_ref {
                let optional = key.optional.unwrap_or(false);
                match refs
                    .config_map(&key.name)
                    .await?
                    .and_then(|d| d.get(&key.key))
                {
                    Some(value) => value.clone(),
                    None if optional => continue,
                    None => {
                        return Err(ConfigError::Reference(format!(
                            "couldn't find key {} in ConfigMap {}/{}",
                            key.key, namespace, key.name
                        )));
                    }
                }
            } else if let Some(key) = &from.secret_key_ref {
                let optional = key.optional.unwrap_or(false);
                match refs.secret(&key.name).await?.and_then(|d| d.get(&key.key)) {
                    Some(value) => String::from_utf8_lossy(value).into_owned(),
                    None if optional => continue,
                    None => {
                        return Err(ConfigError::Reference(format!(
                            "couldn't find key {} in Secret {}/{}",
                            key.key, namespace, key.name
                        )));
                    }
                }
            } else {
                String::new()
            }
        } else {
            expand(var.value.as_deref().unwrap_or_default(), &env)
        };
        set(&mut env, var.name.clone(), value);
    }
    Ok(env)
}

/// Expands `$(NAME)` against `env`; `$$` is a literal `$`; unknown
/// references stay as written, as Kubernetes does.
pub fn expand(text: &str, env: &[EnvVar]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        if let Some(after) = tail.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(inner) = tail.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.iter().find(|e| e.name == name) {
                Some(var) => out.push_str(&var.value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

/// The runtime configuration of `container`, attempt `attempt`, with its
/// environment already resolved and the pod's volumes at `volumes`.
pub fn container_config(
    pod: &Pod,
    container: &Container,
    attempt: u32,
    env: Vec<EnvVar>,
    volumes: &BTreeMap<String, PathBuf>,
    ctx: &SpecContext,
) -> Result<ContainerConfig, ConfigError> {
    let mut mounts = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let Some(base) = volumes.get(&mount.name) else {
            return Err(ConfigError::Reference(format!(
                "volume {:?} is mounted but not defined",
                mount.name
            )));
        };
        let sub = mount.sub_path.clone().unwrap_or_default();
        let host_path = if sub.is_empty() {
            base.clone()
        } else {
            if Path::new(&sub)
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(ConfigError::Reference(format!("invalid subPath {sub:?}")));
            }
            let path = base.join(&sub);
            if !path.exists() {
                std::fs::create_dir_all(&path).map_err(|e| {
                    ConfigError::Reference(format!("subPath {}: {e}", path.display()))
                })?;
            }
            path
        };
        mounts.push(Mount {
            container_path: mount.mount_path.clone(),
            host_path: host_path.display().to_string(),
            readonly: mount.read_only.unwrap_or(false),
            propagation: match mount.mount_propagation.as_deref() {
                Some("HostToContainer") => MountPropagation::HostToContainer,
                Some("Bidirectional") => MountPropagation::Bidirectional,
                _ => MountPropagation::Private,
            },
        });
    }
    let mut labels = identity(pod, &ctx.node_name);
    labels.insert(CONTAINER_NAME.to_owned(), container.name.clone());
    let annotations = Labels::from([
        (CONTAINER_HASH.to_owned(), container_hash(container)),
        (
            "io.kubernetes.container.restartCount".to_owned(),
            attempt.to_string(),
        ),
    ]);
    Ok(ContainerConfig {
        name: container.name.clone(),
        attempt,
        image: container.image.clone().unwrap_or_default(),
        command: container
            .command
            .iter()
            .flatten()
            .map(|c| expand(c, &env))
            .collect(),
        args: container
            .args
            .iter()
            .flatten()
            .map(|c| expand(c, &env))
            .collect(),
        working_dir: container.working_dir.clone().unwrap_or_default(),
        env,
        mounts,
        resources: resources(pod, container, ctx.memory_capacity),
        security: container_security(pod, container)?,
        log_path: format!("{}/{attempt}.log", container.name),
        labels,
        annotations,
    })
}

/// CPU and memory limits and the OOM score, as the kubelet computes them.
fn resources(pod: &Pod, container: &Container, memory_capacity: i64) -> Resources {
    let r = container.resources.as_ref();
    let get = |map: Option<
        &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >,
               key: &str| map.and_then(|m| m.get(key)).map(|q| q.0.clone());
    let limits = r.and_then(|r| r.limits.as_ref());
    let requests = r.and_then(|r| r.requests.as_ref());
    let cpu_limit = get(limits, "cpu").as_deref().and_then(quantity::millis);
    let cpu_request = get(requests, "cpu")
        .or_else(|| get(limits, "cpu"))
        .as_deref()
        .and_then(quantity::millis);
    let memory_limit = get(limits, "memory").as_deref().and_then(quantity::units);
    let memory_request = get(requests, "memory")
        .or_else(|| get(limits, "memory"))
        .as_deref()
        .and_then(quantity::units);
    let oom = match QosClass::of(pod) {
        QosClass::Guaranteed => -997,
        QosClass::BestEffort => 1000,
        QosClass::Burstable => {
            let request = memory_request.unwrap_or(0);
            let score = if memory_capacity > 0 {
                1000 - 1000 * request / memory_capacity
            } else {
                999
            };
            score.clamp(3, 999)
        }
    };
    Resources {
        cpu_period: cpu_limit.map(|_| 100_000),
        cpu_quota: cpu_limit.map(|m| (m * 100_000 / 1000).max(1000)),
        cpu_shares: Some(cpu_request.map_or(2, |m| (m * 1024 / 1000).max(2))),
        memory_limit_bytes: memory_limit,
        oom_score_adj: Some(oom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(resources: Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "prod", "uid": "u1", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "busybox", "resources": resources,
                "ports": [{"containerPort": 80, "hostPort": 8080}]}]}
        }))
        .expect("pod")
    }

    fn ctx() -> SpecContext {
        SpecContext {
            node_name: "edge-1".into(),
            log_root: PathBuf::from("/logs"),
            cluster_dns: vec![],
            cluster_domain: "cluster.local".into(),
            memory_capacity: 1 << 30,
        }
    }

    #[test]
    fn qos_follows_requests_and_limits() {
        assert_eq!(
            QosClass::of(&pod(serde_json::json!({}))),
            QosClass::BestEffort
        );
        assert_eq!(
            QosClass::of(&pod(
                serde_json::json!({"limits": {"cpu": "1", "memory": "1Gi"}})
            )),
            QosClass::Guaranteed
        );
        assert_eq!(
            QosClass::of(&pod(serde_json::json!({"requests": {"cpu": "1"}}))),
            QosClass::Burstable
        );
        assert_eq!(
            cgroup_parent(&pod(serde_json::json!({}))),
            "/kubepods/besteffort/podu1"
        );
    }

    #[test]
    fn the_sandbox_carries_identity_ports_and_namespaces() {
        let pod = pod(serde_json::json!({}));
        let config = sandbox_config(&pod, 1, &ctx());
        assert_eq!(config.metadata.attempt, 1);
        assert_eq!(config.labels[POD_UID], "u1");
        assert_eq!(config.labels["app"], "web");
        assert_eq!(config.labels[NODE], "edge-1");
        assert_eq!(config.port_mappings[0].host_port, 8080);
        assert_eq!(config.log_directory, "/logs/prod_web_u1");
        assert_eq!(config.dns, None, "no cluster DNS: the host's resolv.conf");
        assert_eq!(config.namespaces.network, NamespaceMode::Pod);
    }

    #[test]
    fn containers_get_limits_mounts_and_a_hash() {
        let pod = pod(serde_json::json!({"limits": {"cpu": "500m", "memory": "64Mi"}}));
        let container = &pod.spec.as_ref().expect("spec").containers[0];
        let config =
            container_config(&pod, container, 2, vec![], &BTreeMap::new(), &ctx()).expect("config");
        assert_eq!(config.resources.cpu_quota, Some(50_000));
        assert_eq!(config.resources.memory_limit_bytes, Some(64 << 20));
        assert_eq!(config.resources.oom_score_adj, Some(-997));
        assert_eq!(config.log_path, "c/2.log");
        assert_eq!(
            config.annotations[CONTAINER_HASH],
            container_hash(container)
        );
        let mut changed = container.clone();
        changed.image = Some("other".into());
        assert_ne!(container_hash(&changed), container_hash(container));
    }

    /// A pod with the given pod-level and per-container security contexts.
    fn secured(pod_sc: Value, containers: Value, init: Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "prod", "uid": "u1"},
            "spec": {"securityContext": pod_sc, "containers": containers,
                "initContainers": init}
        }))
        .expect("pod")
    }

    fn security_of(pod: &Pod, index: usize) -> Result<ContainerSecurity, ConfigError> {
        let container = &pod.spec.as_ref().expect("spec").containers[index];
        container_config(pod, container, 0, vec![], &BTreeMap::new(), &ctx()).map(|c| c.security)
    }

    #[test]
    fn the_containers_security_context_overrides_the_pods() {
        let pod = secured(
            serde_json::json!({"runAsUser": 1000, "runAsGroup": 3000, "runAsNonRoot": true,
                "supplementalGroups": [4000, 4001], "fsGroup": 5000}),
            serde_json::json!([
                {"name": "own", "image": "busybox", "securityContext": {
                    "runAsUser": 2000, "runAsNonRoot": false, "readOnlyRootFilesystem": true,
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]}}},
                {"name": "inherits", "image": "busybox",
                    "securityContext": {"allowPrivilegeEscalation": true}},
            ]),
            serde_json::json!([]),
        );
        assert_eq!(
            security_of(&pod, 0).expect("config"),
            ContainerSecurity {
                run_as_user: Some(2000),
                run_as_group: Some(3000),
                run_as_non_root: false,
                supplemental_groups: vec![4000, 4001],
                privileged: false,
                readonly_rootfs: true,
                add_capabilities: vec!["NET_ADMIN".into()],
                drop_capabilities: vec!["ALL".into()],
                no_new_privs: true,
            },
            "capabilities keep their Kubernetes names: containerd adds CAP_"
        );
        assert_eq!(
            security_of(&pod, 1).expect("config"),
            ContainerSecurity {
                run_as_user: Some(1000),
                run_as_group: Some(3000),
                run_as_non_root: true,
                supplemental_groups: vec![4000, 4001],
                ..Default::default()
            },
            "the pod's user, group and runAsNonRoot; escalation allowed"
        );

        let sandbox = sandbox_config(&pod, 0, &ctx());
        assert_eq!(
            sandbox.security,
            SandboxSecurity {
                privileged: false,
                run_as_user: Some(1000),
                run_as_group: Some(3000),
                supplemental_groups: vec![4000, 4001],
            }
        );
    }

    #[test]
    fn without_a_security_context_nothing_is_set() {
        let pod = pod(serde_json::json!({}));
        assert_eq!(
            security_of(&pod, 0).expect("config"),
            ContainerSecurity::default()
        );
        assert_eq!(
            sandbox_config(&pod, 0, &ctx()).security,
            SandboxSecurity::default()
        );
    }

    #[test]
    fn run_as_non_root_with_user_0_is_a_config_error() {
        let pod = secured(
            serde_json::json!({"runAsNonRoot": true}),
            serde_json::json!([
                {"name": "root", "image": "busybox", "securityContext": {"runAsUser": 0}},
                {"name": "allowed", "image": "busybox",
                    "securityContext": {"runAsUser": 0, "runAsNonRoot": false}},
            ]),
            serde_json::json!([]),
        );
        let error = security_of(&pod, 0).expect_err("root with runAsNonRoot");
        assert!(matches!(error, ConfigError::Security(_)), "{error:?}");
        assert_eq!(
            error.to_string(),
            "container's runAsUser breaks non-root policy (pod: \"prod/web\", container: root)"
        );
        assert_eq!(
            security_of(&pod, 1)
                .expect("runAsNonRoot overridden")
                .run_as_user,
            Some(0)
        );
    }

    #[test]
    fn a_privileged_init_container_makes_the_sandbox_privileged() {
        let privileged = serde_json::json!([{"name": "setup", "image": "busybox",
            "securityContext": {"privileged": true}}]);
        let app = serde_json::json!([{"name": "app", "image": "busybox"}]);
        let pod = secured(serde_json::json!({}), app.clone(), privileged.clone());
        assert!(sandbox_config(&pod, 0, &ctx()).security.privileged);
        assert!(!security_of(&pod, 0).expect("config").privileged);
        let pod = secured(serde_json::json!({}), privileged, serde_json::json!([]));
        assert!(sandbox_config(&pod, 0, &ctx()).security.privileged);
        assert!(security_of(&pod, 0).expect("config").privileged);
        let pod = secured(serde_json::json!({}), app, serde_json::json!([]));
        assert!(!sandbox_config(&pod, 0, &ctx()).security.privileged);
    }

    #[test]
    fn references_expand_like_kubernetes() {
        let env = vec![EnvVar {
            name: "A".into(),
            value: "x".into(),
        }];
        assert_eq!(expand("$(A)-$(B)-$$(A)", &env), "x-$(B)-$(A)");
        assert_eq!(expand("cost $5", &env), "cost $5");
    }
}
