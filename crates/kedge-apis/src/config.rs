//! Component configuration files: `cloudcore.yaml` and `edgecore.yaml`.
//!
//! Each file type has the same entry points, after KubeEdge's
//! `NewDefault…Config`, `NewMin…Config` and `Parse`:
//!
//! - `default_config(&HostInfo)`: every field at its default, as
//!   `--defaultconfig` prints it;
//! - `min_config(&HostInfo)`: the short [`MinConfig`] document
//!   `--minconfig` prints;
//! - `load(path)` / `from_yaml_str(text)`: the file laid over the defaults,
//!   checked field by field and then validated (the `_with_host` variants take
//!   the [`HostInfo`] the defaults derive from, for deterministic tests);
//! - `to_yaml()`: the YAML text, which loads back to an equal value.
//!
//! Loading works as in KubeEdge: YAML is turned into a JSON value, laid over
//! the defaults (mappings merge, everything else replaces), and decoded.
//! Unlike KubeEdge, which ignores what it does not know, every struct refuses
//! unknown fields, and both unknown fields and wrong types are reported with
//! their full path (`modules.cloudHub.nodeLimt: unknown field ...`). Field
//! names are matched exactly (Go's decoder also accepts other letter cases).

mod document;
mod duration;
mod error;
mod host;
mod validate;

pub mod cloudcore;
pub mod edgecore;

use serde::{Deserialize, Serialize};

pub use document::MinConfig;
pub use duration::{GoDuration, GoDurationError};
pub use error::{ConfigError, FieldError};
pub use host::{DEFAULT_HOSTNAME_OVERRIDE, HostInfo};

/// The largest configuration file read, in bytes (4 MiB; real files are a
/// few kilobytes).
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// KubeEdge's default CA certificate (`constants.DefaultCAFile`).
pub(crate) const DEFAULT_CA_FILE: &str = "/etc/kubeedge/ca/rootCA.crt";
/// KubeEdge's default CA key (`constants.DefaultCAKeyFile`).
pub(crate) const DEFAULT_CA_KEY_FILE: &str = "/etc/kubeedge/ca/rootCA.key";
/// KubeEdge's default certificate (`constants.DefaultCertFile`).
pub(crate) const DEFAULT_CERT_FILE: &str = "/etc/kubeedge/certs/server.crt";
/// KubeEdge's default private key (`constants.DefaultKeyFile`).
pub(crate) const DEFAULT_KEY_FILE: &str = "/etc/kubeedge/certs/server.key";

/// The monitor server: an HTTP listener for Prometheus metrics and health
/// checks. Kedge serves `/metrics`, `/healthz` and `/readyz` on it (and
/// `/debug/pprof`-style profiling when enabled).
///
/// In cloudcore it is `commonConfig.monitorServer`, as in KubeEdge (default
/// bind address `127.0.0.1:9091`). In edgecore it is the Kedge-only top-level
/// `monitorServer` (default `127.0.0.1:10352`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MonitorServer {
    /// `IP:port` the monitor server listens on; use `0.0.0.0:PORT` for all
    /// interfaces. Must be an IP address and a port from 1 to 65535.
    /// Default `127.0.0.1:9091` (cloudcore) or `127.0.0.1:10352` (edgecore).
    pub bind_address: String,
    /// Serves profiling endpoints on the monitor server. Default `false`.
    pub enable_profiling: bool,
}

impl MonitorServer {
    /// A monitor server bound to `bind_address`, profiling off.
    pub(crate) fn bound_to(bind_address: &str) -> Self {
        Self {
            bind_address: bind_address.to_owned(),
            enable_profiling: false,
        }
    }
}
