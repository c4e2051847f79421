//! The node lifecycle controller: a node whose status heartbeat (the
//! `Ready` condition's `lastHeartbeatTime`) and Lease (in
//! `kube-node-lease`) both stop changing for `nodeMonitorGracePeriod` gets
//! every condition set to `Unknown` and the `node.kubernetes.io/unreachable`
//! taints; a node reporting `Ready=False` gets the `not-ready` taints; the
//! taints go when it is `Ready` again. Pods of an unreachable node are
//! marked not ready. Pods on a tainted node that do not tolerate the
//! `NoExecute` taint are evicted after their `tolerationSeconds` (300 s
//! when they carry no toleration, as upstream's default admission gives
//! every pod) — except on edge nodes (label `node-role.kubernetes.io/edge`)
//! unless `evictEdgePods` is set: an edge node keeps running its pods
//! while its link is down.
//!
//! Heartbeats are timed by this controller's own clock when it sees them
//! change, as upstream does, so clock skew between hosts does not matter.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use futures::future::BoxFuture;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff;
use kedge_apis::config::cloudcore::NodeLifecycleController;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::Informers;
use crate::events::{self, EventType};
use crate::informer::Cache;
use crate::informer::Informer;

/// The label of KubeEdge's edge nodes.
pub const EDGE_ROLE: &str = "node-role.kubernetes.io/edge";
/// The taint of a node whose state is unknown.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The taint of a node reporting itself not ready.
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
/// How long a pod without a toleration for those taints stays.
const DEFAULT_TOLERATION_SECONDS: i64 = 300;
/// The namespace of node Leases.
const LEASE_NAMESPACE: &str = "kube-node-lease";
/// The component name in events.
const COMPONENT: &str = "node-controller";

/// Runs the node lifecycle controller until `token` is cancelled.
pub fn run(
    client: Client,
    informers: &Informers,
    config: NodeLifecycleController,
    token: CancellationToken,
) -> BoxFuture<'static, ()> {
    let leases = Informer::<Lease>::new(Api::namespaced(client.clone(), LEASE_NAMESPACE));
    let monitor = Monitor {
        client,
        nodes: informers.nodes.store(),
        pods: informers.pods.store(),
        leases: leases.store(),
        grace: Duration::from_secs(u64::from(config.node_monitor_grace_period)),
        evict_edge_pods: config.evict_edge_pods,
        heartbeats: HashMap::new(),
    };
    Box::pin(async move {
        tokio::join!(leases.run(token.clone()), monitor.run(token));
    })
}

/// The last heartbeat seen for a node, and when it was seen.
struct Heartbeat {
    seen: (Option<String>, Option<String>),
    at: Instant,
}

struct Monitor {
    client: Client,
    nodes: Cache<Node>,
    pods: Cache<Pod>,
    leases: Cache<Lease>,
    grace: Duration,
    evict_edge_pods: bool,
    heartbeats: HashMap<String, Heartbeat>,
}

fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// The taints a node should carry for its `Ready` status, with
/// `time_added` for the `NoExecute` ones.
pub fn wanted_taints(ready: Option<&str>, now: &Time) -> Vec<Taint> {
    let key = match ready {
        Some("True") => return Vec::new(),
        Some("False") => NOT_READY,
        _ => UNREACHABLE,
    };
    ["NoSchedule", "NoExecute"]
        .into_iter()
        .map(|effect| Taint {
            key: key.to_owned(),
            effect: effect.to_owned(),
            time_added: (effect == "NoExecute").then(|| now.clone()),
            value: None,
        })
        .collect()
}

/// How long `pod` tolerates the `NoExecute` taint `key`: `None` forever,
/// `Some(0)` not at all.
pub fn tolerated_for(pod: &Pod, key: &str) -> Option<i64> {
    let tolerations: Vec<_> = pod
        .spec
        .iter()
        .flat_map(|s| s.tolerations.iter().flatten())
        .filter(|t| {
            let key_matches = match t.key.as_deref() {
                None | Some("") => t.operator.as_deref() == Some("Exists"),
                Some(k) => k == key,
            };
            let effect_matches = t
                .effect
                .as_deref()
                .is_none_or(|e| e.is_empty() || e == "NoExecute");
            key_matches && effect_matches
        })
        .collect();
    if tolerations.is_empty() {
        return Some(DEFAULT_TOLERATION_SECONDS);
    }
    // The longest toleration wins; one without seconds tolerates forever.
    if tolerations.iter().any(|t| t.toleration_seconds.is_none()) {
        return None;
    }
    tolerations
        .iter()
        .filter_map(|t| t.toleration_seconds)
        .max()
        .map(|s| s.max(0))
}

impl Monitor {
    async fn run(mut self, token: CancellationToken) {
        let period = (self.grace / 8).clamp(Duration::from_millis(200), Duration::from_secs(5));
        let ready = async {
            self.nodes.ready().await;
            self.pods.ready().await;
            self.leases.ready().await;
        };
        tokio::select! {
            () = token.cancelled() => return,
            () = ready => {}
        }
        let mut ticks = tokio::time::interval(period);
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                _ = ticks.tick() => {}
            }
            self.pass().await;
        }
    }

    /// One look at every node.
    async fn pass(&mut self) {
        let nodes = self.nodes.state();
        let now = Instant::now();
        self.heartbeats
            .retain(|name, _| nodes.iter().any(|n| n.name_any() == *name));
        for node in nodes {
            let name = node.name_any();
            let lease = self
                .leases
                .state()
                .into_iter()
                .find(|l| l.name_any() == name)
                .and_then(|l| {
                    l.spec
                        .as_ref()?
                        .renew_time
                        .as_ref()
                        .map(|t| t.0.to_string())
                });
            let heartbeat = ready_condition(&node)
                .and_then(|c| c.last_heartbeat_time.as_ref())
                .map(|t| t.0.to_string());
            let seen = (lease, heartbeat);
            let entry = self.heartbeats.entry(name.clone()).or_insert(Heartbeat {
                seen: seen.clone(),
                at: now,
            });
            if entry.seen != seen {
                *entry = Heartbeat { seen, at: now };
            }
            let silent = now.duration_since(entry.at) > self.grace;
            if let Err(error) = self.reconcile(&node, silent).await {
                tracing::debug!(node = %name, %error, "nodelifecycle: update failed; retrying");
            }
        }
    }

    async fn reconcile(&self, node: &Node, silent: bool) -> Result<(), kube::Error> {
        let name = node.name_any();
        let api: Api<Node> = Api::all(self.client.clone());
        let ready = ready_condition(node).map(|c| c.status.clone());
        if silent && ready.as_deref() != Some("Unknown") {
            self.mark_unknown(&api, node).await?;
            // The next pass sees the new status and taints the node.
            return Ok(());
        }
        let now = Time(jiff::Timestamp::now());
        let wanted = wanted_taints(ready.as_deref(), &now);
        let current: Vec<Taint> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let ours = |t: &Taint| t.key == UNREACHABLE || t.key == NOT_READY;
        let same = {
            let mut have: Vec<(&str, &str)> = current
                .iter()
                .filter(|t| ours(t))
                .map(|t| (t.key.as_str(), t.effect.as_str()))
                .collect();
            let mut want: Vec<(&str, &str)> = wanted
                .iter()
                .map(|t| (t.key.as_str(), t.effect.as_str()))
                .collect();
            have.sort_unstable();
            want.sort_unstable();
            have == want
        };
        if !same {
            let mut taints: Vec<Taint> = current.iter().filter(|t| !ours(t)).cloned().collect();
            taints.extend(wanted);
            let patch = json!({"spec": {"taints": taints}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            return Ok(());
        }
        if ready.as_deref() == Some("True") {
            return Ok(());
        }
        let pods: Vec<Arc<Pod>> = self
            .pods
            .state()
            .into_iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str()))
            .collect();
        if ready.as_deref() == Some("Unknown") {
            for pod in &pods {
                self.mark_not_ready(pod).await?;
            }
        }
        let edge = node.labels().contains_key(EDGE_ROLE);
        if edge && !self.evict_edge_pods {
            return Ok(());
        }
        let Some(taint) = current.iter().find(|t| ours(t) && t.effect == "NoExecute") else {
            return Ok(());
        };
        let since = taint
            .time_added
            .as_ref()
            .map_or(jiff::Timestamp::now(), |t| t.0);
        let tainted_for = jiff::Timestamp::now().duration_since(since).as_secs();
        for pod in pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
        {
            let Some(seconds) = tolerated_for(pod, &taint.key) else {
                continue;
            };
            if tainted_for >= seconds {
                self.evict(node, pod).await?;
            }
        }
        Ok(())
    }

    async fn mark_unknown(&self, api: &Api<Node>, node: &Node) -> Result<(), kube::Error> {
        let now = Time(jiff::Timestamp::now());
        let mut conditions: Vec<NodeCondition> = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        if !conditions.iter().any(|c| c.type_ == "Ready") {
            conditions.push(NodeCondition {
                type_: "Ready".to_owned(),
                reason: Some("NodeStatusNeverUpdated".to_owned()),
                message: Some("Kubelet never posted node status.".to_owned()),
                ..NodeCondition::default()
            });
        }
        for condition in &mut conditions {
            if condition.status != "Unknown" {
                condition.status = "Unknown".to_owned();
                condition.last_transition_time = Some(now.clone());
            }
            if condition.reason.as_deref() != Some("NodeStatusNeverUpdated") {
                condition.reason = Some("NodeStatusUnknown".to_owned());
                condition.message = Some("Kubelet stopped posting node status.".to_owned());
            }
        }
        let patch = json!({"status": {"conditions": conditions}});
        api.patch_status(
            &node.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
        tracing::info!(node = %node.name_any(), "node stopped reporting; its state is now unknown");
        events::record(
            &self.client,
            COMPONENT,
            node,
            EventType::Normal,
            "NodeNotReady",
            &format!("Node {} status is now: NodeNotReady", node.name_any()),
        )
        .await;
        Ok(())
    }

    async fn mark_not_ready(&self, pod: &Pod) -> Result<(), kube::Error> {
        let Some(mut conditions) = pod.status.as_ref().and_then(|s| s.conditions.clone()) else {
            return Ok(());
        };
        let mut changed = false;
        for condition in conditions.iter_mut().filter(|c| c.type_ == "Ready") {
            if condition.status != "False" {
                condition.status = "False".to_owned();
                condition.reason = Some("NodeNotReady".to_owned());
                condition.last_transition_time = Some(Time(jiff::Timestamp::now()));
                changed = true;
            }
        }
        if !changed {
            return Ok(());
        }
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let patch = json!({"status": {"conditions": conditions}});
        match api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            other => other.map(|_| ()),
        }
    }

    async fn evict(&self, node: &Node, pod: &Pod) -> Result<(), kube::Error> {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        match api.delete(&pod.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
            Err(error) => return Err(error),
        }
        tracing::info!(pod = %pod.name_any(), node = %node.name_any(), "evicted a pod from an unreachable node");
        events::record(
            &self.client,
            COMPONENT,
            pod,
            EventType::Normal,
            "TaintManagerEviction",
            &format!(
                "Marking for deletion Pod {}/{}",
                pod.namespace().unwrap_or_default(),
                pod.name_any()
            ),
        )
        .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(tolerations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [], "tolerations": tolerations}}))
            .unwrap()
    }

    #[test]
    fn taints_follow_readiness() {
        let now = Time(jiff::Timestamp::now());
        assert!(wanted_taints(Some("True"), &now).is_empty());
        let unknown = wanted_taints(Some("Unknown"), &now);
        assert_eq!(unknown.len(), 2);
        assert!(unknown.iter().all(|t| t.key == UNREACHABLE));
        assert!(
            unknown
                .iter()
                .any(|t| t.effect == "NoExecute" && t.time_added.is_some())
        );
        assert!(
            wanted_taints(Some("False"), &now)
                .iter()
                .all(|t| t.key == NOT_READY)
        );
        assert!(
            wanted_taints(None, &now)
                .iter()
                .all(|t| t.key == UNREACHABLE)
        );
    }

    #[test]
    fn tolerations_decide_when_pods_go() {
        assert_eq!(tolerated_for(&pod(json!([])), UNREACHABLE), Some(300));
        let brief = pod(
            json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]),
        );
        assert_eq!(tolerated_for(&brief, UNREACHABLE), Some(5));
        assert_eq!(tolerated_for(&brief, NOT_READY), Some(300));
        let forever = pod(json!([{"operator": "Exists"}]));
        assert_eq!(tolerated_for(&forever, UNREACHABLE), None);
        let other_effect =
            pod(json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoSchedule"}]));
        assert_eq!(tolerated_for(&other_effect, UNREACHABLE), Some(300));
    }
}
