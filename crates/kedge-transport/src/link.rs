//! A link: one established connection between an edge node and the cloud,
//! as the hub modules see it whatever carries it (WebSocket, QUIC, or an
//! in-memory pair in tests).
//!
//! A transport turns its socket into a [`Link`]: a [`LinkSender`] whose
//! messages it writes, a [`LinkReceiver`] it fills with the messages it
//! reads (malformed or oversized frames are refused and counted by the
//! transport, never passed on), and the [`Peer`] it authenticated. Either
//! side ends the link with [`LinkSender::close`]; the receiver then yields
//! `None`, as it does when the peer goes away.
//!
//! A cloud that stops closes its links with
//! [`LinkSender::close_for_restart`]: the transport closes the connection
//! with a reason that asks the node to reconnect within a window
//! ([`restart_reason`]), and the edge's transport reads it back into
//! [`LinkSender::restart_window`].

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kedge_message::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Who is at the other end of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The edge node's name: on the cloud side the name its certificate
    /// was issued for, which the handshake's `node_id` header must match.
    pub node_id: String,
    /// The handshake's `project_id` header.
    pub project_id: String,
    /// Where the connection comes from, when it has an address.
    pub address: Option<SocketAddr>,
}

/// The link was closed, by either side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the link is closed")]
pub struct LinkClosed;

/// One established connection.
#[derive(Debug)]
pub struct Link {
    /// The authenticated peer.
    pub peer: Peer,
    /// Writes messages to the peer.
    pub sender: LinkSender,
    /// Messages read from the peer.
    pub receiver: LinkReceiver,
}

/// A message waiting in a link's buffer. Boxed, so that an idle link's
/// buffers hold pointers: each buffer allocates room for 32 entries at
/// once, which for whole messages is about 8 KiB per buffer and adds up
/// over 100,000 links.
pub type Queued = Box<Message>;

/// The sending half of a link. Clones share the connection.
#[derive(Debug, Clone)]
pub struct LinkSender {
    outgoing: mpsc::Sender<Queued>,
    closed: CancellationToken,
    farewell: Arc<OnceLock<Duration>>,
    restart: Arc<OnceLock<Duration>>,
}

/// The receiving half of a link.
#[derive(Debug)]
pub struct LinkReceiver {
    incoming: mpsc::Receiver<Queued>,
    closed: CancellationToken,
}

impl LinkSender {
    /// Queues `msg` for writing, waiting while the transport's buffer is
    /// full; fails once the link is closed.
    pub async fn send(&self, msg: Message) -> Result<(), LinkClosed> {
        tokio::select! {
            biased;
            () = self.closed.cancelled() => Err(LinkClosed),
            sent = self.outgoing.send(Box::new(msg)) => sent.map_err(|_| LinkClosed),
        }
    }

    /// Ends the link: the transport stops writing and closes its socket,
    /// and both receivers yield `None`.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Ends the link as [`close`](Self::close) does, asking the peer to
    /// reconnect at a random moment within `window` (this side stops).
    pub fn close_for_restart(&self, window: Duration) {
        let _ = self.farewell.set(window);
        self.closed.cancel();
    }

    /// Whether the link is closed.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled() || self.outgoing.is_closed()
    }

    /// Completes when the link is closed.
    pub async fn closed(&self) {
        tokio::select! {
            () = self.closed.cancelled() => {}
            () = self.outgoing.closed() => {}
        }
    }

    /// The window within which the peer asked for the reconnect when it
    /// closed the link because it stops; `None` when it said nothing of
    /// the kind (or the link is still up).
    pub fn restart_window(&self) -> Option<Duration> {
        self.restart.get().copied()
    }
}

impl LinkReceiver {
    /// The next message from the peer, or `None` once the link is closed.
    pub async fn recv(&mut self) -> Option<Message> {
        tokio::select! {
            biased;
            msg = self.incoming.recv() => msg.map(|msg| *msg),
            () = self.closed.cancelled() => None,
        }
    }
}

/// The transport's side of a link: where it takes the messages to write
/// and puts the messages it reads.
#[derive(Debug)]
pub struct LinkEnds {
    /// Messages to write to the socket.
    pub outgoing: mpsc::Receiver<Queued>,
    /// Where to put messages read from the socket.
    pub incoming: mpsc::Sender<Queued>,
    /// Cancelled when either side closes the link; the transport closes
    /// its socket then, and cancels it when the socket fails.
    pub closed: CancellationToken,
    /// Set by [`LinkSender::close_for_restart`] before it cancels
    /// `closed`: the transport then closes with a [`restart_reason`].
    pub farewell: Arc<OnceLock<Duration>>,
    /// Set by the transport, before it cancels `closed`, when the peer
    /// closed the connection with a [`restart_reason`].
    pub restart: Arc<OnceLock<Duration>>,
}

/// The text before the window in a [`restart_reason`].
const RESTART_PREFIX: &str = "server stopping; reconnect within ";

/// The close reason of a server that stops and asks each node to
/// reconnect at a random moment within `window` (in milliseconds, e.g.
/// `server stopping; reconnect within 12000 ms`). Peers that do not know
/// it see an ordinary close.
pub fn restart_reason(window: Duration) -> String {
    format!("{RESTART_PREFIX}{} ms", window.as_millis())
}

/// The window a [`restart_reason`] gives, or `None` for any other reason.
pub fn parse_restart_reason(reason: &str) -> Option<Duration> {
    let millis = reason.strip_prefix(RESTART_PREFIX)?.strip_suffix(" ms")?;
    millis.parse().ok().map(Duration::from_millis)
}

/// A new link for `peer`, and the ends its transport drives. `buffer`
/// bounds the messages waiting in each direction.
pub fn new_link(peer: Peer, buffer: usize) -> (Link, LinkEnds) {
    let (out_tx, out_rx) = mpsc::channel(buffer);
    let (in_tx, in_rx) = mpsc::channel(buffer);
    let closed = CancellationToken::new();
    let farewell = Arc::new(OnceLock::new());
    let restart = Arc::new(OnceLock::new());
    let link = Link {
        peer,
        sender: LinkSender {
            outgoing: out_tx,
            closed: closed.clone(),
            farewell: Arc::clone(&farewell),
            restart: Arc::clone(&restart),
        },
        receiver: LinkReceiver {
            incoming: in_rx,
            closed: closed.clone(),
        },
    };
    let ends = LinkEnds {
        outgoing: out_rx,
        incoming: in_tx,
        closed,
        farewell,
        restart,
    };
    (link, ends)
}

/// Two links joined back to back in memory, for tests: what one sends the
/// other receives, and closing either closes both. `edge_view` is the peer
/// as the edge sees it (the cloud), `cloud_view` the peer as the cloud
/// sees it (the node). A window one side closes with
/// ([`LinkSender::close_for_restart`]) is the other's restart window.
pub fn memory_pair(cloud_view: Peer, edge_view: Peer, buffer: usize) -> (Link, Link) {
    let closed = CancellationToken::new();
    let cloud_farewell = Arc::new(OnceLock::new());
    let edge_farewell = Arc::new(OnceLock::new());
    let (to_edge_tx, to_edge_rx) = mpsc::channel(buffer);
    let (to_cloud_tx, to_cloud_rx) = mpsc::channel(buffer);
    let cloud = Link {
        peer: cloud_view,
        sender: LinkSender {
            outgoing: to_edge_tx,
            closed: closed.clone(),
            farewell: Arc::clone(&cloud_farewell),
            restart: Arc::clone(&edge_farewell),
        },
        receiver: LinkReceiver {
            incoming: to_cloud_rx,
            closed: closed.clone(),
        },
    };
    let edge = Link {
        peer: edge_view,
        sender: LinkSender {
            outgoing: to_cloud_tx,
            closed: closed.clone(),
            farewell: edge_farewell,
            restart: cloud_farewell,
        },
        receiver: LinkReceiver {
            incoming: to_edge_rx,
            closed,
        },
    };
    (cloud, edge)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(node: &str) -> Peer {
        Peer {
            node_id: node.into(),
            project_id: "p".into(),
            address: None,
        }
    }

    #[tokio::test]
    async fn a_memory_pair_carries_messages_both_ways_and_closes_together() {
        let (mut cloud, mut edge) = memory_pair(peer("edge-1"), peer("cloud"), 4);
        edge.sender.send(Message::keepalive()).await.expect("sent");
        let got = cloud.receiver.recv().await.expect("received");
        assert_eq!(got.router.operation, "keepalive");
        cloud.sender.send(got.ack()).await.expect("sent");
        assert!(edge.receiver.recv().await.expect("received").is_reply());

        cloud.sender.close();
        assert_eq!(
            edge.sender.send(Message::keepalive()).await,
            Err(LinkClosed)
        );
        assert!(edge.receiver.recv().await.is_none());
        assert!(cloud.receiver.recv().await.is_none());
        assert_eq!(edge.sender.restart_window(), None);

        let (cloud, edge) = memory_pair(peer("edge-1"), peer("cloud"), 4);
        cloud.sender.close_for_restart(Duration::from_secs(3));
        assert!(edge.sender.is_closed());
        assert_eq!(edge.sender.restart_window(), Some(Duration::from_secs(3)));
        assert_eq!(cloud.sender.restart_window(), None);
    }

    #[tokio::test]
    async fn a_transport_sees_what_is_sent_and_delivers_what_it_reads() {
        let (mut link, mut ends) = new_link(peer("edge-1"), 2);
        link.sender.send(Message::keepalive()).await.expect("sent");
        assert!(ends.outgoing.recv().await.is_some());
        ends.incoming
            .send(Box::new(Message::keepalive()))
            .await
            .expect("delivered");
        assert!(link.receiver.recv().await.is_some());
        ends.closed.cancel();
        assert!(link.sender.is_closed());
        assert!(link.receiver.recv().await.is_none());
        assert_eq!(link.sender.restart_window(), None);
    }

    #[test]
    fn a_restart_reason_carries_its_window_and_nothing_else_parses() {
        let window = Duration::from_millis(12_345);
        let reason = restart_reason(window);
        assert_eq!(reason, "server stopping; reconnect within 12345 ms");
        assert_eq!(parse_restart_reason(&reason), Some(window));
        for other in [
            "server shutting down",
            "link closed",
            "server stopping; reconnect within soon ms",
            "server stopping; reconnect within 5 s",
            "",
        ] {
            assert_eq!(parse_restart_reason(other), None, "{other:?}");
        }
    }
}
