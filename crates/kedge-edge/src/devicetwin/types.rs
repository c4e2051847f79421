//! DeviceTwin's JSON, as KubeEdge's `dttype` writes it (devices.md §3.3):
//! twins, their values and versions, the payloads published on the
//! `$hw/events/...` topics, and the checks on what mappers and
//! applications send.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A twin value and when it was set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwinValue {
    /// The value, as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `{"timestamp": ms}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ValueMetadata>,
}

/// When a value was set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueMetadata {
    /// Milliseconds since the epoch.
    #[serde(default)]
    pub timestamp: i64,
}

/// How many times the cloud and the edge changed a value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwinVersion {
    /// Changes from the cloud.
    #[serde(default)]
    pub cloud: i64,
    /// Changes at the edge.
    #[serde(default)]
    pub edge: i64,
}

/// A twin's value type (`{"type": "int"}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeMetadata {
    /// `int`, `float`, `boolean`, `string` ..., or `deleted` for a
    /// tombstone.
    #[serde(rename = "type", default)]
    pub value_type: String,
}

/// One twin: desired (`expected`) and reported (`actual`) values with
/// their versions (KubeEdge's `MsgTwin`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsgTwin {
    /// The desired value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<TwinValue>,
    /// The reported value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual: Option<TwinValue>,
    /// Whether the twin may be deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
    /// The value type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TypeMetadata>,
    /// The desired value's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<TwinVersion>,
    /// The reported value's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_version: Option<TwinVersion>,
}

impl MsgTwin {
    /// The value type; `string` when none is set.
    pub fn value_type(&self) -> &str {
        self.metadata
            .as_ref()
            .map(|m| m.value_type.as_str())
            .filter(|t| !t.is_empty())
            .unwrap_or("string")
    }

    /// Whether this twin is a tombstone.
    pub fn is_deleted(&self) -> bool {
        self.value_type() == DELETED
    }

    /// The twin without its versions, as results and get replies show it.
    pub fn without_versions(&self) -> Self {
        Self {
            expected_version: None,
            actual_version: None,
            ..self.clone()
        }
    }
}

/// The type of a deleted twin.
pub const DELETED: &str = "deleted";

/// A twin update from a mapper or an application:
/// `{"event_id"?, "twin": {name: MsgTwin | null}}`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TwinUpdate {
    /// The sender's event id, echoed in the result.
    #[serde(default)]
    pub event_id: String,
    /// The twins to change; `null` deletes an optional twin.
    #[serde(default)]
    pub twin: Option<BTreeMap<String, Option<MsgTwin>>>,
}

/// A request carrying only an event id (`twin/get`, `membership/get`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EventRequest {
    /// The sender's event id.
    #[serde(default)]
    pub event_id: String,
}

/// A device state report: `{"event_id"?, "state": ...}`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StateUpdate {
    /// The sender's event id.
    #[serde(default)]
    pub event_id: String,
    /// `online`, `offline`, `ok`, `unknown` or `disconnected`, in any case.
    #[serde(default)]
    pub state: String,
}

/// The device states a state report may set.
pub const STATES: [&str; 5] = ["online", "offline", "ok", "unknown", "disconnected"];

/// A device as membership lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberDevice {
    /// The device id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// The device name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Its description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Its state.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
    /// When it was last online, `YYYY-MM-DD HH:MM:SS` local time.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_online: String,
}

/// A membership update from the cloud.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct MembershipUpdate {
    /// Devices now on this node.
    #[serde(default)]
    pub added_devices: Option<Vec<MemberDevice>>,
    /// Devices no longer on this node.
    #[serde(default)]
    pub removed_devices: Option<Vec<MemberDevice>>,
}

/// `{"event_id", "timestamp"}` followed by `fields`: the head every
/// published payload starts with.
pub fn payload(event_id: &str, timestamp: i64, fields: Value) -> Value {
    let mut out = json!({"event_id": event_id, "timestamp": timestamp});
    if let (Some(out), Value::Object(fields)) = (out.as_object_mut(), fields) {
        out.extend(fields);
    }
    out
}

/// An error result: `{"event_id","timestamp","code","reason"}`.
pub fn error_payload(event_id: &str, timestamp: i64, code: u16, reason: &str) -> Value {
    payload(event_id, timestamp, json!({"code": code, "reason": reason}))
}

/// Whether `text` is 1 to `max` characters of `[a-zA-Z0-9-_.,:/@#]`, the
/// twin names and values KubeEdge accepts.
pub fn is_twin_text(text: &str, max: usize) -> bool {
    !text.is_empty()
        && text.len() <= max
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.,:/@#".contains(c))
}

/// The longest twin name.
pub const MAX_NAME: usize = 128;
/// The longest twin value.
pub const MAX_VALUE: usize = 512;

/// Whether `value` is of `value_type` (KubeEdge's `ValidateValue`).
pub fn value_fits(value_type: &str, value: &str) -> Result<(), String> {
    let fits = match value_type {
        "" | "string" | DELETED => true,
        "int" | "integer" => value.parse::<i64>().is_ok(),
        "float" | "double" => value.parse::<f64>().is_ok(),
        "boolean" => value == "true" || value == "false",
        other => return Err(format!("unknown twin type {other:?}")),
    };
    if fits {
        Ok(())
    } else {
        Err(format!("{value:?} is not of type {value_type}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twin_text_is_kubeedges_character_set() {
        assert!(is_twin_text("temperature", MAX_NAME));
        assert!(is_twin_text("a-b_c.d,e:f/g@h#1", MAX_NAME));
        assert!(!is_twin_text("", MAX_NAME));
        assert!(!is_twin_text("with space", MAX_NAME));
        assert!(!is_twin_text("plus+", MAX_NAME));
        assert!(!is_twin_text(&"x".repeat(129), MAX_NAME));
        assert!(is_twin_text(&"x".repeat(512), MAX_VALUE));
    }

    #[test]
    fn values_are_checked_against_their_type() {
        assert!(value_fits("int", "-42").is_ok());
        assert!(value_fits("int", "4.2").is_err());
        assert!(value_fits("float", "4.2").is_ok());
        assert!(value_fits("boolean", "true").is_ok());
        assert!(value_fits("boolean", "True").is_err());
        assert!(value_fits("string", "anything").is_ok());
        assert!(value_fits("complex", "1").is_err());
    }

    #[test]
    fn twins_read_and_write_kubeedges_keys() {
        let text = r#"{"expected":{"value":"20","metadata":{"timestamp":1}},"actual":{"value":"21"},"optional":false,"metadata":{"type":"int"},"expected_version":{"cloud":0,"edge":1}}"#;
        let twin: MsgTwin = serde_json::from_str(text).expect("twin");
        assert_eq!(twin.value_type(), "int");
        assert_eq!(serde_json::to_string(&twin).expect("json"), text);
        assert_eq!(
            payload("e", 5, json!({"twin": {}})),
            json!({"event_id": "e", "timestamp": 5, "twin": {}})
        );
    }
}
