//! Scheduler and controller benchmark against a real cloudcore (release
//! build, SQLite): scheduling throughput with many nodes and pending pods,
//! and a Deployment scaled up to many replicas until all are bound.
//! Prints the figures; asserts nothing about them.
//!
//! ```sh
//! ulimit -n 8192; cargo bench -p kedge-bins --bench controllers
//! ```
//!
//! `KEDGE_BENCH_NODES` (default 10000), `KEDGE_BENCH_PENDING` (default
//! 100000) and `KEDGE_BENCH_REPLICAS` (default 10000) change the sizes.
//!
//! The pending pods are created while the scheduler is switched off, then
//! cloudcore restarts with it on: the time from that restart to the last
//! binding is the scheduler's alone (its initial lists included). The
//! node lifecycle controller is off, as no kubelet renews the nodes'
//! heartbeats.

// Printing the figures is what this harness is for.
#![allow(clippy::print_stdout)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::time::Duration;

use futures::{StreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kedge_apis::config::cloudcore::CloudCoreConfig;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use support::{Backend, Cloud};
use tokio::time::Instant;

const CONCURRENT_CREATES: usize = 64;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
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

/// Rewrites cloudcore's configuration with the scheduler on or off.
fn set_scheduler(cloud: &Cloud, enable: bool) {
    let path = cloud.dir().join("cloudcore.yaml");
    let text = std::fs::read_to_string(&path).expect("config");
    let mut config = CloudCoreConfig::from_yaml_str(&text).expect("config parses");
    config.control_plane.controllers.scheduler.enable = enable;
    std::fs::write(&path, config.to_yaml().expect("yaml")).expect("config written");
}

async fn create_all<K>(api: &Api<K>, objects: impl Iterator<Item = K>)
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    stream::iter(objects)
        .map(|object| async move {
            api.create(&PostParams::default(), &object)
                .await
                .expect("create");
        })
        .buffer_unordered(CONCURRENT_CREATES)
        .collect::<Vec<()>>()
        .await;
}

/// Waits until `count` pods matching `labels` are bound; the time taken,
/// or cloudcore's log when they are not.
async fn all_bound(cloud: &Cloud, client: &Client, labels: &str, count: usize) -> Duration {
    let fail = |what: String| -> ! {
        let log = cloud.log();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        panic!("{what}; cloudcore log (newest first):\n{}", tail.join("\n"))
    };
    let started = Instant::now();
    let pods: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default()
        .labels(labels)
        .fields("spec.nodeName!=");
    let mut events = watcher(pods, config)
        .default_backoff()
        .applied_objects()
        .boxed();
    let mut bound: HashSet<String> = HashSet::new();
    while bound.len() < count {
        match tokio::time::timeout(Duration::from_secs(600), events.next()).await {
            Ok(Some(Ok(pod))) => {
                bound.insert(pod.name_any());
            }
            Ok(Some(Err(error))) => println!("  (watch error, resuming: {error})"),
            Ok(None) => fail(format!(
                "the watch ended after {} of {count} pods were bound",
                bound.len()
            )),
            Err(_) => fail(format!("only {} of {count} pods were bound", bound.len())),
        }
    }
    started.elapsed()
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; this harness takes no options.
    let node_count = setting("KEDGE_BENCH_NODES", 10_000);
    let pending = setting("KEDGE_BENCH_PENDING", 100_000);
    let replicas = setting("KEDGE_BENCH_REPLICAS", 10_000);
    let mut cloud = Cloud::start_with(Backend::start(false).await, |config| {
        config.control_plane.controllers.scheduler.enable = false;
        // Nothing renews these nodes' heartbeats: without this they would
        // turn unreachable (and unschedulable) after the grace period.
        config.control_plane.controllers.node_lifecycle.enable = false;
    })
    .await;
    let client = bench_client(&cloud).await;

    let started = Instant::now();
    let nodes: Api<Node> = Api::all(client.clone());
    create_all(
        &nodes,
        (0..node_count).map(|i| {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("node-{i:05}"), "labels": {"zone": format!("z{}", i % 10)}},
                "status": {"allocatable": {"cpu": "32", "memory": "64Gi", "pods": "110"},
                           "capacity": {"cpu": "32", "memory": "64Gi", "pods": "110"},
                           "conditions": [{"type": "Ready", "status": "True"}]},
            }))
            .expect("node")
        }),
    )
    .await;
    let nodes_secs = started.elapsed().as_secs_f64();

    let namespaces: Api<Namespace> = Api::all(client.clone());
    for name in ["pending", "scale"] {
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("ns");
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .expect("namespace");
    }
    let started = Instant::now();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "pending");
    create_all(
        &pods,
        (0..pending).map(|i| {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("p{i:06}"), "labels": {"bench": "pending"}},
                "spec": {"containers": [{"name": "c", "image": "registry.local/bench:1",
                         "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]},
            }))
            .expect("pod")
        }),
    )
    .await;
    let pods_secs = started.elapsed().as_secs_f64();

    // The scheduler alone: restart with it on, time to the last binding.
    set_scheduler(&cloud, true);
    let started = Instant::now();
    cloud.restart().await;
    let client = bench_client(&cloud).await;
    all_bound(&cloud, &client, "bench=pending", pending).await;
    let schedule_secs = started.elapsed().as_secs_f64();
    let rss_after_scheduling = peak_rss_mib(cloud.pid());

    // A Deployment of many replicas, from creation to every pod bound.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "scale");
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "wide"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "wide"}},
                 "template": {"metadata": {"labels": {"app": "wide"}},
                              "spec": {"containers": [{"name": "c", "image": "registry.local/bench:1"}]}}},
    }))
    .expect("deployment");
    let started = Instant::now();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("deployment created");
    all_bound(&cloud, &client, "app=wide", replicas).await;
    let scale_secs = started.elapsed().as_secs_f64();

    println!("scheduler and controllers (SQLite):");
    println!(
        "  setup      {node_count} nodes in {nodes_secs:.1} s; {pending} pending pods in {pods_secs:.1} s"
    );
    println!(
        "  schedule   {pending} pending pods on {node_count} nodes: all bound {schedule_secs:.1} s after restart = {:.0} pods/s",
        pending as f64 / schedule_secs
    );
    println!(
        "  scale-up   Deployment of {replicas} replicas: all bound in {scale_secs:.1} s = {:.0} pods/s",
        replicas as f64 / scale_secs
    );
    println!(
        "  cloudcore  peak RSS {rss_after_scheduling:.0} MiB after scheduling, {:.0} MiB at the end",
        peak_rss_mib(cloud.pid())
    );
    cloud.stop().await;
}
