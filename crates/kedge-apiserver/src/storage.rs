//! Objects over the key-value store: JSON in and out, the store revision as
//! `metadata.resourceVersion`, store errors as Kubernetes `Status` errors,
//! paged lists with continue tokens, and watches translated into
//! Kubernetes watch events.

use std::pin::Pin;
use std::sync::Arc;

use base64::Engine;
use futures::{Stream, StreamExt};
use kedge_store::{Event, KeyValue, ListRequest, Store, StoreError};
use serde_json::{Value, json};

use crate::resources::ResourceType;
use crate::status::{Reason, StatusError};

/// The JSON objects of the API over a [`Store`].
#[derive(Clone)]
pub struct Objects {
    store: Arc<dyn Store>,
}

/// One page of a list.
#[derive(Debug, Clone)]
pub struct Page {
    /// The objects, each with its resourceVersion.
    pub items: Vec<Value>,
    /// The revision the list was read at.
    pub resource_version: String,
    /// The token for the next page, if there is one.
    pub continue_token: Option<String>,
    /// How many objects follow this page (before selectors), if known.
    pub remaining: Option<i64>,
}

/// What to read in a list.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    /// Read at this revision (`None`: the latest).
    pub revision: Option<i64>,
    /// At most this many matching objects (`None`: all).
    pub limit: Option<usize>,
    /// The continue token of the previous page.
    pub continue_token: Option<String>,
}

/// A change to one object, as a Kubernetes watch reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// `ADDED` or `MODIFIED`: the object now, and before (if it existed).
    Put {
        /// The object after the change.
        object: Value,
        /// The object before, for a modification.
        previous: Option<Value>,
    },
    /// `DELETED`: the object as it was, with the deletion's revision.
    Deleted {
        /// The last state of the object.
        object: Value,
    },
}

/// The stream of changes a watch yields; an `Err` ends it (for example a
/// watcher that fell too far behind).
pub type ChangeStream = Pin<Box<dyn Stream<Item = Result<Change, StatusError>> + Send>>;

/// Continue tokens: the snapshot revision and the last key returned, as
/// base64 JSON (upstream's shape: `{"v":"meta.k8s.io/v1","rv":N,"start":key}`).
fn encode_continue(revision: i64, last_key: &str, prefix: &str) -> String {
    let start = last_key.strip_prefix(prefix).unwrap_or(last_key);
    let token = json!({"v": "meta.k8s.io/v1", "rv": revision, "start": format!("{start}\u{0}")});
    base64::engine::general_purpose::URL_SAFE.encode(token.to_string())
}

fn decode_continue(token: &str, prefix: &str) -> Result<(i64, String), StatusError> {
    let invalid = || StatusError::bad_request(format!("invalid continue token: {token:?}"));
    let bytes = base64::engine::general_purpose::URL_SAFE
        .decode(token)
        .map_err(|_| invalid())?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    let revision = value
        .get("rv")
        .and_then(Value::as_i64)
        .ok_or_else(invalid)?;
    let start = value
        .get("start")
        .and_then(Value::as_str)
        .ok_or_else(invalid)?;
    let start = start.strip_suffix('\u{0}').unwrap_or(start);
    if start.contains("..") || start.starts_with('/') {
        return Err(invalid());
    }
    Ok((revision, format!("{prefix}{start}")))
}

/// The 410 answer for a revision older than the compacted one.
pub fn too_old(requested: i64, compacted: i64) -> StatusError {
    StatusError::expired(format!(
        "too old resource version: {requested} ({compacted})"
    ))
}

/// Maps a store error for an object to its `Status`.
fn object_error(error: StoreError, resource: &ResourceType, name: &str) -> StatusError {
    match error {
        StoreError::NotFound => StatusError::not_found(&resource.group, &resource.plural, name),
        StoreError::AlreadyExists => {
            StatusError::already_exists(&resource.group, &resource.plural, name)
        }
        StoreError::Conflict { .. } => StatusError::conflict(
            &resource.group,
            &resource.plural,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ),
        other => store_error(other),
    }
}

/// Maps a store error that concerns no one object.
fn store_error(error: StoreError) -> StatusError {
    match error {
        StoreError::Compacted {
            compacted,
            requested,
        } => too_old(requested, compacted),
        StoreError::TooSlow => StatusError::expired("the watch fell too far behind; list again"),
        other => StatusError::new(Reason::InternalError, format!("storage error: {other}")),
    }
}

/// The object stored in `kv`, with its resourceVersion set.
fn decode_object(kv: &KeyValue) -> Result<Value, StatusError> {
    let mut object: Value = serde_json::from_slice(&kv.value).map_err(|error| {
        StatusError::internal(format!("stored object at {} is corrupt: {error}", kv.key))
    })?;
    set_resource_version(&mut object, kv.mod_revision);
    Ok(object)
}

/// Sets `metadata.resourceVersion` to `revision`.
pub fn set_resource_version(object: &mut Value, revision: i64) {
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.insert("resourceVersion".to_owned(), json!(revision.to_string()));
    }
}

/// `metadata.resourceVersion` of `object` as a revision: `Ok(None)` when
/// absent or empty, 400 when malformed.
pub fn resource_version_of(object: &Value) -> Result<Option<i64>, StatusError> {
    match object
        .get("metadata")
        .and_then(|m| m.get("resourceVersion"))
        .and_then(Value::as_str)
    {
        None | Some("") => Ok(None),
        Some(text) => parse_resource_version(text).map(Some),
    }
}

/// Parses a resourceVersion string.
pub fn parse_resource_version(text: &str) -> Result<i64, StatusError> {
    text.parse::<i64>()
        .ok()
        .filter(|rv| *rv >= 0)
        .ok_or_else(|| StatusError::bad_request(format!("invalid resource version: {text:?}")))
}

/// The bytes stored for `object`: its JSON without resourceVersion (the
/// store's revision is the resourceVersion).
fn encode_object(object: &Value) -> Vec<u8> {
    let mut object = object.clone();
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("resourceVersion");
    }
    object.to_string().into_bytes()
}

fn object_key(resource: &ResourceType, object: &Value) -> (String, String) {
    let metadata = object.get("metadata");
    let name = metadata
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let namespace = metadata
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str);
    (resource.key(namespace, &name), name)
}

impl Objects {
    /// Objects over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The latest revision.
    pub async fn current_revision(&self) -> Result<i64, StatusError> {
        self.store.current_revision().await.map_err(store_error)
    }

    /// One object, or 404.
    pub async fn get(
        &self,
        resource: &ResourceType,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, StatusError> {
        match self.store.get(&resource.key(namespace, name)).await {
            Ok(Some(kv)) => decode_object(&kv),
            Ok(None) => Err(StatusError::not_found(
                &resource.group,
                &resource.plural,
                name,
            )),
            Err(error) => Err(object_error(error, resource, name)),
        }
    }

    /// One object if it exists.
    pub async fn try_get(
        &self,
        resource: &ResourceType,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, StatusError> {
        match self.get(resource, namespace, name).await {
            Ok(object) => Ok(Some(object)),
            Err(error) if error.reason == Reason::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// A page of the objects under `namespace` (all namespaces when
    /// `None`) that satisfy `keep`. The page holds up to `limit` kept
    /// objects; its continue token resumes after the last one, at the same
    /// revision.
    pub async fn list(
        &self,
        resource: &ResourceType,
        namespace: Option<&str>,
        request: PageRequest,
        keep: impl Fn(&Value) -> bool,
    ) -> Result<Page, StatusError> {
        let prefix = resource.namespace_prefix(namespace);
        let (mut revision, mut start_after) = match &request.continue_token {
            Some(token) => {
                let (revision, key) = decode_continue(token, &prefix)?;
                (Some(revision), Some(key))
            }
            None => (request.revision, None),
        };
        let mut items = Vec::new();
        loop {
            let wanted = request
                .limit
                .map(|limit| limit.saturating_sub(items.len()).max(1));
            let page = self
                .store
                .list(ListRequest {
                    prefix: prefix.clone(),
                    revision,
                    limit: wanted,
                    start_after: start_after.clone(),
                })
                .await
                .map_err(|error| match error {
                    StoreError::Compacted { .. } if request.continue_token.is_some() => StatusError::expired(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    ),
                    other => store_error(other),
                })?;
            revision = Some(page.revision);
            let mut last_key = None;
            for kv in &page.items {
                last_key = Some(kv.key.clone());
                let object = decode_object(kv)?;
                if keep(&object) {
                    items.push(object);
                    if request.limit.is_some_and(|limit| items.len() >= limit) {
                        break;
                    }
                }
            }
            let full = request.limit.is_some_and(|limit| items.len() >= limit);
            let last_seen_is_last = last_key.as_ref() == page.items.last().map(|kv| &kv.key);
            let more = page.more || !last_seen_is_last;
            if full || !more {
                let revision = page.revision;
                let continue_token = match (full && more, &last_key) {
                    (true, Some(key)) => Some(encode_continue(revision, key, &prefix)),
                    _ => None,
                };
                return Ok(Page {
                    items,
                    resource_version: revision.to_string(),
                    continue_token,
                    remaining: None,
                });
            }
            start_after = last_key;
        }
    }

    /// Stores a new object; 409 AlreadyExists if its key is taken.
    pub async fn create(
        &self,
        resource: &ResourceType,
        object: &Value,
    ) -> Result<Value, StatusError> {
        let (key, name) = object_key(resource, object);
        let revision = self
            .store
            .create(&key, encode_object(object))
            .await
            .map_err(|error| object_error(error, resource, &name))?;
        let mut stored = object.clone();
        set_resource_version(&mut stored, revision);
        Ok(stored)
    }

    /// Replaces an object if its revision is still `expected` (any revision
    /// when `None`); 409 Conflict otherwise, 404 if it is gone.
    pub async fn update(
        &self,
        resource: &ResourceType,
        object: &Value,
        expected: Option<i64>,
    ) -> Result<Value, StatusError> {
        let (key, name) = object_key(resource, object);
        let revision = self
            .store
            .update(&key, encode_object(object), expected)
            .await
            .map_err(|error| object_error(error, resource, &name))?;
        let mut stored = object.clone();
        set_resource_version(&mut stored, revision);
        Ok(stored)
    }

    /// Removes an object if its revision is still `expected` (any when
    /// `None`), returning its last state.
    pub async fn delete(
        &self,
        resource: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        expected: Option<i64>,
    ) -> Result<Value, StatusError> {
        let kv = self
            .store
            .delete(&resource.key(namespace, name), expected)
            .await
            .map_err(|error| object_error(error, resource, name))?;
        decode_object(&kv)
    }

    /// The changes under `namespace` after revision `after`.
    pub async fn watch(
        &self,
        resource: &ResourceType,
        namespace: Option<&str>,
        after: i64,
    ) -> Result<ChangeStream, StatusError> {
        let prefix = resource.namespace_prefix(namespace);
        let events = self
            .store
            .watch(&prefix, after)
            .await
            .map_err(store_error)?;
        Ok(Box::pin(events.map(|event| match event {
            Ok(Event::Put { kv, prev }) => Ok(Change::Put {
                object: decode_object(&kv)?,
                previous: prev.as_ref().map(decode_object).transpose()?,
            }),
            Ok(Event::Delete { prev, revision }) => {
                let mut object = decode_object(&prev)?;
                set_resource_version(&mut object, revision);
                Ok(Change::Deleted { object })
            }
            Err(error) => Err(store_error(error)),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_reject_tampering() {
        let prefix = "/registry/core/pods/";
        let token = encode_continue(42, "/registry/core/pods/default/p7", prefix);
        let (revision, key) = decode_continue(&token, prefix).expect("valid");
        assert_eq!(
            (revision, key.as_str()),
            (42, "/registry/core/pods/default/p7")
        );
        assert!(decode_continue("not base64!", prefix).is_err());
        let evil =
            base64::engine::general_purpose::URL_SAFE.encode(r#"{"rv":1,"start":"/etc/passwd"}"#);
        assert!(decode_continue(&evil, prefix).is_err());
    }

    #[test]
    fn resource_versions_parse() {
        assert_eq!(parse_resource_version("17").expect("valid"), 17);
        assert!(parse_resource_version("abc").is_err());
        assert!(parse_resource_version("-1").is_err());
        assert_eq!(
            resource_version_of(&json!({"metadata": {}})).expect("valid"),
            None
        );
    }
}
