//! Device management against a real cloudcore, with kubectl as the user
//! and, for DeviceController, the test as the edge node over the real
//! link (mutual TLS WebSocket):
//!
//! * DeviceModel and Device are served at `devices.kubeedge.io/v1beta1`:
//!   created, merge-patched, refused when invalid (with the field named),
//!   deleted (KubeEdge's e2e cases `E2E_*_DEVICE_MODEL_*`, `E2E_*_DEVICE_*`);
//! * a Device bound to the node reaches it as membership, model and device;
//!   a twin report from the node shows in the Device's status and is
//!   acknowledged; a report about another node's device is refused; a spec
//!   or model change is sent again, a status change is not; moving the
//!   device away removes it from the node;
//! * with a real edgecore joined and its EventBus on a mosquitto broker,
//!   mosquitto_pub and mosquitto_sub drive the twin: membership get lists the device,
//!   a reported value is answered and shows in `kubectl get device`, twin
//!   get answers, a differing desired value gives a delta, a bad value is
//!   refused with 400.

mod support;

use kedge_message::Message;
use serde_json::{Value, json};
use support::edge::{connect_as, is_object, join, keep_alive, wait_for};
use support::edgecore::EdgeCore;
use support::mqtt::{self, Mosquitto};
use support::{Backend, Cloud, metric};

const NODE: &str = "edge-1";
const MODEL: &str = "sensor-tag-model";
const DEVICE: &str = "sensor-tag-instance-02";
/// DeviceController's count of reports about another node's device.
const FORBIDDEN_REPORTS: &str = "kedge_devicecontroller_refused_total{reason=\"forbidden\"}";

fn model_manifest() -> String {
    json!({
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "DeviceModel",
        "metadata": {"name": MODEL, "namespace": "default"},
        "spec": {
            "protocol": "modbus",
            "properties": [
                {"name": "temperature", "description": "temperature in degree celsius",
                 "type": "INT", "accessMode": "ReadWrite", "maximum": "100",
                 "unit": "degree celsius"},
                {"name": "humidity", "type": "FLOAT", "accessMode": "ReadOnly"},
            ],
        },
    })
    .to_string()
}

fn device_manifest(node: &str) -> String {
    json!({
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "Device",
        "metadata": {"name": DEVICE, "namespace": "default",
            "labels": {"description": "TISimplelinkSensorTag", "manufacturer": "TexasInstruments"}},
        "spec": {
            "deviceModelRef": {"name": MODEL},
            "nodeName": node,
            "protocol": {"protocolName": "modbus",
                "configData": {"ip": "127.0.0.1", "port": 5020, "slaveID": 1}},
            "properties": [
                {"name": "temperature", "desired": {"value": "20"},
                 "collectCycle": 1000, "reportCycle": 1000, "reportToCloud": true,
                 "visitors": {"protocolName": "modbus", "configData":
                    {"register": "HoldingRegister", "offset": "2", "limit": "1", "scale": "1"}}},
                {"name": "humidity", "collectCycle": 1000, "reportCycle": 1000,
                 "reportToCloud": true,
                 "visitors": {"protocolName": "modbus", "configData":
                    {"register": "InputRegister", "offset": 0, "limit": 2}}},
            ],
        },
        "status": {"twins": [{"propertyName": "temperature", "reported": {"value": "0"},
            "observedDesired": {"value": "20", "metadata": {"type": "int"}}}]},
    })
    .to_string()
}

fn get_json(cloud: &Cloud, kind: &str, name: &str) -> Value {
    serde_json::from_str(&cloud.ok(&["get", kind, name, "-o", "json"])).expect("kubectl JSON")
}

#[tokio::test]
async fn device_models_and_devices_are_created_updated_and_deleted_with_kubectl() {
    let cloud = Cloud::start(Backend::start(false).await).await;

    // The kinds are discoverable under their KubeEdge names.
    let resources = cloud.ok(&["api-resources", "--api-group=devices.kubeedge.io"]);
    assert!(resources.contains("devicemodels"), "{resources}");
    assert!(resources.contains("devices"), "{resources}");

    // E2E_CREATE_DEVICE_MODEL_1: listed with the spec given.
    cloud.ok_with_input(&["create", "-f", "-"], &model_manifest());
    let model = get_json(&cloud, "devicemodel", MODEL);
    let wanted: Value = serde_json::from_str(&model_manifest()).expect("manifest");
    assert_eq!(model["spec"], wanted["spec"]);

    // E2E_UPDATE_DEVICE_MODEL_1: a merge patch shows.
    cloud.ok(&[
        "patch",
        "devicemodel",
        MODEL,
        "--type=merge",
        "-p",
        r#"{"spec":{"properties":[{"name":"temperature","type":"INT","accessMode":"ReadWrite","maximum":"200"}]}}"#,
    ]);
    let model = get_json(&cloud, "devicemodel", MODEL);
    assert_eq!(model["spec"]["properties"][0]["maximum"], "200");

    // E2E_UPDATE_DEVICE_MODEL_2 and invalid updates: refused, naming the
    // field, and nothing stored changes.
    let refused = cloud.fails(&[
        "patch",
        "devicemodel",
        MODEL,
        "--type=merge",
        "-p",
        r#"{"spec":{"properties":[{"name":"temperature","type":"COMPLEX"}]}}"#,
    ]);
    assert!(
        refused.contains("spec.properties[0].type") && refused.contains("Unsupported value"),
        "{refused}"
    );
    let refused = cloud.fails(&[
        "patch",
        "devicemodel",
        MODEL,
        "--type=merge",
        "-p",
        r#"{"kind":"device-model"}"#,
    ]);
    assert!(!refused.is_empty());
    assert_eq!(get_json(&cloud, "devicemodel", MODEL), model);

    // E2E_CREATE_DEVICE_1: listed with the spec and labels given, and the
    // seeded status kept (there is no status subresource).
    cloud.ok_with_input(&["create", "-f", "-"], &device_manifest(NODE));
    let device = get_json(&cloud, "device", DEVICE);
    let wanted: Value = serde_json::from_str(&device_manifest(NODE)).expect("manifest");
    assert_eq!(device["spec"], wanted["spec"]);
    assert_eq!(device["metadata"]["labels"], wanted["metadata"]["labels"]);
    assert_eq!(device["status"], wanted["status"]);

    // E2E_UPDATE_DEVICE_1: new labels and protocol.
    cloud.ok(&[
        "patch",
        "device",
        DEVICE,
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"model":"CC2650"}},"spec":{"protocol":{"configData":{"serialPort":"/dev/ttyS0","baudRate":9600}}}}"#,
    ]);
    let device = get_json(&cloud, "device", DEVICE);
    assert_eq!(device["metadata"]["labels"]["model"], "CC2650");
    assert_eq!(
        device["spec"]["protocol"]["configData"]["serialPort"],
        "/dev/ttyS0"
    );
    assert_eq!(device["spec"]["protocol"]["configData"]["slaveID"], 1);

    // Invalid device updates: a desired value without its value, and a
    // reported twin without one.
    let refused = cloud.fails(&[
        "patch",
        "device",
        DEVICE,
        "--type=merge",
        "-p",
        r#"{"spec":{"properties":[{"name":"temperature","desired":{"metadata":{"type":"int"}}}]}}"#,
    ]);
    assert!(
        refused.contains("spec.properties[0].desired.value") && refused.contains("Required value"),
        "{refused}"
    );
    let refused = cloud.fails(&[
        "patch",
        "device",
        DEVICE,
        "--type=merge",
        "-p",
        r#"{"status":{"twins":[{"propertyName":"temperature","reported":{}}]}}"#,
    ]);
    assert!(
        refused.contains("status.twins[0].reported.value"),
        "{refused}"
    );
    assert_eq!(get_json(&cloud, "device", DEVICE), device);

    // E2E_DELETE_DEVICE_1, E2E_DELETE_DEVICE_2, E2E_DELETE_DEVICE_MODEL_1.
    cloud.ok(&["delete", "device", DEVICE]);
    let gone = cloud.fails(&["get", "device", DEVICE]);
    assert!(
        gone.contains("NotFound") || gone.contains("not found"),
        "{gone}"
    );
    cloud.ok(&["delete", "device", DEVICE, "--ignore-not-found"]);
    cloud.ok(&["delete", "devicemodel", MODEL]);
    cloud.ok(&["delete", "devicemodel", MODEL, "--ignore-not-found"]);
    cloud.stop().await;
}

fn is_membership(msg: &Message, list: &str) -> bool {
    msg.router.resource == "membership"
        && msg.router.group == "twin"
        && msg.content[list]
            .as_array()
            .is_some_and(|devices| devices.iter().any(|d| d["id"] == DEVICE))
}

/// A twin report as DeviceTwin sends it (devices.md §3.6).
fn twin_report(id: &str, value: &str) -> Message {
    Message::new(
        "twin",
        "resource",
        "update",
        format!("device/{id}/twin/edge_updated"),
        json!({"event_id": "e1", "timestamp": 1_700_000_000_000_i64, "twin": {
            "temperature": {
                "actual": {"value": value, "metadata": {"timestamp": 1_700_000_000_000_i64}},
                "expected": {"value": "20", "metadata": {"timestamp": 1_700_000_000_000_i64}},
                "optional": false,
                "metadata": {"type": "int"},
                "actual_version": {"cloud": 0, "edge": 1},
            },
            "humidity": {"actual": {"value": "40.5"}, "metadata": {"type": "float"}},
        }}),
    )
}

#[tokio::test]
async fn devices_reach_their_node_and_twin_reports_reach_the_device_status() {
    let cloud = Cloud::start(Backend::start(false).await).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let credentials = join(&cloud, dir.path(), NODE).await;
    let mut link = connect_as(&cloud, &credentials, NODE)
        .await
        .expect("the node connects");
    let _alive = keep_alive(&link);
    let mut seen = Vec::new();

    // A device bound to the node: membership, then its model, then itself.
    cloud.ok_with_input(&["create", "-f", "-"], &model_manifest());
    cloud.ok_with_input(&["create", "-f", "-"], &device_manifest(NODE));
    let membership = wait_for(&mut link, &mut seen, "the membership update", |m| {
        is_membership(m, "added_devices")
    })
    .await;
    assert_eq!(membership.router.source, "devicecontroller");
    assert_eq!(
        membership.content["added_devices"][0]["description"],
        "TISimplelinkSensorTag"
    );
    let model = wait_for(&mut link, &mut seen, "the model", |m| {
        is_object(m, "insert", &format!("default/devicemodel/{MODEL}"))
    })
    .await;
    assert_eq!(model.content["kind"], "DeviceModel");
    assert_eq!(model.content["spec"]["protocol"], "modbus");
    let device = wait_for(&mut link, &mut seen, "the device", |m| {
        is_object(m, "insert", &format!("default/device/{DEVICE}"))
    })
    .await;
    assert_eq!(device.content["spec"]["nodeName"], NODE);
    assert!(!device.header.resource_version.is_empty());

    // A twin report: acknowledged once written, and shown by kubectl.
    let report = twin_report(DEVICE, "23");
    link.sender.send(report.clone()).await.expect("report sent");
    let ack = wait_for(&mut link, &mut seen, "the report's acknowledgement", |m| {
        m.parent_id() == report.id()
    })
    .await;
    assert_eq!(ack.content, json!("OK"));
    assert_eq!(ack.router.resource, "twin");
    let device = get_json(&cloud, "device", DEVICE);
    assert_eq!(
        device["status"]["twins"],
        json!([
            {"propertyName": "temperature",
             "reported": {"value": "23", "metadata": {"timestamp": "1700000000000", "type": "int"}},
             "observedDesired": {"value": "20", "metadata": {"timestamp": "1700000000000", "type": "int"}}},
            {"propertyName": "humidity",
             "reported": {"value": "40.5", "metadata": {"type": "float"}}},
        ])
    );

    // The `<namespace>/<name>` id form (KubeEdge v1.16 on) works as well.
    let report = twin_report(&format!("default/{DEVICE}"), "24");
    link.sender.send(report.clone()).await.expect("report sent");
    wait_for(&mut link, &mut seen, "the second acknowledgement", |m| {
        m.parent_id() == report.id()
    })
    .await;
    let device = get_json(&cloud, "device", DEVICE);
    assert_eq!(device["status"]["twins"][0]["reported"]["value"], "24");

    // A report about a device of another node is refused and counted; the
    // status stays as it was.
    cloud.ok_with_input(
        &["create", "-f", "-"],
        &device_manifest("edge-2").replace(DEVICE, "elsewhere"),
    );
    let report = twin_report("elsewhere", "99");
    link.sender.send(report).await.expect("report sent");
    let deadline = tokio::time::Instant::now() + support::DEADLINE;
    while metric(&cloud.monitor, FORBIDDEN_REPORTS).await < Some(1.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the forbidden report was not counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let elsewhere = get_json(&cloud, "device", "elsewhere");
    assert_eq!(elsewhere["status"]["twins"][0]["reported"]["value"], "0");

    // The node connects again, which makes the SyncController compare
    // what it acknowledged with the live objects: the status writes above
    // moved its record along, so the device is not sent back to it and
    // the next device message is the update of a spec change.
    _alive.abort();
    drop(link);
    let mut link = connect_as(&cloud, &credentials, NODE)
        .await
        .expect("the node connects again");
    let _alive = keep_alive(&link);
    cloud.ok(&[
        "patch",
        "device",
        DEVICE,
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"model":"CC2650"}}}"#,
    ]);
    let update = wait_for(&mut link, &mut seen, "the device update", |m| {
        m.router.resource == format!("default/device/{DEVICE}")
    })
    .await;
    assert_eq!(update.router.operation, "update");
    assert_eq!(update.content["metadata"]["labels"]["model"], "CC2650");

    // A model change goes to the nodes whose devices use it.
    cloud.ok(&[
        "patch",
        "devicemodel",
        MODEL,
        "--type=merge",
        "-p",
        r#"{"spec":{"properties":[{"name":"temperature","type":"INT","maximum":"200"}]}}"#,
    ]);
    let update = wait_for(&mut link, &mut seen, "the model update", |m| {
        is_object(m, "update", &format!("default/devicemodel/{MODEL}"))
    })
    .await;
    assert_eq!(update.content["spec"]["properties"][0]["maximum"], "200");

    // Moved to another node: removed from this one, model included.
    cloud.ok(&[
        "patch",
        "device",
        DEVICE,
        "--type=merge",
        "-p",
        r#"{"spec":{"nodeName":"edge-2"}}"#,
    ]);
    wait_for(&mut link, &mut seen, "the membership removal", |m| {
        is_membership(m, "removed_devices")
    })
    .await;
    wait_for(&mut link, &mut seen, "the device deletion", |m| {
        is_object(m, "delete", &format!("default/device/{DEVICE}"))
    })
    .await;
    wait_for(&mut link, &mut seen, "the model deletion", |m| {
        is_object(m, "delete", &format!("default/devicemodel/{MODEL}"))
    })
    .await;
    cloud.stop().await;
}

#[tokio::test]
async fn mqtt_clients_drive_the_twin_and_reports_reach_the_device_status() {
    const EDGE: &str = "edge-mqtt";
    let cloud = Cloud::start(Backend::start(false).await).await;
    cloud.ok_with_input(&["create", "-f", "-"], &model_manifest());
    cloud.ok_with_input(&["create", "-f", "-"], &device_manifest(EDGE));
    let edge = EdgeCore::start(&cloud, EDGE, None, |_| {});
    let broker = edge.mqtt.clone();
    let _mosquitto = Mosquitto::start(&broker).await;
    let device_topic = format!("$hw/events/device/{DEVICE}");

    // The device reaches the edge by membership: it is listed there.
    mqtt::wait_listed(&broker, EDGE, DEVICE, || edge.log()).await;

    // A reported value from a plain MQTT client is answered and shows in
    // the Device's status; twin get answers with it; a differing desired
    // value gives a delta.
    let got = mqtt::twin_round_trip(&cloud, &broker, DEVICE).await;
    assert_eq!(got["twin"]["temperature"]["metadata"]["type"], "int");
    let update = format!("{device_topic}/twin/update");
    let get = format!("{device_topic}/twin/get");

    // A bad value is refused with KubeEdge's 400 and changes nothing.
    let refused = mqtt::request(&broker, &update, &format!("{update}/result"), |_| {
        r#"{"event_id":"bad","twin":{"temperature":{"actual":{"value":"warm"}}}}"#.to_owned()
    })
    .await;
    assert_eq!(refused["code"], 400, "{refused}");
    let got = mqtt::request(&broker, &get, &format!("{get}/result"), |_| "{}".to_owned()).await;
    assert_eq!(got["twin"]["temperature"]["actual"]["value"], "23");
    cloud.stop().await;
}
