//! The mapper SDK: KubeEdge's mapper framework (devices.md §6) in Rust.
//!
//! A mapper drives the devices of one protocol for edgecore. It serves
//! DMI's `DeviceMapperService` on its own unix socket, registers with
//! edgecore (`MapperRegister` with `withData`, retried with backoff until
//! edgecore answers), and runs one task per device that:
//!
//! 1. connects through the protocol [`Driver`] (retrying with backoff),
//! 2. writes each property's desired value unless the model marks it
//!    `ReadOnly` — at start and whenever an `UpdateDevice` changes it,
//! 3. reads every property each `collectCycle` and reports the reported
//!    and observed-desired values with `ReportDeviceStatus`,
//! 4. pushes values over HTTP or MQTT each `reportCycle` when the
//!    property's `pushMethod` asks for it.
//!
//! Cycles are accepted in both units KubeEdge has used ([`cycle`]). Report
//! and push failures are logged and counted ([`Metrics`]), never fatal.
//! Unlike KubeEdge v1.15's template, the SDK takes twins from
//! `spec.properties` (falling back to `status.twins` for v1.15 manifests),
//! treats `pushMethod` as optional, honours `reportToCloud`, and accepts an
//! empty `dev_init.mode`.
//!
//! Two drivers come with it: [`modbus::ModbusDriver`] (Modbus TCP and RTU)
//! and [`virtual_device::VirtualDriver`] (random values), with the binaries
//! `mapper-modbus` and `mapper-virtual`. A mapper binary is one line:
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     kedge_mapper::main(kedge_mapper::virtual_device::VirtualDriver)
//! }
//! ```

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser as _;
use kedge_dmi::socket::SocketError;
use kedge_dmi::v1beta1 as dmi;
use kedge_dmi::v1beta1::device_mapper_service_server::DeviceMapperServiceServer;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

pub mod config;
mod device;
pub mod driver;
mod edgecore;
pub mod modbus;
mod panel;
mod push;
pub mod settings;
pub mod virtual_device;

pub use config::{Args, Config, ConfigError};
pub use device::cycle;
pub use driver::{DataType, DeviceClient, DeviceState, Driver, DriverError, PropertyInfo, Value};
pub use edgecore::Metrics;

use crate::edgecore::Edgecore;
use crate::panel::{MapperService, Panel};

/// Why a mapper stopped with an error.
#[derive(Debug, Error)]
pub enum MapperError {
    /// The mapper's socket could not be served.
    #[error("cannot serve the mapper socket")]
    Socket(#[from] SocketError),
    /// Serving the mapper socket failed.
    #[error("serving the mapper socket failed")]
    Serve(#[from] tonic::transport::Error),
    /// The server task panicked.
    #[error("the server task failed")]
    Join(#[from] tokio::task::JoinError),
}

/// A mapper: a configuration and a driver.
pub struct Mapper<D: Driver> {
    /// The configuration.
    config: Config,
    /// The protocol driver.
    driver: D,
    /// Counters.
    metrics: Arc<Metrics>,
}

impl<D: Driver> Mapper<D> {
    /// A mapper for `config`, driving devices with `driver`.
    pub fn new(config: Config, driver: D) -> Self {
        Self {
            config,
            driver,
            metrics: Arc::default(),
        }
    }

    /// The mapper's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Runs the mapper until `shutdown` is cancelled: serves its socket,
    /// registers with edgecore and drives the devices edgecore hands it;
    /// then stops every device.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), MapperError> {
        let config = self.config;
        let edgecore = Edgecore::new(&config.edgecore_sock, Arc::clone(&self.metrics));
        let panel = Arc::new(Panel::new(
            self.driver,
            edgecore.clone(),
            Arc::clone(&self.metrics),
            shutdown.child_token(),
        ));
        let service = DeviceMapperServiceServer::new(MapperService {
            panel: Arc::clone(&panel),
        });
        let server = kedge_dmi::socket::serve(
            Routes::new(service),
            &config.socket_path,
            shutdown.clone().cancelled_owned(),
        )?;
        let mut server = tokio::spawn(server);
        tracing::info!(
            socket = %config.socket_path.display(),
            protocol = %config.protocol,
            "mapper serving"
        );

        let mapper = dmi::MapperInfo {
            name: config.name.clone(),
            version: config.version.clone(),
            api_version: config.api_version.clone(),
            protocol: config.protocol.clone(),
            address: config.socket_path.as_os_str().as_encoded_bytes().to_vec(),
            state: "ok".into(),
        };
        let registering = async {
            if let Some(answer) = edgecore.register(mapper, &shutdown).await {
                tracing::info!(
                    edgecore = %config.edgecore_sock.display(),
                    devices = answer.device_list.len(),
                    "registered with edgecore"
                );
                panel.start_all(answer).await;
            }
            shutdown.cancelled().await;
        };
        let ended_early = tokio::select! {
            served = &mut server => Some(served),
            () = registering => None,
        };
        panel.stop_all().await;
        let served = match ended_early {
            Some(served) => served,
            None => server.await,
        };
        served??;
        tracing::info!("mapper stopped");
        Ok(())
    }
}

/// The `main` of a mapper binary: parses `--config-file` and `--v`, loads
/// the configuration, sets up logging and runs a [`Mapper`] with `driver`
/// until SIGTERM or SIGINT (a second signal forces the exit). Exits 1 when
/// the configuration is refused or the mapper fails.
pub fn main<D: Driver>(driver: D) -> ExitCode {
    let args = Args::parse();
    match run_main(&args, driver) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            // Logging may not be set up yet (a refused configuration).
            let _ = writeln!(std::io::stderr(), "mapper: {message}");
            ExitCode::FAILURE
        }
    }
}

/// [`main`] after the arguments.
fn run_main<D: Driver>(args: &Args, driver: D) -> Result<(), String> {
    let path: &PathBuf = &args.config_file;
    let config = Config::load(path).map_err(|error| {
        format!(
            "configuration {} refused: {}",
            path.display(),
            device::error_chain(&error)
        )
    })?;
    kedge_runtime::logging::init(args.verbosity());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the async runtime: {error}"))?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        kedge_runtime::signals::spawn_handler(shutdown.clone())
            .map_err(|error| format!("cannot watch signals: {error}"))?;
        Mapper::new(config, driver)
            .run(shutdown)
            .await
            .map_err(|error| device::error_chain(&error))
    })
}
