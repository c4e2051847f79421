//! Running a real edgecore joined to a test [`Cloud`].

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kedge_apis::config::edgecore::{EdgeCoreConfig, MqttMode};
use tokio::process::Child;

use super::{Cloud, DEADLINE, free_port, tail};

/// An edgecore process with its own data directory and configuration.
pub struct EdgeCore {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// The node's name.
    pub name: String,
    /// The monitor server address.
    pub monitor: String,
    /// The MetaServer's address.
    pub meta_server: String,
    /// The address of the MQTT broker EventBus uses: an external one
    /// (nothing runs there unless the test starts a broker), or edgecore's
    /// embedded one after [`embedded_broker`](Self::embedded_broker).
    pub mqtt: String,
}

/// The CRI socket of the private containerd the test scripts start
/// (`KEDGE_CRI_SOCK`), `None` after saying why the caller is skipped;
/// panics under CI, which must run these tests.
pub fn cri_socket(what: &str) -> Option<PathBuf> {
    match std::env::var_os("KEDGE_CRI_SOCK") {
        Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) => {
            panic!("KEDGE_CRI_SOCK is not set under CI: scripts/test.sh must start containerd")
        }
        _ => {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: {what}: KEDGE_CRI_SOCK is not set; see scripts/containerd.sh"
            );
            None
        }
    }
}

impl EdgeCore {
    /// Writes the configuration of node `name` joined to `cloud` (edged on
    /// the CRI socket `cri`, when given; MetaServer on), then `adjust`
    /// applied, and starts edgecore.
    pub fn start(
        cloud: &Cloud,
        name: &str,
        cri: Option<&Path>,
        adjust: impl FnOnce(&mut EdgeCoreConfig),
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let printed = Command::new(env!("CARGO_BIN_EXE_edgecore"))
            .arg("--defaultconfig")
            .output()
            .expect("edgecore runs");
        let mut config = EdgeCoreConfig::from_yaml_str(&String::from_utf8_lossy(&printed.stdout))
            .expect("default config");
        let at = |file: &str| dir.path().join(file).to_string_lossy().into_owned();
        let monitor = format!("127.0.0.1:{}", free_port());
        let meta_server = format!("127.0.0.1:{}", free_port());
        let mqtt = format!("127.0.0.1:{}", free_port());
        config.monitor_server.bind_address = monitor.clone();
        // An external broker on a free port, which the test starts (the
        // default, an embedded broker on 1884, would collide across tests).
        config.modules.event_bus.mqtt_mode = MqttMode::External;
        config.modules.event_bus.mqtt_server_external = format!("tcp://{mqtt}");
        config.database.data_source = at("edgecore.db");
        config.modules.device_twin.dmi_sock_path = at("dmi.sock");
        let hub = cloud.config().modules.cloud_hub;
        let edge_hub = &mut config.modules.edge_hub;
        edge_hub.token = cloud.join_token();
        edge_hub.http_server = format!("https://127.0.0.1:{}", hub.https.port);
        edge_hub.websocket.server = format!("127.0.0.1:{}", hub.websocket.port);
        edge_hub.tls_ca_file = at("ca/rootCA.crt");
        edge_hub.tls_cert_file = at("certs/server.crt");
        edge_hub.tls_private_key_file = at("certs/server.key");
        let meta = &mut config.modules.meta_manager.meta_server;
        meta.enable = true;
        meta.server = meta_server.clone();
        let edged = &mut config.modules.edged;
        edged.tailored_kubelet_flag.hostname_override = name.to_owned();
        edged.tailored_kubelet_flag.node_ip = "127.0.0.1".to_owned();
        edged.tailored_kubelet_flag.root_directory = at("edged");
        edged.tailored_kubelet_config.static_pod_path = at("manifests");
        match cri {
            Some(socket) => {
                edged.tailored_kubelet_flag.remote_runtime_endpoint =
                    format!("unix://{}", socket.display());
            }
            None => edged.enable = false,
        }
        adjust(&mut config);
        std::fs::write(
            dir.path().join("edgecore.yaml"),
            config.to_yaml().expect("yaml"),
        )
        .expect("config written");
        let mut edge = Self {
            child: None,
            dir,
            name: name.to_owned(),
            monitor,
            meta_server,
            mqtt,
        };
        edge.spawn();
        edge
    }

    /// For `adjust` of [`start`](Self::start): EventBus on the broker
    /// edgecore embeds, listening at [`mqtt`](Self::mqtt) instead of an
    /// external broker there.
    pub fn embedded_broker(config: &mut EdgeCoreConfig) {
        let bus = &mut config.modules.event_bus;
        bus.mqtt_mode = MqttMode::Internal;
        bus.mqtt_server_internal = bus.mqtt_server_external.clone();
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("edgecore.log"))
            .expect("log file");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_edgecore"))
            .arg("--config")
            .arg(self.dir.path().join("edgecore.yaml"))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("edgecore starts");
        self.child = Some(child);
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What edgecore logged so far (its last lines).
    pub fn log(&self) -> String {
        tail(&std::fs::read_to_string(self.dir.path().join("edgecore.log")).unwrap_or_default())
    }

    /// How many lines of the whole log contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        std::fs::read_to_string(self.dir.path().join("edgecore.log"))
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains(needle))
            .count()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Kills edgecore with SIGKILL, as a crash or power cut would.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("SIGKILL");
        }
    }

    /// Starts edgecore again on the same data after [`kill`](Self::kill)
    /// or [`stop`](Self::stop).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "edgecore is still running");
        self.spawn();
    }

    /// Stops edgecore with SIGTERM; it must exit cleanly.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id().expect("running").to_string();
        let killed = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(killed.success());
        let status = tokio::time::timeout(DEADLINE, child.wait())
            .await
            .expect("edgecore stops in time")
            .expect("wait works");
        assert!(
            status.success(),
            "edgecore exited with {status}; log:\n{}",
            self.log()
        );
    }
}
