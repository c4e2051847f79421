//! The cloud-edge link against a real cloudcore: `keadm gettoken`, a node
//! joining with the token over the certificate server, a WebSocket session
//! over mutual TLS, reliable delivery recorded in ObjectSyncs, and the
//! refusals: forged tokens, a node speaking as another.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use kedge_message::Message;
use kedge_transport::bootstrap::{self, BootstrapConfig, EdgeCredentials};
use kedge_transport::limits::LinkLimits;
use kedge_transport::link::Link;
use kedge_transport::metrics::LinkMetrics;
use kedge_transport::ws::{self, ConnectError, ConnectTarget};
use support::{Backend, Cloud};

const DEADLINE: Duration = Duration::from_secs(60);
const PROJECT: &str = "e632aba927ea4ac2b575ec1603d56f10";

fn gettoken(cloud: &Cloud) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_keadm"))
        .args(["gettoken", "--kube-config"])
        .arg(&cloud.kubeconfig)
        .output()
        .expect("keadm runs");
    assert!(
        output.status.success(),
        "keadm gettoken failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn bootstrap_config(cloud: &Cloud, dir: &Path, node: &str, token: &str) -> BootstrapConfig {
    let hub = cloud.config().modules.cloud_hub;
    BootstrapConfig {
        node_name: node.to_owned(),
        server: format!("https://127.0.0.1:{}", hub.https.port),
        token: token.to_owned(),
        ca_file: dir.join("ca/rootCA.crt"),
        cert_file: dir.join("certs/server.crt"),
        key_file: dir.join("certs/server.key"),
        request_timeout: Duration::from_secs(10),
    }
}

async fn join(cloud: &Cloud, dir: &Path, node: &str) -> EdgeCredentials {
    let token = gettoken(cloud);
    bootstrap::ensure_certificates(&bootstrap_config(cloud, dir, node, &token))
        .await
        .expect("the node joins with the token")
}

async fn connect_as(
    cloud: &Cloud,
    credentials: &EdgeCredentials,
    node: &str,
) -> Result<Link, ConnectError> {
    let port = cloud.config().modules.cloud_hub.websocket.port;
    let target = ConnectTarget::new(format!("127.0.0.1:{port}"), node, PROJECT);
    let tls = credentials.client_config().expect("client TLS");
    ws::connect(
        &target,
        Arc::new(tls),
        &LinkLimits::client(),
        LinkMetrics::default(),
    )
    .await
}

/// The next message that is not a keepalive reply, within the deadline.
async fn next(link: &mut Link, what: &str) -> Message {
    tokio::time::timeout(DEADLINE, link.receiver.recv())
        .await
        .unwrap_or_else(|_| panic!("no {what} within {DEADLINE:?}"))
        .unwrap_or_else(|| panic!("the link closed before {what}"))
}

/// Keeps `link` alive in the background.
fn keep_alive(link: &Link) -> tokio::task::JoinHandle<()> {
    let sender = link.sender.clone();
    tokio::spawn(async move {
        while sender.send(Message::keepalive()).await.is_ok() {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    })
}

fn jsonpath(cloud: &Cloud, args: &[&str]) -> String {
    cloud.ok(args).trim().to_owned()
}

#[tokio::test]
async fn objects_reach_a_joined_node_until_acknowledged_and_are_recorded() {
    let mut cloud = Cloud::start(Backend::start(false).await).await;
    let edge_dir = tempfile::tempdir().expect("temp dir");
    let node = "edge-1";

    // An object the node is to hold, recorded as not yet acknowledged, as
    // an ObjectSync at resourceVersion 0 says.
    cloud.ok(&["create", "configmap", "cfg", "--from-literal=k=1"]);
    let uid = jsonpath(
        &cloud,
        &["get", "configmap", "cfg", "-o", "jsonpath={.metadata.uid}"],
    );
    let sync = format!("{node}.{uid}");
    cloud.ok_with_input(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: reliablesyncs.kubeedge.io/v1alpha1\nkind: ObjectSync\nmetadata:\n  name: {sync}\n  namespace: default\nspec:\n  objectAPIVersion: v1\n  objectKind: ConfigMap\n  objectName: cfg\n"
        ),
    );
    cloud.restart().await;

    let credentials = join(&cloud, edge_dir.path(), node).await;
    let mut link = connect_as(&cloud, &credentials, node)
        .await
        .expect("the node connects");
    let _alive = keep_alive(&link);

    // On connection the node is sent what it lacks; its ACK is recorded.
    let first = next(&mut link, "the configmap").await;
    assert_eq!(first.router.resource, "default/configmap/cfg");
    assert_eq!(first.router.operation, "update");
    let version = jsonpath(
        &cloud,
        &[
            "get",
            "configmap",
            "cfg",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ],
    );
    assert_eq!(first.header.resource_version, version);
    link.sender.send(first.ack()).await.expect("acked");
    let status = [
        "get",
        "objectsync",
        &sync,
        "-o",
        "jsonpath={.status.objectResourceVersion}",
    ];
    cloud.eventually(&status, |out| out.trim() == version).await;

    // A change is sent; unacknowledged, it comes again with the same id.
    cloud.ok(&["patch", "configmap", "cfg", "-p", r#"{"data":{"k":"2"}}"#]);
    let update = next(&mut link, "the update").await;
    assert_eq!(update.content["data"]["k"], "2");
    let again = next(&mut link, "the resend").await;
    assert_eq!(again.header.id, update.header.id, "resent with its id");
    link.sender.send(again.ack()).await.expect("acked");
    cloud
        .eventually(&status, |out| out.trim() == update.header.resource_version)
        .await;

    // A deletion is sent, and once acknowledged the record goes.
    cloud.ok(&["delete", "configmap", "cfg"]);
    let deletion = next(&mut link, "the deletion").await;
    assert_eq!(deletion.router.operation, "delete");
    assert_eq!(deletion.content["metadata"]["uid"], uid.as_str());
    link.sender.send(deletion.ack()).await.expect("acked");
    cloud
        .eventually(&["get", "objectsync", "-o", "name"], |out| {
            !out.contains(&sync)
        })
        .await;
    cloud.stop().await;
}

#[tokio::test]
async fn tokens_and_node_identities_are_enforced() {
    let cloud = Cloud::start(Backend::start(false).await).await;
    let token = gettoken(&cloud);
    let (ca_hash, jwt) = token.split_once('.').expect("hash.jwt");
    assert_eq!(ca_hash.len(), 64, "a SHA-256 hex CA hash");
    assert_eq!(jwt.split('.').count(), 3, "a JWT");

    // A token signed with another key is refused, and so is one for
    // another CA.
    let forged = format!(
        "{ca_hash}.{}",
        kedge_transport::token::make_jwt(b"not the CA key", u64::MAX / 2)
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let refused =
        bootstrap::ensure_certificates(&bootstrap_config(&cloud, dir.path(), "edge-x", &forged))
            .await;
    assert!(refused.is_err(), "a forged token joined");
    let other_ca = format!("{}.{jwt}", "0".repeat(64));
    let dir = tempfile::tempdir().expect("temp dir");
    let refused =
        bootstrap::ensure_certificates(&bootstrap_config(&cloud, dir.path(), "edge-x", &other_ca))
            .await;
    assert!(refused.is_err(), "a token for another CA joined");

    // Node A's certificate cannot connect as node B.
    let dir = tempfile::tempdir().expect("temp dir");
    let a = join(&cloud, dir.path(), "node-a").await;
    match connect_as(&cloud, &a, "node-b").await {
        Err(ConnectError::Refused { status, .. }) => assert_eq!(status, 403),
        other => panic!("node-a connected as node-b: {other:?}"),
    }
    // As itself it may, and a second connection replaces the first.
    let mut first = connect_as(&cloud, &a, "node-a").await.expect("connects");
    let second = connect_as(&cloud, &a, "node-a").await.expect("connects");
    assert!(
        tokio::time::timeout(DEADLINE, first.receiver.recv())
            .await
            .expect("the first link ends")
            .is_none(),
        "the older connection is closed"
    );
    drop(second);
    cloud.stop().await;
}

/// Waits until cloudcore's `kedge_cloudhub_sessions` gauge reads `count`.
async fn sessions(cloud: &Cloud, count: f64) {
    let wait = async {
        while support::metric(&cloud.monitor, "kedge_cloudhub_sessions").await != Some(count) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    if tokio::time::timeout(DEADLINE, wait).await.is_err() {
        panic!(
            "cloudcore never had {count} sessions; log:\n{}",
            cloud.log()
        );
    }
}

#[tokio::test]
async fn edgecore_joins_with_the_token_and_reconnects_after_a_cloudcore_restart() {
    use kedge_apis::config::edgecore::EdgeCoreConfig;

    let mut cloud = Cloud::start(Backend::start(false).await).await;
    let hub = cloud.config().modules.cloud_hub;
    let dir = tempfile::tempdir().expect("temp dir");
    let printed = Command::new(env!("CARGO_BIN_EXE_edgecore"))
        .arg("--defaultconfig")
        .output()
        .expect("edgecore runs");
    let mut config = EdgeCoreConfig::from_yaml_str(&String::from_utf8_lossy(&printed.stdout))
        .expect("default config");
    let at = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    config.monitor_server.bind_address = format!("127.0.0.1:{}", support::free_port());
    config.database.data_source = at("edgecore.db");
    config.modules.edged.tailored_kubelet_flag.hostname_override = "edge-real".to_owned();
    let edge_hub = &mut config.modules.edge_hub;
    edge_hub.token = gettoken(&cloud);
    edge_hub.http_server = format!("https://127.0.0.1:{}", hub.https.port);
    edge_hub.websocket.server = format!("127.0.0.1:{}", hub.websocket.port);
    edge_hub.tls_ca_file = at("ca/rootCA.crt");
    edge_hub.tls_cert_file = at("certs/server.crt");
    edge_hub.tls_private_key_file = at("certs/server.key");
    let config_path = dir.path().join("edgecore.yaml");
    std::fs::write(&config_path, config.to_yaml().expect("yaml")).expect("written");
    let log = std::fs::File::create(dir.path().join("edgecore.log")).expect("log file");
    let mut edgecore = tokio::process::Command::new(env!("CARGO_BIN_EXE_edgecore"))
        .arg("--config")
        .arg(&config_path)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("edgecore starts");

    sessions(&cloud, 1.0).await;
    assert!(
        dir.path().join("certs/server.crt").exists(),
        "the node certificate is kept"
    );
    // cloudcore goes away and comes back: edgecore reconnects by itself.
    cloud.restart().await;
    sessions(&cloud, 1.0).await;

    let pid = edgecore.id().expect("running").to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let status = tokio::time::timeout(DEADLINE, edgecore.wait())
        .await
        .expect("edgecore stops")
        .expect("wait");
    assert!(status.success(), "edgecore exited with {status}");
    sessions(&cloud, 0.0).await;
    cloud.stop().await;
}
