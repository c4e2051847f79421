//! The limits every transport enforces on one connection: frame size,
//! handshake size and time, message rate and buffering.
//!
//! KubeEdge sets none of these: its WebSocket reader has no read limit
//! (frames of any size are buffered whole) and its QUIC reader accepts
//! frames up to 32 MiB (protocol.md §3.3, §3.4). Kedge refuses much
//! earlier, because a Kubernetes object is capped at about 1.5 MiB by the
//! API server and the messages that cross the link are mostly far smaller;
//! a larger frame is a bug or an attack and must not cost the receiver its
//! memory.

use std::time::Duration;

use tokio::time::Instant;

/// The limits of one connection. `Default` gives the values documented on
/// each field; every field can be changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkLimits {
    /// Largest message frame accepted, in bytes (the JSON text including
    /// its trailing newline). Default 4 MiB
    /// ([`DEFAULT_MAX_FRAME_BYTES`]), far below KubeEdge's unlimited
    /// WebSocket frames and 32 MiB QUIC frames. Larger frames are refused
    /// and counted; larger outgoing messages are not sent (and counted).
    pub max_frame_bytes: usize,
    /// Largest opening handshake accepted, in bytes: the HTTP upgrade
    /// request (or response) on WebSocket, the `header` message on QUIC.
    /// Default 8 KiB.
    pub max_handshake_bytes: usize,
    /// Incoming messages allowed per connection, or `None` for no limit.
    /// Messages over the limit are dropped and counted; the connection
    /// stays up. Default 100 per second with a burst of 200, meant for
    /// servers (KubeEdge's edge sends at most 30 per second, bursts of
    /// 60); clients use [`LinkLimits::client`], without a limit.
    pub rate: Option<RateLimit>,
    /// Time allowed for the TLS and WebSocket (or QUIC) handshakes
    /// together. Default 30 s, KubeEdge's `handshakeTimeout`.
    pub handshake_timeout: Duration,
    /// Messages buffered in each direction of a link (at least 1). When
    /// the receiver falls behind, the transport stops reading the socket,
    /// so the peer is slowed down rather than memory growing. Default 100,
    /// the size of KubeEdge's edge receive queue.
    pub buffer: usize,
    /// Connections a server lets handshake at once (at least 1); more
    /// wait in line ([`LinkLimits::handshake_queue`]). Default 1,024:
    /// after a cloudcore restart every node dials within a second, and
    /// without a bound the handshakes, each a few packets and some
    /// milliseconds of cryptography, pile up until the established
    /// links' packets are dropped with them. Clients ignore it.
    pub max_handshakes: usize,
    /// Connections a server lets wait for a handshake slot, each for at
    /// most [`LinkLimits::handshake_queue_wait`]; a freed slot goes to the
    /// newest, whose client has the most of its own deadline left, and a
    /// full line pushes out its oldest to let a new one in.
    /// They cost no TLS work while they wait (a QUIC client's Initial is
    /// held unanswered, a TCP connection unread). One pushed out, or one
    /// that waited too long, is refused before any TLS work (QUIC answers
    /// CONNECTION_REFUSED, WebSocket closes the TCP connection) and its
    /// node backs off and dials again. Default 8,192: a refused dial
    /// costs the node a new key exchange and the server a refusal, while
    /// a wait costs neither; at 20,000 nodes the line halved the dials
    /// that failed after a restart. 0 refuses at once. Clients ignore it.
    pub handshake_queue: usize,
    /// Longest wait for a handshake slot. Default 10 s, well inside the
    /// 30 s a client (KubeEdge's too) waits for the server's first
    /// answer.
    pub handshake_queue_wait: Duration,
}

/// The default [`LinkLimits::max_frame_bytes`]: 4 MiB, room for the
/// largest object the API server stores (about 1.5 MiB) in its JSON
/// envelope, and far below KubeEdge's unlimited WebSocket frames.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;
/// The default [`LinkLimits::max_handshake_bytes`]: 8 KiB.
pub const DEFAULT_MAX_HANDSHAKE_BYTES: usize = 8 * 1024;
/// The default [`LinkLimits::handshake_timeout`]: 30 s.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// The default [`LinkLimits::buffer`]: 100 messages.
pub const DEFAULT_BUFFER: usize = 100;
/// The default [`LinkLimits::max_handshakes`]: 1,024 connections.
pub const DEFAULT_MAX_HANDSHAKES: usize = 1024;
/// The default [`LinkLimits::handshake_queue`]: 8,192 connections.
pub const DEFAULT_HANDSHAKE_QUEUE: usize = 8192;
/// The default [`LinkLimits::handshake_queue_wait`]: 10 s.
pub const DEFAULT_HANDSHAKE_QUEUE_WAIT: Duration = Duration::from_secs(10);

impl Default for LinkLimits {
    fn default() -> Self {
        Self {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_handshake_bytes: DEFAULT_MAX_HANDSHAKE_BYTES,
            rate: Some(RateLimit::default()),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            buffer: DEFAULT_BUFFER,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            handshake_queue: DEFAULT_HANDSHAKE_QUEUE,
            handshake_queue_wait: DEFAULT_HANDSHAKE_QUEUE_WAIT,
        }
    }
}

impl LinkLimits {
    /// The defaults without a rate limit: for clients (the edge), which
    /// must not drop what the cloud sends in a burst (a resync after
    /// reconnecting sends every object at once).
    pub fn client() -> Self {
        Self {
            rate: None,
            ..Self::default()
        }
    }

    /// The per-direction buffer size actually used: `buffer`, at least 1.
    pub fn buffer_size(&self) -> usize {
        self.buffer.max(1)
    }

    /// A fresh rate limiter for one connection, if a rate is set.
    pub fn rate_limiter(&self, now: Instant) -> Option<TokenBucket> {
        self.rate.map(|rate| TokenBucket::new(rate, now))
    }
}

/// A message rate: `per_second` messages per second on average, and up to
/// `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained messages per second (0 is treated as 1).
    pub per_second: u32,
    /// Messages allowed back to back after a quiet period (0 is treated
    /// as 1).
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            per_second: 100,
            burst: 200,
        }
    }
}

/// A token bucket (in its "generic cell rate" form: one deadline instead
/// of a token count, so it needs no floating point and never drifts).
///
/// It is a plain value: the caller passes the current time, so tests can
/// drive it on paused tokio time and it costs nothing to keep one per
/// connection.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Time one token takes to come back.
    interval: Duration,
    /// How far ahead of `now` the bucket may be committed: `burst` tokens.
    tolerance: Duration,
    /// The theoretical time at which the bucket is full again.
    full_at: Instant,
}

impl TokenBucket {
    /// A full bucket for `rate`, as of `now`.
    pub fn new(rate: RateLimit, now: Instant) -> Self {
        let interval = Duration::from_secs(1) / rate.per_second.max(1);
        Self {
            interval,
            tolerance: interval * rate.burst.max(1),
            full_at: now,
        }
    }

    /// Takes one token at `now`: `true` when the message may pass, `false`
    /// when it is over the limit (the bucket is then left unchanged).
    pub fn try_take(&mut self, now: Instant) -> bool {
        let start = self.full_at.max(now);
        let next = start + self.interval;
        if next.saturating_duration_since(now) > self.tolerance {
            return false;
        }
        self.full_at = next;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn take_all(bucket: &mut TokenBucket, tries: u32) -> u32 {
        (0..tries)
            .filter(|_| bucket.try_take(Instant::now()))
            .count()
            .try_into()
            .expect("count fits")
    }

    #[tokio::test(start_paused = true)]
    async fn the_burst_passes_at_once_then_the_rate_refills() {
        let mut bucket = TokenBucket::new(
            RateLimit {
                per_second: 10,
                burst: 5,
            },
            Instant::now(),
        );
        assert_eq!(take_all(&mut bucket, 20), 5, "only the burst passes");

        advance(Duration::from_millis(100)).await;
        assert_eq!(take_all(&mut bucket, 20), 1, "one token per 100 ms");

        advance(Duration::from_millis(350)).await;
        assert_eq!(take_all(&mut bucket, 20), 3);

        advance(Duration::from_secs(60)).await;
        assert_eq!(take_all(&mut bucket, 20), 5, "never more than the burst");
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_rate_under_the_limit_always_passes() {
        let mut bucket = TokenBucket::new(
            RateLimit {
                per_second: 100,
                burst: 1,
            },
            Instant::now(),
        );
        for _ in 0..1000 {
            assert!(bucket.try_take(Instant::now()));
            advance(Duration::from_millis(10)).await;
        }
        assert!(bucket.try_take(Instant::now()));
        assert!(
            !bucket.try_take(Instant::now()),
            "two at once exceed a burst of 1"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn zero_values_mean_one() {
        let mut bucket = TokenBucket::new(
            RateLimit {
                per_second: 0,
                burst: 0,
            },
            Instant::now(),
        );
        assert_eq!(take_all(&mut bucket, 3), 1);
        advance(Duration::from_millis(999)).await;
        assert_eq!(take_all(&mut bucket, 3), 0);
        advance(Duration::from_millis(1)).await;
        assert_eq!(take_all(&mut bucket, 3), 1);
    }

    #[test]
    fn defaults() {
        let limits = LinkLimits::default();
        assert_eq!(limits.max_frame_bytes, 4 << 20);
        assert_eq!(limits.max_handshake_bytes, 8 << 10);
        assert_eq!(
            limits.rate,
            Some(RateLimit {
                per_second: 100,
                burst: 200
            })
        );
        assert_eq!(limits.handshake_timeout, Duration::from_secs(30));
        let none = LinkLimits {
            buffer: 0,
            ..LinkLimits::default()
        };
        assert_eq!(none.buffer_size(), 1);
    }
}
