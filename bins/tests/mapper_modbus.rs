//! The `mapper-modbus` binary against a Modbus TCP device (pymodbus) and a
//! stand-in for edgecore's `DeviceManagerService` on a temporary socket:
//! it registers, reports a scaled holding register, an input register and
//! a coil, pushes the input register to a mosquitto broker, and writes a
//! desired value sent with `UpdateDevice`.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kedge_apis::devices::{Device, DeviceModel};
use kedge_dmi::convert::{device_model_to_dmi, device_to_dmi};
use kedge_dmi::v1beta1 as dmi;
use kedge_dmi::v1beta1::device_manager_service_server::{
    DeviceManagerService, DeviceManagerServiceServer,
};
use kedge_dmi::v1beta1::device_mapper_service_client::DeviceMapperServiceClient;
use serde_json::json;
use support::modbus::ModbusDevice;
use support::mqtt::{Mosquitto, next_text};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_modbus::client::Reader as _;
use tonic::{Request, Response, Status};

/// Where the mapper pushes `humidity`.
const PUSH_TOPIC: &str = "factory/thermo-1/humidity";

/// How long any one expected event may take.
const DEADLINE: Duration = Duration::from_secs(30);

/// A child process whose standard error is kept for failure messages.
struct Process {
    /// The process (killed when dropped).
    _child: Child,
    /// Everything it wrote to standard error.
    log: Arc<Mutex<String>>,
}

impl Process {
    /// Spawns `command`, collecting its standard error.
    fn spawn(mut command: Command) -> Self {
        command
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("spawn");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&log);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut log = sink.lock().expect("log");
                log.push_str(&line);
                log.push('\n');
            }
        });
        Self { _child: child, log }
    }

    /// What the process wrote to standard error so far.
    fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }
}

/// What the stand-in edgecore saw.
#[derive(Debug)]
enum Seen {
    /// A registration.
    Register(dmi::MapperRegisterRequest),
    /// A twin report.
    Report(dmi::ReportDeviceStatusRequest),
}

/// A stand-in for edgecore: answers registrations with one device and its
/// model, and passes on what it receives.
struct Edgecore {
    /// The device handed to the mapper.
    device: dmi::Device,
    /// Its model.
    model: dmi::DeviceModel,
    /// Where requests go.
    seen: mpsc::UnboundedSender<Seen>,
}

#[tonic::async_trait]
impl DeviceManagerService for Edgecore {
    async fn mapper_register(
        &self,
        request: Request<dmi::MapperRegisterRequest>,
    ) -> Result<Response<dmi::MapperRegisterResponse>, Status> {
        let _ = self.seen.send(Seen::Register(request.into_inner()));
        Ok(Response::new(dmi::MapperRegisterResponse {
            model_list: vec![self.model.clone()],
            device_list: vec![self.device.clone()],
        }))
    }

    async fn report_device_status(
        &self,
        request: Request<dmi::ReportDeviceStatusRequest>,
    ) -> Result<Response<dmi::ReportDeviceStatusResponse>, Status> {
        let _ = self.seen.send(Seen::Report(request.into_inner()));
        Ok(Response::new(dmi::ReportDeviceStatusResponse {}))
    }

    async fn report_device_states(
        &self,
        _: Request<dmi::ReportDeviceStatesRequest>,
    ) -> Result<Response<dmi::ReportDeviceStatesResponse>, Status> {
        Ok(Response::new(dmi::ReportDeviceStatesResponse {}))
    }
}

/// The device model: a writable int, a read-only int and a read-only flag.
fn model() -> DeviceModel {
    serde_json::from_value(json!({
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "DeviceModel",
        "metadata": {"name": "thermo-model", "namespace": "default"},
        "spec": {"protocol": "modbus", "properties": [
            {"name": "temperature", "type": "INT", "accessMode": "ReadWrite"},
            {"name": "humidity", "type": "INT", "accessMode": "ReadOnly"},
            {"name": "alarm", "type": "BOOLEAN", "accessMode": "ReadOnly"}
        ]}
    }))
    .expect("model")
}

/// The device on 127.0.0.1:`port`, read every 100 ms; `temperature` has
/// the desired value `desired` (none if empty).
/// `humidity` is also pushed to the MQTT broker at `broker`, on
/// [`PUSH_TOPIC`].
fn device(port: u16, broker: &str, desired: &str) -> Device {
    let property = |name: &str, visitor: serde_json::Value| {
        json!({
            "name": name,
            "collectCycle": 100,
            "reportCycle": 100,
            "reportToCloud": true,
            "visitors": {"protocolName": "modbus", "configData": visitor}
        })
    };
    let mut humidity = property(
        "humidity",
        json!({"Register": "InputRegister", "Offset": "1", "Limit": "1"}),
    );
    humidity["pushMethod"] = json!({"mqtt": {"address": format!("tcp://{broker}"),
        "topic": PUSH_TOPIC, "qos": 1}});
    let mut temperature = property(
        "temperature",
        json!({"register": "HoldingRegister", "offset": 2, "limit": 1, "scale": 0.1}),
    );
    if !desired.is_empty() {
        temperature["desired"] = json!({"value": desired});
    }
    serde_json::from_value(json!({
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "Device",
        "metadata": {"name": "thermo-1", "namespace": "default"},
        "spec": {
            "deviceModelRef": {"name": "thermo-model"},
            "nodeName": "edge-node",
            "protocol": {"protocolName": "modbus",
                         "configData": {"ip": "127.0.0.1", "port": port, "slaveID": 1}},
            "properties": [
                temperature,
                // Settings written as strings, as KubeEdge's e2e fixtures do.
                humidity,
                property("alarm", json!({"register": "CoilRegister", "offset": 3})),
            ]
        }
    }))
    .expect("device")
}

/// Waits for reports until `want` holds of the latest reported value of
/// each property; fails with the mapper's log after [`DEADLINE`].
async fn wait_for_reports(
    seen: &mut mpsc::UnboundedReceiver<Seen>,
    mapper: &Process,
    what: &str,
    want: impl Fn(&HashMap<String, dmi::Twin>) -> bool,
) -> HashMap<String, dmi::Twin> {
    let mut twins = HashMap::new();
    let waiting = async {
        while let Some(event) = seen.recv().await {
            if let Seen::Report(report) = event {
                assert_eq!(report.device_name, "thermo-1");
                assert_eq!(report.device_namespace, "default");
                for twin in report.reported_device.expect("reported device").twins {
                    twins.insert(twin.property_name.clone(), twin);
                }
                if want(&twins) {
                    return;
                }
            }
        }
    };
    if tokio::time::timeout(DEADLINE, waiting).await.is_err() {
        panic!(
            "no {what} within {DEADLINE:?}; last twins {twins:?}\nmapper log:\n{}",
            mapper.log()
        );
    }
    twins
}

/// The reported value of `property` in `twins`.
fn reported<'a>(twins: &'a HashMap<String, dmi::Twin>, property: &str) -> Option<&'a str> {
    Some(twins.get(property)?.reported.as_ref()?.value.as_str())
}

/// Writes the mapper's configuration into `dir`.
fn config(dir: &Path, mapper_socket: &Path, edgecore_socket: &Path) -> PathBuf {
    let path = dir.join("config.yaml");
    let text = format!(
        "grpc_server:\n  socket_path: {}\ncommon:\n  name: modbus-mapper\n  version: v1.0.0\n  \
         api_version: v1.0.0\n  protocol: modbus\n  address: 127.0.0.1\n  edgecore_sock: {}\n\
         dev_init:\n  mode: register\n",
        mapper_socket.display(),
        edgecore_socket.display()
    );
    std::fs::write(&path, text).expect("config");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_modbus_mapper_reports_and_writes_a_tcp_device() {
    let modbus_device = ModbusDevice::start().await;
    let port = modbus_device.port();
    let broker = format!("127.0.0.1:{}", support::free_port());
    let _mosquitto = Mosquitto::start(&broker).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let edgecore_socket = dir.path().join("dmi.sock");
    let mapper_socket = dir.path().join("modbus.sock");
    let (sender, mut seen) = mpsc::unbounded_channel();
    let edgecore = Edgecore {
        device: device_to_dmi(&device(port, &broker, "")).expect("convert device"),
        model: device_model_to_dmi(&model()),
        seen: sender,
    };
    let server = kedge_dmi::socket::serve(
        tonic::service::Routes::new(DeviceManagerServiceServer::new(edgecore)),
        &edgecore_socket,
        std::future::pending(),
    )
    .expect("serve edgecore");
    let _server = tokio::spawn(server);

    let mut command = Command::new(env!("CARGO_BIN_EXE_mapper-modbus"));
    command
        .arg("--config-file")
        .arg(config(dir.path(), &mapper_socket, &edgecore_socket))
        .env("RUST_LOG", "info,kedge_mapper=debug")
        .stdout(Stdio::null());
    let mapper = Process::spawn(command);

    // Registration, with data, for the mapper's protocol and socket.
    let registration = tokio::time::timeout(DEADLINE, seen.recv()).await;
    let Ok(Some(Seen::Register(registration))) = registration else {
        panic!(
            "no registration: {registration:?}\nmapper log:\n{}",
            mapper.log()
        );
    };
    assert!(registration.with_data);
    let info = registration.mapper.expect("mapper info");
    assert_eq!(info.protocol, "modbus");
    assert_eq!(info.name, "modbus-mapper");
    assert_eq!(info.address, mapper_socket.as_os_str().as_encoded_bytes());

    // 235 × 0.1, truncated; 77; coil 3 on.
    let twins = wait_for_reports(&mut seen, &mapper, "first values", |twins| {
        reported(twins, "temperature").is_some()
            && reported(twins, "humidity").is_some()
            && reported(twins, "alarm").is_some()
    })
    .await;
    assert_eq!(reported(&twins, "temperature"), Some("23"));
    assert_eq!(reported(&twins, "humidity"), Some("77"));
    assert_eq!(reported(&twins, "alarm"), Some("true"));
    let metadata = &twins["temperature"]
        .reported
        .as_ref()
        .expect("reported")
        .metadata;
    assert_eq!(metadata["type"], "int");
    assert!(metadata["timestamp"].parse::<u64>().is_ok());

    // A desired value arrives with UpdateDevice and is written, scaled.
    let channel = kedge_dmi::socket::connect(&mapper_socket)
        .await
        .expect("connect to the mapper");
    let mut client = DeviceMapperServiceClient::new(channel);
    client
        .update_device(dmi::UpdateDeviceRequest {
            device: Some(device_to_dmi(&device(port, &broker, "42")).expect("convert device")),
        })
        .await
        .expect("update device");
    let twins = wait_for_reports(&mut seen, &mapper, "the desired value", |twins| {
        reported(twins, "temperature") == Some("42")
    })
    .await;
    let observed = twins["temperature"]
        .observed_desired
        .as_ref()
        .expect("observed");
    assert_eq!(observed.value, "42");

    let mut modbus = tokio_modbus::client::tcp::connect(([127, 0, 0, 1], port).into())
        .await
        .expect("connect to the device");
    let registers = modbus
        .read_holding_registers(2, 1)
        .await
        .expect("read")
        .expect("no exception");
    assert_eq!(registers, vec![420], "42 / 0.1 in the holding register");

    // The input register is pushed over MQTT, in KubeEdge's words.
    let text = next_text(&broker, PUSH_TOPIC, async |_| {}).await;
    assert!(
        text.starts_with("time is ") && text.ends_with(&format!("  {PUSH_TOPIC}: 77")),
        "{text}"
    );

    // GetDevice answers the current twins.
    let current = client
        .get_device(dmi::GetDeviceRequest {
            device_name: "thermo-1".into(),
            device_namespace: "default".into(),
        })
        .await
        .expect("get device")
        .into_inner()
        .device
        .expect("device");
    let twins = current.status.expect("status").twins;
    let temperature = twins
        .iter()
        .find(|twin| twin.property_name == "temperature")
        .expect("temperature twin");
    assert_eq!(temperature.reported.as_ref().expect("reported").value, "42");
}
