//! Request bodies in Kubernetes' protobuf encoding, which kubectl's typed
//! clients send (`kubectl create namespace`, `create deployment`,
//! `create secret`, `run` …), decoded into the JSON the rest of the server
//! works on.
//!
//! A body is the magic `k8s\0` and a `runtime.Unknown` envelope naming the
//! apiVersion and kind around the object's bytes. Field numbers, types and
//! JSON names of every message come from `protobuf-schema.txt`, generated
//! by `tools/gen-protobuf-schema.py` from the `k8s-pb` and `k8s-openapi`
//! crates. Kubernetes' special types get their JSON forms: Quantity and
//! Duration as strings, IntOrString as a number or string, Time and
//! MicroTime as RFC 3339, raw extensions as embedded JSON, bytes as base64.

use std::collections::HashMap;
use std::sync::LazyLock;

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::status::StatusError;

/// The magic prefix of a Kubernetes protobuf body.
pub const MAGIC: &[u8; 4] = b"k8s\0";

const SCHEMA_TEXT: &str = include_str!("protobuf-schema.txt");

/// How a field's value is encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    String,
    Bool,
    Int32,
    Int64,
    Double,
    Bytes,
    Message(String),
    Map(Box<Kind>),
}

#[derive(Debug, Clone)]
struct Field {
    json: String,
    kind: Kind,
    repeated: bool,
}

type Schema = HashMap<String, HashMap<u64, Field>>;

fn parse_kind(text: &str) -> Kind {
    match text {
        "string" => Kind::String,
        "bool" => Kind::Bool,
        "int32" => Kind::Int32,
        "int64" => Kind::Int64,
        "double" => Kind::Double,
        "bytes" => Kind::Bytes,
        other => match other.strip_prefix("map<").and_then(|m| m.strip_suffix('>')) {
            Some(value) => Kind::Map(Box::new(parse_kind(value))),
            None => Kind::Message(other.to_owned()),
        },
    }
}

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    let mut schema = Schema::new();
    for line in SCHEMA_TEXT
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let mut words = line.split(' ');
        let Some(message) = words.next() else {
            continue;
        };
        let mut fields = HashMap::new();
        for word in words {
            let mut parts = word.splitn(3, '=');
            let (Some(tag), Some(json), Some(kind)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Ok(tag) = tag.parse::<u64>() else {
                continue;
            };
            let (kind, repeated) = match kind.strip_prefix('[').and_then(|k| k.strip_suffix(']')) {
                Some(inner) => (inner, true),
                None => (kind, false),
            };
            fields.insert(
                tag,
                Field {
                    json: json.to_owned(),
                    kind: parse_kind(kind),
                    repeated,
                },
            );
        }
        schema.insert(message.to_owned(), fields);
    }
    schema
});

fn bad(why: impl std::fmt::Display) -> StatusError {
    StatusError::bad_request(format!("error decoding the protobuf request body: {why}"))
}

/// A cursor over protobuf wire data.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, StatusError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self
                .bytes
                .split_first()
                .ok_or_else(|| bad("truncated varint"))?;
            self.bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(bad("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StatusError> {
        if n > self.bytes.len() {
            return Err(bad("truncated field"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn delimited(&mut self) -> Result<&'a [u8], StatusError> {
        let len = usize::try_from(self.varint()?).map_err(|_| bad("length too large"))?;
        self.take(len)
    }
}

/// One field as it appears on the wire.
enum Wire<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Bytes(&'a [u8]),
    Fixed32,
}

/// The fields of a message, in wire order.
fn fields(bytes: &[u8]) -> Result<Vec<(u64, Wire<'_>)>, StatusError> {
    let mut reader = Reader { bytes };
    let mut out = Vec::new();
    while !reader.bytes.is_empty() {
        let key = reader.varint()?;
        let value = match key & 7 {
            0 => Wire::Varint(reader.varint()?),
            1 => {
                let raw = reader.take(8)?;
                let mut fixed = [0u8; 8];
                fixed.copy_from_slice(raw);
                Wire::Fixed64(fixed)
            }
            2 => Wire::Bytes(reader.delimited()?),
            5 => {
                reader.take(4)?;
                Wire::Fixed32
            }
            other => return Err(bad(format!("unsupported wire type {other}"))),
        };
        out.push((key >> 3, value));
    }
    Ok(out)
}

fn text(bytes: &[u8]) -> Result<String, StatusError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| bad("a string field is not UTF-8"))
}

fn scalar(kind: &Kind, wire: &Wire<'_>) -> Result<Value, StatusError> {
    // Two's complement reinterpretation is how protobuf carries negatives.
    #[allow(clippy::cast_possible_wrap, clippy::cast_possible_truncation)]
    Ok(match (kind, wire) {
        (Kind::String, Wire::Bytes(b)) => Value::String(text(b)?),
        (Kind::Bytes, Wire::Bytes(b)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        (Kind::Bool, Wire::Varint(v)) => Value::Bool(*v != 0),
        (Kind::Int32, Wire::Varint(v)) => json!(*v as i32),
        (Kind::Int64, Wire::Varint(v)) => json!(*v as i64),
        (Kind::Double, Wire::Fixed64(b)) => json!(f64::from_le_bytes(*b)),
        (Kind::Message(name), Wire::Bytes(b)) => message(name, b)?,
        _ => return Err(bad(format!("unexpected wire type for a {kind:?} field"))),
    })
}

/// Decodes packed repeated scalars.
fn packed(kind: &Kind, bytes: &[u8]) -> Result<Vec<Value>, StatusError> {
    let mut reader = Reader { bytes };
    let mut out = Vec::new();
    while !reader.bytes.is_empty() {
        out.push(scalar(kind, &Wire::Varint(reader.varint()?))?);
    }
    Ok(out)
}

fn timestamp(bytes: &[u8], micro: bool) -> Result<Value, StatusError> {
    let (mut seconds, mut nanos) = (0i64, 0i32);
    for (tag, wire) in fields(bytes)? {
        #[allow(clippy::cast_possible_wrap, clippy::cast_possible_truncation)]
        match (tag, wire) {
            (1, Wire::Varint(v)) => seconds = v as i64,
            (2, Wire::Varint(v)) => nanos = v as i32,
            _ => {}
        }
    }
    if seconds == 0 && nanos == 0 {
        return Ok(Value::Null);
    }
    let time = jiff::Timestamp::new(seconds, if micro { nanos } else { 0 }).map_err(bad)?;
    let format = if micro {
        "%Y-%m-%dT%H:%M:%S%.6fZ"
    } else {
        "%Y-%m-%dT%H:%M:%SZ"
    };
    Ok(Value::String(time.strftime(format).to_string()))
}

/// Go's duration format (`1h2m3.5s`) of `nanos` nanoseconds.
fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".to_owned();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let total = nanos.unsigned_abs();
    let (hours, rest) = (total / 3_600_000_000_000, total % 3_600_000_000_000);
    let (minutes, rest) = (rest / 60_000_000_000, rest % 60_000_000_000);
    let seconds = format!("{}.{:09}", rest / 1_000_000_000, rest % 1_000_000_000);
    let seconds = seconds.trim_end_matches('0').trim_end_matches('.');
    let mut out = sign.to_owned();
    if hours > 0 {
        out.push_str(&format!("{hours}h{minutes}m"));
    } else if minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    out.push_str(seconds);
    out.push('s');
    out
}

fn first_bytes(bytes: &[u8], wanted: u64) -> Result<Option<&[u8]>, StatusError> {
    Ok(fields(bytes)?
        .into_iter()
        .find_map(|(tag, wire)| match wire {
            Wire::Bytes(b) if tag == wanted => Some(b),
            _ => None,
        }))
}

fn embedded_json(bytes: &[u8]) -> Result<Value, StatusError> {
    match first_bytes(bytes, 1)? {
        None => Ok(Value::Null),
        Some(raw) => serde_json::from_slice(raw).map_err(|e| bad(format!("embedded JSON: {e}"))),
    }
}

/// Decodes the message `name` from `bytes` into JSON.
fn message(name: &str, bytes: &[u8]) -> Result<Value, StatusError> {
    let short = name.rsplit('.').next().unwrap_or(name);
    match (name.starts_with("apimachinery/"), short) {
        (true, "Quantity") => {
            return Ok(match first_bytes(bytes, 1)? {
                Some(b) => Value::String(text(b)?),
                None => Value::String("0".to_owned()),
            });
        }
        (true, "IntOrString") => {
            let (mut is_string, mut int, mut string) = (false, 0i64, String::new());
            for (tag, wire) in fields(bytes)? {
                #[allow(clippy::cast_possible_wrap, clippy::cast_possible_truncation)]
                match (tag, wire) {
                    (1, Wire::Varint(v)) => is_string = v == 1,
                    (2, Wire::Varint(v)) => int = i64::from(v as i32),
                    (3, Wire::Bytes(b)) => string = text(b)?,
                    _ => {}
                }
            }
            return Ok(if is_string { json!(string) } else { json!(int) });
        }
        (true, "Time") => return timestamp(bytes, false),
        (true, "MicroTime") => return timestamp(bytes, true),
        (true, "Duration") => {
            let nanos = fields(bytes)?
                .into_iter()
                .find_map(|(tag, wire)| match wire {
                    #[allow(clippy::cast_possible_wrap)]
                    Wire::Varint(v) if tag == 1 => Some(v as i64),
                    _ => None,
                });
            return Ok(json!(go_duration(nanos.unwrap_or(0))));
        }
        (true, "FieldsV1" | "RawExtension") => return embedded_json(bytes),
        _ => {}
    }
    if name.starts_with("apiextensions_apiserver/") {
        match short {
            "Json" => return embedded_json(bytes),
            "JsonSchemaPropsOrArray" | "JsonSchemaPropsOrBool" | "JsonSchemaPropsOrStringArray" => {
                let decoded = generic(name, bytes)?;
                if let Some(schema) = decoded.get("schema") {
                    return Ok(schema.clone());
                }
                let alternative = decoded.as_object().and_then(|m| {
                    m.iter()
                        .find(|(k, _)| *k != "schema")
                        .map(|(_, v)| v.clone())
                });
                return Ok(alternative.unwrap_or(Value::Null));
            }
            _ => {}
        }
    }
    generic(name, bytes)
}

fn generic(name: &str, bytes: &[u8]) -> Result<Value, StatusError> {
    let schema = SCHEMA
        .get(name)
        .ok_or_else(|| bad(format!("unknown message {name}")))?;
    let mut out = Map::new();
    for (tag, wire) in fields(bytes)? {
        // Fields this server does not know are skipped, as Go does.
        let Some(field) = schema.get(&tag) else {
            continue;
        };
        match &field.kind {
            Kind::Map(value_kind) => {
                let Wire::Bytes(entry) = wire else {
                    return Err(bad("a map entry is not length-delimited"));
                };
                let (mut key, mut value) = (String::new(), Value::Null);
                for (entry_tag, entry_wire) in fields(entry)? {
                    match entry_tag {
                        1 => {
                            if let Wire::Bytes(b) = entry_wire {
                                key = text(b)?;
                            }
                        }
                        2 => value = scalar(value_kind, &entry_wire)?,
                        _ => {}
                    }
                }
                if value.is_null() {
                    value = match **value_kind {
                        Kind::String | Kind::Bytes => json!(""),
                        _ => json!({}),
                    };
                }
                let map = out.entry(field.json.clone()).or_insert_with(|| json!({}));
                if let Some(map) = map.as_object_mut() {
                    map.insert(key, value);
                }
            }
            kind if field.repeated => {
                let values = match (&wire, kind) {
                    (Wire::Bytes(b), Kind::Bool | Kind::Int32 | Kind::Int64) => packed(kind, b)?,
                    _ => vec![scalar(kind, &wire)?],
                };
                let list = out.entry(field.json.clone()).or_insert_with(|| json!([]));
                if let Some(list) = list.as_array_mut() {
                    list.extend(values);
                }
            }
            kind => {
                let value = scalar(kind, &wire)?;
                match value {
                    // Go embeds these structs: their fields are inline in JSON.
                    Value::Object(inner) if INLINE.contains(&field.json.as_str()) => {
                        out.extend(inner)
                    }
                    value => {
                        out.insert(field.json.clone(), value);
                    }
                }
            }
        }
    }
    // Go writes empty strings and zero times for fields its JSON omits.
    out.retain(|_, value| !matches!(value, Value::Null) && value.as_str() != Some(""));
    Ok(Value::Object(out))
}

/// Fields holding a struct Go embeds, whose fields JSON puts inline.
const INLINE: [&str; 4] = [
    "handler",
    "volumeSource",
    "persistentVolumeSource",
    "ephemeralContainerCommon",
];

/// The module holding a group's messages.
fn group_module(group: &str) -> Option<&'static str> {
    Some(match group {
        "" => "api/core",
        "apps" => "api/apps",
        "batch" => "api/batch",
        "coordination.k8s.io" => "api/coordination",
        "discovery.k8s.io" => "api/discovery",
        "rbac.authorization.k8s.io" => "api/rbac",
        "autoscaling" => "api/autoscaling",
        "policy" => "api/policy",
        "authentication.k8s.io" => "api/authentication",
        "events.k8s.io" => "api/events",
        "apiextensions.k8s.io" => "apiextensions_apiserver/pkg/apis/apiextensions",
        "meta.k8s.io" => "apimachinery/pkg/apis/meta",
        _ => return None,
    })
}

/// Decodes a protobuf request body into the object's JSON.
pub fn decode(body: &[u8]) -> Result<Value, StatusError> {
    let envelope = body
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| bad("the body does not start with the Kubernetes protobuf prefix"))?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), None);
    for (tag, wire) in fields(envelope)? {
        match (tag, wire) {
            (1, Wire::Bytes(type_meta)) => {
                for (inner, value) in fields(type_meta)? {
                    match (inner, value) {
                        (1, Wire::Bytes(b)) => api_version = text(b)?,
                        (2, Wire::Bytes(b)) => kind = text(b)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(b)) => raw = Some(b),
            _ => {}
        }
    }
    let (group, version) = api_version
        .rsplit_once('/')
        .unwrap_or(("", api_version.as_str()));
    let candidates = [
        group_module(group).map(|module| format!("{module}/{version}.{kind}")),
        Some(format!("apimachinery/pkg/apis/meta/v1.{kind}")),
    ];
    let name = candidates
        .into_iter()
        .flatten()
        .find(|name| SCHEMA.contains_key(name))
        .ok_or_else(|| {
            bad(format!(
                "no protobuf decoding for {api_version}, Kind={kind}"
            ))
        })?;
    let object = message(&name, raw.unwrap_or_default())?;
    let mut out = Map::new();
    out.insert("apiVersion".to_owned(), json!(api_version));
    out.insert("kind".to_owned(), json!(kind));
    if let Value::Object(fields) = object {
        out.extend(fields);
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_pb::api::apps::v1 as apps;
    use k8s_pb::api::core::v1 as core;
    use k8s_pb::apimachinery::pkg::api::resource::Quantity;
    use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
    use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
    use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
    use prost::Message as _;

    use super::*;

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut body = MAGIC.to_vec();
        body.extend(unknown.encode_to_vec());
        body
    }

    fn object_meta(name: &str) -> meta::ObjectMeta {
        meta::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(String::new()),
            labels: BTreeMap::from([("app".to_owned(), "web".to_owned())]),
            creation_timestamp: Some(meta::Time {
                seconds: Some(0),
                nanos: Some(0),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_namespace_as_kubectl_sends_it() {
        let ns = core::Namespace {
            metadata: Some(object_meta("team-a")),
            spec: Some(core::NamespaceSpec::default()),
            status: Some(core::NamespaceStatus::default()),
        };
        let value = decode(&envelope("v1", "Namespace", ns.encode_to_vec())).unwrap();
        assert_eq!(
            value,
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": "team-a", "labels": {"app": "web"}}, "spec": {}, "status": {}})
        );
    }

    #[test]
    fn a_deployment_with_special_types() {
        let container = core::Container {
            name: Some("web".into()),
            image: Some("registry.local/web:1".into()),
            ports: vec![core::ContainerPort {
                container_port: Some(80),
                ..Default::default()
            }],
            resources: Some(core::ResourceRequirements {
                limits: BTreeMap::from([(
                    "cpu".to_owned(),
                    Quantity {
                        string: Some("500m".into()),
                    },
                )]),
                ..Default::default()
            }),
            liveness_probe: Some(core::Probe {
                handler: Some(core::ProbeHandler {
                    http_get: Some(core::HttpGetAction {
                        path: Some("/healthz".into()),
                        port: Some(IntOrString {
                            r#type: Some(1),
                            int_val: Some(0),
                            str_val: Some("http".into()),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let deployment = apps::Deployment {
            metadata: Some(object_meta("web")),
            spec: Some(apps::DeploymentSpec {
                replicas: Some(0),
                selector: Some(meta::LabelSelector {
                    match_labels: BTreeMap::from([("app".to_owned(), "web".to_owned())]),
                    ..Default::default()
                }),
                template: Some(core::PodTemplateSpec {
                    metadata: Some(object_meta("")),
                    spec: Some(core::PodSpec {
                        containers: vec![container],
                        ..Default::default()
                    }),
                }),
                strategy: Some(apps::DeploymentStrategy {
                    r#type: Some("RollingUpdate".into()),
                    rolling_update: Some(apps::RollingUpdateDeployment {
                        max_surge: Some(IntOrString {
                            r#type: Some(0),
                            int_val: Some(2),
                            str_val: None,
                        }),
                        max_unavailable: None,
                    }),
                }),
                ..Default::default()
            }),
            status: None,
        };
        let value = decode(&envelope(
            "apps/v1",
            "Deployment",
            deployment.encode_to_vec(),
        ))
        .unwrap();
        assert_eq!(value["spec"]["replicas"], 0);
        assert_eq!(
            value["spec"]["selector"],
            json!({"matchLabels": {"app": "web"}})
        );
        let c = &value["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], "registry.local/web:1");
        assert_eq!(c["ports"], json!([{"containerPort": 80}]));
        assert_eq!(c["resources"]["limits"]["cpu"], "500m");
        assert_eq!(c["livenessProbe"]["httpGet"]["port"], "http");
        assert_eq!(value["spec"]["strategy"]["rollingUpdate"]["maxSurge"], 2);
    }

    #[test]
    fn secrets_bytes_times_and_acronyms() {
        let secret = core::Secret {
            metadata: Some(meta::ObjectMeta {
                name: Some("creds".into()),
                creation_timestamp: Some(meta::Time {
                    seconds: Some(1_700_000_000),
                    nanos: Some(0),
                }),
                ..Default::default()
            }),
            data: BTreeMap::from([("password".to_owned(), b"s3cret".to_vec())]),
            r#type: Some("Opaque".into()),
            ..Default::default()
        };
        let value = decode(&envelope("v1", "Secret", secret.encode_to_vec())).unwrap();
        assert_eq!(value["data"]["password"], "czNjcmV0");
        assert_eq!(
            value["metadata"]["creationTimestamp"],
            "2023-11-14T22:13:20Z"
        );
        let status = core::PodStatus {
            pod_ip: Some("10.0.0.1".into()),
            ..Default::default()
        };
        let pod = core::Pod {
            metadata: None,
            spec: None,
            status: Some(status),
        };
        let value = decode(&envelope("v1", "Pod", pod.encode_to_vec())).unwrap();
        assert_eq!(value["status"]["podIP"], "10.0.0.1");
    }

    #[test]
    fn bad_bodies_are_400() {
        assert_eq!(decode(b"{}").unwrap_err().code(), 400);
        assert_eq!(decode(b"k8s\0\x0a\xff").unwrap_err().code(), 400);
        assert_eq!(
            decode(&envelope("v1", "Nothing", vec![]))
                .unwrap_err()
                .code(),
            400
        );
    }

    #[test]
    fn durations_read_like_go() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(3_723_000_000_000), "1h2m3s");
        assert_eq!(go_duration(60_000_000_000), "1m0s");
    }
}
