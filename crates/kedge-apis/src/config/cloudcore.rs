//! `cloudcore.yaml`: the configuration of cloudcore
//! (`cloudcore.config.kubeedge.io/v1alpha2`, kind `CloudCore`).
//!
//! The types follow KubeEdge v1.15's
//! `pkg/apis/componentconfig/cloudcore/v1alpha1` field for field, with the
//! same YAML names and defaults; KubeEdge's own files say `v1alpha2`, and
//! both versions are read. Modules Kedge does not implement still parse, so
//! any file KubeEdge generates loads. The top-level [`ControlPlane`] section
//! is Kedge's own: the embedded Kubernetes-compatible control plane that
//! cloudcore runs when it is not attached to an existing cluster.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::document::{self, MinConfig, TypeMeta};
use super::error::ConfigError;
use super::host::HostInfo;
use super::validate::{Validator, is_cidr};
use super::{
    DEFAULT_CA_FILE, DEFAULT_CA_KEY_FILE, DEFAULT_CERT_FILE, DEFAULT_KEY_FILE, MonitorServer,
};

/// The `apiVersion` cloudcore.yaml is written with.
pub const API_VERSION: &str = "cloudcore.config.kubeedge.io/v1alpha2";
/// The older `apiVersion` (KubeEdge's Go package version), also read.
pub const API_VERSION_V1ALPHA1: &str = "cloudcore.config.kubeedge.io/v1alpha1";
/// The `kind` of cloudcore.yaml.
pub const KIND: &str = "CloudCore";

/// KubeEdge's `constants.DefaultNodeLimit`: the default
/// `modules.cloudHub.nodeLimit`, from which several defaults derive.
pub const DEFAULT_NODE_LIMIT: i32 = 500;

const TYPE_META: TypeMeta = TypeMeta {
    kind: KIND,
    api_version: API_VERSION,
    also_accepted: &[API_VERSION_V1ALPHA1],
};

/// The node limit KubeEdge's `NewMinCloudCoreConfig` writes.
const MIN_CONFIG_NODE_LIMIT: i32 = 1000;

/// The fields `cloudcore --minconfig` prints (KubeEdge's, plus the
/// control-plane switch and storage).
const MIN_CONFIG_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "modules.cloudHub.nodeLimit",
    "modules.cloudHub.tlsCAFile",
    "modules.cloudHub.tlsCAKeyFile",
    "modules.cloudHub.tlsCertFile",
    "modules.cloudHub.tlsPrivateKeyFile",
    "modules.cloudHub.advertiseAddress",
    "modules.cloudHub.unixsocket",
    "modules.cloudHub.websocket",
    "modules.cloudHub.https",
    "modules.router",
    "modules.iptablesManager",
    "controlPlane.enable",
    "controlPlane.storage",
];

/// The whole of cloudcore.yaml.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudCoreConfig {
    /// `cloudcore.config.kubeedge.io/v1alpha2` (`v1alpha1` is read too and
    /// rewritten to `v1alpha2`).
    pub api_version: String,
    /// Always `CloudCore`.
    pub kind: String,
    /// Settings shared by all modules.
    pub common_config: CommonConfig,
    /// How cloudcore reaches the Kubernetes API server. With an empty
    /// `kubeConfig` and `master`, Kedge uses its embedded control plane.
    #[serde(rename = "kubeAPIConfig")]
    pub kube_api_config: KubeApiConfig,
    /// The cloudcore modules and their settings.
    pub modules: Modules,
    /// Feature gates by name (`requireAuthorization`, Kubernetes gates).
    /// Default empty: every gate at its own default.
    pub feature_gates: BTreeMap<String, bool>,
    /// Kedge only: the embedded Kubernetes-compatible control plane.
    pub control_plane: ControlPlane,
}

/// Settings shared by all cloudcore modules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommonConfig {
    /// The port the cloudcore tunnel (the edge nodes' kubelet-style server,
    /// reached for logs and exec) is addressed on. Default 10350
    /// (`constants.ServerPort`); KubeEdge renegotiates it at start-up when
    /// several cloudcores run.
    pub tunnel_port: i32,
    /// Prometheus metrics, health checks and profiling. Default bind address
    /// `127.0.0.1:9091`, profiling off.
    pub monitor_server: MonitorServer,
}

/// How cloudcore talks to the Kubernetes API server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeApiConfig {
    /// Address of the Kubernetes API server, overriding the one in
    /// `kubeConfig`, such as `https://127.0.0.1:8443`. Default empty.
    pub master: String,
    /// Content type of requests to the API server. Default
    /// `application/vnd.kubernetes.protobuf`.
    pub content_type: String,
    /// Requests per second to the API server. Default 5 × the default node
    /// limit (2500); cloudcore resets it to 5 × `modules.cloudHub.nodeLimit`
    /// on load.
    pub qps: i32,
    /// Burst of requests to the API server. Default 10 × the default node
    /// limit (5000); cloudcore resets it to 10 × `modules.cloudHub.nodeLimit`
    /// on load.
    pub burst: i32,
    /// Absolute path of a kubeconfig file with the API server's address and
    /// credentials. Default empty: Kedge then runs its embedded control
    /// plane (see [`ControlPlane`]).
    pub kube_config: String,
}

/// The cloudcore modules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Modules {
    /// CloudHub: the WebSocket/QUIC server edge nodes connect to, and the
    /// certificate server.
    pub cloud_hub: CloudHub,
    /// EdgeController: syncs nodes, pods, config maps and secrets between
    /// the API server and edge nodes.
    pub edge_controller: EdgeController,
    /// DeviceController: syncs devices and device models with edge nodes.
    pub device_controller: DeviceController,
    /// NodeUpgradeJobController: runs node upgrade jobs (off by default).
    pub node_upgrade_job_controller: NodeUpgradeJobController,
    /// SyncController: reconciles the objects each edge node has
    /// acknowledged (ObjectSync).
    pub sync_controller: SyncController,
    /// DynamicController: serves list/watch of any resource to edge
    /// MetaServers (off by default).
    pub dynamic_controller: DynamicController,
    /// CloudStream: the tunnel for `kubectl logs/exec` to edge pods (off by
    /// default).
    pub cloud_stream: CloudStream,
    /// Router: the rule-based message router (off by default).
    pub router: Router,
    /// IptablesManager: maintains iptables rules that forward the tunnel
    /// port to CloudStream.
    pub iptables_manager: IptablesManager,
}

/// CloudHub: the server edge nodes connect to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudHub {
    /// Runs the module. Default `true`; when `false` the other fields are
    /// not checked.
    pub enable: bool,
    /// Seconds without a keepalive after which an edge connection is closed.
    /// Default 30.
    pub keepalive_interval: i32,
    /// Maximum number of edge nodes connected to this cloudcore; must be
    /// greater than 0. Default 500. Several edgeController defaults and the
    /// API client's QPS and burst derive from it.
    pub node_limit: i32,
    /// CA certificate file. Default `/etc/kubeedge/ca/rootCA.crt`.
    #[serde(rename = "tlsCAFile")]
    pub tls_ca_file: String,
    /// CA private key file. Default `/etc/kubeedge/ca/rootCA.key`.
    #[serde(rename = "tlsCAKeyFile")]
    pub tls_ca_key_file: String,
    /// Server certificate file. Default `/etc/kubeedge/certs/server.crt`.
    pub tls_cert_file: String,
    /// Server private key file. Default `/etc/kubeedge/certs/server.key`.
    pub tls_private_key_file: String,
    /// Seconds allowed for a write to an edge connection. Default 30.
    pub write_timeout: i32,
    /// The QUIC server (off by default).
    pub quic: CloudHubQuic,
    /// The unix-socket server for local clients.
    #[serde(rename = "unixsocket")]
    pub unix_socket: CloudHubUnixSocket,
    /// The WebSocket server (the main edge channel).
    pub websocket: CloudHubWebSocket,
    /// The HTTPS certificate server (`/ca.crt`, `/edge.crt`).
    pub https: CloudHubHttps,
    /// IP addresses cloudcore advertises to edge nodes and puts in its
    /// certificate. Default: the host's primary IPv4 address.
    pub advertise_address: Vec<String>,
    /// DNS names put in cloudcore's certificate. Default `[""]`, as KubeEdge.
    pub dns_names: Vec<String>,
    /// Validity of the edge certificates cloudcore signs, in days (a Go
    /// `time.Duration` written as a bare number). Default 365.
    pub edge_cert_signing_duration: i64,
    /// Interval between refreshes of the join token, in hours (a Go
    /// `time.Duration` written as a bare number); must be greater than 0.
    /// Default 12.
    pub token_refresh_duration: i64,
    /// Kedge only: messages per second accepted from each edge node; the
    /// excess is dropped and counted (the edge resends what must not be
    /// lost). Must be greater than 0. Default 100, above EdgeHub's
    /// default `messageQPS` of 30.
    #[serde(default = "default_node_message_qps", rename = "nodeMessageQPS")]
    pub node_message_qps: i32,
    /// Kedge only: messages accepted at once from an edge node after a
    /// quiet time. Must be greater than 0. Default 200.
    #[serde(default = "default_node_message_burst")]
    pub node_message_burst: i32,
    /// Kedge only: edge connections allowed to handshake at once, over
    /// WebSocket and QUIC each; more wait in line (`handshakeQueue`).
    /// Bounds the work a reconnect flood (every node at once after a
    /// cloudcore restart) can pile up. Must be greater than 0. Default
    /// 1024.
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: i32,
    /// Kedge only: edge connections allowed to wait, per listener, for
    /// one of the `maxHandshakes` slots, each for at most 10 s, before
    /// any TLS work. A freed slot goes to the newest; a full line pushes
    /// out its oldest. One pushed out, or one that waited too long, is
    /// refused and its node backs off. 0 refuses at once. Must not be
    /// negative.
    /// Default 8192.
    #[serde(default = "default_handshake_queue")]
    pub handshake_queue: i32,
    /// Kedge only: edge nodes per second cloudcore asks to come back at
    /// when it stops: it closes each link asking its node to reconnect
    /// within the nodes connected ÷ this rate, so a large fleet does not
    /// redial all at once. 0 asks for nothing. Must not be negative.
    /// Default 1000.
    #[serde(default = "default_restart_reconnect_rate")]
    pub restart_reconnect_rate: i32,
}

fn default_node_message_qps() -> i32 {
    100
}

fn default_node_message_burst() -> i32 {
    200
}

fn default_max_handshakes() -> i32 {
    1024
}

fn default_handshake_queue() -> i32 {
    8192
}

fn default_restart_reconnect_rate() -> i32 {
    1000
}

/// CloudHub's QUIC server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudHubQuic {
    /// Serves QUIC. Default `false`.
    pub enable: bool,
    /// IP address to listen on. Default `0.0.0.0`.
    pub address: String,
    /// UDP port. Default 10001.
    pub port: u32,
    /// Maximum concurrent incoming streams. Default 10000.
    pub max_incoming_streams: i32,
}

impl Default for CloudHubQuic {
    fn default() -> Self {
        Self {
            enable: false,
            address: "0.0.0.0".to_owned(),
            port: 10001,
            max_incoming_streams: 10000,
        }
    }
}

/// CloudHub's unix-socket server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudHubUnixSocket {
    /// Serves the unix socket. Default `true`.
    pub enable: bool,
    /// Socket address, starting with `unix://`. Default
    /// `unix:///var/lib/kubeedge/kubeedge.sock`.
    pub address: String,
}

impl Default for CloudHubUnixSocket {
    fn default() -> Self {
        Self {
            enable: true,
            address: "unix:///var/lib/kubeedge/kubeedge.sock".to_owned(),
        }
    }
}

/// CloudHub's WebSocket server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudHubWebSocket {
    /// Serves WebSocket. Default `true`.
    pub enable: bool,
    /// IP address to listen on. Default `0.0.0.0`.
    pub address: String,
    /// TCP port. Default 10000.
    pub port: u32,
}

impl Default for CloudHubWebSocket {
    fn default() -> Self {
        Self {
            enable: true,
            address: "0.0.0.0".to_owned(),
            port: 10000,
        }
    }
}

/// CloudHub's HTTPS certificate server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudHubHttps {
    /// Serves HTTPS. Default `true`.
    pub enable: bool,
    /// IP address to listen on. Default `0.0.0.0`.
    pub address: String,
    /// TCP port. Default 10002.
    pub port: u32,
}

impl Default for CloudHubHttps {
    fn default() -> Self {
        Self {
            enable: true,
            address: "0.0.0.0".to_owned(),
            port: 10002,
        }
    }
}

/// EdgeController: the sync of Kubernetes objects with edge nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EdgeController {
    /// Runs the module. Default `true`.
    pub enable: bool,
    /// Seconds between node status updates; must be greater than 0.
    /// Default 10.
    pub node_update_frequency: i32,
    /// Queue sizes per message kind.
    pub buffer: EdgeControllerBuffer,
    /// Worker counts per message kind.
    pub load: EdgeControllerLoad,
}

/// EdgeController queue sizes (each must not be negative).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EdgeControllerBuffer {
    /// Pod status updates from the edge. Default 1024.
    pub update_pod_status: i32,
    /// Node status updates from the edge. Default 1024.
    pub update_node_status: i32,
    /// Config map queries from the edge. Default 1024.
    pub query_config_map: i32,
    /// Secret queries from the edge. Default 1024.
    pub query_secret: i32,
    /// Pod events from the API server. Default 1.
    pub pod_event: i32,
    /// Config map events. Default 1.
    pub config_map_event: i32,
    /// Secret events. Default 1.
    pub secret_event: i32,
    /// Rule events. Default 1.
    pub rules_event: i32,
    /// Rule endpoint events. Default 1.
    pub rule_endpoints_event: i32,
    /// Persistent volume queries. Default 1024.
    pub query_persistent_volume: i32,
    /// Persistent volume claim queries. Default 1024.
    pub query_persistent_volume_claim: i32,
    /// Volume attachment queries. Default 1024.
    pub query_volume_attachment: i32,
    /// Node creations from the edge. Default 1024.
    pub create_node: i32,
    /// Node patches from the edge. Default 1024 + nodeLimit / 2 (1274).
    pub patch_node: i32,
    /// Node queries from the edge. Default 1024 + nodeLimit (1524).
    pub query_node: i32,
    /// Node updates from the edge. Default 1024.
    pub update_node: i32,
    /// Pod patches from the edge. Default 1024.
    pub patch_pod: i32,
    /// Pod deletions from the edge. Default 1024.
    pub delete_pod: i32,
    /// Lease creations from the edge. Default 1024 + nodeLimit (1524).
    pub create_lease: i32,
    /// Lease queries from the edge. Default 1024.
    pub query_lease: i32,
    /// Service account token requests. Default 1024.
    pub service_account_token: i32,
    /// Pod creations from the edge. Default 1024.
    pub create_pod: i32,
}

impl EdgeControllerBuffer {
    /// KubeEdge's defaults for a node limit of `node_limit`.
    pub fn for_node_limit(node_limit: i32) -> Self {
        Self {
            update_pod_status: 1024,
            update_node_status: 1024,
            query_config_map: 1024,
            query_secret: 1024,
            pod_event: 1,
            config_map_event: 1,
            secret_event: 1,
            rules_event: 1,
            rule_endpoints_event: 1,
            query_persistent_volume: 1024,
            query_persistent_volume_claim: 1024,
            query_volume_attachment: 1024,
            create_node: 1024,
            patch_node: 1024i32.saturating_add(node_limit / 2),
            query_node: 1024i32.saturating_add(node_limit),
            update_node: 1024,
            patch_pod: 1024,
            delete_pod: 1024,
            create_lease: 1024i32.saturating_add(node_limit),
            query_lease: 1024,
            service_account_token: 1024,
            create_pod: 1024,
        }
    }
}

/// EdgeController worker counts (each must not be negative). Three names
/// are capitalised in the file, as in KubeEdge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EdgeControllerLoad {
    /// Pod status update workers. Default 1.
    pub update_pod_status_workers: i32,
    /// Node status update workers. Default 1.
    pub update_node_status_workers: i32,
    /// Config map query workers. Default 100.
    pub query_config_map_workers: i32,
    /// Secret query workers. Default 100.
    pub query_secret_workers: i32,
    /// Persistent volume query workers. Default 4.
    pub query_persistent_volume_workers: i32,
    /// Persistent volume claim query workers. Default 4.
    pub query_persistent_volume_claim_workers: i32,
    /// Volume attachment query workers. Default 4.
    pub query_volume_attachment_workers: i32,
    /// Node creation workers. Default 100.
    pub create_node_workers: i32,
    /// Node patch workers. Default 100 + nodeLimit / 50 (110).
    pub patch_node_workers: i32,
    /// Node query workers. Default nodeLimit (500).
    pub query_node_workers: i32,
    /// Node update workers. Default 4.
    pub update_node_workers: i32,
    /// Pod patch workers. Default 100.
    pub patch_pod_workers: i32,
    /// Pod deletion workers. Default 100.
    pub delete_pod_workers: i32,
    /// Lease creation workers. Default nodeLimit (500).
    pub create_lease_workers: i32,
    /// Lease query workers. Default 100.
    pub query_lease_workers: i32,
    /// Rule status update workers (`UpdateRuleStatusWorkers`). Default 4.
    #[serde(rename = "UpdateRuleStatusWorkers")]
    pub update_rule_status_workers: i32,
    /// Service account token workers (`ServiceAccountTokenWorkers`).
    /// Default 100.
    #[serde(rename = "ServiceAccountTokenWorkers")]
    pub service_account_token_workers: i32,
    /// Pod creation workers (`CreatePodWorks`, KubeEdge's spelling).
    /// Default 4.
    #[serde(rename = "CreatePodWorks")]
    pub create_pod_works: i32,
}

impl EdgeControllerLoad {
    /// KubeEdge's defaults for a node limit of `node_limit`.
    pub fn for_node_limit(node_limit: i32) -> Self {
        Self {
            update_pod_status_workers: 1,
            update_node_status_workers: 1,
            query_config_map_workers: 100,
            query_secret_workers: 100,
            query_persistent_volume_workers: 4,
            query_persistent_volume_claim_workers: 4,
            query_volume_attachment_workers: 4,
            create_node_workers: 100,
            patch_node_workers: 100i32.saturating_add(node_limit / 50),
            query_node_workers: node_limit,
            update_node_workers: 4,
            patch_pod_workers: 100,
            delete_pod_workers: 100,
            create_lease_workers: node_limit,
            query_lease_workers: 100,
            update_rule_status_workers: 4,
            service_account_token_workers: 100,
            create_pod_works: 4,
        }
    }
}

/// DeviceController: the sync of devices with edge nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceController {
    /// Runs the module. Default `true`.
    pub enable: bool,
    /// Queue sizes.
    pub buffer: DeviceControllerBuffer,
    /// Worker counts.
    pub load: DeviceControllerLoad,
}

impl Default for DeviceController {
    fn default() -> Self {
        Self {
            enable: true,
            buffer: DeviceControllerBuffer {
                update_device_status: 1024,
                device_event: 1,
                device_model_event: 1,
            },
            load: DeviceControllerLoad {
                update_device_status_workers: 1,
            },
        }
    }
}

/// DeviceController queue sizes (each must not be negative).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceControllerBuffer {
    /// Device status updates from the edge. Default 1024.
    pub update_device_status: i32,
    /// Device events. Default 1.
    pub device_event: i32,
    /// Device model events. Default 1.
    pub device_model_event: i32,
}

/// DeviceController worker counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceControllerLoad {
    /// Device status update workers; must not be negative. Default 1.
    pub update_device_status_workers: i32,
}

/// NodeUpgradeJobController: node upgrade jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeUpgradeJobController {
    /// Runs the module. Default `false`.
    pub enable: bool,
    /// Queue sizes.
    pub buffer: NodeUpgradeJobControllerBuffer,
    /// Worker counts.
    pub load: NodeUpgradeJobControllerLoad,
}

impl Default for NodeUpgradeJobController {
    fn default() -> Self {
        Self {
            enable: false,
            buffer: NodeUpgradeJobControllerBuffer {
                update_node_upgrade_job_status: 1024,
                node_upgrade_job_event: 1,
            },
            load: NodeUpgradeJobControllerLoad {
                node_upgrade_job_workers: 1,
            },
        }
    }
}

/// NodeUpgradeJobController queue sizes (each must not be negative).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeUpgradeJobControllerBuffer {
    /// NodeUpgradeJob status updates. Default 1024.
    pub update_node_upgrade_job_status: i32,
    /// NodeUpgradeJob events. Default 1.
    pub node_upgrade_job_event: i32,
}

/// NodeUpgradeJobController worker counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeUpgradeJobControllerLoad {
    /// NodeUpgradeJob workers; must not be negative. Default 1.
    pub node_upgrade_job_workers: i32,
}

/// SyncController: reconciliation of acknowledged objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncController {
    /// Runs the module. Default `true`.
    pub enable: bool,
}

/// DynamicController: generic list/watch for edge MetaServers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DynamicController {
    /// Runs the module. Default `false`.
    pub enable: bool,
}

/// CloudStream: the tunnel for logs, exec and metrics of edge pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudStream {
    /// Runs the module. Default `false`.
    pub enable: bool,
    /// CA certificate of the edge tunnel. Default
    /// `/etc/kubeedge/ca/rootCA.crt`.
    #[serde(rename = "tlsTunnelCAFile")]
    pub tls_tunnel_ca_file: String,
    /// Certificate of the edge tunnel server. Default
    /// `/etc/kubeedge/certs/server.crt`.
    pub tls_tunnel_cert_file: String,
    /// Private key of the edge tunnel server. Default
    /// `/etc/kubeedge/certs/server.key`.
    pub tls_tunnel_private_key_file: String,
    /// Port of the tunnel server edge nodes connect to. Default 10004.
    pub tunnel_port: u32,
    /// CA certificate of kube-apiserver's client. Default
    /// `/etc/kubeedge/ca/streamCA.crt`.
    #[serde(rename = "tlsStreamCAFile")]
    pub tls_stream_ca_file: String,
    /// Certificate of the stream server. Default
    /// `/etc/kubeedge/certs/stream.crt`.
    pub tls_stream_cert_file: String,
    /// Private key of the stream server. Default
    /// `/etc/kubeedge/certs/stream.key`.
    pub tls_stream_private_key_file: String,
    /// Port of the stream server the API server connects to. Default 10003.
    pub stream_port: u32,
}

impl Default for CloudStream {
    fn default() -> Self {
        Self {
            enable: false,
            tls_tunnel_ca_file: DEFAULT_CA_FILE.to_owned(),
            tls_tunnel_cert_file: DEFAULT_CERT_FILE.to_owned(),
            tls_tunnel_private_key_file: DEFAULT_KEY_FILE.to_owned(),
            tunnel_port: 10004,
            tls_stream_ca_file: "/etc/kubeedge/ca/streamCA.crt".to_owned(),
            tls_stream_cert_file: "/etc/kubeedge/certs/stream.crt".to_owned(),
            tls_stream_private_key_file: "/etc/kubeedge/certs/stream.key".to_owned(),
            stream_port: 10003,
        }
    }
}

/// Router: the rule-based message router's REST endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Router {
    /// Runs the module. Default `false`.
    pub enable: bool,
    /// IP address to listen on. Default `0.0.0.0`.
    pub address: String,
    /// TCP port. Default 9443.
    pub port: u32,
    /// Seconds a REST request may wait for its response. Default 60.
    pub rest_timeout: u32,
}

impl Default for Router {
    fn default() -> Self {
        Self {
            enable: false,
            address: "0.0.0.0".to_owned(),
            port: 9443,
            rest_timeout: 60,
        }
    }
}

/// IptablesManager: iptables rules for the stream tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IptablesManager {
    /// Runs the module. Default `true`.
    pub enable: bool,
    /// Where the manager runs. Default `internal`.
    pub mode: IptablesMgrMode,
}

impl Default for IptablesManager {
    fn default() -> Self {
        Self {
            enable: true,
            mode: IptablesMgrMode::Internal,
        }
    }
}

/// How the iptables manager is deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IptablesMgrMode {
    /// `internal`: inside cloudcore, on the host network, forwarding to the
    /// stream port.
    Internal,
    /// `external`: a separate component forwarding to the cloudcore service.
    External,
}

/// Kedge only: the embedded Kubernetes-compatible control plane (API
/// server, scheduler, controllers) that cloudcore runs when it is not
/// attached to an existing cluster through `kubeAPIConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlPlane {
    /// Runs the embedded control plane. Default `true`.
    pub enable: bool,
    /// IP address the API server listens on. Default `127.0.0.1`.
    pub bind_address: String,
    /// HTTPS port of the API server. Default 6443.
    pub secure_port: u32,
    /// Absolute directory for the control plane's state (the SQLite
    /// database, certificates, the admin kubeconfig). Default
    /// `/var/lib/kubeedge/controlplane`.
    pub data_dir: String,
    /// Where cluster state is stored.
    pub storage: ControlPlaneStorage,
    /// CIDR (or two comma-separated CIDRs, for dual stack) service cluster
    /// IPs are allocated from. Default `10.96.0.0/12`.
    #[serde(rename = "serviceClusterIPRange")]
    pub service_cluster_ip_range: String,
    /// Largest request body the API server accepts, in bytes; must be
    /// greater than 0. Default 3145728 (3 MiB, as kube-apiserver).
    pub max_request_body_bytes: u64,
    /// The scheduler and workload controllers, each with its own switch.
    pub controllers: ControlPlaneControllers,
}

/// Kedge only: one controller of the embedded control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControllerSwitch {
    /// Runs the controller. Default `true`.
    pub enable: bool,
}

impl Default for ControllerSwitch {
    fn default() -> Self {
        Self { enable: true }
    }
}

/// Kedge only: the scheduler and workload controllers the embedded
/// control plane runs (kube-scheduler's and kube-controller-manager's
/// work). They run only with the embedded control plane; attached to an
/// existing cluster, that cluster's own controllers do this work.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlPlaneControllers {
    /// Binds pending pods to nodes.
    pub scheduler: ControllerSwitch,
    /// Rolls Deployments out through ReplicaSets.
    pub deployment: ControllerSwitch,
    /// Keeps each ReplicaSet's pod count.
    pub replica_set: ControllerSwitch,
    /// Runs a DaemonSet's pod on every matching node.
    pub daemon_set: ControllerSwitch,
    /// Runs StatefulSet pods with stable ordinal names.
    pub stateful_set: ControllerSwitch,
    /// Runs Jobs to completion, and deletes finished ones after their TTL.
    pub job: ControllerSwitch,
    /// Keeps the Endpoints and EndpointSlices of Services with selectors.
    pub endpoints: ControllerSwitch,
    /// Marks nodes that stop reporting as unknown, and taints them.
    pub node_lifecycle: NodeLifecycleController,
}

/// Kedge only: the node lifecycle controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeLifecycleController {
    /// Runs the controller. Default `true`.
    pub enable: bool,
    /// Seconds without a node status or Lease renewal after which the node
    /// is Ready=Unknown and tainted unreachable; greater than 0. Default 40.
    pub node_monitor_grace_period: u32,
    /// Evicts the pods of edge nodes (label
    /// `node-role.kubernetes.io/edge`) too once their node is unreachable
    /// longer than they tolerate. Default `false`: an edge node runs on
    /// while offline, so its pods stay bound to it.
    pub evict_edge_pods: bool,
}

impl Default for NodeLifecycleController {
    fn default() -> Self {
        Self {
            enable: true,
            node_monitor_grace_period: 40,
            evict_edge_pods: false,
        }
    }
}

impl Default for ControlPlane {
    fn default() -> Self {
        Self {
            enable: true,
            bind_address: "127.0.0.1".to_owned(),
            secure_port: 6443,
            data_dir: "/var/lib/kubeedge/controlplane".to_owned(),
            storage: ControlPlaneStorage::default(),
            service_cluster_ip_range: "10.96.0.0/12".to_owned(),
            max_request_body_bytes: 3 * 1024 * 1024,
            controllers: ControlPlaneControllers::default(),
        }
    }
}

/// Kedge only: the storage backend of the embedded control plane.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlPlaneStorage {
    /// `sqlite` (a file in `dataDir`) or `etcd`. Default `sqlite`.
    pub backend: StorageBackend,
    /// etcd client URLs (`http://host:2379` or `https://...`); required and
    /// non-empty when `backend` is `etcd`. Default empty.
    pub etcd_endpoints: Vec<String>,
}

/// Where the embedded control plane keeps cluster state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// `sqlite`: one SQLite file under `controlPlane.dataDir`; one replica.
    #[default]
    Sqlite,
    /// `etcd`: an etcd v3 cluster at `controlPlane.storage.etcdEndpoints`;
    /// several cloudcore replicas may share it.
    Etcd,
}

impl CloudCoreConfig {
    /// Every field at its KubeEdge default (`NewDefaultCloudCoreConfig`),
    /// with `modules.cloudHub.advertiseAddress` set to the host's primary
    /// IPv4 address; what `cloudcore --defaultconfig` prints.
    pub fn default_config(host: &HostInfo) -> Self {
        Self {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            common_config: CommonConfig {
                tunnel_port: 10350,
                monitor_server: MonitorServer::bound_to("127.0.0.1:9091"),
            },
            kube_api_config: KubeApiConfig {
                master: String::new(),
                content_type: "application/vnd.kubernetes.protobuf".to_owned(),
                qps: 5 * DEFAULT_NODE_LIMIT,
                burst: 10 * DEFAULT_NODE_LIMIT,
                kube_config: String::new(),
            },
            modules: Modules {
                cloud_hub: CloudHub {
                    enable: true,
                    keepalive_interval: 30,
                    node_limit: DEFAULT_NODE_LIMIT,
                    tls_ca_file: DEFAULT_CA_FILE.to_owned(),
                    tls_ca_key_file: DEFAULT_CA_KEY_FILE.to_owned(),
                    tls_cert_file: DEFAULT_CERT_FILE.to_owned(),
                    tls_private_key_file: DEFAULT_KEY_FILE.to_owned(),
                    write_timeout: 30,
                    quic: CloudHubQuic::default(),
                    unix_socket: CloudHubUnixSocket::default(),
                    websocket: CloudHubWebSocket::default(),
                    https: CloudHubHttps::default(),
                    advertise_address: vec![host.ipv4.to_string()],
                    dns_names: vec![String::new()],
                    edge_cert_signing_duration: 365,
                    token_refresh_duration: 12,
                    node_message_qps: default_node_message_qps(),
                    node_message_burst: default_node_message_burst(),
                    max_handshakes: default_max_handshakes(),
                    handshake_queue: default_handshake_queue(),
                    restart_reconnect_rate: default_restart_reconnect_rate(),
                },
                edge_controller: EdgeController {
                    enable: true,
                    node_update_frequency: 10,
                    buffer: EdgeControllerBuffer::for_node_limit(DEFAULT_NODE_LIMIT),
                    load: EdgeControllerLoad::for_node_limit(DEFAULT_NODE_LIMIT),
                },
                device_controller: DeviceController::default(),
                node_upgrade_job_controller: NodeUpgradeJobController::default(),
                sync_controller: SyncController { enable: true },
                dynamic_controller: DynamicController { enable: false },
                cloud_stream: CloudStream::default(),
                router: Router::default(),
                iptables_manager: IptablesManager::default(),
            },
            feature_gates: BTreeMap::new(),
            control_plane: ControlPlane::default(),
        }
    }

    /// The short document `cloudcore --minconfig` prints
    /// (`NewMinCloudCoreConfig`): cloudHub's node limit (1000, as KubeEdge
    /// writes it), certificates, advertise address and servers, the router,
    /// the iptables manager and the control plane's switch and storage.
    /// Its [`MinConfig::config`] is what loading it gives.
    ///
    /// Unlike KubeEdge's, the document does not write `enable: false` for
    /// cloudHub (a Go zero value there that would switch the hub off).
    pub fn min_config(host: &HostInfo) -> MinConfig<Self> {
        let mut config = Self::default_config(host);
        config.modules.cloud_hub.node_limit = MIN_CONFIG_NODE_LIMIT;
        config.adjust_for_node_limit();
        MinConfig::new(config, MIN_CONFIG_FIELDS)
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

    /// Parses YAML text laid over [`default_config(host)`](Self::default_config),
    /// validates it, then applies [`adjust_for_node_limit`](Self::adjust_for_node_limit)
    /// as cloudcore does right after loading.
    pub fn from_yaml_str_with_host(text: &str, host: &HostInfo) -> Result<Self, ConfigError> {
        let mut config: Self = document::layered(&Self::default_config(host), text, &TYPE_META)?;
        config.validate()?;
        config.adjust_for_node_limit();
        Ok(config)
    }

    /// The configuration as a YAML document, which loads back to an equal
    /// value.
    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        document::to_yaml(self)
    }

    /// Raises the settings that must grow with `modules.cloudHub.nodeLimit`
    /// (KubeEdge's `AdjustCloudCoreConfig`): sets the API client's QPS and
    /// burst to 5× and 10× the limit, and raises edgeController's node and
    /// lease workers and buffers to at least their node-limit-derived
    /// defaults. Returns whether anything changed.
    pub fn adjust_for_node_limit(&mut self) -> bool {
        let node_limit = self.modules.cloud_hub.node_limit;
        let mut changed = false;
        let mut set = |slot: &mut i32, value: i32, at_least: bool| {
            let differs = if at_least {
                *slot < value
            } else {
                *slot != value
            };
            if differs {
                *slot = value;
                changed = true;
            }
        };
        let api = &mut self.kube_api_config;
        set(&mut api.qps, node_limit.saturating_mul(5), false);
        set(&mut api.burst, node_limit.saturating_mul(10), false);
        let wanted_load = EdgeControllerLoad::for_node_limit(node_limit);
        let load = &mut self.modules.edge_controller.load;
        set(
            &mut load.query_node_workers,
            wanted_load.query_node_workers,
            true,
        );
        set(
            &mut load.patch_node_workers,
            wanted_load.patch_node_workers,
            true,
        );
        set(
            &mut load.create_lease_workers,
            wanted_load.create_lease_workers,
            true,
        );
        let wanted_buffer = EdgeControllerBuffer::for_node_limit(node_limit);
        let buffer = &mut self.modules.edge_controller.buffer;
        set(&mut buffer.patch_node, wanted_buffer.patch_node, true);
        set(&mut buffer.query_node, wanted_buffer.query_node, true);
        set(&mut buffer.create_lease, wanted_buffer.create_lease, true);
        changed
    }

    /// Checks the configuration without touching the filesystem, following
    /// KubeEdge's `ValidateCloudCoreConfiguration` (modules that are off are
    /// not checked) plus Kedge's rules for ports, addresses, counts and the
    /// control plane. Returns every problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        TYPE_META.check(&self.api_version, &self.kind)?;
        let mut v = Validator::default();
        self.validate_common(&mut v);
        self.validate_modules(&mut v);
        self.control_plane.validate(&mut v);
        v.finish()
    }

    fn validate_common(&self, v: &mut Validator) {
        v.port("commonConfig.tunnelPort", self.common_config.tunnel_port);
        v.ip_port(
            "commonConfig.monitorServer.bindAddress",
            &self.common_config.monitor_server.bind_address,
        );
        let api = &self.kube_api_config;
        if !api.kube_config.is_empty() {
            v.absolute_path("kubeAPIConfig.kubeConfig", &api.kube_config);
        }
        if !api.master.is_empty() {
            v.url("kubeAPIConfig.master", &api.master, &["https", "http"]);
        }
        v.non_negative("kubeAPIConfig.qps", api.qps);
        v.non_negative("kubeAPIConfig.burst", api.burst);
    }

    fn validate_modules(&self, v: &mut Validator) {
        let m = &self.modules;
        let hub = &m.cloud_hub;
        if hub.enable {
            v.positive("modules.cloudHub.nodeLimit", hub.node_limit);
            v.positive("modules.cloudHub.keepaliveInterval", hub.keepalive_interval);
            v.positive("modules.cloudHub.writeTimeout", hub.write_timeout);
            v.positive("modules.cloudHub.nodeMessageQPS", hub.node_message_qps);
            v.positive("modules.cloudHub.nodeMessageBurst", hub.node_message_burst);
            v.positive("modules.cloudHub.maxHandshakes", hub.max_handshakes);
            v.non_negative("modules.cloudHub.handshakeQueue", hub.handshake_queue);
            v.non_negative(
                "modules.cloudHub.restartReconnectRate",
                hub.restart_reconnect_rate,
            );
            v.positive(
                "modules.cloudHub.tokenRefreshDuration",
                hub.token_refresh_duration,
            );
            v.positive(
                "modules.cloudHub.edgeCertSigningDuration",
                hub.edge_cert_signing_duration,
            );
            for (i, address) in hub.advertise_address.iter().enumerate() {
                v.ip(&format!("modules.cloudHub.advertiseAddress[{i}]"), address);
            }
            v.port("modules.cloudHub.websocket.port", hub.websocket.port);
            v.ip("modules.cloudHub.websocket.address", &hub.websocket.address);
            v.port("modules.cloudHub.quic.port", hub.quic.port);
            v.ip("modules.cloudHub.quic.address", &hub.quic.address);
            v.positive(
                "modules.cloudHub.quic.maxIncomingStreams",
                hub.quic.max_incoming_streams,
            );
            v.port("modules.cloudHub.https.port", hub.https.port);
            v.ip("modules.cloudHub.https.address", &hub.https.address);
            let socket = &hub.unix_socket.address;
            let has_scheme = socket
                .get(..7)
                .is_some_and(|p| p.eq_ignore_ascii_case("unix://"));
            v.check(
                has_scheme && socket.len() > 7,
                "modules.cloudHub.unixsocket.address",
                "must be unix:// followed by a socket path",
            );
        }
        let ec = &m.edge_controller;
        if ec.enable {
            v.positive(
                "modules.edgeController.nodeUpdateFrequency",
                ec.node_update_frequency,
            );
            for (name, value) in ec.buffer.counts() {
                v.non_negative(&format!("modules.edgeController.buffer.{name}"), value);
            }
            for (name, value) in ec.load.counts() {
                v.non_negative(&format!("modules.edgeController.load.{name}"), value);
            }
        }
        let dc = &m.device_controller;
        if dc.enable {
            let b = &dc.buffer;
            v.non_negative(
                "modules.deviceController.buffer.updateDeviceStatus",
                b.update_device_status,
            );
            v.non_negative(
                "modules.deviceController.buffer.deviceEvent",
                b.device_event,
            );
            v.non_negative(
                "modules.deviceController.buffer.deviceModelEvent",
                b.device_model_event,
            );
            v.non_negative(
                "modules.deviceController.load.updateDeviceStatusWorkers",
                dc.load.update_device_status_workers,
            );
        }
        let nu = &m.node_upgrade_job_controller;
        if nu.enable {
            v.non_negative(
                "modules.nodeUpgradeJobController.buffer.updateNodeUpgradeJobStatus",
                nu.buffer.update_node_upgrade_job_status,
            );
            v.non_negative(
                "modules.nodeUpgradeJobController.buffer.nodeUpgradeJobEvent",
                nu.buffer.node_upgrade_job_event,
            );
            v.non_negative(
                "modules.nodeUpgradeJobController.load.nodeUpgradeJobWorkers",
                nu.load.node_upgrade_job_workers,
            );
        }
        let cs = &m.cloud_stream;
        if cs.enable {
            v.port("modules.cloudStream.tunnelPort", cs.tunnel_port);
            v.port("modules.cloudStream.streamPort", cs.stream_port);
        }
        let router = &m.router;
        if router.enable {
            v.ip("modules.router.address", &router.address);
            v.port("modules.router.port", router.port);
            v.positive("modules.router.restTimeout", router.rest_timeout);
        }
    }
}

impl EdgeControllerBuffer {
    fn counts(&self) -> [(&'static str, i32); 22] {
        [
            ("updatePodStatus", self.update_pod_status),
            ("updateNodeStatus", self.update_node_status),
            ("queryConfigMap", self.query_config_map),
            ("querySecret", self.query_secret),
            ("podEvent", self.pod_event),
            ("configMapEvent", self.config_map_event),
            ("secretEvent", self.secret_event),
            ("rulesEvent", self.rules_event),
            ("ruleEndpointsEvent", self.rule_endpoints_event),
            ("queryPersistentVolume", self.query_persistent_volume),
            (
                "queryPersistentVolumeClaim",
                self.query_persistent_volume_claim,
            ),
            ("queryVolumeAttachment", self.query_volume_attachment),
            ("createNode", self.create_node),
            ("patchNode", self.patch_node),
            ("queryNode", self.query_node),
            ("updateNode", self.update_node),
            ("patchPod", self.patch_pod),
            ("deletePod", self.delete_pod),
            ("createLease", self.create_lease),
            ("queryLease", self.query_lease),
            ("serviceAccountToken", self.service_account_token),
            ("createPod", self.create_pod),
        ]
    }
}

impl EdgeControllerLoad {
    fn counts(&self) -> [(&'static str, i32); 18] {
        [
            ("updatePodStatusWorkers", self.update_pod_status_workers),
            ("updateNodeStatusWorkers", self.update_node_status_workers),
            ("queryConfigMapWorkers", self.query_config_map_workers),
            ("querySecretWorkers", self.query_secret_workers),
            (
                "queryPersistentVolumeWorkers",
                self.query_persistent_volume_workers,
            ),
            (
                "queryPersistentVolumeClaimWorkers",
                self.query_persistent_volume_claim_workers,
            ),
            (
                "queryVolumeAttachmentWorkers",
                self.query_volume_attachment_workers,
            ),
            ("createNodeWorkers", self.create_node_workers),
            ("patchNodeWorkers", self.patch_node_workers),
            ("queryNodeWorkers", self.query_node_workers),
            ("updateNodeWorkers", self.update_node_workers),
            ("patchPodWorkers", self.patch_pod_workers),
            ("deletePodWorkers", self.delete_pod_workers),
            ("createLeaseWorkers", self.create_lease_workers),
            ("queryLeaseWorkers", self.query_lease_workers),
            ("UpdateRuleStatusWorkers", self.update_rule_status_workers),
            (
                "ServiceAccountTokenWorkers",
                self.service_account_token_workers,
            ),
            ("CreatePodWorks", self.create_pod_works),
        ]
    }
}

impl ControlPlane {
    fn validate(&self, v: &mut Validator) {
        if !self.enable {
            return;
        }
        v.ip("controlPlane.bindAddress", &self.bind_address);
        v.port("controlPlane.securePort", self.secure_port);
        v.absolute_path("controlPlane.dataDir", &self.data_dir);
        let ranges: Vec<&str> = self.service_cluster_ip_range.split(',').collect();
        v.check(
            ranges.len() <= 2 && ranges.iter().all(|r| is_cidr(r.trim())),
            "controlPlane.serviceClusterIPRange",
            "must be a CIDR such as 10.96.0.0/12, or two comma-separated CIDRs",
        );
        v.check(
            self.max_request_body_bytes > 0,
            "controlPlane.maxRequestBodyBytes",
            "must be greater than 0",
        );
        v.check(
            self.controllers.node_lifecycle.node_monitor_grace_period > 0,
            "controlPlane.controllers.nodeLifecycle.nodeMonitorGracePeriod",
            "must be greater than 0",
        );
        match self.storage.backend {
            StorageBackend::Sqlite => {}
            StorageBackend::Etcd => {
                v.check(
                    !self.storage.etcd_endpoints.is_empty(),
                    "controlPlane.storage.etcdEndpoints",
                    "at least one etcd endpoint is required when backend is etcd",
                );
                for (i, endpoint) in self.storage.etcd_endpoints.iter().enumerate() {
                    v.url(
                        &format!("controlPlane.storage.etcdEndpoints[{i}]"),
                        endpoint,
                        &["http", "https"],
                    );
                }
            }
        }
    }
}
