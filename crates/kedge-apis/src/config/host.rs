//! [`HostInfo`]: the facts about the local host that some KubeEdge defaults
//! are derived from.

use std::net::Ipv4Addr;

use super::validate::is_dns1123_subdomain;

/// The node name KubeEdge uses when the host name is not a valid
/// Kubernetes node name (`constants.DefaultHostnameOverride`).
pub const DEFAULT_HOSTNAME_OVERRIDE: &str = "default-edge-node";

const PROC_HOSTNAME: &str = "/proc/sys/kernel/hostname";
const ETC_HOSTNAME: &str = "/etc/hostname";
const PROC_ROUTE: &str = "/proc/net/route";
const PROC_FIB_TRIE: &str = "/proc/net/fib_trie";

/// The host name and primary IPv4 address of a host.
///
/// KubeEdge fills a few defaults from the host it runs on: cloudcore's
/// `modules.cloudHub.advertiseAddress`, and edgecore's
/// `modules.edged.hostnameOverride` and the cloud addresses of
/// `modules.edgeHub` (`websocket.server`, `quic.server`, `httpServer`). The
/// default constructors take them from a `HostInfo` instead, so that tests
/// can pass a fixed one; [`HostInfo::detect`] reads the real host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostInfo {
    /// The host name, as the kernel reports it.
    pub hostname: String,
    /// The host's primary IPv4 address: the address of the interface that
    /// carries the default route.
    pub ipv4: Ipv4Addr,
}

impl HostInfo {
    /// A `HostInfo` with the given values.
    pub fn new(hostname: impl Into<String>, ipv4: Ipv4Addr) -> Self {
        Self {
            hostname: hostname.into(),
            ipv4,
        }
    }

    /// Reads the host name and primary IPv4 address of this host, without
    /// any network traffic.
    ///
    /// The host name comes from `/proc/sys/kernel/hostname` (else
    /// `/etc/hostname`, else [`DEFAULT_HOSTNAME_OVERRIDE`]). The address is
    /// the one, among the host's local addresses in `/proc/net/fib_trie`,
    /// that lies in a subnet routed through the interface of the default
    /// route in `/proc/net/route` (as Kubernetes' `ChooseHostInterface`
    /// picks it); without a default route it is `127.0.0.1`.
    pub fn detect() -> Self {
        let hostname = [PROC_HOSTNAME, ETC_HOSTNAME]
            .iter()
            .filter_map(|path| std::fs::read_to_string(path).ok())
            .map(|text| text.trim().to_owned())
            .find(|name| !name.is_empty())
            .unwrap_or_else(|| DEFAULT_HOSTNAME_OVERRIDE.to_owned());
        let ipv4 = match (
            std::fs::read_to_string(PROC_ROUTE),
            std::fs::read_to_string(PROC_FIB_TRIE),
        ) {
            (Ok(route), Ok(fib_trie)) => primary_ipv4(&route, &fib_trie),
            _ => None,
        }
        .unwrap_or(Ipv4Addr::LOCALHOST);
        Self { hostname, ipv4 }
    }

    /// The name this host registers as a node: the host name when it is a
    /// valid Kubernetes node name (a lowercase RFC 1123 subdomain), else
    /// [`DEFAULT_HOSTNAME_OVERRIDE`], as KubeEdge's `util.GetHostname`.
    pub fn node_name(&self) -> String {
        if is_dns1123_subdomain(&self.hostname) {
            self.hostname.clone()
        } else {
            DEFAULT_HOSTNAME_OVERRIDE.to_owned()
        }
    }
}

/// One IPv4 route from `/proc/net/route`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    interface: String,
    destination: Ipv4Addr,
    gateway: Ipv4Addr,
    mask: Ipv4Addr,
    metric: u32,
}

impl Route {
    fn contains(&self, address: Ipv4Addr) -> bool {
        u32::from(address) & u32::from(self.mask) == u32::from(self.destination)
    }
}

/// `/proc/net/route` prints each address as the `%08X` of its in-memory
/// (network byte order) value read as a native integer.
fn proc_ipv4(hex: &str) -> Option<Ipv4Addr> {
    u32::from_str_radix(hex, 16)
        .ok()
        .map(|raw| Ipv4Addr::from(raw.to_ne_bytes()))
}

/// The routes that are up, from the text of `/proc/net/route`.
fn parse_routes(text: &str) -> Vec<Route> {
    const RTF_UP: u32 = 0x1;
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            let flags = u32::from_str_radix(fields[3], 16).ok()?;
            if flags & RTF_UP == 0 {
                return None;
            }
            Some(Route {
                interface: fields[0].to_owned(),
                destination: proc_ipv4(fields[1])?,
                gateway: proc_ipv4(fields[2])?,
                metric: fields[6].parse().ok()?,
                mask: proc_ipv4(fields[7])?,
            })
        })
        .collect()
}

/// The host's own (`LOCAL`) IPv4 addresses, outside 127.0.0.0/8, in order of
/// appearance, from the text of `/proc/net/fib_trie`.
fn parse_local_addresses(text: &str) -> Vec<Ipv4Addr> {
    let mut current = None;
    let mut found = Vec::new();
    for line in text.lines() {
        let line = line.trim_start();
        if let Some(address) = line.strip_prefix("|-- ") {
            current = address.trim().parse::<Ipv4Addr>().ok();
        } else if line.starts_with("/32 host LOCAL")
            && let Some(address) = current.take()
            && !address.is_loopback()
            && !found.contains(&address)
        {
            found.push(address);
        }
    }
    found
}

/// The primary IPv4 address, given the texts of `/proc/net/route` and
/// `/proc/net/fib_trie`; `None` without a default route.
fn primary_ipv4(route_text: &str, fib_trie_text: &str) -> Option<Ipv4Addr> {
    let routes = parse_routes(route_text);
    let default = routes
        .iter()
        .filter(|r| r.destination.is_unspecified() && r.mask.is_unspecified())
        .min_by_key(|r| r.metric)?;
    let subnets: Vec<&Route> = routes
        .iter()
        .filter(|r| r.interface == default.interface && !r.mask.is_unspecified())
        .collect();
    let locals = parse_local_addresses(fib_trie_text);
    let in_subnet = |pick_gateway_subnet: bool| {
        locals.iter().copied().find(|address| {
            subnets.iter().any(|subnet| {
                subnet.contains(*address)
                    && (!pick_gateway_subnet || subnet.contains(default.gateway))
            })
        })
    };
    in_subnet(true)
        .or_else(|| in_subnet(false))
        .or_else(|| locals.first().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(a: [u8; 4]) -> String {
        format!("{:08X}", u32::from_ne_bytes(a))
    }

    /// Interface, destination, gateway, flags, metric, mask.
    type Row<'a> = (&'a str, [u8; 4], [u8; 4], &'a str, u32, [u8; 4]);

    fn route_table(rows: &[Row<'_>]) -> String {
        let mut text = String::from(
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT \n",
        );
        for (iface, dest, gw, flags, metric, mask) in rows {
            text.push_str(&format!(
                "{iface}\t{}\t{}\t{flags}\t0\t0\t{metric}\t{}\t0\t0\t0   \n",
                hex(*dest),
                hex(*gw),
                hex(*mask)
            ));
        }
        text
    }

    const FIB_TRIE: &str = "Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.0.0.0/8 2 0 2
        |-- 10.1.2.3
           /32 host LOCAL
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
     +-- 192.168.1.0/24 2 0 2
        |-- 192.168.1.0
           /24 link UNICAST
        |-- 192.168.1.23
           /32 host LOCAL
        |-- 192.168.1.255
           /32 link BROADCAST
Local:
  +-- 0.0.0.0/0 3 0 5
     +-- 192.168.1.0/24 2 0 2
        |-- 192.168.1.23
           /32 host LOCAL
";

    #[test]
    fn local_addresses_skip_loopback_and_duplicates() {
        assert_eq!(
            parse_local_addresses(FIB_TRIE),
            vec![Ipv4Addr::new(10, 1, 2, 3), Ipv4Addr::new(192, 168, 1, 23)]
        );
    }

    #[test]
    fn picks_the_address_on_the_default_route_interface() {
        let routes = route_table(&[
            (
                "docker0",
                [10, 0, 0, 0],
                [0, 0, 0, 0],
                "0001",
                0,
                [255, 0, 0, 0],
            ),
            (
                "eth0",
                [0, 0, 0, 0],
                [192, 168, 1, 1],
                "0003",
                100,
                [0, 0, 0, 0],
            ),
            (
                "eth0",
                [192, 168, 1, 0],
                [0, 0, 0, 0],
                "0001",
                100,
                [255, 255, 255, 0],
            ),
        ]);
        assert_eq!(
            primary_ipv4(&routes, FIB_TRIE),
            Some(Ipv4Addr::new(192, 168, 1, 23))
        );
    }

    #[test]
    fn lowest_metric_default_route_wins_and_down_routes_are_ignored() {
        let routes = route_table(&[
            (
                "eth0",
                [0, 0, 0, 0],
                [192, 168, 1, 1],
                "0003",
                600,
                [0, 0, 0, 0],
            ),
            (
                "eth0",
                [192, 168, 1, 0],
                [0, 0, 0, 0],
                "0001",
                600,
                [255, 255, 255, 0],
            ),
            (
                "wlan0",
                [0, 0, 0, 0],
                [10, 0, 0, 1],
                "0002",
                1,
                [0, 0, 0, 0],
            ),
            (
                "eth1",
                [0, 0, 0, 0],
                [10, 0, 0, 1],
                "0003",
                50,
                [0, 0, 0, 0],
            ),
            (
                "eth1",
                [10, 0, 0, 0],
                [0, 0, 0, 0],
                "0001",
                50,
                [255, 0, 0, 0],
            ),
        ]);
        assert_eq!(
            primary_ipv4(&routes, FIB_TRIE),
            Some(Ipv4Addr::new(10, 1, 2, 3))
        );
    }

    #[test]
    fn no_default_route_means_no_address() {
        let routes = route_table(&[(
            "eth0",
            [192, 168, 1, 0],
            [0, 0, 0, 0],
            "0001",
            0,
            [255, 255, 255, 0],
        )]);
        assert_eq!(primary_ipv4(&routes, FIB_TRIE), None);
        assert_eq!(primary_ipv4("", ""), None);
        assert_eq!(
            primary_ipv4("garbage\n\u{0}\u{ff} x y", "|-- nonsense"),
            None
        );
    }

    #[test]
    fn node_name_falls_back_like_kubeedge() {
        let ip = Ipv4Addr::LOCALHOST;
        assert_eq!(
            HostInfo::new("edge-1.example", ip).node_name(),
            "edge-1.example"
        );
        assert_eq!(
            HostInfo::new("Edge_1", ip).node_name(),
            DEFAULT_HOSTNAME_OVERRIDE
        );
        assert_eq!(HostInfo::new("", ip).node_name(), DEFAULT_HOSTNAME_OVERRIDE);
    }

    #[test]
    fn detect_never_fails() {
        let host = HostInfo::detect();
        assert!(!host.hostname.is_empty());
    }
}
