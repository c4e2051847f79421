//! The downward API: a pod's fields and resources as environment values
//! and files (`fieldRef`, `resourceFieldRef`).

use k8s_openapi::api::core::v1::{Pod, ResourceFieldSelector};

use kedge_apis::quantity;

/// What only the node knows about a running pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFields {
    /// The pod's IP.
    pub pod_ip: String,
    /// The node's IP.
    pub host_ip: String,
}

/// The value of `path` (`metadata.name`, `metadata.labels['app']`,
/// `status.podIP` ...) for `pod`; `None` for an unknown path.
pub fn pod_field(pod: &Pod, path: &str, node: Option<&NodeFields>) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix("['"))
            .and_then(|rest| rest.strip_suffix("']"))
    };
    if let Some(key) = keyed("metadata.labels") {
        return Some(meta.labels.as_ref()?.get(key).cloned().unwrap_or_default());
    }
    if let Some(key) = keyed("metadata.annotations") {
        return Some(
            meta.annotations
                .as_ref()?
                .get(key)
                .cloned()
                .unwrap_or_default(),
        );
    }
    let pairs = |map: Option<&std::collections::BTreeMap<String, String>>| {
        map.into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    Some(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => pairs(meta.labels.as_ref()),
        "metadata.annotations" => pairs(meta.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => node?.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => node?.host_ip.clone(),
        _ => return None,
    })
}

/// The value of a `resourceFieldRef`: a container's request or limit of
/// CPU (in units of the divisor, default 1 core, rounded up) or memory
/// (bytes, or units of the divisor).
pub fn resource_field(pod: &Pod, selector: &ResourceFieldSelector) -> Option<String> {
    let containers = &pod.spec.as_ref()?.containers;
    let container = match &selector.container_name {
        Some(name) if !name.is_empty() => containers.iter().find(|c| &c.name == name)?,
        _ => containers.first()?,
    };
    let (kind, resource) = selector.resource.split_once('.')?;
    let resources = container.resources.as_ref();
    let value = match kind {
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => return None,
    }
    .and_then(|m| m.get(resource))
    .map(|q| q.0.clone());
    let divisor = selector.divisor.as_ref().map(|q| q.0.as_str());
    if resource == "cpu" {
        let millis = value.as_deref().and_then(quantity::millis).unwrap_or(0);
        let per = divisor
            .and_then(quantity::millis)
            .filter(|d| *d > 0)
            .unwrap_or(1000);
        Some(
            ((millis + per - 1) / per)
                .max(if millis > 0 { 1 } else { 0 })
                .to_string(),
        )
    } else {
        let bytes = value.as_deref().and_then(quantity::units).unwrap_or(0);
        let per = divisor
            .and_then(quantity::units)
            .filter(|d| *d > 0)
            .unwrap_or(1);
        Some(((bytes + per - 1) / per).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "prod", "uid": "u1",
                         "labels": {"app": "web"}},
            "spec": {"nodeName": "edge-1", "containers": [
                {"name": "c", "resources": {"limits": {"cpu": "1500m", "memory": "64Mi"}}}
            ]}
        }))
        .expect("pod")
    }

    #[test]
    fn fields_are_read_from_the_pod_and_the_node() {
        let pod = pod();
        let node = NodeFields {
            pod_ip: "10.0.0.2".into(),
            host_ip: "127.0.0.1".into(),
        };
        assert_eq!(
            pod_field(&pod, "metadata.name", None).as_deref(),
            Some("web")
        );
        assert_eq!(
            pod_field(&pod, "metadata.labels['app']", None).as_deref(),
            Some("web")
        );
        assert_eq!(
            pod_field(&pod, "metadata.labels", None).as_deref(),
            Some("app=\"web\"")
        );
        assert_eq!(
            pod_field(&pod, "spec.nodeName", None).as_deref(),
            Some("edge-1")
        );
        assert_eq!(
            pod_field(&pod, "status.podIP", Some(&node)).as_deref(),
            Some("10.0.0.2")
        );
        assert_eq!(pod_field(&pod, "spec.bogus", None), None);
        let cpu = ResourceFieldSelector {
            resource: "limits.cpu".into(),
            ..Default::default()
        };
        assert_eq!(resource_field(&pod, &cpu).as_deref(), Some("2"));
        let memory = ResourceFieldSelector {
            resource: "limits.memory".into(),
            divisor: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                "1Mi".into(),
            )),
            ..Default::default()
        };
        assert_eq!(resource_field(&pod, &memory).as_deref(), Some("64"));
    }
}
