//! Building, starting and stopping a bus.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use kedge_message::Message;

use crate::error::BusError;
use crate::handle::{BusHandle, Route, Shared};
use crate::metrics::{BusMetrics, InboxDepth};
use crate::module::{Module, ModuleContext, ModuleError, Readiness};

/// Settings of a bus.
#[derive(Clone, Debug)]
pub struct BusConfig {
    /// Capacity of every module's inbox, in messages (KubeEdge's beehive
    /// uses 1024).
    pub inbox_capacity: usize,
    /// Timeout of a synchronous send when the caller gives none (beehive's
    /// default is 30 s).
    pub default_sync_timeout: Duration,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            inbox_capacity: 1024,
            default_sync_timeout: Duration::from_secs(30),
        }
    }
}

type RunFn = Box<
    dyn FnOnce(ModuleContext) -> Pin<Box<dyn Future<Output = Result<(), ModuleError>> + Send>>
        + Send,
>;

/// A module waiting to be started.
struct Registered {
    name: String,
    group: String,
    run: RunFn,
}

/// Collects the modules of a process before the bus is built.
pub struct BusBuilder {
    config: BusConfig,
    modules: Vec<Registered>,
    disabled: BTreeSet<String>,
}

impl BusBuilder {
    /// An empty builder.
    pub fn new(config: BusConfig) -> Self {
        Self {
            config,
            modules: Vec::new(),
            disabled: BTreeSet::new(),
        }
    }

    /// Registers `module`. A disabled module is remembered by name only: it
    /// gets no inbox, is never started, and sends to it fail with
    /// [`BusError::UnknownModule`].
    pub fn register<M: Module>(&mut self, module: M, enabled: bool) -> Result<&mut Self, BusError> {
        let name = module.name().to_owned();
        if self.disabled.contains(&name) || self.modules.iter().any(|m| m.name == name) {
            return Err(BusError::DuplicateModule(name));
        }
        if !enabled {
            tracing::info!(module = %name, "module disabled by configuration");
            self.disabled.insert(name);
            return Ok(self);
        }
        let group = module.group().to_owned();
        self.modules.push(Registered {
            name,
            group,
            run: Box::new(move |ctx| Box::pin(module.run(ctx))),
        });
        Ok(self)
    }

    /// Builds the bus: one bounded inbox per enabled module, the routing
    /// tables, and the metrics in `registry`.
    pub fn build(self, registry: &mut Registry) -> Bus {
        let metrics = BusMetrics::register(registry);
        let token = CancellationToken::new();
        let mut routes = HashMap::new();
        let mut groups: HashMap<String, Vec<String>> = HashMap::new();
        let mut inboxes = Vec::new();
        let mut pending = Vec::new();
        for module in self.modules {
            let (tx, rx) = mpsc::channel::<Message>(self.config.inbox_capacity.max(1));
            inboxes.push((module.name.clone(), tx.clone()));
            routes.insert(
                module.name.clone(),
                Route {
                    tx,
                    counters: metrics.for_module(&module.name),
                },
            );
            groups
                .entry(module.group.clone())
                .or_default()
                .push(module.name.clone());
            pending.push((module, rx));
        }
        registry.register_collector(Box::new(InboxDepth::new(inboxes)));
        let handle = BusHandle {
            shared: Arc::new(Shared {
                routes,
                groups,
                waiters: Mutex::new(HashMap::new()),
                token,
                default_timeout: self.config.default_sync_timeout,
            }),
        };
        Bus { handle, pending }
    }
}

/// A built bus whose modules have not started yet. Its handle can already
/// queue messages.
pub struct Bus {
    handle: BusHandle,
    pending: Vec<(Registered, mpsc::Receiver<Message>)>,
}

impl Bus {
    /// A handle for sending.
    pub fn handle(&self) -> BusHandle {
        self.handle.clone()
    }

    /// Starts every enabled module on its own task.
    pub fn start(self) -> RunningBus {
        let tracker = TaskTracker::new();
        let state = Arc::new(RunState::default());
        let mut readiness = Vec::new();
        for (module, inbox) in self.pending {
            let ready = Arc::new(AtomicBool::new(false));
            readiness.push((module.name.clone(), ready.clone()));
            let ctx = ModuleContext::new(
                module.name.clone(),
                module.group.clone(),
                inbox,
                self.handle.clone(),
                tracker.clone(),
                ready,
            );
            state.lock_running().insert(module.name.clone());
            let span = tracing::info_span!("module", name = %module.name, group = %module.group);
            let token = self.handle.token().clone();
            let state = state.clone();
            let name = module.name;
            let run = module.run;
            tracker.spawn(
                async move {
                    tracing::info!("module started");
                    let result = run(ctx).await;
                    state.lock_running().remove(&name);
                    match result {
                        Ok(()) if token.is_cancelled() => tracing::info!("module stopped"),
                        Ok(()) => tracing::warn!("module returned before shutdown"),
                        Err(error) => {
                            tracing::error!(%error, "module failed; stopping the process");
                            state.lock_failed().push((name, error.to_string()));
                            token.cancel();
                        }
                    }
                }
                .instrument(span),
            );
        }
        RunningBus {
            handle: self.handle,
            tracker,
            state,
            readiness: Readiness::new(readiness),
        }
    }
}

/// Which modules still run and which failed.
#[derive(Default)]
struct RunState {
    running: Mutex<BTreeSet<String>>,
    failed: Mutex<Vec<(String, String)>>,
}

impl RunState {
    fn lock_running(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_failed(&self) -> std::sync::MutexGuard<'_, Vec<(String, String)>> {
        self.failed.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A bus whose modules are running.
pub struct RunningBus {
    handle: BusHandle,
    tracker: TaskTracker,
    state: Arc<RunState>,
    readiness: Readiness,
}

impl RunningBus {
    /// A handle for sending.
    pub fn handle(&self) -> BusHandle {
        self.handle.clone()
    }

    /// The shutdown token shared by every module.
    pub fn token(&self) -> CancellationToken {
        self.handle.token().clone()
    }

    /// The task tracker that shutdown waits for; other long-running parts of
    /// the process (an admin server, say) may spawn on it too.
    pub fn tracker(&self) -> TaskTracker {
        self.tracker.clone()
    }

    /// Readiness of every enabled module.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Cancels the token and waits up to `grace` for every module and every
    /// task on the tracker to finish.
    pub async fn shutdown(self, grace: Duration) -> ShutdownReport {
        self.handle.token().cancel();
        self.tracker.close();
        let finished = tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok();
        let still_running = if finished {
            Vec::new()
        } else {
            let running: Vec<String> = self.state.lock_running().iter().cloned().collect();
            tracing::warn!(
                ?running,
                ?grace,
                "modules did not stop within the grace period"
            );
            running
        };
        ShutdownReport {
            timed_out: !finished,
            still_running,
            failed: std::mem::take(&mut *self.state.lock_failed()),
        }
    }
}

/// How a shutdown went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Whether the grace period ran out before every task finished.
    pub timed_out: bool,
    /// Modules still running when the grace period ran out.
    pub still_running: Vec<String>,
    /// Modules that failed, with their error, before or during shutdown.
    pub failed: Vec<(String, String)>,
}

impl ShutdownReport {
    /// Every task finished in time and no module failed.
    pub fn is_clean(&self) -> bool {
        !self.timed_out && self.failed.is_empty()
    }
}
