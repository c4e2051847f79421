//! MetaManager over a real bus, with recording stand-ins for EdgeHub
//! (`websocket`) and edged, in paused time.

use std::path::Path;
use std::time::Duration;

use kedge_bus::{BusBuilder, BusConfig, BusHandle, RunningBus};
use kedge_message::{Message, content, operation};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::NOT_CONNECTED;
use crate::edgehub::routing::connection_event;
use crate::metamanager::{MetaManager, MetaManagerSettings};
use crate::testing::Recorder;

struct Harness {
    bus: RunningBus,
    handle: BusHandle,
    cloud: mpsc::UnboundedReceiver<Message>,
    edged: mpsc::UnboundedReceiver<Message>,
}

/// A deadline for anything the test waits on.
const WAIT: Duration = Duration::from_secs(30);

fn start(dir: &Path) -> Harness {
    let (cloud_tx, cloud) = mpsc::unbounded_channel();
    let (edged_tx, edged) = mpsc::unbounded_channel();
    let mut builder = BusBuilder::new(BusConfig::default());
    let settings = MetaManagerSettings::new(dir.join("edgecore.db"), "edge-1");
    builder
        .register(MetaManager::new(settings), true)
        .expect("metamanager registers");
    builder
        .register(
            Recorder {
                name: "websocket",
                group: "hub",
                seen: cloud_tx,
            },
            true,
        )
        .expect("hub registers");
    builder
        .register(
            Recorder {
                name: "edged",
                group: "edged",
                seen: edged_tx,
            },
            true,
        )
        .expect("edged registers");
    let bus = builder.build(&mut Registry::default()).start();
    let handle = bus.handle();
    Harness {
        bus,
        handle,
        cloud,
        edged,
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Message>) -> Message {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a message in time")
        .expect("the channel is open")
}

fn pod(name: &str, rv: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "default", "resourceVersion": rv, "uid": format!("uid-{name}")},
           "spec": {"nodeName": "edge-1", "containers": [{"name": "c", "image": "busybox"}]}})
}

fn from_cloud(op: &str, resource: &str, object: Value) -> Message {
    let rv = object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    Message::new("edgecontroller", "resource", op, resource, object).with_resource_version(rv)
}

impl Harness {
    /// Sends a cloud message to group `meta` as EdgeHub does and returns
    /// the acknowledgement MetaManager sends back.
    async fn deliver(&mut self, msg: Message) -> Message {
        self.handle
            .send_to_group("meta", msg.clone())
            .await
            .expect("delivered");
        let ack = next(&mut self.cloud).await;
        assert_eq!(ack.parent_id(), msg.id(), "the ACK names the message");
        ack
    }

    async fn query(&self, resource: &str) -> Message {
        let request = Message::new("edged", "meta", "query", resource, Value::Null);
        self.handle
            .send_sync("metamanager", request, Some(WAIT))
            .await
            .expect("answered")
    }

    async fn link(&self, up: bool) {
        self.handle
            .send("metamanager", connection_event("meta", up))
            .await
            .expect("delivered");
    }

    async fn stop(self) {
        let report = self.bus.shutdown(Duration::from_secs(5)).await;
        assert!(report.is_clean(), "{report:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn cloud_objects_are_stored_forwarded_acked_and_answered_offline() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path());
    let insert = from_cloud("insert", "default/pod/web", pod("web", "5"));
    let ack = h.deliver(insert.clone()).await;
    assert_eq!(ack.router.operation, operation::RESPONSE);
    assert_eq!(
        ack.router.source, "edgecontroller",
        "source copied, as KubeEdge"
    );
    assert_eq!(ack.router.group, "resource");
    assert_eq!(ack.router.resource, "default/pod/web");
    assert!(content::is_ok(&ack.content));
    let forwarded = next(&mut h.edged).await;
    assert_eq!(forwarded.id(), insert.id(), "edged gets the message itself");

    let reply = h.query("default/pod/web").await;
    assert_eq!(reply.router.operation, operation::RESPONSE);
    assert_eq!(reply.content, json!([pod("web", "5")]));
    let all = h.query("default/pod").await;
    assert_eq!(all.content.as_array().map(Vec::len), Some(1));
    let missing = h.query("default/pod/other").await;
    assert_eq!(missing.content, json!([]), "an empty answer is NotFound");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_older_version_is_acked_but_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path());
    h.deliver(from_cloud("insert", "default/pod/web", pod("web", "7")))
        .await;
    let stale = h
        .deliver(from_cloud("update", "default/pod/web", pod("web", "6")))
        .await;
    assert!(
        content::is_ok(&stale.content),
        "acked: the cloud stops resending"
    );
    let reply = h.query("default/pod/web").await;
    assert_eq!(reply.content[0]["metadata"]["resourceVersion"], "7");
    assert_eq!(
        next(&mut h.edged).await.header.resource_version,
        "7",
        "edged got the newer version"
    );
    h.deliver(from_cloud("update", "default/pod/web", pod("web", "8")))
        .await;
    assert_eq!(
        next(&mut h.edged).await.header.resource_version,
        "8",
        "and not the older one"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_delete_removes_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path());
    h.deliver(from_cloud("insert", "default/pod/web", pod("web", "7")))
        .await;
    let other_uid =
        json!({"metadata": {"name": "web", "namespace": "default", "uid": "someone-else"}});
    h.deliver(from_cloud("delete", "default/pod/web", other_uid))
        .await;
    assert_eq!(
        h.query("default/pod/web")
            .await
            .content
            .as_array()
            .map(Vec::len),
        Some(1),
        "a delete for another uid keeps the re-created pod"
    );
    let delete = from_cloud("delete", "default/pod/web", pod("web", "8"));
    h.deliver(delete.clone()).await;
    assert_eq!(h.query("default/pod/web").await.content, json!([]));
    let mut forwarded = Vec::new();
    while let Ok(msg) = h.edged.try_recv() {
        forwarded.push(msg.id().to_owned());
    }
    assert!(forwarded.contains(&delete.id().to_owned()), "edged is told");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn queries_go_to_the_cloud_when_online_and_not_cached() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path());
    h.link(true).await;
    let asking = tokio::spawn({
        let handle = h.handle.clone();
        async move {
            let request = Message::new(
                "edged",
                "meta",
                "query",
                "default/configmap/cfg",
                Value::Null,
            );
            handle.send_sync("metamanager", request, Some(WAIT)).await
        }
    });
    let upstream = next(&mut h.cloud).await;
    assert_eq!(upstream.router.operation, "query");
    assert_eq!(upstream.router.resource, "default/configmap/cfg");
    assert!(upstream.header.sync, "a synchronous request to the cloud");
    let configmap = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cfg", "namespace": "default", "resourceVersion": "40"}, "data": {"k": "v"}});
    let cloud_reply = upstream
        .response(configmap.clone())
        .with_resource_version("40");
    h.handle
        .send_response(cloud_reply.clone())
        .expect("MetaManager waits");
    let answer = asking.await.unwrap().expect("answered");
    assert_eq!(answer.content, json!([configmap]));
    let ack = next(&mut h.cloud).await;
    assert_eq!(
        ack.parent_id(),
        cloud_reply.id(),
        "the cloud's answer is acked"
    );
    assert!(content::is_ok(&ack.content));

    // Cached now: answered locally, online or not.
    assert_eq!(
        h.query("default/configmap/cfg").await.content,
        json!([configmap])
    );
    h.link(false).await;
    assert_eq!(
        h.query("default/configmap/cfg").await.content,
        json!([configmap])
    );
    assert!(
        h.cloud.try_recv().is_err(),
        "nothing more went to the cloud"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn remote_requests_fail_at_once_offline_and_on_timeout_online() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path());
    let insert = Message::new(
        "edged",
        "meta",
        "insert",
        "default/node/edge-1",
        json!({"metadata": {"name": "edge-1"}}),
    );
    let reply = h
        .handle
        .send_sync("metamanager", insert, Some(WAIT))
        .await
        .expect("answered");
    assert_eq!(reply.router.operation, operation::ERROR);
    assert_eq!(reply.content, json!(NOT_CONNECTED));

    h.link(true).await;
    let started = tokio::time::Instant::now();
    let lease = Message::new(
        "edged",
        "meta",
        "query",
        "kube-node-lease/lease/edge-1",
        Value::Null,
    );
    let reply = h
        .handle
        .send_sync("metamanager", lease, Some(Duration::from_secs(120)))
        .await
        .expect("answered");
    assert_eq!(reply.router.operation, operation::ERROR);
    assert!(
        started.elapsed() >= Duration::from_secs(60),
        "waited for remoteQueryTimeout"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn status_patches_store_the_returned_pod() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path());
    h.deliver(from_cloud("insert", "default/pod/web", pod("web", "5")))
        .await;
    h.link(true).await;
    let patch = Message::new(
        "edged",
        "meta",
        "patch",
        "default/podpatch/web",
        json!("{\"status\":{\"phase\":\"Running\"}}"),
    );
    let asking = tokio::spawn({
        let handle = h.handle.clone();
        async move { handle.send_sync("metamanager", patch, Some(WAIT)).await }
    });
    let upstream = loop {
        let msg = next(&mut h.cloud).await;
        if msg.router.operation == "patch" {
            break msg;
        }
    };
    let mut running = pod("web", "6");
    running["status"] = json!({"phase": "Running"});
    let cloud_reply = upstream.response(json!({"Object": running, "Err": null}));
    h.handle.send_response(cloud_reply).expect("waiting");
    let answer = asking.await.unwrap().expect("answered");
    assert_eq!(answer.content["Object"]["status"]["phase"], "Running");
    assert_eq!(
        h.query("default/pod/web").await.content[0]["status"]["phase"],
        "Running",
        "the cloud's pod replaced the stored one"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn objects_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path());
    h.deliver(from_cloud("insert", "default/pod/web", pod("web", "5")))
        .await;
    h.stop().await;
    let h = start(dir.path());
    assert_eq!(
        h.query("default/pod/web").await.content,
        json!([pod("web", "5")])
    );
    h.stop().await;
}

// === with the real EdgeHub over an in-memory link ===

/// Hands out one in-memory link, then fails.
struct OneLink(std::sync::Mutex<Option<kedge_transport::link::Link>>);

impl crate::edgehub::Dialer for OneLink {
    fn dial(&self) -> crate::edgehub::DialFuture {
        let link = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        Box::pin(async move {
            link.ok_or_else(|| crate::edgehub::DialError::Unavailable("used up".to_owned()))
        })
    }
}

/// The next message the cloud end receives that is not a keepalive.
async fn upstream(cloud: &mut kedge_transport::link::Link) -> Message {
    loop {
        let msg = tokio::time::timeout(WAIT, cloud.receiver.recv())
            .await
            .expect("a message in time")
            .expect("the link is up");
        if msg.router.operation != operation::KEEPALIVE {
            return msg;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn through_edgehub_objects_are_acked_and_queries_answered_by_the_cloud() {
    use kedge_transport::link::{Peer, memory_pair};
    let peer = |name: &str| Peer {
        node_id: name.to_owned(),
        project_id: "project".to_owned(),
        address: None,
    };
    let (mut cloud, edge) = memory_pair(peer("edge-1"), peer("cloudhub"), 64);
    let dir = tempfile::tempdir().unwrap();
    let hub = crate::edgehub::EdgeHub::new(
        crate::edgehub::EdgeHubSettings::new(dir.path().join("edgehub.db")),
        std::sync::Arc::new(OneLink(std::sync::Mutex::new(Some(edge)))),
    );
    let (edged_tx, mut edged) = mpsc::unbounded_channel();
    let mut builder = BusBuilder::new(BusConfig::default());
    builder.register(hub, true).expect("edgehub registers");
    builder
        .register(
            MetaManager::new(MetaManagerSettings::new(
                dir.path().join("edgecore.db"),
                "edge-1",
            )),
            true,
        )
        .expect("metamanager registers");
    builder
        .register(
            Recorder {
                name: "edged",
                group: "edged",
                seen: edged_tx,
            },
            true,
        )
        .expect("edged registers");
    let bus = builder.build(&mut Registry::default()).start();
    let handle = bus.handle();

    let insert = from_cloud("insert", "default/pod/web", pod("web", "5"));
    cloud.sender.send(insert.clone()).await.expect("sent down");
    let ack = upstream(&mut cloud).await;
    assert_eq!(
        (ack.parent_id(), ack.router.operation.as_str(), &ack.content),
        (insert.id(), "response", &json!("OK")),
        "the cloud gets the ACK of its object"
    );
    assert_eq!(next(&mut edged).await.id(), insert.id());

    let asking = tokio::spawn({
        let handle = handle.clone();
        async move {
            let request = Message::new(
                "edged",
                "meta",
                "query",
                "default/secret/token",
                Value::Null,
            );
            handle.send_sync("metamanager", request, Some(WAIT)).await
        }
    });
    let query = upstream(&mut cloud).await;
    assert_eq!(query.router.resource, "default/secret/token");
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "token", "namespace": "default", "resourceVersion": "77"}, "data": {"t": "eA=="}});
    // As EdgeController answers: its own source, group `resource`.
    let reply = Message::new(
        "edgecontroller",
        "resource",
        "response",
        "default/secret/token",
        secret.clone(),
    )
    .with_parent_id(query.id())
    .with_resource_version("77");
    cloud.sender.send(reply.clone()).await.expect("sent down");
    let answer = asking.await.unwrap().expect("answered");
    assert_eq!(answer.content, json!([secret]));
    let reply_ack = upstream(&mut cloud).await;
    assert_eq!(reply_ack.parent_id(), reply.id(), "the answer is acked too");

    let report = bus.shutdown(Duration::from_secs(5)).await;
    assert!(report.is_clean(), "{report:?}");
}
