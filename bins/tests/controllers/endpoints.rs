//! Endpoints and EndpointSlices follow the ready pods a Service selects.

use crate::Harness;

/// A Service over a Deployment's pods, by a named target port: both the
/// Endpoints and the slice list the pod IPs with the container port; a
/// deleted pod leaves them; a Service without selector gets none; deleting
/// the Service removes both.
pub async fn endpoints_follow_ready_pods(harness: &Harness) {
    harness.nodes.add("node-a", &[]).await;
    let cloud = &harness.cloud;
    cloud.ok_with_input(
        &["apply", "-f", "-"],
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers:\n      - name: app\n        image: registry.local/web:1\n        ports: [{name: http, containerPort: 8080}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: http}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: external}\nspec:\n  ports: [{port: 80}]\n",
    );
    cloud.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let ips = || {
        let out = cloud.ok(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].status.podIP}",
        ]);
        let mut ips: Vec<String> = out.split_whitespace().map(str::to_owned).collect();
        ips.sort();
        ips.join(" ")
    };
    let sorted = |out: &str| {
        let mut items: Vec<&str> = out.split_whitespace().collect();
        items.sort_unstable();
        items.join(" ")
    };
    let expected = ips();
    assert_eq!(expected.split(' ').count(), 2);
    cloud
        .eventually(
            &[
                "get",
                "endpoints",
                "web",
                "-o",
                "jsonpath={.subsets[*].addresses[*].ip}",
            ],
            |out| sorted(out) == expected,
        )
        .await;
    let port = cloud.ok(&[
        "get",
        "endpoints",
        "web",
        "-o",
        "jsonpath={.subsets[0].ports[0].port}",
    ]);
    assert_eq!(port, "8080");
    let slice = "-l=kubernetes.io/service-name=web";
    cloud
        .eventually(
            &[
                "get",
                "endpointslices",
                slice,
                "-o",
                "jsonpath={.items[*].endpoints[*].addresses[0]}",
            ],
            |out| sorted(out) == expected,
        )
        .await;
    let slice_port = cloud.ok(&[
        "get",
        "endpointslices",
        slice,
        "-o",
        "jsonpath={.items[0].ports[0].port}",
    ]);
    assert_eq!(slice_port, "8080");

    // A pod goes: its address leaves both, its replacement joins.
    let victim = cloud.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    let victim_ip = cloud.ok(&["get", "pod", &victim, "-o", "jsonpath={.status.podIP}"]);
    cloud.ok(&["delete", "pod", &victim]);
    cloud
        .eventually(
            &[
                "get",
                "endpoints",
                "web",
                "-o",
                "jsonpath={.subsets[*].addresses[*].ip}",
            ],
            |out| {
                !out.split_whitespace().any(|ip| ip == victim_ip)
                    && out.split_whitespace().count() == 2
            },
        )
        .await;
    cloud
        .eventually(
            &[
                "get",
                "endpointslices",
                slice,
                "-o",
                "jsonpath={.items[*].endpoints[*].addresses[0]}",
            ],
            |out| {
                !out.split_whitespace().any(|ip| ip == victim_ip)
                    && out.split_whitespace().count() == 2
            },
        )
        .await;

    // No selector: the controller leaves it alone.
    let none = cloud.kubectl(&["get", "endpoints", "external"]);
    assert!(
        !none.status.success(),
        "a Service without selector got Endpoints"
    );

    cloud.ok(&["delete", "service", "web"]);
    cloud
        .eventually(&["get", "endpoints", "web"], |out| out.contains("NotFound"))
        .await;
    cloud
        .eventually(&["get", "endpointslices", slice, "-o", "name"], |out| {
            out.trim().is_empty()
        })
        .await;
}
