//! [`GoDuration`]: a Kubernetes `metav1.Duration`, written as a Go duration
//! string such as `"10s"`, `"2m0s"` or `"1h0m0s"`.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

const NANOS_PER_MICRO: u64 = 1_000;
const NANOS_PER_MILLI: u64 = 1_000_000;
const NANOS_PER_SECOND: u64 = 1_000_000_000;
const NANOS_PER_MINUTE: u64 = 60 * NANOS_PER_SECOND;
const NANOS_PER_HOUR: u64 = 60 * NANOS_PER_MINUTE;
/// `1 << 63`: one more than `i64::MAX`, the magnitude of `i64::MIN`.
const LIMIT: u64 = 1 << 63;

/// A signed span of time with nanosecond precision, as Go's `time.Duration`
/// (an `int64` of nanoseconds).
///
/// It parses every form Go's `time.ParseDuration` accepts (`"300ms"`,
/// `"-1.5h"`, `"2h45m"`, `"1µs"`, `"0"`, ...) and prints Go's canonical form
/// (`Duration.String()`: `"0s"`, `"1.5s"`, `"2m0s"`, `"1h0m0s"`, `"100ms"`).
/// In YAML and JSON it is that string, as Kubernetes' `metav1.Duration` is.
///
/// ```
/// use kedge_apis::config::GoDuration;
///
/// let d: GoDuration = "90s".parse().unwrap();
/// assert_eq!(d.to_string(), "1m30s");
/// assert_eq!(d.to_std(), Some(std::time::Duration::from_secs(90)));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoDuration(i64);

impl GoDuration {
    /// The zero duration, printed `0s`.
    pub const ZERO: GoDuration = GoDuration(0);

    /// A duration of `nanos` nanoseconds.
    pub const fn from_nanos(nanos: i64) -> Self {
        Self(nanos)
    }

    /// A duration of `millis` milliseconds, saturating at the `i64` range.
    pub const fn from_millis(millis: i64) -> Self {
        Self(millis.saturating_mul(NANOS_PER_MILLI as i64))
    }

    /// A duration of `secs` seconds, saturating at the `i64` range.
    pub const fn from_secs(secs: i64) -> Self {
        Self(secs.saturating_mul(NANOS_PER_SECOND as i64))
    }

    /// A duration of `minutes` minutes, saturating at the `i64` range.
    pub const fn from_mins(minutes: i64) -> Self {
        Self(minutes.saturating_mul(NANOS_PER_MINUTE as i64))
    }

    /// A duration of `hours` hours, saturating at the `i64` range.
    pub const fn from_hours(hours: i64) -> Self {
        Self(hours.saturating_mul(NANOS_PER_HOUR as i64))
    }

    /// The duration in nanoseconds (negative for negative durations).
    pub const fn as_nanos(self) -> i64 {
        self.0
    }

    /// The duration as a [`std::time::Duration`], or `None` if it is
    /// negative.
    pub fn to_std(self) -> Option<std::time::Duration> {
        u64::try_from(self.0)
            .ok()
            .map(std::time::Duration::from_nanos)
    }
}

/// Why a string is not a Go duration. The messages follow Go's
/// `time.ParseDuration`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GoDurationError {
    /// The string does not have the shape `[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+`.
    #[error("invalid duration {input:?}")]
    Invalid {
        /// The string that was parsed.
        input: String,
    },
    /// A number is not followed by a unit (only `"0"` may omit it).
    #[error("missing unit in duration {input:?}")]
    MissingUnit {
        /// The string that was parsed.
        input: String,
    },
    /// A unit is not one of `ns`, `us`, `µs`, `ms`, `s`, `m`, `h`.
    #[error("unknown unit {unit:?} in duration {input:?}")]
    UnknownUnit {
        /// The unit that was not recognised.
        unit: String,
        /// The string that was parsed.
        input: String,
    },
    /// The duration does not fit in 64-bit nanoseconds (about 292 years).
    #[error("invalid duration {input:?}: out of range")]
    Overflow {
        /// The string that was parsed.
        input: String,
    },
}

fn unit_nanos(unit: &str) -> Option<u64> {
    Some(match unit {
        "ns" => 1,
        // "µs" is U+00B5 (micro sign), "μs" is U+03BC (Greek small mu).
        "us" | "\u{b5}s" | "\u{3bc}s" => NANOS_PER_MICRO,
        "ms" => NANOS_PER_MILLI,
        "s" => NANOS_PER_SECOND,
        "m" => NANOS_PER_MINUTE,
        "h" => NANOS_PER_HOUR,
        _ => return None,
    })
}

/// Consumes leading ASCII digits. `None` on overflow past `1 << 63`.
fn leading_int(s: &str) -> Option<(u64, &str)> {
    let end = s.bytes().take_while(u8::is_ascii_digit).count();
    let mut x: u64 = 0;
    for c in s.as_bytes()[..end].iter() {
        if x > LIMIT / 10 {
            return None;
        }
        x = x * 10 + u64::from(c - b'0');
        if x > LIMIT {
            return None;
        }
    }
    Some((x, &s[end..]))
}

/// Consumes leading ASCII digits of a fraction, keeping as many as fit.
/// Returns the digits as an integer, the power of ten they are scaled by,
/// and the rest of the string.
fn leading_fraction(s: &str) -> (u64, f64, &str) {
    let end = s.bytes().take_while(u8::is_ascii_digit).count();
    let mut x: u64 = 0;
    let mut scale = 1.0;
    let mut overflow = false;
    for c in s.as_bytes()[..end].iter() {
        if overflow {
            continue;
        }
        if x > (LIMIT - 1) / 10 {
            overflow = true;
            continue;
        }
        let y = x * 10 + u64::from(c - b'0');
        if y > LIMIT {
            overflow = true;
            continue;
        }
        x = y;
        scale *= 10.0;
    }
    (x, scale, &s[end..])
}

impl FromStr for GoDuration {
    type Err = GoDurationError;

    /// Parses a duration exactly as Go's `time.ParseDuration` does.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = || GoDurationError::Invalid {
            input: input.to_owned(),
        };
        let overflow = || GoDurationError::Overflow {
            input: input.to_owned(),
        };
        let mut s = input;
        let mut negative = false;
        if let Some(rest) = s.strip_prefix('-') {
            negative = true;
            s = rest;
        } else if let Some(rest) = s.strip_prefix('+') {
            s = rest;
        }
        if s == "0" {
            return Ok(Self::ZERO);
        }
        if s.is_empty() {
            return Err(invalid());
        }
        let mut total: u64 = 0;
        while !s.is_empty() {
            // The next character must be [0-9.].
            if !s.starts_with(|c: char| c == '.' || c.is_ascii_digit()) {
                return Err(invalid());
            }
            let before = s.len();
            let (mut value, rest) = leading_int(s).ok_or_else(invalid)?;
            s = rest;
            let has_integer = s.len() != before;
            let mut fraction = 0;
            let mut scale = 1.0;
            let mut has_fraction = false;
            if let Some(rest) = s.strip_prefix('.') {
                let before = rest.len();
                let (f, sc, rest) = leading_fraction(rest);
                fraction = f;
                scale = sc;
                has_fraction = rest.len() != before;
                s = rest;
            }
            if !has_integer && !has_fraction {
                // No digits at all, for example ".s".
                return Err(invalid());
            }
            // The unit runs up to the next digit or '.', both ASCII, so the
            // split is on a character boundary.
            let unit_len = s
                .bytes()
                .take_while(|c| *c != b'.' && !c.is_ascii_digit())
                .count();
            if unit_len == 0 {
                return Err(GoDurationError::MissingUnit {
                    input: input.to_owned(),
                });
            }
            let (unit, rest) = s.split_at(unit_len);
            s = rest;
            let unit_ns = unit_nanos(unit).ok_or_else(|| GoDurationError::UnknownUnit {
                unit: unit.to_owned(),
                input: input.to_owned(),
            })?;
            if value > LIMIT / unit_ns {
                return Err(overflow());
            }
            value *= unit_ns;
            if fraction > 0 {
                // Float arithmetic, as Go does; `as` saturates.
                let extra = (fraction as f64 * (unit_ns as f64 / scale)) as u64;
                value = value.checked_add(extra).ok_or_else(overflow)?;
                if value > LIMIT {
                    return Err(overflow());
                }
            }
            total = total.checked_add(value).ok_or_else(overflow)?;
            if total > LIMIT {
                return Err(overflow());
            }
        }
        if negative {
            // total <= 1 << 63, so the negation fits in i64.
            Ok(Self(0i64.wrapping_sub_unsigned(total)))
        } else {
            i64::try_from(total).map(Self).map_err(|_| overflow())
        }
    }
}

/// Formats the fractional part of `v` with `precision` decimal digits,
/// dropping trailing zeros (and the point when nothing is left), as Go's
/// `fmtFrac`. Returns that text and `v` divided by `10^precision`.
fn frac(mut v: u64, precision: u32) -> (String, u64) {
    let mut digits = Vec::new();
    let mut print = false;
    for _ in 0..precision {
        let digit = v % 10;
        print = print || digit != 0;
        if print {
            digits.push(char::from(b'0' + digit as u8));
        }
        v /= 10;
    }
    if digits.is_empty() {
        return (String::new(), v);
    }
    let mut text = String::from(".");
    text.extend(digits.iter().rev());
    (text, v)
}

impl fmt::Display for GoDuration {
    /// Prints Go's canonical form, as `time.Duration.String()`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let u = self.0.unsigned_abs();
        if u == 0 {
            return f.write_str("0s");
        }
        if u < NANOS_PER_SECOND {
            let (precision, unit) = if u < NANOS_PER_MICRO {
                (0, "ns")
            } else if u < NANOS_PER_MILLI {
                (3, "\u{b5}s")
            } else {
                (6, "ms")
            };
            let (fraction, whole) = frac(u, precision);
            return write!(f, "{sign}{whole}{fraction}{unit}");
        }
        let (fraction, whole_seconds) = frac(u, 9);
        let seconds = whole_seconds % 60;
        let minutes = whole_seconds / 60;
        if minutes == 0 {
            return write!(f, "{sign}{seconds}{fraction}s");
        }
        let hours = minutes / 60;
        let minutes = minutes % 60;
        if hours == 0 {
            write!(f, "{sign}{minutes}m{seconds}{fraction}s")
        } else {
            write!(f, "{sign}{hours}h{minutes}m{seconds}{fraction}s")
        }
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = GoDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Go duration string such as \"10s\", \"2m0s\" or \"1h30m\"")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<GoDuration, E> {
                v.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(DurationVisitor)
    }
}

/// Serde adapter for Go `time.Duration` fields written as an integer count
/// of nanoseconds (Go's JSON form of a bare `time.Duration`). A Go duration
/// string is accepted as well, as newer Kubernetes releases write one.
pub(crate) mod nanos {
    use super::GoDuration;
    use serde::Serializer;
    use serde::de::{self, Deserializer, Visitor};
    use std::fmt;

    pub(crate) fn serialize<S: Serializer>(d: &GoDuration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(d.as_nanos())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<GoDuration, D::Error> {
        struct NanosVisitor;

        impl Visitor<'_> for NanosVisitor {
            type Value = GoDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer number of nanoseconds or a Go duration string")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<GoDuration, E> {
                Ok(GoDuration::from_nanos(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<GoDuration, E> {
                i64::try_from(v)
                    .map(GoDuration::from_nanos)
                    .map_err(|_| E::custom("duration out of range"))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<GoDuration, E> {
                v.parse().map_err(E::custom)
            }
        }

        d.deserialize_any(NanosVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<i64, GoDurationError> {
        s.parse::<GoDuration>().map(GoDuration::as_nanos)
    }

    #[test]
    fn parses_go_forms() {
        // Cases from Go's time package tests.
        let cases: &[(&str, i64)] = &[
            ("0", 0),
            ("5s", 5_000_000_000),
            ("30s", 30_000_000_000),
            ("1478s", 1_478_000_000_000),
            ("-5s", -5_000_000_000),
            ("+5s", 5_000_000_000),
            ("-0", 0),
            ("+0", 0),
            ("5.0s", 5_000_000_000),
            ("5.6s", 5_600_000_000),
            ("5.s", 5_000_000_000),
            (".5s", 500_000_000),
            ("1.0s", 1_000_000_000),
            ("1.00s", 1_000_000_000),
            ("1.004s", 1_004_000_000),
            ("1.0040s", 1_004_000_000),
            ("100.00100s", 100_001_000_000),
            ("10ns", 10),
            ("11us", 11_000),
            ("12\u{b5}s", 12_000),
            ("12\u{3bc}s", 12_000),
            ("13ms", 13_000_000),
            ("14s", 14_000_000_000),
            ("15m", 900_000_000_000),
            ("16h", 57_600_000_000_000),
            ("3h30m", 12_600_000_000_000),
            ("10.5s4m", 250_500_000_000),
            ("-2m3.4s", -123_400_000_000),
            ("1h2m3s4ms5us6ns", 3_723_004_005_006),
            ("39h9m14.425s", 140_954_425_000_000),
            ("52763797000ns", 52_763_797_000),
            ("0.3333333333333333333h", 1_200_000_000_000),
            ("9007199254740993ns", 9_007_199_254_740_993),
            ("9223372036854775807ns", i64::MAX),
            ("9223372036854775.807us", i64::MAX),
            ("9223372036s854ms775us807ns", i64::MAX),
            ("-9223372036854775808ns", i64::MIN),
            ("-9223372036854775.808us", i64::MIN),
            ("0.100000000000000000000h", 360_000_000_000),
            ("0.830103483285477580700h", 2_988_372_539_827),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), Ok(*want), "parsing {input:?}");
        }
    }

    #[test]
    fn rejects_what_go_rejects() {
        for input in [
            "",
            "3",
            "-",
            "s",
            ".",
            "-.",
            ".s",
            "+.s",
            "1d",
            "\u{b5}s",
            "1.5x",
            "3000000h",
            "9223372036854775808ns",
            "9223372036854775810ns",
            "-9223372036854775809ns",
            "9223372036854775808000ns",
            "1 s",
            " 1s",
            "1s ",
        ] {
            assert!(parse(input).is_err(), "{input:?} should be rejected");
        }
        assert!(matches!(
            parse("3"),
            Err(GoDurationError::MissingUnit { .. })
        ));
        assert!(matches!(
            parse("1d"),
            Err(GoDurationError::UnknownUnit { unit, .. }) if unit == "d"
        ));
        assert!(matches!(
            parse("3000000h"),
            Err(GoDurationError::Overflow { .. })
        ));
    }

    #[test]
    fn prints_go_canonical_form() {
        // Cases from Go's time package tests.
        let cases: &[(&str, i64)] = &[
            ("0s", 0),
            ("1ns", 1),
            ("1.1\u{b5}s", 1_100),
            ("2.2ms", 2_200_000),
            ("3.3s", 3_300_000_000),
            ("4m5s", 245_000_000_000),
            ("4m5.001s", 245_001_000_000),
            ("5h6m7.001s", 18_367_001_000_000),
            ("8m0.000000001s", 480_000_000_001),
            ("2562047h47m16.854775807s", i64::MAX),
            ("-2562047h47m16.854775808s", i64::MIN),
            ("1m0s", 60_000_000_000),
            ("1h0m0s", 3_600_000_000_000),
            ("2m0s", 120_000_000_000),
            ("100ms", 100_000_000),
            ("-1.5s", -1_500_000_000),
        ];
        for (want, nanos) in cases {
            assert_eq!(GoDuration::from_nanos(*nanos).to_string(), *want);
        }
    }

    #[test]
    fn printed_form_parses_back() {
        for nanos in [
            0,
            1,
            999,
            1_000,
            1_500_000,
            59_999_999_999,
            i64::MAX,
            i64::MIN,
            -7,
        ] {
            let d = GoDuration::from_nanos(nanos);
            assert_eq!(d.to_string().parse::<GoDuration>(), Ok(d));
        }
    }

    #[test]
    fn constructors_and_std() {
        assert_eq!(GoDuration::from_mins(2).to_string(), "2m0s");
        assert_eq!(GoDuration::from_hours(4).to_string(), "4h0m0s");
        assert_eq!(GoDuration::from_millis(100).to_string(), "100ms");
        assert_eq!(GoDuration::from_secs(i64::MAX).as_nanos(), i64::MAX);
        assert_eq!(GoDuration::from_secs(-1).to_std(), None);
        assert_eq!(
            GoDuration::from_secs(10).to_std(),
            Some(std::time::Duration::from_secs(10))
        );
    }

    #[test]
    fn serde_uses_the_string_form() {
        let d: GoDuration = serde_json::from_str("\"1h30m\"").unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"1h30m0s\"");
        assert!(serde_json::from_str::<GoDuration>("10").is_err());
        assert!(serde_json::from_str::<GoDuration>("\"10\"").is_err());
    }
}
