//! Running a real cloudcore with its embedded control plane, and the real
//! kubectl against it, for the acceptance tests.

#![allow(dead_code)] // Each test binary uses a different part of it.

pub mod churn;
pub mod edge;
pub mod edgecore;
pub mod edgemark;
pub mod hollow;
pub mod modbus;
pub mod mqtt;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use kedge_apis::config::cloudcore::{CloudCoreConfig, StorageBackend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Child;

/// How long one step (start, an object appearing, a stop) may take.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A loopback address with a port nobody listens on right now.
pub fn free_port() -> u16 {
    kedge_store::testing::free_port().expect("a free test port")
}

/// Which store the control plane uses.
pub enum Backend {
    /// SQLite in the data dir.
    Sqlite,
    /// A real etcd, started for the test.
    Etcd(kedge_store::testing::Etcd),
}

impl Backend {
    /// Starts the backend.
    pub async fn start(etcd: bool) -> Self {
        if etcd {
            Self::Etcd(
                kedge_store::testing::Etcd::start()
                    .await
                    .expect("etcd starts (run scripts/setup.sh)"),
            )
        } else {
            Self::Sqlite
        }
    }
}

/// A running cloudcore with its control plane, plus a scratch kubectl
/// home.
pub struct Cloud {
    child: Child,
    dir: tempfile::TempDir,
    /// The admin kubeconfig cloudcore wrote.
    pub kubeconfig: PathBuf,
    /// The monitor server address.
    pub monitor: String,
    _backend: Backend,
}

impl Cloud {
    /// Starts cloudcore on free loopback ports and waits until its API
    /// server answers.
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    /// Starts cloudcore as [`start`](Self::start) does, with `adjust`
    /// applied to its configuration first.
    pub async fn start_with(backend: Backend, adjust: impl FnOnce(&mut CloudCoreConfig)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let output = Command::new(env!("CARGO_BIN_EXE_cloudcore"))
            .arg("--defaultconfig")
            .output()
            .expect("cloudcore runs");
        let mut config = CloudCoreConfig::from_yaml_str(&String::from_utf8_lossy(&output.stdout))
            .expect("default config");
        let monitor = format!("127.0.0.1:{}", free_port());
        config.common_config.monitor_server.bind_address = monitor.clone();
        let data_dir = dir.path().join("controlplane");
        config.control_plane.data_dir = data_dir.to_string_lossy().into_owned();
        config.control_plane.secure_port = u32::from(free_port());
        // CloudHub on loopback, on ports of its own.
        let hub = &mut config.modules.cloud_hub;
        hub.advertise_address = vec!["127.0.0.1".to_owned()];
        hub.websocket.address = "127.0.0.1".to_owned();
        hub.websocket.port = u32::from(free_port());
        hub.https.address = "127.0.0.1".to_owned();
        hub.https.port = u32::from(free_port());
        hub.quic.address = "127.0.0.1".to_owned();
        hub.quic.port = u32::from(free_port());
        if let Backend::Etcd(etcd) = &backend {
            config.control_plane.storage.backend = StorageBackend::Etcd;
            config.control_plane.storage.etcd_endpoints = vec![etcd.endpoint().to_owned()];
        }
        adjust(&mut config);
        let config_path = dir.path().join("cloudcore.yaml");
        std::fs::write(&config_path, config.to_yaml().expect("yaml")).expect("config written");
        let child = spawn(dir.path());
        let cloud = Self {
            child,
            kubeconfig: data_dir.join("admin.kubeconfig"),
            monitor,
            dir,
            _backend: backend,
        };
        cloud.wait_ready().await;
        cloud
    }

    async fn wait_ready(&self) {
        let ready = async {
            loop {
                if http_status(&self.monitor, "/readyz").await == Some(200)
                    && self.kubeconfig.exists()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        if tokio::time::timeout(DEADLINE, ready).await.is_err() {
            panic!("cloudcore did not become ready; log:\n{}", self.log());
        }
    }

    /// A kube-rs client with the admin credentials.
    pub async fn client(&self) -> kube::Client {
        let kubeconfig =
            kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig parses");
        let options = kube::config::KubeConfigOptions::default();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .expect("kubeconfig usable");
        kube::Client::try_from(config).expect("client")
    }

    /// cloudcore's configuration as written.
    pub fn config(&self) -> CloudCoreConfig {
        let text = std::fs::read_to_string(self.dir.path().join("cloudcore.yaml")).expect("config");
        CloudCoreConfig::from_yaml_str(&text).expect("config parses")
    }

    /// The join token, as `keadm gettoken` prints it.
    pub fn join_token(&self) -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_keadm"))
            .args(["gettoken", "--kube-config"])
            .arg(&self.kubeconfig)
            .output()
            .expect("keadm runs");
        assert!(
            output.status.success(),
            "keadm gettoken failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// cloudcore's process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// cloudcore's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("cloudcore.log")).unwrap_or_default()
    }

    /// A scratch directory for test files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A kubectl command against this cloud, with its own cache and home.
    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("kubectl");
        command
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.path().join("kube-cache"))
            .args(args)
            .env("HOME", self.dir.path())
            .env_remove("KUBECONFIG");
        command
    }

    /// Runs kubectl.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_command(args).output().expect("kubectl runs")
    }

    /// Runs kubectl, which must succeed; returns its standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.kubectl(args);
        assert!(
            output.status.success(),
            "kubectl {args:?} failed:\nstdout: {}\nstderr: {}\ncluster:\n{}\ncloudcore log:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.snapshot(),
            tail(&self.log())
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// What the workloads look like, for a failure message.
    pub fn snapshot(&self) -> String {
        let output = self.kubectl(&[
            "get",
            "deployments,replicasets,daemonsets,statefulsets,jobs,pods,endpoints",
            "-A",
            "-o",
            "wide",
            "--show-labels",
        ]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }

    /// Runs kubectl, which must fail; returns its standard error.
    pub fn fails(&self, args: &[&str]) -> String {
        let output = self.kubectl(args);
        assert!(
            !output.status.success(),
            "kubectl {args:?} should have failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    /// Runs kubectl with `input` on standard input (for `-f -`).
    pub fn ok_with_input(&self, args: &[&str], input: &str) -> String {
        let mut child = self
            .kubectl_command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            stdin.write_all(input.as_bytes()).expect("stdin written");
        }
        let output = child.wait_with_output().expect("kubectl ends");
        assert!(
            output.status.success(),
            "kubectl {args:?} failed:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Polls `kubectl args` until its output satisfies `done`, or fails
    /// after [`DEADLINE`].
    pub async fn eventually(&self, args: &[&str], done: impl Fn(&str) -> bool) -> String {
        let last = std::sync::Mutex::new(String::new());
        let poll = async {
            loop {
                let output = self.kubectl(args);
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
                if done(&text) {
                    return text;
                }
                *last.lock().expect("last output") = text;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        match tokio::time::timeout(DEADLINE, poll).await {
            Ok(text) => text,
            Err(_) => panic!(
                "kubectl {args:?} never satisfied the condition; last output:\n{}\ncluster:\n{}\nlog:\n{}",
                last.lock().expect("last output"),
                self.snapshot(),
                tail(&self.log())
            ),
        }
    }

    /// Stops cloudcore with SIGTERM and checks it exits cleanly.
    /// Stops cloudcore and starts it again on the same data, as after a
    /// host restart.
    pub async fn restart(&mut self) {
        self.terminate().await;
        self.child = spawn(self.dir.path());
        self.wait_ready().await;
    }

    /// Stops cloudcore, keeping its data, until [`resume`](Self::resume):
    /// the edge sees the link cut.
    pub async fn halt(&mut self) {
        self.terminate().await;
    }

    /// Starts cloudcore again after [`halt`](Self::halt).
    pub async fn resume(&mut self) {
        self.child = spawn(self.dir.path());
        self.wait_ready().await;
    }

    /// Stops cloudcore with SIGTERM; it must exit cleanly.
    pub async fn stop(mut self) {
        self.terminate().await;
    }

    async fn terminate(&mut self) {
        let pid = self.child.id().expect("running").to_string();
        let killed = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(killed.success());
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("cloudcore stops in time")
            .expect("wait works");
        assert!(
            status.success(),
            "cloudcore exited with {status}; log:\n{}",
            tail(&self.log())
        );
        assert!(
            !self.log().contains("did not stop in time"),
            "a controller ignored the shutdown; log:\n{}",
            tail(&self.log())
        );
    }
}

/// Starts cloudcore with the configuration in `dir`, appending to its log.
fn spawn(dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("cloudcore.log"))
        .expect("log file");
    tokio::process::Command::new(env!("CARGO_BIN_EXE_cloudcore"))
        .arg("--config")
        .arg(dir.join("cloudcore.yaml"))
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("cloudcore starts")
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The resident memory of process `pid` (VmRSS) in KiB, 0 if unknown.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The status code of `GET path` over plain HTTP, or `None`.
pub async fn http_status(address: &str, path: &str) -> Option<u16> {
    let (status, _) = http_get(address, path).await?;
    Some(status)
}

/// `GET path` over HTTP/1.0: the status and body, `None` while nothing
/// answers.
pub async fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(address).await.ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// The value of the metric line starting with `name` on cloudcore's
/// monitor server, if it is there.
pub async fn metric(monitor: &str, name: &str) -> Option<f64> {
    let (_, body) = http_get(monitor, "/metrics").await?;
    body.lines()
        .find(|line| line.starts_with(name))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}
