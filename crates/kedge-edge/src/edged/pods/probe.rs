//! Container probes and lifecycle hooks: `exec` through the runtime's
//! `ExecSync`, `httpGet` and `tcpSocket` dialled from edged to the pod's
//! IP (127.0.0.1 with a host network), as the kubelet's prober does
//! (edged.md §1.3, §3.3).

use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{ExecAction, HTTPGetAction, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::time::Instant;

use crate::edged::runtime::Runtime;

/// One probe's progress for one container instance.
#[derive(Debug, Clone)]
pub struct ProbeState {
    /// The container instance probed; a new instance starts over.
    pub container_id: String,
    /// The current result once the thresholds decided one.
    pub result: Option<bool>,
    successes: i32,
    failures: i32,
    next_at: Option<Instant>,
}

impl ProbeState {
    /// A fresh state for `container_id`.
    pub fn new(container_id: &str) -> Self {
        Self {
            container_id: container_id.to_owned(),
            result: None,
            successes: 0,
            failures: 0,
            next_at: None,
        }
    }

    /// Runs `probe` if its period has come (and its initial delay after
    /// `started_at` has passed), updating the result by its thresholds.
    /// Returns whether it ran.
    pub async fn tick(
        &mut self,
        probe: &Probe,
        started_at: Option<SystemTime>,
        target: &Target<'_>,
    ) -> bool {
        let now = Instant::now();
        if self.next_at.is_some_and(|at| now < at) {
            return false;
        }
        let delay = Duration::from_secs(
            u64::try_from(probe.initial_delay_seconds.unwrap_or(0)).unwrap_or(0),
        );
        let running_for = started_at
            .and_then(|s| SystemTime::now().duration_since(s).ok())
            .unwrap_or_default();
        if running_for < delay {
            return false;
        }
        let period = Duration::from_secs(
            u64::try_from(probe.period_seconds.unwrap_or(10).max(1)).unwrap_or(10),
        );
        self.next_at = Some(now + period);
        let ok = run(probe, target).await.is_ok();
        if ok {
            self.successes += 1;
            self.failures = 0;
            if self.successes >= probe.success_threshold.unwrap_or(1).max(1) {
                self.result = Some(true);
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.failures >= probe.failure_threshold.unwrap_or(3).max(1) {
                self.result = Some(false);
            }
        }
        true
    }
}

/// Where a probe or hook runs.
pub struct Target<'a> {
    /// The runtime, for `exec`.
    pub runtime: &'a dyn Runtime,
    /// The container's runtime id.
    pub container_id: &'a str,
    /// The address to dial: the pod IP, or 127.0.0.1 with a host network.
    pub host: String,
    /// The container's declared ports, for named ports.
    pub ports: Vec<(String, i32)>,
}

/// Runs `probe` once; `Err` says why it failed.
pub async fn run(probe: &Probe, target: &Target<'_>) -> Result<(), String> {
    let timeout =
        Duration::from_secs(u64::try_from(probe.timeout_seconds.unwrap_or(1).max(1)).unwrap_or(1));
    if let Some(exec) = &probe.exec {
        return exec_action(exec, target, timeout).await;
    }
    if let Some(http) = &probe.http_get {
        return http_get(http, target, timeout).await;
    }
    if let Some(tcp) = &probe.tcp_socket {
        return tcp_socket(tcp, target, timeout).await;
    }
    Err("probe has no handler edged supports".to_owned())
}

/// Runs a lifecycle hook handler (`preStop`): exec or httpGet.
pub async fn hook(
    handler: &k8s_openapi::api::core::v1::LifecycleHandler,
    target: &Target<'_>,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(exec) = &handler.exec {
        return exec_action(exec, target, timeout).await;
    }
    if let Some(http) = &handler.http_get {
        return http_get(http, target, timeout).await;
    }
    if let Some(sleep) = &handler.sleep {
        tokio::time::sleep(
            Duration::from_secs(u64::try_from(sleep.seconds).unwrap_or(0)).min(timeout),
        )
        .await;
        return Ok(());
    }
    Err("hook has no handler edged supports".to_owned())
}

async fn exec_action(
    exec: &ExecAction,
    target: &Target<'_>,
    timeout: Duration,
) -> Result<(), String> {
    let command = exec.command.clone().unwrap_or_default();
    let output = target
        .runtime
        .exec_sync(target.container_id, &command, timeout)
        .await
        .map_err(|e| e.to_string())?;
    if output.exit_code == 0 {
        Ok(())
    } else {
        Err(format!(
            "command {command:?} exited with {}: {}",
            output.exit_code,
            String::from_utf8_lossy(&output.stdout)
        ))
    }
}

fn port(port: &IntOrString, target: &Target<'_>) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => target
            .ports
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, p)| u16::try_from(*p).ok())
            .ok_or_else(|| format!("no port named {name:?}")),
    }
}

async fn tcp_socket(
    tcp: &TCPSocketAction,
    target: &Target<'_>,
    timeout: Duration,
) -> Result<(), String> {
    let host = tcp.host.clone().unwrap_or_else(|| target.host.clone());
    let port = port(&tcp.port, target)?;
    match tokio::time::timeout(
        timeout,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("dial {host}:{port}: {e}")),
        Err(_) => Err(format!("dial {host}:{port}: timed out")),
    }
}

async fn http_get(
    http: &HTTPGetAction,
    target: &Target<'_>,
    timeout: Duration,
) -> Result<(), String> {
    let host = http.host.clone().unwrap_or_else(|| target.host.clone());
    let port = port(&http.port, target)?;
    if http
        .scheme
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"))
    {
        return Err("httpGet probes over HTTPS are not supported".to_owned());
    }
    let path = http
        .path
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".to_owned());
    let attempt = async {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("dial {host}:{port}: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let mut request = hyper::Request::get(&path).header("host", format!("{host}:{port}"));
        request = request.header("user-agent", "kube-probe/edged");
        for header in http.http_headers.iter().flatten() {
            request = request.header(header.name.as_str(), header.value.as_str());
        }
        let request = request
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        // Read (and drop) the body, as a client would.
        let _ = response.into_body().collect().await;
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(format!(
                "HTTP probe failed with statuscode: {}",
                status.as_u16()
            ))
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("GET http://{host}:{port}{path}: timed out")))
}
