//! Modules and the context each one runs with.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use kedge_message::Message;

use crate::handle::BusHandle;

/// What a module's run loop may fail with. A failure stops the process.
pub type ModuleError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A unit of a Kedge process: cloudhub, edgecontroller, metamanager, edged...
///
/// A module is registered with the bus before it starts, then [`Module::run`]
/// is called once on its own task. It should return when [`ModuleContext::recv`]
/// yields `None` or [`ModuleContext::cancelled`] completes.
pub trait Module: Send + 'static {
    /// The module's name, unique in the process (`cloudhub`, `websocket`...).
    fn name(&self) -> &str;

    /// The module's group (`cloudhub`, `meta`, `twin`, `hub`...).
    fn group(&self) -> &str;

    /// Runs the module until shutdown.
    fn run(self, ctx: ModuleContext) -> impl Future<Output = Result<(), ModuleError>> + Send
    where
        Self: Sized;
}

/// Whether each enabled module has said it is ready; read by `/readyz`.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    modules: Arc<Vec<(String, Arc<AtomicBool>)>>,
}

impl Readiness {
    pub(crate) fn new(modules: Vec<(String, Arc<AtomicBool>)>) -> Self {
        Self {
            modules: Arc::new(modules),
        }
    }

    /// Names of the modules that are not ready yet, in registration order.
    pub fn pending(&self) -> Vec<&str> {
        self.modules
            .iter()
            .filter(|(_, ready)| !ready.load(Ordering::Acquire))
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// Whether every module is ready.
    pub fn all_ready(&self) -> bool {
        self.modules
            .iter()
            .all(|(_, ready)| ready.load(Ordering::Acquire))
    }
}

/// What a running module holds: its inbox, a handle to the bus, the shutdown
/// token and the task tracker for anything it spawns.
pub struct ModuleContext {
    name: String,
    group: String,
    inbox: mpsc::Receiver<Message>,
    bus: BusHandle,
    tracker: TaskTracker,
    ready: Arc<AtomicBool>,
}

impl std::fmt::Debug for ModuleContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleContext")
            .field("name", &self.name)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl ModuleContext {
    pub(crate) fn new(
        name: String,
        group: String,
        inbox: mpsc::Receiver<Message>,
        bus: BusHandle,
        tracker: TaskTracker,
        ready: Arc<AtomicBool>,
    ) -> Self {
        Self {
            name,
            group,
            inbox,
            bus,
            tracker,
            ready,
        }
    }

    /// This module's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This module's group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The bus, for sending.
    pub fn bus(&self) -> &BusHandle {
        &self.bus
    }

    /// The next message in this module's inbox, or `None` once the process is
    /// shutting down (shutdown wins over queued messages).
    pub async fn recv(&mut self) -> Option<Message> {
        tokio::select! {
            biased;
            () = self.bus.token().cancelled() => None,
            msg = self.inbox.recv() => msg,
        }
    }

    /// Completes when the process starts shutting down.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.bus.token().cancelled()
    }

    /// The process's shutdown token.
    pub fn token(&self) -> &CancellationToken {
        self.bus.token()
    }

    /// Spawns a task that shutdown waits for, inside a span naming this module
    /// and the task.
    pub fn spawn<F>(&self, task: &str, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let span = tracing::info_span!("task", module = %self.name, task);
        self.tracker.spawn(future.instrument(span))
    }

    /// Marks this module ready (listening, connected...) for `/readyz`.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }
}
