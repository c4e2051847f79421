//! One edge node's session: its link, its outbound queue and its
//! keepalive timer (protocol.md §2.5, §3.5, §5.2).
//!
//! A session reads the node's messages, acknowledges its queue with the
//! node's `response` messages, refuses messages that speak for another
//! node, and writes the queue out as the window allows. It ends when the
//! link ends, when the node is silent for the keepalive timeout, or when
//! it is told to stop (a newer connection replaced it, or cloudcore
//! stops); it then hands its queue back so a replacing session can carry on.

use std::time::Duration;

use kedge_message::{Message, group, module, operation, resource, resource_type, source};
use kedge_transport::link::{Link, Queued};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::queue::{Acked, NodeQueue, Offered};

/// Where an upstream message goes inside cloudcore.
#[derive(Debug, Clone, PartialEq)]
pub enum Upstream {
    /// A keepalive: it only renews the session.
    Keepalive,
    /// An acknowledgement (or reply) of the downstream message with this id.
    Response(String),
    /// An error report from the edge: logged.
    Error,
    /// To be delivered to a module's group, the resource already prefixed
    /// with `node/<node>/`.
    Deliver {
        /// The group to deliver to.
        group: &'static str,
        /// The message, rewritten.
        message: Box<Message>,
    },
    /// Refused: the message speaks for another node, or cannot be routed.
    Refused(&'static str),
}

/// Resource types whose object is a node: their name must be the
/// session's node.
const NODE_NAMED: [&str; 4] = [
    resource_type::NODE,
    resource_type::NODE_STATUS,
    resource_type::NODE_PATCH,
    resource_type::LEASE,
];

/// Decides what happens to `msg`, read from `node`'s link (protocol.md
/// §2.5): keepalives renew the session, responses acknowledge, user
/// uploads go to the router, the rest goes by source to the
/// dynamiccontroller (`metaserver`), the devicecontroller (`twin`) or the
/// edgecontroller. A message whose resource names another node (a
/// `node/<other>/…` prefix, or a node, node status, node patch or lease
/// object of another name) is refused.
pub fn classify_upstream(node: &str, mut msg: Message) -> Upstream {
    match msg.router.operation.as_str() {
        operation::KEEPALIVE => return Upstream::Keepalive,
        operation::RESPONSE => return Upstream::Response(msg.header.parent_id.clone()),
        operation::ERROR => return Upstream::Error,
        _ => {}
    }
    let res = msg.router.resource.as_str();
    if res.starts_with("node/") {
        return Upstream::Refused("node_prefix");
    }
    if let Some(object) = resource::EdgeResource::parse(res)
        && NODE_NAMED.contains(&object.resource_type)
        && object.name.is_some_and(|name| name != node)
    {
        return Upstream::Refused("other_node");
    }
    msg.router.resource = resource::add_node_prefix(node, res);
    let group = if msg.router.operation == operation::UPLOAD && msg.router.group == group::USER {
        group::ROUTER
    } else {
        match msg.router.source.as_str() {
            source::META_SERVER => group::DYNAMIC_CONTROLLER,
            module::DEVICE_TWIN => group::DEVICE_CONTROLLER,
            _ => group::EDGE_CONTROLLER,
        }
    };
    Upstream::Deliver {
        group,
        message: Box::new(msg),
    }
}

/// What a session needs besides its link.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// Silence after which the session ends.
    pub keepalive_timeout: Duration,
    /// Messages written per turn before the session reads again, so a
    /// long queue never starves the reader.
    pub write_batch: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            keepalive_timeout: Duration::from_secs(30),
            write_batch: 64,
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The link closed or failed.
    LinkClosed,
    /// No keepalive came within the timeout.
    Silent,
    /// It was told to stop.
    Stopped,
}

/// What a session reports as it runs.
pub trait SessionEvents: Send {
    /// `msg` from the node is to be delivered to `group`.
    fn deliver(&mut self, group: &'static str, msg: Message) -> impl Future<Output = ()> + Send;
    /// The node acknowledged a message.
    fn acked(&mut self, acked: Acked);
    /// A message was refused or dropped, for the reason given.
    fn refused(&mut self, reason: &'static str);
    /// When the session is stopped because cloudcore stops: the window
    /// within which the node is asked to reconnect as its link closes.
    fn restart_window(&self) -> Option<Duration> {
        None
    }
}

/// Runs `node`'s session on `link` with `queue`, taking downstream
/// messages from `downstream`, until it ends; returns why, and the queue
/// with what was in flight back in line.
pub async fn run(
    node: &str,
    mut link: Link,
    mut queue: NodeQueue,
    downstream: &mut mpsc::Receiver<Queued>,
    events: &mut impl SessionEvents,
    config: SessionConfig,
    stop: CancellationToken,
) -> (Ended, NodeQueue) {
    let mut silent_at = Instant::now() + config.keepalive_timeout;
    let ended = loop {
        // Write what the queue lets out now, a batch at a time. A peer that
        // stops reading holds up this session only, and only until its
        // keepalive timeout.
        let mut written = 0;
        let mut ended = None;
        while written < config.write_batch {
            let Some(msg) = queue.next(Instant::now()) else {
                break;
            };
            tokio::select! {
                biased;
                () = stop.cancelled() => ended = Some(Ended::Stopped),
                () = tokio::time::sleep_until(silent_at) => ended = Some(Ended::Silent),
                sent = link.sender.send(msg) => if sent.is_err() { break },
            }
            if ended.is_some() {
                break;
            }
            written += 1;
        }
        if let Some(ended) = ended {
            break ended;
        }
        let more = written == config.write_batch;
        let resend_at = queue.next_resend();
        tokio::select! {
            biased;
            () = stop.cancelled() => break Ended::Stopped,
            () = tokio::time::sleep_until(silent_at) => break Ended::Silent,
            read = link.receiver.recv() => {
                let Some(msg) = read else { break Ended::LinkClosed };
                match classify_upstream(node, msg) {
                    Upstream::Keepalive => {
                        silent_at = Instant::now() + config.keepalive_timeout;
                    }
                    Upstream::Response(parent) => {
                        if let Some(acked) = queue.ack(&parent) {
                            events.acked(acked);
                        }
                    }
                    Upstream::Error => {
                        tracing::debug!(node, "the edge reported an error");
                    }
                    Upstream::Deliver { group, message } => events.deliver(group, *message).await,
                    Upstream::Refused(reason) => {
                        tracing::warn!(node, reason, "refused a message from the edge");
                        events.refused(reason);
                    }
                }
            }
            next = downstream.recv() => match next {
                Some(msg) => match queue.offer(*msg) {
                    Offered::Queued | Offered::Replaced | Offered::Stale => {}
                    Offered::Full => events.refused("queue_full"),
                },
                None => break Ended::Stopped,
            },
            () = async {
                match resend_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {}
            () = std::future::ready(()), if more => {}
        }
    };
    match (ended, events.restart_window()) {
        (Ended::Stopped, Some(window)) => link.sender.close_for_restart(window),
        _ => link.sender.close(),
    }
    queue.requeue_in_flight();
    (ended, queue)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloudhub::queue::QueueLimits;
    use kedge_transport::link::{Peer, memory_pair};
    use serde_json::json;
    use std::collections::HashMap;

    fn up(source: &str, grp: &str, op: &str, res: &str) -> Message {
        Message::new(source, grp, op, res, json!(null))
    }

    #[test]
    fn upstream_messages_route_as_kubeedge_routes_them() {
        let deliver = |msg| match classify_upstream("n1", msg) {
            Upstream::Deliver { group, message } => (group, message.router.resource),
            other => panic!("not delivered: {other:?}"),
        };
        assert_eq!(
            deliver(up("edged", "meta", "patch", "default/podpatch/p")),
            ("edgecontroller", "node/n1/default/podpatch/p".to_owned())
        );
        assert_eq!(
            deliver(up(
                "twin",
                "resource",
                "update",
                "device/d1/twin/edge_updated"
            ))
            .0,
            "devicecontroller"
        );
        assert_eq!(
            deliver(up("metaserver", "meta", "query", "default/pod")).0,
            "dynamiccontroller"
        );
        assert_eq!(
            deliver(up("router_eventbus", "user", "upload", "rule/x")).0,
            "router"
        );
        assert_eq!(
            classify_upstream("n1", Message::keepalive()),
            Upstream::Keepalive
        );
        let ack = up("edgecontroller", "resource", "response", "default/pod/p").with_parent_id("A");
        assert_eq!(classify_upstream("n1", ack), Upstream::Response("A".into()));
    }

    #[test]
    fn a_node_cannot_speak_for_another() {
        for res in [
            "default/nodepatch/n2",
            "default/node/n2",
            "kube-node-lease/lease/n2",
            "node/n2/default/pod/p",
        ] {
            assert!(
                matches!(
                    classify_upstream("n1", up("edged", "meta", "patch", res)),
                    Upstream::Refused(_)
                ),
                "{res} was not refused"
            );
        }
        assert!(matches!(
            classify_upstream("n1", up("edged", "meta", "patch", "default/nodepatch/n1")),
            Upstream::Deliver { .. }
        ));
    }

    #[derive(Default)]
    struct Recorded {
        delivered: Vec<(&'static str, Message)>,
        acked: Vec<Acked>,
        refused: Vec<&'static str>,
    }

    impl SessionEvents for Recorded {
        async fn deliver(&mut self, group: &'static str, msg: Message) {
            self.delivered.push((group, msg));
        }
        fn acked(&mut self, acked: Acked) {
            self.acked.push(acked);
        }
        fn refused(&mut self, reason: &'static str) {
            self.refused.push(reason);
        }
    }

    fn peer(node: &str) -> Peer {
        Peer {
            node_id: node.into(),
            project_id: "p".into(),
            address: None,
        }
    }

    fn configmap(version: u64) -> Message {
        Message::new(
            "edgecontroller",
            "resource",
            "update",
            "default/configmap/c",
            json!({"metadata": {"uid": "u1"}}),
        )
        .with_resource_version(version.to_string())
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_node_loses_its_session() {
        let (cloud, _edge) = memory_pair(peer("n1"), peer("cloud"), 8);
        let (_tx, mut rx) = mpsc::channel(8);
        let started = Instant::now();
        let (ended, _) = run(
            "n1",
            cloud,
            NodeQueue::new(QueueLimits::default(), HashMap::new()),
            &mut rx,
            &mut Recorded::default(),
            SessionConfig::default(),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(ended, Ended::Silent);
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_that_stops_reading_loses_its_session_at_the_timeout() {
        // The link holds one message and the edge never reads it.
        let (cloud, _edge) = memory_pair(peer("n1"), peer("cloud"), 1);
        let (tx, mut rx) = mpsc::channel(8);
        let mut queue = NodeQueue::new(QueueLimits::default(), HashMap::new());
        for i in 0..3u64 {
            let mut msg = configmap(i + 1);
            msg.content = json!({"metadata": {"uid": format!("u{i}")}});
            queue.offer(msg);
        }
        let started = Instant::now();
        let (ended, queue) = run(
            "n1",
            cloud,
            queue,
            &mut rx,
            &mut Recorded::default(),
            SessionConfig::default(),
            CancellationToken::new(),
        )
        .await;
        drop(tx);
        assert_eq!(ended, Ended::Silent);
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        assert_eq!(queue.len(), 3, "nothing unacknowledged is lost");
    }

    #[tokio::test(start_paused = true)]
    async fn objects_are_resent_until_acked_and_acks_are_reported() {
        let (cloud, mut edge) = memory_pair(peer("n1"), peer("cloud"), 8);
        let (tx, mut rx) = mpsc::channel(8);
        let stop = CancellationToken::new();
        let session = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut events = Recorded::default();
                let (ended, queue) = run(
                    "n1",
                    cloud,
                    NodeQueue::new(QueueLimits::default(), HashMap::new()),
                    &mut rx,
                    &mut events,
                    SessionConfig::default(),
                    stop,
                )
                .await;
                (ended, queue, events)
            })
        };
        tx.send(Box::new(configmap(3))).await.expect("queued");
        let first = edge.receiver.recv().await.expect("sent");
        // Not acknowledged: it comes again after 5 s, with the same id.
        edge.sender
            .send(Message::keepalive())
            .await
            .expect("keepalive");
        let again = edge.receiver.recv().await.expect("resent");
        assert_eq!(again.header.id, first.header.id);
        edge.sender.send(again.ack()).await.expect("acked");
        // An upstream status report is delivered with the node prefix.
        edge.sender
            .send(up("edged", "meta", "patch", "default/podpatch/p"))
            .await
            .expect("sent");
        edge.sender
            .send(up("edged", "meta", "patch", "default/nodepatch/other"))
            .await
            .expect("sent");
        edge.sender
            .send(Message::keepalive())
            .await
            .expect("keepalive");
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.cancel();
        let (ended, queue, events) = session.await.expect("joined");
        assert_eq!(ended, Ended::Stopped);
        assert!(queue.is_empty());
        assert_eq!(events.acked.len(), 1);
        assert_eq!(events.acked[0].resource_version, "3");
        assert_eq!(events.delivered.len(), 1);
        assert_eq!(
            events.delivered[0].1.router.resource,
            "node/n1/default/podpatch/p"
        );
        assert_eq!(events.refused, ["other_node"]);
    }
}
