//! EdgeController against a real cloudcore, with the test as the edge node
//! over the real link (mutual TLS WebSocket) and kubectl as the user:
//! node registration, node status, Lease; a pod bound to the node arrives
//! with its ConfigMap and Secret, later ConfigMap changes follow, pod
//! status from the edge shows in kubectl, a deletion completes through the
//! edge; a node creates the mirror pods of its static pods; and a node
//! cannot read or write what is not its own.

mod support;

use kedge_message::{Message, content::ObjectResp};
use kedge_transport::link::Link;
use serde_json::{Value, json};
use support::edge::{DEADLINE, connect_as, is_object, join, keep_alive, wait_for};
use support::{Backend, Cloud};

const NODE: &str = "edge-1";
/// CloudHub's count of messages that named another node.
const OTHER_NODE_REFUSALS: &str = "kedge_cloudhub_refused_total{reason=\"other_node\"}";

/// Sends a request as edged would and waits for its reply.
async fn request(
    link: &mut Link,
    seen: &mut Vec<Message>,
    operation: &str,
    resource: &str,
    content: Value,
) -> Message {
    let msg = Message::new("edged", "meta", operation, resource, content);
    link.sender.send(msg.clone()).await.expect("request sent");
    let id = msg.id().to_owned();
    wait_for(
        link,
        seen,
        &format!("the reply to {operation} {resource}"),
        |m| m.parent_id() == id,
    )
    .await
}

fn object_of(reply: &Message) -> Value {
    let resp = ObjectResp::from_content(&reply.content)
        .unwrap_or_else(|| panic!("not an object reply: {}", reply.content));
    assert_eq!(
        resp.err,
        Value::Null,
        "the request failed: {}",
        reply.content
    );
    resp.object
}

#[tokio::test]
async fn an_edge_node_registers_receives_its_pods_and_reports_their_status() {
    let cloud = Cloud::start(Backend::start(false).await).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let credentials = join(&cloud, dir.path(), NODE).await;
    let mut link = connect_as(&cloud, &credentials, NODE)
        .await
        .expect("the node connects");
    let _alive = keep_alive(&link);
    let mut seen = Vec::new();

    // Registration: the Node is created with the edge label.
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
        "status": {"capacity": {"cpu": "2", "memory": "2Gi", "pods": "110"},
                   "allocatable": {"cpu": "2", "memory": "2Gi", "pods": "110"}},
    });
    let reply = request(
        &mut link,
        &mut seen,
        "insert",
        &format!("default/node/{NODE}"),
        node,
    )
    .await;
    assert_eq!(reply.router.source, "edgecontroller");
    assert_eq!(reply.router.operation, "response");
    assert_eq!(reply.router.resource, format!("default/node/{NODE}"));
    let created = object_of(&reply);
    assert_eq!(
        created["metadata"]["labels"]["node-role.kubernetes.io/edge"],
        ""
    );

    // Status: Ready, as a strategic-merge patch in a JSON string.
    let now = "2026-01-01T00:00:00Z";
    let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "True",
        "reason": "KubeletReady", "message": "edge node ready",
        "lastHeartbeatTime": now, "lastTransitionTime": now}]}});
    let reply = request(
        &mut link,
        &mut seen,
        "patch",
        &format!("default/nodepatch/{NODE}"),
        Value::String(patch.to_string()),
    )
    .await;
    object_of(&reply);
    cloud
        .eventually(
            &[
                "get",
                "node",
                NODE,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ],
            |out| out.trim() == "True",
        )
        .await;

    // The Lease.
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": NODE, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": NODE, "leaseDurationSeconds": 40, "renewTime": "2026-01-01T00:00:00.000000Z"}});
    let reply = request(
        &mut link,
        &mut seen,
        "insert",
        &format!("kube-node-lease/lease/{NODE}"),
        lease,
    )
    .await;
    assert_eq!(object_of(&reply)["spec"]["holderIdentity"], NODE);

    // A pod for the node, with a ConfigMap volume and a Secret in env.
    cloud.ok(&[
        "create",
        "configmap",
        "cfg",
        "--from-literal=greeting=hello",
    ]);
    cloud.ok(&[
        "create",
        "secret",
        "generic",
        "sec",
        "--from-literal=password=s3cret",
    ]);
    cloud.ok(&["create", "configmap", "other", "--from-literal=x=1"]);
    cloud.ok_with_input(
        &["apply", "-f", "-"],
        &format!(
            r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "web", "namespace": "default"}},
  "spec": {{"nodeName": "{NODE}",
    "volumes": [{{"name": "config", "configMap": {{"name": "cfg"}}}}],
    "containers": [{{"name": "web", "image": "busybox",
      "env": [{{"name": "PASSWORD", "valueFrom": {{"secretKeyRef": {{"name": "sec", "key": "password"}}}}}}],
      "volumeMounts": [{{"name": "config", "mountPath": "/config"}}]}}]}}}}"#
        ),
    );
    let configmap = wait_for(&mut link, &mut seen, "the pod's configmap", |m| {
        m.router.resource == "default/configmap/cfg"
    })
    .await;
    assert_eq!(configmap.content["data"]["greeting"], "hello");
    assert_eq!(configmap.content["kind"], "ConfigMap");
    wait_for(&mut link, &mut seen, "the pod's secret", |m| {
        m.router.resource == "default/secret/sec"
    })
    .await;
    let pod = wait_for(&mut link, &mut seen, "the pod", |m| {
        is_object(m, "insert", "default/pod/web")
    })
    .await;
    assert_eq!(pod.router.source, "edgecontroller");
    assert_eq!(pod.router.group, "resource");
    assert_eq!(pod.content["spec"]["nodeName"], NODE);
    assert!(!pod.header.resource_version.is_empty());
    assert!(
        !seen
            .iter()
            .any(|m| m.router.resource.contains("configmap/other")),
        "a ConfigMap no pod on the node uses is not sent"
    );

    // Its status from the edge.
    let status = json!({"status": {"phase": "Running", "podIP": "10.88.0.5",
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [{"name": "web", "ready": true, "restartCount": 0,
            "image": "busybox", "imageID": "", "state": {"running": {"startedAt": now}}}]}});
    let reply = request(
        &mut link,
        &mut seen,
        "patch",
        "default/podpatch/web",
        Value::String(status.to_string()),
    )
    .await;
    assert_eq!(object_of(&reply)["status"]["phase"], "Running");
    cloud
        .eventually(&["get", "pod", "web", "-o", "wide"], |out| {
            out.contains("Running") && out.contains("10.88.0.5") && out.contains(NODE)
        })
        .await;

    // A ConfigMap change follows to the node.
    cloud.ok(&[
        "patch",
        "configmap",
        "cfg",
        "-p",
        r#"{"data":{"greeting":"bonjour"}}"#,
    ]);
    let changed = wait_for(&mut link, &mut seen, "the changed configmap", |m| {
        is_object(m, "update", "default/configmap/cfg")
            && m.content["data"]["greeting"] == "bonjour"
    })
    .await;
    assert!(!changed.header.resource_version.is_empty());

    // Queries: what the node's pods use, and nothing else.
    let reply = request(
        &mut link,
        &mut seen,
        "query",
        "default/secret/sec",
        Value::Null,
    )
    .await;
    assert_eq!(reply.content["kind"], "Secret");
    let reply = request(
        &mut link,
        &mut seen,
        "query",
        "default/configmap/other",
        Value::Null,
    )
    .await;
    assert_eq!(reply.content["ErrStatus"]["code"], 403, "{}", reply.content);

    // Deletion: graceful in the cloud, completed by the node.
    let mut delete = cloud.kubectl_command(&["delete", "pod", "web", "--wait=false"]);
    assert!(delete.status().expect("kubectl").success());
    let terminating = wait_for(&mut link, &mut seen, "the pod marked for deletion", |m| {
        m.router.resource == "default/pod/web"
            && !m.content["metadata"]["deletionTimestamp"].is_null()
    })
    .await;
    let uid = terminating.content["metadata"]["uid"].clone();
    let reply = request(
        &mut link,
        &mut seen,
        "delete",
        "default/pod/web",
        json!({"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}),
    )
    .await;
    assert_eq!(reply.content, "OK");
    // The deletion may arrive before the reply to the request that caused it.
    if !seen
        .iter()
        .any(|m| is_object(m, "delete", "default/pod/web"))
    {
        wait_for(&mut link, &mut seen, "the pod's deletion", |m| {
            is_object(m, "delete", "default/pod/web")
        })
        .await;
    }
    cloud
        .eventually(&["get", "pods", "-o", "name"], |out| {
            !out.contains("pod/web")
        })
        .await;
    cloud.stop().await;
}

#[tokio::test]
async fn a_node_cannot_touch_another_nodes_pods_or_node() {
    let cloud = Cloud::start(Backend::start(false).await).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let credentials = join(&cloud, dir.path(), NODE).await;
    let mut link = connect_as(&cloud, &credentials, NODE)
        .await
        .expect("the node connects");
    let _alive = keep_alive(&link);
    let mut seen = Vec::new();
    cloud.ok_with_input(
        &["apply", "-f", "-"],
        r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "theirs", "namespace": "default"},
  "spec": {"nodeName": "edge-2", "containers": [{"name": "c", "image": "busybox"}]}}"#,
    );
    cloud
        .eventually(&["get", "pod", "theirs", "-o", "name"], |out| {
            out.contains("theirs")
        })
        .await;

    // Refused whether or not EdgeController's cache holds the pod yet:
    // it is not bound to this node either way.
    let status = json!({"status": {"phase": "Failed"}}).to_string();
    let reply = request(
        &mut link,
        &mut seen,
        "patch",
        "default/podpatch/theirs",
        Value::String(status),
    )
    .await;
    assert_eq!(reply.content["ErrStatus"]["code"], 403, "{}", reply.content);
    let delete = request(
        &mut link,
        &mut seen,
        "delete",
        "default/pod/theirs",
        json!({}),
    )
    .await;
    assert_eq!(
        delete.content["ErrStatus"]["code"], 403,
        "{}",
        delete.content
    );
    // A node may create only the mirror pods of its own static pods.
    let pod = |name: &str, node: &str, mirror: bool| {
        let annotations = if mirror {
            json!({"kubernetes.io/config.mirror": "abc", "kubernetes.io/config.source": "file"})
        } else {
            json!({})
        };
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "annotations": annotations},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}})
    };
    for (name, node, mirror) in [
        ("plain-edge-1", NODE, false),
        ("mirror-edge-2", "edge-2", true),
    ] {
        let resource = format!("default/pod/{name}");
        let reply = request(
            &mut link,
            &mut seen,
            "insert",
            &resource,
            pod(name, node, mirror),
        )
        .await;
        assert_eq!(reply.content["ErrStatus"]["code"], 403, "{}", reply.content);
    }
    let reply = request(
        &mut link,
        &mut seen,
        "insert",
        "default/pod/static-edge-1",
        pod("static-edge-1", NODE, true),
    )
    .await;
    object_of(&reply);
    assert_eq!(
        cloud
            .ok(&[
                "get",
                "pod",
                "static-edge-1",
                "-o",
                "jsonpath={.spec.nodeName}"
            ])
            .trim(),
        NODE,
        "the mirror pod is in the API"
    );
    let pods = cloud.ok(&["get", "pods", "-o", "name"]);
    assert!(
        !pods.contains("plain-edge-1") && !pods.contains("mirror-edge-2"),
        "refused pods were not created: {pods}"
    );

    // Another node's Node: CloudHub refuses it before any module sees it.
    let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}});
    let before = support::metric(&cloud.monitor, OTHER_NODE_REFUSALS)
        .await
        .unwrap_or(0.0);
    link.sender
        .send(Message::new(
            "edged",
            "meta",
            "patch",
            "default/nodepatch/edge-2",
            Value::String(patch.to_string()),
        ))
        .await
        .expect("sent");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while support::metric(&cloud.monitor, OTHER_NODE_REFUSALS)
        .await
        .unwrap_or(0.0)
        <= before
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "CloudHub did not count the refusal"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_ne!(
        cloud
            .ok(&["get", "pod", "theirs", "-o", "jsonpath={.status.phase}"])
            .trim(),
        "Failed",
        "the other node's pod is untouched"
    );
    assert!(
        cloud
            .ok(&["get", "pod", "theirs", "-o", "name"])
            .contains("theirs"),
        "and not deleted"
    );
    let refused = support::metric(&cloud.monitor, "kedge_edgecontroller_refused_total").await;
    assert!(
        refused.is_some_and(|n| n >= 2.0),
        "refusals counted: {refused:?}"
    );
    cloud.stop().await;
}
