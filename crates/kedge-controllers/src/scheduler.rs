//! The scheduler: binds each pending pod (no `spec.nodeName`, scheduler
//! `default-scheduler`) to a node, as kube-scheduler does for what Kedge's
//! users run.
//!
//! Filters: unschedulable nodes, `nodeSelector`, required node affinity,
//! taints (`NoSchedule`, `NoExecute`) against tolerations, requests of cpu,
//! memory and pods against allocatable, host-port conflicts. Scoring
//! prefers the least allocated node and spreads pods of one owner. A pod
//! that fits nowhere gets a `FailedScheduling` event and is tried again
//! whenever a node or a pod changes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::Informers;
use crate::informer::Cache;
use kedge_apis::quantity::millis;

/// The name pods ask for to be scheduled by this scheduler.
pub const SCHEDULER_NAME: &str = "default-scheduler";
/// How many bindings are in flight at once.
const BINDS_IN_FLIGHT: usize = 64;
/// How long a pod bound here counts as bound before the watch shows it,
/// from the moment its binding succeeded.
const ASSUME_FOR: Duration = Duration::from_secs(30);
/// The most pods one pass decides before it binds them and looks again,
/// so decisions rest on a recent view of the cluster.
const PASS_SIZE: usize = 2048;
/// How soon failed bindings are tried again when nothing else changes.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Why no node fits a pod, per node.
pub type Reasons = BTreeMap<&'static str, usize>;

/// Requests of one pod: (cpu millicores, memory milli-bytes).
fn requests(pod: &Pod) -> (i128, i128) {
    let Some(spec) = &pod.spec else { return (0, 0) };
    let sum = |name: &str| -> i128 {
        spec.containers
            .iter()
            .filter_map(|c| c.resources.as_ref()?.requests.as_ref()?.get(name))
            .filter_map(|q| millis(&q.0).map(i128::from))
            .sum()
    };
    (sum("cpu"), sum("memory"))
}

fn host_ports(pod: &Pod) -> Vec<(i32, String)> {
    pod.spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|p| *p > 0)?;
            Some((port, p.protocol.clone().unwrap_or_else(|| "TCP".to_owned())))
        })
        .collect()
}

fn is_active(pod: &Pod) -> bool {
    !matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn owner_uid(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

pub(crate) fn tolerates(pod: &Pod, taint: &k8s_openapi::api::core::v1::Taint) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.tolerations.iter().flatten())
        .any(|t| {
            let key_ok = match t.key.as_deref() {
                None | Some("") => t.operator.as_deref() == Some("Exists"),
                Some(key) => key == taint.key,
            };
            let value_ok = match t.operator.as_deref() {
                Some("Exists") => true,
                _ => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
            };
            let effect_ok = t
                .effect
                .as_deref()
                .is_none_or(|e| e.is_empty() || e == taint.effect);
            key_ok && value_ok && effect_ok
        })
}

pub(crate) fn affinity_matches(pod: &Pod, labels: &BTreeMap<String, String>) -> bool {
    let Some(required) = pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
    else {
        return true;
    };
    // Terms are ORed; the expressions of one term are ANDed.
    required.node_selector_terms.iter().any(|term| {
        term.match_expressions.iter().flatten().all(|e| {
            let value = labels.get(&e.key);
            let values = e.values.as_deref().unwrap_or_default();
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => !value.is_some_and(|v| values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                "Gt" | "Lt" => {
                    let (Some(v), Some(bound)) = (
                        value.and_then(|v| v.parse::<i64>().ok()),
                        values.first().and_then(|b| b.parse::<i64>().ok()),
                    ) else {
                        return false;
                    };
                    if e.operator == "Gt" {
                        v > bound
                    } else {
                        v < bound
                    }
                }
                _ => false,
            }
        })
    })
}

/// What the pods bound to one node use.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    cpu: i128,
    memory: i128,
    pods: i128,
    ports: HashSet<(i32, String)>,
    /// Pods per owner, by a hash of the owner's uid.
    owners: HashMap<u64, i128>,
}

impl Usage {
    /// Counts `pod` on this node.
    pub fn add(&mut self, pod: &Pod) {
        let (cpu, memory) = requests(pod);
        self.cpu += cpu;
        self.memory += memory;
        self.pods += 1;
        self.ports.extend(host_ports(pod));
        if let Some(uid) = owner_uid(pod) {
            *self.owners.entry(owner_key(uid)).or_default() += 1;
        }
    }
}

impl Usage {
    /// Adds another usage to this one.
    pub fn merge(&mut self, other: &Usage) {
        self.cpu += other.cpu;
        self.memory += other.memory;
        self.pods += other.pods;
        self.ports.extend(other.ports.iter().cloned());
        for (owner, count) in &other.owners {
            *self.owners.entry(*owner).or_default() += count;
        }
    }
}

/// A hash of an owner's uid (FNV-1a), so counting pods per owner
/// allocates nothing.
fn owner_key(uid: &str) -> u64 {
    uid.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The usage of `node` in `used`, created if missing (allocating only
/// then).
fn usage_of<'a>(used: &'a mut HashMap<String, Usage>, node: &str) -> &'a mut Usage {
    if !used.contains_key(node) {
        used.insert(node.to_owned(), Usage::default());
    }
    used.get_mut(node).expect("inserted")
}

/// The usage of every node by the active pods bound to it.
pub fn usage<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> HashMap<String, Usage> {
    let mut usage: HashMap<String, Usage> = HashMap::new();
    for pod in pods.into_iter().filter(|p| is_active(p)) {
        if let Some(node) = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .filter(|n| !n.is_empty())
        {
            usage.entry(node.to_owned()).or_default().add(pod);
        }
    }
    usage
}

/// Picks the node for `pod` among `nodes`, given what the pods already
/// bound use; the reasons per node when none fits.
pub fn choose(
    pod: &Pod,
    nodes: &[Arc<Node>],
    usage: &HashMap<String, Usage>,
) -> Result<String, Reasons> {
    choose_sampled(pod, nodes, usage, 0, usize::MAX)
}

/// How many feasible nodes are enough to pick from among `total`, as
/// kube-scheduler's `percentageOfNodesToScore` adapts it: all of up to
/// 100 nodes, then a share falling from 50% to 5% (at least 100).
pub fn enough_feasible(total: usize) -> usize {
    if total <= 100 {
        return total;
    }
    let percent = 50usize.saturating_sub(total / 125).max(5);
    (total * percent / 100).max(100)
}

/// [`choose`] looking at the nodes from index `start` on (wrapping) and
/// stopping once `enough` feasible nodes were scored, so one pod costs the
/// same whatever the cluster size.
pub fn choose_sampled(
    pod: &Pod,
    nodes: &[Arc<Node>],
    usage: &HashMap<String, Usage>,
    start: usize,
    enough: usize,
) -> Result<String, Reasons> {
    let (cpu, memory) = requests(pod);
    let ports = host_ports(pod);
    let owner = owner_uid(pod);
    let mut reasons = Reasons::new();
    let mut best: Option<(i128, &str)> = None;
    let mut feasible = 0;
    let start = if nodes.is_empty() {
        0
    } else {
        start % nodes.len()
    };
    for node in nodes[start..].iter().chain(&nodes[..start]) {
        if feasible >= enough {
            break;
        }
        let name = node.metadata.name.as_deref().unwrap_or("");
        let mut reject = |why: &'static str| *reasons.entry(why).or_default() += 1;
        if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
            reject("node(s) were unschedulable");
            continue;
        }
        let labels = node.labels();
        let selector = pod.spec.as_ref().and_then(|s| s.node_selector.as_ref());
        if selector.is_some_and(|sel| sel.iter().any(|(k, v)| labels.get(k) != Some(v)))
            || !affinity_matches(pod, labels)
        {
            reject("node(s) didn't match Pod's node affinity/selector");
            continue;
        }
        let blocking = node
            .spec
            .iter()
            .flat_map(|s| s.taints.iter().flatten())
            .find(|t| {
                matches!(t.effect.as_str(), "NoSchedule" | "NoExecute") && !tolerates(pod, t)
            });
        if blocking.is_some() {
            reject("node(s) had untolerated taint");
            continue;
        }
        let empty = Usage::default();
        let used = usage.get(name).unwrap_or(&empty);
        let allocatable = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
        let capacity = |resource: &str| {
            allocatable
                .and_then(|a| a.get(resource))
                .and_then(|q| millis(&q.0).map(i128::from))
        };
        let (used_cpu, used_memory) = (used.cpu, used.memory);
        if let Some(max) = capacity("pods")
            && (used.pods + 1) * 1000 > max
        {
            reject("Too many pods");
            continue;
        }
        if let Some(max) = capacity("cpu")
            && used_cpu + cpu > max
        {
            reject("Insufficient cpu");
            continue;
        }
        if let Some(max) = capacity("memory")
            && used_memory + memory > max
        {
            reject("Insufficient memory");
            continue;
        }
        if ports.iter().any(|p| used.ports.contains(p)) {
            reject("node(s) didn't have free ports for the requested pod ports");
            continue;
        }
        // Less allocated is better (0..=200), pods of the same owner
        // already there cost 100 each.
        let free = |used: i128, asked: i128, max: Option<i128>| -> i128 {
            max.filter(|m| *m > 0)
                .map_or(100, |m| (m - used - asked).max(0) * 100 / m)
        };
        let siblings = owner
            .and_then(|uid| used.owners.get(&owner_key(uid)))
            .copied()
            .unwrap_or(0);
        let score = free(used_cpu, cpu, capacity("cpu"))
            + free(used_memory, memory, capacity("memory"))
            - 100 * siblings;
        feasible += 1;
        if best
            .as_ref()
            .is_none_or(|(s, n)| score > *s || (score == *s && name < *n))
        {
            best = Some((score, name));
        }
    }
    best.map(|(_, name)| name.to_owned()).ok_or(reasons)
}

/// The message kube-scheduler gives a pod that fits nowhere.
pub fn failure_message(total: usize, reasons: &Reasons) -> String {
    let parts: Vec<String> = reasons
        .iter()
        .map(|(why, n)| format!("{n} {why}"))
        .collect();
    let mut message = format!("0/{total} nodes are available");
    if !parts.is_empty() {
        message.push_str(": ");
        message.push_str(&parts.join(", "));
    }
    message.push_str(". preemption: not eligible.");
    message
}

fn pending(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else { return false };
    spec.node_name.as_deref().unwrap_or("").is_empty()
        && spec.scheduler_name.as_deref().unwrap_or(SCHEDULER_NAME) == SCHEDULER_NAME
        && pod.metadata.deletion_timestamp.is_none()
}

/// Runs the scheduler until `token` is cancelled.
///
/// It reads pods and nodes from the shared caches and schedules whenever
/// either changes: every pending pod, against what the bound ones use.
pub fn run(
    client: Client,
    informers: &Informers,
    token: CancellationToken,
) -> BoxFuture<'static, ()> {
    let pods = informers.pods.store();
    let nodes = informers.nodes.store();
    let changes = futures::stream::select(
        informers.pods.subscribe().map(|_| ()),
        informers.nodes.subscribe().map(|_| ()),
    );
    Box::pin(schedule(client, pods, nodes, changes, token))
}

async fn schedule(
    client: Client,
    pod_store: Cache<Pod>,
    node_store: Cache<Node>,
    changes: impl futures::Stream<Item = ()> + Send + 'static,
    token: CancellationToken,
) {
    // Changes are drained as they come, so the informers never wait for
    // a pass to end; a pass starts after any change it has not seen.
    let changed = Arc::new(tokio::sync::Notify::new());
    let drain = {
        let changed = changed.clone();
        let token = token.clone();
        async move {
            let mut changes = std::pin::pin!(changes);
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    change = changes.next() => match change {
                        Some(()) => changed.notify_one(),
                        None => return,
                    },
                }
            }
        }
    };
    let drain = tokio::spawn(drain);
    // What each unschedulable pod was last told, so events are not repeated.
    let mut reported: HashMap<String, String> = HashMap::new();
    // Pods just bound here: uid -> (node, usage, when).
    let mut assumed: HashMap<String, (String, Usage, Instant)> = HashMap::new();
    // Where the next pod starts looking, so pods spread over a sample.
    let mut start = 0usize;
    // When to look again although nothing changed (failed bindings).
    let mut retry: Option<Instant> = None;
    // Whether the last pass left pods for the next one.
    let mut more = false;
    loop {
        let retry_at = retry.take();
        if !more {
            tokio::select! {
                () = token.cancelled() => break,
                () = changed.notified() => {}
                () = async {
                    match retry_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
        more = false;
        // Nothing is decided before both caches are complete.
        let ready = async {
            pod_store.ready().await;
            node_store.ready().await;
        };
        tokio::select! {
            () = token.cancelled() => break,
            () = ready => {}
        }
        let all = pod_store.state();
        let mut used: HashMap<String, Usage> = HashMap::new();
        let mut waiting: Vec<Arc<Pod>> = Vec::new();
        for pod in &all {
            let uid = pod.metadata.uid.as_deref().unwrap_or("");
            match pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
                Some(node) if !node.is_empty() => {
                    if is_active(pod) {
                        usage_of(&mut used, node).add(pod);
                    }
                    // Bound as the cache now shows: no longer assumed.
                    assumed.remove(uid);
                }
                _ if pending(pod) && !assumed.contains_key(uid) => waiting.push(pod.clone()),
                _ => {}
            }
        }
        // Pods bound by this scheduler that the cache does not show bound
        // yet stay counted on their node and are not scheduled again.
        assumed.retain(|_, (_, _, at)| at.elapsed() < ASSUME_FOR);
        for (node, usage, _) in assumed.values() {
            usage_of(&mut used, node).merge(usage);
        }
        if waiting.is_empty() {
            continue;
        }
        waiting.sort_by(|a, b| {
            a.metadata
                .creation_timestamp
                .cmp(&b.metadata.creation_timestamp)
        });

        let nodes = node_store.state();
        let enough = enough_feasible(nodes.len());
        let mut decisions = Vec::new();
        let mut failures = Vec::new();
        for pod in waiting {
            if decisions.len() == PASS_SIZE {
                more = true;
                break;
            }
            let key = pod_key(&pod);
            start = start.wrapping_add(1);
            match choose_sampled(&pod, &nodes, &used, start, enough) {
                Ok(node) => {
                    let mut usage = Usage::default();
                    usage.add(&pod);
                    // Count it on its node for the pods that follow.
                    usage_of(&mut used, &node).merge(&usage);
                    assumed.insert(
                        pod.uid().unwrap_or_default(),
                        (node.clone(), usage, Instant::now()),
                    );
                    decisions.push((pod, node));
                }
                Err(reasons) => {
                    let message = failure_message(nodes.len(), &reasons);
                    if reported.get(&key) != Some(&message) {
                        reported.insert(key, message.clone());
                        failures.push((pod, message));
                    }
                }
            }
        }
        tracing::debug!(
            bind = decisions.len(),
            unschedulable = failures.len(),
            nodes = nodes.len(),
            "scheduling pass"
        );
        let results: Vec<(String, String, Bound)> = futures::stream::iter(decisions)
            .map(|(pod, node)| bind(&client, pod, node))
            .buffer_unordered(BINDS_IN_FLIGHT)
            .collect()
            .await;
        let bound_at = Instant::now();
        for (key, uid, bound) in results {
            match bound {
                Bound::Now => {
                    reported.remove(&key);
                    if let Some((_, _, at)) = assumed.get_mut(&uid) {
                        *at = bound_at;
                    }
                }
                // The cache will show it; until then it stays assumed.
                Bound::Settled => {}
                Bound::Failed => {
                    assumed.remove(&uid);
                    retry = Some(Instant::now() + RETRY_AFTER);
                }
            }
        }
        futures::stream::iter(failures)
            .for_each_concurrent(BINDS_IN_FLIGHT, |(pod, message)| {
                let client = client.clone();
                async move {
                    event(&client, &pod, "Warning", "FailedScheduling", &message).await;
                }
            })
            .await;
    }
    drain.abort();
}

/// What became of one binding.
enum Bound {
    /// Bound now.
    Now,
    /// Already bound, or gone: nothing to retry.
    Settled,
    /// Failed; to be tried again.
    Failed,
}

/// Binds `pod` to `node` and records the `Scheduled` event; the pod's key
/// and uid, and what became of it.
async fn bind(client: &Client, pod: Arc<Pod>, node: String) -> (String, String, Bound) {
    let key = pod_key(&pod);
    let uid = pod.uid().unwrap_or_default();
    let (namespace, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let binding = json!({"apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": name, "namespace": namespace},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
    match api
        .create_subresource::<_, serde_json::Value>(
            "binding",
            &name,
            &PostParams::default(),
            &binding,
        )
        .await
    {
        Ok(_) => {
            tracing::debug!(pod = %key, %node, "scheduled");
            let message = format!("Successfully assigned {key} to {node}");
            event(client, &pod, "Normal", "Scheduled", &message).await;
            (key, uid, Bound::Now)
        }
        // Bound already (the watch had not shown it yet), or deleted.
        Err(kube::Error::Api(status)) if status.code == 409 || status.code == 404 => {
            tracing::debug!(pod = %key, reason = %status.message, "not bound: settled elsewhere");
            (key, uid, Bound::Settled)
        }
        Err(error) => {
            tracing::debug!(pod = %key, %error, "binding failed; will retry");
            (key, uid, Bound::Failed)
        }
    }
}

fn pod_key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

/// Records an event about `pod`, as kube-scheduler does.
async fn event(client: &Client, pod: &Pod, kind: &str, reason: &str, message: &str) {
    let namespace = pod.namespace().unwrap_or_default();
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let event: Event = match serde_json::from_value(json!({
        "metadata": {"generateName": format!("{}.", pod.name_any()), "namespace": namespace},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": pod.name_any(), "namespace": namespace,
                           "uid": pod.uid(), "resourceVersion": pod.resource_version()},
        "reason": reason, "message": message, "type": kind, "count": 1,
        "firstTimestamp": now, "lastTimestamp": now,
        "source": {"component": SCHEDULER_NAME},
        "reportingComponent": SCHEDULER_NAME,
    })) {
        Ok(event) => event,
        Err(error) => {
            tracing::warn!(%error, "cannot build an event");
            return;
        }
    };
    if let Err(error) = Api::<Event>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &event)
        .await
    {
        tracing::debug!(%error, "cannot record an event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(
        name: &str,
        labels: serde_json::Value,
        cpu: &str,
        extra: serde_json::Value,
    ) -> Arc<Node> {
        let mut node = json!({"metadata": {"name": name, "labels": labels},
            "status": {"allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "110"}}});
        if let Some(spec) = extra.get("spec") {
            node["spec"] = spec.clone();
        }
        Arc::new(serde_json::from_value(node).unwrap())
    }

    fn pod(name: &str, spec: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec}),
        )
        .unwrap()
    }

    fn container(cpu: &str) -> serde_json::Value {
        json!({"name": "c", "image": "x", "resources": {"requests": {"cpu": cpu}}})
    }

    #[test]
    fn filters() {
        let nodes = vec![
            node("a", json!({"zone": "x"}), "1", json!({})),
            node(
                "b",
                json!({"zone": "y"}),
                "4",
                json!({"spec": {"taints": [{"key": "edge", "effect": "NoSchedule"}]}}),
            ),
            node(
                "c",
                json!({"zone": "y"}),
                "4",
                json!({"spec": {"unschedulable": true}}),
            ),
        ];
        let selected = pod(
            "p",
            json!({"containers": [container("100m")], "nodeSelector": {"zone": "x"}}),
        );
        assert_eq!(choose(&selected, &nodes, &HashMap::new()).unwrap(), "a");
        let big = pod("p", json!({"containers": [container("2")]}));
        let reasons = choose(&big, &nodes, &HashMap::new()).unwrap_err();
        assert_eq!(
            failure_message(3, &reasons),
            "0/3 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint, 1 node(s) were unschedulable. preemption: not eligible."
        );
        let tolerant = pod(
            "p",
            json!({"containers": [container("2")], "tolerations": [{"key": "edge", "operator": "Exists"}]}),
        );
        assert_eq!(choose(&tolerant, &nodes, &HashMap::new()).unwrap(), "b");
    }

    #[test]
    fn requests_add_up_and_ports_conflict() {
        let nodes = vec![
            node("a", json!({}), "1", json!({})),
            node("b", json!({}), "1", json!({})),
        ];
        let mut running = pod(
            "r",
            json!({"containers": [{"name": "c", "image": "x",
            "resources": {"requests": {"cpu": "800m"}}, "ports": [{"containerPort": 80, "hostPort": 8080}]}]}),
        );
        running.spec.as_mut().unwrap().node_name = Some("a".into());
        let next = pod("p", json!({"containers": [container("500m")]}));
        assert_eq!(choose(&next, &nodes, &usage([&running])).unwrap(), "b");
        let port = pod(
            "q",
            json!({"containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}),
        );
        assert_eq!(choose(&port, &nodes, &usage([&running])).unwrap(), "b");
    }

    #[test]
    fn affinity_and_spreading() {
        let nodes = vec![
            node("a", json!({"role": "edge"}), "4", json!({})),
            node("b", json!({"role": "edge"}), "4", json!({})),
            node("c", json!({}), "4", json!({})),
        ];
        let affinity = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "role", "operator": "In", "values": ["edge"]}]}]}}});
        let owned = |name: &str| {
            let mut p = pod(
                name,
                json!({"containers": [container("100m")], "affinity": affinity}),
            );
            p.metadata.owner_references = Some(vec![serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u1", "controller": true})).unwrap()]);
            p
        };
        let mut first = owned("p1");
        let chosen = choose(&first, &nodes, &HashMap::new()).unwrap();
        assert_ne!(chosen, "c");
        first.spec.as_mut().unwrap().node_name = Some(chosen.clone());
        let second = choose(&owned("p2"), &nodes, &usage([&first])).unwrap();
        assert_ne!(second, chosen, "pods of one owner spread");
        assert_ne!(second, "c");
    }
}
