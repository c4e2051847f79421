//! Errors of the module bus.

use std::time::Duration;

/// Why a bus operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// No enabled module has this name.
    #[error("no enabled module is named {0:?}")]
    UnknownModule(String),
    /// No enabled module belongs to this group.
    #[error("no enabled module belongs to group {0:?}")]
    UnknownGroup(String),
    /// Two modules were registered under one name.
    #[error("a module named {0:?} is already registered")]
    DuplicateModule(String),
    /// The module's inbox is full and the caller asked not to wait.
    #[error("the inbox of module {0:?} is full")]
    Full(String),
    /// The module has stopped and no longer receives.
    #[error("module {0:?} has stopped")]
    ModuleStopped(String),
    /// No response arrived for a synchronous request in time.
    #[error("no response to message {id} within {timeout:?}")]
    Timeout {
        /// Id of the request.
        id: String,
        /// How long the caller waited.
        timeout: Duration,
    },
    /// A response names a parent id that no synchronous request waits for.
    #[error("no request waits for a response to message {0:?}")]
    NoWaiter(String),
    /// A synchronous request reused the id of one still waiting.
    #[error("a request with message id {0:?} is already waiting")]
    DuplicateRequest(String),
    /// The bus is shutting down.
    #[error("the bus is shutting down")]
    ShuttingDown,
}
