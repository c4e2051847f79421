//! DMI: edgecore's side of the Device Management Interface (devices.md §5).
//!
//! * **DeviceManagerService**, served on a unix socket (`dmiSockPath`):
//!   `MapperRegister` records which mapper serves which protocol (also
//!   with `withData = false`, where KubeEdge v1.15 forgets the mapper) and,
//!   with `withData`, answers with that protocol's devices and their
//!   models; `ReportDeviceStatus` and `ReportDeviceStates` enter DeviceTwin
//!   exactly as a mapper's MQTT publish on `$hw/events/device/<id>/twin/
//!   update` (or `…/state/update`) would, so they are merged, versioned and
//!   reported to the cloud the same way. Both RPCs share one token bucket
//!   (`dmiQPS` / `dmiBurst`); calls over it fail with `ResourceExhausted`
//!   ("too many request", KubeEdge's words).
//! * **DeviceMapperService** calls on the mappers: each Device and
//!   DeviceModel object MetaManager stores (insert, update, delete) is
//!   passed on to the mapper registered for its protocol, in order, by
//!   one worker task. A call that fails is logged and counted, not
//!   retried: the mapper gets every device again when it registers.
//!
//! The devices and models come from MetaManager's `meta` table at start;
//! registered mappers are kept in the `device_mapper` table, so a restarted
//! edgecore still knows where its mappers listen.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kedge_bus::{BusHandle, ModuleContext};
use kedge_dmi::v1beta1 as dmi;
use kedge_dmi::v1beta1::device_manager_service_server::{
    DeviceManagerService, DeviceManagerServiceServer,
};
use kedge_dmi::v1beta1::device_mapper_service_client::DeviceMapperServiceClient;
use kedge_message::resource::EdgeResource;
use kedge_message::{Message, group, module, now_millis, operation, resource_type};
use kedge_transport::limits::{RateLimit, TokenBucket};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// How long one call on a mapper may take (KubeEdge's deadline).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Calls waiting for the mapper worker.
const CALL_QUEUE: usize = 1024;

/// What the DMI needs from edgecore.yaml.
#[derive(Debug, Clone)]
pub struct DmiSettings {
    /// The socket DeviceManagerService listens on.
    pub socket: PathBuf,
    /// Calls per second and burst accepted on it.
    pub rate: RateLimit,
}

/// DMI's Prometheus metrics, under `kedge_dmi_*`.
#[derive(Clone, Debug, Default)]
pub struct DmiMetrics {
    requests: Family<CallLabels, Counter>,
    mapper_calls: Family<CallLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: &'static str,
    result: &'static str,
}

impl DmiMetrics {
    /// Metrics registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "kedge_dmi_requests",
            "DMI calls from mappers, by method and result",
            metrics.requests.clone(),
        );
        registry.register(
            "kedge_dmi_mapper_calls",
            "DMI calls on mappers, by method and result",
            metrics.mapper_calls.clone(),
        );
        metrics
    }

    fn request(&self, method: &'static str, result: &'static str) {
        self.requests
            .get_or_create(&CallLabels { method, result })
            .inc();
    }

    fn mapper_call(&self, method: &'static str, result: &'static str) {
        self.mapper_calls
            .get_or_create(&CallLabels { method, result })
            .inc();
    }

    /// How many calls from mappers ended with `result` (`ok`, `refused`,
    /// `invalid`, `failed`).
    pub fn request_count(&self, method: &'static str, result: &'static str) -> u64 {
        self.requests
            .get_or_create(&CallLabels { method, result })
            .get()
    }
}

/// Why the DMI could not start.
#[derive(Debug, thiserror::Error)]
pub enum DmiError {
    /// The database could not be read.
    #[error("cannot read the devices, models and mappers: {0}")]
    Store(#[from] rusqlite::Error),
    /// The socket could not be listened on.
    #[error(transparent)]
    Socket(#[from] kedge_dmi::socket::SocketError),
}

/// A registered mapper.
#[derive(Debug, Clone, PartialEq)]
struct Mapper {
    name: String,
    address: String,
    info: Value,
}

/// The devices, models and mappers the DMI knows; keys are
/// `<namespace>/<name>` for objects and the protocol for mappers.
#[derive(Debug, Default)]
struct Known {
    devices: BTreeMap<String, Value>,
    models: BTreeMap<String, Value>,
    mappers: HashMap<String, Mapper>,
}

type Shared = Arc<Mutex<Known>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Known> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A device's protocol (`spec.protocol.protocolName`).
fn device_protocol(device: &Value) -> &str {
    device
        .pointer("/spec/protocol/protocolName")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// A model's protocol (`spec.protocol`).
fn model_protocol(model: &Value) -> &str {
    model
        .pointer("/spec/protocol")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn object_key(object: &Value) -> Option<String> {
    let name = object.pointer("/metadata/name")?.as_str()?;
    let namespace = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    Some(format!("{namespace}/{name}"))
}

/// The key of a device's model.
fn model_key_of(device: &Value) -> Option<String> {
    let name = device.pointer("/spec/deviceModelRef/name")?.as_str()?;
    let namespace = device
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    Some(format!("{namespace}/{name}"))
}

/// One call for a mapper, in the order the objects changed.
#[derive(Debug)]
enum MapperCall {
    RegisterDevice(dmi::Device),
    UpdateDevice(dmi::Device),
    RemoveDevice { name: String, namespace: String },
    CreateModel(dmi::DeviceModel),
    UpdateModel(dmi::DeviceModel),
    RemoveModel { name: String, namespace: String },
}

impl MapperCall {
    fn method(&self) -> &'static str {
        match self {
            Self::RegisterDevice(_) => "RegisterDevice",
            Self::UpdateDevice(_) => "UpdateDevice",
            Self::RemoveDevice { .. } => "RemoveDevice",
            Self::CreateModel(_) => "CreateDeviceModel",
            Self::UpdateModel(_) => "UpdateDeviceModel",
            Self::RemoveModel { .. } => "RemoveDeviceModel",
        }
    }
}

/// The DMI of one DeviceTwin: the registry, the server and the worker
/// calling mappers.
#[derive(Debug)]
pub(super) struct Dmi {
    shared: Shared,
    calls: mpsc::Sender<(String, MapperCall)>,
}

impl Dmi {
    /// Loads what the database holds, serves DeviceManagerService on the
    /// socket and starts the mapper worker, both as tasks of `ctx`.
    pub(super) fn start(
        ctx: &ModuleContext,
        settings: &DmiSettings,
        database: &Path,
        metrics: DmiMetrics,
    ) -> Result<Self, DmiError> {
        let store = MapperStore::open(database)?;
        let registry = store.load()?;
        tracing::info!(
            devices = registry.devices.len(),
            models = registry.models.len(),
            mappers = registry.mappers.len(),
            socket = %settings.socket.display(),
            "serving DMI"
        );
        let shared = Arc::new(Mutex::new(registry));
        let incoming = kedge_dmi::socket::bind(&settings.socket)?;
        let manager = DeviceManager {
            shared: shared.clone(),
            store: Arc::new(Mutex::new(store)),
            bus: ctx.bus().clone(),
            limiter: Mutex::new(TokenBucket::new(settings.rate, tokio::time::Instant::now())),
            metrics: metrics.clone(),
        };
        let token = ctx.token().clone();
        let socket = settings.socket.clone();
        ctx.spawn("dmi-server", async move {
            let served = tonic::transport::Server::builder()
                .add_service(DeviceManagerServiceServer::new(manager))
                .serve_with_incoming_shutdown(incoming, token.cancelled())
                .await;
            if let Err(error) = served {
                tracing::error!(%error, socket = %socket.display(), "DMI server stopped");
            }
            let _ = std::fs::remove_file(&socket);
        });
        let (calls, queue) = mpsc::channel(CALL_QUEUE);
        ctx.spawn(
            "dmi-mapper-calls",
            call_mappers(queue, shared.clone(), metrics),
        );
        Ok(Self { shared, calls })
    }

    /// Passes a Device or DeviceModel object MetaManager stored (or
    /// deleted) on to the mapper of its protocol.
    pub(super) async fn on_object(&self, msg: &Message) {
        if msg.router.source != module::META_MANAGER || msg.is_reply() {
            return;
        }
        let Some(resource) = EdgeResource::parse(&msg.router.resource) else {
            return;
        };
        let (Some(name), namespace) = (resource.name, resource.namespace) else {
            return;
        };
        let key = format!("{namespace}/{name}");
        let delete = msg.router.operation == operation::DELETE;
        let calls = match resource.resource_type {
            resource_type::DEVICE => self.device_changed(&key, name, namespace, msg, delete),
            resource_type::DEVICE_MODEL => self.model_changed(&key, name, namespace, msg, delete),
            _ => return,
        };
        for call in calls {
            if self.calls.send(call).await.is_err() {
                return;
            }
        }
    }

    fn device_changed(
        &self,
        key: &str,
        name: &str,
        namespace: &str,
        msg: &Message,
        delete: bool,
    ) -> Vec<(String, MapperCall)> {
        let mut registry = lock(&self.shared);
        let previous = if delete {
            registry.devices.remove(key)
        } else {
            let Some(object) = object_of(msg) else {
                return Vec::new();
            };
            registry.devices.insert(key.to_owned(), object)
        };
        let remove = |protocol: &str| {
            (
                protocol.to_owned(),
                MapperCall::RemoveDevice {
                    name: name.to_owned(),
                    namespace: namespace.to_owned(),
                },
            )
        };
        let mut calls = Vec::new();
        let current = registry.devices.get(key);
        if let Some(previous) = &previous {
            let moved = current.is_none_or(|d| device_protocol(d) != device_protocol(previous));
            if moved {
                calls.push(remove(device_protocol(previous)));
            }
        }
        if let Some(device) = current {
            match device_to_dmi(device) {
                Ok(converted) => {
                    let protocol = device_protocol(device).to_owned();
                    let same_mapper = previous
                        .as_ref()
                        .is_some_and(|p| device_protocol(p) == protocol);
                    let call = if same_mapper {
                        MapperCall::UpdateDevice(converted)
                    } else {
                        MapperCall::RegisterDevice(converted)
                    };
                    calls.push((protocol, call));
                }
                Err(error) => {
                    tracing::warn!(device = key, %error, "device not passed to its mapper");
                }
            }
        }
        calls
    }

    fn model_changed(
        &self,
        key: &str,
        name: &str,
        namespace: &str,
        msg: &Message,
        delete: bool,
    ) -> Vec<(String, MapperCall)> {
        let mut registry = lock(&self.shared);
        if delete {
            return registry
                .models
                .remove(key)
                .map(|model| {
                    let call = MapperCall::RemoveModel {
                        name: name.to_owned(),
                        namespace: namespace.to_owned(),
                    };
                    vec![(model_protocol(&model).to_owned(), call)]
                })
                .unwrap_or_default();
        }
        let Some(object) = object_of(msg) else {
            return Vec::new();
        };
        let converted = match model_to_dmi(&object) {
            Ok(converted) => converted,
            Err(error) => {
                tracing::warn!(model = key, %error, "model not passed to its mapper");
                return Vec::new();
            }
        };
        let protocol = model_protocol(&object).to_owned();
        let known = registry.models.insert(key.to_owned(), object).is_some();
        let call = if known {
            MapperCall::UpdateModel(converted)
        } else {
            MapperCall::CreateModel(converted)
        };
        vec![(protocol, call)]
    }
}

/// A stored Device object in its DMI form.
fn device_to_dmi(device: &Value) -> Result<dmi::Device, String> {
    let device: kedge_apis::devices::Device =
        serde_json::from_value(device.clone()).map_err(|error| error.to_string())?;
    kedge_dmi::convert::device_to_dmi(&device).map_err(|error| error.to_string())
}

/// A stored DeviceModel object in its DMI form.
fn model_to_dmi(model: &Value) -> Result<dmi::DeviceModel, String> {
    let model: kedge_apis::devices::DeviceModel =
        serde_json::from_value(model.clone()).map_err(|error| error.to_string())?;
    Ok(kedge_dmi::convert::device_model_to_dmi(&model))
}

/// The object a MetaManager message carries.
fn object_of(msg: &Message) -> Option<Value> {
    super::content_value(msg).filter(Value::is_object)
}

/// Calls the mappers, one call at a time, in order.
async fn call_mappers(
    mut queue: mpsc::Receiver<(String, MapperCall)>,
    shared: Shared,
    metrics: DmiMetrics,
) {
    let mut channels: HashMap<String, Channel> = HashMap::new();
    while let Some((protocol, call)) = queue.recv().await {
        let method = call.method();
        let address = lock(&shared)
            .mappers
            .get(&protocol)
            .map(|mapper| mapper.address.clone());
        let Some(address) = address else {
            tracing::debug!(
                protocol,
                method,
                "no mapper registered for the protocol; it gets the device when it registers"
            );
            metrics.mapper_call(method, "no_mapper");
            continue;
        };
        let channel = channels
            .entry(address.clone())
            .or_insert_with(|| kedge_dmi::socket::connect_lazy(&address));
        let mut client = DeviceMapperServiceClient::new(channel.clone());
        let result = tokio::time::timeout(CALL_TIMEOUT, call_mapper(&mut client, call)).await;
        match result {
            Ok(Ok(())) => metrics.mapper_call(method, "ok"),
            Ok(Err(status)) => {
                tracing::warn!(protocol, method, address, %status, "mapper call failed");
                metrics.mapper_call(method, "failed");
            }
            Err(_) => {
                tracing::warn!(protocol, method, address, "mapper call timed out");
                metrics.mapper_call(method, "failed");
            }
        }
    }
}

async fn call_mapper(
    client: &mut DeviceMapperServiceClient<Channel>,
    call: MapperCall,
) -> Result<(), Status> {
    match call {
        MapperCall::RegisterDevice(device) => {
            client
                .register_device(dmi::RegisterDeviceRequest {
                    device: Some(device),
                })
                .await?;
        }
        MapperCall::UpdateDevice(device) => {
            client
                .update_device(dmi::UpdateDeviceRequest {
                    device: Some(device),
                })
                .await?;
        }
        MapperCall::RemoveDevice { name, namespace } => {
            client
                .remove_device(dmi::RemoveDeviceRequest {
                    device_name: name,
                    device_namespace: namespace,
                })
                .await?;
        }
        MapperCall::CreateModel(model) => {
            client
                .create_device_model(dmi::CreateDeviceModelRequest { model: Some(model) })
                .await?;
        }
        MapperCall::UpdateModel(model) => {
            client
                .update_device_model(dmi::UpdateDeviceModelRequest { model: Some(model) })
                .await?;
        }
        MapperCall::RemoveModel { name, namespace } => {
            client
                .remove_device_model(dmi::RemoveDeviceModelRequest {
                    model_name: name,
                    model_namespace: namespace,
                })
                .await?;
        }
    }
    Ok(())
}

/// DeviceManagerService, as edgecore serves it.
struct DeviceManager {
    shared: Shared,
    store: Arc<Mutex<MapperStore>>,
    bus: BusHandle,
    limiter: Mutex<TokenBucket>,
    metrics: DmiMetrics,
}

impl DeviceManager {
    /// Takes a token, or refuses the call as KubeEdge does.
    fn admit(&self, method: &'static str) -> Result<(), Status> {
        let mut limiter = self.limiter.lock().unwrap_or_else(PoisonError::into_inner);
        if limiter.try_take(tokio::time::Instant::now()) {
            Ok(())
        } else {
            self.metrics.request(method, "refused");
            Err(Status::resource_exhausted("too many request"))
        }
    }

    fn invalid(&self, method: &'static str, message: String) -> Status {
        self.metrics.request(method, "invalid");
        Status::invalid_argument(message)
    }

    /// Hands DeviceTwin a request as EventBus would from `topic`.
    async fn to_twin(
        &self,
        method: &'static str,
        topic: String,
        payload: Value,
    ) -> Result<(), Status> {
        let msg = Message::new(
            group::BUS,
            group::TWIN,
            operation::RESPONSE,
            topic,
            Value::String(payload.to_string()),
        );
        match self.bus.send(module::DEVICE_TWIN, msg).await {
            Ok(()) => {
                self.metrics.request(method, "ok");
                Ok(())
            }
            Err(error) => {
                self.metrics.request(method, "failed");
                Err(Status::unavailable(format!("devicetwin: {error}")))
            }
        }
    }
}

/// The twin id a report names: `<namespace>/<name>` when it gives a
/// namespace, else the name (both forms DeviceTwin accepts).
fn device_id(name: &str, namespace: &str) -> String {
    if namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}/{name}")
    }
}

/// The twin update a status report stands for (devices.md §5.6): the
/// reported value as `actual`, the observed desired value (when the mapper
/// gives one) as `expected`. The mapper's metadata is not kept, as in
/// KubeEdge.
fn twin_update(status: &dmi::DeviceStatus) -> Value {
    let mut twin = serde_json::Map::new();
    for reported in &status.twins {
        let mut property = serde_json::Map::new();
        if let Some(value) = &reported.reported {
            property.insert("actual".into(), json!({ "value": value.value }));
        }
        if let Some(desired) = reported
            .observed_desired
            .as_ref()
            .filter(|d| !d.value.is_empty())
        {
            property.insert("expected".into(), json!({ "value": desired.value }));
        }
        if !property.is_empty() {
            twin.insert(reported.property_name.clone(), Value::Object(property));
        }
    }
    json!({ "event_id": "", "timestamp": now_millis(), "twin": twin })
}

#[tonic::async_trait]
impl DeviceManagerService for DeviceManager {
    async fn mapper_register(
        &self,
        request: Request<dmi::MapperRegisterRequest>,
    ) -> Result<Response<dmi::MapperRegisterResponse>, Status> {
        const METHOD: &str = "MapperRegister";
        self.admit(METHOD)?;
        let request = request.into_inner();
        let Some(info) = request.mapper else {
            return Err(self.invalid(METHOD, "mapper is required".into()));
        };
        if info.protocol.is_empty() {
            return Err(self.invalid(METHOD, "mapper.protocol is required".into()));
        }
        let address = String::from_utf8_lossy(&info.address).into_owned();
        if address.is_empty() {
            return Err(self.invalid(METHOD, "mapper.address is required".into()));
        }
        let mapper = Mapper {
            name: info.name.clone(),
            address,
            info: json!({
                "name": info.name,
                "version": info.version,
                "api_version": info.api_version,
                "protocol": info.protocol,
                "address": String::from_utf8_lossy(&info.address),
                "state": info.state,
            }),
        };
        let store = self.store.clone();
        let (protocol, stored) = (info.protocol.clone(), mapper.clone());
        let saved = tokio::task::spawn_blocking(move || {
            store
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .save(&protocol, &stored)
        })
        .await;
        let failure = match saved {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error.to_string()),
            Err(error) => Some(error.to_string()),
        };
        if let Some(error) = failure {
            tracing::warn!(%error, mapper = %info.name, "the mapper is not kept across a restart");
        }
        tracing::info!(mapper = %info.name, protocol = %info.protocol, address = %mapper.address, "mapper registered");
        let mut response = dmi::MapperRegisterResponse::default();
        let mut registry = lock(&self.shared);
        registry.mappers.insert(info.protocol.clone(), mapper);
        if request.with_data {
            for (key, device) in &registry.devices {
                if device_protocol(device) != info.protocol {
                    continue;
                }
                let model = model_key_of(device)
                    .and_then(|k| registry.models.get(&k))
                    .and_then(|model| model_to_dmi(model).ok());
                match device_to_dmi(device) {
                    Ok(converted) => {
                        response.model_list.extend(model);
                        response.device_list.push(converted);
                    }
                    Err(error) => {
                        tracing::warn!(device = %key, %error, "device not passed to its mapper");
                    }
                }
            }
        }
        self.metrics.request(METHOD, "ok");
        Ok(Response::new(response))
    }

    async fn report_device_status(
        &self,
        request: Request<dmi::ReportDeviceStatusRequest>,
    ) -> Result<Response<dmi::ReportDeviceStatusResponse>, Status> {
        const METHOD: &str = "ReportDeviceStatus";
        self.admit(METHOD)?;
        let request = request.into_inner();
        if request.device_name.is_empty() {
            return Err(self.invalid(METHOD, "deviceName is required".into()));
        }
        let Some(status) = request.reported_device else {
            return Err(self.invalid(METHOD, "reportedDevice is required".into()));
        };
        let id = device_id(&request.device_name, &request.device_namespace);
        let topic = format!("$hw/events/device/{id}/twin/update");
        self.to_twin(METHOD, topic, twin_update(&status)).await?;
        Ok(Response::new(dmi::ReportDeviceStatusResponse::default()))
    }

    async fn report_device_states(
        &self,
        request: Request<dmi::ReportDeviceStatesRequest>,
    ) -> Result<Response<dmi::ReportDeviceStatesResponse>, Status> {
        const METHOD: &str = "ReportDeviceStates";
        self.admit(METHOD)?;
        let request = request.into_inner();
        if request.device_name.is_empty() {
            return Err(self.invalid(METHOD, "deviceName is required".into()));
        }
        let id = device_id(&request.device_name, &request.device_namespace);
        let topic = format!("$hw/events/device/{id}/state/update");
        let payload = json!({ "event_id": "", "timestamp": now_millis(), "state": request.state });
        self.to_twin(METHOD, topic, payload).await?;
        Ok(Response::new(dmi::ReportDeviceStatesResponse::default()))
    }
}

/// The registered mappers' table, and the reading of MetaManager's
/// devices and models.
struct MapperStore {
    connection: Connection,
}

const MAPPER_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS device_mapper (
    protocol TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL, address TEXT NOT NULL, info TEXT);
";

impl MapperStore {
    fn open(path: &Path) -> rusqlite::Result<Self> {
        let connection = Connection::open(path)?;
        connection.busy_timeout(Duration::from_secs(5))?;
        connection.execute_batch(MAPPER_SCHEMA)?;
        Ok(Self { connection })
    }

    /// The stored devices, models (from MetaManager's `meta` table, if it
    /// exists yet) and mappers.
    fn load(&self) -> rusqlite::Result<Known> {
        let mut registry = Known::default();
        let meta: Option<String> = self
            .connection
            .query_row(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
                [],
                |row| row.get(0),
            )
            .optional()?;
        if meta.is_some() {
            let mut objects = self
                .connection
                .prepare("SELECT type, value FROM meta WHERE type IN (?1, ?2)")?;
            let rows = objects.query_map(
                params![resource_type::DEVICE, resource_type::DEVICE_MODEL],
                |row| Ok((row.get::<_, String>(0)?, row.get::<_, Option<String>>(1)?)),
            )?;
            for row in rows {
                let (kind, value) = row?;
                let Some(object) = value.and_then(|v| serde_json::from_str::<Value>(&v).ok())
                else {
                    continue;
                };
                let Some(key) = object_key(&object) else {
                    continue;
                };
                if kind == resource_type::DEVICE {
                    registry.devices.insert(key, object);
                } else {
                    registry.models.insert(key, object);
                }
            }
        }
        let mut mappers = self
            .connection
            .prepare("SELECT protocol, name, address, info FROM device_mapper")?;
        let rows = mappers.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Option<String>>(3)?,
            ))
        })?;
        for row in rows {
            let (protocol, name, address, info) = row?;
            let info = info
                .and_then(|i| serde_json::from_str(&i).ok())
                .unwrap_or(Value::Null);
            registry.mappers.insert(
                protocol,
                Mapper {
                    name,
                    address,
                    info,
                },
            );
        }
        Ok(registry)
    }

    fn save(&self, protocol: &str, mapper: &Mapper) -> rusqlite::Result<()> {
        self.connection.execute(
            "INSERT INTO device_mapper (protocol, name, address, info) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(protocol) DO UPDATE SET name = ?2, address = ?3, info = ?4",
            params![
                protocol,
                mapper.name,
                mapper.address,
                mapper.info.to_string()
            ],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn twin(name: &str, reported: Option<&str>, desired: Option<&str>) -> dmi::Twin {
        let property = |value: &str| dmi::TwinProperty {
            value: value.to_owned(),
            metadata: HashMap::from([("type".to_owned(), "int".to_owned())]),
        };
        dmi::Twin {
            property_name: name.to_owned(),
            reported: reported.map(property),
            observed_desired: desired.map(property),
        }
    }

    #[test]
    fn a_status_report_is_a_twin_update_without_empty_desired_values() {
        let status = dmi::DeviceStatus {
            twins: vec![
                twin("temperature", Some("21"), Some("20")),
                twin("humidity", Some("40.5"), Some("")),
                twin("nothing", None, None),
            ],
            ..dmi::DeviceStatus::default()
        };
        let update = twin_update(&status);
        assert_eq!(
            update["twin"],
            json!({
                "temperature": {"actual": {"value": "21"}, "expected": {"value": "20"}},
                "humidity": {"actual": {"value": "40.5"}},
            })
        );
        assert_eq!(update["event_id"], "");
        assert!(update["timestamp"].as_i64().is_some_and(|t| t > 0));
    }

    #[test]
    fn reports_name_the_device_in_either_id_form() {
        assert_eq!(device_id("sensor", ""), "sensor");
        assert_eq!(device_id("sensor", "factory"), "factory/sensor");
    }

    #[test]
    fn devices_models_and_mappers_are_read_back_from_the_database() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("edgecore.db");
        let store = MapperStore::open(&path).expect("open");
        // Before MetaManager made its table, there is nothing to read.
        assert!(store.load().expect("load").devices.is_empty());
        store
            .connection
            .execute_batch(
                "CREATE TABLE meta (key TEXT PRIMARY KEY, type TEXT, value TEXT);
                 INSERT INTO meta VALUES ('default/device/d1', 'device',
                   '{\"metadata\":{\"name\":\"d1\",\"namespace\":\"default\"},\"spec\":{\"protocol\":{\"protocolName\":\"modbus\"}}}');
                 INSERT INTO meta VALUES ('default/devicemodel/m1', 'devicemodel',
                   '{\"metadata\":{\"name\":\"m1\",\"namespace\":\"default\"},\"spec\":{\"protocol\":\"modbus\"}}');
                 INSERT INTO meta VALUES ('default/pod/p1', 'pod', '{}');",
            )
            .expect("seed");
        let mapper = Mapper {
            name: "modbus-mapper".into(),
            address: "/run/modbus.sock".into(),
            info: json!({"name": "modbus-mapper"}),
        };
        store.save("modbus", &mapper).expect("save");
        store.save("modbus", &mapper).expect("saved twice");
        let known = MapperStore::open(&path)
            .expect("reopen")
            .load()
            .expect("load");
        assert_eq!(known.devices.keys().collect::<Vec<_>>(), ["default/d1"]);
        assert_eq!(known.models.keys().collect::<Vec<_>>(), ["default/m1"]);
        assert_eq!(known.mappers.get("modbus"), Some(&mapper));
        assert_eq!(device_protocol(&known.devices["default/d1"]), "modbus");
        assert_eq!(model_protocol(&known.models["default/m1"]), "modbus");
    }
}
