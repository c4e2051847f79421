//! The node sessions of one CloudHub: admission (node limit, a newer
//! connection replacing an older one), downstream dispatch to the node a
//! message names, and the counters of what was refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use kedge_message::{Message, operation, resource, resource_type};
use kedge_transport::link::{Link, Queued};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::queue::{Acked, NodeQueue, QueueLimits};
use super::session::{self, SessionConfig, SessionEvents};
use crate::refusals::Refusals;

/// CloudHub's counters.
#[derive(Debug, Clone, Default)]
pub struct HubMetrics {
    /// Connected nodes.
    pub sessions: Gauge,
    /// Messages and connections refused or dropped, by reason.
    pub refused: Refusals,
    /// Downstream messages acknowledged by nodes.
    pub acked: Counter,
}

impl HubMetrics {
    /// Registers the counters under `kedge_cloudhub_` in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let hub = registry.sub_registry_with_prefix("kedge_cloudhub");
        hub.register("sessions", "Connected edge nodes", metrics.sessions.clone());
        metrics.refused.register(
            hub,
            "Messages and connections refused or dropped, by reason",
        );
        hub.register(
            "acked",
            "Downstream messages acknowledged by edge nodes",
            metrics.acked.clone(),
        );
        metrics
    }

    fn refuse(&self, reason: &str) {
        self.refused.count(reason);
    }
}

/// How a hub behaves.
#[derive(Debug, Clone, Copy)]
pub struct HubConfig {
    /// The most nodes connected at once.
    pub node_limit: usize,
    /// Each session's settings.
    pub session: SessionConfig,
    /// Each node's queue bounds.
    pub queue: QueueLimits,
    /// Downstream messages waiting to enter one session's queue.
    pub handoff: usize,
    /// Nodes per second the hub asks to come back at when it stops
    /// ([`Hub::stop`]); 0 asks for nothing.
    pub restart_reconnect_rate: u32,
}

impl HubConfig {
    /// The window within which each of `connected` nodes is asked to
    /// reconnect when the hub stops: `connected` ÷ the rate, at least
    /// 1 ms; `None` when the rate is 0 or no node is connected.
    pub fn restart_window(&self, connected: usize) -> Option<Duration> {
        if self.restart_reconnect_rate == 0 || connected == 0 {
            return None;
        }
        let millis = connected as u64 * 1000 / u64::from(self.restart_reconnect_rate);
        Some(Duration::from_millis(millis.max(1)))
    }
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            node_limit: 500,
            session: SessionConfig::default(),
            queue: QueueLimits::default(),
            handoff: 256,
            restart_reconnect_rate: 1000,
        }
    }
}

/// Where a hub's sessions send what they receive.
pub trait HubEvents: Clone + Send + Sync + 'static {
    /// `msg` from a node is to be delivered to `group` inside cloudcore.
    fn deliver(&self, group: &'static str, msg: Message) -> impl Future<Output = ()> + Send;
    /// `node` acknowledged a message.
    fn acked(&self, node: &str, acked: Acked);
    /// `node` connected (`true`) or its session ended (`false`).
    fn connection(&self, node: &str, connected: bool);
    /// What `node` is known to hold (object key → acknowledged
    /// resourceVersion), for a new session's queue.
    fn acknowledged(&self, node: &str) -> HashMap<String, u64>;
}

struct Slot {
    generation: u64,
    downstream: mpsc::Sender<Queued>,
    stop: CancellationToken,
    task: JoinHandle<Option<NodeQueue>>,
}

struct Inner<E> {
    config: HubConfig,
    events: E,
    metrics: HubMetrics,
    sessions: Mutex<HashMap<String, Slot>>,
    /// Set by [`Hub::stop`] before the sessions stop.
    restart: Arc<OnceLock<Duration>>,
    next_generation: std::sync::atomic::AtomicU64,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// The sessions of one CloudHub. Clones share them.
pub struct Hub<E> {
    inner: Arc<Inner<E>>,
}

impl<E> Clone for Hub<E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

/// The session events of one node, forwarded to the hub's.
struct NodeEvents<E> {
    node: String,
    events: E,
    metrics: HubMetrics,
    restart: Arc<OnceLock<Duration>>,
}

impl<E: HubEvents> SessionEvents for NodeEvents<E> {
    async fn deliver(&mut self, group: &'static str, msg: Message) {
        self.events.deliver(group, msg).await;
    }

    fn acked(&mut self, acked: Acked) {
        self.metrics.acked.inc();
        self.events.acked(&self.node, acked);
    }

    fn refused(&mut self, reason: &'static str) {
        self.metrics.refuse(reason);
    }

    fn restart_window(&self) -> Option<Duration> {
        self.restart.get().copied()
    }
}

impl<E: HubEvents> Hub<E> {
    /// A hub with no sessions; its session tasks run on `tasks` and stop
    /// with `shutdown` (or [`Hub::stop`]).
    pub fn new(
        config: HubConfig,
        events: E,
        metrics: HubMetrics,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                events,
                metrics,
                sessions: Mutex::default(),
                restart: Arc::default(),
                next_generation: std::sync::atomic::AtomicU64::new(1),
                tasks,
                shutdown,
            }),
        }
    }

    /// Stops every session, each closing its link with the window of
    /// [`HubConfig::restart_window`] for the nodes connected now, so that
    /// a large fleet comes back spread over it rather than all at once.
    pub fn stop(&self) {
        let inner = &self.inner;
        let connected = inner.sessions.lock().expect("sessions lock").len();
        if let Some(window) = inner.config.restart_window(connected) {
            tracing::info!(
                connected,
                ?window,
                "stopping: asking every node to reconnect within a window"
            );
            let _ = inner.restart.set(window);
        }
        inner.shutdown.cancel();
    }

    /// The nodes connected now.
    pub fn connected(&self) -> Vec<String> {
        let sessions = self.inner.sessions.lock().expect("sessions lock");
        sessions.keys().cloned().collect()
    }

    /// Takes a new link: it replaces the node's older session, if any, or
    /// is refused with an `error` message when the node limit is reached.
    pub fn accept(&self, link: Link) {
        let inner = &self.inner;
        let node = link.peer.node_id.clone();
        let generation = inner
            .next_generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (downstream_tx, downstream_rx) = mpsc::channel(inner.config.handoff);
        let stop = inner.shutdown.child_token();
        let mut sessions = inner.sessions.lock().expect("sessions lock");
        let previous = sessions.remove(&node);
        if previous.is_none() && sessions.len() >= inner.config.node_limit {
            drop(sessions);
            inner.metrics.refuse("node_limit");
            tracing::warn!(
                node,
                limit = inner.config.node_limit,
                "node limit reached; connection refused"
            );
            let refusal = Message::new(
                "cloudhub",
                "resource",
                operation::ERROR,
                "node",
                serde_json::Value::String(format!(
                    "cloudhub refuses node {node}: the node limit of {} is reached",
                    inner.config.node_limit
                )),
            );
            let sender = link.sender;
            inner.tasks.spawn(async move {
                let _ = sender.send(refusal).await;
                sender.close();
            });
            return;
        }
        if let Some(previous) = &previous {
            tracing::info!(node, "a newer connection replaces the node's session");
            previous.stop.cancel();
        }
        let hub = self.clone();
        let task_node = node.clone();
        let task_stop = stop.clone();
        let previous_task = previous.map(|slot| slot.task);
        let task = inner.tasks.spawn(async move {
            hub.session(
                task_node,
                generation,
                link,
                downstream_rx,
                previous_task,
                task_stop,
            )
            .await
        });
        sessions.insert(
            node,
            Slot {
                generation,
                downstream: downstream_tx,
                stop,
                task,
            },
        );
    }

    async fn session(
        self,
        node: String,
        generation: u64,
        link: Link,
        mut downstream: mpsc::Receiver<Queued>,
        previous: Option<JoinHandle<Option<NodeQueue>>>,
        stop: CancellationToken,
    ) -> Option<NodeQueue> {
        let inner = &self.inner;
        // A replaced session hands over its queue; otherwise the queue
        // starts from what the node acknowledged before.
        let handed_over = match previous {
            Some(task) => task.await.ok().flatten(),
            None => None,
        };
        let queue = handed_over.unwrap_or_else(|| {
            NodeQueue::new(inner.config.queue, inner.events.acknowledged(&node))
        });
        inner.metrics.sessions.inc();
        inner.events.connection(&node, true);
        tracing::info!(node, "edge node connected");
        let mut events = NodeEvents {
            node: node.clone(),
            events: inner.events.clone(),
            metrics: inner.metrics.clone(),
            restart: Arc::clone(&inner.restart),
        };
        let (ended, queue) = session::run(
            &node,
            link,
            queue,
            &mut downstream,
            &mut events,
            inner.config.session,
            stop,
        )
        .await;
        inner.metrics.sessions.dec();
        let current = {
            let mut sessions = inner.sessions.lock().expect("sessions lock");
            let current = sessions
                .get(&node)
                .is_some_and(|slot| slot.generation == generation);
            if current {
                sessions.remove(&node);
            }
            current
        };
        tracing::info!(node, ?ended, replaced = !current, "edge node session ended");
        if current {
            inner.events.connection(&node, false);
            // The node is gone: its queue goes too. What it did not
            // acknowledge is resent from the API on its next connection.
            None
        } else {
            Some(queue)
        }
    }

    /// Sends a cloud-internal message (resource `node/<node>/…`) to its
    /// node, with the resource trimmed as the edge sees it. Never waits:
    /// a message for a node that is not connected, or whose hand-off
    /// buffer is full, is dropped and counted; what needs an ACK is resent
    /// from the API when the node (re)connects. A node deletion ends the
    /// node's session instead of being sent (protocol.md §5.2).
    pub fn dispatch(&self, mut msg: Message) {
        let inner = &self.inner;
        let Some(node) = resource::target_node(&msg.router.resource).map(str::to_owned) else {
            inner.metrics.refuse("no_node");
            tracing::debug!(resource = %msg.router.resource, "downstream message names no node; dropped");
            return;
        };
        let sessions = inner.sessions.lock().expect("sessions lock");
        let Some(slot) = sessions.get(&node) else {
            inner.metrics.refuse("offline");
            return;
        };
        if msg.router.operation == operation::DELETE
            && resource::cloud_resource_type(&msg.router.resource) == Some(resource_type::NODE)
        {
            tracing::info!(node, "node deleted: ending its session");
            slot.stop.cancel();
            return;
        }
        msg.router.resource = resource::trim_node_prefix(&msg.router.resource).to_owned();
        if slot.downstream.try_send(Box::new(msg)).is_err() {
            inner.metrics.refuse("handoff_full");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kedge_transport::link::{Peer, memory_pair};
    use serde_json::json;

    #[derive(Clone, Default)]
    struct Recorder {
        log: Arc<Mutex<Vec<String>>>,
    }

    impl HubEvents for Recorder {
        async fn deliver(&self, group: &'static str, msg: Message) {
            self.log
                .lock()
                .expect("log")
                .push(format!("deliver {group} {}", msg.router.resource));
        }
        fn acked(&self, node: &str, acked: Acked) {
            self.log
                .lock()
                .expect("log")
                .push(format!("acked {node} {}", acked.resource_version));
        }
        fn connection(&self, node: &str, connected: bool) {
            self.log
                .lock()
                .expect("log")
                .push(format!("connection {node} {connected}"));
        }
        fn acknowledged(&self, _node: &str) -> HashMap<String, u64> {
            HashMap::new()
        }
    }

    fn peer(node: &str) -> Peer {
        Peer {
            node_id: node.into(),
            project_id: "p".into(),
            address: None,
        }
    }

    fn hub(node_limit: usize) -> (Hub<Recorder>, Recorder) {
        let recorder = Recorder::default();
        let hub = Hub::new(
            HubConfig {
                node_limit,
                ..HubConfig::default()
            },
            recorder.clone(),
            HubMetrics::default(),
            TaskTracker::new(),
            CancellationToken::new(),
        );
        (hub, recorder)
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    }

    fn configmap(node: &str, version: u64) -> Message {
        Message::new(
            "edgecontroller",
            "resource",
            "update",
            format!("node/{node}/default/configmap/c"),
            json!({"metadata": {"uid": "u1"}}),
        )
        .with_resource_version(version.to_string())
    }

    #[tokio::test]
    async fn messages_reach_their_node_trimmed_and_the_limit_refuses_extra_nodes() {
        let (hub, recorder) = hub(1);
        let (cloud, mut edge) = memory_pair(peer("n1"), peer("cloud"), 8);
        hub.accept(cloud);
        until("n1 connected", || hub.connected() == ["n1"]).await;
        hub.dispatch(configmap("n1", 4));
        let got = edge.receiver.recv().await.expect("delivered");
        assert_eq!(got.router.resource, "default/configmap/c");
        edge.sender.send(got.ack()).await.expect("acked");
        until("the ACK", || {
            recorder
                .log
                .lock()
                .expect("log")
                .contains(&"acked n1 4".to_owned())
        })
        .await;

        let (cloud2, mut edge2) = memory_pair(peer("n2"), peer("cloud"), 8);
        hub.accept(cloud2);
        let refusal = edge2.receiver.recv().await.expect("refusal");
        assert_eq!(refusal.router.operation, "error");
        assert!(
            refusal
                .content
                .as_str()
                .expect("text")
                .contains("node limit")
        );
        assert!(edge2.receiver.recv().await.is_none(), "then closed");
        assert_eq!(hub.inner.metrics.refused.get("node_limit"), 1);
    }

    #[tokio::test]
    async fn stopping_asks_every_node_to_reconnect_within_a_window_for_the_fleet() {
        let recorder = Recorder::default();
        let hub = Hub::new(
            HubConfig {
                restart_reconnect_rate: 2,
                ..HubConfig::default()
            },
            recorder,
            HubMetrics::default(),
            TaskTracker::new(),
            CancellationToken::new(),
        );
        let mut edges = Vec::new();
        for node in ["n1", "n2", "n3"] {
            let (cloud, edge) = memory_pair(peer(node), peer("cloud"), 8);
            hub.accept(cloud);
            edges.push(edge);
        }
        until("three connected", || hub.connected().len() == 3).await;
        hub.stop();
        for edge in &mut edges {
            assert!(edge.receiver.recv().await.is_none(), "the link closed");
            assert_eq!(
                edge.sender.restart_window(),
                Some(Duration::from_millis(1500)),
                "three nodes at two a second"
            );
        }
        until("no session left", || hub.connected().is_empty()).await;
    }

    #[test]
    fn the_restart_window_grows_with_the_fleet() {
        let config = HubConfig::default();
        assert_eq!(config.restart_window(0), None);
        assert_eq!(config.restart_window(1), Some(Duration::from_millis(1)));
        assert_eq!(
            config.restart_window(100_000),
            Some(Duration::from_secs(100))
        );
        let off = HubConfig {
            restart_reconnect_rate: 0,
            ..HubConfig::default()
        };
        assert_eq!(off.restart_window(100_000), None);
    }

    #[tokio::test]
    async fn a_newer_connection_replaces_the_old_and_inherits_its_queue() {
        let (hub, recorder) = hub(10);
        let (old_cloud, mut old_edge) = memory_pair(peer("n1"), peer("cloud"), 8);
        hub.accept(old_cloud);
        until("connected", || hub.connected() == ["n1"]).await;
        hub.dispatch(configmap("n1", 4));
        let unacked = old_edge.receiver.recv().await.expect("sent");

        let (new_cloud, mut new_edge) = memory_pair(peer("n1"), peer("cloud"), 8);
        hub.accept(new_cloud);
        assert!(
            old_edge.receiver.recv().await.is_none(),
            "the old link is closed"
        );
        let resent = new_edge
            .receiver
            .recv()
            .await
            .expect("resent on the new link");
        assert_eq!(resent.header.id, unacked.header.id);
        assert_eq!(hub.connected(), ["n1"]);
        let log = recorder.log.lock().expect("log").clone();
        assert_eq!(
            log.iter()
                .filter(|l| l.as_str() == "connection n1 false")
                .count(),
            0,
            "a replaced session does not report the node gone: {log:?}"
        );
    }

    #[tokio::test]
    async fn a_node_that_reads_nothing_delays_no_other_node() {
        let (hub, _recorder) = hub(10);
        // n1's edge never reads: its link holds one message.
        let (slow_cloud, _slow_edge) = memory_pair(peer("n1"), peer("cloud"), 1);
        let (fast_cloud, mut fast_edge) = memory_pair(peer("n2"), peer("cloud"), 8);
        hub.accept(slow_cloud);
        hub.accept(fast_cloud);
        until("both connected", || hub.connected().len() == 2).await;
        for i in 0..2_000u64 {
            let mut msg = configmap("n1", i + 1);
            msg.content = json!({"metadata": {"uid": format!("u{i}")}});
            hub.dispatch(msg);
        }
        hub.dispatch(configmap("n2", 7));
        let got = tokio::time::timeout(Duration::from_secs(5), fast_edge.receiver.recv())
            .await
            .expect("n2 is served at once")
            .expect("delivered");
        assert_eq!(got.header.resource_version, "7");
        // What n1 could not take was dropped and counted, not buffered.
        let dropped = hub.inner.metrics.refused.get("handoff_full");
        assert!(dropped > 0, "nothing was dropped for the stalled node");
    }

    #[tokio::test]
    async fn upstream_goes_to_cloud_modules_and_node_deletion_ends_the_session() {
        let (hub, recorder) = hub(10);
        let (cloud, mut edge) = memory_pair(peer("n1"), peer("cloud"), 8);
        hub.accept(cloud);
        until("connected", || hub.connected() == ["n1"]).await;
        edge.sender
            .send(Message::new(
                "edged",
                "meta",
                "patch",
                "default/podpatch/p",
                json!("{}"),
            ))
            .await
            .expect("sent");
        until("delivery", || {
            recorder
                .log
                .lock()
                .expect("log")
                .contains(&"deliver edgecontroller node/n1/default/podpatch/p".to_owned())
        })
        .await;
        hub.dispatch(Message::new(
            "edgecontroller",
            "resource",
            "delete",
            "node/n1/null/node/n1",
            json!(null),
        ));
        assert!(edge.receiver.recv().await.is_none(), "the session ended");
        until("disconnection", || hub.connected().is_empty()).await;
    }
}
