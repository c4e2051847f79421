//! Message content with Go's conventions (protocol.md §1.2): byte payloads
//! travel as base64 strings, success is the string `"OK"`, object replies
//! are `{"Object":…,"Err":…}`, and a string content is raw bytes to the
//! receiver.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The success sentinel of a reply or an ACK.
pub const OK: &str = "OK";

/// The content of the edge's keepalive.
pub const PING: &str = "ping";

/// Content for a Go `[]byte`: the standard base64 alphabet with padding.
pub fn from_bytes(bytes: &[u8]) -> Value {
    Value::String(STANDARD.encode(bytes))
}

/// Decode content that carries a Go `[]byte` (a base64 string).
pub fn decode_base64(content: &Value) -> Option<Vec<u8>> {
    content.as_str().and_then(|s| STANDARD.decode(s).ok())
}

/// The payload bytes as KubeEdge's `GetContentData` gives them: a string
/// is its UTF-8 bytes (not base64-decoded), anything else is its JSON text.
pub fn data(content: &Value) -> Cow<'_, [u8]> {
    match content {
        Value::String(s) => Cow::Borrowed(s.as_bytes()),
        other => Cow::Owned(crate::wire::to_go_json(other)),
    }
}

/// Whether the content is the success sentinel `"OK"`.
pub fn is_ok(content: &Value) -> bool {
    content.as_str() == Some(OK)
}

/// Whether the content is an encoded Kubernetes error (`{"ErrStatus":…}`).
pub fn is_status_error(content: &Value) -> bool {
    content
        .as_object()
        .is_some_and(|o| o.len() == 1 && o.contains_key("ErrStatus"))
}

/// An object reply: the object, or an error, as KubeEdge's `ObjectResp`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectResp {
    /// The object; `null` on error.
    #[serde(rename = "Object")]
    pub object: Value,
    /// The error; `null` on success. A Kubernetes error is `{"ErrStatus":…}`.
    #[serde(rename = "Err")]
    pub err: Value,
}

impl ObjectResp {
    /// A successful reply carrying `object`.
    pub fn ok(object: Value) -> Self {
        Self {
            object,
            err: Value::Null,
        }
    }

    /// A failed reply carrying a Kubernetes `Status` object as Go encodes a
    /// `*StatusError`.
    pub fn status_error(status: Value) -> Self {
        Self {
            object: Value::Null,
            err: serde_json::json!({ "ErrStatus": status }),
        }
    }

    /// Read an object reply: content that is an object holding both keys
    /// `Object` and `Err`.
    pub fn from_content(content: &Value) -> Option<Self> {
        let map = content.as_object()?;
        Some(Self {
            object: map.get("Object")?.clone(),
            err: map.get("Err")?.clone(),
        })
    }

    /// The content value of this reply.
    pub fn to_content(&self) -> Value {
        serde_json::json!({ "Object": self.object, "Err": self.err })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bytes_are_base64_strings() {
        let v = from_bytes(b"hello\x00");
        assert_eq!(v, json!("aGVsbG8A"));
        assert_eq!(decode_base64(&v).unwrap(), b"hello\x00");
        assert_eq!(decode_base64(&json!(1)), None);
    }

    #[test]
    fn data_follows_get_content_data() {
        assert_eq!(&*data(&json!("{\"a\":1}")), b"{\"a\":1}");
        assert_eq!(&*data(&json!({"a": "<"})), b"{\"a\":\"\\u003c\"}");
        assert_eq!(&*data(&Value::Null), b"null");
    }

    #[test]
    fn sentinels() {
        assert!(is_ok(&json!("OK")));
        assert!(!is_ok(&json!("ok")));
        assert!(is_status_error(&json!({"ErrStatus": {"code": 404}})));
        assert!(!is_status_error(&json!({"ErrStatus": {}, "x": 1})));
    }

    #[test]
    fn object_resp_needs_both_keys() {
        let ok = ObjectResp::ok(json!({"kind": "Node"}));
        let back = ObjectResp::from_content(&ok.to_content()).unwrap();
        assert_eq!(back, ok);
        assert_eq!(ObjectResp::from_content(&json!({"Object": 1})), None);
        let err = ObjectResp::status_error(json!({"code": 404}));
        assert_eq!(err.to_content()["Err"]["ErrStatus"]["code"], 404);
    }
}
