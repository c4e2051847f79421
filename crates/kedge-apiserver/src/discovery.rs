//! Discovery documents: `/version`, `/api`, `/apis`, `/api/v1`,
//! `/apis/<group>` and `/apis/<group>/<version>`, in the legacy (unaggregated)
//! format, which kubectl and client-go of every version accept.

use serde_json::{Value, json};

use crate::resources::Catalog;

/// The Kubernetes version the server reports. kubectl's dispatcher picks the
/// kubectl release matching `minor`, so this is the version whose API Kedge
/// follows.
pub const KUBERNETES_MINOR: &str = "32";

/// The `/version` document.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": KUBERNETES_MINOR,
        "gitVersion": format!("v1.{KUBERNETES_MINOR}.0-kedge.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, goarch()),
    })
}

/// The architecture in Go's spelling, as clients expect in `platform`.
fn goarch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// `/api`: the core group's versions. `server_address` is what clients
/// should use to reach this server (`host:port`).
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// One `APIGroup` object.
fn group_document(group: &str, versions: &[String]) -> Value {
    let entries: Vec<Value> = versions
        .iter()
        .map(|version| json!({"groupVersion": format!("{group}/{version}"), "version": version}))
        .collect();
    let preferred = entries.first().cloned().unwrap_or(Value::Null);
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": entries,
        "preferredVersion": preferred,
    })
}

/// `/apis`: every named group.
pub fn group_list(catalog: &Catalog) -> Value {
    let groups: Vec<Value> = catalog
        .groups()
        .iter()
        .map(|(group, versions)| {
            let mut document = group_document(group, versions);
            if let Some(map) = document.as_object_mut() {
                map.remove("kind");
                map.remove("apiVersion");
            }
            document
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`, or `None` when the group is not served.
pub fn group(catalog: &Catalog, group: &str) -> Option<Value> {
    let versions = catalog.versions(group);
    (!versions.is_empty()).then(|| group_document(group, &versions))
}

/// `/api/v1` or `/apis/<group>/<version>`, or `None` when not served.
pub fn resource_list(catalog: &Catalog, group: &str, version: &str) -> Option<Value> {
    let types = catalog.group_version(group, version);
    if types.is_empty() {
        return None;
    }
    let resources: Vec<Value> = types.iter().flat_map(|r| r.discovery_entries()).collect();
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_reports_kubernetes_1_32() {
        let version = version();
        assert_eq!(version["major"], "1");
        assert_eq!(version["minor"], "32");
        assert!(
            version["gitVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("v1.32."))
        );
    }

    #[test]
    fn groups_list_their_preferred_version() {
        let catalog = Catalog::new();
        let list = group_list(&catalog);
        let apps = list["groups"]
            .as_array()
            .and_then(|groups| groups.iter().find(|g| g["name"] == "apps"))
            .expect("apps listed");
        assert_eq!(apps["preferredVersion"]["groupVersion"], "apps/v1");
        assert!(apps.get("kind").is_none());
        assert!(group(&catalog, "nope.example.com").is_none());
        assert_eq!(group(&catalog, "batch").expect("batch")["kind"], "APIGroup");
    }

    #[test]
    fn core_resource_list_names_pods_and_subresources() {
        let catalog = Catalog::new();
        let list = resource_list(&catalog, "", "v1").expect("core v1");
        assert_eq!(list["groupVersion"], "v1");
        let names: Vec<&str> = list["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect();
        for name in [
            "pods",
            "pods/status",
            "pods/log",
            "namespaces",
            "namespaces/finalize",
            "nodes/status",
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
        assert!(resource_list(&catalog, "apps", "v2").is_none());
    }
}
