//! The MQTT 3.1.1 broker edgecore embeds (`mqttMode` `0` and `1`).
//!
//! KubeEdge embeds a broker at `mqttServerInternal` so that devices and
//! mappers need nothing but edgecore. rumqttd, the embeddable Rust broker,
//! refuses subscriptions to topics starting with `$` (it lets only
//! `$share` through), and every KubeEdge device topic starts with `$hw/`,
//! so this is a small broker of our own. Packets are read and written with
//! rumqttc's codec (`mqttbytes::v4`); this module holds only the broker's
//! rules:
//!
//! * CONNECT: any client id (an empty one gets a generated id), sessions
//!   are always clean (no session is kept after a disconnect, and
//!   `session present` is always 0); a user name and password are checked
//!   when [`BrokerSettings::credentials`] is set. A newer connection with
//!   the same client id closes the older one. Will messages are not sent.
//! * SUBSCRIBE / UNSUBSCRIBE with `+` and `#`; the granted QoS is at most 1.
//!   A filter starting with a wildcard does not match a topic starting
//!   with `$` (MQTT 4.7.2), but explicit ones such as
//!   `$hw/events/device/+/twin/+` do.
//! * PUBLISH QoS 0 and 1 (PUBACK to the publisher), delivered at the lower
//!   of the publish's and the subscription's QoS. QoS 2 publishes are
//!   answered with PUBREC and PUBCOMP and delivered like QoS 1 ones (at
//!   least once). Retained messages are kept in memory, up to
//!   [`BrokerSettings::retained_bytes`].
//! * PINGREQ / PINGRESP, DISCONNECT, and a keep-alive timeout of 1.5 times
//!   the client's keep-alive.
//!
//! Everything a client can make the broker hold is bounded: packets by
//! [`BrokerSettings::max_packet`], connections by
//! [`BrokerSettings::max_clients`], each client's outgoing queue by
//! [`BrokerSettings::queue_messages`] and
//! [`BrokerSettings::queue_bytes`], QoS 1 deliveries awaiting PUBACK by
//! [`INFLIGHT_WINDOW`], filters by [`MAX_FILTERS`]. A subscriber that
//! reads too slowly loses QoS 0 messages that do not fit its queue and is
//! disconnected when a QoS 1 message (or a SUBACK) does not fit; retained
//! messages replayed on SUBSCRIBE count against the same queue. A
//! malformed packet or a protocol violation closes the connection, is
//! logged and counted (`kedge_eventbus_broker_malformed_packets_total`).
//!
//! Besides its network clients the broker has one in-process subscriber
//! ([`Broker::subscribe_internal`]) and an in-process publisher
//! ([`Broker::publish`]), which is how EventBus uses it (see the parent
//! module).
//!
//! Concurrency: the subscription table and retained messages sit behind
//! one `std` mutex, held only to look up or change them, never across an
//! `.await`. Deliveries are `try_send`s into the subscribers' bounded
//! queues, so a publisher never waits for a network subscriber; only the
//! in-process subscriber, edgecore itself, makes a publisher's connection
//! wait rather than lose a device's message. Each connection is one task
//! that reads and writes concurrently. Its writer drains two queues: the
//! ordered one (deliveries, and each SUBACK followed by its retained
//! messages, queued under the lock so that no live message overtakes
//! them) and a small one for PUBACK, PUBREC, PUBCOMP, UNSUBACK and
//! PINGRESP, which it keeps draining while QoS 1 deliveries wait for a
//! free packet id, so the reader always gets to the PUBACKs that free one.
//! Matching is a linear scan of the clients' filters, which suits the
//! tens of device mappers of an edge node.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, Packet, PubAck, PubComp, PubRec, Publish, SubAck,
    SubscribeFilter, SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::{Error as CodecError, Protocol, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

/// QoS 1 deliveries to one client that may await its PUBACK at once; the
/// next ones wait in the client's queue.
pub const INFLIGHT_WINDOW: usize = 128;

/// Filters one client may hold; further ones are refused in the SUBACK.
pub const MAX_FILTERS: usize = 1024;

/// How long a new connection has to send its CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes the writer gathers from a client's queue before writing them.
const WRITE_BATCH: usize = 64 * 1024;

/// How long the listener waits after a failed accept (out of file
/// descriptors, say) before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The broker's limits and credentials.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// The user name and password every client must log in with; `None`
    /// lets any client in.
    pub credentials: Option<(String, String)>,
    /// Connections open at once, those still sending CONNECT included;
    /// further ones are closed at once.
    pub max_clients: usize,
    /// The largest packet read from a client, in bytes of remaining
    /// length, and the largest in-process publish.
    pub max_packet: usize,
    /// Messages one client's outgoing queue holds (`mqttSessionQueueSize`).
    pub queue_messages: usize,
    /// Payload and topic bytes one client's outgoing queue holds.
    pub queue_bytes: usize,
    /// Payload and topic bytes of all retained messages together; a
    /// retained message that does not fit is delivered but not kept.
    pub retained_bytes: usize,
}

impl Default for BrokerSettings {
    /// No credentials, 256 clients, 1 MiB packets, 100 queued messages
    /// (KubeEdge's `mqttSessionQueueSize`) or 2 MiB per client, 8 MiB of
    /// retained messages.
    fn default() -> Self {
        Self {
            credentials: None,
            max_clients: 256,
            max_packet: 1 << 20,
            queue_messages: 100,
            queue_bytes: 2 << 20,
            retained_bytes: 8 << 20,
        }
    }
}

/// A refused in-process publish or subscription.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The topic name is empty or holds a wildcard or NUL.
    #[error("{0:?} is not a valid MQTT topic name")]
    InvalidTopic(String),
    /// The filter is empty, holds NUL, or has a misplaced wildcard.
    #[error("{0:?} is not a valid MQTT topic filter")]
    InvalidFilter(String),
    /// The payload is larger than [`BrokerSettings::max_packet`].
    #[error("a payload of {size} bytes is larger than the broker's {max}")]
    TooLarge {
        /// The payload's size.
        size: usize,
        /// The largest allowed.
        max: usize,
    },
}

/// Whether `topic` may be published to: not empty, no `+`, `#` or NUL.
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

/// Whether `filter` may be subscribed to: not empty, no NUL, `+` and `#`
/// only as whole levels, `#` only as the last one.
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        match level {
            "#" => return levels.peek().is_none(),
            "+" => {}
            _ if level.contains(['+', '#']) => return false,
            _ => {}
        }
    }
    true
}

/// Whether the (valid) filter `filter` matches the (valid) topic `topic`.
/// `sport/#` matches `sport`; a filter starting with `+` or `#` never
/// matches a topic starting with `$`.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        if level == "#" {
            return true;
        }
        match topic_levels.next() {
            Some(name) if level == "+" || level == name => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

/// The lower of two QoS levels.
fn lower(a: QoS, b: QoS) -> QoS {
    if a <= b { a } else { b }
}

// === impl BrokerMetrics ===

/// The broker's counters and gauge, under `kedge_eventbus_broker_*`.
/// Clones share the same values.
#[derive(Clone, Debug, Default)]
pub struct BrokerMetrics {
    clients: Gauge,
    connections: Counter,
    refused: Counter,
    malformed: Counter,
    publishes: Counter,
    dropped: Counter,
    slow_disconnects: Counter,
}

impl BrokerMetrics {
    /// Creates the metrics and registers them in `registry` under
    /// `kedge_eventbus_broker_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let r = registry.sub_registry_with_prefix("kedge_eventbus_broker");
        r.register(
            "clients",
            "MQTT clients connected to the embedded broker",
            metrics.clients.clone(),
        );
        r.register(
            "connections",
            "MQTT connections the embedded broker accepted (CONNACK 0)",
            metrics.connections.clone(),
        );
        r.register(
            "refused",
            "MQTT connections refused: too many clients, bad credentials or protocol level",
            metrics.refused.clone(),
        );
        r.register(
            "malformed_packets",
            "Connections closed for a malformed packet or a protocol violation",
            metrics.malformed.clone(),
        );
        r.register(
            "publishes",
            "PUBLISH packets received from clients",
            metrics.publishes.clone(),
        );
        r.register(
            "messages_dropped",
            "QoS 0 messages dropped because the subscriber's queue was full",
            metrics.dropped.clone(),
        );
        r.register(
            "slow_disconnects",
            "Subscribers disconnected because a QoS 1 message did not fit their queue",
            metrics.slow_disconnects.clone(),
        );
        metrics
    }

    /// Clients connected now.
    pub fn clients(&self) -> i64 {
        self.clients.get()
    }

    /// Connections closed for a malformed packet or a protocol violation
    /// so far.
    pub fn malformed_packets(&self) -> u64 {
        self.malformed.get()
    }

    /// QoS 0 messages dropped for full queues so far.
    pub fn messages_dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// Subscribers disconnected for being too slow so far.
    pub fn slow_disconnects(&self) -> u64 {
        self.slow_disconnects.get()
    }
}

// === impl Broker ===

/// A message for the in-process subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The topic it was published on.
    pub topic: String,
    /// The payload.
    pub payload: Bytes,
}

/// The embedded broker: a cheap handle; clones share one broker.
#[derive(Debug, Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    settings: BrokerSettings,
    metrics: BrokerMetrics,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    clients: HashMap<String, Session>,
    retained: HashMap<String, Retained>,
    retained_bytes: usize,
    internal: Option<Internal>,
    next_serial: u64,
}

/// A connected client, as routing sees it.
#[derive(Debug)]
struct Session {
    /// Tells this connection from a newer one with the same client id.
    serial: u64,
    /// Filter to granted QoS.
    filters: HashMap<String, QoS>,
    outbox: Outbox,
    /// Cancelled to close the connection.
    closed: CancellationToken,
}

#[derive(Debug)]
struct Retained {
    payload: Bytes,
    qos: QoS,
}

#[derive(Debug)]
struct Internal {
    filters: Vec<String>,
    tx: mpsc::Sender<Delivery>,
}

impl Broker {
    /// A broker with `settings`, counting into `metrics`. It serves
    /// clients once [`serve`](Self::serve) runs.
    pub fn new(settings: BrokerSettings, metrics: BrokerMetrics) -> Self {
        Self {
            shared: Arc::new(Shared {
                settings,
                metrics,
                state: Mutex::default(),
            }),
        }
    }

    /// Registers the in-process subscriber: every message a network
    /// client publishes on a topic matching one of `filters` is handed to
    /// the returned receiver, which holds `capacity` messages; when it is
    /// full the publisher's connection waits. Replaces an earlier
    /// in-process subscriber.
    pub fn subscribe_internal(
        &self,
        filters: &[&str],
        capacity: usize,
    ) -> Result<mpsc::Receiver<Delivery>, BrokerError> {
        if let Some(bad) = filters.iter().find(|filter| !valid_filter(filter)) {
            return Err(BrokerError::InvalidFilter((*bad).to_owned()));
        }
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.shared.lock().internal = Some(Internal {
            filters: filters.iter().map(|&filter| filter.to_owned()).collect(),
            tx,
        });
        Ok(rx)
    }

    /// Publishes in-process to the network clients subscribed to `topic`
    /// (not to the in-process subscriber), as a client's PUBLISH would.
    pub fn publish(
        &self,
        topic: &str,
        payload: Bytes,
        qos: QoS,
        retain: bool,
    ) -> Result<(), BrokerError> {
        if !valid_topic(topic) {
            return Err(BrokerError::InvalidTopic(topic.to_owned()));
        }
        let max = self.shared.settings.max_packet;
        if payload.len() > max {
            return Err(BrokerError::TooLarge {
                size: payload.len(),
                max,
            });
        }
        let mut publish = Publish::from_bytes(topic, qos, payload);
        publish.retain = retain;
        // The in-process subscriber is not asked: nothing to await.
        let _ = self.shared.route(&publish, false);
        Ok(())
    }

    /// Accepts clients on `listener` until `token` is cancelled, then
    /// closes every connection and returns once they are gone.
    pub async fn serve(self, listener: TcpListener, token: CancellationToken) {
        let connections = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(self.shared.settings.max_clients));
        loop {
            let (stream, peer) = tokio::select! {
                () = token.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "mqtt broker: accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                self.shared.metrics.refused.inc();
                tracing::warn!(
                    %peer,
                    max = self.shared.settings.max_clients,
                    "mqtt broker: too many clients; connection closed"
                );
                continue;
            };
            let shared = self.shared.clone();
            let closed = token.child_token();
            let span = tracing::debug_span!("mqtt", %peer, client = tracing::field::Empty);
            connections.spawn(
                async move {
                    connection(&shared, stream, closed).await;
                    drop(slot);
                }
                .instrument(span),
            );
        }
        connections.close();
        connections.wait().await;
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a connected client under `requested` (or a generated id when
    /// empty), closing an older connection with that id; returns the id
    /// and the connection's serial.
    fn register(
        &self,
        requested: String,
        outbox: Outbox,
        closed: CancellationToken,
    ) -> (String, u64) {
        let mut state = self.lock();
        state.next_serial += 1;
        let serial = state.next_serial;
        let id = if requested.is_empty() {
            format!("kedge-auto-{serial}")
        } else {
            requested
        };
        let session = Session {
            serial,
            filters: HashMap::new(),
            outbox,
            closed,
        };
        if let Some(older) = state.clients.insert(id.clone(), session) {
            tracing::info!(client = %id, "mqtt broker: client id connected again; older connection closed");
            older.closed.cancel();
        }
        self.metrics.clients.set(gauge_value(state.clients.len()));
        (id, serial)
    }

    /// Removes the client, unless a newer connection took its id.
    fn unregister(&self, id: &str, serial: u64) {
        let mut state = self.lock();
        if state.clients.get(id).is_some_and(|s| s.serial == serial) {
            state.clients.remove(id);
        }
        self.metrics.clients.set(gauge_value(state.clients.len()));
    }

    /// Adds `filters` to the client's subscriptions, then queues the
    /// SUBACK and the retained messages the new filters match, all under
    /// the lock so that no live message overtakes them.
    fn subscribe(&self, id: &str, serial: u64, pkid: u16, filters: &[SubscribeFilter]) {
        let mut state = self.lock();
        let State {
            clients, retained, ..
        } = &mut *state;
        let Some(session) = clients.get_mut(id).filter(|s| s.serial == serial) else {
            return;
        };
        let mut codes = Vec::with_capacity(filters.len());
        let mut replay = Vec::new();
        for filter in filters {
            let known = session.filters.contains_key(&filter.path);
            if !valid_filter(&filter.path) || (!known && session.filters.len() >= MAX_FILTERS) {
                tracing::debug!(filter = %filter.path, "mqtt broker: subscription refused");
                codes.push(SubscribeReasonCode::Failure);
                continue;
            }
            let granted = lower(filter.qos, QoS::AtLeastOnce);
            session.filters.insert(filter.path.clone(), granted);
            codes.push(SubscribeReasonCode::Success(granted));
            for (topic, message) in retained.iter() {
                if matches(&filter.path, topic) {
                    let mut publish = Publish::from_bytes(
                        topic.as_str(),
                        lower(granted, message.qos),
                        message.payload.clone(),
                    );
                    publish.retain = true;
                    replay.push(publish);
                }
            }
        }
        self.offer(id, session, Packet::SubAck(SubAck::new(pkid, codes)));
        for publish in replay {
            self.offer(id, session, Packet::Publish(publish));
        }
    }

    /// Queues `packet` for `session` without waiting. When it does not fit,
    /// a QoS 0 message is dropped; anything else disconnects the client.
    fn offer(&self, id: &str, session: &Session, packet: Packet) {
        if session.closed.is_cancelled() {
            return;
        }
        let droppable = matches!(&packet, Packet::Publish(p) if p.qos == QoS::AtMostOnce);
        if session.outbox.try_push(packet) {
            return;
        }
        if droppable {
            self.metrics.dropped.inc();
            tracing::debug!(client = %id, "mqtt broker: subscriber's queue full; QoS 0 message dropped");
        } else {
            self.metrics.slow_disconnects.inc();
            tracing::warn!(client = %id, "mqtt broker: subscriber's queue full; disconnected");
            session.closed.cancel();
        }
    }

    fn unsubscribe(&self, id: &str, serial: u64, filters: &[String]) {
        let mut state = self.lock();
        if let Some(session) = state.clients.get_mut(id).filter(|s| s.serial == serial) {
            for filter in filters {
                session.filters.remove(filter);
            }
        }
    }

    /// Keeps, replaces or (empty payload) forgets the retained message of
    /// `publish.topic`.
    fn retain(&self, state: &mut State, publish: &Publish) {
        let topic = &publish.topic;
        if let Some(old) = state.retained.remove(topic) {
            state.retained_bytes -= old.payload.len() + topic.len();
        }
        if publish.payload.is_empty() {
            return;
        }
        let size = publish.payload.len() + topic.len();
        if state.retained_bytes + size > self.settings.retained_bytes {
            tracing::warn!(
                %topic,
                limit = self.settings.retained_bytes,
                "mqtt broker: retained messages are full; this one is delivered but not kept"
            );
            return;
        }
        state.retained_bytes += size;
        state.retained.insert(
            topic.clone(),
            Retained {
                payload: publish.payload.clone(),
                qos: lower(publish.qos, QoS::AtLeastOnce),
            },
        );
    }

    /// Delivers `publish` to every client subscribed to its topic, and
    /// keeps it when retained. Returns what the in-process subscriber is
    /// to receive (only when `to_internal`), for the caller to send
    /// without holding the lock.
    fn route(
        &self,
        publish: &Publish,
        to_internal: bool,
    ) -> Option<(mpsc::Sender<Delivery>, Delivery)> {
        let mut state = self.lock();
        if publish.retain {
            self.retain(&mut state, publish);
        }
        let topic = &publish.topic;
        for (id, session) in &state.clients {
            let granted = session
                .filters
                .iter()
                .filter(|(filter, _)| matches(filter, topic))
                .map(|(_, qos)| *qos)
                .reduce(|a, b| if a >= b { a } else { b });
            if let Some(granted) = granted {
                let qos = lower(publish.qos, granted);
                let delivery = Publish::from_bytes(topic.as_str(), qos, publish.payload.clone());
                self.offer(id, session, Packet::Publish(delivery));
            }
        }
        let internal = state.internal.as_ref().filter(|_| to_internal)?;
        internal
            .filters
            .iter()
            .any(|filter| matches(filter, topic))
            .then(|| {
                let delivery = Delivery {
                    topic: topic.clone(),
                    payload: publish.payload.clone(),
                };
                (internal.tx.clone(), delivery)
            })
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

// === impl Outbox ===

/// A client's ordered outgoing queue (deliveries, and the SUBACKs that
/// must precede retained messages), bounded in messages and in bytes.
/// Everything is pushed into it without waiting.
#[derive(Debug, Clone)]
struct Outbox {
    tx: mpsc::Sender<Packet>,
    /// Payload and topic bytes of the PUBLISH packets queued.
    bytes: Arc<AtomicUsize>,
    limit: usize,
}

/// The bytes of `packet` that count against [`BrokerSettings::queue_bytes`].
fn queued_size(packet: &Packet) -> usize {
    match packet {
        Packet::Publish(publish) => publish.payload.len() + publish.topic.len(),
        _ => 0,
    }
}

impl Outbox {
    /// Queues `packet` if it fits.
    fn try_push(&self, packet: Packet) -> bool {
        let size = queued_size(&packet);
        if self.bytes.load(Ordering::Acquire) + size > self.limit {
            return false;
        }
        if self.tx.try_send(packet).is_err() {
            return false;
        }
        self.bytes.fetch_add(size, Ordering::AcqRel);
        true
    }

    /// Accounts for `packet` having left the queue.
    fn taken(&self, packet: &Packet) {
        self.bytes.fetch_sub(queued_size(packet), Ordering::AcqRel);
    }
}

// === connections ===

/// Acknowledgements and PINGRESPs one connection may have waiting for
/// its writer; reading the client pauses while they are this many.
const CONTROL_QUEUE: usize = 32;

/// Why a connection ended other than by DISCONNECT or end of stream.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    /// A packet rumqttc's codec cannot read, or one over the size limit.
    #[error("malformed packet")]
    Malformed(#[source] CodecError),
    /// A well-formed packet that breaks MQTT's rules.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// Nothing arrived within 1.5 times the keep-alive.
    #[error("nothing received within {0:?} (1.5 times the keep-alive)")]
    KeepAlive(Duration),
    /// The socket failed.
    #[error("connection failed")]
    Io(#[from] std::io::Error),
    /// A packet could not be encoded.
    #[error("cannot encode a packet")]
    Encode(#[source] CodecError),
}

/// QoS 1 deliveries awaiting the client's PUBACK.
#[derive(Debug, Default)]
struct Inflight {
    pending: HashSet<u16>,
    next: u16,
}

impl Inflight {
    /// A packet id not in use, unless the window is full.
    fn take(&mut self) -> Option<u16> {
        if self.pending.len() >= INFLIGHT_WINDOW {
            return None;
        }
        loop {
            self.next = self.next.checked_add(1).unwrap_or(1);
            if self.pending.insert(self.next) {
                return Some(self.next);
            }
        }
    }
}

/// What one connection's reading and writing halves share.
///
/// The reader never waits for the ordered queue, only for the small
/// control queue, and the writer drains the control queue even while it
/// holds a delivery back for want of a packet id: so the reader always
/// gets to the PUBACKs the writer waits for.
struct Link<'a> {
    shared: &'a Shared,
    id: String,
    serial: u64,
    outbox: Outbox,
    control: mpsc::Sender<Packet>,
    inflight: Mutex<Inflight>,
    acked: Notify,
}

impl Link<'_> {
    /// Encodes `packet` into `out`, numbering a QoS 1 or 2 PUBLISH;
    /// returns the PUBLISH instead when no packet id is free.
    fn stage(
        &self,
        mut packet: Packet,
        out: &mut BytesMut,
    ) -> Result<Option<Packet>, ConnectionError> {
        if let Packet::Publish(publish) = &mut packet
            && publish.qos != QoS::AtMostOnce
        {
            let id = self
                .inflight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            match id {
                Some(id) => publish.pkid = id,
                None => return Ok(Some(packet)),
            }
        }
        encode(&packet, out)?;
        Ok(None)
    }
}

fn encode(packet: &Packet, out: &mut BytesMut) -> Result<(), ConnectionError> {
    // Every packet queued is within the limits already.
    packet
        .write(out, usize::MAX)
        .map(drop)
        .map_err(ConnectionError::Encode)
}

/// Reads one packet: `None` at end of stream.
async fn read_packet(
    reader: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    max: usize,
    idle: Option<Duration>,
) -> Result<Option<Packet>, ConnectionError> {
    loop {
        match Packet::read(buf, max) {
            Ok(packet) => return Ok(Some(packet)),
            Err(CodecError::InsufficientBytes(more)) => buf.reserve(more),
            Err(error) => return Err(ConnectionError::Malformed(error)),
        }
        let read = match idle {
            Some(idle) => tokio::time::timeout(idle, reader.read_buf(buf))
                .await
                .map_err(|_| ConnectionError::KeepAlive(idle))??,
            None => reader.read_buf(buf).await?,
        };
        if read == 0 {
            return Ok(None);
        }
    }
}

/// Writes a CONNACK refusing the connection.
async fn refuse(shared: &Shared, writer: &mut OwnedWriteHalf, code: ConnectReturnCode) {
    shared.metrics.refused.inc();
    tracing::info!(?code, "mqtt broker: connection refused");
    let mut out = BytesMut::new();
    if encode(&Packet::ConnAck(ConnAck::new(code, false)), &mut out).is_ok() {
        let _ = writer.write_all(&out).await;
    }
}

/// The answer to `connect`: success, or why not.
fn check_connect(shared: &Shared, connect: &Connect) -> ConnectReturnCode {
    if connect.protocol != Protocol::V4 {
        return ConnectReturnCode::RefusedProtocolVersion;
    }
    if connect.client_id.is_empty() && !connect.clean_session {
        return ConnectReturnCode::BadClientId;
    }
    if let Some((user, password)) = &shared.settings.credentials
        && !connect
            .login
            .as_ref()
            .is_some_and(|login| login.validate(user, password))
    {
        return ConnectReturnCode::BadUserNamePassword;
    }
    ConnectReturnCode::Success
}

/// Logs and counts how a connection ended.
fn ended(shared: &Shared, result: Result<(), ConnectionError>) {
    match result {
        Ok(()) => tracing::debug!("mqtt broker: client disconnected"),
        Err(error @ (ConnectionError::Malformed(_) | ConnectionError::Protocol(_))) => {
            shared.metrics.malformed.inc();
            tracing::warn!(error = %error_chain(&error), "mqtt broker: connection closed");
        }
        Err(error) => {
            tracing::debug!(error = %error_chain(&error), "mqtt broker: connection closed");
        }
    }
}

/// `error` and its sources, as one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

/// One client connection, from CONNECT until it closes or `closed` is
/// cancelled (shutdown, a newer connection with the same id, a slow
/// subscriber).
async fn connection(shared: &Shared, stream: TcpStream, closed: CancellationToken) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let mut buf = BytesMut::with_capacity(4096);
    let max = shared.settings.max_packet;
    let first = tokio::select! {
        () = closed.cancelled() => return,
        first = tokio::time::timeout(CONNECT_TIMEOUT, read_packet(&mut reader, &mut buf, max, None)) => first,
    };
    let connect = match first {
        Err(_) => {
            tracing::debug!("mqtt broker: no CONNECT in time; connection closed");
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Ok(Some(Packet::Connect(connect)))) => connect,
        Ok(Ok(Some(_))) => {
            return ended(
                shared,
                Err(ConnectionError::Protocol("the first packet is not CONNECT")),
            );
        }
        Ok(Err(error)) => return ended(shared, Err(error)),
    };
    let code = check_connect(shared, &connect);
    if code != ConnectReturnCode::Success {
        return refuse(shared, &mut writer, code).await;
    }

    let (tx, ordered) = mpsc::channel(shared.settings.queue_messages.max(1));
    let outbox = Outbox {
        tx,
        bytes: Arc::default(),
        limit: shared.settings.queue_bytes,
    };
    // The CONNACK goes first, before any delivery can be queued.
    outbox.try_push(Packet::ConnAck(ConnAck::new(
        ConnectReturnCode::Success,
        false,
    )));
    let (id, serial) = shared.register(connect.client_id, outbox.clone(), closed.clone());
    tracing::Span::current().record("client", id.as_str());
    shared.metrics.connections.inc();
    tracing::debug!(
        keep_alive = connect.keep_alive,
        "mqtt broker: client connected"
    );
    let idle = (connect.keep_alive > 0)
        .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500));
    let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let link = Link {
        shared,
        id,
        serial,
        outbox,
        control,
        inflight: Mutex::default(),
        acked: Notify::new(),
    };
    let result = tokio::select! {
        () = closed.cancelled() => Ok(()),
        result = read_loop(&link, &mut reader, &mut buf, idle) => result,
        result = write_loop(&link, &mut writer, ordered, control_rx) => result,
    };
    shared.unregister(&link.id, link.serial);
    ended(shared, result);
}

/// Handles the client's packets until DISCONNECT, end of stream or an
/// error.
async fn read_loop(
    link: &Link<'_>,
    reader: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    idle: Option<Duration>,
) -> Result<(), ConnectionError> {
    let shared = link.shared;
    loop {
        let Some(packet) = read_packet(reader, buf, shared.settings.max_packet, idle).await? else {
            return Ok(());
        };
        let reply = match packet {
            Packet::Publish(publish) => {
                if !valid_topic(&publish.topic) {
                    return Err(ConnectionError::Protocol(
                        "PUBLISH to an invalid topic name",
                    ));
                }
                shared.metrics.publishes.inc();
                if let Some((tx, delivery)) = shared.route(&publish, true) {
                    // The in-process subscriber is edgecore itself: wait
                    // for it rather than drop a device's message.
                    let _ = tx.send(delivery).await;
                }
                match publish.qos {
                    QoS::AtMostOnce => None,
                    QoS::AtLeastOnce => Some(Packet::PubAck(PubAck::new(publish.pkid))),
                    QoS::ExactlyOnce => Some(Packet::PubRec(PubRec::new(publish.pkid))),
                }
            }
            Packet::PubAck(ack) => {
                let freed = link
                    .inflight
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .pending
                    .remove(&ack.pkid);
                if freed {
                    link.acked.notify_one();
                }
                None
            }
            Packet::PubRel(release) => Some(Packet::PubComp(PubComp::new(release.pkid))),
            Packet::Subscribe(subscribe) => {
                shared.subscribe(&link.id, link.serial, subscribe.pkid, &subscribe.filters);
                None
            }
            Packet::Unsubscribe(unsubscribe) => {
                shared.unsubscribe(&link.id, link.serial, &unsubscribe.topics);
                Some(Packet::UnsubAck(UnsubAck::new(unsubscribe.pkid)))
            }
            Packet::PingReq => Some(Packet::PingResp),
            Packet::Disconnect => return Ok(()),
            Packet::Connect(_) => return Err(ConnectionError::Protocol("a second CONNECT")),
            Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp
            | Packet::PubRec(_)
            | Packet::PubComp(_) => {
                return Err(ConnectionError::Protocol(
                    "a packet a client does not send here",
                ));
            }
        };
        if let Some(reply) = reply
            && link.control.send(reply).await.is_err()
        {
            return Ok(());
        }
    }
}

/// Writes the control queue and the ordered queue to the client's socket,
/// gathering what is ready into one write, numbering QoS 1 deliveries and
/// holding the ordered queue back while [`INFLIGHT_WINDOW`] of them await
/// PUBACK.
async fn write_loop(
    link: &Link<'_>,
    writer: &mut OwnedWriteHalf,
    mut ordered: mpsc::Receiver<Packet>,
    mut control: mpsc::Receiver<Packet>,
) -> Result<(), ConnectionError> {
    let mut out = BytesMut::with_capacity(WRITE_BATCH);
    // A delivery waiting for a free packet id.
    let mut held: Option<Packet> = None;
    loop {
        tokio::select! {
            biased;
            packet = control.recv() => match packet {
                Some(packet) => encode(&packet, &mut out)?,
                None => return Ok(()),
            },
            () = link.acked.notified(), if held.is_some() => {}
            packet = ordered.recv(), if held.is_none() => match packet {
                Some(packet) => {
                    link.outbox.taken(&packet);
                    held = link.stage(packet, &mut out)?;
                }
                None => return Ok(()),
            },
        }
        while out.len() < WRITE_BATCH {
            if let Ok(packet) = control.try_recv() {
                encode(&packet, &mut out)?;
            } else if let Some(packet) = held.take() {
                held = link.stage(packet, &mut out)?;
                if held.is_some() {
                    break;
                }
            } else if let Ok(packet) = ordered.try_recv() {
                link.outbox.taken(&packet);
                held = link.stage(packet, &mut out)?;
            } else {
                break;
            }
        }
        if !out.is_empty() {
            writer.write_all(&out).await?;
            out.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::{AsyncClient, Event, MqttOptions};
    use tokio::task::JoinHandle;

    /// How long any awaited condition may take.
    const DEADLINE: Duration = Duration::from_secs(20);

    /// A broker on an ephemeral loopback port, stopped when dropped.
    struct TestBroker {
        broker: Broker,
        metrics: BrokerMetrics,
        port: u16,
        token: CancellationToken,
    }

    impl Drop for TestBroker {
        fn drop(&mut self) {
            self.token.cancel();
        }
    }

    async fn start(settings: BrokerSettings) -> TestBroker {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let metrics = BrokerMetrics::default();
        let broker = Broker::new(settings, metrics.clone());
        let token = CancellationToken::new();
        tokio::spawn(broker.clone().serve(listener, token.clone()));
        TestBroker {
            broker,
            metrics,
            port,
            token,
        }
    }

    /// A rumqttc client whose event loop runs on its own task; what it
    /// receives (or the error that stopped it) comes out of `events`.
    struct TestClient {
        client: AsyncClient,
        events: mpsc::UnboundedReceiver<Result<Packet, String>>,
        task: JoinHandle<()>,
    }

    impl Drop for TestClient {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn options(port: u16, id: &str) -> MqttOptions {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        options
    }

    fn client(options: MqttOptions) -> TestClient {
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(packet)) => {
                        let _ = tx.send(Ok(packet));
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(error) => {
                        let _ = tx.send(Err(error.to_string()));
                        return;
                    }
                }
            }
        });
        TestClient {
            client,
            events,
            task,
        }
    }

    impl TestClient {
        /// Connects and waits for the CONNACK.
        async fn connect(port: u16, id: &str) -> Self {
            let mut client = client(options(port, id));
            client.expect(|p| matches!(p, Packet::ConnAck(_))).await;
            client
        }

        /// The next packet `wanted` accepts; fails on an error or after
        /// [`DEADLINE`].
        async fn expect(&mut self, wanted: impl Fn(&Packet) -> bool) -> Packet {
            let found = tokio::time::timeout(DEADLINE, async {
                loop {
                    match self.events.recv().await {
                        Some(Ok(packet)) if wanted(&packet) => return packet,
                        Some(Ok(_)) => {}
                        Some(Err(error)) => panic!("client stopped: {error}"),
                        None => panic!("client task ended"),
                    }
                }
            })
            .await;
            found.expect("the packet arrives in time")
        }

        /// The next PUBLISH.
        async fn publish(&mut self) -> Publish {
            match self.expect(|p| matches!(p, Packet::Publish(_))).await {
                Packet::Publish(publish) => publish,
                _ => unreachable!("expect returned a PUBLISH"),
            }
        }

        /// Subscribes and waits for the SUBACK; returns its codes.
        async fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<SubscribeReasonCode> {
            self.client.subscribe(filter, qos).await.expect("subscribe");
            match self.expect(|p| matches!(p, Packet::SubAck(_))).await {
                Packet::SubAck(ack) => ack.return_codes,
                _ => unreachable!("expect returned a SUBACK"),
            }
        }

        /// The error that ended the event loop, within [`DEADLINE`].
        async fn stopped(&mut self) -> String {
            let stopped = tokio::time::timeout(DEADLINE, async {
                loop {
                    match self.events.recv().await {
                        Some(Ok(_)) => {}
                        Some(Err(error)) => return error,
                        None => panic!("client task ended without an error"),
                    }
                }
            })
            .await;
            stopped.expect("the client is disconnected in time")
        }
    }

    /// Waits until `condition` holds, checking every few milliseconds.
    async fn eventually(what: &str, condition: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !condition() {
            assert!(tokio::time::Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A raw TCP client that has sent CONNECT and read the CONNACK.
    async fn raw_client(port: u16, id: &str, keep_alive: u16) -> TcpStream {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let mut connect = Connect::new(id);
        connect.keep_alive = keep_alive;
        write_packet(&mut stream, Packet::Connect(connect)).await;
        let mut connack = [0u8; 4];
        stream.read_exact(&mut connack).await.expect("CONNACK");
        assert_eq!(connack, [0x20, 2, 0, 0]);
        stream
    }

    async fn write_packet(stream: &mut TcpStream, packet: Packet) {
        let mut out = BytesMut::new();
        packet.write(&mut out, usize::MAX).expect("encode");
        stream.write_all(&out).await.expect("write");
    }

    /// Reads until the broker closes the connection (within
    /// [`DEADLINE`]).
    async fn closed_by_broker(stream: &mut TcpStream) {
        let mut sink = vec![0u8; 64 * 1024];
        let closed = tokio::time::timeout(DEADLINE, async {
            loop {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        closed.expect("the broker closes the connection in time");
    }

    #[test]
    fn topics_and_filters_are_validated_and_matched() {
        for topic in ["a", "a/b", "/a", "a/", "$hw/events/device/d1/twin/update"] {
            assert!(valid_topic(topic), "{topic}");
        }
        for topic in ["", "a/+", "a/#", "a+b", "a\0b"] {
            assert!(!valid_topic(topic), "{topic:?}");
        }
        for filter in [
            "#",
            "+",
            "a/+/c",
            "a/#",
            "+/user/#",
            "$hw/events/device/+/twin/+",
        ] {
            assert!(valid_filter(filter), "{filter}");
        }
        for filter in ["", "a/#/c", "a#", "a/b#", "a/+b", "++", "a\0"] {
            assert!(!valid_filter(filter), "{filter:?}");
        }

        assert!(matches("a/b/c", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(matches("a/+/c", "a/b/c"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("a/#", "a"), "`#` also matches the parent level");
        assert!(matches("+/+", "/finance"));
        assert!(matches("#", "a/b"));

        // `$` topics: never through a leading wildcard, always explicitly.
        let twin = "$hw/events/device/d1/twin/update";
        assert!(!matches("#", twin));
        assert!(!matches("+/events/device/+/twin/+", twin));
        assert!(!matches("+/user/#", "$hw/user/x"));
        assert!(matches("$hw/events/device/+/twin/+", twin));
        assert!(matches("$hw/#", twin));
        assert!(!matches(
            "$hw/events/device/+/twin/+",
            "$hw/events/device/ns/d1/twin/update"
        ));
        assert!(matches(
            "$hw/events/device/+/+/twin/+",
            "$hw/events/device/ns/d1/twin/update"
        ));
    }

    #[tokio::test]
    async fn qos1_publishes_are_acked_and_delivered_at_the_lower_qos() {
        // Room for the burst past the inflight window below.
        let broker = start(BrokerSettings {
            queue_messages: 1000,
            ..BrokerSettings::default()
        })
        .await;
        let mut subscriber = TestClient::connect(broker.port, "subscriber").await;
        assert_eq!(
            subscriber.subscribe("a/+", QoS::AtLeastOnce).await,
            [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        );
        assert_eq!(
            subscriber.subscribe("b/#", QoS::AtMostOnce).await,
            [SubscribeReasonCode::Success(QoS::AtMostOnce)]
        );
        // QoS 2 is granted as 1.
        assert_eq!(
            subscriber.subscribe("c", QoS::ExactlyOnce).await,
            [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        );
        let mut publisher = TestClient::connect(broker.port, "publisher").await;

        publisher
            .client
            .publish("a/x", QoS::AtLeastOnce, false, "one")
            .await
            .expect("publish");
        publisher.expect(|p| matches!(p, Packet::PubAck(_))).await;
        let got = subscriber.publish().await;
        assert_eq!((got.topic.as_str(), got.qos), ("a/x", QoS::AtLeastOnce));
        assert_eq!(got.payload, "one");
        assert!(!got.retain);

        publisher
            .client
            .publish("b/y/z", QoS::AtLeastOnce, false, "two")
            .await
            .expect("publish");
        let got = subscriber.publish().await;
        assert_eq!((got.topic.as_str(), got.qos), ("b/y/z", QoS::AtMostOnce));

        publisher
            .client
            .publish("a/x", QoS::AtMostOnce, false, "three")
            .await
            .expect("publish");
        assert_eq!(subscriber.publish().await.qos, QoS::AtMostOnce);

        // QoS 2 from the publisher: PUBREC, PUBCOMP, delivered at QoS 1.
        publisher
            .client
            .publish("c", QoS::ExactlyOnce, false, "four")
            .await
            .expect("publish");
        publisher.expect(|p| matches!(p, Packet::PubComp(_))).await;
        let got = subscriber.publish().await;
        assert_eq!(
            (got.payload.as_ref(), got.qos),
            (&b"four"[..], QoS::AtLeastOnce)
        );

        // More QoS 1 deliveries than the inflight window: rumqttc acks
        // them, so all arrive in order.
        let count = INFLIGHT_WINDOW * 2 + 3;
        for i in 0..count {
            broker
                .broker
                .publish("a/n", i.to_string().into(), QoS::AtLeastOnce, false)
                .expect("publish");
        }
        for i in 0..count {
            assert_eq!(subscriber.publish().await.payload, i.to_string());
        }
    }

    /// The next packet the broker sends on a raw connection.
    async fn read_one(stream: &mut TcpStream, buf: &mut BytesMut) -> Packet {
        let read = tokio::time::timeout(DEADLINE, async {
            loop {
                match Packet::read(buf, usize::MAX) {
                    Ok(packet) => return packet,
                    Err(CodecError::InsufficientBytes(_)) => {}
                    Err(error) => panic!("bad packet from the broker: {error}"),
                }
                let n = stream.read_buf(buf).await.expect("read");
                assert!(n > 0, "the broker closed the connection");
            }
        });
        read.await.expect("a packet in time")
    }

    #[tokio::test]
    async fn unacked_deliveries_wait_for_the_window_while_acks_still_flow() {
        let broker = start(BrokerSettings {
            queue_messages: 1000,
            ..BrokerSettings::default()
        })
        .await;
        let mut stream = raw_client(broker.port, "lazy", 0).await;
        let mut buf = BytesMut::new();
        let mut subscribe = rumqttc::mqttbytes::v4::Subscribe::new("w", QoS::AtLeastOnce);
        subscribe.pkid = 1;
        write_packet(&mut stream, Packet::Subscribe(subscribe)).await;
        assert!(matches!(
            read_one(&mut stream, &mut buf).await,
            Packet::SubAck(_)
        ));

        let extra = 5;
        for i in 0..INFLIGHT_WINDOW + extra {
            broker
                .broker
                .publish("w", i.to_string().into(), QoS::AtLeastOnce, false)
                .expect("publish");
        }
        let mut unacked = Vec::new();
        for _ in 0..INFLIGHT_WINDOW {
            match read_one(&mut stream, &mut buf).await {
                Packet::Publish(publish) => unacked.push(publish.pkid),
                other => panic!("expected a PUBLISH, got {other:?}"),
            }
        }
        // The window is full: the client's own QoS 1 publish is still
        // acknowledged, ahead of the held deliveries.
        let mut own = Publish::new("elsewhere", QoS::AtLeastOnce, "mine");
        own.pkid = 7;
        write_packet(&mut stream, Packet::Publish(own)).await;
        assert_eq!(
            read_one(&mut stream, &mut buf).await,
            Packet::PubAck(PubAck::new(7))
        );
        // Acknowledging frees the window for the rest, in order.
        for pkid in unacked {
            write_packet(&mut stream, Packet::PubAck(PubAck::new(pkid))).await;
        }
        for i in INFLIGHT_WINDOW..INFLIGHT_WINDOW + extra {
            match read_one(&mut stream, &mut buf).await {
                Packet::Publish(publish) => assert_eq!(publish.payload, i.to_string()),
                other => panic!("expected a PUBLISH, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn dollar_topics_reach_explicit_subscriptions_only() {
        let broker = start(BrokerSettings::default()).await;
        let mut everything = TestClient::connect(broker.port, "everything").await;
        everything.subscribe("#", QoS::AtLeastOnce).await;
        let mut twin = TestClient::connect(broker.port, "twin").await;
        twin.subscribe("$hw/events/device/+/twin/+", QoS::AtLeastOnce)
            .await;
        let publisher = TestClient::connect(broker.port, "device").await;
        for topic in ["$hw/events/device/d1/twin/update", "plain/topic"] {
            publisher
                .client
                .publish(topic, QoS::AtLeastOnce, false, "x")
                .await
                .expect("publish");
        }
        assert_eq!(
            twin.publish().await.topic,
            "$hw/events/device/d1/twin/update"
        );
        // `#` saw the plain topic, and the `$` one published before it
        // would have come first.
        assert_eq!(everything.publish().await.topic, "plain/topic");
    }

    #[tokio::test]
    async fn unsubscribed_filters_stop_delivery() {
        let broker = start(BrokerSettings::default()).await;
        let mut subscriber = TestClient::connect(broker.port, "subscriber").await;
        subscriber.subscribe("gone/#", QoS::AtLeastOnce).await;
        subscriber.subscribe("kept", QoS::AtLeastOnce).await;
        subscriber
            .client
            .unsubscribe("gone/#")
            .await
            .expect("unsubscribe");
        subscriber
            .expect(|p| matches!(p, Packet::UnsubAck(_)))
            .await;
        broker
            .broker
            .publish("gone/1", Bytes::from_static(b"no"), QoS::AtLeastOnce, false)
            .expect("publish");
        broker
            .broker
            .publish("kept", Bytes::from_static(b"yes"), QoS::AtLeastOnce, false)
            .expect("publish");
        // Deliveries keep the publish order: had `gone/1` been delivered,
        // it would come first.
        assert_eq!(subscriber.publish().await.topic, "kept");
    }

    #[tokio::test]
    async fn retained_messages_reach_later_subscribers_until_cleared() {
        let broker = start(BrokerSettings::default()).await;
        let publisher = TestClient::connect(broker.port, "publisher").await;
        for (topic, payload) in [("r/a", "first"), ("r/a", "second"), ("r/b", "other")] {
            publisher
                .client
                .publish(topic, QoS::AtLeastOnce, true, payload)
                .await
                .expect("publish");
        }
        let mut late = TestClient::connect(broker.port, "late").await;
        late.subscribe("r/a", QoS::AtLeastOnce).await;
        let got = late.publish().await;
        assert!(got.retain);
        assert_eq!(got.payload, "second", "the newest retained message");

        // An empty retained payload clears the topic.
        publisher
            .client
            .publish("r/a", QoS::AtLeastOnce, true, "")
            .await
            .expect("publish");
        // `late` receives the clearing publish live, not as retained.
        let live = late.publish().await;
        assert!(!live.retain && live.payload.is_empty());
        let mut later = TestClient::connect(broker.port, "later").await;
        later.subscribe("r/#", QoS::AtLeastOnce).await;
        let got = later.publish().await;
        assert_eq!((got.topic.as_str(), got.retain), ("r/b", true));
        // Only r/b is retained: the next message is a live one.
        broker
            .broker
            .publish("r/c", Bytes::from_static(b"live"), QoS::AtMostOnce, false)
            .expect("publish");
        assert_eq!(later.publish().await.topic, "r/c");
    }

    #[tokio::test]
    async fn a_newer_connection_replaces_the_older_one() {
        let broker = start(BrokerSettings::default()).await;
        let mut older = TestClient::connect(broker.port, "same-id").await;
        older.subscribe("t", QoS::AtLeastOnce).await;
        let mut newer = TestClient::connect(broker.port, "same-id").await;
        older.stopped().await;
        eventually("one client left", || broker.metrics.clients() == 1).await;
        // The newer one starts clean and works.
        newer.subscribe("t", QoS::AtLeastOnce).await;
        broker
            .broker
            .publish("t", Bytes::from_static(b"x"), QoS::AtLeastOnce, false)
            .expect("publish");
        assert_eq!(newer.publish().await.payload, "x");
    }

    #[tokio::test]
    async fn credentials_and_client_limits_are_enforced() {
        let broker = start(BrokerSettings {
            credentials: Some(("edge".into(), "secret".into())),
            max_clients: 2,
            ..BrokerSettings::default()
        })
        .await;
        let mut wrong = options(broker.port, "wrong");
        wrong.set_credentials("edge", "guess");
        let error = client(wrong).stopped().await;
        assert!(error.contains("BadUserNamePassword"), "{error}");
        let mut anonymous = client(options(broker.port, "anonymous"));
        anonymous.stopped().await;

        let login = |id: &str| {
            let mut options = options(broker.port, id);
            options.set_credentials("edge", "secret");
            options
        };
        let mut first = client(login("first"));
        first.expect(|p| matches!(p, Packet::ConnAck(_))).await;
        let mut second = client(login("second"));
        second.expect(|p| matches!(p, Packet::ConnAck(_))).await;
        let mut third = client(login("third"));
        third.stopped().await;
        assert_eq!(broker.metrics.clients(), 2);
    }

    #[tokio::test]
    async fn malformed_packets_close_the_connection_and_are_counted() {
        let broker = start(BrokerSettings {
            max_packet: 1024,
            ..BrokerSettings::default()
        })
        .await;
        // An unknown packet type.
        let mut stream = raw_client(broker.port, "garbage", 30).await;
        stream.write_all(&[0x00, 0x00]).await.expect("write");
        closed_by_broker(&mut stream).await;
        // A publish to a topic with a wildcard.
        let mut stream = raw_client(broker.port, "wildcard", 30).await;
        let publish = Publish::new("a/+", QoS::AtMostOnce, "x");
        write_packet(&mut stream, Packet::Publish(publish)).await;
        closed_by_broker(&mut stream).await;
        // A packet over the size limit, refused from its header.
        let mut stream = raw_client(broker.port, "large", 30).await;
        let publish = Publish::new("big", QoS::AtMostOnce, vec![0u8; 2048]);
        write_packet(&mut stream, Packet::Publish(publish)).await;
        closed_by_broker(&mut stream).await;
        // Not starting with CONNECT.
        let mut stream = TcpStream::connect(("127.0.0.1", broker.port))
            .await
            .expect("connect");
        write_packet(&mut stream, Packet::PingReq).await;
        closed_by_broker(&mut stream).await;

        eventually("four malformed connections counted", || {
            broker.metrics.malformed_packets() == 4
        })
        .await;
        // The broker still serves well-behaved clients.
        let mut good = TestClient::connect(broker.port, "good").await;
        good.subscribe("ok", QoS::AtMostOnce).await;
    }

    #[tokio::test]
    async fn idle_clients_are_closed_after_one_and_a_half_keep_alives() {
        let broker = start(BrokerSettings::default()).await;
        let mut stream = raw_client(broker.port, "idle", 1).await;
        let started = tokio::time::Instant::now();
        closed_by_broker(&mut stream).await;
        assert!(started.elapsed() >= Duration::from_millis(1400));
        eventually("no client left", || broker.metrics.clients() == 0).await;
    }

    #[tokio::test]
    async fn a_slow_subscriber_loses_qos0_messages_then_is_disconnected() {
        let broker = start(BrokerSettings {
            queue_messages: 8,
            queue_bytes: 256 * 1024,
            ..BrokerSettings::default()
        })
        .await;
        // Subscribes, then never reads again.
        let mut stream = raw_client(broker.port, "slow", 0).await;
        let mut subscribe = rumqttc::mqttbytes::v4::Subscribe::new("slow/qos0", QoS::AtMostOnce);
        subscribe.pkid = 1;
        subscribe.add("slow/qos1".to_owned(), QoS::AtLeastOnce);
        write_packet(&mut stream, Packet::Subscribe(subscribe)).await;
        let mut suback = [0u8; 6];
        stream.read_exact(&mut suback).await.expect("SUBACK");
        assert_eq!(suback, [0x90, 4, 0, 1, 0, 1]);

        // QoS 0 messages fill the socket buffers, then the queue; the rest
        // are dropped, and the queue stays within its bounds.
        let payload = Bytes::from(vec![7u8; 64 * 1024]);
        for _ in 0..2000 {
            if broker.metrics.messages_dropped() > 0 {
                break;
            }
            broker
                .broker
                .publish("slow/qos0", payload.clone(), QoS::AtMostOnce, false)
                .expect("publish");
            tokio::task::yield_now().await;
        }
        assert!(broker.metrics.messages_dropped() > 0, "nothing dropped");
        {
            let state = broker.broker.shared.lock();
            let outbox = &state.clients["slow"].outbox;
            assert!(outbox.bytes.load(Ordering::Acquire) <= 256 * 1024);
        }
        assert_eq!(broker.metrics.slow_disconnects(), 0);
        assert_eq!(broker.metrics.clients(), 1);

        // A QoS 1 message that does not fit disconnects it.
        broker
            .broker
            .publish("slow/qos1", payload, QoS::AtLeastOnce, false)
            .expect("publish");
        assert_eq!(broker.metrics.slow_disconnects(), 1);
        closed_by_broker(&mut stream).await;
        eventually("the slow client is gone", || broker.metrics.clients() == 0).await;
    }

    #[tokio::test]
    async fn the_internal_subscriber_gets_client_publishes_and_edgecore_publishes_reach_clients() {
        let broker = start(BrokerSettings::default()).await;
        let mut inbox = broker
            .broker
            .subscribe_internal(&["$hw/events/device/+/twin/+", "+/user/#"], 8)
            .expect("filters");
        assert!(broker.broker.subscribe_internal(&["a/#/b"], 8).is_err());
        let mut device = TestClient::connect(broker.port, "device").await;
        device
            .subscribe("$hw/events/device/d1/twin/update/result", QoS::AtLeastOnce)
            .await;

        for topic in [
            "$hw/events/device/d1/twin/update",
            "$hw/user/ignored",
            "factory/user/line-1",
        ] {
            device
                .client
                .publish(topic, QoS::AtLeastOnce, false, topic)
                .await
                .expect("publish");
        }
        let got = tokio::time::timeout(DEADLINE, inbox.recv()).await;
        assert_eq!(
            got.expect("in time").expect("delivery").topic,
            "$hw/events/device/d1/twin/update"
        );
        let got = tokio::time::timeout(DEADLINE, inbox.recv()).await;
        assert_eq!(
            got.expect("in time").expect("delivery").payload,
            "factory/user/line-1"
        );

        // edgecore's own publish reaches the client, not the inbox.
        broker
            .broker
            .publish(
                "$hw/events/device/d1/twin/update/result",
                Bytes::from_static(b"{}"),
                QoS::AtLeastOnce,
                false,
            )
            .expect("publish");
        assert_eq!(device.publish().await.payload, "{}");
        assert!(inbox.try_recv().is_err());
        assert!(matches!(
            broker
                .broker
                .publish("a/+", Bytes::new(), QoS::AtMostOnce, false),
            Err(BrokerError::InvalidTopic(_))
        ));
        assert!(matches!(
            broker.broker.publish(
                "big",
                Bytes::from(vec![0u8; (1 << 20) + 1]),
                QoS::AtMostOnce,
                false
            ),
            Err(BrokerError::TooLarge { .. })
        ));
    }
}
