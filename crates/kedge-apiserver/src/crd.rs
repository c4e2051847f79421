//! CustomResourceDefinitions: turning a stored CRD into served resource
//! types, establishing it (status conditions and accepted names), and
//! removing its custom resources when it is deleted.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::meta::{self, UpdateScope};
use crate::resources::{ALL_VERBS, ResourceType, SUBRESOURCE_VERBS, ScalePaths, Subresource};
use crate::rest::{Api, finalizers};
use crate::status::{Reason, StatusError};
use crate::storage::{Change, PageRequest, resource_version_of};

/// The finalizer that holds a deleted CRD until its objects are gone.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";
/// How long the controller waits before watching again after an error.
const RETRY: Duration = Duration::from_secs(1);

fn crd_type(api: &Api) -> Result<Arc<ResourceType>, StatusError> {
    api.catalog
        .get("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        .ok_or_else(|| StatusError::internal("customresourcedefinitions are not served"))
}

fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The resource types a CRD serves, one per served version.
pub fn resource_types(crd: &Value) -> Vec<ResourceType> {
    let name = meta::meta_str(crd, "name").to_owned();
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or("").to_owned();
    let names = &spec["names"];
    let kind = names["kind"].as_str().unwrap_or("").to_owned();
    let plural = names["plural"].as_str().unwrap_or("").to_owned();
    let singular = names["singular"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| kind.to_lowercase());
    let list_kind = names["listKind"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{kind}List"));
    let namespaced = spec["scope"].as_str() != Some("Cluster");
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    let storage_version = versions
        .iter()
        .find(|v| v["storage"].as_bool() == Some(true))
        .and_then(|v| v["name"].as_str())
        .unwrap_or("")
        .to_owned();
    versions
        .iter()
        .filter(|v| v["served"].as_bool() == Some(true))
        .filter_map(|v| {
            let version = v["name"].as_str()?.to_owned();
            let mut subresources = Vec::new();
            if v.pointer("/subresources/status").is_some() {
                subresources.push(Subresource {
                    name: "status".into(),
                    group: group.clone(),
                    version: version.clone(),
                    kind: kind.clone(),
                    verbs: SUBRESOURCE_VERBS.iter().map(|s| (*s).to_owned()).collect(),
                });
            }
            let scale = v.pointer("/subresources/scale").map(|scale| ScalePaths {
                spec_replicas: scale["specReplicasPath"]
                    .as_str()
                    .unwrap_or(".spec.replicas")
                    .to_owned(),
                status_replicas: scale["statusReplicasPath"]
                    .as_str()
                    .unwrap_or(".status.replicas")
                    .to_owned(),
                label_selector: scale["labelSelectorPath"].as_str().map(str::to_owned),
            });
            if scale.is_some() {
                subresources.push(Subresource {
                    name: "scale".into(),
                    group: "autoscaling".into(),
                    version: "v1".into(),
                    kind: "Scale".into(),
                    verbs: SUBRESOURCE_VERBS.iter().map(|s| (*s).to_owned()).collect(),
                });
            }
            Some(ResourceType {
                group: group.clone(),
                version,
                kind: kind.clone(),
                list_kind: list_kind.clone(),
                plural: plural.clone(),
                singular: singular.clone(),
                namespaced,
                short_names: strings(names.get("shortNames")),
                categories: strings(names.get("categories")),
                verbs: ALL_VERBS.iter().map(|s| (*s).to_owned()).collect(),
                subresources,
                storage_version: storage_version.clone(),
                crd: Some(name.clone()),
                scale,
                schema: v.pointer("/schema/openAPIV3Schema").cloned().map(Arc::new),
                printer_columns: v["additionalPrinterColumns"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Registers the resource types of `crd` (replacing earlier ones), unless
/// it is being deleted.
fn register(api: &Api, crd: &Value) {
    let name = meta::meta_str(crd, "name");
    api.catalog.remove_crd(name);
    for resource in resource_types(crd) {
        api.catalog.insert(resource);
    }
}

/// Registers every stored CRD; run once before serving.
pub async fn load(api: &Api) -> Result<(), StatusError> {
    let crds = crd_type(api)?;
    let page = api
        .objects
        .list(&crds, None, PageRequest::default(), |_| true)
        .await?;
    for crd in &page.items {
        register(api, crd);
    }
    Ok(())
}

/// Keeps the catalog in step with the stored CRDs, establishes new ones and
/// cleans up deleted ones, until `token` is cancelled.
pub async fn run(api: Api, token: CancellationToken) {
    loop {
        if let Err(error) = watch_crds(&api, &token).await {
            tracing::warn!(%error, "CRD controller: watch ended; restarting");
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

async fn watch_crds(api: &Api, token: &CancellationToken) -> Result<(), StatusError> {
    let crds = crd_type(api)?;
    let page = api
        .objects
        .list(&crds, None, PageRequest::default(), |_| true)
        .await?;
    let revision: i64 = page.resource_version.parse().unwrap_or(0);
    for crd in &page.items {
        reconcile(api, &crds, crd).await?;
    }
    let mut changes = api.objects.watch(&crds, None, revision).await?;
    loop {
        let change = tokio::select! {
            _ = token.cancelled() => return Ok(()),
            change = changes.next() => change,
        };
        match change {
            None => return Ok(()),
            Some(Err(error)) => return Err(error),
            Some(Ok(Change::Put { object, .. })) => reconcile(api, &crds, &object).await?,
            Some(Ok(Change::Deleted { object })) => {
                api.catalog.remove_crd(meta::meta_str(&object, "name"))
            }
        }
    }
}

/// Brings one CRD's served types and status up to date.
async fn reconcile(api: &Api, crds: &ResourceType, crd: &Value) -> Result<(), StatusError> {
    let deleting = crd
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null());
    if deleting {
        return clean_up(api, crds, crd).await;
    }
    register(api, crd);
    let established = crd
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c["type"] == "Established" && c["status"] == "True")
        });
    let has_finalizer = finalizers(crd).iter().any(|f| f == CLEANUP_FINALIZER);
    if established
        && has_finalizer
        && crd.pointer("/status/acceptedNames") == crd.pointer("/spec/names")
    {
        return Ok(());
    }
    let now = meta::now_rfc3339();
    let mut new = crd.clone();
    let mut list = finalizers(crd);
    if !has_finalizer {
        list.push(CLEANUP_FINALIZER.to_owned());
    }
    new["metadata"]["finalizers"] = json!(list);
    new["status"] = json!({
        "acceptedNames": crd["spec"]["names"],
        "storedVersions": crd["spec"]["versions"].as_array().map(|versions| {
            versions.iter().filter(|v| v["storage"] == true).map(|v| v["name"].clone()).collect::<Vec<_>>()
        }).unwrap_or_default(),
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
    });
    // Finalizers through the main resource, conditions through status.
    let revision = resource_version_of(crd)?;
    let stored = match api
        .update_object(crds, crd, new.clone(), revision, UpdateScope::Main, false)
        .await
    {
        Ok(stored) => stored,
        Err(error) if matches!(error.reason, Reason::Conflict | Reason::NotFound) => return Ok(()),
        Err(error) => return Err(error),
    };
    let revision = resource_version_of(&stored)?;
    match api
        .update_object(crds, &stored, new, revision, UpdateScope::Status, false)
        .await
    {
        Ok(_) => Ok(()),
        Err(error) if matches!(error.reason, Reason::Conflict | Reason::NotFound) => Ok(()),
        Err(error) => Err(error),
    }
}

/// Deletes every custom resource of a deleted CRD, then releases it.
async fn clean_up(api: &Api, crds: &ResourceType, crd: &Value) -> Result<(), StatusError> {
    let types = resource_types(crd);
    if let Some(resource) = types.first() {
        let page = api
            .objects
            .list(resource, None, PageRequest::default(), |_| true)
            .await?;
        for object in &page.items {
            let namespace = object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str);
            match api
                .objects
                .delete(resource, namespace, meta::meta_str(object, "name"), None)
                .await
            {
                Ok(_) => {}
                Err(error) if error.reason == Reason::NotFound => {}
                Err(error) => return Err(error),
            }
        }
    }
    api.catalog.remove_crd(meta::meta_str(crd, "name"));
    let mut new = crd.clone();
    let remaining: Vec<String> = finalizers(crd)
        .into_iter()
        .filter(|f| f != CLEANUP_FINALIZER)
        .collect();
    new["metadata"]["finalizers"] = json!(remaining);
    let revision = resource_version_of(crd)?;
    match api
        .update_object(crds, crd, new, revision, UpdateScope::Main, false)
        .await
    {
        Ok(_) => Ok(()),
        Err(error) if matches!(error.reason, Reason::Conflict | Reason::NotFound) => Ok(()),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_versions_become_resource_types() {
        let crd = json!({
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "scope": "Namespaced",
                "names": {"kind": "Widget", "plural": "widgets", "shortNames": ["wd"]},
                "versions": [
                    {"name": "v1", "served": true, "storage": true,
                     "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.size", "statusReplicasPath": ".status.size"}},
                     "schema": {"openAPIV3Schema": {"type": "object"}}},
                    {"name": "v1beta1", "served": true, "storage": false},
                    {"name": "v1alpha1", "served": false, "storage": false},
                ],
            },
        });
        let types = resource_types(&crd);
        assert_eq!(types.len(), 2);
        let v1 = &types[0];
        assert_eq!(
            (
                v1.kind.as_str(),
                v1.list_kind.as_str(),
                v1.singular.as_str()
            ),
            ("Widget", "WidgetList", "widget")
        );
        assert!(v1.namespaced && v1.has_status());
        assert_eq!(
            v1.scale.as_ref().map(|s| s.spec_replicas.as_str()),
            Some(".spec.size")
        );
        assert_eq!(types[1].storage_version, "v1");
        assert!(!types[1].has_status());
        assert_eq!(
            v1.key(Some("ns"), "w"),
            "/registry/example.com/widgets/ns/w"
        );
    }
}
