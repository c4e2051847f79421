//! What a client of either transport names and what can go wrong: the
//! [`ConnectTarget`] that [`crate::ws::connect`] and
//! [`crate::quic::connect_quic`] dial, and their [`ConnectError`].

use std::error::Error as StdError;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::time::timeout;

use crate::link::Peer;

/// Any error, boxed, as a source.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Where and as whom a client connects; used by [`crate::ws::connect`]
/// and [`crate::quic::connect_quic`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectTarget {
    /// The server: `host:port`, or a URL such as `wss://host:port/...`
    /// of which only host and port are used.
    pub server: String,
    /// The name the server certificate must carry in its SANs: a DNS name
    /// or an IP address. [`ConnectTarget::new`] takes the server's host.
    pub server_name: String,
    /// The node this connection speaks for; its certificate must be
    /// issued for `system:node:<node_id>`.
    pub node_id: String,
    /// The project id sent in the handshake.
    pub project_id: String,
    /// Local address to connect from (edgemark uses several 127.0.0.x
    /// addresses); `None` lets the system choose.
    pub local_addr: Option<IpAddr>,
}

impl ConnectTarget {
    /// A target for `server`, verified under the server's own host name.
    pub fn new(
        server: impl Into<String>,
        node_id: impl Into<String>,
        project_id: impl Into<String>,
    ) -> Self {
        let server = server.into();
        let server_name = split_host_port(authority_of(&server))
            .map(|(host, _)| host.to_owned())
            .unwrap_or_default();
        Self {
            server,
            server_name,
            node_id: node_id.into(),
            project_id: project_id.into(),
            local_addr: None,
        }
    }

    /// This target with another TLS server name.
    #[must_use]
    pub fn with_server_name(mut self, server_name: impl Into<String>) -> Self {
        self.server_name = server_name.into();
        self
    }

    /// This target connecting from `local_addr`.
    #[must_use]
    pub fn with_local_addr(mut self, local_addr: IpAddr) -> Self {
        self.local_addr = Some(local_addr);
        self
    }

    /// `host:port` of the server.
    pub fn authority(&self) -> Result<&str, ConnectError> {
        let authority = authority_of(&self.server);
        match split_host_port(authority) {
            Some((host, _)) if !host.is_empty() => Ok(authority),
            _ => Err(self.invalid("expected host:port")),
        }
    }

    /// The WebSocket URL KubeEdge's EdgeHub dials:
    /// `wss://<host:port>/<project_id>/<node_id>/events`.
    pub fn url(&self) -> Result<String, ConnectError> {
        Ok(format!(
            "wss://{}/{}/{}/events",
            self.authority()?,
            self.project_id,
            self.node_id
        ))
    }

    /// The TLS server name.
    pub(crate) fn tls_server_name(&self) -> Result<ServerName<'static>, ConnectError> {
        let name = self
            .server_name
            .trim_start_matches('[')
            .trim_end_matches(']');
        ServerName::try_from(name.to_owned())
            .map_err(|e| self.invalid(format!("bad TLS server name: {e}")))
    }

    /// The server's addresses, those of the local address's family first
    /// (only those when a local address is set).
    pub(crate) async fn resolve(&self) -> Result<Vec<SocketAddr>, ConnectError> {
        let authority = self.authority()?;
        let addrs =
            tokio::net::lookup_host(authority)
                .await
                .map_err(|source| ConnectError::Connect {
                    server: self.server.clone(),
                    source,
                })?;
        let addrs: Vec<SocketAddr> = addrs
            .filter(|addr| {
                self.local_addr
                    .is_none_or(|local| local.is_ipv4() == addr.is_ipv4())
            })
            .collect();
        if addrs.is_empty() {
            return Err(ConnectError::Connect {
                server: self.server.clone(),
                source: io::Error::new(
                    io::ErrorKind::AddrNotAvailable,
                    "no address of the local address's family",
                ),
            });
        }
        Ok(addrs)
    }

    /// Runs a client's whole connection `setup` within `after` (the
    /// handshake timeout).
    pub(crate) async fn within_timeout<T>(
        &self,
        after: Duration,
        setup: impl Future<Output = Result<T, ConnectError>>,
    ) -> Result<T, ConnectError> {
        timeout(after, setup)
            .await
            .map_err(|_elapsed| ConnectError::Timeout {
                server: self.server.clone(),
                after,
            })?
    }

    /// The peer of a client's link: the node and project it speaks for,
    /// at the server's `address`.
    pub(crate) fn peer(&self, address: SocketAddr) -> Peer {
        Peer {
            node_id: self.node_id.clone(),
            project_id: self.project_id.clone(),
            address: Some(address),
        }
    }

    /// An invalid-target error for this target.
    pub(crate) fn invalid(&self, reason: impl Into<String>) -> ConnectError {
        ConnectError::InvalidTarget {
            server: self.server.clone(),
            reason: reason.into(),
        }
    }
}

/// `host:port` out of `server`, which may be a URL.
fn authority_of(server: &str) -> &str {
    let rest = server.split_once("://").map_or(server, |(_, rest)| rest);
    rest.split(['/', '?', '#']).next().unwrap_or(rest)
}

/// `(host, port)` of an authority; the host without IPv6 brackets.
fn split_host_port(authority: &str) -> Option<(&str, u16)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        (host, after.strip_prefix(':')?)
    } else {
        authority.rsplit_once(':')?
    };
    Some((host, port.parse().ok()?))
}

/// A client could not establish a link.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The target is not usable (address, server name, headers, TLS
    /// configuration).
    #[error("cannot connect to {server:?}: {reason}")]
    InvalidTarget {
        /// The target's server.
        server: String,
        /// What is wrong.
        reason: String,
    },
    /// Resolving, binding or connecting the socket failed.
    #[error("could not connect to {server}")]
    Connect {
        /// The target's server.
        server: String,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// The TLS handshake failed: the server's certificate was not
    /// accepted, or the server refused this client's certificate.
    #[error("TLS handshake with {server} failed")]
    Tls {
        /// The target's server.
        server: String,
        /// The TLS or QUIC error.
        #[source]
        source: BoxError,
    },
    /// The server refused the handshake: the HTTP status on WebSocket, the
    /// connection's close code on QUIC (403 wrong node, 400 bad request).
    #[error("{server} refused the handshake with status {status}")]
    Refused {
        /// The target's server.
        server: String,
        /// The status.
        status: u16,
    },
    /// The WebSocket or QUIC handshake failed otherwise.
    #[error("handshake with {server} failed")]
    Handshake {
        /// The target's server.
        server: String,
        /// The protocol error.
        #[source]
        source: BoxError,
    },
    /// The whole connection setup took longer than the handshake timeout.
    #[error("connecting to {server} timed out after {after:?}")]
    Timeout {
        /// The target's server.
        server: String,
        /// The timeout.
        after: Duration,
    },
}
