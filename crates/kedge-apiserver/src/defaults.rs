//! Defaulting of built-in kinds: the values kube-apiserver fills in that
//! clients visibly rely on. A field that is already set is never changed.

use serde_json::{Map, Value, json};

/// Sets `key` in `map` to `value` unless it is present (and not null).
fn default(map: &mut Map<String, Value>, key: &str, value: Value) {
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.to_owned(), value);
    }
}

/// The object at `pointer`, created as `{}` along the way if missing.
fn object_at<'a>(value: &'a mut Value, path: &[&str]) -> Option<&'a mut Map<String, Value>> {
    let mut current = value;
    for key in path {
        let map = current.as_object_mut()?;
        if map.get(*key).is_none_or(Value::is_null) {
            map.insert((*key).to_owned(), json!({}));
        }
        current = map.get_mut(*key)?;
    }
    current.as_object_mut()
}

/// The image pull policy kube defaults: `Always` for `:latest` or no tag,
/// else `IfNotPresent`.
fn pull_policy(image: &str) -> &'static str {
    let name = image.split('@').next().unwrap_or(image);
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = name.rsplit('/').next().unwrap_or(name);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn default_containers(spec: &mut Map<String, Value>, key: &str) {
    let Some(Value::Array(containers)) = spec.get_mut(key) else {
        return;
    };
    for container in containers.iter_mut().filter_map(Value::as_object_mut) {
        let image = container
            .get("image")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        default(container, "imagePullPolicy", json!(pull_policy(&image)));
        default(
            container,
            "terminationMessagePath",
            json!("/dev/termination-log"),
        );
        default(container, "terminationMessagePolicy", json!("File"));
        default(container, "resources", json!({}));
        if let Some(Value::Array(ports)) = container.get_mut("ports") {
            for port in ports.iter_mut().filter_map(Value::as_object_mut) {
                default(port, "protocol", json!("TCP"));
            }
        }
        // Requests default to limits when only limits are given.
        if let Some(resources) = container
            .get_mut("resources")
            .and_then(Value::as_object_mut)
            && let Some(limits) = resources.get("limits").and_then(Value::as_object).cloned()
        {
            let requests = resources.entry("requests").or_insert_with(|| json!({}));
            if let Some(requests) = requests.as_object_mut() {
                for (name, quantity) in limits {
                    requests.entry(name).or_insert(quantity);
                }
            }
        }
    }
}

/// Defaults a pod spec; `bare` is true for a Pod (not a template).
fn default_pod_spec(spec: &mut Map<String, Value>, restart_policy: Option<&str>, bare: bool) {
    if let Some(policy) = restart_policy {
        default(spec, "restartPolicy", json!(policy));
    }
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "schedulerName", json!("default-scheduler"));
    default(spec, "securityContext", json!({}));
    default(spec, "enableServiceLinks", json!(true));
    if bare {
        default(spec, "serviceAccountName", json!("default"));
        let account = spec
            .get("serviceAccountName")
            .cloned()
            .unwrap_or(json!("default"));
        default(spec, "serviceAccount", account);
        default(spec, "priority", json!(0));
    }
    default_containers(spec, "containers");
    default_containers(spec, "initContainers");
}

fn default_template(object: &mut Value, restart_policy: Option<&str>) {
    if let Some(spec) = object_at(object, &["spec", "template", "spec"]) {
        default_pod_spec(spec, restart_policy, false);
    }
}

/// Applies the defaults of `group`/`version`/`kind` to `object`.
pub fn apply_defaults(group: &str, _version: &str, kind: &str, object: &mut Value) {
    if !object.is_object() {
        return;
    }
    match (group, kind) {
        ("", "Pod") => {
            if let Some(spec) = object_at(object, &["spec"]) {
                default_pod_spec(spec, Some("Always"), true);
            }
            if let Some(status) = object_at(object, &["status"]) {
                default(status, "phase", json!("Pending"));
            }
        }
        ("", "Service") => {
            if let Some(spec) = object_at(object, &["spec"]) {
                default(spec, "type", json!("ClusterIP"));
                default(spec, "sessionAffinity", json!("None"));
                let external = spec.get("type").and_then(Value::as_str) == Some("ExternalName");
                if !external {
                    default(spec, "ipFamilyPolicy", json!("SingleStack"));
                    default(spec, "ipFamilies", json!(["IPv4"]));
                    default(spec, "internalTrafficPolicy", json!("Cluster"));
                }
                if let Some(Value::Array(ports)) = spec.get_mut("ports") {
                    for port in ports.iter_mut().filter_map(Value::as_object_mut) {
                        default(port, "protocol", json!("TCP"));
                        if let Some(number) = port.get("port").cloned() {
                            default(port, "targetPort", number);
                        }
                    }
                }
            }
        }
        ("", "Namespace") => {
            if let Some(spec) = object_at(object, &["spec"]) {
                default(spec, "finalizers", json!(["kubernetes"]));
            }
            if let Some(status) = object_at(object, &["status"]) {
                default(status, "phase", json!("Active"));
            }
        }
        ("", "Secret") => {
            if let Some(map) = object.as_object_mut() {
                default(map, "type", json!("Opaque"));
            }
        }
        ("apps", "Deployment") => {
            if let Some(spec) = object_at(object, &["spec"]) {
                default(spec, "replicas", json!(1));
                default(spec, "revisionHistoryLimit", json!(10));
                default(spec, "progressDeadlineSeconds", json!(600));
                default(spec, "strategy", json!({"type": "RollingUpdate"}));
                if let Some(strategy) = spec.get_mut("strategy").and_then(Value::as_object_mut)
                    && strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate")
                {
                    default(strategy, "rollingUpdate", json!({}));
                    if let Some(rolling) = strategy
                        .get_mut("rollingUpdate")
                        .and_then(Value::as_object_mut)
                    {
                        default(rolling, "maxSurge", json!("25%"));
                        default(rolling, "maxUnavailable", json!("25%"));
                    }
                }
            }
            default_template(object, Some("Always"));
        }
        ("apps", "ReplicaSet") => {
            if let Some(spec) = object_at(object, &["spec"]) {
                default(spec, "replicas", json!(1));
            }
            default_template(object, Some("Always"));
        }
        ("apps", "StatefulSet") => {
            if let Some(spec) = object_at(object, &["spec"]) {
                default(spec, "replicas", json!(1));
                default(spec, "podManagementPolicy", json!("OrderedReady"));
                default(spec, "revisionHistoryLimit", json!(10));
                default(
                    spec,
                    "updateStrategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
                );
                default(
                    spec,
                    "persistentVolumeClaimRetentionPolicy",
                    json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
                );
            }
            default_template(object, Some("Always"));
        }
        ("apps", "DaemonSet") => {
            if let Some(spec) = object_at(object, &["spec"]) {
                default(spec, "revisionHistoryLimit", json!(10));
                default(
                    spec,
                    "updateStrategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
                );
            }
            default_template(object, Some("Always"));
        }
        ("batch", "Job") => {
            if let Some(spec) = object_at(object, &["spec"]) {
                let unset =
                    |spec: &Map<String, Value>, key: &str| spec.get(key).is_none_or(Value::is_null);
                if unset(spec, "completions") && unset(spec, "parallelism") {
                    spec.insert("completions".into(), json!(1));
                    spec.insert("parallelism".into(), json!(1));
                }
                default(spec, "parallelism", json!(1));
                default(spec, "backoffLimit", json!(6));
                default(spec, "completionMode", json!("NonIndexed"));
                default(spec, "suspend", json!(false));
            }
            default_template(object, None);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_get_kube_defaults() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "a", "image": "busybox", "ports": [{"containerPort": 80}], "resources": {"limits": {"cpu": "1"}}},
            {"name": "b", "image": "registry.local:5000/app:1.2", "imagePullPolicy": "Never"}]}});
        apply_defaults("", "v1", "Pod", &mut pod);
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Always");
        assert_eq!(spec["terminationGracePeriodSeconds"], 30);
        assert_eq!(spec["serviceAccountName"], "default");
        assert_eq!(spec["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(spec["containers"][0]["ports"][0]["protocol"], "TCP");
        assert_eq!(spec["containers"][0]["resources"]["requests"]["cpu"], "1");
        assert_eq!(spec["containers"][1]["imagePullPolicy"], "Never");
        assert_eq!(pull_policy("registry.local:5000/app:1.2"), "IfNotPresent");
        assert_eq!(pull_policy("registry.local:5000/app"), "Always");
    }

    #[test]
    fn workloads_and_services() {
        let mut d = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x:1"}]}}}});
        apply_defaults("apps", "v1", "Deployment", &mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
        assert!(
            d["spec"]["template"]["spec"]
                .get("serviceAccountName")
                .is_none()
        );
        let mut s = json!({"spec": {"ports": [{"port": 80}]}});
        apply_defaults("", "v1", "Service", &mut s);
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
        let mut j =
            json!({"spec": {"parallelism": 3, "template": {"spec": {"restartPolicy": "Never"}}}});
        apply_defaults("batch", "v1", "Job", &mut j);
        assert!(j["spec"].get("completions").is_none());
        assert_eq!(j["spec"]["backoffLimit"], 6);
        let mut replicas = json!({"spec": {"replicas": 0}});
        apply_defaults("apps", "v1", "ReplicaSet", &mut replicas);
        assert_eq!(replicas["spec"]["replicas"], 0, "set values are kept");
    }
}
