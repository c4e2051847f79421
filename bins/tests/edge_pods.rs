//! Pods on a real edge node: cloudcore with its control plane, edgecore
//! joined to it with edged on the private containerd the test scripts
//! start (`KEDGE_CRI_SOCK`, images `localhost/kedge/busybox:1` and the
//! pause image imported), and the real kubectl as the client.
//!
//! Without `KEDGE_CRI_SOCK` the tests say they are skipped, except under
//! CI, where they fail.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kedge_edge::edged::runtime::{
    ContainerFilter, ContainerState, CriOptions, CriRuntime, Runtime, SandboxFilter,
};
use support::edgecore::{EdgeCore, cri_socket};
use support::{Backend, Cloud, DEADLINE};

const BUSYBOX: &str = "localhost/kedge/busybox:1";

/// Waits until the node reports Ready.
async fn node_ready(cloud: &Cloud, edge: &EdgeCore) {
    let ready = r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#;
    let node = format!("node/{}", edge.name);
    until("the node becoming Ready", edge, || async {
        let out = cloud.kubectl(&["get", &node, "-o", ready]);
        out.stdout == b"True"
    })
    .await;
}

/// A pod on `node` running `script` in busybox, with `extra` merged into
/// its container and `spec` into its spec.
fn pod(name: &str, node: &str, script: &str, container: &str, spec: &str) -> String {
    format!(
        r#"{{"apiVersion": "v1", "kind": "Pod",
  "metadata": {{"name": "{name}", "labels": {{"app": "{name}"}}}},
  "spec": {{"nodeName": "{node}", "terminationGracePeriodSeconds": 2{spec},
    "containers": [{{"name": "main", "image": "{BUSYBOX}", "imagePullPolicy": "IfNotPresent",
      "command": ["sh", "-c", {script:?}]{container}}}]}}}}"#
    )
}

/// Waits until pod `name` is Running and returns its uid.
async fn running(cloud: &Cloud, edge: &EdgeCore, name: &str) -> String {
    let pod = format!("pod/{name}");
    let phase = cloud
        .eventually(&["get", &pod, "-o", "jsonpath={.status.phase}"], |out| {
            out == "Running" || out == "Failed"
        })
        .await;
    assert_eq!(phase, "Running", "edgecore log:\n{}", edge.log());
    cloud.ok(&["get", &pod, "-o", "jsonpath={.metadata.uid}"])
}

/// The containers the runtime holds for the pod with `uid`: id to state.
async fn containers(cri: &CriRuntime, uid: &str) -> BTreeMap<String, ContainerState> {
    let filter = ContainerFilter {
        labels: BTreeMap::from([("io.kubernetes.pod.uid".to_owned(), uid.to_owned())]),
        ..Default::default()
    };
    cri.list_containers(&filter)
        .await
        .expect("containers listed")
        .into_iter()
        .map(|c| (c.id, c.state))
        .collect()
}

/// Polls `check` until it holds, failing with `what` after [`DEADLINE`].
async fn until<F, Fut>(what: &str, edge: &EdgeCore, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen; edgecore log:\n{}",
            edge.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_restart_use_volumes_and_go_away_on_containerd() {
    let Some(socket) = cri_socket("edge pod tests") else {
        return;
    };
    let cri = CriRuntime::connect(&socket, CriOptions::default())
        .await
        .expect("CRI connects");
    let cloud = Cloud::start(Backend::start(false).await).await;
    let node = format!("edge-pods-{}", std::process::id());
    let mut edge = EdgeCore::start(&cloud, &node, Some(&socket), |_| {});
    node_ready(&cloud, &edge).await;
    let labels = cloud.ok(&["get", "node", &node, "-o", "jsonpath={.metadata.labels}"]);
    assert!(labels.contains("node-role.kubernetes.io/edge"), "{labels}");

    // A pod with a secret in its environment, a configMap volume and a
    // hostPath volume it writes to.
    let out = edge.dir().join("out");
    cloud.ok(&[
        "create",
        "configmap",
        "cfg",
        "--from-literal=greeting=hello",
    ]);
    cloud.ok(&[
        "create",
        "secret",
        "generic",
        "sec",
        "--from-literal=token=s3cret",
    ]);
    let manifest = pod(
        "app",
        &node,
        "echo \"$TOKEN\" > /out/token; sleep 3600",
        r#", "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "token"}}}],
      "volumeMounts": [{"name": "config", "mountPath": "/config"}, {"name": "out", "mountPath": "/out"}]"#,
        &format!(
            r#", "volumes": [{{"name": "config", "configMap": {{"name": "cfg"}}}},
      {{"name": "out", "hostPath": {{"path": "{}", "type": "DirectoryOrCreate"}}}}]"#,
            out.display()
        ),
    );
    cloud.ok_with_input(&["apply", "-f", "-"], &manifest);
    let uid = running(&cloud, &edge, "app").await;
    let ip = cloud.ok(&["get", "pod/app", "-o", "jsonpath={.status.podIP}"]);
    assert!(!ip.is_empty(), "a CNI pod has an IP");
    until("the secret in the environment", &edge, || async {
        read(&out.join("token")).trim() == "s3cret"
    })
    .await;
    let greeting = edge.dir().join(format!(
        "edged/pods/{uid}/volumes/kubernetes.io~configmap/config/greeting"
    ));
    assert_eq!(read(&greeting), "hello");
    cloud.ok(&[
        "patch",
        "configmap",
        "cfg",
        "-p",
        r#"{"data":{"greeting":"bonjour"}}"#,
    ]);
    until("the configMap volume update", &edge, || async {
        read(&greeting) == "bonjour"
    })
    .await;
    cloud.ok(&["delete", "pod", "app", "--timeout=60s"]);
    until("app's containers removed", &edge, || async {
        containers(&cri, &uid).await.is_empty()
    })
    .await;

    // A container whose liveness probe fails is restarted.
    let manifest = pod(
        "unwell",
        &node,
        "sleep 3600",
        r#", "livenessProbe": {"exec": {"command": ["test", "-e", "/tmp/healthy"]},
        "periodSeconds": 1, "failureThreshold": 1}"#,
        "",
    );
    cloud.ok_with_input(&["apply", "-f", "-"], &manifest);
    cloud
        .eventually(
            &[
                "get",
                "pod/unwell",
                "-o",
                "jsonpath={.status.containerStatuses[0].restartCount}",
            ],
            |out| out.parse::<u32>().is_ok_and(|n| n >= 1),
        )
        .await;
    cloud.ok(&["delete", "pod", "unwell", "--timeout=60s"]);

    // Create and delete, ten times over.
    for round in 0..10 {
        let manifest = pod("cycle", &node, "sleep 3600", "", "");
        cloud.ok_with_input(&["apply", "-f", "-"], &manifest);
        let uid = running(&cloud, &edge, "cycle").await;
        cloud.ok(&["delete", "pod", "cycle", "--timeout=60s"]);
        until(
            &format!("round {round}: the pod's containers removed"),
            &edge,
            || async { containers(&cri, &uid).await.is_empty() },
        )
        .await;
    }
    edge.stop().await;
    cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_restarted_offline_keeps_its_pods_and_converges_when_the_link_returns() {
    let Some(socket) = cri_socket("edge autonomy test") else {
        return;
    };
    let cri = CriRuntime::connect(&socket, CriOptions::default())
        .await
        .expect("CRI connects");
    let mut cloud = Cloud::start(Backend::start(false).await).await;
    let node = format!("edge-offline-{}", std::process::id());
    let mut edge = EdgeCore::start(&cloud, &node, Some(&socket), |_| {});
    node_ready(&cloud, &edge).await;
    for name in ["stays", "goes"] {
        cloud.ok_with_input(
            &["apply", "-f", "-"],
            &pod(name, &node, "sleep 3600", "", ""),
        );
    }
    let stays = running(&cloud, &edge, "stays").await;
    let goes = running(&cloud, &edge, "goes").await;
    let before = containers(&cri, &stays).await;
    assert_eq!(before.len(), 1, "{before:?}");

    // edgecore dies; meanwhile the cloud deletes a pod; then the link is
    // cut and edgecore starts again offline.
    edge.kill().await;
    cloud.ok(&["delete", "pod", "goes", "--wait=false"]);
    cloud.halt().await;
    edge.restart();
    let meta = format!("http://{}", edge.meta_server);
    until(
        "the MetaServer answering kubectl offline",
        &edge,
        || async {
            let out = Command::new("kubectl")
                .args(["--server", &meta, "get", "pods", "-o", "name"])
                .output()
                .expect("kubectl runs");
            String::from_utf8_lossy(&out.stdout).contains("pod/stays")
        },
    )
    .await;
    until("edged listing its pods offline", &edge, || async {
        edge.log_count("node's pods listed") == 2
    })
    .await;
    assert_eq!(
        containers(&cri, &stays).await,
        before,
        "the healthy container was adopted, not restarted"
    );

    // The link returns: the deleted pod goes, the other stays as it was.
    cloud.resume().await;
    cloud
        .eventually(&["get", "pods", "-o", "name"], |out| {
            out.contains("pod/stays") && !out.contains("pod/goes")
        })
        .await;
    until("the deleted pod's containers removed", &edge, || async {
        containers(&cri, &goes).await.is_empty()
    })
    .await;
    assert_eq!(running(&cloud, &edge, "stays").await, stays);
    let after = containers(&cri, &stays).await;
    assert_eq!(after, before, "nothing restarted or duplicated");
    assert!(after.values().all(|s| *s == ContainerState::Running));
    cloud.ok(&["delete", "pod", "stays", "--timeout=60s"]);
    edge.stop().await;
    cloud.stop().await;
}

/// The sandboxes the runtime holds for `node`'s pods.
async fn sandboxes_of(cri: &CriRuntime, node: &str) -> usize {
    let filter = SandboxFilter {
        labels: BTreeMap::from([("io.kubeedge.edged.node".to_owned(), node.to_owned())]),
        ..Default::default()
    };
    cri.list_sandboxes(&filter)
        .await
        .expect("sandboxes listed")
        .len()
}

/// A workload of `kind` named `name` whose pods run busybox on `node`.
fn workload(kind: &str, name: &str, node: &str, replicas: u32) -> String {
    let extra = if kind == "StatefulSet" {
        format!(r#""serviceName": "{name}", "#)
    } else {
        String::new()
    };
    format!(
        r#"{{"apiVersion": "apps/v1", "kind": "{kind}", "metadata": {{"name": "{name}"}},
  "spec": {{{extra}"replicas": {replicas}, "selector": {{"matchLabels": {{"app": "{name}"}}}},
    "template": {{"metadata": {{"labels": {{"app": "{name}"}}}},
      "spec": {{"nodeSelector": {{"kubernetes.io/hostname": "{node}"}}, "terminationGracePeriodSeconds": 2,
        "containers": [{{"name": "main", "image": "{BUSYBOX}", "imagePullPolicy": "IfNotPresent",
          "command": ["sleep", "3600"]}}]}}}}}}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_and_statefulsets_run_on_the_edge_node() {
    let Some(socket) = cri_socket("edge workload test") else {
        return;
    };
    let cri = CriRuntime::connect(&socket, CriOptions::default())
        .await
        .expect("CRI connects");
    let cloud = Cloud::start(Backend::start(false).await).await;
    let node = format!("edge-workloads-{}", std::process::id());
    let mut edge = EdgeCore::start(&cloud, &node, Some(&socket), |_| {});
    node_ready(&cloud, &edge).await;
    let ready = |kind: &'static str, name: &'static str, want: &'static str| {
        let object = format!("{kind}/{name}");
        let cloud = &cloud;
        async move {
            cloud
                .eventually(
                    &["get", &object, "-o", "jsonpath={.status.readyReplicas}"],
                    |out| out == want,
                )
                .await;
        }
    };

    // A Deployment of one, scaled to three.
    cloud.ok_with_input(
        &["apply", "-f", "-"],
        &workload("Deployment", "web", &node, 1),
    );
    ready("deployment", "web", "1").await;
    cloud.ok(&["scale", "deployment/web", "--replicas=3"]);
    ready("deployment", "web", "3").await;
    assert_eq!(sandboxes_of(&cri, &node).await, 3);

    // A deleted pod comes back as a new one.
    let names = cloud.ok(&["get", "pods", "-l", "app=web", "-o", "name"]);
    let victim = names.lines().next().expect("a web pod").to_owned();
    cloud.ok(&["delete", &victim, "--timeout=60s"]);
    cloud
        .eventually(
            &[
                "get",
                "deployment/web",
                "-o",
                "jsonpath={.status.readyReplicas}",
            ],
            |out| out == "3",
        )
        .await;
    let now = cloud.ok(&["get", "pods", "-l", "app=web", "-o", "name"]);
    assert!(!now.contains(&victim), "{victim} was replaced: {now}");
    assert_eq!(now.lines().count(), 3, "{now}");

    // A StatefulSet's pods are named in order and run.
    cloud.ok_with_input(
        &["apply", "-f", "-"],
        &workload("StatefulSet", "db", &node, 2),
    );
    ready("statefulset", "db", "2").await;
    running(&cloud, &edge, "db-0").await;
    running(&cloud, &edge, "db-1").await;

    // Deleting the workloads removes every pod and sandbox.
    cloud.ok(&["delete", "deployment/web", "statefulset/db"]);
    cloud
        .eventually(&["get", "pods", "-o", "name"], |out| out.trim().is_empty())
        .await;
    until("every sandbox removed", &edge, || async {
        sandboxes_of(&cri, &node).await == 0
    })
    .await;
    edge.stop().await;
    cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_pod_runs_from_its_manifest_with_a_mirror_in_the_cloud() {
    let Some(socket) = cri_socket("edge static pod test") else {
        return;
    };
    let cri = CriRuntime::connect(&socket, CriOptions::default())
        .await
        .expect("CRI connects");
    let cloud = Cloud::start(Backend::start(false).await).await;
    let node = format!("edge-static-{}", std::process::id());
    let mut edge = EdgeCore::start(&cloud, &node, Some(&socket), |_| {});
    node_ready(&cloud, &edge).await;

    // A manifest in staticPodPath: the pod runs, and the cloud shows its
    // mirror, named after the node, marked as a mirror, Running.
    let manifests = edge.dir().join("manifests");
    std::fs::create_dir_all(&manifests).expect("manifest dir");
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    imagePullPolicy: IfNotPresent\n    command: [sleep, '3600']\n"
    );
    std::fs::write(manifests.join("web.yaml"), &manifest).expect("manifest written");
    std::fs::write(manifests.join("broken.yaml"), "kind: Service\n").expect("written");
    let name = format!("web-{node}");
    running(&cloud, &edge, &name).await;
    let hash = cloud.ok(&[
        "get",
        "pod",
        &name,
        "-o",
        r"jsonpath={.metadata.annotations.kubernetes\.io/config\.mirror}",
    ]);
    assert!(!hash.trim().is_empty(), "the pod in the cloud is a mirror");
    let uid = hash.trim().to_owned();
    let before = containers(&cri, &uid).await;
    assert_eq!(before.len(), 1, "the static pod's container: {before:?}");
    assert!(
        edge.log().contains("static pod manifest refused"),
        "the broken manifest is reported"
    );

    // The mirror deleted in the cloud comes back; the static pod runs on,
    // untouched.
    let mirror_uid = cloud.ok(&["get", "pod", &name, "-o", "jsonpath={.metadata.uid}"]);
    cloud.ok(&["delete", "pod", &name, "--wait=false"]);
    cloud
        .eventually(
            &["get", "pod", &name, "-o", "jsonpath={.metadata.uid}"],
            |out| !out.is_empty() && out != mirror_uid,
        )
        .await;
    running(&cloud, &edge, &name).await;
    assert_eq!(containers(&cri, &uid).await, before, "nothing restarted");

    // The manifest removed: the pod stops and its mirror goes.
    std::fs::remove_file(manifests.join("web.yaml")).expect("manifest removed");
    cloud
        .eventually(&["get", "pods", "-o", "name"], |out| out.trim().is_empty())
        .await;
    until("the static pod's containers removed", &edge, || async {
        containers(&cri, &uid).await.is_empty()
    })
    .await;
    edge.stop().await;
    cloud.stop().await;
}
