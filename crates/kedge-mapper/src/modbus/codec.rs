//! Register and coil contents to values and back (devices.md §6.4).
//!
//! Reading follows the DMI-era reference mapper: the raw bytes (registers
//! big-endian, coils packed eight to a byte, first coil in the lowest bit)
//! are first reordered — `isRegisterSwap` reverses the order of the 16-bit
//! registers, then `isSwap` swaps the two bytes of each register — and
//! then decoded by type:
//!
//! * `int`: the big-endian unsigned integer of 1, 2, 4 or 8 bytes, times
//!   `scale`, truncated toward zero;
//! * `float`: the 4 bytes as an IEEE 754 single (taken at its shortest
//!   decimal form, so 21.3 stays 21.3), times `scale`, rounded to 6
//!   decimals; `double`: the same with 8 bytes;
//! * `boolean`: for coils and discrete inputs the first bit; for registers
//!   whether any byte is set (the reference tests the first byte for 1,
//!   which reads a register holding 1 as false);
//! * `string`: the bytes as text, trailing NUL padding removed; `bytes`:
//!   the raw bytes.
//!
//! Writing is the inverse: the value is divided by `scale` (and rounded for
//! `int`), encoded big-endian into `limit` registers (negative integers in
//! two's complement), swapped as configured, and written.

use crate::driver::{DataType, DriverError, Value};

/// The Modbus table a property lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Register {
    /// Coils (read with function 01, written with 05).
    Coil,
    /// Discrete inputs (function 02; read-only).
    DiscreteInput,
    /// Holding registers (function 03, written with 06 or 16).
    Holding,
    /// Input registers (function 04; read-only).
    Input,
}

impl Register {
    /// Parses KubeEdge's names (`CoilRegister`, `DiscreteInputRegister`,
    /// `HoldingRegister`, `InputRegister`) in any case.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "coilregister" => Self::Coil,
            "discreteinputregister" => Self::DiscreteInput,
            "holdingregister" => Self::Holding,
            "inputregister" => Self::Input,
            _ => return None,
        })
    }

    /// Whether the table holds single bits rather than 16-bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, Self::Coil | Self::DiscreteInput)
    }
}

/// How a property's contents are laid out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Layout {
    /// The table.
    pub register: Register,
    /// The value type.
    pub data_type: DataType,
    /// The factor applied to the raw number when reading.
    pub scale: f64,
    /// Whether the two bytes of each register are swapped.
    pub swap: bool,
    /// Whether the order of the registers is reversed.
    pub register_swap: bool,
}

/// What to write to the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// One coil (function 05).
    Coil(bool),
    /// Registers (function 06 for one, 16 for more).
    Registers(Vec<u16>),
}

/// Packs coils into bytes as Modbus sends them: eight to a byte, the first
/// in the lowest bit.
pub fn pack_bits(bits: &[bool]) -> Vec<u8> {
    bits.chunks(8)
        .map(|chunk| {
            chunk
                .iter()
                .enumerate()
                .fold(0_u8, |byte, (bit, &on)| byte | (u8::from(on) << bit))
        })
        .collect()
}

/// Registers as big-endian bytes.
pub fn register_bytes(words: &[u16]) -> Vec<u8> {
    words.iter().flat_map(|word| word.to_be_bytes()).collect()
}

/// Reverses the order of the 16-bit registers in `bytes`.
fn swap_registers(bytes: &mut [u8]) {
    let registers = bytes.len() / 2;
    for i in 0..registers / 2 {
        let j = registers - 1 - i;
        bytes.swap(2 * i, 2 * j);
        bytes.swap(2 * i + 1, 2 * j + 1);
    }
}

/// Swaps the two bytes of each 16-bit register in `bytes`.
fn swap_bytes(bytes: &mut [u8]) {
    for pair in bytes.chunks_exact_mut(2) {
        pair.swap(0, 1);
    }
}

/// Rounds to 6 decimals, as the reference prints floats.
fn six_decimals(value: f64) -> f64 {
    let rounded = (value * 1e6).round() / 1e6;
    if rounded.is_finite() { rounded } else { value }
}

/// Decodes what was read (see the module documentation).
pub fn decode(layout: &Layout, mut bytes: Vec<u8>) -> Result<Value, DriverError> {
    if layout.register_swap {
        swap_registers(&mut bytes);
    }
    if layout.swap {
        swap_bytes(&mut bytes);
    }
    let length = |expected: &str| {
        DriverError::Value(format!(
            "{} bytes cannot hold a {} (expected {expected})",
            bytes.len(),
            layout.data_type.name()
        ))
    };
    match layout.data_type {
        DataType::Int => {
            let raw = match bytes.len() {
                1 => u64::from(bytes[0]),
                2 | 4 | 8 => bytes
                    .iter()
                    .fold(0_u64, |acc, &byte| (acc << 8) | u64::from(byte)),
                _ => return Err(length("1, 2, 4 or 8")),
            };
            if layout.scale == 1.0 {
                return i64::try_from(raw)
                    .map(Value::Int)
                    .map_err(|_| DriverError::Value(format!("{raw} is beyond a 64-bit integer")));
            }
            // Truncation toward zero is the reference's rounding.
            Ok(Value::Int((raw as f64 * layout.scale).trunc() as i64))
        }
        DataType::Float => {
            let bytes: [u8; 4] = bytes.as_slice().try_into().map_err(|_| length("4"))?;
            // Widened through its shortest decimal form, so that a register
            // holding 21.3 reads as 21.3, not 21.299999.
            let single = f32::from_be_bytes(bytes);
            let widened = single
                .to_string()
                .parse::<f64>()
                .unwrap_or(f64::from(single));
            let value = widened * layout.scale;
            Ok(Value::Float(six_decimals(value)))
        }
        DataType::Double => {
            let bytes: [u8; 8] = bytes.as_slice().try_into().map_err(|_| length("8"))?;
            Ok(Value::Float(six_decimals(
                f64::from_be_bytes(bytes) * layout.scale,
            )))
        }
        DataType::Boolean => {
            let first = bytes.first().ok_or_else(|| length("at least 1"))?;
            Ok(Value::Boolean(if layout.register.is_bits() {
                first & 1 == 1
            } else {
                bytes.iter().any(|&byte| byte != 0)
            }))
        }
        DataType::String => {
            let end = bytes
                .iter()
                .rposition(|&byte| byte != 0)
                .map_or(0, |last| last + 1);
            Ok(Value::String(
                String::from_utf8_lossy(&bytes[..end]).into_owned(),
            ))
        }
        DataType::Bytes => Ok(Value::Bytes(bytes)),
    }
}

/// Encodes `value` for `limit` registers or a coil (see the module
/// documentation). A text value is first parsed as the layout's type.
pub fn encode(layout: &Layout, limit: u16, value: &Value) -> Result<Write, DriverError> {
    let parsed;
    let value = match value {
        Value::String(text) if layout.data_type != DataType::String => {
            parsed = Value::parse(layout.data_type, text)?;
            &parsed
        }
        other => other,
    };
    let invalid = |why: String| DriverError::Value(why);
    match layout.register {
        Register::DiscreteInput | Register::Input => {
            return Err(DriverError::NotWritable(format!(
                "{:?} registers are read-only",
                layout.register
            )));
        }
        Register::Coil => {
            let on = value
                .as_bool()
                .ok_or_else(|| invalid(format!("a coil cannot hold {value:?}")))?;
            return Ok(Write::Coil(on));
        }
        Register::Holding => {}
    }

    let width = usize::from(limit) * 2;
    let scaled = |value: &Value| {
        value
            .as_f64()
            .map(|number| number / layout.scale)
            .ok_or_else(|| invalid(format!("{value:?} is not a number")))
    };
    let mut bytes = match layout.data_type {
        DataType::Int => {
            if !matches!(width, 2 | 4 | 8) {
                return Err(invalid(format!(
                    "an int takes 1, 2 or 4 registers, not {limit}"
                )));
            }
            let raw = scaled(value)?.round();
            let bits = (width * 8) as u32;
            let (min, max) = (
                -(2_f64.powi(bits as i32 - 1)),
                2_f64.powi(bits as i32) - 1.0,
            );
            if !(min..=max).contains(&raw) {
                return Err(invalid(format!("{raw} does not fit {limit} register(s)")));
            }
            // In range, checked above: negative values wrap to two's complement.
            let raw = if raw < 0.0 {
                (raw as i64) as u64
            } else {
                raw as u64
            };
            raw.to_be_bytes()[8 - width..].to_vec()
        }
        DataType::Float => {
            if width != 4 {
                return Err(invalid(format!("a float takes 2 registers, not {limit}")));
            }
            // Narrowed to the register's single precision.
            (scaled(value)? as f32).to_be_bytes().to_vec()
        }
        DataType::Double => {
            if width != 8 {
                return Err(invalid(format!("a double takes 4 registers, not {limit}")));
            }
            scaled(value)?.to_be_bytes().to_vec()
        }
        DataType::Boolean => {
            let on = value
                .as_bool()
                .ok_or_else(|| invalid(format!("{value:?} is not a boolean")))?;
            let mut bytes = vec![0; width];
            if let Some(last) = bytes.last_mut() {
                *last = u8::from(on);
            }
            bytes
        }
        DataType::String | DataType::Bytes => {
            let mut bytes = match value {
                Value::Bytes(bytes) => bytes.clone(),
                other => other.to_string().into_bytes(),
            };
            if bytes.len() > width {
                return Err(invalid(format!(
                    "{} bytes do not fit {limit} register(s)",
                    bytes.len()
                )));
            }
            bytes.resize(width, 0);
            bytes
        }
    };
    if layout.swap {
        swap_bytes(&mut bytes);
    }
    if layout.register_swap {
        swap_registers(&mut bytes);
    }
    Ok(Write::Registers(
        bytes
            .chunks_exact(2)
            .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(register: Register, data_type: DataType) -> Layout {
        Layout {
            register,
            data_type,
            scale: 1.0,
            swap: false,
            register_swap: false,
        }
    }

    #[test]
    fn integers_decode_big_endian_scaled_and_truncated() {
        let mut int = layout(Register::Holding, DataType::Int);
        assert_eq!(
            decode(&int, register_bytes(&[0x0102])).expect("int"),
            Value::Int(0x0102)
        );
        assert_eq!(
            decode(&int, register_bytes(&[0x0001, 0x0002])).expect("int"),
            Value::Int(0x0001_0002)
        );
        int.scale = 0.1;
        assert_eq!(
            decode(&int, register_bytes(&[235])).expect("int"),
            Value::Int(23)
        );
        assert!(decode(&int, register_bytes(&[1, 2, 3])).is_err(), "6 bytes");
    }

    #[test]
    fn swaps_reorder_registers_then_bytes() {
        let mut int = layout(Register::Holding, DataType::Int);
        int.register_swap = true;
        assert_eq!(
            decode(&int, register_bytes(&[0x0001, 0x0002])).expect("int"),
            Value::Int(0x0002_0001)
        );
        int.swap = true;
        assert_eq!(
            decode(&int, register_bytes(&[0x0001, 0x0002])).expect("int"),
            Value::Int(0x0200_0100)
        );
        let mut bytes = register_bytes(&[1, 2, 3, 4]);
        swap_registers(&mut bytes);
        assert_eq!(bytes, register_bytes(&[4, 3, 2, 1]));
    }

    #[test]
    fn floats_and_doubles_decode_to_six_decimals() {
        let bits = 21.3_f32.to_bits();
        let words = [(bits >> 16) as u16, bits as u16];
        let float = layout(Register::Input, DataType::Float);
        assert_eq!(
            decode(&float, register_bytes(&words)).expect("float"),
            Value::Float(21.3)
        );
        let mut double = layout(Register::Holding, DataType::Double);
        double.scale = 2.0;
        let bytes = 1.25_f64.to_be_bytes().to_vec();
        assert_eq!(decode(&double, bytes).expect("double"), Value::Float(2.5));
        assert!(decode(&float, vec![0; 8]).is_err());
    }

    #[test]
    fn booleans_strings_and_coils_decode() {
        let coil = layout(Register::Coil, DataType::Boolean);
        assert_eq!(
            decode(&coil, pack_bits(&[true, false])).expect("coil"),
            Value::Boolean(true)
        );
        assert_eq!(
            decode(&coil, pack_bits(&[false, true])).expect("coil"),
            Value::Boolean(false)
        );
        let flag = layout(Register::Holding, DataType::Boolean);
        assert_eq!(
            decode(&flag, register_bytes(&[1])).expect("flag"),
            Value::Boolean(true)
        );
        let text = layout(Register::Holding, DataType::String);
        assert_eq!(
            decode(&text, register_bytes(&[0x4f4b, 0x0000])).expect("text"),
            Value::String("OK".into())
        );
        assert_eq!(
            pack_bits(&[true, false, true, false, false, false, false, false, true]),
            vec![0b101, 1]
        );
    }

    #[test]
    fn writes_encode_the_desired_value() {
        let mut int = layout(Register::Holding, DataType::Int);
        assert_eq!(
            encode(&int, 1, &Value::Int(20)).expect("int"),
            Write::Registers(vec![20])
        );
        assert_eq!(
            encode(&int, 2, &Value::Int(-10)).expect("negative"),
            Write::Registers(vec![0xffff, 0xfff6])
        );
        assert!(encode(&int, 1, &Value::String("23.5".into())).is_err());
        int.scale = 0.1;
        assert_eq!(
            encode(&int, 1, &Value::Int(25)).expect("scaled"),
            Write::Registers(vec![250])
        );
        assert!(encode(&int, 1, &Value::Int(7000)).is_err(), "70000 > 65535");
        assert!(encode(&int, 3, &Value::Int(1)).is_err(), "3 registers");

        let mut float = layout(Register::Holding, DataType::Float);
        float.register_swap = true;
        let bits = 1.5_f32.to_bits();
        assert_eq!(
            encode(&float, 2, &Value::Float(1.5)).expect("float"),
            Write::Registers(vec![bits as u16, (bits >> 16) as u16])
        );
        let coil = layout(Register::Coil, DataType::Boolean);
        assert_eq!(
            encode(&coil, 1, &Value::String("true".into())).expect("coil"),
            Write::Coil(true)
        );
        assert_eq!(
            encode(&coil, 1, &Value::Int(0)).expect("coil"),
            Write::Coil(false)
        );
        let input = layout(Register::Input, DataType::Int);
        assert!(matches!(
            encode(&input, 1, &Value::Int(1)),
            Err(DriverError::NotWritable(_))
        ));
        let text = layout(Register::Holding, DataType::String);
        assert_eq!(
            encode(&text, 2, &Value::String("OK".into())).expect("text"),
            Write::Registers(vec![0x4f4b, 0])
        );
        assert!(encode(&text, 1, &Value::String("long".into())).is_err());
    }

    #[test]
    fn encoding_then_decoding_gives_the_value_back() {
        for (data_type, limit, value) in [
            (DataType::Int, 1, Value::Int(1234)),
            (DataType::Int, 4, Value::Int(1 << 40)),
            (DataType::Float, 2, Value::Float(-3.25)),
            (DataType::Double, 4, Value::Float(1e10)),
            (DataType::Boolean, 1, Value::Boolean(true)),
            (DataType::String, 3, Value::String("abc".into())),
        ] {
            for (swap, register_swap) in
                [(false, false), (true, false), (false, true), (true, true)]
            {
                let layout = Layout {
                    register: Register::Holding,
                    data_type,
                    scale: 1.0,
                    swap,
                    register_swap,
                };
                let Write::Registers(words) = encode(&layout, limit, &value).expect("encode")
                else {
                    panic!("registers expected");
                };
                assert_eq!(words.len(), usize::from(limit));
                let back = decode(&layout, register_bytes(&words)).expect("decode");
                assert_eq!(
                    back, value,
                    "{data_type:?} swap={swap} register_swap={register_swap}"
                );
            }
        }
    }
}
