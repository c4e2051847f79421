//! KubeEdge API types for Kedge.
//!
//! This crate is the bottom of the Kedge workspace: plain data types with
//! serde support and no I/O beyond reading a configuration file. It mirrors
//! the Go package tree `pkg/apis` of KubeEdge v1.15, so that files and objects
//! written for KubeEdge are read by Kedge unchanged.
//!
//! Today it holds the component configuration files:
//!
//! - [`config::cloudcore::CloudCoreConfig`], for `cloudcore.yaml`
//!   (`cloudcore.config.kubeedge.io/v1alpha2`, kind `CloudCore`), plus the
//!   Kedge-only `controlPlane` section for the embedded Kubernetes control
//!   plane;
//! - [`config::edgecore::EdgeCoreConfig`], for `edgecore.yaml`
//!   (`edgecore.config.kubeedge.io/v1alpha2`, kind `EdgeCore`), plus the
//!   Kedge-only `monitorServer` section.
//!
//! Both are loaded the way KubeEdge loads them: the file is laid over the
//! built-in defaults, so a file only needs the fields it changes. Unlike
//! KubeEdge, an unknown or mistyped field is an error naming its full path,
//! and the result is validated before it is returned.
//!
//! Beside `config`, [`reliablesyncs`] holds the ObjectSync and
//! ClusterObjectSync custom resources, [`devices`] the DeviceModel and
//! Device ones, and [`quantity`] reads Kubernetes quantities.
//!
//! ```no_run
//! use kedge_apis::config::HostInfo;
//! use kedge_apis::config::cloudcore::CloudCoreConfig;
//!
//! # fn main() -> Result<(), kedge_apis::config::ConfigError> {
//! let config = CloudCoreConfig::load("/etc/kubeedge/config/cloudcore.yaml")?;
//! if config.modules.cloud_hub.enable {
//!     println!("cloudhub listens on port {}", config.modules.cloud_hub.websocket.port);
//! }
//! // What `cloudcore --defaultconfig` prints:
//! let yaml = CloudCoreConfig::default_config(&HostInfo::detect()).to_yaml()?;
//! # let _ = yaml;
//! # Ok(())
//! # }
//! ```

pub mod config;
pub mod devices;
pub mod quantity;
pub mod reliablesyncs;
