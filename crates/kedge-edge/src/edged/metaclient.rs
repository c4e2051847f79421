//! edged's calls to MetaManager (KubeEdge's `metaclient`): queries answered
//! from the local store or the cloud, and requests MetaManager passes to
//! the cloud (node registration, status patches, leases, pod deletion).
//!
//! Every call is a synchronous bus message from `edged` to module
//! `metamanager` (group `meta`) with a resource `<namespace>/<type>[/<name>]`
//! as docs/metamanager.md describes; the answers' shapes are decoded here
//! so that the rest of edged sees objects and [`MetaError`]s.

use std::time::Duration;

use kedge_bus::{BusError, BusHandle};
use kedge_message::{Message, group, module, operation, resource_type};
use serde_json::Value;

use crate::metamanager::process::NOT_CONNECTED;

/// Why a MetaManager call failed.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The bus did not deliver the request or no answer came in time.
    #[error("metamanager: {0}")]
    Bus(#[from] BusError),
    /// The link to the cloud is down and the request needs it.
    #[error("{NOT_CONNECTED}")]
    NotConnected,
    /// The cloud (or MetaManager) refused the request; `code` is the
    /// Kubernetes Status code when one came, else 0.
    #[error("{message}")]
    Refused {
        /// The Status code (404, 409 ...), 0 without a Status.
        code: u16,
        /// The Status message or error text.
        message: String,
    },
}

impl MetaError {
    /// The Status code the cloud answered with, 0 if none.
    pub fn code(&self) -> u16 {
        match self {
            Self::Refused { code, .. } => *code,
            _ => 0,
        }
    }
}

/// A handle for edged's calls to MetaManager. Clones share the bus.
#[derive(Debug, Clone)]
pub struct MetaClient {
    bus: BusHandle,
    timeout: Duration,
}

impl MetaClient {
    /// A client over `bus` whose calls wait at most `timeout`.
    pub fn new(bus: BusHandle, timeout: Duration) -> Self {
        Self { bus, timeout }
    }

    /// The objects of `kind` named `name` in `namespace` (one or none), or
    /// with `name` `None` every object of `kind` in every namespace.
    pub async fn query(
        &self,
        namespace: &str,
        kind: &str,
        name: Option<&str>,
    ) -> Result<Vec<Value>, MetaError> {
        let resource = match name {
            Some(name) => format!("{namespace}/{kind}/{name}"),
            None => format!("{namespace}/{kind}"),
        };
        let reply = self.call(operation::QUERY, resource, Value::Null).await?;
        Ok(match reply {
            Value::Array(objects) => objects,
            Value::Null => Vec::new(),
            object => vec![object],
        })
    }

    /// The object of `kind` named `name`, `None` if it is not known.
    pub async fn get(
        &self,
        namespace: &str,
        kind: &str,
        name: &str,
    ) -> Result<Option<Value>, MetaError> {
        match self.query(namespace, kind, Some(name)).await {
            Ok(objects) => Ok(objects.into_iter().next()),
            // The cloud answers a query for a missing object with a 404
            // Status: that is "not known", not a failure.
            Err(err) if err.code() == 404 => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Creates `object` of `kind` in the cloud and returns what the cloud
    /// stored.
    pub async fn insert(
        &self,
        namespace: &str,
        kind: &str,
        name: &str,
        object: Value,
    ) -> Result<Value, MetaError> {
        let reply = self
            .call(
                operation::INSERT,
                format!("{namespace}/{kind}/{name}"),
                object,
            )
            .await?;
        Ok(object_of(reply))
    }

    /// Replaces `object` of `kind` in the cloud and returns the cloud's
    /// answer (the stored object, or `"OK"`).
    pub async fn update(
        &self,
        namespace: &str,
        kind: &str,
        name: &str,
        object: Value,
    ) -> Result<Value, MetaError> {
        let reply = self
            .call(
                operation::UPDATE,
                format!("{namespace}/{kind}/{name}"),
                object,
            )
            .await?;
        Ok(object_of(reply))
    }

    /// Sends a strategic-merge patch of a pod's status (`podpatch`) or the
    /// node's (`nodepatch`). While the link is down MetaManager answers
    /// [`MetaError::NotConnected`] and EdgeHub keeps the patch until the
    /// cloud is back.
    pub async fn patch_status(
        &self,
        namespace: &str,
        kind: &str,
        name: &str,
        patch: &Value,
    ) -> Result<Value, MetaError> {
        let reply = self
            .call(
                operation::PATCH,
                format!("{namespace}/{kind}/{name}"),
                Value::String(patch.to_string()),
            )
            .await?;
        Ok(object_of(reply))
    }

    /// Asks the cloud to delete pod `namespace/name` if its uid is still
    /// `uid`, with grace period 0: the pod's containers are already gone.
    pub async fn delete_pod(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Result<(), MetaError> {
        let options = serde_json::json!({
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": uid},
        });
        self.call(
            operation::DELETE,
            format!("{namespace}/{}/{name}", resource_type::POD),
            options,
        )
        .await
        .map(drop)
    }

    async fn call(&self, op: &str, resource: String, content: Value) -> Result<Value, MetaError> {
        let request = Message::new(module::EDGED, group::META, op, resource, content);
        let reply = self
            .bus
            .send_sync(module::META_MANAGER, request, Some(self.timeout))
            .await?;
        if reply.router.operation == operation::ERROR {
            return Err(refusal(&reply.content));
        }
        if let Some(err) = reply.content.get("Err").filter(|e| !e.is_null()) {
            return Err(refusal(err.get("ErrStatus").unwrap_or(err)));
        }
        if let Some(status) = reply.content.get("ErrStatus") {
            return Err(refusal(status));
        }
        Ok(reply.content)
    }
}

/// The object of an `{"Object","Err"}` answer, or the answer itself.
fn object_of(reply: Value) -> Value {
    match reply {
        Value::Object(mut map) if map.contains_key("Object") && map.contains_key("Err") => {
            map.remove("Object").unwrap_or(Value::Null)
        }
        other => other,
    }
}

/// The error an answer's content describes: a Kubernetes Status or text.
fn refusal(content: &Value) -> MetaError {
    if let Some(text) = content.as_str() {
        if text == NOT_CONNECTED {
            return MetaError::NotConnected;
        }
        return MetaError::Refused {
            code: 0,
            message: text.to_owned(),
        };
    }
    MetaError::Refused {
        code: content
            .get("code")
            .and_then(Value::as_u64)
            .and_then(|c| u16::try_from(c).ok())
            .unwrap_or(0),
        message: content
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(|| content.to_string(), str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_are_decoded_into_objects_and_errors() {
        assert_eq!(
            object_of(json!({"Object": {"metadata": {"name": "a"}}, "Err": null})),
            json!({"metadata": {"name": "a"}})
        );
        assert_eq!(object_of(json!("OK")), json!("OK"));
        assert!(matches!(
            refusal(&json!(NOT_CONNECTED)),
            MetaError::NotConnected
        ));
        let conflict = refusal(&json!({"kind": "Status", "code": 409, "message": "exists"}));
        assert_eq!(conflict.code(), 409);
        assert_eq!(conflict.to_string(), "exists");
    }
}
