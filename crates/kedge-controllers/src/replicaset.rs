//! The ReplicaSet controller: keeps `spec.replicas` active pods from the
//! template, deletes the least useful pods first when there are too many,
//! and reports replicas, ready and available counts in the status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::Informers;
use crate::informer::Cache;
use crate::pods::{self, Expectations};

/// The most pods one reconcile creates; the rest follow on the next.
const MAX_CREATES: usize = 500;

struct Context {
    client: Client,
    pods: Cache<Pod>,
    expectations: Expectations,
}

/// Runs the ReplicaSet controller until `token` is cancelled.
pub fn run(
    client: Client,
    informers: &Informers,
    token: CancellationToken,
) -> BoxFuture<'static, ()> {
    let context = Arc::new(Context {
        client: client.clone(),
        pods: informers.pods.store(),
        expectations: Expectations::default(),
    });
    let controller = Controller::new(Api::<ReplicaSet>::all(client), watcher::Config::default())
        .owns_shared_stream(informers.pods.subscribe())
        .graceful_shutdown_on(token.cancelled_owned())
        .run(reconcile, error_policy, context)
        .for_each(|_| futures::future::ready(()));
    Box::pin(controller)
}

fn error_policy(rs: Arc<ReplicaSet>, error: &kube::Error, _: Arc<Context>) -> Action {
    tracing::debug!(replicaset = %rs.name_any(), %error, "replicaset: reconcile failed; retrying");
    Action::requeue(Duration::from_secs(1))
}

/// Orders the pods to delete first: unscheduled, then not running, then
/// not ready, then ready for less time, then restarted more, then newer.
fn deletion_rank(pod: &Pod) -> impl Ord + use<> {
    let scheduled = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let phase = match pods::phase(pod) {
        "Pending" => 0,
        "Unknown" => 1,
        _ => 2,
    };
    let ready_since = pods::ready_since(pod);
    let restarts: i32 = pod
        .status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .map(|c| c.restart_count)
        .sum();
    (
        scheduled,
        phase,
        ready_since.is_some(),
        std::cmp::Reverse(ready_since),
        std::cmp::Reverse(restarts),
        std::cmp::Reverse(pod.metadata.creation_timestamp.clone().map(|t| t.0)),
    )
}

async fn reconcile(rs: Arc<ReplicaSet>, context: Arc<Context>) -> Result<Action, kube::Error> {
    context.pods.ready().await;
    let uid = rs.uid().unwrap_or_default();
    if rs.metadata.deletion_timestamp.is_some() {
        context.expectations.forget(&uid);
        return Ok(Action::await_change());
    }
    let namespace = rs.namespace().unwrap_or_default();
    let Some(spec) = &rs.spec else {
        return Ok(Action::await_change());
    };
    let owned = pods::owned_pods(&context.pods, &namespace, &uid);
    let settled = context.expectations.settle(&uid, &owned);
    let mut active: Vec<Arc<Pod>> = owned
        .iter()
        .filter(|p| pods::is_active(p) && !settled.deleted.contains(&p.name_any()))
        .cloned()
        .collect();
    let counted = active.len() + settled.unseen_created.len();
    let wanted = usize::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0);
    let mut action = Action::await_change();
    if counted < wanted {
        let missing = (wanted - counted).min(MAX_CREATES);
        if wanted - counted > MAX_CREATES {
            action = Action::requeue(Duration::from_millis(100));
        }
        let template = spec.template.clone().unwrap_or_default();
        let owner = pods::controller_ref(rs.as_ref());
        let new: Vec<Pod> = (0..missing)
            .map(|_| {
                pods::from_template(
                    &template,
                    &namespace,
                    None,
                    &format!("{}-", rs.name_any()),
                    owner.clone(),
                    &BTreeMap::new(),
                )
            })
            .collect();
        pods::create_all(&context.client, &context.expectations, &uid, new).await?;
    } else if counted > wanted && settled.unseen_created.is_empty() {
        active.sort_by_cached_key(|p| deletion_rank(p));
        let surplus: Vec<Arc<Pod>> = active.drain(..counted - wanted).collect();
        pods::delete_all(&context.client, &context.expectations, &uid, surplus).await?;
    }
    update_status(&rs, &context, &active).await?;
    // Pods that are ready but not yet available become available without
    // an event: look again then.
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    if min_ready > 0
        && active
            .iter()
            .any(|p| pods::is_ready(p) && !pods::is_available(p, min_ready, jiff::Timestamp::now()))
    {
        action = Action::requeue(Duration::from_secs(1));
    }
    Ok(action)
}

async fn update_status(
    rs: &ReplicaSet,
    context: &Context,
    active: &[Arc<Pod>],
) -> Result<(), kube::Error> {
    let spec = rs.spec.as_ref();
    let template_labels = spec
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let min_ready = spec.and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let now = jiff::Timestamp::now();
    let count = |f: &dyn Fn(&Pod) -> bool| active.iter().filter(|p| f(p)).count();
    let replicas = active.len();
    let fully_labeled = count(&|p: &Pod| {
        let labels = p.labels();
        template_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    });
    let ready = count(&|p: &Pod| pods::is_ready(p));
    let available = count(&|p: &Pod| pods::is_available(p, min_ready, now));
    let status = rs.status.clone().unwrap_or_default();
    let observed = rs.metadata.generation;
    let unchanged = status.replicas == replicas as i32
        && status.fully_labeled_replicas.unwrap_or(0) == fully_labeled as i32
        && status.ready_replicas.unwrap_or(0) == ready as i32
        && status.available_replicas.unwrap_or(0) == available as i32
        && status.observed_generation == observed;
    if unchanged {
        return Ok(());
    }
    let api: Api<ReplicaSet> =
        Api::namespaced(context.client.clone(), &rs.namespace().unwrap_or_default());
    let patch = json!({"status": {
        "replicas": replicas, "fullyLabeledReplicas": fully_labeled,
        "readyReplicas": ready, "availableReplicas": available,
        "observedGeneration": observed,
    }});
    match api
        .patch_status(
            &rs.name_any(),
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
