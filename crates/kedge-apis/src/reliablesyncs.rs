//! `reliablesyncs.kubeedge.io/v1alpha1`: what each edge node acknowledged
//! (protocol.md §5.3). An `ObjectSync` (namespaced objects) or
//! `ClusterObjectSync` (cluster-scoped ones) named `<node>.<objectUID>`
//! records the resourceVersion of the object the node last acknowledged.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group.
pub const GROUP: &str = "reliablesyncs.kubeedge.io";

/// Which object an (Cluster)ObjectSync is about.
#[derive(
    CustomResource, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "reliablesyncs.kubeedge.io",
    version = "v1alpha1",
    kind = "ObjectSync",
    namespaced,
    status = "ObjectSyncStatus",
    doc = "What one edge node acknowledged of one namespaced object; named <node>.<objectUID>."
)]
#[serde(rename_all = "camelCase")]
pub struct ObjectSyncSpec {
    /// The object's apiVersion.
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        rename = "objectAPIVersion"
    )]
    pub object_api_version: String,
    /// The object's kind.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub object_kind: String,
    /// The object's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub object_name: String,
}

/// The same for cluster-scoped objects.
#[derive(
    CustomResource, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "reliablesyncs.kubeedge.io",
    version = "v1alpha1",
    kind = "ClusterObjectSync",
    status = "ObjectSyncStatus",
    doc = "What one edge node acknowledged of one cluster-scoped object; named <node>.<objectUID>."
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterObjectSyncSpec {
    /// The object's apiVersion.
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        rename = "objectAPIVersion"
    )]
    pub object_api_version: String,
    /// The object's kind.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub object_kind: String,
    /// The object's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub object_name: String,
}

// The derive needs a spec type per kind; the two carry the same fields.
impl From<ClusterObjectSyncSpec> for ObjectSyncSpec {
    fn from(spec: ClusterObjectSyncSpec) -> Self {
        Self {
            object_api_version: spec.object_api_version,
            object_kind: spec.object_kind,
            object_name: spec.object_name,
        }
    }
}

impl From<ObjectSyncSpec> for ClusterObjectSyncSpec {
    fn from(spec: ObjectSyncSpec) -> Self {
        Self {
            object_api_version: spec.object_api_version,
            object_kind: spec.object_kind,
            object_name: spec.object_name,
        }
    }
}

/// The resourceVersion the node acknowledged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectSyncStatus {
    /// The acknowledged resourceVersion; "0" while the object waits for
    /// its first acknowledgement.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub object_resource_version: String,
}

/// The name of the (Cluster)ObjectSync of `uid` on `node`.
pub fn sync_name(node: &str, uid: &str) -> String {
    format!("{node}.{uid}")
}

/// The node and object UID a (Cluster)ObjectSync name holds. Node names
/// may hold dots, UIDs do not: the split is at the last dot.
pub fn split_sync_name(name: &str) -> Option<(&str, &str)> {
    name.rsplit_once('.')
        .filter(|(node, uid)| !node.is_empty() && !uid.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn definitions_match_kubeedge() {
        let crd = ObjectSync::crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("objectsyncs.reliablesyncs.kubeedge.io")
        );
        assert_eq!(crd.spec.scope, "Namespaced");
        let crd = ClusterObjectSync::crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("clusterobjectsyncs.reliablesyncs.kubeedge.io")
        );
        assert_eq!(crd.spec.scope, "Cluster");
        let json = serde_json::to_value(ObjectSyncSpec {
            object_api_version: "v1".into(),
            object_kind: "Pod".into(),
            object_name: "p".into(),
        })
        .expect("json");
        assert_eq!(
            json,
            serde_json::json!({"objectAPIVersion": "v1", "objectKind": "Pod", "objectName": "p"})
        );
    }

    #[test]
    fn names_join_node_and_uid() {
        let name = sync_name("edge.example", "4f1c");
        assert_eq!(split_sync_name(&name), Some(("edge.example", "4f1c")));
        assert_eq!(split_sync_name("nodot"), None);
    }
}
