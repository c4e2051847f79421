//! `Device` and `DeviceModel` resources to their DMI form, and DMI
//! configurations back to JSON (devices.md §5.5).
//!
//! KubeEdge converts by a JSON round trip through the generated Go structs,
//! whose decoder matches keys case-insensitively; here every field is
//! mapped explicitly, including the Device's `hostName`/`requestPath`,
//! which are `hostname`/`requestpath` in DMI. `nodeName` and
//! `deviceModelRef` do not travel; `deviceModelReference` is the model's
//! name. Objects a Go mapper dereferences without a check (the protocol,
//! each property's `desired` and `visitors`, their `configData`) are
//! always present, empty if the resource has none.
//!
//! Each `configData` value travels as a `google.protobuf.Any` wrapping a
//! well-known wrapper message ([`to_any`]): strings as `StringValue`,
//! booleans as `BoolValue`, numbers as `FloatValue` like KubeEdge (which
//! decodes every JSON number as a 64-bit float and sends it as a 32-bit
//! one), except integers too large for a 32-bit float to hold exactly,
//! which go as `Int64Value` instead of losing digits. Objects, arrays and
//! nulls are refused, as in KubeEdge, where the device is then not sent.
//! [`from_any`] is the inverse a mapper uses; it also accepts the other
//! wrappers (`Int32Value`, `DoubleValue`, the unsigned ones).

use kedge_apis::devices as crd;
use prost::Message;
use prost_types::Any;
use serde::Deserialize;
use serde_json::{Map, Number, Value};
use thiserror::Error;

use crate::v1beta1 as dmi;

/// The type URL prefix of the well-known wrapper messages.
pub const WRAPPER_TYPE_URL_PREFIX: &str = "type.googleapis.com/google.protobuf.";

/// The largest integer magnitude a 32-bit float holds exactly (2^24).
const F32_EXACT_INTEGER: u64 = 1 << 24;

/// Why one configuration value could not be converted.
#[derive(Debug, Error)]
pub enum ValueError {
    /// The JSON value is an object, an array or null.
    #[error("{0} values are not supported: only strings, numbers and booleans are")]
    Unsupported(&'static str),
    /// The number is beyond the range of a 32-bit float.
    #[error("{0} is beyond the range of a 32-bit float")]
    FloatRange(f64),
    /// The `Any` wraps something other than a well-known wrapper message.
    #[error("{0} is not a supported wrapper type")]
    UnsupportedType(String),
    /// The `Any`'s payload does not decode as its type.
    #[error("malformed {type_url}")]
    Malformed {
        /// The payload's declared type.
        type_url: String,
        /// What failed.
        #[source]
        source: prost::DecodeError,
    },
    /// A wrapped float is infinite or NaN, which JSON cannot express.
    #[error("{0} has no JSON form")]
    NotFinite(f64),
    /// A free-form settings object does not have the expected shape.
    #[error("unexpected settings")]
    Shape(#[source] serde_json::Error),
}

/// Why a resource or a DMI configuration could not be converted.
#[derive(Debug, Error)]
#[error("cannot convert {path}")]
pub struct ConvertError {
    /// Where the offending value is, such as
    /// `spec.properties[temperature].visitors.configData.offset`.
    pub path: String,
    /// What is wrong with it.
    #[source]
    pub reason: ValueError,
}

impl ConvertError {
    /// An error at `path`.
    fn at(path: impl Into<String>, reason: ValueError) -> Self {
        Self {
            path: path.into(),
            reason,
        }
    }
}

/// Packs `message` as an `Any` of the wrapper type `name` (such as
/// `StringValue`).
fn wrap(name: &str, message: &impl Message) -> Any {
    Any {
        type_url: format!("{WRAPPER_TYPE_URL_PREFIX}{name}"),
        value: message.encode_to_vec(),
    }
}

/// One `configData` value as KubeEdge's edgecore sends it (see the module
/// documentation for the number rule).
pub fn to_any(value: &Value) -> Result<Any, ValueError> {
    match value {
        Value::String(text) => Ok(wrap("StringValue", text)),
        Value::Bool(flag) => Ok(wrap("BoolValue", flag)),
        Value::Number(number) => {
            if let Some(integer) = number.as_i64()
                && integer.unsigned_abs() > F32_EXACT_INTEGER
            {
                return Ok(wrap("Int64Value", &integer));
            }
            let float = number.as_f64().unwrap_or_default();
            if float.abs() > f64::from(f32::MAX) {
                return Err(ValueError::FloatRange(float));
            }
            // In range by the check above: the narrowing only rounds.
            Ok(wrap("FloatValue", &(float as f32)))
        }
        Value::Null => Err(ValueError::Unsupported("null")),
        Value::Array(_) => Err(ValueError::Unsupported("array")),
        Value::Object(_) => Err(ValueError::Unsupported("object")),
    }
}

/// Decodes a wrapper message of type `T` from `any`'s payload.
fn unwrap_any<T: Message + Default>(any: &Any) -> Result<T, ValueError> {
    T::decode(any.value.as_slice()).map_err(|source| ValueError::Malformed {
        type_url: any.type_url.clone(),
        source,
    })
}

/// A float as the JSON number with the fewest digits that reads back as
/// the same float: an integer when it is one (so that it deserialises
/// into integer fields), a decimal otherwise.
fn float_number(float: f64, shortest: &str) -> Result<Value, ValueError> {
    if !float.is_finite() {
        return Err(ValueError::NotFinite(float));
    }
    // Integral and within ±2^53, so the conversion is exact.
    if float.fract() == 0.0 && float.abs() < 9_007_199_254_740_992.0 {
        return Ok(Value::from(float as i64));
    }
    let decimal = shortest.parse::<f64>().unwrap_or(float);
    Number::from_f64(decimal)
        .map(Value::Number)
        .ok_or(ValueError::NotFinite(float))
}

/// One DMI `configData` value as JSON: the inverse of [`to_any`], as a
/// mapper decodes it. A `FloatValue` becomes the shortest decimal that
/// reads back as the same 32-bit float (so `0.1` stays `0.1`), an integer
/// when it is one.
pub fn from_any(any: &Any) -> Result<Value, ValueError> {
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    match name {
        "google.protobuf.StringValue" => unwrap_any::<String>(any).map(Value::from),
        "google.protobuf.BoolValue" => unwrap_any::<bool>(any).map(Value::from),
        "google.protobuf.Int32Value" => unwrap_any::<i32>(any).map(Value::from),
        "google.protobuf.Int64Value" => unwrap_any::<i64>(any).map(Value::from),
        "google.protobuf.UInt32Value" => unwrap_any::<u32>(any).map(Value::from),
        "google.protobuf.UInt64Value" => unwrap_any::<u64>(any).map(Value::from),
        "google.protobuf.FloatValue" => {
            let float = unwrap_any::<f32>(any)?;
            float_number(f64::from(float), &float.to_string())
        }
        "google.protobuf.DoubleValue" => {
            let float = unwrap_any::<f64>(any)?;
            float_number(float, &float.to_string())
        }
        _ => Err(ValueError::UnsupportedType(any.type_url.clone())),
    }
}

/// A resource's `configData` as DMI's `CustomizedValue`; `path` names it in
/// errors.
fn customized_value(
    config: Option<&crd::CustomizedValue>,
    path: &str,
) -> Result<dmi::CustomizedValue, ConvertError> {
    let data = config
        .into_iter()
        .flatten()
        .map(|(key, value)| {
            to_any(value)
                .map(|any| (key.clone(), any))
                .map_err(|reason| ConvertError::at(format!("{path}.{key}"), reason))
        })
        .collect::<Result<_, _>>()?;
    Ok(dmi::CustomizedValue { data })
}

/// A DMI `CustomizedValue` as a JSON object, each value decoded with
/// [`from_any`]; `path` names it in errors.
pub fn customized_value_to_json(
    config: &dmi::CustomizedValue,
    path: &str,
) -> Result<Map<String, Value>, ConvertError> {
    config
        .data
        .iter()
        .map(|(key, any)| {
            from_any(any)
                .map(|value| (key.clone(), value))
                .map_err(|reason| ConvertError::at(format!("{path}.{key}"), reason))
        })
        .collect()
}

/// The JSON a mapper's driver reads its settings from:
/// `{"protocolName": …, "configData": {…}}`.
fn protocol_json(
    protocol_name: &str,
    config: Option<&dmi::CustomizedValue>,
    path: &str,
) -> Result<Value, ConvertError> {
    let config_data = match config {
        Some(config) => customized_value_to_json(config, &format!("{path}.configData"))?,
        None => Map::new(),
    };
    Ok(serde_json::json!({
        "protocolName": protocol_name,
        "configData": config_data,
    }))
}

/// A device's protocol as the JSON a mapper's driver reads:
/// `{"protocolName": …, "configData": {…}}`, the values decoded with
/// [`from_any`].
pub fn protocol_config_to_json(protocol: &dmi::ProtocolConfig) -> Result<Value, ConvertError> {
    protocol_json(
        &protocol.protocol_name,
        protocol.config_data.as_ref(),
        "spec.protocol",
    )
}

/// A property's visitor as the JSON a mapper's driver reads:
/// `{"protocolName": …, "configData": {…}}`, the values decoded with
/// [`from_any`].
pub fn visitor_config_to_json(visitor: &dmi::VisitorConfig) -> Result<Value, ConvertError> {
    protocol_json(
        &visitor.protocol_name,
        visitor.config_data.as_ref(),
        "visitors",
    )
}

/// A resource twin value as DMI's.
fn twin_property(property: &crd::TwinProperty) -> dmi::TwinProperty {
    dmi::TwinProperty {
        value: property.value.clone(),
        metadata: property
            .metadata
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
    }
}

/// The keys of `value`'s objects, at every depth, in lower case: Go's JSON
/// decoder matches keys regardless of case, and the Device resource spells
/// some of these settings differently from DMI (`TDEngine`, `dbName`).
fn lower_case_keys(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| (key.to_ascii_lowercase(), lower_case_keys(value)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Reads the free-form settings `map` as `T` (whose keys are lower case).
fn settings<T: for<'de> Deserialize<'de>>(
    map: &crd::CustomizedValue,
    path: &str,
) -> Result<T, ConvertError> {
    let value = lower_case_keys(&Value::Object(
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    ));
    serde_json::from_value(value).map_err(|error| ConvertError::at(path, ValueError::Shape(error)))
}

/// The database settings of a push method, keys in lower case.
#[derive(Deserialize, Default)]
#[serde(default)]
struct DbMethodSettings {
    /// InfluxDB 2.
    influxdb2: Option<Influxdb2Settings>,
    /// Redis.
    redis: Option<RedisSettings>,
    /// TDengine.
    tdengine: Option<TdEngineSettings>,
    /// MySQL.
    mysql: Option<MySqlSettings>,
}

/// InfluxDB 2 settings.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Influxdb2Settings {
    /// Where the database is.
    influxdb2clientconfig: Option<Influxdb2ClientSettings>,
    /// How values become points.
    influxdb2dataconfig: Option<Influxdb2DataSettings>,
}

/// Where an InfluxDB 2 database is.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Influxdb2ClientSettings {
    /// The server's URL.
    url: String,
    /// The organisation.
    org: String,
    /// The bucket.
    bucket: String,
}

/// How values become InfluxDB points.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Influxdb2DataSettings {
    /// The measurement.
    measurement: String,
    /// The tags.
    tag: std::collections::HashMap<String, String>,
    /// The field holding the value.
    fieldkey: String,
}

/// Redis settings.
#[derive(Deserialize, Default)]
#[serde(default)]
struct RedisSettings {
    /// Where the server is.
    redisclientconfig: Option<RedisClientSettings>,
}

/// Where a Redis server is.
#[derive(Deserialize, Default)]
#[serde(default)]
struct RedisClientSettings {
    /// host:port.
    addr: String,
    /// The database number.
    db: i32,
    /// The pool size.
    poolsize: i32,
    /// The least number of idle connections.
    minidleconns: i32,
}

/// TDengine settings.
#[derive(Deserialize, Default)]
#[serde(default)]
struct TdEngineSettings {
    /// Where the server is.
    tdengineclientconfig: Option<TdEngineClientSettings>,
}

/// Where a TDengine server is.
#[derive(Deserialize, Default)]
#[serde(default)]
struct TdEngineClientSettings {
    /// host:port.
    addr: String,
    /// The database.
    dbname: String,
}

/// MySQL settings.
#[derive(Deserialize, Default)]
#[serde(default)]
struct MySqlSettings {
    /// Where the server is.
    mysqlclientconfig: Option<MySqlClientSettings>,
}

/// Where a MySQL server is.
#[derive(Deserialize, Default)]
#[serde(default)]
struct MySqlClientSettings {
    /// host:port.
    addr: String,
    /// The database.
    database: String,
    /// The user.
    username: String,
}

/// OpenTelemetry settings.
#[derive(Deserialize, Default)]
#[serde(default)]
struct OtelSettings {
    /// The collector's endpoint URL.
    endpointurl: String,
}

/// A resource's database settings as DMI's.
fn db_method(settings: DbMethodSettings) -> dmi::DbMethod {
    dmi::DbMethod {
        influxdb2: settings.influxdb2.map(|influx| dmi::DbMethodInfluxdb2 {
            influxdb2_client_config: influx.influxdb2clientconfig.map(|client| {
                dmi::Influxdb2ClientConfig {
                    url: client.url,
                    org: client.org,
                    bucket: client.bucket,
                }
            }),
            influxdb2_data_config: influx.influxdb2dataconfig.map(|data| {
                dmi::Influxdb2DataConfig {
                    measurement: data.measurement,
                    tag: data.tag,
                    field_key: data.fieldkey,
                }
            }),
        }),
        redis: settings.redis.map(|redis| dmi::DbMethodRedis {
            redis_client_config: redis
                .redisclientconfig
                .map(|client| dmi::RedisClientConfig {
                    addr: client.addr,
                    db: client.db,
                    poolsize: client.poolsize,
                    min_idle_conns: client.minidleconns,
                }),
        }),
        tdengine: settings.tdengine.map(|td| dmi::DbMethodTdEngine {
            td_engine_client_config: td.tdengineclientconfig.map(|client| {
                dmi::TdEngineClientConfig {
                    addr: client.addr,
                    dbname: client.dbname,
                }
            }),
        }),
        mysql: settings.mysql.map(|mysql| dmi::DbMethodMySql {
            mysql_client_config: mysql
                .mysqlclientconfig
                .map(|client| dmi::MySqlClientConfig {
                    addr: client.addr,
                    database: client.database,
                    user_name: client.username,
                }),
        }),
    }
}

/// A property's push method as DMI's; `path` names it in errors.
fn push_method(push: &crd::PushMethod, path: &str) -> Result<dmi::PushMethod, ConvertError> {
    let db_method = push
        .db_method
        .as_ref()
        .map(|map| settings(map, &format!("{path}.dbMethod")).map(db_method))
        .transpose()?;
    let otel = push
        .otel
        .as_ref()
        .map(|map| settings::<OtelSettings>(map, &format!("{path}.otel")))
        .transpose()?
        .map(|otel| dmi::PushMethodOtel {
            endpoint_url: otel.endpointurl,
        });
    Ok(dmi::PushMethod {
        http: push.http.as_ref().map(|http| dmi::PushMethodHttp {
            hostname: http.host_name.clone(),
            port: http.port.unwrap_or_default(),
            requestpath: http.request_path.clone(),
            timeout: http.timeout.unwrap_or_default(),
        }),
        mqtt: push.mqtt.as_ref().map(|mqtt| dmi::PushMethodMqtt {
            address: mqtt.address.clone(),
            topic: mqtt.topic.clone(),
            qos: mqtt.qos.unwrap_or_default(),
            retained: mqtt.retained.unwrap_or_default(),
        }),
        db_method,
        otel,
        anomaly_detection: None,
    })
}

/// One device property as DMI's.
fn device_property(property: &crd::DeviceProperty) -> Result<dmi::DeviceProperty, ConvertError> {
    let path = format!("spec.properties[{}]", property.name);
    let visitors = property.visitors.as_ref();
    Ok(dmi::DeviceProperty {
        name: property.name.clone(),
        desired: Some(
            property
                .desired
                .as_ref()
                .map(twin_property)
                .unwrap_or_default(),
        ),
        visitors: Some(dmi::VisitorConfig {
            protocol_name: visitors
                .map(|visitors| visitors.protocol_name.clone())
                .unwrap_or_default(),
            config_data: Some(customized_value(
                visitors.and_then(|visitors| visitors.config_data.as_ref()),
                &format!("{path}.visitors.configData"),
            )?),
        }),
        report_cycle: property.report_cycle.unwrap_or_default(),
        collect_cycle: property.collect_cycle.unwrap_or_default(),
        report_to_cloud: property.report_to_cloud.unwrap_or_default(),
        push_method: property
            .push_method
            .as_ref()
            .map(|push| push_method(push, &format!("{path}.pushMethod")))
            .transpose()?,
    })
}

/// A Device as edgecore hands it to a mapper (`RegisterDevice`,
/// `UpdateDevice`, `MapperRegister`): fails on `configData` values DMI
/// cannot carry and on malformed database or OpenTelemetry settings.
pub fn device_to_dmi(device: &crd::Device) -> Result<dmi::Device, ConvertError> {
    let spec = &device.spec;
    let protocol = spec.protocol.as_ref();
    Ok(dmi::Device {
        name: device.metadata.name.clone().unwrap_or_default(),
        namespace: device.metadata.namespace.clone().unwrap_or_default(),
        spec: Some(dmi::DeviceSpec {
            device_model_reference: spec
                .device_model_ref
                .as_ref()
                .map(|model| model.name.clone())
                .unwrap_or_default(),
            protocol: Some(dmi::ProtocolConfig {
                protocol_name: protocol
                    .map(|protocol| protocol.protocol_name.clone())
                    .unwrap_or_default(),
                config_data: Some(customized_value(
                    protocol.and_then(|protocol| protocol.config_data.as_ref()),
                    "spec.protocol.configData",
                )?),
            }),
            properties: spec
                .properties
                .iter()
                .map(device_property)
                .collect::<Result<_, _>>()?,
            methods: spec
                .methods
                .iter()
                .map(|method| dmi::DeviceMethod {
                    name: method.name.clone(),
                    description: method.description.clone(),
                    property_names: method.property_names.clone(),
                })
                .collect(),
        }),
        status: Some(dmi::DeviceStatus {
            twins: device
                .status
                .iter()
                .flat_map(|status| &status.twins)
                .map(|twin| dmi::Twin {
                    property_name: twin.property_name.clone(),
                    observed_desired: twin.observed_desired.as_ref().map(twin_property),
                    reported: twin.reported.as_ref().map(twin_property),
                })
                .collect(),
            report_to_cloud: false,
            report_cycle: 0,
        }),
    })
}

/// A DeviceModel as edgecore hands it to a mapper. The model's protocol
/// does not travel (DMI's model has no such field); property types keep
/// the resource's spelling (`INT`, `FLOAT`, ...).
pub fn device_model_to_dmi(model: &crd::DeviceModel) -> dmi::DeviceModel {
    dmi::DeviceModel {
        name: model.metadata.name.clone().unwrap_or_default(),
        namespace: model.metadata.namespace.clone().unwrap_or_default(),
        spec: Some(dmi::DeviceModelSpec {
            properties: model
                .spec
                .properties
                .iter()
                .map(|property| dmi::ModelProperty {
                    name: property.name.clone(),
                    description: property.description.clone(),
                    r#type: property
                        .value_type
                        .map(|kind| kind.twin_type().to_ascii_uppercase())
                        .unwrap_or_default(),
                    access_mode: property
                        .access_mode
                        .map(|mode| match mode {
                            crd::AccessMode::ReadWrite => "ReadWrite",
                            crd::AccessMode::ReadOnly => "ReadOnly",
                        })
                        .unwrap_or_default()
                        .to_owned(),
                    minimum: property.minimum.clone(),
                    maximum: property.maximum.clone(),
                    unit: property.unit.clone(),
                })
                .collect(),
            commands: Vec::new(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;
    use serde_json::json;

    /// The §1.5 example device, with an HTTP push and string-typed visitor
    /// settings as KubeEdge's e2e fixtures write them.
    fn device() -> crd::Device {
        serde_json::from_value(json!({
            "apiVersion": "devices.kubeedge.io/v1beta1",
            "kind": "Device",
            "metadata": {"name": "thermo-1", "namespace": "default"},
            "spec": {
                "deviceModelRef": {"name": "thermo-model"},
                "nodeName": "edge-node",
                "protocol": {"protocolName": "modbus",
                    "configData": {"serialPort": "/dev/ttyS0", "baudRate": 9600, "slaveID": 1,
                                   "timeout": 0.1, "big": 123_456_789, "rtu": true}},
                "properties": [{
                    "name": "temperature",
                    "desired": {"value": "20", "metadata": {"type": "int"}},
                    "collectCycle": 1000,
                    "reportCycle": 2000,
                    "reportToCloud": true,
                    "visitors": {"protocolName": "modbus",
                        "configData": {"Register": "HoldingRegister", "Offset": "2", "limit": 1, "scale": 0.5}},
                    "pushMethod": {
                        "http": {"hostName": "http://127.0.0.1", "port": 8080, "requestPath": "/data", "timeout": 3},
                        "dbMethod": {"TDEngine": {"TDEngineClientConfig": {"addr": "127.0.0.1:6041", "dbName": "db"}},
                                     "influxdb2": {"influxdb2ClientConfig": {"url": "http://i", "org": "o", "bucket": "b"},
                                                   "influxdb2DataConfig": {"measurement": "m", "tag": {"k": "v"}, "fieldKey": "f"}}}
                    }
                }, {"name": "humidity"}],
                "methods": [{"name": "all", "propertyNames": ["temperature"]}]
            },
            "status": {"twins": [{"propertyName": "temperature",
                "reported": {"value": "0"},
                "observedDesired": {"value": "20", "metadata": {"type": "int"}}}]}
        }))
        .expect("device")
    }

    fn float_any(value: f32) -> Any {
        wrap("FloatValue", &value)
    }

    #[test]
    fn a_device_converts_field_by_field() {
        let converted = device_to_dmi(&device()).expect("convert");
        assert_eq!(converted.name, "thermo-1");
        assert_eq!(converted.namespace, "default");
        let spec = converted.spec.expect("spec");
        assert_eq!(spec.device_model_reference, "thermo-model");

        let protocol = spec.protocol.expect("protocol");
        assert_eq!(protocol.protocol_name, "modbus");
        let data = protocol.config_data.expect("config").data;
        assert_eq!(
            data["serialPort"],
            wrap("StringValue", &"/dev/ttyS0".to_owned())
        );
        assert_eq!(
            data["baudRate"].type_url,
            "type.googleapis.com/google.protobuf.FloatValue"
        );
        assert_eq!(data["baudRate"], float_any(9600.0));
        assert_eq!(data["timeout"], float_any(0.1));
        assert_eq!(data["rtu"], wrap("BoolValue", &true));
        // 123456789 is not a 32-bit float: it travels exactly instead.
        assert_eq!(data["big"], wrap("Int64Value", &123_456_789_i64));

        let property = &spec.properties[0];
        assert_eq!(property.name, "temperature");
        assert_eq!(property.desired.as_ref().expect("desired").value, "20");
        assert_eq!(property.collect_cycle, 1000);
        assert_eq!(property.report_cycle, 2000);
        assert!(property.report_to_cloud);
        let visitors = property.visitors.as_ref().expect("visitors");
        assert_eq!(visitors.protocol_name, "modbus");
        let visitor_data = &visitors.config_data.as_ref().expect("config").data;
        assert_eq!(visitor_data["Offset"], wrap("StringValue", &"2".to_owned()));
        assert_eq!(visitor_data["scale"], float_any(0.5));

        let push = property.push_method.as_ref().expect("push");
        let http = push.http.as_ref().expect("http");
        assert_eq!(
            (
                http.hostname.as_str(),
                http.port,
                http.requestpath.as_str(),
                http.timeout
            ),
            ("http://127.0.0.1", 8080, "/data", 3)
        );
        let db = push.db_method.as_ref().expect("db");
        let td = db.tdengine.as_ref().expect("tdengine");
        let td = td.td_engine_client_config.as_ref().expect("client");
        assert_eq!(
            (td.addr.as_str(), td.dbname.as_str()),
            ("127.0.0.1:6041", "db")
        );
        let influx = db.influxdb2.as_ref().expect("influx");
        let data_config = influx.influxdb2_data_config.as_ref().expect("data");
        assert_eq!(data_config.field_key, "f");
        assert_eq!(data_config.tag["k"], "v");

        // A property without desired or visitors still carries both, empty.
        let bare = &spec.properties[1];
        assert_eq!(bare.desired, Some(dmi::TwinProperty::default()));
        let bare_visitors = bare.visitors.as_ref().expect("visitors");
        assert!(
            bare_visitors
                .config_data
                .as_ref()
                .expect("config")
                .data
                .is_empty()
        );
        assert!(bare.push_method.is_none());

        assert_eq!(spec.methods[0].property_names, vec!["temperature"]);

        let twins = converted.status.expect("status").twins;
        assert_eq!(twins[0].property_name, "temperature");
        assert_eq!(twins[0].reported.as_ref().expect("reported").value, "0");
        let observed = twins[0].observed_desired.as_ref().expect("observed");
        assert_eq!(observed.metadata["type"], "int");
    }

    #[test]
    fn nested_config_data_is_refused_with_its_path() {
        let mut device = device();
        let visitors = device.spec.properties[0]
            .visitors
            .as_mut()
            .expect("visitors");
        visitors
            .config_data
            .as_mut()
            .expect("config")
            .insert("nested".into(), json!({"a": 1}));
        let error = device_to_dmi(&device).expect_err("nested object");
        assert_eq!(
            error.path,
            "spec.properties[temperature].visitors.configData.nested"
        );
        assert!(matches!(error.reason, ValueError::Unsupported("object")));

        assert!(matches!(
            to_any(&json!([1])),
            Err(ValueError::Unsupported("array"))
        ));
        assert!(matches!(
            to_any(&json!(null)),
            Err(ValueError::Unsupported("null"))
        ));
        assert!(matches!(
            to_any(&json!(1e300)),
            Err(ValueError::FloatRange(_))
        ));
    }

    #[test]
    fn a_model_converts_with_resource_spellings() {
        let model: crd::DeviceModel = serde_json::from_value(json!({
            "apiVersion": "devices.kubeedge.io/v1beta1",
            "kind": "DeviceModel",
            "metadata": {"name": "thermo-model", "namespace": "default"},
            "spec": {"protocol": "modbus", "properties": [
                {"name": "temperature", "type": "INT", "accessMode": "ReadWrite", "maximum": "100", "unit": "C"},
                {"name": "status", "type": "BOOLEAN", "accessMode": "ReadOnly"}
            ]}
        }))
        .expect("model");
        let converted = device_model_to_dmi(&model);
        assert_eq!(converted.name, "thermo-model");
        assert_eq!(converted.namespace, "default");
        let properties = converted.spec.expect("spec").properties;
        assert_eq!(
            properties[0],
            dmi::ModelProperty {
                name: "temperature".into(),
                r#type: "INT".into(),
                access_mode: "ReadWrite".into(),
                maximum: "100".into(),
                unit: "C".into(),
                ..Default::default()
            }
        );
        assert_eq!(
            (
                properties[1].r#type.as_str(),
                properties[1].access_mode.as_str()
            ),
            ("BOOLEAN", "ReadOnly")
        );
    }

    #[test]
    fn a_mapper_rebuilds_the_protocol_json() {
        let converted = device_to_dmi(&device()).expect("convert");
        let spec = converted.spec.expect("spec");
        let protocol = protocol_config_to_json(spec.protocol.as_ref().expect("protocol"))
            .expect("protocol json");
        assert_eq!(
            protocol,
            json!({"protocolName": "modbus", "configData": {
                "serialPort": "/dev/ttyS0", "baudRate": 9600, "slaveID": 1,
                "timeout": 0.1, "big": 123_456_789, "rtu": true}})
        );
        let visitor =
            visitor_config_to_json(spec.properties[0].visitors.as_ref().expect("visitors"))
                .expect("visitor json");
        assert_eq!(
            visitor,
            json!({"protocolName": "modbus", "configData": {
                "Register": "HoldingRegister", "Offset": "2", "limit": 1, "scale": 0.5}})
        );
    }

    #[test]
    fn from_any_decodes_every_wrapper_and_rejects_the_rest() {
        // 0.1 is not exact in 32 bits; the shortest decimal that reads back
        // as the same float is still 0.1.
        assert_eq!(from_any(&float_any(0.1)).expect("float"), json!(0.1));
        assert_eq!(from_any(&float_any(-2.5)).expect("float"), json!(-2.5));
        assert_eq!(
            from_any(&float_any(16_777_216.0)).expect("float"),
            json!(16_777_216)
        );
        assert_eq!(from_any(&float_any(0.0)).expect("zero"), json!(0));
        assert_eq!(
            from_any(&wrap("Int32Value", &-7_i32)).expect("i32"),
            json!(-7)
        );
        assert_eq!(
            from_any(&wrap("UInt64Value", &7_u64)).expect("u64"),
            json!(7)
        );
        assert_eq!(
            from_any(&wrap("DoubleValue", &1.25_f64)).expect("f64"),
            json!(1.25)
        );
        assert_eq!(
            from_any(&wrap("BoolValue", &false)).expect("bool"),
            json!(false)
        );
        assert_eq!(
            from_any(&wrap("StringValue", &"x".to_owned())).expect("string"),
            json!("x")
        );
        assert!(matches!(
            from_any(&float_any(f32::NAN)),
            Err(ValueError::NotFinite(_))
        ));
        assert!(matches!(
            from_any(&Any {
                type_url: "type.googleapis.com/google.protobuf.Struct".into(),
                value: vec![],
            }),
            Err(ValueError::UnsupportedType(_))
        ));
        assert!(matches!(
            from_any(&Any {
                type_url: "type.googleapis.com/google.protobuf.StringValue".into(),
                value: vec![0x0a, 0x05, b'a'],
            }),
            Err(ValueError::Malformed { .. })
        ));
        let error = customized_value_to_json(
            &dmi::CustomizedValue {
                data: [("bad".to_owned(), float_any(f32::INFINITY))].into(),
            },
            "configData",
        )
        .expect_err("infinite");
        assert_eq!(error.path, "configData.bad");
    }

    #[test]
    fn every_number_round_trips_through_dmi() {
        for value in [
            json!(1),
            json!(-40),
            json!(65535),
            json!(1.5),
            json!(1e-3),
            json!(3.4e38),
        ] {
            let back = from_any(&to_any(&value).expect("encode")).expect("decode");
            let expected = value.as_f64().expect("number");
            let got = back.as_f64().expect("number");
            assert!(
                ((got - expected) / expected).abs() < 1e-6,
                "{value} came back as {back}"
            );
        }
    }
}
