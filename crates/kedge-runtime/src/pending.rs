//! A module whose behaviour later work adds.

use kedge_bus::{Module, ModuleContext, ModuleError};

/// A module that takes part in the process lifecycle (started when enabled,
/// ready at once, stopped on shutdown) but has no behaviour yet: every
/// message it receives is logged as unhandled and dropped, and a synchronous
/// request is answered with an error reply at once. Each KubeEdge
/// module is registered this way until its own implementation replaces it,
/// so configuration, routing and shutdown already cover the whole process.
#[derive(Debug, Clone)]
pub struct PendingModule {
    name: &'static str,
    group: &'static str,
}

impl PendingModule {
    /// A pending module named `name` in group `group`.
    pub const fn new(name: &'static str, group: &'static str) -> Self {
        Self { name, group }
    }
}

impl Module for PendingModule {
    fn name(&self) -> &str {
        self.name
    }

    fn group(&self) -> &str {
        self.group
    }

    async fn run(self, mut ctx: ModuleContext) -> Result<(), ModuleError> {
        ctx.set_ready();
        while let Some(msg) = ctx.recv().await {
            tracing::warn!(
                module = self.name,
                operation = %msg.router.operation,
                resource = %msg.router.resource,
                "no handler in this module yet; message dropped"
            );
            if msg.header.sync {
                // A synchronous caller would otherwise wait for its timeout.
                let reply = msg.error_response(format!("module {} has no handler yet", self.name));
                if let Err(err) = ctx.bus().send_response(reply) {
                    tracing::debug!(%err, "caller stopped waiting");
                }
            }
        }
        Ok(())
    }
}
