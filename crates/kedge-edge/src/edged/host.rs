//! What edged reports about its host: processors, memory, disk, the
//! operating system and the node's address (edged.md §1.6, §3.12).
//! Everything is read from `/proc`, `/etc` and `statvfs`, once per node
//! status check.

use std::net::IpAddr;
use std::path::Path;

/// The host's facts as the Node object carries them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostFacts {
    /// Logical processors.
    pub cpus: u64,
    /// Memory in bytes (`MemTotal`).
    pub memory_bytes: u64,
    /// Available memory in bytes (`MemAvailable`).
    pub memory_available_bytes: u64,
    /// Size of the filesystem holding edged's root directory, in bytes.
    pub storage_bytes: u64,
    /// Free bytes on that filesystem, for the DiskPressure condition.
    pub storage_available_bytes: u64,
    /// `/etc/machine-id`.
    pub machine_id: String,
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel_version: String,
    /// `PRETTY_NAME` of `/etc/os-release`.
    pub os_image: String,
    /// `amd64`, `arm64` ... as Kubernetes names architectures.
    pub architecture: String,
}

impl HostFacts {
    /// Reads the facts; `root` is edged's root directory (its filesystem
    /// is the node's ephemeral storage).
    pub fn read(root: &Path) -> Self {
        let meminfo = read("/proc/meminfo");
        let (storage_bytes, storage_available_bytes) = filesystem(root);
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
            memory_bytes: meminfo_bytes(&meminfo, "MemTotal"),
            memory_available_bytes: meminfo_bytes(&meminfo, "MemAvailable"),
            storage_bytes,
            storage_available_bytes,
            machine_id: read("/etc/machine-id").trim().to_owned(),
            boot_id: read("/proc/sys/kernel/random/boot_id").trim().to_owned(),
            kernel_version: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            os_image: os_image(&read("/etc/os-release")),
            architecture: go_arch(std::env::consts::ARCH).to_owned(),
        }
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A `/proc/meminfo` field in bytes (the file gives kB).
fn meminfo_bytes(meminfo: &str, field: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix(field)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .map_or(0, |kb| kb * 1024)
}

/// `PRETTY_NAME` from os-release, unquoted.
fn os_image(os_release: &str) -> String {
    os_release
        .lines()
        .find_map(|line| line.strip_prefix("PRETTY_NAME="))
        .map(|value| value.trim_matches('"').to_owned())
        .unwrap_or_else(|| "Linux".to_owned())
}

/// Rust's architecture names as Go (and so Kubernetes) spells them.
fn go_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "x86" => "386",
        "riscv64" => "riscv64",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        other => other,
    }
}

/// Size and free bytes of the filesystem holding `path` (or the nearest
/// existing parent).
fn filesystem(path: &Path) -> (u64, u64) {
    let existing = path
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    match rustix::fs::statvfs(existing) {
        Ok(stat) => (
            stat.f_blocks.saturating_mul(stat.f_frsize),
            stat.f_bavail.saturating_mul(stat.f_frsize),
        ),
        Err(_) => (0, 0),
    }
}

/// The node's IP: `node_ip` if set, else the address of `interface` if
/// named, else the source address the host would use towards the
/// outside (found without sending anything), else 127.0.0.1.
pub fn node_ip(node_ip: &str, interface: &str) -> IpAddr {
    if let Ok(ip) = node_ip.parse() {
        return ip;
    }
    if !interface.is_empty()
        && let Some(ip) = interface_ip(interface)
    {
        return ip;
    }
    primary_ip().unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

/// The IPv4 address of `interface`: a UDP socket bound to the device and
/// connected (nothing is sent) takes the interface's address as source.
fn interface_ip(interface: &str) -> Option<IpAddr> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, None).ok()?;
    socket.bind_device(Some(interface.as_bytes())).ok()?;
    let target: std::net::SocketAddr = "192.0.2.1:9".parse().ok()?;
    socket.connect(&target.into()).ok()?;
    socket
        .local_addr()
        .ok()?
        .as_socket()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified())
}

/// The address the default route leaves from: connecting a UDP socket
/// picks it without sending a packet.
fn primary_ip() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    socket
        .local_addr()
        .ok()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_parsed() {
        let meminfo = "MemTotal:        8000 kB\nMemFree: 10 kB\nMemAvailable:    4000 kB\n";
        assert_eq!(meminfo_bytes(meminfo, "MemTotal"), 8000 * 1024);
        assert_eq!(meminfo_bytes(meminfo, "MemAvailable"), 4000 * 1024);
        assert_eq!(meminfo_bytes(meminfo, "Missing"), 0);
        assert_eq!(
            os_image("NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\n"),
            "Debian GNU/Linux 13 (trixie)"
        );
        assert_eq!(go_arch("x86_64"), "amd64");
    }

    #[test]
    fn this_host_is_described() {
        let facts = HostFacts::read(Path::new("/nonexistent/edged"));
        assert!(facts.cpus >= 1);
        assert!(facts.memory_bytes > 0);
        assert!(
            facts.storage_bytes > 0,
            "the nearest existing parent is used"
        );
        assert!(!facts.kernel_version.is_empty());
        assert_eq!(node_ip("10.1.2.3", ""), IpAddr::from([10, 1, 2, 3]));
    }
}
