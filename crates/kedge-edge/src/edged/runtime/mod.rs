//! The container runtime as edged's pod manager sees it.
//!
//! [`Runtime`] is the set of calls a kubelet-like pod manager makes: the
//! runtime's version and readiness, images, pod sandboxes, containers and
//! `exec_sync` for exec probes. Its arguments and results are plain Rust
//! types of this module, not CRI's generated messages, so that an
//! implementation needs no gRPC:
//!
//! - [`CriRuntime`] talks CRI v1 to containerd over its unix socket;
//! - [`FakeRuntime`] keeps everything in memory, for hollow nodes and for
//!   the pod manager's unit tests.
//!
//! The model is CRI's: a pod is a *sandbox* (its network namespace, IP and
//! cgroup parent, held by a pause process) in which *containers* are
//! created, started, stopped and removed one by one. Sandboxes and
//! containers are found again after an edged restart by their labels,
//! which is why [`SandboxFilter`] and [`ContainerFilter`] select by label.

mod cri;
mod fake;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

pub use cri::{CriOptions, CriRuntime};
pub use fake::{ExecHandler, FakeRuntime};

/// Labels or annotations: key to value, in key order.
pub type Labels = BTreeMap<String, String>;

/// What a runtime call returns.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// Why a runtime call failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The runtime's socket could not be reached.
    #[error("cannot connect to the container runtime at {endpoint}")]
    Connect {
        /// The socket path.
        endpoint: String,
        /// What the connection attempt returned.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The runtime answered a call with an error status (CRI's gRPC code
    /// and message, kept as they came).
    #[error("{call}: {code:?}: {message}")]
    Status {
        /// The call, e.g. `RunPodSandbox`.
        call: &'static str,
        /// The gRPC status code; `DeadlineExceeded` or `Cancelled` when the
        /// call's deadline passed.
        code: tonic::Code,
        /// The runtime's message.
        message: String,
    },
    /// No sandbox, container or image with this id or name.
    #[error("{kind} {id} not found")]
    NotFound {
        /// `sandbox`, `container` or `image`.
        kind: &'static str,
        /// The id or image reference asked for.
        id: String,
    },
    /// The call is not allowed in the object's current state, e.g.
    /// starting a container that already ran.
    #[error("{0}")]
    InvalidState(String),
    /// The container's security settings cannot be honoured, e.g.
    /// [`ContainerSecurity::run_as_non_root`] for an image that runs as root.
    #[error("{0}")]
    Security(String),
    /// The runtime's answer lacked something it must carry.
    #[error("{call}: invalid response: {detail}")]
    InvalidResponse {
        /// The call.
        call: &'static str,
        /// What was wrong.
        detail: String,
    },
}

impl RuntimeError {
    /// Whether the object asked for does not exist (a CRI `NotFound`
    /// status or [`RuntimeError::NotFound`]): the pod manager treats such
    /// a sandbox or container as already gone.
    pub fn is_not_found(&self) -> bool {
        match self {
            Self::NotFound { .. } => true,
            Self::Status { code, .. } => *code == tonic::Code::NotFound,
            _ => false,
        }
    }
}

/// The runtime's name and versions (CRI `Version`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeVersion {
    /// E.g. `containerd`.
    pub runtime_name: String,
    /// E.g. `1.6.20~ds1`; the node reports `<name>://<version>`.
    pub runtime_version: String,
    /// The CRI version the runtime speaks, `v1`.
    pub runtime_api_version: String,
}

/// One readiness condition the runtime reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeCondition {
    /// `RuntimeReady`, `NetworkReady` or a runtime-specific name.
    pub kind: String,
    /// Whether the condition holds.
    pub status: bool,
    /// A CamelCase reason when it does not hold.
    pub reason: String,
    /// A human-readable explanation.
    pub message: String,
}

/// The runtime's readiness (CRI `Status`), which makes the node Ready.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuntimeStatus {
    /// Every condition reported.
    pub conditions: Vec<RuntimeCondition>,
}

impl RuntimeStatus {
    /// The `RuntimeReady` condition: containers can be run.
    pub const RUNTIME_READY: &str = "RuntimeReady";
    /// The `NetworkReady` condition: pod networking (CNI) is configured.
    pub const NETWORK_READY: &str = "NetworkReady";

    /// The condition named `kind`, if reported.
    pub fn condition(&self, kind: &str) -> Option<&RuntimeCondition> {
        self.conditions.iter().find(|c| c.kind == kind)
    }

    /// Whether `RuntimeReady` is reported and true.
    pub fn runtime_ready(&self) -> bool {
        self.condition(Self::RUNTIME_READY)
            .is_some_and(|c| c.status)
    }

    /// Whether `NetworkReady` is reported and true. Until it is, only
    /// host-network sandboxes can run.
    pub fn network_ready(&self) -> bool {
        self.condition(Self::NETWORK_READY)
            .is_some_and(|c| c.status)
    }
}

/// An image the runtime holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Image {
    /// The image id (`sha256:` of its config).
    pub id: String,
    /// The references naming it, e.g. `localhost/kedge/busybox:1`.
    pub repo_tags: Vec<String>,
    /// The `name@sha256:` references of it.
    pub repo_digests: Vec<String>,
    /// Its size in bytes.
    pub size: u64,
}

/// Who a pod sandbox belongs to; also the identity of its container's
/// pod in the runtime's listings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SandboxMetadata {
    /// The pod's name.
    pub name: String,
    /// The pod's uid.
    pub uid: String,
    /// The pod's namespace.
    pub namespace: String,
    /// How many sandboxes the pod had before this one.
    pub attempt: u32,
}

/// Whose namespace a pod's containers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NamespaceMode {
    /// One namespace for the whole pod (the sandbox's).
    #[default]
    Pod,
    /// One namespace per container.
    Container,
    /// The host's namespace (`hostNetwork`, `hostPID`, `hostIPC`).
    Node,
}

/// The namespaces of a pod sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceOptions {
    /// Network: [`NamespaceMode::Pod`] (an IP from CNI) or
    /// [`NamespaceMode::Node`] (`hostNetwork`).
    pub network: NamespaceMode,
    /// Process ids: [`NamespaceMode::Container`] unless the pod shares its
    /// process namespace ([`NamespaceMode::Pod`]) or uses the host's.
    pub pid: NamespaceMode,
    /// IPC: [`NamespaceMode::Pod`] or [`NamespaceMode::Node`].
    pub ipc: NamespaceMode,
}

impl Default for NamespaceOptions {
    fn default() -> Self {
        Self {
            network: NamespaceMode::Pod,
            pid: NamespaceMode::Container,
            ipc: NamespaceMode::Pod,
        }
    }
}

/// The DNS settings written into a sandbox's `resolv.conf`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DnsConfig {
    /// Name servers.
    pub servers: Vec<String>,
    /// Search domains.
    pub searches: Vec<String>,
    /// Resolver options, e.g. `ndots:5`.
    pub options: Vec<String>,
}

/// A port protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

/// A host port forwarded to a pod's port (`hostPort`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortMapping {
    /// The protocol.
    pub protocol: Protocol,
    /// The port inside the pod.
    pub container_port: u16,
    /// The port on the host.
    pub host_port: u16,
    /// The host address to bind, empty for all.
    pub host_ip: String,
}

/// How to create a pod sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SandboxConfig {
    /// The pod it belongs to.
    pub metadata: SandboxMetadata,
    /// The pod's hostname. Ignored (sent empty) with a host network: runc
    /// cannot set a hostname without its own UTS namespace.
    pub hostname: String,
    /// The directory under which containers' logs go
    /// (`/var/log/pods/<ns>_<name>_<uid>`); empty for none.
    pub log_directory: String,
    /// DNS settings; `None` keeps the runtime's default.
    pub dns: Option<DnsConfig>,
    /// Host ports.
    pub port_mappings: Vec<PortMapping>,
    /// Labels: the pod's identity (`io.kubernetes.pod.uid` ...) and the
    /// pod's labels; listings filter on them.
    pub labels: Labels,
    /// Annotations, kept with the sandbox.
    pub annotations: Labels,
    /// The cgroup parent as a cgroupfs path (`/kubepods/burstable/pod<uid>`);
    /// empty for the runtime's default.
    pub cgroup_parent: String,
    /// The namespaces.
    pub namespaces: NamespaceOptions,
    /// Namespaced sysctls.
    pub sysctls: Labels,
    /// The sandbox's security settings (the pod's `securityContext`).
    pub security: SandboxSecurity,
}

/// A pod sandbox's Linux security settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SandboxSecurity {
    /// Privileged: required for any privileged container in the pod (CRI
    /// runtimes refuse one in a sandbox that is not).
    pub privileged: bool,
    /// The uid of the sandbox's own process; `None` for the image's user.
    pub run_as_user: Option<i64>,
    /// Its gid; only applied together with `run_as_user` (CRI runtimes
    /// refuse a group without a user).
    pub run_as_group: Option<i64>,
    /// Further gids of its process.
    pub supplemental_groups: Vec<i64>,
}

impl SandboxConfig {
    /// Whether the sandbox uses the host's network.
    pub fn host_network(&self) -> bool {
        self.namespaces.network == NamespaceMode::Node
    }
}

/// A pod sandbox's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxState {
    /// Running, its network set up.
    Ready,
    /// Stopped, or never fully started.
    NotReady,
}

/// A pod sandbox as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// The runtime's id for it.
    pub id: String,
    /// Whose it is.
    pub metadata: SandboxMetadata,
    /// Its state.
    pub state: SandboxState,
    /// When it was created.
    pub created_at: Option<SystemTime>,
    /// Its labels.
    pub labels: Labels,
    /// Its annotations.
    pub annotations: Labels,
}

/// A pod sandbox's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxStatus {
    /// The runtime's id for it.
    pub id: String,
    /// Whose it is.
    pub metadata: SandboxMetadata,
    /// Its state.
    pub state: SandboxState,
    /// When it was created.
    pub created_at: Option<SystemTime>,
    /// The pod IP; `None` with a host network (the node's IP is the pod's)
    /// or before the network is up.
    pub ip: Option<IpAddr>,
    /// Further pod IPs (dual stack).
    pub additional_ips: Vec<IpAddr>,
    /// The network namespace mode it was created with.
    pub network: NamespaceMode,
    /// Its labels.
    pub labels: Labels,
    /// Its annotations.
    pub annotations: Labels,
}

/// Which sandboxes [`Runtime::list_sandboxes`] returns: all that match
/// every field given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SandboxFilter {
    /// Only this id.
    pub id: Option<String>,
    /// Only in this state.
    pub state: Option<SandboxState>,
    /// Only those carrying all these labels.
    pub labels: Labels,
}

/// An environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EnvVar {
    /// The name.
    pub name: String,
    /// The value.
    pub value: String,
}

/// How a mount propagates between host and container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MountPropagation {
    /// No propagation.
    #[default]
    Private,
    /// Host mounts appear in the container (`HostToContainer`).
    HostToContainer,
    /// Both ways (`Bidirectional`).
    Bidirectional,
}

/// A host path mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mount {
    /// Where it appears in the container.
    pub container_path: String,
    /// The host path.
    pub host_path: String,
    /// Read-only.
    pub readonly: bool,
    /// Propagation.
    pub propagation: MountPropagation,
}

/// A container's Linux resources. `None` leaves the runtime's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resources {
    /// CFS period in microseconds (100 000).
    pub cpu_period: Option<i64>,
    /// CFS quota in microseconds per period (the CPU limit).
    pub cpu_quota: Option<i64>,
    /// CPU shares (the CPU request, 1024 per core).
    pub cpu_shares: Option<i64>,
    /// The memory limit in bytes.
    pub memory_limit_bytes: Option<i64>,
    /// The OOM score adjustment (by QoS class).
    pub oom_score_adj: Option<i64>,
}

/// A container's Linux security settings: its `securityContext` over the
/// pod's.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerSecurity {
    /// The uid its process runs as; `None` for the image's user.
    pub run_as_user: Option<i64>,
    /// The gid its process runs as; `None` for the user's group. Without
    /// `run_as_user` the image's user is looked up, as the kubelet does.
    pub run_as_group: Option<i64>,
    /// Never run as root: without `run_as_user`, a runtime that knows the
    /// image's user refuses the container
    /// ([`RuntimeError::Security`]) when that user is root, unset or not
    /// numeric.
    pub run_as_non_root: bool,
    /// Further gids of its process.
    pub supplemental_groups: Vec<i64>,
    /// Privileged: every capability and host device. The sandbox must be
    /// privileged too ([`SandboxSecurity::privileged`]).
    pub privileged: bool,
    /// The root filesystem is mounted read-only.
    pub readonly_rootfs: bool,
    /// Capabilities to add, named as in Kubernetes and CRI (`NET_ADMIN`,
    /// or `ALL`); the runtime adds the `CAP_` prefix.
    pub add_capabilities: Vec<String>,
    /// Capabilities to drop, named likewise.
    pub drop_capabilities: Vec<String>,
    /// Sets `no_new_privs`: no privilege gain through setuid binaries or
    /// file capabilities (`allowPrivilegeEscalation: false`).
    pub no_new_privs: bool,
}

/// How to create a container in a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerConfig {
    /// The container's name in its pod.
    pub name: String,
    /// How many times this container ran before (its restart count).
    pub attempt: u32,
    /// The image reference; it must be present (see [`Runtime::pull_image`]).
    pub image: String,
    /// The entrypoint; empty for the image's.
    pub command: Vec<String>,
    /// The arguments; empty for the image's.
    pub args: Vec<String>,
    /// The working directory; empty for the image's.
    pub working_dir: String,
    /// The environment.
    pub env: Vec<EnvVar>,
    /// Host paths to mount.
    pub mounts: Vec<Mount>,
    /// Resource limits.
    pub resources: Resources,
    /// Security settings.
    pub security: ContainerSecurity,
    /// The log file, relative to the sandbox's log directory
    /// (`<container>/<attempt>.log`); empty for none.
    pub log_path: String,
    /// Labels: the container's identity (`io.kubernetes.container.name`,
    /// the pod's uid ...); listings filter on them.
    pub labels: Labels,
    /// Annotations, e.g. the spec hash and restart count.
    pub annotations: Labels,
}

/// A container's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Ran and exited; see the exit code.
    Exited,
    /// The runtime lost track of it.
    Unknown,
}

/// A container as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// The runtime's id for it.
    pub id: String,
    /// The sandbox it runs in.
    pub sandbox_id: String,
    /// Its name in the pod.
    pub name: String,
    /// Its attempt (restart count).
    pub attempt: u32,
    /// The image as asked for.
    pub image: String,
    /// The image id it runs.
    pub image_ref: String,
    /// Its state.
    pub state: ContainerState,
    /// When it was created.
    pub created_at: Option<SystemTime>,
    /// Its labels.
    pub labels: Labels,
    /// Its annotations.
    pub annotations: Labels,
}

/// A container's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStatus {
    /// The runtime's id for it.
    pub id: String,
    /// Its name in the pod.
    pub name: String,
    /// Its attempt (restart count).
    pub attempt: u32,
    /// Its state.
    pub state: ContainerState,
    /// When it was created.
    pub created_at: Option<SystemTime>,
    /// When it started, once it has.
    pub started_at: Option<SystemTime>,
    /// When it exited, once it has.
    pub finished_at: Option<SystemTime>,
    /// The exit code, once exited (128 + signal when killed: 137, 143).
    pub exit_code: i32,
    /// Why it is in this state, e.g. `Completed`, `Error`, `OOMKilled`.
    pub reason: String,
    /// More about the state.
    pub message: String,
    /// The image as asked for.
    pub image: String,
    /// The image id it runs.
    pub image_ref: String,
    /// Its log file (absolute), empty if none.
    pub log_path: String,
    /// Its labels.
    pub labels: Labels,
    /// Its annotations.
    pub annotations: Labels,
}

/// Which containers [`Runtime::list_containers`] returns: all that match
/// every field given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerFilter {
    /// Only this id.
    pub id: Option<String>,
    /// Only in this sandbox.
    pub sandbox_id: Option<String>,
    /// Only in this state.
    pub state: Option<ContainerState>,
    /// Only those carrying all these labels.
    pub labels: Labels,
}

/// What a command run with [`Runtime::exec_sync`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecOutput {
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: Vec<u8>,
    /// Its exit code.
    pub exit_code: i32,
}

/// A container runtime, as edged's pod manager drives it.
///
/// Calls may be made concurrently. Ids are the runtime's; names, uids and
/// labels are the pod manager's. Removing what does not exist succeeds;
/// stopping or inspecting it fails with an error for which
/// [`RuntimeError::is_not_found`] holds.
#[async_trait]
pub trait Runtime: Send + Sync {
    /// The runtime's name and versions.
    async fn version(&self) -> Result<RuntimeVersion>;

    /// The runtime's readiness conditions.
    async fn status(&self) -> Result<RuntimeStatus>;

    /// The image `image` refers to, `None` if the runtime does not have it.
    async fn image_status(&self, image: &str) -> Result<Option<Image>>;

    /// Pulls `image`; returns the image id (reference) it resolved to.
    async fn pull_image(&self, image: &str) -> Result<String>;

    /// Every image the runtime has.
    async fn list_images(&self) -> Result<Vec<Image>>;

    /// Creates and starts a sandbox, its network set up; returns its id.
    async fn run_sandbox(&self, config: &SandboxConfig) -> Result<String>;

    /// Stops a sandbox: kills its containers and tears its network down.
    /// Stopping a stopped sandbox succeeds.
    async fn stop_sandbox(&self, id: &str) -> Result<()>;

    /// Removes a stopped sandbox and its containers (stopping them first
    /// if needed).
    async fn remove_sandbox(&self, id: &str) -> Result<()>;

    /// A sandbox's status, with its IP.
    async fn sandbox_status(&self, id: &str) -> Result<SandboxStatus>;

    /// The sandboxes that match `filter`.
    async fn list_sandboxes(&self, filter: &SandboxFilter) -> Result<Vec<Sandbox>>;

    /// Creates a container in sandbox `sandbox_id` (which was created from
    /// `sandbox`); returns its id.
    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
        sandbox: &SandboxConfig,
    ) -> Result<String>;

    /// Starts a created container.
    async fn start_container(&self, id: &str) -> Result<()>;

    /// Stops a container: SIGTERM (or its stop signal), then SIGKILL after
    /// `grace`. Stopping an exited container succeeds.
    async fn stop_container(&self, id: &str, grace: Duration) -> Result<()>;

    /// Removes a container (stopping it first if it runs).
    async fn remove_container(&self, id: &str) -> Result<()>;

    /// A container's status.
    async fn container_status(&self, id: &str) -> Result<ContainerStatus>;

    /// The containers that match `filter`.
    async fn list_containers(&self, filter: &ContainerFilter) -> Result<Vec<Container>>;

    /// Runs `command` in a running container and waits for it, at most
    /// `timeout` (exec probes; zero leaves only the call's own deadline).
    async fn exec_sync(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput>;
}

/// Whether `labels` carries every label of `selector`.
pub(crate) fn labels_match(labels: &Labels, selector: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_selector_matches_labels_that_carry_all_its_pairs() {
        let have = labels(&[("app", "web"), ("tier", "front")]);
        assert!(labels_match(&have, &Labels::new()));
        assert!(labels_match(&have, &labels(&[("app", "web")])));
        assert!(!labels_match(&have, &labels(&[("app", "db")])));
        assert!(!labels_match(&have, &labels(&[("zone", "a")])));
    }

    #[test]
    fn not_found_covers_the_cri_code_and_our_own_variant() {
        let cri = RuntimeError::Status {
            call: "ContainerStatus",
            code: tonic::Code::NotFound,
            message: "not found".into(),
        };
        let ours = RuntimeError::NotFound {
            kind: "container",
            id: "c1".into(),
        };
        let other = RuntimeError::Status {
            call: "ContainerStatus",
            code: tonic::Code::Unavailable,
            message: "gone".into(),
        };
        assert!(cri.is_not_found());
        assert!(ours.is_not_found());
        assert!(!other.is_not_found());
        assert_eq!(
            cri.to_string(),
            "ContainerStatus: NotFound: not found",
            "code and message are kept"
        );
    }

    #[test]
    fn readiness_reads_the_two_conditions() {
        let status = RuntimeStatus {
            conditions: vec![
                RuntimeCondition {
                    kind: RuntimeStatus::RUNTIME_READY.into(),
                    status: true,
                    reason: String::new(),
                    message: String::new(),
                },
                RuntimeCondition {
                    kind: RuntimeStatus::NETWORK_READY.into(),
                    status: false,
                    reason: "NetworkPluginNotReady".into(),
                    message: "cni config uninitialized".into(),
                },
            ],
        };
        assert!(status.runtime_ready());
        assert!(!status.network_ready());
        assert!(!RuntimeStatus::default().runtime_ready());
    }
}
