//! MetaManager's message handling (edged.md §2.3-2.4, protocol.md §5.4).
//!
//! | operation | from the cloud (group `resource`/`func`) | from an edge module (group `meta`) |
//! |---|---|---|
//! | insert, update, response | store, forward (unless older than the stored version), ACK | insert: to the cloud (sync), answer stored; update of a lease: to the cloud (sync); other updates: stored if an object, sent up, `"OK"` to the caller |
//! | patch | store, forward, ACK | stored as a patch row, to the cloud (sync); the returned object is stored |
//! | delete | delete (pods: uid-guarded), forward, ACK | to the cloud only; the row goes when the cloud's delete comes back |
//! | query | error reply | see below |
//!
//! **Queries.** A query of `<ns>/<type>/<name>` or `<ns>/<type>` is sent to
//! the cloud only when the link is up and the type is one KubeEdge fetches
//! remotely (configmap, secret, PV, PVC, volume attachment, node, service
//! account token, lease) and either not cached or one whose cached copy is
//! never good enough (service account tokens, leases). Everything else is
//! answered from the store, and so is a remote query that fails when a copy
//! is cached. A query of a type without a name lists that type in every
//! namespace, as KubeEdge does.
//!
//! **Reply shapes** (to the waiting caller, parent id = the request id):
//! a query is answered with operation `response` and a JSON array of the
//! objects (empty when nothing matches: the caller's NotFound). A
//! request passed to the cloud is answered with the cloud's content
//! unchanged (an object, `{"Object","Err"}`, or `"OK"`). A failure is
//! operation `error` whose content is the Kubernetes `Status` when the
//! cloud sent one, else the error text.

use std::time::Duration;

use kedge_bus::{BusError, BusHandle, ModuleContext};
use kedge_message::content::{self, ObjectResp};
use kedge_message::resource::EdgeResource;
use kedge_message::{Message, group, module, operation, resource_type, source};
use serde_json::Value;
use tokio::sync::watch;

use super::MetaManagerSettings;
use super::store::{MetaStore, ObjectKey, PutOutcome};
use crate::edgehub::routing::{CLOUD_CONNECTED, CLOUD_DISCONNECTED};

/// Types KubeEdge fetches from the cloud when connected
/// (`requireRemoteQuery`).
const REMOTE_QUERY_TYPES: [&str; 8] = [
    resource_type::CONFIGMAP,
    resource_type::SECRET,
    resource_type::PERSISTENT_VOLUME,
    resource_type::PERSISTENT_VOLUME_CLAIM,
    resource_type::VOLUME_ATTACHMENT,
    resource_type::NODE,
    resource_type::SERVICE_ACCOUNT_TOKEN,
    resource_type::LEASE,
];

/// Remote types whose cached copy is never used while connected: a token
/// request creates a token, and a lease is renewed from its latest version.
const ALWAYS_REMOTE_TYPES: [&str; 2] = [resource_type::SERVICE_ACCOUNT_TOKEN, resource_type::LEASE];

/// Types whose objects go to DeviceTwin rather than edged.
const TWIN_TYPES: [&str; 2] = [resource_type::DEVICE, resource_type::DEVICE_MODEL];

/// The error text of a request that needs the cloud while the link is down.
pub const NOT_CONNECTED: &str = "metamanager: not connected to the cloud";

/// Handles MetaManager's messages. Requests that wait for the cloud run
/// on their own tasks, so the inbox keeps moving.
pub struct Processor {
    bus: BusHandle,
    store: MetaStore,
    settings: MetaManagerSettings,
    connected: watch::Sender<bool>,
}

impl std::fmt::Debug for Processor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processor")
            .field("store", &self.store)
            .field("connected", &*self.connected.borrow())
            .finish_non_exhaustive()
    }
}

/// Whether a message comes from the cloud: EdgeHub routes the cloud's
/// groups `resource` and `func` to MetaManager unchanged, while edge
/// modules address group `meta`.
pub fn is_from_cloud(msg: &Message) -> bool {
    matches!(msg.router.group.as_str(), group::RESOURCE | group::FUNC)
}

/// The object a cloud reply carries: the content itself when it is an
/// object with metadata, or the `Object` of an `{"Object","Err"}` reply.
pub fn reply_object(content: &Value) -> Option<&Value> {
    if let Some(map) = content.as_object() {
        if map.contains_key("Object") && map.contains_key("Err") {
            return map.get("Object").filter(|o| o.get("metadata").is_some());
        }
        if map.contains_key("metadata") {
            return Some(content);
        }
    }
    None
}

/// The error a cloud reply carries: the `Status` of an `{"Err":…}` or
/// `{"ErrStatus":…}` content, or the text of an `error` message.
fn reply_error(reply: &Message) -> Option<Value> {
    if reply.router.operation == operation::ERROR {
        return Some(reply.content.clone());
    }
    if content::is_status_error(&reply.content) {
        return reply.content.get("ErrStatus").cloned();
    }
    let resp = ObjectResp::from_content(&reply.content)?;
    match resp.err {
        Value::Null => None,
        err => Some(err.get("ErrStatus").cloned().unwrap_or(err)),
    }
}

/// The key of an object message: the resource's namespace, type and name,
/// the name taken from the object when the resource has none.
fn object_key(resource: &EdgeResource<'_>, object: &Value) -> Option<ObjectKey> {
    let name = resource
        .name
        .or_else(|| object.pointer("/metadata/name").and_then(Value::as_str))?;
    Some(ObjectKey::new(
        resource.namespace,
        resource.resource_type,
        name,
    ))
}

/// An error reply to `request` whose content is `error`.
fn error_reply(request: &Message, error: Value) -> Message {
    let mut reply = request.response(error);
    reply.router.operation = operation::ERROR.to_owned();
    reply
}

impl Processor {
    /// A processor over `store`, publishing the link state in `connected`.
    pub fn new(
        bus: BusHandle,
        store: MetaStore,
        settings: MetaManagerSettings,
        connected: watch::Sender<bool>,
    ) -> Self {
        Self {
            bus,
            store,
            settings,
            connected,
        }
    }

    fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Handles one message from the inbox.
    pub async fn handle(&self, ctx: &ModuleContext, msg: Message) {
        tracing::debug!(
            msg_id = %msg.id(),
            source = %msg.router.source,
            operation = %msg.router.operation,
            resource = %msg.router.resource,
            "message"
        );
        if msg.router.source == source::EDGE_HUB_EVENTS
            && msg.router.resource == resource_type::NODE_CONNECTION
        {
            self.link_state(&msg);
        } else if is_from_cloud(&msg) {
            self.handle_cloud(msg).await;
        } else {
            self.handle_edge(ctx, msg).await;
        }
    }

    fn link_state(&self, msg: &Message) {
        match msg.content.as_str() {
            Some(CLOUD_CONNECTED) => {
                tracing::info!("cloud connected");
                self.connected.send_replace(true);
            }
            Some(CLOUD_DISCONNECTED) => {
                tracing::info!("cloud disconnected");
                self.connected.send_replace(false);
            }
            other => tracing::warn!(content = ?other, "unknown link state"),
        }
    }

    // === from the cloud ===

    async fn handle_cloud(&self, msg: Message) {
        let op = msg.router.operation.as_str();
        let stored = match op {
            operation::INSERT | operation::UPDATE | operation::PATCH | operation::RESPONSE => {
                self.store_from_cloud(&msg).await
            }
            operation::DELETE => self.delete_from_cloud(&msg).await.map(|()| true),
            operation::QUERY => Err(format!(
                "metamanager: the cloud cannot query the edge ({})",
                msg.router.resource
            )),
            // CSI calls and the like are edged's business.
            _ => {
                self.forward_to_edge(msg).await;
                return;
            }
        };
        match stored {
            Ok(current) => {
                let ack = msg.ack();
                // An older version than the stored one is acknowledged (the
                // cloud stops resending it) but edged never sees it.
                if current {
                    self.forward_to_edge(msg).await;
                }
                self.to_cloud(ack).await;
            }
            Err(error) => {
                tracing::warn!(%error, resource = %msg.router.resource, "message from the cloud not stored");
                let mut reply = msg.error_response(error);
                reply.router.source = module::META_MANAGER.to_owned();
                self.to_cloud(reply).await;
            }
        }
    }

    /// Stores the object a cloud message carries; `false` when it is older
    /// than the stored one. Messages that carry no object are accepted
    /// without storing.
    async fn store_from_cloud(&self, msg: &Message) -> Result<bool, String> {
        let Some(resource) = EdgeResource::parse(&msg.router.resource) else {
            return Ok(true);
        };
        let object = match reply_object(&msg.content) {
            Some(object) => object.clone(),
            None => return Ok(true),
        };
        let Some(key) = object_key(&resource, &object) else {
            return Err(format!("{}: the object has no name", msg.router.resource));
        };
        let outcome = self
            .store
            .blocking(move |store| store.put_object(&key, &object))
            .await
            .map_err(|error| error_chain(&error))?;
        if outcome == PutOutcome::Stale {
            tracing::info!(resource = %msg.router.resource, "an older version than the stored one; kept the stored one");
        }
        Ok(outcome == PutOutcome::Stored)
    }

    async fn delete_from_cloud(&self, msg: &Message) -> Result<(), String> {
        let Some(resource) = EdgeResource::parse(&msg.router.resource) else {
            return Ok(());
        };
        let Some(key) = object_key(&resource, &msg.content) else {
            return Err(format!("{}: no object named", msg.router.resource));
        };
        let uid = match &msg.content {
            Value::String(uid) => Some(uid.clone()),
            other => other
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .map(str::to_owned),
        }
        .filter(|_| key.resource_type == resource_type::POD);
        self.store
            .blocking(move |store| store.delete_object(&key, uid.as_deref()))
            .await
            .map(|_| ())
            .map_err(|error| error_chain(&error))
    }

    /// Passes a cloud message to the module that acts on it: DeviceTwin
    /// for devices and device models, edged for the rest.
    async fn forward_to_edge(&self, mut msg: Message) {
        let kind = EdgeResource::parse(&msg.router.resource).map(|r| r.resource_type);
        let result = if kind.is_some_and(|k| TWIN_TYPES.contains(&k)) {
            msg.router.source = module::META_MANAGER.to_owned();
            msg.router.group = group::TWIN.to_owned();
            self.bus.send_to_group(group::TWIN, msg).await.map(|_| ())
        } else {
            self.bus.send(module::EDGED, msg).await
        };
        if let Err(error) = result {
            tracing::debug!(%error, "message from the cloud not forwarded");
        }
    }

    /// Sends a message to the cloud through EdgeHub without waiting for an
    /// answer.
    async fn to_cloud(&self, msg: Message) {
        if let Err(error) = self.bus.send(&self.settings.cloud_module, msg).await {
            tracing::warn!(%error, "message for the cloud not handed to EdgeHub");
        }
    }

    // === from edge modules ===

    async fn handle_edge(&self, ctx: &ModuleContext, msg: Message) {
        let kind = EdgeResource::parse(&msg.router.resource)
            .map(|r| r.resource_type.to_owned())
            .unwrap_or_default();
        match msg.router.operation.as_str() {
            operation::QUERY => self.query(ctx, msg, &kind).await,
            operation::INSERT => self.spawn_remote(ctx, msg, Remote::Pass).await,
            operation::UPDATE if kind == resource_type::LEASE => {
                self.spawn_remote(ctx, msg, Remote::Pass).await;
            }
            operation::UPDATE => {
                if let Some(resource) = EdgeResource::parse(&msg.router.resource)
                    && let Some(object) = reply_object(&msg.content)
                    && let Some(key) = object_key(&resource, object)
                {
                    let object = object.clone();
                    if let Err(error) = self
                        .store
                        .blocking(move |store| store.put_object(&key, &object))
                        .await
                    {
                        tracing::warn!(error = %error_chain(&error), "edge update not stored");
                    }
                }
                let ack = msg.ack();
                let sync = msg.header.sync;
                let mut up = msg;
                up.header.sync = false;
                self.to_cloud(up).await;
                if sync {
                    self.answer(ack);
                }
            }
            operation::PATCH => {
                if let Some(resource) = EdgeResource::parse(&msg.router.resource)
                    && let Some(name) = resource.name
                {
                    let key = ObjectKey::new(resource.namespace, resource.resource_type, name);
                    let value = String::from_utf8_lossy(&msg.content_data()).into_owned();
                    if let Err(error) = self
                        .store
                        .blocking(move |store| store.put_row(&key, &value))
                        .await
                    {
                        tracing::warn!(error = %error_chain(&error), "patch row not stored");
                    }
                }
                self.spawn_remote(ctx, msg, Remote::Pass).await;
            }
            operation::DELETE => self.spawn_remote(ctx, msg, Remote::Pass).await,
            _ => {
                let mut up = msg;
                up.header.sync = false;
                self.to_cloud(up).await;
            }
        }
    }

    async fn query(&self, ctx: &ModuleContext, msg: Message, kind: &str) {
        let Some(resource) = EdgeResource::parse(&msg.router.resource) else {
            self.answer(error_reply(
                &msg,
                Value::String(format!(
                    "metamanager: bad resource {:?}",
                    msg.router.resource
                )),
            ));
            return;
        };
        let key = resource
            .name
            .map(|name| ObjectKey::new(resource.namespace, resource.resource_type, name));
        let local = self.local_answer(kind, key.clone()).await;
        let cached = matches!(&local, Ok(objects) if !objects.is_empty());
        let remote = self.is_connected()
            && REMOTE_QUERY_TYPES.contains(&kind)
            && (ALWAYS_REMOTE_TYPES.contains(&kind) || (key.is_some() && !cached));
        if remote {
            let fallback = local.ok().filter(|objects| !objects.is_empty());
            self.spawn_remote(ctx, msg, Remote::Query { fallback })
                .await;
            return;
        }
        let reply = match local {
            Ok(objects) => msg.response(Value::Array(objects)),
            Err(error) => error_reply(&msg, Value::String(error)),
        };
        self.answer(reply);
    }

    async fn local_answer(&self, kind: &str, key: Option<ObjectKey>) -> Result<Vec<Value>, String> {
        let kind = kind.to_owned();
        self.store
            .blocking(move |store| match key {
                Some(key) => Ok(store.get(&key)?.into_iter().collect()),
                None => store.list_type(&kind),
            })
            .await
            .map_err(|error| error_chain(&error))
    }

    /// Answers a waiting caller; an answer nobody waits for is dropped.
    fn answer(&self, reply: Message) {
        if let Err(error) = self.bus.send_response(reply) {
            tracing::debug!(%error, "answer dropped");
        }
    }

    async fn spawn_remote(&self, ctx: &ModuleContext, msg: Message, mode: Remote) {
        if !self.is_connected() && !matches!(mode, Remote::Query { .. }) {
            if msg.header.sync {
                self.answer(error_reply(&msg, Value::String(NOT_CONNECTED.to_owned())));
            }
            // A status patch still goes to EdgeHub, whose outbox keeps it
            // until the link returns.
            if msg.router.operation == operation::PATCH {
                let mut up = msg;
                up.header.sync = false;
                self.to_cloud(up).await;
            }
            return;
        }
        let call = RemoteCall {
            bus: self.bus.clone(),
            store: self.store.clone(),
            cloud_module: self.settings.cloud_module.clone(),
            timeout: self.settings.remote_query_timeout,
        };
        ctx.spawn("remote", call.run(msg, mode));
    }
}

/// What to do with the cloud's answer.
#[derive(Debug)]
enum Remote {
    /// Pass the cloud's content back unchanged.
    Pass,
    /// A query: answer with an array of objects; on failure answer with
    /// the cached copy, if any.
    Query { fallback: Option<Vec<Value>> },
}

/// One request to the cloud, on its own task.
struct RemoteCall {
    bus: BusHandle,
    store: MetaStore,
    cloud_module: String,
    timeout: Duration,
}

impl RemoteCall {
    async fn run(self, msg: Message, mode: Remote) {
        let reply = match self.exchange(&msg).await {
            Ok(cloud) => {
                let mut reply = match (&mode, reply_error(&cloud)) {
                    (_, Some(error)) => error_reply(&msg, error),
                    (Remote::Query { .. }, None) => {
                        let objects = reply_object(&cloud.content).cloned().into_iter().collect();
                        msg.response(Value::Array(objects))
                    }
                    (Remote::Pass, None) => msg.response(cloud.content.clone()),
                };
                reply.header.resource_version = cloud.header.resource_version.clone();
                reply
            }
            Err(error) => match mode {
                Remote::Query {
                    fallback: Some(objects),
                } => {
                    tracing::info!(%error, resource = %msg.router.resource, "remote query failed; answered from the store");
                    msg.response(Value::Array(objects))
                }
                _ => error_reply(&msg, Value::String(error)),
            },
        };
        if msg.header.sync
            && let Err(error) = self.bus.send_response(reply)
        {
            tracing::debug!(%error, "answer dropped");
        }
    }

    /// Sends a copy of `msg` with a fresh id to the cloud and waits for
    /// the answer; stores an object answer and acknowledges it.
    async fn exchange(&self, msg: &Message) -> Result<Message, String> {
        let mut request = Message::new(
            msg.router.source.clone(),
            msg.router.group.clone(),
            msg.router.operation.clone(),
            msg.router.resource.clone(),
            msg.content.clone(),
        );
        request.header.resource_version = msg.header.resource_version.clone();
        let reply = match self
            .bus
            .send_sync(&self.cloud_module, request, Some(self.timeout))
            .await
        {
            Ok(reply) => reply,
            Err(BusError::Timeout { timeout, .. }) => {
                return Err(format!(
                    "metamanager: no answer from the cloud within {timeout:?}"
                ));
            }
            Err(error) => return Err(format!("metamanager: {error}")),
        };
        if reply.router.operation == operation::ERROR {
            return Ok(reply);
        }
        if let Some(object) = reply_object(&reply.content)
            && let Some(resource) = EdgeResource::parse(&msg.router.resource)
        {
            // A status patch answers with the whole pod or node.
            let kind = match resource.resource_type {
                resource_type::POD_PATCH => resource_type::POD,
                resource_type::NODE_PATCH => resource_type::NODE,
                other => other,
            };
            let resource = EdgeResource {
                resource_type: kind,
                ..resource
            };
            if let Some(key) = object_key(&resource, object) {
                let object = object.clone();
                if let Err(error) = self
                    .store
                    .blocking(move |store| store.put_object(&key, &object))
                    .await
                {
                    tracing::warn!(error = %error_chain(&error), "the cloud's answer not stored");
                }
            }
        }
        // KubeEdge acknowledges every answer: the cloud needs it for
        // answers sent in ACK mode and ignores it otherwise.
        if let Err(error) = self.bus.send(&self.cloud_module, reply.ack()).await {
            tracing::debug!(%error, "acknowledgement of an answer not sent");
        }
        Ok(reply)
    }
}

/// An error and its sources on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests;
