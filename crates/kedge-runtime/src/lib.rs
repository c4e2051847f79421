//! Process plumbing shared by the Kedge binaries.
//!
//! `cloudcore`, `edgecore` and the other binaries stay thin: they parse their
//! flags, load their configuration, register their modules on a
//! [`kedge_bus::BusBuilder`] and hand the built bus to [`run`], which
//!
//! * serves `/metrics` (Prometheus text), `/healthz` and `/readyz` on the
//!   admin address ([`admin`]),
//! * starts the modules,
//! * waits for SIGTERM or SIGINT, or for a module to fail ([`signals`]),
//! * and shuts everything down within a grace period; a second signal
//!   forces the exit.
//!
//! [`component::main`] is the whole `main` of a component binary, given a
//! [`component::Component`] description. [`logging::init`] sets up `tracing` from a verbosity count.

pub mod admin;
pub mod cli;
pub mod component;
pub mod logging;
mod pending;
mod process;
pub mod signals;

pub use pending::PendingModule;
pub use process::{RunError, RunOptions, run};
