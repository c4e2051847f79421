//! What the WebSocket and QUIC transports share once a connection is up,
//! and the server-side checks both make on the way there.
//!
//! * [`FrameIntake`] judges each incoming frame: rate limit, size limit,
//!   decoding, and the viaduct control operations (`ping`, `pong`,
//!   `config`), which are answered with `"ack"` ([`control_reply`]) and
//!   not delivered.
//! * [`drive`] moves messages between a connection and its [`LinkEnds`]:
//!   a reader that pulls frames from a [`FrameSource`] (and waits while
//!   the link's incoming buffer is full), a writer that pushes the link's
//!   messages and the control replies into a [`FrameSink`] after
//!   [`check_outgoing`], and the shutdown watch; every frame is counted
//!   in the link metrics. A transport supplies only the source and sink.
//! * [`Connections`] keeps a server's connection tasks; each gets an
//!   [`Admission`], which runs its handshake under the handshake timeout,
//!   counts the outcome and hands the link over. [`spawn_client`] starts
//!   a client link's driver.
//! * [`node_from_certificates`] and [`check_identity`] decide which node
//!   a server connection speaks for (a [`Refusal`] otherwise).

use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kedge_message::{DecodeError, Message, operation};
use rustls_pki_types::CertificateDer;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Span, debug, warn};

use crate::client::ConnectTarget;
use crate::limits::{LinkLimits, TokenBucket};
use crate::line::{Arrival, HandshakeLine, Missed, Slot};
use crate::link::{Link, LinkEnds, Peer, Queued, new_link};
use crate::metrics::{LinkMetrics, RefuseReason, Transport};

/// The common-name prefix of a node certificate: `system:node:<name>`.
pub const NODE_CN_PREFIX: &str = "system:node:";

/// The content of a positive control reply.
pub(crate) const ACK: &str = "ack";
/// The content of a negative control reply.
pub(crate) const NACK: &str = "nack";

/// How long a closing link waits for its last frames to be flushed.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Buffer of control replies waiting for the writer.
pub(crate) const CONTROL_BUFFER: usize = 16;

// === Incoming frames ===

/// What to do with one incoming frame.
#[derive(Debug)]
pub(crate) enum Intake {
    /// A message for the link's receiver.
    Deliver(Message),
    /// A control message: write this reply, deliver nothing.
    Reply(Message),
    /// The frame was refused and counted.
    Dropped,
}

/// The incoming side of one connection: rate limit, size limit, decoding
/// and control handling, with every refusal counted.
#[derive(Debug)]
pub(crate) struct FrameIntake {
    transport: Transport,
    max_frame_bytes: usize,
    bucket: Option<TokenBucket>,
    metrics: LinkMetrics,
}

impl FrameIntake {
    pub(crate) fn new(transport: Transport, limits: &LinkLimits, metrics: LinkMetrics) -> Self {
        Self {
            transport,
            max_frame_bytes: limits.max_frame_bytes,
            bucket: limits.rate_limiter(Instant::now()),
            metrics,
        }
    }

    /// Judges one frame.
    pub(crate) fn frame(&mut self, frame: &[u8]) -> Intake {
        if let Some(bucket) = &mut self.bucket
            && !bucket.try_take(Instant::now())
        {
            self.refuse(RefuseReason::RateLimited);
            return Intake::Dropped;
        }
        match Message::decode(frame, self.max_frame_bytes) {
            Ok(msg) => match control_reply(&msg) {
                Some(reply) => Intake::Reply(reply),
                None => Intake::Deliver(msg),
            },
            Err(DecodeError::TooLarge { size, limit }) => {
                debug!(size, limit, "refused an oversized frame");
                self.refuse(RefuseReason::TooLarge);
                Intake::Dropped
            }
            Err(DecodeError::Malformed(error)) => {
                debug!(%error, "refused a malformed frame");
                self.refuse(RefuseReason::Malformed);
                Intake::Dropped
            }
        }
    }

    /// Counts a refusal found outside [`FrameIntake::frame`].
    pub(crate) fn refuse(&self, reason: RefuseReason) {
        self.metrics.refuse(self.transport, reason);
    }
}

/// The reply to a viaduct control message (`ping`, `pong`, `config`), or
/// `None` for an application message.
pub(crate) fn control_reply(msg: &Message) -> Option<Message> {
    operation::VIADUCT_CONTROL
        .contains(&msg.router.operation.as_str())
        .then(|| msg.response(Value::String(ACK.to_owned())))
}

/// Whether an outgoing frame fits the limit; counts and logs it if not.
pub(crate) fn check_outgoing(
    frame: &[u8],
    msg: &Message,
    limits: &LinkLimits,
    metrics: &LinkMetrics,
    transport: Transport,
) -> bool {
    if frame.len() <= limits.max_frame_bytes {
        return true;
    }
    warn!(
        size = frame.len(),
        limit = limits.max_frame_bytes,
        msg_id = msg.id(),
        operation = %msg.router.operation,
        resource = %msg.router.resource,
        "not sending a message larger than the frame limit"
    );
    metrics.refuse(transport, RefuseReason::TooLarge);
    false
}

// === Server identity ===

/// The node named by a peer certificate chain: the leaf's common name
/// `system:node:<name>`.
pub(crate) fn node_from_certificates(
    certs: Option<&[CertificateDer<'_>]>,
) -> Result<String, String> {
    let leaf = certs
        .and_then(<[_]>::first)
        .ok_or_else(|| "no client certificate".to_owned())?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("unreadable client certificate: {e}"))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| "client certificate has no common name".to_owned())?;
    match cn.strip_prefix(NODE_CN_PREFIX) {
        Some(node) if !node.is_empty() => Ok(node.to_owned()),
        _ => Err(format!(
            "client certificate common name {cn:?} is not {NODE_CN_PREFIX}<node>"
        )),
    }
}

/// Why a server refused a connection.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) reason: RefuseReason,
    pub(crate) detail: String,
}

impl Refusal {
    pub(crate) fn new(reason: RefuseReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// Checks a handshake's identity against the certificate's: the node and
/// project on success, else the status to answer and the refusal.
pub(crate) fn check_identity(
    cert_node: &Result<String, String>,
    node_id: Option<&str>,
    project_id: Option<&str>,
) -> Result<(String, String), (u16, Refusal)> {
    let cert_node = cert_node.as_ref().map_err(|detail| {
        (
            403,
            Refusal::new(RefuseReason::Unauthorized, detail.clone()),
        )
    })?;
    let node_id = node_id.map(str::trim).unwrap_or_default();
    if node_id.is_empty() {
        return Err((
            400,
            Refusal::new(RefuseReason::Handshake, "no node_id in the handshake"),
        ));
    }
    if node_id != cert_node {
        return Err((
            403,
            Refusal::new(
                RefuseReason::NodeMismatch,
                format!("node_id {node_id:?} but the certificate is for {cert_node:?}"),
            ),
        ));
    }
    let project_id = project_id.map(str::trim).unwrap_or_default();
    Ok((node_id.to_owned(), project_id.to_owned()))
}

// === The connection driver ===

/// What a transport read from its connection.
#[derive(Debug)]
pub(crate) enum Read {
    /// One frame's bytes, for [`FrameIntake::frame`].
    Frame(Vec<u8>),
    /// Nothing for the link (a WebSocket ping or pong); read on.
    Nothing,
    /// A frame the transport refused itself (and skipped); read on.
    Refused(RefuseReason),
    /// The connection is over, after a refusal when one is given.
    End(Option<RefuseReason>),
    /// The peer closed the connection because it stops, asking for the
    /// reconnect to come within this window ([`crate::link::restart_reason`]).
    Restart(Duration),
}

/// The incoming half of a connection, as [`drive`] reads it.
pub(crate) trait FrameSource {
    /// The next frame or event. Logs why the connection ended itself.
    fn read(&mut self) -> impl Future<Output = Read> + Send;
}

/// The outgoing half of a connection, as [`drive`] writes it.
pub(crate) trait FrameSink {
    /// Why a frame could not be written.
    type Error: Display;

    /// Writes one encoded message: `Ok(true)` once written, `Ok(false)`
    /// when the frame cannot travel on this wire and was skipped.
    fn write(&mut self, frame: Vec<u8>) -> impl Future<Output = Result<bool, Self::Error>> + Send;

    /// Ends the connection once the writer is done, giving the peer
    /// [`CLOSE_GRACE`] to take the last frames; with a window (the link
    /// was closed with [`crate::link::LinkSender::close_for_restart`]),
    /// with the [`crate::link::restart_reason`] that gives it.
    fn close(self, restart: Option<Duration>) -> impl Future<Output = ()> + Send;
}

/// Moves messages between an established connection and its link until
/// either ends (or `shutdown` is cancelled); then closes both.
pub(crate) async fn drive<R, W>(
    mut source: R,
    sink: W,
    ends: LinkEnds,
    transport: Transport,
    limits: &LinkLimits,
    metrics: LinkMetrics,
    shutdown: CancellationToken,
) where
    R: FrameSource,
    W: FrameSink,
{
    let _open = metrics.open_guard(transport);
    let LinkEnds {
        mut outgoing,
        incoming,
        closed,
        farewell,
        restart,
    } = ends;
    let (control_tx, mut control_rx) = mpsc::channel::<Queued>(CONTROL_BUFFER);
    let mut intake = FrameIntake::new(transport, limits, metrics.clone());

    let reader = async {
        loop {
            let read = tokio::select! {
                biased;
                () = closed.cancelled() => break,
                read = source.read() => read,
            };
            let data = match read {
                Read::Frame(data) => data,
                Read::Nothing => continue,
                Read::Refused(reason) => {
                    intake.refuse(reason);
                    continue;
                }
                Read::End(refused) => {
                    if let Some(reason) = refused {
                        intake.refuse(reason);
                    }
                    break;
                }
                Read::Restart(window) => {
                    debug!(
                        ?window,
                        "the peer stops and asks for a reconnect within a window"
                    );
                    let _ = restart.set(window);
                    break;
                }
            };
            match intake.frame(&data) {
                Intake::Deliver(msg) => {
                    tokio::select! {
                        biased;
                        () = closed.cancelled() => break,
                        sent = incoming.send(Box::new(msg)) => if sent.is_err() { break },
                    }
                    metrics.receive(transport);
                }
                Intake::Reply(reply) => {
                    tokio::select! {
                        biased;
                        () = closed.cancelled() => break,
                        sent = control_tx.send(Box::new(reply)) => if sent.is_err() { break },
                    }
                }
                Intake::Dropped => {}
            }
        }
        closed.cancel();
    };

    let writer = async {
        let mut sink = sink;
        let mut senders_gone = false;
        loop {
            let msg = tokio::select! {
                biased;
                () = closed.cancelled() => break,
                Some(reply) = control_rx.recv() => reply,
                msg = outgoing.recv(), if !senders_gone => match msg {
                    Some(msg) => msg,
                    // Nobody can send any more; keep answering control
                    // messages until the link closes.
                    None => { senders_gone = true; continue }
                },
            };
            let frame = msg.encode();
            if !check_outgoing(&frame, &msg, limits, &metrics, transport) {
                continue;
            }
            match sink.write(frame).await {
                Ok(true) => metrics.send(transport),
                Ok(false) => {}
                Err(error) => {
                    debug!(%error, "writing to the connection failed");
                    break;
                }
            }
        }
        closed.cancel();
        sink.close(farewell.get().copied()).await;
    };

    let stop = async {
        tokio::select! {
            () = shutdown.cancelled() => closed.cancel(),
            () = closed.cancelled() => {}
        }
    };

    tokio::join!(reader, writer, stop);
}

/// Starts the driver of a client's established connection to `target`
/// (which the server answered from `address`) and returns its link.
pub(crate) fn spawn_client<R, W>(
    target: &ConnectTarget,
    address: SocketAddr,
    (source, sink): (R, W),
    transport: Transport,
    limits: &LinkLimits,
    metrics: LinkMetrics,
    span: Span,
) -> Link
where
    R: FrameSource + Send + 'static,
    W: FrameSink + Send + 'static,
{
    let (link, ends) = new_link(target.peer(address), limits.buffer_size());
    let limits = limits.clone();
    tokio::spawn(
        async move {
            drive(
                source,
                sink,
                ends,
                transport,
                &limits,
                metrics,
                CancellationToken::new(),
            )
            .await;
        }
        .instrument(span),
    );
    link
}

// === Server connections ===

/// What one server connection task needs, whatever the transport.
#[derive(Debug)]
pub(crate) struct Admission {
    /// Held until the handshake ends (the connection is driven or
    /// dropped): one of the server's [`LinkLimits::max_handshakes`].
    pub(crate) handshaking: Slot,
    pub(crate) transport: Transport,
    pub(crate) limits: Arc<LinkLimits>,
    pub(crate) metrics: LinkMetrics,
    pub(crate) accepted: mpsc::Sender<Link>,
    pub(crate) shutdown: CancellationToken,
}

impl Admission {
    /// Runs `handshake` within the handshake timeout, counts a refusal or
    /// the acceptance, and hands the new link to the server's owner. The
    /// connection and the link's ends come back for [`Admission::drive`];
    /// `None` when the connection was refused or the server stops (then
    /// `on_shutdown` gets an accepted connection to close).
    pub(crate) async fn admit<C>(
        &self,
        handshake: impl Future<Output = Result<(C, Peer), Refusal>>,
        on_shutdown: impl FnOnce(C),
    ) -> Option<(C, LinkEnds)> {
        let handshake = timeout(self.limits.handshake_timeout, handshake);
        let outcome = tokio::select! {
            () = self.shutdown.cancelled() => return None,
            outcome = handshake => outcome,
        };
        let (connection, peer) = match outcome {
            Ok(Ok(accepted)) => accepted,
            Ok(Err(refusal)) => {
                debug!(reason = refusal.reason.as_str(), detail = %refusal.detail, "refused a connection");
                self.metrics.refuse(self.transport, refusal.reason);
                return None;
            }
            Err(_elapsed) => {
                debug!("handshake timed out");
                self.metrics.refuse(self.transport, RefuseReason::Handshake);
                return None;
            }
        };
        debug!(node = %peer.node_id, project = %peer.project_id, "accepted a connection");
        self.metrics.accept(self.transport);
        let (link, ends) = new_link(peer, self.limits.buffer_size());
        tokio::select! {
            () = self.shutdown.cancelled() => {
                on_shutdown(connection);
                None
            }
            sent = self.accepted.send(link) => sent.is_ok().then_some((connection, ends)),
        }
    }

    /// Drives an admitted connection until it or the server ends; its
    /// handshake is over, so another connection may start one.
    pub(crate) async fn drive<R: FrameSource, W: FrameSink>(
        self,
        source: R,
        sink: W,
        ends: LinkEnds,
    ) {
        let Self {
            handshaking,
            transport,
            limits,
            metrics,
            shutdown,
            ..
        } = self;
        drop(handshaking);
        drive(source, sink, ends, transport, &limits, metrics, shutdown).await;
    }
}

/// A server's connection tasks: each gets an [`Admission`] and is
/// stopped and awaited when the server stops.
#[derive(Debug)]
pub(crate) struct Connections {
    transport: Transport,
    limits: Arc<LinkLimits>,
    metrics: LinkMetrics,
    accepted: mpsc::Sender<Link>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    line: HandshakeLine,
}

impl Connections {
    /// No connections yet; they stop when `shutdown` is cancelled.
    pub(crate) fn new(
        transport: Transport,
        limits: LinkLimits,
        metrics: LinkMetrics,
        accepted: mpsc::Sender<Link>,
        shutdown: &CancellationToken,
    ) -> Self {
        Self {
            transport,
            line: HandshakeLine::new(limits.max_handshakes, limits.handshake_queue),
            limits: Arc::new(limits),
            metrics,
            accepted,
            shutdown: shutdown.child_token(),
            tracker: TaskTracker::new(),
        }
    }

    /// Resolves when the server must stop accepting: on shutdown, or
    /// once nobody takes the links any more.
    pub(crate) async fn stopping(&self) {
        tokio::select! {
            () = self.shutdown.cancelled() => {}
            () = self.accepted.closed() => {}
        }
    }

    /// Runs one connection's task, given what it needs, once it has one
    /// of the [`LinkLimits::max_handshakes`] slots: at once if one is
    /// free, else after waiting in line (at most
    /// [`LinkLimits::handshake_queue`] connections, each at most
    /// [`LinkLimits::handshake_queue_wait`]; a freed slot goes to the
    /// newest, see [`crate::line`]). A connection with no place in line,
    /// pushed out of a full line by newer ones, or whose wait ran out, is
    /// counted as busy and `task` is dropped unrun, which drops the
    /// connection it owns: quinn answers an unaccepted `Incoming` with
    /// CONNECTION_REFUSED, a dropped TCP stream closes.
    pub(crate) fn spawn<F>(&self, task: impl FnOnce(Admission) -> F + Send + 'static)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let place = match self.line.arrive() {
            Arrival::Slot(handshaking) => {
                self.tracker.spawn(task(self.admission()(handshaking)));
                return;
            }
            Arrival::Wait(place) => place,
            Arrival::Refused => {
                // Refused in a storm, so nothing more is made for it.
                self.busy()("no handshake slot and no place in line");
                return;
            }
        };
        let busy = self.busy();
        let admission = self.admission();
        let waiting = self.metrics.waiting_guard(self.transport);
        let wait = self.limits.handshake_queue_wait;
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(async move {
            let slot = tokio::select! {
                () = shutdown.cancelled() => return,
                slot = place.wait(wait) => slot,
            };
            drop(waiting);
            match slot {
                Ok(handshaking) => task(admission(handshaking)).await,
                Err(Missed::TooLong) => busy("waited too long for a handshake slot"),
                Err(Missed::PushedOut) => busy("pushed out of a full line by newer connections"),
            }
        });
    }

    /// Makes a connection's [`Admission`] once it holds a handshake slot.
    fn admission(&self) -> impl FnOnce(Slot) -> Admission + Send + 'static {
        let transport = self.transport;
        let limits = Arc::clone(&self.limits);
        let metrics = self.metrics.clone();
        let accepted = self.accepted.clone();
        let shutdown = self.shutdown.child_token();
        move |handshaking| Admission {
            handshaking,
            transport,
            limits,
            metrics,
            accepted,
            shutdown,
        }
    }

    /// What counts and logs one connection refused as busy, for a task
    /// to own.
    fn busy(&self) -> impl FnOnce(&'static str) + Send + 'static {
        let (metrics, transport) = (self.metrics.clone(), self.transport);
        move |why| {
            metrics.refuse(transport, RefuseReason::Busy);
            debug!(why, "connection refused");
        }
    }

    /// Stops every connection and returns once they are gone.
    pub(crate) async fn close(self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}
