//! The devices and models a mapper manages, and the `DeviceMapperService`
//! edgecore calls to change them (devices.md §6.3, step 6).
//!
//! * `RegisterDevice` is idempotent: a known device is left alone. A new one
//!   waits up to 3 s for its model (edgecore sends the model just before),
//!   then starts.
//! * `UpdateDevice` of a device whose only change is its desired values
//!   writes the changed values in place; any other change restarts the
//!   device. An unknown device is started.
//! * `RemoveDevice` stops the device; removing an unknown one is not an
//!   error.
//! * `CreateDeviceModel`/`UpdateDeviceModel` store the model (updating an
//!   unknown one fails, as in KubeEdge) and restart the devices of the
//!   model, whose value types and access modes may have changed.
//!   `RemoveDeviceModel` forgets it.
//! * `GetDevice` answers the device with its current twins.
//!
//! Devices and models are keyed by namespace and name. KubeEdge v1.15
//! sends no namespaces: a request without one matches by name alone.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use kedge_dmi::v1beta1 as dmi;
use kedge_dmi::v1beta1::device_mapper_service_server::DeviceMapperService;
use tokio::sync::{Mutex, Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::device::{Command, DeviceError, DeviceTask, Twins, desired_values, error_chain};
use crate::driver::Driver;
use crate::edgecore::{Edgecore, Metrics};
use crate::push::Pusher;

/// How long `RegisterDevice` waits for the device's model.
const MODEL_WAIT: Duration = Duration::from_secs(3);

/// A namespace and a name.
type Key = (String, String);

/// A running device.
struct Running {
    /// The device as last received.
    device: dmi::Device,
    /// The model it was started with, if any was known.
    model: Option<dmi::DeviceModel>,
    /// Its current twins.
    twins: Twins,
    /// Stops its task.
    cancel: CancellationToken,
    /// Reaches its task.
    commands: mpsc::Sender<Command>,
    /// Its task.
    task: JoinHandle<()>,
}

impl Running {
    /// Stops the task and waits for it to disconnect.
    async fn stop(self) {
        self.cancel.cancel();
        if let Err(error) = self.task.await {
            tracing::error!(device = %self.device.name, %error, "device task failed");
        }
    }
}

/// What the panel holds.
#[derive(Default)]
struct State {
    /// Models by key.
    models: HashMap<Key, dmi::DeviceModel>,
    /// Devices by key.
    devices: HashMap<Key, Running>,
}

/// The key `namespace`/`name` has in `map`: the exact one, or, without a
/// namespace, the only entry of that name.
fn find<T>(map: &HashMap<Key, T>, namespace: &str, name: &str) -> Option<Key> {
    let exact = (namespace.to_owned(), name.to_owned());
    if map.contains_key(&exact) {
        return Some(exact);
    }
    if !namespace.is_empty() {
        return None;
    }
    let mut named = map.keys().filter(|(_, n)| n == name);
    match (named.next(), named.next()) {
        (Some(key), None) => Some(key.clone()),
        _ => None,
    }
}

/// The model of `device` in `models`: in the device's namespace, or the
/// only one of that name.
fn model_of(models: &HashMap<Key, dmi::DeviceModel>, device: &dmi::Device) -> Option<Key> {
    let name = device.spec.as_ref()?.device_model_reference.as_str();
    find(models, &device.namespace, name).or_else(|| find(models, "", name))
}

/// `device` without what may change in place: desired values and status.
fn without_desired(device: &dmi::Device) -> dmi::Device {
    let mut device = device.clone();
    device.status = None;
    for property in device
        .spec
        .iter_mut()
        .flat_map(|spec| spec.properties.iter_mut())
    {
        property.desired = None;
    }
    device
}

/// The devices and models of a mapper.
pub(crate) struct Panel<D: Driver> {
    /// The protocol driver.
    driver: D,
    /// edgecore.
    edgecore: Edgecore,
    /// Pushes values.
    pusher: Pusher,
    /// Counters.
    metrics: Arc<Metrics>,
    /// Devices and models. An async mutex: it is held while devices stop.
    state: Mutex<State>,
    /// Woken when a model arrives.
    model_arrived: Notify,
    /// The parent of every device's cancellation.
    cancel: CancellationToken,
}

impl<D: Driver> Panel<D> {
    /// An empty panel.
    pub(crate) fn new(
        driver: D,
        edgecore: Edgecore,
        metrics: Arc<Metrics>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            driver,
            edgecore,
            pusher: Pusher::new(),
            metrics,
            state: Mutex::new(State::default()),
            model_arrived: Notify::new(),
            cancel,
        }
    }

    /// Starts `device` (with `model`) and records it.
    fn start(
        &self,
        state: &mut State,
        device: dmi::Device,
        model: Option<dmi::DeviceModel>,
    ) -> Result<(), DeviceError> {
        let (task, twins) = DeviceTask::new(
            &self.driver,
            &device,
            model.as_ref(),
            self.edgecore.clone(),
            self.pusher.clone(),
            Arc::clone(&self.metrics),
        )?;
        let cancel = self.cancel.child_token();
        let (commands, receiver) = mpsc::channel(8);
        let span = tracing::info_span!("device", name = %device.name);
        let task = tokio::spawn(tracing::Instrument::instrument(
            task.run(receiver, cancel.clone()),
            span,
        ));
        tracing::info!(device = %device.name, namespace = %device.namespace, "device started");
        let key = (device.namespace.clone(), device.name.clone());
        state.devices.insert(
            key,
            Running {
                device,
                model,
                twins,
                cancel,
                commands,
                task,
            },
        );
        Ok(())
    }

    /// Starts the devices (and learns the models) of a registration answer.
    pub(crate) async fn start_all(&self, answer: dmi::MapperRegisterResponse) {
        let mut state = self.state.lock().await;
        for model in answer.model_list {
            state
                .models
                .insert((model.namespace.clone(), model.name.clone()), model);
        }
        for device in answer.device_list {
            let key = (device.namespace.clone(), device.name.clone());
            if state.devices.contains_key(&key) {
                continue;
            }
            let model =
                model_of(&state.models, &device).and_then(|k| state.models.get(&k).cloned());
            if let Err(error) = self.start(&mut state, device, model) {
                tracing::error!(error = %error_chain(&error), "device not started");
            }
        }
    }

    /// Stops every device.
    pub(crate) async fn stop_all(&self) {
        let devices: Vec<Running> = {
            let mut state = self.state.lock().await;
            state.devices.drain().map(|(_, running)| running).collect()
        };
        for running in devices {
            running.stop().await;
        }
    }

    /// Waits up to [`MODEL_WAIT`] for `device`'s model.
    async fn wait_for_model(&self, device: &dmi::Device) {
        let deadline = tokio::time::Instant::now() + MODEL_WAIT;
        loop {
            let arrived = self.model_arrived.notified();
            if model_of(&self.state.lock().await.models, device).is_some() {
                return;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                tracing::warn!(device = %device.name, "starting without its model");
                return;
            }
        }
    }

    /// `RegisterDevice`.
    async fn register(&self, device: dmi::Device) -> Result<(), Status> {
        let key = (device.namespace.clone(), device.name.clone());
        if self.state.lock().await.devices.contains_key(&key) {
            return Ok(());
        }
        self.wait_for_model(&device).await;
        let mut state = self.state.lock().await;
        if state.devices.contains_key(&key) {
            return Ok(());
        }
        let model = model_of(&state.models, &device).and_then(|k| state.models.get(&k).cloned());
        self.start(&mut state, device, model)
            .map_err(|error| Status::invalid_argument(error_chain(&error)))
    }

    /// `UpdateDevice`.
    async fn update(&self, device: dmi::Device) -> Result<(), Status> {
        let key = (device.namespace.clone(), device.name.clone());
        let mut state = self.state.lock().await;
        let model = model_of(&state.models, &device).and_then(|k| state.models.get(&k).cloned());
        if let Some(running) = state.devices.get_mut(&key)
            && running.model == model
            && without_desired(&running.device) == without_desired(&device)
        {
            let desired = desired_values(&device);
            running.device = device;
            if running
                .commands
                .send(Command::Desired(desired))
                .await
                .is_err()
            {
                tracing::warn!(device = %running.device.name, "device task has ended");
            }
            return Ok(());
        }
        if let Some(running) = state.devices.remove(&key) {
            running.stop().await;
        }
        self.start(&mut state, device, model)
            .map_err(|error| Status::invalid_argument(error_chain(&error)))
    }

    /// `RemoveDevice`.
    async fn remove(&self, namespace: &str, name: &str) {
        let mut state = self.state.lock().await;
        if let Some(key) = find(&state.devices, namespace, name)
            && let Some(running) = state.devices.remove(&key)
        {
            running.stop().await;
            tracing::info!(device = %name, "device removed");
        }
    }

    /// Stores `model`, then restarts its devices that run with another
    /// version of it.
    async fn store_model(&self, model: dmi::DeviceModel) {
        let mut state = self.state.lock().await;
        state
            .models
            .insert((model.namespace.clone(), model.name.clone()), model);
        self.model_arrived.notify_waiters();
        let stale: Vec<Key> = state
            .devices
            .iter()
            .filter(|(_, running)| {
                let current =
                    model_of(&state.models, &running.device).and_then(|key| state.models.get(&key));
                current.is_some() && current != running.model.as_ref()
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            let Some(running) = state.devices.remove(&key) else {
                continue;
            };
            let device = running.device.clone();
            running.stop().await;
            let model =
                model_of(&state.models, &device).and_then(|k| state.models.get(&k).cloned());
            if let Err(error) = self.start(&mut state, device, model) {
                tracing::error!(error = %error_chain(&error), "device not restarted");
            }
        }
    }

    /// `GetDevice`: the device with its current twins.
    async fn get(&self, namespace: &str, name: &str) -> Option<dmi::Device> {
        let state = self.state.lock().await;
        let running = state.devices.get(&find(&state.devices, namespace, name)?)?;
        let mut device = running.device.clone();
        let twins = running
            .twins
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        device.status.get_or_insert_with(Default::default).twins = twins;
        Some(device)
    }
}

/// The mapper's `DeviceMapperService`.
pub(crate) struct MapperService<D: Driver> {
    /// The devices and models.
    pub(crate) panel: Arc<Panel<D>>,
}

/// The request's device, or an error.
fn device_of(device: Option<dmi::Device>) -> Result<dmi::Device, Status> {
    device
        .filter(|device| !device.name.is_empty())
        .ok_or_else(|| Status::invalid_argument("the request has no device"))
}

/// The request's model, or an error.
fn model_of_request(model: Option<dmi::DeviceModel>) -> Result<dmi::DeviceModel, Status> {
    model
        .filter(|model| !model.name.is_empty())
        .ok_or_else(|| Status::invalid_argument("the request has no model"))
}

#[tonic::async_trait]
impl<D: Driver> DeviceMapperService for MapperService<D> {
    async fn register_device(
        &self,
        request: Request<dmi::RegisterDeviceRequest>,
    ) -> Result<Response<dmi::RegisterDeviceResponse>, Status> {
        let device = device_of(request.into_inner().device)?;
        let answer = dmi::RegisterDeviceResponse {
            device_name: device.name.clone(),
            device_namespace: device.namespace.clone(),
        };
        self.panel.register(device).await?;
        Ok(Response::new(answer))
    }

    async fn remove_device(
        &self,
        request: Request<dmi::RemoveDeviceRequest>,
    ) -> Result<Response<dmi::RemoveDeviceResponse>, Status> {
        let request = request.into_inner();
        self.panel
            .remove(&request.device_namespace, &request.device_name)
            .await;
        Ok(Response::new(dmi::RemoveDeviceResponse {}))
    }

    async fn update_device(
        &self,
        request: Request<dmi::UpdateDeviceRequest>,
    ) -> Result<Response<dmi::UpdateDeviceResponse>, Status> {
        let device = device_of(request.into_inner().device)?;
        self.panel.update(device).await?;
        Ok(Response::new(dmi::UpdateDeviceResponse {}))
    }

    async fn create_device_model(
        &self,
        request: Request<dmi::CreateDeviceModelRequest>,
    ) -> Result<Response<dmi::CreateDeviceModelResponse>, Status> {
        let model = model_of_request(request.into_inner().model)?;
        let answer = dmi::CreateDeviceModelResponse {
            device_model_name: model.name.clone(),
            device_model_namespace: model.namespace.clone(),
        };
        self.panel.store_model(model).await;
        Ok(Response::new(answer))
    }

    async fn remove_device_model(
        &self,
        request: Request<dmi::RemoveDeviceModelRequest>,
    ) -> Result<Response<dmi::RemoveDeviceModelResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.panel.state.lock().await;
        if let Some(key) = find(&state.models, &request.model_namespace, &request.model_name) {
            state.models.remove(&key);
        }
        Ok(Response::new(dmi::RemoveDeviceModelResponse {}))
    }

    async fn update_device_model(
        &self,
        request: Request<dmi::UpdateDeviceModelRequest>,
    ) -> Result<Response<dmi::UpdateDeviceModelResponse>, Status> {
        let model = model_of_request(request.into_inner().model)?;
        let known = {
            let state = self.panel.state.lock().await;
            find(&state.models, &model.namespace, &model.name).is_some()
        };
        if !known {
            return Err(Status::not_found(format!(
                "device model {} is not known",
                model.name
            )));
        }
        self.panel.store_model(model).await;
        Ok(Response::new(dmi::UpdateDeviceModelResponse {}))
    }

    async fn get_device(
        &self,
        request: Request<dmi::GetDeviceRequest>,
    ) -> Result<Response<dmi::GetDeviceResponse>, Status> {
        let request = request.into_inner();
        let device = self
            .panel
            .get(&request.device_namespace, &request.device_name)
            .await
            .ok_or_else(|| {
                Status::not_found(format!("device {} is not known", request.device_name))
            })?;
        Ok(Response::new(dmi::GetDeviceResponse {
            device: Some(device),
        }))
    }
}
