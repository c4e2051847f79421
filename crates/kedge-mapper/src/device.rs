//! One task per device (devices.md §6.3): it owns the driver's client,
//! connects it (retrying with backoff), writes the desired values, then
//! reads and reports, and pushes, each on its property's cycle.
//!
//! Properties that share a collect cycle are read together and reported in
//! one `ReportDeviceStatus`, which keeps a device with many properties
//! within edgecore's rate limit (1 call/s, burst 100, devices.md §5.2).
//! Properties with `reportToCloud` false are not reported (KubeEdge v1.16+;
//! v1.15 ignored the flag). A property whose visitor cannot be parsed is
//! skipped; the others run.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::{BoxStream, select_all};
use kedge_dmi::convert::{ConvertError, protocol_config_to_json, visitor_config_to_json};
use kedge_dmi::v1beta1 as dmi;
use serde_json::json;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, interval_at};
use tokio_stream::wrappers::IntervalStream;
use tokio_util::sync::CancellationToken;

use crate::driver::{DataType, DeviceClient, Driver, DriverError, PropertyInfo, Value};
use crate::edgecore::{Edgecore, Metrics};
use crate::push::{Push, Pusher};
use crate::settings::Settings;

/// The cycle used when a property gives none (zero), as in KubeEdge.
const DEFAULT_CYCLE: Duration = Duration::from_secs(1);
/// Cycle values from this one up are nanoseconds; smaller ones are
/// milliseconds.
const NANOSECOND_CYCLES: i64 = 100_000_000;
/// The first wait before connecting to a device again.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between connection attempts.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// How long a driver may take to disconnect.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A `collectCycle` or `reportCycle` as a duration, accepting both units
/// KubeEdge has used (devices.md §1.2): nanoseconds (v1.15 to v1.17, a Go
/// `time.Duration`) and milliseconds (v1.18 on). Values of 10^8 and more
/// are nanoseconds (a tenth of a second or more), smaller ones
/// milliseconds (up to about 28 hours); zero or less means one second.
pub fn cycle(value: i64) -> Duration {
    match u64::try_from(value) {
        Ok(0) | Err(_) => DEFAULT_CYCLE,
        Ok(nanos) if value >= NANOSECOND_CYCLES => Duration::from_nanos(nanos),
        Ok(millis) => Duration::from_millis(millis),
    }
}

/// Why a device could not be started.
#[derive(Debug, Error)]
pub(crate) enum DeviceError {
    /// The device has no spec or no protocol.
    #[error("device {0} has no protocol")]
    NoProtocol(String),
    /// The protocol settings could not be decoded.
    #[error("device {device}: bad protocol settings")]
    Convert {
        /// The device.
        device: String,
        /// What failed.
        #[source]
        source: ConvertError,
    },
    /// The driver refused the protocol settings.
    #[error("device {device}: the driver refused its protocol settings")]
    Driver {
        /// The device.
        device: String,
        /// What failed.
        #[source]
        source: DriverError,
    },
}

/// The current twins of a device by property, shared between its task and
/// `GetDevice`. A std mutex: it is held only to copy values in or out.
pub(crate) type Twins = Arc<Mutex<BTreeMap<String, dmi::Twin>>>;

/// The desired value of each property: `spec.properties[].desired` (KubeEdge
/// v1.16+), or else the property's `status.twins[].observedDesired`, where
/// KubeEdge v1.15 manifests put it.
pub(crate) fn desired_values(device: &dmi::Device) -> BTreeMap<String, String> {
    let observed: HashMap<&str, &str> = device
        .status
        .iter()
        .flat_map(|status| &status.twins)
        .filter_map(|twin| {
            let value = twin.observed_desired.as_ref()?.value.as_str();
            Some((twin.property_name.as_str(), value))
        })
        .collect();
    device
        .spec
        .iter()
        .flat_map(|spec| &spec.properties)
        .map(|property| {
            let desired = property
                .desired
                .as_ref()
                .map(|desired| desired.value.as_str())
                .filter(|value| !value.is_empty())
                .or_else(|| observed.get(property.name.as_str()).copied())
                .unwrap_or_default();
            (property.name.clone(), desired.to_owned())
        })
        .collect()
}

/// What reaches a running device task.
#[derive(Debug)]
pub(crate) enum Command {
    /// New desired values by property; the changed ones are written.
    Desired(BTreeMap<String, String>),
}

/// One property the task drives.
struct Property<V> {
    /// The property's name.
    name: String,
    /// The value type, from the model or the visitor's `dataType`.
    data_type: Option<DataType>,
    /// The type twins carry.
    type_name: String,
    /// Whether the model forbids writing it.
    read_only: bool,
    /// Where it sits on the device.
    visitor: V,
    /// How often it is read and reported.
    collect: Duration,
    /// How often it is pushed.
    report: Duration,
    /// Whether it is reported to edgecore.
    report_to_cloud: bool,
    /// Where it is pushed, if anywhere.
    push: Option<Push>,
    /// The desired value last acted on.
    desired: String,
}

/// Work due on a cycle.
#[derive(Debug, Clone, Copy)]
enum Job {
    /// Read and report the properties of one collect group.
    Collect(usize),
    /// Read and push one property.
    Push(usize),
    /// Report the device's state.
    States,
}

/// A device's task.
pub(crate) struct DeviceTask<D: Driver> {
    /// The device's name.
    name: String,
    /// The device's namespace.
    namespace: String,
    /// The driver's connection.
    client: D::Client,
    /// The properties driven.
    properties: Vec<Property<D::Visitor>>,
    /// How often to report the device's state, if at all.
    states_cycle: Option<Duration>,
    /// The current twins.
    twins: Twins,
    /// edgecore.
    edgecore: Edgecore,
    /// Pushes values.
    pusher: Pusher,
    /// Counters.
    metrics: Arc<Metrics>,
}

impl<D: Driver> DeviceTask<D> {
    /// Prepares `device` (of `model`, if known) for `driver`.
    pub(crate) fn new(
        driver: &D,
        device: &dmi::Device,
        model: Option<&dmi::DeviceModel>,
        edgecore: Edgecore,
        pusher: Pusher,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, Twins), DeviceError> {
        let name = device.name.clone();
        let spec = device
            .spec
            .as_ref()
            .ok_or_else(|| DeviceError::NoProtocol(name.clone()))?;
        let protocol = spec
            .protocol
            .as_ref()
            .ok_or_else(|| DeviceError::NoProtocol(name.clone()))?;
        let protocol =
            protocol_config_to_json(protocol).map_err(|source| DeviceError::Convert {
                device: name.clone(),
                source,
            })?;
        let client = driver
            .new_client(&protocol)
            .map_err(|source| DeviceError::Driver {
                device: name.clone(),
                source,
            })?;

        let model_properties: HashMap<&str, &dmi::ModelProperty> = model
            .iter()
            .flat_map(|model| model.spec.iter().flat_map(|spec| &spec.properties))
            .map(|property| (property.name.as_str(), property))
            .collect();
        let desired = desired_values(device);
        let mut properties = Vec::new();
        for property in &spec.properties {
            let model_property = model_properties.get(property.name.as_str());
            match Self::property(driver, property, model_property.copied(), &desired) {
                Ok(prepared) => properties.push(prepared),
                Err(error) => tracing::error!(
                    device = %name,
                    property = %property.name,
                    error = %error,
                    "property skipped"
                ),
            }
        }

        let reported: HashMap<&str, &dmi::TwinProperty> = device
            .status
            .iter()
            .flat_map(|status| &status.twins)
            .filter_map(|twin| Some((twin.property_name.as_str(), twin.reported.as_ref()?)))
            .collect();
        let twins: BTreeMap<String, dmi::Twin> = properties
            .iter()
            .map(|property| {
                let twin = dmi::Twin {
                    property_name: property.name.clone(),
                    observed_desired: Some(twin_value(&property.desired, &property.type_name)),
                    reported: reported.get(property.name.as_str()).map(|&r| r.clone()),
                };
                (property.name.clone(), twin)
            })
            .collect();
        let twins = Arc::new(Mutex::new(twins));

        let states_cycle = device
            .status
            .as_ref()
            .filter(|status| status.report_to_cloud)
            .map(|status| cycle(status.report_cycle));
        let task = Self {
            name,
            namespace: device.namespace.clone(),
            client,
            properties,
            states_cycle,
            twins: Arc::clone(&twins),
            edgecore,
            pusher,
            metrics,
        };
        Ok((task, twins))
    }

    /// Prepares one property.
    fn property(
        driver: &D,
        property: &dmi::DeviceProperty,
        model: Option<&dmi::ModelProperty>,
        desired: &BTreeMap<String, String>,
    ) -> Result<Property<D::Visitor>, String> {
        let visitor = property
            .visitors
            .as_ref()
            .map(visitor_config_to_json)
            .transpose()
            .map_err(|error| format!("bad visitor settings: {error}"))?
            .unwrap_or_else(|| json!({"protocolName": "", "configData": {}}));
        let model_type = model.map(|model| model.r#type.as_str()).unwrap_or_default();
        let data_type = DataType::parse(model_type).or_else(|| {
            Settings::of(&visitor)
                .string("dataType")
                .and_then(|name| DataType::parse(&name))
        });
        let info = PropertyInfo {
            name: &property.name,
            data_type,
        };
        let parsed = driver
            .visitor(info, &visitor)
            .map_err(|error| error.to_string())?;
        let type_name = data_type.map(DataType::name).map_or_else(
            || {
                property
                    .desired
                    .as_ref()
                    .and_then(|desired| desired.metadata.get("type").cloned())
                    .unwrap_or_default()
            },
            str::to_owned,
        );
        let push = match property
            .push_method
            .as_ref()
            .map(Push::from_dmi)
            .transpose()
        {
            Ok(push) => push.flatten(),
            Err(error) => {
                tracing::warn!(property = %property.name, %error, "push method ignored");
                None
            }
        };
        Ok(Property {
            name: property.name.clone(),
            data_type,
            type_name,
            read_only: model.is_some_and(|model| model.access_mode == "ReadOnly"),
            visitor: parsed,
            collect: cycle(property.collect_cycle),
            report: cycle(property.report_cycle),
            report_to_cloud: property.report_to_cloud,
            push,
            desired: desired.get(&property.name).cloned().unwrap_or_default(),
        })
    }

    /// Runs until `cancel` fires, then disconnects.
    pub(crate) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        cancel: CancellationToken,
    ) {
        if !self.connect(&cancel).await {
            return;
        }
        for index in 0..self.properties.len() {
            tokio::select! {
                _ = cancel.cancelled() => return self.stop().await,
                _ = self.write_desired(index) => {}
            }
        }

        let (groups, mut jobs) = self.schedule();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(command) = commands.recv() => {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = self.apply(command) => {}
                    }
                }
                Some(job) = jobs.next() => {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = self.run_job(job, &groups) => {}
                    }
                }
                else => {
                    cancel.cancelled().await;
                    break;
                }
            }
        }
        self.stop().await;
    }

    /// Connects the client, retrying with backoff; false if cancelled.
    async fn connect(&mut self, cancel: &CancellationToken) -> bool {
        let mut delay = FIRST_RETRY;
        loop {
            let outcome = tokio::select! {
                _ = cancel.cancelled() => return false,
                outcome = self.client.init() => outcome,
            };
            match outcome {
                Ok(()) => {
                    tracing::info!(device = %self.name, "device connected");
                    return true;
                }
                Err(error) => tracing::warn!(
                    device = %self.name,
                    error = %error_chain(&error),
                    retry_in = ?delay,
                    "cannot connect to the device"
                ),
            }
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(MAX_RETRY);
        }
    }

    /// Disconnects the client.
    async fn stop(&mut self) {
        match tokio::time::timeout(STOP_TIMEOUT, self.client.stop()).await {
            Ok(Ok(())) => tracing::info!(device = %self.name, "device stopped"),
            Ok(Err(error)) => {
                tracing::warn!(device = %self.name, error = %error_chain(&error), "stopping failed");
            }
            Err(_) => tracing::warn!(device = %self.name, "stopping timed out"),
        }
    }

    /// The collect groups (property indexes by collect cycle) and the
    /// stream of due jobs. Every job first runs at once.
    fn schedule(&self) -> (Vec<Vec<usize>>, BoxStream<'static, Job>) {
        let mut by_cycle: BTreeMap<Duration, Vec<usize>> = BTreeMap::new();
        for (index, property) in self.properties.iter().enumerate() {
            if property.report_to_cloud {
                by_cycle.entry(property.collect).or_default().push(index);
            }
        }
        let ticks = |period: Duration, job: Job| -> BoxStream<'static, Job> {
            let mut interval = interval_at(Instant::now(), period);
            interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
            IntervalStream::new(interval).map(move |_| job).boxed()
        };
        let mut streams: Vec<BoxStream<'static, Job>> = by_cycle
            .keys()
            .enumerate()
            .map(|(group, period)| ticks(*period, Job::Collect(group)))
            .collect();
        streams.extend(
            self.properties
                .iter()
                .enumerate()
                .filter(|(_, property)| property.push.is_some())
                .map(|(index, property)| ticks(property.report, Job::Push(index))),
        );
        if let Some(period) = self.states_cycle {
            streams.push(ticks(period, Job::States));
        }
        (
            by_cycle.into_values().collect(),
            select_all(streams).boxed(),
        )
    }

    /// Does one job.
    async fn run_job(&mut self, job: Job, groups: &[Vec<usize>]) {
        match job {
            Job::Collect(group) => self.collect(&groups[group]).await,
            Job::Push(index) => self.push(index).await,
            Job::States => {
                let state = self.client.state().await;
                self.edgecore
                    .report_states(dmi::ReportDeviceStatesRequest {
                        device_name: self.name.clone(),
                        device_namespace: self.namespace.clone(),
                        state: state.name().to_owned(),
                    })
                    .await;
            }
        }
    }

    /// Reads property `index`; failures are logged and counted.
    async fn read(&mut self, index: usize) -> Option<Value> {
        let property = &self.properties[index];
        match self.client.read(&property.visitor).await {
            Ok(value) => Some(value),
            Err(error) => {
                let failures = self.metrics.read_failed();
                tracing::warn!(
                    device = %self.name,
                    property = %property.name,
                    error = %error_chain(&error),
                    failures,
                    "read failed"
                );
                None
            }
        }
    }

    /// Reads the properties `indexes` and reports those read.
    async fn collect(&mut self, indexes: &[usize]) {
        let mut twins = Vec::with_capacity(indexes.len());
        for &index in indexes {
            let Some(value) = self.read(index).await else {
                continue;
            };
            let property = &self.properties[index];
            let twin = dmi::Twin {
                property_name: property.name.clone(),
                observed_desired: Some(twin_value(&property.desired, &property.type_name)),
                reported: Some(twin_value(&value.to_string(), &property.type_name)),
            };
            tracing::debug!(device = %self.name, property = %property.name, value = %value, "read");
            self.twins
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(property.name.clone(), twin.clone());
            twins.push(twin);
        }
        if twins.is_empty() {
            return;
        }
        self.edgecore
            .report_status(dmi::ReportDeviceStatusRequest {
                device_name: self.name.clone(),
                device_namespace: self.namespace.clone(),
                reported_device: Some(dmi::DeviceStatus {
                    twins,
                    ..Default::default()
                }),
            })
            .await;
    }

    /// Reads property `index` and pushes it.
    async fn push(&mut self, index: usize) {
        let Some(value) = self.read(index).await else {
            return;
        };
        let property = &self.properties[index];
        let Some(push) = &property.push else {
            return;
        };
        if let Err(error) = self
            .pusher
            .push(push, &property.name, &value.to_string())
            .await
        {
            let failures = self.metrics.push_failed();
            tracing::warn!(
                device = %self.name,
                property = %property.name,
                error = %error_chain(&error),
                failures,
                "push failed"
            );
        }
    }

    /// Writes property `index`'s desired value, unless it is read-only or
    /// has none.
    async fn write_desired(&mut self, index: usize) {
        let property = &self.properties[index];
        if property.read_only || property.desired.is_empty() {
            return;
        }
        let value = Value::parse(
            property.data_type.unwrap_or(DataType::String),
            &property.desired,
        );
        let written = match value {
            Ok(value) => self.client.write(&property.visitor, &value).await,
            Err(error) => Err(error),
        };
        match written {
            Ok(()) => tracing::info!(
                device = %self.name,
                property = %property.name,
                value = %property.desired,
                "desired value written"
            ),
            Err(error) => {
                let failures = self.metrics.write_failed();
                tracing::warn!(
                    device = %self.name,
                    property = %property.name,
                    error = %error_chain(&error),
                    failures,
                    "writing the desired value failed"
                );
            }
        }
    }

    /// Applies a command.
    async fn apply(&mut self, command: Command) {
        match command {
            Command::Desired(desired) => {
                for index in 0..self.properties.len() {
                    let property = &mut self.properties[index];
                    let Some(value) = desired.get(&property.name) else {
                        continue;
                    };
                    if *value == property.desired {
                        continue;
                    }
                    property.desired.clone_from(value);
                    let observed = twin_value(value, &property.type_name);
                    if let Some(twin) = self
                        .twins
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get_mut(&property.name)
                    {
                        twin.observed_desired = Some(observed);
                    }
                    self.write_desired(index).await;
                }
            }
        }
    }
}

/// A twin value with the metadata KubeEdge's mappers attach: the type and
/// the time in milliseconds.
fn twin_value(value: &str, type_name: &str) -> dmi::TwinProperty {
    let timestamp = jiff::Timestamp::now().as_millisecond().to_string();
    dmi::TwinProperty {
        value: value.to_owned(),
        metadata: [
            ("type".to_owned(), type_name.to_owned()),
            ("timestamp".to_owned(), timestamp),
        ]
        .into(),
    }
}

/// An error and its sources, for a log line.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_accept_nanoseconds_and_milliseconds() {
        assert_eq!(cycle(0), Duration::from_secs(1));
        assert_eq!(cycle(-5), Duration::from_secs(1));
        assert_eq!(cycle(1000), Duration::from_secs(1));
        assert_eq!(cycle(10_000), Duration::from_secs(10));
        assert_eq!(cycle(3_600_000), Duration::from_secs(3600), "an hour in ms");
        assert_eq!(cycle(1_000_000_000), Duration::from_secs(1));
        assert_eq!(cycle(10_000_000_000), Duration::from_secs(10));
        assert_eq!(cycle(100_000_000), Duration::from_millis(100));
    }

    #[test]
    fn desired_values_come_from_the_spec_or_else_the_v1_15_status() {
        let property = |name: &str, desired: &str| dmi::DeviceProperty {
            name: name.into(),
            desired: Some(dmi::TwinProperty {
                value: desired.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let device = dmi::Device {
            spec: Some(dmi::DeviceSpec {
                properties: vec![property("a", "1"), property("b", ""), property("c", "")],
                ..Default::default()
            }),
            status: Some(dmi::DeviceStatus {
                twins: vec![dmi::Twin {
                    property_name: "b".into(),
                    observed_desired: Some(dmi::TwinProperty {
                        value: "2".into(),
                        ..Default::default()
                    }),
                    reported: None,
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let desired = desired_values(&device);
        assert_eq!(desired["a"], "1");
        assert_eq!(desired["b"], "2");
        assert_eq!(desired["c"], "");
    }
}
