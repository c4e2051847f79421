//! Test doubles shared by the modules' unit tests.

use kedge_bus::{Module, ModuleContext, ModuleError};
use kedge_message::Message;
use tokio::sync::mpsc;

/// A stand-in module that passes everything it receives to the test.
pub(crate) struct Recorder {
    /// The module name it registers as.
    pub(crate) name: &'static str,
    /// Its group.
    pub(crate) group: &'static str,
    /// Where what it receives goes.
    pub(crate) seen: mpsc::UnboundedSender<Message>,
}

impl Module for Recorder {
    fn name(&self) -> &str {
        self.name
    }

    fn group(&self) -> &str {
        self.group
    }

    async fn run(self, mut ctx: ModuleContext) -> Result<(), ModuleError> {
        ctx.set_ready();
        while let Some(msg) = ctx.recv().await {
            if self.seen.send(msg).is_err() {
                break;
            }
        }
        Ok(())
    }
}
