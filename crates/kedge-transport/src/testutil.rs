//! Throwaway certificates, a running test server and waiting helpers for
//! the transport tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kedge_message::{Message, group, module, operation, resource_type};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use crate::client::{ConnectError, ConnectTarget};
use crate::limits::LinkLimits;
use crate::link::Link;
use crate::metrics::{LinkMetrics, RefuseReason, Transport};

// --- Throwaway certificates ---

/// The crypto provider of the tests.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A CA that signs server and node certificates.
pub(crate) struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub(crate) cert: CertificateDer<'static>,
}

/// A certificate and its key.
pub(crate) struct Identity {
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
}

impl Identity {
    fn clone_key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

impl TestCa {
    pub(crate) fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Self {
            issuer: Issuer::new(params, key),
            cert: cert.der().clone(),
        }
    }

    fn sign(&self, mut params: CertificateParams, cn: &str) -> Identity {
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        Identity {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    /// A server certificate for 127.0.0.1.
    pub(crate) fn server(&self) -> Identity {
        let params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
        self.sign(params, "KubeEdge")
    }

    /// A client certificate with common name `cn`.
    pub(crate) fn client(&self, cn: &str) -> Identity {
        self.sign(CertificateParams::default(), cn)
    }

    fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.clone()).expect("CA certificate");
        Arc::new(roots)
    }

    /// A server configuration that requires certificates of this CA.
    pub(crate) fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let server = self.server();
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots(), provider())
            .build()
            .expect("verifier");
        Arc::new(
            rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_client_cert_verifier(verifier)
                .with_single_cert(server.chain, server.key)
                .expect("server config"),
        )
    }

    /// A client configuration trusting this CA, presenting `identity`.
    pub(crate) fn client_config(&self, identity: Option<&Identity>) -> Arc<rustls::ClientConfig> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(self.roots());
        Arc::new(match identity {
            Some(identity) => builder
                .with_client_auth_cert(identity.chain.clone(), identity.clone_key())
                .expect("client config"),
            None => builder.with_no_client_auth(),
        })
    }
}

// --- Helpers ---

/// Waits for `condition`, failing after a deadline.
pub(crate) async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The next item, failing after a deadline.
pub(crate) async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    timeout(Duration::from_secs(10), future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Limits without a rate limit, as clients use.
pub(crate) fn unlimited() -> LinkLimits {
    LinkLimits::client()
}

/// An application message numbered `n` (a pod status update).
pub(crate) fn app_message(n: usize) -> Message {
    Message::new(
        module::EDGED,
        group::META,
        operation::UPDATE,
        format!("default/{}/pod-{n}", resource_type::POD_STATUS),
        Value::String(format!("status {n}")),
    )
}

// --- A running server ---

/// A transport's server, serving on 127.0.0.1 in its own task.
pub(crate) struct Server {
    pub(crate) address: SocketAddr,
    accepted: mpsc::Receiver<Link>,
    pub(crate) metrics: LinkMetrics,
    transport: Transport,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Spawns `serve`, given the sender for accepted links, the metrics
    /// and the shutdown token; it listens on `address`.
    pub(crate) fn spawn<F>(
        transport: Transport,
        address: SocketAddr,
        serve: impl FnOnce(mpsc::Sender<Link>, LinkMetrics, CancellationToken) -> F,
    ) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (tx, accepted) = mpsc::channel(8);
        let metrics = LinkMetrics::default();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(tx, metrics.clone(), shutdown.clone()));
        Self {
            address,
            accepted,
            metrics,
            transport,
            shutdown,
            task,
        }
    }

    /// A target for this server as `node`.
    pub(crate) fn target(&self, node: &str) -> ConnectTarget {
        ConnectTarget::new(self.address.to_string(), node, "project-1")
    }

    /// The next accepted link.
    pub(crate) async fn next_link(&mut self) -> Link {
        within("an accepted link", self.accepted.recv())
            .await
            .expect("server running")
    }

    /// Connections refused for `reason`.
    pub(crate) fn refused(&self, reason: RefuseReason) -> u64 {
        self.metrics.refused(self.transport, reason)
    }

    /// Connects as `node` with `tls` over this server's transport, without
    /// limits, counting into metrics of its own.
    pub(crate) async fn dial(
        &self,
        node: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Link, ConnectError> {
        let target = self.target(node);
        let metrics = LinkMetrics::default();
        match self.transport {
            Transport::Ws => crate::ws::connect(&target, tls, &unlimited(), metrics).await,
            Transport::Quic => crate::quic::connect_quic(&target, tls, &unlimited(), metrics).await,
        }
    }

    /// Connects as `node` with a certificate of `ca` issued to it.
    pub(crate) async fn dial_as(&self, ca: &TestCa, node: &str) -> Link {
        let tls = ca.client_config(Some(&ca.client(&format!("system:node:{node}"))));
        self.dial(node, tls).await.expect("connected")
    }

    /// Waits until `count` connections were refused for `reason`.
    pub(crate) async fn wait_refused(&self, reason: RefuseReason, count: u64) {
        let what = format!("{count} refusals for {}", reason.as_str());
        eventually(&what, || self.refused(reason) == count).await;
    }

    /// Stops the server and waits for it.
    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        within("the server to stop", self.task)
            .await
            .expect("server task");
    }
}

// --- Scenarios both transports pass ---

/// A client whose handshake names another node than its certificate is
/// refused with 403, counted as a node mismatch, and never accepted.
pub(crate) async fn a_node_id_that_differs_from_the_certificate_is_refused(
    server: Server,
    ca: &TestCa,
) {
    let identity = ca.client("system:node:edge-1");
    let err = server
        .dial("edge-2", ca.client_config(Some(&identity)))
        .await
        .expect_err("refused");
    assert!(
        matches!(err, ConnectError::Refused { status: 403, .. }),
        "{err:?}"
    );
    server.wait_refused(RefuseReason::NodeMismatch, 1).await;
    assert_eq!(server.metrics.accepted(server.transport), 0);
    server.stop().await;
}

/// A link the cloud closes ends with no reconnect window at the edge; one
/// it closes for a restart ([`crate::link::LinkSender::close_for_restart`])
/// gives the edge the window.
pub(crate) async fn a_link_closed_for_a_restart_gives_the_edge_its_window(
    mut server: Server,
    ca: &TestCa,
) {
    let mut edge = server.dial_as(ca, "edge-0").await;
    let cloud = server.next_link().await;
    cloud.sender.close();
    assert!(within("the close", edge.receiver.recv()).await.is_none());
    assert_eq!(edge.sender.restart_window(), None, "closed, not stopped");

    let mut edge = server.dial_as(ca, "edge-1").await;
    let cloud = server.next_link().await;
    cloud.sender.close_for_restart(Duration::from_millis(2500));
    assert!(within("the close", edge.receiver.recv()).await.is_none());
    assert_eq!(
        edge.sender.restart_window(),
        Some(Duration::from_millis(2500))
    );
    server.stop().await;
}

/// With one handshake slot, held by `handshaking`, and one place in line
/// (`handshake_queue: 1`, a long wait): a second node waits in line
/// instead of being refused; a third takes its place, and the second is
/// refused as busy (a full line keeps its newest connections); once
/// `handshaking` is gone the third node's first dial connects.
pub(crate) async fn a_connection_over_the_handshake_limit_waits_in_line_newest_first<H>(
    mut server: Server,
    ca: &TestCa,
    handshaking: H,
) {
    let transport = server.transport;
    let mut second = Box::pin(server.dial(
        "edge-2",
        ca.client_config(Some(&ca.client("system:node:edge-2"))),
    ));
    tokio::select! {
        dialled = &mut second => panic!("edge-2 got past a held slot: {:?}", dialled.map(|_| ())),
        () = eventually("edge-2 in line", || server.metrics.waiting(transport) == 1) => {}
    }
    let mut third = Box::pin(server.dial(
        "edge-3",
        ca.client_config(Some(&ca.client("system:node:edge-3"))),
    ));
    tokio::select! {
        dialled = &mut third => panic!("edge-3 got past a held slot: {:?}", dialled.map(|_| ())),
        second = within("edge-2 pushed out", &mut second) => {
            assert!(second.is_err(), "edge-2 got past a held slot");
        }
    }
    drop(second);
    server.wait_refused(RefuseReason::Busy, 1).await;
    assert_eq!(server.metrics.waiting(transport), 1);

    drop(handshaking);
    let link = within("edge-3 once the slot is free", &mut third)
        .await
        .expect("the waiting node connects");
    drop(third);
    assert_eq!(server.next_link().await.peer.node_id, "edge-3");
    assert_eq!(server.refused(RefuseReason::Busy), 1);
    assert_eq!(server.metrics.waiting(transport), 0);
    drop(link);
    server.stop().await;
}

/// With one handshake slot, held by `handshaking`, and a short wait in
/// line (`handshake_queue_wait`), another node waits, then is refused as
/// busy, and leaves the line.
pub(crate) async fn a_connection_that_waits_too_long_is_refused<H>(
    server: Server,
    ca: &TestCa,
    handshaking: H,
) {
    let tls = ca.client_config(Some(&ca.client("system:node:edge-2")));
    let refused = within("the refusal", server.dial("edge-2", tls)).await;
    assert!(refused.is_err(), "a node got past a held slot");
    server.wait_refused(RefuseReason::Busy, 1).await;
    assert_eq!(server.metrics.waiting(server.transport), 0);
    assert_eq!(server.metrics.accepted(server.transport), 0);
    drop(handshaking);
    server.stop().await;
}

/// Server limits with one handshake slot, `queue` places in line for it
/// and at most `wait` in line.
pub(crate) fn one_handshake_slot(queue: usize, wait: Duration) -> LinkLimits {
    LinkLimits {
        max_handshakes: 1,
        handshake_queue: queue,
        handshake_queue_wait: wait,
        ..LinkLimits::default()
    }
}

/// With one handshake allowed at once (`max_handshakes: 1`), no place in
/// line (`handshake_queue: 0`) and `handshaking` holding the slot (a
/// client past TLS that never sends its handshake), another node is
/// refused at once, before TLS, and counted as busy; once `handshaking`
/// is gone, that node connects.
pub(crate) async fn a_connection_over_the_handshake_limit_is_refused_at_once<H>(
    mut server: Server,
    ca: &TestCa,
    handshaking: H,
) {
    let identity = ca.client("system:node:edge-2");
    let tls = ca.client_config(Some(&identity));
    let refused = within("the refusal", server.dial("edge-2", Arc::clone(&tls))).await;
    assert!(refused.is_err(), "a second handshake was let in");
    server.wait_refused(RefuseReason::Busy, 1).await;
    assert_eq!(server.metrics.accepted(server.transport), 0);

    // The held handshake fails once its client is gone, which frees the
    // slot; a dial may still meet it taken for a moment.
    drop(handshaking);
    server.wait_refused(RefuseReason::Handshake, 1).await;
    let link = within("a connection once the slot is free", async {
        loop {
            if let Ok(link) = server.dial("edge-2", Arc::clone(&tls)).await {
                break link;
            }
        }
    })
    .await;
    assert_eq!(server.next_link().await.peer.node_id, "edge-2");
    drop(link);
    server.stop().await;
}
