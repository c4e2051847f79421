//! Node lifecycle: a node that goes silent turns `Ready=Unknown` and is
//! tainted unreachable; a cloud node's pods are evicted once their
//! toleration runs out, an edge node's pods stay.

use crate::Harness;

/// The grace period the scenario configures.
pub const GRACE_SECONDS: u32 = 5;

/// A pod bound to `node` that tolerates the unreachable taint for one
/// second only.
fn pod(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  tolerations:\n  - {{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 1}}\n  containers:\n  - name: app\n    image: registry.local/app:1\n"
    )
}

/// Two nodes go silent: both turn Unknown and tainted; the pod on the
/// cloud node is evicted, the one on the edge node is kept.
pub async fn silent_node_turns_unknown_and_keeps_edge_pods(harness: &Harness) {
    let cloud = &harness.cloud;
    harness
        .nodes
        .add("edge-1", &[("node-role.kubernetes.io/edge", "")])
        .await;
    harness.nodes.add("cloud-1", &[]).await;
    cloud.ok_with_input(&["create", "-f", "-"], &pod("at-edge", "edge-1"));
    cloud.ok_with_input(&["create", "-f", "-"], &pod("in-cloud", "cloud-1"));
    for name in ["at-edge", "in-cloud"] {
        cloud
            .eventually(
                &["get", "pod", name, "-o", "jsonpath={.status.phase}"],
                |out| out == "Running",
            )
            .await;
    }
    // While they report, the nodes stay Ready well past the grace period.
    let ready = "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}";
    harness.nodes.silence("edge-1");
    harness.nodes.silence("cloud-1");
    for node in ["edge-1", "cloud-1"] {
        cloud
            .eventually(&["get", "node", node, "-o", ready], |out| out == "Unknown")
            .await;
        cloud
            .eventually(&["get", "node", node, "-o", "jsonpath={.spec.taints[*].key}/{.spec.taints[*].effect}"], |out| {
                out == "node.kubernetes.io/unreachable node.kubernetes.io/unreachable/NoSchedule NoExecute"
            })
            .await;
        let reason = cloud.ok(&[
            "get",
            "node",
            node,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].reason}",
        ]);
        assert_eq!(reason, "NodeStatusUnknown");
    }
    // The cloud node's pod is evicted after its one-second toleration ...
    cloud
        .eventually(
            &[
                "get",
                "pod",
                "in-cloud",
                "-o",
                "jsonpath={.metadata.deletionTimestamp}",
            ],
            |out| !out.trim().is_empty() || out.contains("NotFound"),
        )
        .await;
    // ... and once the edge node has been tainted for longer than that,
    // the edge pod, with the same toleration, would have been too; it
    // stays, marked not ready.
    let tainted_at = cloud.ok(&[
        "get",
        "node",
        "edge-1",
        "-o",
        "jsonpath={.spec.taints[?(@.effect==\"NoExecute\")].timeAdded}",
    ]);
    let tainted_at: k8s_openapi::jiff::Timestamp = tainted_at.parse().expect("timeAdded");
    let waited = async {
        while k8s_openapi::jiff::Timestamp::now()
            .duration_since(tainted_at)
            .as_secs()
            < 3
        {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(crate::support::DEADLINE, waited)
        .await
        .expect("time passes");
    let edge_pod = cloud.ok(&[
        "get",
        "pod",
        "at-edge",
        "-o",
        "jsonpath={.metadata.deletionTimestamp}|{.status.conditions[?(@.type==\"Ready\")].status}",
    ]);
    assert_eq!(edge_pod, "|False", "the edge pod must stay, not ready");
    // New pods are not scheduled to the unreachable nodes.
    cloud.ok_with_input(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: late}\nspec:\n  containers:\n  - {name: app, image: registry.local/app:1}\n",
    );
    cloud
        .eventually(
            &[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=late,reason=FailedScheduling",
                "-o",
                "jsonpath={.items[*].message}",
            ],
            |out| out.contains("untolerated taint"),
        )
        .await;
}
