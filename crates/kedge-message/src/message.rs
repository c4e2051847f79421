//! The message struct and its constructors (KubeEdge's beehive
//! `model.Message`, protocol.md §1.1).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{content, group, module, operation, resource_type};

/// One message: a header, a route and arbitrary JSON content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Identity, correlation and versioning.
    pub header: MessageHeader,
    /// Where the message comes from and goes to, and what it does. The wire
    /// key is `route`; Go always writes it.
    #[serde(rename = "route", default)]
    pub router: MessageRoute,
    /// The payload; `null` when absent.
    #[serde(default)]
    pub content: Value,
}

/// The message header. Field order and omitted empty fields follow Go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageHeader {
    /// A random UUIDv4.
    #[serde(rename = "msg_id", default)]
    pub id: String,
    /// For a reply, the id of the request.
    #[serde(
        rename = "parent_msg_id",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub parent_id: String,
    /// Milliseconds since the Unix epoch.
    #[serde(default)]
    pub timestamp: i64,
    /// Kubernetes resourceVersion of the object in the content.
    #[serde(
        rename = "resourceversion",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub resource_version: String,
    /// Set by synchronous sends.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sync: bool,
    /// Local transport hint; copied into replies.
    #[serde(rename = "type", default, skip_serializing_if = "String::is_empty")]
    pub message_type: String,
}

/// The message route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRoute {
    /// Name of the sending module.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// Practically unused.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub destination: String,
    /// Group of the target module.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// The verb (see [`crate::operation`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operation: String,
    /// Slash-separated resource path (see [`crate::resource`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource: String,
}

/// Milliseconds since the Unix epoch, as message timestamps use.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl Message {
    /// A new message with a fresh id and the current time.
    pub fn new(
        source: impl Into<String>,
        group: impl Into<String>,
        operation: impl Into<String>,
        resource: impl Into<String>,
        content: Value,
    ) -> Self {
        Self {
            header: MessageHeader {
                id: new_id(),
                timestamp: now_millis(),
                ..MessageHeader::default()
            },
            router: MessageRoute {
                source: source.into(),
                group: group.into(),
                operation: operation.into(),
                resource: resource.into(),
                ..MessageRoute::default()
            },
            content,
        }
    }

    /// The edge's heartbeat: source `websocket`, group `resource`, resource
    /// `node`, operation `keepalive`, content `"ping"`.
    pub fn keepalive() -> Self {
        Self::new(
            module::EDGE_HUB,
            group::RESOURCE,
            operation::KEEPALIVE,
            resource_type::NODE,
            Value::String(content::PING.to_owned()),
        )
    }

    /// This message with its resourceVersion set.
    #[must_use]
    pub fn with_resource_version(mut self, resource_version: impl Into<String>) -> Self {
        self.header.resource_version = resource_version.into();
        self
    }

    /// This message as a reply to the message with id `parent_id`.
    #[must_use]
    pub fn with_parent_id(mut self, parent_id: impl Into<String>) -> Self {
        self.header.parent_id = parent_id.into();
        self
    }

    /// A reply to this message: a new id, `parent_msg_id` = this id, the
    /// current time, source, group, resource and type copied unchanged (not
    /// swapped, as KubeEdge does), operation `response`.
    pub fn response(&self, content: Value) -> Self {
        Self {
            header: MessageHeader {
                id: new_id(),
                parent_id: self.header.id.clone(),
                timestamp: now_millis(),
                message_type: self.header.message_type.clone(),
                ..MessageHeader::default()
            },
            router: MessageRoute {
                source: self.router.source.clone(),
                group: self.router.group.clone(),
                operation: operation::RESPONSE.to_owned(),
                resource: self.router.resource.clone(),
                destination: String::new(),
            },
            content,
        }
    }

    /// The acknowledgement of this message: a reply with content `"OK"`.
    pub fn ack(&self) -> Self {
        self.response(Value::String(content::OK.to_owned()))
    }

    /// An error reply to this message: operation `error`, content the error
    /// text, `parent_msg_id` = this id (KubeEdge since v1.18; v1.15 put the
    /// request's own parent id there, which no receiver relies on).
    pub fn error_response(&self, error: impl fmt::Display) -> Self {
        let mut reply = self.response(Value::String(error.to_string()));
        reply.router.operation = operation::ERROR.to_owned();
        reply
    }

    /// The message id.
    pub fn id(&self) -> &str {
        &self.header.id
    }

    /// The parent (request) id; empty for new messages.
    pub fn parent_id(&self) -> &str {
        &self.header.parent_id
    }

    /// Whether this message answers another one.
    pub fn is_reply(&self) -> bool {
        !self.header.parent_id.is_empty()
    }

    /// The payload bytes as KubeEdge's `GetContentData` gives them.
    pub fn content_data(&self) -> std::borrow::Cow<'_, [u8]> {
        content::data(&self.content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request() -> Message {
        let mut m = Message::new(
            "edged",
            "meta",
            "query",
            "default/configmap/cfg",
            Value::Null,
        );
        m.header.message_type = "channel".into();
        m
    }

    #[test]
    fn new_messages_have_uuid_and_time() {
        let m = request();
        assert!(uuid::Uuid::parse_str(m.id()).is_ok());
        assert!(m.header.timestamp > 1_600_000_000_000);
        assert!(!m.is_reply());
        assert_ne!(m.id(), request().id());
    }

    #[test]
    fn response_copies_route_and_links_parent() {
        let req = request();
        let resp = req.response(json!({"data": {}}));
        assert_ne!(resp.id(), req.id());
        assert_eq!(resp.parent_id(), req.id());
        assert_eq!(resp.router.source, "edged");
        assert_eq!(resp.router.group, "meta");
        assert_eq!(resp.router.resource, "default/configmap/cfg");
        assert_eq!(resp.router.operation, "response");
        assert_eq!(resp.header.message_type, "channel");
        assert!(resp.is_reply());
    }

    #[test]
    fn ack_and_error() {
        let req = request();
        assert_eq!(req.ack().content, json!("OK"));
        let err = req.error_response("not found");
        assert_eq!(err.router.operation, "error");
        assert_eq!(err.parent_id(), req.id());
        assert_eq!(err.content, json!("not found"));
    }

    #[test]
    fn keepalive_matches_edgehub() {
        let k = Message::keepalive();
        assert_eq!(
            (
                k.router.source.as_str(),
                k.router.group.as_str(),
                k.router.operation.as_str(),
                k.router.resource.as_str()
            ),
            ("websocket", "resource", "keepalive", "node")
        );
        assert_eq!(k.content, json!("ping"));
    }
}
