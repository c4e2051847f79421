//! The contract between the SDK and a protocol driver (devices.md §6.2).
//!
//! A [`Driver`] turns a device's protocol settings into a [`DeviceClient`]
//! and a property's visitor settings into the driver's own `Visitor`; the
//! SDK then owns the client in one task per device, so a client is never
//! used concurrently and needs no locking of its own. Values cross the
//! boundary as [`Value`]s, typed by the model's [`DataType`].

use std::fmt;
use std::future::Future;

use serde_json::Value as Json;
use thiserror::Error;

/// Why a driver could not do what was asked.
#[derive(Debug, Error)]
pub enum DriverError {
    /// The protocol or visitor settings are missing something or malformed.
    #[error("invalid settings: {0}")]
    Settings(String),
    /// A value could not be encoded for or decoded from the device.
    #[error("invalid value: {0}")]
    Value(String),
    /// The property cannot be written.
    #[error("not writable: {0}")]
    NotWritable(String),
    /// The device could not be reached or answered with an error.
    #[error("device error")]
    Device(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The device did not answer in time.
    #[error("the device did not answer within {0:?}")]
    Timeout(std::time::Duration),
}

impl DriverError {
    /// A device error from any error type.
    pub fn device(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Device(error.into())
    }
}

/// The type of a property's values, from the model (`INT`, `FLOAT`, ...)
/// or the visitor's `dataType`, in any case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    /// A 64-bit integer.
    Int,
    /// A 32-bit float.
    Float,
    /// A 64-bit float.
    Double,
    /// `true` or `false`.
    Boolean,
    /// Text.
    String,
    /// Raw bytes.
    Bytes,
}

impl DataType {
    /// Parses a type name in any case; `None` for unknown names.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "int" | "integer" => Self::Int,
            "float" => Self::Float,
            "double" => Self::Double,
            "boolean" | "bool" => Self::Boolean,
            "string" => Self::String,
            "bytes" => Self::Bytes,
            _ => return None,
        })
    }

    /// The lower-case name twins carry as their `type`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Int => "int",
            Self::Float => "float",
            Self::Double => "double",
            Self::Boolean => "boolean",
            Self::String => "string",
            Self::Bytes => "bytes",
        }
    }
}

/// A value read from or written to a device.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// An integer.
    Int(i64),
    /// A float (32-bit values are widened).
    Float(f64),
    /// A boolean.
    Boolean(bool),
    /// Text.
    String(String),
    /// Raw bytes.
    Bytes(Vec<u8>),
}

impl Value {
    /// Parses a twin's text (a desired value) as `data_type`, as KubeEdge's
    /// mapper framework converts desired values: `int` as a 64-bit integer,
    /// `float` as a float within 32-bit range, `boolean` as Go's
    /// `strconv.ParseBool` accepts (`1`, `t`, `TRUE`, `false`, ...).
    pub fn parse(data_type: DataType, text: &str) -> Result<Self, DriverError> {
        let invalid =
            || DriverError::Value(format!("{text:?} is not a valid {}", data_type.name()));
        match data_type {
            DataType::Int => text.trim().parse().map(Self::Int).map_err(|_| invalid()),
            DataType::Float => match text.trim().parse::<f32>() {
                Ok(float) if float.is_finite() => Ok(Self::Float(f64::from(float))),
                _ => Err(invalid()),
            },
            DataType::Double => match text.trim().parse::<f64>() {
                Ok(float) if float.is_finite() => Ok(Self::Float(float)),
                _ => Err(invalid()),
            },
            DataType::Boolean => match text.trim() {
                "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(Self::Boolean(true)),
                "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(Self::Boolean(false)),
                _ => Err(invalid()),
            },
            DataType::String => Ok(Self::String(text.to_owned())),
            DataType::Bytes => Ok(Self::Bytes(text.as_bytes().to_vec())),
        }
    }

    /// The value as an integer, if it is a number or a boolean (floats are
    /// rounded).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Self::Int(int) => Some(*int),
            // Rounded, then saturated to the i64 range by the cast.
            Self::Float(float) if float.is_finite() => Some(float.round() as i64),
            Self::Boolean(flag) => Some(i64::from(*flag)),
            _ => None,
        }
    }

    /// The value as a float, if it is a number or a boolean.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            // Integers beyond 2^53 round, as any float conversion does.
            Self::Int(int) => Some(*int as f64),
            Self::Float(float) => Some(*float),
            Self::Boolean(flag) => Some(f64::from(u8::from(*flag))),
            _ => None,
        }
    }

    /// The value as a boolean: booleans, and numbers (non-zero is true).
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Self::Boolean(flag) => Some(*flag),
            Self::Int(int) => Some(*int != 0),
            Self::Float(float) => Some(*float != 0.0),
            _ => None,
        }
    }
}

/// The text twins carry, as KubeEdge's mapper framework writes it: numbers
/// in their shortest decimal form without exponent, text and bytes as they
/// are.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Int(int) => write!(f, "{int}"),
            Self::Float(float) => write!(f, "{float}"),
            Self::Boolean(flag) => write!(f, "{flag}"),
            Self::String(text) => f.write_str(text),
            Self::Bytes(bytes) => f.write_str(&String::from_utf8_lossy(bytes)),
        }
    }
}

/// The state of a device, as reported with `ReportDeviceStates`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceState {
    /// Working.
    Ok,
    /// Reachable.
    Online,
    /// Not reachable.
    Offline,
    /// Connected but not answering.
    Disconnected,
    /// Not known.
    Unknown,
}

impl DeviceState {
    /// The name KubeEdge uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Online => "online",
            Self::Offline => "offline",
            Self::Disconnected => "disconnected",
            Self::Unknown => "unknown",
        }
    }
}

/// What a driver learns about a property besides its visitor settings.
#[derive(Debug, Clone, Copy)]
pub struct PropertyInfo<'a> {
    /// The property's name.
    pub name: &'a str,
    /// The value type from the model, if the model gives a known one.
    pub data_type: Option<DataType>,
}

/// A protocol driver: it connects to devices and reads their visitor
/// settings. One driver serves every device of the mapper.
pub trait Driver: Send + Sync + 'static {
    /// Where a property sits on a device, parsed from its visitor settings.
    type Visitor: Send + Sync + 'static;
    /// A connection to one device.
    type Client: DeviceClient<Visitor = Self::Visitor>;

    /// A client for the device whose protocol settings are `protocol`,
    /// `{"protocolName": …, "configData": {…}}` (KubeEdge's `NewClient`).
    /// It need not connect yet: [`DeviceClient::init`] does.
    fn new_client(&self, protocol: &Json) -> Result<Self::Client, DriverError>;

    /// Parses a property's visitor settings,
    /// `{"protocolName": …, "configData": {…}}`.
    fn visitor(
        &self,
        property: PropertyInfo<'_>,
        visitor: &Json,
    ) -> Result<Self::Visitor, DriverError>;
}

/// A connection to one device, owned by the device's task.
pub trait DeviceClient: Send + 'static {
    /// The driver's visitor type.
    type Visitor: Send + Sync + 'static;

    /// Connects to the device (KubeEdge's `InitDevice`). The SDK retries
    /// with backoff until it succeeds or the device is stopped.
    fn init(&mut self) -> impl Future<Output = Result<(), DriverError>> + Send;

    /// Reads the property at `visitor` (`GetDeviceData`).
    fn read(
        &mut self,
        visitor: &Self::Visitor,
    ) -> impl Future<Output = Result<Value, DriverError>> + Send;

    /// Writes `value` to the property at `visitor` (`SetDeviceData`).
    fn write(
        &mut self,
        visitor: &Self::Visitor,
        value: &Value,
    ) -> impl Future<Output = Result<(), DriverError>> + Send;

    /// Disconnects (`StopDevice`).
    fn stop(&mut self) -> impl Future<Output = Result<(), DriverError>> + Send;

    /// The device's state (`GetDeviceStates`); `ok` unless the driver knows
    /// better.
    fn state(&mut self) -> impl Future<Output = DeviceState> + Send {
        async { DeviceState::Ok }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desired_values_parse_by_type() {
        assert_eq!(
            Value::parse(DataType::Int, "20").expect("int"),
            Value::Int(20)
        );
        assert!(Value::parse(DataType::Int, "2.5").is_err());
        assert_eq!(
            Value::parse(DataType::Float, "0.5").expect("float"),
            Value::Float(0.5)
        );
        assert!(Value::parse(DataType::Float, "1e39").is_err(), "beyond f32");
        assert_eq!(
            Value::parse(DataType::Double, "1e39").expect("double"),
            Value::Float(1e39)
        );
        assert_eq!(
            Value::parse(DataType::Boolean, "T").expect("bool"),
            Value::Boolean(true)
        );
        assert!(Value::parse(DataType::Boolean, "yes").is_err());
        assert_eq!(
            Value::parse(DataType::String, "on").expect("string"),
            Value::String("on".into())
        );
        assert_eq!(DataType::parse("INT"), Some(DataType::Int));
        assert_eq!(DataType::parse("stream"), None);
    }

    #[test]
    fn values_print_as_twins_carry_them() {
        assert_eq!(Value::Int(-3).to_string(), "-3");
        assert_eq!(Value::Float(21.5).to_string(), "21.5");
        assert_eq!(Value::Float(1e21).to_string(), "1000000000000000000000");
        assert_eq!(Value::Float(3.0).to_string(), "3");
        assert_eq!(Value::Boolean(true).to_string(), "true");
        assert_eq!(Value::Bytes(b"ab".to_vec()).to_string(), "ab");
    }
}
