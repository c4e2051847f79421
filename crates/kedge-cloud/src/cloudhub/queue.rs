//! One edge node's outbound queue, as a state machine without I/O: what
//! waits to be sent, what was sent and waits for its acknowledgement, and
//! what the node has acknowledged (protocol.md §5.1–5.2).
//!
//! It differs from KubeEdge's on the points its users report:
//!
//! * Messages that need an ACK are keyed by object (its UID, else its
//!   resource) and coalesce: only the newest version of an object waits,
//!   and a version not newer than one already queued, in flight or
//!   acknowledged is dropped, so the node never gets older over newer.
//! * Up to `window` objects are in flight at once (KubeEdge waits for each
//!   ACK before the next send), one message per object, so each object's
//!   versions still arrive in order.
//! * Unacknowledged messages are resent with the same `msg_id` every
//!   `resend_after`, for as long as the link lasts: nothing is given up
//!   on while the node is connected.
//! * The queue is bounded by count and bytes. A message that would exceed
//!   the bound is refused (the caller counts it): ACK-mode objects so
//!   refused are not lost, as the sync controller resends whatever is newer
//!   than the node acknowledged.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use indexmap::IndexMap;
use kedge_message::{Message, delivery, operation};
use tokio::time::Instant;

/// How a queue is bounded and paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Messages waiting or in flight, ACK-mode and others together.
    pub max_messages: usize,
    /// Encoded bytes waiting or in flight.
    pub max_bytes: usize,
    /// ACK-mode messages in flight at once.
    pub window: usize,
    /// How long an unacknowledged message waits before it is resent.
    pub resend_after: Duration,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self {
            max_messages: 10_000,
            max_bytes: 64 * 1024 * 1024,
            window: 64,
            resend_after: Duration::from_secs(5),
        }
    }
}

/// What became of an offered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Queued.
    Queued,
    /// Queued in place of an older version of the same object.
    Replaced,
    /// Not queued: a version at least as new is queued, in flight or
    /// acknowledged.
    Stale,
    /// Not queued: the queue is full.
    Full,
}

/// An acknowledged message: what the node now holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Acked {
    /// The object's key.
    pub key: String,
    /// The resourceVersion acknowledged.
    pub resource_version: String,
    /// Whether it was a deletion.
    pub deleted: bool,
    /// The message acknowledged.
    pub message: Message,
}

#[derive(Debug)]
struct InFlight {
    /// Its slot (see [`slot_key`]).
    key: String,
    message: Message,
    bytes: usize,
    resend_at: Instant,
}

/// One node's outbound queue.
#[derive(Debug)]
pub struct NodeQueue {
    limits: QueueLimits,
    /// ACK-mode messages waiting, one per object, oldest first.
    waiting: IndexMap<String, (Message, usize)>,
    /// Other messages waiting, oldest first.
    fire_and_forget: VecDeque<(Message, usize)>,
    /// Sent and not yet acknowledged, by `msg_id`.
    in_flight: HashMap<String, InFlight>,
    /// The `msg_id` in flight per object.
    in_flight_keys: HashMap<String, String>,
    /// The resourceVersion the node acknowledged per object.
    acked: HashMap<String, u64>,
    bytes: usize,
}

/// The key an ACK-mode message is tracked by: its object's UID, or its
/// resource when the content has none.
pub fn object_key(msg: &Message) -> String {
    msg.content
        .pointer("/metadata/uid")
        .and_then(|uid| uid.as_str())
        .filter(|uid| !uid.is_empty())
        .map_or_else(|| msg.router.resource.clone(), str::to_owned)
}

/// The slot an ACK-mode message waits and flies in: its object's key, so
/// that only the newest version of an object waits; but every reply (an
/// object answering a node's query) has a slot of its own and is never
/// dropped as stale, for the node is waiting for it (protocol.md §5.2:
/// responses are always enqueued).
fn slot_key(msg: &Message) -> String {
    if msg.is_reply() {
        format!("reply/{}", msg.id())
    } else {
        object_key(msg)
    }
}

/// A resourceVersion as a number; KubeEdge compares them so too.
pub fn parse_version(version: &str) -> Option<u64> {
    version.parse().ok()
}

fn is_delete(msg: &Message) -> bool {
    msg.router.operation == operation::DELETE
        || msg
            .content
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|stamp| !stamp.is_null())
}

impl NodeQueue {
    /// An empty queue. `acked` is what the node is known to hold: object
    /// key → acknowledged resourceVersion (from its ObjectSyncs).
    pub fn new(limits: QueueLimits, acked: HashMap<String, u64>) -> Self {
        Self {
            limits,
            waiting: IndexMap::new(),
            fire_and_forget: VecDeque::new(),
            in_flight: HashMap::new(),
            in_flight_keys: HashMap::new(),
            acked,
            bytes: 0,
        }
    }

    /// Messages waiting or in flight.
    pub fn len(&self) -> usize {
        self.waiting.len() + self.fire_and_forget.len() + self.in_flight.len()
    }

    /// Whether nothing waits and nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Encoded bytes waiting or in flight.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The resourceVersion the node acknowledged for `key`.
    pub fn acked_version(&self, key: &str) -> Option<u64> {
        self.acked.get(key).copied()
    }

    /// Queues a downstream message (its resource already in the form
    /// the edge sees).
    pub fn offer(&mut self, msg: Message) -> Offered {
        let bytes = msg.encode().len();
        if !delivery::needs_ack(&msg) {
            if !self.fits(bytes, None) {
                return Offered::Full;
            }
            self.bytes += bytes;
            self.fire_and_forget.push_back((msg, bytes));
            return Offered::Queued;
        }
        let key = slot_key(&msg);
        let version = parse_version(&msg.header.resource_version);
        let deleting = is_delete(&msg);
        if let Some(version) = version
            && !deleting
            && !msg.is_reply()
        {
            let newest_known = [
                self.acked.get(&key).copied(),
                self.in_flight_keys
                    .get(&key)
                    .and_then(|id| self.in_flight.get(id))
                    .and_then(|sent| parse_version(&sent.message.header.resource_version)),
            ]
            .into_iter()
            .flatten()
            .max();
            if newest_known.is_some_and(|known| version <= known) {
                return Offered::Stale;
            }
        }
        if let Some((queued, queued_bytes)) = self.waiting.get(&key) {
            // A queued deletion is final for this object; an older
            // version gives way to a newer one or to a deletion.
            let queued_version = parse_version(&queued.header.resource_version);
            let newer = deleting
                || match (version, queued_version) {
                    (Some(new), Some(old)) => new > old,
                    _ => true,
                };
            if is_delete(queued) || !newer {
                return Offered::Stale;
            }
            let freed = *queued_bytes;
            if !self.fits(bytes, Some(freed)) {
                return Offered::Full;
            }
            self.bytes = self.bytes - freed + bytes;
            // Keep the object's place in line.
            if let Some(slot) = self.waiting.get_mut(&key) {
                *slot = (msg, bytes);
            }
            return Offered::Replaced;
        }
        if !self.fits(bytes, None) {
            return Offered::Full;
        }
        self.bytes += bytes;
        self.waiting.insert(key, (msg, bytes));
        Offered::Queued
    }

    /// Whether a message of `bytes` fits, in place of a waiting one of
    /// `replacing` bytes or as one more.
    fn fits(&self, bytes: usize, replacing: Option<usize>) -> bool {
        let count = self.len() + usize::from(replacing.is_none());
        let total = self.bytes - replacing.unwrap_or(0) + bytes;
        count <= self.limits.max_messages && total <= self.limits.max_bytes
    }

    /// The next message to write now, if any: resends that are due first,
    /// then messages that need no ACK, then new ACK-mode messages while
    /// the window has room and their object has nothing in flight.
    pub fn next(&mut self, now: Instant) -> Option<Message> {
        let due = self
            .in_flight
            .iter()
            .filter(|(_, sent)| sent.resend_at <= now)
            .min_by_key(|(_, sent)| sent.resend_at)
            .map(|(id, _)| id.clone());
        if let Some(id) = due
            && let Some(sent) = self.in_flight.get_mut(&id)
        {
            sent.resend_at = now + self.limits.resend_after;
            return Some(sent.message.clone());
        }
        if let Some((msg, bytes)) = self.fire_and_forget.pop_front() {
            self.bytes -= bytes;
            return Some(msg);
        }
        if self.in_flight.len() >= self.limits.window {
            return None;
        }
        let index = self
            .waiting
            .keys()
            .position(|key| !self.in_flight_keys.contains_key(key))?;
        let (key, (msg, bytes)) = self.waiting.shift_remove_index(index)?;
        let id = msg.header.id.clone();
        self.in_flight_keys.insert(key.clone(), id.clone());
        self.in_flight.insert(
            id,
            InFlight {
                key,
                message: msg.clone(),
                bytes,
                resend_at: now + self.limits.resend_after,
            },
        );
        Some(msg)
    }

    /// When [`next`](Self::next) will have a resend due, if anything is
    /// in flight.
    pub fn next_resend(&self) -> Option<Instant> {
        self.in_flight.values().map(|sent| sent.resend_at).min()
    }

    /// Records the node's acknowledgement of the message `parent_id`;
    /// `None` when nothing with that id is in flight (a duplicate ACK).
    pub fn ack(&mut self, parent_id: &str) -> Option<Acked> {
        let sent = self.in_flight.remove(parent_id)?;
        self.in_flight_keys.remove(&sent.key);
        self.bytes -= sent.bytes;
        let deleted = is_delete(&sent.message);
        let resource_version = sent.message.header.resource_version.clone();
        let key = object_key(&sent.message);
        if deleted {
            self.acked.remove(&key);
        } else if let Some(version) = parse_version(&resource_version) {
            let known = self.acked.entry(key.clone()).or_insert(version);
            *known = (*known).max(version);
        }
        Some(Acked {
            key,
            resource_version,
            deleted,
            message: sent.message,
        })
    }

    /// Everything still queued or unacknowledged, for a queue that outlives
    /// its link: in-flight messages go back to waiting (to be resent with
    /// their ids on the next link).
    pub fn requeue_in_flight(&mut self) {
        let mut sent: Vec<InFlight> = self.in_flight.drain().map(|(_, sent)| sent).collect();
        self.in_flight_keys.clear();
        sent.sort_by_key(|sent| sent.resend_at);
        for sent in sent.into_iter().rev() {
            if let Some((newer, bytes)) = self.waiting.shift_remove(&sent.key) {
                // A newer version already waits: it supersedes the old one.
                self.bytes -= sent.bytes;
                self.waiting.shift_insert(0, sent.key, (newer, bytes));
            } else {
                self.waiting
                    .shift_insert(0, sent.key, (sent.message, sent.bytes));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(name: &str, uid: &str, version: u64) -> Message {
        Message::new(
            "edgecontroller",
            "resource",
            "update",
            format!("default/configmap/{name}"),
            json!({"metadata": {"name": name, "uid": uid, "resourceVersion": version.to_string()}}),
        )
        .with_resource_version(version.to_string())
    }

    fn deletion(name: &str, uid: &str, version: u64) -> Message {
        let mut msg = object(name, uid, version);
        msg.router.operation = "delete".into();
        msg
    }

    fn queue(window: usize) -> NodeQueue {
        NodeQueue::new(
            QueueLimits {
                window,
                ..QueueLimits::default()
            },
            HashMap::new(),
        )
    }

    #[test]
    fn only_the_newest_version_of_an_object_waits() {
        let mut q = queue(8);
        assert_eq!(q.offer(object("a", "u1", 5)), Offered::Queued);
        assert_eq!(q.offer(object("a", "u1", 7)), Offered::Replaced);
        assert_eq!(q.offer(object("a", "u1", 6)), Offered::Stale);
        assert_eq!(q.len(), 1);
        let sent = q.next(Instant::now()).expect("sent");
        assert_eq!(sent.header.resource_version, "7");
        assert!(q.next(Instant::now()).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn unacknowledged_messages_are_resent_with_their_id_until_acked() {
        let mut q = queue(8);
        q.offer(object("a", "u1", 5));
        let first = q.next(Instant::now()).expect("sent");
        assert!(q.next(Instant::now()).is_none());
        tokio::time::advance(Duration::from_secs(5)).await;
        let again = q.next(Instant::now()).expect("resent");
        assert_eq!(again.header.id, first.header.id);
        let acked = q.ack(&first.header.id).expect("acked");
        assert_eq!(acked.resource_version, "5");
        assert!(
            q.ack(&first.header.id).is_none(),
            "a duplicate ACK is ignored"
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(q.next(Instant::now()).is_none());
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn an_object_has_one_message_in_flight_and_older_never_follows_newer() {
        let mut q = queue(8);
        q.offer(object("a", "u1", 5));
        let v5 = q.next(Instant::now()).expect("sent");
        assert_eq!(q.offer(object("a", "u1", 6)), Offered::Queued);
        assert!(q.next(Instant::now()).is_none(), "v6 waits for v5's ACK");
        q.ack(&v5.header.id);
        let v6 = q.next(Instant::now()).expect("sent");
        assert_eq!(v6.header.resource_version, "6");
        q.ack(&v6.header.id);
        assert_eq!(q.offer(object("a", "u1", 6)), Offered::Stale);
        assert_eq!(q.offer(object("a", "u1", 4)), Offered::Stale);
        assert_eq!(q.acked_version("u1"), Some(6));
    }

    #[test]
    fn the_window_bounds_messages_in_flight() {
        let mut q = queue(2);
        for i in 0..4 {
            q.offer(object(&format!("o{i}"), &format!("u{i}"), 1));
        }
        let now = Instant::now();
        let first = q.next(now).expect("1");
        assert!(q.next(now).is_some());
        assert!(q.next(now).is_none());
        q.ack(&first.header.id);
        assert!(q.next(now).is_some());
    }

    #[test]
    fn a_deletion_supersedes_and_is_final() {
        let mut q = queue(8);
        q.offer(object("a", "u1", 5));
        assert_eq!(q.offer(deletion("a", "u1", 5)), Offered::Replaced);
        assert_eq!(q.offer(object("a", "u1", 9)), Offered::Stale);
        let sent = q.next(Instant::now()).expect("sent");
        assert_eq!(sent.router.operation, "delete");
        let acked = q.ack(&sent.header.id).expect("acked");
        assert!(acked.deleted);
        assert_eq!(q.acked_version("u1"), None);
    }

    #[test]
    fn the_queue_is_bounded_by_count_and_bytes() {
        let mut q = NodeQueue::new(
            QueueLimits {
                max_messages: 2,
                ..QueueLimits::default()
            },
            HashMap::new(),
        );
        assert_eq!(q.offer(object("a", "u1", 1)), Offered::Queued);
        assert_eq!(q.offer(object("b", "u2", 1)), Offered::Queued);
        assert_eq!(q.offer(object("c", "u3", 1)), Offered::Full);
        // Replacing a waiting version does not add to the count.
        assert_eq!(q.offer(object("a", "u1", 2)), Offered::Replaced);

        let one = object("a", "u1", 1).encode().len();
        let mut q = NodeQueue::new(
            QueueLimits {
                max_bytes: one * 2,
                ..QueueLimits::default()
            },
            HashMap::new(),
        );
        assert_eq!(q.offer(object("a", "u1", 1)), Offered::Queued);
        assert_eq!(q.offer(object("b", "u2", 1)), Offered::Queued);
        assert_eq!(q.offer(object("c", "u3", 1)), Offered::Full);
    }

    #[test]
    fn what_the_node_acknowledged_before_is_not_sent_again() {
        let acked = HashMap::from([("u1".to_owned(), 7)]);
        let mut q = NodeQueue::new(QueueLimits::default(), acked);
        assert_eq!(q.offer(object("a", "u1", 7)), Offered::Stale);
        assert_eq!(q.offer(object("a", "u1", 8)), Offered::Queued);
    }

    #[test]
    fn a_reply_is_sent_although_the_node_holds_that_version() {
        let acked = HashMap::from([("u1".to_owned(), 7)]);
        let mut q = NodeQueue::new(QueueLimits::default(), acked);
        let mut reply = object("a", "u1", 7).with_parent_id("query-1");
        reply.router.operation = "response".into();
        let second = {
            let mut again = object("a", "u1", 7).with_parent_id("query-2");
            again.router.operation = "response".into();
            again
        };
        assert_eq!(q.offer(reply.clone()), Offered::Queued);
        assert_eq!(
            q.offer(second.clone()),
            Offered::Queued,
            "two queries, two replies"
        );
        let now = Instant::now();
        let first_sent = q.next(now).expect("the first reply");
        let second_sent = q.next(now).expect("the second reply");
        assert_eq!(first_sent.id(), reply.id());
        assert_eq!(second_sent.id(), second.id());
        let acked = q.ack(reply.id()).expect("acknowledged");
        assert_eq!(acked.key, "u1", "recorded for the object");
        assert_eq!(q.acked_version("u1"), Some(7));
    }

    #[test]
    fn messages_without_ack_are_sent_once() {
        let mut q = queue(8);
        let keepalive_reply = Message::new(
            "edgecontroller",
            "resource",
            "response",
            "default/node/n1",
            json!("OK"),
        );
        assert_eq!(q.offer(keepalive_reply), Offered::Queued);
        assert!(q.next(Instant::now()).is_some());
        assert!(q.is_empty());
    }

    #[test]
    fn in_flight_messages_go_back_in_line_for_the_next_link() {
        let mut q = queue(8);
        q.offer(object("a", "u1", 1));
        q.offer(object("b", "u2", 1));
        let a = q.next(Instant::now()).expect("a");
        q.offer(object("a", "u1", 2));
        q.requeue_in_flight();
        let first = q.next(Instant::now()).expect("first");
        assert_ne!(
            first.header.id, a.header.id,
            "the newer version replaced it"
        );
        assert_eq!(first.header.resource_version, "2");
        assert_eq!(
            q.next(Instant::now()).expect("b").router.resource,
            "default/configmap/b"
        );
    }
}
