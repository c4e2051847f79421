//! Object metadata on create and update, as kube-apiserver's generic
//! registry sets it: names and generated names, namespaces, uid,
//! creationTimestamp, generation, and the split between an object's spec
//! and its status subresource.

use serde_json::{Map, Value, json};

use crate::resources::ResourceType;
use crate::status::{FieldError, StatusError};

/// The characters of generated name suffixes (no vowels, no look-alikes),
/// as upstream's `utilrand.String`.
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
/// Length of a generated name suffix.
const SUFFIX_LEN: usize = 5;
/// The longest name a generated name may have.
const MAX_GENERATED_NAME: usize = 63;

/// The current time as Kubernetes writes timestamps: RFC 3339 in UTC with
/// second precision (`2024-05-01T10:00:00Z`).
pub fn now_rfc3339() -> String {
    format_timestamp(jiff::Timestamp::now())
}

/// `timestamp` in Kubernetes' form (whole seconds, `Z`).
pub fn format_timestamp(timestamp: jiff::Timestamp) -> String {
    let seconds = timestamp.as_second();
    jiff::Timestamp::from_second(seconds)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

/// Parses a Kubernetes timestamp.
pub fn parse_timestamp(text: &str) -> Option<jiff::Timestamp> {
    text.parse().ok()
}

/// Whether objects of this type carry `metadata.generation`, bumped on
/// every spec change (workloads, CRDs and custom resources).
pub fn tracks_generation(resource: &ResourceType) -> bool {
    resource.crd.is_some()
        || matches!(
            resource.group.as_str(),
            "apps" | "batch" | "apiextensions.k8s.io" | "policy" | "networking.k8s.io"
        )
}

/// The metadata map of `object`, created if absent. Fails when `metadata`
/// is not an object.
pub fn metadata_mut(object: &mut Value) -> Result<&mut Map<String, Value>, StatusError> {
    let map = object
        .as_object_mut()
        .ok_or_else(|| StatusError::bad_request("the request body must be a JSON object"))?;
    let metadata = map.entry("metadata").or_insert_with(|| json!({}));
    if metadata.is_null() {
        *metadata = json!({});
    }
    metadata
        .as_object_mut()
        .ok_or_else(|| StatusError::bad_request("metadata must be an object"))
}

/// `metadata.<field>` as a string, or "".
pub fn meta_str<'a>(object: &'a Value, field: &str) -> &'a str {
    object
        .get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// A random suffix for `generateName`.
fn random_suffix() -> String {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes
        .iter()
        .take(SUFFIX_LEN)
        .map(|b| char::from(SUFFIX_ALPHABET[usize::from(*b) % SUFFIX_ALPHABET.len()]))
        .collect()
}

/// Checks `apiVersion` and `kind` of a request body against the type being
/// written, filling them in when absent.
pub fn check_type(object: &mut Value, api_version: &str, kind: &str) -> Result<(), StatusError> {
    let map = object
        .as_object_mut()
        .ok_or_else(|| StatusError::bad_request("the request body must be a JSON object"))?;
    for (field, expected, label) in [
        ("apiVersion", api_version, "API version"),
        ("kind", kind, "kind"),
    ] {
        match map.get(field).and_then(Value::as_str) {
            None | Some("") => {
                map.insert(field.to_owned(), json!(expected));
            }
            Some(given) if given == expected => {}
            Some(given) => {
                return Err(StatusError::bad_request(format!(
                    "the {label} in the data ({given}) does not match the expected {label} ({expected})"
                )));
            }
        }
    }
    Ok(())
}

/// Sets the namespace of `object` from the request path, refusing a
/// different one in the body.
pub fn check_namespace(
    object: &mut Value,
    resource: &ResourceType,
    path_namespace: Option<&str>,
) -> Result<(), StatusError> {
    let metadata = metadata_mut(object)?;
    if !resource.namespaced {
        metadata.remove("namespace");
        return Ok(());
    }
    let Some(path_namespace) = path_namespace else {
        return Err(StatusError::bad_request(
            "the namespace of the object must be given in the request path",
        ));
    };
    match metadata.get("namespace").and_then(Value::as_str) {
        None | Some("") => {
            metadata.insert("namespace".to_owned(), json!(path_namespace));
            Ok(())
        }
        Some(given) if given == path_namespace => Ok(()),
        Some(_) => Err(StatusError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
    }
}

/// Prepares a new object for storage: name (or a generated one), uid,
/// creationTimestamp, generation; clears what clients may not set
/// (resourceVersion, deletion fields, status of types with a status
/// subresource, except nodes).
pub fn prepare_create(
    resource: &ResourceType,
    object: &mut Value,
    now: &str,
) -> Result<(), StatusError> {
    let metadata = metadata_mut(object)?;
    let name = metadata.get("name").and_then(Value::as_str).unwrap_or("");
    if name.is_empty() {
        let prefix = metadata
            .get("generateName")
            .and_then(Value::as_str)
            .unwrap_or("");
        if prefix.is_empty() {
            return Err(StatusError::invalid(
                &resource.group,
                &resource.kind,
                "",
                &[FieldError::required(
                    "metadata.name",
                    "name or generateName is required",
                )],
            ));
        }
        let keep = prefix.len().min(MAX_GENERATED_NAME - SUFFIX_LEN);
        let prefix: String = prefix.chars().take(keep).collect();
        metadata.insert(
            "name".to_owned(),
            json!(format!("{prefix}{}", random_suffix())),
        );
    }
    metadata.insert("uid".to_owned(), json!(uuid::Uuid::new_v4().to_string()));
    metadata.insert("creationTimestamp".to_owned(), json!(now));
    for field in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    ] {
        metadata.remove(field);
    }
    if tracks_generation(resource) {
        metadata.insert("generation".to_owned(), json!(1));
    } else {
        metadata.remove("generation");
    }
    if resource.has_status()
        && resource.kind != "Node"
        && let Some(map) = object.as_object_mut()
    {
        map.remove("status");
    }
    Ok(())
}

/// What an update writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateScope {
    /// The object itself: status (when it is a subresource) is kept.
    Main,
    /// The `status` subresource: only status changes.
    Status,
}

/// Prepares an update of `old` to `new` (the request body, after any
/// patch): keeps the fields an update may not change, and bumps
/// `generation` when the spec changed. `path_name` is the name in the URL.
pub fn prepare_update(
    resource: &ResourceType,
    old: &Value,
    new: &mut Value,
    scope: UpdateScope,
    path_name: &str,
) -> Result<(), StatusError> {
    let body_name = meta_str(new, "name").to_owned();
    if !body_name.is_empty() && body_name != path_name {
        return Err(StatusError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({path_name})"
        )));
    }
    let old_meta = old.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let old_uid = meta_str(old, "uid").to_owned();
    {
        let metadata = metadata_mut(new)?;
        let body_uid = metadata.get("uid").and_then(Value::as_str).unwrap_or("");
        if !body_uid.is_empty() && body_uid != old_uid {
            return Err(StatusError::conflict(
                &resource.group,
                &resource.plural,
                path_name,
                &format!(
                    "Precondition failed: UID in precondition: {body_uid}, UID in object meta: {old_uid}"
                ),
            ));
        }
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match old_meta.get(field) {
                Some(value) => {
                    metadata.insert(field.to_owned(), value.clone());
                }
                None => {
                    metadata.remove(field);
                }
            }
        }
        metadata.remove("selfLink");
    }

    match scope {
        UpdateScope::Main => {
            if resource.has_status() {
                copy_field(old, new, "status");
            }
        }
        UpdateScope::Status => {
            // Everything but status (and, as upstream allows, labels and
            // annotations of the status writer) comes from the stored object.
            let status = new.get("status").cloned();
            let labels = new.get("metadata").and_then(|m| m.get("labels")).cloned();
            let annotations = new
                .get("metadata")
                .and_then(|m| m.get("annotations"))
                .cloned();
            let resource_version = new
                .get("metadata")
                .and_then(|m| m.get("resourceVersion"))
                .cloned();
            *new = old.clone();
            let metadata = metadata_mut(new)?;
            for (field, value) in [
                ("labels", labels),
                ("annotations", annotations),
                ("resourceVersion", resource_version),
            ] {
                match value {
                    Some(value) => {
                        metadata.insert(field.to_owned(), value);
                    }
                    None => {
                        metadata.remove(field);
                    }
                }
            }
            if let (Some(map), Some(status)) = (new.as_object_mut(), status) {
                map.insert("status".to_owned(), status);
            }
        }
    }

    if tracks_generation(resource) && scope == UpdateScope::Main && spec_changed(resource, old, new)
    {
        let generation = old_meta
            .get("generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        metadata_mut(new)?.insert("generation".to_owned(), json!(generation + 1));
    }
    Ok(())
}

/// Whether an update changed the spec: for custom resources and CRDs
/// everything but metadata and status counts, as upstream.
fn spec_changed(resource: &ResourceType, old: &Value, new: &Value) -> bool {
    if resource.crd.is_some() || resource.kind == "CustomResourceDefinition" {
        let strip = |object: &Value| -> Value {
            let mut object = object.clone();
            if let Some(map) = object.as_object_mut() {
                map.remove("metadata");
                map.remove("status");
            }
            object
        };
        return strip(old) != strip(new);
    }
    old.get("spec") != new.get("spec")
}

fn copy_field(from: &Value, to: &mut Value, field: &str) {
    if let Some(map) = to.as_object_mut() {
        match from.get(field) {
            Some(value) => {
                map.insert(field.to_owned(), value.clone());
            }
            None => {
                map.remove(field);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Catalog;

    fn resource(group: &str, plural: &str) -> ResourceType {
        Catalog::new()
            .get(group, "v1", plural)
            .expect("served")
            .as_ref()
            .clone()
    }

    #[test]
    fn create_generates_names_and_sets_identity() {
        let deployments = resource("apps", "deployments");
        let mut object = json!({"metadata": {"generateName": "web-", "resourceVersion": "5"}, "status": {"replicas": 3}});
        prepare_create(&deployments, &mut object, "2024-01-01T00:00:00Z").expect("prepared");
        let name = meta_str(&object, "name");
        assert!(name.starts_with("web-") && name.len() == 9, "{name}");
        assert_eq!(object["metadata"]["generation"], 1);
        assert_eq!(
            object["metadata"]["creationTimestamp"],
            "2024-01-01T00:00:00Z"
        );
        assert!(object["metadata"].get("resourceVersion").is_none());
        assert!(object.get("status").is_none());
        assert_eq!(meta_str(&object, "uid").len(), 36);
    }

    #[test]
    fn create_without_a_name_is_invalid() {
        let error = prepare_create(
            &resource("", "configmaps"),
            &mut json!({"metadata": {}}),
            "t",
        )
        .expect_err("refused");
        assert_eq!(error.code(), 422);
        assert!(
            error.message.contains("name or generateName is required"),
            "{}",
            error.message
        );
    }

    #[test]
    fn namespaces_come_from_the_path() {
        let pods = resource("", "pods");
        let mut object = json!({"metadata": {"name": "p"}});
        check_namespace(&mut object, &pods, Some("default")).expect("filled");
        assert_eq!(object["metadata"]["namespace"], "default");
        let mut other = json!({"metadata": {"name": "p", "namespace": "kube-system"}});
        assert_eq!(
            check_namespace(&mut other, &pods, Some("default")).map_err(|e| e.code()),
            Err(400)
        );
    }

    #[test]
    fn main_updates_keep_status_and_bump_generation_on_spec_change() {
        let deployments = resource("apps", "deployments");
        let old = json!({"metadata": {"name": "d", "uid": "u1", "generation": 2, "creationTimestamp": "t"},
                          "spec": {"replicas": 1}, "status": {"replicas": 1}});
        let mut new = json!({"metadata": {"name": "d", "generation": 7}, "spec": {"replicas": 3}, "status": {"replicas": 9}});
        prepare_update(&deployments, &old, &mut new, UpdateScope::Main, "d").expect("prepared");
        assert_eq!(new["metadata"]["generation"], 3);
        assert_eq!(new["status"], json!({"replicas": 1}));
        assert_eq!(new["metadata"]["uid"], "u1");

        let mut same =
            json!({"metadata": {"name": "d", "labels": {"a": "b"}}, "spec": {"replicas": 1}});
        prepare_update(&deployments, &old, &mut same, UpdateScope::Main, "d").expect("prepared");
        assert_eq!(same["metadata"]["generation"], 2);
    }

    #[test]
    fn status_updates_change_only_status() {
        let pods = resource("", "pods");
        let old = json!({"metadata": {"name": "p", "uid": "u"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Pending"}});
        let mut new = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "evil"}, "status": {"phase": "Running"}});
        prepare_update(&pods, &old, &mut new, UpdateScope::Status, "p").expect("prepared");
        assert_eq!(new["spec"]["nodeName"], "n1");
        assert_eq!(new["status"]["phase"], "Running");
    }

    #[test]
    fn updates_refuse_other_names_and_uids() {
        let cms = resource("", "configmaps");
        let old = json!({"metadata": {"name": "a", "uid": "u"}});
        let mut renamed = json!({"metadata": {"name": "b"}});
        assert_eq!(
            prepare_update(&cms, &old, &mut renamed, UpdateScope::Main, "a").map_err(|e| e.code()),
            Err(400)
        );
        let mut other_uid = json!({"metadata": {"name": "a", "uid": "x"}});
        assert_eq!(
            prepare_update(&cms, &old, &mut other_uid, UpdateScope::Main, "a")
                .map_err(|e| e.code()),
            Err(409)
        );
    }

    #[test]
    fn types_are_checked_and_filled() {
        let mut object = json!({"metadata": {}});
        check_type(&mut object, "v1", "Pod").expect("filled");
        assert_eq!(object["kind"], "Pod");
        let mut wrong = json!({"apiVersion": "apps/v1", "kind": "Pod"});
        let error = check_type(&mut wrong, "v1", "Pod").expect_err("refused");
        assert!(error.message.contains("(apps/v1)"), "{}", error.message);
    }
}
