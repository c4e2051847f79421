//! A Modbus TCP device for the mapper tests: pymodbus's server
//! (`tests/python/modbus_device.py`, Debian's python3-pymodbus) on a free
//! loopback port, and a Modbus client to read and write it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tokio_modbus::client::{Context, Reader as _, Writer as _};
use tokio_modbus::slave::Slave;

use super::{DEADLINE, free_port};

/// The first interpreter that imports pymodbus: `PYTHON` if set, then
/// `python3` on the path, then the system one Debian's package installs
/// into.
fn python() -> String {
    let candidates = std::env::var("PYTHON")
        .into_iter()
        .chain(["python3".to_owned(), "/usr/bin/python3".to_owned()]);
    for candidate in candidates {
        let imports = std::process::Command::new(&candidate)
            .args(["-c", "import pymodbus"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if imports {
            return candidate;
        }
    }
    panic!(
        "pymodbus is not importable by python3 (nor by PYTHON): \
         run scripts/setup.sh, which installs python3-pymodbus"
    );
}

/// The running device (killed when dropped).
pub struct ModbusDevice {
    /// Where it listens.
    pub address: SocketAddr,
    _server: Child,
}

impl ModbusDevice {
    /// Starts the device and waits until it accepts connections.
    pub async fn start() -> Self {
        let port = free_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/modbus_device.py");
        let mut server = Command::new(python())
            .arg(script)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python runs");
        let stdout = server.stdout.take().expect("stdout");
        let ready = tokio::time::timeout(DEADLINE, BufReader::new(stdout).lines().next_line())
            .await
            .expect("the Modbus device starts in time")
            .expect("its output");
        assert_eq!(
            ready.as_deref(),
            Some("ready"),
            "the Modbus device did not start"
        );
        Self {
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            _server: server,
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    async fn client(&self) -> Context {
        tokio_modbus::client::tcp::connect_slave(self.address, Slave(1))
            .await
            .expect("Modbus client connects")
    }

    /// Writes one holding register.
    pub async fn write(&self, register: u16, value: u16) {
        self.client()
            .await
            .write_single_register(register, value)
            .await
            .expect("request")
            .expect("write accepted");
    }

    /// Reads one holding register.
    pub async fn read(&self, register: u16) -> u16 {
        self.client()
            .await
            .read_holding_registers(register, 1)
            .await
            .expect("request")
            .expect("read accepted")[0]
    }

    /// Waits until holding register `register` holds `value`.
    pub async fn wait_for(&self, register: u16, value: u16) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let held = self.read(register).await;
            if held == value {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "register {register} holds {held}, never {value}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
