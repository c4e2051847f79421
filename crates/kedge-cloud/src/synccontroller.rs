//! SyncController: brings a node up to date from what it acknowledged
//! (protocol.md §5.3).
//!
//! When CloudHub reports a node connected, and every `period` for each
//! connected node, it compares each of the node's records with the live
//! object: an object that is gone (or was replaced under the same name)
//! is sent as a `delete`, one newer than what the node acknowledged as an
//! `update` with the whole object. CloudHub's queue drops what the node
//! already holds, so a node is never sent an older version over a newer.

use std::collections::HashSet;
use std::time::Duration;

use kedge_bus::{BusHandle, Module, ModuleContext, ModuleError};
use kedge_message::{Message, group, module, operation, resource};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
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

/// Reads the live object a record is about; `None` when it is gone.
async fn live_object(
    client: &kube::Client,
    record: &SyncRecord,
) -> Result<Option<serde_json::Value>, kube::Error> {
    let (group, version) = match record.api_version.split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", record.api_version.as_str()),
    };
    let gvk = GroupVersionKind::gvk(group, version, &record.kind);
    let api_resource = ApiResource::from_gvk(&gvk);
    let api: Api<DynamicObject> = match &record.namespace {
        Some(namespace) => Api::namespaced_with(client.clone(), namespace, &api_resource),
        None => Api::all_with(client.clone(), &api_resource),
    };
    let object = api.get_opt(&record.name).await?;
    Ok(object.map(|mut object| {
        object.types = Some(kube::api::TypeMeta {
            api_version: record.api_version.clone(),
            kind: record.kind.clone(),
        });
        serde_json::to_value(object).unwrap_or_default()
    }))
}

/// Compares every record of `node` and sends what it lacks to CloudHub.
async fn sync_node(client: &kube::Client, records: &SyncRecords, bus: &BusHandle, node: &str) {
    for (uid, record) in records.records(node) {
        if record.kind.is_empty() || record.name.is_empty() {
            continue;
        }
        let live = match live_object(client, &record).await {
            Ok(live) => live,
            Err(error) => {
                tracing::debug!(node, kind = %record.kind, name = %record.name, %error, "cannot read the object; next round");
                continue;
            }
        };
        let Some(msg) = reconcile(node, &uid, &record, live.as_ref()) else {
            continue;
        };
        if msg.router.operation == operation::DELETE && record.resource_version == 0 {
            // Never delivered, and gone: nothing to delete at the edge.
            records.forget(node, &uid);
            continue;
        }
        if let Err(error) = bus.send(module::CLOUD_HUB, msg).await {
            tracing::debug!(node, %error, "cannot hand a resync to cloudhub");
            return;
        }
    }
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
        let mut connected: HashSet<String> = HashSet::new();
        let token = ctx.token().clone();
        let mut tick = tokio::time::interval(self.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let due: Vec<String> = tokio::select! {
                () = token.cancelled() => return Ok(()),
                msg = ctx.recv() => {
                    let Some(msg) = msg else { return Ok(()) };
                    let Some(node) = msg.router.resource.strip_prefix("node/").map(str::to_owned) else {
                        continue;
                    };
                    match msg.router.operation.as_str() {
                        operation::CONNECTED => {
                            connected.insert(node.clone());
                            vec![node]
                        }
                        operation::DISCONNECTED => {
                            connected.remove(&node);
                            Vec::new()
                        }
                        _ => Vec::new(),
                    }
                }
                _ = tick.tick() => connected.iter().cloned().collect(),
            };
            for node in due {
                sync_node(&client, &self.records, ctx.bus(), &node).await;
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
