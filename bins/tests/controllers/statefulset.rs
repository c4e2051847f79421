//! StatefulSet scenario: ordered creation of stable names, ordered scale
//! down, a deleted pod back under its name, a rolling update.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};

use crate::Harness;

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `web` with three replicas: web-0, web-1, web-2, each created only after
/// the one before was ready; scaled to one, web-2 goes before web-1; a
/// deleted web-0 comes back; a new image rolls through.
pub async fn statefulset_ordered_names_and_scale(harness: &Harness) {
    harness.nodes.add("node-a", &[]).await;
    harness.nodes.add("node-b", &[]).await;
    let cloud = &harness.cloud;
    // Watch the pods: every first sighting of web-N must find web-(N-1) ready.
    let pods: Api<Pod> = Api::default_namespaced(cloud.client().await);
    let violations = Arc::new(Mutex::new(Vec::<String>::new()));
    let removed = Arc::new(Mutex::new(Vec::<String>::new()));
    let (seen_violations, seen_removed) = (violations.clone(), removed.clone());
    let mut events = watcher(pods, watcher::Config::default().labels("app=web"))
        .default_backoff()
        .boxed();
    let watch = tokio::spawn(async move {
        let mut state: HashMap<String, bool> = HashMap::new();
        while let Some(Ok(event)) = events.next().await {
            match event {
                watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    if !state.contains_key(&name) {
                        let ordinal: usize = name.trim_start_matches("web-").parse().unwrap_or(0);
                        if ordinal > 0 && state.get(&format!("web-{}", ordinal - 1)) != Some(&true)
                        {
                            seen_violations.lock().unwrap().push(name.clone());
                        }
                    }
                    state.insert(
                        name,
                        ready(&pod) && pod.metadata.deletion_timestamp.is_none(),
                    );
                }
                watcher::Event::Delete(pod) => {
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    state.remove(&name);
                    seen_removed.lock().unwrap().push(name);
                }
                _ => {}
            }
        }
    });
    cloud.ok_with_input(
        &["apply", "-f", "-"],
        "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: web}\nspec:\n  serviceName: web\n  replicas: 3\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers:\n      - {name: app, image: registry.local/web:1}\n",
    );
    let out = cloud.ok(&["rollout", "status", "statefulset/web", "--timeout=60s"]);
    assert!(
        out.contains("roll out complete") || out.contains("rolling update complete"),
        "{out}"
    );
    let names = cloud.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    let mut names: Vec<&str> = names.split_whitespace().collect();
    names.sort_unstable();
    assert_eq!(names, ["web-0", "web-1", "web-2"]);
    let hostname = cloud.ok(&[
        "get",
        "pod",
        "web-1",
        "-o",
        "jsonpath={.spec.hostname}.{.spec.subdomain}",
    ]);
    assert_eq!(hostname, "web-1.web");

    cloud.ok(&["scale", "statefulset", "web", "--replicas=1"]);
    cloud
        .eventually(
            &[
                "get",
                "pods",
                "-l",
                "app=web",
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ],
            |out| out == "web-0",
        )
        .await;
    assert_eq!(
        *removed.lock().unwrap(),
        ["web-2", "web-1"],
        "scale down goes from the top"
    );

    let uid = cloud.ok(&["get", "pod", "web-0", "-o", "jsonpath={.metadata.uid}"]);
    // Not waiting in kubectl: the pod comes back under the same name so
    // quickly that kubectl's own wait for the deletion may miss it.
    cloud.ok(&["delete", "pod", "web-0", "--wait=false"]);
    cloud
        .eventually(
            &[
                "get",
                "pod",
                "web-0",
                "-o",
                "jsonpath={.metadata.uid}/{.status.phase}",
            ],
            |out| !out.starts_with(&uid) && out.ends_with("/Running"),
        )
        .await;

    cloud.ok(&["scale", "statefulset", "web", "--replicas=2"]);
    cloud.ok(&["rollout", "status", "statefulset/web", "--timeout=60s"]);
    cloud.ok(&[
        "set",
        "image",
        "statefulset/web",
        "app=registry.local/web:2",
    ]);
    cloud.ok(&["rollout", "status", "statefulset/web", "--timeout=60s"]);
    cloud
        .eventually(
            &[
                "get",
                "pods",
                "-l",
                "app=web",
                "-o",
                "jsonpath={.items[*].spec.containers[0].image}",
            ],
            |out| out.split_whitespace().collect::<Vec<_>>() == ["registry.local/web:2"; 2],
        )
        .await;
    cloud.ok(&["rollout", "undo", "statefulset/web"]);
    cloud.ok(&["rollout", "status", "statefulset/web", "--timeout=60s"]);
    cloud
        .eventually(
            &[
                "get",
                "pods",
                "-l",
                "app=web",
                "-o",
                "jsonpath={.items[*].spec.containers[0].image}",
            ],
            |out| out.split_whitespace().collect::<Vec<_>>() == ["registry.local/web:1"; 2],
        )
        .await;
    watch.abort();
    assert!(
        violations.lock().unwrap().is_empty(),
        "created before its predecessor was ready: {:?}",
        violations.lock().unwrap()
    );
}
