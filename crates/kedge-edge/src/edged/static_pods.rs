//! Static pods: pods defined by manifest files in the node's
//! `staticPodPath` rather than by the API, run whether or not the cloud is
//! reachable, as the kubelet runs them.
//!
//! Every manifest (`*.yaml`, `*.yml`, `*.json`, one Pod each) becomes a
//! pod named `<name>-<node>` in its namespace (`default` when it names
//! none), bound to this node, with a uid derived from the node and the
//! file's content, so an unchanged file keeps its pod across edgecore
//! restarts and an edited file replaces it. The pod carries the
//! annotations `kubernetes.io/config.source: file` and
//! `kubernetes.io/config.hash: <uid>`.
//!
//! The cloud sees a static pod through its mirror pod: a copy with the
//! annotation `kubernetes.io/config.mirror`, created through EdgeController
//! when the link is up and missing, and deleted when the manifest goes.
//! edged never runs a mirror pod it is sent; a mirror pod deleted in the
//! cloud is created again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use kedge_message::resource_type;
use sha2::{Digest, Sha256};

use crate::edged::metaclient::MetaClient;

/// The annotation naming where a pod's definition came from.
pub const CONFIG_SOURCE: &str = "kubernetes.io/config.source";
/// The annotation holding a static pod's content hash.
pub const CONFIG_HASH: &str = "kubernetes.io/config.hash";
/// The annotation that marks a mirror pod.
pub const CONFIG_MIRROR: &str = "kubernetes.io/config.mirror";

/// Whether `pod` is the API's mirror of a static pod.
pub fn is_mirror(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(CONFIG_MIRROR))
}

/// The mirror pod of static pod `pod`: the same pod, marked as a mirror,
/// without the uid the API assigns its own.
pub fn mirror_of(pod: &Pod) -> Pod {
    let mut mirror = pod.clone();
    mirror.metadata.uid = None;
    mirror.metadata.resource_version = None;
    let hash = pod.metadata.uid.clone().unwrap_or_default();
    mirror
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(CONFIG_MIRROR.to_owned(), hash);
    mirror.status = None;
    mirror
}

/// Makes the cloud hold the mirror of static pod `pod`: created when
/// missing, deleted (to be created at the next call) when it mirrors an
/// older version of the manifest. Failures (the link down) are left for
/// the next call.
pub async fn sync_mirror(client: &MetaClient, pod: &Pod) {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let existing = match client.get(namespace, resource_type::POD, name).await {
        Ok(existing) => existing.and_then(|o| serde_json::from_value::<Pod>(o).ok()),
        Err(error) => {
            tracing::debug!(%namespace, %name, %error, "looking up a mirror pod failed");
            return;
        }
    };
    match existing {
        None => {
            let mirror = match serde_json::to_value(mirror_of(pod)) {
                Ok(mirror) => mirror,
                Err(error) => {
                    tracing::warn!(%namespace, %name, %error, "a mirror pod does not serialise");
                    return;
                }
            };
            match client
                .insert(namespace, resource_type::POD, name, mirror)
                .await
            {
                Ok(_) => tracing::info!(%namespace, %name, "mirror pod created"),
                Err(error) => {
                    tracing::debug!(%namespace, %name, %error, "creating a mirror pod failed");
                }
            }
        }
        Some(existing) => {
            let mirrored = existing
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(CONFIG_MIRROR));
            if mirrored != pod.metadata.uid.as_ref() {
                if !is_mirror(&existing) {
                    tracing::warn!(%namespace, %name, "a pod of the cloud holds the name of a static pod; no mirror pod");
                    return;
                }
                delete_mirror(client, &existing).await;
            }
        }
    }
}

/// Deletes mirror pod `mirror` from the cloud (at once, by its uid).
pub async fn delete_mirror(client: &MetaClient, mirror: &Pod) {
    let namespace = mirror.metadata.namespace.as_deref().unwrap_or("default");
    let name = mirror.metadata.name.as_deref().unwrap_or_default();
    let Some(uid) = mirror.metadata.uid.as_deref() else {
        return;
    };
    match client.delete_pod(namespace, name, uid).await {
        Ok(()) => tracing::info!(%namespace, %name, "mirror pod deleted"),
        Err(error) => tracing::debug!(%namespace, %name, %error, "deleting a mirror pod failed"),
    }
}

/// Brings the cloud's mirror pods of node `node` in line with its static
/// pods `statics`: each gets its mirror ([`sync_mirror`]), and mirrors of
/// static pods that are gone (their manifest removed, even while edgecore
/// was down) are deleted.
pub async fn sync_mirrors(client: &MetaClient, node: &str, statics: &[Pod]) {
    for pod in statics {
        sync_mirror(client, pod).await;
    }
    let Ok(known) = client.query("default", resource_type::POD, None).await else {
        return;
    };
    let names: std::collections::HashSet<(Option<&str>, Option<&str>)> = statics
        .iter()
        .map(|p| (p.metadata.namespace.as_deref(), p.metadata.name.as_deref()))
        .collect();
    for object in known {
        let Ok(pod) = serde_json::from_value::<Pod>(object) else {
            continue;
        };
        let here = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node);
        let key = (
            pod.metadata.namespace.as_deref(),
            pod.metadata.name.as_deref(),
        );
        if here && is_mirror(&pod) && !names.contains(&key) {
            delete_mirror(client, &pod).await;
        }
    }
}

/// A manifest that could not be made a pod.
#[derive(Debug, thiserror::Error)]
#[error("static pod manifest {path}: {reason}")]
pub struct ManifestError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

/// The static pods of node `node` in directory `dir`, sorted by file
/// name, and the manifests refused. A missing directory holds no pods.
pub fn read_dir(dir: &Path, node: &str) -> (Vec<Pod>, Vec<ManifestError>) {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    let mut pods = Vec::new();
    let mut errors = Vec::new();
    for path in files {
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| static_pod(&text, node));
        match parsed {
            Ok(pod) => pods.push(pod),
            Err(reason) => errors.push(ManifestError { path, reason }),
        }
    }
    (pods, errors)
}

/// The static pod manifest `text` describes, on node `node`.
fn static_pod(text: &str, node: &str) -> Result<Pod, String> {
    let value: serde_json::Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| e.to_string())?
    } else {
        serde_saphyr::from_str(text).map_err(|e| e.to_string())?
    };
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    let api_version = value
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .unwrap_or("");
    if kind != "Pod" || api_version != "v1" {
        return Err(format!(
            "a static pod manifest is one v1 Pod, not {api_version:?} {kind:?}"
        ));
    }
    let mut pod: Pod = serde_json::from_value(value).map_err(|e| e.to_string())?;
    let name = pod
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or("the pod has no metadata.name")?;
    let spec = pod.spec.as_mut().ok_or("the pod has no spec")?;
    if spec.containers.is_empty() {
        return Err("the pod has no containers".to_owned());
    }
    spec.node_name = Some(node.to_owned());
    let digest = Sha256::new()
        .chain_update(node.as_bytes())
        .chain_update([0])
        .chain_update(text.as_bytes())
        .finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    let uid = format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    );
    let meta = &mut pod.metadata;
    meta.name = Some(format!("{name}-{node}"));
    if meta.namespace.as_deref().is_none_or(str::is_empty) {
        meta.namespace = Some("default".to_owned());
    }
    meta.uid = Some(uid.clone());
    meta.resource_version = None;
    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(CONFIG_SOURCE.to_owned(), "file".to_owned());
    annotations.insert(CONFIG_HASH.to_owned(), uid);
    annotations.remove(CONFIG_MIRROR);
    pod.status = None;
    Ok(pod)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: c\n    image: busybox\n";

    #[test]
    fn a_manifest_becomes_a_pod_bound_to_the_node() {
        let pod = static_pod(WEB, "edge-1").expect("a pod");
        assert_eq!(pod.metadata.name.as_deref(), Some("web-edge-1"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(
            pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
            Some("edge-1")
        );
        let uid = pod.metadata.uid.clone().expect("uid");
        assert_eq!(uid.len(), 36);
        let annotations = pod.metadata.annotations.as_ref().expect("annotations");
        assert_eq!(annotations[CONFIG_SOURCE], "file");
        assert_eq!(annotations[CONFIG_HASH], uid);
        assert!(!is_mirror(&pod));
    }

    #[test]
    fn the_uid_follows_the_content_and_the_node() {
        let uid = |text: &str, node: &str| static_pod(text, node).expect("pod").metadata.uid;
        assert_eq!(uid(WEB, "edge-1"), uid(WEB, "edge-1"));
        assert_ne!(uid(WEB, "edge-1"), uid(WEB, "edge-2"));
        let edited = WEB.replace("busybox", "busybox:2");
        assert_ne!(uid(WEB, "edge-1"), uid(&edited, "edge-1"));
    }

    #[test]
    fn json_manifests_are_read_too() {
        let text = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "j", "namespace": "apps"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}"#;
        let pod = static_pod(text, "n").expect("pod");
        assert_eq!(pod.metadata.name.as_deref(), Some("j-n"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("apps"));
    }

    #[test]
    fn what_is_not_one_pod_is_refused() {
        for text in [
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n",
            "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - name: c\n    image: b\n",
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers: []\n",
            "{not yaml: [",
        ] {
            assert!(static_pod(text, "n").is_err(), "{text}");
        }
    }

    #[test]
    fn a_directory_yields_its_pods_and_its_refusals() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("web.yaml"), WEB).expect("write");
        std::fs::write(dir.path().join("bad.yml"), "kind: Service\n").expect("write");
        std::fs::write(dir.path().join("notes.txt"), "ignored").expect("write");
        let (pods, errors) = read_dir(dir.path(), "edge-1");
        assert_eq!(pods.len(), 1);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].path.ends_with("bad.yml"));
        let (pods, errors) = read_dir(&dir.path().join("missing"), "edge-1");
        assert!(pods.is_empty() && errors.is_empty());
    }

    #[test]
    fn a_mirror_is_marked_and_has_no_uid() {
        let pod = static_pod(WEB, "edge-1").expect("pod");
        let mirror = mirror_of(&pod);
        assert!(is_mirror(&mirror));
        assert_eq!(mirror.metadata.uid, None);
        assert_eq!(mirror.metadata.name, pod.metadata.name);
    }
}
