//! `edgemark --full` against a real cloudcore: three full hollow edgecores
//! (EdgeHub, MetaManager and edged on the fake runtime, in one process)
//! register, turn Ready and renew their Leases; a Deployment's pods, placed
//! on them by the cloud's scheduler, report Running with pod IPs and go
//! away with the Deployment; edgemark stops cleanly on SIGTERM.

mod support;

use support::edgemark::Edgemark;
use support::{Backend, Cloud};

const NODES: usize = 3;

/// A Deployment of `replicas` pods of an image nobody has: the fake
/// runtime only pretends to pull it.
fn deployment(replicas: u32) -> String {
    format!(
        r#"{{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {{"name": "web"}},
  "spec": {{"replicas": {replicas}, "selector": {{"matchLabels": {{"app": "web"}}}},
    "template": {{"metadata": {{"labels": {{"app": "web"}}}},
      "spec": {{"terminationGracePeriodSeconds": 2,
        "containers": [{{"name": "web", "image": "registry.local/web:1"}}]}}}}}}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_hollow_nodes_run_a_deployment() {
    let cloud = Cloud::start(Backend::start(false).await).await;
    let edgemark = Edgemark::start_full(&cloud, NODES);

    // The nodes register, report Ready and keep Leases.
    let ready = r#"jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}"#;
    cloud
        .eventually(&["get", "nodes", "-o", ready], |out| {
            let ready: Vec<&str> = out.lines().filter(|l| l.ends_with("=True")).collect();
            ready == ["hollow-0=True", "hollow-1=True", "hollow-2=True"]
        })
        .await;
    let leases = [
        "get",
        "leases",
        "-n",
        "kube-node-lease",
        "-o",
        r#"jsonpath={range .items[*]}{.metadata.name} {.spec.renewTime}{"\n"}{end}"#,
    ];
    let created = cloud
        .eventually(&leases, |out| {
            let names: Vec<&str> = out.lines().filter_map(|l| l.split(' ').next()).collect();
            names == ["hollow-0", "hollow-1", "hollow-2"]
        })
        .await;

    // A Deployment's pods are scheduled to them and run.
    cloud.ok_with_input(&["apply", "-f", "-"], &deployment(6));
    cloud
        .eventually(
            &[
                "get",
                "deployment/web",
                "-o",
                "jsonpath={.status.readyReplicas}",
            ],
            |out| out == "6",
        )
        .await;
    let pods =
        r#"jsonpath={range .items[*]}{.spec.nodeName} {.status.phase} {.status.podIP}{"\n"}{end}"#;
    cloud
        .eventually(&["get", "pods", "-l", "app=web", "-o", pods], |out| {
            out.lines().count() == 6
                && out.lines().all(|line| {
                    let fields: Vec<&str> = line.split(' ').collect();
                    matches!(fields[..], [node, "Running", ip]
                        if node.starts_with("hollow-") && ip.parse::<std::net::IpAddr>().is_ok())
                })
        })
        .await;

    // Deleting the Deployment removes its pods.
    cloud.ok(&["delete", "deployment/web"]);
    cloud
        .eventually(&["get", "pods", "-o", "name"], |out| out.trim().is_empty())
        .await;

    // The Leases are renewed.
    cloud
        .eventually(&leases, |out| {
            out.lines().count() == NODES
                && out
                    .lines()
                    .zip(created.lines())
                    .all(|(now, before)| now != before)
        })
        .await;

    edgemark.stop().await;
    cloud.stop().await;
}
