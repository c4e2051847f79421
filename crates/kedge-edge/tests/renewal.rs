//! EdgeHub's certificate rotation against a real certificate server on
//! 127.0.0.1 that issues short-lived node certificates.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use kedge_edge::edgehub::renewal::keep_renewed;
use kedge_transport::bootstrap::{BootstrapConfig, EdgeCredentials, ensure_certificates};
use kedge_transport::ca::{ClientAuth, HubCa};
use kedge_transport::certserver::{self, CertServerConfig, CertServerMetrics, CertServerState};
use kedge_transport::token::make_token;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn the_node_certificate_is_renewed_at_70_to_90_percent_of_its_lifetime() {
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let ca = Arc::new(HubCa::generate().expect("CA"));
    let server = ca
        .issue_server_certificate(&[localhost], &[])
        .expect("server certificate");
    let tls = ca
        .server_config(&server, ClientAuth::Optional)
        .expect("TLS config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listener");
    let port = listener.local_addr().expect("address").port();
    let lifetime = Duration::from_secs(10);
    let metrics = CertServerMetrics::default();
    let state = CertServerState::new(
        ca.clone(),
        CertServerConfig {
            node_cert_validity: lifetime,
            ..CertServerConfig::default()
        },
        metrics.clone(),
    );
    let stop = CancellationToken::new();
    tokio::spawn(certserver::serve(
        listener,
        Arc::new(tls),
        state,
        stop.clone(),
    ));

    let dir = tempfile::tempdir().expect("temp dir");
    let config = BootstrapConfig {
        ca_file: dir.path().join("ca.crt"),
        cert_file: dir.path().join("node.crt"),
        key_file: dir.path().join("node.key"),
        ..BootstrapConfig::new(
            "edge-1",
            format!("https://127.0.0.1:{port}"),
            make_token(&ca, Duration::from_secs(600)),
        )
    };
    let first = ensure_certificates(&config).await.expect("joined");
    // The token is gone: renewal must use the certificate itself.
    let config = BootstrapConfig {
        token: String::new(),
        ..config
    };
    tokio::spawn(keep_renewed(config.clone(), stop.clone()));

    let renewed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Ok(Ok(current)) = EdgeCredentials::load(&config)
                && current.not_after() != first.not_after()
            {
                return current;
            }
        }
    })
    .await
    .expect("the certificate was renewed");
    let at = renewed
        .not_before()
        .duration_since(first.not_before())
        .expect("renewed later");
    // Issued whole seconds apart: allow a second either side of 7–9 s.
    assert!(
        at >= Duration::from_secs(6) && at <= Duration::from_secs(10),
        "renewed {at:?} into a {lifetime:?} lifetime"
    );
    stop.cancel();
}
