//! EdgeHub as edgecore builds it, against a real CloudHub WebSocket
//! listener on 127.0.0.1 with TLS client certificates.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use kedge_apis::config::HostInfo;
use kedge_apis::config::edgecore::EdgeCoreConfig;
use kedge_bus::{
    BusBuilder, BusConfig, CancellationToken, Message, Module, ModuleContext, ModuleError,
};
use kedge_transport::bootstrap::node_csr;
use kedge_transport::ca::{ClientAuth, DEFAULT_NODE_CERT_VALIDITY, HubCa, pem_encode};
use kedge_transport::limits::LinkLimits;
use kedge_transport::metrics::LinkMetrics;
use kedge_transport::ws;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(20);

/// Hands what metamanager would receive to the test.
struct Meta(mpsc::UnboundedSender<Message>);

impl Module for Meta {
    fn name(&self) -> &str {
        "metamanager"
    }

    fn group(&self) -> &str {
        "meta"
    }

    async fn run(self, mut ctx: ModuleContext) -> Result<(), ModuleError> {
        while let Some(msg) = ctx.recv().await {
            let _ = self.0.send(msg);
        }
        Ok(())
    }
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[tokio::test]
async fn edgecore_s_edgehub_connects_over_websocket_and_routes_both_ways() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = "edge-1";
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);

    // The cloud: a CA, a server certificate for 127.0.0.1, a listener.
    let ca = HubCa::generate().expect("CA");
    let server_cert = ca
        .issue_server_certificate(&[localhost], &[])
        .expect("server certificate");
    let server_tls = ca
        .server_config(&server_cert, ClientAuth::Required)
        .expect("server TLS");
    let listener = tokio::net::TcpListener::bind((localhost, 0))
        .await
        .expect("listener");
    let address = listener.local_addr().expect("address");
    let (accepted_tx, mut accepted) = mpsc::channel(4);
    let cloud_shutdown = CancellationToken::new();
    tokio::spawn(ws::serve(
        listener,
        Arc::new(server_tls),
        LinkLimits::default(),
        LinkMetrics::default(),
        accepted_tx,
        cloud_shutdown.clone(),
    ));

    // The node's certificate files, as the bootstrap would have left them.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("node key");
    let csr = node_csr(node, &key).expect("CSR");
    let cert = ca
        .sign_node_csr(&csr, node, &[], DEFAULT_NODE_CERT_VALIDITY)
        .expect("node certificate");
    let ca_file = dir.path().join("ca/rootCA.crt");
    let cert_file = dir.path().join("certs/server.crt");
    let key_file = dir.path().join("certs/server.key");
    std::fs::create_dir_all(dir.path().join("ca")).expect("ca dir");
    std::fs::create_dir_all(dir.path().join("certs")).expect("certs dir");
    std::fs::write(&ca_file, ca.cert_pem()).expect("write CA");
    std::fs::write(&cert_file, pem_encode("CERTIFICATE", &cert)).expect("write cert");
    std::fs::write(&key_file, key.serialize_pem()).expect("write key");

    // edgecore.yaml pointing at it.
    let mut config = EdgeCoreConfig::default_config(&HostInfo::new(node, Ipv4Addr::LOCALHOST));
    config.database.data_source = dir.path().join("data/edgecore.db").display().to_string();
    let hub = &mut config.modules.edge_hub;
    hub.websocket.server = address.to_string();
    hub.tls_ca_file = ca_file.display().to_string();
    hub.tls_cert_file = cert_file.display().to_string();
    hub.tls_private_key_file = key_file.display().to_string();
    config.validate().expect("valid configuration");

    let mut registry = Registry::default();
    let edgehub = kedge_edge::edge_hub(&config, &mut registry);
    let (meta_tx, mut meta_rx) = mpsc::unbounded_channel();
    let mut builder = BusBuilder::new(BusConfig::default());
    builder.register(edgehub, true).expect("edgehub");
    builder.register(Meta(meta_tx), true).expect("meta");
    let bus = builder.build(&mut registry).start();

    // The cloud sees the node and its first keepalive.
    let mut cloud = within("the edge to connect", accepted.recv())
        .await
        .expect("a link");
    assert_eq!(cloud.peer.node_id, node);
    assert_eq!(cloud.peer.project_id, "e632aba927ea4ac2b575ec1603d56f10");
    let first = within("a keepalive", cloud.receiver.recv())
        .await
        .expect("link up");
    assert_eq!(first.router.operation, "keepalive");
    assert_eq!(first.content, json!("ping"));
    let connected = within("the link-state event", meta_rx.recv())
        .await
        .expect("meta alive");
    assert_eq!(connected.content, json!("cloud_connected"));

    // Down: a pod for metamanager. Up: a node status patch.
    let pod = Message::new(
        "edgecontroller",
        "resource",
        "insert",
        "default/pod/nginx",
        json!({"kind": "Pod", "metadata": {"name": "nginx"}}),
    )
    .with_resource_version("5");
    cloud.sender.send(pod.clone()).await.expect("sent");
    let got = within("the pod at metamanager", meta_rx.recv())
        .await
        .expect("meta alive");
    assert_eq!(got, pod);

    let report = Message::new(
        "edged",
        "meta",
        "patch",
        format!("default/nodepatch/{node}"),
        json!("{\"status\":{}}"),
    );
    bus.handle()
        .send("websocket", report.clone())
        .await
        .expect("queued");
    let up = loop {
        let msg = within("the report at the cloud", cloud.receiver.recv())
            .await
            .expect("link up");
        if msg.router.operation != "keepalive" {
            break msg;
        }
    };
    assert_eq!(up.id(), report.id());
    assert_eq!(up.router.resource, report.router.resource);

    let stopped = bus.shutdown(Duration::from_secs(10)).await;
    assert!(stopped.is_clean(), "{stopped:?}");
    cloud_shutdown.cancel();
    assert!(dir.path().join("data/edgehub.db").exists());
}
