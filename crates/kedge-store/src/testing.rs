//! A real etcd on loopback for tests: Debian's `etcd` binary (package
//! `etcd-server`) started on free ports with a temporary data directory and
//! stopped when dropped.

use std::net::{TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::etcd::EtcdStore;
use crate::{Store, StoreError};

/// How long etcd may take to answer after start.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A running etcd.
#[derive(Debug)]
pub struct Etcd {
    child: Child,
    endpoint: String,
    _data: tempfile::TempDir,
}

/// Test ports come from below Linux's default ephemeral range (32768–60999),
/// so an outgoing connection's source port can never take one between the
/// moment it is picked and the moment a server binds it.
const TEST_PORTS: std::ops::Range<u16> = 20_000..32_768;

/// The next candidate port of this process; processes start at different
/// offsets so that concurrent test binaries rarely try the same port.
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A loopback port free for both TCP and UDP right now, never handed out
/// twice by this process.
pub fn free_port() -> std::io::Result<u16> {
    let span = TEST_PORTS.end - TEST_PORTS.start;
    let _ = NEXT_PORT.compare_exchange(
        0,
        (std::process::id() % u32::from(span)) as u16 + 1,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let step = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        let port = TEST_PORTS.start + step % span;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no free loopback port left for tests",
    ))
}

impl Etcd {
    /// Starts etcd and waits until it answers.
    pub async fn start() -> Result<Self, StoreError> {
        let io = |e: std::io::Error| StoreError::Backend(format!("cannot start etcd: {e}"));
        let data = tempfile::tempdir().map_err(io)?;
        let client_port = free_port().map_err(io)?;
        let peer_port = free_port().map_err(io)?;
        let endpoint = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new("etcd")
            .arg("--name=kedge-test")
            .arg(format!("--data-dir={}", data.path().display()))
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=kedge-test={peer}"))
            .arg("--logger=zap")
            .arg("--log-level=error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io)?;
        let mut etcd = Self {
            child,
            endpoint,
            _data: data,
        };
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Ok(Some(status)) = etcd.child.try_wait() {
                return Err(StoreError::Backend(format!(
                    "etcd exited at start: {status}"
                )));
            }
            if let Ok(store) = EtcdStore::connect(std::slice::from_ref(&etcd.endpoint)).await
                && store.current_revision().await.is_ok()
            {
                return Ok(etcd);
            }
            if Instant::now() > deadline {
                return Err(StoreError::Backend(format!(
                    "etcd did not answer on {} within {START_DEADLINE:?}",
                    etcd.endpoint
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The client URL, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A store connected to this etcd.
    pub async fn store(&self) -> Result<EtcdStore, StoreError> {
        EtcdStore::connect(std::slice::from_ref(&self.endpoint)).await
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
