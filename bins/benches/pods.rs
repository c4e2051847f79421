//! Pod benchmark: pods on a real edge node (cloudcore and edgecore, release
//! builds, edged on a private containerd). Prints the figures; asserts only
//! that every step completes. Needs root (for containerd).
//!
//! ```sh
//! cargo bench -p kedge-bins --bench pods
//! ```
//!
//! Measured:
//!
//! * edgecore's resident memory (VmRSS) once the node is Ready with no
//!   pods, and with 10 pods running, each read after a settling time;
//! * pod startup latency, p50 and p99, for `KEDGE_BENCH_PODS` pods
//!   (default 30) created at once, each bound to the node: from just
//!   before the create call to the moment a watch on the pods sees the
//!   pod's phase `Running`;
//! * the same for `KEDGE_BENCH_HOLLOW_PODS` pods (default 1,000) spread
//!   over `KEDGE_BENCH_HOLLOW_NODES` full hollow edgecores (default 100,
//!   `edgemark --full`: EdgeHub, MetaManager and edged on the fake
//!   runtime, in one process), and edgemark's memory per node with them
//!   running.
//!
//! The containerd is `KEDGE_CRI_SOCK` when set, else one started with
//! `scripts/containerd.sh start` in a temporary directory and stopped at
//! the end.

// Printing the figures is what this harness is for.
#![allow(clippy::print_stdout)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use support::edgecore::EdgeCore;
use support::edgemark::Edgemark;
use support::{Backend, Cloud, rss_kib};
use tokio::time::Instant;

const BUSYBOX: &str = "localhost/kedge/busybox:1";
const SETTLE: Duration = Duration::from_secs(15);
const DEADLINE: Duration = Duration::from_secs(300);
const CONCURRENT_CREATES: usize = 16;

/// A containerd started for the benchmark, stopped on drop.
struct PrivateContainerd {
    dir: tempfile::TempDir,
}

impl PrivateContainerd {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/containerd.sh")
    }

    fn start() -> (Self, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let output = Command::new(Self::script())
            .arg("start")
            .arg(dir.path())
            .output()
            .expect("containerd.sh runs");
        assert!(
            output.status.success(),
            "containerd.sh start failed (run as root): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let socket = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        (Self { dir }, socket)
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        let _ = Command::new(Self::script())
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

/// A busybox pod named `name` bound to `node`.
fn pod(name: &str, node: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"bench": "pods"}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main",
                "image": BUSYBOX,
                "imagePullPolicy": "IfNotPresent",
                "command": ["sleep", "3600"],
            }],
        },
    }))
    .expect("a pod")
}

/// Creates `count` pods named `<prefix>-<i>`, pod `i` on node
/// `nodes[i % nodes.len()]`, and returns how long each took from its
/// create call until a watch saw it Running.
async fn start_pods(api: &Api<Pod>, prefix: &str, nodes: &[String], count: usize) -> Vec<Duration> {
    let running: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watch = {
        let running = running.clone();
        let stream = watcher(api.clone(), watcher::Config::default().labels("bench=pods"))
            .applied_objects()
            .boxed();
        tokio::spawn(async move {
            let mut stream = stream;
            while let Some(Ok(pod)) = stream.next().await {
                let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
                if phase == Some("Running")
                    && let Some(name) = pod.metadata.name
                {
                    running
                        .lock()
                        .expect("lock")
                        .entry(name)
                        .or_insert_with(Instant::now);
                }
            }
        })
    };
    let names: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
    let created: HashMap<String, Instant> = stream::iter(names.clone().into_iter().enumerate())
        .map(|(i, name)| {
            let api = api.clone();
            let pod = pod(&name, &nodes[i % nodes.len()]);
            async move {
                let at = Instant::now();
                api.create(&PostParams::default(), &pod)
                    .await
                    .expect("pod created");
                (name, at)
            }
        })
        .buffer_unordered(CONCURRENT_CREATES)
        .collect()
        .await;
    let since = Instant::now();
    loop {
        let seen = running.lock().expect("lock").len();
        if names
            .iter()
            .all(|n| running.lock().expect("lock").contains_key(n))
        {
            break;
        }
        assert!(
            since.elapsed() < DEADLINE,
            "only {seen} of {count} pods Running after {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    watch.abort();
    let running = running.lock().expect("lock");
    names
        .iter()
        .map(|n| running[n].saturating_duration_since(created[n]))
        .collect()
}

/// Deletes every benchmark pod and waits until they are gone.
async fn delete_pods(api: &Api<Pod>) {
    let params = ListParams::default().labels("bench=pods");
    for pod in api.list(&params).await.expect("pods listed").items {
        if let Some(name) = pod.metadata.name {
            api.delete(&name, &DeleteParams::default())
                .await
                .expect("pod deleted");
        }
    }
    let since = Instant::now();
    while !api
        .list(&params)
        .await
        .expect("pods listed")
        .items
        .is_empty()
    {
        assert!(
            since.elapsed() < DEADLINE,
            "pods not gone after {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `p`th percentile (nearest rank) of `values`.
fn percentile(values: &[Duration], p: f64) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The number in environment variable `name`, or `default`.
fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Waits until `count` nodes named `hollow-*` are Ready.
async fn hollow_nodes_ready(cloud: &Cloud, count: usize) {
    let ready = r#"jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}"#;
    let since = Instant::now();
    loop {
        let out = cloud.ok(&["get", "nodes", "-o", ready]);
        let n = out
            .lines()
            .filter(|l| l.starts_with("hollow-") && l.ends_with("=True"))
            .count();
        if n == count {
            return;
        }
        assert!(
            since.elapsed() < DEADLINE,
            "only {n} of {count} hollow nodes Ready after {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::main]
async fn main() {
    let count = env_count("KEDGE_BENCH_PODS", 30);
    let hollow_nodes = env_count("KEDGE_BENCH_HOLLOW_NODES", 100);
    let hollow_pods = env_count("KEDGE_BENCH_HOLLOW_PODS", 1000);
    let (_containerd, socket) = match std::env::var_os("KEDGE_CRI_SOCK") {
        Some(socket) if !socket.is_empty() => (None, PathBuf::from(socket)),
        _ => {
            let (containerd, socket) = PrivateContainerd::start();
            (Some(containerd), socket)
        }
    };
    let cloud = Cloud::start(Backend::start(false).await).await;
    let node = "bench-edge";
    let mut edge = EdgeCore::start(&cloud, node, Some(&socket), |_| {});
    let ready = r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#;
    cloud
        .eventually(&["get", "node", node, "-o", ready], |out| out == "True")
        .await;
    let pid = edge.pid().expect("edgecore running");
    let api: Api<Pod> = Api::namespaced(cloud.client().await, "default");

    tokio::time::sleep(SETTLE).await;
    let idle = rss_kib(pid);

    let here = [node.to_owned()];
    let latencies = start_pods(&api, "startup", &here, count).await;
    delete_pods(&api).await;

    start_pods(&api, "steady", &here, 10).await;
    tokio::time::sleep(SETTLE).await;
    let with_ten = rss_kib(pid);
    delete_pods(&api).await;
    edge.stop().await;

    let edgemark = Edgemark::start_full(&cloud, hollow_nodes);
    hollow_nodes_ready(&cloud, hollow_nodes).await;
    let names: Vec<String> = (0..hollow_nodes).map(|i| format!("hollow-{i}")).collect();
    let hollow = start_pods(&api, "hollow", &names, hollow_pods).await;
    tokio::time::sleep(SETTLE).await;
    let edgemark_rss = rss_kib(edgemark.pid());
    delete_pods(&api).await;
    edgemark.stop().await;

    println!("pods benchmark: one edge node on containerd, release builds");
    println!("  edgecore RSS, idle, 0 pods:        {:7.1} MiB", mib(idle));
    println!(
        "  edgecore RSS, 10 pods running:     {:7.1} MiB",
        mib(with_ten)
    );
    println!(
        "  pod startup, {count} pods at once:    p50 {:6.0} ms   p99 {:6.0} ms",
        percentile(&latencies, 50.0).as_secs_f64() * 1000.0,
        percentile(&latencies, 99.0).as_secs_f64() * 1000.0
    );
    println!(
        "  {hollow_pods} pods on {hollow_nodes} hollow edgecores: p50 {:6.0} ms   p99 {:6.0} ms",
        percentile(&hollow, 50.0).as_secs_f64() * 1000.0,
        percentile(&hollow, 99.0).as_secs_f64() * 1000.0
    );
    println!(
        "  edgemark RSS with them running:    {:7.1} MiB ({:.0} KiB per node)",
        mib(edgemark_rss),
        edgemark_rss as f64 / hollow_nodes as f64
    );
    cloud.stop().await;
}
