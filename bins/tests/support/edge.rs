//! A test's own edge node over the real link: it joins with the token,
//! connects over WebSocket with its certificate, and reads what the cloud
//! sends.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kedge_message::Message;
use kedge_transport::bootstrap::{self, BootstrapConfig, EdgeCredentials};
use kedge_transport::limits::LinkLimits;
use kedge_transport::link::Link;
use kedge_transport::metrics::LinkMetrics;
use kedge_transport::ws::{self, ConnectError, ConnectTarget};

use super::Cloud;

/// How long one step may take.
pub const DEADLINE: Duration = Duration::from_secs(60);
/// KubeEdge's default project id.
pub const PROJECT: &str = "e632aba927ea4ac2b575ec1603d56f10";

/// Where a test node keeps its certificates under `dir`, and how it asks
/// for them.
pub fn bootstrap_config(cloud: &Cloud, dir: &Path, node: &str, token: &str) -> BootstrapConfig {
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

/// `node`'s certificates, requested with the join token.
pub async fn join(cloud: &Cloud, dir: &Path, node: &str) -> EdgeCredentials {
    let token = cloud.join_token();
    bootstrap::ensure_certificates(&bootstrap_config(cloud, dir, node, &token))
        .await
        .expect("the node joins with the token")
}

/// A WebSocket link to CloudHub as `node`, with `credentials`.
pub async fn connect_as(
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

/// The next message from the cloud, within the deadline.
pub async fn next(link: &mut Link, what: &str) -> Message {
    tokio::time::timeout(DEADLINE, link.receiver.recv())
        .await
        .unwrap_or_else(|_| panic!("no {what} within {DEADLINE:?}"))
        .unwrap_or_else(|| panic!("the link closed before {what}"))
}

/// Keeps `link` alive in the background.
pub fn keep_alive(link: &Link) -> tokio::task::JoinHandle<()> {
    let sender = link.sender.clone();
    tokio::spawn(async move {
        while sender.send(Message::keepalive()).await.is_ok() {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    })
}

/// Reads messages from the cloud, acknowledging every message that
/// carries an object (replies included) as MetaManager would, until one
/// satisfies `wanted`; the others are collected in `seen`.
pub async fn wait_for(
    link: &mut Link,
    seen: &mut Vec<Message>,
    what: &str,
    wanted: impl Fn(&Message) -> bool,
) -> Message {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let msg = tokio::time::timeout_at(deadline, link.receiver.recv())
            .await
            .unwrap_or_else(|_| {
                let seen: Vec<String> = seen
                    .iter()
                    .map(|m| format!("{} {}", m.router.operation, m.router.resource))
                    .collect();
                panic!("no {what} within {DEADLINE:?}; seen: {seen:#?}")
            })
            .unwrap_or_else(|| panic!("the link closed before {what}"));
        if !msg.header.resource_version.is_empty() {
            link.sender.send(msg.ack()).await.expect("ack sent");
        }
        if wanted(&msg) {
            return msg;
        }
        seen.push(msg);
    }
}

/// Whether `msg` is a request (not a reply) with `operation` on `resource`.
pub fn is_object(msg: &Message, operation: &str, resource: &str) -> bool {
    msg.router.operation == operation && msg.router.resource == resource && !msg.is_reply()
}
