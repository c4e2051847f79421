//! `edgemark` as a process: many hollow edge nodes joined to a test cloud.

use std::path::PathBuf;
use std::process::Command;

use tokio::process::Child;

use super::{Cloud, DEADLINE};

/// edgemark running full hollow edgecores; its output goes to a log file,
/// printed if the test fails while it runs.
pub struct Edgemark {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Edgemark {
    /// Starts `edgemark --full` with `nodes` nodes joined to `cloud` over
    /// WebSocket.
    pub fn start_full(cloud: &Cloud, nodes: usize) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("edgemark.log");
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let hub = cloud.config().modules.cloud_hub;
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_edgemark"))
            .args([
                "--full",
                "--nodes",
                &nodes.to_string(),
                "--report-every",
                "1s",
            ])
            .args(["--server", &format!("127.0.0.1:{}", hub.websocket.port)])
            .args([
                "--cert-server",
                &format!("https://127.0.0.1:{}", hub.https.port),
            ])
            .args(["--token", &cloud.join_token()])
            .arg("--data-dir")
            .arg(dir.path().join("nodes"))
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .expect("edgemark starts");
        Self {
            child,
            log,
            _dir: dir,
        }
    }

    /// edgemark's process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Stops edgemark with SIGTERM; it must exit with 0.
    pub async fn stop(mut self) {
        let pid = self.child.id().expect("running").to_string();
        let killed = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(killed.success());
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("edgemark stops in time")
            .expect("wait works");
        assert!(status.success(), "edgemark exited with {status}");
    }
}

impl Drop for Edgemark {
    #[allow(clippy::print_stderr)] // What the failing test shows.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("edgemark's output:\n{log}");
        }
    }
}
