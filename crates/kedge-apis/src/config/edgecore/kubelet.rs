//! `modules.edged.tailoredKubeletConfig`: the kubelet settings edged takes,
//! KubeEdge's `TailoredKubeletConfiguration` (a cut of the kubelet's
//! `KubeletConfiguration` v1beta1 from Kubernetes 1.26), with the defaults of
//! KubeEdge's `SetDefaultsKubeletConfiguration`.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::config::duration::{GoDuration, nanos};

/// The kubelet configuration edged runs with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TailoredKubeletConfiguration {
    /// Longest period between syncs of running containers and config.
    /// Default `1m0s`.
    pub sync_frequency: GoDuration,
    /// IP address edged's server listens on. Default `127.0.0.1`.
    pub address: String,
    /// Read-only port of edged's server (0 disables it). Default 10350.
    pub read_only_port: i32,
    /// Image pulls per second (0: no limit). Default 5.
    #[serde(rename = "registryPullQPS")]
    pub registry_pull_qps: i32,
    /// Burst of image pulls. Default 10.
    pub registry_burst: i32,
    /// Event creations per second (0: no limit). Default unset (omitted).
    #[serde(rename = "eventRecordQPS", skip_serializing_if = "Option::is_none")]
    pub event_record_qps: Option<i32>,
    /// Burst of event creations. Default 0.
    pub event_burst: i32,
    /// Serves logs, exec, attach and port-forward. Default `true`.
    pub enable_debugging_handlers: bool,
    /// Lock contention profiling (with debugging handlers). Default `false`.
    pub enable_contention_profiling: bool,
    /// OOM score adjustment of the edgecore process, -1000 to 1000.
    /// Default -999.
    pub oom_score_adj: i32,
    /// Cluster DNS domain added to containers' search paths. Default
    /// `cluster.local`.
    pub cluster_domain: String,
    /// Cluster DNS server IPs given to containers. Default empty.
    #[serde(rename = "clusterDNS")]
    pub cluster_dns: Vec<String>,
    /// Idle time after which streaming connections close. Default `4h0m0s`.
    pub streaming_connection_idle_timeout: GoDuration,
    /// How often node status is computed. Default `10s`.
    pub node_status_update_frequency: GoDuration,
    /// How often unchanged node status is posted. Default `5m0s`.
    pub node_status_report_frequency: GoDuration,
    /// Duration of the node lease, in seconds; must be greater than 0.
    /// Default 40.
    pub node_lease_duration_seconds: i32,
    /// Minimum age of an unused image before garbage collection. Default
    /// `2m0s`.
    #[serde(rename = "imageMinimumGCAge")]
    pub image_minimum_gc_age: GoDuration,
    /// Disk usage percent above which image GC always runs, 0 to 100.
    /// Default 80.
    #[serde(rename = "imageGCHighThresholdPercent")]
    pub image_gc_high_threshold_percent: i32,
    /// Disk usage percent image GC frees down to, 0 to 100 and below the
    /// high threshold. Default 40.
    #[serde(rename = "imageGCLowThresholdPercent")]
    pub image_gc_low_threshold_percent: i32,
    /// How often volume disk usage is computed. Default `1m0s`.
    pub volume_stats_agg_period: GoDuration,
    /// Cgroup to isolate edged in. Default empty.
    pub kubelet_cgroups: String,
    /// Cgroup for non-kernel processes outside containers. Default empty.
    pub system_cgroups: String,
    /// Root cgroup for pods. Default empty.
    pub cgroup_root: String,
    /// QoS-class cgroup hierarchy. Default `true`.
    #[serde(rename = "cgroupsPerQOS")]
    pub cgroups_per_qos: bool,
    /// Cgroup driver, `cgroupfs` or `systemd`. Default `cgroupfs`.
    pub cgroup_driver: String,
    /// CPU manager policy. Default `none`.
    pub cpu_manager_policy: String,
    /// CPU manager policy options. Default empty.
    pub cpu_manager_policy_options: BTreeMap<String, String>,
    /// CPU manager reconcile period. Default `10s`.
    pub cpu_manager_reconcile_period: GoDuration,
    /// Memory manager policy. Default `None`.
    pub memory_manager_policy: String,
    /// Topology manager policy. Default `none`.
    pub topology_manager_policy: String,
    /// Topology manager scope. Default `container`.
    pub topology_manager_scope: String,
    /// Resource percentages reserved for guaranteed pods. Default empty.
    pub qos_reserved: BTreeMap<String, String>,
    /// Timeout of runtime requests other than long-running ones. Default
    /// `2m0s`.
    pub runtime_request_timeout: GoDuration,
    /// Hairpin NAT mode. Default `promiscuous-bridge`.
    pub hairpin_mode: String,
    /// Maximum pods on the node; must not be negative. Default 110.
    pub max_pods: i32,
    /// Pod CIDR (standalone mode only). Default empty.
    #[serde(rename = "podCIDR")]
    pub pod_cidr: String,
    /// Maximum PIDs per pod (-1: node allocatable). Default -1.
    pub pod_pids_limit: i64,
    /// Resolver configuration file containers' DNS is based on. Default
    /// `/etc/resolv.conf`.
    pub resolv_conf: String,
    /// CPU CFS quota enforcement for CPU limits. Default `true`.
    #[serde(rename = "cpuCFSQuota")]
    pub cpu_cfs_quota: bool,
    /// CPU CFS quota period. Default `100ms`.
    #[serde(rename = "cpuCFSQuotaPeriod")]
    pub cpu_cfs_quota_period: GoDuration,
    /// Images reported in node status (-1: no cap). Default 0.
    pub node_status_max_images: i32,
    /// Files the edgecore process may open. Default 1000000.
    pub max_open_files: i64,
    /// Content type of API requests. Default `application/json`.
    pub content_type: String,
    /// Pull images one at a time. Default `true`.
    pub serialize_image_pulls: bool,
    /// Hard eviction thresholds by signal. Default `memory.available: 100Mi`,
    /// `nodefs.available: 10%`, `nodefs.inodesFree: 5%`,
    /// `imagefs.available: 15%`; entries in the file are merged into these.
    pub eviction_hard: BTreeMap<String, String>,
    /// Soft eviction thresholds by signal. Default empty.
    pub eviction_soft: BTreeMap<String, String>,
    /// Grace periods of the soft eviction thresholds. Default empty.
    pub eviction_soft_grace_period: BTreeMap<String, String>,
    /// Wait before leaving an eviction pressure condition. Default `5m0s`.
    pub eviction_pressure_transition_period: GoDuration,
    /// Maximum grace period, in seconds, for soft evictions. Default 0.
    pub eviction_max_pod_grace_period: i32,
    /// Minimum reclaim per eviction signal. Default empty.
    pub eviction_minimum_reclaim: BTreeMap<String, String>,
    /// Maximum pods per core (0: no limit). Default 0.
    pub pods_per_core: i32,
    /// Volumes attached by the attach/detach controller. Default `true`.
    pub enable_controller_attach_detach: bool,
    /// Fail rather than adjust kernel flags. Default `false`.
    pub protect_kernel_defaults: bool,
    /// Maintain the iptables utility chains. Default `true`.
    #[serde(rename = "makeIPTablesUtilChains")]
    pub make_iptables_util_chains: bool,
    /// fwmark bit for SNAT, 0 to 31. Default 14.
    pub iptables_masquerade_bit: i32,
    /// fwmark bit for dropped packets, 0 to 31. Default 15.
    pub iptables_drop_bit: i32,
    /// Kubernetes feature gates of edged. Default empty.
    pub feature_gates: BTreeMap<String, bool>,
    /// Refuse to start with swap on. Default `false`.
    pub fail_swap_on: bool,
    /// Swap available to workloads.
    pub memory_swap: MemorySwapConfiguration,
    /// Size at which a container log is rotated. Default `10Mi`.
    pub container_log_max_size: String,
    /// Rotated log files kept per container. Default 5.
    pub container_log_max_files: i32,
    /// How config maps and secrets are refreshed: `Get`, `Cache` or
    /// `Watch`. Default `Get`.
    pub config_map_and_secret_change_detection_strategy: String,
    /// Resources reserved for the system (`cpu: 200m`, ...). Default empty.
    pub system_reserved: BTreeMap<String, String>,
    /// Resources reserved for Kubernetes components. Default empty.
    pub kube_reserved: BTreeMap<String, String>,
    /// CPU list reserved for system and Kubernetes threads. Default empty.
    #[serde(rename = "reservedSystemCPUs")]
    pub reserved_system_cpus: String,
    /// Previous version whose hidden metrics are shown. Default empty.
    pub show_hidden_metrics_for_version: String,
    /// Cgroup enforcing `systemReserved`. Default empty.
    pub system_reserved_cgroup: String,
    /// Cgroup enforcing `kubeReserved`. Default empty.
    pub kube_reserved_cgroup: String,
    /// Node allocatable enforcements (`pods`, `system-reserved`,
    /// `kube-reserved`, `none`). Default `[pods]`.
    pub enforce_node_allocatable: Vec<String>,
    /// Unsafe sysctls (or patterns ending in `*`) pods may set. Default empty.
    pub allowed_unsafe_sysctls: Vec<String>,
    /// Directory of third-party volume plugins. Default
    /// `/usr/libexec/kubernetes/kubelet-plugins/volume/exec/`.
    pub volume_plugin_dir: String,
    /// Kernel memcg notifications for memory eviction. Default `false`.
    pub kernel_memcg_notification: bool,
    /// Logging options.
    pub logging: LoggingConfiguration,
    /// Serves system logs at `/logs/`. Default `true`.
    pub enable_system_log_handler: bool,
    /// Total delay of node shutdown for pod termination. Default `0s`.
    pub shutdown_grace_period: GoDuration,
    /// Part of the shutdown delay kept for critical pods. Default `0s`.
    pub shutdown_grace_period_critical_pods: GoDuration,
    /// Shutdown grace periods by pod priority. Default empty.
    pub shutdown_grace_period_by_pod_priority: Vec<ShutdownGracePeriodByPodPriority>,
    /// Memory reserved per NUMA node for the memory manager. Default empty.
    pub reserved_memory: Vec<MemoryReservation>,
    /// Serves profiling at `/debug/pprof/`. Default `true`.
    pub enable_profiling_handler: bool,
    /// Serves `/debug/flags/v`. Default `true`.
    pub enable_debug_flags_handler: bool,
    /// `RuntimeDefault` seccomp profile for all workloads. Default `false`.
    pub seccomp_default: bool,
    /// Factor of the memory limit used for cgroup v2 `memory.high`.
    /// Default 0.8.
    pub memory_throttling_factor: f64,
    /// Taints the node registers with. Default empty.
    pub register_with_taints: Vec<Taint>,
    /// Register the node with the API server. Default `true`.
    pub register_node: bool,
    /// Directory (or file) of static pod manifests. Default
    /// `/etc/kubeedge/manifests`.
    pub static_pod_path: String,
}

impl Default for TailoredKubeletConfiguration {
    /// KubeEdge's `SetDefaultsKubeletConfiguration` (Linux values).
    fn default() -> Self {
        let strings = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        Self {
            sync_frequency: GoDuration::from_mins(1),
            address: "127.0.0.1".to_owned(),
            read_only_port: 10350,
            registry_pull_qps: 5,
            registry_burst: 10,
            event_record_qps: None,
            event_burst: 0,
            enable_debugging_handlers: true,
            enable_contention_profiling: false,
            oom_score_adj: -999,
            cluster_domain: "cluster.local".to_owned(),
            cluster_dns: Vec::new(),
            streaming_connection_idle_timeout: GoDuration::from_hours(4),
            node_status_update_frequency: GoDuration::from_secs(10),
            node_status_report_frequency: GoDuration::from_mins(5),
            node_lease_duration_seconds: 40,
            image_minimum_gc_age: GoDuration::from_mins(2),
            image_gc_high_threshold_percent: 80,
            image_gc_low_threshold_percent: 40,
            volume_stats_agg_period: GoDuration::from_mins(1),
            kubelet_cgroups: String::new(),
            system_cgroups: String::new(),
            cgroup_root: String::new(),
            cgroups_per_qos: true,
            cgroup_driver: "cgroupfs".to_owned(),
            cpu_manager_policy: "none".to_owned(),
            cpu_manager_policy_options: BTreeMap::new(),
            cpu_manager_reconcile_period: GoDuration::from_secs(10),
            memory_manager_policy: "None".to_owned(),
            topology_manager_policy: "none".to_owned(),
            topology_manager_scope: "container".to_owned(),
            qos_reserved: BTreeMap::new(),
            runtime_request_timeout: GoDuration::from_mins(2),
            hairpin_mode: "promiscuous-bridge".to_owned(),
            max_pods: 110,
            pod_cidr: String::new(),
            pod_pids_limit: -1,
            resolv_conf: "/etc/resolv.conf".to_owned(),
            cpu_cfs_quota: true,
            cpu_cfs_quota_period: GoDuration::from_millis(100),
            node_status_max_images: 0,
            max_open_files: 1_000_000,
            content_type: "application/json".to_owned(),
            serialize_image_pulls: true,
            eviction_hard: strings(&[
                ("memory.available", "100Mi"),
                ("nodefs.available", "10%"),
                ("nodefs.inodesFree", "5%"),
                ("imagefs.available", "15%"),
            ]),
            eviction_soft: BTreeMap::new(),
            eviction_soft_grace_period: BTreeMap::new(),
            eviction_pressure_transition_period: GoDuration::from_mins(5),
            eviction_max_pod_grace_period: 0,
            eviction_minimum_reclaim: BTreeMap::new(),
            pods_per_core: 0,
            enable_controller_attach_detach: true,
            protect_kernel_defaults: false,
            make_iptables_util_chains: true,
            iptables_masquerade_bit: 14,
            iptables_drop_bit: 15,
            feature_gates: BTreeMap::new(),
            fail_swap_on: false,
            memory_swap: MemorySwapConfiguration::default(),
            container_log_max_size: "10Mi".to_owned(),
            container_log_max_files: 5,
            config_map_and_secret_change_detection_strategy: "Get".to_owned(),
            system_reserved: BTreeMap::new(),
            kube_reserved: BTreeMap::new(),
            reserved_system_cpus: String::new(),
            show_hidden_metrics_for_version: String::new(),
            system_reserved_cgroup: String::new(),
            kube_reserved_cgroup: String::new(),
            enforce_node_allocatable: vec!["pods".to_owned()],
            allowed_unsafe_sysctls: Vec::new(),
            volume_plugin_dir: "/usr/libexec/kubernetes/kubelet-plugins/volume/exec/".to_owned(),
            kernel_memcg_notification: false,
            logging: LoggingConfiguration::default(),
            enable_system_log_handler: true,
            shutdown_grace_period: GoDuration::ZERO,
            shutdown_grace_period_critical_pods: GoDuration::ZERO,
            shutdown_grace_period_by_pod_priority: Vec::new(),
            reserved_memory: Vec::new(),
            enable_profiling_handler: true,
            enable_debug_flags_handler: true,
            seccomp_default: false,
            memory_throttling_factor: 0.8,
            register_with_taints: Vec::new(),
            register_node: true,
            static_pod_path: "/etc/kubeedge/manifests".to_owned(),
        }
    }
}

/// Swap available to container workloads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemorySwapConfiguration {
    /// `""`, `LimitedSwap` or `UnlimitedSwap`. Default empty.
    pub swap_behavior: String,
}

/// Logging options (Kubernetes component-base `LoggingConfiguration`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoggingConfiguration {
    /// Log format, `text` or `json`. Default `text`.
    pub format: String,
    /// Longest time between log flushes, written as integer nanoseconds
    /// (a Go duration string is read too). Default 5000000000 (5 s).
    #[serde(with = "nanos")]
    pub flush_frequency: GoDuration,
    /// Verbosity threshold. Default 0.
    pub verbosity: u32,
    /// Per-file verbosity overrides. Default empty.
    pub vmodule: Vec<VModuleItem>,
    /// Format-specific options.
    pub options: FormatOptions,
}

impl Default for LoggingConfiguration {
    /// Kubernetes' `SetRecommendedLoggingConfiguration`.
    fn default() -> Self {
        Self {
            format: "text".to_owned(),
            flush_frequency: GoDuration::from_secs(5),
            verbosity: 0,
            vmodule: Vec::new(),
            options: FormatOptions::default(),
        }
    }
}

/// A per-file verbosity override.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct VModuleItem {
    /// Base file name or glob pattern (no `.go`). Default empty.
    pub file_pattern: String,
    /// Verbosity for matching files. Default 0.
    pub verbosity: u32,
}

/// Format-specific logging options.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FormatOptions {
    /// Options of the `json` format.
    pub json: JsonOptions,
}

/// Options of the `json` log format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsonOptions {
    /// Errors to stderr, info to buffered stdout. Default `false`.
    pub split_stream: bool,
    /// Size of the info stream buffer with split streams. Default `0`.
    pub info_buffer_size: Quantity,
}

impl Default for JsonOptions {
    fn default() -> Self {
        Self {
            split_stream: false,
            info_buffer_size: Quantity("0".to_owned()),
        }
    }
}

/// The shutdown grace period of pods from a priority up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ShutdownGracePeriodByPodPriority {
    /// Lowest pod priority this entry applies to. Default 0.
    pub priority: i32,
    /// Grace period in seconds. Default 0.
    pub shutdown_grace_period_seconds: i64,
}

/// Memory reserved on one NUMA node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MemoryReservation {
    /// The NUMA node. Default 0.
    pub numa_node: i32,
    /// Reserved quantity per memory type (`memory`, `hugepages-2Mi`).
    pub limits: BTreeMap<String, Quantity>,
}

/// A Kubernetes taint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Taint {
    /// Taint key.
    pub key: String,
    /// Taint value.
    pub value: String,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: String,
    /// RFC 3339 time the taint was added (NoExecute taints only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_added: Option<String>,
}

/// A Kubernetes resource quantity (`100Mi`, `0.5`, `2`), kept as written;
/// a bare number in the file is read as its decimal text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Quantity(pub String);

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct QuantityVisitor;

        impl Visitor<'_> for QuantityVisitor {
            type Value = Quantity;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a resource quantity such as \"100Mi\" or a number")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
                Ok(Quantity(v.to_owned()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
        }

        deserializer.deserialize_any(QuantityVisitor)
    }
}
