//! Lenient reading of `configData` settings.
//!
//! KubeEdge's Go drivers decode settings into structs, so keys match
//! regardless of case (`slaveID`, `SlaveID`, `slaveid`); and manifests in
//! the wild write numbers and booleans as strings (`"Offset": "2"`,
//! `"IsSwap": "true"`, devices.md §6.4). [`Settings`] accepts both.

use serde_json::{Map, Value};

use crate::driver::DriverError;

/// A `configData` object whose keys match regardless of case and whose
/// values may be written as strings.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// The settings, keys in lower case.
    values: Map<String, Value>,
}

impl Settings {
    /// The `configData` of a driver settings object
    /// (`{"protocolName": …, "configData": {…}}`); empty if it has none.
    pub fn of(config: &Value) -> Self {
        let values = config
            .get("configData")
            .and_then(Value::as_object)
            .map(|data| {
                data.iter()
                    .map(|(key, value)| (key.to_ascii_lowercase(), value.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Self { values }
    }

    /// The value of `key` (any case), unless absent or null.
    fn get(&self, key: &str) -> Option<&Value> {
        self.values
            .get(&key.to_ascii_lowercase())
            .filter(|value| !value.is_null())
    }

    /// An error naming `key` and what it should be.
    fn invalid(key: &str, value: &Value, what: &str) -> DriverError {
        DriverError::Settings(format!("{key} must be {what}, not {value}"))
    }

    /// `key` as text; numbers and booleans are printed.
    pub fn string(&self, key: &str) -> Option<String> {
        self.get(key).map(|value| match value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        })
    }

    /// `key` as a float, from a number or a numeric string.
    pub fn f64(&self, key: &str) -> Result<Option<f64>, DriverError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        match value {
            Value::Number(number) => number.as_f64(),
            Value::String(text) => text.trim().parse().ok(),
            _ => None,
        }
        .map(Some)
        .ok_or_else(|| Self::invalid(key, value, "a number"))
    }

    /// `key` as an unsigned integer no larger than `max`, from an integral
    /// number (a float such as `9600.0` included: DMI carries numbers as
    /// 32-bit floats) or a numeric string.
    pub fn u64(&self, key: &str, max: u64) -> Result<Option<u64>, DriverError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let what = format!("an integer from 0 to {max}");
        let float = match value {
            Value::Number(number) => number.as_f64(),
            Value::String(text) => text.trim().parse::<f64>().ok(),
            _ => None,
        }
        .ok_or_else(|| Self::invalid(key, value, &what))?;
        if float.fract() != 0.0 || float < 0.0 || float > max as f64 {
            return Err(Self::invalid(key, value, &what));
        }
        // Integral and within 0..=max, checked above.
        Ok(Some(float as u64))
    }

    /// `key` as a boolean, from a boolean, a number (non-zero is true) or
    /// a string Go's `strconv.ParseBool` accepts.
    pub fn bool(&self, key: &str) -> Result<Option<bool>, DriverError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        match value {
            Value::Bool(flag) => Some(*flag),
            Value::Number(number) => number.as_f64().map(|n| n != 0.0),
            Value::String(text) => match text.trim() {
                "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
                "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
                _ => None,
            },
            _ => None,
        }
        .map(Some)
        .ok_or_else(|| Self::invalid(key, value, "a boolean"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_match_in_any_case_and_values_may_be_strings() {
        let settings = Settings::of(&json!({"protocolName": "modbus", "configData": {
            "Register": "HoldingRegister", "Offset": "2", "limit": 1, "Scale": "0.5",
            "IsSwap": "true", "isRegisterSwap": false, "baudRate": 9600.0, "none": null
        }}));
        assert_eq!(
            settings.string("register").as_deref(),
            Some("HoldingRegister")
        );
        assert_eq!(settings.u64("offset", 65535).expect("offset"), Some(2));
        assert_eq!(settings.u64("LIMIT", 65535).expect("limit"), Some(1));
        assert_eq!(
            settings.u64("baudrate", u64::MAX).expect("baud"),
            Some(9600)
        );
        assert_eq!(settings.f64("scale").expect("scale"), Some(0.5));
        assert_eq!(settings.bool("isswap").expect("swap"), Some(true));
        assert_eq!(settings.bool("IsRegisterSwap").expect("swap"), Some(false));
        assert_eq!(settings.string("none"), None);
        assert_eq!(settings.u64("missing", 1).expect("missing"), None);
        assert!(settings.u64("scale", 10).is_err(), "0.5 is not an integer");
        assert!(settings.u64("offset", 1).is_err(), "2 is beyond 1");
        assert!(settings.bool("register").is_err());
        assert!(Settings::of(&json!({})).string("x").is_none());
    }
}
