//! Deployment and ReplicaSet scenarios: rollout, self-healing, scaling,
//! rolling and recreate updates within their limits, undo, and cascading
//! or orphaning deletion.

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};

use crate::Harness;

/// A Deployment manifest.
fn deployment(name: &str, replicas: i32, image: &str, strategy: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels: {{app: {name}}}\n  strategy: {strategy}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    spec:\n      containers:\n      - name: app\n        image: {image}\n"
    )
}

/// The names of the pods labelled `app=name` that are not being deleted,
/// with their images and nodes.
fn pods(harness: &Harness, name: &str) -> Vec<(String, String, String)> {
    let out = harness.cloud.ok(&[
        "get",
        "pods",
        "-l",
        &format!("app={name}"),
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.spec.containers[0].image} {.spec.nodeName} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
    ]);
    out.lines()
        .filter(|l| !l.trim().is_empty())
        // A fourth field is a deletion timestamp.
        .filter(|l| l.trim_end().split(' ').count() == 3)
        .map(|l| {
            let mut parts = l.split(' ').map(str::to_owned);
            (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            )
        })
        .collect()
}

/// Waits until exactly `count` pods of `name` exist, all with `image`.
async fn pods_settle(harness: &Harness, name: &str, count: usize, image: &str) {
    let selector = format!("app={name}");
    harness
        .cloud
        .eventually(
            &["get", "pods", "-l", &selector, "-o", "jsonpath={range .items[*]}{.spec.containers[0].image} {.status.phase}{\"\\n\"}{end}"],
            |out| {
                let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
                lines.len() == count && lines.iter().all(|l| *l == format!("{image} Running"))
            },
        )
        .await;
}

async fn two_nodes(harness: &Harness) {
    harness.nodes.add("node-a", &[("zone", "a")]).await;
    harness.nodes.add("node-b", &[("zone", "b")]).await;
}

/// A Deployment with one and one with three replicas roll out: rollout
/// status and wait Available succeed, every pod is bound and running.
pub async fn deployments_with_one_and_three_replicas(harness: &Harness) {
    two_nodes(harness).await;
    let cloud = &harness.cloud;
    cloud.ok(&[
        "create",
        "deployment",
        "solo",
        "--image=registry.local/app:1",
    ]);
    cloud.ok(&[
        "create",
        "deployment",
        "trio",
        "--image=registry.local/app:1",
        "--replicas=3",
    ]);
    for name in ["solo", "trio"] {
        let out = cloud.ok(&[
            "rollout",
            "status",
            &format!("deployment/{name}"),
            "--timeout=60s",
        ]);
        assert!(out.contains("successfully rolled out"), "{out}");
        cloud.ok(&[
            "wait",
            "--for=condition=Available",
            &format!("deployment/{name}"),
            "--timeout=60s",
        ]);
    }
    let solo = pods(harness, "solo");
    assert_eq!(solo.len(), 1, "{solo:?}");
    let trio = pods(harness, "trio");
    assert_eq!(trio.len(), 3, "{trio:?}");
    assert!(
        trio.iter()
            .all(|(_, _, node)| node == "node-a" || node == "node-b"),
        "{trio:?}"
    );
    // One owner's pods spread over both nodes.
    assert!(
        trio.iter().any(|(_, _, n)| n == "node-a") && trio.iter().any(|(_, _, n)| n == "node-b"),
        "{trio:?}"
    );
    let status = cloud.ok(&["get", "deployment", "trio", "-o", "jsonpath={.status.replicas} {.status.readyReplicas} {.status.availableReplicas} {.status.updatedReplicas}"]);
    assert_eq!(status, "3 3 3 3");
    let sets = cloud.ok(&["get", "replicasets", "-l", "app=trio", "-o", "name"]);
    assert_eq!(sets.lines().count(), 1, "{sets}");
    let revision = cloud.ok(&[
        "get",
        "deployment",
        "trio",
        "-o",
        "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision}",
    ]);
    assert_eq!(revision, "1");
}

/// A deleted pod is replaced.
pub async fn deleted_pods_come_back(harness: &Harness) {
    two_nodes(harness).await;
    let cloud = &harness.cloud;
    cloud.ok(&[
        "create",
        "deployment",
        "heal",
        "--image=registry.local/app:1",
        "--replicas=2",
    ]);
    pods_settle(harness, "heal", 2, "registry.local/app:1").await;
    let before = pods(harness, "heal");
    let victim = before[0].0.clone();
    cloud.ok(&["delete", "pod", &victim, "--wait=true"]);
    cloud
        .eventually(
            &[
                "get",
                "pods",
                "-l",
                "app=heal",
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ],
            |out| {
                let names: Vec<&str> = out.split_whitespace().collect();
                names.len() == 2 && !names.contains(&victim.as_str())
            },
        )
        .await;
    cloud.ok(&["rollout", "status", "deployment/heal", "--timeout=60s"]);
}

/// `kubectl scale` up and down; the scale subresource reports it.
pub async fn scale_up_and_down(harness: &Harness) {
    two_nodes(harness).await;
    let cloud = &harness.cloud;
    cloud.ok(&[
        "create",
        "deployment",
        "elastic",
        "--image=registry.local/app:1",
    ]);
    cloud.ok(&["rollout", "status", "deployment/elastic", "--timeout=60s"]);
    cloud.ok(&["scale", "deployment/elastic", "--replicas=5"]);
    cloud.ok(&["rollout", "status", "deployment/elastic", "--timeout=60s"]);
    pods_settle(harness, "elastic", 5, "registry.local/app:1").await;
    cloud.ok(&["scale", "deployment/elastic", "--replicas=2"]);
    pods_settle(harness, "elastic", 2, "registry.local/app:1").await;
    cloud
        .eventually(
            &[
                "get",
                "deployment",
                "elastic",
                "-o",
                "jsonpath={.status.replicas}/{.status.availableReplicas}",
            ],
            |out| out == "2/2",
        )
        .await;
    let scale = cloud.ok(&[
        "get",
        "--raw",
        "/apis/apps/v1/namespaces/default/deployments/elastic/scale",
    ]);
    let scale: serde_json::Value = serde_json::from_str(&scale).expect("scale JSON");
    assert_eq!(scale["spec"]["replicas"], 2);
    assert_eq!(scale["status"]["replicas"], 2);
}

/// Watches the ReplicaSets of `app=name` and records the largest sum of
/// their `spec.replicas` and whether an old and a new one ever had
/// replicas at the same time.
struct ReplicaSetWatch {
    max_total: Arc<Mutex<i32>>,
    overlapped: Arc<Mutex<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl ReplicaSetWatch {
    async fn start(harness: &Harness, name: &str) -> Self {
        let api: Api<ReplicaSet> = Api::default_namespaced(harness.cloud.client().await);
        let config = watcher::Config::default().labels(&format!("app={name}"));
        let max_total = Arc::new(Mutex::new(0));
        let overlapped = Arc::new(Mutex::new(false));
        let mut store = std::collections::HashMap::<String, (i32, i32)>::new();
        let (max, overlap) = (max_total.clone(), overlapped.clone());
        let mut events = watcher(api, config).default_backoff().boxed();
        let task = tokio::spawn(async move {
            while let Some(Ok(event)) = events.next().await {
                match event {
                    watcher::Event::Apply(rs) | watcher::Event::InitApply(rs) => {
                        let spec = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
                        let running = rs.status.as_ref().map_or(0, |s| s.replicas);
                        store.insert(
                            rs.metadata.name.clone().unwrap_or_default(),
                            (spec, running),
                        );
                    }
                    watcher::Event::Delete(rs) => {
                        store.remove(&rs.metadata.name.clone().unwrap_or_default());
                    }
                    _ => {}
                }
                let total: i32 = store.values().map(|(spec, _)| spec).sum();
                let mut max = max.lock().unwrap();
                *max = (*max).max(total);
                let busy = store
                    .values()
                    .filter(|(spec, running)| *spec > 0 || *running > 0)
                    .count();
                if busy > 1 {
                    *overlap.lock().unwrap() = true;
                }
            }
        });
        Self {
            max_total,
            overlapped,
            task,
        }
    }

    fn finish(self) -> (i32, bool) {
        self.task.abort();
        let max = *self.max_total.lock().unwrap();
        let overlapped = *self.overlapped.lock().unwrap();
        (max, overlapped)
    }
}

/// A rolling update replaces every pod without exceeding the surge, and
/// `kubectl rollout undo` brings the previous template back.
pub async fn rolling_update_and_undo(harness: &Harness) {
    two_nodes(harness).await;
    let cloud = &harness.cloud;
    let strategy = "{type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}";
    cloud.ok_with_input(
        &["apply", "-f", "-"],
        &deployment("roll", 4, "registry.local/app:1", strategy),
    );
    cloud.ok(&["rollout", "status", "deployment/roll", "--timeout=60s"]);
    pods_settle(harness, "roll", 4, "registry.local/app:1").await;
    let watch = ReplicaSetWatch::start(harness, "roll").await;
    cloud.ok(&[
        "set",
        "image",
        "deployment/roll",
        "app=registry.local/app:2",
    ]);
    let out = cloud.ok(&["rollout", "status", "deployment/roll", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    pods_settle(harness, "roll", 4, "registry.local/app:2").await;
    let (max_total, _) = watch.finish();
    assert!(
        max_total <= 5,
        "the ReplicaSets asked for {max_total} pods, over 4 + maxSurge 1"
    );
    let sets = cloud.ok(&[
        "get",
        "replicasets",
        "-l",
        "app=roll",
        "-o",
        "jsonpath={range .items[*]}{.spec.replicas}{\"\\n\"}{end}",
    ]);
    let mut replicas: Vec<&str> = sets.lines().collect();
    replicas.sort_unstable();
    assert_eq!(replicas, ["0", "4"], "old set scaled to zero and kept");

    cloud.ok(&["rollout", "undo", "deployment/roll"]);
    cloud.ok(&["rollout", "status", "deployment/roll", "--timeout=60s"]);
    pods_settle(harness, "roll", 4, "registry.local/app:1").await;
    // The first ReplicaSet was reused: still two, now as revision 3.
    let sets = cloud.ok(&["get", "replicasets", "-l", "app=roll", "-o", "name"]);
    assert_eq!(sets.lines().count(), 2, "{sets}");
    let history = cloud.ok(&["rollout", "history", "deployment/roll"]);
    let revisions: Vec<&str> = history
        .lines()
        .skip_while(|l| !l.starts_with("REVISION"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(revisions, ["2", "3"], "{history}");
    let revision = cloud.ok(&[
        "get",
        "deployment",
        "roll",
        "-o",
        "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision}",
    ]);
    assert_eq!(revision, "3");
}

/// `Recreate` removes every old pod before any new one is created.
pub async fn recreate_strategy(harness: &Harness) {
    two_nodes(harness).await;
    let cloud = &harness.cloud;
    cloud.ok_with_input(
        &["apply", "-f", "-"],
        &deployment("again", 2, "registry.local/app:1", "{type: Recreate}"),
    );
    cloud.ok(&["rollout", "status", "deployment/again", "--timeout=60s"]);
    pods_settle(harness, "again", 2, "registry.local/app:1").await;
    let watch = ReplicaSetWatch::start(harness, "again").await;
    cloud.ok(&[
        "set",
        "image",
        "deployment/again",
        "app=registry.local/app:2",
    ]);
    cloud.ok(&["rollout", "status", "deployment/again", "--timeout=60s"]);
    pods_settle(harness, "again", 2, "registry.local/app:2").await;
    let (_, overlapped) = watch.finish();
    assert!(
        !overlapped,
        "old and new ReplicaSets had pods at the same time"
    );
}

/// Deleting a Deployment removes its ReplicaSets and pods (background and
/// foreground); with `--cascade=orphan` they stay, without an owner.
pub async fn deletion_cascades_or_orphans(harness: &Harness) {
    two_nodes(harness).await;
    let cloud = &harness.cloud;
    for name in ["gone", "fore", "kept"] {
        cloud.ok(&[
            "create",
            "deployment",
            name,
            "--image=registry.local/app:1",
            "--replicas=2",
        ]);
    }
    for name in ["gone", "fore", "kept"] {
        pods_settle(harness, name, 2, "registry.local/app:1").await;
    }
    cloud.ok(&["delete", "deployment", "gone"]);
    cloud.ok(&["delete", "deployment", "fore", "--cascade=foreground"]);
    for name in ["gone", "fore"] {
        let selector = format!("app={name}");
        cloud
            .eventually(
                &["get", "replicasets,pods", "-l", &selector, "-o", "name"],
                |out| out.trim().is_empty(),
            )
            .await;
        cloud
            .eventually(&["get", "deployment", name], |out| out.contains("NotFound"))
            .await;
    }
    cloud.ok(&["delete", "deployment", "kept", "--cascade=orphan"]);
    cloud
        .eventually(&["get", "deployment", "kept"], |out| {
            out.contains("NotFound")
        })
        .await;
    // The ReplicaSet loses its owner reference and keeps its pods.
    cloud
        .eventually(
            &[
                "get",
                "replicasets",
                "-l",
                "app=kept",
                "-o",
                "jsonpath={.items[*].metadata.ownerReferences}",
            ],
            |out| out.trim().is_empty(),
        )
        .await;
    let sets = cloud.ok(&["get", "replicasets", "-l", "app=kept", "-o", "name"]);
    assert_eq!(sets.lines().count(), 1, "{sets}");
    assert_eq!(pods(harness, "kept").len(), 2);
    // The orphaned ReplicaSet still heals its pods.
    let victim = pods(harness, "kept")[0].0.clone();
    cloud.ok(&["delete", "pod", &victim]);
    cloud
        .eventually(
            &[
                "get",
                "pods",
                "-l",
                "app=kept",
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ],
            |out| {
                let names: Vec<&str> = out.split_whitespace().collect();
                names.len() == 2 && !names.contains(&victim.as_str())
            },
        )
        .await;
}
