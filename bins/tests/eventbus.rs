//! EventBus on the MQTT broker edgecore embeds (`mqttMode: 0`, Kedge's
//! default), against a real cloudcore with kubectl as the user: with a
//! Device bound to a real edgecore, mosquitto_pub and mosquitto_sub talk
//! to edgecore's own broker only — membership get lists the device, a
//! reported value is answered and shows in `kubectl get device`, twin get
//! answers with it, a differing desired value gives a delta, and so does a
//! desired value patched with kubectl.

mod support;

use serde_json::json;
use support::edgecore::EdgeCore;
use support::mqtt::{next_message, twin_round_trip, wait_listed, wait_until_listening};
use support::{Backend, Cloud};

const EDGE: &str = "edge-embedded-mqtt";
const MODEL: &str = "thermometer-model";
const DEVICE: &str = "thermometer-01";

fn manifests() -> [String; 2] {
    let model = json!({
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "DeviceModel",
        "metadata": {"name": MODEL, "namespace": "default"},
        "spec": {
            "protocol": "modbus",
            "properties": [{"name": "temperature", "type": "INT", "accessMode": "ReadWrite"}],
        },
    });
    let device = json!({
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "Device",
        "metadata": {"name": DEVICE, "namespace": "default"},
        "spec": {
            "deviceModelRef": {"name": MODEL},
            "nodeName": EDGE,
            "protocol": {"protocolName": "modbus"},
            "properties": [{"name": "temperature", "desired": {"value": "20"},
                "reportToCloud": true}],
        },
    });
    [model.to_string(), device.to_string()]
}

#[tokio::test]
async fn mqtt_clients_drive_the_twin_through_the_embedded_broker() {
    let cloud = Cloud::start(Backend::start(false).await).await;
    for manifest in manifests() {
        cloud.ok_with_input(&["create", "-f", "-"], &manifest);
    }
    let edge = EdgeCore::start(&cloud, EDGE, None, EdgeCore::embedded_broker);
    // No broker is started by the test: edgecore listens itself.
    let broker = edge.mqtt.clone();
    wait_until_listening(&broker, "edgecore's embedded broker", || edge.log()).await;

    // The device reaches the edge by membership: it is listed there.
    wait_listed(&broker, EDGE, DEVICE, || edge.log()).await;

    // A reported value is answered and shows in the Device's status; twin
    // get answers with it; a differing desired value gives a delta.
    twin_round_trip(&cloud, &broker, DEVICE).await;
    let update = format!("$hw/events/device/{DEVICE}/twin/update");

    // A desired value patched with kubectl reaches the edge as the
    // cloud's, and MQTT mappers get it as a delta.
    let delta = next_message(&broker, &format!("{update}/delta"), async |attempt| {
        let patch = json!([{"op": "replace", "path": "/spec/properties/0/desired/value",
            "value": (60 + attempt).to_string()}]);
        cloud.ok(&[
            "patch",
            "device",
            DEVICE,
            "--type=json",
            "-p",
            &patch.to_string(),
        ]);
    })
    .await;
    let wanted = delta["delta"]["temperature"].as_str().expect("delta value");
    assert!(wanted.starts_with('6'), "{delta}");
    cloud.stop().await;
}
