//! cloudcore and edgecore as processes: flags, configuration files, start,
//! health endpoints and a clean stop on SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use kedge_apis::config::cloudcore::CloudCoreConfig;
use kedge_apis::config::edgecore::EdgeCoreConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// How long any one process step (start, answer, stop) may take.
const DEADLINE: Duration = Duration::from_secs(30);

/// The two component binaries.
#[derive(Clone, Copy, Debug)]
enum Binary {
    CloudCore,
    EdgeCore,
}

impl Binary {
    fn path(self) -> &'static str {
        match self {
            Self::CloudCore => env!("CARGO_BIN_EXE_cloudcore"),
            Self::EdgeCore => env!("CARGO_BIN_EXE_edgecore"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::CloudCore => "cloudcore",
            Self::EdgeCore => "edgecore",
        }
    }

    /// The default configuration with the monitor server on `monitor` and
    /// local state in `dir`.
    fn config_with_monitor(self, monitor: &str, dir: &Path) -> String {
        match self {
            Self::CloudCore => {
                let mut config = CloudCoreConfig::from_yaml_str(&self.print("--defaultconfig"))
                    .expect("default config loads");
                config.common_config.monitor_server.bind_address = monitor.to_owned();
                // These tests are about the process; the control plane and
                // the modules that need a cluster have their own suites.
                config.control_plane.enable = false;
                config.modules.cloud_hub.enable = false;
                config.modules.sync_controller.enable = false;
                config.modules.edge_controller.enable = false;
                config.modules.device_controller.enable = false;
                config.to_yaml().expect("config serialises")
            }
            Self::EdgeCore => {
                let mut config = EdgeCoreConfig::from_yaml_str(&self.print("--defaultconfig"))
                    .expect("default config loads");
                config.monitor_server.bind_address = monitor.to_owned();
                config.database.data_source =
                    dir.join("edgecore.db").to_string_lossy().into_owned();
                // The embedded MQTT broker on a free port, not the fixed 1884.
                config.modules.event_bus.mqtt_server_internal = format!("tcp://{}", free_address());
                config.to_yaml().expect("config serialises")
            }
        }
    }

    /// Runs the binary with `flag` and returns what it printed.
    fn print(self, flag: &str) -> String {
        let output = std::process::Command::new(self.path())
            .arg(flag)
            .output()
            .expect("binary runs");
        assert!(
            output.status.success(),
            "{} {flag} failed: {output:?}",
            self.name()
        );
        String::from_utf8(output.stdout).expect("output is UTF-8")
    }

    /// Starts the binary with `config` and `-v`, capturing its output.
    fn start(self, config: &Path) -> Child {
        Command::new(self.path())
            .arg("--config")
            .arg(config)
            .arg("-v")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("binary starts")
    }
}

const BOTH: [Binary; 2] = [Binary::CloudCore, Binary::EdgeCore];

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("file written");
    path
}

/// Runs a binary that must refuse to start; returns its standard error.
fn refused(binary: Binary, args: &[&str]) -> String {
    let output = std::process::Command::new(binary.path())
        .args(args)
        .output()
        .expect("binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(1),
        "{} {args:?}: {stderr}",
        binary.name()
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// A loopback address with a port nobody listens on right now.
fn free_address() -> String {
    let port = kedge_store::testing::free_port().expect("a free test port");
    format!("127.0.0.1:{port}")
}

/// `GET path` over HTTP/1.0; `None` while nothing accepts connections.
async fn get(address: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(address).await.ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())?;
    Some((status, body))
}

/// Polls `path` until it answers 200, or fails after [`DEADLINE`].
async fn wait_for_ok(address: &str, path: &str) -> String {
    let poll = async {
        loop {
            if let Some((200, body)) = get(address, path).await {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(DEADLINE, poll)
        .await
        .unwrap_or_else(|_| panic!("{address}{path} did not answer 200 within {DEADLINE:?}"))
}

async fn terminate(child: &mut Child) -> (ExitStatus, String) {
    let pid = child.id().expect("child is running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("process stops within the deadline")
        .expect("wait works");
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr)
            .await
            .expect("stderr readable");
    }
    (status, stderr)
}

#[test]
fn version_names_the_component() {
    for binary in BOTH {
        let version = binary.print("--version");
        assert!(version.starts_with(binary.name()), "{version}");
        assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    }
}

#[test]
fn printed_configurations_load_back() {
    let cloud =
        CloudCoreConfig::from_yaml_str(&Binary::CloudCore.print("--defaultconfig")).expect("loads");
    assert_eq!(cloud.api_version, "cloudcore.config.kubeedge.io/v1alpha2");
    CloudCoreConfig::from_yaml_str(&Binary::CloudCore.print("--minconfig")).expect("loads");
    let edge =
        EdgeCoreConfig::from_yaml_str(&Binary::EdgeCore.print("--defaultconfig")).expect("loads");
    assert_eq!(edge.api_version, "edgecore.config.kubeedge.io/v1alpha2");
    EdgeCoreConfig::from_yaml_str(&Binary::EdgeCore.print("--minconfig")).expect("loads");
}

#[test]
fn unknown_and_mistyped_fields_are_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = [
        (
            Binary::CloudCore,
            "modules:\n  cloudHub:\n    nodeLimt: 5\n",
            "modules.cloudHub.nodeLimt",
        ),
        (
            Binary::CloudCore,
            "modules:\n  cloudHub:\n    nodeLimit: many\n",
            "modules.cloudHub.nodeLimit",
        ),
        (
            Binary::CloudCore,
            "controlPlane:\n  storage:\n    backend: mysql\n",
            "controlPlane.storage.backend",
        ),
        (
            Binary::EdgeCore,
            "modules:\n  edgeHub:\n    heartbeet: 15\n",
            "modules.edgeHub.heartbeet",
        ),
        (
            Binary::EdgeCore,
            "modules:\n  edged:\n    enable: [true]\n",
            "modules.edged.enable",
        ),
    ];
    for (binary, text, field) in cases {
        let path = write(&dir, "bad.yaml", text);
        let stderr = refused(binary, &["--config", path.to_str().expect("UTF-8 path")]);
        assert!(
            stderr.contains(field),
            "{} did not name {field}: {stderr}",
            binary.name()
        );
    }
}

#[test]
fn unreadable_configurations_are_refused_cleanly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.yaml");
    let garbage = write(&dir, "garbage.yaml", "\u{0}\u{1}: [unclosed\n\t- {");
    let wrong_kind = write(&dir, "list.yaml", "- 1\n- 2\n");
    for binary in BOTH {
        let stderr = refused(binary, &["--config", missing.to_str().expect("UTF-8 path")]);
        assert!(
            stderr.contains("missing.yaml") && stderr.contains("--defaultconfig"),
            "{stderr}"
        );
        for path in [&garbage, &wrong_kind] {
            refused(binary, &["--config", path.to_str().expect("UTF-8 path")]);
        }
    }
}

#[test]
fn bad_flags_are_usage_errors() {
    for binary in BOTH {
        let output = std::process::Command::new(binary.path())
            .args(["--defaultconfig", "--minconfig"])
            .output()
            .expect("binary runs");
        assert_eq!(output.status.code(), Some(2), "{output:?}");
    }
}

#[tokio::test]
async fn components_start_serve_health_and_stop_on_sigterm() {
    for binary in BOTH {
        let dir = tempfile::tempdir().expect("temp dir");
        let monitor = free_address();
        let config = write(
            &dir,
            "config.yaml",
            &binary.config_with_monitor(&monitor, dir.path()),
        );
        let mut child = binary.start(&config);

        assert_eq!(wait_for_ok(&monitor, "/readyz").await, "ok\n");
        assert_eq!(
            get(&monitor, "/healthz").await.map(|(status, _)| status),
            Some(200)
        );
        let metrics = wait_for_ok(&monitor, "/metrics").await;
        assert!(metrics.contains("kedge_bus_inbox_depth"), "{metrics}");
        if matches!(binary, Binary::EdgeCore) {
            assert!(metrics.contains("kedge_edgehub_"), "{metrics}");
        }
        assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");

        // A second process on the same monitor address fails at once.
        let stderr = refused(binary, &["--config", config.to_str().expect("UTF-8 path")]);
        assert!(stderr.contains(&monitor), "{stderr}");

        let (status, stderr) = terminate(&mut child).await;
        assert!(
            status.success(),
            "{} exited with {status}: {stderr}",
            binary.name()
        );
        assert!(stderr.contains("stopped cleanly"), "{stderr}");
    }
}
