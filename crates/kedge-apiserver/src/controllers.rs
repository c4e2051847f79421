//! The controllers every Kubernetes API user takes for granted, run inside
//! the API server: bootstrap objects (the four system namespaces, the
//! `kubernetes` service), per-namespace defaults (the `default` service
//! account and the `kube-root-ca.crt` config map), namespace termination,
//! and the garbage collector (owner references, foreground and orphan
//! deletion).
//!
//! They make a pass over all objects whenever the store changed, at most
//! once per resync period; each pass recomputes what is due from the
//! objects themselves, so no event can be lost.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::meta::{self, UpdateScope};
use crate::resources::ResourceType;
use crate::rest::{Api, finalizers};
use crate::status::{Reason, StatusError};
use crate::storage::{PageRequest, resource_version_of};

/// The namespaces every cluster has.
pub const SYSTEM_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];
/// How often pending work (terminating namespaces, foreground deletions)
/// is re-checked without an event.
const RESYNC: Duration = Duration::from_secs(2);

/// What the controllers need beyond the API.
#[derive(Debug, Clone)]
pub struct ControllerSettings {
    /// PEM of the cluster CA, published as `kube-root-ca.crt`.
    pub ca_pem: String,
    /// The address the `kubernetes` service's endpoints point at.
    pub advertise_address: String,
    /// The API server's port.
    pub port: u16,
}

/// Creates the bootstrap objects if missing.
pub async fn bootstrap(api: &Api, settings: &ControllerSettings) -> Result<(), StatusError> {
    let namespaces = resource(api, "", "namespaces")?;
    for name in SYSTEM_NAMESPACES {
        let object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        create_if_absent(api, &namespaces, object).await?;
    }
    let services = resource(api, "", "services")?;
    let cluster_ip = api.admission.service_range().first().to_string();
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ip,
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": settings.port}]},
    });
    create_if_absent(api, &services, service).await?;
    let endpoints = resource(api, "", "endpoints")?;
    let object = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default"},
        "subsets": [{"addresses": [{"ip": settings.advertise_address}],
                     "ports": [{"name": "https", "port": settings.port, "protocol": "TCP"}]}],
    });
    create_if_absent(api, &endpoints, object).await?;
    Ok(())
}

fn resource(api: &Api, group: &str, plural: &str) -> Result<Arc<ResourceType>, StatusError> {
    api.catalog
        .get(group, "v1", plural)
        .ok_or_else(|| StatusError::internal(format!("{plural} are not served")))
}

async fn create_if_absent(
    api: &Api,
    resource: &ResourceType,
    object: Value,
) -> Result<(), StatusError> {
    // Look first: creating again would run admission (a ClusterIP already
    // held by the existing object) before noticing it exists.
    let namespace = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str);
    let name = meta::meta_str(&object, "name");
    if api
        .objects
        .try_get(resource, namespace, name)
        .await?
        .is_some()
    {
        return Ok(());
    }
    match api.create_object(resource, object, false).await {
        Ok(_) => Ok(()),
        Err(error) if error.reason == Reason::AlreadyExists => Ok(()),
        Err(error) => Err(error),
    }
}

/// Runs the controllers until `token` is cancelled. A pass runs when the
/// store's revision moved since the last pass, at most once per resync
/// period, so bursts of writes cost one pass.
pub async fn run(api: Api, settings: ControllerSettings, token: CancellationToken) {
    loop {
        // (Re)build the index, then follow the store; a watch that cannot
        // go on (compaction, falling behind) starts over.
        let mut index = match Index::load(&api).await {
            Ok(index) => index,
            Err(error) => {
                tracing::warn!(%error, "controllers: cannot list the objects; retrying");
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(RESYNC) => continue,
                }
            }
        };
        let mut changes = match api.objects.store().watch(REGISTRY, index.revision).await {
            Ok(changes) => changes,
            Err(error) => {
                tracing::warn!(%error, "controllers: cannot watch the store; retrying");
                continue;
            }
        };
        let mut ticker = tokio::time::interval(RESYNC);
        let mut reconciled_at = None;
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                change = changes.next() => match change {
                    Some(Ok(event)) => index.apply(&api, &event),
                    Some(Err(error)) => {
                        tracing::info!(%error, "controllers: watch ended; reloading");
                        break;
                    }
                    None => break,
                },
                _ = ticker.tick() => {
                    if reconciled_at == Some(index.revision) {
                        continue;
                    }
                    // Borrowed, not cloned: at 100,000 nodes the index
                    // holds several hundred thousand objects, and a copy of
                    // them every pass cost a fifth of cloudcore's time.
                    let all: Vec<&Entry> = index.objects.values().collect();
                    match reconcile(&api, &settings, &all).await {
                        Ok(()) => reconciled_at = Some(index.revision),
                        Err(error) => tracing::warn!(%error, "controllers: reconcile failed; retrying"),
                    }
                }
            }
        }
    }
}

/// The storage prefix of every object.
const REGISTRY: &str = "/registry/";

/// One object the controllers know of, with its resource type.
type Entry = (Arc<ResourceType>, Value);

/// What the controllers know of every object, kept current from one watch
/// of the whole store: namespaces whole, everything else as the metadata
/// the garbage collector needs. Memory stays small per object and no pass
/// lists the store.
struct Index {
    objects: BTreeMap<String, Entry>,
    revision: i64,
}

impl Index {
    /// Lists every resource type at one revision.
    async fn load(api: &Api) -> Result<Self, StatusError> {
        let revision = api.objects.current_revision().await?;
        let mut objects = BTreeMap::new();
        let mut seen_plurals = HashSet::new();
        for resource in api.catalog.all() {
            // Every version of a resource shares one set of objects.
            if !seen_plurals.insert((resource.group.clone(), resource.plural.clone())) {
                continue;
            }
            let request = PageRequest {
                revision: Some(revision),
                ..PageRequest::default()
            };
            let page = api.objects.list(&resource, None, request, |_| true).await?;
            for object in page.items {
                let key = resource.key(namespace_of(&object), meta::meta_str(&object, "name"));
                objects.insert(key, (resource.clone(), slim(&resource, object)));
            }
        }
        Ok(Self { objects, revision })
    }

    /// Applies one change of the store.
    fn apply(&mut self, api: &Api, event: &kedge_store::Event) {
        self.revision = event.revision();
        let key = event.key();
        let Some(resource) = resource_of_key(api, key) else {
            return;
        };
        match event {
            kedge_store::Event::Put { kv, .. } => {
                match serde_json::from_slice::<Value>(&kv.value) {
                    Ok(mut object) => {
                        crate::storage::set_resource_version(&mut object, kv.mod_revision);
                        self.objects
                            .insert(key.to_owned(), (resource.clone(), slim(&resource, object)));
                    }
                    Err(error) => tracing::warn!(%key, %error, "controllers: undecodable object"),
                }
            }
            kedge_store::Event::Delete { .. } => {
                self.objects.remove(key);
            }
        }
    }
}

/// The resource type stored under `key` (`/registry/<group>/<plural>/…`).
fn resource_of_key(api: &Api, key: &str) -> Option<Arc<ResourceType>> {
    let mut parts = key.strip_prefix(REGISTRY)?.splitn(3, '/');
    let group = match parts.next()? {
        "core" => "",
        group => group,
    };
    let plural = parts.next()?;
    api.catalog
        .all()
        .into_iter()
        .find(|r| r.group == group && r.plural == plural)
}

/// What the index keeps of an object: namespaces whole, others their
/// identifying and ownership metadata.
fn slim(resource: &ResourceType, object: Value) -> Value {
    if resource.group.is_empty() && resource.plural == "namespaces" {
        return object;
    }
    let mut metadata = serde_json::Map::new();
    if let Some(full) = object.get("metadata").and_then(Value::as_object) {
        for field in [
            "name",
            "namespace",
            "uid",
            "resourceVersion",
            "ownerReferences",
            "finalizers",
            "deletionTimestamp",
        ] {
            if let Some(value) = full.get(field) {
                metadata.insert(field.to_owned(), value.clone());
            }
        }
    }
    json!({ "metadata": metadata })
}

/// One pass over all objects: namespace defaults and termination, and
/// garbage collection.
async fn reconcile(
    api: &Api,
    settings: &ControllerSettings,
    all: &[&Entry],
) -> Result<(), StatusError> {
    namespaces(api, settings, all).await?;
    garbage_collect(api, all).await
}

fn namespace_of(object: &Value) -> Option<&str> {
    object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
}

fn is_deleting(object: &Value) -> bool {
    object
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

async fn namespaces(
    api: &Api,
    settings: &ControllerSettings,
    all: &[&Entry],
) -> Result<(), StatusError> {
    let namespace_type = resource(api, "", "namespaces")?;
    for (_, namespace) in all
        .iter()
        .filter(|(r, _)| r.group.is_empty() && r.plural == "namespaces")
    {
        let name = meta::meta_str(namespace, "name").to_owned();
        if !is_deleting(namespace) {
            let has = |plural: &str, object_name: &str| {
                all.iter().any(|(r, o)| {
                    r.group.is_empty()
                        && r.plural == plural
                        && namespace_of(o) == Some(&name)
                        && meta::meta_str(o, "name") == object_name
                })
            };
            if !has("serviceaccounts", "default") {
                let account = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                                     "metadata": {"name": "default", "namespace": name}});
                create_ignoring_races(api, &*resource(api, "", "serviceaccounts")?, account)
                    .await?;
            }
            if !has("configmaps", "kube-root-ca.crt") {
                let config_map = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "kube-root-ca.crt", "namespace": name,
                                 "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
                    "data": {"ca.crt": settings.ca_pem}});
                create_ignoring_races(api, &*resource(api, "", "configmaps")?, config_map).await?;
            }
            continue;
        }
        // Terminating: delete the content, then release the namespace.
        let mut remaining = 0;
        for (resource, object) in all
            .iter()
            .filter(|(r, o)| r.namespaced && namespace_of(o) == Some(&name))
        {
            remaining += 1;
            if is_deleting(object) && resource.kind != "Pod" {
                continue;
            }
            let options = json!({"propagationPolicy": "Background"});
            match api
                .delete_object(
                    resource,
                    Some(&name),
                    meta::meta_str(object, "name"),
                    &options,
                    false,
                )
                .await
            {
                Ok(_) => {}
                Err(error) if matches!(error.reason, Reason::NotFound | Reason::Conflict) => {}
                Err(error) => return Err(error),
            }
        }
        if remaining == 0 {
            let spec_finalizers = namespace
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty());
            let mut new = namespace.clone();
            new["spec"]["finalizers"] = json!([]);
            if spec_finalizers || finalizers(namespace).is_empty() {
                let revision = resource_version_of(namespace)?;
                release(api, &namespace_type, namespace, new, revision).await?;
            }
        }
    }
    Ok(())
}

/// Writes `new` (finalizers removed) over `old`; the update deletes the
/// object when nothing holds it any more.
async fn release(
    api: &Api,
    resource: &ResourceType,
    old: &Value,
    new: Value,
    revision: Option<i64>,
) -> Result<(), StatusError> {
    match api
        .update_object(resource, old, new, revision, UpdateScope::Main, false)
        .await
    {
        Ok(_) => Ok(()),
        Err(error) if matches!(error.reason, Reason::NotFound | Reason::Conflict) => Ok(()),
        Err(error) => Err(error),
    }
}

async fn create_ignoring_races(
    api: &Api,
    resource: &ResourceType,
    object: Value,
) -> Result<(), StatusError> {
    match api.create_object(resource, object, false).await {
        Ok(_) => Ok(()),
        Err(error)
            if matches!(
                error.reason,
                Reason::AlreadyExists | Reason::NotFound | Reason::Forbidden
            ) =>
        {
            Ok(())
        }
        Err(error) => Err(error),
    }
}

fn owner_uids(object: &Value) -> Vec<String> {
    object
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Deletes dependents whose owners are all gone, finishes foreground
/// deletions whose dependents are gone, and orphans dependents of owners
/// deleted with the `orphan` finalizer.
async fn garbage_collect(api: &Api, all: &[&Entry]) -> Result<(), StatusError> {
    let uids: HashMap<&str, &Entry> = all
        .iter()
        .map(|&entry| (meta::meta_str(&entry.1, "uid"), entry))
        .collect();
    let mut dependents: HashMap<&str, Vec<&Entry>> = HashMap::new();
    for &entry in all {
        for owner in owner_uids(&entry.1) {
            if let Some((owner_uid, _)) = uids.get_key_value(owner.as_str()) {
                dependents.entry(owner_uid).or_default().push(entry);
            }
        }
    }

    for (resource, object) in all {
        let owners = owner_uids(object);
        if owners.is_empty() || is_deleting(object) {
            continue;
        }
        let live_owners: Vec<&String> = owners
            .iter()
            .filter(|uid| {
                // An owner deleted in the foreground or with orphaning still
                // holds its dependents: they go first, or are released.
                uids.get(uid.as_str()).is_some_and(|(_, owner)| {
                    !is_deleting(owner)
                        || has_finalizer(owner, "foregroundDeletion")
                        || has_finalizer(owner, "orphan")
                })
            })
            .collect();
        if live_owners.is_empty() {
            let foreground = owners.iter().any(|uid| {
                uids.get(uid.as_str())
                    .is_some_and(|(_, owner)| has_finalizer(owner, "foregroundDeletion"))
            });
            let policy = if foreground {
                "Foreground"
            } else {
                "Background"
            };
            let options = json!({"propagationPolicy": policy});
            let name = meta::meta_str(object, "name");
            match api
                .delete_object(resource, namespace_of(object), name, &options, false)
                .await
            {
                Ok(_) => {
                    tracing::debug!(kind = %resource.kind, %name, "garbage collector deleted a dependent")
                }
                Err(error) if matches!(error.reason, Reason::NotFound | Reason::Conflict) => {}
                Err(error) => return Err(error),
            }
        }
    }

    for (resource, object) in all.iter().filter(|(_, o)| is_deleting(o)) {
        let uid = meta::meta_str(object, "uid");
        let children = dependents.get(uid).cloned().unwrap_or_default();
        if has_finalizer(object, "foregroundDeletion") {
            // Dependents of a foreground deletion go first.
            for (child_resource, child) in &children {
                if !is_deleting(child) {
                    let options = json!({"propagationPolicy": "Foreground"});
                    let name = meta::meta_str(child, "name");
                    match api
                        .delete_object(child_resource, namespace_of(child), name, &options, false)
                        .await
                    {
                        Ok(_) => {}
                        Err(error)
                            if matches!(error.reason, Reason::NotFound | Reason::Conflict) => {}
                        Err(error) => return Err(error),
                    }
                }
            }
            if children.is_empty() {
                drop_finalizer(api, resource, object, "foregroundDeletion").await?;
            }
        } else if has_finalizer(object, "orphan") {
            for (child_resource, entry) in &children {
                let Some(child) = fresh(api, child_resource, entry).await? else {
                    continue;
                };
                let child = &child;
                let mut new = child.clone();
                if let Some(refs) = new
                    .pointer_mut("/metadata/ownerReferences")
                    .and_then(Value::as_array_mut)
                {
                    refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid));
                    // As upstream, an empty list is not kept.
                    if refs.is_empty()
                        && let Some(meta) = new["metadata"].as_object_mut()
                    {
                        meta.remove("ownerReferences");
                    }
                }
                let revision = resource_version_of(child)?;
                release(api, child_resource, child, new, revision).await?;
            }
            drop_finalizer(api, resource, object, "orphan").await?;
        }
    }
    Ok(())
}

fn has_finalizer(object: &Value, finalizer: &str) -> bool {
    finalizers(object).iter().any(|f| f == finalizer)
}

async fn drop_finalizer(
    api: &Api,
    resource: &ResourceType,
    object: &Value,
    finalizer: &str,
) -> Result<(), StatusError> {
    let Some(current) = fresh(api, resource, object).await? else {
        return Ok(());
    };
    let mut new = current.clone();
    let remaining: Vec<String> = finalizers(&current)
        .into_iter()
        .filter(|f| f != finalizer)
        .collect();
    new["metadata"]["finalizers"] = json!(remaining);
    let revision = resource_version_of(&current)?;
    release(api, resource, &current, new, revision).await
}

/// The stored object an index entry stands for, if it is still the same
/// object (same uid).
async fn fresh(
    api: &Api,
    resource: &ResourceType,
    entry: &Value,
) -> Result<Option<Value>, StatusError> {
    let current = api
        .objects
        .try_get(resource, namespace_of(entry), meta::meta_str(entry, "name"))
        .await?;
    Ok(current.filter(|c| meta::meta_str(c, "uid") == meta::meta_str(entry, "uid")))
}
