//! The message that crosses every boundary in Kedge: between modules on the
//! module bus and between cloud and edge on the link.
//!
//! Its JSON form is KubeEdge's beehive `model.Message`, so Kedge and KubeEdge
//! components can talk to each other.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One message: a header, a route and arbitrary JSON content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Identity, correlation and versioning.
    pub header: MessageHeader,
    /// Where the message comes from and goes to, and what it does.
    #[serde(rename = "route", default)]
    pub router: MessageRoute,
    /// The payload; `null` when absent.
    #[serde(default)]
    pub content: Value,
}

/// The message header.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MessageHeader {
    /// A random UUIDv4.
    #[serde(rename = "msg_id", default)]
    pub id: String,
    /// For a reply, the id of the request.
    #[serde(rename = "parent_msg_id", default, skip_serializing_if = "String::is_empty")]
    pub parent_id: String,
    /// Milliseconds since the Unix epoch.
    #[serde(default)]
    pub timestamp: i64,
    /// Kubernetes resourceVersion of the object in the content.
    #[serde(rename = "resourceversion", default, skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    /// Set by synchronous sends.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sync: bool,
    /// Local transport hint; copied into replies.
    #[serde(rename = "type", default, skip_serializing_if = "String::is_empty")]
    pub message_type: String,
}

/// The message route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// The verb.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operation: String,
    /// Slash-separated resource path.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource: String,
}

impl Message {
    /// The message id.
    pub fn id(&self) -> &str {
        &self.header.id
    }

    /// The parent (request) id; empty for new messages.
    pub fn parent_id(&self) -> &str {
        &self.header.parent_id
    }
}
