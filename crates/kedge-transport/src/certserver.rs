//! The certificate server: CloudHub's HTTPS endpoint (default port 10002)
//! where edges fetch the CA and get their node certificates (protocol.md
//! §4.2, §4.3).
//!
//! Routes ([`router`]):
//!
//! * `GET /ca.crt`: the CA certificate, raw DER, to anyone (the edge checks
//!   it against the hash in its join token).
//! * `GET /edge.crt` (KubeEdge sends a GET with a body; POST is accepted
//!   too): the body is a PKCS#10 request, DER; headers `NodeName: <name>`,
//!   optional `ExtKeyUsages: [2]` (Go `x509.ExtKeyUsage` numbers), and on a
//!   first join `Authorization: Bearer <JWT>`. The answer is the node
//!   certificate, raw DER, always for CN `system:node:<NodeName>`, O
//!   `system:nodes` (see [`crate::ca`]).
//!
//! Authentication: a client certificate, when presented, must chain to the
//! CA (rustls checks that during the handshake already, see
//! [`HubCa::server_config`] with [`crate::ca::ClientAuth::Optional`]) and
//! name the node of the `NodeName` header: that is a renewal. Without a
//! certificate, the bearer JWT must verify against the CA key. Refusals:
//! 401 for a missing, invalid or expired token and for a certificate that
//! is untrusted or names another node; 400 for a bad CSR or header; 413 for
//! a body over the limit; 408 when a request takes longer than the request
//! timeout. Each refusal is counted by reason ([`CertServerMetrics`]).
//!
//! [`serve`] accepts TLS connections under a handshake deadline, puts the
//! client's certificate chain into each request's extensions
//! ([`PeerCertificates`]) and serves HTTP/1.1 (what Go's client speaks to
//! it) with bounded headers, until its shutdown token is cancelled.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;
use tracing::Instrument as _;

use crate::ca::{CaError, DEFAULT_NODE_CERT_VALIDITY, ExtKeyUsage, HubCa, validate_node_name};
use crate::token::{TokenError, verify_jwt};

/// The path of the CA certificate.
pub const CA_PATH: &str = "/ca.crt";
/// The path where node certificates are requested.
pub const CERT_PATH: &str = "/edge.crt";
/// The header naming the node a certificate is requested for.
pub const NODE_NAME_HEADER: &str = "NodeName";
/// The header listing the wanted extended key usages.
pub const EXT_KEY_USAGES_HEADER: &str = "ExtKeyUsages";
/// The certificate server's default port.
pub const DEFAULT_PORT: u16 = 10002;

/// Limits and settings of the certificate server.
#[derive(Debug, Clone)]
pub struct CertServerConfig {
    /// The largest CSR body accepted, in bytes. Default 16 KiB.
    pub csr_body_limit: usize,
    /// The most bytes of request line and headers accepted (hyper's read
    /// buffer; at least 8 KiB is used). Default 16 KiB.
    pub max_header_bytes: usize,
    /// How long a request may take, headers included. Default 30 s.
    pub request_timeout: Duration,
    /// How long a client may take to complete the TLS handshake. Default
    /// 10 s.
    pub handshake_timeout: Duration,
    /// How long connections may take to finish after shutdown starts.
    /// Default 5 s.
    pub shutdown_grace: Duration,
    /// How long issued node certificates are valid (KubeEdge's
    /// `edgeCertSigningDuration`). Default 365 days.
    pub node_cert_validity: Duration,
}

impl Default for CertServerConfig {
    fn default() -> Self {
        Self {
            csr_body_limit: 16 * 1024,
            max_header_bytes: 16 * 1024,
            request_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            node_cert_validity: DEFAULT_NODE_CERT_VALIDITY,
        }
    }
}

/// Why a certificate request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// No client certificate and no `Authorization` header (401).
    MissingToken,
    /// The bearer token is malformed, badly signed or not HS256 (401).
    InvalidToken,
    /// The bearer token has expired (401).
    ExpiredToken,
    /// The client certificate is not a trusted node certificate (401).
    UntrustedCertificate,
    /// The client certificate names another node than `NodeName` (401).
    NodeMismatch,
    /// A header is missing or invalid (400).
    BadHeader,
    /// The CSR does not parse or verify (400).
    BadCsr,
    /// The body is over the limit (413).
    BodyTooLarge,
    /// The body could not be read (400).
    BodyUnreadable,
    /// The request took longer than the request timeout (408).
    Timeout,
    /// Signing failed inside the server (500).
    Internal,
}

impl Refusal {
    /// The metric label of this reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::InvalidToken => "invalid_token",
            Self::ExpiredToken => "expired_token",
            Self::UntrustedCertificate => "untrusted_certificate",
            Self::NodeMismatch => "node_mismatch",
            Self::BadHeader => "bad_header",
            Self::BadCsr => "bad_csr",
            Self::BodyTooLarge => "body_too_large",
            Self::BodyUnreadable => "body_unreadable",
            Self::Timeout => "timeout",
            Self::Internal => "internal",
        }
    }

    /// The HTTP status answered.
    pub fn status(self) -> StatusCode {
        match self {
            Self::MissingToken
            | Self::InvalidToken
            | Self::ExpiredToken
            | Self::UntrustedCertificate
            | Self::NodeMismatch => StatusCode::UNAUTHORIZED,
            Self::BadHeader | Self::BadCsr | Self::BodyUnreadable => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Timeout => StatusCode::REQUEST_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// How an issued certificate's request was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// A join token: a first join.
    Token,
    /// The node's current certificate: a renewal.
    Certificate,
}

impl AuthMethod {
    /// The metric label of this method.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Certificate => "certificate",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    auth: &'static str,
}

/// The certificate server's counters. [`Default`] makes unregistered ones
/// (tests); [`CertServerMetrics::register`] registers them.
#[derive(Clone, Debug, Default)]
pub struct CertServerMetrics {
    issued: Family<AuthLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
    ca_served: Counter,
    handshake_failures: Counter,
}

impl CertServerMetrics {
    /// Creates the counters and registers them in `registry` under
    /// `kedge_certserver_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let sub = registry.sub_registry_with_prefix("kedge_certserver");
        sub.register(
            "certificates_issued",
            "Node certificates issued, by authentication (token: first join, certificate: renewal)",
            metrics.issued.clone(),
        );
        sub.register(
            "requests_refused",
            "Certificate requests refused, by reason",
            metrics.refused.clone(),
        );
        sub.register(
            "ca_served",
            "CA certificate downloads",
            metrics.ca_served.clone(),
        );
        sub.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            metrics.handshake_failures.clone(),
        );
        metrics
    }

    /// Requests refused for `reason` so far.
    pub fn refused(&self, reason: Refusal) -> u64 {
        self.refused
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .get()
    }

    /// Certificates issued after `auth` so far.
    pub fn issued(&self, auth: AuthMethod) -> u64 {
        self.issued
            .get_or_create(&AuthLabels {
                auth: auth.as_str(),
            })
            .get()
    }

    /// CA downloads so far.
    pub fn ca_served(&self) -> u64 {
        self.ca_served.get()
    }

    /// Failed or timed-out TLS handshakes so far.
    pub fn handshake_failures(&self) -> u64 {
        self.handshake_failures.get()
    }
}

/// The client certificate chain of the connection a request came on (leaf
/// first), in its extensions when the client presented one.
#[derive(Debug, Clone)]
pub struct PeerCertificates(pub Arc<[CertificateDer<'static>]>);

/// What the handlers share: the CA, the settings and the counters.
#[derive(Debug, Clone)]
pub struct CertServerState {
    ca: Arc<HubCa>,
    config: Arc<CertServerConfig>,
    metrics: CertServerMetrics,
}

impl CertServerState {
    /// The state of a server signing with `ca`.
    pub fn new(ca: Arc<HubCa>, config: CertServerConfig, metrics: CertServerMetrics) -> Self {
        Self {
            ca,
            config: Arc::new(config),
            metrics,
        }
    }

    /// The counters.
    pub fn metrics(&self) -> &CertServerMetrics {
        &self.metrics
    }

    /// The settings.
    pub fn config(&self) -> &CertServerConfig {
        &self.config
    }
}

/// The routes `/ca.crt` and `/edge.crt`.
pub fn router(state: CertServerState) -> Router {
    Router::new()
        .route(CA_PATH, get(ca_crt))
        .route(CERT_PATH, get(edge_crt).post(edge_crt))
        .with_state(state)
}

async fn ca_crt(State(state): State<CertServerState>) -> Response {
    state.metrics.ca_served.inc();
    der_response(state.ca.cert_der().to_vec())
}

async fn edge_crt(State(state): State<CertServerState>, request: Request) -> Response {
    let deadline = state.config.request_timeout;
    let outcome = tokio::time::timeout(deadline, issue(&state, request))
        .await
        .unwrap_or_else(|_| {
            Err(Refused::new(
                Refusal::Timeout,
                "the request took too long".to_owned(),
            ))
        });
    match outcome {
        Ok((node, auth, der)) => {
            state
                .metrics
                .issued
                .get_or_create(&AuthLabels {
                    auth: auth.as_str(),
                })
                .inc();
            tracing::info!(node, auth = auth.as_str(), "issued a node certificate");
            der_response(der.to_vec())
        }
        Err(refused) => {
            state
                .metrics
                .refused
                .get_or_create(&ReasonLabels {
                    reason: refused.reason.as_str(),
                })
                .inc();
            tracing::warn!(
                reason = refused.reason.as_str(),
                message = %refused.message,
                "refused a certificate request"
            );
            (refused.reason.status(), refused.message).into_response()
        }
    }
}

/// A refusal and the message sent with it.
struct Refused {
    reason: Refusal,
    message: String,
}

impl Refused {
    fn new(reason: Refusal, message: String) -> Self {
        Self { reason, message }
    }
}

/// Authenticates the request, reads the CSR and signs it.
async fn issue(
    state: &CertServerState,
    request: Request,
) -> Result<(String, AuthMethod, CertificateDer<'static>), Refused> {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let node_header = header_str(headers, NODE_NAME_HEADER)?;

    let auth = match parts.extensions.get::<PeerCertificates>() {
        Some(PeerCertificates(chain)) if !chain.is_empty() => {
            let node = state.ca.verify_node_certificate(chain).map_err(|err| {
                Refused::new(
                    Refusal::UntrustedCertificate,
                    format!("the client certificate is not accepted: {err}"),
                )
            })?;
            let header = node_header
                .ok_or_else(|| Refused::new(Refusal::BadHeader, "no NodeName header".to_owned()))?;
            if header != node {
                return Err(Refused::new(
                    Refusal::NodeMismatch,
                    format!("the client certificate is for node {node:?}, not {header:?}"),
                ));
            }
            AuthMethod::Certificate
        }
        _ => {
            let authorization =
                header_str(headers, header::AUTHORIZATION.as_str())?.ok_or_else(|| {
                    Refused::new(Refusal::MissingToken, "no authorization token".to_owned())
                })?;
            let jwt = bearer(authorization).ok_or_else(|| {
                Refused::new(
                    Refusal::InvalidToken,
                    "the authorization header is not \"Bearer <token>\"".to_owned(),
                )
            })?;
            verify_jwt(&state.ca, jwt).map_err(|err| {
                let reason = match err {
                    TokenError::Expired => Refusal::ExpiredToken,
                    _ => Refusal::InvalidToken,
                };
                Refused::new(reason, format!("token validation failure: {err}"))
            })?;
            AuthMethod::Token
        }
    };

    let node = node_header
        .ok_or_else(|| Refused::new(Refusal::BadHeader, "no NodeName header".to_owned()))?;
    validate_node_name(node).map_err(|err| Refused::new(Refusal::BadHeader, err.to_string()))?;
    let usages = match header_str(headers, EXT_KEY_USAGES_HEADER)? {
        None => Vec::new(),
        Some(value) => ExtKeyUsage::parse_header(value)
            .map_err(|err| Refused::new(Refusal::BadHeader, err.to_string()))?,
    };

    let limit = state.config.csr_body_limit;
    let too_large = || {
        Refused::new(
            Refusal::BodyTooLarge,
            format!("the request body is over {limit} bytes"),
        )
    };
    if let Some(length) = header_str(headers, header::CONTENT_LENGTH.as_str())? {
        match length.parse::<u64>() {
            Ok(length) if length > limit as u64 => return Err(too_large()),
            Ok(_) => {}
            Err(_) => {
                return Err(Refused::new(
                    Refusal::BadHeader,
                    "bad Content-Length".to_owned(),
                ));
            }
        }
    }
    let csr = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
        Err(err) => {
            return Err(Refused::new(
                Refusal::BodyUnreadable,
                format!("the request body could not be read: {err}"),
            ));
        }
    };

    let der = state
        .ca
        .sign_node_csr(&csr, node, &usages, state.config.node_cert_validity)
        .map_err(|err| match err {
            CaError::BadCsr(_) | CaError::BadNodeName(_) | CaError::UnsupportedKeyUsage(_) => {
                Refused::new(Refusal::BadCsr, err.to_string())
            }
            other => Refused::new(Refusal::Internal, format!("signing failed: {other}")),
        })?;
    Ok((node.to_owned(), auth, der))
}

/// A header's value as text, `None` when absent.
fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Refused> {
    headers
        .get(name)
        .map(|value| {
            value
                .to_str()
                .map_err(|_| Refused::new(Refusal::BadHeader, format!("header {name} is not text")))
        })
        .transpose()
}

/// The token of `Bearer <token>`. Like KubeEdge, the value must be two
/// words separated by one space.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' '))
        .then_some(token)
}

fn der_response(der: Vec<u8>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from(der),
    )
        .into_response()
}

// === serving ===

/// Serves [`router`]`(state)` over TLS on `listener` until `shutdown` is
/// cancelled; then stops accepting, lets requests in flight finish within
/// the shutdown grace, and returns. `tls` is normally
/// [`HubCa::server_config`] with optional client certificates.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: CertServerState,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    let router = router(state.clone());
    let tracker = TaskTracker::new();
    if let Ok(local) = listener.local_addr() {
        tracing::info!(%local, "certificate server listening");
    }
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: wait a little rather
                // than spin; the listener itself stays usable.
                tracing::warn!(error = %err, "accepting a connection failed");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            acceptor: acceptor.clone(),
            router: router.clone(),
            state: state.clone(),
            shutdown: shutdown.clone(),
            remote,
        };
        tracker.spawn(
            connection
                .serve(stream)
                .instrument(tracing::debug_span!("certserver-conn", %remote)),
        );
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// One accepted connection.
struct Connection {
    acceptor: TlsAcceptor,
    router: Router,
    state: CertServerState,
    shutdown: CancellationToken,
    remote: SocketAddr,
}

impl Connection {
    async fn serve(self, stream: tokio::net::TcpStream) {
        let config = self.state.config.clone();
        let metrics = &self.state.metrics;
        let handshake =
            tokio::time::timeout(config.handshake_timeout, self.acceptor.accept(stream));
        let tls_stream = tokio::select! {
            () = self.shutdown.cancelled() => return,
            result = handshake => match result {
                Ok(Ok(tls_stream)) => tls_stream,
                Ok(Err(err)) => {
                    metrics.handshake_failures.inc();
                    tracing::debug!(error = %err, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics.handshake_failures.inc();
                    tracing::debug!("TLS handshake timed out");
                    return;
                }
            },
        };
        let (_, session) = tls_stream.get_ref();
        let peer = session
            .peer_certificates()
            .filter(|chain| !chain.is_empty())
            .map(|chain| {
                PeerCertificates(
                    chain
                        .iter()
                        .map(|cert| cert.clone().into_owned())
                        .collect::<Vec<_>>()
                        .into(),
                )
            });
        tracing::debug!(remote = %self.remote, client_cert = peer.is_some(), "TLS established");

        let router = self.router;
        let service = tower::service_fn(move |mut request: hyper::Request<Incoming>| {
            if let Some(peer) = &peer {
                request.extensions_mut().insert(peer.clone());
            }
            router.clone().oneshot(request.map(Body::new))
        });
        let service = TowerToHyperService::new(service);
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(config.request_timeout)
            .max_buf_size(config.max_header_bytes.max(8192));
        let connection = builder.serve_connection(TokioIo::new(tls_stream), service);
        tokio::pin!(connection);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
                return;
            }
            () = self.shutdown.cancelled() => {}
        }
        connection.as_mut().graceful_shutdown();
        match tokio::time::timeout(config.shutdown_grace, connection.as_mut()).await {
            Ok(Err(err)) => tracing::debug!(error = %err, "connection ended with an error"),
            Ok(Ok(())) => {}
            Err(_) => tracing::debug!("connection still busy after the shutdown grace; closing it"),
        }
    }
}

/// A certificate server on loopback, for the tests of this crate.
#[cfg(test)]
pub(crate) mod test_support {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::bootstrap::{HttpResponse, ServerUrl, https_request};
    use crate::ca::ClientAuth;

    /// A running server and what tests need to talk to it.
    pub(crate) struct Harness {
        pub(crate) ca: Arc<HubCa>,
        pub(crate) state: CertServerState,
        pub(crate) url: String,
        pub(crate) addr: SocketAddr,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    impl Harness {
        /// A new CA and a server on 127.0.0.1:0 with `config`.
        pub(crate) async fn start(config: CertServerConfig) -> Self {
            let ca = Arc::new(HubCa::generate().expect("ca"));
            let server = ca
                .issue_server_certificate(&[IpAddr::V4(Ipv4Addr::LOCALHOST)], &[])
                .expect("server certificate");
            let tls = Arc::new(
                ca.server_config(&server, ClientAuth::Optional)
                    .expect("tls config"),
            );
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("address");
            let state = CertServerState::new(ca.clone(), config, CertServerMetrics::default());
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(serve(listener, tls, state.clone(), shutdown.clone()));
            Self {
                ca,
                state,
                url: format!("https://{addr}"),
                addr,
                shutdown,
                task,
            }
        }

        /// A client configuration trusting the CA, without a certificate.
        pub(crate) fn trusting(&self) -> rustls::ClientConfig {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca.cert_der().clone()).expect("root");
            rustls::ClientConfig::builder_with_provider(crate::ca::provider())
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots)
                .with_no_client_auth()
        }

        /// `GET path` with `headers` and `body` over `tls`.
        pub(crate) async fn get(
            &self,
            tls: rustls::ClientConfig,
            path: &str,
            headers: &[(&str, String)],
            body: Vec<u8>,
        ) -> Result<HttpResponse, crate::bootstrap::BootstrapError> {
            let server = ServerUrl::parse(&self.url).expect("url");
            https_request(
                &server,
                Arc::new(tls),
                hyper::Method::GET,
                path,
                headers,
                body,
                Duration::from_secs(10),
            )
            .await
        }

        /// The counters.
        pub(crate) fn metrics(&self) -> &CertServerMetrics {
            self.state.metrics()
        }

        /// Stops the server and waits for it.
        pub(crate) async fn stop(self) {
            self.shutdown.cancel();
            self.task.await.expect("server task");
        }
    }

    /// Waits until `condition` holds, for at most 5 s.
    pub(crate) async fn eventually(mut condition: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !condition() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition not met in time"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use bytes::Bytes;
    use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::test_support::{Harness, eventually};
    use super::*;
    use crate::bootstrap::{EdgeCredentials, insecure_client_config, node_csr};
    use crate::ca::node_name_of;
    use crate::token::{make_jwt, make_token, split_token};

    fn unix_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
    }

    fn token_headers(node: &str, jwt: &str) -> Vec<(&'static str, String)> {
        vec![
            (NODE_NAME_HEADER, node.to_owned()),
            ("Authorization", format!("Bearer {jwt}")),
        ]
    }

    fn jwt_of(ca: &HubCa) -> String {
        let token = make_token(ca, Duration::from_secs(3600));
        split_token(&token).expect("token").1.to_owned()
    }

    /// Obtains a certificate for `node` with a token; returns credentials.
    async fn join(harness: &Harness, node: &str) -> EdgeCredentials {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let response = harness
            .get(
                harness.trusting(),
                CERT_PATH,
                &token_headers(node, &jwt_of(&harness.ca)),
                node_csr(node, &key).expect("csr"),
            )
            .await
            .expect("answered");
        assert_eq!(response.status, StatusCode::OK);
        EdgeCredentials::new(
            node,
            harness.ca.cert_der().clone(),
            CertificateDer::from(response.body.to_vec()),
            crate::ca::sec1_from_pkcs8(key.serialized_der()).expect("sec1"),
        )
        .expect("usable")
    }

    #[tokio::test]
    async fn the_ca_is_served_as_der_to_anyone() {
        let harness = Harness::start(CertServerConfig::default()).await;
        let response = harness
            .get(
                insecure_client_config().expect("tls"),
                CA_PATH,
                &[],
                Vec::new(),
            )
            .await
            .expect("answered");
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.body.as_ref(), harness.ca.cert_der().as_ref());
        assert_eq!(harness.metrics().ca_served(), 1);
        harness.stop().await;
    }

    #[tokio::test]
    async fn a_good_token_gets_a_node_certificate() {
        let harness = Harness::start(CertServerConfig::default()).await;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut headers = token_headers("edge-1", &jwt_of(&harness.ca));
        headers.push((EXT_KEY_USAGES_HEADER, "[2]".to_owned()));
        let response = harness
            .get(
                harness.trusting(),
                CERT_PATH,
                &headers,
                node_csr("edge-1", &key).expect("csr"),
            )
            .await
            .expect("answered");
        assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
        assert_eq!(node_name_of(&response.body).expect("node"), "edge-1");
        let chain = [CertificateDer::from(response.body.to_vec())];
        assert_eq!(
            harness.ca.verify_node_certificate(&chain).expect("trusted"),
            "edge-1"
        );
        assert_eq!(harness.metrics().issued(AuthMethod::Token), 1);
        harness.stop().await;
    }

    #[tokio::test]
    async fn bad_tokens_are_refused_with_401() {
        let harness = Harness::start(CertServerConfig::default()).await;
        let other = HubCa::generate().expect("other ca");
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let csr = node_csr("edge-1", &key).expect("csr");
        let cases: Vec<(Vec<(&str, String)>, Refusal)> = vec![
            (
                token_headers("edge-1", &make_jwt(harness.ca.key_der(), unix_now() - 10)),
                Refusal::ExpiredToken,
            ),
            (
                token_headers("edge-1", &make_jwt(b"forged key", unix_now() + 3600)),
                Refusal::InvalidToken,
            ),
            (
                token_headers("edge-1", &jwt_of(&other)),
                Refusal::InvalidToken,
            ),
            (
                vec![
                    (NODE_NAME_HEADER, "edge-1".to_owned()),
                    ("Authorization", "Basic abc".to_owned()),
                ],
                Refusal::InvalidToken,
            ),
            (
                vec![(NODE_NAME_HEADER, "edge-1".to_owned())],
                Refusal::MissingToken,
            ),
        ];
        for (headers, reason) in &cases {
            let response = harness
                .get(harness.trusting(), CERT_PATH, headers, csr.clone())
                .await
                .expect("answered");
            assert_eq!(response.status, StatusCode::UNAUTHORIZED, "{reason:?}");
        }
        assert_eq!(harness.metrics().refused(Refusal::ExpiredToken), 1);
        assert_eq!(harness.metrics().refused(Refusal::InvalidToken), 3);
        assert_eq!(harness.metrics().refused(Refusal::MissingToken), 1);
        assert_eq!(harness.metrics().issued(AuthMethod::Token), 0);
        harness.stop().await;
    }

    #[tokio::test]
    async fn a_node_renews_with_its_certificate_and_only_for_itself() {
        let harness = Harness::start(CertServerConfig::default()).await;
        let credentials = join(&harness, "edge-1").await;
        let tls = credentials.client_config().expect("client config");
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let csr = node_csr("edge-1", &key).expect("csr");

        let renewed = harness
            .get(
                tls.clone(),
                CERT_PATH,
                &[(NODE_NAME_HEADER, "edge-1".to_owned())],
                csr.clone(),
            )
            .await
            .expect("answered");
        assert_eq!(renewed.status, StatusCode::OK, "{:?}", renewed.body);
        assert_eq!(node_name_of(&renewed.body).expect("node"), "edge-1");
        assert_eq!(harness.metrics().issued(AuthMethod::Certificate), 1);

        // The certificate of edge-1 does not get edge-2 a certificate, even
        // with a valid token beside it: the certificate decides.
        let headers = token_headers("edge-2", &jwt_of(&harness.ca));
        let refused = harness
            .get(tls, CERT_PATH, &headers, csr)
            .await
            .expect("answered");
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert_eq!(harness.metrics().refused(Refusal::NodeMismatch), 1);
        assert_eq!(harness.metrics().issued(AuthMethod::Certificate), 1);
        harness.stop().await;
    }

    #[tokio::test]
    async fn a_certificate_of_another_ca_fails_the_handshake() {
        let harness = Harness::start(CertServerConfig::default()).await;
        let other = Harness::start(CertServerConfig::default()).await;
        let foreign = join(&other, "edge-1").await;
        // Trust the right CA but present a certificate of the other one.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(harness.ca.cert_der().clone()).expect("root");
        let tls = rustls::ClientConfig::builder_with_provider(crate::ca::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![foreign.cert_der().clone()],
                foreign.private_key().expect("key"),
            )
            .expect("client auth");
        let result = harness
            .get(
                tls,
                CERT_PATH,
                &[(NODE_NAME_HEADER, "edge-1".to_owned())],
                Vec::new(),
            )
            .await;
        assert!(result.is_err(), "{result:?}");
        eventually(|| harness.metrics().handshake_failures() == 1).await;
        assert_eq!(harness.metrics().issued(AuthMethod::Certificate), 0);
        harness.stop().await;
        other.stop().await;
    }

    #[tokio::test]
    async fn garbage_csrs_and_bad_headers_are_refused_with_400() {
        let harness = Harness::start(CertServerConfig::default()).await;
        let jwt = jwt_of(&harness.ca);
        let garbage = harness
            .get(
                harness.trusting(),
                CERT_PATH,
                &token_headers("edge-1", &jwt),
                b"this is not a CSR".to_vec(),
            )
            .await
            .expect("answered");
        assert_eq!(garbage.status, StatusCode::BAD_REQUEST);
        assert_eq!(harness.metrics().refused(Refusal::BadCsr), 1);

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let csr = node_csr("edge-1", &key).expect("csr");
        let no_node = vec![("Authorization", format!("Bearer {jwt}"))];
        let mut bad_usage = token_headers("edge-1", &jwt);
        bad_usage.push((EXT_KEY_USAGES_HEADER, "client".to_owned()));
        let bad_name = token_headers("Edge_1", &jwt);
        for headers in [no_node, bad_usage, bad_name] {
            let response = harness
                .get(harness.trusting(), CERT_PATH, &headers, csr.clone())
                .await
                .expect("answered");
            assert_eq!(response.status, StatusCode::BAD_REQUEST);
        }
        assert_eq!(harness.metrics().refused(Refusal::BadHeader), 3);
        harness.stop().await;
    }

    #[tokio::test]
    async fn an_announced_oversized_body_is_refused_with_413() {
        let harness = Harness::start(CertServerConfig::default()).await;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(harness.trusting()));
        let tcp = tokio::net::TcpStream::connect(harness.addr)
            .await
            .expect("connect");
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let mut stream = tls.connect(name, tcp).await.expect("tls");
        // Only the head is sent: the server answers from Content-Length
        // without reading a body.
        let head = format!(
            "GET /edge.crt HTTP/1.1\r\nHost: {}\r\nNodeName: edge-1\r\nAuthorization: Bearer {}\r\nContent-Length: 100000\r\n\r\n",
            harness.addr,
            jwt_of(&harness.ca)
        );
        stream.write_all(head.as_bytes()).await.expect("written");
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "connection closed early: {answer:?}");
            answer.extend_from_slice(&buf[..n]);
        }
        assert!(
            answer.starts_with(b"HTTP/1.1 413"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        assert_eq!(harness.metrics().refused(Refusal::BodyTooLarge), 1);
        harness.stop().await;
    }

    #[tokio::test]
    async fn oversized_headers_are_refused() {
        let harness = Harness::start(CertServerConfig::default()).await;
        let headers = vec![
            (NODE_NAME_HEADER, "edge-1".to_owned()),
            ("X-Padding", "a".repeat(40 * 1024)),
        ];
        match harness
            .get(harness.trusting(), CERT_PATH, &headers, Vec::new())
            .await
        {
            Ok(response) => {
                assert_eq!(response.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
            }
            Err(err) => panic!("expected a 431 answer, got {err:?}"),
        }
        assert_eq!(harness.metrics().issued(AuthMethod::Token), 0);
        harness.stop().await;
    }

    // === the router alone ===

    fn state() -> CertServerState {
        let ca = Arc::new(HubCa::generate().expect("ca"));
        CertServerState::new(
            ca,
            CertServerConfig::default(),
            CertServerMetrics::default(),
        )
    }

    fn request(state: &CertServerState, body: Body) -> Request {
        hyper::Request::builder()
            .method("POST")
            .uri(CERT_PATH)
            .header(NODE_NAME_HEADER, "edge-1")
            .header("Authorization", format!("Bearer {}", jwt_of(&state.ca)))
            .body(body)
            .expect("request")
    }

    #[tokio::test]
    async fn a_streamed_body_over_the_limit_is_refused_with_413() {
        let state = state();
        let chunks = futures::stream::iter(
            (0..3).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![0u8; 10_000]))),
        );
        let response = router(state.clone())
            .oneshot(request(&state, Body::from_stream(chunks)))
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(state.metrics().refused(Refusal::BodyTooLarge), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_never_ends_times_out_with_408() {
        let state = state();
        let pending = futures::stream::pending::<Result<Bytes, std::io::Error>>();
        let response = router(state.clone())
            .oneshot(request(&state, Body::from_stream(pending)))
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(state.metrics().refused(Refusal::Timeout), 1);
    }

    #[tokio::test]
    async fn post_works_like_get_and_metrics_register() {
        let state = state();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let csr = node_csr("edge-1", &key).expect("csr");
        let response = router(state.clone())
            .oneshot(request(&state, Body::from(csr)))
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);

        let mut registry = Registry::default();
        let metrics = CertServerMetrics::register(&mut registry);
        metrics
            .refused
            .get_or_create(&ReasonLabels { reason: "bad_csr" })
            .inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert!(
            text.contains("kedge_certserver_requests_refused_total{reason=\"bad_csr\"} 1"),
            "{text}"
        );
    }
}
