//! The wire form against messages written by hand from protocol.md as
//! KubeEdge puts them on a WebSocket, and property tests of round trips.

use std::fs;
use std::path::PathBuf;

use kedge_message::content::{self, ObjectResp};
use kedge_message::delivery::needs_ack;
use kedge_message::resource::{self, EdgeResource, NodeResource};
use kedge_message::{DEFAULT_MAX_FRAME_BYTES, DecodeError, Message};
use pretty_assertions::assert_eq;
use proptest::prelude::*;
use serde_json::{Value, json};

fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut out: Vec<(String, Vec<u8>)> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    out
}

fn fixture(name: &str) -> Message {
    let (_, bytes) = fixtures()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no fixture {name}"));
    Message::decode(&bytes, DEFAULT_MAX_FRAME_BYTES).unwrap()
}

#[test]
fn every_fixture_reserialises_byte_for_byte() {
    let all = fixtures();
    assert!(all.len() >= 15, "only {} fixtures", all.len());
    for (name, bytes) in all {
        let msg = Message::decode(&bytes, DEFAULT_MAX_FRAME_BYTES)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            String::from_utf8(msg.encode()).unwrap(),
            String::from_utf8(bytes.clone()).unwrap(),
            "{name}"
        );
        // The same frame without its newline, as a binary frame, decodes too.
        let trimmed = &bytes[..bytes.len() - 1];
        assert_eq!(
            Message::decode(trimmed, DEFAULT_MAX_FRAME_BYTES).unwrap(),
            msg
        );
    }
}

#[test]
fn fixtures_mean_what_protocol_md_says() {
    let insert = fixture("02_pod_insert");
    let ack = fixture("03_pod_ack");
    assert_eq!(ack.parent_id(), insert.id());
    assert!(content::is_ok(&ack.content));
    assert_eq!(insert.header.resource_version, "12345");
    assert_eq!(
        insert.content["metadata"]["annotations"]["note"],
        "a < b && c > d"
    );
    // The cloud's own form of the pod insert needs an ACK; its ACK does not.
    let mut cloud = insert.clone();
    cloud.router.resource = resource::add_node_prefix("edge-1", &insert.router.resource);
    assert!(needs_ack(&cloud));
    assert_eq!(
        resource::trim_node_prefix(&cloud.router.resource),
        insert.router.resource
    );

    let reg = fixture("06_node_register_response");
    let resp = ObjectResp::from_content(&reg.content).unwrap();
    assert_eq!(resp.object["metadata"]["name"], "edge-1");
    assert_eq!(resp.err, Value::Null);

    let err = fixture("10_pod_status_patch_error");
    let resp = ObjectResp::from_content(&err.content).unwrap();
    assert_eq!(resp.err["ErrStatus"]["code"], 404);

    // Patches travel as JSON strings holding JSON text.
    let patch = fixture("09_pod_status_patch");
    let body: Value = serde_json::from_slice(&patch.content_data()).unwrap();
    assert_eq!(body["status"]["phase"], "Running");
    let key = EdgeResource::parse(&patch.router.resource).unwrap();
    assert_eq!(
        (key.namespace, key.resource_type, key.name),
        ("default", "podpatch", Some("nginx"))
    );

    let keepalive = fixture("01_keepalive");
    let ours = Message::keepalive();
    assert_eq!(keepalive.router, ours.router);
    assert_eq!(keepalive.content, ours.content);

    let secret = fixture("14_secret_update");
    assert_eq!(
        content::decode_base64(&secret.content["data"]["username"]).unwrap(),
        b"admin"
    );

    let app = fixture("22_metaserver_application");
    assert_eq!(
        content::decode_base64(&app.content["Option"]).unwrap(),
        br#"{"labelSelector":"app=nginx"}"#
    );

    let membership = fixture("16_membership_update");
    let mut cloud = membership.clone();
    cloud.router.resource = resource::device_resource("edge-1", "membership", None).unwrap();
    assert!(!needs_ack(&cloud));
}

#[test]
fn an_oversized_frame_is_a_typed_error() {
    let big = vec![b' '; 1 << 20];
    match Message::decode(&big, 1024) {
        Err(DecodeError::TooLarge { size, limit }) => assert_eq!((size, limit), (1 << 20, 1024)),
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn garbage_is_a_typed_error() {
    for frame in [&b"not json"[..], b"[]", b"{\"header\":5}", b""] {
        assert!(matches!(
            Message::decode(frame, DEFAULT_MAX_FRAME_BYTES),
            Err(DecodeError::Malformed(_))
        ));
    }
}

fn token() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9.-]{0,20}"
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "[<>&\u{2028}\u{2029}\"\\\\\n\t a-z]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((any::<String>(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn message() -> impl Strategy<Value = Message> {
    (
        (token(), token(), token(), "[a-z/]{0,30}"),
        json_value(),
        (any::<i64>(), "[0-9]{0,8}", any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |((source, group, operation, res), content, (ts, rv, sync, reply))| {
                let mut m =
                    Message::new(source, group, operation, res, content).with_resource_version(rv);
                m.header.timestamp = ts;
                m.header.sync = sync;
                if reply {
                    m = m.response(m.content.clone());
                }
                m
            },
        )
}

proptest! {
    #[test]
    fn encode_then_decode_is_identity(msg in message()) {
        let frame = msg.encode();
        let mut back = Message::decode(&frame, DEFAULT_MAX_FRAME_BYTES).unwrap();
        // Re-encoding is stable: the bytes are a fixed point.
        prop_assert_eq!(back.encode(), frame.clone());
        // Go writes whole floats as integers; compare numbers by value.
        prop_assert_eq!(normalise(back.content.clone()), normalise(msg.content.clone()));
        back.content = msg.content.clone();
        prop_assert_eq!(&back, &msg);
    }

    #[test]
    fn encoded_frames_hold_no_raw_html_or_line_separators(msg in message()) {
        let text = String::from_utf8(msg.encode()).unwrap();
        let raw = ['<', '>', '&', '\u{2028}', '\u{2029}'];
        prop_assert!(!text.contains(raw), "raw character in {}", text);
        prop_assert!(text.ends_with('\n'));
        prop_assert_eq!(text.matches('\n').count(), 1);
    }

    #[test]
    fn go_json_is_valid_json_of_the_same_value(v in json_value()) {
        let bytes = kedge_message::wire::to_go_json(&v);
        let back: Value = serde_json::from_slice(&bytes).unwrap();
        prop_assert_eq!(normalise(back), normalise(v));
    }

    #[test]
    fn node_resources_round_trip(
        node in token(), ns in token(), kind in token(), name in proptest::option::of(token())
    ) {
        let r = NodeResource::new(node.clone(), ns, kind, name).unwrap();
        let s = r.to_string();
        prop_assert_eq!(NodeResource::parse(&s).unwrap(), r.clone());
        let wire = resource::trim_node_prefix(&s);
        prop_assert_eq!(wire, r.edge_form());
        prop_assert_eq!(resource::add_node_prefix(&node, wire), s.clone());
        prop_assert_eq!(resource::target_node(&s), Some(node.as_str()));
    }

    #[test]
    fn bytes_round_trip_through_base64(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        prop_assert_eq!(content::decode_base64(&content::from_bytes(&bytes)).unwrap(), bytes);
    }
}

/// Floats that are whole numbers come back as integers from Go's format;
/// compare numbers by value.
fn normalise(v: Value) -> Value {
    match v {
        Value::Number(n) => n.as_f64().map_or(Value::Number(n), |f| json!(f)),
        Value::Array(a) => Value::Array(a.into_iter().map(normalise).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, normalise(v))).collect()),
        other => other,
    }
}
