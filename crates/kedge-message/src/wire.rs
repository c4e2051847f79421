//! The WebSocket wire form: one message per frame as the JSON Go's
//! `encoding/json` writes it (HTML characters and U+2028/U+2029 escaped,
//! Go's float format, a trailing newline), and size-limited decoding.

use std::io;

use serde::Serialize;
use serde_json::ser::{CharEscape, Formatter};

use crate::Message;

/// The default frame limit: 8 MiB. Kubernetes objects are capped at about
/// 1.5 MiB by the API server, so a larger frame is an error or an attack.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;

/// A frame that is not a message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The frame is larger than the limit; it was not parsed.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The frame size.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The frame is not a JSON message.
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
}

impl Message {
    /// Decode one frame, refusing it before parsing when it is larger than
    /// `limit` bytes. Text and binary frames, with or without the trailing
    /// newline, are accepted.
    pub fn decode(frame: &[u8], limit: usize) -> Result<Self, DecodeError> {
        if frame.len() > limit {
            return Err(DecodeError::TooLarge {
                size: frame.len(),
                limit,
            });
        }
        Ok(serde_json::from_slice(frame)?)
    }

    /// Encode as a frame: the JSON KubeEdge's WebSocket writer produces,
    /// including its trailing newline.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = to_go_json(self);
        out.push(b'\n');
        out
    }
}

/// Serialise `value` as Go's `encoding/json` would.
pub fn to_go_json<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, GoFormatter);
    // Serialising into a Vec cannot fail for message types: every map key
    // is a string.
    if value.serialize(&mut ser).is_err() {
        out.clear();
        out.extend_from_slice(b"null");
    }
    out
}

/// A JSON formatter with Go's escaping and number format.
struct GoFormatter;

impl Formatter for GoFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let escape = match c {
                '<' => "\\u003c",
                '>' => "\\u003e",
                '&' => "\\u0026",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            writer.write_all(&fragment.as_bytes()[start..i])?;
            writer.write_all(escape.as_bytes())?;
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }

    fn write_char_escape<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        char_escape: CharEscape,
    ) -> io::Result<()> {
        let s: &[u8] = match char_escape {
            CharEscape::Quote => b"\\\"",
            CharEscape::ReverseSolidus => b"\\\\",
            CharEscape::Solidus => b"/",
            CharEscape::Backspace => b"\\b",
            CharEscape::FormFeed => b"\\f",
            CharEscape::LineFeed => b"\\n",
            CharEscape::CarriageReturn => b"\\r",
            CharEscape::Tab => b"\\t",
            CharEscape::AsciiControl(byte) => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let buf = [
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(byte >> 4)],
                    HEX[usize::from(byte & 0xf)],
                ];
                return writer.write_all(&buf);
            }
        };
        writer.write_all(s)
    }

    fn write_f64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        writer.write_all(go_float(value).as_bytes())
    }

    fn write_f32<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f32) -> io::Result<()> {
        writer.write_all(go_float(f64::from(value)).as_bytes())
    }
}

/// Go's `encoding/json` float format: the shortest representation that
/// reads back exactly, plain decimal for magnitudes in [1e-6, 1e21) and
/// exponent form (`1e-7`, `1e+21`) outside.
fn go_float(value: f64) -> String {
    let abs = value.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        let sci = format!("{value:e}");
        let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
        let exponent: i32 = exponent.parse().unwrap_or(0);
        if exponent < 0 {
            format!("{mantissa}e-{}", -exponent)
        } else {
            format!("{mantissa}e+{exponent:02}")
        }
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn go_escapes_html_and_line_separators() {
        let out = to_go_json(&json!("<a href=\"x\">&\u{2028}\u{2029}é\n\u{1}"));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#""\u003ca href=\"x\"\u003e\u0026\u2028\u2029é\n\u0001""#
        );
    }

    #[test]
    fn go_float_format() {
        assert_eq!(go_float(1.0), "1");
        assert_eq!(go_float(1.5), "1.5");
        assert_eq!(go_float(-0.25), "-0.25");
        assert_eq!(go_float(1e20), "100000000000000000000");
        assert_eq!(go_float(1e21), "1e+21");
        assert_eq!(go_float(1.5e300), "1.5e+300");
        assert_eq!(go_float(1e-7), "1e-7");
        assert_eq!(go_float(0.000001), "0.000001");
        assert_eq!(go_float(1.2345e-10), "1.2345e-10");
        assert_eq!(go_float(0.0), "0");
    }

    #[test]
    fn oversized_frames_are_refused_before_parsing() {
        let frame = vec![b'{'; 100];
        match Message::decode(&frame, 99) {
            Err(DecodeError::TooLarge { size, limit }) => {
                assert_eq!((size, limit), (100, 99));
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(matches!(
            Message::decode(&frame, 100),
            Err(DecodeError::Malformed(_))
        ));
    }
}
