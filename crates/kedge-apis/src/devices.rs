//! `devices.kubeedge.io/v1beta1`: the `DeviceModel` and `Device` custom
//! resources (devices.md §1).
//!
//! The fields are KubeEdge v1.15's, plus the later v1beta1 additions that
//! change nothing for a v1.15 client (`status.state`,
//! `status.lastOnlineTime`, `spec.methods`, the model's
//! `protocolConfigData`). As in KubeEdge, the definitions have no status
//! subresource: the status is part of the object and written with a merge
//! patch, and a v1.15 manifest may seed `status.twins`.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group.
pub const GROUP: &str = "devices.kubeedge.io";

/// The served and stored version.
pub const VERSION: &str = "v1beta1";

/// Free-form protocol or visitor configuration: a JSON object of any keys
/// (KubeEdge's `CustomizedValue`), kept as given.
pub type CustomizedValue = BTreeMap<String, serde_json::Value>;

/// The schema of a [`CustomizedValue`]: an object whose fields the API
/// server keeps unpruned.
fn customized_value_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// What a kind of device offers: its protocol and its properties.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "devices.kubeedge.io",
    version = "v1beta1",
    kind = "DeviceModel",
    namespaced,
    doc = "A kind of device: the protocol it speaks and the properties it offers."
)]
#[serde(rename_all = "camelCase")]
pub struct DeviceModelSpec {
    /// The protocol devices of this model speak; it chooses the mapper.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// The properties devices of this model offer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub properties: Vec<ModelProperty>,
    /// Protocol configuration every device of the model starts from
    /// (KubeEdge v1.22).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_customized_value_schema")]
    pub protocol_config_data: Option<CustomizedValue>,
}

/// The schema of an optional [`CustomizedValue`].
fn optional_customized_value_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    customized_value_schema(generator)
}

/// One property of a device model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelProperty {
    /// The property's name; a device's property of the same name uses it.
    pub name: String,
    /// What the property means.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The type of the property's values.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub value_type: Option<PropertyType>,
    /// Whether the property may be written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_mode: Option<AccessMode>,
    /// The least value, as text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub minimum: String,
    /// The greatest value, as text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub maximum: String,
    /// The unit of the values.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub unit: String,
}

/// The type of a property's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum PropertyType {
    /// A 64-bit integer.
    Int,
    /// A 32-bit float.
    Float,
    /// A 64-bit float.
    Double,
    /// Text.
    String,
    /// `true` or `false`.
    Boolean,
    /// Raw bytes.
    Bytes,
    /// A media stream (KubeEdge v1.17).
    Stream,
}

impl PropertyType {
    /// The lower-case name twins and mappers use (`int`, `float`, ...).
    pub fn twin_type(self) -> &'static str {
        match self {
            Self::Int => "int",
            Self::Float => "float",
            Self::Double => "double",
            Self::String => "string",
            Self::Boolean => "boolean",
            Self::Bytes => "bytes",
            Self::Stream => "stream",
        }
    }
}

/// Whether a property may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AccessMode {
    /// Read and written.
    ReadWrite,
    /// Only read; mappers never write it.
    ReadOnly,
}

/// One device: its model, its node, how to reach it and which of its
/// properties to read and write.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "devices.kubeedge.io",
    version = "v1beta1",
    kind = "Device",
    namespaced,
    status = "DeviceStatus",
    doc = "A device: its model, the edge node it is attached to, and its properties."
)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSpec {
    /// The device's model, in the device's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_model_ref: Option<ModelReference>,
    /// The edge node the device is attached to; empty: none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    /// How the device is reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<ProtocolConfig>,
    /// The properties to read, report and write.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub properties: Vec<DeviceProperty>,
    /// Commands the device offers (KubeEdge v1.19).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<DeviceMethod>,
}

/// A reference to a device model by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ModelReference {
    /// The model's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// A protocol and its configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolConfig {
    /// The protocol's name; it chooses the mapper.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol_name: String,
    /// The protocol's settings (addresses, slave ids, serial settings ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_customized_value_schema")]
    pub config_data: Option<CustomizedValue>,
}

/// One property of a device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceProperty {
    /// The name of the model's property.
    pub name: String,
    /// The value the mapper writes to the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<TwinProperty>,
    /// Where the property sits on the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visitors: Option<ProtocolConfig>,
    /// How often to report: nanoseconds until KubeEdge v1.17, milliseconds
    /// since v1.18 (devices.md §1.2); zero means one second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_cycle: Option<i64>,
    /// How often to read the device, in the same units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collect_cycle: Option<i64>,
    /// Whether reported values go to the Device's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_to_cloud: Option<bool>,
    /// Where else the mapper pushes the values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_method: Option<PushMethod>,
}

/// A twin value and its metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TwinProperty {
    /// The value, as text.
    pub value: String,
    /// Metadata such as `timestamp` (ms) and `type`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// Where a mapper pushes a property's values besides its twin.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PushMethod {
    /// An HTTP endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<PushMethodHttp>,
    /// An MQTT broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<PushMethodMqtt>,
    /// A database (influxdb2, redis, TDengine, mysql): kept as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_customized_value_schema")]
    pub db_method: Option<CustomizedValue>,
    /// An OpenTelemetry endpoint (KubeEdge v1.19): kept as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_customized_value_schema")]
    pub otel: Option<CustomizedValue>,
}

/// Push to an HTTP endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PushMethodHttp {
    /// Scheme and host, such as `http://127.0.0.1`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host_name: String,
    /// The port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    /// The request path.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub request_path: String,
    /// The request timeout, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
}

/// Push to an MQTT broker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PushMethodMqtt {
    /// The broker, such as `tcp://127.0.0.1:1883`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// The topic.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub topic: String,
    /// The QoS level, 0 to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2))]
    pub qos: Option<i32>,
    /// Whether the broker retains the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained: Option<bool>,
}

/// A command a device offers (KubeEdge v1.19).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceMethod {
    /// The command's name.
    pub name: String,
    /// What it does.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The properties it acts on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub property_names: Vec<String>,
}

/// What the edge reported of a device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    /// One twin per reported property.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub twins: Vec<Twin>,
    /// The device's state as its mapper reports it (KubeEdge v1.18).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
    /// When the device was last seen online (KubeEdge v1.18).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_online_time: String,
}

/// The reported and observed-desired values of one property.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Twin {
    /// The property's name.
    pub property_name: String,
    /// The value the device holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<TwinProperty>,
    /// The desired value the mapper last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_desired: Option<TwinProperty>,
}

/// A definition as KubeEdge ships it: without a status subresource, so
/// that the status is written with the object.
fn without_status_subresource(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        version.subresources = None;
    }
    crd
}

/// The `devicemodels.devices.kubeedge.io` definition.
pub fn device_model_definition() -> CustomResourceDefinition {
    without_status_subresource(DeviceModel::crd())
}

/// The `devices.devices.kubeedge.io` definition.
pub fn device_definition() -> CustomResourceDefinition {
    without_status_subresource(Device::crd())
}

/// A device's id at the edge as KubeEdge v1.15 forms it: the bare name
/// (devices.md §0).
pub fn device_id(device: &Device) -> String {
    kube::ResourceExt::name_any(device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn definitions_match_kubeedge_names_and_scope() {
        let crd = device_definition();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("devices.devices.kubeedge.io")
        );
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.plural, "devices");
        assert_eq!(crd.spec.versions.len(), 1);
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1beta1");
        assert!(version.served && version.storage);
        assert!(version.subresources.is_none(), "no status subresource");
        let model = device_model_definition();
        assert_eq!(
            model.metadata.name.as_deref(),
            Some("devicemodels.devices.kubeedge.io")
        );
        assert_eq!(model.spec.names.plural, "devicemodels");
    }

    #[test]
    fn the_schema_enforces_enums_required_values_and_keeps_config_data() {
        let crd = device_model_definition();
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema");
        let property = schema
            .pointer("/openAPIV3Schema/properties/spec/properties/properties/items")
            .expect("property schema");
        assert_eq!(property["required"], json!(["name"]));
        assert_eq!(
            property["properties"]["type"]["enum"],
            json!([
                "INT", "FLOAT", "DOUBLE", "STRING", "BOOLEAN", "BYTES", "STREAM"
            ])
        );
        assert_eq!(
            property["properties"]["accessMode"]["enum"],
            json!(["ReadWrite", "ReadOnly"])
        );

        let crd = device_definition();
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema");
        let spec = schema
            .pointer("/openAPIV3Schema/properties/spec/properties")
            .expect("spec schema");
        assert_eq!(
            spec.pointer("/properties/items/properties/desired/required"),
            Some(&json!(["value"]))
        );
        assert_eq!(
            spec.pointer("/protocol/properties/configData/x-kubernetes-preserve-unknown-fields"),
            Some(&json!(true))
        );
        let twin = schema
            .pointer("/openAPIV3Schema/properties/status/properties/twins/items/properties")
            .expect("twin schema");
        assert_eq!(twin.pointer("/reported/required"), Some(&json!(["value"])));
    }

    #[test]
    fn the_v1_15_example_reads_and_writes_unchanged() {
        let manifest = json!({
            "apiVersion": "devices.kubeedge.io/v1beta1",
            "kind": "Device",
            "metadata": {"name": "thermo-1", "namespace": "default", "labels": {"description": "demo"}},
            "spec": {
                "deviceModelRef": {"name": "thermo-model"},
                "nodeName": "edge-node",
                "protocol": {"protocolName": "modbus",
                    "configData": {"serialPort": "/dev/ttyS0", "baudRate": 9600, "slaveID": 1}},
                "properties": [{
                    "name": "temperature",
                    "desired": {"value": "20"},
                    "collectCycle": 1_000_000_000_i64,
                    "reportCycle": 1_000_000_000_i64,
                    "reportToCloud": true,
                    "visitors": {"protocolName": "modbus",
                        "configData": {"register": "HoldingRegister", "offset": 2, "limit": 1, "scale": 1}},
                    "pushMethod": {"mqtt": {"address": "tcp://127.0.0.1:1883", "topic": "thermo", "qos": 0}}
                }]
            },
            "status": {"twins": [{"propertyName": "temperature",
                "reported": {"value": "0"},
                "observedDesired": {"value": "20", "metadata": {"type": "int"}}}]}
        });
        let device: Device = serde_json::from_value(manifest.clone()).expect("device");
        assert_eq!(device_id(&device), "thermo-1");
        assert_eq!(device.spec.node_name, "edge-node");
        let visitors = device.spec.properties[0]
            .visitors
            .as_ref()
            .expect("visitors");
        assert_eq!(
            visitors.config_data.as_ref().expect("config")["register"],
            "HoldingRegister"
        );
        assert_eq!(serde_json::to_value(&device).expect("json"), manifest);
    }
}
