//! The cloud-edge link (protocol.md §3, §4).
//!
//! * [`link`]: a connection as the hub modules use it, whatever carries it,
//!   and an in-memory pair for tests.
//! * [`ca`]: the hub's certificate authority: the CA itself, the CloudHub
//!   server certificate, node certificates from edge CSRs, and the rustls
//!   configurations of the hub's listeners.
//! * [`token`]: join tokens (`<caHash>.<JWT>`), made and verified as
//!   KubeEdge does.
//! * [`certserver`]: the hub's certificate server (`/ca.crt`, `/edge.crt`)
//!   over HTTPS.
//! * [`bootstrap`]: the edge side: first join with the token, reuse of the
//!   certificate on disk, renewal, and the hub connection's TLS settings.
//! * [`limits`]: the limits every transport enforces on a connection
//!   (frame and handshake size, handshake time, message rate, buffering).
//! * [`metrics`]: the link metrics (refusals by reason, connections,
//!   messages) that the transports count into.
//! * [`client`]: what a client of either transport names
//!   ([`client::ConnectTarget`]) and what can go wrong
//!   ([`client::ConnectError`]).
//! * [`ws`]: the WebSocket-over-TLS transport, KubeEdge's main channel:
//!   the CloudHub server and the EdgeHub client.
//! * [`quic`]: the same over IETF QUIC (not wire-compatible with
//!   KubeEdge's gQUIC channel).
pub mod bootstrap;
pub mod ca;
pub mod certserver;
pub mod client;
mod conn;
pub mod limits;
mod line;
pub mod link;
pub mod metrics;
pub mod quic;
#[cfg(test)]
mod testutil;
pub mod token;
pub mod ws;
