//! DeviceTwin (`twin`, group `twin`): the devices of this node and their
//! twins, kept in edgecore's SQLite database (devices.md §3).
//!
//! * From the cloud (through EdgeHub): membership updates add and remove
//!   devices ([`twins::Twins::membership`]).
//! * From EventBus: requests published on `$hw/events/...` topics — twin
//!   update and get, state update, membership get — answered on their
//!   result topics ([`twins::Twins::on_topic`]); the message's resource is
//!   the topic, base64url-encoded as KubeEdge's EventBus sends it, or
//!   plain.
//! * To the cloud: twin changes (`device/<id>/twin/edge_updated`) and
//!   states (`device/<id>/state/update`), which EdgeHub keeps on disk
//!   until the cloud acknowledges them.
//!
//! A Device object that MetaManager forwards adds the device too (and its
//! deletion removes it): the link delivers objects reliably, also to a
//! node that was offline, while membership updates are sent once. Device
//! and model objects also go to the mappers through [`dmi`], whose status
//! reports come back in as twin updates.

pub mod dmi;
pub mod store;
pub mod twins;
pub mod types;

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine as _;
use kedge_apis::config::edgecore::EdgeCoreConfig;
use kedge_bus::{Module, ModuleContext, ModuleError};
use kedge_message::{Message, group, module, now_millis, operation, resource_type, source};
use serde_json::Value;

use dmi::{Dmi, DmiMetrics, DmiSettings};
use kedge_transport::limits::RateLimit;
use twins::{Output, Twins};
use types::MembershipUpdate;

/// What DeviceTwin needs from edgecore.yaml.
#[derive(Debug, Clone)]
pub struct DeviceTwinSettings {
    /// This node's name.
    pub node_name: String,
    /// edgecore's SQLite database.
    pub database_path: PathBuf,
    /// The DMI socket and rate limit.
    pub dmi: DmiSettings,
}

impl DeviceTwinSettings {
    /// The settings edgecore.yaml gives.
    pub fn from_config(config: &EdgeCoreConfig) -> Self {
        Self {
            node_name: config
                .modules
                .edged
                .tailored_kubelet_flag
                .hostname_override
                .clone(),
            database_path: PathBuf::from(&config.database.data_source),
            dmi: DmiSettings {
                socket: config.modules.device_twin.dmi_socket(),
                rate: RateLimit {
                    per_second: u32::try_from(config.modules.device_twin.dmi_qps).unwrap_or(1),
                    burst: u32::try_from(config.modules.device_twin.dmi_burst).unwrap_or(1),
                },
            },
        }
    }
}

/// The DeviceTwin module.
#[derive(Debug)]
pub struct DeviceTwin {
    settings: DeviceTwinSettings,
    metrics: DmiMetrics,
}

impl DeviceTwin {
    /// DeviceTwin with `settings`.
    pub fn new(settings: DeviceTwinSettings) -> Self {
        Self {
            settings,
            metrics: DmiMetrics::default(),
        }
    }

    /// Counts DMI calls into `metrics` (registered with
    /// [`DmiMetrics::register`]) instead of private counters.
    #[must_use]
    pub fn with_metrics(mut self, metrics: DmiMetrics) -> Self {
        self.metrics = metrics;
        self
    }
}

/// What an inbound message asks of DeviceTwin.
#[derive(Debug, PartialEq)]
enum Inbound {
    /// A membership update from the cloud.
    Membership(MembershipUpdate),
    /// A Device object: its membership, and the desired values of its
    /// properties (none when it was deleted).
    Device(MembershipUpdate, String, BTreeMap<String, String>),
    /// A request published on an MQTT topic.
    Topic(String, Vec<u8>),
    /// Nothing DeviceTwin acts on.
    Ignored,
}

/// The MQTT topic a message from EventBus carries in its resource.
fn topic_of(resource: &str) -> Option<String> {
    if resource.starts_with("$hw/") {
        return Some(resource.to_owned());
    }
    [
        base64::engine::general_purpose::URL_SAFE,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ]
    .iter()
    .find_map(|engine| engine.decode(resource).ok())
    .and_then(|bytes| String::from_utf8(bytes).ok())
}

/// The JSON of a message's content: an object, or a string of JSON.
fn content_value(msg: &Message) -> Option<Value> {
    match &msg.content {
        Value::String(text) => serde_json::from_str(text).ok(),
        other => Some(other.clone()),
    }
}

/// The desired values of a Device object's properties, by name.
fn desired_values(device: &Value) -> BTreeMap<String, String> {
    device
        .pointer("/spec/properties")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|property| {
            let name = property.get("name")?.as_str()?;
            let value = property.pointer("/desired/value")?.as_str()?;
            (!value.is_empty()).then(|| (name.to_owned(), value.to_owned()))
        })
        .collect()
}

fn classify(msg: &Message) -> Inbound {
    let route = &msg.router;
    if msg.is_reply() {
        return Inbound::Ignored;
    }
    let from_cloud =
        route.source == module::DEVICE_CONTROLLER || route.source == source::EDGE_MANAGER;
    if from_cloud
        && route.resource.ends_with(resource_type::MEMBERSHIP)
        && let Some(update) = content_value(msg).and_then(|v| serde_json::from_value(v).ok())
    {
        return Inbound::Membership(update);
    }
    // A Device object (which, unlike membership, the link delivers
    // reliably, also to a node that was offline) is a member too.
    if route.source == module::META_MANAGER
        && let Some(object) = kedge_message::resource::EdgeResource::parse(&route.resource)
        && object.resource_type == resource_type::DEVICE
        && let Some(name) = object.name
    {
        let member = types::MemberDevice {
            id: name.to_owned(),
            name: name.to_owned(),
            description: msg
                .content
                .pointer("/metadata/labels/description")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            ..types::MemberDevice::default()
        };
        let deleted = route.operation == operation::DELETE;
        let desired = if deleted {
            BTreeMap::new()
        } else {
            content_value(msg)
                .map(|device| desired_values(&device))
                .unwrap_or_default()
        };
        let (added, removed) = if deleted {
            (None, Some(vec![member]))
        } else {
            (Some(vec![member]), None)
        };
        let update = MembershipUpdate {
            added_devices: added,
            removed_devices: removed,
        };
        return Inbound::Device(update, name.to_owned(), desired);
    }
    if (route.source == group::BUS || route.source == module::EVENT_BUS)
        && let Some(topic) = topic_of(&route.resource)
    {
        return Inbound::Topic(topic, msg.content_data().into_owned());
    }
    Inbound::Ignored
}

impl Module for DeviceTwin {
    fn name(&self) -> &str {
        module::DEVICE_TWIN
    }

    fn group(&self) -> &str {
        group::TWIN
    }

    async fn run(self, mut ctx: ModuleContext) -> Result<(), ModuleError> {
        let settings = self.settings;
        let mut twins =
            Twins::open(&settings.node_name, &settings.database_path).map_err(|error| {
                ModuleError::from(format!(
                    "cannot open the device tables in {}: {error}",
                    settings.database_path.display()
                ))
            })?;
        let dmi = Dmi::start(&ctx, &settings.dmi, &settings.database_path, self.metrics)
            .map_err(|error| ModuleError::from(format!("devicetwin: {error}")))?;
        ctx.set_ready();
        while let Some(msg) = ctx.recv().await {
            dmi.on_object(&msg).await;
            let outputs = match classify(&msg) {
                Inbound::Membership(update) => twins.membership(update, now_millis()),
                Inbound::Device(update, id, desired) => {
                    let mut outputs = twins.membership(update, now_millis());
                    outputs.extend(twins.cloud_desired(&id, &desired, now_millis()));
                    outputs
                }
                Inbound::Topic(topic, body) => twins.on_topic(&topic, &body, now_millis()),
                Inbound::Ignored => {
                    tracing::debug!(
                        source = %msg.router.source,
                        resource = %msg.router.resource,
                        "devicetwin: message not handled"
                    );
                    continue;
                }
            };
            for output in outputs {
                let (to, out) = match output {
                    Output::Publish { topic, payload } => (
                        module::EVENT_BUS,
                        Message::new(
                            module::DEVICE_TWIN,
                            group::BUS,
                            operation::PUBLISH,
                            topic,
                            Value::String(payload.to_string()),
                        ),
                    ),
                    Output::ToCloud(msg) => (module::EDGE_HUB, *msg),
                };
                if let Err(error) = ctx.bus().send(to, out).await {
                    tracing::debug!(%error, to, "devicetwin: message not handed on");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn messages_are_told_apart_by_source_and_resource() {
        let membership = Message::new(
            "devicecontroller",
            "twin",
            "update",
            "membership",
            json!({"added_devices": [{"id": "d1", "name": "d1"}], "removed_devices": null}),
        );
        assert!(matches!(classify(&membership), Inbound::Membership(_)));

        let topic = "$hw/events/device/d1/twin/get";
        let encoded = base64::engine::general_purpose::URL_SAFE.encode(topic);
        let from_bus = Message::new(
            "bus",
            "user",
            "response",
            encoded,
            Value::String(r#"{"event_id":"e"}"#.into()),
        );
        assert_eq!(
            classify(&from_bus),
            Inbound::Topic(topic.into(), br#"{"event_id":"e"}"#.to_vec())
        );
        let plain = Message::new("eventbus", "twin", "publish", topic, json!({}));
        assert!(matches!(classify(&plain), Inbound::Topic(..)));

        let reply = membership.ack();
        assert_eq!(classify(&reply), Inbound::Ignored);
        let device = Message::new(
            "metamanager",
            "twin",
            "insert",
            "default/device/d1",
            json!({"metadata": {"name": "d1", "labels": {"description": "demo"}},
                "spec": {"properties": [
                    {"name": "setpoint", "desired": {"value": "42"}},
                    {"name": "temperature"},
                    {"name": "empty", "desired": {"value": ""}}]}}),
        );
        let Inbound::Device(update, id, desired) = classify(&device) else {
            panic!("a device object is a member");
        };
        assert_eq!(id, "d1");
        assert_eq!(
            desired,
            BTreeMap::from([("setpoint".to_owned(), "42".to_owned())])
        );
        let added = update.added_devices.expect("added");
        assert_eq!(
            (added[0].id.as_str(), added[0].description.as_str()),
            ("d1", "demo")
        );
        let mut deleted = device.clone();
        deleted.router.operation = "delete".into();
        let Inbound::Device(update, _, desired) = classify(&deleted) else {
            panic!("a deleted device object is removed");
        };
        assert!(update.removed_devices.is_some());
        assert!(desired.is_empty());
        let model = Message::new(
            "metamanager",
            "twin",
            "insert",
            "default/devicemodel/m1",
            json!({}),
        );
        assert_eq!(classify(&model), Inbound::Ignored);
    }
}
