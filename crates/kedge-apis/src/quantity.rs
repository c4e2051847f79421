//! Kubernetes resource quantities as numbers: CPU in millicores and
//! memory or storage in bytes (`500m`, `2`, `128Mi`, `1G`, `1e3`), for the
//! scheduler and for edged.

/// The value of `text` in units of 1/1000 (CPU millicores), rounded up;
/// `None` if it is not a quantity.
pub fn millis(text: &str) -> Option<i64> {
    let (number, scale) = split(text)?;
    Some((number * scale * 1000.0).ceil() as i64)
}

/// The value of `text` in whole units (bytes), rounded up; `None` if it is
/// not a quantity.
pub fn units(text: &str) -> Option<i64> {
    let (number, scale) = split(text)?;
    Some((number * scale).ceil() as i64)
}

/// The number and the multiplier of its suffix.
fn split(text: &str) -> Option<(f64, f64)> {
    let text = text.trim();
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(end);
    let number: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0_f64.powi(4),
        "Pi" => 1024.0_f64.powi(5),
        "Ei" => 1024.0_f64.powi(6),
        exponent => {
            let power: i32 = exponent
                .strip_prefix('e')
                .or_else(|| exponent.strip_prefix('E'))?
                .parse()
                .ok()?;
            10.0_f64.powi(power)
        }
    };
    (number.is_finite() && number >= 0.0).then_some((number, scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_read_in_their_units() {
        assert_eq!(millis("500m"), Some(500));
        assert_eq!(millis("2"), Some(2000));
        assert_eq!(millis("0.25"), Some(250));
        assert_eq!(units("128Mi"), Some(128 * 1024 * 1024));
        assert_eq!(units("1G"), Some(1_000_000_000));
        assert_eq!(units("1e3"), Some(1000));
        assert_eq!(units("64Ki"), Some(65536));
        assert_eq!(units("lots"), None);
        assert_eq!(units("-1Mi"), None);
        assert_eq!(units("5Qi"), None);
    }
}
