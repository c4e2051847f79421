//! Hollow nodes for controller tests: Node objects the test creates, and a
//! stand-in kubelet that renews their Leases and reports their pods as a
//! real one would (Running and Ready; `Succeeded` or `Failed` for images
//! tagged `:succeed` or `:fail`), and finishes graceful deletions.

// The stand-in kubelet tells the test output what it could not do.
#![allow(clippy::print_stderr)]

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// How often the stand-in kubelet renews Leases.
const LEASE_RENEWAL: Duration = Duration::from_secs(2);

/// Hollow nodes and their stand-in kubelet; it stops when dropped.
pub struct HollowNodes {
    client: Client,
    nodes: Arc<Mutex<HashSet<String>>>,
    silenced: Arc<Mutex<HashSet<String>>>,
    token: CancellationToken,
}

impl Drop for HollowNodes {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn now_micro() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string()
}

impl HollowNodes {
    /// Starts the stand-in kubelet; it acts for the nodes [`add`](Self::add)ed.
    pub fn start(client: Client) -> Self {
        let hollow = Self {
            client: client.clone(),
            nodes: Arc::default(),
            silenced: Arc::default(),
            token: CancellationToken::new(),
        };
        tokio::spawn(run_pods(
            client.clone(),
            hollow.nodes.clone(),
            hollow.silenced.clone(),
            hollow.token.clone(),
        ));
        tokio::spawn(renew_leases(
            client,
            hollow.nodes.clone(),
            hollow.silenced.clone(),
            hollow.token.clone(),
        ));
        hollow
    }

    /// Registers node `name` with `labels`, Ready, with room for 110 pods.
    pub async fn add(&self, name: &str, labels: &[(&str, &str)]) {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "status": {
                "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
                "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "message": "hollow kubelet is posting ready status",
                                "lastHeartbeatTime": now(), "lastTransitionTime": now()}],
                "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
            },
        }))
        .expect("node");
        // Acting for the node before it exists: a controller may place a
        // pod on it as soon as it is created.
        self.nodes.lock().unwrap().insert(name.to_owned());
        let nodes: Api<Node> = Api::all(self.client.clone());
        let created = nodes
            .create(&PostParams::default(), &node)
            .await
            .expect("node created");
        // As the kubelet: the status is written through its subresource.
        nodes
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": node.status})),
            )
            .await
            .expect("node status");
        assert_eq!(created.name_any(), name);
        renew(&self.client, name).await;
    }

    /// Stops renewing node `name`'s Lease and reporting its pods, as if
    /// it lost its link.
    pub fn silence(&self, name: &str) {
        self.silenced.lock().unwrap().insert(name.to_owned());
    }
}

async fn renew(client: &Client, node: &str) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": node, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": now_micro()},
    });
    let params = PatchParams::apply("hollow-kubelet").force();
    if let Err(error) = leases.patch(node, &params, &Patch::Apply(&lease)).await {
        eprintln!("hollow kubelet: lease of {node}: {error}");
    }
}

async fn renew_leases(
    client: Client,
    nodes: Arc<Mutex<HashSet<String>>>,
    silenced: Arc<Mutex<HashSet<String>>>,
    token: CancellationToken,
) {
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(LEASE_RENEWAL) => {}
        }
        let live: Vec<String> = {
            let silenced = silenced.lock().unwrap();
            let nodes = nodes.lock().unwrap();
            nodes.difference(&silenced).cloned().collect()
        };
        for node in live {
            renew(&client, &node).await;
        }
    }
}

/// What a stand-in kubelet reports for `pod`.
fn pod_status(pod: &Pod, index: usize) -> serde_json::Value {
    let spec = pod.spec.as_ref().expect("pod spec");
    let image = spec
        .containers
        .first()
        .map(|c| c.image.clone().unwrap_or_default())
        .unwrap_or_default();
    let (phase, ready, state) = if image.ends_with(":succeed") {
        (
            "Succeeded",
            "False",
            json!({"terminated": {"exitCode": 0, "reason": "Completed"}}),
        )
    } else if image.ends_with(":fail") {
        (
            "Failed",
            "False",
            json!({"terminated": {"exitCode": 1, "reason": "Error"}}),
        )
    } else {
        ("Running", "True", json!({"running": {"startedAt": now()}}))
    };
    let statuses: Vec<serde_json::Value> = spec
        .containers
        .iter()
        .map(|c| {
            json!({"name": c.name, "image": c.image, "imageID": "", "ready": ready == "True",
                        "restartCount": 0, "started": ready == "True", "state": state})
        })
        .collect();
    let condition = |kind: &str, status: &str| json!({"type": kind, "status": status, "lastTransitionTime": now()});
    json!({"status": {
        "phase": phase,
        "conditions": [condition("PodScheduled", "True"), condition("Initialized", "True"),
                       condition("ContainersReady", ready), condition("Ready", ready)],
        "hostIP": "10.0.0.1",
        "podIP": format!("10.244.{}.{}", index / 250, index % 250 + 2),
        "startTime": now(),
        "containerStatuses": statuses,
    }})
}

async fn run_pods(
    client: Client,
    nodes: Arc<Mutex<HashSet<String>>>,
    silenced: Arc<Mutex<HashSet<String>>>,
    token: CancellationToken,
) {
    let pods: Api<Pod> = Api::all(client.clone());
    let mut events = watcher(pods, watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    let mut reported: HashSet<String> = HashSet::new();
    let mut index = 0;
    loop {
        let pod = tokio::select! {
            () = token.cancelled() => return,
            event = events.next() => match event {
                Some(Ok(pod)) => pod,
                Some(Err(_)) => continue,
                None => return,
            },
        };
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        if !nodes.lock().unwrap().contains(&node) || silenced.lock().unwrap().contains(&node) {
            continue;
        }
        let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
        let uid = pod.uid().unwrap_or_default();
        if pod.metadata.deletion_timestamp.is_some() {
            let _ = api
                .delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
                .await;
            continue;
        }
        if reported.contains(&uid)
            && pod.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Pending")
        {
            continue;
        }
        index += 1;
        match api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(pod_status(&pod, index)),
            )
            .await
        {
            Ok(_) => {
                reported.insert(uid);
            }
            Err(error) => eprintln!("hollow kubelet: status of {}: {error}", pod.name_any()),
        }
    }
}
