//! Loading, defaulting, validating and writing `edgecore.yaml`.

use std::net::Ipv4Addr;

use kedge_apis::config::edgecore::{EdgeCoreConfig, MqttMode, Quantity, Taint};
use kedge_apis::config::{ConfigError, DEFAULT_HOSTNAME_OVERRIDE, GoDuration, HostInfo};
use pretty_assertions::assert_eq;

fn host() -> HostInfo {
    HostInfo::new("edge-1", Ipv4Addr::new(192, 168, 1, 10))
}

fn parse(text: &str) -> Result<EdgeCoreConfig, ConfigError> {
    EdgeCoreConfig::from_yaml_str_with_host(text, &host())
}

fn field_error(text: &str) -> (String, String) {
    match parse(text) {
        Err(ConfigError::Field { path, message }) => (path, message),
        other => panic!("expected a field error for {text:?}, got {other:?}"),
    }
}

fn invalid_paths(text: &str) -> Vec<String> {
    match parse(text) {
        Err(ConfigError::Invalid { errors }) => errors.into_iter().map(|e| e.path).collect(),
        other => panic!("expected validation errors for {text:?}, got {other:?}"),
    }
}

#[test]
fn defaults_follow_kubeedge() {
    let c = EdgeCoreConfig::default_config(&host());
    assert_eq!(c.api_version, "edgecore.config.kubeedge.io/v1alpha2");
    assert_eq!(c.kind, "EdgeCore");
    assert_eq!(c.database.driver_name, "sqlite3");
    assert_eq!(c.database.data_source, "/var/lib/kubeedge/edgecore.db");
    assert_eq!(c.monitor_server.bind_address, "127.0.0.1:10352");
    assert!(!c.monitor_server.enable_profiling);

    let edged = &c.modules.edged;
    assert!(edged.enable);
    let flag = &edged.tailored_kubelet_flag;
    assert_eq!(flag.hostname_override, "edge-1");
    assert_eq!(flag.node_ip, "");
    assert_eq!(flag.container_runtime_options.container_runtime, "remote");
    assert_eq!(
        flag.container_runtime_options.pod_sandbox_image,
        "kubeedge/pause:3.6"
    );
    assert_eq!(
        flag.remote_runtime_endpoint,
        "unix:///run/containerd/containerd.sock"
    );
    assert_eq!(flag.max_container_count, -1);
    assert_eq!(flag.minimum_gc_age, GoDuration::ZERO);
    let k = &edged.tailored_kubelet_config;
    assert_eq!(k.sync_frequency.to_string(), "1m0s");
    assert_eq!(k.read_only_port, 10350);
    assert_eq!(k.cgroup_driver, "cgroupfs");
    assert_eq!(k.oom_score_adj, -999);
    assert_eq!(k.image_gc_high_threshold_percent, 80);
    assert_eq!(k.image_gc_low_threshold_percent, 40);
    assert_eq!(k.event_record_qps, None);
    assert_eq!(k.eviction_hard.len(), 4);
    assert_eq!(k.memory_throttling_factor, 0.8);
    assert_eq!(k.logging.flush_frequency, GoDuration::from_secs(5));
    assert_eq!(
        k.logging.options.json.info_buffer_size,
        Quantity("0".into())
    );
    assert_eq!(k.static_pod_path, "/etc/kubeedge/manifests");

    let hub = &c.modules.edge_hub;
    assert!(hub.enable);
    assert_eq!(hub.heartbeat, 15);
    assert_eq!(hub.message_qps, 30);
    assert_eq!(hub.message_burst, 60);
    assert_eq!(hub.websocket.server, "192.168.1.10:10000");
    assert!(hub.websocket.enable);
    assert_eq!(hub.quic.server, "192.168.1.10:10001");
    assert!(!hub.quic.enable);
    assert_eq!(hub.http_server, "https://192.168.1.10:10002");
    assert!(hub.rotate_certificates);
    assert_eq!(hub.reconnect_backoff_base, GoDuration::from_secs(1));
    assert_eq!(hub.reconnect_backoff_max, GoDuration::from_secs(30));
    assert_eq!(hub.outbox_file, "");
    assert_eq!(hub.outbox_capacity, 10_000);
    assert_eq!(hub.outbox_resend_after, GoDuration::from_secs(10));

    let bus = &c.modules.event_bus;
    // Kedge embeds a broker by default; KubeEdge's default is External.
    assert_eq!(bus.mqtt_mode, MqttMode::Internal);
    assert_eq!(bus.mqtt_server_external, "tcp://127.0.0.1:1883");
    assert_eq!(bus.mqtt_server_internal, "tcp://127.0.0.1:1884");
    let meta = &c.modules.meta_manager;
    assert_eq!(meta.context_send_module, "websocket");
    assert_eq!(meta.meta_server.server, "127.0.0.1:10550");
    assert!(!meta.meta_server.enable);
    assert!(!c.modules.service_bus.enable);
    assert!(c.modules.device_twin.enable);
    assert!(!c.modules.db_test.enable);
    assert!(!c.modules.edge_stream.enable);
    assert_eq!(c.modules.edge_stream.tunnel_server, "127.0.0.1:10004");
    c.validate().unwrap();
}

#[test]
fn host_name_that_is_not_a_node_name_falls_back() {
    let upper = HostInfo::new("Edge_Box", Ipv4Addr::new(10, 1, 1, 1));
    let c = EdgeCoreConfig::default_config(&upper);
    assert_eq!(
        c.modules.edged.tailored_kubelet_flag.hostname_override,
        DEFAULT_HOSTNAME_OVERRIDE
    );
    assert_eq!(c.modules.edge_hub.websocket.server, "10.1.1.1:10000");
}

#[test]
fn defaults_serialise_and_parse_back_equal() {
    let defaults = EdgeCoreConfig::default_config(&host());
    let yaml = defaults.to_yaml().unwrap();
    assert!(yaml.contains("flushFrequency: 5000000000"), "{yaml}");
    assert!(!yaml.contains("eventRecordQPS"), "{yaml}");
    // Edged's flags are written inline, as KubeEdge writes them.
    assert!(yaml.contains("\n    hostnameOverride: edge-1\n"), "{yaml}");
    assert!(yaml.contains("\n    containerRuntime: remote\n"), "{yaml}");
    assert_eq!(parse(&yaml).unwrap(), defaults);
    assert_eq!(parse("").unwrap(), defaults);
}

#[test]
fn min_config_is_short_and_fills_the_rest_with_defaults() {
    let min = EdgeCoreConfig::min_config(&host());
    let yaml = min.to_yaml().unwrap();
    for expected in [
        "dataSource:",
        "tailoredKubeletConfig:",
        "websocket:",
        "httpServer:",
        "mqttMode: 0",
        "token: \"\"",
    ] {
        assert!(yaml.contains(expected), "{expected:?} missing from\n{yaml}");
    }
    for absent in [
        "driverName",
        "quic:",
        "metaManager",
        "serviceBus",
        "monitorServer",
        "rotateCertificates",
        "eventBusTLS",
    ] {
        assert!(!yaml.contains(absent), "{absent:?} in\n{yaml}");
    }
    assert_eq!(&parse(&yaml).unwrap(), min.config());
    assert_eq!(min.into_config(), EdgeCoreConfig::default_config(&host()));
}

#[test]
fn kubeedge_file_loads() {
    let c = parse(include_str!("fixtures/edgecore-kubeedge.yaml")).unwrap();
    let edged = &c.modules.edged;
    assert_eq!(edged.tailored_kubelet_flag.hostname_override, "edge-node-7");
    assert_eq!(edged.tailored_kubelet_flag.node_labels["site"], "plant-3");
    let k = &edged.tailored_kubelet_config;
    assert_eq!(k.cgroup_driver, "systemd");
    assert_eq!(k.cluster_dns, ["169.254.96.16"]);
    // Maps merge into the defaults, as Go's decoder fills them.
    assert_eq!(k.eviction_hard["memory.available"], "200Mi");
    assert_eq!(k.eviction_hard["nodefs.inodesFree"], "5%");
    assert_eq!(
        k.register_with_taints,
        [Taint {
            key: "node-role.kubernetes.io/edge".into(),
            value: String::new(),
            effect: "NoSchedule".into(),
            time_added: None,
        }]
    );
    // `memorySwap: {}` and omitted fields keep their defaults.
    assert_eq!(k.memory_swap.swap_behavior, "");
    assert_eq!(k.event_burst, 0);
    let hub = &c.modules.edge_hub;
    assert_eq!(hub.websocket.server, "10.0.0.5:10000");
    assert_eq!(hub.http_server, "https://10.0.0.5:10002");
    assert_eq!(hub.token, "0123456789abcdef.eyJhbGciOiJIUzI1NiJ9");
    assert_eq!(c.modules.event_bus.mqtt_mode, MqttMode::Internal);
    // KubeEdge's default mode, written out, still selects the external broker.
    let external = parse("modules:\n  eventBus:\n    mqttMode: 2\n").unwrap();
    assert_eq!(external.modules.event_bus.mqtt_mode, MqttMode::External);
    let meta = &c.modules.meta_manager.meta_server;
    assert!(meta.enable);
    // Go writes nil slices as null.
    assert!(meta.api_audiences.is_empty());
    assert!(c.modules.edge_stream.enable);
    assert_eq!(c.monitor_server.bind_address, "127.0.0.1:10352");
    assert_eq!(parse(&c.to_yaml().unwrap()).unwrap(), c);
}

#[test]
fn unknown_fields_are_refused_with_their_path() {
    let (path, message) = field_error("modules:\n  edged:\n    hostnameOverrid: x\n");
    assert_eq!(path, "modules.edged.hostnameOverrid");
    assert!(
        message.contains("unknown field `hostnameOverrid`"),
        "{message}"
    );
    assert!(message.contains("`containerRuntime`"), "{message}");
    let (path, _) =
        field_error("modules:\n  edged:\n    tailoredKubeletConfig:\n      maxPod: 3\n");
    assert_eq!(path, "modules.edged.tailoredKubeletConfig.maxPod");
    let (path, _) = field_error(
        "modules:\n  edged:\n    tailoredKubeletConfig:\n      logging:\n        options:\n          text: {}\n",
    );
    assert_eq!(
        path,
        "modules.edged.tailoredKubeletConfig.logging.options.text"
    );
    let (path, _) = field_error("modules:\n  edgeHub:\n    websocket:\n      url: x\n");
    assert_eq!(path, "modules.edgeHub.websocket.url");
    let (path, _) = field_error(
        "modules:\n  edged:\n    registerWithTaints:\n    - key: a\n      effect: NoSchedule\n      colour: red\n",
    );
    assert_eq!(path, "modules.edged.registerWithTaints[0].colour");
    let (path, _) = field_error("monitorServer:\n  port: 1\n");
    assert_eq!(path, "monitorServer.port");
    let (path, _) = field_error("database:\n  driver: sqlite3\n");
    assert_eq!(path, "database.driver");
}

#[test]
fn wrong_types_are_refused_with_their_path() {
    let (path, message) =
        field_error("modules:\n  edged:\n    tailoredKubeletConfig:\n      syncFrequency: 60\n");
    assert_eq!(path, "modules.edged.tailoredKubeletConfig.syncFrequency");
    assert!(message.contains("Go duration"), "{message}");
    let (path, message) = field_error("modules:\n  edged:\n    minimumGCAge: 10 s\n");
    assert_eq!(path, "modules.edged.minimumGCAge");
    assert!(message.contains("unknown unit"), "{message}");
    let (path, _) = field_error("modules:\n  eventBus:\n    mqttMode: 5\n");
    assert_eq!(path, "modules.eventBus.mqttMode");
    let (path, _) = field_error("modules:\n  eventBus:\n    mqttQOS: 300\n");
    assert_eq!(path, "modules.eventBus.mqttQOS");
    let (path, _) = field_error("modules:\n  edgeHub:\n    heartbeat: fast\n");
    assert_eq!(path, "modules.edgeHub.heartbeat");
    let (path, _) = field_error("modules:\n  edged:\n    nodeLabels:\n      a: 1\n");
    assert_eq!(path, "modules.edged.nodeLabels.a");
    let (path, _) = field_error("modules:\n  edged:\n    tailoredKubeletConfig: [1]\n");
    assert_eq!(path, "modules.edged.tailoredKubeletConfig");
    let (path, _) =
        field_error("modules:\n  edged:\n    tailoredKubeletConfig:\n      evictionHard: 5\n");
    assert_eq!(path, "modules.edged.tailoredKubeletConfig.evictionHard");
}

#[test]
fn durations_take_every_go_form() {
    let c = parse(
        "modules:\n  edged:\n    tailoredKubeletConfig:\n      syncFrequency: 1h30m\n      \
         imageMinimumGCAge: \"90s\"\n      cpuCFSQuotaPeriod: 0.5s\n      \
         logging:\n        flushFrequency: 2s\n",
    )
    .unwrap();
    let k = &c.modules.edged.tailored_kubelet_config;
    assert_eq!(k.sync_frequency, GoDuration::from_mins(90));
    assert_eq!(k.image_minimum_gc_age.to_string(), "1m30s");
    assert_eq!(k.cpu_cfs_quota_period.to_string(), "500ms");
    assert_eq!(k.logging.flush_frequency, GoDuration::from_secs(2));
    let yaml = c.to_yaml().unwrap();
    assert!(yaml.contains("syncFrequency: 1h30m0s"), "{yaml}");
    assert!(yaml.contains("flushFrequency: 2000000000"), "{yaml}");
}

#[test]
fn api_version_and_kind_are_checked() {
    parse("apiVersion: edgecore.config.kubeedge.io/v1alpha2\nkind: EdgeCore\n").unwrap();
    for bad in [
        "apiVersion: edgecore.config.kubeedge.io/v1alpha1",
        "apiVersion: cloudcore.config.kubeedge.io/v1alpha2",
        "apiVersion: null",
    ] {
        let err = parse(bad).unwrap_err();
        assert!(
            matches!(err, ConfigError::UnsupportedApiVersion { .. }),
            "{bad}: {err:?}"
        );
    }
    let err = parse("kind: CloudCore\n").unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::WrongKind {
                expected: "EdgeCore",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn validation_names_every_bad_field() {
    let paths = invalid_paths(
        "database:
  driverName: mysql
monitorServer:
  bindAddress: 127.0.0.1
modules:
  edged:
    hostnameOverride: Bad_Name
    nodeIP: 10.0.0
    registerWithTaints:
    - key: a
      effect: Sometimes
    tailoredKubeletConfig:
      cgroupDriver: cgroupv3
      readOnlyPort: 70000
      oomScoreAdj: -2000
      syncFrequency: 0s
      imageGCHighThresholdPercent: 30
      iptablesDropBit: 14
      clusterDNS: [dns]
  edgeHub:
    heartbeat: 0
    messageQPS: -1
    httpServer: 10.0.0.5:10002
    quic:
      enable: true
    websocket:
      server: cloud
  eventBus:
    mqttQOS: 3
    mqttServerExternal: 127.0.0.1:1883
  metaManager:
    remoteQueryTimeout: 0
    metaServer:
      enable: true
      server: localhost
  serviceBus:
    enable: true
    port: 0
  edgeStream:
    enable: true
    server: ''
",
    );
    assert_eq!(
        paths,
        [
            "database.driverName",
            "monitorServer.bindAddress",
            "modules.edged.hostnameOverride",
            "modules.edged.nodeIP",
            "modules.edged.registerWithTaints[0].effect",
            "modules.edged.tailoredKubeletConfig.cgroupDriver",
            "modules.edged.tailoredKubeletConfig.readOnlyPort",
            "modules.edged.tailoredKubeletConfig.oomScoreAdj",
            "modules.edged.tailoredKubeletConfig.syncFrequency",
            "modules.edged.tailoredKubeletConfig.imageGCLowThresholdPercent",
            "modules.edged.tailoredKubeletConfig.iptablesDropBit",
            "modules.edged.tailoredKubeletConfig.clusterDNS[0]",
            "modules.edgeHub.websocket.enable",
            "modules.edgeHub.heartbeat",
            "modules.edgeHub.messageQPS",
            "modules.edgeHub.httpServer",
            "modules.edgeHub.websocket.server",
            "modules.eventBus.mqttQOS",
            "modules.eventBus.mqttServerExternal",
            "modules.metaManager.remoteQueryTimeout",
            "modules.metaManager.metaServer.server",
            "modules.serviceBus.port",
            "modules.edgeStream.server",
        ]
    );
}

#[test]
fn exactly_one_cloud_transport() {
    let c =
        parse("modules:\n  edgeHub:\n    websocket: {enable: false}\n    quic: {enable: true}\n")
            .unwrap();
    assert!(c.modules.edge_hub.quic.enable);
    assert_eq!(
        invalid_paths("modules:\n  edgeHub:\n    websocket: {enable: false}\n"),
        ["modules.edgeHub.websocket.enable"]
    );
}

#[test]
fn edge_hub_reconnect_and_outbox_settings() {
    let c = parse(
        "modules:\n  edgeHub:\n    reconnectBackoffBase: 500ms\n    reconnectBackoffMax: 1m\n    \
         outboxFile: /data/hub.db\n    outboxCapacity: 7\n    outboxResendAfter: 3s\n",
    )
    .unwrap();
    let hub = &c.modules.edge_hub;
    assert_eq!(hub.reconnect_backoff_base, GoDuration::from_millis(500));
    assert_eq!(hub.reconnect_backoff_max, GoDuration::from_mins(1));
    assert_eq!(hub.outbox_file, "/data/hub.db");
    assert_eq!(hub.outbox_capacity, 7);
    assert_eq!(hub.outbox_resend_after, GoDuration::from_secs(3));
    assert_eq!(
        invalid_paths(
            "modules:\n  edgeHub:\n    reconnectBackoffBase: 0s\n    \
             reconnectBackoffMax: 0s\n    outboxCapacity: 0\n    outboxResendAfter: 0s\n"
        ),
        [
            "modules.edgeHub.reconnectBackoffBase",
            "modules.edgeHub.outboxCapacity",
            "modules.edgeHub.outboxResendAfter"
        ]
    );
    assert_eq!(
        invalid_paths("modules:\n  edgeHub:\n    reconnectBackoffBase: 1m\n"),
        ["modules.edgeHub.reconnectBackoffMax"]
    );
}

#[test]
fn disabled_modules_are_not_validated() {
    let c = parse(
        "modules:\n  edged:\n    enable: false\n    hostnameOverride: NOT_VALID\n  \
         edgeHub:\n    enable: false\n    heartbeat: 0\n  eventBus:\n    enable: false\n    mqttQOS: 9\n",
    )
    .unwrap();
    assert!(!c.modules.edged.enable);
    assert!(!c.modules.edge_hub.enable);
}

#[test]
fn load_reads_files_and_reports_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edgecore.yaml");
    std::fs::write(&path, "modules:\n  edgeHub:\n    heartbeat: 20\n").unwrap();
    let c = EdgeCoreConfig::load_with_host(&path, &host()).unwrap();
    assert_eq!(c.modules.edge_hub.heartbeat, 20);
    assert_eq!(
        EdgeCoreConfig::load(&path)
            .unwrap()
            .modules
            .edge_hub
            .heartbeat,
        20
    );
    let err = EdgeCoreConfig::load(dir.path().join("nope.yaml")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cannot read configuration file "),
        "{err}"
    );
    assert!(err.to_string().ends_with("nope.yaml"), "{err}");
}

#[test]
fn host_detecting_parse_works() {
    let c = EdgeCoreConfig::from_yaml_str("modules:\n  edged:\n    hostnameOverride: edge-9\n")
        .unwrap();
    assert_eq!(
        c.modules.edged.tailored_kubelet_flag.hostname_override,
        "edge-9"
    );
}
