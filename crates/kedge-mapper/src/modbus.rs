//! The Modbus driver (devices.md §6.4): Modbus TCP and RTU, all four
//! tables, with the DMI-era decoding of `scale`, `isSwap` and
//! `isRegisterSwap` (see [`codec`]).
//!
//! Protocol `configData` (keys in any case, numbers may be strings):
//!
//! * RTU when `serialPort` is set: `serialPort`, `baudRate` (9600),
//!   `dataBits` (8), `stopBits` (1), `parity` (`even`/`E`, `odd`/`O`,
//!   anything else none);
//! * TCP otherwise: `address` (`host:port`), or `ip` with `port` (502);
//! * `slaveID` (1) and `timeout` per request (5 s; values of 10^8 and more
//!   are nanoseconds, smaller ones milliseconds, like cycles).
//!
//! Visitor `configData`: `register` (`CoilRegister`,
//! `DiscreteInputRegister`, `HoldingRegister`, `InputRegister`), `offset`,
//! `limit` (1), `scale` (1; 0 also means 1), `isSwap`, `isRegisterSwap`,
//! and `dataType` when the model gives no type (coils and discrete inputs
//! default to `boolean`, registers to `int`).
//!
//! Devices on the same serial port or TCP address share one connection (a
//! bus carries one request at a time), each addressing its own slave. A
//! failed connection is dropped and made again on the next request.

pub mod codec;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use serde_json::Value as Json;
use tokio_modbus::client::{Context, Reader as _, Writer as _};
use tokio_modbus::slave::{Slave, SlaveContext as _};

use self::codec::{Layout, Register, Write};
use crate::driver::{
    DataType, DeviceClient, DeviceState, Driver, DriverError, PropertyInfo, Value,
};
use crate::settings::Settings;

/// The request timeout when the protocol gives none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// How a bus is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Transport {
    /// Modbus TCP to `host:port`.
    Tcp(String),
    /// Modbus RTU on a serial port.
    Rtu {
        /// The port's path.
        port: String,
        /// Bits per second.
        baud_rate: u32,
        /// Data bits.
        data_bits: tokio_serial::DataBits,
        /// Stop bits.
        stop_bits: tokio_serial::StopBits,
        /// Parity.
        parity: tokio_serial::Parity,
    },
}

impl Transport {
    /// The key devices sharing the bus have in common.
    fn key(&self) -> &str {
        match self {
            Self::Tcp(address) => address,
            Self::Rtu { port, .. } => port,
        }
    }

    /// Opens a connection.
    async fn connect(&self) -> Result<Context, DriverError> {
        match self {
            Self::Tcp(address) => {
                let stream = tokio::net::TcpStream::connect(address)
                    .await
                    .map_err(DriverError::device)?;
                Ok(tokio_modbus::client::tcp::attach(stream))
            }
            Self::Rtu {
                port,
                baud_rate,
                data_bits,
                stop_bits,
                parity,
            } => {
                let builder = tokio_serial::new(port, *baud_rate)
                    .data_bits(*data_bits)
                    .stop_bits(*stop_bits)
                    .parity(*parity);
                let stream =
                    tokio_serial::SerialStream::open(&builder).map_err(DriverError::device)?;
                Ok(tokio_modbus::client::rtu::attach(stream))
            }
        }
    }
}

/// One bus: its transport and, while connected, its connection.
struct Link {
    /// How it is reached.
    transport: Transport,
    /// The connection; `None` until connected or after a failure. An async
    /// mutex: requests on one bus take turns.
    context: tokio::sync::Mutex<Option<Context>>,
}

/// A request on a bus.
#[derive(Debug, Clone)]
enum Request {
    /// Read `count` items of `register` from `offset`.
    Read {
        /// The table.
        register: Register,
        /// The first address.
        offset: u16,
        /// How many.
        count: u16,
    },
    /// Write at `offset`.
    Write {
        /// The first address.
        offset: u16,
        /// What to write.
        write: Write,
    },
}

/// Sends `request` on `context`: the bytes read (registers big-endian,
/// coils packed), nothing for writes.
async fn send(context: &mut Context, request: Request) -> tokio_modbus::Result<Vec<u8>> {
    let bits = |bits: Vec<bool>| codec::pack_bits(&bits);
    let words = |words: Vec<u16>| codec::register_bytes(&words);
    let none = |()| Vec::new();
    Ok(match request {
        Request::Read {
            register,
            offset,
            count,
        } => match register {
            Register::Coil => context.read_coils(offset, count).await?.map(bits),
            Register::DiscreteInput => context.read_discrete_inputs(offset, count).await?.map(bits),
            Register::Holding => context
                .read_holding_registers(offset, count)
                .await?
                .map(words),
            Register::Input => context
                .read_input_registers(offset, count)
                .await?
                .map(words),
        },
        Request::Write { offset, write } => match write {
            Write::Coil(on) => context.write_single_coil(offset, on).await?.map(none),
            Write::Registers(words) if words.len() == 1 => context
                .write_single_register(offset, words[0])
                .await?
                .map(none),
            Write::Registers(words) => context
                .write_multiple_registers(offset, &words)
                .await?
                .map(none),
        },
    })
}

impl Link {
    /// The open connection in `slot`, opening one if there is none.
    async fn open<'s>(
        &self,
        slot: &'s mut Option<Context>,
        timeout: Duration,
    ) -> Result<&'s mut Context, DriverError> {
        if slot.is_none() {
            let connected = tokio::time::timeout(timeout, self.transport.connect())
                .await
                .map_err(|_| DriverError::Timeout(timeout))??;
            *slot = Some(connected);
        }
        slot.as_mut()
            .ok_or_else(|| DriverError::device("not connected"))
    }

    /// Whether a connection is open.
    async fn connected(&self) -> bool {
        self.context.lock().await.is_some()
    }

    /// Opens the connection unless open.
    async fn ensure_connected(&self, timeout: Duration) -> Result<(), DriverError> {
        self.open(&mut *self.context.lock().await, timeout)
            .await
            .map(|_| ())
    }

    /// Sends `request` to `slave` (opening the connection first if
    /// needed). A transport failure or a timeout drops the connection; a
    /// Modbus exception keeps it.
    async fn call(
        &self,
        slave: u8,
        request: Request,
        timeout: Duration,
    ) -> Result<Vec<u8>, DriverError> {
        let mut slot = self.context.lock().await;
        let context = self.open(&mut slot, timeout).await?;
        context.set_slave(Slave(slave));
        match tokio::time::timeout(timeout, send(context, request)).await {
            Ok(Ok(Ok(bytes))) => Ok(bytes),
            Ok(Ok(Err(exception))) => Err(DriverError::device(format!(
                "the device answered with exception {exception}"
            ))),
            Ok(Err(error)) => {
                *slot = None;
                Err(DriverError::device(error))
            }
            Err(_) => {
                *slot = None;
                Err(DriverError::Timeout(timeout))
            }
        }
    }
}

/// The Modbus driver. Holds the open buses, so that devices on the same
/// one share it.
#[derive(Default)]
pub struct ModbusDriver {
    /// Buses by serial port or TCP address; entries die with their last
    /// device.
    links: Mutex<HashMap<String, Weak<Link>>>,
}

/// A Modbus device: a slave on a bus.
pub struct ModbusClient {
    /// The bus.
    link: Arc<Link>,
    /// The slave id.
    slave: u8,
    /// The timeout of one request.
    timeout: Duration,
}

/// Where a property sits: a table, an address range and a layout.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusVisitor {
    /// The first address.
    pub offset: u16,
    /// How many registers or coils.
    pub limit: u16,
    /// Table, type, scale and swaps.
    pub layout: Layout,
}

/// A duration setting: 10^8 and more nanoseconds, less milliseconds.
fn duration(settings: &Settings, key: &str, default: Duration) -> Result<Duration, DriverError> {
    Ok(match settings.u64(key, u64::MAX)? {
        None | Some(0) => default,
        Some(nanos) if nanos >= 100_000_000 => Duration::from_nanos(nanos),
        Some(millis) => Duration::from_millis(millis),
    })
}

/// The transport the protocol settings describe.
fn transport(settings: &Settings) -> Result<Transport, DriverError> {
    if let Some(port) = settings
        .string("serialPort")
        .filter(|port| !port.is_empty())
    {
        let baud_rate = settings
            .u64("baudRate", u64::from(u32::MAX))?
            .unwrap_or(9600);
        let data_bits = match settings.u64("dataBits", 8)?.unwrap_or(8) {
            5 => tokio_serial::DataBits::Five,
            6 => tokio_serial::DataBits::Six,
            7 => tokio_serial::DataBits::Seven,
            8 => tokio_serial::DataBits::Eight,
            other => {
                return Err(DriverError::Settings(format!(
                    "dataBits must be 5 to 8, not {other}"
                )));
            }
        };
        let stop_bits = match settings.u64("stopBits", 2)?.unwrap_or(1) {
            2 => tokio_serial::StopBits::Two,
            _ => tokio_serial::StopBits::One,
        };
        let parity = match settings
            .string("parity")
            .unwrap_or_default()
            .to_ascii_lowercase()
            .as_str()
        {
            "even" | "e" => tokio_serial::Parity::Even,
            "odd" | "o" => tokio_serial::Parity::Odd,
            _ => tokio_serial::Parity::None,
        };
        return Ok(Transport::Rtu {
            port,
            baud_rate: u32::try_from(baud_rate).unwrap_or(u32::MAX),
            data_bits,
            stop_bits,
            parity,
        });
    }
    if let Some(address) = settings.string("address").filter(|a| !a.is_empty()) {
        return Ok(Transport::Tcp(address));
    }
    if let Some(ip) = settings.string("ip").filter(|ip| !ip.is_empty()) {
        let port = settings.u64("port", u64::from(u16::MAX))?;
        return Ok(Transport::Tcp(match port {
            Some(port) => format!("{ip}:{port}"),
            None if ip.contains(':') => ip,
            None => format!("{ip}:502"),
        }));
    }
    Err(DriverError::Settings(
        "set serialPort (RTU), or address or ip (TCP)".into(),
    ))
}

impl Driver for ModbusDriver {
    type Visitor = ModbusVisitor;
    type Client = ModbusClient;

    fn new_client(&self, protocol: &Json) -> Result<ModbusClient, DriverError> {
        let settings = Settings::of(protocol);
        let transport = transport(&settings)?;
        let slave = settings.u64("slaveID", u64::from(u8::MAX))?.unwrap_or(1);
        let timeout = duration(&settings, "timeout", DEFAULT_TIMEOUT)?;
        let mut links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        links.retain(|_, link| link.strong_count() > 0);
        let link = match links.get(transport.key()).and_then(Weak::upgrade) {
            Some(link) => link,
            None => {
                let link = Arc::new(Link {
                    transport: transport.clone(),
                    context: tokio::sync::Mutex::new(None),
                });
                links.insert(transport.key().to_owned(), Arc::downgrade(&link));
                link
            }
        };
        Ok(ModbusClient {
            link,
            // At most 255, checked by the read above.
            slave: slave as u8,
            timeout,
        })
    }

    fn visitor(
        &self,
        property: PropertyInfo<'_>,
        visitor: &Json,
    ) -> Result<ModbusVisitor, DriverError> {
        let settings = Settings::of(visitor);
        let name = settings.string("register").unwrap_or_default();
        let register = Register::parse(&name).ok_or_else(|| {
            DriverError::Settings(format!(
                "register must be CoilRegister, DiscreteInputRegister, HoldingRegister or InputRegister, not {name:?}"
            ))
        })?;
        let max_count = if register.is_bits() { 2000 } else { 125 };
        let limit = match settings.u64("limit", max_count)? {
            None | Some(0) => 1,
            // At most 2000, checked by the read above.
            Some(limit) => limit as u16,
        };
        let offset = settings.u64("offset", u64::from(u16::MAX))?.unwrap_or(0) as u16;
        let scale = settings
            .f64("scale")?
            .filter(|scale| *scale != 0.0)
            .unwrap_or(1.0);
        let data_type = property.data_type.unwrap_or(if register.is_bits() {
            DataType::Boolean
        } else {
            DataType::Int
        });
        Ok(ModbusVisitor {
            offset,
            limit,
            layout: Layout {
                register,
                data_type,
                scale,
                swap: settings.bool("isSwap")?.unwrap_or(false),
                register_swap: settings.bool("isRegisterSwap")?.unwrap_or(false),
            },
        })
    }
}

impl DeviceClient for ModbusClient {
    type Visitor = ModbusVisitor;

    async fn init(&mut self) -> Result<(), DriverError> {
        self.link.ensure_connected(self.timeout).await
    }

    async fn read(&mut self, visitor: &ModbusVisitor) -> Result<Value, DriverError> {
        let read = Request::Read {
            register: visitor.layout.register,
            offset: visitor.offset,
            count: visitor.limit,
        };
        let bytes = self.link.call(self.slave, read, self.timeout).await?;
        codec::decode(&visitor.layout, bytes)
    }

    async fn write(&mut self, visitor: &ModbusVisitor, value: &Value) -> Result<(), DriverError> {
        let write = Request::Write {
            offset: visitor.offset,
            write: codec::encode(&visitor.layout, visitor.limit, value)?,
        };
        self.link
            .call(self.slave, write, self.timeout)
            .await
            .map(|_| ())
    }

    async fn stop(&mut self) -> Result<(), DriverError> {
        // The last device on the bus closes it.
        if Arc::strong_count(&self.link) == 1
            && let Some(mut context) = self.link.context.lock().await.take()
        {
            use tokio_modbus::client::Client as _;
            context.disconnect().await.map_err(DriverError::device)?;
        }
        Ok(())
    }

    async fn state(&mut self) -> DeviceState {
        if self.link.connected().await {
            DeviceState::Ok
        } else {
            DeviceState::Disconnected
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn protocol(config: Json) -> Json {
        json!({"protocolName": "modbus", "configData": config})
    }

    #[test]
    fn protocol_settings_choose_the_transport() {
        let settings = |config| Settings::of(&protocol(config));
        assert_eq!(
            transport(&settings(json!({"ip": "127.0.0.1", "port": 5020.0}))).expect("tcp"),
            Transport::Tcp("127.0.0.1:5020".into())
        );
        assert_eq!(
            transport(&settings(json!({"Address": "127.0.0.1:502"}))).expect("tcp"),
            Transport::Tcp("127.0.0.1:502".into())
        );
        assert_eq!(
            transport(&settings(json!({"IP": "127.0.0.1"}))).expect("tcp"),
            Transport::Tcp("127.0.0.1:502".into())
        );
        assert_eq!(
            transport(&settings(
                json!({"SerialPort": "/dev/ttyS0", "BaudRate": "19200",
                "parity": "even", "stopBits": 2, "dataBits": 7})
            ))
            .expect("rtu"),
            Transport::Rtu {
                port: "/dev/ttyS0".into(),
                baud_rate: 19200,
                data_bits: tokio_serial::DataBits::Seven,
                stop_bits: tokio_serial::StopBits::Two,
                parity: tokio_serial::Parity::Even,
            }
        );
        assert!(transport(&settings(json!({}))).is_err());
        assert!(transport(&settings(json!({"serialPort": "/dev/x", "dataBits": 9}))).is_err());
    }

    #[test]
    fn devices_on_one_bus_share_it() {
        let driver = ModbusDriver::default();
        let first = driver
            .new_client(&protocol(
                json!({"ip": "127.0.0.1", "port": 5020, "slaveID": 1}),
            ))
            .expect("first");
        let second = driver
            .new_client(&protocol(
                json!({"ip": "127.0.0.1", "port": 5020, "slaveID": "2"}),
            ))
            .expect("second");
        assert!(Arc::ptr_eq(&first.link, &second.link));
        assert_eq!((first.slave, second.slave), (1, 2));
        assert!(
            driver
                .new_client(&protocol(json!({"ip": "127.0.0.1", "slaveID": 256})))
                .is_err()
        );
    }

    #[test]
    fn visitors_read_leniently() {
        let driver = ModbusDriver::default();
        let info = |data_type| PropertyInfo {
            name: "p",
            data_type,
        };
        let visitor = driver
            .visitor(
                info(Some(DataType::Float)),
                &protocol(
                    json!({"Register": "HoldingRegister", "Offset": "2", "Limit": "2",
                    "Scale": "0.5", "IsSwap": "true", "IsRegisterSwap": true}),
                ),
            )
            .expect("visitor");
        assert_eq!(
            visitor,
            ModbusVisitor {
                offset: 2,
                limit: 2,
                layout: Layout {
                    register: Register::Holding,
                    data_type: DataType::Float,
                    scale: 0.5,
                    swap: true,
                    register_swap: true,
                },
            }
        );
        let coil = driver
            .visitor(
                info(None),
                &protocol(json!({"register": "coilregister", "offset": 3})),
            )
            .expect("coil");
        assert_eq!(coil.layout.data_type, DataType::Boolean);
        assert_eq!((coil.limit, coil.layout.scale), (1, 1.0));
        assert!(
            driver
                .visitor(info(None), &protocol(json!({"register": "Coils"})))
                .is_err()
        );
        assert!(
            driver
                .visitor(
                    info(None),
                    &protocol(json!({"register": "HoldingRegister", "limit": 126}))
                )
                .is_err()
        );
    }
}
