//! Cloud → edge: one shared watch each of nodes, pods, ConfigMaps and
//! Secrets; every pod bound to an edge node is sent to it (insert, update,
//! delete), with the ConfigMaps and Secrets it references and their later
//! changes (protocol.md §6.1). Messages go to CloudHub, whose queue drops
//! what a node already holds and whose records make a lost message come
//! again when the node reconnects.

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use kedge_bus::BusHandle;
use kedge_controllers::informer::{Cache, Informer};
use kedge_message::{Message, group, module, operation, resource::NodeResource, resource_type};
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::locations::{Dependency, Locations, is_edge_node};

/// The namespace KubeEdge v1.15 puts in a node's delete message.
const NODE_DELETE_NAMESPACE: &str = "namespace";

/// `object` as message content, with its apiVersion and kind (the watch
/// leaves them out of typed objects).
pub fn content_of<K: Resource<DynamicType = ()> + Serialize>(object: &K) -> serde_json::Value {
    let mut value = serde_json::to_value(object).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), K::api_version(&()).into());
        map.insert("kind".into(), K::kind(&()).into());
    }
    value
}

/// An object message from EdgeController to `node`: resource
/// `node/<node>/<namespace>/<type>/<name>`, the object's
/// resourceVersion.
pub fn object_message<K: Resource<DynamicType = ()> + Serialize>(
    node: &str,
    resource_type: &str,
    op: &str,
    object: &K,
) -> Option<Message> {
    object_message_from(module::EDGE_CONTROLLER, node, resource_type, op, object)
}

/// The same from the cloud module `source`.
pub fn object_message_from<K: Resource<DynamicType = ()> + Serialize>(
    source: &str,
    node: &str,
    resource_type: &str,
    op: &str,
    object: &K,
) -> Option<Message> {
    let resource = NodeResource::new(
        node,
        object.namespace().unwrap_or_default(),
        resource_type,
        Some(object.name_any()),
    )
    .ok()?;
    Some(
        Message::new(
            source,
            group::RESOURCE,
            op,
            resource.to_string(),
            content_of(object),
        )
        .with_resource_version(object.resource_version().unwrap_or_default()),
    )
}

/// The message that tells CloudHub a node was deleted (it ends the node's
/// session rather than sending it).
pub fn node_deleted(node: &str) -> Option<Message> {
    let resource = NodeResource::new(
        node,
        NODE_DELETE_NAMESPACE,
        resource_type::NODE,
        Some(node.to_owned()),
    )
    .ok()?;
    Some(Message::new(
        module::EDGE_CONTROLLER,
        group::RESOURCE,
        operation::DELETE,
        resource.to_string(),
        serde_json::Value::Null,
    ))
}

/// Whether `object` was deleted: the cache no longer holds it, or holds
/// another object of the same name.
fn deleted<K>(cache: &Cache<K>, object: &K) -> bool
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    cache
        .get(&ObjectRef::from_obj(object))
        .is_none_or(|current| current.meta().uid != object.meta().uid)
}

/// The caches EdgeController shares with its upstream handlers.
#[derive(Clone)]
pub struct Caches {
    /// Pods.
    pub pods: Cache<Pod>,
    /// ConfigMaps.
    pub configmaps: Cache<ConfigMap>,
    /// Secrets.
    pub secrets: Cache<Secret>,
    /// Where objects live at the edge.
    pub locations: Arc<Mutex<Locations>>,
}

/// The watches and what follows them.
pub struct Downstream {
    nodes: Informer<Node>,
    pods: Informer<Pod>,
    configmaps: Informer<ConfigMap>,
    secrets: Informer<Secret>,
    caches: Caches,
    bus: BusHandle,
}

impl Downstream {
    /// Watches through `client`; sends to CloudHub through `bus`.
    pub fn new(client: &kube::Client, bus: BusHandle) -> Self {
        let nodes = Informer::new(Api::all(client.clone()));
        let pods = Informer::new(Api::all(client.clone()));
        let configmaps = Informer::new(Api::all(client.clone()));
        let secrets = Informer::new(Api::all(client.clone()));
        let caches = Caches {
            pods: pods.store(),
            configmaps: configmaps.store(),
            secrets: secrets.store(),
            locations: Arc::default(),
        };
        Self {
            nodes,
            pods,
            configmaps,
            secrets,
            caches,
            bus,
        }
    }

    /// The caches, for the upstream handlers.
    pub fn caches(&self) -> Caches {
        self.caches.clone()
    }

    /// Follows the watches until `token` is cancelled.
    pub async fn run(self, token: CancellationToken) {
        let Self {
            nodes,
            pods,
            configmaps,
            secrets,
            caches,
            bus,
        } = self;
        let node_cache = nodes.store();
        let mut node_changes = std::pin::pin!(nodes.subscribe());
        let mut pod_changes = std::pin::pin!(pods.subscribe());
        let mut configmap_changes = std::pin::pin!(configmaps.subscribe());
        let mut secret_changes = std::pin::pin!(secrets.subscribe());
        let tasks = tokio_util::task::TaskTracker::new();
        tasks.spawn(nodes.run(token.clone()));
        tasks.spawn(pods.run(token.clone()));
        tasks.spawn(configmaps.run(token.clone()));
        tasks.spawn(secrets.run(token.clone()));
        tasks.close();
        let sender = Sender { bus, caches };
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                Some(node) = node_changes.next() => {
                    sender.node_changed(&node, deleted(&node_cache, &node)).await;
                }
                Some(pod) = pod_changes.next() => {
                    let gone = deleted(&sender.caches.pods, &pod);
                    sender.pod_changed(&pod, gone).await;
                }
                Some(configmap) = configmap_changes.next() => {
                    let gone = deleted(&sender.caches.configmaps, &configmap);
                    let dependency = Dependency::ConfigMap(
                        configmap.namespace().unwrap_or_default(),
                        configmap.name_any(),
                    );
                    sender.dependency_changed(&dependency, configmap.as_ref(), gone).await;
                }
                Some(secret) = secret_changes.next() => {
                    let gone = deleted(&sender.caches.secrets, &secret);
                    let dependency =
                        Dependency::Secret(secret.namespace().unwrap_or_default(), secret.name_any());
                    sender.dependency_changed(&dependency, secret.as_ref(), gone).await;
                }
                else => break,
            }
        }
        tasks.wait().await;
    }
}

/// Turns changes into messages for CloudHub.
struct Sender {
    bus: BusHandle,
    caches: Caches,
}

impl Sender {
    async fn send(&self, msg: Option<Message>) {
        let Some(msg) = msg else { return };
        if let Err(error) = self.bus.send(module::CLOUD_HUB, msg).await {
            tracing::debug!(%error, "cannot hand a message to cloudhub");
        }
    }

    fn locations(&self) -> std::sync::MutexGuard<'_, Locations> {
        self.caches
            .locations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn node_changed(&self, node: &Node, gone: bool) {
        let name = node.name_any();
        let became_edge = self
            .locations()
            .set_node(&name, !gone && is_edge_node(node));
        if gone {
            self.send(node_deleted(&name)).await;
            return;
        }
        if became_edge {
            // Pods bound before the node was known as an edge node.
            let pods: Vec<Arc<Pod>> = self
                .caches
                .pods
                .state()
                .into_iter()
                .filter(|pod| pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&name))
                .collect();
            for pod in pods {
                self.pod_changed(&pod, false).await;
            }
        }
    }

    async fn pod_changed(&self, pod: &Pod, gone: bool) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if gone {
            let node = self.locations().remove(&uid);
            if let Some(node) = node {
                self.send(object_message(
                    &node,
                    resource_type::POD,
                    operation::DELETE,
                    pod,
                ))
                .await;
            }
            return;
        }
        let (known, placement) = {
            let mut locations = self.locations();
            let known = locations.node_of(&uid).is_some();
            (known, locations.place(pod))
        };
        let Some(node) = placement.node else { return };
        // The pod's ConfigMaps and Secrets first, so that they are there
        // when the node starts the pod.
        for dependency in &placement.new_dependencies {
            self.send(self.dependency_message(&node, dependency, operation::INSERT))
                .await;
        }
        let op = if known {
            operation::UPDATE
        } else {
            operation::INSERT
        };
        self.send(object_message(&node, resource_type::POD, op, pod))
            .await;
    }

    /// The message carrying `dependency` to `node`, if it exists.
    fn dependency_message(&self, node: &str, dependency: &Dependency, op: &str) -> Option<Message> {
        match dependency {
            Dependency::ConfigMap(namespace, name) => {
                let object = self
                    .caches
                    .configmaps
                    .get(&ObjectRef::new(name).within(namespace))?;
                object_message(node, resource_type::CONFIGMAP, op, object.as_ref())
            }
            Dependency::Secret(namespace, name) => {
                let object = self
                    .caches
                    .secrets
                    .get(&ObjectRef::new(name).within(namespace))?;
                // KubeEdge sends secrets as updates, even new ones.
                object_message(
                    node,
                    resource_type::SECRET,
                    operation::UPDATE,
                    object.as_ref(),
                )
            }
        }
    }

    async fn dependency_changed<K>(&self, dependency: &Dependency, object: &K, gone: bool)
    where
        K: Resource<DynamicType = ()> + Serialize,
    {
        let nodes = self.locations().nodes_needing(dependency);
        let (type_token, op) = match (dependency, gone) {
            (_, true) => (dependency_type(dependency), operation::DELETE),
            (Dependency::ConfigMap(..), false) => (resource_type::CONFIGMAP, operation::UPDATE),
            (Dependency::Secret(..), false) => (resource_type::SECRET, operation::UPDATE),
        };
        for node in nodes {
            self.send(object_message(&node, type_token, op, object))
                .await;
        }
    }
}

/// The resource type token of `dependency`.
fn dependency_type(dependency: &Dependency) -> &'static str {
    match dependency {
        Dependency::ConfigMap(..) => resource_type::CONFIGMAP,
        Dependency::Secret(..) => resource_type::SECRET,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn object_messages_name_the_node_and_carry_the_version_and_kind() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1", "resourceVersion": "42"},
        }))
        .expect("pod");
        let msg =
            object_message("edge-1", resource_type::POD, operation::INSERT, &pod).expect("message");
        assert_eq!(msg.router.resource, "node/edge-1/default/pod/web");
        assert_eq!(msg.router.source, "edgecontroller");
        assert_eq!(msg.router.group, "resource");
        assert_eq!(msg.router.operation, "insert");
        assert_eq!(msg.header.resource_version, "42");
        assert_eq!(msg.content["kind"], "Pod");
        assert_eq!(msg.content["apiVersion"], "v1");
        assert_eq!(msg.content["metadata"]["uid"], "u1");
    }

    #[test]
    fn a_deleted_node_is_announced_as_kubeedge_does() {
        let msg = node_deleted("edge-1").expect("message");
        assert_eq!(msg.router.resource, "node/edge-1/namespace/node/edge-1");
        assert_eq!(msg.router.operation, "delete");
    }
}
