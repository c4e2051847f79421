//! The SDK in process with the virtual driver: registration retried after
//! edgecore refuses it, desired values from a KubeEdge v1.15 `status.twins`,
//! both cycle units, failed reports counted, HTTP pushes, `RemoveDevice`
//! and shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use kedge_apis::devices::{Device, DeviceModel};
use kedge_dmi::convert::{device_model_to_dmi, device_to_dmi};
use kedge_dmi::v1beta1 as dmi;
use kedge_dmi::v1beta1::device_manager_service_server::{
    DeviceManagerService, DeviceManagerServiceServer,
};
use kedge_dmi::v1beta1::device_mapper_service_client::DeviceMapperServiceClient;
use kedge_mapper::virtual_device::VirtualDriver;
use kedge_mapper::{Config, Mapper};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// How long any one expected event may take.
const DEADLINE: Duration = Duration::from_secs(30);

/// A stand-in for edgecore that refuses the first registration and the
/// first report.
struct Edgecore {
    /// The device handed to the mapper.
    device: dmi::Device,
    /// Its model.
    model: dmi::DeviceModel,
    /// Whether a registration was refused yet.
    refused_registration: AtomicBool,
    /// Whether a report was refused yet.
    refused: AtomicBool,
    /// Registrations and accepted reports.
    seen: mpsc::UnboundedSender<Option<dmi::ReportDeviceStatusRequest>>,
}

#[tonic::async_trait]
impl DeviceManagerService for Edgecore {
    async fn mapper_register(
        &self,
        _: Request<dmi::MapperRegisterRequest>,
    ) -> Result<Response<dmi::MapperRegisterResponse>, Status> {
        let _ = self.seen.send(None);
        if !self.refused_registration.swap(true, Ordering::SeqCst) {
            return Err(Status::unavailable("starting"));
        }
        Ok(Response::new(dmi::MapperRegisterResponse {
            model_list: vec![self.model.clone()],
            device_list: vec![self.device.clone()],
        }))
    }

    async fn report_device_status(
        &self,
        request: Request<dmi::ReportDeviceStatusRequest>,
    ) -> Result<Response<dmi::ReportDeviceStatusResponse>, Status> {
        if !self.refused.swap(true, Ordering::SeqCst) {
            return Err(Status::resource_exhausted("too many request"));
        }
        let _ = self.seen.send(Some(request.into_inner()));
        Ok(Response::new(dmi::ReportDeviceStatusResponse {}))
    }

    async fn report_device_states(
        &self,
        _: Request<dmi::ReportDeviceStatesRequest>,
    ) -> Result<Response<dmi::ReportDeviceStatesResponse>, Status> {
        Ok(Response::new(dmi::ReportDeviceStatesResponse {}))
    }
}

/// KubeEdge's `random-01` model.
fn model() -> DeviceModel {
    serde_json::from_value(json!({
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "DeviceModel",
        "metadata": {"name": "random-01", "namespace": "default"},
        "spec": {"protocol": "virtualProtocol", "properties": [
            {"name": "random-int", "type": "INT", "accessMode": "ReadWrite", "maximum": "100"},
            {"name": "random-float", "type": "FLOAT", "accessMode": "ReadOnly"}
        ]}
    }))
    .expect("model")
}

/// A v1.15-style instance: the desired value only in `status.twins`, the
/// int's cycle in nanoseconds, the float's in milliseconds and pushed to
/// the HTTP endpoint on `port`.
fn device(port: u16) -> Device {
    serde_json::from_value(json!({
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "Device",
        "metadata": {"name": "random-instance-01", "namespace": "default"},
        "spec": {
            "deviceModelRef": {"name": "random-01"},
            "protocol": {"protocolName": "virtualProtocol", "configData": {"deviceID": 2}},
            "properties": [{
                "name": "random-int",
                "collectCycle": 100_000_000,
                "reportCycle": 100_000_000,
                "reportToCloud": true,
                "visitors": {"protocolName": "virtualProtocol", "configData": {"dataType": "int"}}
            }, {
                "name": "random-float",
                "collectCycle": 100,
                "reportCycle": 100,
                "reportToCloud": true,
                "visitors": {"protocolName": "virtualProtocol", "configData": {"dataType": "float"}},
                "pushMethod": {"http": {"hostName": "http://127.0.0.1", "port": port,
                                        "requestPath": "/data", "timeout": 1000}}
            }]
        },
        "status": {"twins": [{"propertyName": "random-int",
            "reported": {"value": "0"},
            "observedDesired": {"value": "100", "metadata": {"type": "int"}}}]}
    }))
    .expect("device")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_registers_reports_pushes_and_removes() {
    // The HTTP endpoint pushes go to.
    let (pushed, mut pushes) = mpsc::unbounded_channel::<String>();
    let endpoint = Router::new().route(
        "/data",
        post(move |body: String| async move {
            let _ = pushed.send(body);
            "ok"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move { axum::serve(listener, endpoint).await });

    let dir = tempfile::tempdir().expect("tempdir");
    let edgecore_socket = dir.path().join("dmi.sock");
    let mapper_socket = dir.path().join("virtual.sock");
    let config = Config::parse(&format!(
        "grpc_server:\n  socket_path: {}\ncommon:\n  name: virtual-mapper\n  protocol: virtualProtocol\n  \
         edgecore_sock: {}\n",
        mapper_socket.display(),
        edgecore_socket.display()
    ))
    .expect("config");

    // The mapper may start before edgecore: it retries either way.
    let mapper = Mapper::new(config, VirtualDriver);
    let metrics = mapper.metrics();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(mapper.run(shutdown.clone()));

    let (sender, mut seen) = mpsc::unbounded_channel();
    let edgecore = Edgecore {
        device: device_to_dmi(&device(port)).expect("convert device"),
        model: device_model_to_dmi(&model()),
        refused_registration: AtomicBool::new(false),
        refused: AtomicBool::new(false),
        seen: sender,
    };
    let server = kedge_dmi::socket::serve(
        tonic::service::Routes::new(DeviceManagerServiceServer::new(edgecore)),
        &edgecore_socket,
        std::future::pending(),
    )
    .expect("serve edgecore");
    let _server = tokio::spawn(server);

    // A refused registration, then one retried after a backoff.
    for attempt in ["first", "retried"] {
        let registered = tokio::time::timeout(DEADLINE, seen.recv()).await;
        assert!(
            matches!(registered, Ok(Some(None))),
            "no {attempt} registration: {registered:?}"
        );
    }

    // Reports of both properties, after one refused report.
    let mut twins: HashMap<String, dmi::Twin> = HashMap::new();
    let reporting = async {
        while let Some(Some(report)) = seen.recv().await {
            for twin in report.reported_device.expect("reported").twins {
                twins.insert(twin.property_name.clone(), twin);
            }
            if twins.len() == 2 {
                return;
            }
        }
    };
    tokio::time::timeout(DEADLINE, reporting)
        .await
        .expect("reports of both properties");
    let value = |name: &str| {
        twins[name]
            .reported
            .as_ref()
            .expect("reported")
            .value
            .parse::<f64>()
            .expect("a number")
    };
    assert!((0.0..100.0).contains(&value("random-int")));
    assert_eq!(value("random-int").fract(), 0.0);
    assert!((0.0..1.0).contains(&value("random-float")));
    let observed = twins["random-int"]
        .observed_desired
        .as_ref()
        .expect("observed");
    assert_eq!(observed.value, "100", "the v1.15 status' desired value");
    assert!(
        metrics.report_failures() >= 1,
        "the refused report is counted"
    );

    // The float is pushed as a form.
    let body = tokio::time::timeout(DEADLINE, pushes.recv())
        .await
        .expect("a push")
        .expect("a body");
    let form: HashMap<String, String> = form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let pushed: f64 = form["random-float"].parse().expect("a number");
    assert!((0.0..1.0).contains(&pushed));
    assert_eq!(form["time"].len(), "2024-01-01 00:00:00".len());

    // RemoveDevice stops it; GetDevice no longer knows it (by name alone,
    // as KubeEdge v1.15 asks).
    let channel = kedge_dmi::socket::connect(&mapper_socket)
        .await
        .expect("connect to the mapper");
    let mut client = DeviceMapperServiceClient::new(channel);
    let known = client
        .get_device(dmi::GetDeviceRequest {
            device_name: "random-instance-01".into(),
            device_namespace: String::new(),
        })
        .await
        .expect("get device");
    assert_eq!(
        known.into_inner().device.expect("device").name,
        "random-instance-01"
    );
    client
        .remove_device(dmi::RemoveDeviceRequest {
            device_name: "random-instance-01".into(),
            device_namespace: "default".into(),
        })
        .await
        .expect("remove device");
    let gone = client
        .get_device(dmi::GetDeviceRequest {
            device_name: "random-instance-01".into(),
            device_namespace: "default".into(),
        })
        .await
        .expect_err("removed");
    assert_eq!(gone.code(), tonic::Code::NotFound);

    shutdown.cancel();
    let stopped = tokio::time::timeout(DEADLINE, running)
        .await
        .expect("the mapper stops");
    stopped.expect("join").expect("a clean stop");
}
