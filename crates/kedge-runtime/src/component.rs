//! The `main` of every component binary.
//!
//! A component (cloudcore, edgecore) describes itself with [`Component`]:
//! its name, where its configuration file lives, how the file is loaded and
//! printed, and which modules it registers. [`main`] does the rest the way
//! KubeEdge's commands do: `--version`, `--defaultconfig`, `--minconfig`,
//! `--config FILE`, then logging, the module bus and [`crate::run`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, FromArgMatches};
use kedge_apis::config::{ConfigError, HostInfo};
use kedge_bus::{BusBuilder, BusConfig, BusError};
use prometheus_client::registry::Registry;

use crate::cli::{ComponentArgs, VERSION, version_line};
use crate::{RunOptions, logging, run};

/// How long shutdown waits for the modules to stop.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// A component binary: its configuration file and its modules.
pub trait Component {
    /// The parsed configuration file.
    type Config;

    /// The binary name, such as `cloudcore`.
    const NAME: &'static str;
    /// One line on what the component is, for `--help`.
    const ABOUT: &'static str;
    /// The file read when `--config` is not given, as in KubeEdge.
    const DEFAULT_CONFIG_PATH: &'static str;

    /// The full default configuration as YAML (`--defaultconfig`).
    fn default_config_yaml(host: &HostInfo) -> Result<String, ConfigError>;
    /// The minimal configuration as YAML (`--minconfig`).
    fn min_config_yaml(host: &HostInfo) -> Result<String, ConfigError>;
    /// Loads and validates the configuration file at `path`.
    fn load(path: &Path) -> Result<Self::Config, ConfigError>;
    /// The `IP:port` of the monitor server (`/metrics`, `/healthz`, `/readyz`).
    fn monitor_address(config: &Self::Config) -> String;
    /// Registers the component's modules, enabled or not as configured;
    /// their metrics go in `registry`, which the monitor server serves.
    fn register_modules(
        builder: &mut BusBuilder,
        config: &Self::Config,
        registry: &mut Registry,
    ) -> Result<(), BusError>;
}

/// Runs component `C` with the process's arguments and returns its exit
/// status: 0 after a clean stop or a printed configuration, 1 when the
/// configuration is refused or the process fails, 2 on bad flags.
pub fn main<C: Component>() -> ExitCode {
    let command = clap::Command::new(C::NAME).about(C::ABOUT).version(VERSION);
    let matches = ComponentArgs::augment_args(command).get_matches();
    let args = match ComponentArgs::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(error) => error.exit(),
    };
    match run_component::<C>(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            // Logging may not be set up yet (a refused configuration), so the
            // reason goes straight to standard error.
            let _ = writeln!(std::io::stderr(), "{}: {message}", C::NAME);
            ExitCode::FAILURE
        }
    }
}

fn run_component<C: Component>(args: ComponentArgs) -> Result<(), String> {
    if args.defaultconfig || args.minconfig {
        let host = HostInfo::detect();
        let yaml = if args.defaultconfig {
            C::default_config_yaml(&host)
        } else {
            C::min_config_yaml(&host)
        }
        .map_err(|error| error.to_string())?;
        return std::io::stdout()
            .write_all(yaml.as_bytes())
            .map_err(|error| format!("cannot write the configuration: {error}"));
    }

    let path = args
        .config
        .unwrap_or_else(|| PathBuf::from(C::DEFAULT_CONFIG_PATH));
    let config = C::load(&path).map_err(|error| {
        format!(
            "configuration {} refused: {error}\n(write a fresh one with `{} --defaultconfig` or `{} --minconfig`)",
            path.display(),
            C::NAME,
            C::NAME
        )
    })?;

    logging::init(args.verbose);
    tracing::info!(version = %version_line(C::NAME), config = %path.display(), "starting");

    let mut registry = Registry::default();
    let mut builder = BusBuilder::new(BusConfig::default());
    C::register_modules(&mut builder, &config, &mut registry).map_err(|error| error.to_string())?;
    let options = RunOptions {
        admin_address: C::monitor_address(&config),
        grace: SHUTDOWN_GRACE,
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(C::NAME)
        .build()
        .map_err(|error| format!("cannot start the async runtime: {error}"))?;
    runtime
        .block_on(async move {
            let bus = builder.build(&mut registry);
            run(bus, registry, options).await
        })
        .map_err(|error| {
            tracing::error!(%error, "stopped with an error");
            error.to_string()
        })
}
