//! API server benchmark against a real cloudcore (release build), on SQLite
//! and on a real etcd: creates pods, lists them all, and measures watch
//! delivery to many concurrent watchers. Prints the figures; asserts
//! nothing about them.
//!
//! ```sh
//! ulimit -n 8192; cargo bench -p kedge-bins --bench apiserver
//! ```
//!
//! `KEDGE_BENCH_PODS` (default 100000), `KEDGE_BENCH_WATCHERS` (default
//! 1000), `KEDGE_BENCH_EVENTS` (default 100) and `KEDGE_BENCH_BACKENDS`
//! (default `sqlite,etcd`) change the sizes.

// Printing the figures is what this harness is for.
#![allow(clippy::print_stdout)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use support::{Backend, Cloud};
use tokio::sync::Mutex;
use tokio::time::Instant;

const NAMESPACE: &str = "bench";
const CONCURRENT_CREATES: usize = 64;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn client(cloud: &Cloud) -> Client {
    let kubeconfig = Kubeconfig::read_from(&cloud.kubeconfig).expect("kubeconfig");
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("config");
    config.read_timeout = Some(Duration::from_secs(600));
    Client::try_from(config).expect("client")
}

fn pod(name: &str, sent_at_micros: Option<u128>) -> Pod {
    let mut value = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {"containers": [{"name": "c", "image": "registry.local/bench:1"}], "nodeName": "edge-0"},
    });
    if let Some(micros) = sent_at_micros {
        value["metadata"]["annotations"] = serde_json::json!({"bench/sent": micros.to_string()});
    }
    serde_json::from_value(value).expect("pod")
}

fn now_micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros()
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

async fn run(backend_name: &str, etcd: bool) {
    let pods_total = setting("KEDGE_BENCH_PODS", 100_000);
    let watchers = setting("KEDGE_BENCH_WATCHERS", 1000);
    let events = setting("KEDGE_BENCH_EVENTS", 100);
    let cloud = Cloud::start(Backend::start(etcd).await).await;
    let client = client(&cloud).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": NAMESPACE}})).expect("ns");
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("namespace");
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);

    // 1. Create throughput.
    let started = Instant::now();
    stream::iter(0..pods_total)
        .map(|i| {
            let pods = pods.clone();
            let cloud = &cloud;
            async move {
                if let Err(error) = pods
                    .create(&PostParams::default(), &pod(&format!("p{i:06}"), None))
                    .await
                {
                    let log = cloud.log();
                    let tail: Vec<&str> = log.lines().rev().take(20).collect();
                    panic!(
                        "create failed: {error}; cloudcore log (newest first):\n{}",
                        tail.join("\n")
                    );
                }
            }
        })
        .buffer_unordered(CONCURRENT_CREATES)
        .collect::<Vec<()>>()
        .await;
    let create_secs = started.elapsed().as_secs_f64();
    let rss_after_creates = peak_rss_mib(cloud.pid());

    // 2. One unpaged list of everything.
    let started = Instant::now();
    let listed = pods.list(&ListParams::default()).await.expect("list");
    let list_secs = started.elapsed().as_secs_f64();
    let rss_after_list = peak_rss_mib(cloud.pid());
    assert_eq!(listed.items.len(), pods_total);
    let revision = listed.metadata.resource_version.clone().expect("rv");
    drop(listed);

    // 3. Watch delivery to many watchers.
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(watchers * events)));
    let mut tasks = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(watchers);
    for _ in 0..watchers {
        let pods = pods.clone();
        let latencies = Arc::clone(&latencies);
        let revision = revision.clone();
        let ready = ready_tx.clone();
        tasks.push(tokio::spawn(async move {
            let params = WatchParams::default().labels("bench=watched").timeout(290);
            let mut stream = Box::pin(pods.watch(&params, &revision).await.expect("watch"));
            let _ = ready.send(()).await;
            let mut seen = 0;
            while seen < events {
                match stream.try_next().await {
                    Ok(Some(WatchEvent::Added(pod))) => {
                        let sent: u128 = pod
                            .metadata
                            .annotations
                            .as_ref()
                            .and_then(|a| a.get("bench/sent"))
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        let latency_ms = (now_micros().saturating_sub(sent)) as f64 / 1000.0;
                        latencies.lock().await.push(latency_ms);
                        seen += 1;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }));
    }
    drop(ready_tx);
    for _ in 0..watchers {
        ready_rx.recv().await.expect("watcher started");
    }
    let started = Instant::now();
    for i in 0..events {
        let mut watched = pod(&format!("w{i:04}"), Some(now_micros()));
        watched
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert("bench".into(), "watched".into());
        pods.create(&PostParams::default(), &watched)
            .await
            .expect("create watched");
    }
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(300), task).await;
    }
    let watch_secs = started.elapsed().as_secs_f64();
    let mut latencies = latencies.lock().await.clone();
    latencies.sort_by(f64::total_cmp);

    println!("backend {backend_name}:");
    println!(
        "  create   {pods_total} pods in {create_secs:.1} s = {:.0} pods/s ({CONCURRENT_CREATES} in flight)",
        pods_total as f64 / create_secs
    );
    println!(
        "  list     all {pods_total} pods in one request: {:.2} s",
        list_secs
    );
    println!(
        "  watch    {watchers} watchers x {events} events: {} deliveries in {watch_secs:.1} s, latency p50 {:.1} ms, p99 {:.1} ms",
        latencies.len(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99)
    );
    println!(
        "  cloudcore peak RSS {rss_after_creates:.0} MiB after the creates, {rss_after_list:.0} MiB after the list, {:.0} MiB at the end",
        peak_rss_mib(cloud.pid())
    );
    cloud.stop().await;
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; this harness takes no options.
    let backends =
        std::env::var("KEDGE_BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,etcd".to_owned());
    for backend in backends.split(',') {
        match backend.trim() {
            "sqlite" => run("sqlite", false).await,
            "etcd" => run("etcd", true).await,
            other => panic!("unknown backend {other:?}; use sqlite and/or etcd"),
        }
    }
}
