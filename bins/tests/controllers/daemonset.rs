//! DaemonSet scenarios: a pod on every matching node (edge nodes
//! included, later nodes too, tainted ones only if tolerated) and a
//! rolling update.

use crate::Harness;

/// A DaemonSet manifest over nodes labelled `role=sensor`.
fn daemonset(name: &str, image: &str, tolerations: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {{name: {name}}}\nspec:\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      nodeSelector: {{role: sensor}}\n      tolerations: {tolerations}\n      containers:\n      - {{name: agent, image: {image}}}\n"
    )
}

/// The nodes the pods of `name` run on, sorted.
fn nodes_of(harness: &Harness, name: &str) -> String {
    let out = harness.cloud.ok(&[
        "get",
        "pods",
        "-l",
        &format!("app={name}"),
        "-o",
        "jsonpath={.items[*].spec.nodeName}",
    ]);
    let mut nodes: Vec<&str> = out.split_whitespace().collect();
    nodes.sort_unstable();
    nodes.join(" ")
}

/// Pods land on the matching nodes only; a node added later gets one; a
/// tainted node only when tolerated.
pub async fn daemonset_on_matching_nodes(harness: &Harness) {
    let nodes = &harness.nodes;
    nodes
        .add(
            "sensor-edge",
            &[("role", "sensor"), ("node-role.kubernetes.io/edge", "")],
        )
        .await;
    nodes.add("sensor-cloud", &[("role", "sensor")]).await;
    nodes.add("plain", &[]).await;
    let cloud = &harness.cloud;
    cloud.ok_with_input(
        &["apply", "-f", "-"],
        &daemonset("agent", "registry.local/agent:1", "[]"),
    );
    let out = cloud.ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    assert_eq!(nodes_of(harness, "agent"), "sensor-cloud sensor-edge");

    nodes.add("sensor-late", &[("role", "sensor")]).await;
    cloud
        .eventually(
            &[
                "get",
                "pods",
                "-l",
                "app=agent",
                "-o",
                "jsonpath={.items[*].spec.nodeName}",
            ],
            |out| {
                out.split_whitespace()
                    .filter(|n| *n == "sensor-late")
                    .count()
                    == 1
            },
        )
        .await;
    cloud.ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"]);
    let desired = cloud.ok(&[
        "get",
        "daemonset",
        "agent",
        "-o",
        "jsonpath={.status.desiredNumberScheduled}/{.status.numberReady}",
    ]);
    assert_eq!(desired, "3/3");

    // A tainted sensor node (tainted before it matches the selector):
    // only a tolerating DaemonSet runs there.
    nodes.add("sensor-dedicated", &[("role", "pending")]).await;
    cloud.ok(&[
        "taint",
        "node",
        "sensor-dedicated",
        "dedicated=x:NoSchedule",
    ]);
    cloud.ok(&[
        "label",
        "node",
        "sensor-dedicated",
        "role=sensor",
        "--overwrite",
    ]);
    cloud.ok_with_input(
        &["apply", "-f", "-"],
        &daemonset(
            "tolerant",
            "registry.local/agent:1",
            "[{key: dedicated, operator: Exists}]",
        ),
    );
    cloud.ok(&["rollout", "status", "daemonset/tolerant", "--timeout=60s"]);
    assert_eq!(
        nodes_of(harness, "tolerant"),
        "sensor-cloud sensor-dedicated sensor-edge sensor-late"
    );
    assert_eq!(
        nodes_of(harness, "agent"),
        "sensor-cloud sensor-edge sensor-late",
        "the untolerated taint keeps the first DaemonSet off the node"
    );
}

/// `kubectl set image` replaces every pod, and rollout status completes.
pub async fn daemonset_rolling_update(harness: &Harness) {
    for name in ["s1", "s2", "s3"] {
        harness.nodes.add(name, &[("role", "sensor")]).await;
    }
    let cloud = &harness.cloud;
    cloud.ok_with_input(
        &["apply", "-f", "-"],
        &daemonset("agent", "registry.local/agent:1", "[]"),
    );
    cloud.ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"]);
    cloud.ok(&[
        "set",
        "image",
        "daemonset/agent",
        "agent=registry.local/agent:2",
    ]);
    let out = cloud.ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    cloud
        .eventually(
            &[
                "get",
                "pods",
                "-l",
                "app=agent",
                "-o",
                "jsonpath={.items[*].spec.containers[0].image}",
            ],
            |out| out.split_whitespace().collect::<Vec<_>>() == ["registry.local/agent:2"; 3],
        )
        .await;
    assert_eq!(nodes_of(harness, "agent"), "s1 s2 s3");

    // The history (ControllerRevisions) takes kubectl back to the first.
    let history = cloud.ok(&["rollout", "history", "daemonset/agent"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");
    cloud.ok(&["rollout", "undo", "daemonset/agent"]);
    cloud.ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"]);
    cloud
        .eventually(
            &[
                "get",
                "pods",
                "-l",
                "app=agent",
                "-o",
                "jsonpath={.items[*].spec.containers[0].image}",
            ],
            |out| out.split_whitespace().collect::<Vec<_>>() == ["registry.local/agent:1"; 3],
        )
        .await;
}
