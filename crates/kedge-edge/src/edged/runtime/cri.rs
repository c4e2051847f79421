//! [`CriRuntime`]: the [`Runtime`] over CRI v1 gRPC on a unix socket
//! (containerd's `unix:///run/containerd/containerd.sock` on a node).
//!
//! One HTTP/2 channel carries both CRI services; tonic reconnects it
//! through the same connector when the runtime restarts. Every call gets a
//! deadline ([`CriOptions::call_timeout`], two minutes like the kubelet's
//! `runtimeRequestTimeout`); `ExecSync` gets its own timeout on top. Replies
//! may be up to [`CriOptions::max_message_size`] (16 MiB), enough for
//! `ListContainers` on a busy node.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::{
    Container, ContainerConfig, ContainerFilter, ContainerState, ContainerStatus, ExecOutput,
    Image, Labels, MountPropagation, NamespaceMode, Protocol, Result, Runtime, RuntimeCondition,
    RuntimeError, RuntimeStatus, RuntimeVersion, Sandbox, SandboxConfig, SandboxFilter,
    SandboxMetadata, SandboxState, SandboxStatus,
};

/// How [`CriRuntime`] talks to the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriOptions {
    /// The deadline of every call (2 min).
    pub call_timeout: Duration,
    /// How long connecting to the socket may take (10 s).
    pub connect_timeout: Duration,
    /// The largest reply accepted, in bytes (16 MiB).
    pub max_message_size: usize,
}

impl Default for CriOptions {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            max_message_size: 16 * 1024 * 1024,
        }
    }
}

/// A container runtime reached over CRI v1 (containerd, CRI-O).
#[derive(Debug, Clone)]
pub struct CriRuntime {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    options: CriOptions,
    socket: PathBuf,
}

impl CriRuntime {
    /// The socket kubelets and edgecore use by default.
    pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";

    /// Connects to the CRI socket at `socket` (a path, or a
    /// `unix://` URL as in edgecore.yaml's `remoteRuntimeEndpoint`).
    pub async fn connect(socket: impl AsRef<Path>, options: CriOptions) -> Result<Self> {
        let socket = socket_path(socket.as_ref());
        let connect_error =
            |source: Box<dyn std::error::Error + Send + Sync>| RuntimeError::Connect {
                endpoint: socket.display().to_string(),
                source,
            };
        // The URI is required by tonic but unused: the connector dials the socket.
        let endpoint =
            Endpoint::from_static("http://cri.invalid").connect_timeout(options.connect_timeout);
        let path = socket.clone();
        let channel =
            endpoint
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }))
                .await
                .map_err(|e| connect_error(Box::new(e)))?;
        let runtime = RuntimeServiceClient::new(channel.clone())
            .max_decoding_message_size(options.max_message_size);
        let images =
            ImageServiceClient::new(channel).max_decoding_message_size(options.max_message_size);
        Ok(Self {
            runtime,
            images,
            options,
            socket,
        })
    }

    /// The socket this runtime was reached at.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The image `image_ref` refers to, as CRI describes it.
    async fn cri_image(&self, image_ref: &str) -> Result<Option<cri::Image>> {
        let request = self.request(
            cri::ImageStatusRequest {
                image: Some(image_spec(image_ref)),
                verbose: false,
            },
            Duration::ZERO,
        );
        let reply = self
            .images
            .clone()
            .image_status(request)
            .await
            .map_err(status("ImageStatus"))?
            .into_inner();
        Ok(reply.image)
    }

    /// Who `config`'s container runs as: its `run_as_user`; or, when a
    /// group or `run_as_non_root` needs a user, the image's, checked
    /// against `run_as_non_root`, as the kubelet does.
    async fn user(&self, config: &ContainerConfig, sandbox: &SandboxConfig) -> Result<User> {
        let security = &config.security;
        if security.run_as_user.is_some()
            || !(security.run_as_non_root || security.run_as_group.is_some())
        {
            return Ok(User {
                uid: security.run_as_user,
                name: String::new(),
            });
        }
        let image = self
            .cri_image(&config.image)
            .await?
            .ok_or_else(|| RuntimeError::NotFound {
                kind: "image",
                id: config.image.clone(),
            })?;
        let user = image_user(&image);
        if security.run_as_non_root {
            verify_non_root(&user, config, sandbox)?;
        }
        Ok(user)
    }

    /// A request with the call deadline (plus `extra`).
    fn request<T>(&self, message: T, extra: Duration) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.options.call_timeout + extra);
        request
    }
}

/// `unix:///run/x.sock` or `/run/x.sock` → `/run/x.sock`.
fn socket_path(socket: &Path) -> PathBuf {
    match socket.to_str().and_then(|s| s.strip_prefix("unix://")) {
        Some(path) => PathBuf::from(path),
        None => socket.to_path_buf(),
    }
}

/// Maps a gRPC status of `call`, keeping its code and message.
fn status(call: &'static str) -> impl FnOnce(tonic::Status) -> RuntimeError {
    move |status| RuntimeError::Status {
        call,
        code: status.code(),
        message: status.message().to_owned(),
    }
}

fn missing(call: &'static str, what: &str) -> RuntimeError {
    RuntimeError::InvalidResponse {
        call,
        detail: format!("no {what} in the reply"),
    }
}

// === conversions: ours -> CRI ===

fn to_map(labels: &Labels) -> HashMap<String, String> {
    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn from_map(map: HashMap<String, String>) -> Labels {
    map.into_iter().collect()
}

fn namespace_mode(mode: NamespaceMode) -> i32 {
    (match mode {
        NamespaceMode::Pod => cri::NamespaceMode::Pod,
        NamespaceMode::Container => cri::NamespaceMode::Container,
        NamespaceMode::Node => cri::NamespaceMode::Node,
    }) as i32
}

fn int64(value: i64) -> cri::Int64Value {
    cri::Int64Value { value }
}

fn sandbox_config(config: &SandboxConfig) -> cri::PodSandboxConfig {
    let m = &config.metadata;
    let security = &config.security;
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: m.name.clone(),
            uid: m.uid.clone(),
            namespace: m.namespace.clone(),
            attempt: m.attempt,
        }),
        // runc cannot set a hostname without a UTS namespace of its own.
        hostname: if config.host_network() {
            String::new()
        } else {
            config.hostname.clone()
        },
        log_directory: config.log_directory.clone(),
        dns_config: config.dns.as_ref().map(|dns| cri::DnsConfig {
            servers: dns.servers.clone(),
            searches: dns.searches.clone(),
            options: dns.options.clone(),
        }),
        port_mappings: config
            .port_mappings
            .iter()
            .map(|p| cri::PortMapping {
                protocol: (match p.protocol {
                    Protocol::Tcp => cri::Protocol::Tcp,
                    Protocol::Udp => cri::Protocol::Udp,
                    Protocol::Sctp => cri::Protocol::Sctp,
                }) as i32,
                container_port: i32::from(p.container_port),
                host_port: i32::from(p.host_port),
                host_ip: p.host_ip.clone(),
            })
            .collect(),
        labels: to_map(&config.labels),
        annotations: to_map(&config.annotations),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: config.cgroup_parent.clone(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: namespace_mode(config.namespaces.network),
                    pid: namespace_mode(config.namespaces.pid),
                    ipc: namespace_mode(config.namespaces.ipc),
                    ..Default::default()
                }),
                run_as_user: security.run_as_user.map(int64),
                // containerd refuses a group without a user.
                run_as_group: security.run_as_user.and(security.run_as_group).map(int64),
                supplemental_groups: security.supplemental_groups.clone(),
                privileged: security.privileged,
                ..Default::default()
            }),
            sysctls: to_map(&config.sysctls),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Who a container runs as, in CRI's terms: a uid, or else a user name
/// from the image; neither for the image's user.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct User {
    uid: Option<i64>,
    name: String,
}

/// The user an image runs as, as the kubelet reads it from `ImageStatus`:
/// its numeric uid, else its user name, else root.
fn image_user(image: &cri::Image) -> User {
    match (&image.uid, &image.username) {
        (Some(uid), _) => User {
            uid: Some(uid.value),
            name: String::new(),
        },
        (None, name) if !name.is_empty() => User {
            uid: None,
            name: name.clone(),
        },
        _ => User {
            uid: Some(0),
            name: String::new(),
        },
    }
}

/// Refuses a `run_as_non_root` container whose image user is root or
/// cannot be verified (a name), with the kubelet's messages.
fn verify_non_root(user: &User, config: &ContainerConfig, sandbox: &SandboxConfig) -> Result<()> {
    let m = &sandbox.metadata;
    let whose = format!(
        "pod: \"{}/{}\", container: {}",
        m.namespace, m.name, config.name
    );
    match user {
        User { uid: Some(0), .. } => Err(RuntimeError::Security(format!(
            "container has runAsNonRoot and image will run as root ({whose})"
        ))),
        User { uid: None, name } if !name.is_empty() => Err(RuntimeError::Security(format!(
            "container has runAsNonRoot and image has non-numeric user ({name}), cannot verify \
             user is non-root ({whose})"
        ))),
        _ => Ok(()),
    }
}

fn container_config(config: &ContainerConfig, user: User) -> cri::ContainerConfig {
    let r = &config.resources;
    let security = &config.security;
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: config.name.clone(),
            attempt: config.attempt,
        }),
        image: Some(image_spec(&config.image)),
        command: config.command.clone(),
        args: config.args.clone(),
        working_dir: config.working_dir.clone(),
        envs: config
            .env
            .iter()
            .map(|e| cri::KeyValue {
                key: e.name.clone(),
                value: e.value.clone(),
            })
            .collect(),
        mounts: config
            .mounts
            .iter()
            .map(|m| cri::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                readonly: m.readonly,
                propagation: (match m.propagation {
                    MountPropagation::Private => cri::MountPropagation::PropagationPrivate,
                    MountPropagation::HostToContainer => {
                        cri::MountPropagation::PropagationHostToContainer
                    }
                    MountPropagation::Bidirectional => {
                        cri::MountPropagation::PropagationBidirectional
                    }
                }) as i32,
                ..Default::default()
            })
            .collect(),
        labels: to_map(&config.labels),
        annotations: to_map(&config.annotations),
        log_path: config.log_path.clone(),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                cpu_period: r.cpu_period.unwrap_or(0),
                cpu_quota: r.cpu_quota.unwrap_or(0),
                cpu_shares: r.cpu_shares.unwrap_or(0),
                memory_limit_in_bytes: r.memory_limit_bytes.unwrap_or(0),
                oom_score_adj: r.oom_score_adj.unwrap_or(0),
                ..Default::default()
            }),
            security_context: Some(cri::LinuxContainerSecurityContext {
                capabilities: (!security.add_capabilities.is_empty()
                    || !security.drop_capabilities.is_empty())
                .then(|| cri::Capability {
                    add_capabilities: security.add_capabilities.clone(),
                    drop_capabilities: security.drop_capabilities.clone(),
                    ..Default::default()
                }),
                privileged: security.privileged,
                run_as_user: user.uid.map(int64),
                run_as_group: security.run_as_group.map(int64),
                run_as_username: user.name,
                readonly_rootfs: security.readonly_rootfs,
                supplemental_groups: security.supplemental_groups.clone(),
                no_new_privs: security.no_new_privs,
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

fn image_spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    }
}

// === conversions: CRI -> ours ===

/// CRI times are nanoseconds since the epoch, 0 for "not yet".
fn time(nanos: i64) -> Option<SystemTime> {
    u64::try_from(nanos)
        .ok()
        .filter(|n| *n > 0)
        .map(|n| UNIX_EPOCH + Duration::from_nanos(n))
}

fn sandbox_metadata(m: Option<cri::PodSandboxMetadata>) -> SandboxMetadata {
    let m = m.unwrap_or_default();
    SandboxMetadata {
        name: m.name,
        uid: m.uid,
        namespace: m.namespace,
        attempt: m.attempt,
    }
}

fn sandbox_state(state: cri::PodSandboxState) -> SandboxState {
    match state {
        cri::PodSandboxState::SandboxReady => SandboxState::Ready,
        cri::PodSandboxState::SandboxNotready => SandboxState::NotReady,
    }
}

fn container_state(state: cri::ContainerState) -> ContainerState {
    match state {
        cri::ContainerState::ContainerCreated => ContainerState::Created,
        cri::ContainerState::ContainerRunning => ContainerState::Running,
        cri::ContainerState::ContainerExited => ContainerState::Exited,
        cri::ContainerState::ContainerUnknown => ContainerState::Unknown,
    }
}

fn image(image: cri::Image) -> Image {
    Image {
        id: image.id,
        repo_tags: image.repo_tags,
        repo_digests: image.repo_digests,
        size: image.size,
    }
}

fn ip(text: &str) -> Option<IpAddr> {
    text.parse().ok()
}

#[async_trait]
impl Runtime for CriRuntime {
    async fn version(&self) -> Result<RuntimeVersion> {
        let request = self.request(
            cri::VersionRequest {
                version: "v1".into(),
            },
            Duration::ZERO,
        );
        let reply = self
            .runtime
            .clone()
            .version(request)
            .await
            .map_err(status("Version"))?
            .into_inner();
        Ok(RuntimeVersion {
            runtime_name: reply.runtime_name,
            runtime_version: reply.runtime_version,
            runtime_api_version: reply.runtime_api_version,
        })
    }

    async fn status(&self) -> Result<RuntimeStatus> {
        let request = self.request(cri::StatusRequest { verbose: false }, Duration::ZERO);
        let reply = self
            .runtime
            .clone()
            .status(request)
            .await
            .map_err(status("Status"))?
            .into_inner();
        let conditions = reply
            .status
            .ok_or_else(|| missing("Status", "status"))?
            .conditions
            .into_iter()
            .map(|c| RuntimeCondition {
                kind: c.r#type,
                status: c.status,
                reason: c.reason,
                message: c.message,
            })
            .collect();
        Ok(RuntimeStatus { conditions })
    }

    async fn image_status(&self, image_ref: &str) -> Result<Option<Image>> {
        Ok(self.cri_image(image_ref).await?.map(image))
    }

    async fn pull_image(&self, image_ref: &str) -> Result<String> {
        let request = self.request(
            cri::PullImageRequest {
                image: Some(image_spec(image_ref)),
                auth: None,
                sandbox_config: None,
            },
            Duration::ZERO,
        );
        let reply = self
            .images
            .clone()
            .pull_image(request)
            .await
            .map_err(status("PullImage"))?
            .into_inner();
        Ok(reply.image_ref)
    }

    async fn list_images(&self) -> Result<Vec<Image>> {
        let request = self.request(cri::ListImagesRequest { filter: None }, Duration::ZERO);
        let reply = self
            .images
            .clone()
            .list_images(request)
            .await
            .map_err(status("ListImages"))?
            .into_inner();
        Ok(reply.images.into_iter().map(image).collect())
    }

    async fn run_sandbox(&self, config: &SandboxConfig) -> Result<String> {
        let request = self.request(
            cri::RunPodSandboxRequest {
                config: Some(sandbox_config(config)),
                runtime_handler: String::new(),
            },
            Duration::ZERO,
        );
        let reply = self
            .runtime
            .clone()
            .run_pod_sandbox(request)
            .await
            .map_err(status("RunPodSandbox"))?
            .into_inner();
        Ok(reply.pod_sandbox_id)
    }

    async fn stop_sandbox(&self, id: &str) -> Result<()> {
        let request = self.request(
            cri::StopPodSandboxRequest {
                pod_sandbox_id: id.to_owned(),
            },
            Duration::ZERO,
        );
        self.runtime
            .clone()
            .stop_pod_sandbox(request)
            .await
            .map_err(status("StopPodSandbox"))?;
        Ok(())
    }

    async fn remove_sandbox(&self, id: &str) -> Result<()> {
        let request = self.request(
            cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.to_owned(),
            },
            Duration::ZERO,
        );
        self.runtime
            .clone()
            .remove_pod_sandbox(request)
            .await
            .map_err(status("RemovePodSandbox"))?;
        Ok(())
    }

    async fn sandbox_status(&self, id: &str) -> Result<SandboxStatus> {
        let request = self.request(
            cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.to_owned(),
                verbose: false,
            },
            Duration::ZERO,
        );
        let reply = self
            .runtime
            .clone()
            .pod_sandbox_status(request)
            .await
            .map_err(status("PodSandboxStatus"))?
            .into_inner();
        let s = reply
            .status
            .ok_or_else(|| missing("PodSandboxStatus", "status"))?;
        let state = sandbox_state(s.state());
        let network_mode = s
            .linux
            .as_ref()
            .and_then(|l| l.namespaces.as_ref())
            .and_then(|n| n.options.as_ref())
            .map(|o| match o.network() {
                cri::NamespaceMode::Node => NamespaceMode::Node,
                cri::NamespaceMode::Container => NamespaceMode::Container,
                _ => NamespaceMode::Pod,
            })
            .unwrap_or_default();
        let network = s.network.unwrap_or_default();
        Ok(SandboxStatus {
            id: s.id,
            metadata: sandbox_metadata(s.metadata),
            state,
            created_at: time(s.created_at),
            ip: ip(&network.ip),
            additional_ips: network
                .additional_ips
                .iter()
                .filter_map(|p| ip(&p.ip))
                .collect(),
            network: network_mode,
            labels: from_map(s.labels),
            annotations: from_map(s.annotations),
        })
    }

    async fn list_sandboxes(&self, filter: &SandboxFilter) -> Result<Vec<Sandbox>> {
        let request = self.request(
            cri::ListPodSandboxRequest {
                filter: Some(cri::PodSandboxFilter {
                    id: filter.id.clone().unwrap_or_default(),
                    state: filter.state.map(|s| cri::PodSandboxStateValue {
                        state: (match s {
                            SandboxState::Ready => cri::PodSandboxState::SandboxReady,
                            SandboxState::NotReady => cri::PodSandboxState::SandboxNotready,
                        }) as i32,
                    }),
                    label_selector: to_map(&filter.labels),
                }),
            },
            Duration::ZERO,
        );
        let reply = self
            .runtime
            .clone()
            .list_pod_sandbox(request)
            .await
            .map_err(status("ListPodSandbox"))?
            .into_inner();
        Ok(reply
            .items
            .into_iter()
            .map(|s| Sandbox {
                state: sandbox_state(s.state()),
                id: s.id,
                metadata: sandbox_metadata(s.metadata),
                created_at: time(s.created_at),
                labels: from_map(s.labels),
                annotations: from_map(s.annotations),
            })
            .collect())
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
        sandbox: &SandboxConfig,
    ) -> Result<String> {
        let user = self.user(config, sandbox).await?;
        let request = self.request(
            cri::CreateContainerRequest {
                pod_sandbox_id: sandbox_id.to_owned(),
                config: Some(container_config(config, user)),
                sandbox_config: Some(sandbox_config(sandbox)),
            },
            Duration::ZERO,
        );
        let reply = self
            .runtime
            .clone()
            .create_container(request)
            .await
            .map_err(status("CreateContainer"))?
            .into_inner();
        Ok(reply.container_id)
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        let request = self.request(
            cri::StartContainerRequest {
                container_id: id.to_owned(),
            },
            Duration::ZERO,
        );
        self.runtime
            .clone()
            .start_container(request)
            .await
            .map_err(status("StartContainer"))?;
        Ok(())
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<()> {
        // CRI's timeout is whole seconds; round up so a grace period is never cut.
        let seconds = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        let request = self.request(
            cri::StopContainerRequest {
                container_id: id.to_owned(),
                timeout: i64::try_from(seconds).unwrap_or(i64::MAX),
            },
            Duration::from_secs(seconds),
        );
        self.runtime
            .clone()
            .stop_container(request)
            .await
            .map_err(status("StopContainer"))?;
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        let request = self.request(
            cri::RemoveContainerRequest {
                container_id: id.to_owned(),
            },
            Duration::ZERO,
        );
        self.runtime
            .clone()
            .remove_container(request)
            .await
            .map_err(status("RemoveContainer"))?;
        Ok(())
    }

    async fn container_status(&self, id: &str) -> Result<ContainerStatus> {
        let request = self.request(
            cri::ContainerStatusRequest {
                container_id: id.to_owned(),
                verbose: false,
            },
            Duration::ZERO,
        );
        let reply = self
            .runtime
            .clone()
            .container_status(request)
            .await
            .map_err(status("ContainerStatus"))?
            .into_inner();
        let s = reply
            .status
            .ok_or_else(|| missing("ContainerStatus", "status"))?;
        let metadata = s.metadata.clone().unwrap_or_default();
        Ok(ContainerStatus {
            state: container_state(s.state()),
            id: s.id,
            name: metadata.name,
            attempt: metadata.attempt,
            created_at: time(s.created_at),
            started_at: time(s.started_at),
            finished_at: time(s.finished_at),
            exit_code: s.exit_code,
            reason: s.reason,
            message: s.message,
            image: s.image.map(|i| i.image).unwrap_or_default(),
            image_ref: s.image_ref,
            log_path: s.log_path,
            labels: from_map(s.labels),
            annotations: from_map(s.annotations),
        })
    }

    async fn list_containers(&self, filter: &ContainerFilter) -> Result<Vec<Container>> {
        let request = self.request(
            cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    id: filter.id.clone().unwrap_or_default(),
                    state: filter.state.map(|s| cri::ContainerStateValue {
                        state: (match s {
                            ContainerState::Created => cri::ContainerState::ContainerCreated,
                            ContainerState::Running => cri::ContainerState::ContainerRunning,
                            ContainerState::Exited => cri::ContainerState::ContainerExited,
                            ContainerState::Unknown => cri::ContainerState::ContainerUnknown,
                        }) as i32,
                    }),
                    pod_sandbox_id: filter.sandbox_id.clone().unwrap_or_default(),
                    label_selector: to_map(&filter.labels),
                }),
            },
            Duration::ZERO,
        );
        let reply = self
            .runtime
            .clone()
            .list_containers(request)
            .await
            .map_err(status("ListContainers"))?
            .into_inner();
        Ok(reply
            .containers
            .into_iter()
            .map(|c| {
                let metadata = c.metadata.clone().unwrap_or_default();
                Container {
                    state: container_state(c.state()),
                    id: c.id,
                    sandbox_id: c.pod_sandbox_id,
                    name: metadata.name,
                    attempt: metadata.attempt,
                    image: c.image.map(|i| i.image).unwrap_or_default(),
                    image_ref: c.image_ref,
                    created_at: time(c.created_at),
                    labels: from_map(c.labels),
                    annotations: from_map(c.annotations),
                }
            })
            .collect())
    }

    async fn exec_sync(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let seconds = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
        let request = self.request(
            cri::ExecSyncRequest {
                container_id: id.to_owned(),
                cmd: command.to_vec(),
                timeout: i64::try_from(seconds).unwrap_or(i64::MAX),
            },
            Duration::from_secs(seconds),
        );
        let reply = self
            .runtime
            .clone()
            .exec_sync(request)
            .await
            .map_err(status("ExecSync"))?
            .into_inner();
        Ok(ExecOutput {
            stdout: reply.stdout,
            stderr: reply.stderr,
            exit_code: reply.exit_code,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edged::runtime::{
        ContainerSecurity, EnvVar, Mount, NamespaceOptions, Resources, SandboxSecurity,
    };

    #[test]
    fn socket_urls_become_paths() {
        assert_eq!(
            socket_path(Path::new("unix:///run/containerd/containerd.sock")),
            PathBuf::from("/run/containerd/containerd.sock")
        );
        assert_eq!(
            socket_path(Path::new("/tmp/x.sock")),
            PathBuf::from("/tmp/x.sock")
        );
    }

    #[test]
    fn zero_times_are_unset() {
        assert_eq!(time(0), None);
        assert_eq!(time(-1), None);
        assert_eq!(
            time(1_500_000_000),
            Some(UNIX_EPOCH + Duration::from_millis(1500))
        );
    }

    #[test]
    fn a_host_network_sandbox_sends_no_hostname() {
        let mut config = SandboxConfig {
            hostname: "web-0".into(),
            cgroup_parent: "/kubepods/besteffort/podu1".into(),
            ..Default::default()
        };
        let pod = sandbox_config(&config);
        assert_eq!(pod.hostname, "web-0");
        let ns = pod
            .linux
            .unwrap()
            .security_context
            .unwrap()
            .namespace_options
            .unwrap();
        assert_eq!(ns.network(), cri::NamespaceMode::Pod);
        assert_eq!(ns.pid(), cri::NamespaceMode::Container);

        config.namespaces = NamespaceOptions {
            network: NamespaceMode::Node,
            ..Default::default()
        };
        let host = sandbox_config(&config);
        assert_eq!(host.hostname, "");
        let linux = host.linux.unwrap();
        assert_eq!(linux.cgroup_parent, "/kubepods/besteffort/podu1");
        let ns = linux.security_context.unwrap().namespace_options.unwrap();
        assert_eq!(ns.network(), cri::NamespaceMode::Node);
    }

    #[test]
    fn container_config_carries_every_field() {
        let config = ContainerConfig {
            name: "app".into(),
            attempt: 2,
            image: "localhost/kedge/busybox:1".into(),
            command: vec!["sleep".into()],
            args: vec!["3600".into()],
            env: vec![EnvVar {
                name: "A".into(),
                value: "1".into(),
            }],
            mounts: vec![Mount {
                container_path: "/data".into(),
                host_path: "/srv/data".into(),
                readonly: true,
                propagation: MountPropagation::HostToContainer,
            }],
            resources: Resources {
                memory_limit_bytes: Some(64 << 20),
                cpu_quota: Some(50_000),
                cpu_period: Some(100_000),
                ..Default::default()
            },
            log_path: "app/2.log".into(),
            ..Default::default()
        };
        let c = container_config(&config, User::default());
        assert_eq!(c.metadata.as_ref().unwrap().attempt, 2);
        assert_eq!(c.image.as_ref().unwrap().image, "localhost/kedge/busybox:1");
        assert_eq!((c.command.len(), c.args.len(), c.envs.len()), (1, 1, 1));
        assert_eq!(
            c.mounts[0].propagation(),
            cri::MountPropagation::PropagationHostToContainer
        );
        let r = c.linux.unwrap().resources.unwrap();
        assert_eq!(
            (
                r.memory_limit_in_bytes,
                r.cpu_quota,
                r.cpu_period,
                r.cpu_shares
            ),
            (64 << 20, 50_000, 100_000, 0)
        );
        assert_eq!(c.log_path, "app/2.log");
    }

    #[test]
    fn sandbox_security_reaches_cri_and_a_group_needs_a_user() {
        let mut config = SandboxConfig {
            security: SandboxSecurity {
                privileged: true,
                run_as_user: Some(1000),
                run_as_group: Some(3000),
                supplemental_groups: vec![4000],
            },
            ..Default::default()
        };
        let sc = sandbox_config(&config)
            .linux
            .unwrap()
            .security_context
            .unwrap();
        assert!(sc.privileged);
        assert_eq!(sc.run_as_user.map(|u| u.value), Some(1000));
        assert_eq!(sc.run_as_group.map(|g| g.value), Some(3000));
        assert_eq!(sc.supplemental_groups, [4000]);

        config.security.run_as_user = None;
        let sc = sandbox_config(&config)
            .linux
            .unwrap()
            .security_context
            .unwrap();
        assert_eq!(
            (sc.run_as_user, sc.run_as_group),
            (None, None),
            "containerd refuses a group without a user"
        );
    }

    #[test]
    fn container_security_reaches_cri() {
        let config = ContainerConfig {
            security: ContainerSecurity {
                run_as_user: Some(1000),
                run_as_group: Some(3000),
                run_as_non_root: true,
                supplemental_groups: vec![4000],
                privileged: true,
                readonly_rootfs: true,
                add_capabilities: vec!["NET_ADMIN".into()],
                drop_capabilities: vec!["ALL".into()],
                no_new_privs: true,
            },
            ..Default::default()
        };
        let user = User {
            uid: Some(1000),
            name: String::new(),
        };
        let sc = container_config(&config, user)
            .linux
            .unwrap()
            .security_context
            .unwrap();
        assert_eq!(sc.run_as_user.map(|u| u.value), Some(1000));
        assert_eq!(sc.run_as_group.map(|g| g.value), Some(3000));
        assert_eq!(sc.run_as_username, "");
        assert_eq!(sc.supplemental_groups, [4000]);
        assert!(sc.privileged && sc.readonly_rootfs && sc.no_new_privs);
        let caps = sc.capabilities.unwrap();
        // containerd prefixes CAP_ itself: "CAP_NET_ADMIN" would be lost.
        assert_eq!(caps.add_capabilities, ["NET_ADMIN"]);
        assert_eq!(caps.drop_capabilities, ["ALL"]);

        let plain = container_config(&ContainerConfig::default(), User::default())
            .linux
            .unwrap()
            .security_context
            .unwrap();
        assert_eq!(plain, cri::LinuxContainerSecurityContext::default());

        let named = User {
            uid: None,
            name: "nobody".into(),
        };
        let sc = container_config(&ContainerConfig::default(), named)
            .linux
            .unwrap()
            .security_context
            .unwrap();
        assert_eq!(
            (sc.run_as_user, sc.run_as_username.as_str()),
            (None, "nobody")
        );
    }

    #[test]
    fn the_image_user_is_its_uid_else_its_name_else_root() {
        let image = |uid: Option<i64>, name: &str| cri::Image {
            uid: uid.map(int64),
            username: name.into(),
            ..Default::default()
        };
        let user = |uid: Option<i64>, name: &str| User {
            uid,
            name: name.into(),
        };
        assert_eq!(image_user(&image(Some(65532), "")), user(Some(65532), ""));
        assert_eq!(image_user(&image(None, "app")), user(None, "app"));
        assert_eq!(image_user(&image(None, "")), user(Some(0), ""));
    }

    #[test]
    fn run_as_non_root_refuses_root_and_user_names() {
        let config = ContainerConfig {
            name: "app".into(),
            ..Default::default()
        };
        let sandbox = SandboxConfig {
            metadata: SandboxMetadata {
                name: "web".into(),
                namespace: "prod".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        let check = |uid: Option<i64>, name: &str| {
            let user = User {
                uid,
                name: name.into(),
            };
            verify_non_root(&user, &config, &sandbox)
        };
        assert!(check(Some(1000), "").is_ok());
        let root = check(Some(0), "").expect_err("root");
        assert!(matches!(root, RuntimeError::Security(_)), "{root:?}");
        assert_eq!(
            root.to_string(),
            "container has runAsNonRoot and image will run as root (pod: \"prod/web\", \
             container: app)"
        );
        let named = check(None, "app").expect_err("a name cannot be verified");
        assert!(
            named.to_string().contains("non-numeric user (app)"),
            "{named}"
        );
    }

    #[tokio::test]
    async fn connecting_to_a_missing_socket_fails_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("none.sock");
        let error = CriRuntime::connect(&socket, CriOptions::default())
            .await
            .expect_err("no socket");
        assert!(matches!(error, RuntimeError::Connect { .. }), "{error:?}");
        assert!(error.to_string().contains("none.sock"), "{error}");
    }
}
