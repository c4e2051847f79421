//! Where objects live at the edge: which nodes are edge nodes, which pod
//! is bound to which of them, and which edge nodes need which ConfigMaps
//! and Secrets (those their pods reference). One table for all nodes, so
//! EdgeController's cost grows with the objects, not nodes × objects.

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::{Node, Pod, PodSpec};

/// The label that marks a node as an edge node.
pub const EDGE_NODE_LABEL: &str = "node-role.kubernetes.io/edge";

/// A ConfigMap or Secret a pod references.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dependency {
    /// A ConfigMap: namespace and name.
    ConfigMap(String, String),
    /// A Secret: namespace and name.
    Secret(String, String),
}

/// A pod bound to an edge node.
#[derive(Debug, Clone)]
struct Placed {
    node: String,
    dependencies: Vec<Dependency>,
}

/// The table.
#[derive(Debug, Default)]
pub struct Locations {
    edge_nodes: HashSet<String>,
    /// Pods on edge nodes, by UID.
    pods: HashMap<String, Placed>,
    /// For each dependency, its nodes and how many of their pods use it.
    needed: HashMap<Dependency, HashMap<String, usize>>,
}

/// Whether `node` carries the edge label.
pub fn is_edge_node(node: &Node) -> bool {
    node.metadata
        .labels
        .as_ref()
        .is_some_and(|labels| labels.contains_key(EDGE_NODE_LABEL))
}

/// The ConfigMaps and Secrets `spec` needs (volumes, projected sources,
/// env and envFrom of every container, image pull secrets), each once.
pub fn dependencies(namespace: &str, spec: &PodSpec) -> Vec<Dependency> {
    let configmap = |name: &str| Dependency::ConfigMap(namespace.to_owned(), name.to_owned());
    let secret = |name: &str| Dependency::Secret(namespace.to_owned(), name.to_owned());
    let mut found = Vec::new();
    for volume in spec.volumes.iter().flatten() {
        if let Some(source) = &volume.config_map {
            found.push(configmap(&source.name));
        }
        if let Some(name) = volume
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref())
        {
            found.push(secret(name));
        }
        let sources = volume.projected.as_ref().and_then(|p| p.sources.as_ref());
        for source in sources.into_iter().flatten() {
            if let Some(projection) = &source.config_map {
                found.push(configmap(&projection.name));
            }
            if let Some(projection) = &source.secret {
                found.push(secret(&projection.name));
            }
        }
    }
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter());
    for container in containers {
        for env in container.env.iter().flatten() {
            let Some(from) = &env.value_from else {
                continue;
            };
            if let Some(key) = &from.config_map_key_ref {
                found.push(configmap(&key.name));
            }
            if let Some(key) = &from.secret_key_ref {
                found.push(secret(&key.name));
            }
        }
        for from in container.env_from.iter().flatten() {
            if let Some(source) = &from.config_map_ref {
                found.push(configmap(&source.name));
            }
            if let Some(source) = &from.secret_ref {
                found.push(secret(&source.name));
            }
        }
    }
    for reference in spec.image_pull_secrets.iter().flatten() {
        found.push(secret(&reference.name));
    }
    found.retain(
        |d| !matches!(d, Dependency::ConfigMap(_, n) | Dependency::Secret(_, n) if n.is_empty()),
    );
    found.sort();
    found.dedup();
    found
}

/// What placing a pod changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// The edge node the pod is bound to, if it is bound to one.
    pub node: Option<String>,
    /// Dependencies that node did not need before: to be sent to it.
    pub new_dependencies: Vec<Dependency>,
}

impl Locations {
    /// Records whether `name` is an edge node; true when it just became
    /// one.
    pub fn set_node(&mut self, name: &str, edge: bool) -> bool {
        if edge {
            self.edge_nodes.insert(name.to_owned())
        } else {
            self.edge_nodes.remove(name);
            false
        }
    }

    /// Whether `name` is an edge node.
    pub fn is_edge(&self, name: &str) -> bool {
        self.edge_nodes.contains(name)
    }

    /// Records `pod` (present in the cluster) where it is bound.
    pub fn place(&mut self, pod: &Pod) -> Placement {
        let Some(uid) = pod.metadata.uid.clone() else {
            return Placement::default();
        };
        let spec = pod.spec.as_ref();
        let node = spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| self.edge_nodes.contains(n));
        let Some(node) = node else {
            self.remove(&uid);
            return Placement::default();
        };
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let dependencies = spec
            .map(|s| dependencies(&namespace, s))
            .unwrap_or_default();
        let old = self.pods.insert(
            uid,
            Placed {
                node: node.clone(),
                dependencies: dependencies.clone(),
            },
        );
        let mut new_dependencies = Vec::new();
        for dependency in &dependencies {
            let users = self.needed.entry(dependency.clone()).or_default();
            let count = users.entry(node.clone()).or_default();
            *count += 1;
            if *count == 1 {
                new_dependencies.push(dependency.clone());
            }
        }
        if let Some(old) = old {
            self.release(&old);
        }
        Placement {
            node: Some(node),
            new_dependencies,
        }
    }

    /// Forgets the pod `uid`; the node it was on, if an edge node.
    pub fn remove(&mut self, uid: &str) -> Option<String> {
        let placed = self.pods.remove(uid)?;
        self.release(&placed);
        Some(placed.node)
    }

    fn release(&mut self, placed: &Placed) {
        for dependency in &placed.dependencies {
            let Some(users) = self.needed.get_mut(dependency) else {
                continue;
            };
            if let Some(count) = users.get_mut(&placed.node) {
                *count -= 1;
                if *count == 0 {
                    users.remove(&placed.node);
                }
            }
            if users.is_empty() {
                self.needed.remove(dependency);
            }
        }
    }

    /// The edge nodes whose pods use `dependency`.
    pub fn nodes_needing(&self, dependency: &Dependency) -> Vec<String> {
        self.needed
            .get(dependency)
            .map(|users| users.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether a pod on `node` uses `dependency` (what a node may read).
    pub fn needs(&self, node: &str, dependency: &Dependency) -> bool {
        self.needed
            .get(dependency)
            .is_some_and(|users| users.contains_key(node))
    }

    /// The edge node the pod `uid` is bound to.
    pub fn node_of(&self, uid: &str) -> Option<&str> {
        self.pods.get(uid).map(|placed| placed.node.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(uid: &str, node: &str, spec: serde_json::Value) -> Pod {
        let mut spec = spec;
        spec["nodeName"] = json!(node);
        serde_json::from_value(json!({
            "metadata": {"name": uid, "namespace": "ns", "uid": uid},
            "spec": spec,
        }))
        .expect("pod")
    }

    fn uses_cfg_and_token() -> serde_json::Value {
        json!({
            "volumes": [{"name": "v", "configMap": {"name": "cfg"}},
                        {"name": "p", "projected": {"sources": [{"secret": {"name": "token"}}]}}],
            "containers": [{"name": "c", "env": [
                {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "a"}}}]}],
        })
    }

    #[test]
    fn references_are_found_everywhere_once() {
        let spec: PodSpec = serde_json::from_value(json!({
            "volumes": [{"name": "v", "configMap": {"name": "a"}},
                        {"name": "s", "secret": {"secretName": "b"}}],
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "c"}}]}],
            "containers": [{"name": "c", "env": [
                {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "a", "key": "k"}}},
                {"name": "Y", "valueFrom": {"secretKeyRef": {"name": "d", "key": "k"}}}],
                "envFrom": [{"configMapRef": {"name": "e"}}]}],
            "imagePullSecrets": [{"name": "f"}],
        }))
        .expect("spec");
        let found = dependencies("ns", &spec);
        let names: Vec<String> = found
            .iter()
            .map(|d| match d {
                Dependency::ConfigMap(_, n) => format!("cm/{n}"),
                Dependency::Secret(_, n) => format!("secret/{n}"),
            })
            .collect();
        assert_eq!(
            names,
            [
                "cm/a", "cm/e", "secret/b", "secret/c", "secret/d", "secret/f"
            ]
        );
    }

    #[test]
    fn a_dependency_is_new_to_a_node_once_and_released_with_its_last_pod() {
        let mut locations = Locations::default();
        assert!(locations.set_node("edge-1", true));
        assert!(!locations.set_node("edge-1", true), "already known");
        let cfg = Dependency::ConfigMap("ns".into(), "cfg".into());

        let first = locations.place(&pod("p1", "edge-1", uses_cfg_and_token()));
        assert_eq!(first.node.as_deref(), Some("edge-1"));
        assert_eq!(first.new_dependencies.len(), 2);
        let second = locations.place(&pod("p2", "edge-1", uses_cfg_and_token()));
        assert!(second.new_dependencies.is_empty(), "the node has them");
        // Placing the same pod again changes nothing.
        let again = locations.place(&pod("p1", "edge-1", uses_cfg_and_token()));
        assert!(again.new_dependencies.is_empty());
        assert_eq!(locations.nodes_needing(&cfg), ["edge-1"]);
        assert!(locations.needs("edge-1", &cfg));
        assert!(!locations.needs("edge-2", &cfg));

        assert_eq!(locations.remove("p1").as_deref(), Some("edge-1"));
        assert!(locations.needs("edge-1", &cfg), "p2 still uses it");
        locations.remove("p2");
        assert!(locations.nodes_needing(&cfg).is_empty());
    }

    #[test]
    fn pods_on_cloud_nodes_are_not_placed() {
        let mut locations = Locations::default();
        locations.set_node("edge-1", true);
        let placed = locations.place(&pod("p1", "cloud-1", uses_cfg_and_token()));
        assert_eq!(placed, Placement::default());
        assert_eq!(locations.node_of("p1"), None);
        let placed = locations.place(&pod("p1", "edge-1", uses_cfg_and_token()));
        assert_eq!(placed.node.as_deref(), Some("edge-1"));
        assert_eq!(locations.node_of("p1"), Some("edge-1"));
    }
}
