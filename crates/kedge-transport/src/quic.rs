//! The QUIC transport: the cloud-edge link over IETF QUIC (RFC 9000) with
//! TLS 1.3 and client certificates, on UDP port 10001 by default.
//!
//! **This cannot interoperate with KubeEdge's QUIC channel.** KubeEdge
//! (every release so far) uses quic-go v0.10.1 without choosing a version,
//! which means Google QUIC (Q039–Q044) with Google's "QUIC Crypto"
//! handshake, a protocol that predates and differs from IETF QUIC in
//! packet format, handshake and stream framing, and that no maintained
//! Rust stack implements (protocol.md §3.4). Its frames are protobuf with
//! a 10-byte header, and it has no client certificate authentication at
//! all. Kedge keeps the channel's shape instead and runs it over a QUIC
//! that Kedge components speak with each other:
//!
//! * TLS: the same rustls server configuration as the WebSocket server
//!   (it must allow TLS 1.3, which QUIC requires), with the ALPN protocol
//!   [`ALPN`]; client certificates are required and the node's name is
//!   the certificate's common name `system:node:<name>`, as on WebSocket.
//! * Handshake: the client opens the connection's only bidirectional
//!   stream and writes a message with operation and resource `header`
//!   whose content is the JSON object `{"Node_id":[..],"Project_id":[..]}`
//!   (KubeEdge's header message; keys are matched case-insensitively, and
//!   content holding that JSON as a string is accepted too). The server
//!   answers on the same stream with a `response` whose content is `"ack"`,
//!   or `"nack"` followed by closing the connection with an application
//!   error code equal to the HTTP status WebSocket would give (403 for a
//!   node that is not the certificate's, 400 for a bad header).
//! * Messages: that stream stays open for the life of the connection and
//!   carries every message: its send half this side's messages, its
//!   receive half the peer's (QUIC stream halves are independent, so this
//!   is one long-lived stream per direction). Each message is framed as a
//!   4-byte big-endian length followed by the same JSON as a WebSocket
//!   frame (with Go's trailing newline). One ordered stream keeps
//!   messages in the order they were sent, as on WebSocket. No other
//!   stream may be opened (the transport parameters allow none).
//! * Limits, metrics and the control operations `ping`, `pong` and
//!   `config` work as on WebSocket, except that a frame over the size
//!   limit is skipped without being buffered and **the link stays up**.
//! * Closing: a side that closes finishes its stream, waits briefly for
//!   the peer to acknowledge it, then closes the connection with code 0.
//!   Keep-alives every 10 s hold the connection open; 30 s of silence
//!   ends it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use kedge_message::{Message, operation};
use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use quinn::{
    Connection, ConnectionError, IdleTimeout, ReadError, ReadExactError, RecvStream, SendStream,
    TransportConfig, VarInt, WriteError,
};
use rustls_pki_types::CertificateDer;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span};

use crate::client::{BoxError, ConnectError, ConnectTarget};
use crate::conn::{
    ACK, Admission, CLOSE_GRACE, Connections, FrameSink, FrameSource, NACK, Read, Refusal,
    check_identity, node_from_certificates, spawn_client,
};
use crate::limits::LinkLimits;
use crate::link::{Link, Peer, parse_restart_reason, restart_reason};
use crate::metrics::{LinkMetrics, RefuseReason, Transport};

/// KubeEdge's default QUIC port.
pub const DEFAULT_PORT: u16 = 10001;

/// The ALPN protocol of Kedge's QUIC link.
pub const ALPN: &[u8] = b"kedge-hub/1";

/// The resource of the handshake message.
const HEADER_RESOURCE: &str = "header";

/// Connection close code of a link closed normally.
const CLOSE_NORMAL: u32 = 0;

/// Silence after which the client sends a QUIC keep-alive. Any packet
/// either way restarts the wait, so with EdgeHub's heartbeat (every 15 s
/// by default) none is sent: only a longer heartbeat setting needs it to
/// stay under the idle timeout. The server sends none: at 100,000
/// connections, keep-alives from both sides every 10 s tripled the
/// packets a quiet link costs.
const CLIENT_KEEP_ALIVE: Duration = Duration::from_secs(20);

/// Silence after which a connection is dead, in milliseconds.
const IDLE_TIMEOUT_MS: u32 = 30_000;

/// Receive and send buffer asked for each client UDP socket (the kernel
/// caps it at `net.core.rmem_max` / `wmem_max`): one socket carries the
/// packets of every connection of an endpoint, and the default of
/// ~200 KiB overflows when thousands of them are busy at once.
const UDP_BUFFER_BYTES: usize = 8 << 20;

/// The same for the server's socket, which carries every node's packets:
/// a burst of reconnecting nodes fills 8 MiB. Raise the kernel's caps to
/// let it have this much (docs/link.md).
const SERVER_UDP_BUFFER_BYTES: usize = 64 << 20;

/// Bytes skipped per read when discarding an oversized frame.
const SKIP_CHUNK: usize = 64 * 1024;

/// A QUIC server endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum QuicSetupError {
    /// The rustls configuration's crypto provider lacks TLS 1.3's
    /// AES-128-GCM, which QUIC needs.
    #[error("the TLS configuration cannot be used for QUIC")]
    Tls(#[source] NoInitialCipherSuite),
    /// The UDP socket could not be bound.
    #[error("cannot bind the QUIC endpoint to {address}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
}

/// The transport parameters: one client-opened bidirectional stream, no
/// other stream, the client's keep-alives and an idle timeout.
fn transport_config(server: bool) -> TransportConfig {
    let mut config = TransportConfig::default();
    config
        .max_concurrent_bidi_streams(VarInt::from_u32(u32::from(server)))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .keep_alive_interval((!server).then_some(CLIENT_KEEP_ALIVE))
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(IDLE_TIMEOUT_MS))));
    config
}

/// A QUIC endpoint for [`serve`], bound to `address` (UDP), with `tls`
/// (which must require client certificates and allow TLS 1.3) and the
/// ALPN protocol [`ALPN`].
///
/// Its stateless-reset key is derived from `reset_secret`, which must be
/// the same across restarts (cloudcore gives its CA key): a client whose
/// connection the previous process held then gets a stateless reset it
/// can verify for its next packet and reconnects at once, instead of
/// waiting out the idle timeout.
pub fn server_endpoint(
    address: SocketAddr,
    tls: &rustls::ServerConfig,
    reset_secret: &[u8],
) -> Result<quinn::Endpoint, QuicSetupError> {
    let mut crypto = tls.clone();
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    // QUIC allows 0 or unlimited early data; the link uses none.
    crypto.max_early_data_size = 0;
    let crypto = QuicServerConfig::try_from(crypto).map_err(QuicSetupError::Tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(true)));
    let derive = |label: &[u8]| {
        let mut seed = label.to_vec();
        seed.extend_from_slice(reset_secret);
        ring::digest::digest(&ring::digest::SHA256, &seed)
    };
    let reset_key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        derive(b"kedge quic stateless reset\0").as_ref(),
    );
    // Connection ids are checked against a key too: the same one across
    // restarts, or a restarted endpoint would drop the packets it must
    // answer with a reset as not its own.
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&derive(b"kedge quic connection ids\0").as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
    endpoint_config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    let bind_error = |source| QuicSetupError::Bind { address, source };
    let socket = bind_udp(address, SERVER_UDP_BUFFER_BYTES).map_err(bind_error)?;
    quinn::Endpoint::new(
        endpoint_config,
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(bind_error)
}

/// Serves edge connections on `endpoint` (see [`server_endpoint`]) until
/// `shutdown` is cancelled or `accepted` is closed, then closes every
/// connection and the endpoint.
///
/// Each accepted connection is handed to `accepted` as a [`Link`] whose
/// peer is the node, its project and its address; refused ones are
/// counted in `metrics`.
pub async fn serve(
    endpoint: quinn::Endpoint,
    limits: LinkLimits,
    metrics: LinkMetrics,
    accepted: mpsc::Sender<Link>,
    shutdown: CancellationToken,
) {
    let connections = Connections::new(Transport::Quic, limits, metrics, accepted, &shutdown);
    loop {
        let incoming = tokio::select! {
            () = connections.stopping() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        let address = incoming.remote_address();
        connections.spawn(move |admission| {
            ServerConnection { admission }
                .run(incoming)
                .instrument(info_span!("quic_link", %address))
        });
    }
    connections.close().await;
    endpoint.close(VarInt::from_u32(CLOSE_NORMAL), b"server shutting down");
    // Lets the connection closes reach the clients before the process
    // ends, so that they reconnect at once.
    if timeout(CLOSE_GRACE, endpoint.wait_idle()).await.is_err() {
        debug!("the QUIC endpoint did not go idle in time");
    }
}

/// What one server connection task needs.
struct ServerConnection {
    admission: Admission,
}

/// An established connection and its message stream.
struct Established {
    conn: Connection,
    send: SendStream,
    recv: RecvStream,
}

impl Established {
    /// The connection as [`crate::conn::drive`] reads and writes it; a
    /// client passes its endpoint, which must live as long as the
    /// connection.
    fn split(
        self,
        limits: &LinkLimits,
        endpoint: Option<quinn::Endpoint>,
    ) -> (QuicSource, QuicSink) {
        let Self { conn, send, recv } = self;
        (
            QuicSource {
                recv,
                max_frame_bytes: limits.max_frame_bytes,
            },
            QuicSink {
                conn,
                send,
                _endpoint: endpoint,
            },
        )
    }
}

impl ServerConnection {
    async fn run(self, incoming: quinn::Incoming) {
        let handshake = self.handshake(incoming);
        let on_shutdown = |established: Established| {
            established
                .conn
                .close(VarInt::from_u32(CLOSE_NORMAL), b"server shutting down");
        };
        let Some((established, ends)) = self.admission.admit(handshake, on_shutdown).await else {
            return;
        };
        let (source, sink) = established.split(&self.admission.limits, None);
        self.admission.drive(source, sink, ends).await;
    }

    async fn handshake(&self, incoming: quinn::Incoming) -> Result<(Established, Peer), Refusal> {
        let address = incoming.remote_address();
        let conn = incoming.await.map_err(|e| {
            Refusal::new(
                server_tls_refusal(&e),
                format!("QUIC handshake failed: {e}"),
            )
        })?;
        let certs = conn
            .peer_identity()
            .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok());
        let cert_node = node_from_certificates(certs.as_deref().map(Vec::as_slice));
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| {
            Refusal::new(RefuseReason::Handshake, format!("no handshake stream: {e}"))
        })?;

        let limit = self.admission.limits.max_handshake_bytes;
        let header = match read_frame(&mut recv, limit).await {
            Ok(Some(Frame::Data(frame))) => Message::decode(&frame, limit).ok(),
            Ok(Some(Frame::TooLarge(size))) => {
                let detail = format!("header message of {size} bytes exceeds {limit}");
                return Err(
                    refuse(&conn, &mut send, None, 400, RefuseReason::Handshake, detail).await,
                );
            }
            Ok(None) => {
                return Err(Refusal::new(
                    RefuseReason::Handshake,
                    "the stream ended before the header message",
                ));
            }
            Err(e) => {
                return Err(Refusal::new(
                    RefuseReason::Handshake,
                    format!("reading the header message failed: {e}"),
                ));
            }
        };
        let Some(header) = header.filter(|h| h.router.operation == operation::HEADER) else {
            let detail = "the first message is not a header message";
            return Err(refuse(&conn, &mut send, None, 400, RefuseReason::Handshake, detail).await);
        };
        let (node_id, project_id) = header_values(&header.content);
        match check_identity(&cert_node, node_id.as_deref(), project_id.as_deref()) {
            Ok((node_id, project_id)) => {
                let ack = header.response(Value::String(ACK.to_owned()));
                write_frame(&mut send, &ack.encode()).await.map_err(|e| {
                    Refusal::new(
                        RefuseReason::Handshake,
                        format!("answering the header failed: {e}"),
                    )
                })?;
                let peer = Peer {
                    node_id,
                    project_id,
                    address: Some(address),
                };
                Ok((Established { conn, send, recv }, peer))
            }
            Err((status, refusal)) => Err(refuse(
                &conn,
                &mut send,
                Some(&header),
                status,
                refusal.reason,
                refusal.detail,
            )
            .await),
        }
    }
}

/// Answers a handshake with `nack`, waits (briefly) for the peer to
/// receive it, and closes the connection with `status` as its code.
async fn refuse(
    conn: &Connection,
    send: &mut SendStream,
    header: Option<&Message>,
    status: u16,
    reason: RefuseReason,
    detail: impl Into<String>,
) -> Refusal {
    let nack = match header {
        Some(header) => header.response(Value::String(NACK.to_owned())),
        None => Message::new(
            "",
            "",
            operation::RESPONSE,
            HEADER_RESOURCE,
            Value::String(NACK.to_owned()),
        ),
    };
    if write_frame(send, &nack.encode()).await.is_ok() && send.finish().is_ok() {
        // Closing at once could discard the nack before it is sent.
        let _ = timeout(CLOSE_GRACE, send.stopped()).await;
    }
    conn.close(
        VarInt::from_u32(u32::from(status)),
        reason.as_str().as_bytes(),
    );
    Refusal::new(reason, detail)
}

/// `node_id` and `project_id` of a header message's content: a JSON object
/// of header names to value lists (or that object as a JSON string), names
/// matched case-insensitively.
fn header_values(content: &Value) -> (Option<String>, Option<String>) {
    let parsed;
    let map = match content {
        Value::Object(map) => map,
        Value::String(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => {
                parsed = map;
                &parsed
            }
            _ => return (None, None),
        },
        _ => return (None, None),
    };
    let get = |key: &str| {
        let value = map
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(key))?
            .1;
        match value {
            Value::Array(values) => values.first()?.as_str().map(str::to_owned),
            Value::String(value) => Some(value.clone()),
            _ => None,
        }
    };
    (get("node_id"), get("project_id"))
}

/// The refusal reason of a failed server-side QUIC handshake: a TLS alert
/// about the client's certificate means unauthorized.
fn server_tls_refusal(error: &ConnectionError) -> RefuseReason {
    match tls_alert(error) {
        // bad_certificate, unsupported_certificate, certificate_revoked,
        // certificate_expired, certificate_unknown, unknown_ca,
        // access_denied, certificate_required.
        Some(42..=46 | 48 | 49 | 116) => RefuseReason::Unauthorized,
        _ => RefuseReason::Handshake,
    }
}

/// The TLS alert behind a QUIC connection error, if it is one.
fn tls_alert(error: &ConnectionError) -> Option<u8> {
    let code = match error {
        ConnectionError::TransportError(error) => u64::from(error.code),
        ConnectionError::ConnectionClosed(close) => u64::from(close.error_code),
        _ => return None,
    };
    // QUIC carries TLS alerts as codes 0x100 to 0x1ff (RFC 9001 §4.8).
    (code & !0xff == 0x100).then(|| u8::try_from(code & 0xff).unwrap_or(0))
}

// === Framing ===

/// One frame read from a stream.
#[derive(Debug)]
enum Frame {
    /// A frame within the limit.
    Data(Vec<u8>),
    /// A frame over the limit, of this size, skipped.
    TooLarge(usize),
}

/// Reads one length-prefixed frame; `None` when the stream ends cleanly
/// between frames. A frame over `limit` is read and discarded in chunks,
/// never buffered whole.
async fn read_frame(recv: &mut RecvStream, limit: usize) -> Result<Option<Frame>, ReadExactError> {
    let mut prefix = [0; 4];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(error) => return Err(error),
    }
    let size = usize::try_from(u32::from_be_bytes(prefix)).unwrap_or(usize::MAX);
    if size > limit {
        let mut left = size;
        while left > 0 {
            match recv.read_chunk(left.min(SKIP_CHUNK), true).await? {
                Some(chunk) => left = left.saturating_sub(chunk.bytes.len()),
                None => return Err(ReadExactError::FinishedEarly(size - left)),
            }
        }
        return Ok(Some(Frame::TooLarge(size)));
    }
    let mut frame = vec![0; size];
    recv.read_exact(&mut frame).await?;
    Ok(Some(Frame::Data(frame)))
}

/// A frame could not be written.
#[derive(Debug, thiserror::Error)]
enum FrameWriteError {
    /// The frame does not fit a 4-byte length.
    #[error("a frame of {0} bytes cannot be length-prefixed")]
    TooLong(usize),
    /// The stream failed.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Writes one length-prefixed frame.
async fn write_frame(send: &mut SendStream, payload: &[u8]) -> Result<(), FrameWriteError> {
    let size = u32::try_from(payload.len()).map_err(|_| FrameWriteError::TooLong(payload.len()))?;
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&size.to_be_bytes());
    frame.extend_from_slice(payload);
    send.write_all(&frame).await?;
    Ok(())
}

// === Client ===

/// Connects to a Kedge QUIC server as `target.node_id`.
///
/// `tls` verifies the server (the server certificate's SANs must match
/// `target.server_name`) and carries the node's client certificate; the
/// ALPN protocol is set here. The whole setup must finish within
/// `limits.handshake_timeout`; clients normally pass
/// [`LinkLimits::client`]. The returned link's peer is the node and
/// project it speaks for and the server's address.
pub async fn connect_quic(
    target: &ConnectTarget,
    tls: Arc<rustls::ClientConfig>,
    limits: &LinkLimits,
    metrics: LinkMetrics,
) -> Result<Link, ConnectError> {
    let address = resolve(target).await?;
    let endpoint = client_endpoint(target, local_address(target, address))?;
    connect_from(&endpoint, target, tls, limits, metrics).await
}

/// QUIC client endpoints that many links share, one UDP socket per local
/// address: edgemark holds tens of thousands of links this way, far below
/// any open-file limit. Clones share the endpoints.
#[derive(Debug, Clone, Default)]
pub struct SharedEndpoints {
    endpoints: Arc<std::sync::Mutex<HashMap<IpAddr, quinn::Endpoint>>>,
}

impl SharedEndpoints {
    /// Connects like [`connect_quic`], from the shared endpoint of the
    /// target's local address (made on first use).
    pub async fn connect(
        &self,
        target: &ConnectTarget,
        tls: Arc<rustls::ClientConfig>,
        limits: &LinkLimits,
        metrics: LinkMetrics,
    ) -> Result<Link, ConnectError> {
        let address = resolve(target).await?;
        let local = local_address(target, address);
        let endpoint = {
            let mut endpoints = self
                .endpoints
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match endpoints.get(&local) {
                Some(endpoint) => endpoint.clone(),
                None => {
                    let endpoint = client_endpoint(target, local)?;
                    endpoints.insert(local, endpoint.clone());
                    endpoint
                }
            }
        };
        connect_from(&endpoint, target, tls, limits, metrics).await
    }
}

/// Connects from `endpoint` and hands the link its driver.
async fn connect_from(
    endpoint: &quinn::Endpoint,
    target: &ConnectTarget,
    tls: Arc<rustls::ClientConfig>,
    limits: &LinkLimits,
    metrics: LinkMetrics,
) -> Result<Link, ConnectError> {
    let (established, address) = target
        .within_timeout(
            limits.handshake_timeout,
            client_handshake(endpoint, target, &tls, limits),
        )
        .await?;
    Ok(spawn_client(
        target,
        address,
        established.split(limits, Some(endpoint.clone())),
        Transport::Quic,
        limits,
        metrics,
        info_span!("quic_client", server = %target.server, node = %target.node_id),
    ))
}

/// The target's local address, or the unspecified address of the
/// server address's family.
fn local_address(target: &ConnectTarget, server: SocketAddr) -> IpAddr {
    target.local_addr.unwrap_or(if server.is_ipv6() {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    })
}

/// A UDP socket bound to `address` with buffers of `buffer` bytes (or
/// what the kernel allows).
fn bind_udp(address: SocketAddr, buffer: usize) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort: a smaller buffer still works, it only drops sooner.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    if address.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.bind(&address.into())?;
    Ok(socket.into())
}

/// A client endpoint on an ephemeral UDP port of `local`.
fn client_endpoint(target: &ConnectTarget, local: IpAddr) -> Result<quinn::Endpoint, ConnectError> {
    let connect_error = |source| ConnectError::Connect {
        server: target.server.clone(),
        source,
    };
    let socket = bind_udp(SocketAddr::new(local, 0), UDP_BUFFER_BYTES).map_err(connect_error)?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(connect_error)
}

/// The server's first address.
async fn resolve(target: &ConnectTarget) -> Result<SocketAddr, ConnectError> {
    target
        .resolve()
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| target.invalid("no address"))
}

/// Connects from `endpoint` and completes the QUIC and header handshakes.
async fn client_handshake(
    endpoint: &quinn::Endpoint,
    target: &ConnectTarget,
    tls: &rustls::ClientConfig,
    limits: &LinkLimits,
) -> Result<(Established, SocketAddr), ConnectError> {
    // Validates the name before quinn sees it.
    target.tls_server_name()?;
    let server_name = target
        .server_name
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let address = resolve(target).await?;

    let mut crypto = tls.clone();
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    crypto.enable_early_data = false;
    let crypto = QuicClientConfig::try_from(crypto)
        .map_err(|e| target.invalid(format!("TLS configuration unusable for QUIC: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(false)));

    let conn = endpoint
        .connect_with(config, address, &server_name)
        .map_err(|e| target.invalid(e.to_string()))?
        .await
        .map_err(|e| connection_failed(target, e))?;
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| connection_failed(target, e))?;

    let header = Message::new(
        "",
        "",
        operation::HEADER,
        HEADER_RESOURCE,
        json!({
            "Node_id": [target.node_id],
            "Project_id": [target.project_id],
        }),
    );
    write_frame(&mut send, &header.encode())
        .await
        .map_err(|e| match e {
            FrameWriteError::Write(WriteError::ConnectionLost(lost)) => {
                connection_failed(target, lost)
            }
            other => handshake_failed(target, other),
        })?;
    let limit = limits.max_handshake_bytes;
    let reply = match read_frame(&mut recv, limit).await {
        Ok(Some(Frame::Data(frame))) => {
            Message::decode(&frame, limit).map_err(|e| handshake_failed(target, e))?
        }
        Ok(Some(Frame::TooLarge(size))) => {
            return Err(handshake_failed(
                target,
                format!("handshake reply of {size} bytes exceeds {limit}"),
            ));
        }
        Ok(None) => return Err(handshake_failed(target, "the server ended the stream")),
        Err(ReadExactError::ReadError(ReadError::ConnectionLost(lost))) => {
            return Err(connection_failed(target, lost));
        }
        Err(e) => return Err(handshake_failed(target, e)),
    };
    match reply.content.as_str() {
        Some(ACK) if reply.parent_id() == header.id() => {
            Ok((Established { conn, send, recv }, address))
        }
        Some(NACK) => {
            // The server closes the connection with the status as code.
            let status = timeout(CLOSE_GRACE, conn.closed())
                .await
                .ok()
                .and_then(|closed| refusal_status(&closed))
                .unwrap_or(403);
            conn.close(VarInt::from_u32(CLOSE_NORMAL), b"refused");
            Err(ConnectError::Refused {
                server: target.server.clone(),
                status,
            })
        }
        _ => Err(handshake_failed(
            target,
            "unexpected reply to the header message",
        )),
    }
}

/// The client error for a connection that failed during setup.
fn connection_failed(target: &ConnectTarget, error: ConnectionError) -> ConnectError {
    let server = target.server.clone();
    if tls_alert(&error).is_some() {
        return ConnectError::Tls {
            server,
            source: error.into(),
        };
    }
    match refusal_status(&error) {
        Some(status) => ConnectError::Refused { server, status },
        None => ConnectError::Handshake {
            server,
            source: error.into(),
        },
    }
}

/// The HTTP-like status a server closed a connection with, when it
/// refused the handshake.
fn refusal_status(error: &ConnectionError) -> Option<u16> {
    match error {
        ConnectionError::ApplicationClosed(close) => u16::try_from(close.error_code.into_inner())
            .ok()
            .filter(|status| (400..600).contains(status)),
        _ => None,
    }
}

fn handshake_failed(target: &ConnectTarget, error: impl Into<BoxError>) -> ConnectError {
    ConnectError::Handshake {
        server: target.server.clone(),
        source: error.into(),
    }
}

// === The link's frames ===

/// The receiving half of the message stream; frames over
/// `max_frame_bytes` are skipped unread.
struct QuicSource {
    recv: RecvStream,
    max_frame_bytes: usize,
}

impl FrameSource for QuicSource {
    async fn read(&mut self) -> Read {
        match read_frame(&mut self.recv, self.max_frame_bytes).await {
            Ok(Some(Frame::Data(data))) => Read::Frame(data),
            Ok(Some(Frame::TooLarge(size))) => {
                debug!(
                    size,
                    limit = self.max_frame_bytes,
                    "skipped an oversized frame"
                );
                Read::Refused(RefuseReason::TooLarge)
            }
            Ok(None) => {
                debug!("the peer closed its stream");
                Read::End(None)
            }
            Err(ReadExactError::ReadError(ReadError::ConnectionLost(
                ConnectionError::ApplicationClosed(close),
            ))) if let Some(window) = std::str::from_utf8(&close.reason)
                .ok()
                .and_then(parse_restart_reason) =>
            {
                Read::Restart(window)
            }
            Err(error) => {
                debug!(%error, "the connection failed");
                Read::End(None)
            }
        }
    }
}

/// The sending half of the message stream and the connection it closes.
struct QuicSink {
    conn: Connection,
    send: SendStream,
    _endpoint: Option<quinn::Endpoint>,
}

impl FrameSink for QuicSink {
    type Error = FrameWriteError;

    async fn write(&mut self, frame: Vec<u8>) -> Result<bool, Self::Error> {
        write_frame(&mut self.send, &frame).await?;
        Ok(true)
    }

    async fn close(mut self, restart: Option<Duration>) {
        if let Some(window) = restart {
            // At once, so that the peer reads the reason rather than the
            // end of the stream.
            self.conn.close(
                VarInt::from_u32(CLOSE_NORMAL),
                restart_reason(window).as_bytes(),
            );
            return;
        }
        if self.send.finish().is_ok() && timeout(CLOSE_GRACE, self.send.stopped()).await.is_err() {
            debug!("the peer did not acknowledge the end of the stream in time");
        }
        self.conn
            .close(VarInt::from_u32(CLOSE_NORMAL), b"link closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::RateLimit;
    use crate::testutil::{
        Server, TestCa, a_connection_over_the_handshake_limit_is_refused_at_once,
        a_connection_over_the_handshake_limit_waits_in_line_newest_first,
        a_connection_that_waits_too_long_is_refused,
        a_link_closed_for_a_restart_gives_the_edge_its_window,
        a_node_id_that_differs_from_the_certificate_is_refused, app_message, eventually,
        one_handshake_slot, unlimited, within,
    };

    fn start_server(ca: &TestCa, limits: LinkLimits) -> Server {
        let endpoint = server_endpoint(
            "127.0.0.1:0".parse().expect("address"),
            &ca.server_config(),
            b"reset secret",
        )
        .expect("endpoint");
        let address = endpoint.local_addr().expect("address");
        Server::spawn(Transport::Quic, address, |tx, metrics, shutdown| {
            serve(endpoint, limits, metrics, tx, shutdown)
        })
    }

    /// A QUIC connection to the server as `node`, past TLS and nothing
    /// more, with the endpoint it must outlive.
    async fn raw_connection(
        server: &Server,
        ca: &TestCa,
        node: &str,
    ) -> (Connection, quinn::Endpoint) {
        let identity = ca.client(&format!("system:node:{node}"));
        let mut crypto = (*ca.client_config(Some(&identity))).clone();
        crypto.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = QuicClientConfig::try_from(crypto).expect("quic crypto");
        let endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("address")).expect("endpoint");
        let conn = endpoint
            .connect_with(
                quinn::ClientConfig::new(Arc::new(crypto)),
                server.address,
                "127.0.0.1",
            )
            .expect("connecting")
            .await
            .expect("connected");
        (conn, endpoint)
    }

    async fn connect_as(server: &Server, ca: &TestCa, node: &str) -> Link {
        let identity = ca.client(&format!("system:node:{node}"));
        server
            .dial(node, ca.client_config(Some(&identity)))
            .await
            .expect("connected")
    }

    #[tokio::test]
    async fn links_of_several_nodes_share_one_endpoint() {
        let ca = TestCa::new("test CA");
        let mut server = start_server(&ca, LinkLimits::default());
        let shared = SharedEndpoints::default();
        let mut edges = Vec::new();
        for node in ["edge-1", "edge-2", "edge-3"] {
            let identity = ca.client(&format!("system:node:{node}"));
            let edge = shared
                .connect(
                    &server.target(node),
                    ca.client_config(Some(&identity)),
                    &unlimited(),
                    LinkMetrics::default(),
                )
                .await
                .expect("connected");
            let cloud = server.next_link().await;
            assert_eq!(cloud.peer.node_id, node);
            edges.push((edge, cloud));
        }
        let ports: std::collections::BTreeSet<u16> = {
            let endpoints = shared.endpoints.lock().expect("endpoints");
            endpoints
                .values()
                .map(|e| e.local_addr().expect("bound").port())
                .collect()
        };
        assert_eq!(ports.len(), 1, "one UDP socket for all links");
        for (n, (edge, cloud)) in edges.iter_mut().enumerate() {
            cloud.sender.send(app_message(n)).await.expect("sent");
            let got = within("a message", edge.receiver.recv())
                .await
                .expect("message");
            assert_eq!(got.content, Value::String(format!("status {n}")));
        }
        // Closing one link leaves the others and the shared socket up.
        let (first, _) = edges.remove(0);
        drop(first);
        let (edge, cloud) = &mut edges[0];
        cloud.sender.send(app_message(7)).await.expect("sent");
        let got = within("a message after another link closed", edge.receiver.recv())
            .await
            .expect("message");
        assert_eq!(got.content, Value::String("status 7".to_owned()));
        server.stop().await;
    }

    #[tokio::test]
    async fn messages_flow_both_ways() {
        let ca = TestCa::new("test CA");
        let mut server = start_server(&ca, LinkLimits::default());
        let identity = ca.client("system:node:edge-1");
        let metrics = LinkMetrics::default();
        let mut edge = connect_quic(
            &server.target("edge-1"),
            ca.client_config(Some(&identity)),
            &unlimited(),
            metrics.clone(),
        )
        .await
        .expect("connected");
        let mut cloud = server.next_link().await;
        assert_eq!(cloud.peer.node_id, "edge-1");
        assert_eq!(cloud.peer.project_id, "project-1");
        assert_eq!(edge.peer.address, Some(server.address));

        let keepalive = Message::keepalive();
        edge.sender.send(keepalive.clone()).await.expect("sent");
        let got = within("the keepalive", cloud.receiver.recv())
            .await
            .expect("message");
        assert_eq!(got, keepalive);
        for n in 0..50 {
            cloud.sender.send(app_message(n)).await.expect("sent");
        }
        for n in 0..50 {
            let msg = within("a message", edge.receiver.recv())
                .await
                .expect("message");
            assert_eq!(
                msg.content,
                Value::String(format!("status {n}")),
                "in order"
            );
        }
        assert_eq!(server.metrics.accepted(Transport::Quic), 1);
        // Counted right after the peer could see them: wait for them.
        eventually("the messages to be counted", || {
            server.metrics.received(Transport::Quic) == 1
                && metrics.received(Transport::Quic) == 50
                && server.metrics.sent(Transport::Quic) == 50
        })
        .await;
        assert_eq!(metrics.open(Transport::Quic), 1);
        server.stop().await;
        assert_eq!(
            within("the edge side to end", edge.receiver.recv()).await,
            None
        );
        eventually("the client link to be counted closed", || {
            metrics.open(Transport::Quic) == 0
        })
        .await;
    }

    #[tokio::test]
    async fn a_link_closed_for_a_restart_carries_its_window_to_the_edge() {
        let ca = TestCa::new("test CA");
        let server = start_server(&ca, LinkLimits::default());
        a_link_closed_for_a_restart_gives_the_edge_its_window(server, &ca).await;
    }

    #[tokio::test]
    async fn a_node_id_that_differs_from_the_certificate_is_refused_with_403() {
        let ca = TestCa::new("test CA");
        let server = start_server(&ca, LinkLimits::default());
        a_node_id_that_differs_from_the_certificate_is_refused(server, &ca).await;
    }

    #[tokio::test]
    async fn a_connection_over_the_handshake_limit_is_refused() {
        let ca = TestCa::new("test CA");
        let server = start_server(&ca, one_handshake_slot(0, Duration::ZERO));
        // Past TLS, but no header message: the handshake stays open.
        let handshaking = raw_connection(&server, &ca, "edge-1").await;
        a_connection_over_the_handshake_limit_is_refused_at_once(server, &ca, handshaking).await;
    }

    #[tokio::test]
    async fn a_connection_over_the_handshake_limit_waits_newest_first() {
        let ca = TestCa::new("test CA");
        let server = start_server(&ca, one_handshake_slot(1, Duration::from_secs(60)));
        // Past TLS, but no header message: the handshake stays open.
        let handshaking = raw_connection(&server, &ca, "edge-1").await;
        a_connection_over_the_handshake_limit_waits_in_line_newest_first(server, &ca, handshaking)
            .await;
    }

    #[tokio::test]
    async fn a_connection_that_waits_too_long_for_a_handshake_is_refused() {
        let ca = TestCa::new("test CA");
        let server = start_server(&ca, one_handshake_slot(1, Duration::from_millis(200)));
        // Past TLS, but no header message: the handshake stays open.
        let handshaking = raw_connection(&server, &ca, "edge-1").await;
        a_connection_that_waits_too_long_is_refused(server, &ca, handshaking).await;
    }

    #[tokio::test]
    async fn clients_without_a_certificate_of_the_ca_are_refused_at_tls() {
        let ca = TestCa::new("test CA");
        let other = TestCa::new("other CA");
        let server = start_server(&ca, LinkLimits::default());

        let err = server
            .dial("edge-1", ca.client_config(None))
            .await
            .expect_err("refused");
        assert!(matches!(err, ConnectError::Tls { .. }), "{err:?}");
        server.wait_refused(RefuseReason::Unauthorized, 1).await;

        let foreign = other.client("system:node:edge-1");
        let err = server
            .dial("edge-1", ca.client_config(Some(&foreign)))
            .await
            .expect_err("refused");
        assert!(matches!(err, ConnectError::Tls { .. }), "{err:?}");
        server.wait_refused(RefuseReason::Unauthorized, 2).await;
        assert_eq!(server.metrics.accepted(Transport::Quic), 0);
        server.stop().await;
    }

    /// A raw connection past the handshake, for frames the link would not
    /// send.
    async fn raw_client(
        server: &Server,
        ca: &TestCa,
        node: &str,
    ) -> (quinn::Endpoint, Established) {
        let identity = ca.client(&format!("system:node:{node}"));
        let target = server.target(node);
        let address = resolve(&target).await.expect("address");
        let endpoint = client_endpoint(&target, local_address(&target, address)).expect("endpoint");
        let (established, _) = client_handshake(
            &endpoint,
            &target,
            &ca.client_config(Some(&identity)),
            &unlimited(),
        )
        .await
        .expect("handshake");
        (endpoint, established)
    }

    #[tokio::test]
    async fn malformed_and_oversized_frames_are_refused_and_the_link_stays_up() {
        let ca = TestCa::new("test CA");
        let limits = LinkLimits {
            max_frame_bytes: 1024,
            ..LinkLimits::default()
        };
        let mut server = start_server(&ca, limits);
        let (_endpoint, mut raw) = raw_client(&server, &ca, "edge-1").await;
        let mut cloud = server.next_link().await;

        write_frame(&mut raw.send, b"not JSON\n")
            .await
            .expect("sent");
        write_frame(&mut raw.send, &vec![b'x'; 300_000])
            .await
            .expect("sent");
        let good = app_message(1);
        write_frame(&mut raw.send, &good.encode())
            .await
            .expect("sent");
        assert_eq!(
            within("the good message", cloud.receiver.recv()).await,
            Some(good)
        );
        assert_eq!(server.refused(RefuseReason::Malformed), 1);
        assert_eq!(server.refused(RefuseReason::TooLarge), 1);
        server.stop().await;
    }

    #[tokio::test]
    async fn a_bad_header_message_is_refused_with_400() {
        let ca = TestCa::new("test CA");
        let server = start_server(&ca, LinkLimits::default());
        let (conn, _endpoint) = raw_connection(&server, &ca, "edge-1").await;
        let (mut send, mut recv) = conn.open_bi().await.expect("stream");
        let not_header = app_message(1);
        write_frame(&mut send, &not_header.encode())
            .await
            .expect("sent");
        match read_frame(&mut recv, 8192).await {
            Ok(Some(Frame::Data(frame))) => {
                let reply = Message::decode(&frame, 8192).expect("reply");
                assert_eq!(reply.content, Value::String("nack".to_owned()));
            }
            // The close may overtake the reply.
            Err(ReadExactError::ReadError(ReadError::ConnectionLost(_))) => {}
            other => panic!("unexpected {other:?}"),
        }
        match within("the close", conn.closed()).await {
            ConnectionError::ApplicationClosed(close) => {
                assert_eq!(close.error_code, VarInt::from_u32(400));
            }
            other => panic!("unexpected {other:?}"),
        }
        server.wait_refused(RefuseReason::Handshake, 1).await;
        server.stop().await;
    }

    #[tokio::test]
    async fn messages_over_the_rate_limit_are_dropped_and_counted() {
        let ca = TestCa::new("test CA");
        let limits = LinkLimits {
            rate: Some(RateLimit {
                per_second: 1,
                burst: 2,
            }),
            ..LinkLimits::default()
        };
        let server = start_server(&ca, limits);
        let edge = connect_as(&server, &ca, "edge-1").await;
        for n in 0..10 {
            edge.sender.send(app_message(n)).await.expect("sent");
        }
        eventually("every frame to be judged", || {
            server.metrics.received(Transport::Quic) + server.refused(RefuseReason::RateLimited)
                == 10
        })
        .await;
        assert!(server.refused(RefuseReason::RateLimited) >= 7);
        assert!(!edge.sender.is_closed(), "the link stays up");
        server.stop().await;
    }

    #[tokio::test]
    async fn ping_is_answered_with_ack() {
        let ca = TestCa::new("test CA");
        let mut server = start_server(&ca, LinkLimits::default());
        let mut edge = connect_as(&server, &ca, "edge-1").await;
        let mut cloud = server.next_link().await;
        let ping = Message::new("", "", operation::PING, "", Value::Null);
        edge.sender.send(ping.clone()).await.expect("sent");
        let reply = within("the reply", edge.receiver.recv())
            .await
            .expect("reply");
        assert_eq!(reply.router.operation, operation::RESPONSE);
        assert_eq!(reply.parent_id(), ping.id());
        assert_eq!(reply.content, Value::String("ack".to_owned()));
        let keepalive = Message::keepalive();
        edge.sender.send(keepalive.clone()).await.expect("sent");
        assert_eq!(
            within("the keepalive", cloud.receiver.recv()).await,
            Some(keepalive)
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn closing_either_side_ends_the_other_receiver() {
        let ca = TestCa::new("test CA");
        let mut server = start_server(&ca, LinkLimits::default());

        let edge = connect_as(&server, &ca, "edge-1").await;
        let mut cloud = server.next_link().await;
        edge.sender.close();
        assert_eq!(
            within("the cloud side to end", cloud.receiver.recv()).await,
            None
        );

        let mut edge = connect_as(&server, &ca, "edge-1").await;
        let cloud = server.next_link().await;
        cloud.sender.close();
        assert_eq!(
            within("the edge side to end", edge.receiver.recv()).await,
            None
        );
        eventually("the server links to be counted closed", || {
            server.metrics.open(Transport::Quic) == 0
        })
        .await;
        server.stop().await;
    }

    /// A UDP forwarder from a port of its own to an upstream that can be
    /// switched: what a client sees when the server on one port is
    /// replaced by another process.
    async fn switchable_forwarder(
        upstream: SocketAddr,
    ) -> (SocketAddr, Arc<std::sync::Mutex<SocketAddr>>) {
        let front = Arc::new(
            tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind"),
        );
        let back = Arc::new(
            tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind"),
        );
        let address = front.local_addr().expect("address");
        let target = Arc::new(std::sync::Mutex::new(upstream));
        let client = Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
        {
            let (front, back, target, client) =
                (front.clone(), back.clone(), target.clone(), client.clone());
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 65_536];
                while let Ok((size, from)) = front.recv_from(&mut buffer).await {
                    *client.lock().expect("client") = Some(from);
                    let to = *target.lock().expect("target");
                    let _ = back.send_to(&buffer[..size], to).await;
                }
            });
        }
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 65_536];
            while let Ok(size) = back.recv(&mut buffer).await {
                let to = *client.lock().expect("client");
                if let Some(to) = to {
                    let _ = front.send_to(&buffer[..size], to).await;
                }
            }
        });
        (address, target)
    }

    #[tokio::test]
    async fn a_restarted_server_resets_old_connections_at_once() {
        let ca = TestCa::new("test CA");
        let tls = ca.server_config();
        let any_port = "127.0.0.1:0".parse().expect("address");
        let first = server_endpoint(any_port, &tls, b"stable secret").expect("endpoint");
        let (accepted_tx, mut accepted) = mpsc::channel(4);
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(
            first.clone(),
            unlimited(),
            LinkMetrics::default(),
            accepted_tx,
            shutdown.clone(),
        ));
        let (address, upstream) = switchable_forwarder(first.local_addr().expect("address")).await;
        let identity = ca.client("system:node:edge-1");
        let target = ConnectTarget::new(address.to_string(), "edge-1", "p");
        let mut edge = connect_quic(
            &target,
            ca.client_config(Some(&identity)),
            &unlimited(),
            LinkMetrics::default(),
        )
        .await
        .expect("connected");
        let _cloud = within("the accepted link", accepted.recv()).await;

        // The server "restarts": from now on a new endpoint with the same
        // secret gets the edge's packets, and the old one says nothing.
        let second = server_endpoint(any_port, &tls, b"stable secret").expect("endpoint");
        *upstream.lock().expect("upstream") = second.local_addr().expect("address");

        // The edge's next packet is answered with a stateless reset it can
        // verify: the link ends now, not after the 30 s idle timeout.
        edge.sender.send(app_message(1)).await.expect("queued");
        assert_eq!(
            within("the link to end on the reset", edge.receiver.recv()).await,
            None
        );
        shutdown.cancel();
    }

    #[test]
    fn header_values_accept_go_and_string_forms() {
        let go = json!({"Node_id": ["edge-1"], "Project_id": ["p"]});
        assert_eq!(
            header_values(&go),
            (Some("edge-1".to_owned()), Some("p".to_owned()))
        );
        let text = Value::String(r#"{"node_id":["edge-2"]}"#.to_owned());
        assert_eq!(header_values(&text), (Some("edge-2".to_owned()), None));
        assert_eq!(header_values(&Value::Null), (None, None));
    }
}
