//! Per-kind admission: what kube-apiserver's registry strategies and
//! built-in admission plugins do beyond generic metadata — service cluster
//! IP allocation, pod deletion grace periods, and the `scale` subresource.

use std::net::{IpAddr, Ipv4Addr};

use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::meta;
use crate::resources::ResourceType;
use crate::rest::Api;
use crate::selector;
use crate::status::{FieldError, Reason, StatusError};
use crate::storage::PageRequest;

/// The default grace period of a pod (`terminationGracePeriodSeconds`).
const DEFAULT_POD_GRACE_SECONDS: i64 = 30;

/// Admission state: the service IP range and the lock that serialises
/// allocations from it.
#[derive(Debug)]
pub struct Admission {
    service_range: Ipv4Range,
    allocation: Mutex<()>,
}

/// An IPv4 CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Range {
    network: u32,
    prefix: u8,
}

impl Ipv4Range {
    /// Parses `10.96.0.0/12`. Only IPv4 is supported; for a dual-stack
    /// pair (`a,b`) the IPv4 block is used.
    pub fn parse(text: &str) -> Result<Self, String> {
        let block = text
            .split(',')
            .map(str::trim)
            .find(|block| block.contains('.'))
            .ok_or_else(|| format!("{text:?} has no IPv4 CIDR block"))?;
        let (address, prefix) = block
            .split_once('/')
            .ok_or_else(|| format!("{block:?} is not a CIDR block"))?;
        let address: Ipv4Addr = address
            .parse()
            .map_err(|_| format!("{block:?} has a bad address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (8..=30).contains(p))
            .ok_or_else(|| format!("{block:?} needs a prefix length from 8 to 30"))?;
        let mask = u32::MAX << (32 - prefix);
        Ok(Self {
            network: u32::from(address) & mask,
            prefix,
        })
    }

    /// The `n`th address of the block.
    fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        let size = 1u32 << (32 - self.prefix);
        (n < size).then(|| Ipv4Addr::from(self.network + n))
    }

    /// Whether `address` lies in the block.
    pub fn contains(&self, address: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(address) & mask == self.network
    }

    /// The address of the `kubernetes` service: the first usable one.
    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 1)
    }

    fn usable(&self) -> u32 {
        (1u32 << (32 - self.prefix)) - 2
    }
}

impl Admission {
    /// Admission with services allocated from `service_range`.
    pub fn new(service_range: Ipv4Range) -> Self {
        Self {
            service_range,
            allocation: Mutex::new(()),
        }
    }

    /// The service IP range.
    pub fn service_range(&self) -> Ipv4Range {
        self.service_range
    }

    /// Admits a new object (already defaulted, with metadata).
    pub async fn admit_create(
        &self,
        api: &Api,
        resource: &ResourceType,
        object: &mut Value,
        _dry_run: bool,
    ) -> Result<(), StatusError> {
        if resource.group.is_empty() && resource.kind == "Service" {
            self.allocate_cluster_ip(api, resource, object).await?;
        }
        if resource.group == "batch" && resource.kind == "Job" {
            generate_job_selector(object)?;
        }
        Ok(())
    }

    /// Admits an update of `old` to `new`.
    pub async fn admit_update(
        &self,
        _api: &Api,
        resource: &ResourceType,
        old: &Value,
        new: &mut Value,
        _dry_run: bool,
    ) -> Result<(), StatusError> {
        if resource.group.is_empty() && resource.kind == "Service" {
            // As upstream: an update that leaves the cluster IP out keeps
            // the allocated one.
            for field in ["clusterIP", "clusterIPs"] {
                let missing = new
                    .pointer(&format!("/spec/{field}"))
                    .is_none_or(|v| v.is_null() || v == "");
                if missing && let Some(value) = old.pointer(&format!("/spec/{field}")) {
                    new["spec"][field] = value.clone();
                }
            }
        }
        Ok(())
    }

    /// Gives a service its cluster IP: the requested one if free and in
    /// range, else the first free one. Headless (`None`) and ExternalName
    /// services get none.
    async fn allocate_cluster_ip(
        &self,
        api: &Api,
        resource: &ResourceType,
        object: &mut Value,
    ) -> Result<(), StatusError> {
        let service_type = object
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP");
        if service_type == "ExternalName" {
            return Ok(());
        }
        let requested = object
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if requested == "None" {
            object["spec"]["clusterIPs"] = json!(["None"]);
            return Ok(());
        }
        let _guard = self.allocation.lock().await;
        let services = api
            .objects
            .list(resource, None, PageRequest::default(), |_| true)
            .await?;
        let used: std::collections::HashSet<Ipv4Addr> = services
            .items
            .iter()
            .filter_map(|s| s.pointer("/spec/clusterIP").and_then(Value::as_str))
            .filter_map(|ip| ip.parse().ok())
            .collect();
        let name = meta::meta_str(object, "name").to_owned();
        let ip = if requested.is_empty() {
            (2..=self.service_range.usable())
                .filter_map(|n| self.service_range.nth(n))
                .find(|ip| !used.contains(ip))
                .ok_or_else(|| {
                    StatusError::new(
                        Reason::InternalError,
                        "failed to allocate a serviceIP: range is full",
                    )
                })?
        } else {
            let ip: Ipv4Addr = match requested.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) if self.service_range.contains(ip) => ip,
                _ => {
                    return Err(StatusError::invalid(
                        "",
                        "Service",
                        &name,
                        &[FieldError::invalid(
                            "spec.clusterIPs",
                            json!([requested]),
                            "failed to allocate IP: the provided IP is not in the valid range",
                        )],
                    ));
                }
            };
            if used.contains(&ip) {
                return Err(StatusError::invalid(
                    "",
                    "Service",
                    &name,
                    &[FieldError::invalid(
                        "spec.clusterIPs",
                        json!([requested]),
                        format!(
                            "failed to allocate IP {requested}: provided IP is already allocated"
                        ),
                    )],
                ));
            }
            ip
        };
        object["spec"]["clusterIP"] = json!(ip.to_string());
        object["spec"]["clusterIPs"] = json!([ip.to_string()]);
        Ok(())
    }

    /// The grace period a deletion of `object` gets: for a pod bound to an
    /// existing node and not finished, the requested period or its
    /// `terminationGracePeriodSeconds`; otherwise 0 (deleted at once).
    pub async fn grace_period(
        &self,
        api: &Api,
        resource: &ResourceType,
        object: &Value,
        requested: Option<i64>,
    ) -> Result<i64, StatusError> {
        if !(resource.group.is_empty() && resource.kind == "Pod") {
            return Ok(0);
        }
        let node = object
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("");
        let phase = object
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("");
        if node.is_empty() || matches!(phase, "Succeeded" | "Failed") {
            return Ok(0);
        }
        let nodes = api
            .catalog
            .get("", "v1", "nodes")
            .ok_or_else(|| StatusError::internal("nodes are not served"))?;
        if api.objects.try_get(&nodes, None, node).await?.is_none() {
            // Nothing will ever stop a pod on a node that does not exist
            // (upstream's pod garbage collector deletes such pods).
            return Ok(0);
        }
        let grace = requested.unwrap_or_else(|| {
            object
                .pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(DEFAULT_POD_GRACE_SECONDS)
        });
        // A pod already being deleted keeps the shorter of the two periods.
        let current = object
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64);
        Ok(current.map_or(grace, |current| current.min(grace)).max(0))
    }
}

/// As upstream, a Job without `manualSelector: true` selects its pods by
/// its uid: the labels go on its template and the selector is generated;
/// a selector given without `manualSelector` is refused.
fn generate_job_selector(job: &mut Value) -> Result<(), StatusError> {
    if job.pointer("/spec/manualSelector") == Some(&json!(true)) {
        return Ok(());
    }
    let name = job.pointer("/metadata/name").cloned().unwrap_or_default();
    let uid = job.pointer("/metadata/uid").cloned().unwrap_or_default();
    if let Some(selector) = job.pointer("/spec/selector").filter(|s| !s.is_null()) {
        let errors = [FieldError::invalid(
            "spec.selector",
            selector.clone(),
            "`selector` not auto-generated",
        )];
        let name = name.as_str().unwrap_or_default();
        return Err(StatusError::invalid("batch", "Job", name, &errors));
    }
    let Some(spec) = job.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    spec.insert(
        "selector".into(),
        json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
    );
    let template = spec.entry("template").or_insert_with(|| json!({}));
    if !template.get("metadata").is_some_and(Value::is_object) {
        template["metadata"] = json!({});
    }
    if !template["metadata"]
        .get("labels")
        .is_some_and(Value::is_object)
    {
        template["metadata"]["labels"] = json!({});
    }
    let labels = &mut template["metadata"]["labels"];
    labels["batch.kubernetes.io/controller-uid"] = uid.clone();
    labels["controller-uid"] = uid;
    labels["batch.kubernetes.io/job-name"] = name.clone();
    labels["job-name"] = name;
    Ok(())
}

/// The JSON paths of replicas and selector for a scalable resource.
fn scale_paths(resource: &ResourceType) -> Result<(String, String, Option<String>), StatusError> {
    if let Some(scale) = &resource.scale {
        return Ok((
            scale.spec_replicas.clone(),
            scale.status_replicas.clone(),
            scale.label_selector.clone(),
        ));
    }
    match (resource.group.as_str(), resource.kind.as_str()) {
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet") => Ok((
            ".spec.replicas".into(),
            ".status.replicas".into(),
            Some(".spec.selector".into()),
        )),
        _ => Err(StatusError::new(
            Reason::NotFound,
            format!("{} have no scale subresource", resource.plural),
        )),
    }
}

fn pointer(path: &str) -> String {
    path.replace('.', "/")
}

/// The `autoscaling/v1` `Scale` view of a scalable object.
pub fn to_scale(resource: &ResourceType, object: &Value) -> Result<Value, StatusError> {
    let (spec, status, selector_path) = scale_paths(resource)?;
    let spec_replicas = object
        .pointer(&pointer(&spec))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let status_replicas = object
        .pointer(&pointer(&status))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let selector = match selector_path.map(|path| object.pointer(&pointer(&path)).cloned()) {
        Some(Some(Value::String(text))) => text,
        Some(Some(label_selector @ Value::Object(_))) => {
            selector::label_selector_string(&label_selector)?
        }
        _ => String::new(),
    };
    let metadata = object.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let mut scale_meta = json!({});
    for field in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(value) = metadata.get(field) {
            scale_meta[field] = value.clone();
        }
    }
    let mut status_body = json!({"replicas": status_replicas});
    if !selector.is_empty() {
        status_body["selector"] = json!(selector);
    }
    Ok(json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": scale_meta,
        "spec": {"replicas": spec_replicas},
        "status": status_body,
    }))
}

/// Sets the desired replicas of a scalable object.
pub fn set_replicas(
    resource: &ResourceType,
    object: &mut Value,
    replicas: i64,
) -> Result<(), StatusError> {
    if replicas < 0 {
        return Err(StatusError::invalid(
            &resource.group,
            "Scale",
            meta::meta_str(object, "name"),
            &[FieldError::invalid(
                "spec.replicas",
                json!(replicas),
                "must be greater than or equal to 0",
            )],
        ));
    }
    let (spec, _, _) = scale_paths(resource)?;
    let mut target = &mut *object;
    let parts: Vec<&str> = spec.trim_start_matches('.').split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            target[*part] = json!(replicas);
        } else {
            if !target.get(*part).is_some_and(Value::is_object) {
                target[*part] = json!({});
            }
            target = &mut target[*part];
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Catalog;

    #[test]
    fn ranges_parse_and_allocate_inside() {
        let range = Ipv4Range::parse("10.96.0.0/12").expect("valid");
        assert_eq!(range.first(), Ipv4Addr::new(10, 96, 0, 1));
        assert!(range.contains(Ipv4Addr::new(10, 111, 255, 254)));
        assert!(!range.contains(Ipv4Addr::new(10, 112, 0, 1)));
        assert!(Ipv4Range::parse("fd00::/108").is_err());
        assert_eq!(
            Ipv4Range::parse("10.0.0.0/24,fd00::/108")
                .expect("dual")
                .first(),
            Ipv4Addr::new(10, 0, 0, 1)
        );
    }

    #[test]
    fn jobs_get_a_generated_selector() {
        let mut job = json!({"metadata": {"name": "pi", "uid": "u-1"},
            "spec": {"template": {"spec": {"containers": []}}}});
        generate_job_selector(&mut job).unwrap();
        assert_eq!(
            job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
            "u-1"
        );
        assert_eq!(
            job["spec"]["template"]["metadata"]["labels"]["job-name"],
            "pi"
        );
        let mut chosen = json!({"metadata": {"name": "pi", "uid": "u-1"},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {}}});
        assert!(generate_job_selector(&mut chosen).is_err());
        chosen["spec"]["manualSelector"] = json!(true);
        assert!(generate_job_selector(&mut chosen).is_ok());
    }

    #[test]
    fn deployments_scale_through_spec_replicas() {
        let deployments = Catalog::new()
            .get("apps", "v1", "deployments")
            .expect("served");
        let mut object = json!({
            "metadata": {"name": "d", "namespace": "default", "uid": "u", "resourceVersion": "4"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "x"}}},
            "status": {"replicas": 1},
        });
        let scale = to_scale(&deployments, &object).expect("scale");
        assert_eq!(scale["spec"]["replicas"], 1);
        assert_eq!(scale["status"]["selector"], "app=x");
        set_replicas(&deployments, &mut object, 3).expect("set");
        assert_eq!(object["spec"]["replicas"], 3);
        assert!(set_replicas(&deployments, &mut object, -1).is_err());
        let configmaps = Catalog::new().get("", "v1", "configmaps").expect("served");
        assert!(to_scale(&configmaps, &object).is_err());
    }
}
