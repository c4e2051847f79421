//! `edgecore.yaml`: the configuration of edgecore
//! (`edgecore.config.kubeedge.io/v1alpha2`, kind `EdgeCore`).
//!
//! The types follow KubeEdge v1.15's
//! `pkg/apis/componentconfig/edgecore/v1alpha2` field for field, with the
//! same YAML names and defaults. As in KubeEdge, the fields of
//! [`TailoredKubeletFlag`] and [`ContainerRuntimeOptions`] are written
//! inline in `modules.edged`, beside `tailoredKubeletConfig`. The top-level
//! `monitorServer` section is Kedge's own.

mod kubelet;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

pub use kubelet::{
    FormatOptions, JsonOptions, LoggingConfiguration, MemoryReservation, MemorySwapConfiguration,
    Quantity, ShutdownGracePeriodByPodPriority, TailoredKubeletConfiguration, Taint, VModuleItem,
};

use super::document::{self, MinConfig, TypeMeta};
use super::duration::GoDuration;
use super::error::ConfigError;
use super::host::HostInfo;
use super::validate::{Validator, is_dns1123_subdomain};
use super::{DEFAULT_CA_FILE, DEFAULT_CERT_FILE, DEFAULT_KEY_FILE, MonitorServer};

/// The `apiVersion` of edgecore.yaml.
pub const API_VERSION: &str = "edgecore.config.kubeedge.io/v1alpha2";
/// The `kind` of edgecore.yaml.
pub const KIND: &str = "EdgeCore";

const TYPE_META: TypeMeta = TypeMeta {
    kind: KIND,
    api_version: API_VERSION,
    also_accepted: &[],
};

/// The fields `edgecore --minconfig` prints (KubeEdge's
/// `NewMinEdgeCoreConfig`).
const MIN_CONFIG_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "database.dataSource",
    "modules.edged",
    "modules.edgeHub.heartbeat",
    "modules.edgeHub.tlsCaFile",
    "modules.edgeHub.tlsCertFile",
    "modules.edgeHub.tlsPrivateKeyFile",
    "modules.edgeHub.websocket",
    "modules.edgeHub.token",
    "modules.edgeHub.httpServer",
    "modules.eventBus.mqttQOS",
    "modules.eventBus.mqttRetain",
    "modules.eventBus.mqttServerInternal",
    "modules.eventBus.mqttServerExternal",
    "modules.eventBus.mqttSubClientID",
    "modules.eventBus.mqttPubClientID",
    "modules.eventBus.mqttUsername",
    "modules.eventBus.mqttPassword",
    "modules.eventBus.mqttMode",
];

/// The whole of edgecore.yaml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EdgeCoreConfig {
    /// Always `edgecore.config.kubeedge.io/v1alpha2`.
    pub api_version: String,
    /// Always `EdgeCore`.
    pub kind: String,
    /// The local SQLite database.
    pub database: DataBase,
    /// The edgecore modules and their settings.
    pub modules: Modules,
    /// Feature gates by name. Default empty: every gate at its default.
    pub feature_gates: BTreeMap<String, bool>,
    /// Kedge only: Prometheus metrics, health checks and profiling. Default
    /// bind address `127.0.0.1:10352`, profiling off.
    pub monitor_server: MonitorServer,
}

/// The local database edgecore keeps its metadata in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataBase {
    /// Database driver; only `sqlite3` is supported. Default `sqlite3`.
    pub driver_name: String,
    /// Alias of the connection. Default `default`.
    pub alias_name: String,
    /// Path of the database file. Default `/var/lib/kubeedge/edgecore.db`.
    pub data_source: String,
}

impl Default for DataBase {
    fn default() -> Self {
        Self {
            driver_name: "sqlite3".to_owned(),
            alias_name: "default".to_owned(),
            data_source: "/var/lib/kubeedge/edgecore.db".to_owned(),
        }
    }
}

/// The edgecore modules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Modules {
    /// Edged: the kubelet of the edge node.
    pub edged: Edged,
    /// EdgeHub: the connection to cloudcore's CloudHub.
    pub edge_hub: EdgeHub,
    /// EventBus: the MQTT client for devices and applications.
    pub event_bus: EventBus,
    /// MetaManager: the local metadata store, and MetaServer.
    pub meta_manager: MetaManager,
    /// ServiceBus: HTTP calls from the cloud to edge applications (off by
    /// default).
    pub service_bus: ServiceBus,
    /// DeviceTwin: device state and twins.
    pub device_twin: DeviceTwin,
    /// DBTest: a test module (off by default).
    pub db_test: DbTest,
    /// EdgeStream: the tunnel for `kubectl logs/exec` (off by default).
    pub edge_stream: EdgeStream,
}

/// Edged: the kubelet of the edge node.
///
/// In the file the fields of [`TailoredKubeletFlag`] (and its
/// [`ContainerRuntimeOptions`]) sit directly in `modules.edged`, as Go's
/// embedded structs put them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "EdgedRepr", into = "EdgedRepr")]
pub struct Edged {
    /// Runs the module (`enable`). Default `true`.
    pub enable: bool,
    /// Kubelet settings (`tailoredKubeletConfig`).
    pub tailored_kubelet_config: TailoredKubeletConfiguration,
    /// Kubelet command-line settings, written inline in `modules.edged`.
    pub tailored_kubelet_flag: TailoredKubeletFlag,
    /// Network interface whose address becomes the node IP, overriding
    /// `nodeIP` (`customInterfaceName`). Default empty.
    pub custom_interface_name: String,
    /// Namespace the node is registered in (`registerNodeNamespace`).
    /// Default `default`.
    pub register_node_namespace: String,
}

/// Kubelet command-line settings of edged; in the file they sit directly
/// in `modules.edged`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailoredKubeletFlag {
    /// Node name (`hostnameOverride`). Default: the host name if it is a
    /// valid node name, else `default-edge-node`.
    pub hostname_override: String,
    /// Node IP address (`nodeIP`). Default empty: edged uses the host's
    /// primary address.
    pub node_ip: String,
    /// Container runtime options, also inline in `modules.edged`.
    pub container_runtime_options: ContainerRuntimeOptions,
    /// Directory of edged's files (`rootDirectory`). Default
    /// `/var/lib/edged`.
    pub root_directory: String,
    /// Register the node (`registerNode`, deprecated in favour of
    /// `tailoredKubeletConfig.registerNode`). Default `true`.
    pub register_node: bool,
    /// Taints to register with (`registerWithTaints`, deprecated in favour
    /// of `tailoredKubeletConfig.registerWithTaints`). Default empty.
    pub register_with_taints: Vec<Taint>,
    /// Runs as a Windows service (`windowsService`). Default `false`.
    pub windows_service: bool,
    /// Windows priority class (`windowsPriorityClass`). Default empty.
    pub windows_priority_class: String,
    /// CRI runtime endpoint (`remoteRuntimeEndpoint`). Default
    /// `unix:///run/containerd/containerd.sock`.
    pub remote_runtime_endpoint: String,
    /// CRI image endpoint (`remoteImageEndpoint`). Default
    /// `unix:///run/containerd/containerd.sock`.
    pub remote_image_endpoint: String,
    /// Mounter binary (`experimentalMounterPath`). Default empty.
    pub experimental_mounter_path: String,
    /// Leave hard eviction out of node allocatable
    /// (`experimentalNodeAllocatableIgnoreEvictionThreshold`). Default
    /// `false`.
    pub experimental_node_allocatable_ignore_eviction_threshold: bool,
    /// Labels added to the node at registration (`nodeLabels`). Default
    /// empty.
    pub node_labels: BTreeMap<String, String>,
    /// Minimum age of a finished container before GC (`minimumGCAge`).
    /// Default `0s`.
    pub minimum_gc_age: GoDuration,
    /// Old instances kept per container (`maxPerPodContainerCount`).
    /// Default 1.
    pub max_per_pod_container_count: i32,
    /// Old container instances kept in all (`maxContainerCount`; -1: no
    /// limit). Default -1.
    pub max_container_count: i32,
    /// Namespace of the master services injected into pods
    /// (`masterServiceNamespace`). Default `default`.
    pub master_service_namespace: String,
    /// Register the node as schedulable (`registerSchedulable`). Default
    /// `true`.
    pub register_schedulable: bool,
    /// Keep volumes of terminated pods mounted
    /// (`keepTerminatedPodVolumes`). Default `false`.
    pub keep_terminated_pod_volumes: bool,
    /// `RuntimeDefault` seccomp profile for all workloads
    /// (`seccompDefault`). Default `false`.
    pub seccomp_default: bool,
}

/// Container runtime options of edged; in the file they sit directly in
/// `modules.edged`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRuntimeOptions {
    /// Container runtime (`containerRuntime`); KubeEdge knows only
    /// `remote` (CRI). Default `remote`.
    pub container_runtime: String,
    /// Cgroup the runtime is isolated in (`runtimeCgroups`). Default empty.
    pub runtime_cgroups: String,
    /// Pause image of pod sandboxes (`podSandboxImage`). Default
    /// `kubeedge/pause:3.6`.
    pub pod_sandbox_image: String,
}

/// The file form of [`Edged`]: every field at one level, as Go's embedded
/// structs are written.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EdgedRepr {
    enable: bool,
    tailored_kubelet_config: TailoredKubeletConfiguration,
    hostname_override: String,
    #[serde(rename = "nodeIP")]
    node_ip: String,
    container_runtime: String,
    runtime_cgroups: String,
    pod_sandbox_image: String,
    root_directory: String,
    register_node: bool,
    register_with_taints: Vec<Taint>,
    windows_service: bool,
    windows_priority_class: String,
    remote_runtime_endpoint: String,
    remote_image_endpoint: String,
    experimental_mounter_path: String,
    experimental_node_allocatable_ignore_eviction_threshold: bool,
    node_labels: BTreeMap<String, String>,
    #[serde(rename = "minimumGCAge")]
    minimum_gc_age: GoDuration,
    max_per_pod_container_count: i32,
    max_container_count: i32,
    master_service_namespace: String,
    register_schedulable: bool,
    keep_terminated_pod_volumes: bool,
    seccomp_default: bool,
    custom_interface_name: String,
    register_node_namespace: String,
}

impl From<EdgedRepr> for Edged {
    fn from(r: EdgedRepr) -> Self {
        Self {
            enable: r.enable,
            tailored_kubelet_config: r.tailored_kubelet_config,
            tailored_kubelet_flag: TailoredKubeletFlag {
                hostname_override: r.hostname_override,
                node_ip: r.node_ip,
                container_runtime_options: ContainerRuntimeOptions {
                    container_runtime: r.container_runtime,
                    runtime_cgroups: r.runtime_cgroups,
                    pod_sandbox_image: r.pod_sandbox_image,
                },
                root_directory: r.root_directory,
                register_node: r.register_node,
                register_with_taints: r.register_with_taints,
                windows_service: r.windows_service,
                windows_priority_class: r.windows_priority_class,
                remote_runtime_endpoint: r.remote_runtime_endpoint,
                remote_image_endpoint: r.remote_image_endpoint,
                experimental_mounter_path: r.experimental_mounter_path,
                experimental_node_allocatable_ignore_eviction_threshold: r
                    .experimental_node_allocatable_ignore_eviction_threshold,
                node_labels: r.node_labels,
                minimum_gc_age: r.minimum_gc_age,
                max_per_pod_container_count: r.max_per_pod_container_count,
                max_container_count: r.max_container_count,
                master_service_namespace: r.master_service_namespace,
                register_schedulable: r.register_schedulable,
                keep_terminated_pod_volumes: r.keep_terminated_pod_volumes,
                seccomp_default: r.seccomp_default,
            },
            custom_interface_name: r.custom_interface_name,
            register_node_namespace: r.register_node_namespace,
        }
    }
}

impl From<Edged> for EdgedRepr {
    fn from(e: Edged) -> Self {
        let f = e.tailored_kubelet_flag;
        let c = f.container_runtime_options;
        Self {
            enable: e.enable,
            tailored_kubelet_config: e.tailored_kubelet_config,
            hostname_override: f.hostname_override,
            node_ip: f.node_ip,
            container_runtime: c.container_runtime,
            runtime_cgroups: c.runtime_cgroups,
            pod_sandbox_image: c.pod_sandbox_image,
            root_directory: f.root_directory,
            register_node: f.register_node,
            register_with_taints: f.register_with_taints,
            windows_service: f.windows_service,
            windows_priority_class: f.windows_priority_class,
            remote_runtime_endpoint: f.remote_runtime_endpoint,
            remote_image_endpoint: f.remote_image_endpoint,
            experimental_mounter_path: f.experimental_mounter_path,
            experimental_node_allocatable_ignore_eviction_threshold: f
                .experimental_node_allocatable_ignore_eviction_threshold,
            node_labels: f.node_labels,
            minimum_gc_age: f.minimum_gc_age,
            max_per_pod_container_count: f.max_per_pod_container_count,
            max_container_count: f.max_container_count,
            master_service_namespace: f.master_service_namespace,
            register_schedulable: f.register_schedulable,
            keep_terminated_pod_volumes: f.keep_terminated_pod_volumes,
            seccomp_default: f.seccomp_default,
            custom_interface_name: e.custom_interface_name,
            register_node_namespace: e.register_node_namespace,
        }
    }
}

impl Edged {
    /// KubeEdge's defaults, with the node name taken from `host`.
    fn defaults(host: &HostInfo) -> Self {
        Self {
            enable: true,
            tailored_kubelet_config: TailoredKubeletConfiguration::default(),
            tailored_kubelet_flag: TailoredKubeletFlag {
                hostname_override: host.node_name(),
                node_ip: String::new(),
                container_runtime_options: ContainerRuntimeOptions {
                    container_runtime: "remote".to_owned(),
                    runtime_cgroups: String::new(),
                    pod_sandbox_image: "kubeedge/pause:3.6".to_owned(),
                },
                root_directory: "/var/lib/edged".to_owned(),
                register_node: true,
                register_with_taints: Vec::new(),
                windows_service: false,
                windows_priority_class: String::new(),
                remote_runtime_endpoint: "unix:///run/containerd/containerd.sock".to_owned(),
                remote_image_endpoint: "unix:///run/containerd/containerd.sock".to_owned(),
                experimental_mounter_path: String::new(),
                experimental_node_allocatable_ignore_eviction_threshold: false,
                node_labels: BTreeMap::new(),
                minimum_gc_age: GoDuration::ZERO,
                max_per_pod_container_count: 1,
                max_container_count: -1,
                master_service_namespace: "default".to_owned(),
                register_schedulable: true,
                keep_terminated_pod_volumes: false,
                seccomp_default: false,
            },
            custom_interface_name: String::new(),
            register_node_namespace: "default".to_owned(),
        }
    }
}

/// EdgeHub: the connection to cloudcore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EdgeHub {
    /// Runs the module. Default `true`.
    pub enable: bool,
    /// Seconds between keepalives to the cloud; must be greater than 0.
    /// Default 15.
    pub heartbeat: i32,
    /// Messages per second sent to the cloud; must not be negative.
    /// Default 30.
    #[serde(rename = "messageQPS")]
    pub message_qps: i32,
    /// Burst of messages sent to the cloud; must not be negative. Default 60.
    pub message_burst: i32,
    /// Project ID sent in the connection headers. Default
    /// `e632aba927ea4ac2b575ec1603d56f10`.
    #[serde(rename = "projectID")]
    pub project_id: String,
    /// CA certificate file. Default `/etc/kubeedge/ca/rootCA.crt`.
    pub tls_ca_file: String,
    /// Node certificate file. Default `/etc/kubeedge/certs/server.crt`.
    pub tls_cert_file: String,
    /// Node private key file. Default `/etc/kubeedge/certs/server.key`.
    pub tls_private_key_file: String,
    /// The QUIC transport (off by default; exactly one of QUIC and
    /// WebSocket must be on).
    pub quic: EdgeHubQuic,
    /// The WebSocket transport (on by default).
    pub websocket: EdgeHubWebSocket,
    /// Join token used to obtain the node certificate from cloudcore.
    /// Default empty (KubeEdge removes it from the file after use).
    pub token: String,
    /// URL of cloudcore's certificate server. Default
    /// `https://<host IPv4>:10002`.
    pub http_server: String,
    /// Renew the node certificate before it expires. Default `true`.
    pub rotate_certificates: bool,
    /// Kedge only: the delay bound before the first reconnect attempt. The
    /// bound doubles after every failed attempt up to
    /// `reconnectBackoffMax`, and each wait is a random time between zero
    /// and the bound (full jitter). Default `1s`.
    #[serde(default = "default_reconnect_backoff_base")]
    pub reconnect_backoff_base: GoDuration,
    /// Kedge only: the largest delay bound between reconnect attempts.
    /// Default `30s`.
    #[serde(default = "default_reconnect_backoff_max")]
    pub reconnect_backoff_max: GoDuration,
    /// Kedge only: the SQLite file where status reports wait until the
    /// cloud acknowledges them. Default empty: `edgehub.db` in the
    /// directory of `database.dataSource`.
    #[serde(default)]
    pub outbox_file: String,
    /// Kedge only: how many reports (one per resource) the outbox keeps;
    /// when it is full the oldest report is dropped. Must be greater than
    /// 0. Default 10000.
    #[serde(default = "default_outbox_capacity")]
    pub outbox_capacity: i32,
    /// Kedge only: how long a sent report waits for the cloud's answer
    /// before it is sent again on the same connection (the cloud may have
    /// dropped it, for example over its rate limit). Must be greater than
    /// 0. Default `10s`.
    #[serde(default = "default_outbox_resend_after")]
    pub outbox_resend_after: GoDuration,
}

fn default_reconnect_backoff_base() -> GoDuration {
    GoDuration::from_secs(1)
}

fn default_reconnect_backoff_max() -> GoDuration {
    GoDuration::from_secs(30)
}

fn default_outbox_capacity() -> i32 {
    10_000
}

fn default_outbox_resend_after() -> GoDuration {
    GoDuration::from_secs(10)
}

/// EdgeHub's QUIC transport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EdgeHubQuic {
    /// Use QUIC. Default `false`.
    pub enable: bool,
    /// Handshake timeout in seconds. Default 30.
    pub handshake_timeout: i32,
    /// Read deadline in seconds. Default 15.
    pub read_deadline: i32,
    /// `host:port` of cloudcore's QUIC server. Default `<host IPv4>:10001`.
    pub server: String,
    /// Write deadline in seconds. Default 15.
    pub write_deadline: i32,
}

/// EdgeHub's WebSocket transport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EdgeHubWebSocket {
    /// Use WebSocket. Default `true`.
    pub enable: bool,
    /// Handshake timeout in seconds. Default 30.
    pub handshake_timeout: i32,
    /// Read deadline in seconds. Default 15.
    pub read_deadline: i32,
    /// `host:port` of cloudcore's WebSocket server. Default
    /// `<host IPv4>:10000`.
    pub server: String,
    /// Write deadline in seconds. Default 15.
    pub write_deadline: i32,
}

impl EdgeHub {
    /// KubeEdge's defaults, with the cloud addresses taken from `host` (as
    /// KubeEdge does, for a cloudcore on the same host).
    fn defaults(host: &HostInfo) -> Self {
        let ip = host.ipv4;
        Self {
            enable: true,
            heartbeat: 15,
            message_qps: 30,
            message_burst: 60,
            project_id: "e632aba927ea4ac2b575ec1603d56f10".to_owned(),
            tls_ca_file: DEFAULT_CA_FILE.to_owned(),
            tls_cert_file: DEFAULT_CERT_FILE.to_owned(),
            tls_private_key_file: DEFAULT_KEY_FILE.to_owned(),
            quic: EdgeHubQuic {
                enable: false,
                handshake_timeout: 30,
                read_deadline: 15,
                server: format!("{ip}:10001"),
                write_deadline: 15,
            },
            websocket: EdgeHubWebSocket {
                enable: true,
                handshake_timeout: 30,
                read_deadline: 15,
                server: format!("{ip}:10000"),
                write_deadline: 15,
            },
            token: String::new(),
            http_server: format!("https://{ip}:10002"),
            rotate_certificates: true,
            reconnect_backoff_base: default_reconnect_backoff_base(),
            reconnect_backoff_max: default_reconnect_backoff_max(),
            outbox_file: String::new(),
            outbox_capacity: default_outbox_capacity(),
            outbox_resend_after: default_outbox_resend_after(),
        }
    }
}

/// EventBus: edgecore's MQTT side, with the embedded broker or as a
/// client of an external one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventBus {
    /// Runs the module. Default `true`.
    pub enable: bool,
    /// MQTT QoS: 0 at most once, 1 at least once, 2 exactly once. Default 0.
    #[serde(rename = "mqttQOS")]
    pub mqtt_qos: u8,
    /// Ask the broker to retain published messages. Default `false`.
    pub mqtt_retain: bool,
    /// Size of the session queue: the messages the embedded broker queues
    /// for one client; must be greater than 0. Default 100.
    pub mqtt_session_queue_size: i32,
    /// Where the embedded broker listens (modes 0 and 1). Default
    /// `tcp://127.0.0.1:1884`, loopback only.
    pub mqtt_server_internal: String,
    /// URL of the external broker. Default `tcp://127.0.0.1:1883`.
    pub mqtt_server_external: String,
    /// Client ID of the subscriber. Default empty.
    #[serde(rename = "mqttSubClientID")]
    pub mqtt_sub_client_id: String,
    /// Client ID of the publisher. Default empty.
    #[serde(rename = "mqttPubClientID")]
    pub mqtt_pub_client_id: String,
    /// Broker user name: presented to the external broker and, when not
    /// empty, required by the embedded one (Kedge only; KubeEdge's embedded
    /// broker admits anyone). Default empty.
    pub mqtt_username: String,
    /// Broker password, with `mqttUsername`. Default empty.
    pub mqtt_password: String,
    /// Which brokers are used. Default `0`: the broker embedded in
    /// edgecore only. KubeEdge's default is `2` (an external broker
    /// only); Kedge embeds a broker by default so that a node needs no
    /// MQTT broker of its own; set `2` to keep using one such as
    /// mosquitto.
    pub mqtt_mode: MqttMode,
    /// TLS towards the broker.
    #[serde(rename = "eventBusTLS")]
    pub tls: EventBusTls,
}

impl Default for EventBus {
    fn default() -> Self {
        Self {
            enable: true,
            mqtt_qos: 0,
            mqtt_retain: false,
            mqtt_session_queue_size: 100,
            mqtt_server_internal: "tcp://127.0.0.1:1884".to_owned(),
            mqtt_server_external: "tcp://127.0.0.1:1883".to_owned(),
            mqtt_sub_client_id: String::new(),
            mqtt_pub_client_id: String::new(),
            mqtt_username: String::new(),
            mqtt_password: String::new(),
            mqtt_mode: MqttMode::Internal,
            tls: EventBusTls::default(),
        }
    }
}

/// Which MQTT brokers the event bus uses; an integer in the file.
/// Kedge's default is [`Internal`](Self::Internal), KubeEdge's
/// [`External`](Self::External).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MqttMode {
    /// `0`: the broker embedded in edgecore, at `mqttServerInternal`, only.
    Internal,
    /// `1`: the embedded and the external broker.
    Both,
    /// `2`: the external broker, at `mqttServerExternal`, only.
    External,
}

impl MqttMode {
    /// The number written in the file.
    pub fn as_number(self) -> u8 {
        match self {
            MqttMode::Internal => 0,
            MqttMode::Both => 1,
            MqttMode::External => 2,
        }
    }
}

impl Serialize for MqttMode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u8(self.as_number())
    }
}

impl<'de> Deserialize<'de> for MqttMode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ModeVisitor;

        impl Visitor<'_> for ModeVisitor {
            type Value = MqttMode;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("0 (internal), 1 (both) or 2 (external)")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<MqttMode, E> {
                match v {
                    0 => Ok(MqttMode::Internal),
                    1 => Ok(MqttMode::Both),
                    2 => Ok(MqttMode::External),
                    _ => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
                }
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<MqttMode, E> {
                match i64::try_from(v) {
                    Ok(v) => self.visit_i64(v),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Unsigned(v), &self)),
                }
            }
        }

        deserializer.deserialize_i64(ModeVisitor)
    }
}

/// TLS between the event bus and the MQTT broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventBusTls {
    /// Use TLS. Default `false`.
    pub enable: bool,
    /// CA certificate. Default `/etc/kubeedge/ca/rootCA.crt`.
    #[serde(rename = "tlsMqttCAFile")]
    pub tls_mqtt_ca_file: String,
    /// Client certificate. Default `/etc/kubeedge/certs/server.crt`.
    pub tls_mqtt_cert_file: String,
    /// Client private key. Default `/etc/kubeedge/certs/server.key`.
    pub tls_mqtt_private_key_file: String,
}

impl Default for EventBusTls {
    fn default() -> Self {
        Self {
            enable: false,
            tls_mqtt_ca_file: DEFAULT_CA_FILE.to_owned(),
            tls_mqtt_cert_file: DEFAULT_CERT_FILE.to_owned(),
            tls_mqtt_private_key_file: DEFAULT_KEY_FILE.to_owned(),
        }
    }
}

/// MetaManager: the local metadata store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetaManager {
    /// Runs the module. Default `true`.
    pub enable: bool,
    /// Module group remote queries are sent to. Default `hub`.
    pub context_send_group: String,
    /// Module remote queries are sent to. Default `websocket` (EdgeHub's
    /// module name).
    pub context_send_module: String,
    /// Seconds to wait for a remote query; must be greater than 0.
    /// Default 60.
    pub remote_query_timeout: i32,
    /// MetaServer: the local Kubernetes API for edge applications.
    pub meta_server: MetaServer,
}

impl Default for MetaManager {
    fn default() -> Self {
        Self {
            enable: true,
            context_send_group: "hub".to_owned(),
            context_send_module: "websocket".to_owned(),
            remote_query_timeout: 60,
            meta_server: MetaServer::default(),
        }
    }
}

/// MetaServer: a local, offline-capable Kubernetes API endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetaServer {
    /// Serve the local API. Default `false`.
    pub enable: bool,
    /// `host:port` to listen on. Default `127.0.0.1:10550`.
    pub server: String,
    /// CA certificate. Default `/etc/kubeedge/ca/rootCA.crt`.
    pub tls_ca_file: String,
    /// Server certificate. Default `/etc/kubeedge/certs/server.crt`.
    pub tls_cert_file: String,
    /// Server private key. Default `/etc/kubeedge/certs/server.key`.
    pub tls_private_key_file: String,
    /// Issuers of accepted service account tokens. Default
    /// `[https://kubernetes.default.svc.cluster.local]`.
    pub service_account_issuers: Vec<String>,
    /// Accepted token audiences. Default empty.
    pub api_audiences: Vec<String>,
    /// Files of service account verification keys. Default empty.
    pub service_account_key_files: Vec<String>,
}

impl Default for MetaServer {
    fn default() -> Self {
        Self {
            enable: false,
            server: "127.0.0.1:10550".to_owned(),
            tls_ca_file: DEFAULT_CA_FILE.to_owned(),
            tls_cert_file: DEFAULT_CERT_FILE.to_owned(),
            tls_private_key_file: DEFAULT_KEY_FILE.to_owned(),
            service_account_issuers: vec![
                "https://kubernetes.default.svc.cluster.local".to_owned(),
            ],
            api_audiences: Vec::new(),
            service_account_key_files: Vec::new(),
        }
    }
}

/// ServiceBus: HTTP calls from the cloud to applications on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceBus {
    /// Runs the module. Default `false`.
    pub enable: bool,
    /// IP address of the HTTP server. Default `127.0.0.1`.
    pub server: String,
    /// Port of the HTTP server. Default 9060.
    pub port: i64,
    /// Seconds to wait for a response; must be greater than 0. Default 60.
    pub timeout: i64,
}

impl Default for ServiceBus {
    fn default() -> Self {
        Self {
            enable: false,
            server: "127.0.0.1".to_owned(),
            port: 9060,
            timeout: 60,
        }
    }
}

/// DeviceTwin: device state and twins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceTwin {
    /// Runs the module. Default `true`.
    pub enable: bool,
    /// Where edgecore serves DMI (`DeviceManagerService`) for mappers, as
    /// KubeEdge v1.23 reads it: a directory, or a file whose directory is
    /// taken; the socket is `dmi.sock` in it. Default
    /// `/etc/kubeedge/dmi.sock` (KubeEdge v1.15's fixed path).
    #[serde(default = "default_dmi_sock_path")]
    pub dmi_sock_path: String,
    /// Kedge only: DMI calls (mapper registrations and status reports)
    /// accepted per second; the excess is refused with "too many
    /// request". Must be greater than 0. Default 1000 (KubeEdge: 1, which
    /// a mapper with more than a few devices exceeds every cycle).
    #[serde(default = "default_dmi_qps", rename = "dmiQPS")]
    pub dmi_qps: i32,
    /// Kedge only: DMI calls accepted at once after a quiet time. Must be
    /// greater than 0. Default 1000 (KubeEdge: 100).
    #[serde(default = "default_dmi_burst")]
    pub dmi_burst: i32,
}

/// The default [`DeviceTwin::dmi_sock_path`].
pub const DEFAULT_DMI_SOCK_PATH: &str = "/etc/kubeedge/dmi.sock";

fn default_dmi_sock_path() -> String {
    DEFAULT_DMI_SOCK_PATH.to_owned()
}

fn default_dmi_qps() -> i32 {
    1000
}

fn default_dmi_burst() -> i32 {
    1000
}

impl Default for DeviceTwin {
    fn default() -> Self {
        Self {
            enable: true,
            dmi_sock_path: default_dmi_sock_path(),
            dmi_qps: default_dmi_qps(),
            dmi_burst: default_dmi_burst(),
        }
    }
}

impl DeviceTwin {
    /// The socket DMI is served on: `dmi.sock` in the directory
    /// `dmiSockPath` names (itself, unless it ends in `.sock`), as KubeEdge
    /// v1.23 resolves it.
    pub fn dmi_socket(&self) -> std::path::PathBuf {
        let configured = Path::new(&self.dmi_sock_path);
        let dir = if self.dmi_sock_path.ends_with(".sock") {
            configured.parent().unwrap_or(Path::new(""))
        } else {
            configured
        };
        dir.join("dmi.sock")
    }
}

/// DBTest: a module for testing the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DbTest {
    /// Runs the module. Default `false`.
    pub enable: bool,
}

/// EdgeStream: the edge end of the logs/exec tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EdgeStream {
    /// Runs the module. Default `false`.
    pub enable: bool,
    /// CA certificate. Default `/etc/kubeedge/ca/rootCA.crt`.
    #[serde(rename = "tlsTunnelCAFile")]
    pub tls_tunnel_ca_file: String,
    /// Client certificate. Default `/etc/kubeedge/certs/server.crt`.
    pub tls_tunnel_cert_file: String,
    /// Client private key. Default `/etc/kubeedge/certs/server.key`.
    pub tls_tunnel_private_key_file: String,
    /// Handshake timeout in seconds. Default 30.
    pub handshake_timeout: i32,
    /// Read deadline in seconds. Default 15.
    pub read_deadline: i32,
    /// `host:port` of cloudcore's tunnel server (`server`). Default
    /// `127.0.0.1:10004`.
    #[serde(rename = "server")]
    pub tunnel_server: String,
    /// Write deadline in seconds. Default 15.
    pub write_deadline: i32,
}

impl Default for EdgeStream {
    fn default() -> Self {
        Self {
            enable: false,
            tls_tunnel_ca_file: DEFAULT_CA_FILE.to_owned(),
            tls_tunnel_cert_file: DEFAULT_CERT_FILE.to_owned(),
            tls_tunnel_private_key_file: DEFAULT_KEY_FILE.to_owned(),
            handshake_timeout: 30,
            read_deadline: 15,
            tunnel_server: "127.0.0.1:10004".to_owned(),
            write_deadline: 15,
        }
    }
}

impl EdgeCoreConfig {
    /// Every field at its KubeEdge default (`NewDefaultEdgeCoreConfig`),
    /// with `modules.edged.hostnameOverride` from the host name and
    /// EdgeHub's cloud addresses from the host's primary IPv4 address;
    /// what `edgecore --defaultconfig` prints.
    pub fn default_config(host: &HostInfo) -> Self {
        Self {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            database: DataBase::default(),
            modules: Modules {
                edged: Edged::defaults(host),
                edge_hub: EdgeHub::defaults(host),
                event_bus: EventBus::default(),
                meta_manager: MetaManager::default(),
                service_bus: ServiceBus::default(),
                device_twin: DeviceTwin::default(),
                db_test: DbTest { enable: false },
                edge_stream: EdgeStream::default(),
            },
            feature_gates: BTreeMap::new(),
            monitor_server: MonitorServer::bound_to("127.0.0.1:10352"),
        }
    }

    /// The short document `edgecore --minconfig` prints
    /// (`NewMinEdgeCoreConfig`): the database file, edged, EdgeHub's
    /// certificates, WebSocket transport, certificate server and token, and
    /// EventBus's broker settings. Its [`MinConfig::config`] is what loading
    /// it gives, equal to [`default_config`](Self::default_config).
    ///
    /// Unlike KubeEdge's, the document does not write `enable: false` for
    /// edgeHub and eventBus (Go zero values there that would switch them off).
    pub fn min_config(host: &HostInfo) -> MinConfig<Self> {
        MinConfig::new(Self::default_config(host), MIN_CONFIG_FIELDS)
    }

    /// Reads, parses and validates the file at `path`, laid over the
    /// defaults for this host ([`HostInfo::detect`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        Self::load_with_host(path, &HostInfo::detect())
    }

    /// As [`load`](Self::load), with the defaults derived from `host`.
    pub fn load_with_host(path: impl AsRef<Path>, host: &HostInfo) -> Result<Self, ConfigError> {
        Self::from_yaml_str_with_host(&document::read_file(path.as_ref())?, host)
    }

    /// Parses and validates YAML text, laid over the defaults for this host
    /// ([`HostInfo::detect`]).
    pub fn from_yaml_str(text: &str) -> Result<Self, ConfigError> {
        Self::from_yaml_str_with_host(text, &HostInfo::detect())
    }

    /// Parses YAML text laid over [`default_config(host)`](Self::default_config)
    /// and validates it.
    pub fn from_yaml_str_with_host(text: &str, host: &HostInfo) -> Result<Self, ConfigError> {
        let config: Self = document::layered(&Self::default_config(host), text, &TYPE_META)?;
        config.validate()?;
        Ok(config)
    }

    /// The configuration as a YAML document, which loads back to an equal
    /// value.
    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        document::to_yaml(self)
    }

    /// Checks the configuration without touching the filesystem, following
    /// KubeEdge's `ValidateEdgeCoreConfiguration` (modules that are off are
    /// not checked) plus Kedge's rules for ports, addresses, timeouts and
    /// kubelet ranges. Returns every problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        TYPE_META.check(&self.api_version, &self.kind)?;
        let mut v = Validator::default();
        let db = &self.database;
        v.one_of("database.driverName", &db.driver_name, &["sqlite3"]);
        v.check(
            !db.data_source.is_empty(),
            "database.dataSource",
            "must not be empty",
        );
        v.ip_port(
            "monitorServer.bindAddress",
            &self.monitor_server.bind_address,
        );
        let m = &self.modules;
        validate_edged(&m.edged, &mut v);
        validate_edge_hub(&m.edge_hub, &mut v);
        if m.device_twin.enable {
            v.positive("modules.deviceTwin.dmiQPS", m.device_twin.dmi_qps);
            v.positive("modules.deviceTwin.dmiBurst", m.device_twin.dmi_burst);
        }
        let bus = &m.event_bus;
        if bus.enable {
            v.range("modules.eventBus.mqttQOS", bus.mqtt_qos, 0, 2);
            v.positive(
                "modules.eventBus.mqttSessionQueueSize",
                bus.mqtt_session_queue_size,
            );
            let schemes = &["tcp", "ssl", "tls", "ws", "wss", "mqtt", "mqtts"];
            v.url(
                "modules.eventBus.mqttServerInternal",
                &bus.mqtt_server_internal,
                schemes,
            );
            v.url(
                "modules.eventBus.mqttServerExternal",
                &bus.mqtt_server_external,
                schemes,
            );
        }
        let meta = &m.meta_manager;
        if meta.enable {
            v.positive(
                "modules.metaManager.remoteQueryTimeout",
                meta.remote_query_timeout,
            );
            v.check(
                !meta.context_send_module.is_empty(),
                "modules.metaManager.contextSendModule",
                "must not be empty",
            );
            if meta.meta_server.enable {
                v.host_port(
                    "modules.metaManager.metaServer.server",
                    &meta.meta_server.server,
                );
            }
        }
        let sb = &m.service_bus;
        if sb.enable {
            v.ip("modules.serviceBus.server", &sb.server);
            v.port("modules.serviceBus.port", sb.port);
            v.positive("modules.serviceBus.timeout", sb.timeout);
        }
        let es = &m.edge_stream;
        if es.enable {
            v.host_port("modules.edgeStream.server", &es.tunnel_server);
            v.positive("modules.edgeStream.handshakeTimeout", es.handshake_timeout);
            v.positive("modules.edgeStream.readDeadline", es.read_deadline);
            v.positive("modules.edgeStream.writeDeadline", es.write_deadline);
        }
        v.finish()
    }
}

fn validate_edged(edged: &Edged, v: &mut Validator) {
    if !edged.enable {
        return;
    }
    let flag = &edged.tailored_kubelet_flag;
    v.check(
        is_dns1123_subdomain(&flag.hostname_override),
        "modules.edged.hostnameOverride",
        "must be a lowercase RFC 1123 subdomain (a valid node name)",
    );
    if !flag.node_ip.is_empty() {
        v.ip("modules.edged.nodeIP", &flag.node_ip);
    }
    validate_taints(
        "modules.edged.registerWithTaints",
        &flag.register_with_taints,
        v,
    );
    let k = &edged.tailored_kubelet_config;
    let at = |field: &str| format!("modules.edged.tailoredKubeletConfig.{field}");
    v.one_of(
        &at("cgroupDriver"),
        &k.cgroup_driver,
        &["cgroupfs", "systemd"],
    );
    v.ip(&at("address"), &k.address);
    v.range(&at("readOnlyPort"), k.read_only_port, 0, 65535);
    v.non_negative(&at("registryPullQPS"), k.registry_pull_qps);
    v.non_negative(&at("registryBurst"), k.registry_burst);
    if let Some(qps) = k.event_record_qps {
        v.non_negative(&at("eventRecordQPS"), qps);
    }
    v.non_negative(&at("eventBurst"), k.event_burst);
    v.range(&at("oomScoreAdj"), k.oom_score_adj, -1000, 1000);
    v.positive(
        &at("nodeLeaseDurationSeconds"),
        k.node_lease_duration_seconds,
    );
    for (field, duration) in [
        ("syncFrequency", k.sync_frequency),
        ("nodeStatusUpdateFrequency", k.node_status_update_frequency),
        ("nodeStatusReportFrequency", k.node_status_report_frequency),
        ("runtimeRequestTimeout", k.runtime_request_timeout),
    ] {
        v.check(
            duration.as_nanos() > 0,
            &at(field),
            "must be greater than 0s",
        );
    }
    v.range(
        &at("imageGCHighThresholdPercent"),
        k.image_gc_high_threshold_percent,
        0,
        100,
    );
    v.range(
        &at("imageGCLowThresholdPercent"),
        k.image_gc_low_threshold_percent,
        0,
        100,
    );
    v.check(
        k.image_gc_low_threshold_percent < k.image_gc_high_threshold_percent,
        &at("imageGCLowThresholdPercent"),
        "must be less than imageGCHighThresholdPercent",
    );
    v.non_negative(&at("maxPods"), k.max_pods);
    v.non_negative(&at("podsPerCore"), k.pods_per_core);
    v.range(
        &at("iptablesMasqueradeBit"),
        k.iptables_masquerade_bit,
        0,
        31,
    );
    v.range(&at("iptablesDropBit"), k.iptables_drop_bit, 0, 31);
    v.check(
        k.iptables_masquerade_bit != k.iptables_drop_bit,
        &at("iptablesDropBit"),
        "must differ from iptablesMasqueradeBit",
    );
    v.one_of(
        &at("configMapAndSecretChangeDetectionStrategy"),
        &k.config_map_and_secret_change_detection_strategy,
        &["Get", "Cache", "Watch"],
    );
    for (i, ip) in k.cluster_dns.iter().enumerate() {
        v.ip(&at(&format!("clusterDNS[{i}]")), ip);
    }
    validate_taints(&at("registerWithTaints"), &k.register_with_taints, v);
}

fn validate_taints(path: &str, taints: &[Taint], v: &mut Validator) {
    for (i, taint) in taints.iter().enumerate() {
        v.check(
            !taint.key.is_empty(),
            &format!("{path}[{i}].key"),
            "must not be empty",
        );
        v.one_of(
            &format!("{path}[{i}].effect"),
            &taint.effect,
            &["NoSchedule", "PreferNoSchedule", "NoExecute"],
        );
    }
}

fn validate_edge_hub(hub: &EdgeHub, v: &mut Validator) {
    if !hub.enable {
        return;
    }
    v.check(
        hub.websocket.enable != hub.quic.enable,
        "modules.edgeHub.websocket.enable",
        "exactly one of websocket.enable and quic.enable must be true",
    );
    v.positive("modules.edgeHub.heartbeat", hub.heartbeat);
    v.non_negative("modules.edgeHub.messageQPS", hub.message_qps);
    v.non_negative("modules.edgeHub.messageBurst", hub.message_burst);
    v.check(
        hub.reconnect_backoff_base > GoDuration::ZERO,
        "modules.edgeHub.reconnectBackoffBase",
        "must be greater than 0",
    );
    v.check(
        hub.reconnect_backoff_max >= hub.reconnect_backoff_base,
        "modules.edgeHub.reconnectBackoffMax",
        "must not be less than reconnectBackoffBase",
    );
    v.positive("modules.edgeHub.outboxCapacity", hub.outbox_capacity);
    v.check(
        hub.outbox_resend_after > GoDuration::ZERO,
        "modules.edgeHub.outboxResendAfter",
        "must be greater than 0",
    );
    v.url(
        "modules.edgeHub.httpServer",
        &hub.http_server,
        &["https", "http"],
    );
    let transports = [
        (
            "websocket",
            hub.websocket.enable,
            &hub.websocket.server,
            hub.websocket.handshake_timeout,
            hub.websocket.read_deadline,
            hub.websocket.write_deadline,
        ),
        (
            "quic",
            hub.quic.enable,
            &hub.quic.server,
            hub.quic.handshake_timeout,
            hub.quic.read_deadline,
            hub.quic.write_deadline,
        ),
    ];
    for (name, enable, server, handshake, read, write) in transports {
        if enable {
            v.host_port(&format!("modules.edgeHub.{name}.server"), server);
            v.positive(
                &format!("modules.edgeHub.{name}.handshakeTimeout"),
                handshake,
            );
            v.positive(&format!("modules.edgeHub.{name}.readDeadline"), read);
            v.positive(&format!("modules.edgeHub.{name}.writeDeadline"), write);
        }
    }
}
