//! Validation of objects before they are stored: metadata for every kind,
//! the essential rules of the built-in kinds (with kube's field paths and
//! messages, answered as 422 Invalid), and detection of unknown fields for
//! `fieldValidation`.
//!
//! Unknown fields of built-in kinds are found by decoding the object into
//! its typed form from `k8s-openapi` and encoding it back: whatever the
//! typed form dropped is unknown. A value of the wrong type fails that
//! decoding and is a 400, as kube-apiserver answers.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::resources::ResourceType;
use crate::selector::{LabelSelector, valid_label_key, valid_label_value};
use crate::status::{FieldError, StatusError};

/// Largest total size of annotations, as kube.
const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;
/// Largest total size of a ConfigMap's or Secret's data, as kube.
const MAX_DATA_BYTES: usize = 1024 * 1024;

/// Whether `name` is a DNS-1123 label: at most 63 lowercase alphanumerics
/// or `-`, starting and ending alphanumeric.
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Whether `name` is a DNS-1123 subdomain: dot-separated labels, at most
/// 253 characters.
pub fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

const DNS_LABEL_MESSAGE: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS_SUBDOMAIN_MESSAGE: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

fn s<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Kinds whose names must be DNS labels rather than subdomains.
fn name_is_label(resource: &ResourceType) -> bool {
    resource.group.is_empty() && matches!(resource.kind.as_str(), "Namespace" | "Service")
}

fn validate_metadata(resource: &ResourceType, object: &Value, errors: &mut Vec<FieldError>) {
    let name = s(object, "/metadata/name");
    let crd =
        resource.group == "apiextensions.k8s.io" && resource.kind == "CustomResourceDefinition";
    let rbac = resource.group == "rbac.authorization.k8s.io";
    if name_is_label(resource) {
        if !is_dns_label(name) {
            errors.push(FieldError::invalid(
                "metadata.name",
                json!(name),
                DNS_LABEL_MESSAGE,
            ));
        }
    } else if rbac {
        // RBAC names are path segments: anything but "." "..", "/" and "%".
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '%']) {
            errors.push(FieldError::invalid(
                "metadata.name",
                json!(name),
                "may not contain '/' or '%'",
            ));
        }
    } else if !crd && !is_dns_subdomain(name) {
        errors.push(FieldError::invalid(
            "metadata.name",
            json!(name),
            DNS_SUBDOMAIN_MESSAGE,
        ));
    }
    if let Some(labels) = object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
    {
        for (key, value) in labels {
            if !valid_label_key(key) {
                errors.push(FieldError::invalid(
                    "metadata.labels",
                    json!(key),
                    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
                ));
            }
            match value.as_str() {
                Some(text) if valid_label_value(text) => {}
                _ => errors.push(FieldError::invalid(
                    format!("metadata.labels.{key}"),
                    value.clone(),
                    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
                )),
            }
        }
    }
    if let Some(annotations) = object
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        let mut total = 0;
        for (key, value) in annotations {
            total += key.len() + value.as_str().map_or(0, str::len);
            if !valid_label_key(key) {
                errors.push(FieldError::invalid(
                    "metadata.annotations",
                    json!(key),
                    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
                ));
            }
        }
        if total > MAX_ANNOTATIONS_BYTES {
            errors.push(FieldError::new(
                crate::status::CauseType::TooLong,
                "metadata.annotations",
                None,
                format!("must have at most {MAX_ANNOTATIONS_BYTES} bytes"),
            ));
        }
    }
}

fn validate_containers(object: &Value, pointer: &str, field: &str, errors: &mut Vec<FieldError>) {
    let containers = object.pointer(pointer).and_then(Value::as_array);
    let Some(containers) = containers.filter(|c| !c.is_empty()) else {
        errors.push(FieldError::required(field, ""));
        return;
    };
    let mut seen = Vec::new();
    for (i, container) in containers.iter().enumerate() {
        let name = s(container, "/name");
        if name.is_empty() {
            errors.push(FieldError::required(format!("{field}[{i}].name"), ""));
        } else if !is_dns_label(name) {
            errors.push(FieldError::invalid(
                format!("{field}[{i}].name"),
                json!(name),
                DNS_LABEL_MESSAGE,
            ));
        } else if seen.contains(&name) {
            errors.push(FieldError::duplicate(
                format!("{field}[{i}].name"),
                json!(name),
            ));
        }
        seen.push(name);
        if s(container, "/image").trim().is_empty() {
            errors.push(FieldError::required(format!("{field}[{i}].image"), ""));
        }
        if let Some(ports) = container.get("ports").and_then(Value::as_array) {
            for (j, port) in ports.iter().enumerate() {
                let number = port
                    .get("containerPort")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                if !(1..=65535).contains(&number) {
                    errors.push(FieldError::invalid(
                        format!("{field}[{i}].ports[{j}].containerPort"),
                        json!(number),
                        "must be between 1 and 65535, inclusive",
                    ));
                }
            }
        }
    }
}

fn validate_pod_spec(
    object: &Value,
    prefix: &str,
    field: &str,
    policies: &[&str],
    errors: &mut Vec<FieldError>,
) {
    validate_containers(
        object,
        &format!("{prefix}/containers"),
        &format!("{field}.containers"),
        errors,
    );
    if let Some(policy) = object
        .pointer(&format!("{prefix}/restartPolicy"))
        .and_then(Value::as_str)
        && !policies.contains(&policy)
    {
        errors.push(FieldError::not_supported(
            format!("{field}.restartPolicy"),
            json!(policy),
            policies,
        ));
    }
}

fn validate_workload(resource: &ResourceType, object: &Value, errors: &mut Vec<FieldError>) {
    let selector = object.pointer("/spec/selector");
    match selector {
        None | Some(Value::Null) => {
            if resource.kind != "Job" {
                errors.push(FieldError::required("spec.selector", ""));
            }
        }
        Some(selector) => {
            let labels = object
                .pointer("/spec/template/metadata/labels")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let text = crate::selector::label_selector_string(selector).unwrap_or_default();
            if text.is_empty() && resource.kind != "Job" {
                errors.push(FieldError::invalid(
                    "spec.selector",
                    selector.clone(),
                    "empty selector is invalid for deployment",
                ));
            } else if let Ok(parsed) = LabelSelector::parse(&text)
                && !text.is_empty()
                && !parsed.matches(&labels)
            {
                errors.push(FieldError::invalid(
                    "spec.template.metadata.labels",
                    json!(labels),
                    "`selector` does not match template `labels`",
                ));
            }
        }
    }
    if let Some(replicas) = object.pointer("/spec/replicas").and_then(Value::as_i64)
        && replicas < 0
    {
        errors.push(FieldError::invalid(
            "spec.replicas",
            json!(replicas),
            "must be greater than or equal to 0",
        ));
    }
    let policies: &[&str] = if resource.kind == "Job" {
        &["OnFailure", "Never"]
    } else {
        &["Always"]
    };
    if resource.kind == "Job"
        && object
            .pointer("/spec/template/spec/restartPolicy")
            .is_none()
    {
        errors.push(FieldError::not_supported(
            "spec.template.spec.restartPolicy",
            json!(""),
            policies,
        ));
    }
    validate_pod_spec(
        object,
        "/spec/template/spec",
        "spec.template.spec",
        policies,
        errors,
    );
}

fn validate_service(object: &Value, errors: &mut Vec<FieldError>) {
    let kind = s(object, "/spec/type");
    let types = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
    if !types.contains(&kind) {
        errors.push(FieldError::not_supported("spec.type", json!(kind), &types));
    }
    let ports = object.pointer("/spec/ports").and_then(Value::as_array);
    let headless = s(object, "/spec/clusterIP") == "None";
    if kind != "ExternalName" && !headless && ports.is_none_or(Vec::is_empty) {
        errors.push(FieldError::required("spec.ports", ""));
    }
    for (i, port) in ports.into_iter().flatten().enumerate() {
        let number = port.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&number) {
            errors.push(FieldError::invalid(
                format!("spec.ports[{i}].port"),
                json!(number),
                "must be between 1 and 65535, inclusive",
            ));
        }
        let protocol = s(port, "/protocol");
        let protocols = ["TCP", "UDP", "SCTP"];
        if !protocols.contains(&protocol) {
            errors.push(FieldError::not_supported(
                format!("spec.ports[{i}].protocol"),
                json!(protocol),
                &protocols,
            ));
        }
    }
}

fn validate_data(object: &Value, errors: &mut Vec<FieldError>) {
    let mut total = 0;
    for field in ["data", "binaryData", "stringData"] {
        if let Some(map) = object.get(field).and_then(Value::as_object) {
            for (key, value) in map {
                total += value.as_str().map_or(0, str::len);
                let valid = !key.is_empty()
                    && key.len() <= 253
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                    && key != "."
                    && key != "..";
                if !valid {
                    errors.push(FieldError::invalid(
                        format!("{field}[{key}]"),
                        json!(key),
                        "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                    ));
                }
            }
        }
    }
    if total > MAX_DATA_BYTES {
        errors.push(FieldError::new(
            crate::status::CauseType::TooLong,
            "data",
            None,
            format!("must have at most {MAX_DATA_BYTES} bytes"),
        ));
    }
}

/// The errors of a new object.
pub fn validate_create(resource: &ResourceType, object: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    validate_metadata(resource, object, &mut errors);
    if resource.crd.is_some() {
        return errors;
    }
    match (resource.group.as_str(), resource.kind.as_str()) {
        ("", "Pod") => validate_pod_spec(
            object,
            "/spec",
            "spec",
            &["Always", "OnFailure", "Never"],
            &mut errors,
        ),
        ("", "Service") => validate_service(object, &mut errors),
        ("", "ConfigMap") | ("", "Secret") => validate_data(object, &mut errors),
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") | ("batch", "Job") => {
            validate_workload(resource, object, &mut errors);
        }
        _ => {}
    }
    errors
}

/// The errors of an update from `old` to `new`: those of a new object plus
/// the fields an update may not change.
pub fn validate_update(resource: &ResourceType, old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errors = validate_create(resource, new);
    if resource.crd.is_some() {
        return errors;
    }
    let changed = |pointer: &str| old.pointer(pointer) != new.pointer(pointer);
    match (resource.group.as_str(), resource.kind.as_str()) {
        ("", "Pod") => {
            let mut old_spec = old.get("spec").cloned().unwrap_or(Value::Null);
            let mut new_spec = new.get("spec").cloned().unwrap_or(Value::Null);
            // Images, activeDeadlineSeconds, tolerations and the node
            // binding may change; nothing else in the spec.
            for spec in [&mut old_spec, &mut new_spec] {
                if let Some(map) = spec.as_object_mut() {
                    for field in ["activeDeadlineSeconds", "tolerations", "nodeName"] {
                        map.remove(field);
                    }
                    for list in ["containers", "initContainers"] {
                        if let Some(Value::Array(items)) = map.get_mut(list) {
                            for item in items.iter_mut().filter_map(Value::as_object_mut) {
                                item.remove("image");
                            }
                        }
                    }
                }
            }
            let bound = s(old, "/spec/nodeName");
            if old_spec != new_spec || (!bound.is_empty() && bound != s(new, "/spec/nodeName")) {
                errors.push(FieldError::forbidden(
                    "spec",
                    "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
                ));
            }
        }
        ("", "Service") if !s(old, "/spec/clusterIP").is_empty() && changed("/spec/clusterIP") => {
            errors.push(FieldError::invalid(
                "spec.clusterIPs[0]",
                new.pointer("/spec/clusterIP")
                    .cloned()
                    .unwrap_or(Value::Null),
                "may not change once set",
            ));
        }
        ("", "ConfigMap") | ("", "Secret")
            if old.get("immutable").and_then(Value::as_bool) == Some(true) =>
        {
            if changed("/data") || changed("/binaryData") {
                errors.push(FieldError::forbidden(
                    "data",
                    "field is immutable when `immutable` is set",
                ));
            }
            if changed("/immutable") {
                errors.push(FieldError::forbidden(
                    "immutable",
                    "field is immutable when `immutable` is set",
                ));
            }
        }
        ("apps", _) | ("batch", "Job") if changed("/spec/selector") => {
            errors.push(FieldError::invalid(
                "spec.selector",
                new.pointer("/spec/selector")
                    .cloned()
                    .unwrap_or(Value::Null),
                "field is immutable",
            ));
        }
        _ => {}
    }
    errors
}

fn roundtrip<T: DeserializeOwned + Serialize>(object: &Value) -> Result<Value, StatusError> {
    let typed: T = serde_json::from_value(object.clone())
        .map_err(|error| StatusError::bad_request(format!("error decoding the object: {error}")))?;
    serde_json::to_value(typed)
        .map_err(|error| StatusError::internal(format!("re-encoding the object: {error}")))
}

/// The object as its typed form keeps it; `None` for kinds without one.
fn typed_form(group: &str, kind: &str, object: &Value) -> Option<Result<Value, StatusError>> {
    use k8s_openapi::api::{apps, batch, coordination, core, discovery, rbac};
    Some(match (group, kind) {
        ("", "Namespace") => roundtrip::<core::v1::Namespace>(object),
        ("", "Node") => roundtrip::<core::v1::Node>(object),
        ("", "Pod") => roundtrip::<core::v1::Pod>(object),
        ("", "ConfigMap") => roundtrip::<core::v1::ConfigMap>(object),
        ("", "Secret") => roundtrip::<core::v1::Secret>(object),
        ("", "Service") => roundtrip::<core::v1::Service>(object),
        ("", "Endpoints") => roundtrip::<core::v1::Endpoints>(object),
        ("", "Event") => roundtrip::<core::v1::Event>(object),
        ("", "ServiceAccount") => roundtrip::<core::v1::ServiceAccount>(object),
        ("", "PersistentVolumeClaim") => roundtrip::<core::v1::PersistentVolumeClaim>(object),
        ("apps", "Deployment") => roundtrip::<apps::v1::Deployment>(object),
        ("apps", "ReplicaSet") => roundtrip::<apps::v1::ReplicaSet>(object),
        ("apps", "StatefulSet") => roundtrip::<apps::v1::StatefulSet>(object),
        ("apps", "DaemonSet") => roundtrip::<apps::v1::DaemonSet>(object),
        ("batch", "Job") => roundtrip::<batch::v1::Job>(object),
        ("coordination.k8s.io", "Lease") => roundtrip::<coordination::v1::Lease>(object),
        ("discovery.k8s.io", "EndpointSlice") => roundtrip::<discovery::v1::EndpointSlice>(object),
        ("rbac.authorization.k8s.io", "Role") => roundtrip::<rbac::v1::Role>(object),
        ("rbac.authorization.k8s.io", "ClusterRole") => roundtrip::<rbac::v1::ClusterRole>(object),
        ("rbac.authorization.k8s.io", "RoleBinding") => roundtrip::<rbac::v1::RoleBinding>(object),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            roundtrip::<rbac::v1::ClusterRoleBinding>(object)
        }
        _ => return None,
    })
}

fn collect_unknown(input: &Value, kept: &Value, path: &str, out: &mut Vec<String>) {
    match (input, kept) {
        (Value::Object(given), Value::Object(known)) => {
            for (key, value) in given {
                if value.is_null() {
                    continue;
                }
                let here = format!("{path}.{key}");
                match known.get(key) {
                    None => out.push(here),
                    Some(kept) => collect_unknown(value, kept, &here, out),
                }
            }
        }
        (Value::Array(given), Value::Array(known)) => {
            for (i, (value, kept)) in given.iter().zip(known).enumerate() {
                collect_unknown(value, kept, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The paths (kube's form, such as `.spec.containers[0].imagee`) of fields
/// a built-in kind does not have; 400 when a field has the wrong type.
/// Custom resources are checked against their schema elsewhere.
pub fn unknown_fields(resource: &ResourceType, object: &Value) -> Result<Vec<String>, StatusError> {
    if resource.crd.is_some() {
        return Ok(Vec::new());
    }
    let Some(kept) = typed_form(&resource.group, &resource.kind, object) else {
        return Ok(Vec::new());
    };
    let kept = kept?;
    let mut out = Vec::new();
    collect_unknown(object, &kept, "", &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Catalog;

    fn resource(group: &str, plural: &str) -> std::sync::Arc<ResourceType> {
        Catalog::new().get(group, "v1", plural).expect("served")
    }

    #[test]
    fn names() {
        assert!(is_dns_label("web-1"));
        assert!(!is_dns_label("Web"));
        assert!(!is_dns_label("-a"));
        assert!(is_dns_subdomain("a.b-c.d"));
        assert!(!is_dns_subdomain("a..b"));
        let errors = validate_create(
            &resource("", "configmaps"),
            &json!({"metadata": {"name": "Bad_Name"}}),
        );
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].message().contains("Invalid value"),
            "{}",
            errors[0].message()
        );
    }

    #[test]
    fn labels_are_checked() {
        let errors = validate_create(
            &resource("", "configmaps"),
            &json!({"metadata": {"name": "ok", "labels": {"good": "yes", "bad key!": "x", "v": "-bad-"}}}),
        );
        assert_eq!(errors.len(), 2);
    }

    #[test]
    fn deployment_selector_must_match_template() {
        let d = json!({"metadata": {"name": "web"}, "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "other"}},
                         "spec": {"restartPolicy": "Always", "containers": [{"name": "web", "image": "x"}]}}}});
        let errors = validate_create(&resource("apps", "deployments"), &d);
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0]
                .message()
                .contains("`selector` does not match template `labels`")
        );
    }

    #[test]
    fn pods_need_containers_and_keep_their_spec() {
        let pods = resource("", "pods");
        let errors = validate_create(
            &pods,
            &json!({"metadata": {"name": "p"}, "spec": {"containers": []}}),
        );
        assert!(
            errors[0]
                .message()
                .contains("spec.containers: Required value"),
            "{}",
            errors[0].message()
        );
        let old = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "x:1"}], "nodeName": "n1"}});
        let mut new = old.clone();
        new["spec"]["containers"][0]["image"] = json!("x:2");
        assert!(validate_update(&pods, &old, &new).is_empty());
        new["spec"]["containers"][0]["command"] = json!(["sh"]);
        assert_eq!(validate_update(&pods, &old, &new).len(), 1);
    }

    #[test]
    fn immutable_config_maps() {
        let cms = resource("", "configmaps");
        let old = json!({"metadata": {"name": "c"}, "data": {"a": "1"}, "immutable": true});
        let mut new = old.clone();
        new["data"]["a"] = json!("2");
        assert_eq!(validate_update(&cms, &old, &new).len(), 1);
    }

    #[test]
    fn unknown_fields_are_found_by_path() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "bogus": 1, "data": {"a": "1"}});
        assert_eq!(
            unknown_fields(&resource("", "configmaps"), &cm).unwrap(),
            [".bogus"]
        );
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a", "imagee": "x"}]}});
        assert_eq!(
            unknown_fields(&resource("", "pods"), &pod).unwrap(),
            [".spec.containers[0].imagee"]
        );
        let wrong = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": "no"}});
        assert_eq!(
            unknown_fields(&resource("", "pods"), &wrong)
                .unwrap_err()
                .code(),
            400
        );
    }
}
