//! The resource catalog: every resource type the server serves, built-in or
//! defined by a CustomResourceDefinition, with what discovery reports of it
//! and how it is stored.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde_json::{Value, json};

/// The verbs of a full read-write resource, in discovery's order.
pub const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// The verbs of a `status` or `scale` subresource.
pub const SUBRESOURCE_VERBS: &[&str] = &["get", "patch", "update"];

/// A subresource of a resource type (`pods/status`, `deployments/scale`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subresource {
    /// The name after the slash: `status`, `scale`, `log`, `binding`.
    pub name: String,
    /// The group of the kind it answers with (`autoscaling` for `scale`).
    pub group: String,
    /// The version of the kind it answers with.
    pub version: String,
    /// The kind it answers with (`Scale`, `Binding`); the resource's own
    /// kind for `status`.
    pub kind: String,
    /// The verbs it supports.
    pub verbs: Vec<String>,
}

/// Where a custom resource's scale subresource reads and writes replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePaths {
    /// JSON path of the desired replicas, such as `.spec.replicas`.
    pub spec_replicas: String,
    /// JSON path of the observed replicas, such as `.status.replicas`.
    pub status_replicas: String,
    /// JSON path of the label selector string, if any.
    pub label_selector: Option<String>,
}

/// One resource type at one group-version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: String,
    /// Version, such as `v1`.
    pub version: String,
    /// Kind, such as `Pod`.
    pub kind: String,
    /// Kind of lists, such as `PodList`.
    pub list_kind: String,
    /// Plural resource name used in paths, such as `pods`.
    pub plural: String,
    /// Singular name, such as `pod`.
    pub singular: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Short names, such as `po`.
    pub short_names: Vec<String>,
    /// Categories, such as `all`.
    pub categories: Vec<String>,
    /// Verbs on the resource itself.
    pub verbs: Vec<String>,
    /// Its subresources.
    pub subresources: Vec<Subresource>,
    /// The version objects are stored in (equal to `version` for built-in
    /// kinds; the CRD's storage version for custom resources).
    pub storage_version: String,
    /// For custom resources, the name of the defining CRD.
    pub crd: Option<String>,
    /// For custom resources with a scale subresource, where replicas live.
    pub scale: Option<ScalePaths>,
    /// For custom resources, the version's `openAPIV3Schema`.
    pub schema: Option<Arc<Value>>,
    /// For custom resources, the version's `additionalPrinterColumns`.
    pub printer_columns: Vec<Value>,
}

impl ResourceType {
    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The subresource named `name`, if served.
    pub fn subresource(&self, name: &str) -> Option<&Subresource> {
        self.subresources.iter().find(|sub| sub.name == name)
    }

    /// Whether `verb` is served on the resource itself.
    pub fn supports(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == verb)
    }

    /// Whether the resource has a `status` subresource (status is then
    /// written only through it).
    pub fn has_status(&self) -> bool {
        self.subresource("status").is_some()
    }

    /// The storage key prefix of all objects of this type:
    /// `/registry/<group or core>/<plural>/`. The version is not part of
    /// the key: every version of a resource shares one set of objects.
    pub fn key_prefix(&self) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        format!("/registry/{group}/{}/", self.plural)
    }

    /// The storage key prefix of the objects in `namespace` (all objects
    /// for cluster-scoped types).
    pub fn namespace_prefix(&self, namespace: Option<&str>) -> String {
        match (self.namespaced, namespace) {
            (true, Some(namespace)) => format!("{}{namespace}/", self.key_prefix()),
            _ => self.key_prefix(),
        }
    }

    /// The storage key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.namespace_prefix(namespace))
    }

    /// This type's entry in a legacy `APIResourceList`, followed by its
    /// subresources' entries.
    pub fn discovery_entries(&self) -> Vec<Value> {
        let mut entry = json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": self.verbs,
        });
        if !self.short_names.is_empty() {
            entry["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            entry["categories"] = json!(self.categories);
        }
        if self.version == self.storage_version {
            entry["storageVersionHash"] = json!(storage_version_hash(self));
        }
        let mut entries = vec![entry];
        for sub in &self.subresources {
            let mut entry = json!({
                "name": format!("{}/{}", self.plural, sub.name),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": sub.kind,
                "verbs": sub.verbs,
            });
            if sub.group != self.group || sub.version != self.version {
                entry["group"] = json!(sub.group);
                entry["version"] = json!(sub.version);
            }
            entries.push(entry);
        }
        entries
    }
}

/// A short, stable hash of group, resource and storage version, as
/// discovery's `storageVersionHash` (clients only compare it).
fn storage_version_hash(resource: &ResourceType) -> String {
    // FNV-1a over the identifying strings, printed as base64 of 8 bytes.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in format!(
        "{}/{}/{}",
        resource.group, resource.storage_version, resource.plural
    )
    .bytes()
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(hash.to_be_bytes())
}

/// Describes a built-in resource for [`builtin`].
struct Builtin {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [&'static str],
}

const fn builtin_type(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
) -> Builtin {
    Builtin {
        group,
        version,
        kind,
        plural,
        namespaced,
        short_names: &[],
        categories: &[],
        subresources: &[],
    }
}

impl Builtin {
    const fn short(mut self, short_names: &'static [&'static str]) -> Self {
        self.short_names = short_names;
        self
    }

    const fn all(mut self) -> Self {
        self.categories = &["all"];
        self
    }

    const fn sub(mut self, subresources: &'static [&'static str]) -> Self {
        self.subresources = subresources;
        self
    }
}

const BUILTINS: &[Builtin] = &[
    builtin_type("", "v1", "Namespace", "namespaces", false)
        .short(&["ns"])
        .sub(&["status", "finalize"]),
    builtin_type("", "v1", "Node", "nodes", false)
        .short(&["no"])
        .sub(&["status", "proxy"]),
    builtin_type("", "v1", "Pod", "pods", true)
        .short(&["po"])
        .all()
        .sub(&[
            "status",
            "binding",
            "eviction",
            "log",
            "exec",
            "attach",
            "portforward",
        ]),
    builtin_type("", "v1", "ConfigMap", "configmaps", true).short(&["cm"]),
    builtin_type("", "v1", "Secret", "secrets", true),
    builtin_type("", "v1", "Service", "services", true)
        .short(&["svc"])
        .all()
        .sub(&["status"]),
    builtin_type("", "v1", "Endpoints", "endpoints", true).short(&["ep"]),
    builtin_type("", "v1", "Event", "events", true).short(&["ev"]),
    builtin_type("", "v1", "ServiceAccount", "serviceaccounts", true)
        .short(&["sa"])
        .sub(&["token"]),
    builtin_type(
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        true,
    )
    .short(&["pvc"])
    .sub(&["status"]),
    builtin_type("apps", "v1", "Deployment", "deployments", true)
        .short(&["deploy"])
        .all()
        .sub(&["status", "scale"]),
    builtin_type("apps", "v1", "ReplicaSet", "replicasets", true)
        .short(&["rs"])
        .all()
        .sub(&["status", "scale"]),
    builtin_type("apps", "v1", "StatefulSet", "statefulsets", true)
        .short(&["sts"])
        .all()
        .sub(&["status", "scale"]),
    builtin_type("apps", "v1", "DaemonSet", "daemonsets", true)
        .short(&["ds"])
        .all()
        .sub(&["status"]),
    builtin_type(
        "apps",
        "v1",
        "ControllerRevision",
        "controllerrevisions",
        true,
    ),
    builtin_type("batch", "v1", "Job", "jobs", true)
        .all()
        .sub(&["status"]),
    builtin_type("batch", "v1", "CronJob", "cronjobs", true)
        .short(&["cj"])
        .all()
        .sub(&["status"]),
    builtin_type("coordination.k8s.io", "v1", "Lease", "leases", true),
    builtin_type(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        true,
    ),
    builtin_type("rbac.authorization.k8s.io", "v1", "Role", "roles", true),
    builtin_type(
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
        true,
    ),
    builtin_type(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        "clusterroles",
        false,
    ),
    builtin_type(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        false,
    ),
    builtin_type(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
    )
    .short(&["crd", "crds"])
    .sub(&["status"]),
];

/// What each subresource name answers with and which verbs it takes, for
/// built-in kinds: `(group, version, kind, verbs)`; an empty kind means
/// the resource's own group, version and kind.
fn builtin_subresource(
    name: &str,
) -> (
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
) {
    match name {
        "scale" => ("autoscaling", "v1", "Scale", SUBRESOURCE_VERBS),
        "binding" => ("", "v1", "Binding", &["create"]),
        "eviction" => ("policy", "v1", "Eviction", &["create"]),
        "token" => ("authentication.k8s.io", "v1", "TokenRequest", &["create"]),
        "log" => ("", "v1", "Pod", &["get"]),
        "exec" | "attach" | "portforward" => ("", "v1", "PodExecOptions", &["create", "get"]),
        "proxy" => (
            "",
            "v1",
            "NodeProxyOptions",
            &["create", "delete", "get", "patch", "update"],
        ),
        "finalize" => ("", "", "", &["update"]),
        _ => ("", "", "", SUBRESOURCE_VERBS),
    }
}

/// The built-in resource types.
pub fn builtin() -> Vec<ResourceType> {
    BUILTINS
        .iter()
        .map(|b| {
            let subresources = b
                .subresources
                .iter()
                .map(|name| {
                    let (group, version, kind, verbs) = builtin_subresource(name);
                    let (group, version, kind) = if kind.is_empty() {
                        (b.group, b.version, b.kind)
                    } else {
                        (group, version, kind)
                    };
                    Subresource {
                        name: (*name).to_owned(),
                        group: group.to_owned(),
                        version: version.to_owned(),
                        kind: kind.to_owned(),
                        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
                    }
                })
                .collect();
            ResourceType {
                group: b.group.to_owned(),
                version: b.version.to_owned(),
                kind: b.kind.to_owned(),
                list_kind: format!("{}List", b.kind),
                plural: b.plural.to_owned(),
                singular: b.kind.to_lowercase(),
                namespaced: b.namespaced,
                short_names: b.short_names.iter().map(|s| (*s).to_owned()).collect(),
                categories: b.categories.iter().map(|s| (*s).to_owned()).collect(),
                verbs: ALL_VERBS.iter().map(|v| (*v).to_owned()).collect(),
                subresources,
                storage_version: b.version.to_owned(),
                crd: None,
                scale: None,
                schema: None,
                printer_columns: Vec::new(),
            }
        })
        .collect()
}

/// The served resource types, looked up by group, version and plural. It
/// starts with the built-in types; custom resource types come and go with
/// their CRDs.
#[derive(Debug, Clone)]
pub struct Catalog {
    inner: Arc<RwLock<CatalogState>>,
}

#[derive(Debug, Default)]
struct CatalogState {
    /// `(group, version, plural)` → type.
    types: BTreeMap<(String, String, String), Arc<ResourceType>>,
    /// Group → its versions, preferred first.
    groups: BTreeMap<String, Vec<String>>,
}

impl Default for Catalog {
    fn default() -> Self {
        Self::new()
    }
}

impl Catalog {
    /// A catalog of the built-in types.
    pub fn new() -> Self {
        let catalog = Self {
            inner: Arc::new(RwLock::new(CatalogState::default())),
        };
        for resource in builtin() {
            catalog.insert(resource);
        }
        catalog
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, CatalogState> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, CatalogState> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds or replaces a type.
    pub fn insert(&self, resource: ResourceType) {
        let mut state = self.write();
        let versions = state.groups.entry(resource.group.clone()).or_default();
        if !versions.contains(&resource.version) {
            versions.push(resource.version.clone());
            sort_versions(versions);
        }
        let key = (
            resource.group.clone(),
            resource.version.clone(),
            resource.plural.clone(),
        );
        state.types.insert(key, Arc::new(resource));
    }

    /// Removes every type defined by the CRD named `crd`.
    pub fn remove_crd(&self, crd: &str) {
        let mut state = self.write();
        state
            .types
            .retain(|_, resource| resource.crd.as_deref() != Some(crd));
        let remaining: Vec<(String, String)> = state
            .types
            .values()
            .map(|resource| (resource.group.clone(), resource.version.clone()))
            .collect();
        for (group, versions) in state.groups.iter_mut() {
            versions.retain(|version| remaining.iter().any(|(g, v)| g == group && v == version));
        }
        state.groups.retain(|_, versions| !versions.is_empty());
    }

    /// The type served at `group`/`version` under `plural`.
    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.read()
            .types
            .get(&(group.to_owned(), version.to_owned(), plural.to_owned()))
            .cloned()
    }

    /// The type of `kind` at `group`/`version`.
    pub fn by_kind(&self, group: &str, version: &str, kind: &str) -> Option<Arc<ResourceType>> {
        self.read()
            .types
            .values()
            .find(|r| r.group == group && r.version == version && r.kind == kind)
            .cloned()
    }

    /// Every type at `group`/`version`, by plural name.
    pub fn group_version(&self, group: &str, version: &str) -> Vec<Arc<ResourceType>> {
        self.read()
            .types
            .values()
            .filter(|r| r.group == group && r.version == version)
            .cloned()
            .collect()
    }

    /// Every served type.
    pub fn all(&self) -> Vec<Arc<ResourceType>> {
        self.read().types.values().cloned().collect()
    }

    /// The named groups (not the core group) and their versions, preferred
    /// version first, in a stable order.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        self.read()
            .groups
            .iter()
            .filter(|(group, _)| !group.is_empty())
            .map(|(group, versions)| (group.clone(), versions.clone()))
            .collect()
    }

    /// The versions served for `group`, preferred first.
    pub fn versions(&self, group: &str) -> Vec<String> {
        self.read().groups.get(group).cloned().unwrap_or_default()
    }
}

/// Sorts versions by Kubernetes' version priority: GA before beta before
/// alpha, higher numbers first, others last alphabetically.
pub fn sort_versions(versions: &mut [String]) {
    versions.sort_by_key(|version| version_priority(version));
}

/// A sort key: lower sorts first.
fn version_priority(version: &str) -> (u8, i64, i64, String) {
    let parse = |rest: &str| -> Option<(i64, u8, i64)> {
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let major: i64 = rest[..digits_end].parse().ok()?;
        let tail = &rest[digits_end..];
        if tail.is_empty() {
            return Some((major, 0, 0));
        }
        for (stage, label) in [(1u8, "beta"), (2u8, "alpha")] {
            if let Some(minor) = tail.strip_prefix(label) {
                let minor: i64 = minor.parse().ok()?;
                return Some((major, stage, minor));
            }
        }
        None
    };
    match version.strip_prefix('v').and_then(parse) {
        Some((major, stage, minor)) => (stage, -major, -minor, String::new()),
        None => (3, 0, 0, version.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_are_discovered_as_kube_apiserver_lists_them() {
        let catalog = Catalog::new();
        let pods = catalog.get("", "v1", "pods").expect("pods served");
        let entries = pods.discovery_entries();
        assert_eq!(entries[0]["shortNames"], json!(["po"]));
        assert_eq!(entries[0]["categories"], json!(["all"]));
        assert_eq!(entries[0]["verbs"].as_array().map(Vec::len), Some(8));
        let eviction = entries
            .iter()
            .find(|e| e["name"] == "pods/eviction")
            .expect("eviction advertised");
        assert_eq!(eviction["group"], "policy");
        assert_eq!(eviction["version"], "v1");
        let status = entries
            .iter()
            .find(|e| e["name"] == "pods/status")
            .expect("status");
        assert_eq!(status["kind"], "Pod");
        assert!(status.get("group").is_none());
        let deployments = catalog
            .get("apps", "v1", "deployments")
            .expect("deployments");
        let scale = deployments.subresource("scale").expect("scale");
        assert_eq!(
            (scale.group.as_str(), scale.kind.as_str()),
            ("autoscaling", "Scale")
        );
        let status = deployments.subresource("status").expect("status");
        assert_eq!(
            (status.group.as_str(), status.kind.as_str()),
            ("apps", "Deployment")
        );
    }

    #[test]
    fn keys_separate_groups_namespaces_and_names() {
        let catalog = Catalog::new();
        let pods = catalog.get("", "v1", "pods").expect("pods");
        assert_eq!(
            pods.key(Some("default"), "p1"),
            "/registry/core/pods/default/p1"
        );
        let nodes = catalog.get("", "v1", "nodes").expect("nodes");
        assert_eq!(nodes.key(None, "n1"), "/registry/core/nodes/n1");
        let deployments = catalog
            .get("apps", "v1", "deployments")
            .expect("deployments");
        assert_eq!(
            deployments.namespace_prefix(None),
            "/registry/apps/deployments/"
        );
    }

    #[test]
    fn versions_sort_by_kubernetes_priority() {
        let mut versions: Vec<String> = ["v1alpha1", "v2beta1", "foo", "v1", "v1beta2", "v2"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        sort_versions(&mut versions);
        assert_eq!(
            versions,
            ["v2", "v1", "v2beta1", "v1beta2", "v1alpha1", "foo"]
        );
    }

    #[test]
    fn crd_types_come_and_go() {
        let catalog = Catalog::new();
        let mut widget = catalog
            .get("", "v1", "configmaps")
            .expect("cm")
            .as_ref()
            .clone();
        widget.group = "example.com".into();
        widget.kind = "Widget".into();
        widget.plural = "widgets".into();
        widget.crd = Some("widgets.example.com".into());
        catalog.insert(widget);
        assert!(catalog.groups().iter().any(|(g, _)| g == "example.com"));
        catalog.remove_crd("widgets.example.com");
        assert!(catalog.get("example.com", "v1", "widgets").is_none());
        assert!(!catalog.groups().iter().any(|(g, _)| g == "example.com"));
    }
}
