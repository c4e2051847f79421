//! The Deployment controller: one ReplicaSet per pod template (named
//! `<deployment>-<pod-template-hash>`, revision in the
//! `deployment.kubernetes.io/revision` annotation), rolled from the old to
//! the new with `RollingUpdate` (within `maxSurge` and `maxUnavailable`)
//! or `Recreate`; old ReplicaSets kept, scaled to zero, up to
//! `revisionHistoryLimit` so `kubectl rollout undo` can go back (it copies
//! an old template into the Deployment, and the matching ReplicaSet is
//! reused with a new revision). The status and the `Available` and
//! `Progressing` conditions are what `kubectl rollout status` and
//! `kubectl wait --for=condition=Available` read.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::Informers;
use crate::events::{self, EventType};
use crate::informer::Cache;
use crate::informer::Informer;
use crate::pods;

/// The label that ties a ReplicaSet and its pods to one template.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// The annotation holding a ReplicaSet's (and its Deployment's) revision.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// The annotation kubectl shows as a revision's change cause.
const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";
/// The component name in events.
const COMPONENT: &str = "deployment-controller";

struct Context {
    client: Client,
    replica_sets: Cache<ReplicaSet>,
}

/// Runs the Deployment controller until `token` is cancelled.
pub fn run(
    client: Client,
    informers: &Informers,
    token: CancellationToken,
) -> BoxFuture<'static, ()> {
    let _ = informers;
    let replica_sets = Informer::<ReplicaSet>::new(Api::all(client.clone()));
    let context = Arc::new(Context {
        client: client.clone(),
        replica_sets: replica_sets.store(),
    });
    let controller = Controller::new(Api::<Deployment>::all(client), watcher::Config::default())
        .owns_shared_stream(replica_sets.subscribe())
        .graceful_shutdown_on(token.clone().cancelled_owned())
        .run(reconcile, error_policy, context)
        .for_each(|_| futures::future::ready(()));
    Box::pin(async move {
        tokio::join!(controller, replica_sets.run(token));
    })
}

fn error_policy(deployment: Arc<Deployment>, error: &kube::Error, _: Arc<Context>) -> Action {
    tracing::debug!(deployment = %deployment.name_any(), %error, "deployment: reconcile failed; retrying");
    Action::requeue(Duration::from_secs(1))
}

/// A ReplicaSet's revision (0 when unset).
pub fn revision(meta: &ObjectMeta) -> i64 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// The template without the `pod-template-hash` label, as compared
/// between a Deployment and its ReplicaSets.
fn without_hash(template: &PodTemplateSpec) -> serde_json::Value {
    let mut template = template.clone();
    if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(POD_TEMPLATE_HASH);
        if labels.is_empty() {
            template.metadata.as_mut().expect("metadata").labels = None;
        }
    }
    serde_json::to_value(template).unwrap_or_default()
}

/// Resolves `maxSurge` or `maxUnavailable` against `desired` replicas
/// (percentages round up for surge, down for unavailability).
pub fn resolve(value: Option<&IntOrString>, desired: i32, round_up: bool, default: &str) -> i32 {
    let value = value
        .cloned()
        .unwrap_or_else(|| IntOrString::String(default.to_owned()));
    match value {
        IntOrString::Int(n) => n.max(0),
        IntOrString::String(text) => {
            let percent: i64 = text.trim_end_matches('%').parse().unwrap_or(0);
            let scaled = i64::from(desired) * percent;
            let result = if round_up {
                (scaled + 99) / 100
            } else {
                scaled / 100
            };
            i32::try_from(result.max(0)).unwrap_or(i32::MAX)
        }
    }
}

/// The (maxSurge, maxUnavailable) of a rolling update; both zero would
/// never progress, so unavailability is then 1, as upstream.
pub fn surge_and_unavailable(deployment: &Deployment, desired: i32) -> (i32, i32) {
    let rolling = deployment
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let surge = resolve(
        rolling.and_then(|r| r.max_surge.as_ref()),
        desired,
        true,
        "25%",
    );
    let unavailable = resolve(
        rolling.and_then(|r| r.max_unavailable.as_ref()),
        desired,
        false,
        "25%",
    );
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable.min(desired))
    }
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

/// One step of a rolling update: the new replica counts (new ReplicaSet
/// first, then the old ones in order), from the current ones.
pub fn rolling_step(
    desired: i32,
    surge: i32,
    unavailable: i32,
    new: (i32, i32),
    old: &[(i32, i32)],
) -> (i32, Vec<i32>) {
    // (spec replicas, available replicas) of each ReplicaSet.
    let (new_replicas, new_available) = new;
    let total: i32 = new_replicas + old.iter().map(|(r, _)| r).sum::<i32>();
    // Scale the new ReplicaSet up within the surge.
    let mut next_new = new_replicas;
    if new_replicas > desired {
        next_new = desired;
    } else if total < desired + surge {
        next_new = new_replicas + (desired + surge - total).min(desired - new_replicas);
    }
    // Scale old ones down while enough pods stay available.
    let mut next_old: Vec<i32> = old.iter().map(|(r, _)| *r).collect();
    let min_available = desired - unavailable;
    let new_unavailable = (new_replicas - new_available).max(0);
    let mut room = total - min_available - new_unavailable;
    // First the old pods that are not available anyway.
    for (slot, (replicas, available)) in next_old.iter_mut().zip(old) {
        if room <= 0 {
            break;
        }
        let unhealthy = (replicas - available).max(0).min(room);
        *slot -= unhealthy;
        room -= unhealthy;
    }
    // Then available ones, as far as availability allows.
    let available_now: i32 = new_available
        + next_old
            .iter()
            .zip(old)
            .map(|(next, (_, available))| (*available).min(*next))
            .sum::<i32>();
    let mut budget = (available_now - min_available).max(0).min(room.max(0));
    for slot in &mut next_old {
        if budget <= 0 {
            break;
        }
        let down = (*slot).min(budget);
        *slot -= down;
        budget -= down;
    }
    (next_new, next_old)
}

async fn reconcile(
    deployment: Arc<Deployment>,
    context: Arc<Context>,
) -> Result<Action, kube::Error> {
    context.replica_sets.ready().await;
    if deployment.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let Some(spec) = deployment.spec.clone() else {
        return Ok(Action::await_change());
    };
    let namespace = deployment.namespace().unwrap_or_default();
    let uid = deployment.uid().unwrap_or_default();
    let mut owned: Vec<Arc<ReplicaSet>> = context
        .replica_sets
        .state()
        .into_iter()
        .filter(|rs| rs.metadata.namespace.as_deref() == Some(namespace.as_str()))
        .filter(|rs| pods::controller_uid(&rs.metadata) == Some(uid.as_str()))
        .collect();
    owned.sort_by_key(|rs| {
        (
            revision(&rs.metadata),
            rs.metadata.creation_timestamp.clone().map(|t| t.0),
        )
    });
    let wanted = without_hash(&spec.template);
    let new = owned
        .iter()
        .find(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| without_hash(t) == wanted)
        })
        .cloned();
    let old: Vec<Arc<ReplicaSet>> = owned
        .iter()
        .filter(|rs| new.as_ref().is_none_or(|n| n.uid() != rs.uid()))
        .cloned()
        .collect();
    let max_old_revision = old
        .iter()
        .map(|rs| revision(&rs.metadata))
        .max()
        .unwrap_or(0);
    let desired = spec.replicas.unwrap_or(1);
    let api: Api<ReplicaSet> = Api::namespaced(context.client.clone(), &namespace);
    if spec.paused == Some(true) {
        update_status(&deployment, &context, new.as_deref(), &owned).await?;
        return Ok(Action::await_change());
    }
    let new = match new {
        Some(rs) => {
            let change_cause = deployment.annotations().get(CHANGE_CAUSE).cloned();
            let stale_cause = change_cause.is_some()
                && rs.annotations().get(CHANGE_CAUSE) != change_cause.as_ref();
            if revision(&rs.metadata) <= max_old_revision || stale_cause {
                // Rolled back to this template: it becomes the newest revision.
                let revision = revision(&rs.metadata).max(max_old_revision + 1);
                let mut annotations = json!({REVISION: revision.to_string()});
                if let Some(cause) = change_cause {
                    annotations[CHANGE_CAUSE] = json!(cause);
                }
                let patch = json!({"metadata": {"annotations": annotations}});
                api.patch(
                    &rs.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
                return Ok(Action::await_change());
            }
            rs
        }
        None => {
            create_replica_set(&deployment, &context, max_old_revision + 1).await?;
            return Ok(Action::await_change());
        }
    };
    set_deployment_revision(&deployment, &context, revision(&new.metadata)).await?;
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    if recreate {
        let old_running = old
            .iter()
            .any(|rs| spec_replicas(rs) > 0 || rs.status.as_ref().is_some_and(|s| s.replicas > 0));
        for rs in old.iter().filter(|rs| spec_replicas(rs) > 0) {
            scale(&deployment, &context, rs, 0).await?;
        }
        if !old_running && spec_replicas(&new) != desired {
            scale(&deployment, &context, &new, desired).await?;
        }
    } else {
        let (surge, unavailable) = surge_and_unavailable(&deployment, desired);
        let current: Vec<(i32, i32)> = old
            .iter()
            .map(|rs| (spec_replicas(rs), available(rs)))
            .collect();
        let (next_new, next_old) = rolling_step(
            desired,
            surge,
            unavailable,
            (spec_replicas(&new), available(&new)),
            &current,
        );
        if next_new != spec_replicas(&new) {
            scale(&deployment, &context, &new, next_new).await?;
        }
        for (rs, next) in old.iter().zip(next_old) {
            if next != spec_replicas(rs) {
                scale(&deployment, &context, rs, next).await?;
            }
        }
    }
    clean_up_history(&deployment, &context, &old).await?;
    update_status(&deployment, &context, Some(&new), &owned).await?;
    Ok(Action::await_change())
}

async fn create_replica_set(
    deployment: &Deployment,
    context: &Context,
    revision: i64,
) -> Result<(), kube::Error> {
    let spec = deployment.spec.as_ref().expect("checked");
    let namespace = deployment.namespace().unwrap_or_default();
    let hash = pods::hash_of(&without_hash(&spec.template));
    let mut template = spec.template.clone();
    let metadata = template.metadata.get_or_insert_with(ObjectMeta::default);
    metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(POD_TEMPLATE_HASH.to_owned(), hash.clone());
    let labels = metadata.labels.clone();
    let mut selector: LabelSelector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(POD_TEMPLATE_HASH.to_owned(), hash.clone());
    let mut annotations = BTreeMap::from([(REVISION.to_owned(), revision.to_string())]);
    if let Some(cause) = deployment.annotations().get(CHANGE_CAUSE) {
        annotations.insert(CHANGE_CAUSE.to_owned(), cause.clone());
    }
    let name = format!("{}-{hash}", deployment.name_any());
    let rs = ReplicaSet {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            labels,
            annotations: Some(annotations),
            owner_references: Some(vec![pods::controller_ref(deployment)]),
            ..ObjectMeta::default()
        },
        spec: Some(k8s_openapi::api::apps::v1::ReplicaSetSpec {
            replicas: Some(0),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    };
    let api: Api<ReplicaSet> = Api::namespaced(context.client.clone(), &namespace);
    match api.create(&PostParams::default(), &rs).await {
        Ok(_) => {}
        // Created by an earlier pass the cache does not show yet.
        Err(kube::Error::Api(status)) if status.code == 409 => return Ok(()),
        Err(error) => return Err(error),
    }
    Ok(())
}

async fn set_deployment_revision(
    deployment: &Deployment,
    context: &Context,
    revision: i64,
) -> Result<(), kube::Error> {
    if self::revision(&deployment.metadata) == revision {
        return Ok(());
    }
    let api: Api<Deployment> = Api::namespaced(
        context.client.clone(),
        &deployment.namespace().unwrap_or_default(),
    );
    let patch = json!({"metadata": {"annotations": {REVISION: revision.to_string()}}});
    api.patch(
        &deployment.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

async fn scale(
    deployment: &Deployment,
    context: &Context,
    rs: &ReplicaSet,
    replicas: i32,
) -> Result<(), kube::Error> {
    let api: Api<ReplicaSet> =
        Api::namespaced(context.client.clone(), &rs.namespace().unwrap_or_default());
    let from = spec_replicas(rs);
    let patch = json!({
        "metadata": {"annotations": {
            "deployment.kubernetes.io/desired-replicas": deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).to_string(),
        }},
        "spec": {"replicas": replicas},
    });
    api.patch(
        &rs.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    let direction = if replicas > from { "up" } else { "down" };
    events::record(
        &context.client,
        COMPONENT,
        deployment,
        EventType::Normal,
        "ScalingReplicaSet",
        &format!(
            "Scaled {direction} replica set {} from {from} to {replicas}",
            rs.name_any()
        ),
    )
    .await;
    Ok(())
}

/// Deletes the oldest old ReplicaSets that are scaled to zero and empty,
/// beyond `revisionHistoryLimit`.
async fn clean_up_history(
    deployment: &Deployment,
    context: &Context,
    old: &[Arc<ReplicaSet>],
) -> Result<(), kube::Error> {
    let limit = deployment
        .spec
        .as_ref()
        .and_then(|s| s.revision_history_limit)
        .unwrap_or(10);
    let limit = usize::try_from(limit).unwrap_or(0);
    let idle: Vec<&Arc<ReplicaSet>> = old
        .iter()
        .filter(|rs| spec_replicas(rs) == 0 && rs.status.as_ref().is_none_or(|s| s.replicas == 0))
        .collect();
    if idle.len() <= limit {
        return Ok(());
    }
    let api: Api<ReplicaSet> = Api::namespaced(
        context.client.clone(),
        &deployment.namespace().unwrap_or_default(),
    );
    // `old` is sorted by revision, oldest first.
    for rs in &idle[..idle.len() - limit] {
        match api
            .delete(&rs.name_any(), &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

fn condition(
    previous: Option<&DeploymentCondition>,
    kind: &str,
    status: bool,
    reason: &str,
    message: String,
) -> DeploymentCondition {
    let now = Time(jiff::Timestamp::now());
    let status = if status { "True" } else { "False" }.to_owned();
    let unchanged =
        previous.is_some_and(|p| p.status == status && p.reason.as_deref() == Some(reason));
    DeploymentCondition {
        type_: kind.to_owned(),
        last_transition_time: if previous.is_some_and(|p| p.status == status) {
            previous.and_then(|p| p.last_transition_time.clone())
        } else {
            Some(now.clone())
        },
        last_update_time: if unchanged {
            previous.and_then(|p| p.last_update_time.clone())
        } else {
            Some(now)
        },
        message: Some(message),
        reason: Some(reason.to_owned()),
        status,
    }
}

async fn update_status(
    deployment: &Deployment,
    context: &Context,
    new: Option<&ReplicaSet>,
    all: &[Arc<ReplicaSet>],
) -> Result<(), kube::Error> {
    let desired = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let status_of = |rs: &ReplicaSet| rs.status.clone().unwrap_or_default();
    let replicas: i32 = all.iter().map(|rs| status_of(rs).replicas).sum();
    let ready: i32 = all
        .iter()
        .map(|rs| status_of(rs).ready_replicas.unwrap_or(0))
        .sum();
    let available_total: i32 = all.iter().map(|rs| available(rs)).sum();
    let spec_total: i32 = all.iter().map(|rs| spec_replicas(rs)).sum();
    let updated = new.map_or(0, |rs| status_of(rs).replicas);
    let (_, unavailable) = surge_and_unavailable(deployment, desired);
    let recreate = deployment
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        == Some("Recreate");
    let min_available = if recreate {
        desired
    } else {
        desired - unavailable
    };
    let current = deployment.status.clone().unwrap_or_default();
    let previous = |kind: &str| {
        current
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == kind)
            .cloned()
    };
    let is_available = available_total >= min_available;
    let available_condition = if is_available {
        condition(
            previous("Available").as_ref(),
            "Available",
            true,
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".to_owned(),
        )
    } else {
        condition(
            previous("Available").as_ref(),
            "Available",
            false,
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".to_owned(),
        )
    };
    let new_name = new.map(|rs| rs.name_any()).unwrap_or_default();
    let complete = new.is_some()
        && updated == desired
        && replicas == desired
        && available_total == desired
        && new.is_some_and(|rs| available(rs) == desired);
    let progressing_condition = if complete {
        condition(
            previous("Progressing").as_ref(),
            "Progressing",
            true,
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{new_name}\" has successfully progressed."),
        )
    } else if new.is_some() {
        condition(
            previous("Progressing").as_ref(),
            "Progressing",
            true,
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{new_name}\" is progressing."),
        )
    } else {
        condition(
            previous("Progressing").as_ref(),
            "Progressing",
            true,
            "NewReplicaSetCreated",
            "Created new replica set.".to_owned(),
        )
    };
    let conditions = vec![available_condition, progressing_condition];
    let observed = deployment.metadata.generation;
    let same_conditions = |a: &[DeploymentCondition], b: &[DeploymentCondition]| {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.type_ == y.type_ && x.status == y.status && x.reason == y.reason)
    };
    let unchanged = current.replicas == Some(replicas)
        && current.updated_replicas == Some(updated)
        && current.ready_replicas == Some(ready)
        && current.available_replicas == Some(available_total)
        && current.unavailable_replicas == Some((spec_total - available_total).max(0))
        && current.observed_generation == observed
        && same_conditions(
            current.conditions.as_deref().unwrap_or_default(),
            &conditions,
        );
    if unchanged {
        return Ok(());
    }
    let api: Api<Deployment> = Api::namespaced(
        context.client.clone(),
        &deployment.namespace().unwrap_or_default(),
    );
    let patch = json!({"status": {
        "replicas": replicas, "updatedReplicas": updated, "readyReplicas": ready,
        "availableReplicas": available_total,
        "unavailableReplicas": (spec_total - available_total).max(0),
        "observedGeneration": observed,
        "conditions": conditions,
    }});
    match api
        .patch_status(
            &deployment.name_any(),
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

    #[test]
    fn surge_and_unavailability_resolve_like_upstream() {
        let int = |n| Some(IntOrString::Int(n));
        let percent = |p: &str| Some(IntOrString::String(p.to_owned()));
        assert_eq!(resolve(percent("25%").as_ref(), 10, true, "25%"), 3);
        assert_eq!(resolve(percent("25%").as_ref(), 10, false, "25%"), 2);
        assert_eq!(resolve(int(2).as_ref(), 10, true, "25%"), 2);
        assert_eq!(resolve(None, 1, true, "25%"), 1);
        assert_eq!(resolve(None, 1, false, "25%"), 0);
    }

    #[test]
    fn rolling_update_stays_within_surge_and_availability() {
        // 3 replicas, maxSurge 1, maxUnavailable 0: one new pod at a time.
        let (new, old) = rolling_step(3, 1, 0, (0, 0), &[(3, 3)]);
        assert_eq!((new, old.clone()), (1, vec![3]));
        // The new pod is not available yet: nothing old goes.
        let (new, old) = rolling_step(3, 1, 0, (1, 0), &[(3, 3)]);
        assert_eq!((new, old), (1, vec![3]));
        // Available: one old pod goes, and then the next new one comes.
        let (new, old) = rolling_step(3, 1, 0, (1, 1), &[(3, 3)]);
        assert_eq!((new, old), (1, vec![2]));
        let (new, old) = rolling_step(3, 1, 0, (1, 1), &[(2, 2)]);
        assert_eq!((new, old), (2, vec![2]));
        // The end: everything new, old at zero.
        let (new, old) = rolling_step(3, 1, 0, (3, 3), &[(1, 1)]);
        assert_eq!((new, old), (3, vec![0]));
    }

    #[test]
    fn unavailable_old_pods_go_first_and_scale_down_is_direct() {
        // Old pods that are not available go first, within the budget.
        let (new, old) = rolling_step(2, 0, 1, (0, 0), &[(2, 0)]);
        assert_eq!((new, old), (0, vec![1]));
        // More new replicas than desired (a scale-down): straight to desired.
        let (new, old) = rolling_step(2, 1, 0, (5, 5), &[]);
        assert_eq!((new, old), (2, vec![]));
    }
}
