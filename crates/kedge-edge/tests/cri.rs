//! [`CriRuntime`] against a real containerd: the private one that
//! `scripts/containerd.sh start DIR` runs (scripts/test.sh does so as
//! root), its socket in `KEDGE_CRI_SOCK`, its pod subnet in
//! `KEDGE_CRI_SUBNET`, with the images `localhost/kedge/pause:3.9` and
//! `localhost/kedge/busybox:1` imported.
//!
//! Without `KEDGE_CRI_SOCK` each test says it is skipped and passes,
//! except under CI (`CI` set), where it fails: CI must run these.
//!
//! Every test names its pod uniquely and removes its sandbox (and cgroup
//! directories) from a drop guard, so a failing test cleans up too.

use std::future::Future;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kedge_edge::edged::runtime::{
    ContainerConfig, ContainerFilter, ContainerSecurity, ContainerState, CriOptions, CriRuntime,
    Labels, NamespaceMode, NamespaceOptions, Resources, Runtime, SandboxConfig, SandboxFilter,
    SandboxMetadata, SandboxSecurity, SandboxState,
};
use tokio::time::Instant;

const PAUSE: &str = "localhost/kedge/pause:3.9";
const BUSYBOX: &str = "localhost/kedge/busybox:1";
const DEADLINE: Duration = Duration::from_secs(60);

/// The CRI socket, or `None` (after saying so) when these tests are to be
/// skipped. Panics under CI without a socket.
fn socket() -> Option<PathBuf> {
    match std::env::var_os("KEDGE_CRI_SOCK") {
        Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) => panic!(
            "KEDGE_CRI_SOCK is not set under CI: scripts/test.sh must start a private \
             containerd (as root) so that the CRI tests run"
        ),
        _ => {
            // Written to the real stderr, once: the test harness would swallow
            // eprintln! of a passing test.
            static SAID: Once = Once::new();
            SAID.call_once(|| {
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: CRI tests: KEDGE_CRI_SOCK is not set; run `scripts/containerd.sh \
                     start DIR` as root and export KEDGE_CRI_SOCK=DIR/containerd.sock"
                );
            });
            None
        }
    }
}

async fn connect(socket: &Path) -> CriRuntime {
    CriRuntime::connect(socket, CriOptions::default())
        .await
        .expect("connect to the CRI socket")
}

/// A name no other test or run uses.
fn unique(test: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    format!(
        "kedge-{test}-{}-{}-{nanos:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `check` until it yields a value, failing after [`DEADLINE`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops and removes the pod's sandboxes (found by its uid label) and
/// removes cgroup directories, when dropped: at the end of a test or while
/// a failed one unwinds. It uses its own thread, runtime and connection,
/// since the test's runtime may be unwinding.
struct PodGuard {
    socket: PathBuf,
    uid: String,
    cgroup_dirs: Vec<PathBuf>,
}

impl Drop for PodGuard {
    fn drop(&mut self) {
        let socket = self.socket.clone();
        let uid = self.uid.clone();
        let dirs = std::mem::take(&mut self.cgroup_dirs);
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            rt.block_on(async move {
                let cri = connect(&socket).await;
                let filter = SandboxFilter {
                    labels: Labels::from([("kedge.test/uid".to_owned(), uid)]),
                    ..Default::default()
                };
                for sandbox in cri.list_sandboxes(&filter).await.unwrap_or_default() {
                    let _ = cri.stop_sandbox(&sandbox.id).await;
                    let _ = cri.remove_sandbox(&sandbox.id).await;
                }
            });
            // runc removes a container's own cgroup, never the parents it made.
            // Their shared parent goes too once no other test uses it.
            for dir in dirs {
                let _ = std::fs::remove_dir(&dir);
                if let Some(parent) = dir.parent() {
                    let _ = std::fs::remove_dir(parent);
                }
            }
        });
        let _ = cleanup.join();
    }
}

fn sandbox_config(name: &str, host_network: bool, log_directory: &Path) -> SandboxConfig {
    let uid = format!("{name}-uid");
    SandboxConfig {
        metadata: SandboxMetadata {
            name: name.to_owned(),
            uid: uid.clone(),
            namespace: "kedge-test".into(),
            attempt: 0,
        },
        hostname: name.chars().take(63).collect(),
        log_directory: log_directory.display().to_string(),
        labels: Labels::from([
            ("kedge.test/uid".to_owned(), uid),
            ("io.kubernetes.pod.name".to_owned(), name.to_owned()),
        ]),
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

fn container_config(name: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        name: name.to_owned(),
        image: BUSYBOX.into(),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        labels: Labels::from([("io.kubernetes.container.name".to_owned(), name.to_owned())]),
        ..Default::default()
    }
}

/// A sandbox from `config`, guarded.
async fn run_pod(cri: &CriRuntime, socket: &Path, config: &SandboxConfig) -> (String, PodGuard) {
    let guard = PodGuard {
        socket: socket.to_owned(),
        uid: config.metadata.uid.clone(),
        cgroup_dirs: Vec::new(),
    };
    let id = cri.run_sandbox(config).await.expect("RunPodSandbox");
    (id, guard)
}

async fn wait_state(cri: &CriRuntime, id: &str, state: ContainerState) {
    eventually(&format!("container {id} {state:?}"), || async {
        let status = cri.container_status(id).await.expect("ContainerStatus");
        (status.state == state).then_some(())
    })
    .await
}

#[tokio::test]
async fn version_and_status_report_ready() {
    let Some(socket) = socket() else { return };
    let cri = connect(&socket).await;
    let version = cri.version().await.expect("Version");
    assert_eq!(version.runtime_name, "containerd");
    assert_eq!(version.runtime_api_version, "v1");
    assert!(!version.runtime_version.is_empty());
    // The CNI conflist is written before containerd starts, so the network is
    // ready as soon as its conf syncer has read it.
    eventually("RuntimeReady and NetworkReady", || async {
        let status = cri.status().await.expect("Status");
        (status.runtime_ready() && status.network_ready()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_offline_images_are_present() {
    let Some(socket) = socket() else { return };
    let cri = connect(&socket).await;
    for reference in [PAUSE, BUSYBOX] {
        let image = cri
            .image_status(reference)
            .await
            .expect("ImageStatus")
            .unwrap_or_else(|| panic!("{reference} is not present"));
        assert!(image.id.starts_with("sha256:"), "{image:?}");
        assert!(image.repo_tags.iter().any(|t| t == reference), "{image:?}");
    }
    assert!(
        cri.image_status("localhost/kedge/absent:0")
            .await
            .expect("ImageStatus")
            .is_none()
    );
    let all = cri.list_images().await.expect("ListImages");
    assert!(all.iter().any(|i| i.repo_tags.iter().any(|t| t == BUSYBOX)));
}

#[tokio::test]
async fn a_host_network_pod_runs_execs_stops_and_is_removed() {
    let Some(socket) = socket() else { return };
    let cri = connect(&socket).await;
    let logs = tempfile::tempdir().expect("log directory");
    let name = unique("host");
    let pod = sandbox_config(&name, true, logs.path());
    let (sandbox, _guard) = run_pod(&cri, &socket, &pod).await;

    let status = cri
        .sandbox_status(&sandbox)
        .await
        .expect("PodSandboxStatus");
    assert_eq!(status.state, SandboxState::Ready);
    assert_eq!(status.metadata.name, name);
    assert_eq!(status.network, NamespaceMode::Node);

    let config = container_config("app", &["sh", "-c", "echo started; exec sleep 3600"]);
    let container = cri
        .create_container(&sandbox, &config, &pod)
        .await
        .expect("CreateContainer");
    assert_eq!(
        cri.container_status(&container)
            .await
            .expect("status")
            .state,
        ContainerState::Created
    );
    cri.start_container(&container)
        .await
        .expect("StartContainer");
    wait_state(&cri, &container, ContainerState::Running).await;
    let running = cri.container_status(&container).await.expect("status");
    assert!(running.started_at.is_some());
    assert_eq!(running.name, "app");
    assert_eq!(
        running.log_path,
        logs.path().join("app/0.log").display().to_string()
    );

    // The CRI log file, in CRI's format.
    let log = eventually("the container's first log line", || async {
        let text = std::fs::read_to_string(logs.path().join("app/0.log")).ok()?;
        text.contains(" stdout F started").then_some(text)
    })
    .await;
    assert!(log.ends_with('\n'), "{log:?}");

    let out = cri
        .exec_sync(
            &container,
            &["echo".to_owned(), "hi".to_owned()],
            Duration::from_secs(10),
        )
        .await
        .expect("ExecSync");
    assert_eq!((out.stdout.as_slice(), out.exit_code), (&b"hi\n"[..], 0));

    let in_sandbox = ContainerFilter {
        sandbox_id: Some(sandbox.clone()),
        ..Default::default()
    };
    let listed = cri.list_containers(&in_sandbox).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, container);
    let by_label = ContainerFilter {
        labels: Labels::from([("io.kubernetes.container.name".to_owned(), "app".to_owned())]),
        state: Some(ContainerState::Running),
        ..Default::default()
    };
    assert!(
        cri.list_containers(&by_label)
            .await
            .expect("list")
            .iter()
            .any(|c| c.id == container)
    );

    // sleep is PID 1 of its PID namespace: it ignores SIGTERM, so the stop
    // ends with SIGKILL after the grace period.
    cri.stop_container(&container, Duration::from_secs(1))
        .await
        .expect("StopContainer");
    let stopped = cri.container_status(&container).await.expect("status");
    assert_eq!(stopped.state, ContainerState::Exited);
    assert!(matches!(stopped.exit_code, 137 | 143), "{stopped:?}");
    assert!(stopped.finished_at.is_some());

    cri.remove_container(&container)
        .await
        .expect("RemoveContainer");
    assert!(
        cri.container_status(&container)
            .await
            .expect_err("removed")
            .is_not_found()
    );
    assert!(
        cri.list_containers(&in_sandbox)
            .await
            .expect("list")
            .is_empty()
    );

    cri.stop_sandbox(&sandbox).await.expect("StopPodSandbox");
    cri.remove_sandbox(&sandbox)
        .await
        .expect("RemovePodSandbox");
    let mine = SandboxFilter {
        labels: pod.labels.clone(),
        ..Default::default()
    };
    assert!(cri.list_sandboxes(&mine).await.expect("list").is_empty());
    assert!(
        cri.sandbox_status(&sandbox)
            .await
            .expect_err("removed")
            .is_not_found()
    );
}

/// `KEDGE_CRI_SUBNET` (`a.b.c.d/len`) as an address and prefix length.
fn configured_subnet() -> Option<(Ipv4Addr, u32)> {
    let text = std::env::var("KEDGE_CRI_SUBNET").ok()?;
    let (address, len) = text.trim().split_once('/')?;
    Some((address.parse().ok()?, len.parse().ok()?))
}

#[tokio::test]
async fn a_cni_pod_gets_an_ip_in_the_pod_subnet() {
    let Some(socket) = socket() else { return };
    let cri = connect(&socket).await;
    let logs = tempfile::tempdir().expect("log directory");
    let pod = sandbox_config(&unique("cni"), false, logs.path());
    let (sandbox, _guard) = run_pod(&cri, &socket, &pod).await;

    let status = cri
        .sandbox_status(&sandbox)
        .await
        .expect("PodSandboxStatus");
    assert_eq!(status.state, SandboxState::Ready);
    assert_eq!(status.network, NamespaceMode::Pod);
    let Some(IpAddr::V4(ip)) = status.ip else {
        panic!("no IPv4 pod IP: {status:?}");
    };
    match configured_subnet() {
        Some((network, len)) => {
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            assert_eq!(
                u32::from(ip) & mask,
                u32::from(network) & mask,
                "{ip} is outside {network}/{len}"
            );
        }
        None => assert!(ip.is_private(), "{ip}"),
    }

    // The pod's own hostname is set in its UTS namespace.
    let config = container_config("app", &["sleep", "3600"]);
    let container = cri
        .create_container(&sandbox, &config, &pod)
        .await
        .expect("CreateContainer");
    cri.start_container(&container).await.expect("start");
    wait_state(&cri, &container, ContainerState::Running).await;
    let out = cri
        .exec_sync(
            &container,
            &["hostname".to_owned()],
            Duration::from_secs(10),
        )
        .await
        .expect("ExecSync");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), pod.hostname);

    cri.stop_sandbox(&sandbox).await.expect("StopPodSandbox");
    let stopped = cri.sandbox_status(&sandbox).await.expect("status");
    assert_eq!(stopped.state, SandboxState::NotReady);
    assert_eq!(
        cri.container_status(&container)
            .await
            .expect("status")
            .state,
        ContainerState::Exited
    );
}

#[tokio::test]
async fn a_container_that_exits_3_reports_exit_code_3() {
    let Some(socket) = socket() else { return };
    let cri = connect(&socket).await;
    let logs = tempfile::tempdir().expect("log directory");
    let pod = sandbox_config(&unique("exit"), true, logs.path());
    let (sandbox, _guard) = run_pod(&cri, &socket, &pod).await;

    let config = container_config("job", &["sh", "-c", "exit 3"]);
    let container = cri
        .create_container(&sandbox, &config, &pod)
        .await
        .expect("CreateContainer");
    cri.start_container(&container).await.expect("start");
    wait_state(&cri, &container, ContainerState::Exited).await;
    let status = cri.container_status(&container).await.expect("status");
    assert_eq!(status.exit_code, 3, "{status:?}");
    assert_eq!(status.reason, "Error");
    // containerd stamps a fast exit from its exit event and the start from
    // the start call's return, so `finished_at` can precede `started_at` by
    // a little: only its presence is certain.
    assert!(status.finished_at.is_some(), "{status:?}");
}

#[tokio::test]
async fn the_memory_limit_lands_in_the_containers_cgroup() {
    let Some(socket) = socket() else { return };
    let cri = connect(&socket).await;
    let logs = tempfile::tempdir().expect("log directory");
    let mut pod = sandbox_config(&unique("mem"), true, logs.path());
    let pod_cgroup = format!("kedge-test/pod{}", pod.metadata.uid);
    pod.cgroup_parent = format!("/{pod_cgroup}");
    let (sandbox, mut guard) = run_pod(&cri, &socket, &pod).await;
    // cgroup v2 has one hierarchy; v1 one per controller, where runc creates
    // the parents in each of them.
    let root = Path::new("/sys/fs/cgroup");
    let v2 = root.join("cgroup.controllers").exists();
    let hierarchies: Vec<PathBuf> = if v2 {
        vec![root.to_owned()]
    } else {
        std::fs::read_dir(root)
            .expect("/sys/fs/cgroup")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect()
    };
    guard.cgroup_dirs = hierarchies.iter().map(|h| h.join(&pod_cgroup)).collect();

    let limit: i64 = 64 << 20;
    let mut config = container_config("app", &["sleep", "3600"]);
    config.resources = Resources {
        memory_limit_bytes: Some(limit),
        ..Default::default()
    };
    let container = cri
        .create_container(&sandbox, &config, &pod)
        .await
        .expect("CreateContainer");
    cri.start_container(&container).await.expect("start");
    wait_state(&cri, &container, ContainerState::Running).await;

    let file = if v2 {
        root.join(&pod_cgroup).join(&container).join("memory.max")
    } else {
        root.join("memory")
            .join(&pod_cgroup)
            .join(&container)
            .join("memory.limit_in_bytes")
    };
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
    assert_eq!(text.trim(), limit.to_string(), "{}", file.display());

    // Leave the pod cgroup empty for the guard to remove.
    cri.stop_sandbox(&sandbox).await.expect("StopPodSandbox");
    cri.remove_sandbox(&sandbox)
        .await
        .expect("RemovePodSandbox");
}

#[tokio::test]
async fn a_container_runs_as_its_user_and_group_on_a_read_only_root() {
    let Some(socket) = socket() else { return };
    let cri = connect(&socket).await;
    let logs = tempfile::tempdir().expect("log directory");
    let mut pod = sandbox_config(&unique("user"), true, logs.path());
    pod.security = SandboxSecurity {
        run_as_user: Some(1000),
        run_as_group: Some(1000),
        supplemental_groups: vec![2000],
        ..Default::default()
    };
    let (sandbox, _guard) = run_pod(&cri, &socket, &pod).await;

    let mut config = container_config("app", &["sleep", "3600"]);
    config.security = ContainerSecurity {
        run_as_user: Some(1000),
        run_as_group: Some(1000),
        supplemental_groups: vec![2000],
        readonly_rootfs: true,
        no_new_privs: true,
        ..Default::default()
    };
    let container = cri
        .create_container(&sandbox, &config, &pod)
        .await
        .expect("CreateContainer");
    cri.start_container(&container).await.expect("start");
    wait_state(&cri, &container, ContainerState::Running).await;

    let run = |script: &str| {
        let command = ["sh".to_owned(), "-c".to_owned(), script.to_owned()];
        let cri = cri.clone();
        let container = container.clone();
        async move {
            cri.exec_sync(&container, &command, Duration::from_secs(10))
                .await
                .expect("ExecSync")
        }
    };
    let out = run("id -u; id -g; id -G; grep NoNewPrivs /proc/self/status").await;
    assert_eq!(out.exit_code, 0, "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[..2], ["1000", "1000"], "{stdout}");
    assert!(
        lines[2].split_whitespace().any(|g| g == "2000"),
        "supplemental group: {stdout}"
    );
    assert!(
        lines[3].split_whitespace().eq(["NoNewPrivs:", "1"]),
        "{stdout}"
    );

    // A read-only mount, not merely a root-owned directory: the error is
    // EROFS, and /tmp (writable by anyone) is read-only too.
    for path in ["/kedge-probe", "/tmp/kedge-probe"] {
        let out = run(&format!("echo x > {path}")).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.exit_code, 0, "writing {path} succeeded");
        assert!(stderr.contains("Read-only file system"), "{path}: {stderr}");
    }
}

#[tokio::test]
async fn unknown_ids_are_not_found_and_removing_them_succeeds() {
    let Some(socket) = socket() else { return };
    let cri = connect(&socket).await;
    let id = "0".repeat(64);
    cri.remove_container(&id)
        .await
        .expect("removing an unknown container succeeds");
    cri.remove_sandbox(&id)
        .await
        .expect("removing an unknown sandbox succeeds");
    let errors = [
        cri.container_status(&id).await.expect_err("status"),
        cri.stop_container(&id, Duration::ZERO)
            .await
            .expect_err("stop"),
        cri.sandbox_status(&id).await.expect_err("status"),
        cri.stop_sandbox(&id).await.expect_err("stop"),
    ];
    for error in errors {
        assert!(error.is_not_found(), "{error:?}");
    }
}
