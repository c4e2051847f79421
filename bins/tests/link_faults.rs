//! The link under network faults: an edge node (edgemark, one hollow node)
//! in a network namespace of its own behind a veth pair, cloudcore on the
//! host side, and nftables inside the namespace dropping 30 % of packets
//! and then everything for two minutes while objects keep changing. When
//! the network heals, the node must hold exactly the latest version of
//! every object, nothing deleted meanwhile, and it must never have applied
//! an older version over a newer one.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables), which scripts/setup.sh
//! installs. Delay and reordering are in link_impairments.rs.

mod support;

use std::process::Command;
use std::time::Duration;

use support::churn::{Churn, Edgemark, EdgemarkTarget};
use support::{Backend, Cloud};

/// Objects the node holds.
const OBJECTS: usize = 8;
/// How long the network is cut.
const CUT: Duration = Duration::from_secs(120);
/// How long loss lasts before and after the cut.
const LOSSY: Duration = Duration::from_secs(20);
/// How long the node may take to converge once the network is healthy.
const CONVERGE: Duration = Duration::from_secs(180);

fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("{program} {args:?}: {error}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn nft(namespace: &str, script: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", namespace, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft runs");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("script written");
    assert!(child.wait().expect("nft waits").success(), "nft {script}");
}

/// A network namespace joined to the host by a veth pair, removed on drop.
struct EdgeNetwork {
    namespace: String,
    host_side: String,
    edge_side: String,
    host_ip: String,
}

impl EdgeNetwork {
    fn create() -> Self {
        let id = std::process::id();
        let net = EdgeNetwork {
            namespace: format!("kedge-fault-{id}"),
            host_side: format!("kf{id}h"),
            edge_side: format!("kf{id}e"),
            host_ip: format!("10.213.{}.1", id % 250),
        };
        let edge_ip = format!("10.213.{}.2/30", id % 250);
        run("ip", &["netns", "add", &net.namespace]);
        run(
            "ip",
            &[
                "link",
                "add",
                &net.host_side,
                "type",
                "veth",
                "peer",
                "name",
                &net.edge_side,
            ],
        );
        run(
            "ip",
            &["link", "set", &net.edge_side, "netns", &net.namespace],
        );
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/30", net.host_ip),
                "dev",
                &net.host_side,
            ],
        );
        run("ip", &["link", "set", &net.host_side, "up"]);
        let inside = |args: &[&str]| {
            let mut full = vec!["-n", net.namespace.as_str()];
            full.extend_from_slice(args);
            run("ip", &full);
        };
        inside(&["addr", "add", &edge_ip, "dev", &net.edge_side]);
        inside(&["link", "set", &net.edge_side, "up"]);
        inside(&["link", "set", "lo", "up"]);
        nft(
            &net.namespace,
            "table inet kedgefault {\n chain out { type filter hook output priority 0; policy accept; }\n chain in { type filter hook input priority 0; policy accept; }\n}\n",
        );
        net
    }

    /// Drops `percent` % of the packets crossing the veth, both ways;
    /// 0 heals it.
    fn drop_percent(&self, percent: u32) {
        let mut script =
            "flush chain inet kedgefault out\nflush chain inet kedgefault in\n".to_owned();
        if percent >= 100 {
            script.push_str(&format!(
                "add rule inet kedgefault out oifname \"{0}\" drop\nadd rule inet kedgefault in iifname \"{0}\" drop\n",
                self.edge_side
            ));
        } else if percent > 0 {
            script.push_str(&format!(
                "add rule inet kedgefault out oifname \"{0}\" numgen random mod 100 < {1} drop\nadd rule inet kedgefault in iifname \"{0}\" numgen random mod 100 < {1} drop\n",
                self.edge_side, percent
            ));
        }
        nft(&self.namespace, &script);
    }
}

impl Drop for EdgeNetwork {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_side])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.namespace])
            .status();
    }
}

#[tokio::test]
async fn a_node_converges_to_the_latest_objects_after_loss_and_a_two_minute_cut() {
    let net = EdgeNetwork::create();
    let mut cloud = Cloud::start_with(Backend::start(false).await, |config| {
        let hub = &mut config.modules.cloud_hub;
        hub.advertise_address = vec!["127.0.0.1".to_owned(), net.host_ip.clone()];
        hub.websocket.address = net.host_ip.clone();
        hub.https.address = net.host_ip.clone();
    })
    .await;
    let churn = Churn::seed(&mut cloud, OBJECTS).await;
    let hub = cloud.config().modules.cloud_hub;
    let edgemark = Edgemark::start(
        &["ip", "netns", "exec", &net.namespace],
        &EdgemarkTarget {
            server: format!("{}:{}", net.host_ip, hub.websocket.port),
            cert_server: format!("https://{}:{}", net.host_ip, hub.https.port),
            quic: false,
        },
        &cloud.join_token(),
    );
    churn
        .wait_converged(&cloud, Duration::from_secs(60), "at first")
        .await;

    // Objects change all the time from here until the network is healthy.
    let changer = churn.start_changing();
    net.drop_percent(30);
    tokio::time::sleep(LOSSY).await;
    net.drop_percent(100);
    tokio::time::sleep(CUT / 2).await;
    cloud.ok(&["delete", "configmap", "obj-0"]);
    tokio::time::sleep(CUT / 2).await;
    net.drop_percent(30);
    tokio::time::sleep(LOSSY).await;
    net.drop_percent(0);
    let changes = changer.stop().await;
    assert!(changes > 100, "objects changed {changes} times");

    churn
        .wait_converged(&cloud, CONVERGE, "after the network healed")
        .await;
    edgemark.stop_and_check(&churn).await;
    assert!(
        !churn.live().await.contains_key("obj-0"),
        "the deleted object is gone"
    );
    cloud.stop().await;
}
