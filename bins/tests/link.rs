//! The cloud-edge link against a real cloudcore: `keadm gettoken`, a node
//! joining with the token over the certificate server, a WebSocket session
//! over mutual TLS, reliable delivery recorded in ObjectSyncs, and the
//! refusals: forged tokens, a node speaking as another.

mod support;

use std::time::Duration;

use kedge_transport::bootstrap;
use kedge_transport::ws::ConnectError;
use support::edge::{DEADLINE, bootstrap_config, connect_as, join, keep_alive, next};
use support::edgecore::EdgeCore;
use support::{Backend, Cloud};

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
    let token = cloud.join_token();
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
    let mut cloud = Cloud::start(Backend::start(false).await).await;
    let mut edge = EdgeCore::start(&cloud, "edge-real", None, |_| {});

    sessions(&cloud, 1.0).await;
    assert!(
        edge.dir().join("certs/server.crt").exists(),
        "the node certificate is kept"
    );
    // cloudcore goes away and comes back: edgecore reconnects by itself,
    // within the window cloudcore gave as it stopped (one node: 1 ms).
    cloud.restart().await;
    sessions(&cloud, 1.0).await;
    assert_eq!(
        edge.log_count("the cloud stops; reconnecting within its window window=1ms"),
        1,
        "edgecore did not take cloudcore's reconnect window; log:\n{}",
        edge.log()
    );

    edge.stop().await;
    sessions(&cloud, 0.0).await;
    cloud.stop().await;
}
