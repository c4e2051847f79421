//! `/openapi/v3`: the root document and one document per group-version.
//!
//! kubectl reads these before `create`, `apply`, `replace` and `edit` to
//! learn whether the server validates fields itself: a PATCH operation that
//! carries the kind's `x-kubernetes-group-version-kind` and a
//! `fieldValidation` query parameter tells it so, and kubectl then sends
//! `fieldValidation=Strict` instead of validating on its side. Built-in
//! kinds get their schemas (from `k8s-openapi`, for `kubectl explain`) and
//! custom resources with a schema get theirs under `components.schemas`.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::{Map, Value, json};

use crate::resources::{Catalog, ResourceType};

/// The path of a group-version's document: `api/v1` or `apis/<g>/<v>`.
fn group_version_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// Every served group-version.
fn group_versions(catalog: &Catalog) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = catalog
        .all()
        .iter()
        .map(|r| (r.group.clone(), r.version.clone()))
        .collect();
    pairs.sort();
    pairs.dedup();
    pairs
}

/// A hash of a document, for the `?hash=` clients cache by.
fn hash(document: &Value) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in document.to_string().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016X}")
}

/// The document for `/openapi/v3/<rest>`: the root for an empty `rest`,
/// else the group-version document; `None` when not served.
pub fn document(catalog: &Catalog, rest: &[&str]) -> Option<Value> {
    match rest {
        [] | [""] => Some(root(catalog)),
        ["api", version] => group_version_document(catalog, "", version),
        ["apis", group, version] => group_version_document(catalog, group, version),
        _ => None,
    }
}

fn root(catalog: &Catalog) -> Value {
    let mut paths = Map::new();
    for (group, version) in group_versions(catalog) {
        let path = group_version_path(&group, &version);
        let hash = group_version_document(catalog, &group, &version)
            .map(|d| hash(&d))
            .unwrap_or_default();
        paths.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
        );
    }
    json!({"paths": paths})
}

fn gvk(resource: &ResourceType) -> Value {
    json!({"group": resource.group, "version": resource.version, "kind": resource.kind})
}

/// The schema name kubectl looks components up by.
fn schema_name(resource: &ResourceType) -> String {
    let group = if resource.group.is_empty() {
        "core"
    } else {
        &resource.group
    };
    let reversed: Vec<&str> = group.split('.').rev().collect();
    format!(
        "{}.{}.{}",
        reversed.join("."),
        resource.version,
        resource.kind
    )
}

fn group_version_document(catalog: &Catalog, group: &str, version: &str) -> Option<Value> {
    let types = catalog.group_version(group, version);
    if types.is_empty() {
        return None;
    }
    let prefix = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for resource in &types {
        let item_path = if resource.namespaced {
            format!(
                "{prefix}/namespaces/{{namespace}}/{}/{{name}}",
                resource.plural
            )
        } else {
            format!("{prefix}/{}/{{name}}", resource.plural)
        };
        let parameters = json!([
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        ]);
        let operation = |verb: &str| {
            json!({
                "operationId": format!("{verb}{}", resource.kind),
                "x-kubernetes-action": verb,
                "x-kubernetes-group-version-kind": gvk(resource),
                "parameters": parameters,
                "responses": {"200": {"description": "OK"}},
            })
        };
        paths.insert(
            item_path,
            json!({"get": operation("get"), "put": operation("put"), "patch": operation("patch"), "delete": operation("delete")}),
        );
        if resource.crd.is_none() {
            add_builtin_schemas(resource, &mut schemas);
        }
        if let Some(schema) = &resource.schema {
            let mut schema = schema.as_ref().clone();
            if let Some(map) = schema.as_object_mut() {
                map.insert(
                    "x-kubernetes-group-version-kind".into(),
                    json!([gvk(resource)]),
                );
            }
            schemas.insert(schema_name(resource), schema);
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{}.0", crate::discovery::KUBERNETES_MINOR)},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// The schemas of one built-in kind and everything it references, keyed
/// by their OpenAPI names (`io.k8s.api.core.v1.Pod` …), and the kind's own
/// name.
type KindSchemas = (String, Map<String, Value>);

fn schemas_of<T: schemars::JsonSchema>() -> KindSchemas {
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    let reference = generator.subschema_for::<T>();
    let name = reference
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.rsplit('/').next())
        .unwrap_or_default()
        .to_owned();
    (name, generator.take_definitions(true))
}

/// Built-in schemas by (group, kind), computed once.
static BUILTIN: LazyLock<HashMap<(&'static str, &'static str), KindSchemas>> =
    LazyLock::new(|| {
        use k8s_openapi::api::{apps, batch, coordination, core, discovery, rbac};
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions;
        HashMap::from([
            (("", "Namespace"), schemas_of::<core::v1::Namespace>()),
            (("", "Node"), schemas_of::<core::v1::Node>()),
            (("", "Pod"), schemas_of::<core::v1::Pod>()),
            (("", "ConfigMap"), schemas_of::<core::v1::ConfigMap>()),
            (("", "Secret"), schemas_of::<core::v1::Secret>()),
            (("", "Service"), schemas_of::<core::v1::Service>()),
            (("", "Endpoints"), schemas_of::<core::v1::Endpoints>()),
            (("", "Event"), schemas_of::<core::v1::Event>()),
            (
                ("", "ServiceAccount"),
                schemas_of::<core::v1::ServiceAccount>(),
            ),
            (
                ("", "PersistentVolumeClaim"),
                schemas_of::<core::v1::PersistentVolumeClaim>(),
            ),
            (("apps", "Deployment"), schemas_of::<apps::v1::Deployment>()),
            (("apps", "ReplicaSet"), schemas_of::<apps::v1::ReplicaSet>()),
            (
                ("apps", "StatefulSet"),
                schemas_of::<apps::v1::StatefulSet>(),
            ),
            (("apps", "DaemonSet"), schemas_of::<apps::v1::DaemonSet>()),
            (("batch", "Job"), schemas_of::<batch::v1::Job>()),
            (
                ("coordination.k8s.io", "Lease"),
                schemas_of::<coordination::v1::Lease>(),
            ),
            (
                ("discovery.k8s.io", "EndpointSlice"),
                schemas_of::<discovery::v1::EndpointSlice>(),
            ),
            (
                ("rbac.authorization.k8s.io", "Role"),
                schemas_of::<rbac::v1::Role>(),
            ),
            (
                ("rbac.authorization.k8s.io", "ClusterRole"),
                schemas_of::<rbac::v1::ClusterRole>(),
            ),
            (
                ("rbac.authorization.k8s.io", "RoleBinding"),
                schemas_of::<rbac::v1::RoleBinding>(),
            ),
            (
                ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
                schemas_of::<rbac::v1::ClusterRoleBinding>(),
            ),
            (
                ("apiextensions.k8s.io", "CustomResourceDefinition"),
                schemas_of::<apiextensions::v1::CustomResourceDefinition>(),
            ),
        ])
    });

/// Adds the schemas of a built-in kind, the kind's own marked with its
/// group-version-kind as kube-apiserver does.
fn add_builtin_schemas(resource: &ResourceType, schemas: &mut Map<String, Value>) {
    let Some((name, definitions)) = BUILTIN
        .iter()
        .find(|((group, kind), _)| *group == resource.group && *kind == resource.kind)
        .map(|(_, schemas)| schemas)
    else {
        return;
    };
    for (key, schema) in definitions {
        schemas.entry(key.clone()).or_insert_with(|| schema.clone());
    }
    if let Some(own) = schemas.get_mut(name).and_then(Value::as_object_mut) {
        own.insert(
            "x-kubernetes-group-version-kind".into(),
            json!([gvk(resource)]),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_lists_every_group_version() {
        let catalog = Catalog::new();
        let root = document(&catalog, &[]).expect("root");
        let url = root["paths"]["apis/apps/v1"]["serverRelativeURL"]
            .as_str()
            .expect("apps/v1");
        assert!(url.starts_with("/openapi/v3/apis/apps/v1?hash="));
        assert!(root["paths"]["api/v1"].is_object());
    }

    #[test]
    fn patch_operations_announce_field_validation() {
        let catalog = Catalog::new();
        let core = document(&catalog, &["api", "v1"]).expect("core");
        let patch = &core["paths"]["/api/v1/namespaces/{namespace}/configmaps/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "ConfigMap"
        );
        assert!(
            patch["parameters"]
                .as_array()
                .expect("parameters")
                .iter()
                .any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
        );
        assert!(document(&catalog, &["apis", "nope", "v1"]).is_none());
    }
}
