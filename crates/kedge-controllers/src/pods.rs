//! What the workload controllers share about pods: building them from a
//! template, reading their state, and remembering what was just created or
//! deleted until the shared cache shows it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::jiff;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::core::{Selector, SelectorExt};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;

/// How many pod creations or deletions one controller has in flight.
pub const BURST: usize = 64;
/// How long a creation or deletion is assumed to be on its way to the
/// cache; after that the cache is trusted again.
const EXPECTATION_TTL: Duration = Duration::from_secs(60);

/// The owner reference a controller puts on what it creates: controller,
/// and blocking the owner's foreground deletion.
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    let mut reference = owner
        .controller_owner_ref(&())
        .expect("objects read from the API have a name and uid");
    reference.block_owner_deletion = Some(true);
    reference
}

/// The uid of `object`'s controlling owner.
pub fn controller_uid(meta: &ObjectMeta) -> Option<&str> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

/// A pod from `template` in `namespace`, owned by `owner`, with `name` or,
/// when `None`, a name generated from `generate_name`, and `extra_labels`
/// added to the template's.
pub fn from_template(
    template: &PodTemplateSpec,
    namespace: &str,
    name: Option<String>,
    generate_name: &str,
    owner: OwnerReference,
    extra_labels: &BTreeMap<String, String>,
) -> Pod {
    let mut metadata = template.metadata.clone().unwrap_or_default();
    let mut labels = metadata.labels.take().unwrap_or_default();
    labels.extend(extra_labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    Pod {
        metadata: ObjectMeta {
            generate_name: name.is_none().then(|| generate_name.to_owned()),
            name,
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            annotations: metadata.annotations.take(),
            finalizers: metadata.finalizers.take(),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Neither terminating nor finished.
pub fn is_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && !is_finished(pod)
}

/// `Succeeded` or `Failed`.
pub fn is_finished(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

/// The pod's phase, `Pending` when unset.
pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// When the pod's `Ready` condition last turned true, if it is true.
pub fn ready_since(pod: &Pod) -> Option<jiff::Timestamp> {
    let condition = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(
        condition
            .last_transition_time
            .as_ref()
            .map_or(jiff::Timestamp::UNIX_EPOCH, |t| t.0),
    )
}

/// Ready (and not terminating).
pub fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && ready_since(pod).is_some()
}

/// Ready for at least `min_ready_seconds` at `now`.
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: jiff::Timestamp) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    ready_since(pod).is_some_and(|since| {
        min_ready_seconds <= 0
            || since + jiff::SignedDuration::from_secs(i64::from(min_ready_seconds)) <= now
    })
}

/// Whether `selector` selects `labels`; an unparsable selector selects
/// nothing.
pub fn selects(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(selector) = selector else {
        return false;
    };
    Selector::try_from(selector.clone()).is_ok_and(|s| !s.selects_all() && s.matches(labels))
}

/// A short, stable hash of `value`'s JSON (FNV-1a, in the alphabet
/// Kubernetes uses for `pod-template-hash`): the same template always gets
/// the same hash, across restarts and versions.
pub fn hash_of(value: &impl Serialize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let mut hash: u32 = 0x811c_9dc5;
    for byte in bytes {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    let mut text = String::new();
    let mut rest = hash;
    loop {
        text.push(char::from(ALPHABET[(rest % 27) as usize]));
        rest /= 27;
        if rest == 0 {
            break;
        }
    }
    text
}

/// The pods of `namespace` whose controller is the object with `uid`.
pub fn owned_pods(
    store: &kube::runtime::reflector::Store<Pod>,
    namespace: &str,
    uid: &str,
) -> Vec<Arc<Pod>> {
    store
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
        .filter(|p| controller_uid(&p.metadata) == Some(uid))
        .collect()
}

/// What a controller created or deleted and the shared cache does not show
/// yet, per owner uid, so a reconcile right after a change neither creates
/// nor deletes twice (kube-controller-manager's "expectations").
#[derive(Debug, Default)]
pub struct Expectations {
    owners: Mutex<HashMap<String, Pending>>,
}

#[derive(Debug, Default)]
struct Pending {
    created: HashMap<String, Instant>,
    deleted: HashMap<String, Instant>,
}

/// An owner's pods as the controller should count them.
#[derive(Debug, Default)]
pub struct Settled {
    /// Created pods the cache does not show yet.
    pub unseen_created: Vec<String>,
    /// Pods deleted that the cache still shows.
    pub deleted: HashSet<String>,
}

impl Expectations {
    /// Notes that `owner` created pod `name`.
    pub fn created(&self, owner: &str, name: &str) {
        let mut owners = self.owners.lock().expect("expectations lock");
        let pending = owners.entry(owner.to_owned()).or_default();
        pending.created.insert(name.to_owned(), Instant::now());
    }

    /// Notes that `owner` deleted pod `name`.
    pub fn deleted(&self, owner: &str, name: &str) {
        let mut owners = self.owners.lock().expect("expectations lock");
        let pending = owners.entry(owner.to_owned()).or_default();
        pending.deleted.insert(name.to_owned(), Instant::now());
    }

    /// Reconciles the notes of `owner` with the cached `pods` (the owner's
    /// pods whatever their state): forgets what the cache now shows (or
    /// what is older than the TTL) and returns what it does not show yet.
    pub fn settle(&self, owner: &str, pods: &[Arc<Pod>]) -> Settled {
        let mut owners = self.owners.lock().expect("expectations lock");
        let Some(pending) = owners.get_mut(owner) else {
            return Settled::default();
        };
        let cached: HashSet<&str> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| p.metadata.name.as_deref().unwrap_or(""))
            .collect();
        let fresh = |at: &Instant| at.elapsed() < EXPECTATION_TTL;
        pending
            .created
            .retain(|name, at| fresh(at) && !cached.contains(name.as_str()));
        pending
            .deleted
            .retain(|name, at| fresh(at) && cached.contains(name.as_str()));
        let settled = Settled {
            unseen_created: pending.created.keys().cloned().collect(),
            deleted: pending.deleted.keys().cloned().collect(),
        };
        if pending.created.is_empty() && pending.deleted.is_empty() {
            owners.remove(owner);
        }
        settled
    }

    /// Forgets `owner` (deleted).
    pub fn forget(&self, owner: &str) {
        self.owners.lock().expect("expectations lock").remove(owner);
    }
}

/// Creates `pods` (at most [`BURST`] at a time), noting each in
/// `expectations` under `owner`; the first error, after the others ran.
pub async fn create_all(
    client: &Client,
    expectations: &Expectations,
    owner: &str,
    pods: Vec<Pod>,
) -> Result<usize, kube::Error> {
    let results: Vec<Result<(), kube::Error>> = futures::stream::iter(pods)
        .map(|pod| async move {
            let namespace = pod.namespace().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
            let created = api.create(&PostParams::default(), &pod).await?;
            expectations.created(owner, &created.name_any());
            Ok(())
        })
        .buffer_unordered(BURST)
        .collect()
        .await;
    let created = results.iter().filter(|r| r.is_ok()).count();
    match results.into_iter().find_map(Result::err) {
        Some(error) => Err(error),
        None => Ok(created),
    }
}

/// Deletes `pods` (at most [`BURST`] at a time, each only if it is still
/// the same pod), noting each in `expectations` under `owner`; a pod
/// already gone counts as deleted.
pub async fn delete_all(
    client: &Client,
    expectations: &Expectations,
    owner: &str,
    pods: Vec<Arc<Pod>>,
) -> Result<(), kube::Error> {
    let results: Vec<Result<(), kube::Error>> = futures::stream::iter(pods)
        .map(|pod| async move {
            let namespace = pod.namespace().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: pod.uid(),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&pod.name_any(), &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => return Err(error),
            }
            expectations.deleted(owner, &pod.name_any());
            Ok(())
        })
        .buffer_unordered(BURST)
        .collect()
        .await;
    results
        .into_iter()
        .find_map(Result::err)
        .map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, extra: serde_json::Value) -> Arc<Pod> {
        let mut value = json!({"metadata": {"name": name, "namespace": "default"}});
        if let Some(status) = extra.get("status") {
            value["status"] = status.clone();
        }
        if let Some(deleting) = extra.get("deletionTimestamp") {
            value["metadata"]["deletionTimestamp"] = deleting.clone();
        }
        Arc::new(serde_json::from_value(value).unwrap())
    }

    #[test]
    fn hashes_are_stable_and_differ() {
        let a = hash_of(&json!({"image": "a"}));
        assert_eq!(a, hash_of(&json!({"image": "a"})));
        assert_ne!(a, hash_of(&json!({"image": "b"})));
        assert!(a.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let now: jiff::Timestamp = "2026-01-01T00:00:30Z".parse().unwrap();
        let ready = pod(
            "p",
            json!({"status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}),
        );
        assert!(is_ready(&ready));
        assert!(is_available(&ready, 10, now));
        assert!(!is_available(&ready, 60, now));
        assert!(!is_ready(&pod(
            "q",
            json!({"status": {"phase": "Running"}})
        )));
        assert!(!is_active(&pod(
            "r",
            json!({"status": {"phase": "Succeeded"}})
        )));
    }

    #[test]
    fn expectations_cover_the_cache_lag() {
        let expectations = Expectations::default();
        expectations.created("rs", "a");
        expectations.created("rs", "b");
        expectations.deleted("rs", "old");
        let settled = expectations.settle("rs", &[pod("a", json!({})), pod("old", json!({}))]);
        assert_eq!(settled.unseen_created, vec!["b".to_owned()]);
        assert!(settled.deleted.contains("old"));
        let settled = expectations.settle(
            "rs",
            &[
                pod("a", json!({})),
                pod("b", json!({})),
                pod("old", json!({"deletionTimestamp": "2026-01-01T00:00:00Z"})),
            ],
        );
        assert!(settled.unseen_created.is_empty());
        assert!(settled.deleted.is_empty());
    }

    #[test]
    fn selectors_need_labels_to_match() {
        let selector: LabelSelector =
            serde_json::from_value(json!({"matchLabels": {"app": "web"}})).unwrap();
        let labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
        assert!(selects(Some(&selector), &labels));
        assert!(!selects(Some(&selector), &BTreeMap::new()));
        assert!(!selects(Some(&LabelSelector::default()), &labels));
        assert!(!selects(None, &labels));
    }
}
