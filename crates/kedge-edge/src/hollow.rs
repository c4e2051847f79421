//! Hollow edge nodes: many light stand-ins for edgecore in one process,
//! for edgemark and the link benchmark.
//!
//! A hollow node has no bus and no modules. One task per node
//! ([`HollowNode::run`]) keeps its link to the cloud the way EdgeHub does:
//! it dials through a [`Dialer`], sends a keepalive at once and then every
//! `heartbeat`, answers every downstream message that needs an
//! acknowledgement ([`delivery::needs_ack`]) with an `OK` reply, counts what
//! it receives, and when a dial fails or the link ends waits with
//! exponential backoff and full jitter ([`Backoff`]) before the next
//! attempt; a link that stayed up for `stable_after` resets the backoff,
//! and a link the cloud closed because it stops spreads the next attempts
//! over the window it gave ([`Backoff::link_ended`]).
//!
//! Each node keeps what it was sent as MetaManager would, newest version
//! per object ([`Holdings`]): an older version than the one held is never
//! applied and is counted as a regression, so fault tests can check that a
//! node ends with exactly the latest version of every object.
//!
//! [`HollowDialer`] is the dialer edgemark gives each node: the node's own
//! certificate (obtained once with the join token, a bounded number at a
//! time, and kept on disk), then a WebSocket (or a QUIC connection on a
//! UDP socket shared by the nodes) from a chosen local address,
//! paced by a process-wide [`Pacer`].

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use kedge_message::{Message, delivery};
use kedge_transport::bootstrap::{BootstrapConfig, EdgeCredentials, ensure_certificates};
use kedge_transport::limits::LinkLimits;
use kedge_transport::link::Link;
use kedge_transport::metrics::LinkMetrics;
use kedge_transport::quic::SharedEndpoints;
use kedge_transport::ws::{ConnectTarget, connect};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{Mutex, OnceCell, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span};

use crate::edgehub::backoff::Backoff;
use crate::edgehub::{DialError, DialFuture, Dialer, PrepareFuture};

/// How a hollow node keeps its link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HollowSettings {
    /// Time between keepalives (EdgeHub's `heartbeat`, 15 s).
    pub heartbeat: Duration,
    /// First reconnect delay bound (1 s).
    pub backoff_base: Duration,
    /// Largest reconnect delay bound (30 s).
    pub backoff_max: Duration,
    /// A link that stayed up at least this long resets the backoff (30 s).
    pub stable_after: Duration,
    /// How long one dial may take before it counts as failed (60 s).
    pub dial_timeout: Duration,
}

impl Default for HollowSettings {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(15),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            stable_after: Duration::from_secs(30),
            dial_timeout: Duration::from_secs(60),
        }
    }
}

/// What all hollow nodes of a process count together
/// (`kedge_hollow_*` once [registered](Self::register)). Clones share the
/// counters.
#[derive(Debug, Clone, Default)]
pub struct HollowMetrics {
    /// Nodes whose link is up.
    pub connected: Gauge,
    /// Links established.
    pub connects: Counter,
    /// Dials that failed or timed out.
    pub dial_failures: Counter,
    /// Links that ended.
    pub disconnects: Counter,
    /// Messages received from the cloud.
    pub received: Counter,
    /// Acknowledgements sent.
    pub acked: Counter,
    /// Keepalives sent.
    pub keepalives: Counter,
}

impl HollowMetrics {
    /// Counters registered in `registry` under `kedge_hollow_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let hollow = registry.sub_registry_with_prefix("kedge_hollow");
        hollow.register(
            "connected",
            "Hollow nodes whose link is up",
            metrics.connected.clone(),
        );
        hollow.register("connects", "Links established", metrics.connects.clone());
        hollow.register(
            "dial_failures",
            "Dials that failed or timed out",
            metrics.dial_failures.clone(),
        );
        hollow.register(
            "disconnects",
            "Links that ended",
            metrics.disconnects.clone(),
        );
        hollow.register(
            "received",
            "Messages received from the cloud",
            metrics.received.clone(),
        );
        hollow.register("acked", "Acknowledgements sent", metrics.acked.clone());
        hollow.register("keepalives", "Keepalives sent", metrics.keepalives.clone());
        metrics
    }
}

/// One object a node holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Held {
    /// The object's UID.
    pub uid: String,
    /// The resourceVersion held.
    pub version: u64,
}

/// What one node holds, by resource (`<namespace>/<type>/<name>`), and how
/// often it was sent something it already had or something older.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Holding {
    /// The objects held.
    pub objects: std::collections::BTreeMap<String, Held>,
    /// Versions received again (resends whose ACK was lost).
    pub duplicates: u64,
    /// Versions older than the one held: never applied, and a bug.
    pub regressions: u64,
}

impl Holding {
    /// Applies a downstream object message as MetaManager would.
    pub fn apply(&mut self, msg: &Message) {
        let uid = msg
            .content
            .pointer("/metadata/uid")
            .and_then(|uid| uid.as_str())
            .unwrap_or_default()
            .to_owned();
        let resource = msg.router.resource.clone();
        if msg.router.operation == kedge_message::operation::DELETE {
            if self
                .objects
                .get(&resource)
                .is_some_and(|held| uid.is_empty() || held.uid == uid)
            {
                self.objects.remove(&resource);
            }
            return;
        }
        let Ok(version) = msg.header.resource_version.parse::<u64>() else {
            return;
        };
        match self.objects.get(&resource) {
            Some(held) if held.uid == uid && held.version == version => self.duplicates += 1,
            Some(held) if held.uid == uid && held.version > version => self.regressions += 1,
            _ => {
                self.objects.insert(resource, Held { uid, version });
            }
        }
    }
}

/// What every node of a process holds, by node name. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct Holdings(Arc<std::sync::Mutex<std::collections::BTreeMap<String, Holding>>>);

impl Holdings {
    fn apply(&self, node: &str, msg: &Message) {
        let mut nodes = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        nodes.entry(node.to_owned()).or_default().apply(msg);
    }

    /// A copy of what every node holds.
    pub fn snapshot(&self) -> std::collections::BTreeMap<String, Holding> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// One hollow node: a name, a dialer and the loop that keeps the link.
pub struct HollowNode {
    name: String,
    dialer: Arc<dyn Dialer>,
    settings: HollowSettings,
    metrics: HollowMetrics,
    backoff_seed: Option<u64>,
    holdings: Holdings,
}

impl std::fmt::Debug for HollowNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HollowNode")
            .field("name", &self.name)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl HollowNode {
    /// A node called `name` that reaches the cloud through `dialer`.
    pub fn new(
        name: impl Into<String>,
        dialer: Arc<dyn Dialer>,
        settings: HollowSettings,
        metrics: HollowMetrics,
    ) -> Self {
        Self {
            name: name.into(),
            dialer,
            settings,
            metrics,
            backoff_seed: None,
            holdings: Holdings::default(),
        }
    }

    /// Keeps what this node is sent in `holdings`.
    #[must_use]
    pub fn with_holdings(mut self, holdings: Holdings) -> Self {
        self.holdings = holdings;
        self
    }

    /// Draws the reconnect jitter from a generator seeded with `seed`
    /// (tests) instead of the operating system's random source.
    #[must_use]
    pub fn with_backoff_seed(mut self, seed: u64) -> Self {
        self.backoff_seed = Some(seed);
        self
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Keeps the node connected until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let span = info_span!("hollow", node = %self.name);
        self.run_inner(shutdown).instrument(span).await;
    }

    async fn run_inner(self, shutdown: CancellationToken) {
        let s = &self.settings;
        let mut backoff = match self.backoff_seed {
            Some(seed) => Backoff::seeded(s.backoff_base, s.backoff_max, seed),
            None => Backoff::new(s.backoff_base, s.backoff_max),
        };
        loop {
            let prepared = tokio::select! {
                () = shutdown.cancelled() => return,
                prepared = self.dialer.prepare() => prepared,
            };
            let dialled = match prepared {
                Ok(()) => tokio::select! {
                    () = shutdown.cancelled() => return,
                    dialled = tokio::time::timeout(s.dial_timeout, self.dialer.dial()) => dialled,
                },
                Err(error) => Ok(Err(error)),
            };
            match dialled {
                Ok(Ok(link)) => {
                    self.metrics.connects.inc();
                    self.metrics.connected.inc();
                    let since = Instant::now();
                    let restart = link.sender.clone();
                    let stopped = self.serve(link, &shutdown).await;
                    self.metrics.connected.dec();
                    self.metrics.disconnects.inc();
                    if stopped {
                        return;
                    }
                    backoff.link_ended(since.elapsed(), s.stable_after, restart.restart_window());
                    debug!("the link ended");
                }
                Ok(Err(error)) => {
                    self.metrics.dial_failures.inc();
                    debug!(error = %error, "dial failed");
                }
                Err(_elapsed) => {
                    self.metrics.dial_failures.inc();
                    debug!(after = ?s.dial_timeout, "dial timed out");
                }
            }
            let delay = backoff.next_delay();
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Serves one link until it ends (`false`) or `shutdown` (`true`).
    async fn serve(&self, link: Link, shutdown: &CancellationToken) -> bool {
        let Link {
            sender,
            mut receiver,
            ..
        } = link;
        // The first tick completes at once: a keepalive right after
        // connecting, as EdgeHub sends.
        let mut heartbeat = tokio::time::interval(self.settings.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    sender.close();
                    return true;
                }
                _ = heartbeat.tick() => {
                    if sender.send(Message::keepalive()).await.is_err() {
                        return false;
                    }
                    self.metrics.keepalives.inc();
                }
                msg = receiver.recv() => {
                    let Some(msg) = msg else { return false };
                    self.metrics.received.inc();
                    if delivery::needs_ack(&msg) {
                        self.holdings.apply(&self.name, &msg);
                        if sender.send(msg.ack()).await.is_err() {
                            return false;
                        }
                        self.metrics.acked.inc();
                    }
                }
            }
        }
    }
}

/// Spaces events (dials) at least `1 / rate` apart across all who share it.
#[derive(Debug)]
pub struct Pacer {
    interval: Duration,
    next: Mutex<Instant>,
}

impl Pacer {
    /// A pacer allowing `per_second` events per second; `None` for a rate
    /// that is not positive.
    pub fn new(per_second: f64) -> Option<Self> {
        (per_second.is_finite() && per_second > 0.0).then(|| Self {
            interval: Duration::from_secs_f64(1.0 / per_second),
            next: Mutex::new(Instant::now()),
        })
    }

    /// Waits for this caller's turn.
    pub async fn wait(&self) {
        let at = {
            let mut next = self.next.lock().await;
            let at = (*next).max(Instant::now());
            *next = at + self.interval;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

/// What the hollow nodes of one process share: the limit on certificate
/// requests in flight, the dial pacing, the transport limits and metrics.
#[derive(Debug, Clone)]
pub struct HollowShared {
    /// Certificate requests allowed at once.
    pub issue: Arc<Semaphore>,
    /// Paces every dial, when set.
    pub pacer: Option<Arc<Pacer>>,
    /// The limits of each link.
    pub limits: LinkLimits,
    /// The links' transport metrics.
    pub link_metrics: LinkMetrics,
    /// Set when the nodes connect over QUIC, from these shared endpoints;
    /// over WebSocket otherwise.
    pub quic: Option<SharedEndpoints>,
}

impl HollowShared {
    /// At most `issuing` certificate requests at once, dials paced at
    /// `connect_rate` per second (unpaced when `None`), client limits.
    pub fn new(issuing: usize, connect_rate: Option<f64>) -> Self {
        Self {
            issue: Arc::new(Semaphore::new(issuing.max(1))),
            pacer: connect_rate.and_then(Pacer::new).map(Arc::new),
            limits: LinkLimits::client(),
            link_metrics: LinkMetrics::default(),
            quic: None,
        }
    }

    /// The same, with every node connecting over QUIC, all links from one
    /// local address sharing one UDP socket.
    #[must_use]
    pub fn over_quic(mut self) -> Self {
        self.quic = Some(SharedEndpoints::default());
        self
    }
}

/// Dials CloudHub over WebSocket (or QUIC) as one hollow node: its certificate from
/// the files of `bootstrap` (requested with the join token when missing,
/// once), then a connection from the target's local address.
#[derive(Debug)]
pub struct HollowDialer {
    target: ConnectTarget,
    bootstrap: BootstrapConfig,
    shared: HollowShared,
    credentials: OnceCell<EdgeCredentials>,
    /// The TLS configuration made from the credentials, kept: making it
    /// parses the node's key, which costs more than the rest of a dial.
    tls: OnceCell<Arc<rustls::ClientConfig>>,
}

impl HollowDialer {
    /// A dialer for `target`, with the certificate kept as `bootstrap`
    /// says.
    pub fn new(target: ConnectTarget, bootstrap: BootstrapConfig, shared: HollowShared) -> Self {
        Self {
            target,
            bootstrap,
            shared,
            credentials: OnceCell::new(),
            tls: OnceCell::new(),
        }
    }

    /// The same dialer connecting from `local_addr`.
    #[must_use]
    pub fn with_local_addr(mut self, local_addr: IpAddr) -> Self {
        self.target = self.target.with_local_addr(local_addr);
        self
    }

    /// Where and as whom it connects.
    pub fn target(&self) -> &ConnectTarget {
        &self.target
    }

    /// The node's credentials, from disk or the certificate server, at
    /// most `issue` permits' worth at a time.
    pub async fn credentials(&self) -> Result<&EdgeCredentials, DialError> {
        self.credentials
            .get_or_try_init(|| async {
                let _permit =
                    self.shared
                        .issue
                        .acquire()
                        .await
                        .map_err(|e| DialError::Certificates {
                            source: Box::new(e),
                        })?;
                ensure_certificates(&self.bootstrap)
                    .await
                    .map_err(|e| DialError::Certificates {
                        source: Box::new(e),
                    })
            })
            .await
    }
}

impl Dialer for Arc<HollowDialer> {
    /// The node's certificate (queueing for a slot to request it) and its
    /// turn under the connection rate: with many nodes these queues are
    /// long, and a dial's deadline must not run out in them.
    fn prepare(&self) -> PrepareFuture {
        let this = Arc::clone(self);
        Box::pin(async move {
            this.credentials().await?;
            if let Some(pacer) = &this.shared.pacer {
                pacer.wait().await;
            }
            Ok(())
        })
    }

    fn dial(&self) -> DialFuture {
        let this = Arc::clone(self);
        Box::pin(async move {
            let credentials = this.credentials().await?;
            let tls =
                this.tls
                    .get_or_try_init(|| async {
                        credentials.client_config().map(Arc::new).map_err(|e| {
                            DialError::Certificates {
                                source: Box::new(e),
                            }
                        })
                    })
                    .await?
                    .clone();
            let (limits, metrics) = (&this.shared.limits, this.shared.link_metrics.clone());
            match &this.shared.quic {
                Some(endpoints) => endpoints.connect(&this.target, tls, limits, metrics).await,
                None => connect(&this.target, tls, limits, metrics).await,
            }
            .map_err(|e| DialError::Connect {
                server: this.target.server.clone(),
                source: Box::new(e),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex as StdMutex;
    use std::sync::atomic::AtomicU64;

    use kedge_transport::link::{Peer, memory_pair};

    use super::*;

    fn peer(node: &str) -> Peer {
        Peer {
            node_id: node.into(),
            project_id: "p".into(),
            address: None,
        }
    }

    /// Hands out the cloud ends of in-memory links, one per dial; a dial
    /// with none prepared fails.
    #[derive(Default)]
    struct MemoryDialer {
        edges: StdMutex<VecDeque<Link>>,
        dials: AtomicU64,
    }

    impl MemoryDialer {
        /// Prepares the next link and returns the cloud's end of it.
        fn next_link(&self) -> Link {
            let (cloud, edge) = memory_pair(peer("hollow-0"), peer("cloud"), 8);
            self.edges.lock().expect("links").push_back(edge);
            cloud
        }
    }

    impl Dialer for Arc<MemoryDialer> {
        fn dial(&self) -> DialFuture {
            self.dials.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let next = self.edges.lock().expect("links").pop_front();
            Box::pin(async move {
                next.ok_or_else(|| DialError::Unavailable("no link prepared".into()))
            })
        }
    }

    fn settings() -> HollowSettings {
        HollowSettings {
            heartbeat: Duration::from_secs(15),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(4),
            stable_after: Duration::from_secs(30),
            dial_timeout: Duration::from_secs(10),
        }
    }

    async fn next(link: &mut Link) -> Message {
        tokio::time::timeout(Duration::from_secs(60), link.receiver.recv())
            .await
            .expect("a message in time")
            .expect("the link is open")
    }

    fn configmap_update() -> Message {
        Message::new(
            "edgecontroller",
            "resource",
            "update",
            "default/configmap/cfg",
            serde_json::json!({"metadata": {"name": "cfg"}}),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_hollow_node_keeps_alive_acks_and_reconnects() {
        let dialer = Arc::new(MemoryDialer::default());
        let mut cloud = dialer.next_link();
        let metrics = HollowMetrics::default();
        let node = HollowNode::new(
            "hollow-0",
            Arc::new(Arc::clone(&dialer)),
            settings(),
            metrics.clone(),
        )
        .with_backoff_seed(7);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(node.run(shutdown.clone()));

        // A keepalive at once, and the next one a heartbeat later.
        let first = next(&mut cloud).await;
        assert_eq!(first.router.operation, "keepalive");
        let at = Instant::now();
        let second = next(&mut cloud).await;
        assert_eq!(second.router.operation, "keepalive");
        assert_eq!(at.elapsed(), Duration::from_secs(15));
        assert_eq!(metrics.connected.get(), 1);

        // An object that needs an acknowledgement gets one; a reply that
        // does not is only counted.
        let update = configmap_update();
        cloud.sender.send(update.clone()).await.expect("sent");
        let ack = next(&mut cloud).await;
        assert_eq!(ack.router.operation, "response");
        assert_eq!(ack.header.parent_id, update.header.id);
        assert_eq!(ack.content, serde_json::json!("OK"));
        let plain = update.ack();
        assert!(!delivery::needs_ack(&plain));
        cloud.sender.send(plain).await.expect("sent");
        cloud.sender.send(configmap_update()).await.expect("sent");
        let ack = next(&mut cloud).await;
        assert_eq!(ack.router.operation, "response", "only the object is acked");
        assert_eq!(metrics.received.get(), 3);
        assert_eq!(metrics.acked.get(), 2);

        // The link drops; with no link to be had the dials fail and back
        // off, and once one is there the node is back with a keepalive.
        cloud.sender.close();
        let deadline = Instant::now() + Duration::from_secs(60);
        while dialer.dials.load(std::sync::atomic::Ordering::SeqCst) < 3 {
            assert!(Instant::now() < deadline, "the node does not redial");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(metrics.connected.get(), 0);
        assert!(metrics.dial_failures.get() >= 1);
        let mut cloud = dialer.next_link();
        let again = next(&mut cloud).await;
        assert_eq!(again.router.operation, "keepalive");
        assert_eq!(metrics.connects.get(), 2);
        assert_eq!(metrics.connected.get(), 1);

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the node stops")
            .expect("the task ends cleanly");
        assert_eq!(metrics.connected.get(), 0);
        assert!(cloud.receiver.recv().await.is_none(), "the link is closed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pacer_spaces_its_callers() {
        let pacer = Arc::new(Pacer::new(10.0).expect("a rate"));
        let start = Instant::now();
        for _ in 0..5 {
            pacer.wait().await;
        }
        assert_eq!(start.elapsed(), Duration::from_millis(400));
        assert!(Pacer::new(0.0).is_none());
    }
}
