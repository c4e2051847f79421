//! Link benchmark: many hollow edge nodes (edgemark) against a real
//! cloudcore (release build, SQLite). Prints the figures; asserts only
//! that every step completes.
//!
//! ```sh
//! ulimit -n 24000; KEDGE_BENCH_NODES=10000 cargo bench -p kedge-bins --bench link
//! ```
//!
//! `KEDGE_BENCH_NODES` (default 10000) sets the node count.
//! `KEDGE_BENCH_TRANSPORT=quic` connects the nodes over QUIC instead of
//! WebSocket: both sides then use one UDP socket, not one file per node,
//! which is how 100,000 nodes fit under an open-file limit of 20,000:
//!
//! ```sh
//! KEDGE_BENCH_TRANSPORT=quic KEDGE_BENCH_NODES=100000 cargo bench -p kedge-bins --bench link
//! ```
//!
//! The kernel caps each UDP socket's buffer at `net.core.rmem_max`; raise
//! it for large QUIC runs (docs/link.md), and read the drops it prints.
//!
//! Measured:
//!
//! * the time until every node is connected on first start (each node
//!   obtains its certificate with the join token first), read from
//!   cloudcore's `kedge_cloudhub_sessions`;
//! * cloudcore's resident memory per connected node (VmRSS once all are
//!   connected, minus VmRSS before any connected, divided by the nodes),
//!   and edgemark's;
//! * cloudcore's CPU over 30 s of steady heartbeats (utime + stime);
//! * after a ConfigMap and one ObjectSync `<node>.<uid>` at
//!   resourceVersion 0 per node are created and cloudcore restarts: the
//!   time until every node is connected again, and until every ObjectSync
//!   shows the ConfigMap's resourceVersion (the SyncController sends it to
//!   each node on connection, edgemark acknowledges it). The ObjectSyncs
//!   are listed only once cloudcore's `kedge_cloudhub_acked_total` has
//!   reached the node count, and then every 5 s: a list of 100,000
//!   objects every half second would load cloudcore more than the nodes.

// Printing the figures is what this harness is for.
#![allow(clippy::print_stdout)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::ConfigMap;
use kedge_apis::reliablesyncs::{ObjectSync, ObjectSyncSpec, sync_name};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use support::{Backend, Cloud, rss_kib};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Child;
use tokio::time::Instant;

const NAMESPACE: &str = "default";
const CONFIGMAP: &str = "edgemark";
const PREFIX: &str = "hollow-";
const SOURCE_IPS: &str = "127.0.0.2-127.0.0.17";
const CONCURRENT_CREATES: usize = 64;
const STEADY: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(500);
const LIST_EVERY: Duration = Duration::from_secs(5);

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses: state is
    // field 3, utime 14 and stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> u64 { fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0) };
    field(11) + field(12)
}

/// Datagrams the kernel dropped because the UDP sockets of `pid` had no
/// room (the `drops` column of /proc/net/udp and udp6 for the sockets
/// the process holds).
fn udp_drops(pid: u32) -> u64 {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    // sl local remote st queues timer retrnsmt uid timeout
                    // inode ref pointer drops
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let inode = fields.get(9)?;
                    inodes
                        .contains(*inode)
                        .then(|| fields.last()?.parse::<u64>().ok())
                        .flatten()
                })
                .collect::<Vec<u64>>()
        })
        .sum()
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The value of metric `name` on the monitor server at `address`.
async fn metric(address: &str, name: &str) -> Option<f64> {
    let mut stream = TcpStream::connect(address).await.ok()?;
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        // `name value` or `name{labels} value`, not a longer name.
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            return None;
        }
        rest.rsplit(' ').next()?.parse().ok()
    })
}

async fn sessions(cloud: &Cloud) -> usize {
    metric(&cloud.monitor, "kedge_cloudhub_sessions")
        .await
        .map_or(0, |v| v as usize)
}

/// Downstream messages the nodes acknowledged since cloudcore started.
async fn acked(cloud: &Cloud) -> usize {
    metric(&cloud.monitor, "kedge_cloudhub_acked_total")
        .await
        .map_or(0, |v| v as usize)
}

/// Waits until `nodes` sessions are up; how long that took from `since`.
async fn all_connected(
    cloud: &Cloud,
    nodes: usize,
    since: Instant,
    deadline: Duration,
) -> Duration {
    loop {
        let now = sessions(cloud).await;
        if now >= nodes {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < deadline,
            "only {now} of {nodes} nodes connected after {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn start_edgemark(cloud: &Cloud, nodes: usize, quic: bool, token: &str, dir: &Path) -> Child {
    let hub = cloud.config().modules.cloud_hub;
    let (transport, port) = if quic {
        (["--quic"].as_slice(), hub.quic.port)
    } else {
        ([].as_slice(), hub.websocket.port)
    };
    let log = std::fs::File::create(dir.join("edgemark.log")).expect("edgemark log");
    let err = log.try_clone().expect("edgemark log");
    tokio::process::Command::new(env!("CARGO_BIN_EXE_edgemark"))
        .args(["--nodes", &nodes.to_string()])
        .args(transport)
        .args(["--server", &format!("127.0.0.1:{port}")])
        .args([
            "--cert-server",
            &format!("https://127.0.0.1:{}", hub.https.port),
        ])
        .args(["--token", token])
        .arg("--data-dir")
        .arg(dir.join("nodes"))
        .args(["--name-prefix", PREFIX])
        .args(["--source-ips", SOURCE_IPS])
        .args(["--heartbeat", "15s"])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .expect("edgemark starts")
}

async fn bench_client(cloud: &Cloud) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(&cloud.kubeconfig).expect("kubeconfig");
    let options = kube::config::KubeConfigOptions::default();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .expect("config");
    config.read_timeout = Some(Duration::from_secs(600));
    Client::try_from(config).expect("client")
}

/// How many ObjectSyncs of the ConfigMap `uid` show `version`.
async fn synced(api: &Api<ObjectSync>, uid: &str, version: &str) -> usize {
    let Ok(list) = api.list(&ListParams::default()).await else {
        return 0;
    };
    list.items
        .iter()
        .filter(|s| s.name_any().ends_with(uid))
        .filter(|s| {
            s.status
                .as_ref()
                .is_some_and(|st| st.object_resource_version == version)
        })
        .count()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::main]
async fn main() {
    let nofile = rlimit::increase_nofile_limit(u64::MAX).expect("open-file limit");
    let nodes = setting("KEDGE_BENCH_NODES", 10_000);
    let quic = match std::env::var("KEDGE_BENCH_TRANSPORT").as_deref() {
        Ok("quic") => true,
        Ok("websocket") | Err(_) => false,
        Ok(other) => panic!("KEDGE_BENCH_TRANSPORT={other}: use websocket or quic"),
    };
    let transport = if quic { "QUIC" } else { "WebSocket" };
    let deadline = Duration::from_secs(180 + u64::try_from(nodes / 20).unwrap_or(u64::MAX));
    println!("link benchmark: {nodes} hollow nodes over {transport}, open-file limit {nofile}");
    if !quic && nofile < 2 * nodes as u64 + 1024 {
        println!(
            "warning: raise the open-file limit (ulimit -n) above {}",
            2 * nodes + 1024
        );
    }

    let node_limit = i32::try_from(nodes + 100).expect("node count");
    let mut cloud = Cloud::start_with(Backend::start(false).await, |config| {
        config.modules.cloud_hub.node_limit = node_limit;
        config.modules.cloud_hub.quic.enable = quic;
    })
    .await;
    let token = cloud.join_token();
    let client = bench_client(&cloud).await;
    let work = tempfile::tempdir().expect("temp dir");

    // Memory before any node: once the start-up work has settled.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let base_rss = rss_kib(cloud.pid());

    // First join: certificates with the token, then connections.
    let started = Instant::now();
    let mut edgemark = start_edgemark(&cloud, nodes, quic, &token, work.path());
    let first_join = all_connected(&cloud, nodes, started, deadline).await;
    println!("all {nodes} nodes connected after {first_join:.1?}");

    // Memory and CPU in the steady state.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pid = cloud.pid();
    let rss = rss_kib(pid);
    let edgemark_pid = edgemark.id().expect("edgemark runs");
    let edgemark_rss = rss_kib(edgemark_pid);
    let ticks = clock_ticks_per_second();
    let (cpu_before, edgemark_cpu_before) = (cpu_ticks(pid), cpu_ticks(edgemark_pid));
    let steady_start = Instant::now();
    tokio::time::sleep(STEADY).await;
    let steady = steady_start.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(pid) - cpu_before) as f64 / ticks / steady * 100.0;
    let edgemark_cpu =
        (cpu_ticks(edgemark_pid) - edgemark_cpu_before) as f64 / ticks / steady * 100.0;
    let still = sessions(&cloud).await;
    let steady_drops = (udp_drops(pid), udp_drops(edgemark_pid));
    println!("steady state: {still}/{nodes} connected, cloudcore CPU {cpu:.1}%");

    // One ConfigMap for every node, recorded as not yet acknowledged.
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(CONFIGMAP.to_owned());
    cm.data = Some([("k".to_owned(), "v".to_owned())].into());
    let cm = configmaps
        .create(&PostParams::default(), &cm)
        .await
        .expect("configmap created");
    let uid = cm.uid().expect("uid");
    let version = cm.resource_version().expect("resourceVersion");
    let syncs: Api<ObjectSync> = Api::namespaced(client.clone(), NAMESPACE);
    let created = Instant::now();
    stream::iter(0..nodes)
        .map(|i| {
            let syncs = syncs.clone();
            let name = sync_name(&format!("{PREFIX}{i}"), &uid);
            async move {
                let sync = ObjectSync {
                    metadata: ObjectMeta {
                        name: Some(name),
                        namespace: Some(NAMESPACE.to_owned()),
                        ..ObjectMeta::default()
                    },
                    spec: ObjectSyncSpec {
                        object_api_version: "v1".to_owned(),
                        object_kind: "ConfigMap".to_owned(),
                        object_name: CONFIGMAP.to_owned(),
                    },
                    status: None,
                };
                syncs
                    .create(&PostParams::default(), &sync)
                    .await
                    .expect("objectsync created");
            }
        })
        .buffer_unordered(CONCURRENT_CREATES)
        .collect::<Vec<()>>()
        .await;
    let records = created.elapsed();
    let early = synced(&syncs, &uid, &version).await;

    // Restart: every node reconnects and is sent the ConfigMap.
    let restart = Instant::now();
    cloud.restart().await;
    let restarted = restart.elapsed();
    let ready = Instant::now();
    let mut reconnect = None;
    let mut delivery = None;
    let mut last = (0, 0);
    let mut listed = None;
    while reconnect.is_none() || delivery.is_none() {
        if reconnect.is_none() {
            last.0 = sessions(&cloud).await;
            if last.0 >= nodes {
                reconnect = Some(ready.elapsed());
            }
        }
        // Listing every ObjectSync costs the API server far more than the
        // nodes do: only once the nodes have acknowledged enough messages,
        // and then at most every LIST_EVERY.
        if delivery.is_none()
            && acked(&cloud).await >= nodes
            && listed.is_none_or(|at: Instant| at.elapsed() >= LIST_EVERY)
        {
            listed = Some(Instant::now());
            last.1 = synced(&syncs, &uid, &version).await;
            if last.1 >= nodes {
                delivery = Some(ready.elapsed());
            }
        }
        assert!(
            ready.elapsed() < deadline,
            "after {deadline:?}: {} of {nodes} connected, {} of {nodes} ObjectSyncs acknowledged",
            last.0,
            last.1
        );
        tokio::time::sleep(POLL).await;
    }
    let reconnect = reconnect.expect("measured");
    let delivery = delivery.expect("measured");
    let restart_drops = (udp_drops(cloud.pid()), udp_drops(edgemark_pid));

    // Stop edgemark with SIGTERM, then cloudcore.
    let stopped = Command::new("kill")
        .args(["-TERM", &edgemark_pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(stopped.success());
    let _ = tokio::time::timeout(Duration::from_secs(30), edgemark.wait()).await;
    cloud.stop().await;
    let log = std::fs::read_to_string(work.path().join("edgemark.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(3).collect();

    let per_node = |kib: u64| kib as f64 / nodes as f64;
    println!();
    println!("| link benchmark, {nodes} nodes over {transport} | |");
    println!("| --- | --- |");
    println!("| first join: all connected (certificates + connect) | {first_join:.1?} |");
    println!(
        "| cloudcore RSS: before / connected / per node | {:.0} MiB / {:.0} MiB / {:.1} KiB |",
        mib(base_rss),
        mib(rss),
        per_node(rss.saturating_sub(base_rss))
    );
    println!(
        "| edgemark RSS per node | {:.1} KiB |",
        per_node(edgemark_rss)
    );
    println!(
        "| CPU over {STEADY:?} of heartbeats (15 s): cloudcore / edgemark | {cpu:.1} % / {edgemark_cpu:.1} % of one core |"
    );
    println!("| connected at the end of the steady state | {still} / {nodes} |");
    println!(
        "| {nodes} ObjectSyncs created in | {records:.1?} ({early} acknowledged before the restart) |"
    );
    println!("| cloudcore restart (stop + start + ready) | {restarted:.1?} |");
    println!("| after ready: all nodes connected again | {reconnect:.1?} |");
    println!("| after ready: ConfigMap acknowledged by every node | {delivery:.1?} |");
    if quic {
        println!(
            "| UDP datagrams dropped for want of buffer: first cloudcore / edgemark until the steady state ends | {} / {} |",
            steady_drops.0, steady_drops.1
        );
        println!(
            "| the same after the restart: second cloudcore / edgemark (all along) | {} / {} |",
            restart_drops.0, restart_drops.1
        );
    }
    println!();
    for line in tail.iter().rev() {
        println!("edgemark log: {line}");
    }
}
