//! Cloud → edge routing (protocol.md §2.7) and the delivery lanes that
//! keep a slow module from stalling the link.
//!
//! | wire group | goes to |
//! |---|---|
//! | `twin` | group `twin`, replies included (DeviceTwin confirms its reports) |
//! | `resource`, `func` | with a parent id: the waiting synchronous request; else group `meta` |
//! | `user` | with a parent id: the waiting request; else by source: `router_eventbus` → module `eventbus`, `router_servicebus` → module `servicebus`, other → group `bus` |
//! | anything else | dropped and counted |
//!
//! **Back-pressure.** The link reader never waits for a module. Replies
//! are handed over at once (a synchronous request's waiter is a one-shot
//! slot). Everything else goes into a bounded *lane* per destination, and a
//! task per lane feeds the bus, waiting for inbox space as the bus
//! requires. A module that stops reading fills its own lane only: further
//! messages for it are dropped and counted (`queue_full`) while the other
//! destinations and the link keep flowing. Dropping is safe for the
//! protocol: objects the cloud sends in ACK mode are resent until
//! MetaManager acknowledges them, and KubeEdge's own edge receive buffer
//! drops too (a 100-entry FIFO).
//!
//! The link state (`cloud_connected` / `cloud_disconnected`) goes to the
//! `twin`, `meta` and `bus` lanes through a watch slot, not the queue: it
//! is never dropped, a full lane does not delay it, and a quick flap
//! delivers only the latest state.

use std::collections::HashMap;

use kedge_bus::{BusError, BusHandle, ModuleContext};
use kedge_message::{Message, group, module, operation, resource_type, source};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::metrics::{DropReason, EdgeHubMetrics};

/// Content of the link-state event when the link comes up.
pub const CLOUD_CONNECTED: &str = "cloud_connected";
/// Content of the link-state event when the link goes down.
pub const CLOUD_DISCONNECTED: &str = "cloud_disconnected";

/// The groups told about the link state, as in KubeEdge v1.15.
pub const CONNECTION_GROUPS: [&str; 3] = [group::TWIN, group::META, group::BUS];

/// Where a message from the cloud goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The synchronous request whose id is the message's parent id.
    Reply,
    /// Every module of a group.
    Group(&'static str),
    /// One module.
    Module(&'static str),
    /// Nowhere.
    Drop(DropReason),
}

/// Decides where a message from the cloud goes (protocol.md §2.7).
pub fn route_downstream(msg: &Message) -> Destination {
    let route = &msg.router;
    if operation::VIADUCT_CONTROL.contains(&route.operation.as_str()) {
        return Destination::Drop(DropReason::ControlOperation);
    }
    match route.group.as_str() {
        group::TWIN => Destination::Group(group::TWIN),
        group::RESOURCE | group::FUNC if msg.is_reply() => Destination::Reply,
        group::RESOURCE | group::FUNC => Destination::Group(group::META),
        group::USER if msg.is_reply() => Destination::Reply,
        group::USER => match route.source.as_str() {
            source::ROUTER_EVENT_BUS => Destination::Module(module::EVENT_BUS),
            source::ROUTER_SERVICE_BUS => Destination::Module(module::SERVICE_BUS),
            _ => Destination::Group(group::BUS),
        },
        _ => Destination::Drop(DropReason::UnknownGroup),
    }
}

/// The link-state event EdgeHub sends to `group`: source `edgehub`,
/// resource `node/connection`, operation `connect`, content
/// `cloud_connected` or `cloud_disconnected`.
pub fn connection_event(to_group: &str, connected: bool) -> Message {
    let state = if connected {
        CLOUD_CONNECTED
    } else {
        CLOUD_DISCONNECTED
    };
    Message::new(
        source::EDGE_HUB_EVENTS,
        to_group,
        operation::CONNECT,
        resource_type::NODE_CONNECTION,
        Value::String(state.to_owned()),
    )
}

/// A destination with a lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Target {
    Group(&'static str),
    Module(&'static str),
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Self::Group(name) | Self::Module(name) => name,
        }
    }
}

/// Every lane EdgeHub keeps.
const TARGETS: [Target; 5] = [
    Target::Group(group::TWIN),
    Target::Group(group::META),
    Target::Group(group::BUS),
    Target::Module(module::EVENT_BUS),
    Target::Module(module::SERVICE_BUS),
];

/// The sending side of one lane.
struct Lane {
    queue: mpsc::Sender<Message>,
    state: Option<watch::Sender<Option<bool>>>,
}

/// Delivers messages from the cloud to edge modules without ever waiting.
pub(crate) struct Downstream {
    bus: BusHandle,
    lanes: HashMap<Target, Lane>,
    metrics: EdgeHubMetrics,
}

impl Downstream {
    /// Starts one lane task per destination, each with room for `capacity`
    /// messages.
    pub(crate) fn start(ctx: &ModuleContext, capacity: usize, metrics: &EdgeHubMetrics) -> Self {
        let mut lanes = HashMap::new();
        for target in TARGETS {
            let (queue, rx) = mpsc::channel(capacity.max(1));
            let (state, state_rx) = match target {
                Target::Group(g) if CONNECTION_GROUPS.contains(&g) => {
                    let (tx, rx) = watch::channel(None);
                    (Some(tx), Some(rx))
                }
                _ => (None, None),
            };
            let task = LaneTask {
                target,
                bus: ctx.bus().clone(),
                metrics: metrics.clone(),
                warned: false,
            };
            ctx.spawn(
                &format!("deliver-{}", target.name()),
                task.run(rx, state_rx),
            );
            lanes.insert(target, Lane { queue, state });
        }
        Self {
            bus: ctx.bus().clone(),
            lanes,
            metrics: metrics.clone(),
        }
    }

    /// Routes one message from the cloud. `acknowledged` says whether it
    /// answered a report in the outbox (then a reply nobody waits for is
    /// expected, not a drop).
    pub(crate) fn dispatch(&self, msg: Message, acknowledged: bool) {
        let target = match route_downstream(&msg) {
            Destination::Reply => {
                match self.bus.send_response(msg) {
                    Ok(()) => {}
                    Err(BusError::NoWaiter(parent)) => {
                        if !acknowledged {
                            tracing::debug!(%parent, "reply that nobody waits for; dropped");
                            self.metrics.dropped(DropReason::NoWaiter);
                        }
                    }
                    Err(error) => {
                        tracing::debug!(%error, "reply not delivered");
                        self.metrics.dropped(DropReason::NoWaiter);
                    }
                }
                return;
            }
            Destination::Group(g) => Target::Group(g),
            Destination::Module(m) => Target::Module(m),
            Destination::Drop(reason) => {
                tracing::warn!(
                    group = %msg.router.group,
                    operation = %msg.router.operation,
                    resource = %msg.router.resource,
                    reason = reason.as_str(),
                    "message from the cloud dropped"
                );
                self.metrics.dropped(reason);
                return;
            }
        };
        let Some(lane) = self.lanes.get(&target) else {
            // Every destination route_downstream names has a lane.
            self.metrics.dropped(DropReason::NoModule);
            return;
        };
        match lane.queue.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(msg)) => {
                tracing::warn!(
                    to = target.name(),
                    msg_id = %msg.id(),
                    resource = %msg.router.resource,
                    "delivery queue full; message from the cloud dropped"
                );
                self.metrics.dropped(DropReason::QueueFull);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.metrics.dropped(DropReason::ModuleStopped);
            }
        }
    }

    /// Tells the `twin`, `meta` and `bus` groups the link state.
    pub(crate) fn publish_connection(&self, connected: bool) {
        for lane in self.lanes.values() {
            if let Some(state) = &lane.state {
                state.send_replace(Some(connected));
            }
        }
    }
}

/// The task that feeds one destination from its lane.
struct LaneTask {
    target: Target,
    bus: BusHandle,
    metrics: EdgeHubMetrics,
    warned: bool,
}

impl LaneTask {
    async fn run(
        mut self,
        mut queue: mpsc::Receiver<Message>,
        mut state: Option<watch::Receiver<Option<bool>>>,
    ) {
        let token = self.bus.token().clone();
        loop {
            let next = tokio::select! {
                biased;
                () = token.cancelled() => return,
                changed = changed(&mut state) => match changed {
                    Some(connected) => {
                        let Target::Group(g) = self.target else { continue };
                        connection_event(g, connected)
                    }
                    None => {
                        // The hub is gone; keep draining the queue.
                        state = None;
                        continue;
                    }
                },
                msg = queue.recv() => match msg {
                    Some(msg) => msg,
                    None => return,
                },
            };
            if !self.deliver(next).await {
                return;
            }
        }
    }

    /// Delivers one message; `false` once the bus is shutting down.
    async fn deliver(&mut self, msg: Message) -> bool {
        let result = match self.target {
            Target::Group(g) => self.bus.send_to_group(g, msg).await.map(|_| ()),
            Target::Module(m) => self.bus.send(m, msg).await,
        };
        match result {
            Ok(()) => true,
            Err(BusError::ShuttingDown) => false,
            Err(error @ (BusError::UnknownGroup(_) | BusError::UnknownModule(_))) => {
                // Most edge modules do not exist yet, or are disabled: say
                // so once, count every message.
                if !self.warned {
                    tracing::warn!(to = self.target.name(), %error, "messages from the cloud for it are dropped");
                    self.warned = true;
                }
                self.metrics.dropped(DropReason::NoModule);
                true
            }
            Err(error) => {
                tracing::debug!(to = self.target.name(), %error, "message from the cloud not delivered");
                self.metrics.dropped(DropReason::ModuleStopped);
                true
            }
        }
    }
}

/// The next link state, or `None` when there is no state slot or its
/// sender is gone (then it never completes again, or reports `None` once).
async fn changed(state: &mut Option<watch::Receiver<Option<bool>>>) -> Option<bool> {
    let Some(rx) = state else {
        return std::future::pending().await;
    };
    loop {
        if rx.changed().await.is_err() {
            return None;
        }
        if let Some(connected) = *rx.borrow_and_update() {
            return Some(connected);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn from_cloud(src: &str, grp: &str, op: &str, res: &str) -> Message {
        Message::new(src, grp, op, res, json!({}))
    }

    #[test]
    fn the_routing_table() {
        let cases = [
            (
                from_cloud("edgecontroller", "resource", "insert", "default/pod/p"),
                Destination::Group("meta"),
            ),
            (
                from_cloud(
                    "edgecontroller",
                    "resource",
                    "response",
                    "default/configmap/c",
                )
                .with_parent_id("q"),
                Destination::Reply,
            ),
            (
                from_cloud("edgecontroller", "func", "query", "x"),
                Destination::Group("meta"),
            ),
            (
                from_cloud("edgecontroller", "func", "response", "x").with_parent_id("q"),
                Destination::Reply,
            ),
            (
                from_cloud("devicecontroller", "twin", "update", "membership"),
                Destination::Group("twin"),
            ),
            (
                from_cloud("devicecontroller", "twin", "response", "twin").with_parent_id("t"),
                Destination::Group("twin"),
            ),
            (
                from_cloud("router_eventbus", "user", "publish", "topic"),
                Destination::Module("eventbus"),
            ),
            (
                from_cloud("router_servicebus", "user", "request", "svc"),
                Destination::Module("servicebus"),
            ),
            (
                from_cloud("router", "user", "publish", "topic"),
                Destination::Group("bus"),
            ),
            (
                from_cloud("router_eventbus", "user", "response", "topic").with_parent_id("u"),
                Destination::Reply,
            ),
            (
                from_cloud(
                    "nodeupgradejobcontroller",
                    "nodeupgradejobcontroller",
                    "upgrade",
                    "u",
                ),
                Destination::Drop(DropReason::UnknownGroup),
            ),
            (
                from_cloud("edgecontroller", "", "insert", "default/pod/p"),
                Destination::Drop(DropReason::UnknownGroup),
            ),
            (
                from_cloud("cloudhub", "resource", "ping", "x"),
                Destination::Drop(DropReason::ControlOperation),
            ),
        ];
        for (msg, want) in cases {
            assert_eq!(route_downstream(&msg), want, "{:?}", msg.router);
        }
    }

    #[test]
    fn connection_events_follow_kubeedge() {
        let up = connection_event("meta", true);
        assert_eq!(up.router.source, "edgehub");
        assert_eq!(up.router.group, "meta");
        assert_eq!(up.router.resource, "node/connection");
        assert_eq!(up.router.operation, "connect");
        assert_eq!(up.content, json!("cloud_connected"));
        assert_eq!(
            connection_event("twin", false).content,
            json!("cloud_disconnected")
        );
    }
}
