//! EdgeHub: the edge end of the cloud-edge link, module `websocket` of
//! group `hub` (protocol.md §2.7, §3.5, §5.4-5.5).
//!
//! EdgeHub owns the link to CloudHub. It
//!
//! * **connects** through a [`Dialer`] ([`CloudDialer`] in edgecore: the
//!   node certificate, then WebSocket or Kedge QUIC) and, once connected, sends a
//!   keepalive at once and then every `heartbeat` seconds. When a dial
//!   fails or the link ends it waits with exponential backoff and full
//!   jitter ([`backoff`]) before the next attempt; a connection that stayed
//!   up for at least `reconnectBackoffMax` resets the backoff; when the
//!   cloud closed the link because it stops, the attempts are spread over
//!   the window it gave (docs/link.md, Connections). Every change
//!   of link state is announced to the `twin`, `meta` and `bus` groups
//!   (`node/connection` / `connect`, `cloud_connected` or
//!   `cloud_disconnected`), as KubeEdge does;
//! * **routes downstream** messages to edge modules ([`routing`]) without
//!   ever letting a slow module stall the link reader;
//! * **forwards upstream** every message sent to module `websocket`, paced
//!   by a token bucket ([`throttle`], `messageQPS` / `messageBurst`).
//!   While the link is down, ordinary messages are refused (a synchronous
//!   caller gets an `error` reply at once; others are dropped and counted),
//!   but status reports ([`outbox::is_durable`]) are kept in an SQLite
//!   [`outbox`] before they are sent, resent with their original `msg_id`
//!   after every reconnect and whenever the cloud has not answered one
//!   within `outboxResendAfter` (it may have dropped it over its rate
//!   limit), and deleted once the cloud answers them. A
//!   synchronous caller of a durable report that is queued offline keeps
//!   waiting: if the link returns within its timeout it gets the cloud's
//!   answer.
//!
//! EdgeHub does not acknowledge downstream objects: MetaManager does, after
//! storing them. Viaduct control messages (`ping`, `pong`, `config`) are
//! answered by the transport; any that reach EdgeHub are dropped.
//!
//! Metrics ([`EdgeHubMetrics`]) are counted under `kedge_edgehub_*`.

pub mod backoff;
mod cloud_dialer;
mod dialer;
mod hub;
mod metrics;
pub mod outbox;
pub mod renewal;
pub mod routing;
pub mod throttle;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kedge_apis::config::edgecore::EdgeCoreConfig;
use kedge_bus::{Module, ModuleContext, ModuleError};
use kedge_message::{group, module};

pub use cloud_dialer::{CloudDialer, CloudTransport};
pub use dialer::{BoxError, DialError, DialFuture, Dialer, PrepareFuture, UnavailableDialer};
pub use metrics::{DropReason, EdgeHubMetrics};

use outbox::{Outbox, OutboxError};

/// The outbox file name used beside edgecore's database.
pub const OUTBOX_FILE_NAME: &str = "edgehub.db";

/// What EdgeHub needs to know, taken from edgecore.yaml's
/// `modules.edgeHub` by [`from_config`](Self::from_config).
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeHubSettings {
    /// Time between keepalives (`heartbeat`, default 15 s).
    pub heartbeat: Duration,
    /// Messages per second to the cloud (`messageQPS`, default 30); zero
    /// disables the throttle.
    pub message_qps: f64,
    /// Burst of messages to the cloud (`messageBurst`, default 60).
    pub message_burst: u32,
    /// First reconnect delay bound (`reconnectBackoffBase`, default 1 s).
    pub backoff_base: Duration,
    /// Largest reconnect delay bound (`reconnectBackoffMax`, default 30 s).
    pub backoff_max: Duration,
    /// A connection that stayed up at least this long resets the backoff
    /// (default: `backoff_max`).
    pub stable_after: Duration,
    /// How long one dial may take before it counts as failed (default:
    /// twice the transport's `handshakeTimeout`, 60 s).
    pub dial_timeout: Duration,
    /// The outbox file.
    pub outbox_path: PathBuf,
    /// How many reports the outbox keeps (`outboxCapacity`, default
    /// 10000).
    pub outbox_capacity: usize,
    /// How long a report sent on the current connection waits for the
    /// cloud's answer before it is sent again (`outboxResendAfter`,
    /// default 10 s).
    pub outbox_resend_after: Duration,
    /// Messages from the cloud that may wait for each destination module
    /// or group before further ones are dropped (default 256).
    pub delivery_queue: usize,
}

impl EdgeHubSettings {
    /// KubeEdge's defaults, with the outbox at `outbox_path`.
    pub fn new(outbox_path: impl Into<PathBuf>) -> Self {
        Self {
            heartbeat: Duration::from_secs(15),
            message_qps: 30.0,
            message_burst: 60,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            stable_after: Duration::from_secs(30),
            dial_timeout: Duration::from_secs(60),
            outbox_path: outbox_path.into(),
            outbox_capacity: 10_000,
            outbox_resend_after: Duration::from_secs(10),
            delivery_queue: 256,
        }
    }

    /// The settings edgecore.yaml gives. The outbox is `outboxFile`, or
    /// `edgehub.db` in the directory of `database.dataSource`.
    pub fn from_config(config: &EdgeCoreConfig) -> Self {
        let hub = &config.modules.edge_hub;
        let seconds = |s: i32| Duration::from_secs(u64::try_from(s).unwrap_or(0));
        let outbox_path = if hub.outbox_file.is_empty() {
            Path::new(&config.database.data_source)
                .parent()
                .unwrap_or_else(|| Path::new(""))
                .join(OUTBOX_FILE_NAME)
        } else {
            PathBuf::from(&hub.outbox_file)
        };
        let handshake = if hub.quic.enable {
            hub.quic.handshake_timeout
        } else {
            hub.websocket.handshake_timeout
        };
        let backoff_base = hub
            .reconnect_backoff_base
            .to_std()
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(1));
        let backoff_max = hub
            .reconnect_backoff_max
            .to_std()
            .unwrap_or(Duration::from_secs(30))
            .max(backoff_base);
        Self {
            heartbeat: seconds(hub.heartbeat).max(Duration::from_secs(1)),
            message_qps: f64::from(hub.message_qps),
            message_burst: u32::try_from(hub.message_burst).unwrap_or(0),
            backoff_base,
            backoff_max,
            stable_after: backoff_max,
            dial_timeout: seconds(handshake.saturating_mul(2)).max(Duration::from_secs(1)),
            outbox_path,
            outbox_capacity: usize::try_from(hub.outbox_capacity).unwrap_or(1).max(1),
            outbox_resend_after: hub
                .outbox_resend_after
                .to_std()
                .filter(|d| !d.is_zero())
                .unwrap_or(Duration::from_secs(10)),
            delivery_queue: 256,
        }
    }
}

/// Why EdgeHub stopped.
#[derive(Debug, thiserror::Error)]
pub enum EdgeHubError {
    /// The outbox could not be opened.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// The EdgeHub module (`websocket`, group `hub`).
pub struct EdgeHub {
    settings: EdgeHubSettings,
    dialer: Arc<dyn Dialer>,
    metrics: EdgeHubMetrics,
    backoff_seed: Option<u64>,
    renewal: Option<kedge_transport::bootstrap::BootstrapConfig>,
}

impl std::fmt::Debug for EdgeHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeHub")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl EdgeHub {
    /// An EdgeHub that reaches the cloud through `dialer`.
    pub fn new(settings: EdgeHubSettings, dialer: Arc<dyn Dialer>) -> Self {
        Self {
            settings,
            dialer,
            metrics: EdgeHubMetrics::default(),
            backoff_seed: None,
            renewal: None,
        }
    }

    /// Renews the node certificate `bootstrap` names at 70–90 % of its
    /// lifetime ([`renewal::keep_renewed`]).
    #[must_use]
    pub fn with_renewal(mut self, bootstrap: kedge_transport::bootstrap::BootstrapConfig) -> Self {
        self.renewal = Some(bootstrap);
        self
    }

    /// Counts into `metrics` (registered with
    /// [`EdgeHubMetrics::register`]) instead of private counters.
    #[must_use]
    pub fn with_metrics(mut self, metrics: EdgeHubMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Draws the reconnect jitter from a generator seeded with `seed`
    /// (tests) instead of the operating system's random source.
    #[must_use]
    pub fn with_backoff_seed(mut self, seed: u64) -> Self {
        self.backoff_seed = Some(seed);
        self
    }

    /// The metrics this EdgeHub counts into.
    pub fn metrics(&self) -> &EdgeHubMetrics {
        &self.metrics
    }

    /// The settings in force.
    pub fn settings(&self) -> &EdgeHubSettings {
        &self.settings
    }
}

impl Module for EdgeHub {
    fn name(&self) -> &str {
        module::EDGE_HUB
    }

    fn group(&self) -> &str {
        group::HUB
    }

    async fn run(self, ctx: ModuleContext) -> Result<(), ModuleError> {
        let path = self.settings.outbox_path.clone();
        let capacity = self.settings.outbox_capacity;
        let outbox = tokio::task::spawn_blocking(move || Outbox::open(path, capacity))
            .await
            .unwrap_or_else(|join| Err(OutboxError::Task(join)))
            .map_err(EdgeHubError::Outbox)?;
        tracing::info!(
            outbox = %outbox.path().display(),
            waiting = outbox.len(),
            "EdgeHub outbox open"
        );
        if let Some(bootstrap) = self.renewal.clone() {
            ctx.spawn(
                "certificate-renewal",
                renewal::keep_renewed(bootstrap, ctx.token().clone()),
            );
        }
        hub::Hub::new(ctx, self, outbox).run().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kedge_apis::config::{GoDuration, HostInfo};

    fn config() -> EdgeCoreConfig {
        EdgeCoreConfig::default_config(&HostInfo::new("edge-1", [127, 0, 0, 1].into()))
    }

    #[test]
    fn settings_follow_edgecore_yaml() {
        let defaults = EdgeHubSettings::from_config(&config());
        assert_eq!(
            defaults,
            EdgeHubSettings::new("/var/lib/kubeedge/edgehub.db"),
            "the defaults agree"
        );

        let mut c = config();
        c.database.data_source = "/data/edge/edgecore.db".to_owned();
        let hub = &mut c.modules.edge_hub;
        hub.heartbeat = 10;
        hub.message_qps = 5;
        hub.message_burst = 7;
        hub.reconnect_backoff_base = GoDuration::from_millis(250);
        hub.reconnect_backoff_max = GoDuration::from_secs(4);
        hub.outbox_capacity = 3;
        hub.websocket.handshake_timeout = 10;
        let s = EdgeHubSettings::from_config(&c);
        assert_eq!(s.outbox_path, PathBuf::from("/data/edge/edgehub.db"));
        assert_eq!(s.heartbeat, Duration::from_secs(10));
        assert_eq!(s.message_qps, 5.0);
        assert_eq!(s.message_burst, 7);
        assert_eq!(s.backoff_base, Duration::from_millis(250));
        assert_eq!(s.backoff_max, Duration::from_secs(4));
        assert_eq!(s.stable_after, Duration::from_secs(4));
        assert_eq!(s.dial_timeout, Duration::from_secs(20));
        assert_eq!(s.outbox_capacity, 3);

        c.modules.edge_hub.outbox_file = "/elsewhere/hub.db".to_owned();
        assert_eq!(
            EdgeHubSettings::from_config(&c).outbox_path,
            PathBuf::from("/elsewhere/hub.db")
        );
        c.database.data_source = "edgecore.db".to_owned();
        c.modules.edge_hub.outbox_file = String::new();
        assert_eq!(
            EdgeHubSettings::from_config(&c).outbox_path,
            PathBuf::from("edgehub.db")
        );
    }
}
