//! Loading, defaulting, validating and writing `cloudcore.yaml`.

use std::net::Ipv4Addr;

use kedge_apis::config::cloudcore::{
    API_VERSION, CloudCoreConfig, IptablesMgrMode, StorageBackend,
};
use kedge_apis::config::{ConfigError, HostInfo, MAX_CONFIG_BYTES};
use pretty_assertions::assert_eq;

fn host() -> HostInfo {
    HostInfo::new("cloud-1", Ipv4Addr::new(192, 168, 1, 10))
}

fn parse(text: &str) -> Result<CloudCoreConfig, ConfigError> {
    CloudCoreConfig::from_yaml_str_with_host(text, &host())
}

/// The path and message of a field error, or a panic naming what came back.
fn field_error(text: &str) -> (String, String) {
    match parse(text) {
        Err(ConfigError::Field { path, message }) => (path, message),
        other => panic!("expected a field error for {text:?}, got {other:?}"),
    }
}

/// The paths of the validation errors, or a panic naming what came back.
fn invalid_paths(text: &str) -> Vec<String> {
    match parse(text) {
        Err(ConfigError::Invalid { errors }) => errors.into_iter().map(|e| e.path).collect(),
        other => panic!("expected validation errors for {text:?}, got {other:?}"),
    }
}

#[test]
fn defaults_follow_kubeedge() {
    let c = CloudCoreConfig::default_config(&host());
    assert_eq!(c.api_version, "cloudcore.config.kubeedge.io/v1alpha2");
    assert_eq!(c.kind, "CloudCore");
    assert_eq!(c.common_config.tunnel_port, 10350);
    assert_eq!(
        c.common_config.monitor_server.bind_address,
        "127.0.0.1:9091"
    );
    assert!(!c.common_config.monitor_server.enable_profiling);
    assert_eq!(c.kube_api_config.qps, 2500);
    assert_eq!(c.kube_api_config.burst, 5000);
    assert_eq!(
        c.kube_api_config.content_type,
        "application/vnd.kubernetes.protobuf"
    );
    let hub = &c.modules.cloud_hub;
    assert!(hub.enable);
    assert_eq!(hub.node_limit, 500);
    assert_eq!(hub.advertise_address, ["192.168.1.10"]);
    assert_eq!(hub.dns_names, [""]);
    assert_eq!(hub.websocket.port, 10000);
    assert_eq!(hub.quic.port, 10001);
    assert!(!hub.quic.enable);
    assert_eq!(hub.https.port, 10002);
    assert_eq!(hub.edge_cert_signing_duration, 365);
    assert_eq!(hub.token_refresh_duration, 12);
    let ec = &c.modules.edge_controller;
    assert_eq!(ec.buffer.patch_node, 1024 + 500 / 2);
    assert_eq!(ec.buffer.query_node, 1024 + 500);
    assert_eq!(ec.buffer.create_lease, 1024 + 500);
    assert_eq!(ec.load.query_node_workers, 500);
    assert_eq!(ec.load.patch_node_workers, 100 + 500 / 50);
    assert_eq!(ec.load.create_lease_workers, 500);
    assert_eq!(ec.load.query_config_map_workers, 100);
    assert!(c.modules.device_controller.enable);
    assert!(!c.modules.node_upgrade_job_controller.enable);
    assert!(c.modules.sync_controller.enable);
    assert!(!c.modules.dynamic_controller.enable);
    assert!(!c.modules.cloud_stream.enable);
    assert_eq!(c.modules.cloud_stream.stream_port, 10003);
    assert_eq!(c.modules.cloud_stream.tunnel_port, 10004);
    assert!(!c.modules.router.enable);
    assert_eq!(c.modules.router.port, 9443);
    assert!(c.modules.iptables_manager.enable);
    assert_eq!(c.modules.iptables_manager.mode, IptablesMgrMode::Internal);
    let cp = &c.control_plane;
    assert!(cp.enable);
    assert_eq!(cp.bind_address, "127.0.0.1");
    assert_eq!(cp.secure_port, 6443);
    assert_eq!(cp.data_dir, "/var/lib/kubeedge/controlplane");
    assert_eq!(cp.storage.backend, StorageBackend::Sqlite);
    assert!(cp.storage.etcd_endpoints.is_empty());
    assert_eq!(cp.service_cluster_ip_range, "10.96.0.0/12");
    assert_eq!(cp.max_request_body_bytes, 3_145_728);
    c.validate().unwrap();
}

#[test]
fn defaults_serialise_and_parse_back_equal() {
    let defaults = CloudCoreConfig::default_config(&host());
    let yaml = defaults.to_yaml().unwrap();
    assert!(
        yaml.starts_with("apiVersion: cloudcore.config.kubeedge.io/v1alpha2\nkind: CloudCore\n")
    );
    assert_eq!(parse(&yaml).unwrap(), defaults);
    // With another host the file still wins over the host-derived defaults.
    let other = HostInfo::new("other", Ipv4Addr::new(10, 9, 8, 7));
    assert_eq!(
        CloudCoreConfig::from_yaml_str_with_host(&yaml, &other).unwrap(),
        defaults
    );
}

#[test]
fn empty_file_gives_the_defaults() {
    let defaults = CloudCoreConfig::default_config(&host());
    assert_eq!(parse("").unwrap(), defaults);
    assert_eq!(parse("# nothing\n").unwrap(), defaults);
    assert_eq!(parse("---\n").unwrap(), defaults);
}

#[test]
fn min_config_is_short_and_fills_the_rest_with_defaults() {
    let min = CloudCoreConfig::min_config(&host());
    let yaml = min.to_yaml().unwrap();
    for expected in [
        "apiVersion:",
        "kind: CloudCore",
        "nodeLimit: 1000",
        "advertiseAddress:",
        "unixsocket:",
        "router:",
        "iptablesManager:",
        "backend: sqlite",
    ] {
        assert!(yaml.contains(expected), "{expected:?} missing from\n{yaml}");
    }
    for absent in [
        "commonConfig",
        "kubeAPIConfig",
        "edgeController",
        "keepaliveInterval",
    ] {
        assert!(!yaml.contains(absent), "{absent:?} in\n{yaml}");
    }
    let loaded = parse(&yaml).unwrap();
    assert_eq!(&loaded, min.config());

    let mut expected = CloudCoreConfig::default_config(&host());
    expected.modules.cloud_hub.node_limit = 1000;
    expected.kube_api_config.qps = 5000;
    expected.kube_api_config.burst = 10000;
    let ec = &mut expected.modules.edge_controller;
    ec.load.query_node_workers = 1000;
    ec.load.create_lease_workers = 1000;
    ec.load.patch_node_workers = 120;
    ec.buffer.patch_node = 1524;
    ec.buffer.query_node = 2024;
    ec.buffer.create_lease = 2024;
    assert_eq!(min.into_config(), expected);
}

#[test]
fn kubeedge_defaultconfig_file_loads() {
    let text = include_str!("fixtures/cloudcore-kubeedge-defaultconfig.yaml");
    let c = parse(text).unwrap();
    // v1alpha1 is read and written back as v1alpha2.
    assert_eq!(c.api_version, API_VERSION);
    assert_eq!(c.common_config.monitor_server.bind_address, "0.0.0.0:9091");
    assert!(!c.common_config.monitor_server.enable_profiling);
    assert_eq!(c.kube_api_config.kube_config, "/root/.kube/config");
    assert_eq!(c.kube_api_config.qps, 5000);
    let hub = &c.modules.cloud_hub;
    assert_eq!(hub.node_limit, 1000);
    assert_eq!(hub.advertise_address, ["10.0.0.5"]);
    assert_eq!(hub.dns_names, ["cloud.example.com"]);
    assert!(c.modules.cloud_stream.enable);
    assert!(c.modules.dynamic_controller.enable);
    assert_eq!(c.modules.iptables_manager.mode, IptablesMgrMode::External);
    assert_eq!(c.modules.edge_controller.load.create_pod_works, 4);
    assert_eq!(c.modules.edge_controller.load.query_node_workers, 1000);
    // Kedge-only sections absent from a KubeEdge file keep their defaults.
    assert_eq!(
        c.control_plane,
        CloudCoreConfig::default_config(&host()).control_plane
    );
    assert_eq!(parse(&c.to_yaml().unwrap()).unwrap(), c);
}

#[test]
fn helm_chart_file_loads() {
    let text = include_str!("fixtures/cloudcore-helm.yaml");
    let c = parse(text).unwrap();
    let hub = &c.modules.cloud_hub;
    assert_eq!(hub.node_limit, 10);
    assert_eq!(hub.tls_cert_file, "/etc/kubeedge/certs/edge.crt");
    assert_eq!(hub.tls_ca_key_file, "/etc/kubeedge/ca/rootCA.key");
    assert_eq!(hub.advertise_address, ["192.168.10.20"]);
    assert_eq!(c.feature_gates.get("requireAuthorization"), Some(&false));
    assert!(c.modules.cloud_stream.enable);
    // QPS and burst follow the node limit, as cloudcore adjusts them.
    assert_eq!(c.kube_api_config.qps, 50);
    assert_eq!(c.kube_api_config.burst, 100);
    // Worker counts only ever grow with the node limit.
    assert_eq!(c.modules.edge_controller.load.query_node_workers, 500);
}

#[test]
fn file_is_laid_over_the_defaults() {
    let c = parse(
        "modules:\n  cloudHub:\n    websocket:\n      port: 20000\ncontrolPlane:\n  securePort: 7443\n",
    )
    .unwrap();
    let mut expected = CloudCoreConfig::default_config(&host());
    expected.modules.cloud_hub.websocket.port = 20000;
    expected.control_plane.secure_port = 7443;
    assert_eq!(c, expected);
}

#[test]
fn null_keeps_defaults_and_empties_lists() {
    let c = parse("kubeAPIConfig:\nmodules:\n  cloudHub:\n    dnsNames: null\n    nodeLimit: ~\n")
        .unwrap();
    let defaults = CloudCoreConfig::default_config(&host());
    assert_eq!(c.kube_api_config, defaults.kube_api_config);
    assert_eq!(c.modules.cloud_hub.node_limit, 500);
    assert!(c.modules.cloud_hub.dns_names.is_empty());
}

#[test]
fn unknown_fields_are_refused_with_their_path() {
    let (path, message) = field_error("nodeLimt: 1\n");
    assert_eq!(path, "nodeLimt");
    assert!(message.contains("unknown field `nodeLimt`"), "{message}");

    let (path, message) = field_error("modules:\n  cloudHub:\n    nodeLimt: 3\n");
    assert_eq!(path, "modules.cloudHub.nodeLimt");
    assert!(message.contains("expected one of"), "{message}");

    let (path, _) = field_error("modules:\n  cloudHub:\n    quic:\n      bogus: 1\n");
    assert_eq!(path, "modules.cloudHub.quic.bogus");
    let (path, _) = field_error("modules:\n  taskManager:\n    enable: true\n");
    assert_eq!(path, "modules.taskManager");
    let (path, _) = field_error("controlPlane:\n  storage:\n    etcdEndpoint: [x]\n");
    assert_eq!(path, "controlPlane.storage.etcdEndpoint");
    // Go's decoder would accept another letter case; Kedge does not.
    let (path, _) = field_error("modules:\n  cloudHub:\n    Enable: true\n");
    assert_eq!(path, "modules.cloudHub.Enable");
}

#[test]
fn wrong_types_are_refused_with_their_path() {
    let (path, message) = field_error("modules:\n  cloudHub:\n    nodeLimit: abc\n");
    assert_eq!(path, "modules.cloudHub.nodeLimit");
    assert!(
        message.contains("invalid type: string \"abc\""),
        "{message}"
    );

    let (path, _) =
        field_error("modules:\n  cloudHub:\n    advertiseAddress: [10.0.0.1, {a: b}]\n");
    assert_eq!(path, "modules.cloudHub.advertiseAddress[1]");
    let (path, _) = field_error("featureGates:\n  requireAuthorization: maybe\n");
    assert_eq!(path, "featureGates.requireAuthorization");
    let (path, _) = field_error("modules:\n  cloudHub:\n    websocket:\n      port: -1\n");
    assert_eq!(path, "modules.cloudHub.websocket.port");
    let (path, _) = field_error("modules:\n  cloudHub:\n    nodeLimit: 3000000000\n");
    assert_eq!(path, "modules.cloudHub.nodeLimit");
    let (path, _) = field_error("modules: [cloudHub]\n");
    assert_eq!(path, "modules");
    let (path, message) = field_error("modules:\n  iptablesManager:\n    mode: sideways\n");
    assert_eq!(path, "modules.iptablesManager.mode");
    assert!(message.contains("`internal` or `external`"), "{message}");
    let (path, _) = field_error("controlPlane:\n  storage:\n    backend: postgres\n");
    assert_eq!(path, "controlPlane.storage.backend");
    let (path, _) = field_error("modules:\n  syncController:\n    enable: \"true\"\n");
    assert_eq!(path, "modules.syncController.enable");
}

#[test]
fn api_version_and_kind_are_checked() {
    for version in [
        "cloudcore.config.kubeedge.io/v1alpha1",
        "cloudcore.config.kubeedge.io/v1alpha2",
    ] {
        let c = parse(&format!("apiVersion: {version}\nkind: CloudCore\n")).unwrap();
        assert_eq!(c.api_version, API_VERSION);
    }
    for bad in [
        "apiVersion: edgecore.config.kubeedge.io/v1alpha2",
        "apiVersion: cloudcore.config.kubeedge.io/v1beta1",
        "apiVersion: 3",
        "apiVersion: [a]",
    ] {
        let err = parse(bad).unwrap_err();
        assert!(
            matches!(err, ConfigError::UnsupportedApiVersion { .. }),
            "{bad}: {err:?}"
        );
        assert!(
            err.to_string().starts_with("apiVersion: unsupported value"),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("cloudcore.config.kubeedge.io/v1alpha2"),
            "{err}"
        );
    }
    let err = parse("kind: EdgeCore\n").unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::WrongKind {
                expected: "CloudCore",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "kind: expected \"CloudCore\", found \"EdgeCore\""
    );

    let mut c = CloudCoreConfig::default_config(&host());
    c.api_version = "v1".into();
    assert!(matches!(
        c.validate(),
        Err(ConfigError::UnsupportedApiVersion { .. })
    ));
}

#[test]
fn validation_names_every_bad_field() {
    let paths = invalid_paths(
        "commonConfig:
  monitorServer:
    bindAddress: localhost:9091
kubeAPIConfig:
  kubeConfig: relative/kubeconfig
modules:
  cloudHub:
    nodeLimit: 0
    handshakeQueue: -1
    restartReconnectRate: -5
    tokenRefreshDuration: 0
    advertiseAddress: [not-an-ip]
    websocket:
      port: 70000
      address: 0.0.0.300
    quic:
      port: 0
    https:
      address: ''
    unixsocket:
      address: /var/lib/kubeedge/kubeedge.sock
  edgeController:
    nodeUpdateFrequency: 0
    load:
      queryNodeWorkers: -1
  router:
    enable: true
    port: 0
  cloudStream:
    enable: true
    streamPort: 65536
controlPlane:
  bindAddress: nowhere
  securePort: 0
  dataDir: data
  serviceClusterIPRange: 10.96.0.0
  maxRequestBodyBytes: 0
",
    );
    assert_eq!(
        paths,
        [
            "commonConfig.monitorServer.bindAddress",
            "kubeAPIConfig.kubeConfig",
            "modules.cloudHub.nodeLimit",
            "modules.cloudHub.handshakeQueue",
            "modules.cloudHub.restartReconnectRate",
            "modules.cloudHub.tokenRefreshDuration",
            "modules.cloudHub.advertiseAddress[0]",
            "modules.cloudHub.websocket.port",
            "modules.cloudHub.websocket.address",
            "modules.cloudHub.quic.port",
            "modules.cloudHub.https.address",
            "modules.cloudHub.unixsocket.address",
            "modules.edgeController.nodeUpdateFrequency",
            "modules.edgeController.load.queryNodeWorkers",
            "modules.cloudStream.streamPort",
            "modules.router.port",
            "controlPlane.bindAddress",
            "controlPlane.securePort",
            "controlPlane.dataDir",
            "controlPlane.serviceClusterIPRange",
            "controlPlane.maxRequestBodyBytes",
        ]
    );
    let err = parse("modules:\n  cloudHub:\n    nodeLimit: -5\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid configuration: modules.cloudHub.nodeLimit: -5 must be greater than 0"
    );
}

#[test]
fn disabled_modules_are_not_validated() {
    let c = parse(
        "modules:\n  cloudHub:\n    enable: false\n    nodeLimit: 0\n    websocket:\n      port: 0\n\
         controlPlane:\n  enable: false\n  securePort: 0\n  storage:\n    backend: etcd\n",
    )
    .unwrap();
    assert!(!c.modules.cloud_hub.enable);
    assert!(!c.control_plane.enable);
}

#[test]
fn etcd_backend_needs_endpoints() {
    assert_eq!(
        invalid_paths("controlPlane:\n  storage:\n    backend: etcd\n"),
        ["controlPlane.storage.etcdEndpoints"]
    );
    assert_eq!(
        invalid_paths(
            "controlPlane:\n  storage:\n    backend: etcd\n    etcdEndpoints: [http://10.0.0.1:2379, 10.0.0.2:2379]\n"
        ),
        ["controlPlane.storage.etcdEndpoints[1]"]
    );
    let c = parse(
        "controlPlane:\n  storage:\n    backend: etcd\n    etcdEndpoints:\n    - https://etcd-0.example:2379\n    - http://10.0.0.2:2379\n",
    )
    .unwrap();
    assert_eq!(c.control_plane.storage.backend, StorageBackend::Etcd);
    assert_eq!(c.control_plane.storage.etcd_endpoints.len(), 2);
    assert_eq!(parse(&c.to_yaml().unwrap()).unwrap(), c);
}

#[test]
fn node_limit_drives_dependent_settings() {
    let c = parse("modules:\n  cloudHub:\n    nodeLimit: 2000\n").unwrap();
    assert_eq!(c.kube_api_config.qps, 10_000);
    assert_eq!(c.kube_api_config.burst, 20_000);
    let ec = &c.modules.edge_controller;
    assert_eq!(ec.load.query_node_workers, 2000);
    assert_eq!(ec.load.patch_node_workers, 140);
    assert_eq!(ec.load.create_lease_workers, 2000);
    assert_eq!(ec.buffer.patch_node, 2024);
    assert_eq!(ec.buffer.query_node, 3024);
    assert_eq!(ec.buffer.create_lease, 3024);

    // Explicit larger worker counts are kept; QPS is always reset.
    let c = parse(
        "kubeAPIConfig: {qps: 1}\nmodules:\n  cloudHub: {nodeLimit: 10}\n  edgeController:\n    load: {queryNodeWorkers: 64}\n",
    )
    .unwrap();
    assert_eq!(c.kube_api_config.qps, 50);
    assert_eq!(c.modules.edge_controller.load.query_node_workers, 64);

    let mut c = CloudCoreConfig::default_config(&host());
    assert!(!c.adjust_for_node_limit());
    c.modules.cloud_hub.node_limit = i32::MAX;
    assert!(c.adjust_for_node_limit());
    assert_eq!(c.kube_api_config.qps, i32::MAX);
}

#[test]
fn load_reads_files_and_reports_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cloudcore.yaml");
    std::fs::write(&path, "modules:\n  cloudHub:\n    nodeLimit: 42\n").unwrap();
    let c = CloudCoreConfig::load_with_host(&path, &host()).unwrap();
    assert_eq!(c.modules.cloud_hub.node_limit, 42);
    // The host-detecting variant reads the same file.
    assert_eq!(
        CloudCoreConfig::load(&path)
            .unwrap()
            .modules
            .cloud_hub
            .node_limit,
        42
    );

    let missing = dir.path().join("missing.yaml");
    let err = CloudCoreConfig::load_with_host(&missing, &host()).unwrap_err();
    assert!(matches!(&err, ConfigError::Read { path, .. } if *path == missing));
    assert!(err.to_string().contains("missing.yaml"), "{err}");
    assert!(std::error::Error::source(&err).is_some());

    let err = CloudCoreConfig::load_with_host(dir.path(), &host()).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");

    let binary = dir.path().join("binary.yaml");
    std::fs::write(&binary, [0xff, 0xfe, 0x00, 0x41]).unwrap();
    assert!(CloudCoreConfig::load_with_host(&binary, &host()).is_err());

    let big = dir.path().join("big.yaml");
    let size = usize::try_from(MAX_CONFIG_BYTES).unwrap() + 10;
    std::fs::write(&big, format!("#{}", "x".repeat(size))).unwrap();
    let err = CloudCoreConfig::load_with_host(&big, &host()).unwrap_err();
    assert!(matches!(err, ConfigError::TooLarge { .. }), "{err:?}");
}

#[test]
fn malformed_yaml_is_an_error() {
    for text in [
        "modules: [1, 2",
        "modules:\n  cloudHub: {\n",
        "a: 1\na: 2\n",
        "kind: CloudCore\n---\nkind: CloudCore\n",
        "\"unterminated",
    ] {
        assert!(
            matches!(parse(text), Err(ConfigError::Yaml { .. })),
            "{text:?}"
        );
    }
    assert!(matches!(
        parse("- a\n"),
        Err(ConfigError::NotAMapping { .. })
    ));
    assert!(matches!(parse("42"), Err(ConfigError::NotAMapping { .. })));
}
