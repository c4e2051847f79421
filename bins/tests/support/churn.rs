//! One hollow edge node under object churn, for the link's fault tests:
//! ConfigMaps `obj-*` recorded for the node in ObjectSyncs, changed all
//! the time while the test impairs the link, and the checks that the node
//! ends with exactly the latest version of every live object, nothing
//! deleted meanwhile, and never an older version applied over a newer one.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use tokio::process::Child;
use tokio::task::JoinHandle;

use super::Cloud;

/// The hollow node's name (edgemark's first node).
pub const NODE: &str = "hollow-0";

/// The churned objects.
pub struct Churn {
    configmaps: Api<ConfigMap>,
    objects: usize,
}

impl Churn {
    /// Creates `objects` ConfigMaps, each recorded for [`NODE`] as not yet
    /// delivered, and restarts cloudcore so that CloudHub loads the
    /// records.
    pub async fn seed(cloud: &mut Cloud, objects: usize) -> Self {
        for i in 0..objects {
            cloud.ok(&[
                "create",
                "configmap",
                &format!("obj-{i}"),
                "--from-literal=n=0",
            ]);
        }
        let configmaps: Api<ConfigMap> = Api::default_namespaced(cloud.client().await);
        let churn = Self {
            configmaps,
            objects,
        };
        for (name, (uid, _)) in churn.live().await {
            cloud.ok_with_input(
                &["apply", "-f", "-"],
                &format!(
                    "apiVersion: reliablesyncs.kubeedge.io/v1alpha1\nkind: ObjectSync\nmetadata:\n  name: {NODE}.{uid}\n  namespace: default\nspec:\n  objectAPIVersion: v1\n  objectKind: ConfigMap\n  objectName: {name}\n"
                ),
            );
        }
        cloud.restart().await;
        churn
    }

    /// Every live ConfigMap `obj-*`: name → (uid, resourceVersion).
    pub async fn live(&self) -> BTreeMap<String, (String, u64)> {
        self.configmaps
            .list(&Default::default())
            .await
            .expect("configmaps listed")
            .into_iter()
            .filter_map(|cm| {
                let name = cm.metadata.name.clone()?;
                name.starts_with("obj-").then(|| {
                    (
                        name,
                        (
                            cm.metadata.uid.clone().unwrap_or_default(),
                            cm.metadata
                                .resource_version
                                .as_deref()
                                .and_then(|v| v.parse().ok())
                                .unwrap_or(0),
                        ),
                    )
                })
            })
            .collect()
    }

    /// Waits until every live object's ObjectSync records its current
    /// version and none is left for a deleted one.
    pub async fn wait_converged(&self, cloud: &Cloud, deadline: Duration, what: &str) {
        let poll = async {
            loop {
                if converged(cloud, &self.live().await) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        };
        if tokio::time::timeout(deadline, poll).await.is_err() {
            panic!(
                "the node did not converge {what}; cluster:\n{}",
                cloud.snapshot()
            );
        }
    }

    /// Starts patching the objects in turn, one every 100 ms, until
    /// [`Changer::stop`]. Patches of deleted objects fail and are skipped.
    pub fn start_changing(&self) -> Changer {
        let changing = Arc::new(AtomicBool::new(true));
        let (configmaps, objects, flag) = (
            self.configmaps.clone(),
            self.objects as u64,
            changing.clone(),
        );
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            while flag.load(Ordering::Relaxed) {
                n += 1;
                let name = format!("obj-{}", n % objects);
                let patch = serde_json::json!({"data": {"n": n.to_string()}});
                let _ = configmaps
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            n
        });
        Changer { changing, task }
    }
}

/// Whether every live object's ObjectSync for the node records its
/// current version, and no ObjectSync is left for a deleted one.
fn converged(cloud: &Cloud, live: &BTreeMap<String, (String, u64)>) -> bool {
    let output = cloud.kubectl(&[
        "get",
        "objectsyncs",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.status.objectResourceVersion}{\"\\n\"}{end}",
    ]);
    let text = String::from_utf8_lossy(&output.stdout);
    let recorded: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect();
    let wanted: BTreeMap<String, String> = live
        .values()
        .map(|(uid, version)| (format!("{NODE}.{uid}"), version.to_string()))
        .collect();
    recorded.len() == wanted.len()
        && wanted
            .iter()
            .all(|(name, version)| recorded.get(name.as_str()) == Some(&version.as_str()))
}

/// The task changing the objects.
pub struct Changer {
    changing: Arc<AtomicBool>,
    task: JoinHandle<u64>,
}

impl Changer {
    /// Stops changing; how many changes were made.
    pub async fn stop(self) -> u64 {
        self.changing.store(false, Ordering::Relaxed);
        self.task.await.expect("changer")
    }
}

/// Where the hollow node connects.
pub struct EdgemarkTarget {
    /// CloudHub's address, host:port.
    pub server: String,
    /// The certificate server's URL.
    pub cert_server: String,
    /// Over QUIC rather than WebSocket.
    pub quic: bool,
}

/// edgemark running [`NODE`] alone, writing what it holds on exit.
pub struct Edgemark {
    child: Child,
    state_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Edgemark {
    /// Starts edgemark with one node, heartbeats every 5 s, run through
    /// `wrapper` (such as `ip netns exec NAME`) when not empty.
    pub fn start(wrapper: &[&str], target: &EdgemarkTarget, token: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let state_file = dir.path().join("state.json");
        let mut args: Vec<OsString> = wrapper.iter().skip(1).map(OsString::from).collect();
        let program = match wrapper.first() {
            Some(program) => {
                args.push(env!("CARGO_BIN_EXE_edgemark").into());
                OsString::from(program)
            }
            None => env!("CARGO_BIN_EXE_edgemark").into(),
        };
        args.extend(["--nodes", "1", "--heartbeat", "5s"].map(OsString::from));
        if target.quic {
            args.push("--quic".into());
        }
        args.extend([
            "--server".into(),
            target.server.clone().into(),
            "--cert-server".into(),
            target.cert_server.clone().into(),
            "--token".into(),
            token.into(),
            "--data-dir".into(),
            dir.path().join("nodes").into(),
            "--state-file".into(),
            state_file.clone().into(),
        ]);
        let child = tokio::process::Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("edgemark starts");
        Self {
            child,
            state_file,
            _dir: dir,
        }
    }

    /// Stops edgemark with SIGTERM and checks that the node holds exactly
    /// `churn`'s live objects at their latest versions and never applied
    /// an older version over a newer one.
    pub async fn stop_and_check(mut self, churn: &Churn) {
        let pid = self.child.id().expect("running").to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("edgemark stops")
            .expect("wait");
        assert!(status.success(), "edgemark exited with {status}");
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&self.state_file).expect("state written"))
                .expect("JSON");
        let node = &state[NODE];
        assert_eq!(
            node["regressions"], 0,
            "an older version was sent over a newer one: {node}"
        );
        let held: BTreeMap<String, (String, u64)> = node["objects"]
            .as_object()
            .expect("objects")
            .iter()
            .map(|(resource, held)| {
                (
                    resource.rsplit('/').next().unwrap_or_default().to_owned(),
                    (
                        held["uid"].as_str().unwrap_or_default().to_owned(),
                        held["version"].as_u64().unwrap_or_default(),
                    ),
                )
            })
            .collect();
        assert_eq!(
            held,
            churn.live().await,
            "the node holds the latest objects"
        );
    }
}
