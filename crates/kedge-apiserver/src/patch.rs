//! PATCH bodies: JSON patch (RFC 6902), JSON merge patch (RFC 7386),
//! strategic merge patch for built-in kinds, and apply patches.
//!
//! Strategic merge patch follows kube's rules: maps merge recursively and
//! `null` deletes a key; a list with a merge key merges element by element
//! on that key, a list of primitives marked as a set is unioned, any other
//! list is replaced; the directives `$patch` (`replace`, `delete`),
//! `$retainKeys`, `$setElementOrder/<list>` and
//! `$deleteFromPrimitiveList/<list>` are honoured. The merge keys of each
//! kind are in [`PatchMeta`].
//!
//! Apply patches (`kubectl apply --server-side`) are merged like a strategic
//! merge patch without deletions; field ownership (managedFields) is not
//! tracked, so conflicts between managers are never reported.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::{Map, Value};

use crate::codec;
use crate::status::{Reason, StatusError};

/// The kind of a PATCH body, from its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json`.
    Json,
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml`.
    Apply,
}

impl PatchType {
    /// The patch type of a request's content type; 415 for anything else.
    pub fn from_content_type(content_type: Option<&str>) -> Result<Self, StatusError> {
        let media = content_type
            .and_then(|c| c.split(';').next())
            .map(|c| c.trim().to_ascii_lowercase());
        match media.as_deref() {
            Some("application/json-patch+json") => Ok(Self::Json),
            Some("application/merge-patch+json") => Ok(Self::Merge),
            Some("application/strategic-merge-patch+json") => Ok(Self::Strategic),
            Some("application/apply-patch+yaml") => Ok(Self::Apply),
            _ => Err(StatusError::new(
                Reason::UnsupportedMediaType,
                format!(
                    "the body of the request was in an unknown format ({}) - accepted media types include: \
                     application/json-patch+json, application/merge-patch+json, \
                     application/apply-patch+yaml, application/strategic-merge-patch+json",
                    content_type.unwrap_or("none")
                ),
            )),
        }
    }
}

/// How a list field merges in a strategic merge patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListStrategy {
    /// Elements are objects merged by this key.
    MergeKey(&'static str),
    /// Elements are primitives forming a set.
    Set,
}

/// The strategic-merge rules of one kind: list fields by dotted path (no
/// indices), such as `spec.containers` or `spec.containers.ports`.
#[derive(Debug, Clone, Default)]
pub struct PatchMeta {
    lists: HashMap<String, ListStrategy>,
}

fn add_pod_spec(lists: &mut HashMap<String, ListStrategy>, prefix: &str) {
    use ListStrategy::MergeKey;
    for containers in ["containers", "initContainers", "ephemeralContainers"] {
        let c = format!("{prefix}{containers}");
        lists.insert(c.clone(), MergeKey("name"));
        lists.insert(format!("{c}.ports"), MergeKey("containerPort"));
        lists.insert(format!("{c}.env"), MergeKey("name"));
        lists.insert(format!("{c}.volumeMounts"), MergeKey("mountPath"));
        lists.insert(format!("{c}.volumeDevices"), MergeKey("devicePath"));
        lists.insert(format!("{c}.resizePolicy"), MergeKey("resourceName"));
    }
    lists.insert(format!("{prefix}volumes"), MergeKey("name"));
    lists.insert(format!("{prefix}imagePullSecrets"), MergeKey("name"));
    lists.insert(format!("{prefix}hostAliases"), MergeKey("ip"));
    lists.insert(
        format!("{prefix}topologySpreadConstraints"),
        MergeKey("topologyKey"),
    );
    lists.insert(format!("{prefix}schedulingGates"), MergeKey("name"));
    lists.insert(format!("{prefix}resourceClaims"), MergeKey("name"));
}

fn common() -> HashMap<String, ListStrategy> {
    let mut lists = HashMap::new();
    lists.insert(
        "metadata.ownerReferences".to_owned(),
        ListStrategy::MergeKey("uid"),
    );
    lists.insert("metadata.finalizers".to_owned(), ListStrategy::Set);
    lists
}

static METAS: LazyLock<HashMap<(&'static str, &'static str), PatchMeta>> = LazyLock::new(|| {
    use ListStrategy::MergeKey;
    let mut metas = HashMap::new();
    let mut pod = common();
    add_pod_spec(&mut pod, "spec.");
    pod.insert("status.conditions".into(), MergeKey("type"));
    pod.insert("status.containerStatuses".into(), MergeKey("name"));
    pod.insert("status.initContainerStatuses".into(), MergeKey("name"));
    pod.insert("status.ephemeralContainerStatuses".into(), MergeKey("name"));
    pod.insert("status.podIPs".into(), MergeKey("ip"));
    pod.insert("status.hostIPs".into(), MergeKey("ip"));
    metas.insert(("", "Pod"), PatchMeta { lists: pod });

    let mut node = common();
    node.insert("status.conditions".into(), MergeKey("type"));
    node.insert("status.addresses".into(), MergeKey("type"));
    node.insert("spec.taints".into(), MergeKey("key"));
    metas.insert(("", "Node"), PatchMeta { lists: node });

    let mut service = common();
    service.insert("spec.ports".into(), MergeKey("port"));
    service.insert("status.conditions".into(), MergeKey("type"));
    metas.insert(("", "Service"), PatchMeta { lists: service });

    let mut namespace = common();
    namespace.insert("status.conditions".into(), MergeKey("type"));
    metas.insert(("", "Namespace"), PatchMeta { lists: namespace });

    for (group, kind) in [
        ("apps", "Deployment"),
        ("apps", "ReplicaSet"),
        ("apps", "StatefulSet"),
        ("apps", "DaemonSet"),
        ("batch", "Job"),
        ("", "ReplicationController"),
        ("", "PodTemplate"),
    ] {
        let mut lists = common();
        let prefix = if kind == "PodTemplate" {
            "template.spec."
        } else {
            "spec.template.spec."
        };
        add_pod_spec(&mut lists, prefix);
        lists.insert("status.conditions".into(), MergeKey("type"));
        metas.insert((group, kind), PatchMeta { lists });
    }
    metas
});

static GENERIC: LazyLock<PatchMeta> = LazyLock::new(|| PatchMeta { lists: common() });

impl PatchMeta {
    /// The rules of a built-in kind; kinds without list merge keys get the
    /// rules every object shares (owner references, finalizers).
    pub fn for_kind(group: &str, kind: &str) -> Option<&'static PatchMeta> {
        let meta = METAS
            .iter()
            .find(|((g, k), _)| *g == group && *k == kind)
            .map(|(_, meta)| meta);
        Some(meta.unwrap_or(&GENERIC))
    }

    fn list(&self, path: &str) -> Option<ListStrategy> {
        self.lists.get(path).copied()
    }
}

/// Applies a PATCH body to `live`.
pub fn apply_patch(
    live: &Value,
    body: &[u8],
    patch_type: PatchType,
    meta: Option<&PatchMeta>,
) -> Result<Value, StatusError> {
    match patch_type {
        PatchType::Json => {
            let patch: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| StatusError::bad_request(format!("error decoding JSON patch: {e}")))?;
            let mut out = live.clone();
            json_patch::patch(&mut out, &patch).map_err(|e| {
                StatusError::new(
                    Reason::Invalid,
                    format!("the JSON patch could not be applied: {e}"),
                )
            })?;
            Ok(out)
        }
        PatchType::Merge => {
            let patch = patch_object(body)?;
            let mut out = live.clone();
            json_patch::merge(&mut out, &patch);
            Ok(out)
        }
        PatchType::Strategic => {
            let meta = meta.ok_or_else(|| {
                StatusError::new(
                    Reason::UnsupportedMediaType,
                    "strategic merge patch format is not supported for custom resources; \
                     use application/merge-patch+json or application/json-patch+json",
                )
            })?;
            let patch = patch_object(body)?;
            strategic(live, &patch, meta, "", true)
        }
        PatchType::Apply => {
            let patch = codec::decode_yaml(body)?;
            if !patch.is_object() {
                return Err(StatusError::bad_request("an apply patch must be an object"));
            }
            match meta {
                Some(meta) => strategic(live, &patch, meta, "", false),
                None => {
                    let mut out = live.clone();
                    json_patch::merge(&mut out, &strip_nulls(patch));
                    Ok(out)
                }
            }
        }
    }
}

fn patch_object(body: &[u8]) -> Result<Value, StatusError> {
    let patch = codec::decode_json(body)?;
    if patch.is_object() {
        Ok(patch)
    } else {
        Err(StatusError::bad_request(
            "a merge patch must be a JSON object",
        ))
    }
}

fn strip_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        other => other,
    }
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn without_directives(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), without_directives(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .filter(|item| item.get("$patch").is_none())
                .map(without_directives)
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Merges `patch` (an object) into `original` at `path`. `deletions`
/// allows `null` to remove keys (off for apply patches).
fn strategic(
    original: &Value,
    patch: &Value,
    meta: &PatchMeta,
    path: &str,
    deletions: bool,
) -> Result<Value, StatusError> {
    let Some(patch_map) = patch.as_object() else {
        return Ok(patch.clone());
    };
    match patch_map.get("$patch").and_then(Value::as_str) {
        Some("replace") => return Ok(without_directives(patch)),
        Some("delete") => return Ok(Value::Null),
        Some(other) => {
            return Err(StatusError::bad_request(format!(
                "unknown patch directive $patch: {other:?} at {path}"
            )));
        }
        None => {}
    }
    let mut out: Map<String, Value> = original.as_object().cloned().unwrap_or_default();
    let mut orders: Vec<(String, &Vec<Value>)> = Vec::new();
    for (key, value) in patch_map {
        if let Some(field) = key.strip_prefix("$setElementOrder/") {
            let order = value
                .as_array()
                .ok_or_else(|| StatusError::bad_request(format!("{key} must be a list")))?;
            orders.push((field.to_owned(), order));
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let remove = value
                .as_array()
                .ok_or_else(|| StatusError::bad_request(format!("{key} must be a list")))?;
            if let Some(Value::Array(items)) = out.get_mut(field) {
                items.retain(|item| !remove.contains(item));
            }
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        let here = child(path, key);
        if value.is_null() {
            if deletions {
                out.remove(key);
            }
            continue;
        }
        let current = out.get(key).cloned().unwrap_or(Value::Null);
        let merged = match value {
            Value::Object(_) => {
                let merged = strategic(&current, value, meta, &here, deletions)?;
                if merged.is_null() {
                    out.remove(key);
                    continue;
                }
                merged
            }
            Value::Array(items) => merge_list(&current, items, meta, &here, deletions)?,
            other => other.clone(),
        };
        out.insert(key.clone(), merged);
    }
    if let Some(Value::Array(keep)) = patch_map.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (field, order) in orders {
        let strategy = meta.list(&child(path, &field));
        if let Some(Value::Array(items)) = out.get_mut(&field) {
            reorder(items, order, strategy);
        }
    }
    Ok(Value::Object(out))
}

fn merge_list(
    current: &Value,
    patch: &[Value],
    meta: &PatchMeta,
    path: &str,
    deletions: bool,
) -> Result<Value, StatusError> {
    let replace = patch
        .iter()
        .any(|item| item.get("$patch").and_then(Value::as_str) == Some("replace"));
    let strategy = meta.list(path);
    let existing = current.as_array().cloned().unwrap_or_default();
    match strategy {
        _ if replace => Ok(without_directives(&Value::Array(patch.to_vec()))),
        Some(ListStrategy::Set) => {
            let mut out = existing;
            for item in patch {
                if !out.contains(item) {
                    out.push(item.clone());
                }
            }
            Ok(Value::Array(out))
        }
        Some(ListStrategy::MergeKey(key)) => {
            let mut out = existing;
            for item in patch {
                let Some(id) = item.get(key) else {
                    return Err(StatusError::bad_request(format!(
                        "map in list {path} has no merge key {key:?}"
                    )));
                };
                let position = out.iter().position(|e| e.get(key) == Some(id));
                let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                match (position, delete) {
                    (Some(i), true) => {
                        out.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => {
                        let merged = strategic(&out[i], item, meta, path, deletions)?;
                        out[i] = merged;
                    }
                    (None, false) => out.push(without_directives(item)),
                }
            }
            Ok(Value::Array(out))
        }
        None => Ok(without_directives(&Value::Array(patch.to_vec()))),
    }
}

/// Puts the elements named by `order` first, in that order; the others
/// keep their relative order after them.
fn reorder(items: &mut Vec<Value>, order: &[Value], strategy: Option<ListStrategy>) {
    let matches = |item: &Value, wanted: &Value| match strategy {
        Some(ListStrategy::MergeKey(key)) => {
            item.get(key).is_some() && item.get(key) == wanted.get(key)
        }
        _ => item == wanted,
    };
    let mut rest = std::mem::take(items);
    for wanted in order {
        if let Some(i) = rest.iter().position(|item| matches(item, wanted)) {
            items.push(rest.remove(i));
        }
    }
    items.extend(rest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod_meta() -> &'static PatchMeta {
        PatchMeta::for_kind("", "Pod").unwrap()
    }

    fn smp(live: Value, patch: Value) -> Value {
        apply_patch(
            &live,
            patch.to_string().as_bytes(),
            PatchType::Strategic,
            Some(pod_meta()),
        )
        .unwrap()
    }

    #[test]
    fn content_types() {
        assert_eq!(
            PatchType::from_content_type(Some(
                "application/strategic-merge-patch+json; charset=utf-8"
            ))
            .unwrap(),
            PatchType::Strategic
        );
        assert_eq!(
            PatchType::from_content_type(Some("application/json-patch+json")).unwrap(),
            PatchType::Json
        );
        assert_eq!(
            PatchType::from_content_type(Some("application/json"))
                .unwrap_err()
                .code(),
            415
        );
        assert_eq!(PatchType::from_content_type(None).unwrap_err().code(), 415);
    }

    #[test]
    fn label_patch_merges_maps_and_null_deletes() {
        let live = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        let out = smp(live, json!({"metadata": {"labels": {"b": null, "c": "3"}}}));
        assert_eq!(out["metadata"]["labels"], json!({"a": "1", "c": "3"}));
    }

    #[test]
    fn containers_merge_by_name() {
        let live = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
            {"name": "b", "image": "b:1"}]}});
        let out = smp(
            live,
            json!({"spec": {
                "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
                "containers": [{"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "2"}]}]}}),
        );
        let containers = out["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers[0]["name"], "b");
        assert_eq!(containers[1]["image"], "a:2");
        assert_eq!(containers[1]["env"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn list_directives() {
        let live = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}], "tolerations": [{"key": "x"}]}});
        let out = smp(
            live.clone(),
            json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}], "tolerations": [{"key": "y"}]}}),
        );
        assert_eq!(out["spec"]["containers"], json!([{"name": "b"}]));
        assert_eq!(
            out["spec"]["tolerations"],
            json!([{"key": "y"}]),
            "no merge key: replaced"
        );
        let out = smp(
            live,
            json!({"spec": {"containers": [{"name": "z"}, {"$patch": "replace"}]}}),
        );
        assert_eq!(out["spec"]["containers"], json!([{"name": "z"}]));
    }

    #[test]
    fn edge_pod_status_patch() {
        let live = json!({"status": {"phase": "Pending", "conditions": [
            {"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "False"}]}});
        let out = smp(
            live,
            json!({"status": {"$setElementOrder/conditions": [{"type": "Initialized"}, {"type": "Ready"}],
                "conditions": [{"type": "Ready", "status": "True"}], "phase": "Running"}}),
        );
        assert_eq!(out["status"]["phase"], "Running");
        assert_eq!(
            out["status"]["conditions"],
            json!([{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "True"}])
        );
    }

    #[test]
    fn finalizers_are_a_set_and_can_be_removed() {
        let live = json!({"metadata": {"finalizers": ["a", "b"]}});
        let out = smp(
            live.clone(),
            json!({"metadata": {"finalizers": ["b", "c"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b", "c"]));
        let out = smp(
            live,
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn json_and_merge_patches() {
        let live = json!({"spec": {"replicas": 1, "x": {"y": 1}}});
        let out = apply_patch(
            &live,
            br#"[{"op": "replace", "path": "/spec/replicas", "value": 3}]"#,
            PatchType::Json,
            None,
        )
        .unwrap();
        assert_eq!(out["spec"]["replicas"], 3);
        let err = apply_patch(
            &live,
            br#"[{"op": "test", "path": "/spec/replicas", "value": 9}]"#,
            PatchType::Json,
            None,
        )
        .unwrap_err();
        assert_eq!(err.code(), 422);
        assert_eq!(
            apply_patch(&live, b"{not json", PatchType::Json, None)
                .unwrap_err()
                .code(),
            400
        );
        let out = apply_patch(
            &live,
            br#"{"spec": {"x": null, "z": 1}}"#,
            PatchType::Merge,
            None,
        )
        .unwrap();
        assert_eq!(out, json!({"spec": {"replicas": 1, "z": 1}}));
    }

    #[test]
    fn strategic_needs_patch_meta() {
        let err = apply_patch(&json!({}), b"{}", PatchType::Strategic, None).unwrap_err();
        assert_eq!(err.code(), 415);
    }

    #[test]
    fn apply_patch_merges_yaml() {
        let live = json!({"metadata": {"name": "x", "labels": {"a": "1"}}, "data": {"k": "v"}});
        let out = apply_patch(
            &live,
            b"metadata:\n  labels:\n    b: '2'\ndata:\n  k: w\n",
            PatchType::Apply,
            pod_meta().into(),
        )
        .unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"a": "1", "b": "2"}));
        assert_eq!(out["data"]["k"], "w");
    }
}
