//! Sending on the bus: to a module, to a group, synchronously, and responses.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use kedge_message::Message;

use crate::error::BusError;
use crate::metrics::ModuleCounters;

/// Where messages for one module go.
pub(crate) struct Route {
    pub(crate) tx: mpsc::Sender<Message>,
    pub(crate) counters: ModuleCounters,
}

/// Synchronous requests waiting for their response, by request id.
type Waiters = Mutex<HashMap<String, oneshot::Sender<Message>>>;

/// State shared by every handle of one bus. Routes and groups are fixed when
/// the bus is built; only the waiter table changes afterwards.
pub(crate) struct Shared {
    pub(crate) routes: HashMap<String, Route>,
    pub(crate) groups: HashMap<String, Vec<String>>,
    /// A plain mutex: it is held only to insert or remove one entry, never
    /// across an await.
    pub(crate) waiters: Waiters,
    pub(crate) token: CancellationToken,
    pub(crate) default_timeout: Duration,
}

/// A cheap, cloneable handle for sending on the bus.
#[derive(Clone)]
pub struct BusHandle {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for BusHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut modules: Vec<&String> = self.shared.routes.keys().collect();
        modules.sort();
        f.debug_struct("BusHandle")
            .field("modules", &modules)
            .finish()
    }
}

impl BusHandle {
    /// Sends `msg` to the module named `module`, waiting while its inbox is
    /// full. Fails if no such module is enabled, it has stopped, or the bus
    /// shuts down while waiting.
    pub async fn send(&self, module: &str, msg: Message) -> Result<(), BusError> {
        let route = self.route(module)?;
        self.deliver(module, route, msg).await
    }

    /// Sends `msg` to the module named `module` without waiting: a full inbox
    /// is an error ([`BusError::Full`]) and the message is returned to nobody.
    pub fn try_send(&self, module: &str, msg: Message) -> Result<(), BusError> {
        let route = self.route(module)?;
        match route.tx.try_send(msg) {
            Ok(()) => {
                route.counters.sent.inc();
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                route.counters.inbox_full.inc();
                Err(BusError::Full(module.to_owned()))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(BusError::ModuleStopped(module.to_owned()))
            }
        }
    }

    /// Sends a copy of `msg` to every enabled module of `group` and returns
    /// how many received it. A member that has stopped is skipped; the call
    /// fails only if no member received the message.
    pub async fn send_to_group(&self, group: &str, msg: Message) -> Result<usize, BusError> {
        let members = self
            .shared
            .groups
            .get(group)
            .ok_or_else(|| BusError::UnknownGroup(group.to_owned()))?;
        let mut delivered = 0;
        let mut last_error = None;
        let mut msg = Some(msg);
        for (index, name) in members.iter().enumerate() {
            let route = self.route(name)?;
            // The last member takes the original; the others get copies.
            let copy = if index + 1 == members.len() {
                msg.take()
            } else {
                msg.clone()
            };
            let Some(copy) = copy else { break };
            match self.deliver(name, route, copy).await {
                Ok(()) => delivered += 1,
                Err(BusError::ShuttingDown) => return Err(BusError::ShuttingDown),
                Err(error) => {
                    tracing::warn!(group, module = %name, %error, "group member did not receive");
                    last_error = Some(error);
                }
            }
        }
        match (delivered, last_error) {
            (0, Some(error)) => Err(error),
            _ => Ok(delivered),
        }
    }

    /// Sends `msg` to `module` marked as synchronous and waits for the
    /// response whose parent id is `msg`'s id. `timeout` bounds the whole
    /// exchange, including any wait for inbox space; `None` means the bus's
    /// default.
    pub async fn send_sync(
        &self,
        module: &str,
        mut msg: Message,
        timeout: Option<Duration>,
    ) -> Result<Message, BusError> {
        let timeout = timeout.unwrap_or(self.shared.default_timeout);
        let route = self.route(module)?;
        msg.header.sync = true;
        let id = msg.header.id.clone();
        let (tx, rx) = oneshot::channel();
        {
            let mut waiters = self.lock_waiters();
            if waiters.contains_key(&id) {
                return Err(BusError::DuplicateRequest(id));
            }
            waiters.insert(id.clone(), tx);
        }
        // Removes the waiter however this function ends: response, error,
        // timeout or the caller dropping the future.
        let _waiter = WaiterGuard {
            shared: &self.shared,
            id: &id,
        };
        let exchange = async {
            self.deliver(module, route, msg).await?;
            tokio::select! {
                biased;
                response = rx => response.map_err(|_| BusError::ShuttingDown),
                () = self.shared.token.cancelled() => Err(BusError::ShuttingDown),
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => {
                route.counters.sync_timeouts.inc();
                Err(BusError::Timeout {
                    id: id.clone(),
                    timeout,
                })
            }
        }
    }

    /// Hands `response` to the synchronous request waiting for it (the one
    /// whose id is `response`'s parent id). A response nobody waits for (the
    /// request timed out, or the process restarted) is an error the caller
    /// usually logs and drops, as KubeEdge does.
    pub fn send_response(&self, response: Message) -> Result<(), BusError> {
        let waiter = self.lock_waiters().remove(response.parent_id());
        match waiter {
            Some(tx) => {
                let parent = response.parent_id().to_owned();
                tx.send(response).map_err(|_| BusError::NoWaiter(parent))
            }
            None => Err(BusError::NoWaiter(response.parent_id().to_owned())),
        }
    }

    /// Whether a synchronous request waits for a response to `parent_id`.
    pub fn is_waiting(&self, parent_id: &str) -> bool {
        self.lock_waiters().contains_key(parent_id)
    }

    /// Whether an enabled module has this name.
    pub fn has_module(&self, module: &str) -> bool {
        self.shared.routes.contains_key(module)
    }

    /// The bus's shutdown token: cancelled when the process stops.
    pub fn token(&self) -> &CancellationToken {
        &self.shared.token
    }

    fn route(&self, module: &str) -> Result<&Route, BusError> {
        self.shared
            .routes
            .get(module)
            .ok_or_else(|| BusError::UnknownModule(module.to_owned()))
    }

    fn lock_waiters(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Message>>> {
        // No code panics while holding this lock, so poisoning cannot leave
        // the map inconsistent: take it back.
        self.shared
            .waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn deliver(&self, module: &str, route: &Route, msg: Message) -> Result<(), BusError> {
        if self.shared.token.is_cancelled() {
            return Err(BusError::ShuttingDown);
        }
        let msg = match route.tx.try_send(msg) {
            Ok(()) => {
                route.counters.sent.inc();
                return Ok(());
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(BusError::ModuleStopped(module.to_owned()));
            }
            Err(mpsc::error::TrySendError::Full(msg)) => {
                route.counters.inbox_full.inc();
                tracing::debug!(module, "inbox full, waiting for space");
                msg
            }
        };
        tokio::select! {
            biased;
            () = self.shared.token.cancelled() => Err(BusError::ShuttingDown),
            sent = route.tx.send(msg) => match sent {
                Ok(()) => {
                    route.counters.sent.inc();
                    Ok(())
                }
                Err(_) => Err(BusError::ModuleStopped(module.to_owned())),
            },
        }
    }
}

/// Removes a synchronous request's waiter when dropped.
struct WaiterGuard<'a> {
    shared: &'a Shared,
    id: &'a str,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.shared
            .waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(self.id);
    }
}
