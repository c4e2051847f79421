//! Helpers for semantic validation: they collect every problem, each tied to
//! its field's path, as Kubernetes' `field.ErrorList` does.

use std::net::IpAddr;

use super::error::{ConfigError, FieldError};

/// Collects [`FieldError`]s while a configuration is checked.
#[derive(Debug, Default)]
pub(crate) struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    /// Records `message` against the field at `path`.
    pub(crate) fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(FieldError::new(path, message));
    }

    /// Records `message` against `path` unless `ok`.
    pub(crate) fn check(&mut self, ok: bool, path: &str, message: &str) {
        if !ok {
            self.error(path, message);
        }
    }

    /// A TCP or UDP port: 1 to 65535.
    pub(crate) fn port(&mut self, path: &str, port: impl Into<i64>) {
        let port = port.into();
        if !(1..=65535).contains(&port) {
            self.error(
                path,
                format!("{port} is not a valid port: must be between 1 and 65535"),
            );
        }
    }

    /// A value that must be greater than zero.
    pub(crate) fn positive(&mut self, path: &str, value: impl Into<i64>) {
        let value = value.into();
        if value <= 0 {
            self.error(path, format!("{value} must be greater than 0"));
        }
    }

    /// A value that must not be negative.
    pub(crate) fn non_negative(&mut self, path: &str, value: impl Into<i64>) {
        let value = value.into();
        if value < 0 {
            self.error(path, format!("{value} must not be negative"));
        }
    }

    /// A value within `min..=max`.
    pub(crate) fn range(&mut self, path: &str, value: impl Into<i64>, min: i64, max: i64) {
        let value = value.into();
        if !(min..=max).contains(&value) {
            self.error(path, format!("{value} must be between {min} and {max}"));
        }
    }

    /// A value that must be one of `allowed`.
    pub(crate) fn one_of(&mut self, path: &str, value: &str, allowed: &[&str]) {
        if !allowed.contains(&value) {
            self.error(
                path,
                format!("{value:?} is not one of {}", quoted_list(allowed)),
            );
        }
    }

    /// An IPv4 or IPv6 address.
    pub(crate) fn ip(&mut self, path: &str, value: &str) {
        if value.parse::<IpAddr>().is_err() {
            self.error(path, format!("{value:?} is not a valid IP address"));
        }
    }

    /// `IP:port`, as KubeEdge's `validateHostPort` requires for bind
    /// addresses (IPv6 in brackets: `[::1]:9091`).
    pub(crate) fn ip_port(&mut self, path: &str, value: &str) {
        match split_host_port(value) {
            Some((host, port)) => {
                if host.parse::<IpAddr>().is_err() {
                    self.error(
                        path,
                        format!("{value:?}: {host:?} is not a valid IP address"),
                    );
                }
                self.port_text(path, value, port);
            }
            None => self.error(path, format!("{value:?} must be IP:port")),
        }
    }

    /// `host:port`, where host is an IP address or a DNS name.
    pub(crate) fn host_port(&mut self, path: &str, value: &str) {
        match split_host_port(value) {
            Some((host, port)) => {
                if !is_host(host) {
                    self.error(
                        path,
                        format!("{value:?}: {host:?} is not an IP address or DNS name"),
                    );
                }
                self.port_text(path, value, port);
            }
            None => self.error(path, format!("{value:?} must be host:port")),
        }
    }

    fn port_text(&mut self, path: &str, value: &str, port: &str) {
        let valid =
            port.bytes().all(|c| c.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p != 0);
        if !valid {
            self.error(path, format!("{value:?}: {port:?} is not a valid port"));
        }
    }

    /// A URL `scheme://host[:port][/path]` with one of `schemes`.
    pub(crate) fn url(&mut self, path: &str, value: &str, schemes: &[&str]) {
        let Some((scheme, rest)) = value.split_once("://") else {
            let example = schemes.first().copied().unwrap_or("https");
            self.error(
                path,
                format!("{value:?} must be a URL such as {example}://host:port"),
            );
            return;
        };
        if !schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
            self.error(
                path,
                format!("{value:?}: scheme must be {}", quoted_list(schemes)),
            );
            return;
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host_ok = match split_host_port(authority) {
            Some((host, port)) => is_host(host) && port.parse::<u16>().is_ok_and(|p| p != 0),
            None => is_host(authority.trim_start_matches('[').trim_end_matches(']')),
        };
        if !host_ok {
            self.error(
                path,
                format!("{value:?} does not name a valid host and port"),
            );
        }
    }

    /// An absolute filesystem path.
    pub(crate) fn absolute_path(&mut self, path: &str, value: &str) {
        if !value.starts_with('/') {
            self.error(path, format!("{value:?} must be an absolute path"));
        }
    }

    /// `Ok` if nothing was recorded, else every problem found.
    pub(crate) fn finish(self) -> Result<(), ConfigError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                errors: self.errors,
            })
        }
    }
}

fn quoted_list(items: &[&str]) -> String {
    items
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Splits `host:port` as Go's `net.SplitHostPort`: IPv6 hosts are written in
/// brackets, and an unbracketed host may not contain a colon.
pub(crate) fn split_host_port(value: &str) -> Option<(&str, &str)> {
    if let Some(rest) = value.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':')?;
        return Some((host, port));
    }
    let (host, port) = value.rsplit_once(':')?;
    if host.contains(':') {
        return None;
    }
    Some((host, port))
}

/// An IP address or a DNS name (letters, digits, `-`, `_` and dots).
fn is_host(host: &str) -> bool {
    if host.parse::<IpAddr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        })
}

/// A lowercase RFC 1123 subdomain, as Kubernetes requires of node names: at
/// most 253 characters, dot-separated labels of `[a-z0-9-]` that start and
/// end with a letter or digit.
pub(crate) fn is_dns1123_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            let bytes = label.as_bytes();
            let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
            match (bytes.first(), bytes.last()) {
                (Some(first), Some(last)) => {
                    alnum(first) && alnum(last) && bytes.iter().all(|c| alnum(c) || *c == b'-')
                }
                _ => false,
            }
        })
}

/// A CIDR block such as `10.96.0.0/12` or `fd00::/108`.
pub(crate) fn is_cidr(value: &str) -> bool {
    let Some((address, prefix)) = value.split_once('/') else {
        return false;
    };
    let Ok(prefix) = prefix.parse::<u8>() else {
        return false;
    };
    match address.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => prefix <= 32,
        Ok(IpAddr::V6(_)) => prefix <= 128,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_go() {
        assert_eq!(
            split_host_port("127.0.0.1:9091"),
            Some(("127.0.0.1", "9091"))
        );
        assert_eq!(split_host_port("[::1]:80"), Some(("::1", "80")));
        assert_eq!(
            split_host_port("example.com:80"),
            Some(("example.com", "80"))
        );
        assert_eq!(split_host_port("::1:80"), None);
        assert_eq!(split_host_port("127.0.0.1"), None);
        assert_eq!(split_host_port("[::1]"), None);
    }

    #[test]
    fn checks_addresses() {
        let mut v = Validator::default();
        v.ip_port("a", "127.0.0.1:9091");
        v.ip_port("a", "[::]:1");
        v.host_port("b", "cloud.example:10000");
        v.url("c", "https://192.168.1.2:10002", &["https"]);
        v.url("c", "http://etcd:2379/", &["http", "https"]);
        assert!(v.finish().is_ok());

        let mut v = Validator::default();
        v.ip_port("a", "localhost:9091");
        v.ip_port("b", "127.0.0.1:0");
        v.ip_port("c", "127.0.0.1:+80");
        v.ip_port("d", "127.0.0.1");
        v.host_port("e", "bad host:1");
        v.url("f", "ftp://x:1", &["https"]);
        v.url("g", "https://", &["https"]);
        v.url("h", "no-scheme", &["https"]);
        let Err(ConfigError::Invalid { errors }) = v.finish() else {
            panic!("expected errors");
        };
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["a", "b", "c", "d", "e", "f", "g", "h"]);
    }

    #[test]
    fn subdomains_and_cidrs() {
        assert!(is_dns1123_subdomain("edge-1.example.com"));
        assert!(!is_dns1123_subdomain("Edge"));
        assert!(!is_dns1123_subdomain("-edge"));
        assert!(!is_dns1123_subdomain("edge..a"));
        assert!(!is_dns1123_subdomain(&"a".repeat(254)));
        assert!(is_cidr("10.96.0.0/12"));
        assert!(is_cidr("fd00::/108"));
        assert!(!is_cidr("10.96.0.0/33"));
        assert!(!is_cidr("10.96.0.0"));
        assert!(!is_cidr("x/8"));
    }
}
