//! EdgeHub on a real module bus, against in-memory links and paused time.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kedge_bus::{BusBuilder, BusConfig, BusHandle, Module, ModuleContext, ModuleError, RunningBus};
use kedge_edge::edgehub::backoff::Backoff;
use kedge_edge::edgehub::{
    DialError, DialFuture, Dialer, DropReason, EdgeHub, EdgeHubMetrics, EdgeHubSettings,
};
use kedge_message::Message;
use kedge_transport::link::{Link, Peer, memory_pair};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long any single wait in these tests may take (virtual time).
const DEADLINE: Duration = Duration::from_secs(600);

// === test modules and dialer ===

/// A module that hands every message it receives to the test.
struct Probe {
    name: &'static str,
    group: &'static str,
    seen: mpsc::UnboundedSender<Message>,
}

impl Module for Probe {
    fn name(&self) -> &str {
        self.name
    }

    fn group(&self) -> &str {
        self.group
    }

    async fn run(self, mut ctx: ModuleContext) -> Result<(), ModuleError> {
        while let Some(msg) = ctx.recv().await {
            let _ = self.seen.send(msg);
        }
        Ok(())
    }
}

/// A module that never reads its inbox.
struct Stuck {
    name: &'static str,
    group: &'static str,
}

impl Module for Stuck {
    fn name(&self) -> &str {
        self.name
    }

    fn group(&self) -> &str {
        self.group
    }

    async fn run(self, ctx: ModuleContext) -> Result<(), ModuleError> {
        ctx.cancelled().await;
        Ok(())
    }
}

/// One dial as the test sees it: when, and the cloud's end if it
/// succeeded.
struct Dial {
    at: Instant,
    cloud: Option<Link>,
}

/// Succeeds or fails as scripted; when the script is used up, as
/// `fallback` says.
struct ScriptedDialer {
    script: Mutex<VecDeque<bool>>,
    fallback: AtomicBool,
    dials: mpsc::UnboundedSender<Dial>,
}

fn peer(name: &str) -> Peer {
    Peer {
        node_id: name.to_owned(),
        project_id: "project".to_owned(),
        address: None,
    }
}

impl Dialer for ScriptedDialer {
    fn dial(&self) -> DialFuture {
        let next = self
            .script
            .lock()
            .expect("script lock")
            .pop_front()
            .unwrap_or_else(|| self.fallback.load(Ordering::SeqCst));
        let at = Instant::now();
        if next {
            let (cloud, edge) = memory_pair(peer("edge-1"), peer("cloudhub"), 256);
            let _ = self.dials.send(Dial {
                at,
                cloud: Some(cloud),
            });
            Box::pin(async move { Ok(edge) })
        } else {
            let _ = self.dials.send(Dial { at, cloud: None });
            Box::pin(async move { Err(DialError::Unavailable("scripted failure".into())) })
        }
    }
}

// === harness ===

struct Harness {
    bus: RunningBus,
    handle: BusHandle,
    metrics: EdgeHubMetrics,
    dialer: Arc<ScriptedDialer>,
    dials: mpsc::UnboundedReceiver<Dial>,
    probes: HashMap<&'static str, mpsc::UnboundedReceiver<Message>>,
}

struct Setup<'a> {
    settings: EdgeHubSettings,
    script: Vec<bool>,
    fallback: bool,
    probes: &'a [(&'static str, &'static str)],
    stuck: &'a [(&'static str, &'static str)],
    inbox_capacity: usize,
    seed: u64,
    /// Messages queued for EdgeHub before the bus starts.
    queued: Vec<Message>,
}

impl<'a> Setup<'a> {
    fn new(outbox: &Path) -> Self {
        Self {
            settings: EdgeHubSettings::new(outbox),
            script: Vec::new(),
            fallback: true,
            probes: &[],
            stuck: &[],
            inbox_capacity: 1024,
            seed: 1,
            queued: Vec::new(),
        }
    }

    fn start(self) -> Harness {
        let (dial_tx, dials) = mpsc::unbounded_channel();
        let dialer = Arc::new(ScriptedDialer {
            script: Mutex::new(self.script.into()),
            fallback: AtomicBool::new(self.fallback),
            dials: dial_tx,
        });
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = EdgeHubMetrics::register(&mut registry);
        let hub = EdgeHub::new(self.settings, dialer.clone())
            .with_metrics(metrics.clone())
            .with_backoff_seed(self.seed);
        let mut builder = BusBuilder::new(BusConfig {
            inbox_capacity: self.inbox_capacity,
            ..BusConfig::default()
        });
        builder.register(hub, true).expect("edgehub registers");
        let mut probes = HashMap::new();
        for &(name, group) in self.probes {
            let (tx, rx) = mpsc::unbounded_channel();
            builder
                .register(
                    Probe {
                        name,
                        group,
                        seen: tx,
                    },
                    true,
                )
                .expect("probe registers");
            probes.insert(name, rx);
        }
        for &(name, group) in self.stuck {
            builder
                .register(Stuck { name, group }, true)
                .expect("stuck module registers");
        }
        let bus = builder.build(&mut registry);
        let handle = bus.handle();
        for msg in self.queued {
            handle
                .try_send("websocket", msg)
                .expect("queued before start");
        }
        Harness {
            bus: bus.start(),
            handle,
            metrics,
            dialer,
            dials,
            probes,
        }
    }
}

impl Harness {
    async fn next_dial(&mut self) -> Dial {
        within("a dial", self.dials.recv())
            .await
            .expect("the dialer is alive")
    }

    /// The next successful dial's cloud end (failed dials are skipped).
    async fn connected(&mut self) -> (Instant, Link) {
        loop {
            let dial = self.next_dial().await;
            if let Some(cloud) = dial.cloud {
                return (dial.at, cloud);
            }
        }
    }

    async fn seen_by(&mut self, probe: &str) -> Message {
        let rx = self.probes.get_mut(probe).expect("probe exists");
        within(&format!("a message at {probe}"), rx.recv())
            .await
            .expect("probe alive")
    }

    async fn shutdown(self) {
        let report = self.bus.shutdown(Duration::from_secs(30)).await;
        assert!(report.is_clean(), "{report:?}");
    }
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Waits until `condition` holds, checking every 10 ms of virtual time.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The next message the cloud receives that is not a keepalive.
async fn next_upstream(cloud: &mut Link) -> Message {
    loop {
        let msg = within("a message at the cloud", cloud.receiver.recv())
            .await
            .expect("the link is up");
        if msg.router.operation != "keepalive" {
            return msg;
        }
    }
}

/// Sends a plain (not durable) message upstream and checks it is the next
/// thing the cloud receives: nothing else was sent before it.
async fn expect_nothing_before_marker(handle: &BusHandle, cloud: &mut Link) {
    let marker = Message::new(
        "metamanager",
        "resource",
        "query",
        "kube-node-lease/lease/edge-1",
        json!(null),
    );
    handle
        .send("websocket", marker.clone())
        .await
        .expect("marker queued");
    assert_eq!(next_upstream(cloud).await.id(), marker.id());
}

fn pod_report(name: &str, phase: &str) -> Message {
    Message::new(
        "edged",
        "meta",
        "patch",
        format!("default/podpatch/{name}"),
        json!(format!("{{\"status\":{{\"phase\":\"{phase}\"}}}}")),
    )
}

fn cloud_reply_to(report: &Message) -> Message {
    Message::new(
        "edgecontroller",
        "resource",
        "response",
        report.router.resource.clone(),
        json!({"Object": {}, "Err": null}),
    )
    .with_parent_id(report.id())
}

// === tests ===

#[tokio::test(start_paused = true)]
async fn keepalives_follow_the_heartbeat() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut setup = Setup::new(&dir.path().join("edgehub.db"));
    setup.settings.heartbeat = Duration::from_secs(15);
    let mut h = setup.start();
    let (connected_at, mut cloud) = h.connected().await;
    let mut times = Vec::new();
    for _ in 0..4 {
        let msg = within("a keepalive", cloud.receiver.recv())
            .await
            .expect("link up");
        assert_eq!(msg.router.source, "websocket");
        assert_eq!(msg.router.group, "resource");
        assert_eq!(msg.router.resource, "node");
        assert_eq!(msg.router.operation, "keepalive");
        assert_eq!(msg.content, json!("ping"));
        times.push(Instant::now() - connected_at);
    }
    assert_eq!(
        times,
        [0, 15, 30, 45].map(Duration::from_secs),
        "one keepalive at once, then one per heartbeat"
    );
    assert_eq!(h.metrics.keepalives(), 4);
    assert!(h.metrics.is_connected());
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn reconnects_follow_jittered_exponential_backoff() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut setup = Setup::new(&dir.path().join("edgehub.db"));
    setup.settings.backoff_base = Duration::from_secs(1);
    setup.settings.backoff_max = Duration::from_secs(8);
    setup.settings.stable_after = Duration::from_secs(8);
    // fail, fail, connect (lost at once), fail, fail, fail, connect (stays
    // up 10 s), then fail.
    setup.script = vec![false, false, true, false, false, false, true];
    setup.fallback = false;
    setup.seed = 99;
    let mut h = setup.start();
    let mut model = Backoff::seeded(Duration::from_secs(1), Duration::from_secs(8), 99);
    let tolerance = Duration::from_millis(2);

    let mut previous = h.next_dial().await;
    let mut checked = 0;
    while checked < 6 {
        let bound = model.bound();
        let expected = model.next_delay();
        assert!(expected <= bound);
        if let Some(cloud) = previous.cloud.take() {
            // Lose the link as soon as the edge is connected.
            cloud.sender.close();
        }
        let dial = h.next_dial().await;
        let gap = dial.at - previous.at;
        assert!(
            gap >= expected && gap <= expected + tolerance,
            "dial {checked}: waited {gap:?}, drew {expected:?}"
        );
        assert!(
            gap <= bound + tolerance,
            "dial {checked}: {gap:?} over {bound:?}"
        );
        previous = dial;
        checked += 1;
    }
    // The bounds went 1, 2, 4, 8, 8, 8 s: a link lost at once does not
    // reset the backoff.
    assert_eq!(model.bound(), Duration::from_secs(8));

    // The 7th dial connects; this link stays up past `stable_after`.
    let cloud = previous.cloud.take().expect("the 7th dial connects");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let lost_at = Instant::now();
    cloud.sender.close();
    model.reset();
    let expected = model.next_delay();
    let dial = h.next_dial().await;
    let gap = dial.at - lost_at;
    assert!(
        gap >= expected && gap <= expected + tolerance,
        "after a stable link: waited {gap:?}, drew {expected:?}"
    );
    assert!(gap <= Duration::from_secs(1) + tolerance);
    assert_eq!(h.metrics.connects(), 2);
    assert_eq!(h.metrics.disconnects(), 2);
    assert!(h.metrics.dial_failures() >= 5);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn downstream_messages_follow_the_routing_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut setup = Setup::new(&dir.path().join("edgehub.db"));
    setup.probes = &[
        ("metamanager", "meta"),
        ("twin", "twin"),
        ("eventbus", "bus"),
    ];
    let mut h = setup.start();
    let (_, cloud) = h.connected().await;

    // Every group is told the link is up before anything else arrives.
    for probe in ["metamanager", "twin", "eventbus"] {
        let event = h.seen_by(probe).await;
        assert_eq!(event.router.source, "edgehub");
        assert_eq!(event.router.resource, "node/connection");
        assert_eq!(event.router.operation, "connect");
        assert_eq!(event.content, json!("cloud_connected"));
    }

    let pod = Message::new(
        "edgecontroller",
        "resource",
        "insert",
        "default/pod/nginx",
        json!({"kind": "Pod"}),
    )
    .with_resource_version("12");
    let func = Message::new("edgecontroller", "func", "query", "f", json!(null));
    let membership = Message::new(
        "devicecontroller",
        "twin",
        "update",
        "membership",
        json!({}),
    );
    let twin_confirm = Message::new("devicecontroller", "twin", "response", "twin", json!("OK"))
        .with_parent_id("twin-report");
    let to_eventbus = Message::new("router_eventbus", "user", "publish", "topic/a", json!("x"));
    let to_bus = Message::new("router", "user", "publish", "topic/b", json!("y"));
    let to_servicebus = Message::new("router_servicebus", "user", "request", "svc", json!("z"));
    let upgrade = Message::new(
        "nodeupgradejobcontroller",
        "nodeupgradejobcontroller",
        "upgrade",
        "upgrade/job/node/edge-1",
        json!({}),
    );
    let orphan_reply = Message::new(
        "edgecontroller",
        "resource",
        "response",
        "default/configmap/c",
        json!({}),
    )
    .with_parent_id("nobody-waits");
    for msg in [
        &pod,
        &func,
        &membership,
        &twin_confirm,
        &to_eventbus,
        &to_bus,
        &to_servicebus,
        &upgrade,
        &orphan_reply,
    ] {
        cloud.sender.send(msg.clone()).await.expect("sent");
    }

    assert_eq!(h.seen_by("metamanager").await, pod);
    assert_eq!(h.seen_by("metamanager").await, func);
    assert_eq!(h.seen_by("twin").await, membership);
    assert_eq!(h.seen_by("twin").await, twin_confirm);
    assert_eq!(h.seen_by("eventbus").await, to_eventbus);
    assert_eq!(h.seen_by("eventbus").await, to_bus);
    let metrics = h.metrics.clone();
    eventually("the drops to be counted", || {
        metrics.dropped_count(DropReason::NoModule) == 1
            && metrics.dropped_count(DropReason::UnknownGroup) == 1
            && metrics.dropped_count(DropReason::NoWaiter) == 1
    })
    .await;
    assert_eq!(h.metrics.messages_down(), 9);

    // Losing the link is announced too.
    cloud.sender.close();
    for probe in ["metamanager", "twin", "eventbus"] {
        let event = h.seen_by(probe).await;
        assert_eq!(event.content, json!("cloud_disconnected"), "{probe}");
    }
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_blocked_module_does_not_stall_the_link() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut setup = Setup::new(&dir.path().join("edgehub.db"));
    setup.settings.delivery_queue = 4;
    setup.inbox_capacity = 2;
    setup.stuck = &[("metamanager", "meta")];
    setup.probes = &[("twin", "twin")];
    let mut h = setup.start();
    let (_, cloud) = h.connected().await;
    assert_eq!(h.seen_by("twin").await.content, json!("cloud_connected"));
    for i in 0..20 {
        let pod = Message::new(
            "edgecontroller",
            "resource",
            "insert",
            format!("default/pod/p{i}"),
            json!({}),
        );
        cloud.sender.send(pod).await.expect("sent");
    }
    let membership = Message::new(
        "devicecontroller",
        "twin",
        "update",
        "membership",
        json!({}),
    );
    cloud.sender.send(membership.clone()).await.expect("sent");
    assert_eq!(h.seen_by("twin").await, membership);
    // At most the lane (4), the message its task holds (1) and the
    // inbox (2, one taken by the link-state event) were kept.
    let dropped = h.metrics.dropped_count(DropReason::QueueFull);
    assert!((13..=16).contains(&dropped), "{dropped} dropped");
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_cloud_reply_goes_to_the_waiting_sync_caller() {
    let dir = tempfile::tempdir().expect("tempdir");
    let setup = Setup::new(&dir.path().join("edgehub.db"));
    let mut h = setup.start();
    let (_, mut cloud) = h.connected().await;

    let query = Message::new(
        "metamanager",
        "meta",
        "query",
        "default/configmap/cfg",
        json!(null),
    );
    let handle = h.handle.clone();
    let request = query.clone();
    let caller = tokio::spawn(async move {
        handle
            .send_sync("websocket", request, Some(Duration::from_secs(60)))
            .await
    });
    let got = next_upstream(&mut cloud).await;
    assert_eq!(got.id(), query.id());
    let reply = Message::new(
        "edgecontroller",
        "resource",
        "response",
        "default/configmap/cfg",
        json!({"kind": "ConfigMap"}),
    )
    .with_parent_id(got.id())
    .with_resource_version("7");
    cloud.sender.send(reply.clone()).await.expect("sent");
    let answer = within("the sync answer", caller)
        .await
        .expect("caller task")
        .expect("answered");
    assert_eq!(answer, reply);
    assert_eq!(h.metrics.dropped_count(DropReason::NoWaiter), 0);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn offline_a_sync_caller_gets_an_error_and_plain_messages_are_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut setup = Setup::new(&dir.path().join("edgehub.db"));
    setup.fallback = false;
    let h = setup.start();
    let query = Message::new(
        "metamanager",
        "meta",
        "query",
        "default/configmap/cfg",
        json!(null),
    );
    let answer = h
        .handle
        .send_sync("websocket", query.clone(), Some(Duration::from_secs(5)))
        .await
        .expect("answered at once");
    assert_eq!(answer.router.operation, "error");
    assert_eq!(answer.parent_id(), query.id());
    h.handle
        .send(
            "websocket",
            Message::new(
                "edged",
                "meta",
                "update",
                "kube-node-lease/lease/e",
                json!({}),
            ),
        )
        .await
        .expect("queued");
    let metrics = h.metrics.clone();
    eventually("both to be counted", || {
        metrics.dropped_count(DropReason::Offline) == 2
    })
    .await;
    assert_eq!(h.metrics.outbox_depth(), 0);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_report_made_offline_is_resent_until_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut setup = Setup::new(&dir.path().join("edgehub.db"));
    setup.fallback = false;
    let report = pod_report("nginx", "Running");
    setup.queued = vec![report.clone()];
    let mut h = setup.start();
    let metrics = h.metrics.clone();
    eventually("the report to be stored", || metrics.outbox_depth() == 1).await;
    assert_eq!(h.metrics.messages_up(), 0);

    // First link: the report arrives once, with its own id.
    h.dialer.fallback.store(true, Ordering::SeqCst);
    let (_, mut cloud) = h.connected().await;
    assert_eq!(next_upstream(&mut cloud).await, report);
    expect_nothing_before_marker(&h.handle, &mut cloud).await;

    // No answer; the link drops. The next link carries it again, same id.
    cloud.sender.close();
    let (_, mut cloud) = h.connected().await;
    assert_eq!(next_upstream(&mut cloud).await, report);
    expect_nothing_before_marker(&h.handle, &mut cloud).await;
    assert_eq!(h.metrics.outbox_resent_count(), 2);

    // The cloud answers; the report leaves the outbox, and the answer,
    // which nobody waits for, is not counted as a drop.
    cloud
        .sender
        .send(cloud_reply_to(&report))
        .await
        .expect("sent");
    eventually("the report to be acknowledged", || {
        metrics.outbox_depth() == 0
    })
    .await;
    assert_eq!(h.metrics.outbox_acked_count(), 1);
    assert_eq!(h.metrics.dropped_count(DropReason::NoWaiter), 0);

    // It is not sent again.
    cloud.sender.close();
    let (_, mut cloud) = h.connected().await;
    expect_nothing_before_marker(&h.handle, &mut cloud).await;
    assert_eq!(h.metrics.outbox_resent_count(), 2);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn online_reports_are_kept_until_answered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let setup = Setup::new(&dir.path().join("edgehub.db"));
    let mut h = setup.start();
    let (_, mut cloud) = h.connected().await;
    let report = pod_report("web", "Pending");
    h.handle
        .send("websocket", report.clone())
        .await
        .expect("queued");
    assert_eq!(next_upstream(&mut cloud).await, report);
    assert_eq!(h.metrics.outbox_depth(), 1);
    // Lost before the answer: resent on the next link, then answered.
    cloud.sender.close();
    let (_, mut cloud) = h.connected().await;
    assert_eq!(next_upstream(&mut cloud).await, report);
    cloud
        .sender
        .send(cloud_reply_to(&report))
        .await
        .expect("sent");
    let metrics = h.metrics.clone();
    eventually("the report to be acknowledged", || {
        metrics.outbox_depth() == 0
    })
    .await;
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_report_is_resent_on_the_same_link() {
    let dir = tempfile::tempdir().expect("tempdir");
    let setup = Setup::new(&dir.path().join("edgehub.db"));
    let resend_after = setup.settings.outbox_resend_after;
    let mut h = setup.start();
    let (_, mut cloud) = h.connected().await;
    let report = pod_report("web", "Pending");
    h.handle
        .send("websocket", report.clone())
        .await
        .expect("queued");
    assert_eq!(next_upstream(&mut cloud).await, report);
    let first = Instant::now();

    // The cloud drops it (say, over its rate limit): it comes again on
    // the same link, with the same id, once `outboxResendAfter` passed.
    assert_eq!(next_upstream(&mut cloud).await, report);
    let waited = Instant::now() - first;
    assert!(
        waited >= resend_after && waited <= resend_after * 2,
        "resent after {waited:?}"
    );
    assert_eq!(h.metrics.outbox_resent_count(), 1);

    // Answered: it leaves the outbox and is not sent again.
    cloud
        .sender
        .send(cloud_reply_to(&report))
        .await
        .expect("sent");
    let metrics = h.metrics.clone();
    eventually("the report to be acknowledged", || {
        metrics.outbox_depth() == 0
    })
    .await;
    tokio::time::sleep(resend_after * 3).await;
    expect_nothing_before_marker(&h.handle, &mut cloud).await;
    assert_eq!(h.metrics.outbox_resent_count(), 1);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn only_the_newest_report_per_resource_is_delivered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut setup = Setup::new(&dir.path().join("edgehub.db"));
    setup.fallback = false;
    let pending = pod_report("nginx", "Pending");
    let mut running = pod_report("nginx", "Running");
    running.header.timestamp = pending.header.timestamp + 1;
    let mut failed = pod_report("nginx", "Failed");
    failed.header.timestamp = pending.header.timestamp + 2;
    let other = pod_report("web", "Running");
    // The report for another pod comes last: once two reports wait, all
    // four were handled.
    setup.queued = vec![pending, running, failed.clone(), other.clone()];
    let mut h = setup.start();
    let metrics = h.metrics.clone();
    eventually("two reports to wait", || metrics.outbox_depth() == 2).await;
    h.dialer.fallback.store(true, Ordering::SeqCst);
    let (_, mut cloud) = h.connected().await;
    assert_eq!(next_upstream(&mut cloud).await, failed);
    assert_eq!(next_upstream(&mut cloud).await, other);
    expect_nothing_before_marker(&h.handle, &mut cloud).await;
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn waiting_reports_survive_an_edgecore_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("data/edgehub.db");
    let report = pod_report("nginx", "Running");
    {
        let mut setup = Setup::new(&path);
        setup.fallback = false;
        setup.queued = vec![report.clone()];
        let h = setup.start();
        let metrics = h.metrics.clone();
        eventually("the report to be stored", || metrics.outbox_depth() == 1).await;
        h.shutdown().await;
    }
    let setup = Setup::new(&path);
    let mut h = setup.start();
    let (_, mut cloud) = h.connected().await;
    assert_eq!(next_upstream(&mut cloud).await, report);
    assert_eq!(h.metrics.outbox_depth(), 1, "reloaded from disk");
    assert_eq!(h.metrics.outbox_resent_count(), 1);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_throttle_paces_a_burst() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut setup = Setup::new(&dir.path().join("edgehub.db"));
    setup.settings.message_qps = 30.0;
    setup.settings.message_burst = 60;
    let mut h = setup.start();
    let (_, mut cloud) = h.connected().await;
    // Wait for the first keepalive so the hub is serving the link.
    let first = within("a keepalive", cloud.receiver.recv())
        .await
        .expect("link up");
    assert_eq!(first.router.operation, "keepalive");

    let start = Instant::now();
    let mut sent = Vec::new();
    for i in 0..70 {
        let msg = Message::new(
            "metamanager",
            "resource",
            "query",
            format!("default/configmap/c{i}"),
            json!(null),
        );
        sent.push(msg.id().to_owned());
        h.handle.send("websocket", msg).await.expect("queued");
    }
    for (i, id) in sent.iter().enumerate() {
        let msg = next_upstream(&mut cloud).await;
        assert_eq!(msg.id(), id, "in order");
        let at = Instant::now() - start;
        let due = Duration::from_secs_f64(i.saturating_sub(59) as f64 / 30.0);
        assert!(
            at >= due.saturating_sub(Duration::from_millis(1))
                && at <= due + Duration::from_millis(2),
            "message {i} arrived after {at:?}, due at {due:?}"
        );
    }
    h.shutdown().await;
}
