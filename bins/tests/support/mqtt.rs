//! A mosquitto broker for the device tests and benchmarks.

/// A mosquitto broker on a loopback address, stopped when dropped.
pub struct Mosquitto {
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts mosquitto listening on `address` (`127.0.0.1:<port>`) and
    /// waits until it accepts connections.
    pub async fn start(address: &str) -> Self {
        let (host, port) = address.split_once(':').expect("host:port");
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            format!("listener {port} {host}\nallow_anonymous true\npersistence false\n"),
        )
        .expect("mosquitto.conf written");
        let child = tokio::process::Command::new("mosquitto")
            .arg("-c")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("mosquitto runs (scripts/setup.sh installs it)");
        let deadline = tokio::time::Instant::now() + super::DEADLINE;
        while tokio::net::TcpStream::connect(address).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "mosquitto does not listen on {address}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Self {
            _child: child,
            _dir: dir,
        }
    }
}
