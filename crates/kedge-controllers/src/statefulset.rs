//! The StatefulSet controller: pods with stable names `<set>-<ordinal>`
//! (ordinals from `spec.ordinals.start`, 0 by default), each with hostname
//! its name and subdomain the governing service (`spec.serviceName`), and
//! labelled with its name, its ordinal and its revision.
//!
//! `OrderedReady` creates ordinal *i* only once every lower ordinal is
//! running and ready, and scales down from the highest ordinal one pod at a
//! time, each only once the one before is gone; `Parallel` creates and
//! deletes them all at once. A deleted or finished pod comes back under
//! its name. `RollingUpdate` replaces the pods of an older template from
//! the highest ordinal down to `partition`, one at a time, each once the
//! ones above it are ready; pods below the partition that are deleted come
//! back with the old template. `OnDelete` replaces only pods the user
//! deletes. Each template is recorded as a ControllerRevision (see
//! [`history`](crate::daemonset::history)); the status, revisions
//! included, is what `kubectl rollout status statefulset` reads.
//!
//! Volume claims: for each `volumeClaimTemplates` entry a
//! PersistentVolumeClaim `<claim>-<set>-<ordinal>` is created when missing
//! (labelled with the set's selector, owned by the set when
//! `persistentVolumeClaimRetentionPolicy.whenDeleted` is `Delete`) and
//! mounted through a `persistentVolumeClaim` volume of the template's
//! name. Nothing here provisions or binds volumes (there is no storage
//! provisioner), and claims are never deleted on scale down
//! (`whenScaled` is treated as `Retain`).
//!
//! The controller watches the pods it labels itself (rather than through
//! the shared pod informer, which reports no deletions) so that it learns
//! at once when a pod it waits for is gone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodSpec, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::Informers;
use crate::daemonset::REVISION_HASH;
use crate::daemonset::history::{self, History};
use crate::events::{self, EventType};
use crate::informer::{Cache, Informer};
use crate::pods::{self, Expectations};

/// The component named in events.
const COMPONENT: &str = "statefulset-controller";
/// The label with a StatefulSet pod's own name.
pub const POD_NAME: &str = "statefulset.kubernetes.io/pod-name";
/// The label with a StatefulSet pod's ordinal.
pub const POD_INDEX: &str = "apps.kubernetes.io/pod-index";

struct Context {
    client: Client,
    /// The pods this controller labels (`statefulset.kubernetes.io/pod-name`).
    pods: Cache<Pod>,
    expectations: Expectations,
    history: History,
}

/// Runs the StatefulSet controller until `token` is cancelled.
pub fn run(
    client: Client,
    _informers: &Informers,
    token: CancellationToken,
) -> BoxFuture<'static, ()> {
    // Its own pods only: a watch of the pods that carry its label.
    let pods = Informer::<Pod>::with_config(
        Api::all(client.clone()),
        watcher::Config::default().labels(POD_NAME),
    );
    let context = Arc::new(Context {
        client: client.clone(),
        pods: pods.store(),
        expectations: Expectations::default(),
        history: History::default(),
    });
    let controller = Controller::new(Api::<StatefulSet>::all(client), watcher::Config::default())
        .owns_shared_stream(pods.subscribe())
        .graceful_shutdown_on(token.clone().cancelled_owned())
        .run(reconcile, error_policy, context)
        .for_each(|_| futures::future::ready(()));
    Box::pin(async move {
        tokio::join!(controller, pods.run(token));
    })
}

fn error_policy(set: Arc<StatefulSet>, error: &kube::Error, _: Arc<Context>) -> Action {
    tracing::debug!(statefulset = %set.name_any(), %error, "statefulset: reconcile failed; retrying");
    Action::requeue(Duration::from_secs(1))
}

/// The ordinal of pod `name` of set `set`, if it is one of its names.
pub fn ordinal(set: &str, name: &str) -> Option<usize> {
    let digits = name.strip_prefix(set)?.strip_prefix('-')?;
    if digits.is_empty()
        || (digits.len() > 1 && digits.starts_with('0'))
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    digits.parse().ok()
}

/// Running and ready: what `OrderedReady` waits for.
fn running_and_ready(pod: &Pod) -> bool {
    pods::phase(pod) == "Running" && pods::is_ready(pod)
}

/// What the planner knows of the pod of one ordinal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Created; the cache does not show it yet.
    Creating,
    /// Being deleted.
    Terminating,
    /// Succeeded or failed: to be deleted, then made again.
    Finished,
    /// Pending or running; `ready` when running and ready, `updated` when
    /// of the update revision.
    Live {
        /// Running and ready.
        ready: bool,
        /// Of the update revision.
        updated: bool,
    },
}

/// How a StatefulSet wants its pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The first ordinal.
    pub start: usize,
    /// How many pods.
    pub replicas: usize,
    /// `Parallel` rather than `OrderedReady`.
    pub parallel: bool,
    /// `RollingUpdate` rather than `OnDelete`.
    pub rolling: bool,
    /// Pods below this index (counted from `start`) keep the current
    /// revision.
    pub partition: usize,
}

impl Policy {
    /// The ordinals the set wants.
    pub fn wanted(&self) -> std::ops::Range<usize> {
        self.start..self.start + self.replicas
    }
}

/// What one reconcile does: the ordinals to create and the ordinals whose
/// pod to delete.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Steps {
    /// Ordinals to create, lowest first.
    pub create: Vec<usize>,
    /// Ordinals whose pod to delete.
    pub delete: Vec<usize>,
}

/// The ordinal whose pod a rolling update replaces next: the highest one
/// from the partition up whose pod is of an older revision, provided every
/// pod above it is there, of the update revision and ready.
pub fn rolling_target(policy: &Policy, slots: &BTreeMap<usize, Slot>) -> Option<usize> {
    let from = policy.start + policy.partition.min(policy.replicas);
    for ordinal in (from..policy.start + policy.replicas).rev() {
        match slots.get(&ordinal) {
            Some(Slot::Live { updated: false, .. }) => return Some(ordinal),
            Some(Slot::Live { ready: true, .. }) => {}
            _ => return None,
        }
    }
    None
}

/// The next steps for the pods in `slots` (by ordinal) under `policy`.
pub fn plan(policy: &Policy, slots: &BTreeMap<usize, Slot>) -> Steps {
    let wanted = policy.wanted();
    let mut steps = Steps::default();
    // Finished pods go; their ordinals come back once they are gone.
    steps.delete.extend(
        slots
            .iter()
            .filter(|(_, s)| **s == Slot::Finished)
            .map(|(o, _)| *o),
    );
    let condemned: Vec<usize> = slots
        .iter()
        .filter(|(o, s)| !wanted.contains(o) && matches!(s, Slot::Live { .. }))
        .map(|(o, _)| *o)
        .collect();
    if policy.parallel {
        steps
            .create
            .extend(wanted.clone().filter(|o| !slots.contains_key(o)));
        steps.delete.extend(condemned);
    } else {
        // One change at a time, each once the last one shows.
        let settling = slots
            .values()
            .any(|s| matches!(s, Slot::Creating | Slot::Terminating));
        if settling || !steps.delete.is_empty() {
            return steps;
        }
        for ordinal in wanted {
            match slots.get(&ordinal) {
                None => {
                    steps.create.push(ordinal);
                    return steps;
                }
                Some(Slot::Live { ready: true, .. }) => {}
                Some(_) => return steps,
            }
        }
        if let Some(highest) = condemned.last() {
            steps.delete.push(*highest);
            return steps;
        }
    }
    if policy.rolling
        && let Some(ordinal) = rolling_target(policy, slots)
    {
        steps.delete.push(ordinal);
    }
    steps
}

/// The status counts of the live pods in `slots` and those `available`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    replicas: usize,
    ready: usize,
    available: usize,
    current: usize,
    updated: usize,
}

async fn reconcile(set: Arc<StatefulSet>, context: Arc<Context>) -> Result<Action, kube::Error> {
    context.pods.ready().await;
    let uid = set.uid().unwrap_or_default();
    if set.metadata.deletion_timestamp.is_some() {
        context.expectations.forget(&uid);
        context.history.forget(&uid);
        return Ok(Action::await_change());
    }
    let Some(spec) = set.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    let name = set.name_any();
    let namespace = set.namespace().unwrap_or_default();
    let hash = pods::hash_of(&spec.template);
    let update_revision = format!("{name}-{hash}");
    let status = set.status.clone().unwrap_or_default();
    let mut current_revision = status
        .current_revision
        .clone()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| update_revision.clone());
    let rolling_update = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let policy = Policy {
        start: spec
            .ordinals
            .as_ref()
            .and_then(|o| o.start)
            .and_then(|s| usize::try_from(s).ok())
            .unwrap_or(0),
        replicas: usize::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0),
        parallel: spec.pod_management_policy.as_deref() == Some("Parallel"),
        rolling: spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.type_.as_deref())
            != Some("OnDelete"),
        partition: rolling_update
            .and_then(|r| r.partition)
            .and_then(|p| usize::try_from(p).ok())
            .unwrap_or(0),
    };

    let owned = pods::owned_pods(&context.pods, &namespace, &uid);
    let settled = context.expectations.settle(&uid, &owned);
    let revision_of = |p: &Pod| p.labels().get(REVISION_HASH).cloned().unwrap_or_default();
    let mut slots: BTreeMap<usize, Slot> = settled
        .unseen_created
        .iter()
        .filter_map(|n| ordinal(&name, n))
        .map(|o| (o, Slot::Creating))
        .collect();
    let mut by_ordinal: HashMap<usize, Arc<Pod>> = HashMap::new();
    let mut in_use: HashSet<String> = HashSet::from([current_revision.clone()]);
    for pod in owned {
        let Some(ordinal) = ordinal(&name, &pod.name_any()) else {
            continue;
        };
        let slot = if pod.metadata.deletion_timestamp.is_some()
            || settled.deleted.contains(&pod.name_any())
        {
            Slot::Terminating
        } else if pods::is_finished(&pod) {
            Slot::Finished
        } else {
            Slot::Live {
                ready: running_and_ready(&pod),
                updated: revision_of(&pod) == update_revision,
            }
        };
        in_use.insert(revision_of(&pod));
        slots.insert(ordinal, slot);
        by_ordinal.insert(ordinal, pod);
    }
    let limit = usize::try_from(spec.revision_history_limit.unwrap_or(10)).unwrap_or(0);
    context
        .history
        .record(
            &context.client,
            set.as_ref(),
            &spec.template,
            &hash,
            limit,
            &in_use,
        )
        .await?;

    // The status, from the pods as they are before this reconcile acts.
    let now = jiff::Timestamp::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let mut counts = Counts::default();
    let mut becoming_available = false;
    for (ordinal, pod) in &by_ordinal {
        if !matches!(slots.get(ordinal), Some(Slot::Live { .. })) {
            continue;
        }
        let ready = running_and_ready(pod);
        let available = ready && pods::is_available(pod, min_ready, now);
        counts.replicas += 1;
        counts.ready += usize::from(ready);
        counts.available += usize::from(available);
        becoming_available |= ready && !available;
        counts.updated += usize::from(revision_of(pod) == update_revision);
    }
    // Once every pod is of the update revision and ready, it is current.
    if counts.updated == counts.replicas && counts.ready == counts.replicas {
        current_revision = update_revision.clone();
    }
    counts.current = by_ordinal
        .iter()
        .filter(|(o, _)| matches!(slots.get(o), Some(Slot::Live { .. })))
        .filter(|(_, p)| revision_of(p) == current_revision)
        .count();

    let steps = plan(&policy, &slots);
    let mut created = Vec::new();
    for ordinal in steps.create {
        // Below the partition, pods keep the current revision's template.
        let below_partition = policy.rolling && ordinal < policy.start + policy.partition;
        let (template, revision) = if below_partition && current_revision != update_revision {
            match history::template(&context.client, &namespace, &current_revision).await? {
                Some(template) => (template, current_revision.clone()),
                None => (spec.template.clone(), update_revision.clone()),
            }
        } else {
            (spec.template.clone(), update_revision.clone())
        };
        claim_volumes(&set, &context, ordinal).await?;
        created.push(stateful_pod(&set, &template, ordinal, &revision));
    }
    create_pods(&context, &set, created).await?;
    let condemned: Vec<Arc<Pod>> = steps
        .delete
        .iter()
        .filter_map(|o| by_ordinal.get(o).cloned())
        .collect();
    delete_pods(&context, &set, condemned).await?;

    update_status(&set, &context, &counts, &current_revision, &update_revision).await?;
    if becoming_available {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    Ok(Action::await_change())
}

/// Pod `ordinal` of `set` from `template` at `revision`, with its claims
/// mounted.
pub fn stateful_pod(
    set: &StatefulSet,
    template: &PodTemplateSpec,
    ordinal: usize,
    revision: &str,
) -> Pod {
    let name = set.name_any();
    let pod_name = format!("{name}-{ordinal}");
    let labels = BTreeMap::from([
        (POD_NAME.to_owned(), pod_name.clone()),
        (POD_INDEX.to_owned(), ordinal.to_string()),
        (REVISION_HASH.to_owned(), revision.to_owned()),
    ]);
    let mut pod = pods::from_template(
        template,
        &set.namespace().unwrap_or_default(),
        Some(pod_name.clone()),
        "",
        pods::controller_ref(set),
        &labels,
    );
    let pod_spec = pod.spec.get_or_insert_with(PodSpec::default);
    pod_spec.hostname = Some(pod_name.clone());
    let service = set.spec.as_ref().and_then(|s| s.service_name.clone());
    pod_spec.subdomain = service.filter(|s| !s.is_empty());
    let claims = set
        .spec
        .iter()
        .flat_map(|s| s.volume_claim_templates.iter().flatten());
    for claim in claims {
        let volume = claim.name_any();
        let volumes = pod_spec.volumes.get_or_insert_with(Vec::new);
        volumes.retain(|v| v.name != volume);
        volumes.push(Volume {
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: format!("{volume}-{pod_name}"),
                read_only: None,
            }),
            name: volume,
            ..Volume::default()
        });
    }
    pod
}

/// Creates the claims of pod `ordinal` of `set` that are missing.
async fn claim_volumes(
    set: &StatefulSet,
    context: &Context,
    ordinal: usize,
) -> Result<(), kube::Error> {
    let Some(spec) = set.spec.as_ref() else {
        return Ok(());
    };
    let name = set.name_any();
    let namespace = set.namespace().unwrap_or_default();
    let pod_name = format!("{name}-{ordinal}");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(context.client.clone(), &namespace);
    let owned = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .and_then(|p| p.when_deleted.as_deref())
        == Some("Delete");
    for template in spec.volume_claim_templates.iter().flatten() {
        let claim_name = format!("{}-{pod_name}", template.name_any());
        if claims.get_opt(&claim_name).await?.is_some() {
            continue;
        }
        let mut claim = PersistentVolumeClaim {
            metadata: template.metadata.clone(),
            spec: template.spec.clone(),
            status: None,
        };
        claim.metadata.name = Some(claim_name.clone());
        claim.metadata.namespace = Some(namespace.clone());
        claim.metadata.resource_version = None;
        claim.metadata.uid = None;
        claim.metadata.owner_references = owned.then(|| vec![owner_ref(set)]);
        let mut labels = spec.selector.match_labels.clone().unwrap_or_default();
        labels.extend(claim.metadata.labels.take().unwrap_or_default());
        claim.metadata.labels = Some(labels);
        let message = match claims.create(&PostParams::default(), &claim).await {
            Ok(_) => {
                format!("create Claim {claim_name} Pod {pod_name} in StatefulSet {name} success")
            }
            // Made meanwhile: nothing to report.
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(error) => {
                let message = format!(
                    "create Claim {claim_name} for Pod {pod_name} in StatefulSet {name} failed error: {error}"
                );
                let warning = EventType::Warning;
                events::record(
                    &context.client,
                    COMPONENT,
                    set,
                    warning,
                    "FailedCreate",
                    &message,
                )
                .await;
                return Err(error);
            }
        };
        let normal = EventType::Normal;
        events::record(
            &context.client,
            COMPONENT,
            set,
            normal,
            "SuccessfulCreate",
            &message,
        )
        .await;
    }
    Ok(())
}

/// A plain (not controlling) reference to `set`, as claims it owns carry.
fn owner_ref(set: &StatefulSet) -> OwnerReference {
    OwnerReference {
        api_version: StatefulSet::api_version(&()).into_owned(),
        kind: StatefulSet::kind(&()).into_owned(),
        name: set.name_any(),
        uid: set.uid().unwrap_or_default(),
        ..OwnerReference::default()
    }
}

/// Creates `new` pods of `set`, recording events.
async fn create_pods(
    context: &Context,
    set: &StatefulSet,
    new: Vec<Pod>,
) -> Result<(), kube::Error> {
    let uid = set.uid().unwrap_or_default();
    let set_name = set.name_any();
    let results: Vec<Result<(), kube::Error>> = futures::stream::iter(new)
        .map(|pod| {
            let (uid, set_name) = (&uid, &set_name);
            async move {
                let name = pod.name_any();
                let result =
                    pods::create_all(&context.client, &context.expectations, uid, vec![pod]).await;
                let (kind, reason, message) = match &result {
                    Ok(_) => (
                        EventType::Normal,
                        "SuccessfulCreate",
                        format!("create Pod {name} in StatefulSet {set_name} successful"),
                    ),
                    Err(error) => (
                        EventType::Warning,
                        "FailedCreate",
                        format!(
                            "create Pod {name} in StatefulSet {set_name} failed error: {error}"
                        ),
                    ),
                };
                events::record(&context.client, COMPONENT, set, kind, reason, &message).await;
                result.map(|_| ())
            }
        })
        .buffer_unordered(pods::BURST)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Deletes `victims` of `set`, recording events.
async fn delete_pods(
    context: &Context,
    set: &StatefulSet,
    victims: Vec<Arc<Pod>>,
) -> Result<(), kube::Error> {
    let uid = set.uid().unwrap_or_default();
    let set_name = set.name_any();
    let results: Vec<Result<(), kube::Error>> = futures::stream::iter(victims)
        .map(|pod| {
            let (uid, set_name) = (&uid, &set_name);
            async move {
                let name = pod.name_any();
                let result =
                    pods::delete_all(&context.client, &context.expectations, uid, vec![pod]).await;
                let (kind, reason, message) = match &result {
                    Ok(()) => (
                        EventType::Normal,
                        "SuccessfulDelete",
                        format!("delete Pod {name} in StatefulSet {set_name} successful"),
                    ),
                    Err(error) => (
                        EventType::Warning,
                        "FailedDelete",
                        format!(
                            "delete Pod {name} in StatefulSet {set_name} failed error: {error}"
                        ),
                    ),
                };
                events::record(&context.client, COMPONENT, set, kind, reason, &message).await;
                result
            }
        })
        .buffer_unordered(pods::BURST)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Patches the status when it changed.
async fn update_status(
    set: &StatefulSet,
    context: &Context,
    counts: &Counts,
    current_revision: &str,
    update_revision: &str,
) -> Result<(), kube::Error> {
    let status = set.status.clone().unwrap_or_default();
    let patch = json!({"status": {
        "replicas": counts.replicas,
        "readyReplicas": counts.ready,
        "availableReplicas": counts.available,
        "currentReplicas": counts.current,
        "updatedReplicas": counts.updated,
        "currentRevision": current_revision,
        "updateRevision": update_revision,
        "observedGeneration": set.metadata.generation,
    }});
    let before = json!({"status": {
        "replicas": status.replicas,
        "readyReplicas": status.ready_replicas.unwrap_or(0),
        "availableReplicas": status.available_replicas.unwrap_or(0),
        "currentReplicas": status.current_replicas.unwrap_or(0),
        "updatedReplicas": status.updated_replicas.unwrap_or(0),
        "currentRevision": status.current_revision,
        "updateRevision": status.update_revision,
        "observedGeneration": status.observed_generation,
    }});
    if patch == before {
        return Ok(());
    }
    let api: Api<StatefulSet> =
        Api::namespaced(context.client.clone(), &set.namespace().unwrap_or_default());
    match api
        .patch_status(
            &set.name_any(),
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

#[cfg(test)]
mod tests {
    use super::*;

    const READY: Slot = Slot::Live {
        ready: true,
        updated: true,
    };
    const STARTING: Slot = Slot::Live {
        ready: false,
        updated: true,
    };
    const OLD: Slot = Slot::Live {
        ready: true,
        updated: false,
    };

    fn policy(replicas: usize) -> Policy {
        Policy {
            start: 0,
            replicas,
            parallel: false,
            rolling: true,
            partition: 0,
        }
    }

    fn slots(list: &[(usize, Slot)]) -> BTreeMap<usize, Slot> {
        list.iter().copied().collect()
    }

    fn steps(create: &[usize], delete: &[usize]) -> Steps {
        Steps {
            create: create.to_vec(),
            delete: delete.to_vec(),
        }
    }

    #[test]
    fn ordinals_parse_only_the_sets_own_names() {
        assert_eq!(ordinal("web", "web-0"), Some(0));
        assert_eq!(ordinal("web", "web-12"), Some(12));
        assert_eq!(ordinal("web", "web-01"), None);
        assert_eq!(ordinal("web", "web-+1"), None);
        assert_eq!(ordinal("web", "webx-1"), None);
        assert_eq!(ordinal("web", "web-"), None);
        assert_eq!(ordinal("web", "web-db-0"), None);
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time_in_order() {
        let p = policy(3);
        assert_eq!(plan(&p, &slots(&[])), steps(&[0], &[]));
        // web-1 waits until web-0 shows, then until it is ready.
        assert_eq!(plan(&p, &slots(&[(0, Slot::Creating)])), steps(&[], &[]));
        assert_eq!(plan(&p, &slots(&[(0, STARTING)])), steps(&[], &[]));
        assert_eq!(plan(&p, &slots(&[(0, READY)])), steps(&[1], &[]));
        assert_eq!(
            plan(&p, &slots(&[(0, READY), (1, READY), (2, READY)])),
            steps(&[], &[])
        );
        // A missing low ordinal comes back first, after the old one is gone.
        assert_eq!(
            plan(&p, &slots(&[(1, READY), (2, READY)])),
            steps(&[0], &[])
        );
        assert_eq!(
            plan(&p, &slots(&[(0, Slot::Terminating), (1, READY)])),
            steps(&[], &[])
        );
        // A finished pod goes first.
        assert_eq!(
            plan(&p, &slots(&[(0, READY), (1, Slot::Finished)])),
            steps(&[], &[1])
        );
    }

    #[test]
    fn ordered_ready_scales_down_from_the_top_one_at_a_time() {
        let p = policy(1);
        let all = [(0, READY), (1, READY), (2, READY)];
        assert_eq!(plan(&p, &slots(&all)), steps(&[], &[2]));
        let going = [(0, READY), (1, READY), (2, Slot::Terminating)];
        assert_eq!(plan(&p, &slots(&going)), steps(&[], &[]));
        assert_eq!(plan(&p, &slots(&all[..2])), steps(&[], &[1]));
        // Not while a wanted pod is not ready.
        assert_eq!(
            plan(&p, &slots(&[(0, STARTING), (1, READY)])),
            steps(&[], &[])
        );
    }

    #[test]
    fn parallel_creates_and_deletes_at_once() {
        let p = Policy {
            parallel: true,
            ..policy(3)
        };
        assert_eq!(plan(&p, &slots(&[])), steps(&[0, 1, 2], &[]));
        assert_eq!(
            plan(&p, &slots(&[(1, STARTING), (2, Slot::Terminating)])),
            steps(&[0], &[])
        );
        let down = Policy { replicas: 1, ..p };
        assert_eq!(
            plan(&down, &slots(&[(0, READY), (1, STARTING), (2, READY)])),
            steps(&[], &[1, 2])
        );
    }

    #[test]
    fn rolling_updates_go_down_from_the_top_to_the_partition() {
        let p = policy(3);
        let old = [(0, OLD), (1, OLD), (2, OLD)];
        assert_eq!(plan(&p, &slots(&old)), steps(&[], &[2]));
        // The replacement must be ready before the next goes.
        let next = [(0, OLD), (1, OLD), (2, STARTING)];
        assert_eq!(plan(&p, &slots(&next)), steps(&[], &[]));
        let next = [(0, OLD), (1, OLD), (2, READY)];
        assert_eq!(plan(&p, &slots(&next)), steps(&[], &[1]));
        // Pods below the partition stay.
        let partitioned = Policy { partition: 2, ..p };
        assert_eq!(rolling_target(&partitioned, &slots(&next)), None);
        assert_eq!(rolling_target(&partitioned, &slots(&old)), Some(2));
        // OnDelete replaces nothing itself.
        let on_delete = Policy {
            rolling: false,
            ..p
        };
        assert_eq!(plan(&on_delete, &slots(&old)), steps(&[], &[]));
        // Parallel sets update one at a time too.
        let parallel = Policy {
            parallel: true,
            ..p
        };
        assert_eq!(plan(&parallel, &slots(&old)), steps(&[], &[2]));
    }

    #[test]
    fn start_ordinals_shift_the_names() {
        let p = Policy {
            start: 5,
            ..policy(2)
        };
        assert_eq!(plan(&p, &slots(&[])), steps(&[5], &[]));
        assert_eq!(plan(&p, &slots(&[(5, READY)])), steps(&[6], &[]));
        assert_eq!(
            plan(&p, &slots(&[(0, READY), (5, READY), (6, READY)])),
            steps(&[], &[0])
        );
    }

    #[test]
    fn pods_get_stable_names_hosts_and_claims() {
        let set: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "u1"},
            "spec": {
                "serviceName": "web-svc",
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                             "spec": {"containers": [{"name": "app", "image": "x"}],
                                      "volumes": [{"name": "data", "emptyDir": {}}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"},
                                          "spec": {"accessModes": ["ReadWriteOnce"]}}],
            },
        }))
        .unwrap();
        let template = set.spec.as_ref().unwrap().template.clone();
        let pod = stateful_pod(&set, &template, 2, "web-abc");
        assert_eq!(pod.name_any(), "web-2");
        let labels = pod.labels();
        assert_eq!(labels[POD_NAME], "web-2");
        assert_eq!(labels[POD_INDEX], "2");
        assert_eq!(labels[REVISION_HASH], "web-abc");
        assert_eq!(labels["app"], "web");
        assert_eq!(pods::controller_uid(&pod.metadata), Some("u1"));
        let spec = pod.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("web-2"));
        assert_eq!(spec.subdomain.as_deref(), Some("web-svc"));
        let volumes = spec.volumes.unwrap();
        assert_eq!(volumes.len(), 1);
        assert_eq!(
            volumes[0]
                .persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.as_str()),
            Some("data-web-2")
        );
    }
}
