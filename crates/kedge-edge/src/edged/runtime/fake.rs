//! [`FakeRuntime`]: the [`Runtime`] in memory, for hollow nodes and the
//! pod manager's unit tests.
//!
//! It behaves like containerd's CRI plugin, minus processes: a sandbox is
//! `Ready` at once with a pod IP from 10.88.0.0/16 (none with a host
//! network); a container needs a present image and a ready sandbox, starts
//! `Running` and stays so until stopped (exit code 0 with a grace period,
//! 137 without one, as if killed) or until a test makes it exit
//! ([`FakeRuntime::exit_container`]). Images are present when named to
//! [`FakeRuntime::new`] or once pulled. Ids are unique and never reused.
//! Like containerd, it refuses a privileged container in a sandbox that is
//! not privileged; its images have no user, so it does not check
//! `run_as_non_root` against them.
//!
//! Tests can make the next call of a given method fail
//! ([`FakeRuntime::fail_next`]), answer `exec_sync` their own way
//! ([`FakeRuntime::set_exec_handler`]), read back the calls made
//! ([`FakeRuntime::calls`]) and the configurations sandboxes and containers
//! were created from ([`FakeRuntime::sandbox_config`],
//! [`FakeRuntime::container_config`]).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::{
    Container, ContainerConfig, ContainerFilter, ContainerState, ContainerStatus, ExecOutput,
    Image, Result, Runtime, RuntimeCondition, RuntimeError, RuntimeStatus, RuntimeVersion, Sandbox,
    SandboxConfig, SandboxFilter, SandboxState, SandboxStatus, labels_match,
};

/// How many of the latest calls [`FakeRuntime::calls`] keeps at least.
pub const CALLS_KEPT: usize = 1024;

/// Answers `exec_sync` for [`FakeRuntime`]: given the container's status
/// and the command, what the command did.
pub type ExecHandler = Arc<dyn Fn(&ContainerStatus, &[String]) -> ExecOutput + Send + Sync>;

/// An in-memory container runtime. Clones share their state.
#[derive(Clone)]
pub struct FakeRuntime {
    // A std mutex: no call holds it across an await, and every critical
    // section is a few map operations.
    state: Arc<Mutex<State>>,
}

struct FakeSandbox {
    config: SandboxConfig,
    state: SandboxState,
    created_at: SystemTime,
    ip: Option<IpAddr>,
}

struct FakeContainer {
    sandbox_id: String,
    config: ContainerConfig,
    status: ContainerStatus,
}

#[derive(Default)]
struct State {
    images: BTreeMap<String, Image>,
    sandboxes: HashMap<String, FakeSandbox>,
    containers: HashMap<String, FakeContainer>,
    next_id: u64,
    next_ip: u32,
    failures: HashMap<&'static str, String>,
    calls: Vec<&'static str>,
    exec: Option<ExecHandler>,
    network_ready: bool,
}

impl std::fmt::Debug for FakeRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("FakeRuntime")
            .field("images", &state.images.len())
            .field("sandboxes", &state.sandboxes.len())
            .field("containers", &state.containers.len())
            .finish()
    }
}

impl Default for FakeRuntime {
    fn default() -> Self {
        Self::new(std::iter::empty::<&str>())
    }
}

impl FakeRuntime {
    /// The version it reports.
    pub const VERSION: &str = "0.1.0-fake";

    /// A runtime holding `images` (references such as
    /// `localhost/kedge/busybox:1`), with nothing running.
    pub fn new<I, S>(images: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut state = State {
            network_ready: true,
            ..State::default()
        };
        for image in images {
            state.add_image(image.into());
        }
        Self {
            state: Arc::new(Mutex::new(state)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in a test thread must not hide the state from the others.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the next call of `method` (the trait method's name, e.g.
    /// `"run_sandbox"`) fail with an `Unavailable` status carrying
    /// `message`.
    pub fn fail_next(&self, method: &'static str, message: impl Into<String>) {
        self.lock().failures.insert(method, message.into());
    }

    /// Answers `exec_sync` with `handler` from now on. Without one, every
    /// command exits 0; `echo ARGS` prints its arguments and `false`
    /// exits 1.
    pub fn set_exec_handler(&self, handler: ExecHandler) {
        self.lock().exec = Some(handler);
    }

    /// Whether `status` reports the network ready (it does at first).
    pub fn set_network_ready(&self, ready: bool) {
        self.lock().network_ready = ready;
    }

    /// The trait methods called so far, in order: the last
    /// [`CALLS_KEPT`] at least, so a long-running hollow node's record
    /// stays bounded.
    pub fn calls(&self) -> Vec<&'static str> {
        self.lock().calls.clone()
    }

    /// The configuration sandbox `id` was created from, if it exists.
    pub fn sandbox_config(&self, id: &str) -> Option<SandboxConfig> {
        self.lock().sandboxes.get(id).map(|s| s.config.clone())
    }

    /// The configuration container `id` was created from, if it exists.
    pub fn container_config(&self, id: &str) -> Option<ContainerConfig> {
        self.lock().containers.get(id).map(|c| c.config.clone())
    }

    /// Makes a running container exit with `exit_code` and `reason`, as if
    /// its process ended (a crash, or a job that completed).
    pub fn exit_container(&self, id: &str, exit_code: i32, reason: &str) -> Result<()> {
        let mut state = self.lock();
        let container = state.container_mut(id)?;
        if container.status.state != ContainerState::Running {
            return Err(RuntimeError::InvalidState(format!(
                "container {id} is not running"
            )));
        }
        container.exit(exit_code, reason);
        Ok(())
    }
}

impl State {
    fn add_image(&mut self, reference: String) -> String {
        let n = self.images.len() + 1;
        let image = self
            .images
            .entry(reference.clone())
            .or_insert_with(|| Image {
                id: format!("sha256:{n:064x}"),
                repo_tags: vec![reference],
                repo_digests: Vec::new(),
                size: 1 << 20,
            });
        image.id.clone()
    }

    fn find_image(&self, reference: &str) -> Option<&Image> {
        self.images
            .get(reference)
            .or_else(|| self.images.values().find(|i| i.id == reference))
    }

    /// Records the call and returns the failure planned for it, if any.
    fn enter(&mut self, method: &'static str) -> Result<()> {
        if self.calls.len() >= 2 * CALLS_KEPT {
            self.calls.drain(..CALLS_KEPT);
        }
        self.calls.push(method);
        match self.failures.remove(method) {
            Some(message) => Err(RuntimeError::Status {
                call: method,
                code: tonic::Code::Unavailable,
                message,
            }),
            None => Ok(()),
        }
    }

    fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("{:064x}", self.next_id)
    }

    /// 10.88.0.2, 10.88.0.3 ... 10.88.255.254, skipping .0, .1 (the
    /// gateway) and .255 of every /24, then around again.
    fn new_ip(&mut self) -> IpAddr {
        loop {
            self.next_ip = (self.next_ip + 1) % (1 << 16);
            let [x, y] = [(self.next_ip >> 8) as u8, self.next_ip as u8];
            if y > 1 && y < 255 {
                return IpAddr::V4(Ipv4Addr::new(10, 88, x, y));
            }
        }
    }

    fn sandbox_mut(&mut self, id: &str) -> Result<&mut FakeSandbox> {
        self.sandboxes
            .get_mut(id)
            .ok_or_else(|| not_found("sandbox", id))
    }

    fn container_mut(&mut self, id: &str) -> Result<&mut FakeContainer> {
        self.containers
            .get_mut(id)
            .ok_or_else(|| not_found("container", id))
    }

    /// Stops every running or created container of `sandbox_id` as a kill.
    fn kill_containers_of(&mut self, sandbox_id: &str) {
        for container in self.containers.values_mut() {
            if container.sandbox_id == sandbox_id {
                container.stop(Duration::ZERO);
            }
        }
    }
}

impl FakeContainer {
    fn exit(&mut self, exit_code: i32, reason: &str) {
        self.status.state = ContainerState::Exited;
        self.status.exit_code = exit_code;
        self.status.reason = reason.to_owned();
        self.status.finished_at = Some(SystemTime::now());
    }

    /// Stops as a graceful SIGTERM (exit 0) or, with no grace, a SIGKILL
    /// (137). A created container that never ran exits too, without a code.
    fn stop(&mut self, grace: Duration) {
        match self.status.state {
            ContainerState::Running => {
                if grace.is_zero() {
                    self.exit(137, "Error");
                } else {
                    self.exit(0, "Completed");
                }
            }
            ContainerState::Created | ContainerState::Unknown => self.exit(0, ""),
            ContainerState::Exited => {}
        }
    }
}

fn not_found(kind: &'static str, id: &str) -> RuntimeError {
    RuntimeError::NotFound {
        kind,
        id: id.to_owned(),
    }
}

fn default_exec(command: &[String]) -> ExecOutput {
    match command.split_first() {
        Some((program, args)) if program == "echo" => ExecOutput {
            stdout: format!("{}\n", args.join(" ")).into_bytes(),
            ..ExecOutput::default()
        },
        Some((program, _)) if program == "false" => ExecOutput {
            exit_code: 1,
            ..ExecOutput::default()
        },
        _ => ExecOutput::default(),
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    async fn version(&self) -> Result<RuntimeVersion> {
        self.lock().enter("version")?;
        Ok(RuntimeVersion {
            runtime_name: "fake".into(),
            runtime_version: Self::VERSION.into(),
            runtime_api_version: "v1".into(),
        })
    }

    async fn status(&self) -> Result<RuntimeStatus> {
        let mut state = self.lock();
        state.enter("status")?;
        let network_ready = state.network_ready;
        Ok(RuntimeStatus {
            conditions: vec![
                RuntimeCondition {
                    kind: RuntimeStatus::RUNTIME_READY.into(),
                    status: true,
                    reason: String::new(),
                    message: String::new(),
                },
                RuntimeCondition {
                    kind: RuntimeStatus::NETWORK_READY.into(),
                    status: network_ready,
                    reason: if network_ready {
                        String::new()
                    } else {
                        "NetworkPluginNotReady".into()
                    },
                    message: String::new(),
                },
            ],
        })
    }

    async fn image_status(&self, image: &str) -> Result<Option<Image>> {
        let mut state = self.lock();
        state.enter("image_status")?;
        Ok(state.find_image(image).cloned())
    }

    async fn pull_image(&self, image: &str) -> Result<String> {
        let mut state = self.lock();
        state.enter("pull_image")?;
        Ok(state.add_image(image.to_owned()))
    }

    async fn list_images(&self) -> Result<Vec<Image>> {
        let mut state = self.lock();
        state.enter("list_images")?;
        Ok(state.images.values().cloned().collect())
    }

    async fn run_sandbox(&self, config: &SandboxConfig) -> Result<String> {
        let mut state = self.lock();
        state.enter("run_sandbox")?;
        if !config.host_network() && !state.network_ready {
            return Err(RuntimeError::Status {
                call: "run_sandbox",
                code: tonic::Code::Unknown,
                message: "cni config uninitialized".into(),
            });
        }
        let id = state.new_id();
        let ip = (!config.host_network()).then(|| state.new_ip());
        state.sandboxes.insert(
            id.clone(),
            FakeSandbox {
                config: config.clone(),
                state: SandboxState::Ready,
                created_at: SystemTime::now(),
                ip,
            },
        );
        Ok(id)
    }

    async fn stop_sandbox(&self, id: &str) -> Result<()> {
        let mut state = self.lock();
        state.enter("stop_sandbox")?;
        state.sandbox_mut(id)?.state = SandboxState::NotReady;
        state.kill_containers_of(id);
        Ok(())
    }

    async fn remove_sandbox(&self, id: &str) -> Result<()> {
        let mut state = self.lock();
        state.enter("remove_sandbox")?;
        if state.sandboxes.remove(id).is_some() {
            state.containers.retain(|_, c| c.sandbox_id != id);
        }
        Ok(())
    }

    async fn sandbox_status(&self, id: &str) -> Result<SandboxStatus> {
        let mut state = self.lock();
        state.enter("sandbox_status")?;
        let sandbox = state.sandbox_mut(id)?;
        Ok(SandboxStatus {
            id: id.to_owned(),
            metadata: sandbox.config.metadata.clone(),
            state: sandbox.state,
            created_at: Some(sandbox.created_at),
            // Like containerd: a stopped sandbox has lost its network.
            ip: sandbox.ip.filter(|_| sandbox.state == SandboxState::Ready),
            additional_ips: Vec::new(),
            network: sandbox.config.namespaces.network,
            labels: sandbox.config.labels.clone(),
            annotations: sandbox.config.annotations.clone(),
        })
    }

    async fn list_sandboxes(&self, filter: &SandboxFilter) -> Result<Vec<Sandbox>> {
        let mut state = self.lock();
        state.enter("list_sandboxes")?;
        let mut list: Vec<Sandbox> = state
            .sandboxes
            .iter()
            .filter(|(id, s)| {
                filter.id.as_ref().is_none_or(|want| want == *id)
                    && filter.state.is_none_or(|want| want == s.state)
                    && labels_match(&s.config.labels, &filter.labels)
            })
            .map(|(id, s)| Sandbox {
                id: id.clone(),
                metadata: s.config.metadata.clone(),
                state: s.state,
                created_at: Some(s.created_at),
                labels: s.config.labels.clone(),
                annotations: s.config.annotations.clone(),
            })
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(list)
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
        _sandbox: &SandboxConfig,
    ) -> Result<String> {
        let mut state = self.lock();
        state.enter("create_container")?;
        let sandbox = state
            .sandboxes
            .get(sandbox_id)
            .ok_or_else(|| not_found("sandbox", sandbox_id))?;
        if sandbox.state != SandboxState::Ready {
            return Err(RuntimeError::InvalidState(format!(
                "sandbox {sandbox_id} is not ready"
            )));
        }
        if config.security.privileged && !sandbox.config.security.privileged {
            return Err(RuntimeError::Security(
                "no privileged container allowed in sandbox".into(),
            ));
        }
        let log_path = if sandbox.config.log_directory.is_empty() || config.log_path.is_empty() {
            String::new()
        } else {
            format!("{}/{}", sandbox.config.log_directory, config.log_path)
        };
        let image_ref = state
            .find_image(&config.image)
            .ok_or_else(|| not_found("image", &config.image))?
            .id
            .clone();
        let id = state.new_id();
        let status = ContainerStatus {
            id: id.clone(),
            name: config.name.clone(),
            attempt: config.attempt,
            state: ContainerState::Created,
            created_at: Some(SystemTime::now()),
            started_at: None,
            finished_at: None,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            image: config.image.clone(),
            image_ref,
            log_path,
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
        };
        state.containers.insert(
            id.clone(),
            FakeContainer {
                sandbox_id: sandbox_id.to_owned(),
                config: config.clone(),
                status,
            },
        );
        Ok(id)
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        let mut state = self.lock();
        state.enter("start_container")?;
        let container = state.container_mut(id)?;
        if container.status.state != ContainerState::Created {
            return Err(RuntimeError::InvalidState(format!(
                "container {id} is {:?}, not created",
                container.status.state
            )));
        }
        container.status.state = ContainerState::Running;
        container.status.started_at = Some(SystemTime::now());
        Ok(())
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<()> {
        let mut state = self.lock();
        state.enter("stop_container")?;
        state.container_mut(id)?.stop(grace);
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        let mut state = self.lock();
        state.enter("remove_container")?;
        state.containers.remove(id);
        Ok(())
    }

    async fn container_status(&self, id: &str) -> Result<ContainerStatus> {
        let mut state = self.lock();
        state.enter("container_status")?;
        Ok(state.container_mut(id)?.status.clone())
    }

    async fn list_containers(&self, filter: &ContainerFilter) -> Result<Vec<Container>> {
        let mut state = self.lock();
        state.enter("list_containers")?;
        let mut list: Vec<Container> = state
            .containers
            .iter()
            .filter(|(id, c)| {
                filter.id.as_ref().is_none_or(|want| want == *id)
                    && filter
                        .sandbox_id
                        .as_ref()
                        .is_none_or(|want| *want == c.sandbox_id)
                    && filter.state.is_none_or(|want| want == c.status.state)
                    && labels_match(&c.status.labels, &filter.labels)
            })
            .map(|(id, c)| Container {
                id: id.clone(),
                sandbox_id: c.sandbox_id.clone(),
                name: c.status.name.clone(),
                attempt: c.status.attempt,
                image: c.status.image.clone(),
                image_ref: c.status.image_ref.clone(),
                state: c.status.state,
                created_at: c.status.created_at,
                labels: c.status.labels.clone(),
                annotations: c.status.annotations.clone(),
            })
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(list)
    }

    async fn exec_sync(
        &self,
        id: &str,
        command: &[String],
        _timeout: Duration,
    ) -> Result<ExecOutput> {
        let (status, handler) = {
            let mut state = self.lock();
            state.enter("exec_sync")?;
            let status = state.container_mut(id)?.status.clone();
            (status, state.exec.clone())
        };
        if status.state != ContainerState::Running {
            return Err(RuntimeError::InvalidState(format!(
                "container {id} is not running"
            )));
        }
        // The handler runs without the lock: it may call back into the fake.
        Ok(match handler {
            Some(handler) => handler(&status, command),
            None => default_exec(command),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edged::runtime::{Labels, NamespaceMode, NamespaceOptions, SandboxMetadata};

    const BUSYBOX: &str = "localhost/kedge/busybox:1";

    fn pod(name: &str, host_network: bool) -> SandboxConfig {
        SandboxConfig {
            metadata: SandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            },
            log_directory: format!("/var/log/pods/default_{name}_uid-{name}"),
            labels: Labels::from([("io.kubernetes.pod.name".into(), name.into())]),
            namespaces: NamespaceOptions {
                network: if host_network {
                    NamespaceMode::Node
                } else {
                    NamespaceMode::Pod
                },
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn app(name: &str) -> ContainerConfig {
        ContainerConfig {
            name: name.into(),
            image: BUSYBOX.into(),
            command: vec!["sleep".into(), "3600".into()],
            log_path: format!("{name}/0.log"),
            labels: Labels::from([("io.kubernetes.container.name".into(), name.into())]),
            ..Default::default()
        }
    }

    async fn running(rt: &FakeRuntime, pod_name: &str) -> (String, String) {
        let config = pod(pod_name, false);
        let sandbox = rt.run_sandbox(&config).await.unwrap();
        let container = rt
            .create_container(&sandbox, &app("app"), &config)
            .await
            .unwrap();
        rt.start_container(&container).await.unwrap();
        (sandbox, container)
    }

    #[tokio::test]
    async fn reports_ready_and_its_version() {
        let rt = FakeRuntime::default();
        let version = rt.version().await.unwrap();
        assert_eq!(version.runtime_api_version, "v1");
        let status = rt.status().await.unwrap();
        assert!(status.runtime_ready() && status.network_ready());
        rt.set_network_ready(false);
        assert!(!rt.status().await.unwrap().network_ready());
    }

    #[tokio::test]
    async fn images_are_present_when_given_or_pulled() {
        let rt = FakeRuntime::new([BUSYBOX]);
        assert!(rt.image_status(BUSYBOX).await.unwrap().is_some());
        assert!(rt.image_status("nginx:1").await.unwrap().is_none());
        let id = rt.pull_image("nginx:1").await.unwrap();
        let image = rt.image_status("nginx:1").await.unwrap().unwrap();
        assert_eq!(image.id, id);
        assert_eq!(rt.image_status(&id).await.unwrap(), Some(image));
        assert_eq!(rt.list_images().await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn sandboxes_are_ready_with_distinct_pod_ips() {
        let rt = FakeRuntime::default();
        let a = rt.run_sandbox(&pod("a", false)).await.unwrap();
        let b = rt.run_sandbox(&pod("b", false)).await.unwrap();
        let host = rt.run_sandbox(&pod("h", true)).await.unwrap();
        let sa = rt.sandbox_status(&a).await.unwrap();
        let sb = rt.sandbox_status(&b).await.unwrap();
        assert_eq!(sa.state, SandboxState::Ready);
        assert_eq!(sa.metadata.name, "a");
        assert_ne!(sa.ip, sb.ip);
        for ip in [sa.ip, sb.ip] {
            match ip {
                Some(IpAddr::V4(v4)) => assert_eq!(v4.octets()[..2], [10, 88]),
                other => panic!("no pod IP: {other:?}"),
            }
        }
        let sh = rt.sandbox_status(&host).await.unwrap();
        assert_eq!((sh.ip, sh.network), (None, NamespaceMode::Node));
    }

    #[test]
    fn pod_ips_skip_network_gateway_and_broadcast() {
        let mut state = State::default();
        let ips: Vec<IpAddr> = (0..300).map(|_| state.new_ip()).collect();
        assert_eq!(ips[0], IpAddr::from([10, 88, 0, 2]));
        assert_eq!(ips[252], IpAddr::from([10, 88, 0, 254]));
        assert_eq!(ips[253], IpAddr::from([10, 88, 1, 2]));
        let unique: std::collections::HashSet<_> = ips.iter().collect();
        assert_eq!(unique.len(), ips.len());
    }

    #[tokio::test]
    async fn a_container_runs_and_stops_gracefully_or_killed() {
        let rt = FakeRuntime::new([BUSYBOX]);
        let (sandbox, container) = running(&rt, "web").await;
        let status = rt.container_status(&container).await.unwrap();
        assert_eq!(status.state, ContainerState::Running);
        assert!(status.started_at.is_some());
        assert_eq!(
            status.log_path,
            "/var/log/pods/default_web_uid-web/app/0.log"
        );

        rt.stop_container(&container, Duration::from_secs(30))
            .await
            .unwrap();
        let status = rt.container_status(&container).await.unwrap();
        assert_eq!(
            (status.state, status.exit_code, status.reason.as_str()),
            (ContainerState::Exited, 0, "Completed")
        );
        assert!(status.finished_at.is_some());

        let config = pod("web", false);
        let second = rt
            .create_container(&sandbox, &app("second"), &config)
            .await
            .unwrap();
        rt.start_container(&second).await.unwrap();
        rt.stop_container(&second, Duration::ZERO).await.unwrap();
        assert_eq!(rt.container_status(&second).await.unwrap().exit_code, 137);
        let error = rt.start_container(&second).await.expect_err("ran already");
        assert!(matches!(error, RuntimeError::InvalidState(_)), "{error:?}");
    }

    #[tokio::test]
    async fn a_container_needs_its_image_and_a_ready_sandbox() {
        let rt = FakeRuntime::default();
        let config = pod("p", false);
        let sandbox = rt.run_sandbox(&config).await.unwrap();
        let error = rt
            .create_container(&sandbox, &app("app"), &config)
            .await
            .expect_err("no image");
        assert!(error.is_not_found(), "{error:?}");
        rt.pull_image(BUSYBOX).await.unwrap();
        rt.stop_sandbox(&sandbox).await.unwrap();
        let error = rt
            .create_container(&sandbox, &app("app"), &config)
            .await
            .expect_err("sandbox stopped");
        assert!(matches!(error, RuntimeError::InvalidState(_)), "{error:?}");
        let error = rt
            .create_container("nope", &app("app"), &config)
            .await
            .expect_err("no sandbox");
        assert!(error.is_not_found());
    }

    #[tokio::test]
    async fn a_privileged_container_needs_a_privileged_sandbox_and_configs_read_back() {
        let rt = FakeRuntime::new([BUSYBOX]);
        let mut privileged = app("app");
        privileged.security.privileged = true;
        let plain = pod("plain", false);
        let sandbox = rt.run_sandbox(&plain).await.unwrap();
        let error = rt
            .create_container(&sandbox, &privileged, &plain)
            .await
            .expect_err("not a privileged sandbox");
        assert!(matches!(error, RuntimeError::Security(_)), "{error:?}");

        let mut config = pod("priv", false);
        config.security.privileged = true;
        let sandbox = rt.run_sandbox(&config).await.unwrap();
        let container = rt
            .create_container(&sandbox, &privileged, &config)
            .await
            .expect("privileged sandbox");
        assert_eq!(rt.sandbox_config(&sandbox), Some(config));
        assert_eq!(rt.container_config(&container), Some(privileged));
        assert_eq!(rt.container_config("nope"), None);
    }

    #[tokio::test]
    async fn stopping_a_sandbox_kills_its_containers_and_removing_it_removes_them() {
        let rt = FakeRuntime::new([BUSYBOX]);
        let (sandbox, container) = running(&rt, "p").await;
        let (other_sandbox, other) = running(&rt, "q").await;
        rt.stop_sandbox(&sandbox).await.unwrap();
        rt.stop_sandbox(&sandbox).await.expect("idempotent");
        let status = rt.sandbox_status(&sandbox).await.unwrap();
        assert_eq!((status.state, status.ip), (SandboxState::NotReady, None));
        assert_eq!(
            rt.container_status(&container).await.unwrap().exit_code,
            137
        );
        assert_eq!(
            rt.container_status(&other).await.unwrap().state,
            ContainerState::Running
        );

        rt.remove_sandbox(&sandbox).await.unwrap();
        rt.remove_sandbox(&sandbox).await.expect("idempotent");
        assert!(
            rt.sandbox_status(&sandbox)
                .await
                .unwrap_err()
                .is_not_found()
        );
        assert!(
            rt.container_status(&container)
                .await
                .unwrap_err()
                .is_not_found()
        );
        let left = rt
            .list_containers(&ContainerFilter::default())
            .await
            .unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].sandbox_id, other_sandbox);
    }

    #[tokio::test]
    async fn listings_filter_by_id_sandbox_state_and_labels() {
        let rt = FakeRuntime::new([BUSYBOX]);
        let (a, ca) = running(&rt, "a").await;
        let (b, cb) = running(&rt, "b").await;
        rt.stop_sandbox(&b).await.unwrap();

        let by_label = SandboxFilter {
            labels: Labels::from([("io.kubernetes.pod.name".into(), "a".into())]),
            ..Default::default()
        };
        let found = rt.list_sandboxes(&by_label).await.unwrap();
        assert_eq!(found.iter().map(|s| &s.id).collect::<Vec<_>>(), [&a]);
        let ready = SandboxFilter {
            state: Some(SandboxState::Ready),
            ..Default::default()
        };
        assert_eq!(rt.list_sandboxes(&ready).await.unwrap().len(), 1);
        let by_id = SandboxFilter {
            id: Some(b.clone()),
            ..Default::default()
        };
        assert_eq!(rt.list_sandboxes(&by_id).await.unwrap()[0].id, b);

        let in_b = ContainerFilter {
            sandbox_id: Some(b.clone()),
            ..Default::default()
        };
        let found = rt.list_containers(&in_b).await.unwrap();
        assert_eq!(found.iter().map(|c| &c.id).collect::<Vec<_>>(), [&cb]);
        let running_filter = ContainerFilter {
            state: Some(ContainerState::Running),
            labels: Labels::from([("io.kubernetes.container.name".into(), "app".into())]),
            ..Default::default()
        };
        let found = rt.list_containers(&running_filter).await.unwrap();
        assert_eq!(found.iter().map(|c| &c.id).collect::<Vec<_>>(), [&ca]);
    }

    #[tokio::test]
    async fn exec_sync_echoes_by_default_and_uses_a_handler_when_set() {
        let rt = FakeRuntime::new([BUSYBOX]);
        let (_, container) = running(&rt, "p").await;
        let cmd = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        let out = rt
            .exec_sync(&container, &cmd(&["echo", "hi"]), Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!((out.stdout.as_slice(), out.exit_code), (&b"hi\n"[..], 0));
        let out = rt
            .exec_sync(&container, &cmd(&["false"]), Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(out.exit_code, 1);

        rt.set_exec_handler(Arc::new(|status, command| ExecOutput {
            stdout: format!("{} ran {}", status.name, command.join(" ")).into_bytes(),
            stderr: Vec::new(),
            exit_code: 7,
        }));
        let out = rt
            .exec_sync(&container, &cmd(&["cat", "/x"]), Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(
            (out.stdout.as_slice(), out.exit_code),
            (&b"app ran cat /x"[..], 7)
        );

        rt.exit_container(&container, 3, "Error").unwrap();
        let status = rt.container_status(&container).await.unwrap();
        assert_eq!(
            (status.state, status.exit_code),
            (ContainerState::Exited, 3)
        );
        assert!(
            rt.exec_sync(&container, &cmd(&["true"]), Duration::from_secs(1))
                .await
                .is_err()
        );
        assert!(rt.exit_container(&container, 1, "Error").is_err());
    }

    #[tokio::test]
    async fn planned_failures_hit_the_next_call_only_and_calls_are_recorded() {
        let rt = FakeRuntime::new([BUSYBOX]);
        rt.fail_next("run_sandbox", "boom");
        let error = rt.run_sandbox(&pod("p", false)).await.unwrap_err();
        match &error {
            RuntimeError::Status { code, message, .. } => {
                assert_eq!(
                    (*code, message.as_str()),
                    (tonic::Code::Unavailable, "boom")
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        rt.run_sandbox(&pod("p", false))
            .await
            .expect("next call succeeds");
        assert_eq!(rt.calls(), ["run_sandbox", "run_sandbox"]);
    }

    #[tokio::test]
    async fn without_network_only_host_network_sandboxes_run() {
        let rt = FakeRuntime::default();
        rt.set_network_ready(false);
        assert!(rt.run_sandbox(&pod("p", false)).await.is_err());
        assert!(rt.run_sandbox(&pod("h", true)).await.is_ok());
    }

    #[tokio::test]
    async fn unknown_ids_are_not_found_and_removing_them_succeeds() {
        let rt = FakeRuntime::default();
        rt.remove_container("x").await.unwrap();
        rt.remove_sandbox("x").await.unwrap();
        assert!(rt.container_status("x").await.unwrap_err().is_not_found());
        assert!(
            rt.stop_container("x", Duration::ZERO)
                .await
                .unwrap_err()
                .is_not_found()
        );
        assert!(rt.sandbox_status("x").await.unwrap_err().is_not_found());
        assert!(rt.stop_sandbox("x").await.unwrap_err().is_not_found());
    }

    #[tokio::test]
    async fn the_fake_is_usable_as_a_trait_object() {
        let rt: Arc<dyn Runtime> = Arc::new(FakeRuntime::new([BUSYBOX]));
        assert!(rt.status().await.unwrap().runtime_ready());
        assert!(rt.image_status(BUSYBOX).await.unwrap().is_some());
    }
}
