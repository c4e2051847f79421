//! One pod's worker: a task that brings the runtime in line with the pod
//! every second or whenever the pod changes, and reports its status
//! (edged.md §3.3).
//!
//! Each pass observes the runtime first (the pod's sandboxes and
//! containers, found by the pod-uid label, so a restarted edged adopts
//! what is already running), then acts:
//!
//! 1. a pod being deleted: preStop hooks, containers stopped within the
//!    grace period, the sandbox stopped, the final status sent and the
//!    deletion completed in the cloud;
//! 2. a pod whose containers all ended for good (restart policy): its
//!    sandbox stopped, phase `Succeeded` or `Failed`;
//! 3. otherwise volumes set up, a ready sandbox ensured (a new one when
//!    the old one died), init containers run one by one to success, and
//!    each app container created, started, restarted per restart policy
//!    with crash-loop back-off (10 s doubling to 5 min), or recreated when
//!    its spec changed; probes run on running containers.
//!
//! The status is rebuilt from what was observed after acting and queued
//! when it changed.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::fields::NodeFields;
use super::probe::{self, ProbeState, Target};
use super::spec::{self, CONTAINER_HASH, POD_UID, QosClass, SpecContext};
use super::status::StatusQueue;
use super::volumes;
use crate::edged::metaclient::{MetaClient, MetaError};
use crate::edged::node::{rfc3339, rfc3339_of};
use crate::edged::runtime::{
    ContainerFilter, ContainerState, ContainerStatus, Runtime, RuntimeError, SandboxConfig,
    SandboxFilter, SandboxState,
};

/// The first crash-loop back-off.
const BACKOFF_START: Duration = Duration::from_secs(10);
/// The longest crash-loop back-off.
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How often volumes from ConfigMaps and Secrets are re-read when nothing
/// announced a change.
const VOLUME_REFRESH: Duration = Duration::from_secs(10);

/// What every worker of a node shares.
pub struct Shared {
    /// The container runtime.
    pub runtime: Arc<dyn Runtime>,
    /// MetaManager.
    pub client: MetaClient,
    /// How pods become runtime configurations.
    pub spec: SpecContext,
    /// edged's root directory (pods' volumes live under it).
    pub root: PathBuf,
    /// The node's IP.
    pub host_ip: String,
    /// The prefix of container ids in status (`containerd://`).
    pub id_scheme: String,
    /// Where statuses go.
    pub statuses: Arc<StatusQueue>,
    /// Time between passes (1 s).
    pub sync_period: Duration,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("root", &self.root)
            .field("node", &self.spec.node_name)
            .finish_non_exhaustive()
    }
}

/// What the worker is told about its pod.
#[derive(Debug, Clone)]
pub struct Desired {
    /// The newest pod object.
    pub pod: Arc<Pod>,
    /// The cloud deleted the pod: stop everything and clean up.
    pub removed: bool,
    /// Bumped when a ConfigMap or Secret changed: re-read volumes now.
    pub refresh: u64,
    /// Bumped when the cloud lost the status sent (a static pod's mirror
    /// pod was created again): send the status again.
    pub resend: u64,
}

/// Crash-loop (or image pull) back-off of one container.
#[derive(Debug, Default, Clone)]
struct Backoff {
    delay: Option<Duration>,
    until: Option<Instant>,
    last: Option<Instant>,
}

impl Backoff {
    /// Whether the next attempt may happen now.
    fn ready(&self) -> bool {
        self.until.is_none_or(|until| Instant::now() >= until)
    }

    /// Records an attempt: the next one waits longer.
    fn step(&mut self) {
        let now = Instant::now();
        if self.last.is_some_and(|last| now - last > BACKOFF_MAX * 2) {
            self.delay = None;
        }
        let delay = self
            .delay
            .map_or(BACKOFF_START, |d| (d * 2).min(BACKOFF_MAX));
        self.delay = Some(delay);
        self.until = Some(now + delay);
        self.last = Some(now);
    }

    fn remaining(&self) -> Duration {
        self.delay.unwrap_or(BACKOFF_START)
    }
}

/// What the worker remembers of one container between passes.
#[derive(Debug, Default)]
struct Track {
    restarts: Backoff,
    pulls: Backoff,
    /// Why the container is not running, when the runtime cannot tell.
    waiting: Option<(String, String)>,
    startup: Option<ProbeState>,
    liveness: Option<ProbeState>,
    readiness: Option<ProbeState>,
}

/// The newest instance of a container and the one before it.
#[derive(Debug, Clone)]
struct Instances {
    latest: ContainerStatus,
    sandbox_id: String,
    previous: Option<ContainerStatus>,
}

/// What the runtime holds for the pod.
#[derive(Debug, Default)]
struct Observed {
    /// The ready sandbox: id and attempt.
    sandbox: Option<(String, u32)>,
    /// Every sandbox's id and attempt.
    sandboxes: Vec<(String, u32, SandboxState)>,
    pod_ip: Option<String>,
    containers: HashMap<String, Instances>,
    /// Ids of instances older than `previous`, to remove.
    stale: Vec<String>,
}

impl Observed {
    fn current(&self, name: &str) -> Option<&Instances> {
        let (sandbox, _) = self.sandbox.as_ref()?;
        self.containers
            .get(name)
            .filter(|i| &i.sandbox_id == sandbox)
    }
}

/// How a container stands for the pod's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    NeverStarted,
    Running,
    Restarting,
    Succeeded,
    Failed,
}

/// One pod's worker.
pub struct PodWorker {
    shared: Arc<Shared>,
    desired: watch::Receiver<Desired>,
    tracks: HashMap<String, Track>,
    transitions: BTreeMap<String, (String, String)>,
    start_time: Option<String>,
    volumes: Option<BTreeMap<String, PathBuf>>,
    volumes_at: Option<Instant>,
    refresh_seen: u64,
    resend_seen: u64,
    sandbox_backoff: Backoff,
    /// A pod-wide reason the containers wait (volumes, sandbox).
    pod_waiting: Option<(String, String)>,
    /// Containers were stopped for the pod's deletion.
    terminated: bool,
    /// The cloud accepted the final deletion.
    delete_sent: bool,
    last_status: Option<Value>,
}

impl std::fmt::Debug for PodWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodWorker")
            .field("pod", &self.desired.borrow().pod.metadata.name)
            .finish_non_exhaustive()
    }
}

impl PodWorker {
    /// A worker for the pod `desired` holds.
    pub fn new(shared: Arc<Shared>, desired: watch::Receiver<Desired>) -> Self {
        let start_time = desired
            .borrow()
            .pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| format!("{:.0}", t.0));
        Self {
            shared,
            desired,
            tracks: HashMap::new(),
            transitions: BTreeMap::new(),
            start_time,
            volumes: None,
            volumes_at: None,
            refresh_seen: 0,
            resend_seen: 0,
            sandbox_backoff: Backoff::default(),
            pod_waiting: None,
            terminated: false,
            delete_sent: false,
            last_status: None,
        }
    }

    /// Runs passes until the pod is removed (then cleans up) or `cancel`
    /// fires (then leaves the pod running: edgecore is stopping).
    pub async fn run(mut self, cancel: CancellationToken) {
        loop {
            let desired = self.desired.borrow_and_update().clone();
            if desired.removed {
                self.remove(&desired.pod).await;
                return;
            }
            if desired.refresh != self.refresh_seen {
                self.refresh_seen = desired.refresh;
                self.volumes_at = None;
            }
            if desired.resend != self.resend_seen {
                self.resend_seen = desired.resend;
                self.last_status = None;
            }
            if let Err(error) = self.sync(&desired.pod).await {
                tracing::debug!(pod = ?desired.pod.metadata.name, %error, "pod sync failed");
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = self.desired.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(self.shared.sync_period) => {}
            }
        }
    }

    fn uid(pod: &Pod) -> String {
        pod.metadata.uid.clone().unwrap_or_default()
    }

    /// Lists the pod's sandboxes and containers.
    async fn observe(&self, pod: &Pod) -> Result<Observed, RuntimeError> {
        let runtime = &self.shared.runtime;
        let labels = BTreeMap::from([(POD_UID.to_owned(), Self::uid(pod))]);
        let mut sandboxes = runtime
            .list_sandboxes(&SandboxFilter {
                labels: labels.clone(),
                ..Default::default()
            })
            .await?;
        sandboxes.sort_by_key(|s| (s.metadata.attempt, s.created_at));
        let mut observed = Observed {
            sandboxes: sandboxes
                .iter()
                .map(|s| (s.id.clone(), s.metadata.attempt, s.state))
                .collect(),
            ..Default::default()
        };
        if let Some(ready) = sandboxes
            .iter()
            .rev()
            .find(|s| s.state == SandboxState::Ready)
        {
            observed.sandbox = Some((ready.id.clone(), ready.metadata.attempt));
            let status = runtime.sandbox_status(&ready.id).await?;
            observed.pod_ip = status.ip.map(|ip| ip.to_string());
        }
        let mut containers = runtime
            .list_containers(&ContainerFilter {
                labels,
                ..Default::default()
            })
            .await?;
        containers.sort_by_key(|c| (c.attempt, c.created_at));
        let mut by_name: HashMap<String, Vec<_>> = HashMap::new();
        for container in containers {
            by_name
                .entry(container.name.clone())
                .or_default()
                .push(container);
        }
        for (name, mut list) in by_name {
            let latest = list.pop().expect("a non-empty list");
            let previous = list.pop();
            observed.stale.extend(list.into_iter().map(|c| c.id));
            let latest_status = match runtime.container_status(&latest.id).await {
                Ok(status) => status,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            let previous_status = match previous {
                Some(p) => runtime.container_status(&p.id).await.ok(),
                None => None,
            };
            observed.containers.insert(
                name,
                Instances {
                    latest: latest_status,
                    sandbox_id: latest.sandbox_id,
                    previous: previous_status,
                },
            );
        }
        Ok(observed)
    }

    /// One pass.
    async fn sync(&mut self, pod: &Pod) -> Result<(), RuntimeError> {
        if pod.metadata.deletion_timestamp.is_some() {
            return self.terminate(pod).await;
        }
        let observed = self.observe(pod).await?;
        let spec = pod.spec.clone().unwrap_or_default();
        if self.finished(pod, &observed) {
            for (id, _, state) in &observed.sandboxes {
                if *state == SandboxState::Ready {
                    self.shared.runtime.stop_sandbox(id).await?;
                }
            }
            let observed = self.observe(pod).await?;
            self.report(pod, &observed);
            return Ok(());
        }
        // Volumes.
        let stale_volumes = self
            .volumes_at
            .is_none_or(|at| at.elapsed() >= VOLUME_REFRESH);
        if self.volumes.is_none() || stale_volumes {
            match volumes::prepare(&self.shared.root, pod, &self.shared.client).await {
                Ok(paths) => {
                    self.volumes = Some(paths);
                    self.volumes_at = Some(Instant::now());
                    self.pod_waiting = None;
                }
                Err(error) if self.volumes.is_some() => {
                    tracing::info!(pod = ?pod.metadata.name, %error, "volume not refreshed");
                    self.volumes_at = Some(Instant::now());
                }
                Err(error) => {
                    self.pod_waiting = Some((
                        "ContainerCreating".to_owned(),
                        format!("MountVolume.SetUp failed: {error}"),
                    ));
                    self.report(pod, &observed);
                    return Ok(());
                }
            }
        }
        // The sandbox.
        let (sandbox_id, attempt) = match &observed.sandbox {
            Some(ready) => ready.clone(),
            None => {
                if !self.sandbox_backoff.ready() {
                    self.report(pod, &observed);
                    return Ok(());
                }
                for (id, _, _) in &observed.sandboxes {
                    self.shared.runtime.stop_sandbox(id).await?;
                }
                let attempt = observed
                    .sandboxes
                    .iter()
                    .map(|(_, a, _)| a + 1)
                    .max()
                    .unwrap_or(0);
                let config = spec::sandbox_config(pod, attempt, &self.shared.spec);
                let _ = std::fs::create_dir_all(&config.log_directory);
                match self.shared.runtime.run_sandbox(&config).await {
                    Ok(id) => {
                        self.sandbox_backoff = Backoff::default();
                        self.pod_waiting = None;
                        (id, attempt)
                    }
                    Err(error) => {
                        self.sandbox_backoff.step();
                        self.pod_waiting = Some((
                            "ContainerCreating".to_owned(),
                            format!("failed to create pod sandbox: {error}"),
                        ));
                        self.report(pod, &observed);
                        return Ok(());
                    }
                }
            }
        };
        let sandbox_config = spec::sandbox_config(pod, attempt, &self.shared.spec);
        let observed = if observed.sandbox.as_ref().map(|s| &s.0) == Some(&sandbox_id) {
            observed
        } else {
            self.observe(pod).await?
        };
        for id in &observed.stale {
            let _ = self.shared.runtime.remove_container(id).await;
        }
        let node = NodeFields {
            pod_ip: observed
                .pod_ip
                .clone()
                .unwrap_or_else(|| self.shared.host_ip.clone()),
            host_ip: self.shared.host_ip.clone(),
        };
        let mut acted = false;
        let mut init_done = true;
        for container in spec.init_containers.iter().flatten() {
            let current = observed.current(&container.name);
            match current.map(|i| i.latest.state) {
                Some(ContainerState::Exited)
                    if current.is_some_and(|i| i.latest.exit_code == 0) =>
                {
                    continue;
                }
                // Running, created, failed or not started yet: this init
                // container is the one to work on.
                _ => {
                    acted |= self
                        .sync_container(
                            pod,
                            container,
                            &observed,
                            &sandbox_id,
                            &sandbox_config,
                            &node,
                        )
                        .await?;
                    init_done = false;
                    break;
                }
            }
        }
        if init_done {
            for container in &spec.containers {
                acted |= self
                    .sync_container(
                        pod,
                        container,
                        &observed,
                        &sandbox_id,
                        &sandbox_config,
                        &node,
                    )
                    .await?;
            }
        }
        let observed = if acted {
            self.observe(pod).await?
        } else {
            observed
        };
        self.run_probes(pod, &observed).await;
        self.report(pod, &observed);
        Ok(())
    }

    /// Whether every container ended and none will restart.
    fn finished(&self, pod: &Pod, observed: &Observed) -> bool {
        let spec = pod.spec.clone().unwrap_or_default();
        !spec.containers.is_empty()
            && spec.containers.iter().all(|c| {
                matches!(
                    self.standing(pod, c, observed, false),
                    Standing::Succeeded | Standing::Failed
                )
            })
    }

    /// How `container` stands: `init` containers restart on failure
    /// unless the policy is `Never`.
    fn standing(
        &self,
        pod: &Pod,
        container: &Container,
        observed: &Observed,
        init: bool,
    ) -> Standing {
        let policy = restart_policy(pod);
        let Some(instances) = observed.containers.get(&container.name) else {
            return Standing::NeverStarted;
        };
        let in_current = observed
            .sandbox
            .as_ref()
            .is_some_and(|(id, _)| id == &instances.sandbox_id);
        let latest = &instances.latest;
        match latest.state {
            ContainerState::Running if in_current => Standing::Running,
            ContainerState::Created if in_current => Standing::NeverStarted,
            _ => {
                let exit = if latest.state == ContainerState::Exited {
                    latest.exit_code
                } else {
                    // Lost with its sandbox, or unknown: counts as a failure.
                    if latest.exit_code == 0 {
                        255
                    } else {
                        latest.exit_code
                    }
                };
                let restart = match (init, policy) {
                    (_, "Never") => false,
                    (true, _) | (false, "OnFailure") => exit != 0,
                    _ => true,
                };
                match (restart, exit) {
                    (true, _) => Standing::Restarting,
                    (false, 0) => Standing::Succeeded,
                    (false, _) => Standing::Failed,
                }
            }
        }
    }

    /// Brings one container in line; returns whether it changed anything.
    async fn sync_container(
        &mut self,
        pod: &Pod,
        container: &Container,
        observed: &Observed,
        sandbox_id: &str,
        sandbox: &SandboxConfig,
        node: &NodeFields,
    ) -> Result<bool, RuntimeError> {
        let runtime = self.shared.runtime.clone();
        let name = container.name.clone();
        let init = pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .is_some_and(|list| list.iter().any(|c| c.name == name));
        let standing = self.standing(pod, container, observed, init);
        let instances = observed.containers.get(&name);
        let current = observed.current(&name);
        match (standing, current) {
            (Standing::Running, Some(instance)) => {
                let hash = spec::container_hash(container);
                if instance.latest.annotations.get(CONTAINER_HASH) != Some(&hash) {
                    tracing::info!(pod = ?pod.metadata.name, container = %name, "container spec changed; recreating");
                    runtime
                        .stop_container(&instance.latest.id, grace(pod))
                        .await?;
                    return self
                        .create_and_start(
                            pod,
                            container,
                            instance.latest.attempt + 1,
                            sandbox_id,
                            sandbox,
                            node,
                        )
                        .await;
                }
                Ok(false)
            }
            (Standing::NeverStarted, Some(instance)) => {
                // Created but not started (edged stopped in between).
                runtime.start_container(&instance.latest.id).await?;
                Ok(true)
            }
            (Standing::NeverStarted, None) => {
                let attempt = instances.map_or(0, |i| i.latest.attempt + 1);
                self.create_and_start(pod, container, attempt, sandbox_id, sandbox, node)
                    .await
            }
            (Standing::Restarting, _) => {
                let instance = instances.expect("a restarting container has an instance");
                let track = self.tracks.entry(name.clone()).or_default();
                if !track.restarts.ready() {
                    track.waiting = Some((
                        "CrashLoopBackOff".to_owned(),
                        format!(
                            "back-off {}s restarting failed container={} pod={}_{}({})",
                            track.restarts.remaining().as_secs(),
                            name,
                            pod.metadata.name.as_deref().unwrap_or_default(),
                            pod.metadata.namespace.as_deref().unwrap_or_default(),
                            Self::uid(pod),
                        ),
                    ));
                    return Ok(false);
                }
                let attempt = instance.latest.attempt + 1;
                let started = self
                    .create_and_start(pod, container, attempt, sandbox_id, sandbox, node)
                    .await?;
                if started {
                    self.tracks.entry(name).or_default().restarts.step();
                }
                Ok(started)
            }
            _ => Ok(false),
        }
    }

    /// Pulls the image as the policy says, then creates and starts the
    /// container. A failure is recorded as the container's waiting reason.
    async fn create_and_start(
        &mut self,
        pod: &Pod,
        container: &Container,
        attempt: u32,
        sandbox_id: &str,
        sandbox: &SandboxConfig,
        node: &NodeFields,
    ) -> Result<bool, RuntimeError> {
        let runtime = self.shared.runtime.clone();
        let name = container.name.clone();
        if let Err((reason, message)) = self.ensure_image(container).await {
            self.tracks.entry(name).or_default().waiting = Some((reason, message));
            return Ok(false);
        }
        let env = match spec::environment(pod, container, &self.shared.client, node).await {
            Ok(env) => env,
            Err(error) => {
                self.tracks.entry(name).or_default().waiting =
                    Some(("CreateContainerConfigError".to_owned(), error.to_string()));
                return Ok(false);
            }
        };
        let volumes = self.volumes.clone().unwrap_or_default();
        let config =
            match spec::container_config(pod, container, attempt, env, &volumes, &self.shared.spec)
            {
                Ok(config) => config,
                Err(error) => {
                    self.tracks.entry(name).or_default().waiting =
                        Some(("CreateContainerConfigError".to_owned(), error.to_string()));
                    return Ok(false);
                }
            };
        let _ = std::fs::create_dir_all(PathBuf::from(&sandbox.log_directory).join(&name));
        let id = match runtime.create_container(sandbox_id, &config, sandbox).await {
            Ok(id) => id,
            Err(error) => {
                self.tracks.entry(name).or_default().waiting =
                    Some(("CreateContainerError".to_owned(), error.to_string()));
                return Ok(false);
            }
        };
        if let Err(error) = runtime.start_container(&id).await {
            self.tracks.entry(name).or_default().waiting =
                Some(("RunContainerError".to_owned(), error.to_string()));
            return Ok(true);
        }
        let track = self.tracks.entry(name).or_default();
        track.waiting = None;
        track.startup = None;
        track.liveness = None;
        track.readiness = None;
        Ok(true)
    }

    /// Makes the container's image present per its pull policy. An image
    /// that cannot be pulled but is present is used, so that pods restart
    /// offline even with `Always`.
    async fn ensure_image(&mut self, container: &Container) -> Result<(), (String, String)> {
        let runtime = self.shared.runtime.clone();
        let image = container.image.clone().unwrap_or_default();
        let policy = container.image_pull_policy.clone().unwrap_or_else(|| {
            let tag = image.rsplit('/').next().unwrap_or_default();
            if !tag.contains(':') || tag.ends_with(":latest") {
                "Always".to_owned()
            } else {
                "IfNotPresent".to_owned()
            }
        });
        let present = runtime
            .image_status(&image)
            .await
            .map_err(|e| ("ErrImagePull".to_owned(), e.to_string()))?
            .is_some();
        match policy.as_str() {
            "Never" if present => return Ok(()),
            "Never" => {
                return Err((
                    "ErrImageNeverPull".to_owned(),
                    format!("Container image {image:?} is not present with pull policy of Never"),
                ));
            }
            "IfNotPresent" if present => return Ok(()),
            _ => {}
        }
        let track = self.tracks.entry(container.name.clone()).or_default();
        if !track.pulls.ready() {
            if present {
                return Ok(());
            }
            return Err((
                "ImagePullBackOff".to_owned(),
                format!("Back-off pulling image {image:?}"),
            ));
        }
        match runtime.pull_image(&image).await {
            Ok(_) => {
                track.pulls = Backoff::default();
                Ok(())
            }
            Err(error) => {
                track.pulls.step();
                if present {
                    tracing::info!(%image, %error, "pull failed; using the image present");
                    Ok(())
                } else {
                    Err((
                        "ErrImagePull".to_owned(),
                        format!("failed to pull image {image:?}: {error}"),
                    ))
                }
            }
        }
    }

    /// Runs the probes of running containers; a failed startup or
    /// liveness probe stops the container (it restarts per policy).
    async fn run_probes(&mut self, pod: &Pod, observed: &Observed) {
        let spec = pod.spec.clone().unwrap_or_default();
        let host = if spec::host_network(pod) {
            "127.0.0.1".to_owned()
        } else {
            observed
                .pod_ip
                .clone()
                .unwrap_or_else(|| "127.0.0.1".to_owned())
        };
        for container in &spec.containers {
            let Some(instance) = observed.current(&container.name) else {
                continue;
            };
            if instance.latest.state != ContainerState::Running {
                continue;
            }
            let id = instance.latest.id.clone();
            let started_at = instance.latest.started_at;
            let target = Target {
                runtime: self.shared.runtime.as_ref(),
                container_id: &id,
                host: host.clone(),
                ports: container
                    .ports
                    .iter()
                    .flatten()
                    .filter_map(|p| Some((p.name.clone()?, p.container_port)))
                    .collect(),
            };
            let track = self.tracks.entry(container.name.clone()).or_default();
            let fresh = |state: &mut Option<ProbeState>| {
                if state.as_ref().is_none_or(|s| s.container_id != id) {
                    *state = Some(ProbeState::new(&id));
                }
            };
            let mut kill = None;
            if let Some(startup) = &container.startup_probe {
                fresh(&mut track.startup);
                let state = track.startup.as_mut().expect("set above");
                if state.result != Some(true) {
                    state.tick(startup, started_at, &target).await;
                    if state.result == Some(false) {
                        kill = Some("failed startup probe");
                    }
                }
            }
            let started = track
                .startup
                .as_ref()
                .is_none_or(|s| s.result == Some(true))
                || container.startup_probe.is_none();
            if started && kill.is_none() {
                if let Some(liveness) = &container.liveness_probe {
                    fresh(&mut track.liveness);
                    let state = track.liveness.as_mut().expect("set above");
                    state.tick(liveness, started_at, &target).await;
                    if state.result == Some(false) {
                        kill = Some("failed liveness probe");
                    }
                }
                if let Some(readiness) = &container.readiness_probe {
                    fresh(&mut track.readiness);
                    let state = track.readiness.as_mut().expect("set above");
                    state.tick(readiness, started_at, &target).await;
                }
            }
            if let Some(why) = kill {
                tracing::info!(pod = ?pod.metadata.name, container = %container.name, "container {why}, will be restarted");
                track.liveness = None;
                track.startup = None;
                track.readiness = None;
                if let Err(error) = self.shared.runtime.stop_container(&id, grace(pod)).await {
                    tracing::info!(%error, "stopping the container failed");
                }
            }
        }
    }

    /// Graceful deletion: hooks, stop, final status, then the cloud's
    /// delete.
    async fn terminate(&mut self, pod: &Pod) -> Result<(), RuntimeError> {
        if !self.terminated {
            self.kill_pod(pod, deletion_grace(pod)).await?;
            self.terminated = true;
        }
        let observed = self.observe(pod).await?;
        self.report(pod, &observed);
        if !self.delete_sent {
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            match self
                .shared
                .client
                .delete_pod(&namespace, &name, &Self::uid(pod))
                .await
            {
                Ok(()) => self.delete_sent = true,
                Err(error) if error.code() == 404 => self.delete_sent = true,
                Err(MetaError::NotConnected) => {}
                Err(error) => tracing::debug!(%error, pod = %name, "pod deletion not accepted yet"),
            }
        }
        Ok(())
    }

    /// Runs preStop hooks and stops every running container within
    /// `grace`, then the sandboxes.
    async fn kill_pod(&mut self, pod: &Pod, grace: Duration) -> Result<(), RuntimeError> {
        let observed = self.observe(pod).await?;
        let spec = pod.spec.clone().unwrap_or_default();
        let deadline = Instant::now() + grace;
        let host = observed
            .pod_ip
            .clone()
            .unwrap_or_else(|| "127.0.0.1".to_owned());
        let runtime = self.shared.runtime.clone();
        let stops = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .filter_map(|container| {
                let instance = observed.containers.get(&container.name)?;
                (instance.latest.state == ContainerState::Running).then(|| {
                    let runtime = runtime.clone();
                    let id = instance.latest.id.clone();
                    let pre_stop = container
                        .lifecycle
                        .as_ref()
                        .and_then(|l| l.pre_stop.clone());
                    let host = host.clone();
                    async move {
                        if let Some(hook) = pre_stop {
                            let target = Target {
                                runtime: runtime.as_ref(),
                                container_id: &id,
                                host,
                                ports: Vec::new(),
                            };
                            let left = deadline.saturating_duration_since(Instant::now());
                            if let Err(error) = probe::hook(&hook, &target, left).await {
                                tracing::info!(%error, "preStop hook failed");
                            }
                        }
                        let left = deadline.saturating_duration_since(Instant::now());
                        runtime.stop_container(&id, left).await
                    }
                })
            });
        for result in futures::future::join_all(stops).await {
            if let Err(error) = result
                && !error.is_not_found()
            {
                return Err(error);
            }
        }
        for (id, _, _) in &observed.sandboxes {
            runtime.stop_sandbox(id).await?;
        }
        Ok(())
    }

    /// The cloud deleted the pod: everything goes, volumes and logs too.
    async fn remove(&mut self, pod: &Pod) {
        let uid = Self::uid(pod);
        self.shared.statuses.forget(&uid);
        if !self.terminated
            && let Err(error) = self.kill_pod(pod, deletion_grace(pod)).await
        {
            tracing::info!(%error, pod = ?pod.metadata.name, "stopping a deleted pod failed");
        }
        remove_pod(&self.shared, pod).await;
        self.shared.statuses.forget(&uid);
        tracing::info!(pod = ?pod.metadata.name, %uid, "pod removed");
    }

    /// Builds the status from `observed` and queues it if it changed.
    fn report(&mut self, pod: &Pod, observed: &Observed) {
        let status = self.status(pod, observed);
        if self.last_status.as_ref() == Some(&status) {
            return;
        }
        self.shared.statuses.push(
            &Self::uid(pod),
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default(),
            status.clone(),
        );
        self.last_status = Some(status);
    }

    /// The pod's status.
    fn status(&mut self, pod: &Pod, observed: &Observed) -> Value {
        let spec = pod.spec.clone().unwrap_or_default();
        let init_containers = spec.init_containers.clone().unwrap_or_default();
        let init_statuses: Vec<Value> = init_containers
            .iter()
            .map(|c| self.container_status(pod, c, observed, true))
            .collect();
        let statuses: Vec<Value> = spec
            .containers
            .iter()
            .map(|c| self.container_status(pod, c, observed, false))
            .collect();
        let initialized = init_containers.iter().all(|c| {
            matches!(self.standing(pod, c, observed, true), Standing::Succeeded)
                || observed.current(&c.name).is_some_and(|i| {
                    i.latest.state == ContainerState::Exited && i.latest.exit_code == 0
                })
        });
        let standings: Vec<Standing> = spec
            .containers
            .iter()
            .map(|c| self.standing(pod, c, observed, false))
            .collect();
        let phase = if self.terminated {
            if standings.iter().all(|s| *s == Standing::Succeeded) {
                "Succeeded"
            } else {
                "Failed"
            }
        } else if !initialized || standings.contains(&Standing::NeverStarted) {
            if standings.contains(&Standing::Running) && initialized {
                "Running"
            } else {
                "Pending"
            }
        } else if standings
            .iter()
            .any(|s| matches!(s, Standing::Running | Standing::Restarting))
        {
            "Running"
        } else if standings.iter().all(|s| *s == Standing::Succeeded) {
            "Succeeded"
        } else {
            "Failed"
        };
        let all_ready = !statuses.is_empty()
            && statuses
                .iter()
                .all(|s| s["ready"].as_bool().unwrap_or(false));
        let conditions = vec![
            self.condition(
                "PodReadyToStartContainers",
                observed.sandbox.is_some(),
                None,
            ),
            self.condition("Initialized", initialized, None),
            self.condition(
                "Ready",
                all_ready && !self.terminated,
                (!all_ready).then_some("ContainersNotReady"),
            ),
            self.condition(
                "ContainersReady",
                all_ready && !self.terminated,
                (!all_ready).then_some("ContainersNotReady"),
            ),
            self.condition("PodScheduled", true, None),
        ];
        if self.start_time.is_none() {
            self.start_time = Some(rfc3339());
        }
        let host_ip = self.shared.host_ip.clone();
        let pod_ip = if spec::host_network(pod) {
            Some(host_ip.clone())
        } else {
            observed.pod_ip.clone()
        };
        let mut status = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "startTime": self.start_time,
            "qosClass": QosClass::of(pod).name(),
            "containerStatuses": statuses,
        });
        if !init_statuses.is_empty() {
            status["initContainerStatuses"] = Value::Array(init_statuses);
        }
        if let Some(ip) = pod_ip.filter(|_| observed.sandbox.is_some()) {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{"ip": ip}]);
        }
        if let Some((reason, message)) = &self.pod_waiting
            && phase == "Pending"
        {
            status["message"] = json!(message);
            status["reason"] = json!(reason);
        }
        status
    }

    /// One condition, its transition time kept while it holds.
    fn condition(&mut self, kind: &str, ok: bool, reason: Option<&str>) -> Value {
        let value = if ok { "True" } else { "False" };
        let entry = self
            .transitions
            .entry(kind.to_owned())
            .or_insert_with(|| (value.to_owned(), rfc3339()));
        if entry.0 != value {
            *entry = (value.to_owned(), rfc3339());
        }
        let mut condition = json!({
            "type": kind,
            "status": value,
            "lastProbeTime": null,
            "lastTransitionTime": entry.1,
        });
        if let Some(reason) = reason {
            condition["reason"] = json!(reason);
        }
        condition
    }

    /// One entry of `containerStatuses`.
    fn container_status(
        &self,
        pod: &Pod,
        container: &Container,
        observed: &Observed,
        init: bool,
    ) -> Value {
        let name = &container.name;
        let image = container.image.clone().unwrap_or_default();
        let track = self.tracks.get(name);
        let instances = observed.containers.get(name);
        let scheme = &self.shared.id_scheme;
        let terminated = |s: &ContainerStatus| {
            json!({"terminated": {
                "exitCode": s.exit_code,
                "reason": if s.reason.is_empty() {
                    if s.exit_code == 0 { "Completed" } else { "Error" }.to_owned()
                } else {
                    s.reason.clone()
                },
                "message": if s.message.is_empty() { None } else { Some(s.message.clone()) },
                "startedAt": s.started_at.map(rfc3339_of),
                "finishedAt": s.finished_at.map(rfc3339_of),
                "containerID": format!("{scheme}{}", s.id),
            }})
        };
        let waiting = |reason: &str, message: &str| {
            let mut w = json!({"reason": reason});
            if !message.is_empty() {
                w["message"] = json!(message);
            }
            json!({"waiting": w})
        };
        let standing = self.standing(pod, container, observed, init);
        let track_waiting = track.and_then(|t| t.waiting.clone());
        let (state, last_state, ready, started, id, image_id, restarts) = match instances {
            None => {
                let (reason, message) = track_waiting
                    .or_else(|| self.pod_waiting.clone())
                    .unwrap_or_else(|| ("ContainerCreating".to_owned(), String::new()));
                let reason = if reason == "CrashLoopBackOff" {
                    "ContainerCreating".to_owned()
                } else {
                    reason
                };
                (
                    waiting(&reason, &message),
                    json!({}),
                    false,
                    false,
                    None,
                    String::new(),
                    0,
                )
            }
            Some(i) => {
                let latest = &i.latest;
                let last = i
                    .previous
                    .as_ref()
                    .filter(|p| p.state == ContainerState::Exited)
                    .map_or_else(|| json!({}), &terminated);
                let probes_ok = track.is_none_or(|t| {
                    t.readiness.as_ref().is_none_or(|r| r.result == Some(true))
                        && t.startup.as_ref().is_none_or(|s| s.result == Some(true))
                }) && (container.readiness_probe.is_none()
                    || track
                        .and_then(|t| t.readiness.as_ref())
                        .is_some_and(|r| r.result == Some(true)));
                match standing {
                    Standing::Running => (
                        json!({"running": {"startedAt": latest.started_at.map(rfc3339_of)}}),
                        last,
                        probes_ok && !self.terminated,
                        true,
                        Some(latest.id.clone()),
                        latest.image_ref.clone(),
                        latest.attempt,
                    ),
                    Standing::Restarting => {
                        let (reason, message) = track_waiting
                            .unwrap_or_else(|| ("ContainerCreating".to_owned(), String::new()));
                        (
                            waiting(&reason, &message),
                            terminated(latest),
                            false,
                            false,
                            Some(latest.id.clone()),
                            latest.image_ref.clone(),
                            latest.attempt,
                        )
                    }
                    Standing::NeverStarted => (
                        waiting("ContainerCreating", ""),
                        last,
                        false,
                        false,
                        Some(latest.id.clone()),
                        latest.image_ref.clone(),
                        latest.attempt,
                    ),
                    Standing::Succeeded | Standing::Failed => (
                        terminated(latest),
                        last,
                        false,
                        false,
                        Some(latest.id.clone()),
                        latest.image_ref.clone(),
                        latest.attempt,
                    ),
                }
            }
        };
        let mut status = json!({
            "name": name,
            "image": image,
            "imageID": image_id,
            "ready": ready,
            "started": started,
            "restartCount": restarts,
            "state": state,
            "lastState": last_state,
        });
        if let Some(id) = id {
            status["containerID"] = json!(format!("{scheme}{id}"));
        }
        status
    }
}

/// The pod's restart policy (`Always` by default).
fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

/// The pod's termination grace period (30 s by default).
fn grace(pod: &Pod) -> Duration {
    let seconds = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30);
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

/// The grace period of a deletion: the one the deletion set, else the
/// pod's.
fn deletion_grace(pod: &Pod) -> Duration {
    match pod.metadata.deletion_grace_period_seconds {
        Some(seconds) => Duration::from_secs(u64::try_from(seconds).unwrap_or(0)),
        None => grace(pod),
    }
}

/// Removes every sandbox and container of `pod`, its volumes, logs and
/// cgroups.
pub async fn remove_pod(shared: &Shared, pod: &Pod) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    remove_uid(shared, &uid).await;
    let _ = std::fs::remove_dir_all(spec::log_directory(pod, &shared.spec.log_root));
    remove_cgroups(&spec::cgroup_parent(pod));
}

/// Removes the sandboxes (with their containers) and the pod directory
/// of the pod with `uid`.
pub async fn remove_uid(shared: &Shared, uid: &str) {
    let labels = BTreeMap::from([(POD_UID.to_owned(), uid.to_owned())]);
    let runtime = &shared.runtime;
    if let Ok(sandboxes) = runtime
        .list_sandboxes(&SandboxFilter {
            labels,
            ..Default::default()
        })
        .await
    {
        for sandbox in sandboxes {
            let _ = runtime.stop_sandbox(&sandbox.id).await;
            if let Err(error) = runtime.remove_sandbox(&sandbox.id).await {
                tracing::info!(%error, sandbox = %sandbox.id, "removing a sandbox failed");
            }
        }
    }
    let _ = std::fs::remove_dir_all(volumes::pod_dir(&shared.root, uid));
}

/// Removes a pod's cgroup directories in every hierarchy (runc removes
/// only the containers' leaves, edged.md §3.9).
fn remove_cgroups(parent: &str) {
    let relative = parent.trim_start_matches('/');
    let root = std::path::Path::new("/sys/fs/cgroup");
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let mut dirs = vec![root.join(relative)];
    dirs.extend(entries.flatten().map(|e| e.path().join(relative)));
    for dir in dirs {
        if dir.is_dir() {
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_to_its_cap() {
        let mut backoff = Backoff::default();
        assert!(backoff.ready());
        let mut delays = Vec::new();
        for _ in 0..7 {
            backoff.step();
            delays.push(backoff.remaining().as_secs());
        }
        assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300]);
        assert!(!backoff.ready());
    }
}
