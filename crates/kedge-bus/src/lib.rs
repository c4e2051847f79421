//! The module bus: the Rust counterpart of KubeEdge's beehive.
//!
//! Every Kedge process (cloudcore, edgecore) is a set of *modules*. A module
//! has a name and a group, is enabled or disabled by configuration, owns its
//! state, and talks to other modules only by sending [`Message`]s through the
//! bus:
//!
//! * to one module by name ([`BusHandle::send`]),
//! * to every module of a group ([`BusHandle::send_to_group`]),
//! * synchronously, awaiting the response whose parent id is the request id,
//!   with a timeout ([`BusHandle::send_sync`], answered by
//!   [`BusHandle::send_response`]).
//!
//! Each module receives on its own bounded inbox. A full inbox makes senders
//! wait (back-pressure) and is counted in the `kedge_bus_inbox_full` metric;
//! nothing grows without bound. Because sends wait, modules that send to each
//! other in a cycle must not both block on a full inbox: a module that must
//! never wait (a network reader, say) uses [`BusHandle::try_send`].
//!
//! Shutdown is one [`CancellationToken`] and one [`TaskTracker`]: every module
//! and every task a module spawns through its context runs on the tracker, and
//! [`RunningBus::shutdown`] cancels the token and waits for all of them within
//! a grace period. A module that fails cancels the token, so the process stops
//! rather than running on without it.
//!
//! ```
//! use kedge_bus::{BusBuilder, BusConfig, Module, ModuleContext, ModuleError};
//! use kedge_message::Message;
//! use std::time::Duration;
//!
//! /// Answers every request with "OK".
//! struct Echo;
//!
//! impl Module for Echo {
//!     fn name(&self) -> &str { "echo" }
//!     fn group(&self) -> &str { "meta" }
//!     async fn run(self, mut ctx: ModuleContext) -> Result<(), ModuleError> {
//!         while let Some(msg) = ctx.recv().await {
//!             ctx.bus().send_response(msg.ack())?;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut registry = prometheus_client::registry::Registry::default();
//! let mut builder = BusBuilder::new(BusConfig::default());
//! builder.register(Echo, true)?;
//! let bus = builder.build(&mut registry).start();
//!
//! let request = Message::new("edged", "meta", "query", "default/configmap/cfg", serde_json::Value::Null);
//! let reply = bus.handle().send_sync("echo", request.clone(), None).await?;
//! assert_eq!(reply.parent_id(), request.id());
//!
//! let report = bus.shutdown(Duration::from_secs(5)).await;
//! assert!(report.is_clean());
//! # Ok(())
//! # }
//! ```

mod bus;
mod error;
mod handle;
mod metrics;
mod module;

pub use bus::{Bus, BusBuilder, BusConfig, RunningBus, ShutdownReport};
pub use error::BusError;
pub use handle::BusHandle;
pub use module::{Module, ModuleContext, ModuleError, Readiness};

pub use kedge_message::Message;
pub use tokio_util::sync::CancellationToken;
pub use tokio_util::task::TaskTracker;
