//! EdgeHub's run loop: dial, serve the link, back off, again.
//!
//! One task (the module's) owns the inbox, the throttle, the backoff and
//! the link's sending side. While connected, two more tasks run on the
//! module's tracker: the link reader (downstream routing, outbox
//! acknowledgements) and the heartbeat. Both end when the link closes,
//! and the module task waits for them before it reconnects, so exactly
//! one link is in use at any time.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kedge_bus::ModuleContext;
use kedge_message::{Message, module, operation};
use kedge_transport::link::{Link, LinkReceiver, LinkSender};
use tokio::time::{Instant, MissedTickBehavior};

use super::backoff::Backoff;
use super::dialer::{DialError, Dialer};
use super::metrics::{DropReason, EdgeHubMetrics};
use super::outbox::{Outbox, OutboxError, PutOutcome, is_durable};
use super::routing::Downstream;
use super::throttle::TokenBucket;
use super::{EdgeHub, EdgeHubSettings};

/// The error text a synchronous caller gets while the link is down.
const OFFLINE_ERROR: &str = "edgehub: not connected to the cloud";

pub(super) struct Hub {
    ctx: ModuleContext,
    settings: EdgeHubSettings,
    dialer: Arc<dyn Dialer>,
    metrics: EdgeHubMetrics,
    outbox: Outbox,
    downstream: Arc<Downstream>,
    throttle: TokenBucket,
    backoff: Backoff,
    /// When each durable report was last sent on the current link, by
    /// `msg_id`: what [`Hub::resend_overdue`] checks.
    sent_at: HashMap<String, Instant>,
}

/// How serving one link ended.
enum LinkEnd {
    /// The link went down after being up this long, with the reconnect
    /// window the cloud gave if it closed the link because it stops.
    Lost(Duration, Option<Duration>),
    /// The process is shutting down.
    Shutdown,
}

impl Hub {
    pub(super) fn new(ctx: ModuleContext, edgehub: EdgeHub, outbox: Outbox) -> Self {
        let EdgeHub {
            settings,
            dialer,
            metrics,
            backoff_seed,
            // Started by the module before the hub runs.
            renewal: _,
        } = edgehub;
        let downstream = Arc::new(Downstream::start(&ctx, settings.delivery_queue, &metrics));
        let backoff = match backoff_seed {
            Some(seed) => Backoff::seeded(settings.backoff_base, settings.backoff_max, seed),
            None => Backoff::new(settings.backoff_base, settings.backoff_max),
        };
        let throttle = TokenBucket::new(settings.message_qps, settings.message_burst);
        metrics.set_outbox_depth(outbox.len());
        Self {
            ctx,
            settings,
            dialer,
            metrics,
            outbox,
            downstream,
            throttle,
            backoff,
            sent_at: HashMap::new(),
        }
    }

    pub(super) async fn run(mut self) {
        // EdgeHub serves its callers whether or not the cloud is reachable.
        self.ctx.set_ready();
        loop {
            let Some(attempt) = self.dial().await else {
                return;
            };
            match attempt {
                Ok(link) => match self.serve(link).await {
                    LinkEnd::Shutdown => return,
                    LinkEnd::Lost(uptime, restart) => {
                        if let Some(window) = restart {
                            tracing::info!(
                                ?window,
                                "the cloud stops; reconnecting within its window"
                            );
                        }
                        self.backoff
                            .link_ended(uptime, self.settings.stable_after, restart);
                    }
                },
                Err(error) => {
                    self.metrics.dial_failed();
                    tracing::warn!(error = %error_chain(&error), "cannot reach the cloud");
                }
            }
            let delay = self.backoff.next_delay();
            tracing::info!(?delay, "reconnecting to the cloud after a delay");
            if !self.offline_for(delay).await {
                return;
            }
        }
    }

    /// Dials once, serving the inbox as offline meanwhile. `None` on
    /// shutdown.
    async fn dial(&mut self) -> Option<Result<Link, DialError>> {
        let timeout = self.settings.dial_timeout;
        // The dialer's own waiting (Dialer::prepare) is not part of the
        // dial's deadline.
        let dialer = self.dialer.clone();
        let attempt = async move {
            dialer.prepare().await?;
            tokio::time::timeout(timeout, dialer.dial())
                .await
                .unwrap_or(Err(DialError::Timeout(timeout)))
        };
        tokio::pin!(attempt);
        loop {
            tokio::select! {
                biased;
                result = &mut attempt => return Some(result),
                msg = self.ctx.recv() => match msg {
                    Some(msg) => self.offline(msg).await,
                    None => return None,
                },
            }
        }
    }

    /// Waits `delay`, serving the inbox as offline meanwhile. `false` on
    /// shutdown.
    async fn offline_for(&mut self, delay: Duration) -> bool {
        let deadline = tokio::time::sleep(delay);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                biased;
                () = &mut deadline => return true,
                msg = self.ctx.recv() => match msg {
                    Some(msg) => self.offline(msg).await,
                    None => return false,
                },
            }
        }
    }

    /// A message for the cloud while the link is down.
    async fn offline(&mut self, msg: Message) {
        if refused_control(&msg, &self.metrics) {
            return;
        }
        if is_durable(&msg) {
            self.store(&msg).await;
            return;
        }
        self.undeliverable(&msg, DropReason::Offline);
    }

    /// A message that cannot go to the cloud: a synchronous caller gets an
    /// error reply, and the message is counted as dropped.
    fn undeliverable(&self, msg: &Message, reason: DropReason) {
        tracing::debug!(
            msg_id = %msg.id(),
            resource = %msg.router.resource,
            operation = %msg.router.operation,
            reason = reason.as_str(),
            "message for the cloud dropped"
        );
        self.metrics.dropped(reason);
        if msg.header.sync {
            let mut reply = msg.error_response(OFFLINE_ERROR);
            reply.router.source = module::EDGE_HUB.to_owned();
            // The caller may have given up already; nothing to do then.
            let _ = self.ctx.bus().send_response(reply);
        }
    }

    /// Writes a durable report to the outbox.
    async fn store(&self, msg: &Message) {
        let outbox = self.outbox.clone();
        let report = msg.clone();
        match blocking(move || outbox.put(&report)).await {
            Ok(PutOutcome::Added {
                evicted: Some(evicted),
            }) => {
                tracing::warn!(
                    dropped = %evicted,
                    capacity = self.settings.outbox_capacity,
                    "outbox full: the oldest waiting report was dropped"
                );
                self.metrics.dropped(DropReason::OutboxFull);
            }
            Ok(_) => {}
            Err(error) => {
                tracing::error!(error = %error_chain(&error), msg_id = %msg.id(), "cannot store a report in the outbox");
                self.metrics.dropped(DropReason::OutboxError);
            }
        }
        self.metrics.set_outbox_depth(self.outbox.len());
    }

    /// Serves one link until it ends or the process shuts down.
    async fn serve(&mut self, link: Link) -> LinkEnd {
        let started = Instant::now();
        let Link {
            peer,
            sender,
            receiver,
        } = link;
        tracing::info!(node = %peer.node_id, project = %peer.project_id, address = ?peer.address, "connected to the cloud");
        self.metrics.set_connected(true);
        self.downstream.publish_connection(true);

        let heartbeat = self.ctx.spawn(
            "heartbeat",
            heartbeat(
                sender.clone(),
                self.settings.heartbeat,
                self.metrics.clone(),
            ),
        );
        let reader = self.ctx.spawn(
            "link-reader",
            read_link(
                receiver,
                sender.clone(),
                self.downstream.clone(),
                self.outbox.clone(),
                self.metrics.clone(),
            ),
        );

        self.sent_at.clear();
        let mut shutdown = !self.replay(&sender).await;
        let resend_after = self.settings.outbox_resend_after;
        let mut resend_check = tokio::time::interval_at(
            Instant::now() + resend_after,
            (resend_after / 2).max(Duration::from_millis(100)),
        );
        resend_check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        if !shutdown && !sender.is_closed() {
            loop {
                tokio::select! {
                    biased;
                    () = sender.closed() => break,
                    _ = resend_check.tick() => {
                        if !self.resend_overdue(&sender).await {
                            shutdown = true;
                            break;
                        }
                    }
                    msg = self.ctx.recv() => match msg {
                        Some(msg) => {
                            if !self.online(msg, &sender).await {
                                break;
                            }
                        }
                        None => {
                            shutdown = true;
                            break;
                        }
                    },
                }
            }
        }

        sender.close();
        // Both tasks end once the link is closed.
        let _ = reader.await;
        let _ = heartbeat.await;
        let uptime = started.elapsed();
        self.metrics.set_connected(false);
        self.downstream.publish_connection(false);
        if shutdown {
            tracing::info!("link to the cloud closed for shutdown");
            LinkEnd::Shutdown
        } else {
            tracing::warn!(?uptime, "link to the cloud lost");
            LinkEnd::Lost(uptime, sender.restart_window())
        }
    }

    /// Resends every waiting report, oldest first, with its original id.
    /// `false` on shutdown.
    async fn replay(&mut self, sender: &LinkSender) -> bool {
        let outbox = self.outbox.clone();
        let pending = match blocking(move || outbox.pending()).await {
            Ok(pending) => pending,
            Err(error) => {
                tracing::error!(error = %error_chain(&error), "cannot read the outbox; reports wait for the next connection");
                return true;
            }
        };
        if !pending.is_empty() {
            tracing::info!(reports = pending.len(), "resending waiting reports");
        }
        self.resend(sender, pending).await
    }

    /// Sends `reports` again with their original ids, skipping any that
    /// was answered (or replaced) since the list was read. `false` on
    /// shutdown.
    async fn resend(
        &mut self,
        sender: &LinkSender,
        reports: impl IntoIterator<Item = Message>,
    ) -> bool {
        for report in reports {
            if !self.outbox.contains(report.id()) {
                continue;
            }
            let id = report.id().to_owned();
            match self.send(sender, report).await {
                Sent::Yes => {
                    self.metrics.outbox_resent();
                    self.sent_at.insert(id, Instant::now());
                }
                Sent::LinkClosed => return true,
                Sent::Shutdown => return false,
            }
        }
        true
    }

    /// Sends again, with their original ids, the reports the cloud has not
    /// answered within `outboxResendAfter` of their last sending on this
    /// link: the cloud drops what comes over its rate limit, and a report
    /// must not then wait for the next reconnect. `false` on shutdown.
    async fn resend_overdue(&mut self, sender: &LinkSender) -> bool {
        let outbox = &self.outbox;
        self.sent_at.retain(|id, _| outbox.contains(id));
        let resend_after = self.settings.outbox_resend_after;
        let now = Instant::now();
        let overdue: HashSet<String> = self
            .sent_at
            .iter()
            .filter(|(_, sent)| now.duration_since(**sent) >= resend_after)
            .map(|(id, _)| id.clone())
            .collect();
        if overdue.is_empty() {
            return true;
        }
        let outbox = self.outbox.clone();
        let pending = match blocking(move || outbox.pending()).await {
            Ok(pending) => pending,
            Err(error) => {
                tracing::error!(error = %error_chain(&error), "cannot read the outbox; overdue reports wait for the next check");
                return true;
            }
        };
        tracing::info!(
            reports = overdue.len(),
            "resending reports the cloud has not answered"
        );
        let overdue_reports = pending
            .into_iter()
            .filter(|report| overdue.contains(report.id()));
        self.resend(sender, overdue_reports).await
    }

    /// A message for the cloud while the link is up. `false` when the link
    /// turned out to be closed.
    async fn online(&mut self, msg: Message, sender: &LinkSender) -> bool {
        if refused_control(&msg, &self.metrics) {
            return true;
        }
        let durable = is_durable(&msg);
        if durable {
            self.store(&msg).await;
        }
        let id = msg.id().to_owned();
        // Enough of the message to report it if the link is gone.
        let stub = Message {
            header: msg.header.clone(),
            router: msg.router.clone(),
            content: serde_json::Value::Null,
        };
        match self.send(sender, msg).await {
            Sent::Yes => {
                // Timed from when it left, not from when it was queued
                // behind the throttle.
                if durable {
                    self.sent_at.insert(id, Instant::now());
                }
                true
            }
            Sent::Shutdown => true,
            Sent::LinkClosed => {
                // A durable report stays in the outbox for the next link.
                if !durable {
                    self.undeliverable(&stub, DropReason::LinkClosed);
                }
                false
            }
        }
    }

    /// Sends one message through the throttle.
    async fn send(&mut self, sender: &LinkSender, msg: Message) -> Sent {
        let token = self.ctx.token().clone();
        let waited = tokio::select! {
            biased;
            () = token.cancelled() => return Sent::Shutdown,
            waited = self.throttle.acquire() => waited,
        };
        if waited > Duration::from_secs(1) {
            tracing::info!(?waited, msg_id = %msg.id(), "message to the cloud throttled");
        }
        let sent = tokio::select! {
            biased;
            () = token.cancelled() => return Sent::Shutdown,
            sent = sender.send(msg) => sent,
        };
        match sent {
            Ok(()) => {
                self.metrics.sent_up();
                Sent::Yes
            }
            Err(_) => Sent::LinkClosed,
        }
    }
}

/// The outcome of one send.
enum Sent {
    Yes,
    LinkClosed,
    Shutdown,
}

/// Drops a message whose operation is a viaduct control word: the peer's
/// transport would swallow it.
fn refused_control(msg: &Message, metrics: &EdgeHubMetrics) -> bool {
    if operation::VIADUCT_CONTROL.contains(&msg.router.operation.as_str()) {
        tracing::warn!(
            operation = %msg.router.operation,
            source = %msg.router.source,
            "a message for the cloud uses a transport control operation; dropped"
        );
        metrics.dropped(DropReason::ControlOperation);
        return true;
    }
    false
}

/// Sends a keepalive at once, then every `period`, until the link closes.
async fn heartbeat(sender: LinkSender, period: Duration, metrics: EdgeHubMetrics) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = sender.closed() => return,
            _ = ticks.tick() => {}
        }
        if sender.send(Message::keepalive()).await.is_err() {
            return;
        }
        metrics.keepalive_sent();
    }
}

/// Reads the link until it ends: acknowledges outbox reports and routes
/// every message. Never waits for a module.
async fn read_link(
    mut receiver: LinkReceiver,
    sender: LinkSender,
    downstream: Arc<Downstream>,
    outbox: Outbox,
    metrics: EdgeHubMetrics,
) {
    while let Some(msg) = receiver.recv().await {
        metrics.received_down();
        let mut acknowledged = false;
        if msg.is_reply() && outbox.contains(msg.parent_id()) {
            let store = outbox.clone();
            let parent = msg.parent_id().to_owned();
            match blocking(move || store.ack(&parent)).await {
                Ok(deleted) => {
                    acknowledged = deleted;
                    if deleted {
                        metrics.outbox_acked();
                        metrics.set_outbox_depth(outbox.len());
                    }
                }
                Err(error) => {
                    tracing::error!(error = %error_chain(&error), parent = %msg.parent_id(), "cannot delete an acknowledged report");
                }
            }
        }
        downstream.dispatch(msg, acknowledged);
    }
    // The peer went away: make sure the hub sees the link as closed.
    sender.close();
}

/// Runs outbox I/O on a blocking thread.
async fn blocking<T, F>(work: F) -> Result<T, OutboxError>
where
    F: FnOnce() -> Result<T, OutboxError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|join| Err(OutboxError::Task(join)))
}

/// An error and its sources on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
