//! The link under network faults: an edge node (edgemark, one hollow node)
//! in a network namespace of its own behind a veth pair, cloudcore on the
//! host side, and nftables inside the namespace dropping 30 % of packets
//! and then everything for two minutes while objects keep changing. When
//! the network heals, the node must hold exactly the latest version of
//! every object, nothing deleted meanwhile, and it must never have applied
//! an older version over a newer one.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables), which scripts/setup.sh
//! installs. (Delay and reordering need the kernel's netem qdisc, which
//! not every kernel has; see docs/link.md.)

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use support::{Backend, Cloud};

/// Objects the node holds.
const OBJECTS: usize = 8;
/// How long the network is cut.
const CUT: Duration = Duration::from_secs(120);
/// How long loss lasts before and after the cut.
const LOSSY: Duration = Duration::from_secs(20);
/// How long the node may take to converge once the network is healthy.
const CONVERGE: Duration = Duration::from_secs(180);
const NODE: &str = "hollow-0";

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

fn gettoken(cloud: &Cloud) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_keadm"))
        .args(["gettoken", "--kube-config"])
        .arg(&cloud.kubeconfig)
        .output()
        .expect("keadm runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Every live ConfigMap `obj-*`: name → (uid, resourceVersion).
async fn live(api: &Api<ConfigMap>) -> BTreeMap<String, (String, u64)> {
    api.list(&Default::default())
        .await
        .expect("configmaps listed")
        .into_iter()
        .filter_map(|cm| {
            let name = cm.metadata.name.clone()?;
            name.starts_with("obj-").then(|| {
                (
                    name,
                    (
                        cm.metadata.uid.clone().unwrap_or_default(),
                        cm.metadata
                            .resource_version
                            .as_deref()
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0),
                    ),
                )
            })
        })
        .collect()
}

/// Whether every live object's ObjectSync for the node records its
/// current version, and no ObjectSync is left for a deleted one.
fn converged(cloud: &Cloud, live: &BTreeMap<String, (String, u64)>) -> bool {
    let output = cloud.kubectl(&[
        "get",
        "objectsyncs",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.status.objectResourceVersion}{\"\\n\"}{end}",
    ]);
    let text = String::from_utf8_lossy(&output.stdout);
    let recorded: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect();
    let wanted: BTreeMap<String, String> = live
        .values()
        .map(|(uid, version)| (format!("{NODE}.{uid}"), version.to_string()))
        .collect();
    recorded.len() == wanted.len()
        && wanted
            .iter()
            .all(|(name, version)| recorded.get(name.as_str()) == Some(&version.as_str()))
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
    let client = cloud.client().await;
    let configmaps: Api<ConfigMap> = Api::default_namespaced(client.clone());

    // The objects, each recorded for the node as not yet delivered.
    for i in 0..OBJECTS {
        cloud.ok(&[
            "create",
            "configmap",
            &format!("obj-{i}"),
            "--from-literal=n=0",
        ]);
    }
    for (name, (uid, _)) in live(&configmaps).await {
        cloud.ok_with_input(
            &["apply", "-f", "-"],
            &format!(
                "apiVersion: reliablesyncs.kubeedge.io/v1alpha1\nkind: ObjectSync\nmetadata:\n  name: {NODE}.{uid}\n  namespace: default\nspec:\n  objectAPIVersion: v1\n  objectKind: ConfigMap\n  objectName: {name}\n"
            ),
        );
    }
    cloud.restart().await;
    let hub = cloud.config().modules.cloud_hub;

    let edge_dir = tempfile::tempdir().expect("temp dir");
    let state_file = edge_dir.path().join("state.json");
    let mut edgemark = tokio::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.namespace,
            env!("CARGO_BIN_EXE_edgemark"),
        ])
        .args(["--nodes", "1", "--heartbeat", "5s"])
        .arg("--server")
        .arg(format!("{}:{}", net.host_ip, hub.websocket.port))
        .arg("--cert-server")
        .arg(format!("https://{}:{}", net.host_ip, hub.https.port))
        .arg("--token")
        .arg(gettoken(&cloud))
        .arg("--data-dir")
        .arg(edge_dir.path().join("nodes"))
        .arg("--state-file")
        .arg(&state_file)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("edgemark starts");

    let wait_converged = |deadline: Duration, what: &'static str| {
        let cloud = &cloud;
        let configmaps = configmaps.clone();
        async move {
            let poll = async {
                loop {
                    if converged(cloud, &live(&configmaps).await) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            };
            if tokio::time::timeout(deadline, poll).await.is_err() {
                panic!(
                    "the node did not converge {what}; cluster:\n{}",
                    cloud.snapshot()
                );
            }
        }
    };
    wait_converged(Duration::from_secs(60), "at first").await;

    // Objects change all the time from here until the network is healthy.
    let changing = Arc::new(AtomicBool::new(true));
    let changer = {
        let (configmaps, changing) = (configmaps.clone(), changing.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while changing.load(Ordering::Relaxed) {
                n += 1;
                let name = format!("obj-{}", n % OBJECTS as u64);
                let patch = serde_json::json!({"data": {"n": n.to_string()}});
                // obj-0 is deleted during the cut; its patches then fail.
                let _ = configmaps
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            n
        })
    };

    net.drop_percent(30);
    tokio::time::sleep(LOSSY).await;
    net.drop_percent(100);
    tokio::time::sleep(CUT / 2).await;
    cloud.ok(&["delete", "configmap", "obj-0"]);
    tokio::time::sleep(CUT / 2).await;
    net.drop_percent(30);
    tokio::time::sleep(LOSSY).await;
    net.drop_percent(0);
    changing.store(false, Ordering::Relaxed);
    let changes = changer.await.expect("changer");
    assert!(changes > 100, "objects changed {changes} times");

    wait_converged(CONVERGE, "after the network healed").await;

    // What the node holds is exactly the live objects, newest versions.
    let pid = edgemark.id().expect("running").to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let status = tokio::time::timeout(Duration::from_secs(30), edgemark.wait())
        .await
        .expect("edgemark stops")
        .expect("wait");
    assert!(status.success(), "edgemark exited with {status}");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_file).expect("state written")).expect("JSON");
    let node = &state[NODE];
    assert_eq!(
        node["regressions"], 0,
        "an older version was sent over a newer one: {node}"
    );
    let held: BTreeMap<String, (String, u64)> = node["objects"]
        .as_object()
        .expect("objects")
        .iter()
        .map(|(resource, held)| {
            (
                resource.rsplit('/').next().unwrap_or_default().to_owned(),
                (
                    held["uid"].as_str().unwrap_or_default().to_owned(),
                    held["version"].as_u64().unwrap_or_default(),
                ),
            )
        })
        .collect();
    assert_eq!(
        held,
        live(&configmaps).await,
        "the node holds the latest objects"
    );
    assert!(!held.contains_key("obj-0"), "the deleted object is gone");
    cloud.stop().await;
}
