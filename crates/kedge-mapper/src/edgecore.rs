//! The mapper's side of `DeviceManagerService`: registering with edgecore
//! and reporting to it (devices.md §5.3, §5.6).
//!
//! One lazily connecting channel serves every call: while edgecore is down
//! calls fail fast, and they succeed again once it is back. Failures are
//! logged and counted in [`Metrics`], never fatal.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kedge_dmi::v1beta1 as dmi;
use kedge_dmi::v1beta1::device_manager_service_client::DeviceManagerServiceClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// How long one call to edgecore may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The first wait before registering again.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between registration attempts.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Counters of what the mapper did, for logs and tests.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Twin reports edgecore accepted.
    reports: AtomicU64,
    /// Twin or state reports that failed.
    report_failures: AtomicU64,
    /// Reads from devices that failed.
    read_failures: AtomicU64,
    /// Writes to devices that failed.
    write_failures: AtomicU64,
    /// Pushes that failed.
    push_failures: AtomicU64,
}

impl Metrics {
    /// Twin reports edgecore accepted.
    pub fn reports(&self) -> u64 {
        self.reports.load(Ordering::Relaxed)
    }

    /// Twin or state reports that failed.
    pub fn report_failures(&self) -> u64 {
        self.report_failures.load(Ordering::Relaxed)
    }

    /// Reads from devices that failed.
    pub fn read_failures(&self) -> u64 {
        self.read_failures.load(Ordering::Relaxed)
    }

    /// Writes to devices that failed.
    pub fn write_failures(&self) -> u64 {
        self.write_failures.load(Ordering::Relaxed)
    }

    /// Pushes that failed.
    pub fn push_failures(&self) -> u64 {
        self.push_failures.load(Ordering::Relaxed)
    }

    /// Counts a failed read; returns the count so far.
    pub(crate) fn read_failed(&self) -> u64 {
        self.read_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Counts a failed write; returns the count so far.
    pub(crate) fn write_failed(&self) -> u64 {
        self.write_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Counts a failed push; returns the count so far.
    pub(crate) fn push_failed(&self) -> u64 {
        self.push_failures.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// The mapper's client of edgecore's `DeviceManagerService`.
#[derive(Clone)]
pub(crate) struct Edgecore {
    /// The gRPC client.
    client: DeviceManagerServiceClient<Channel>,
    /// Counters.
    metrics: Arc<Metrics>,
}

impl Edgecore {
    /// A client of edgecore's socket at `path`; it connects on first use.
    pub(crate) fn new(path: &Path, metrics: Arc<Metrics>) -> Self {
        Self {
            client: DeviceManagerServiceClient::new(kedge_dmi::socket::connect_lazy(path)),
            metrics,
        }
    }

    /// Registers `mapper` with `withData` until edgecore accepts, waiting
    /// longer after each failure (1 s doubling up to 30 s); `None` if
    /// `cancel` fires first.
    pub(crate) async fn register(
        &self,
        mapper: dmi::MapperInfo,
        cancel: &CancellationToken,
    ) -> Option<dmi::MapperRegisterResponse> {
        let mut delay = FIRST_RETRY;
        let mut attempt = 0_u64;
        loop {
            attempt += 1;
            let request = dmi::MapperRegisterRequest {
                with_data: true,
                mapper: Some(mapper.clone()),
            };
            let mut client = self.client.clone();
            let call = tokio::time::timeout(CALL_TIMEOUT, client.mapper_register(request));
            let outcome = tokio::select! {
                _ = cancel.cancelled() => return None,
                outcome = call => outcome,
            };
            match outcome {
                Ok(Ok(response)) => return Some(response.into_inner()),
                Ok(Err(status)) => tracing::warn!(
                    attempt,
                    code = ?status.code(),
                    reason = status.message(),
                    retry_in = ?delay,
                    "registration with edgecore failed"
                ),
                Err(_) => tracing::warn!(attempt, retry_in = ?delay, "registration timed out"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(MAX_RETRY);
        }
    }

    /// Reports a device's twins; failures are logged and counted.
    pub(crate) async fn report_status(&self, request: dmi::ReportDeviceStatusRequest) {
        let device = request.device_name.clone();
        let mut client = self.client.clone();
        match tokio::time::timeout(CALL_TIMEOUT, client.report_device_status(request)).await {
            Ok(Ok(_)) => {
                self.metrics.reports.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(status)) => self.report_failed(&device, &status.to_string()),
            Err(_) => self.report_failed(&device, "timed out"),
        }
    }

    /// Reports a device's state; failures are logged and counted.
    pub(crate) async fn report_states(&self, request: dmi::ReportDeviceStatesRequest) {
        let device = request.device_name.clone();
        let mut client = self.client.clone();
        match tokio::time::timeout(CALL_TIMEOUT, client.report_device_states(request)).await {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => self.report_failed(&device, &status.to_string()),
            Err(_) => self.report_failed(&device, "timed out"),
        }
    }

    /// Logs and counts a failed report.
    fn report_failed(&self, device: &str, reason: &str) {
        let failures = self.metrics.report_failures.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(device, reason, failures, "report to edgecore failed");
    }
}
