//! A Modbus device end to end: kubectl against a real cloudcore, a real
//! edgecore joined over the TLS link and serving DMI, the `mapper-modbus`
//! binary registered with it, and pymodbus's Modbus TCP server (Debian's
//! python3-pymodbus) as the device.
//!
//! * kubectl applies a model and a device with two properties; the values
//!   the device holds appear in the Device's status within two report
//!   cycles of being set;
//! * a desired value patched with kubectl is written to the device's
//!   register (read back from the server);
//! * with edgecore down (killed, as by a power cut), a new desired value
//!   is patched and the device's value changes; once edgecore is back the
//!   register gets the new desired value and the status the new reading;
//! * edgecore's DMI refuses a registration without a protocol and calls
//!   over its rate limit, with clear errors, counted.

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use support::edgecore::EdgeCore;
use support::modbus::ModbusDevice;
use support::{Backend, Cloud, metric};
use tokio::process::{Child, Command};
use tokio::time::Instant;

const NODE: &str = "edge-modbus";
const MODEL: &str = "thermostat-model";
const DEVICE: &str = "thermostat-01";
/// The mapper's collect and report cycle, in milliseconds.
const CYCLE_MS: u64 = 2000;
/// The holding register the `temperature` property reads.
const TEMPERATURE: u16 = 0;
/// The holding register the `setpoint` property reads and writes.
const SETPOINT: u16 = 1;

/// The mapper-modbus binary, registered with `edge`'s DMI socket.
struct Mapper {
    _process: Child,
    dir: tempfile::TempDir,
}

impl Mapper {
    fn start(edge: &EdgeCore) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = format!(
            "grpc_server:\n  socket_path: {}\ncommon:\n  name: modbus-mapper\n  version: v1.15.0\n  \
             api_version: v1.0.0\n  protocol: modbus\n  address: 127.0.0.1\n  edgecore_sock: {}\n\
             dev_init:\n  mode: register\n",
            dir.path().join("modbus.sock").display(),
            edge.dir().join("dmi.sock").display(),
        );
        std::fs::write(dir.path().join("config.yaml"), config).expect("config written");
        let log = std::fs::File::create(dir.path().join("mapper.log")).expect("log file");
        let process = Command::new(env!("CARGO_BIN_EXE_mapper-modbus"))
            .arg("--config-file")
            .arg(dir.path().join("config.yaml"))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("mapper-modbus starts");
        Self {
            _process: process,
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mapper.log")).unwrap_or_default()
    }
}

fn model_manifest() -> String {
    json!({
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "DeviceModel",
        "metadata": {"name": MODEL, "namespace": "default"},
        "spec": {
            "protocol": "modbus",
            "properties": [
                {"name": "temperature", "type": "INT", "accessMode": "ReadOnly"},
                {"name": "setpoint", "type": "INT", "accessMode": "ReadWrite",
                 "minimum": "0", "maximum": "100"},
            ],
        },
    })
    .to_string()
}

fn device_manifest(device: SocketAddr) -> String {
    let property = |name: &str, register: u16| {
        json!({
            "name": name,
            "collectCycle": CYCLE_MS, "reportCycle": CYCLE_MS, "reportToCloud": true,
            "visitors": {"protocolName": "modbus", "configData":
                {"register": "HoldingRegister", "offset": register, "limit": 1, "scale": 1}},
        })
    };
    let mut setpoint = property("setpoint", SETPOINT);
    setpoint["desired"] = json!({"value": "42"});
    json!({
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "Device",
        "metadata": {"name": DEVICE, "namespace": "default"},
        "spec": {
            "deviceModelRef": {"name": MODEL},
            "nodeName": NODE,
            "protocol": {"protocolName": "modbus",
                "configData": {"ip": device.ip().to_string(), "port": device.port(), "slaveID": 1}},
            "properties": [property("temperature", TEMPERATURE), setpoint],
        },
    })
    .to_string()
}

/// A twin's reported value in `kubectl get device -o json` output.
fn reported(text: &str, property: &str) -> Option<String> {
    let device: Value = serde_json::from_str(text).ok()?;
    device["status"]["twins"]
        .as_array()?
        .iter()
        .find(|twin| twin["propertyName"] == property)?["reported"]["value"]
        .as_str()
        .map(str::to_owned)
}

/// Waits until the Device's status reports `value` for `property`;
/// returns how long that took.
async fn wait_reported(cloud: &Cloud, property: &str, value: &str) -> Duration {
    let started = Instant::now();
    cloud
        .eventually(&["get", "device", DEVICE, "-o", "json"], |text| {
            reported(text, property).as_deref() == Some(value)
        })
        .await;
    started.elapsed()
}

fn patch_desired(cloud: &Cloud, value: &str) {
    // A JSON patch: a merge patch would replace the whole properties list.
    let patch = json!([
        {"op": "replace", "path": "/spec/properties/1/desired/value", "value": value},
    ]);
    cloud.ok(&[
        "patch",
        "device",
        DEVICE,
        "--type=json",
        "-p",
        &patch.to_string(),
    ]);
}

#[tokio::test]
async fn a_modbus_device_reports_and_is_written_through_the_mapper_also_after_the_edge_was_down() {
    let device = ModbusDevice::start().await;
    device.write(TEMPERATURE, 215).await;

    let cloud = Cloud::start(Backend::start(false).await).await;
    cloud.ok_with_input(&["apply", "-f", "-"], &model_manifest());
    cloud.ok_with_input(&["apply", "-f", "-"], &device_manifest(device.address));
    let mut edge = EdgeCore::start(&cloud, NODE, None, |_| {});
    let mapper = Mapper::start(&edge);

    // The mapper gets the device from edgecore, reads both registers and
    // writes the desired setpoint.
    device.wait_for(SETPOINT, 42).await;
    wait_reported(&cloud, "temperature", "215").await;
    wait_reported(&cloud, "setpoint", "42").await;

    // A changed reading shows within two report cycles.
    device.write(TEMPERATURE, 230).await;
    let took = wait_reported(&cloud, "temperature", "230").await;
    assert!(
        took <= Duration::from_millis(2 * CYCLE_MS),
        "the new reading took {took:?}; mapper log:\n{}",
        mapper.log()
    );

    // A desired value patched with kubectl reaches the register.
    patch_desired(&cloud, "17");
    device.wait_for(SETPOINT, 17).await;
    wait_reported(&cloud, "setpoint", "17").await;

    // The edge goes down; meanwhile the desired value and the reading
    // change. Once it is back, both arrive.
    edge.kill().await;
    patch_desired(&cloud, "64");
    device.write(TEMPERATURE, 198).await;
    assert_eq!(device.read(SETPOINT).await, 17, "nobody wrote it yet");
    edge.restart();
    device.wait_for(SETPOINT, 64).await;
    wait_reported(&cloud, "temperature", "198").await;
    wait_reported(&cloud, "setpoint", "64").await;

    edge.stop().await;
    cloud.stop().await;
}

#[tokio::test]
async fn dmi_refuses_bad_registrations_and_calls_over_its_rate_limit() {
    use kedge_dmi::v1beta1 as dmi;
    use kedge_dmi::v1beta1::device_manager_service_client::DeviceManagerServiceClient;

    let cloud = Cloud::start(Backend::start(false).await).await;
    let mut edge = EdgeCore::start(&cloud, "edge-dmi-limits", None, |config| {
        config.modules.device_twin.dmi_qps = 1;
        config.modules.device_twin.dmi_burst = 3;
    });
    let socket = edge.dir().join("dmi.sock");
    let deadline = Instant::now() + Duration::from_secs(60);
    let channel = loop {
        if let Ok(channel) = kedge_dmi::socket::connect(&socket).await {
            break channel;
        }
        assert!(Instant::now() < deadline, "edgecore never served DMI");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut client = DeviceManagerServiceClient::new(channel);

    let refused = client
        .mapper_register(dmi::MapperRegisterRequest {
            with_data: true,
            mapper: Some(dmi::MapperInfo {
                name: "nameless".into(),
                address: b"/run/nameless.sock".to_vec(),
                ..dmi::MapperInfo::default()
            }),
        })
        .await
        .expect_err("a mapper without a protocol is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(refused.message(), "mapper.protocol is required");

    // The burst left after the refusal passes; the next call, within the
    // same second, is over the limit.
    let report = || dmi::ReportDeviceStatusRequest {
        device_name: "unknown-device".into(),
        reported_device: Some(dmi::DeviceStatus::default()),
        ..dmi::ReportDeviceStatusRequest::default()
    };
    let mut over = None;
    for _ in 0..4 {
        if let Err(status) = client.report_device_status(report()).await {
            over = Some(status);
            break;
        }
    }
    let over = over.expect("a call over the limit is refused");
    assert_eq!(over.code(), tonic::Code::ResourceExhausted);
    assert_eq!(over.message(), "too many request");
    let counted = metric(
        &edge.monitor,
        "kedge_dmi_requests_total{method=\"ReportDeviceStatus\",result=\"refused\"}",
    )
    .await;
    assert_eq!(counted, Some(1.0));
    edge.stop().await;
    cloud.stop().await;
}
