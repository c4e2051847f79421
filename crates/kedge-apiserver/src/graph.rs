//! The node graph the node authorizer asks: which pods are bound to which
//! node, and which config maps, secrets, claims and service accounts those
//! pods reference. It is an index kept in memory from a watch of all pods.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::auth::{GraphKind, NodeGraph};
use crate::meta;
use crate::rest::Api;
use crate::status::StatusError;
use crate::storage::{Change, PageRequest};

/// How long the index waits before watching again after an error.
const RETRY: Duration = Duration::from_secs(1);

/// One object a pod makes reachable: kind, namespace, name.
type Reference = (GraphKind, String, String);

#[derive(Debug, Default)]
struct Index {
    /// `(namespace, pod)` → node and what the pod references.
    pods: HashMap<(String, String), (String, Vec<Reference>)>,
    /// node → reference → how many of its pods hold it.
    reachable: HashMap<String, HashMap<Reference, usize>>,
}

impl Index {
    fn remove(&mut self, key: &(String, String)) {
        if let Some((node, references)) = self.pods.remove(key) {
            let counts = self.reachable.entry(node.clone()).or_default();
            for reference in references {
                if let Some(count) = counts.get_mut(&reference) {
                    *count -= 1;
                    if *count == 0 {
                        counts.remove(&reference);
                    }
                }
            }
            if counts.is_empty() {
                self.reachable.remove(&node);
            }
        }
    }

    fn put(&mut self, pod: &Value) {
        let namespace = pod
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let key = (namespace.clone(), meta::meta_str(pod, "name").to_owned());
        self.remove(&key);
        let node = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("");
        if node.is_empty() {
            return;
        }
        let mut references: Vec<Reference> = pod_references(pod)
            .into_iter()
            .map(|(kind, name)| (kind, namespace.clone(), name))
            .collect();
        references.push((GraphKind::Pod, namespace.clone(), key.1.clone()));
        let counts = self.reachable.entry(node.to_owned()).or_default();
        for reference in &references {
            *counts.entry(reference.clone()).or_default() += 1;
        }
        self.pods.insert(key, (node.to_owned(), references));
    }
}

/// The objects a pod references, by kind and name (same namespace).
pub fn pod_references(pod: &Value) -> HashSet<(GraphKind, String)> {
    let mut out = HashSet::new();
    let spec = &pod["spec"];
    let mut add = |kind: GraphKind, name: Option<&str>| {
        if let Some(name) = name.filter(|n| !n.is_empty()) {
            out.insert((kind, name.to_owned()));
        }
    };
    add(
        GraphKind::ServiceAccount,
        spec["serviceAccountName"].as_str().or(Some("default")),
    );
    for secret in spec["imagePullSecrets"].as_array().into_iter().flatten() {
        add(GraphKind::Secret, secret["name"].as_str());
    }
    for volume in spec["volumes"].as_array().into_iter().flatten() {
        add(
            GraphKind::ConfigMap,
            volume.pointer("/configMap/name").and_then(Value::as_str),
        );
        add(
            GraphKind::Secret,
            volume.pointer("/secret/secretName").and_then(Value::as_str),
        );
        add(
            GraphKind::PersistentVolumeClaim,
            volume
                .pointer("/persistentVolumeClaim/claimName")
                .and_then(Value::as_str),
        );
        for source in volume
            .pointer("/projected/sources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            add(
                GraphKind::ConfigMap,
                source.pointer("/configMap/name").and_then(Value::as_str),
            );
            add(
                GraphKind::Secret,
                source.pointer("/secret/name").and_then(Value::as_str),
            );
        }
    }
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        for container in spec[list].as_array().into_iter().flatten() {
            for env in container["env"].as_array().into_iter().flatten() {
                add(
                    GraphKind::ConfigMap,
                    env.pointer("/valueFrom/configMapKeyRef/name")
                        .and_then(Value::as_str),
                );
                add(
                    GraphKind::Secret,
                    env.pointer("/valueFrom/secretKeyRef/name")
                        .and_then(Value::as_str),
                );
            }
            for from in container["envFrom"].as_array().into_iter().flatten() {
                add(
                    GraphKind::ConfigMap,
                    from.pointer("/configMapRef/name").and_then(Value::as_str),
                );
                add(
                    GraphKind::Secret,
                    from.pointer("/secretRef/name").and_then(Value::as_str),
                );
            }
        }
    }
    out
}

/// The node graph over the stored pods.
#[derive(Debug, Clone, Default)]
pub struct StoreGraph {
    index: Arc<RwLock<Index>>,
}

impl StoreGraph {
    /// An empty graph; [`StoreGraph::run`] fills it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps the graph in step with the stored pods until `token` is
    /// cancelled.
    pub async fn run(self, api: Api, token: CancellationToken) {
        loop {
            if let Err(error) = self.follow(&api, &token).await {
                tracing::warn!(%error, "node graph: pod watch ended; restarting");
            }
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn follow(&self, api: &Api, token: &CancellationToken) -> Result<(), StatusError> {
        let pods = api
            .catalog
            .get("", "v1", "pods")
            .ok_or_else(|| StatusError::internal("pods are not served"))?;
        let page = api
            .objects
            .list(&pods, None, PageRequest::default(), |_| true)
            .await?;
        {
            let mut index = self.write();
            *index = Index::default();
            for pod in &page.items {
                index.put(pod);
            }
        }
        let revision: i64 = page.resource_version.parse().unwrap_or(0);
        let mut changes = api.objects.watch(&pods, None, revision).await?;
        loop {
            let change = tokio::select! {
                _ = token.cancelled() => return Ok(()),
                change = changes.next() => change,
            };
            match change {
                None => return Ok(()),
                Some(Err(error)) => return Err(error),
                Some(Ok(Change::Put { object, .. })) => self.write().put(&object),
                Some(Ok(Change::Deleted { object })) => {
                    let namespace = object
                        .pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    self.write().remove(&(
                        namespace.to_owned(),
                        meta::meta_str(&object, "name").to_owned(),
                    ));
                }
            }
        }
    }
}

impl NodeGraph for StoreGraph {
    fn node_may_read(&self, node: &str, kind: GraphKind, namespace: &str, name: &str) -> bool {
        let index = self
            .index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        index
            .reachable
            .get(node)
            .is_some_and(|refs| refs.contains_key(&(kind, namespace.to_owned(), name.to_owned())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pods_make_their_references_reachable_from_their_node() {
        let pod = json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {
                "nodeName": "edge-1",
                "volumes": [{"name": "c", "configMap": {"name": "cfg"}},
                            {"name": "s", "secret": {"secretName": "creds"}}],
                "containers": [{"name": "a", "envFrom": [{"secretRef": {"name": "env"}}]}],
            },
        });
        let graph = StoreGraph::new();
        graph.write().put(&pod);
        assert!(graph.node_may_read("edge-1", GraphKind::ConfigMap, "ns", "cfg"));
        assert!(graph.node_may_read("edge-1", GraphKind::Secret, "ns", "creds"));
        assert!(graph.node_may_read("edge-1", GraphKind::Secret, "ns", "env"));
        assert!(graph.node_may_read("edge-1", GraphKind::Pod, "ns", "p"));
        assert!(graph.node_may_read("edge-1", GraphKind::ServiceAccount, "ns", "default"));
        assert!(!graph.node_may_read("edge-2", GraphKind::ConfigMap, "ns", "cfg"));
        assert!(!graph.node_may_read("edge-1", GraphKind::ConfigMap, "other", "cfg"));

        // Moving the pod away removes what it made reachable.
        let mut moved = pod.clone();
        moved["spec"]["nodeName"] = json!("edge-2");
        graph.write().put(&moved);
        assert!(!graph.node_may_read("edge-1", GraphKind::ConfigMap, "ns", "cfg"));
        assert!(graph.node_may_read("edge-2", GraphKind::ConfigMap, "ns", "cfg"));
        graph.write().remove(&("ns".into(), "p".into()));
        assert!(!graph.node_may_read("edge-2", GraphKind::ConfigMap, "ns", "cfg"));
    }
}
