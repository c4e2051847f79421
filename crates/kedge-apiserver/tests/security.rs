//! The security layer end to end: a real TLS server on 127.0.0.1 with the
//! authentication and authorization middleware in front of a tiny router,
//! reached by rustls clients, hyper clients and the real kubectl.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Request};
use axum::http::{StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kedge_apiserver::auth::{
    self, Authenticator, Authorizer, EmptyGraph, Identity, TokenAuthenticator,
};
use kedge_apiserver::pki::{self, ClientCredentials, Pki, ServingNames};
use kedge_apiserver::tls::{self, ServeOptions, ServeStats, ShutdownSignal};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;
use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// kubectl from PATH (`scripts/setup.sh` installs one when none is there;
/// `/usr/bin/kubectl` here is the Cloud SDK dispatcher, which first GETs
/// `/version`).
const KUBECTL: &str = "kubectl";

// === the server under test ===

struct Server {
    addr: SocketAddr,
    token: CancellationToken,
    handle: JoinHandle<()>,
    stats: Arc<ServeStats>,
}

impl Server {
    async fn stop(self) -> TestResult {
        self.token.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.handle).await??;
        Ok(())
    }
}

fn router(data_dir: &Path) -> Router {
    let tokens =
        Arc::new(TokenAuthenticator::load(&data_dir.join(auth::TOKEN_FILE)).expect("token file"));
    let authenticator = Arc::new(Authenticator::new(tokens));
    let authorizer = Arc::new(Authorizer::new(Arc::new(EmptyGraph)));
    Router::new()
        .route(
            "/version",
            get(|| async { Json(kedge_apiserver::discovery::version()) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/whoami",
            get(|Extension(identity): Extension<Identity>| async move {
                Json(json!({"user": identity.user, "groups": identity.groups}))
            }),
        )
        .route(
            "/api/v1/nodes/{name}",
            get(|UrlPath(name): UrlPath<String>| async move {
                Json(json!({"kind": "Node", "name": name}))
            }),
        )
        .route("/stream", get(endless_stream))
        .route("/stubborn", get(stubborn_stream))
        .route("/upgrade", get(echo_upgrade))
        .layer(from_fn_with_state(authorizer, auth::authorize))
        .layer(from_fn_with_state(authenticator, auth::authenticate))
}

/// A long response (like a watch) that ends when the server shuts down.
async fn endless_stream(Extension(ShutdownSignal(token)): Extension<ShutdownSignal>) -> Response {
    let ticks = futures_ticks(Some(token));
    Body::from_stream(ticks).into_response()
}

/// A long response that ignores shutdown: only the grace period ends it.
async fn stubborn_stream() -> Response {
    Body::from_stream(futures_ticks(None)).into_response()
}

fn futures_ticks(
    token: Option<CancellationToken>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    futures::stream::unfold(token, |token| async move {
        let tick = tokio::time::sleep(Duration::from_millis(50));
        match &token {
            Some(token) => {
                tokio::select! {
                    () = token.cancelled() => return None,
                    () = tick => {}
                }
            }
            None => tick.await,
        }
        Some((Ok(Bytes::from_static(b"tick\n")), token))
    })
}

/// Answers `101 Switching Protocols` and echoes the upgraded stream, the
/// way exec and attach will use upgrades.
async fn echo_upgrade(mut request: Request) -> Response {
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 64];
            if let Ok(n) = io.read(&mut buf).await {
                let _ = io.write_all(&buf[..n]).await;
                let _ = io.shutdown().await;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "echo")
        .body(Body::empty())
        .expect("response")
}

async fn start(
    pki: &Pki,
    options: ServeOptions,
) -> Result<Server, Box<dyn std::error::Error + Send + Sync>> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let config = tls::server_config(pki)?;
    let token = CancellationToken::new();
    let stats = options.stats.clone();
    let handle = tokio::spawn(tls::serve_with(
        listener,
        config,
        router(pki.data_dir()),
        token.clone(),
        options,
    ));
    Ok(Server {
        addr,
        token,
        handle,
        stats,
    })
}

fn new_pki(dir: &Path) -> Pki {
    Pki::load_or_create(
        dir,
        &ServingNames::for_bind(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    )
    .expect("pki")
}

// === clients ===

fn client_config(
    ca_pem: &str,
    client: Option<&ClientCredentials>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, Box<dyn std::error::Error + Send + Sync>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes())?)?;
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let mut config = match client {
        Some(creds) => builder.with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(creds.cert_pem.as_bytes())?],
            PrivateKeyDer::from_pem_slice(creds.key_pem.as_bytes())?,
        )?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

async fn connect(
    server: &Server,
    ca_pem: &str,
    client: Option<&ClientCredentials>,
    alpn: &[&[u8]],
) -> Result<TlsStream<TcpStream>, Box<dyn std::error::Error + Send + Sync>> {
    let connector = TlsConnector::from(client_config(ca_pem, client, alpn)?);
    let tcp = TcpStream::connect(server.addr).await?;
    let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    Ok(connector.connect(name, tcp).await?)
}

/// A GET over `stream`, in HTTP/2 when ALPN chose `h2`, else HTTP/1.1.
async fn get_on(
    stream: TlsStream<TcpStream>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, Bytes), Box<dyn std::error::Error + Send + Sync>> {
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let mut request = hyper::Request::get(format!("https://127.0.0.1{path}"));
    if !h2 {
        request = request.header(header::HOST, "127.0.0.1");
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Empty::<Bytes>::new())?;
    let response = if h2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await?;
        tokio::spawn(connection);
        sender.send_request(request).await?
    } else {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        sender.send_request(request).await?
    };
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

async fn get_json(
    server: &Server,
    ca_pem: &str,
    client: Option<&ClientCredentials>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, Value), Box<dyn std::error::Error + Send + Sync>> {
    let stream = connect(server, ca_pem, client, &[b"h2", b"http/1.1"]).await?;
    let (status, body) = get_on(stream, path, headers).await?;
    Ok((status, serde_json::from_slice(&body)?))
}

/// Waits, up to five seconds, for `condition`.
async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

// === tests ===

#[tokio::test]
async fn admin_certificate_is_kubernetes_admin_in_system_masters() -> TestResult {
    let dir = tempfile::tempdir()?;
    let pki = new_pki(dir.path());
    let server = start(&pki, ServeOptions::default()).await?;
    let (status, body) = get_json(
        &server,
        pki.ca_cert_pem(),
        Some(pki.admin_credentials()),
        "/whoami",
        &[],
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"user": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]})
    );
    server.stop().await
}

#[tokio::test]
async fn node_certificate_is_held_to_its_own_node() -> TestResult {
    let dir = tempfile::tempdir()?;
    let pki = new_pki(dir.path());
    let node = pki.sign_client(
        "system:node:n1",
        &["system:nodes"],
        Duration::from_secs(3600),
    )?;
    let server = start(&pki, ServeOptions::default()).await?;
    let (status, body) = get_json(
        &server,
        pki.ca_cert_pem(),
        Some(&node),
        "/api/v1/nodes/n1",
        &[],
    )
    .await?;
    assert_eq!((status, &body["name"]), (StatusCode::OK, &json!("n1")));
    let (status, body) = get_json(
        &server,
        pki.ca_cert_pem(),
        Some(&node),
        "/api/v1/nodes/n2",
        &[],
    )
    .await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "nodes \"n2\" is forbidden: User \"system:node:n1\" cannot get resource \"nodes\" in API group \"\" at the cluster scope: node 'n1' cannot read 'n2', only its own Node object",
            "reason": "Forbidden", "details": {"name": "n2", "kind": "nodes"}, "code": 403
        })
    );
    server.stop().await
}

#[tokio::test]
async fn certificate_from_an_unknown_ca_is_rejected_at_handshake() -> TestResult {
    let dir = tempfile::tempdir()?;
    let other = tempfile::tempdir()?;
    let pki = new_pki(dir.path());
    let stranger = new_pki(other.path());
    let server = start(&pki, ServeOptions::default()).await?;

    // With TLS 1.3 the client sends its certificate in its last flight, so
    // the refusal may surface on connect or on the first exchange.
    let outcome = match connect(
        &server,
        pki.ca_cert_pem(),
        Some(stranger.admin_credentials()),
        &[b"h2"],
    )
    .await
    {
        Err(_) => None,
        Ok(stream) => get_on(stream, "/whoami", &[]).await.ok(),
    };
    assert!(
        outcome.is_none(),
        "a foreign certificate got an answer: {outcome:?}"
    );
    assert!(eventually(|| server.stats.handshake_failures() == 1).await);

    // The server is unharmed.
    let (status, _) = get_json(
        &server,
        pki.ca_cert_pem(),
        Some(pki.admin_credentials()),
        "/whoami",
        &[],
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    server.stop().await
}

#[tokio::test]
async fn no_credentials_is_anonymous() -> TestResult {
    let dir = tempfile::tempdir()?;
    let pki = new_pki(dir.path());
    let server = start(&pki, ServeOptions::default()).await?;
    let (status, body) = get_json(&server, pki.ca_cert_pem(), None, "/version", &[]).await?;
    assert_eq!(
        (status, &body["major"], &body["minor"]),
        (StatusCode::OK, &json!("1"), &json!("32"))
    );
    let stream = connect(&server, pki.ca_cert_pem(), None, &[b"http/1.1"]).await?;
    let (status, body) = get_on(stream, "/healthz", &[]).await?;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    let (status, body) = get_json(&server, pki.ca_cert_pem(), None, "/whoami", &[]).await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body["message"],
        "forbidden: User \"system:anonymous\" cannot get path \"/whoami\""
    );
    assert_eq!(body["details"], json!({}));
    server.stop().await
}

#[tokio::test]
async fn bearer_tokens_from_the_token_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join(auth::TOKEN_FILE),
        "s3cr3t,alice,1001,\"system:masters,dev\"\nplain,bob,1002\n",
    )?;
    let pki = new_pki(dir.path());
    let server = start(&pki, ServeOptions::default()).await?;
    let ca = pki.ca_cert_pem();

    let (status, body) = get_json(
        &server,
        ca,
        None,
        "/whoami",
        &[("authorization", "Bearer s3cr3t")],
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"user": "alice", "groups": ["system:masters", "dev", "system:authenticated"]})
    );

    let (status, body) = get_json(
        &server,
        ca,
        None,
        "/whoami",
        &[("authorization", "Bearer wrong")],
    )
    .await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "Unauthorized", "reason": "Unauthorized", "code": 401})
    );

    let (status, body) = get_json(
        &server,
        ca,
        None,
        "/api/v1/nodes/n1",
        &[("authorization", "Bearer plain")],
    )
    .await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message
            .starts_with("nodes \"n1\" is forbidden: User \"bob\" cannot get resource \"nodes\""),
        "{message}"
    );
    assert!(message.ends_with(auth::RBAC_NOT_EVALUATED), "{message}");
    server.stop().await
}

#[tokio::test]
async fn alpn_negotiates_h2_and_http_1_1() -> TestResult {
    let dir = tempfile::tempdir()?;
    let pki = new_pki(dir.path());
    let server = start(&pki, ServeOptions::default()).await?;
    let ca = pki.ca_cert_pem();
    let admin = Some(pki.admin_credentials());
    for (offered, expected) in [
        (&[&b"h2"[..], b"http/1.1"][..], Some(&b"h2"[..])),
        (&[&b"http/1.1"[..]][..], Some(&b"http/1.1"[..])),
        (&[&b"h2"[..]][..], Some(&b"h2"[..])),
        (&[][..], None),
    ] {
        let stream = connect(&server, ca, admin, offered).await?;
        assert_eq!(stream.get_ref().1.alpn_protocol(), expected);
        let (status, body) = get_on(stream, "/whoami", &[]).await?;
        assert_eq!(status, StatusCode::OK, "offered {offered:?}");
        assert_eq!(
            serde_json::from_slice::<Value>(&body)?["user"],
            "kubernetes-admin"
        );
    }
    server.stop().await
}

#[tokio::test]
async fn http_1_1_upgrades_reach_the_handler() -> TestResult {
    let dir = tempfile::tempdir()?;
    let pki = new_pki(dir.path());
    let server = start(&pki, ServeOptions::default()).await?;
    let stream = connect(
        &server,
        pki.ca_cert_pem(),
        Some(pki.admin_credentials()),
        &[b"http/1.1"],
    )
    .await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection.with_upgrades());
    let request = hyper::Request::get("/upgrade")
        .header(header::HOST, "127.0.0.1")
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "echo")
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let mut upgraded = TokioIo::new(hyper::upgrade::on(response).await?);
    upgraded.write_all(b"hello exec").await?;
    let mut echoed = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), upgraded.read_to_end(&mut echoed)).await??;
    assert_eq!(echoed, b"hello exec");
    server.stop().await
}

#[tokio::test]
async fn slow_and_broken_handshakes_do_not_hold_the_server() -> TestResult {
    let dir = tempfile::tempdir()?;
    let pki = new_pki(dir.path());
    let options = ServeOptions {
        handshake_timeout: Duration::from_secs(1),
        ..ServeOptions::default()
    };
    let server = start(&pki, options).await?;

    // A client that connects and says nothing is dropped after the timeout.
    let mut silent = TcpStream::connect(server.addr).await?;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await?;
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the silent connection is closed"
    );
    assert!(eventually(|| server.stats.handshake_timeouts() == 1).await);

    // Plain HTTP on the TLS port fails the handshake and is counted.
    let mut plain = TcpStream::connect(server.addr).await?;
    plain
        .write_all(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read(&mut buf)).await?;
    assert!(eventually(|| server.stats.handshake_failures() == 1).await);
    assert!(eventually(|| server.stats.active() == 0).await);

    let (status, _) = get_json(&server, pki.ca_cert_pem(), None, "/version", &[]).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(server.stats.accepted(), 3);
    server.stop().await
}

#[tokio::test]
async fn shutdown_ends_long_responses_promptly() -> TestResult {
    let dir = tempfile::tempdir()?;
    let pki = new_pki(dir.path());
    for (path, grace) in [
        ("/stream", Duration::from_secs(60)),
        ("/stubborn", Duration::from_millis(200)),
    ] {
        let options = ServeOptions {
            shutdown_grace: grace,
            ..ServeOptions::default()
        };
        let server = start(&pki, options).await?;
        let stream = connect(
            &server,
            pki.ca_cert_pem(),
            Some(pki.admin_credentials()),
            &[b"h2"],
        )
        .await?;
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await?;
        tokio::spawn(connection);
        let response = sender
            .send_request(
                hyper::Request::get(format!("https://127.0.0.1{path}"))
                    .body(Empty::<Bytes>::new())?,
            )
            .await?;
        let mut body = response.into_body();
        let first = body.frame().await.ok_or("no first chunk")??;
        assert_eq!(first.into_data().ok().as_deref(), Some(&b"tick\n"[..]));
        // `/stream` honours the shutdown signal, so even a 60 s grace does
        // not delay the stop; `/stubborn` is cut at the 200 ms grace.
        server.stop().await?;
        let drained = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = body.frame().await {}
        })
        .await;
        assert!(drained.is_ok(), "{path}: the response ended");
    }
    Ok(())
}

fn sans(pki: &Pki) -> (Vec<IpAddr>, Vec<String>) {
    let chain = pki.serving_cert_chain();
    let (_, cert) = X509Certificate::from_der(&chain[0]).expect("parses");
    let mut ips = Vec::new();
    let mut dns = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(name) => dns.push((*name).to_owned()),
                GeneralName::IPAddress(bytes) if bytes.len() == 4 => {
                    ips.push(IpAddr::from(<[u8; 4]>::try_from(*bytes).expect("4 bytes")));
                }
                GeneralName::IPAddress(bytes) if bytes.len() == 16 => {
                    ips.push(IpAddr::from(
                        <[u8; 16]>::try_from(*bytes).expect("16 bytes"),
                    ));
                }
                _ => {}
            }
        }
    }
    (ips, dns)
}

#[tokio::test]
async fn restart_reuses_the_ca_and_new_names_reissue_only_the_serving_certificate() -> TestResult {
    let dir = tempfile::tempdir()?;
    let first = new_pki(dir.path());
    let (ips, dns) = sans(&first);
    assert!(ips.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)));
    assert!(ips.contains(&"::1".parse()?));
    for name in pki::DEFAULT_DNS_NAMES {
        assert!(dns.iter().any(|d| d == name), "{name}");
    }

    let again = new_pki(dir.path());
    assert_eq!(again.ca_cert_pem(), first.ca_cert_pem());
    assert_eq!(again.serving_cert_chain(), first.serving_cert_chain());
    assert_eq!(again.admin_credentials(), first.admin_credentials());

    let wider = ServingNames {
        ips: vec!["192.0.2.7".parse()?],
        dns_names: vec!["cloudcore.example".to_owned()],
    };
    let reissued = Pki::load_or_create(dir.path(), &wider)?;
    assert_eq!(reissued.ca_cert_pem(), first.ca_cert_pem());
    assert_eq!(reissued.admin_credentials(), first.admin_credentials());
    assert_ne!(reissued.serving_cert_chain(), first.serving_cert_chain());
    let (ips, dns) = sans(&reissued);
    assert!(ips.contains(&"192.0.2.7".parse()?));
    assert!(dns.iter().any(|d| d == "cloudcore.example"));

    // Fewer names are still covered: no re-issue.
    let narrower = new_pki(dir.path());
    assert_eq!(narrower.serving_cert_chain(), reissued.serving_cert_chain());

    // The re-issued certificate serves.
    let server = start(&reissued, ServeOptions::default()).await?;
    let (status, _) = get_json(&server, first.ca_cert_pem(), None, "/version", &[]).await?;
    assert_eq!(status, StatusCode::OK);
    server.stop().await
}

async fn kubectl(
    kubeconfig: &Path,
    home: &Path,
    args: &[&str],
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let cache = home.join("kube-cache");
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(KUBECTL)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--cache-dir")
            .arg(&cache)
            .args(args)
            .env("HOME", home)
            .env_remove("KUBECONFIG")
            .kill_on_drop(true)
            .output(),
    )
    .await?
    .map_err(|err| format!("cannot run {KUBECTL} (scripts/setup.sh installs it): {err}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!("kubectl {args:?} failed: {stderr}\n{stdout}").into());
    }
    Ok(stdout)
}

#[tokio::test]
async fn kubectl_works_with_the_admin_kubeconfig() -> TestResult {
    let dir = tempfile::tempdir()?;
    let home = tempfile::tempdir()?;
    let pki = new_pki(dir.path());
    let server = start(&pki, ServeOptions::default()).await?;
    let kubeconfig = pki.write_admin_kubeconfig(&pki::server_url(server.addr))?;
    assert_eq!(kubeconfig, dir.path().join("admin.kubeconfig"));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&kubeconfig)?.permissions());
    assert_eq!(mode & 0o777, 0o600);

    let version: Value = serde_json::from_str(
        &kubectl(&kubeconfig, home.path(), &["get", "--raw", "/version"]).await?,
    )?;
    assert_eq!(
        (&version["major"], &version["minor"]),
        (&json!("1"), &json!("32"))
    );
    let whoami: Value = serde_json::from_str(
        &kubectl(&kubeconfig, home.path(), &["get", "--raw", "/whoami"]).await?,
    )?;
    assert_eq!(whoami["user"], "kubernetes-admin");

    // Go also accepts the certificates with several O (groups) that
    // `sign_client` writes.
    let creds = pki.sign_client(
        "multi",
        &["system:masters", "team-a", "team-b"],
        Duration::from_secs(3600),
    )?;
    let other = dir.path().join("multi.kubeconfig");
    let text = std::fs::read_to_string(&kubeconfig)?;
    let replace = |text: &str, key: &str, value: &str| -> String {
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(value);
        text.lines()
            .map(|line| match line.split_once(&format!("{key}: ")) {
                Some((indent, _)) => format!("{indent}{key}: {encoded}"),
                None => line.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let text = replace(&text, "client-certificate-data", &creds.cert_pem);
    let text = replace(&text, "client-key-data", &creds.key_pem);
    std::fs::write(&other, text)?;
    let whoami: Value =
        serde_json::from_str(&kubectl(&other, home.path(), &["get", "--raw", "/whoami"]).await?)?;
    assert_eq!(
        whoami,
        json!({"user": "multi", "groups": ["system:masters", "team-a", "team-b", "system:authenticated"]})
    );
    server.stop().await
}
