//! The DaemonSet controller: one pod on every node the template fits
//! (`nodeSelector`, required node affinity, and the node's `NoSchedule`
//! and `NoExecute` taints against the pod's tolerations plus those
//! upstream gives every DaemonSet pod), edge nodes included. Each pod is
//! bound to its node directly (`spec.nodeName`), so no scheduler is
//! involved. Pods on nodes that no longer fit are deleted (a node that
//! only gained an untolerated `NoSchedule` taint keeps its pod, as
//! upstream), nodes added later get theirs, and a failed pod is replaced
//! after a back-off.
//!
//! Pods carry `controller-revision-hash` (the hash of the template) and
//! `pod-template-generation`. `RollingUpdate` replaces pods of an older
//! template while at most `maxUnavailable` nodes (an int or a percentage
//! of the desired nodes, rounded up; 1 by default) lack an available pod;
//! `OnDelete` replaces only the pods the user deletes. `maxSurge` is not
//! supported: a node's old pod goes before its new one comes. Each
//! template is recorded as a ControllerRevision (see [`history`]), so
//! `kubectl rollout history` and `kubectl rollout undo` work. The status
//! is what `kubectl rollout status daemonset` reads.
//!
//! The controller watches the pods it labels itself (rather than through
//! the shared pod informer, which reports no deletions), so a pod deleted
//! at once (`--grace-period=0`) is replaced at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, Pod, PodSpec, PodTemplateSpec, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Informers;
use crate::events::{self, EventType};
use crate::informer::{Cache, Informer};
use crate::pods::{self, Expectations};

/// The component named in events.
const COMPONENT: &str = "daemonset-controller";
/// The label with the hash of the template a pod was made from.
pub const REVISION_HASH: &str = "controller-revision-hash";
/// The label with the DaemonSet generation a pod was made from.
pub const TEMPLATE_GENERATION: &str = "pod-template-generation";
/// The first wait before a failed daemon pod is replaced; it doubles with
/// each failure on the same node.
const FAILED_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait before a failed daemon pod is replaced.
const FAILED_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Per DaemonSet uid and node: the last back-off and when it ends.
type Backoffs = HashMap<(String, String), (Duration, Instant)>;

struct Context {
    client: Client,
    /// The pods this controller labels (`pod-template-generation`).
    pods: Cache<Pod>,
    nodes: Cache<Node>,
    expectations: Expectations,
    history: history::History,
    backoff: Mutex<Backoffs>,
}

/// Runs the DaemonSet controller until `token` is cancelled.
pub fn run(
    client: Client,
    informers: &Informers,
    token: CancellationToken,
) -> BoxFuture<'static, ()> {
    // Its own pods only: a watch of the pods that carry its label.
    let pods = Informer::<Pod>::with_config(
        Api::all(client.clone()),
        watcher::Config::default().labels(TEMPLATE_GENERATION),
    );
    let context = Arc::new(Context {
        client: client.clone(),
        pods: pods.store(),
        nodes: informers.nodes.store(),
        expectations: Expectations::default(),
        history: history::History::default(),
        backoff: Mutex::default(),
    });
    let controller = Controller::new(Api::<DaemonSet>::all(client), watcher::Config::default());
    let sets = controller.store();
    let controller = controller
        .owns_shared_stream(pods.subscribe())
        .watches_shared_stream(
            placement_changes(informers.nodes.subscribe()),
            move |_: Arc<Node>| {
                sets.state()
                    .iter()
                    .map(|ds| ObjectRef::from_obj(ds.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(token.clone().cancelled_owned())
        .run(reconcile, error_policy, context)
        .for_each(|_| futures::future::ready(()));
    Box::pin(async move {
        tokio::join!(controller, pods.run(token));
    })
}

fn error_policy(ds: Arc<DaemonSet>, error: &kube::Error, _: Arc<Context>) -> Action {
    tracing::debug!(daemonset = %ds.name_any(), %error, "daemonset: reconcile failed; retrying");
    Action::requeue(Duration::from_secs(1))
}

/// The nodes of `nodes` that are new or whose labels or taints changed:
/// status updates (conditions, heartbeats) place no daemon anywhere.
fn placement_changes(
    nodes: impl Stream<Item = Arc<Node>> + Send + 'static,
) -> impl Stream<Item = Arc<Node>> + Send + 'static {
    let mut seen: HashMap<String, String> = HashMap::new();
    nodes.filter(move |node| {
        let fingerprint = json!([
            node.uid(),
            node.labels(),
            node.spec.as_ref().map(|s| &s.taints)
        ])
        .to_string();
        let changed = seen.insert(node.name_any(), fingerprint.clone()) != Some(fingerprint);
        futures::future::ready(changed)
    })
}

/// The tolerations upstream adds to every DaemonSet pod, so daemons keep
/// running on nodes that are unreachable, not ready, under pressure,
/// cordoned or without a network yet.
pub fn daemon_tolerations() -> Vec<Toleration> {
    let toleration = |key: &str, effect: &str| Toleration {
        key: Some(key.to_owned()),
        operator: Some("Exists".to_owned()),
        effect: Some(effect.to_owned()),
        ..Toleration::default()
    };
    vec![
        toleration("node.kubernetes.io/not-ready", "NoExecute"),
        toleration("node.kubernetes.io/unreachable", "NoExecute"),
        toleration("node.kubernetes.io/disk-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/memory-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/pid-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/unschedulable", "NoSchedule"),
        toleration("node.kubernetes.io/network-unavailable", "NoSchedule"),
    ]
}

/// The template the DaemonSet's pods are made from: `template` with the
/// daemon tolerations (replacing any of the same key and effect) and the
/// revision and generation labels.
pub fn daemon_template(template: &PodTemplateSpec, hash: &str, generation: i64) -> PodTemplateSpec {
    let mut template = template.clone();
    let metadata = template.metadata.get_or_insert_with(Default::default);
    let labels = metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(REVISION_HASH.to_owned(), hash.to_owned());
    labels.insert(TEMPLATE_GENERATION.to_owned(), generation.to_string());
    let spec = template.spec.get_or_insert_with(PodSpec::default);
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for extra in daemon_tolerations() {
        tolerations.retain(|t| t.key != extra.key || t.effect != extra.effect);
        tolerations.push(extra);
    }
    template
}

/// Whether `toleration` tolerates `taint`: an empty key with `Exists`
/// tolerates every key, an empty effect every effect.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => key.is_empty() || key == taint.key,
        "Equal" | "" => {
            key == taint.key
                && toleration.value.as_deref().unwrap_or_default()
                    == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

/// Whether one node selector requirement holds for `value` (the label's,
/// or the field's, `None` when absent).
fn requirement_holds(requirement: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = requirement.values.as_deref().unwrap_or_default();
    let listed = value.is_some_and(|v| values.iter().any(|x| x == v));
    match requirement.operator.as_str() {
        "In" => listed,
        "NotIn" => !listed,
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        operator @ ("Gt" | "Lt") => {
            let parse = |text: &str| text.parse::<i64>().ok();
            match (value.and_then(parse), values.first().and_then(|b| parse(b))) {
                (Some(v), Some(bound)) if operator == "Gt" => v > bound,
                (Some(v), Some(bound)) => v < bound,
                _ => false,
            }
        }
        _ => false,
    }
}

/// Whether `spec`'s required node affinity admits `node`: the terms are
/// ORed, the requirements of a term ANDed, and an empty term admits
/// nothing; `matchFields` knows `metadata.name`.
fn affinity_admits(spec: &PodSpec, node: &Node) -> bool {
    let Some(required) = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
    else {
        return true;
    };
    let labels = node.labels();
    let name = node.name_any();
    required.node_selector_terms.iter().any(|term| {
        let expressions = term.match_expressions.as_deref().unwrap_or_default();
        let fields = term.match_fields.as_deref().unwrap_or_default();
        !(expressions.is_empty() && fields.is_empty())
            && expressions
                .iter()
                .all(|r| requirement_holds(r, labels.get(&r.key).map(String::as_str)))
            && fields
                .iter()
                .all(|r| r.key == "metadata.name" && requirement_holds(r, Some(name.as_str())))
    })
}

/// Where a DaemonSet pod stands with a node, as upstream decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The node fits: it runs the daemon.
    Run,
    /// The node takes no new daemon (an untolerated `NoSchedule` taint),
    /// but one already there stays.
    Keep,
    /// No daemon there: the node name, selector or affinity does not
    /// match, or a `NoExecute` taint is not tolerated.
    Evict,
}

/// Where `pod` (a DaemonSet's, with its tolerations) stands with `node`.
pub fn placement(pod: &Pod, node: &Node) -> Placement {
    let Some(spec) = pod.spec.as_ref() else {
        return Placement::Evict;
    };
    if let Some(wanted) = spec.node_name.as_deref().filter(|n| !n.is_empty())
        && wanted != node.name_any()
    {
        return Placement::Evict;
    }
    let labels = node.labels();
    let selected = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    if !selected || !affinity_admits(spec, node) {
        return Placement::Evict;
    }
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    let mut placement = Placement::Run;
    for taint in node.spec.iter().flat_map(|s| s.taints.iter().flatten()) {
        if !matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute")
            || tolerations.iter().any(|t| tolerates(t, taint))
        {
            continue;
        }
        if taint.effect == "NoExecute" {
            return Placement::Evict;
        }
        placement = Placement::Keep;
    }
    placement
}

/// `value` (an int, or a percentage of `total` rounded up) as a count;
/// `default` when unset or unreadable.
pub fn scaled(value: Option<&IntOrString>, total: usize, default: usize) -> usize {
    match value {
        Some(IntOrString::Int(n)) => usize::try_from(*n).unwrap_or(0),
        Some(IntOrString::String(text)) => match text.strip_suffix('%').map(str::parse::<usize>) {
            Some(Ok(percent)) => (total * percent).div_ceil(100),
            _ => text.parse().unwrap_or(default),
        },
        None => default,
    }
}

/// The old pods a rolling update deletes now, from `old` (each with
/// whether it is available) when `unavailable` nodes that should run the
/// daemon lack an available pod: every unavailable old pod (it costs
/// nothing), and available ones while fewer than `max_unavailable` nodes
/// would lack one.
pub fn rolling_deletions<T>(
    old: Vec<(T, bool)>,
    unavailable: usize,
    max_unavailable: usize,
) -> Vec<T> {
    let mut budget = max_unavailable.saturating_sub(unavailable);
    let mut chosen = Vec::new();
    let (available, unavailable): (Vec<_>, Vec<_>) = old.into_iter().partition(|(_, a)| *a);
    chosen.extend(unavailable.into_iter().map(|(pod, _)| pod));
    for (pod, _) in available {
        if budget == 0 {
            break;
        }
        budget -= 1;
        chosen.push(pod);
    }
    chosen
}

/// The counts of a DaemonSet's status.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Nodes that should run the daemon.
    pub desired: usize,
    /// Of those, nodes that run it.
    pub scheduled: usize,
    /// Nodes that run it but should not.
    pub misscheduled: usize,
    /// Nodes that should run it with a ready pod.
    pub ready: usize,
    /// Nodes that should run it with an available pod.
    pub available: usize,
    /// Nodes that should run it with a pod of the current template.
    pub updated: usize,
}

/// What one reconcile of a DaemonSet finds to do.
#[derive(Debug, Default)]
pub struct Plan {
    /// Nodes that need a pod.
    pub create: Vec<String>,
    /// Pods to delete: misplaced, duplicate, or on nodes that are gone.
    pub delete: Vec<Arc<Pod>>,
    /// Finished pods by node, to replace after a back-off.
    pub failed: Vec<(String, Arc<Pod>)>,
    /// Pods of an older template on nodes that run the daemon, each with
    /// whether it is available.
    pub old: Vec<(Arc<Pod>, bool)>,
    /// The status counts.
    pub counts: Counts,
}

/// What the DaemonSet whose pods are made like `probe`, at template
/// `hash`, needs on `nodes`, given its live (not terminating) `pods`.
pub fn plan(
    probe: &Pod,
    hash: &str,
    min_ready: i32,
    nodes: &[Arc<Node>],
    pods: Vec<Arc<Pod>>,
    now: jiff::Timestamp,
) -> Plan {
    let mut plan = Plan::default();
    let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
    for pod in pods {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        by_node.entry(node).or_default().push(pod);
    }
    for node in nodes {
        let name = node.name_any();
        let here = by_node.remove(&name).unwrap_or_default();
        let (finished, mut live): (Vec<_>, Vec<_>) =
            here.into_iter().partition(|p| pods::is_finished(p));
        let placement = placement(probe, node);
        if placement == Placement::Evict {
            plan.delete.extend(finished);
        } else {
            plan.failed
                .extend(finished.into_iter().map(|p| (name.clone(), p)));
        }
        if placement != Placement::Run {
            if !live.is_empty() {
                plan.counts.misscheduled += 1;
            }
            if placement == Placement::Evict {
                plan.delete.append(&mut live);
            }
            continue;
        }
        plan.counts.desired += 1;
        // Only the oldest pod of a node stays.
        live.sort_by_key(|p| (p.metadata.creation_timestamp.clone(), p.name_any()));
        let mut live = live.into_iter();
        let Some(pod) = live.next() else {
            plan.create.push(name);
            continue;
        };
        plan.delete.extend(live);
        plan.counts.scheduled += 1;
        let available = pods::is_available(&pod, min_ready, now);
        plan.counts.ready += usize::from(pods::is_ready(&pod));
        plan.counts.available += usize::from(available);
        if pod.labels().get(REVISION_HASH).map(String::as_str) == Some(hash) {
            plan.counts.updated += 1;
        } else {
            plan.old.push((pod, available));
        }
    }
    // Pods on nodes that are gone, or on none.
    plan.delete.extend(by_node.into_values().flatten());
    plan
}

async fn reconcile(ds: Arc<DaemonSet>, context: Arc<Context>) -> Result<Action, kube::Error> {
    context.pods.ready().await;
    context.nodes.ready().await;
    let uid = ds.uid().unwrap_or_default();
    if ds.metadata.deletion_timestamp.is_some() {
        context.expectations.forget(&uid);
        context.history.forget(&uid);
        let mut backoff = context.backoff.lock().expect("backoff lock");
        backoff.retain(|(owner, _), _| *owner != uid);
        return Ok(Action::await_change());
    }
    let Some(spec) = ds.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    let name = ds.name_any();
    let namespace = ds.namespace().unwrap_or_default();
    let hash = pods::hash_of(&spec.template);
    let template = daemon_template(&spec.template, &hash, ds.metadata.generation.unwrap_or(0));
    let probe = Pod {
        spec: template.spec.clone(),
        ..Pod::default()
    };
    let owned = pods::owned_pods(&context.pods, &namespace, &uid);
    let settled = context.expectations.settle(&uid, &owned);
    let live: Vec<Arc<Pod>> = owned
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| !settled.deleted.contains(&p.name_any()))
        .cloned()
        .collect();

    let in_use: HashSet<String> = live
        .iter()
        .filter_map(|p| p.labels().get(REVISION_HASH))
        .map(|h| format!("{name}-{h}"))
        .collect();
    let limit = usize::try_from(spec.revision_history_limit.unwrap_or(10)).unwrap_or(0);
    context
        .history
        .record(
            &context.client,
            ds.as_ref(),
            &spec.template,
            &hash,
            limit,
            &in_use,
        )
        .await?;

    let now = jiff::Timestamp::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let nodes = context.nodes.state();
    let mut plan = plan(&probe, &hash, min_ready, &nodes, live, now);
    let mut retry: Option<Duration> = None;
    let mut sooner = |wait: Duration| retry = Some(retry.map_or(wait, |r| r.min(wait)));

    // Failed pods are replaced, no sooner than their node's back-off.
    let mut waiting: HashSet<String> = HashSet::new();
    {
        let mut backoff = context.backoff.lock().expect("backoff lock");
        let clock = Instant::now();
        // A back-off long over is forgotten: the next failure starts anew.
        backoff.retain(|_, (_, until)| *until + FAILED_BACKOFF_MAX > clock);
        for (node, pod) in std::mem::take(&mut plan.failed) {
            let key = (uid.clone(), node.clone());
            match backoff.get(&key) {
                Some((_, until)) if *until > clock => {
                    sooner(*until - clock);
                    waiting.insert(node);
                }
                previous => {
                    let delay = previous.map_or(FAILED_BACKOFF, |(last, _)| {
                        (*last * 2).min(FAILED_BACKOFF_MAX)
                    });
                    backoff.insert(key, (delay, clock + delay));
                    plan.delete.push(pod);
                }
            }
        }
    }
    plan.create.retain(|node| !waiting.contains(node));
    // Nodes whose pod was just created (and is not in the cache yet) get
    // no second one: creations wait until the cache shows the earlier.
    if !settled.unseen_created.is_empty() {
        plan.create.clear();
    }

    let strategy = spec.update_strategy.clone().unwrap_or_default();
    if strategy.type_.as_deref() != Some("OnDelete") {
        let max_unavailable = scaled(
            strategy
                .rolling_update
                .as_ref()
                .and_then(|r| r.max_unavailable.as_ref()),
            plan.counts.desired,
            1,
        )
        .max(1);
        let unavailable = plan.counts.desired - plan.counts.available;
        let old = std::mem::take(&mut plan.old);
        plan.delete
            .extend(rolling_deletions(old, unavailable, max_unavailable));
    }

    for pod in &plan.delete {
        if pods::is_finished(pod) {
            let message = format!(
                "Found failed daemon pod {namespace}/{} on node {}, will try to kill it",
                pod.name_any(),
                pod.spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_deref())
                    .unwrap_or_default(),
            );
            events::record(
                &context.client,
                COMPONENT,
                ds.as_ref(),
                EventType::Warning,
                "FailedDaemonPod",
                &message,
            )
            .await;
        }
    }
    create_pods(&context, &ds, &template, plan.create).await?;
    delete_pods(&context, &ds, plan.delete).await?;
    update_status(&ds, &context, &plan.counts).await?;

    if min_ready > 0 && plan.counts.ready > plan.counts.available {
        sooner(Duration::from_secs(1));
    }
    Ok(retry.map_or_else(Action::await_change, Action::requeue))
}

/// Creates a pod from `template` on each of `nodes`, recording events.
async fn create_pods(
    context: &Context,
    ds: &DaemonSet,
    template: &PodTemplateSpec,
    nodes: Vec<String>,
) -> Result<(), kube::Error> {
    let uid = ds.uid().unwrap_or_default();
    let namespace = ds.namespace().unwrap_or_default();
    let generate_name = format!("{}-", ds.name_any());
    let owner = pods::controller_ref(ds);
    let api: Api<Pod> = Api::namespaced(context.client.clone(), &namespace);
    let results: Vec<Result<(), kube::Error>> = futures::stream::iter(nodes)
        .map(|node| {
            let mut pod = pods::from_template(
                template,
                &namespace,
                None,
                &generate_name,
                owner.clone(),
                &BTreeMap::new(),
            );
            pod.spec.get_or_insert_with(PodSpec::default).node_name = Some(node);
            let (api, uid) = (&api, &uid);
            async move {
                match api.create(&PostParams::default(), &pod).await {
                    Ok(created) => {
                        let created = created.name_any();
                        context.expectations.created(uid, &created);
                        let message = format!("Created pod: {created}");
                        events::record(
                            &context.client,
                            COMPONENT,
                            ds,
                            EventType::Normal,
                            "SuccessfulCreate",
                            &message,
                        )
                        .await;
                        Ok(())
                    }
                    Err(error) => {
                        let message = format!("Error creating: {error}");
                        events::record(
                            &context.client,
                            COMPONENT,
                            ds,
                            EventType::Warning,
                            "FailedCreate",
                            &message,
                        )
                        .await;
                        Err(error)
                    }
                }
            }
        })
        .buffer_unordered(pods::BURST)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Deletes `victims`, recording events.
async fn delete_pods(
    context: &Context,
    ds: &DaemonSet,
    victims: Vec<Arc<Pod>>,
) -> Result<(), kube::Error> {
    let uid = ds.uid().unwrap_or_default();
    let results: Vec<Result<(), kube::Error>> = futures::stream::iter(victims)
        .map(|pod| {
            let uid = &uid;
            async move {
                let name = pod.name_any();
                pods::delete_all(&context.client, &context.expectations, uid, vec![pod]).await?;
                let message = format!("Deleted pod: {name}");
                events::record(
                    &context.client,
                    COMPONENT,
                    ds,
                    EventType::Normal,
                    "SuccessfulDelete",
                    &message,
                )
                .await;
                Ok(())
            }
        })
        .buffer_unordered(pods::BURST)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Patches the status when `counts` or the observed generation changed.
async fn update_status(
    ds: &DaemonSet,
    context: &Context,
    counts: &Counts,
) -> Result<(), kube::Error> {
    let int = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let status = ds.status.clone().unwrap_or_default();
    let unchanged = status.desired_number_scheduled == int(counts.desired)
        && status.current_number_scheduled == int(counts.scheduled)
        && status.number_misscheduled == int(counts.misscheduled)
        && status.number_ready == int(counts.ready)
        && status.number_available.unwrap_or(0) == int(counts.available)
        && status.number_unavailable.unwrap_or(0) == int(counts.desired - counts.available)
        && status.updated_number_scheduled.unwrap_or(0) == int(counts.updated)
        && status.observed_generation == ds.metadata.generation;
    if unchanged {
        return Ok(());
    }
    let api: Api<DaemonSet> =
        Api::namespaced(context.client.clone(), &ds.namespace().unwrap_or_default());
    let patch = json!({"status": {
        "desiredNumberScheduled": counts.desired,
        "currentNumberScheduled": counts.scheduled,
        "numberMisscheduled": counts.misscheduled,
        "numberReady": counts.ready,
        "numberAvailable": counts.available,
        "numberUnavailable": counts.desired - counts.available,
        "updatedNumberScheduled": counts.updated,
        "observedGeneration": ds.metadata.generation,
    }});
    match api
        .patch_status(
            &ds.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error),
    }
}

pub mod history {
    //! ControllerRevisions, the history of a DaemonSet's or StatefulSet's
    //! templates: one per template, named `<owner>-<hash>`, controlled by
    //! its owner, holding the template as the strategic merge patch that
    //! brings it back (what `kubectl rollout undo` applies), numbered in
    //! the order the templates were (last) used, and trimmed to the
    //! owner's `revisionHistoryLimit`.

    use std::collections::{HashMap, HashSet};
    use std::sync::Mutex;

    use k8s_openapi::api::apps::v1::ControllerRevision;
    use k8s_openapi::api::core::v1::PodTemplateSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
    use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
    use kube::{Client, Resource, ResourceExt};
    use serde_json::json;

    use super::REVISION_HASH;
    use crate::pods;

    /// The revisions one controller recorded, by owner uid, so each
    /// template is written once.
    #[derive(Debug, Default)]
    pub struct History {
        recorded: Mutex<HashMap<String, String>>,
    }

    impl History {
        /// Records `template` (hash `hash`) as revision `<owner>-<hash>`
        /// of `owner`, the newest, unless it already was; then deletes the
        /// oldest revisions beyond `limit`, except the current one and
        /// those named in `keep`.
        pub async fn record<K>(
            &self,
            client: &Client,
            owner: &K,
            template: &PodTemplateSpec,
            hash: &str,
            limit: usize,
            keep: &HashSet<String>,
        ) -> Result<(), kube::Error>
        where
            K: Resource<DynamicType = ()>,
        {
            let uid = owner.uid().unwrap_or_default();
            let name = format!("{}-{hash}", owner.name_any());
            let done = self.recorded.lock().expect("history lock").get(&uid) == Some(&name);
            if done {
                return Ok(());
            }
            let namespace = owner.namespace().unwrap_or_default();
            let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &namespace);
            let owned: Vec<ControllerRevision> = api
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter(|r| pods::controller_uid(&r.metadata) == Some(uid.as_str()))
                .collect();
            let newest = owned.iter().map(|r| r.revision).max().unwrap_or(0);
            match owned.iter().find(|r| r.name_any() == name) {
                // A template used again (an undo) becomes the newest.
                Some(existing) if existing.revision < newest => {
                    let patch = json!({"revision": newest + 1});
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await?;
                }
                Some(_) => {}
                None => {
                    let revision = revision(owner, template, &name, hash, newest + 1)?;
                    match api.create(&PostParams::default(), &revision).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(status)) if status.code == 409 => {}
                        Err(error) => return Err(error),
                    }
                }
            }
            let mut old: Vec<&ControllerRevision> = owned
                .iter()
                .filter(|r| r.name_any() != name && !keep.contains(&r.name_any()))
                .collect();
            old.sort_by_key(|r| r.revision);
            let surplus = old.len().saturating_sub(limit);
            for stale in old.into_iter().take(surplus) {
                match api
                    .delete(&stale.name_any(), &DeleteParams::default())
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(error) => return Err(error),
                }
            }
            self.recorded
                .lock()
                .expect("history lock")
                .insert(uid, name);
            Ok(())
        }

        /// Forgets `uid` (deleted).
        pub fn forget(&self, uid: &str) {
            self.recorded.lock().expect("history lock").remove(uid);
        }
    }

    /// Revision `name` of `owner`, number `number`, holding `template`.
    fn revision<K>(
        owner: &K,
        template: &PodTemplateSpec,
        name: &str,
        hash: &str,
        number: i64,
    ) -> Result<ControllerRevision, kube::Error>
    where
        K: Resource<DynamicType = ()>,
    {
        let mut labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        labels.insert(REVISION_HASH.to_owned(), hash.to_owned());
        let mut data = serde_json::to_value(template).map_err(kube::Error::SerdeError)?;
        if let Some(map) = data.as_object_mut() {
            map.insert("$patch".to_owned(), json!("replace"));
        }
        Ok(ControllerRevision {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: owner.namespace(),
                labels: Some(labels),
                owner_references: Some(vec![pods::controller_ref(owner)]),
                ..ObjectMeta::default()
            },
            data: Some(RawExtension(json!({"spec": {"template": data}}))),
            revision: number,
        })
    }

    /// The template revision `name` of `namespace` holds, if it exists.
    pub async fn template(
        client: &Client,
        namespace: &str,
        name: &str,
    ) -> Result<Option<PodTemplateSpec>, kube::Error> {
        let api: Api<ControllerRevision> = Api::namespaced(client.clone(), namespace);
        let Some(revision) = api.get_opt(name).await? else {
            return Ok(None);
        };
        let Some(mut data) = revision.data.map(|d| d.0) else {
            return Ok(None);
        };
        let Some(mut template) = data
            .pointer_mut("/spec/template")
            .map(serde_json::Value::take)
        else {
            return Ok(None);
        };
        if let Some(map) = template.as_object_mut() {
            map.remove("$patch");
        }
        Ok(serde_json::from_value(template).ok())
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use k8s_openapi::api::apps::v1::DaemonSet;

        #[test]
        fn revisions_hold_a_replacing_patch_of_the_template() {
            let owner: DaemonSet = serde_json::from_value(json!({
                "metadata": {"name": "agent", "namespace": "ns", "uid": "u1"}}))
            .unwrap();
            let template: PodTemplateSpec = serde_json::from_value(json!({
                "metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "a", "image": "x:1"}]}}))
            .unwrap();
            let revision = revision(&owner, &template, "agent-abc", "abc", 3).unwrap();
            assert_eq!(revision.revision, 3);
            assert_eq!(revision.metadata.namespace.as_deref(), Some("ns"));
            assert_eq!(pods::controller_uid(&revision.metadata), Some("u1"));
            let labels = revision.metadata.labels.unwrap();
            assert_eq!(labels.get("app").map(String::as_str), Some("agent"));
            assert_eq!(labels.get(REVISION_HASH).map(String::as_str), Some("abc"));
            let data = revision.data.unwrap().0;
            assert_eq!(data["spec"]["template"]["$patch"], "replace");
            assert_eq!(
                data["spec"]["template"]["spec"]["containers"][0]["image"],
                "x:1"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: serde_json::Value, taints: serde_json::Value) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "labels": labels},
                "spec": {"taints": taints},
            }))
            .unwrap(),
        )
    }

    /// A DaemonSet pod made like upstream does, from a pod spec.
    fn probe(spec: serde_json::Value) -> Pod {
        let template: PodTemplateSpec = serde_json::from_value(json!({"spec": spec})).unwrap();
        Pod {
            spec: daemon_template(&template, "h1", 1).spec,
            ..Pod::default()
        }
    }

    fn pod(name: &str, node: &str, hash: &str, extra: serde_json::Value) -> Arc<Pod> {
        let mut value = json!({
            "metadata": {"name": name, "labels": {REVISION_HASH: hash},
                         "creationTimestamp": format!("2026-01-01T00:00:0{}Z", name.len() % 10)},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
        });
        if let Some(status) = extra.get("status") {
            value["status"] = status.clone();
        }
        Arc::new(serde_json::from_value(value).unwrap())
    }

    fn now() -> jiff::Timestamp {
        "2026-01-01T00:10:00Z".parse().unwrap()
    }

    #[test]
    fn nodes_fit_by_selector_affinity_and_taints() {
        let sensor = probe(json!({"containers": [], "nodeSelector": {"role": "sensor"}}));
        let plain = node("a", json!({}), json!([]));
        let labelled = node("b", json!({"role": "sensor"}), json!([]));
        assert_eq!(placement(&sensor, &labelled), Placement::Run);
        assert_eq!(placement(&sensor, &plain), Placement::Evict);
        // The tolerations every daemon gets.
        for (key, effect) in [
            ("node.kubernetes.io/unreachable", "NoExecute"),
            ("node.kubernetes.io/not-ready", "NoExecute"),
            ("node.kubernetes.io/unschedulable", "NoSchedule"),
            ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ] {
            let tainted = node(
                "c",
                json!({"role": "sensor"}),
                json!([{"key": key, "effect": effect}]),
            );
            assert_eq!(placement(&sensor, &tainted), Placement::Run, "{key}");
        }
        // A NoSchedule taint keeps a pod already there; NoExecute evicts it.
        let dedicated = node(
            "d",
            json!({"role": "sensor"}),
            json!([{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]),
        );
        assert_eq!(placement(&sensor, &dedicated), Placement::Keep);
        let evicting = node(
            "e",
            json!({"role": "sensor"}),
            json!([{"key": "dedicated", "value": "x", "effect": "NoExecute"},
                   {"key": "soft", "effect": "PreferNoSchedule"}]),
        );
        assert_eq!(placement(&sensor, &evicting), Placement::Evict);
        let tolerant = probe(json!({"containers": [], "nodeSelector": {"role": "sensor"},
            "tolerations": [{"key": "dedicated", "operator": "Exists"}]}));
        assert_eq!(placement(&tolerant, &dedicated), Placement::Run);
        assert_eq!(placement(&tolerant, &evicting), Placement::Run);
        let equal = probe(json!({"containers": [],
            "tolerations": [{"key": "dedicated", "value": "y", "effect": "NoSchedule"}]}));
        assert_eq!(placement(&equal, &dedicated), Placement::Keep);
        let everything = probe(json!({"containers": [], "tolerations": [{"operator": "Exists"}]}));
        assert_eq!(placement(&everything, &evicting), Placement::Run);
    }

    #[test]
    fn required_affinity_terms_are_ored_and_fields_match_names() {
        let affinity = |terms: serde_json::Value| {
            probe(json!({"containers": [], "affinity": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}}))
        };
        let edge = node(
            "edge-1",
            json!({"node-role.kubernetes.io/edge": "", "zone": "3"}),
            json!([]),
        );
        let cloud = node("cloud-1", json!({"zone": "1"}), json!([]));
        let edge_only = affinity(json!([{"matchExpressions": [
            {"key": "node-role.kubernetes.io/edge", "operator": "Exists"}]}]));
        assert_eq!(placement(&edge_only, &edge), Placement::Run);
        assert_eq!(placement(&edge_only, &cloud), Placement::Evict);
        let either = affinity(json!([
            {"matchExpressions": [{"key": "zone", "operator": "Gt", "values": ["2"]}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["cloud-1"]}]},
        ]));
        assert_eq!(placement(&either, &edge), Placement::Run);
        assert_eq!(placement(&either, &cloud), Placement::Run);
        let not_edge = affinity(json!([{"matchExpressions": [
            {"key": "node-role.kubernetes.io/edge", "operator": "DoesNotExist"},
            {"key": "zone", "operator": "NotIn", "values": ["2"]}]}]));
        assert_eq!(placement(&not_edge, &edge), Placement::Evict);
        assert_eq!(placement(&not_edge, &cloud), Placement::Run);
        assert_eq!(placement(&affinity(json!([{}])), &cloud), Placement::Evict);
    }

    #[test]
    fn daemon_tolerations_replace_the_users_of_the_same_key() {
        let template: PodTemplateSpec = serde_json::from_value(json!({"spec": {"containers": [],
            "tolerations": [
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                 "effect": "NoExecute", "tolerationSeconds": 30},
                {"key": "dedicated", "operator": "Exists"}]}}))
        .unwrap();
        let template = daemon_template(&template, "h", 4);
        let tolerations = template.spec.unwrap().tolerations.unwrap();
        assert_eq!(tolerations.len(), 1 + daemon_tolerations().len());
        assert!(tolerations.iter().all(|t| t.toleration_seconds.is_none()));
        let labels = template.metadata.unwrap().labels.unwrap();
        assert_eq!(labels[REVISION_HASH], "h");
        assert_eq!(labels[TEMPLATE_GENERATION], "4");
    }

    #[test]
    fn plans_one_pod_per_fitting_node() {
        let sensor = probe(json!({"containers": [], "nodeSelector": {"role": "sensor"}}));
        let nodes = vec![
            node("a", json!({"role": "sensor"}), json!([])),
            node("b", json!({"role": "sensor"}), json!([])),
            node("c", json!({}), json!([])),
            node(
                "d",
                json!({"role": "sensor"}),
                json!([{"key": "k", "effect": "NoSchedule"}]),
            ),
            node("e", json!({"role": "sensor"}), json!([])),
        ];
        let pods = vec![
            pod("a1", "a", "h1", json!({})),
            pod("a22", "a", "h1", json!({})),
            pod("c1", "c", "h1", json!({})),
            pod("d1", "d", "h1", json!({})),
            pod("e1", "e", "h0", json!({"status": {"phase": "Pending"}})),
            pod("gone1", "gone", "h1", json!({})),
        ];
        let plan = plan(&sensor, "h1", 0, &nodes, pods, now());
        assert_eq!(plan.create, ["b"]);
        let mut deleted: Vec<String> = plan.delete.iter().map(|p| p.name_any()).collect();
        deleted.sort();
        assert_eq!(deleted, ["a22", "c1", "gone1"]);
        assert_eq!(
            plan.old
                .iter()
                .map(|(p, a)| (p.name_any(), *a))
                .collect::<Vec<_>>(),
            [("e1".to_owned(), false)]
        );
        assert_eq!(
            plan.counts,
            Counts {
                desired: 3,
                scheduled: 2,
                misscheduled: 2,
                ready: 1,
                available: 1,
                updated: 1,
            }
        );
    }

    #[test]
    fn failed_pods_are_reported_for_replacement() {
        let any = probe(json!({"containers": []}));
        let nodes = vec![node("a", json!({}), json!([]))];
        let failed = pod("a1", "a", "h1", json!({"status": {"phase": "Failed"}}));
        let plan = plan(&any, "h1", 0, &nodes, vec![failed], now());
        assert_eq!(plan.create, ["a"]);
        assert_eq!(plan.failed.len(), 1);
        assert!(plan.delete.is_empty());
    }

    #[test]
    fn rolling_updates_stay_within_max_unavailable() {
        let old = |available: &[bool]| {
            available
                .iter()
                .enumerate()
                .map(|(i, a)| (i, *a))
                .collect::<Vec<_>>()
        };
        // All available, nothing missing: one at a time.
        assert_eq!(rolling_deletions(old(&[true, true, true]), 0, 1), [0]);
        // A new pod not yet available uses up the budget.
        assert!(rolling_deletions(old(&[true, true]), 1, 1).is_empty());
        // Unavailable old pods go at once, whatever the budget.
        assert_eq!(rolling_deletions(old(&[true, false, true]), 1, 1), [1]);
        assert_eq!(rolling_deletions(old(&[true, true, true]), 1, 3), [0, 1]);
    }

    #[test]
    fn max_unavailable_scales_up_from_percentages() {
        let percent = IntOrString::String("25%".to_owned());
        assert_eq!(scaled(Some(&percent), 10, 1), 3);
        assert_eq!(scaled(Some(&percent), 1, 1), 1);
        assert_eq!(scaled(Some(&IntOrString::Int(2)), 10, 1), 2);
        assert_eq!(scaled(None, 10, 1), 1);
        assert_eq!(scaled(Some(&IntOrString::String("x".to_owned())), 10, 1), 1);
    }
}
