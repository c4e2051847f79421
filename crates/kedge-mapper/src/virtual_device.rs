//! A driver for a simulated device of random values (devices.md §6.5),
//! KubeEdge's `virtualProtocol` example: its protocol settings are
//! ignored; each property's visitor gives only `dataType` (or the model
//! does). An `int` property reads as a random integer in `[0, max)`, where
//! `max` is the last value written (its desired value); a `float` property
//! reads as a random float in `[0, 1)`.

use serde_json::Value as Json;

use crate::driver::{DataType, DeviceClient, Driver, DriverError, PropertyInfo, Value};

/// The virtual-device driver.
#[derive(Debug, Default, Clone, Copy)]
pub struct VirtualDriver;

/// A property of a virtual device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualVisitor {
    /// The property's name (the key of its limit).
    name: String,
    /// What it reads as: `int` or `float`.
    data_type: DataType,
}

/// A virtual device: the upper limit of each `int` property.
#[derive(Debug, Default)]
pub struct VirtualClient {
    /// Limits by property.
    limits: std::collections::HashMap<String, i64>,
}

impl Driver for VirtualDriver {
    type Visitor = VirtualVisitor;
    type Client = VirtualClient;

    fn new_client(&self, _protocol: &Json) -> Result<VirtualClient, DriverError> {
        Ok(VirtualClient::default())
    }

    fn visitor(
        &self,
        property: PropertyInfo<'_>,
        _visitor: &Json,
    ) -> Result<VirtualVisitor, DriverError> {
        match property.data_type {
            Some(data_type @ (DataType::Int | DataType::Float)) => Ok(VirtualVisitor {
                name: property.name.to_owned(),
                data_type,
            }),
            other => Err(DriverError::Settings(format!(
                "dataType must be int or float, not {}",
                other.map_or("none", DataType::name)
            ))),
        }
    }
}

impl DeviceClient for VirtualClient {
    type Visitor = VirtualVisitor;

    async fn init(&mut self) -> Result<(), DriverError> {
        Ok(())
    }

    async fn read(&mut self, visitor: &VirtualVisitor) -> Result<Value, DriverError> {
        match visitor.data_type {
            DataType::Int => {
                let max = self.limits.get(&visitor.name).copied().unwrap_or(0);
                if max <= 0 {
                    return Err(DriverError::Value(format!(
                        "the limit of {} is {max}: write a positive desired value",
                        visitor.name
                    )));
                }
                Ok(Value::Int(rand::random_range(0..max)))
            }
            _ => Ok(Value::Float(rand::random::<f64>())),
        }
    }

    async fn write(&mut self, visitor: &VirtualVisitor, value: &Value) -> Result<(), DriverError> {
        if visitor.data_type != DataType::Int {
            return Ok(());
        }
        let max = value
            .as_i64()
            .ok_or_else(|| DriverError::Value(format!("{value:?} is not an integer")))?;
        self.limits.insert(visitor.name.clone(), max);
        Ok(())
    }

    async fn stop(&mut self) -> Result<(), DriverError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn ints_stay_below_the_desired_limit_and_floats_below_one() {
        let driver = VirtualDriver;
        let int = driver
            .visitor(
                PropertyInfo {
                    name: "random-int",
                    data_type: Some(DataType::Int),
                },
                &json!({}),
            )
            .expect("int");
        let float = driver
            .visitor(
                PropertyInfo {
                    name: "random-float",
                    data_type: Some(DataType::Float),
                },
                &json!({}),
            )
            .expect("float");
        let mut client = driver.new_client(&json!({})).expect("client");
        client.init().await.expect("init");
        assert!(client.read(&int).await.is_err(), "no limit yet");
        client.write(&int, &Value::Int(3)).await.expect("write");
        for _ in 0..50 {
            let Value::Int(value) = client.read(&int).await.expect("read") else {
                panic!("an int expected");
            };
            assert!((0..3).contains(&value));
            let Value::Float(value) = client.read(&float).await.expect("read") else {
                panic!("a float expected");
            };
            assert!((0.0..1.0).contains(&value));
        }
        assert!(
            driver
                .visitor(
                    PropertyInfo {
                        name: "s",
                        data_type: Some(DataType::String),
                    },
                    &json!({}),
                )
                .is_err()
        );
    }
}
