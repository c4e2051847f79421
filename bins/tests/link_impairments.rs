//! The link over a slow, reordering network: an edge node (edgemark, one
//! hollow node) reaches cloudcore through a relay in this test that holds
//! every packet for 500 ms, plus up to 300 ms of jitter that reorders
//! them, while objects change all the time. Once the changes stop, the
//! node must hold exactly the latest version of every object, nothing
//! deleted meanwhile, and never have applied an older version over a newer
//! one.
//!
//! The relay is in user space, on loopback, because the kernel's netem
//! qdisc (`tc qdisc ... netem delay 500ms reorder`) is not built into
//! every kernel. Over QUIC it relays UDP datagrams, so QUIC itself sees
//! the delay, the reordering and a little loss. Over WebSocket it relays
//! the TCP byte stream, which TCP keeps in order, so there it adds the
//! delay only: reordered segments are TCP's to repair, below the link.
//! Loss and a two-minute cut are in link_faults.rs.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use support::churn::{Churn, Edgemark, EdgemarkTarget};
use support::{Backend, Cloud};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Objects the node holds.
const OBJECTS: usize = 6;
/// How long every packet is held, each way.
const DELAY: Duration = Duration::from_millis(500);
/// The most extra delay a datagram gets, drawn uniformly: datagrams sent
/// closer together than this may overtake each other.
const JITTER_MS: u64 = 300;
/// Datagrams dropped, in percent.
const LOSS_PERCENT: u64 = 2;
/// How long objects change while the link is slow.
const CHURN: Duration = Duration::from_secs(40);
/// How long the node may take to converge once changes stop.
const CONVERGE: Duration = Duration::from_secs(120);

/// What a relay did.
#[derive(Default)]
struct RelayCounts {
    /// Bytes forwarded (TCP coalesces messages into few large chunks, so
    /// bytes, not chunks, show that the traffic went through).
    bytes: AtomicU64,
    /// Datagrams forwarded after one that was received later.
    reordered: AtomicU64,
    /// Datagrams dropped.
    dropped: AtomicU64,
}

/// A small random number generator, seeded per relay (no shared state, no
/// dependency): xorshift64*.
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound
    }
}

/// One direction of a UDP flow: datagrams go out through `socket` to
/// `to`, each after [`DELAY`] plus jitter, in the order their times come
/// due; `sequence` numbers them as received, to count reordering.
fn udp_direction(
    socket: Arc<UdpSocket>,
    to: SocketAddr,
    counts: Arc<RelayCounts>,
    seed: u64,
) -> mpsc::UnboundedSender<Vec<u8>> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        let mut rng = Rng(seed | 1);
        let (due_tx, mut due_rx) = mpsc::unbounded_channel::<(u64, Vec<u8>)>();
        let mut sequence = 0u64;
        let mut last_sent = 0u64;
        loop {
            tokio::select! {
                datagram = rx.recv() => {
                    let Some(datagram) = datagram else { break };
                    sequence += 1;
                    if rng.below(100) < LOSS_PERCENT {
                        counts.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let hold = DELAY + Duration::from_millis(rng.below(JITTER_MS + 1));
                    let due_tx = due_tx.clone();
                    let number = sequence;
                    tokio::spawn(async move {
                        tokio::time::sleep(hold).await;
                        let _ = due_tx.send((number, datagram));
                    });
                }
                Some((number, datagram)) = due_rx.recv() => {
                    if number < last_sent {
                        counts.reordered.fetch_add(1, Ordering::Relaxed);
                    }
                    last_sent = last_sent.max(number);
                    counts.bytes.fetch_add(datagram.len() as u64, Ordering::Relaxed);
                    let _ = socket.send_to(&datagram, to).await;
                }
            }
        }
    });
    tx
}

/// Relays UDP from a loopback port to `upstream`: a socket of its own per
/// client address, each datagram delayed, jittered and sometimes dropped,
/// both ways.
async fn udp_relay(upstream: SocketAddr, counts: Arc<RelayCounts>) -> SocketAddr {
    let listener = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let mut flows: HashMap<SocketAddr, mpsc::UnboundedSender<Vec<u8>>> = HashMap::new();
        let mut buffer = vec![0u8; 65_536];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        loop {
            let Ok((size, client)) = listener.recv_from(&mut buffer).await else {
                return;
            };
            let to_server = match flows.get(&client) {
                Some(flow) => flow.clone(),
                None => {
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
                    let to_server = udp_direction(socket.clone(), upstream, counts.clone(), seed);
                    let to_client = udp_direction(
                        listener.clone(),
                        client,
                        counts.clone(),
                        seed.rotate_left(17),
                    );
                    tokio::spawn(async move {
                        let mut buffer = vec![0u8; 65_536];
                        while let Ok(size) = socket.recv(&mut buffer).await {
                            if to_client.send(buffer[..size].to_vec()).is_err() {
                                return;
                            }
                        }
                    });
                    flows.insert(client, to_server.clone());
                    to_server
                }
            };
            let _ = to_server.send(buffer[..size].to_vec());
        }
    });
    address
}

/// Copies `from` to `to`, each chunk written [`DELAY`] after it was read,
/// in order.
async fn delayed_copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    counts: Arc<RelayCounts>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
            counts
                .bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        let _ = to.shutdown().await;
    });
    let mut buffer = vec![0u8; 65_536];
    while let Ok(size) = from.read(&mut buffer).await {
        if size == 0
            || tx
                .send((Instant::now() + DELAY, buffer[..size].to_vec()))
                .is_err()
        {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// Relays TCP from a loopback port to `upstream`, every chunk held for
/// [`DELAY`] each way.
async fn tcp_relay(upstream: SocketAddr, counts: Arc<RelayCounts>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let counts = counts.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::join!(
                    delayed_copy(client_read, server_write, counts.clone()),
                    delayed_copy(server_read, client_write, counts),
                );
            });
        }
    });
    address
}

/// The scenario over either transport: join through the relays, converge,
/// churn with one object deleted midway, converge again, check the node.
async fn converges_through_a_slow_network(quic: bool) {
    let mut cloud = Cloud::start_with(Backend::start(false).await, |config| {
        config.modules.cloud_hub.quic.enable = quic;
    })
    .await;
    let churn = Churn::seed(&mut cloud, OBJECTS).await;
    let hub = cloud.config().modules.cloud_hub;
    let loopback =
        |port: u32| -> SocketAddr { format!("127.0.0.1:{port}").parse().expect("address") };
    let counts = Arc::new(RelayCounts::default());
    let server = if quic {
        udp_relay(loopback(hub.quic.port), counts.clone()).await
    } else {
        tcp_relay(loopback(hub.websocket.port), counts.clone()).await
    };
    let cert_server = tcp_relay(loopback(hub.https.port), Arc::default()).await;
    let edgemark = Edgemark::start(
        &[],
        &EdgemarkTarget {
            server: server.to_string(),
            cert_server: format!("https://{cert_server}"),
            quic,
        },
        &cloud.join_token(),
    );
    churn
        .wait_converged(&cloud, Duration::from_secs(90), "at first")
        .await;

    let changer = churn.start_changing();
    tokio::time::sleep(CHURN / 2).await;
    cloud.ok(&["delete", "configmap", "obj-0"]);
    tokio::time::sleep(CHURN / 2).await;
    let changes = changer.stop().await;
    assert!(changes > 100, "objects changed {changes} times");

    churn
        .wait_converged(&cloud, CONVERGE, "after the changes stopped")
        .await;
    edgemark.stop_and_check(&churn).await;
    assert!(
        !churn.live().await.contains_key("obj-0"),
        "the deleted object is gone"
    );
    assert!(
        counts.bytes.load(Ordering::Relaxed) > 20_000,
        "the traffic went through the relay: {} bytes",
        counts.bytes.load(Ordering::Relaxed)
    );
    if quic {
        assert!(
            counts.reordered.load(Ordering::Relaxed) > 0
                && counts.dropped.load(Ordering::Relaxed) > 0,
            "the relay reordered and dropped datagrams: {} reordered, {} dropped",
            counts.reordered.load(Ordering::Relaxed),
            counts.dropped.load(Ordering::Relaxed)
        );
    }
    cloud.stop().await;
}

#[tokio::test]
async fn over_websocket_a_node_converges_with_half_a_second_of_delay() {
    converges_through_a_slow_network(false).await;
}

#[tokio::test]
async fn over_quic_a_node_converges_with_delay_jitter_reordering_and_loss() {
    converges_through_a_slow_network(true).await;
}
