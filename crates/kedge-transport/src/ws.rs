//! The WebSocket transport (protocol.md §3.2, §3.3): WebSocket over TLS
//! with client certificates, KubeEdge's main cloud-edge channel.
//!
//! * [`serve`] accepts edge connections on a TCP listener. The TLS
//!   configuration it is given must require client certificates; the
//!   node's name is the certificate's common name `system:node:<name>`,
//!   and the handshake's `node_id` header must name the same node
//!   (403 otherwise, 400 when it is missing). The request path is ignored,
//!   as CloudHub ignores it; `project_id` is read if present. Header names
//!   are matched case-insensitively (Go sends `Node_id`, `Project_id`,
//!   `Connectionuse`); `ConnectionUse` is not required.
//! * [`connect`] dials `wss://<host:port>/<project_id>/<node_id>/events`
//!   with the headers `node_id`, `project_id` and `ConnectionUse: msg`, as
//!   KubeEdge's EdgeHub does, verifying the server as the given rustls
//!   configuration says.
//!
//! Either way the result is a [`Link`]. On the wire each message is one
//! frame of JSON (§1.1): written as a text frame with Go's trailing
//! newline, read from text or binary frames. Each connection is driven by
//! its own task, with a reader and a writer that run independently: the
//! reader waits while the link's incoming buffer is full (so a slow
//! consumer slows its own peer down and nobody else), the writer keeps
//! writing meanwhile. The viaduct control operations `ping`, `pong` and
//! `config` are answered with a `response` whose content is `"ack"` and
//! are not delivered. WebSocket ping and pong frames are ignored (the
//! library answers pings itself).
//!
//! Limits ([`LinkLimits`]): the TLS and WebSocket handshakes together must
//! finish within the handshake timeout, and the upgrade request (or
//! response) must fit in `max_handshake_bytes`. Frames larger than
//! `max_frame_bytes` are refused by the WebSocket layer from their header,
//! before their payload is read; since the rest of such a frame cannot be
//! skipped in the WebSocket protocol, **the connection is then closed**
//! (counted as `too_large`). A malformed frame is counted and dropped and
//! the link stays up, as does a message over the rate limit.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use kedge_transport::limits::LinkLimits;
//! use kedge_transport::metrics::LinkMetrics;
//! use kedge_transport::ws::{self, ConnectTarget};
//!
//! # async fn example(
//! #     server_tls: Arc<rustls::ServerConfig>,
//! #     client_tls: Arc<rustls::ClientConfig>,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! let metrics = LinkMetrics::default();
//! // The cloud: serve edge connections and take each link as it comes.
//! let listener = tokio::net::TcpListener::bind(("0.0.0.0", ws::DEFAULT_PORT)).await?;
//! let (accepted_tx, mut accepted) = tokio::sync::mpsc::channel(16);
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! tokio::spawn(ws::serve(
//!     listener,
//!     server_tls,
//!     LinkLimits::default(),
//!     metrics.clone(),
//!     accepted_tx,
//!     shutdown.child_token(),
//! ));
//!
//! // An edge node: connect and send its keepalive.
//! let target = ConnectTarget::new("cloud.example:10000", "edge-1", "e632aba927ea4ac2b575ec1603d56f10");
//! let edge = ws::connect(&target, client_tls, &LinkLimits::client(), metrics).await?;
//! edge.sender.send(kedge_message::Message::keepalive()).await?;
//!
//! let mut cloud = accepted.recv().await.expect("the server runs");
//! assert_eq!(cloud.peer.node_id, "edge-1");
//! let keepalive = cloud.receiver.recv().await;
//! # Ok(())
//! # }
//! ```

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

pub use crate::client::{BoxError, ConnectError, ConnectTarget};
pub use crate::conn::NODE_CN_PREFIX;
use crate::conn::{
    Admission, CLOSE_GRACE, Connections, FrameSink, FrameSource, Read, Refusal, check_identity,
    node_from_certificates, spawn_client,
};
use crate::limits::LinkLimits;
use crate::link::{Link, Peer, parse_restart_reason, restart_reason};
use crate::metrics::{LinkMetrics, RefuseReason, Transport};

/// KubeEdge's default WebSocket port.
pub const DEFAULT_PORT: u16 = 10000;

/// The rustls error inside an I/O error, if any.
pub(crate) fn rustls_error(error: &io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

/// The refusal reason for a failed server-side TLS handshake.
fn tls_refusal(error: &io::Error) -> RefuseReason {
    match rustls_error(error) {
        Some(
            rustls::Error::NoCertificatesPresented
            | rustls::Error::InvalidCertificate(_)
            | rustls::Error::InvalidCertRevocationList(_),
        ) => RefuseReason::Unauthorized,
        _ => RefuseReason::Handshake,
    }
}

// === Handshake size limit ===

/// The handshake was larger than `max_handshake_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("the handshake exceeds {limit} bytes")]
pub(crate) struct HandshakeTooLarge {
    limit: usize,
}

/// A stream that fails reads past a byte budget until the limit is
/// lifted: it bounds the HTTP upgrade exchange, which the WebSocket
/// library would otherwise buffer up to 64 KiB.
#[derive(Debug)]
pub(crate) struct HandshakeLimit<S> {
    inner: S,
    limit: usize,
    remaining: Option<usize>,
}

impl<S> HandshakeLimit<S> {
    pub(crate) fn new(inner: S, limit: usize) -> Self {
        Self {
            inner,
            limit,
            remaining: Some(limit),
        }
    }

    /// Ends the limit: the handshake is over.
    pub(crate) fn lift(&mut self) {
        self.remaining = None;
    }
}

/// Whether a WebSocket error is the handshake limit.
fn is_handshake_too_large(error: &tungstenite::Error) -> bool {
    matches!(error, tungstenite::Error::Io(e)
        if e.get_ref().is_some_and(|inner| inner.is::<HandshakeTooLarge>()))
        || matches!(error, tungstenite::Error::AttackAttempt)
}

impl<S: AsyncRead + Unpin> AsyncRead for HandshakeLimit<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(remaining) = this.remaining else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        if remaining == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                HandshakeTooLarge { limit: this.limit },
            )));
        }
        if buf.remaining() <= remaining {
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            this.remaining = Some(remaining - (buf.filled().len() - before));
            return Poll::Ready(Ok(()));
        }
        // Read no more than the budget: through a small buffer, as the
        // caller's may be larger.
        let mut scratch = vec![0; remaining];
        let mut limited = ReadBuf::new(&mut scratch);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut limited))?;
        let read = limited.filled();
        buf.put_slice(read);
        this.remaining = Some(remaining - read.len());
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HandshakeLimit<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The WebSocket settings for `limits`: frames and messages over the frame
/// limit are refused from their header.
fn ws_config(limits: &LinkLimits) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_frame_size(Some(limits.max_frame_bytes))
        .max_message_size(Some(limits.max_frame_bytes))
        .read_buffer_size(16 * 1024)
        .write_buffer_size(16 * 1024)
}

// === Server ===

type ServerStream = HandshakeLimit<tokio_rustls::server::TlsStream<TcpStream>>;

/// Serves edge connections on `listener` until `shutdown` is cancelled or
/// `accepted` is closed, then closes every connection it opened and
/// returns once they are gone.
///
/// `tls` must require and verify client certificates (the caller builds
/// it from the cloud's CA). Each accepted connection is handed to
/// `accepted` as a [`Link`] whose peer is the node, its project and its
/// address; refused ones are counted in `metrics`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    limits: LinkLimits,
    metrics: LinkMetrics,
    accepted: mpsc::Sender<Link>,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    let connections = Connections::new(Transport::Ws, limits, metrics, accepted, &shutdown);
    loop {
        let (tcp, address) = tokio::select! {
            () = connections.stopping() => break,
            conn = listener.accept() => match conn {
                Ok(conn) => conn,
                Err(error) => {
                    // Out of descriptors or a connection reset before it
                    // was accepted: wait a little rather than spin.
                    warn!(%error, "accepting a WebSocket connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        connections.spawn(move |admission| {
            ServerConnection {
                acceptor,
                admission,
            }
            .run(tcp, address)
            .instrument(info_span!("ws_link", %address))
        });
    }
    connections.close().await;
}

/// What one server connection task needs.
struct ServerConnection {
    acceptor: TlsAcceptor,
    admission: Admission,
}

impl ServerConnection {
    async fn run(self, tcp: TcpStream, address: SocketAddr) {
        let handshake = self.handshake(tcp, address);
        let Some((ws, ends)) = self.admission.admit(handshake, drop).await else {
            return;
        };
        let (sink, stream) = ws.split();
        self.admission
            .drive(WsSource(stream), WsSink(sink), ends)
            .await;
    }

    async fn handshake(
        &self,
        tcp: TcpStream,
        address: SocketAddr,
    ) -> Result<(WebSocketStream<ServerStream>, Peer), Refusal> {
        let tls = self
            .acceptor
            .accept(tcp)
            .await
            .map_err(|e| Refusal::new(tls_refusal(&e), format!("TLS handshake failed: {e}")))?;
        let cert_node = node_from_certificates(tls.get_ref().1.peer_certificates());
        let stream = HandshakeLimit::new(tls, self.admission.limits.max_handshake_bytes);

        let mut decision = None;
        #[expect(
            clippy::result_large_err,
            reason = "the error response type is the WebSocket library's"
        )]
        let callback = |request: &Request, response: Response| {
            let header = |name: &str| {
                request
                    .headers()
                    .get(name)
                    .and_then(|value| value.to_str().ok())
            };
            match check_identity(&cert_node, header("node_id"), header("project_id")) {
                Ok(identity) => {
                    decision = Some(Ok(identity));
                    Ok(response)
                }
                Err((status, refusal)) => {
                    let mut reply = ErrorResponse::new(Some(refusal.detail.clone()));
                    *reply.status_mut() =
                        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
                    decision = Some(Err(refusal));
                    Err(reply)
                }
            }
        };
        let result = tokio_tungstenite::accept_hdr_async_with_config(
            stream,
            callback,
            Some(ws_config(&self.admission.limits)),
        )
        .await;
        match (result, decision) {
            (Ok(mut ws), Some(Ok((node_id, project_id)))) => {
                ws.get_mut().lift();
                let peer = Peer {
                    node_id,
                    project_id,
                    address: Some(address),
                };
                Ok((ws, peer))
            }
            (_, Some(Err(refusal))) => Err(refusal),
            (Err(error), _) if is_handshake_too_large(&error) => Err(Refusal::new(
                RefuseReason::Handshake,
                format!("upgrade request too large: {error}"),
            )),
            (Err(error), _) => Err(Refusal::new(
                RefuseReason::Handshake,
                format!("WebSocket handshake failed: {error}"),
            )),
            (Ok(_), None) => Err(Refusal::new(
                RefuseReason::Handshake,
                "handshake completed without a decision",
            )),
        }
    }
}

// === Client ===

type ClientStream = HandshakeLimit<tokio_rustls::client::TlsStream<TcpStream>>;

/// Connects to a CloudHub WebSocket server as `target.node_id`.
///
/// `tls` verifies the server (against the cloud's CA, the server
/// certificate's SANs matching `target.server_name`) and carries the
/// node's client certificate. The whole setup (TCP, TLS and WebSocket)
/// must finish within `limits.handshake_timeout`; clients normally pass
/// [`LinkLimits::client`] (no rate limit on what the cloud sends). The
/// returned link's peer is the node and project it speaks for and the
/// server's address.
pub async fn connect(
    target: &ConnectTarget,
    tls: Arc<rustls::ClientConfig>,
    limits: &LinkLimits,
    metrics: LinkMetrics,
) -> Result<Link, ConnectError> {
    let (ws, address) = target
        .within_timeout(
            limits.handshake_timeout,
            client_handshake(target, tls, limits),
        )
        .await?;
    let (sink, stream) = ws.split();
    Ok(spawn_client(
        target,
        address,
        (WsSource(stream), WsSink(sink)),
        Transport::Ws,
        limits,
        metrics,
        info_span!("ws_client", server = %target.server, node = %target.node_id),
    ))
}

/// Dials the server and completes the TLS handshake.
pub(crate) async fn dial_tls(
    target: &ConnectTarget,
    tls: Arc<rustls::ClientConfig>,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, SocketAddr), ConnectError> {
    let server_name = target.tls_server_name()?;
    let mut last_error = None;
    for address in target.resolve().await? {
        match dial_tcp(address, target.local_addr).await {
            Ok(tcp) => {
                let tls = TlsConnector::from(tls)
                    .connect(server_name, tcp)
                    .await
                    .map_err(|source| ConnectError::Tls {
                        server: target.server.clone(),
                        source: source.into(),
                    })?;
                return Ok((tls, address));
            }
            Err(error) => last_error = Some(error),
        }
    }
    Err(ConnectError::Connect {
        server: target.server.clone(),
        source: last_error.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")),
    })
}

async fn dial_tcp(address: SocketAddr, local: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(local) = local {
        socket.bind(SocketAddr::new(local, 0))?;
    }
    let tcp = socket.connect(address).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

async fn client_handshake(
    target: &ConnectTarget,
    tls: Arc<rustls::ClientConfig>,
    limits: &LinkLimits,
) -> Result<(WebSocketStream<ClientStream>, SocketAddr), ConnectError> {
    let mut request = target
        .url()?
        .into_client_request()
        .map_err(|e| target.invalid(format!("bad URL: {e}")))?;
    for (name, value) in [
        ("node_id", target.node_id.as_str()),
        ("project_id", target.project_id.as_str()),
        ("connectionuse", "msg"),
    ] {
        let value = HeaderValue::from_str(value)
            .map_err(|e| target.invalid(format!("bad {name} header: {e}")))?;
        request
            .headers_mut()
            .insert(HeaderName::from_static(name), value);
    }

    let (tls, address) = dial_tls(target, tls).await?;
    let stream = HandshakeLimit::new(tls, limits.max_handshake_bytes);
    match tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config(limits)))
        .await
    {
        Ok((mut ws, _response)) => {
            ws.get_mut().lift();
            Ok((ws, address))
        }
        Err(tungstenite::Error::Http(response)) => Err(ConnectError::Refused {
            server: target.server.clone(),
            status: response.status().as_u16(),
        }),
        Err(tungstenite::Error::Io(error)) if rustls_error(&error).is_some() => {
            Err(ConnectError::Tls {
                server: target.server.clone(),
                source: error.into(),
            })
        }
        Err(error) => Err(ConnectError::Handshake {
            server: target.server.clone(),
            source: error.into(),
        }),
    }
}

// === Frames ===

/// The reading half of a WebSocket link: each text or binary frame is one
/// message.
struct WsSource<S>(SplitStream<WebSocketStream<HandshakeLimit<S>>>);

impl<S> FrameSource for WsSource<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async fn read(&mut self) -> Read {
        match self.0.next().await {
            None => {
                debug!("the peer closed the connection");
                Read::End(None)
            }
            Some(Ok(WsMessage::Text(text))) => Read::Frame(text.as_bytes().to_vec()),
            Some(Ok(WsMessage::Binary(bytes))) => Read::Frame(bytes.to_vec()),
            Some(Ok(WsMessage::Close(frame))) => {
                debug!(?frame, "the peer closed the WebSocket");
                match frame.and_then(|frame| parse_restart_reason(&frame.reason)) {
                    Some(window) => Read::Restart(window),
                    None => Read::End(None),
                }
            }
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {
                Read::Nothing
            }
            Some(Err(error)) => match &error {
                tungstenite::Error::Capacity(_) => {
                    debug!(%error, "closing on an oversized frame");
                    Read::End(Some(RefuseReason::TooLarge))
                }
                tungstenite::Error::Utf8(_) | tungstenite::Error::Protocol(_) => {
                    debug!(%error, "closing on a protocol violation");
                    Read::End(Some(RefuseReason::Malformed))
                }
                _ => {
                    debug!(%error, "the connection failed");
                    Read::End(None)
                }
            },
        }
    }
}

/// The writing half of a WebSocket link: each message is one text frame.
struct WsSink<S>(SplitSink<WebSocketStream<HandshakeLimit<S>>, WsMessage>);

impl<S> FrameSink for WsSink<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    type Error = tungstenite::Error;

    async fn write(&mut self, frame: Vec<u8>) -> Result<bool, Self::Error> {
        // `encode` writes JSON, which is UTF-8.
        let Ok(text) = String::from_utf8(frame) else {
            return Ok(false);
        };
        self.0.send(WsMessage::text(text)).await?;
        Ok(true)
    }

    async fn close(mut self, restart: Option<Duration>) {
        let closing = async {
            if let Some(window) = restart {
                // 1012, Service Restart (RFC 6455's registry).
                let frame = CloseFrame {
                    code: CloseCode::Restart,
                    reason: restart_reason(window).into(),
                };
                self.0.send(WsMessage::Close(Some(frame))).await?;
            }
            self.0.close().await
        };
        if timeout(CLOSE_GRACE, closing).await.is_err() {
            debug!("the peer did not take the close frame in time");
        }
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
    use kedge_message::{Message, operation};
    use serde_json::Value;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role;

    async fn start_server(ca: &TestCa, limits: LinkLimits) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let tls = ca.server_config();
        Server::spawn(Transport::Ws, address, |tx, metrics, shutdown| {
            serve(listener, tls, limits, metrics, tx, shutdown)
        })
    }

    /// A raw WebSocket to the server, for frames the link would not send.
    async fn raw_client(
        server: &Server,
        ca: &TestCa,
        node: &str,
    ) -> WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>> {
        let identity = ca.client(&format!("system:node:{node}"));
        let target = server.target(node);
        let (tls, _) = dial_tls(&target, ca.client_config(Some(&identity)))
            .await
            .expect("TLS");
        let mut request = target
            .url()
            .expect("url")
            .into_client_request()
            .expect("request");
        request
            .headers_mut()
            .insert("node_id", HeaderValue::from_str(node).expect("value"));
        let (ws, _) = tokio_tungstenite::client_async(request, tls)
            .await
            .expect("handshake");
        ws
    }

    fn keepalive_frame() -> &'static str {
        concat!(
            r#"{"header":{"msg_id":"7c9e6679-7425-40de-944b-e07fc1f90ae7","timestamp":1700000000000},"#,
            r#""route":{"source":"websocket","group":"resource","operation":"keepalive","resource":"node"},"#,
            r#""content":"ping"}"#,
            "\n"
        )
    }

    // --- Tests ---

    #[tokio::test]
    async fn messages_flow_both_ways() {
        let ca = TestCa::new("test CA");
        let mut server = start_server(&ca, LinkLimits::default()).await;
        let identity = ca.client("system:node:edge-1");
        let metrics = LinkMetrics::default();
        let mut edge = connect(
            &server.target("edge-1"),
            ca.client_config(Some(&identity)),
            &unlimited(),
            metrics.clone(),
        )
        .await
        .expect("connected");
        assert_eq!(edge.peer.node_id, "edge-1");
        assert_eq!(edge.peer.address, Some(server.address));

        let mut cloud = server.next_link().await;
        assert_eq!(cloud.peer.node_id, "edge-1");
        assert_eq!(cloud.peer.project_id, "project-1");
        assert!(cloud.peer.address.is_some());

        let keepalive = Message::keepalive();
        edge.sender.send(keepalive.clone()).await.expect("sent");
        let got = within("the keepalive", cloud.receiver.recv())
            .await
            .expect("message");
        assert_eq!(got, keepalive);

        let mut tricky = app_message(1);
        tricky.content = serde_json::json!({"html": "<a>&</a>", "n": 1.5, "list": [1, null]});
        cloud.sender.send(tricky.clone()).await.expect("sent");
        cloud.sender.send(got.ack()).await.expect("sent");
        assert_eq!(
            within("a message", edge.receiver.recv()).await,
            Some(tricky)
        );
        let ack = within("the ack", edge.receiver.recv()).await.expect("ack");
        assert_eq!(ack.parent_id(), keepalive.id());

        assert_eq!(server.metrics.accepted(Transport::Ws), 1);
        // Counted right after the peer could see them: wait for them.
        eventually("the messages to be counted", || {
            server.metrics.received(Transport::Ws) == 1
                && server.metrics.sent(Transport::Ws) == 2
                && metrics.sent(Transport::Ws) == 1
                && metrics.received(Transport::Ws) == 2
        })
        .await;
        assert_eq!(server.metrics.open(Transport::Ws), 1);
        assert_eq!(metrics.open(Transport::Ws), 1);

        edge.sender.close();
        eventually("the links to be counted closed", || {
            server.metrics.open(Transport::Ws) == 0 && metrics.open(Transport::Ws) == 0
        })
        .await;
        server.stop().await;
    }

    #[tokio::test]
    async fn a_link_closed_for_a_restart_carries_its_window_to_the_edge() {
        let ca = TestCa::new("test CA");
        let server = start_server(&ca, LinkLimits::default()).await;
        a_link_closed_for_a_restart_gives_the_edge_its_window(server, &ca).await;
    }

    #[tokio::test]
    async fn a_node_id_that_differs_from_the_certificate_is_refused_with_403() {
        let ca = TestCa::new("test CA");
        let server = start_server(&ca, LinkLimits::default()).await;
        a_node_id_that_differs_from_the_certificate_is_refused(server, &ca).await;
    }

    #[tokio::test]
    async fn a_certificate_that_is_not_a_node_certificate_is_refused_with_403() {
        let ca = TestCa::new("test CA");
        let server = start_server(&ca, LinkLimits::default()).await;
        let identity = ca.client("kubeedge.io");
        let err = server
            .dial("edge-1", ca.client_config(Some(&identity)))
            .await
            .expect_err("refused");
        assert!(
            matches!(err, ConnectError::Refused { status: 403, .. }),
            "{err:?}"
        );
        server.wait_refused(RefuseReason::Unauthorized, 1).await;
        server.stop().await;
    }

    #[tokio::test]
    async fn clients_without_a_certificate_of_the_ca_are_refused_at_tls() {
        let ca = TestCa::new("test CA");
        let other = TestCa::new("other CA");
        let server = start_server(&ca, LinkLimits::default()).await;

        // No certificate at all.
        let err = server
            .dial("edge-1", ca.client_config(None))
            .await
            .expect_err("refused");
        // The server's alert usually arrives as a TLS error; when the
        // server's close overtakes it, the handshake read fails instead.
        assert!(
            matches!(
                err,
                ConnectError::Tls { .. } | ConnectError::Handshake { .. }
            ),
            "{err:?}"
        );
        server.wait_refused(RefuseReason::Unauthorized, 1).await;

        // A node certificate from another CA (trusting the right server).
        let foreign = other.client("system:node:edge-1");
        let err = server
            .dial("edge-1", ca.client_config(Some(&foreign)))
            .await
            .expect_err("refused");
        assert!(
            matches!(
                err,
                ConnectError::Tls { .. } | ConnectError::Handshake { .. }
            ),
            "{err:?}"
        );
        server.wait_refused(RefuseReason::Unauthorized, 2).await;

        // A server the client does not trust.
        let identity = other.client("system:node:edge-1");
        let err = server
            .dial("edge-1", other.client_config(Some(&identity)))
            .await
            .expect_err("refused");
        assert!(matches!(err, ConnectError::Tls { .. }), "{err:?}");
        assert_eq!(server.metrics.accepted(Transport::Ws), 0);
        server.stop().await;
    }

    /// Writes a handshake by hand, with Go's header spelling, and returns
    /// the status line and the stream.
    async fn raw_handshake(
        server: &Server,
        ca: &TestCa,
        node: &str,
        headers: &str,
    ) -> (String, tokio_rustls::client::TlsStream<TcpStream>) {
        let identity = ca.client(&format!("system:node:{node}"));
        let (mut tls, _) = dial_tls(&server.target(node), ca.client_config(Some(&identity)))
            .await
            .expect("TLS");
        let request = format!(
            "GET /e632aba927ea4ac2b575ec1603d56f10/{node}/events HTTP/1.1\r\n\
             Host: {}\r\n\
             Upgrade: websocket\r\n\
             Connection: Upgrade\r\n\
             Sec-Websocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-Websocket-Version: 13\r\n\
             {headers}\r\n",
            server.address
        );
        tls.write_all(request.as_bytes()).await.expect("request");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0];
            // A refused oversized request may be cut off without a reply.
            if within("the response", tls.read(&mut byte))
                .await
                .unwrap_or(0)
                == 0
            {
                break;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).expect("text");
        let status = head.lines().next().unwrap_or_default().to_owned();
        (status, tls)
    }

    #[tokio::test]
    async fn a_go_shaped_handshake_and_frame_are_understood() {
        let ca = TestCa::new("test CA");
        let mut server = start_server(&ca, LinkLimits::default()).await;
        let (status, tls) = raw_handshake(
            &server,
            &ca,
            "edge-1",
            "Node_id: edge-1\r\nProject_id: e632aba927ea4ac2b575ec1603d56f10\r\nConnectionuse: msg\r\n",
        )
        .await;
        assert!(status.contains(" 101 "), "{status}");
        let mut cloud = server.next_link().await;
        assert_eq!(cloud.peer.node_id, "edge-1");
        assert_eq!(cloud.peer.project_id, "e632aba927ea4ac2b575ec1603d56f10");

        let mut ws = WebSocketStream::from_raw_socket(tls, Role::Client, None).await;
        ws.send(WsMessage::text(keepalive_frame()))
            .await
            .expect("sent");
        let got = within("the keepalive", cloud.receiver.recv())
            .await
            .expect("message");
        assert_eq!(got.id(), "7c9e6679-7425-40de-944b-e07fc1f90ae7");
        assert_eq!(got.header.timestamp, 1_700_000_000_000);
        assert_eq!(got.router.operation, operation::KEEPALIVE);
        assert_eq!(got.router.source, "websocket");
        assert_eq!(got.content, Value::String("ping".to_owned()));

        // Binary frames are read the same way.
        let msg = app_message(2);
        ws.send(WsMessage::binary(msg.encode()))
            .await
            .expect("sent");
        assert_eq!(within("a message", cloud.receiver.recv()).await, Some(msg));

        // What the cloud writes is a text frame in Go's form.
        let reply = got.ack();
        cloud.sender.send(reply.clone()).await.expect("sent");
        match within("a frame", ws.next()).await {
            Some(Ok(WsMessage::Text(text))) => {
                assert_eq!(text.as_bytes(), reply.encode().as_slice());
                assert!(text.ends_with('\n'));
            }
            other => panic!("expected a text frame, got {other:?}"),
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn a_handshake_without_node_id_is_refused_with_400() {
        let ca = TestCa::new("test CA");
        let server = start_server(&ca, LinkLimits::default()).await;
        let (status, _tls) = raw_handshake(
            &server,
            &ca,
            "edge-1",
            "Project_id: p\r\nConnectionuse: msg\r\n",
        )
        .await;
        assert!(status.contains(" 400 "), "{status}");
        server.wait_refused(RefuseReason::Handshake, 1).await;
        server.stop().await;
    }

    #[tokio::test]
    async fn an_oversized_handshake_is_refused() {
        let ca = TestCa::new("test CA");
        let server = start_server(&ca, LinkLimits::default()).await;
        let padding = format!("Node_id: edge-1\r\nX-Padding: {}\r\n", "a".repeat(9000));
        let (status, _tls) = raw_handshake(&server, &ca, "edge-1", &padding).await;
        assert!(!status.contains(" 101 "), "{status}");
        server.wait_refused(RefuseReason::Handshake, 1).await;
        assert_eq!(server.metrics.accepted(Transport::Ws), 0);
        server.stop().await;
    }

    /// A connection of edge-1 past TLS that sends no upgrade request: its
    /// handshake stays open and holds a handshake slot.
    async fn held_handshake(
        server: &Server,
        ca: &TestCa,
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let identity = ca.client("system:node:edge-1");
        let (tls, _) = dial_tls(&server.target("edge-1"), ca.client_config(Some(&identity)))
            .await
            .expect("TLS");
        tls
    }

    #[tokio::test]
    async fn a_connection_over_the_handshake_limit_is_refused() {
        let ca = TestCa::new("test CA");
        let server = start_server(&ca, one_handshake_slot(0, Duration::ZERO)).await;
        let handshaking = held_handshake(&server, &ca).await;
        a_connection_over_the_handshake_limit_is_refused_at_once(server, &ca, handshaking).await;
    }

    #[tokio::test]
    async fn a_connection_over_the_handshake_limit_waits_newest_first() {
        let ca = TestCa::new("test CA");
        let server = start_server(&ca, one_handshake_slot(1, Duration::from_secs(60))).await;
        let handshaking = held_handshake(&server, &ca).await;
        a_connection_over_the_handshake_limit_waits_in_line_newest_first(server, &ca, handshaking)
            .await;
    }

    #[tokio::test]
    async fn a_connection_that_waits_too_long_for_a_handshake_is_refused() {
        let ca = TestCa::new("test CA");
        let server = start_server(&ca, one_handshake_slot(1, Duration::from_millis(200))).await;
        let handshaking = held_handshake(&server, &ca).await;
        a_connection_that_waits_too_long_is_refused(server, &ca, handshaking).await;
    }

    #[tokio::test]
    async fn a_silent_client_times_out_in_the_handshake() {
        let ca = TestCa::new("test CA");
        let limits = LinkLimits {
            handshake_timeout: Duration::from_millis(200),
            ..LinkLimits::default()
        };
        let server = start_server(&ca, limits).await;
        let _silent = TcpStream::connect(server.address).await.expect("connect");
        server.wait_refused(RefuseReason::Handshake, 1).await;
        server.stop().await;
    }

    #[tokio::test]
    async fn a_malformed_frame_is_refused_and_the_link_stays_up() {
        let ca = TestCa::new("test CA");
        let mut server = start_server(&ca, LinkLimits::default()).await;
        let mut ws = raw_client(&server, &ca, "edge-1").await;
        let mut cloud = server.next_link().await;

        ws.send(WsMessage::text("this is not JSON\n"))
            .await
            .expect("sent");
        ws.send(WsMessage::binary(b"{\"header\":".to_vec()))
            .await
            .expect("sent");
        let good = app_message(3);
        ws.send(WsMessage::text(
            String::from_utf8(good.encode()).expect("utf-8"),
        ))
        .await
        .expect("sent");
        assert_eq!(
            within("the good message", cloud.receiver.recv()).await,
            Some(good)
        );
        assert_eq!(server.refused(RefuseReason::Malformed), 2);
        server.stop().await;
    }

    #[tokio::test]
    async fn an_oversized_frame_is_refused_and_closes_the_connection() {
        let ca = TestCa::new("test CA");
        let limits = LinkLimits {
            max_frame_bytes: 1024,
            ..LinkLimits::default()
        };
        let mut server = start_server(&ca, limits).await;
        let mut ws = raw_client(&server, &ca, "edge-1").await;
        let mut cloud = server.next_link().await;

        let fits = app_message(4);
        ws.send(WsMessage::binary(fits.encode()))
            .await
            .expect("sent");
        assert_eq!(
            within("the first message", cloud.receiver.recv()).await,
            Some(fits)
        );

        let mut big = app_message(5);
        big.content = Value::String("x".repeat(2000));
        ws.send(WsMessage::text(
            String::from_utf8(big.encode()).expect("utf-8"),
        ))
        .await
        .expect("sent");
        // The WebSocket layer refuses the frame from its header and the
        // connection cannot continue past it.
        assert_eq!(
            within("the link to close", cloud.receiver.recv()).await,
            None
        );
        assert_eq!(server.refused(RefuseReason::TooLarge), 1);

        // Oversized messages are not sent either.
        let identity = ca.client("system:node:edge-9");
        let metrics = LinkMetrics::default();
        let limits = LinkLimits {
            max_frame_bytes: 1024,
            rate: None,
            ..LinkLimits::default()
        };
        let client_link = connect(
            &server.target("edge-9"),
            ca.client_config(Some(&identity)),
            &limits,
            metrics.clone(),
        )
        .await
        .expect("connected");
        let mut cloud = server.next_link().await;
        client_link.sender.send(big).await.expect("queued");
        let small = app_message(6);
        client_link
            .sender
            .send(small.clone())
            .await
            .expect("queued");
        assert_eq!(
            within("the small message", cloud.receiver.recv()).await,
            Some(small)
        );
        assert_eq!(metrics.refused(Transport::Ws, RefuseReason::TooLarge), 1);
        eventually("the small message to be counted", || {
            metrics.sent(Transport::Ws) == 1
        })
        .await;
        server.stop().await;
    }

    #[tokio::test]
    async fn messages_over_the_rate_limit_are_dropped_and_counted() {
        let ca = TestCa::new("test CA");
        let limits = LinkLimits {
            rate: Some(RateLimit {
                per_second: 1,
                burst: 3,
            }),
            ..LinkLimits::default()
        };
        let mut server = start_server(&ca, limits).await;
        let identity = ca.client("system:node:edge-1");
        let edge = server
            .dial("edge-1", ca.client_config(Some(&identity)))
            .await
            .expect("connected");
        let mut cloud = server.next_link().await;

        let sent = 20;
        for n in 0..sent {
            edge.sender.send(app_message(n)).await.expect("sent");
        }
        // The first burst passes; one more may have been earned if the
        // sends took more than a second.
        eventually("every frame to be judged", || {
            server.metrics.received(Transport::Ws) + server.refused(RefuseReason::RateLimited) == 20
        })
        .await;
        let delivered = server.metrics.received(Transport::Ws);
        for _ in 0..delivered {
            within("a delivered message", cloud.receiver.recv())
                .await
                .expect("message");
        }
        assert!((3..=4).contains(&delivered), "{delivered} delivered");
        assert!(server.refused(RefuseReason::RateLimited) >= 16);
        assert!(!edge.sender.is_closed(), "the link stays up");
        server.stop().await;
    }

    #[tokio::test]
    async fn control_operations_are_answered_and_not_delivered() {
        let ca = TestCa::new("test CA");
        let mut server = start_server(&ca, LinkLimits::default()).await;
        let identity = ca.client("system:node:edge-1");
        let mut edge = server
            .dial("edge-1", ca.client_config(Some(&identity)))
            .await
            .expect("connected");
        let mut cloud = server.next_link().await;

        let ping = Message::new("", "", operation::PING, "", Value::Null);
        edge.sender.send(ping.clone()).await.expect("sent");
        let reply = within("the reply", edge.receiver.recv())
            .await
            .expect("reply");
        assert_eq!(reply.router.operation, operation::RESPONSE);
        assert_eq!(reply.parent_id(), ping.id());
        assert_eq!(reply.content, Value::String("ack".to_owned()));

        // The cloud side answers `config` too, and delivers only the rest.
        let config = Message::new("", "", operation::CONFIG, "", Value::Null);
        edge.sender.send(config.clone()).await.expect("sent");
        let keepalive = Message::keepalive();
        edge.sender.send(keepalive.clone()).await.expect("sent");
        assert_eq!(
            within("the keepalive", cloud.receiver.recv()).await,
            Some(keepalive)
        );
        let reply = within("the reply", edge.receiver.recv())
            .await
            .expect("reply");
        assert_eq!(reply.parent_id(), config.id());

        // The client answers the cloud's control messages as well.
        let pong = Message::new("", "", operation::PONG, "", Value::Null);
        cloud.sender.send(pong.clone()).await.expect("sent");
        let reply = within("the reply", cloud.receiver.recv())
            .await
            .expect("reply");
        assert_eq!(reply.parent_id(), pong.id());
        assert_eq!(reply.content, Value::String("ack".to_owned()));
        server.stop().await;
    }

    #[tokio::test]
    async fn closing_either_side_ends_the_other_receiver() {
        let ca = TestCa::new("test CA");
        let mut server = start_server(&ca, LinkLimits::default()).await;
        let identity = ca.client("system:node:edge-1");
        let config = ca.client_config(Some(&identity));

        // The edge closes.
        let edge = server
            .dial("edge-1", Arc::clone(&config))
            .await
            .expect("connected");
        let mut cloud = server.next_link().await;
        edge.sender.close();
        assert_eq!(
            within("the cloud side to end", cloud.receiver.recv()).await,
            None
        );
        assert!(cloud.sender.is_closed());

        // The cloud closes.
        let mut edge = server.dial("edge-1", config).await.expect("connected");
        let cloud = server.next_link().await;
        cloud.sender.close();
        assert_eq!(
            within("the edge side to end", edge.receiver.recv()).await,
            None
        );
        assert!(edge.sender.is_closed());

        // Stopping the server ends its links.
        let mut edge = server
            .dial("edge-1", ca.client_config(Some(&identity)))
            .await
            .expect("connected");
        let _cloud = server.next_link().await;
        server.stop().await;
        assert_eq!(
            within("the edge side to end", edge.receiver.recv()).await,
            None
        );
    }

    #[tokio::test]
    async fn a_client_can_connect_from_a_chosen_local_address() {
        let ca = TestCa::new("test CA");
        let mut server = start_server(&ca, LinkLimits::default()).await;
        let identity = ca.client("system:node:edge-1");
        let local: IpAddr = "127.0.0.2".parse().expect("ip");
        let target = server.target("edge-1").with_local_addr(local);
        let _edge = connect(
            &target,
            ca.client_config(Some(&identity)),
            &unlimited(),
            LinkMetrics::default(),
        )
        .await
        .expect("connected");
        let cloud = server.next_link().await;
        assert_eq!(cloud.peer.address.map(|a| a.ip()), Some(local));
        server.stop().await;
    }

    #[test]
    fn targets_accept_addresses_and_urls() {
        let target = ConnectTarget::new("wss://10.0.0.1:10000/p/n/events", "edge-1", "p1");
        assert_eq!(target.authority().expect("authority"), "10.0.0.1:10000");
        assert_eq!(target.server_name, "10.0.0.1");
        assert_eq!(
            target.url().expect("url"),
            "wss://10.0.0.1:10000/p1/edge-1/events"
        );
        let target = ConnectTarget::new("[::1]:10000", "edge-1", "p1");
        assert_eq!(target.server_name, "::1");
        assert!(target.tls_server_name().is_ok());
        let target = ConnectTarget::new("cloud.example:10000", "edge-1", "p1");
        assert_eq!(target.server_name, "cloud.example");
        assert!(ConnectTarget::new("no-port", "n", "p").authority().is_err());
    }

    #[test]
    fn node_names_come_from_node_certificates_only() {
        let ca = TestCa::new("test CA");
        let node = ca.client("system:node:edge-7");
        assert_eq!(
            node_from_certificates(Some(&node.chain)),
            Ok("edge-7".to_owned())
        );
        let other = ca.client("kubeedge.io");
        assert!(node_from_certificates(Some(&other.chain)).is_err());
        let empty = ca.client("system:node:");
        assert!(node_from_certificates(Some(&empty.chain)).is_err());
        assert!(node_from_certificates(None).is_err());
    }
}
