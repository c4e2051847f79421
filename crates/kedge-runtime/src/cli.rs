//! Flags shared by `cloudcore` and `edgecore`, as KubeEdge spells them.

use std::path::PathBuf;

/// The flags every Kedge component takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ComponentArgs {
    /// The configuration file to run with.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the full default configuration and exit.
    #[arg(long, conflicts_with_all = ["minconfig", "config"])]
    pub defaultconfig: bool,
    /// Print the minimal configuration and exit.
    #[arg(long, conflicts_with = "config")]
    pub minconfig: bool,
    /// More log output: -v debug, -vv trace (RUST_LOG overrides).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// The version every component reports after its name for `--version`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (Kedge; KubeEdge v1.15 wire compatible)"
);

/// The version line of `component`, as `--version` prints it.
pub fn version_line(component: &str) -> String {
    format!("{component} {VERSION}")
}
