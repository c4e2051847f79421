//! The HTTPS front door: TLS accept, HTTP/1.1 and HTTP/2, and the identity
//! of the client certificate.
//!
//! [`serve`] accepts TCP connections, completes the TLS handshake under a
//! deadline (so a client that never finishes it cannot hold a task), and
//! serves each connection with hyper-util's auto builder: HTTP/2 when ALPN
//! chose `h2`, HTTP/1.1 when it chose `http/1.1`, either otherwise, with
//! HTTP/1.1 upgrades enabled for exec, attach and port-forward.
//!
//! Client certificates are optional, as with kube-apiserver: a client may
//! authenticate with a bearer token or not at all. But a certificate that
//! *is* presented must chain to the cluster CA and allow client auth, or the
//! handshake fails ([`server_config`]). The verified certificate's subject is
//! put into every request's extensions as a [`PeerCertificate`], where the
//! authentication layer ([`crate::auth`]) finds it; the peer's address is
//! there as axum's `ConnectInfo<SocketAddr>`, and the server's shutdown token
//! as [`ShutdownSignal`], so that long responses (watches) can end as soon as
//! the server stops.
//!
//! Stopping: when the token is cancelled, the listener is closed, every
//! connection is asked to finish gracefully (HTTP/2 GOAWAY, HTTP/1.1 close
//! after the response in flight), and a connection still busy after the
//! grace period is dropped. [`serve`] returns when all are gone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;
use tracing::Instrument as _;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::pki::Pki;

/// The ALPN protocols offered, in order of preference.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A failure to build the TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the certificates or key.
    #[error("invalid TLS configuration")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built from the CA.
    #[error("invalid client CA")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
}

/// The server's TLS configuration: the serving certificate of `pki`, TLS 1.2
/// and 1.3 with the ring provider, client certificates optional but
/// verified against the CA when presented, ALPN `h2` and `http/1.1`.
pub fn server_config(pki: &Pki) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca_cert_der().clone())?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(pki.serving_cert_chain(), pki.serving_key())?;
    config.alpn_protocols = ALPN_PROTOCOLS
        .iter()
        .map(|protocol| protocol.to_vec())
        .collect();
    Ok(Arc::new(config))
}

/// The subject of the verified client certificate, in each request's
/// extensions when the client presented one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The subject's first common name (the user name); empty if it has
    /// none.
    pub common_name: String,
    /// Every organization of the subject, in order (the groups).
    pub organizations: Vec<String>,
}

impl PeerCertificate {
    /// Reads the subject of a DER certificate; `None` if it does not parse.
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let subject = cert.subject();
        let common_name = subject
            .iter_common_name()
            .next()
            .and_then(|attr| attr.as_str().ok())
            .unwrap_or_default()
            .to_owned();
        let organizations = subject
            .iter_organization()
            .filter_map(|attr| attr.as_str().ok())
            .map(str::to_owned)
            .collect();
        Some(Self {
            common_name,
            organizations,
        })
    }
}

/// The server's shutdown token, in each request's extensions: a handler
/// streaming a long response (a watch) ends it when this is cancelled.
#[derive(Debug, Clone)]
pub struct ShutdownSignal(pub CancellationToken);

/// Limits of the server loop.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// How long a client may take to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// How long an HTTP/1.1 client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// How long connections may take to finish after shutdown starts.
    pub shutdown_grace: Duration,
    /// The counters the loop updates.
    pub stats: Arc<ServeStats>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
            stats: Arc::default(),
        }
    }
}

/// Counters of the server loop.
#[derive(Debug, Default)]
pub struct ServeStats {
    accepted: AtomicU64,
    handshake_failures: AtomicU64,
    handshake_timeouts: AtomicU64,
    active: AtomicU64,
}

impl ServeStats {
    /// TCP connections accepted.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// TLS handshakes that failed (bad or untrusted client certificate,
    /// protocol error, client gone), timeouts not included.
    pub fn handshake_failures(&self) -> u64 {
        self.handshake_failures.load(Ordering::Relaxed)
    }

    /// TLS handshakes abandoned because the client was too slow.
    pub fn handshake_timeouts(&self) -> u64 {
        self.handshake_timeouts.load(Ordering::Relaxed)
    }

    /// Connections being handshaken or served now.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }
}

/// Serves `router` over TLS on `listener` until `token` is cancelled, with
/// the default [`ServeOptions`]. See the module documentation.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: axum::Router,
    token: CancellationToken,
) {
    serve_with(listener, tls, router, token, ServeOptions::default()).await;
}

/// [`serve`] with explicit limits and counters.
pub async fn serve_with(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: axum::Router,
    token: CancellationToken,
    options: ServeOptions,
) {
    let acceptor = TlsAcceptor::from(tls);
    let tracker = TaskTracker::new();
    let options = Arc::new(options);
    loop {
        let accepted = tokio::select! {
            biased;
            () = token.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: wait a little rather
                // than spin; the listener itself stays usable.
                tracing::warn!(error = %err, "accepting a connection failed");
                tokio::select! {
                    () = token.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        options.stats.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            acceptor: acceptor.clone(),
            router: router.clone(),
            token: token.clone(),
            options: options.clone(),
            remote,
        };
        tracker.spawn(
            connection
                .run(stream)
                .instrument(tracing::debug_span!("apiserver-conn", %remote)),
        );
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// One accepted connection.
struct Connection {
    acceptor: TlsAcceptor,
    router: axum::Router,
    token: CancellationToken,
    options: Arc<ServeOptions>,
    remote: SocketAddr,
}

impl Connection {
    async fn run(self, stream: tokio::net::TcpStream) {
        let stats = self.options.stats.clone();
        stats.active.fetch_add(1, Ordering::Relaxed);
        self.serve(stream).await;
        stats.active.fetch_sub(1, Ordering::Relaxed);
    }

    async fn serve(self, stream: tokio::net::TcpStream) {
        let stats = &self.options.stats;
        let handshake =
            tokio::time::timeout(self.options.handshake_timeout, self.acceptor.accept(stream));
        let tls_stream = tokio::select! {
            () = self.token.cancelled() => return,
            result = handshake => match result {
                Ok(Ok(tls_stream)) => tls_stream,
                Ok(Err(err)) => {
                    stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %err, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    stats.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("TLS handshake timed out");
                    return;
                }
            },
        };

        let (_, session) = tls_stream.get_ref();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let peer = match session.peer_certificates().and_then(<[_]>::first) {
            None => None,
            Some(der) => match PeerCertificate::from_der(der) {
                Some(peer) => Some(peer),
                None => {
                    // rustls verified it, so this should not happen; an
                    // identity that cannot be read must not become anonymous.
                    stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("client certificate verified but unreadable");
                    return;
                }
            },
        };
        tracing::debug!(
            alpn = alpn.as_deref().map(String::from_utf8_lossy).as_deref(),
            user = peer.as_ref().map(|peer| peer.common_name.as_str()),
            "TLS established"
        );

        let router = self.router;
        let remote = self.remote;
        let signal = ShutdownSignal(self.token.clone());
        let service = tower::service_fn(move |mut request: hyper::Request<Incoming>| {
            let extensions = request.extensions_mut();
            extensions.insert(ConnectInfo(remote));
            extensions.insert(signal.clone());
            if let Some(peer) = &peer {
                extensions.insert(peer.clone());
            }
            router.clone().oneshot(request)
        });
        let service = TowerToHyperService::new(service);

        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.options.header_read_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .max_concurrent_streams(250);
        let builder = match alpn.as_deref() {
            Some(b"h2") => builder.http2_only(),
            Some(b"http/1.1") => builder.http1_only(),
            _ => builder,
        };
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(tls_stream), service);
        tokio::pin!(connection);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
                return;
            }
            () = self.token.cancelled() => {}
        }
        connection.as_mut().graceful_shutdown();
        match tokio::time::timeout(self.options.shutdown_grace, connection.as_mut()).await {
            Ok(Err(err)) => tracing::debug!(error = %err, "connection ended with an error"),
            Ok(Ok(())) => {}
            Err(_) => tracing::debug!("connection still busy after the shutdown grace; closing it"),
        }
    }
}
