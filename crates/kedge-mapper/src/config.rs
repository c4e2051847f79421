//! The mapper's configuration file and command line (devices.md §6.1).
//!
//! The file is the mapper framework template's `config.yaml`:
//!
//! ```yaml
//! grpc_server:
//!   socket_path: /etc/kubeedge/modbus.sock
//! common:
//!   name: modbus-mapper
//!   version: v1.13.0
//!   api_version: v1.0.0
//!   protocol: modbus
//!   address: 127.0.0.1
//!   edgecore_sock: /etc/kubeedge/dmi.sock
//! dev_init:
//!   mode: register
//! ```
//!
//! Unknown keys are refused so that typos surface; the keys later
//! templates added (`common.http_port`, `dev_init.configmap`) are accepted.
//! `dev_init.mode` may be left out or empty (unlike KubeEdge v1.15, which
//! refuses that): devices always come from edgecore (`register`); the
//! ConfigMap mode of pre-DMI mappers is refused.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

/// The command line every mapper binary accepts.
#[derive(Debug, Clone, clap::Parser)]
#[command(version, about = "A KubeEdge device mapper")]
pub struct Args {
    /// The configuration file.
    #[arg(long = "config-file", default_value = "./config.yaml")]
    pub config_file: PathBuf,
    /// Log verbosity in KubeEdge's klog levels: 0 to 3 info, 4 and 5 debug,
    /// more trace. `RUST_LOG` overrides it.
    #[arg(long = "v", default_value_t = 1)]
    pub v: u8,
}

impl Args {
    /// The verbosity in the project's levels: 0 info, 1 debug, 2 trace.
    pub fn verbosity(&self) -> u8 {
        match self.v {
            0..=3 => 0,
            4 | 5 => 1,
            _ => 2,
        }
    }
}

/// Why the configuration was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML of the expected shape.
    #[error("cannot parse the configuration: {0}")]
    Parse(String),
    /// A required setting is missing or empty.
    #[error("{0} must be set")]
    Missing(&'static str),
    /// `dev_init.mode` names an unsupported mode.
    #[error("unsupported dev_init.mode {0:?}: devices come from edgecore (mode `register`)")]
    UnsupportedMode(String),
}

/// A validated mapper configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where the mapper serves `DeviceMapperService` (`grpc_server.socket_path`);
    /// edgecore is told this path.
    pub socket_path: PathBuf,
    /// The mapper's name (`common.name`).
    pub name: String,
    /// The mapper's version (`common.version`).
    pub version: String,
    /// The DMI version the mapper speaks (`common.api_version`).
    pub api_version: String,
    /// The protocol whose devices the mapper drives (`common.protocol`).
    pub protocol: String,
    /// The mapper's address (`common.address`, informational).
    pub address: String,
    /// edgecore's DMI socket (`common.edgecore_sock`).
    pub edgecore_sock: PathBuf,
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct File {
    /// The mapper's server.
    grpc_server: GrpcServer,
    /// Who the mapper is and where edgecore is.
    common: Common,
    /// Where devices come from.
    dev_init: DevInit,
}

/// `grpc_server`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct GrpcServer {
    /// The mapper's socket.
    socket_path: Option<String>,
}

/// `common`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Common {
    /// The mapper's name.
    name: Option<String>,
    /// The mapper's version.
    version: Option<String>,
    /// The DMI version.
    api_version: Option<String>,
    /// The protocol.
    protocol: Option<String>,
    /// The mapper's address.
    address: Option<String>,
    /// edgecore's socket.
    edgecore_sock: Option<String>,
    /// The REST port of later templates (no REST server here).
    #[serde(rename = "http_port")]
    _http_port: Option<serde::de::IgnoredAny>,
}

/// `dev_init`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct DevInit {
    /// `register` (or empty).
    mode: Option<String>,
    /// The ConfigMap file of the refused `configmap` mode.
    #[serde(rename = "configmap")]
    _configmap: Option<serde::de::IgnoredAny>,
}

/// `value` unless absent or blank.
fn non_empty(value: Option<String>) -> Option<String> {
    value
        .map(|value| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

impl Config {
    /// Parses and validates a configuration file's text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let file: File = if text.trim().is_empty() {
            File::default()
        } else {
            serde_saphyr::from_str(text).map_err(|error| ConfigError::Parse(error.to_string()))?
        };
        if let Some(mode) = non_empty(file.dev_init.mode)
            && mode != "register"
        {
            return Err(ConfigError::UnsupportedMode(mode));
        }
        let common = file.common;
        Ok(Self {
            socket_path: non_empty(file.grpc_server.socket_path)
                .ok_or(ConfigError::Missing("grpc_server.socket_path"))?
                .into(),
            protocol: non_empty(common.protocol).ok_or(ConfigError::Missing("common.protocol"))?,
            edgecore_sock: non_empty(common.edgecore_sock)
                .ok_or(ConfigError::Missing("common.edgecore_sock"))?
                .into(),
            name: non_empty(common.name).unwrap_or_default(),
            version: non_empty(common.version).unwrap_or_default(),
            api_version: non_empty(common.api_version).unwrap_or_default(),
            address: non_empty(common.address).unwrap_or_default(),
        })
    }

    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    #[test]
    fn the_template_file_reads() {
        let config = Config::parse(
            "grpc_server:\n  socket_path: /etc/kubeedge/modbus.sock\n\
             common:\n  name: modbus-mapper\n  version: v1.13.0\n  api_version: v1.0.0\n  \
             protocol: modbus\n  address: 127.0.0.1\n  edgecore_sock: /etc/kubeedge/dmi.sock\n  http_port: \"7777\"\n\
             dev_init:\n  mode: register\n",
        )
        .expect("config");
        assert_eq!(
            config,
            Config {
                socket_path: "/etc/kubeedge/modbus.sock".into(),
                name: "modbus-mapper".into(),
                version: "v1.13.0".into(),
                api_version: "v1.0.0".into(),
                protocol: "modbus".into(),
                address: "127.0.0.1".into(),
                edgecore_sock: "/etc/kubeedge/dmi.sock".into(),
            }
        );
    }

    #[test]
    fn missing_protocol_unknown_keys_and_other_modes_are_refused() {
        let base = "grpc_server:\n  socket_path: /s.sock\ncommon:\n  edgecore_sock: /dmi.sock\n";
        // The template leaves the protocol empty (`protocol: # TODO`).
        assert!(matches!(
            Config::parse(&format!("{base}  protocol:\n")),
            Err(ConfigError::Missing("common.protocol"))
        ));
        let ok = format!("{base}  protocol: modbus\n");
        assert!(Config::parse(&ok).is_ok(), "dev_init may be left out");
        assert!(Config::parse(&format!("{ok}dev_init:\n  mode: \"\"\n")).is_ok());
        assert!(matches!(
            Config::parse(&format!("{ok}dev_init:\n  mode: configmap\n")),
            Err(ConfigError::UnsupportedMode(mode)) if mode == "configmap"
        ));
        assert!(matches!(
            Config::parse(&format!("{ok}  prtocol: x\n")),
            Err(ConfigError::Parse(_))
        ));
        assert!(matches!(
            Config::parse(""),
            Err(ConfigError::Missing("grpc_server.socket_path"))
        ));
    }

    #[test]
    fn klog_levels_map_to_ours() {
        let args = |v| Args {
            config_file: "c".into(),
            v,
        };
        assert_eq!(args(1).verbosity(), 0);
        assert_eq!(args(4).verbosity(), 1);
        assert_eq!(args(9).verbosity(), 2);
    }
}
