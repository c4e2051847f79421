//! How EdgeHub reaches the cloud: one [`Dialer::dial`] per connection
//! attempt, whatever the transport.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use kedge_transport::link::Link;

/// Any error, boxed, as a transport reports it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What [`Dialer::dial`] returns.
pub type DialFuture = Pin<Box<dyn Future<Output = Result<Link, DialError>> + Send + 'static>>;

/// What [`Dialer::prepare`] returns.
pub type PrepareFuture = Pin<Box<dyn Future<Output = Result<(), DialError>> + Send + 'static>>;

/// Opens links to the cloud. EdgeHub calls [`dial`](Self::dial) for every
/// connection attempt and retries with backoff when it fails.
pub trait Dialer: Send + Sync + 'static {
    /// Waits until a dial may start: for a turn at shared resources (a
    /// slot to request a certificate, a connection rate), which can take
    /// long when many nodes share them. Callers do not count this wait
    /// against a dial's deadline. By default there is nothing to wait for.
    fn prepare(&self) -> PrepareFuture {
        Box::pin(async { Ok(()) })
    }

    /// Opens a link to the cloud.
    fn dial(&self) -> DialFuture;
}

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The cloud could not be reached or refused the connection.
    #[error("cannot connect to the cloud at {server}")]
    Connect {
        /// The address dialled.
        server: String,
        /// What the transport said.
        #[source]
        source: BoxError,
    },
    /// The node has no usable certificate and could not get one.
    #[error("the node certificate is not available")]
    Certificates {
        /// What the certificate bootstrap said.
        #[source]
        source: BoxError,
    },
    /// The attempt took longer than EdgeHub allows.
    #[error("no link to the cloud within {0:?}")]
    Timeout(Duration),
    /// This build or configuration has no transport to dial with.
    #[error("no transport to the cloud: {0}")]
    Unavailable(String),
}

/// A dialer that always fails: for configurations whose transport Kedge
/// does not provide. EdgeHub still runs (status reports wait in the
/// outbox) and says why it cannot connect on every attempt.
#[derive(Debug, Clone)]
pub struct UnavailableDialer {
    reason: String,
}

impl UnavailableDialer {
    /// A dialer failing with `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

impl Dialer for UnavailableDialer {
    fn dial(&self) -> DialFuture {
        let reason = self.reason.clone();
        Box::pin(async move { Err(DialError::Unavailable(reason)) })
    }
}
