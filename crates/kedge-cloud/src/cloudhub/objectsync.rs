//! What every edge node acknowledged: kept in memory for the hub, and
//! written to ObjectSync / ClusterObjectSync objects (protocol.md §5.3)
//! in the background and in batches, so an acknowledgement never waits
//! for the API (KubeEdge makes two or three API calls per ACK inline).
//!
//! Only the newest state of each record is written: a record that changes
//! again before its write is written once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use indexmap::IndexMap;
use kedge_apis::reliablesyncs::{
    ClusterObjectSync, ObjectSync, ObjectSyncSpec, ObjectSyncStatus, split_sync_name, sync_name,
};
use kedge_message::{Message, resource};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::queue::{Acked, object_key, parse_version};

/// Records written at once.
const BATCH: usize = 256;
/// Writes in flight at once.
const WRITES_IN_FLIGHT: usize = 16;
/// How long a failed write waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// One node's record of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRecord {
    /// The object's namespace; `None` for a cluster-scoped object.
    pub namespace: Option<String>,
    /// The object's apiVersion.
    pub api_version: String,
    /// The object's kind.
    pub kind: String,
    /// The object's name.
    pub name: String,
    /// The acknowledged resourceVersion; 0 while none was.
    pub resource_version: u64,
}

impl SyncRecord {
    /// The record an (Cluster)ObjectSync in `namespace` holds.
    fn stored(
        namespace: Option<String>,
        spec: ObjectSyncSpec,
        status: Option<&ObjectSyncStatus>,
    ) -> Self {
        Self {
            namespace,
            api_version: spec.object_api_version,
            kind: spec.object_kind,
            name: spec.object_name,
            resource_version: status
                .and_then(|status| parse_version(&status.object_resource_version))
                .unwrap_or(0),
        }
    }

    /// The spec of the (Cluster)ObjectSync that stores this record.
    fn spec(&self) -> ObjectSyncSpec {
        ObjectSyncSpec {
            object_api_version: self.api_version.clone(),
            object_kind: self.kind.clone(),
            object_name: self.name.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    Upsert,
    Delete,
}

#[derive(Default)]
struct State {
    /// node → object UID → record.
    nodes: HashMap<String, HashMap<String, SyncRecord>>,
    /// Records to write: (node, uid) → what to write and the record's
    /// namespace (kept for deletions).
    dirty: IndexMap<(String, String), (Write, Option<SyncRecord>)>,
}

/// The acknowledgements of every node, and which nodes are connected now.
/// Clones share them.
#[derive(Clone, Default)]
pub struct SyncRecords {
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
    connected: Arc<Mutex<std::collections::HashSet<String>>>,
}

/// The record a message describes, if its object has a UID and a
/// resourceVersion the cloud can compare.
fn record_of(msg: &Message, resource_version: u64) -> Option<(String, SyncRecord)> {
    let uid = msg.content.pointer("/metadata/uid")?.as_str()?.to_owned();
    let object = resource::EdgeResource::parse(resource::trim_node_prefix(&msg.router.resource))?;
    let text = |pointer: &str| {
        msg.content
            .pointer(pointer)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let namespace = (object.namespace != resource::NULL_NAMESPACE
        && object.namespace != "namespace")
        .then(|| object.namespace.to_owned());
    let name = match text("/metadata/name") {
        name if name.is_empty() => object.name.unwrap_or_default().to_owned(),
        name => name,
    };
    Some((
        uid,
        SyncRecord {
            namespace,
            api_version: text("/apiVersion"),
            kind: text("/kind"),
            name,
            resource_version,
        },
    ))
}

impl SyncRecords {
    /// Loads every ObjectSync and ClusterObjectSync through `client`,
    /// replacing what these records held.
    pub async fn load(&self, client: &kube::Client) -> Result<(), kube::Error> {
        let namespaced: Api<ObjectSync> = Api::all(client.clone());
        let cluster: Api<ClusterObjectSync> = Api::all(client.clone());
        let mut state = State::default();
        let namespaced = namespaced
            .list(&ListParams::default())
            .await?
            .into_iter()
            .map(|sync| {
                (
                    sync.metadata.name,
                    sync.metadata.namespace,
                    sync.spec,
                    sync.status,
                )
            });
        let cluster = cluster
            .list(&ListParams::default())
            .await?
            .into_iter()
            .map(|sync| (sync.metadata.name, None, sync.spec.into(), sync.status));
        for (name, namespace, spec, status) in namespaced.chain(cluster) {
            let name = name.unwrap_or_default();
            let Some((node, uid)) = split_sync_name(&name) else {
                continue;
            };
            let record = SyncRecord::stored(namespace, spec, status.as_ref());
            state
                .nodes
                .entry(node.to_owned())
                .or_default()
                .insert(uid.to_owned(), record);
        }
        let mut current = self.state.lock().expect("records lock");
        current.nodes = state.nodes;
        Ok(())
    }

    /// Notes that `node` connected (`true`) or its session ended.
    pub fn set_connected(&self, node: &str, connected: bool) {
        let mut nodes = self.connected.lock().expect("connected lock");
        if connected {
            nodes.insert(node.to_owned());
        } else {
            nodes.remove(node);
        }
    }

    /// The nodes connected now.
    pub fn connected(&self) -> Vec<String> {
        let nodes = self.connected.lock().expect("connected lock");
        nodes.iter().cloned().collect()
    }

    /// What `node` acknowledged: object UID → resourceVersion.
    pub fn acknowledged(&self, node: &str) -> HashMap<String, u64> {
        let state = self.state.lock().expect("records lock");
        state
            .nodes
            .get(node)
            .map(|records| {
                records
                    .iter()
                    .filter(|(_, record)| record.resource_version > 0)
                    .map(|(uid, record)| (uid.clone(), record.resource_version))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every record of `node`, by object UID.
    pub fn records(&self, node: &str) -> HashMap<String, SyncRecord> {
        let state = self.state.lock().expect("records lock");
        state.nodes.get(node).cloned().unwrap_or_default()
    }

    /// The nodes with records.
    pub fn nodes(&self) -> Vec<String> {
        let state = self.state.lock().expect("records lock");
        state.nodes.keys().cloned().collect()
    }

    /// Notes that `msg`, an ACK-mode object message, is on its way to
    /// `node`: an object the node has no record of gets one at
    /// resourceVersion 0, so that it is sent again should this message
    /// be lost (the node offline, its queue full).
    pub fn expect(&self, node: &str, msg: &Message) {
        if msg.router.operation == kedge_message::operation::DELETE {
            return;
        }
        let Some((uid, record)) = record_of(msg, 0) else {
            return;
        };
        let mut state = self.state.lock().expect("records lock");
        let records = state.nodes.entry(node.to_owned()).or_default();
        if records.contains_key(&uid) {
            return;
        }
        records.insert(uid.clone(), record.clone());
        state
            .dirty
            .insert((node.to_owned(), uid), (Write::Upsert, Some(record)));
        drop(state);
        self.wake.notify_one();
    }

    /// Records `node`'s acknowledgement.
    pub fn acked(&self, node: &str, acked: &Acked) {
        let uid = object_key(&acked.message);
        let mut state = self.state.lock().expect("records lock");
        if acked.deleted {
            let removed = state
                .nodes
                .get_mut(node)
                .and_then(|records| records.remove(&uid));
            if state.nodes.get(node).is_some_and(HashMap::is_empty) {
                state.nodes.remove(node);
            }
            if let Some(record) = removed {
                state
                    .dirty
                    .insert((node.to_owned(), uid), (Write::Delete, Some(record)));
            }
        } else {
            let Some(version) = parse_version(&acked.resource_version) else {
                return;
            };
            let Some((uid, record)) = record_of(&acked.message, version) else {
                return;
            };
            let records = state.nodes.entry(node.to_owned()).or_default();
            let current = records.entry(uid.clone()).or_insert_with(|| record.clone());
            current.resource_version = current.resource_version.max(version);
            let record = current.clone();
            state
                .dirty
                .insert((node.to_owned(), uid), (Write::Upsert, Some(record)));
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Moves `node`'s record of `uid` from resourceVersion `from` to `to`
    /// if it stands at `from`: for a change the node has no use for (the
    /// status of a Device, written from the node's own report), so that
    /// the object is not sent back to it. Kept in memory only: after a
    /// restart the node is sent the object once more.
    pub fn advance(&self, node: &str, uid: &str, from: u64, to: u64) {
        let mut state = self.state.lock().expect("records lock");
        if let Some(record) = state
            .nodes
            .get_mut(node)
            .and_then(|records| records.get_mut(uid))
            .filter(|record| record.resource_version == from)
        {
            record.resource_version = to;
        }
    }

    /// Forgets a record whose object is gone from the node's view without a
    /// deletion acknowledged (its object was deleted while no record was
    /// acknowledged).
    pub fn forget(&self, node: &str, uid: &str) {
        let mut state = self.state.lock().expect("records lock");
        let removed = state
            .nodes
            .get_mut(node)
            .and_then(|records| records.remove(uid));
        if let Some(record) = removed {
            state.dirty.insert(
                (node.to_owned(), uid.to_owned()),
                (Write::Delete, Some(record)),
            );
            drop(state);
            self.wake.notify_one();
        }
    }

    /// Records waiting to be written.
    pub fn unwritten(&self) -> usize {
        self.state.lock().expect("records lock").dirty.len()
    }

    /// Writes changed records through `client` until `token` is
    /// cancelled, then once more.
    pub async fn write(self, client: kube::Client, token: CancellationToken) {
        loop {
            let cancelled = token.is_cancelled();
            let batch: Vec<_> = {
                let mut state = self.state.lock().expect("records lock");
                let take = state.dirty.len().min(BATCH);
                state.dirty.drain(..take).collect()
            };
            if batch.is_empty() {
                if cancelled {
                    return;
                }
                tokio::select! {
                    () = token.cancelled() => {}
                    () = self.wake.notified() => {}
                }
                continue;
            }
            let failed: Vec<_> = futures::stream::iter(batch)
                .map(|((node, uid), (write, record))| {
                    let client = client.clone();
                    async move {
                        let result = write_record(&client, &node, &uid, write, record.as_ref()).await;
                        match result {
                            Ok(()) => None,
                            Err(error) => {
                                tracing::warn!(%node, %uid, %error, "cannot write an ObjectSync; will retry");
                                Some(((node, uid), (write, record)))
                            }
                        }
                    }
                })
                .buffer_unordered(WRITES_IN_FLIGHT)
                .filter_map(std::future::ready)
                .collect()
                .await;
            if !failed.is_empty() {
                {
                    let mut state = self.state.lock().expect("records lock");
                    for (key, value) in failed {
                        // A newer change of the same record wins.
                        state.dirty.entry(key).or_insert(value);
                    }
                }
                if cancelled {
                    return;
                }
                tokio::select! {
                    () = token.cancelled() => {}
                    () = tokio::time::sleep(RETRY_AFTER) => {}
                }
            }
        }
    }
}

async fn write_record(
    client: &kube::Client,
    node: &str,
    uid: &str,
    write: Write,
    record: Option<&SyncRecord>,
) -> Result<(), kube::Error> {
    let Some(record) = record else { return Ok(()) };
    let name = sync_name(node, uid);
    let status = json!({"status": ObjectSyncStatus {
        object_resource_version: record.resource_version.to_string(),
    }});
    let ignore_missing = |result: Result<(), kube::Error>| match result {
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        other => other,
    };
    match (&record.namespace, write) {
        (Some(namespace), Write::Delete) => {
            let api: Api<ObjectSync> = Api::namespaced(client.clone(), namespace);
            ignore_missing(
                api.delete(&name, &DeleteParams::default())
                    .await
                    .map(|_| ()),
            )
        }
        (None, Write::Delete) => {
            let api: Api<ClusterObjectSync> = Api::all(client.clone());
            ignore_missing(
                api.delete(&name, &DeleteParams::default())
                    .await
                    .map(|_| ()),
            )
        }
        (Some(namespace), Write::Upsert) => {
            let api: Api<ObjectSync> = Api::namespaced(client.clone(), namespace);
            upsert(&api, &name, ObjectSync::new(&name, record.spec()), &status).await
        }
        (None, Write::Upsert) => {
            let api: Api<ClusterObjectSync> = Api::all(client.clone());
            let object = ClusterObjectSync::new(&name, record.spec().into());
            upsert(&api, &name, object, &status).await
        }
    }
}

/// Sets the status of `name`, creating the object first when it is missing.
async fn upsert<K>(
    api: &Api<K>,
    name: &str,
    object: K,
    status: &serde_json::Value,
) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = Patch::Merge(status);
    match api
        .patch_status(name, &PatchParams::default(), &patch)
        .await
    {
        Ok(_) => return Ok(()),
        Err(kube::Error::Api(error)) if error.code == 404 => {}
        Err(error) => return Err(error),
    }
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => {}
        // Created meanwhile by another writer: set its status all the same.
        Err(kube::Error::Api(error)) if error.code == 409 => {}
        Err(error) => return Err(error),
    }
    api.patch_status(name, &PatchParams::default(), &patch)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(version: u64) -> Message {
        Message::new(
            "edgecontroller",
            "resource",
            "update",
            "node/n1/default/pod/web",
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "web", "namespace": "default", "uid": "u1"}}),
        )
        .with_resource_version(version.to_string())
    }

    fn acked(msg: Message, deleted: bool) -> Acked {
        Acked {
            key: object_key(&msg),
            resource_version: msg.header.resource_version.clone(),
            deleted,
            message: msg,
        }
    }

    #[test]
    fn acknowledgements_are_kept_and_only_the_newest_is_written() {
        let records = SyncRecords::default();
        records.expect("n1", &pod(3));
        assert!(
            records.acknowledged("n1").is_empty(),
            "expected, not acknowledged"
        );
        assert_eq!(records.records("n1")["u1"].resource_version, 0);
        records.acked("n1", &acked(pod(3), false));
        records.acked("n1", &acked(pod(5), false));
        assert_eq!(
            records.acknowledged("n1"),
            HashMap::from([("u1".to_owned(), 5)])
        );
        assert_eq!(records.unwritten(), 1, "one record, written once");
        let record = &records.records("n1")["u1"];
        assert_eq!(record.namespace.as_deref(), Some("default"));
        assert_eq!(record.kind, "Pod");
        assert_eq!(record.name, "web");

        let mut deletion = pod(6);
        deletion.router.operation = "delete".into();
        records.acked("n1", &acked(deletion, true));
        assert!(records.acknowledged("n1").is_empty());
        assert!(records.nodes().is_empty());
    }

    #[test]
    fn cluster_scoped_objects_have_no_namespace() {
        let msg = Message::new(
            "edgecontroller",
            "resource",
            "update",
            "node/n1/null/node/n1",
            json!({"kind": "Node", "apiVersion": "v1", "metadata": {"name": "n1", "uid": "u9"}}),
        );
        let (uid, record) = record_of(&msg, 4).expect("record");
        assert_eq!(uid, "u9");
        assert_eq!(record.namespace, None);
    }
}
