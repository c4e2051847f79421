//! SyncController: brings a node up to date from what it acknowledged
//! (protocol.md §5.3).
//!
//! When CloudHub reports a node connected, and every `period` for each
//! connected node, it compares each of the node's records with the live
//! object: an object that is gone (or was replaced under the same name)
//! is sent as a `delete`, one newer than what the node acknowledged as an
//! `update` with the whole object. CloudHub's queue drops what the node
//! already holds, so a node is never sent an older version over a newer.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use kedge_bus::{BusHandle, Module, ModuleContext, ModuleError};
use kedge_message::{Message, group, module, operation, resource};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use serde_json::json;

use crate::cloudhub::objectsync::{SyncRecord, SyncRecords};
use crate::cloudhub::queue::parse_version;
use crate::cluster::ClusterClient;

/// How often connected nodes are compared again although nothing was
/// reported (KubeEdge: 5 s).
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(5);

/// The SyncController module.
pub struct SyncController {
    cluster: ClusterClient,
    records: SyncRecords,
    period: Duration,
}

impl SyncController {
    /// A controller that compares `records` with the objects of
    /// `cluster`.
    pub fn new(cluster: ClusterClient, records: SyncRecords, period: Duration) -> Self {
        Self {
            cluster,
            records,
            period,
        }
    }
}

/// The edge's resource type token for a kind: its lower-case name.
fn resource_type_of(kind: &str) -> String {
    kind.to_ascii_lowercase()
}

/// The module that sends objects of `kind` to the edge.
fn source_of(kind: &str) -> &'static str {
    match kind {
        "Device" | "DeviceModel" => module::DEVICE_CONTROLLER,
        _ => module::EDGE_CONTROLLER,
    }
}

/// What `node` must be sent for one record, given the live object (or
/// `None` when it is gone).
pub fn reconcile(
    node: &str,
    uid: &str,
    record: &SyncRecord,
    live: Option<&serde_json::Value>,
) -> Option<Message> {
    let namespace = record
        .namespace
        .as_deref()
        .unwrap_or(resource::NULL_NAMESPACE);
    let res = format!(
        "node/{node}/{namespace}/{}/{}",
        resource_type_of(&record.kind),
        record.name
    );
    let live_uid = live.and_then(|object| object.pointer("/metadata/uid")?.as_str());
    if live_uid != Some(uid) {
        let mut metadata = json!({"name": record.name, "uid": uid});
        if let Some(namespace) = &record.namespace {
            metadata["namespace"] = json!(namespace);
        }
        let content =
            json!({"apiVersion": record.api_version, "kind": record.kind, "metadata": metadata});
        return Some(Message::new(
            source_of(&record.kind),
            group::RESOURCE,
            operation::DELETE,
            res,
            content,
        ));
    }
    let object = live?;
    let version = object
        .pointer("/metadata/resourceVersion")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    if parse_version(version).is_some_and(|live| live > record.resource_version) {
        return Some(
            Message::new(
                source_of(&record.kind),
                group::RESOURCE,
                operation::UPDATE,
                res,
                object.clone(),
            )
            .with_resource_version(version),
        );
    }
    None
}

/// The live objects of one kind, by namespace and name.
type LiveObjects = HashMap<(Option<String>, String), serde_json::Value>;

/// Lists every object of the kind `api_version`/`kind`, in all namespaces.
async fn list_kind(
    client: &kube::Client,
    api_version: &str,
    kind: &str,
) -> Result<LiveObjects, kube::Error> {
    let (group, version) = match api_version.split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", api_version),
    };
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ApiResource::from_gvk(&gvk));
    let mut objects = LiveObjects::new();
    for mut object in api.list(&ListParams::default()).await? {
        object.types = Some(kube::api::TypeMeta {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
        });
        let key = (
            object.metadata.namespace.clone(),
            object.metadata.name.clone().unwrap_or_default(),
        );
        if let Ok(value) = serde_json::to_value(object) {
            objects.insert(key, value);
        }
    }
    Ok(objects)
}

/// Compares every record of `nodes` with the live objects (one list per
/// kind for the whole round, so a round costs the API the same whatever
/// the number of nodes) and sends what each node lacks to CloudHub.
async fn sync_nodes(
    client: &kube::Client,
    records: &SyncRecords,
    bus: &BusHandle,
    nodes: &[String],
) {
    let per_node: Vec<(&String, HashMap<String, SyncRecord>)> = nodes
        .iter()
        .map(|node| (node, records.records(node)))
        .collect();
    let kinds: HashSet<(String, String)> = per_node
        .iter()
        .flat_map(|(_, records)| records.values())
        .filter(|record| !record.kind.is_empty() && !record.name.is_empty())
        .map(|record| (record.api_version.clone(), record.kind.clone()))
        .collect();
    let mut live: HashMap<(String, String), LiveObjects> = HashMap::new();
    for (api_version, kind) in kinds {
        match list_kind(client, &api_version, &kind).await {
            Ok(objects) => {
                live.insert((api_version, kind), objects);
            }
            Err(error) => {
                tracing::debug!(%api_version, %kind, %error, "cannot list the kind; next round");
            }
        }
    }
    for (node, node_records) in per_node {
        for (uid, record) in node_records {
            let Some(objects) = live.get(&(record.api_version.clone(), record.kind.clone())) else {
                continue;
            };
            let object = objects.get(&(record.namespace.clone(), record.name.clone()));
            let Some(msg) = reconcile(node, &uid, &record, object) else {
                continue;
            };
            if msg.router.operation == operation::DELETE && record.resource_version == 0 {
                // Never delivered, and gone: nothing to delete at the edge.
                records.forget(node, &uid);
                continue;
            }
            if let Err(error) = bus.send(module::CLOUD_HUB, msg).await {
                tracing::debug!(%node, %error, "cannot hand a resync to cloudhub");
                return;
            }
        }
    }
}

/// The node a CloudHub `connected` event names.
fn connected_node(msg: &Message) -> Option<String> {
    (msg.router.operation == operation::CONNECTED)
        .then(|| msg.router.resource.strip_prefix("node/").map(str::to_owned))
        .flatten()
}

impl Module for SyncController {
    fn name(&self) -> &str {
        module::SYNC_CONTROLLER
    }

    fn group(&self) -> &str {
        group::SYNC_CONTROLLER
    }

    async fn run(self, mut ctx: ModuleContext) -> Result<(), ModuleError> {
        let client = tokio::select! {
            () = ctx.cancelled() => return Ok(()),
            client = self.cluster.get() => client?,
        };
        ctx.set_ready();
        let mut tick = tokio::time::interval(self.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let token = ctx.token().clone();
        loop {
            let mut due: HashSet<String> = tokio::select! {
                () = token.cancelled() => return Ok(()),
                msg = ctx.recv() => {
                    let Some(msg) = msg else { return Ok(()) };
                    connected_node(&msg).into_iter().collect()
                }
                _ = tick.tick() => self.records.connected().into_iter().collect(),
            };
            // Nodes connecting together (after a cloudcore restart) share
            // one round.
            while let Some(Some(msg)) = futures::FutureExt::now_or_never(ctx.recv()) {
                due.extend(connected_node(&msg));
            }
            let due: Vec<String> = due.into_iter().collect();
            if !due.is_empty() {
                sync_nodes(&client, &self.records, ctx.bus(), &due).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(version: u64) -> SyncRecord {
        SyncRecord {
            namespace: Some("default".into()),
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "cfg".into(),
            resource_version: version,
        }
    }

    fn live(uid: &str, version: &str) -> serde_json::Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "cfg", "namespace": "default", "uid": uid, "resourceVersion": version}})
    }

    #[test]
    fn newer_objects_are_updated_and_gone_ones_deleted() {
        let update = reconcile("n1", "u1", &record(5), Some(&live("u1", "9"))).expect("update");
        assert_eq!(update.router.operation, "update");
        assert_eq!(update.router.resource, "node/n1/default/configmap/cfg");
        assert_eq!(update.header.resource_version, "9");
        assert_eq!(update.router.source, "edgecontroller");

        assert!(reconcile("n1", "u1", &record(9), Some(&live("u1", "9"))).is_none());

        let gone = reconcile("n1", "u1", &record(9), None).expect("delete");
        assert_eq!(gone.router.operation, "delete");
        assert_eq!(gone.content["metadata"]["uid"], "u1");

        let replaced = reconcile("n1", "u1", &record(9), Some(&live("u2", "12"))).expect("delete");
        assert_eq!(
            replaced.router.operation, "delete",
            "a new object of the same name"
        );
    }
}
