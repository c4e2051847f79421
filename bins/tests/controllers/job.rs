//! Job scenarios: completion with parallelism, failure after the back-off
//! limit, the active deadline, and deletion after the TTL.

use crate::Harness;

/// A Job manifest; `extra` goes under `spec`.
fn job(name: &str, image: &str, extra: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\nspec:\n{extra}  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: task\n        image: {image}\n"
    )
}

/// Three completions, two at a time: Complete, three succeeded pods.
pub async fn job_runs_to_completion(harness: &Harness) {
    harness.nodes.add("node-a", &[]).await;
    let cloud = &harness.cloud;
    cloud.ok_with_input(
        &["apply", "-f", "-"],
        &job(
            "batch",
            "registry.local/task:succeed",
            "  completions: 3\n  parallelism: 2\n",
        ),
    );
    cloud.ok(&[
        "wait",
        "--for=condition=complete",
        "job/batch",
        "--timeout=60s",
    ]);
    let status = cloud.ok(&[
        "get",
        "job",
        "batch",
        "-o",
        "jsonpath={.status.succeeded}/{.status.failed}/{.status.active}",
    ]);
    assert_eq!(status, "3/0/0");
    let pods = cloud.ok(&[
        "get",
        "pods",
        "-l",
        "job-name=batch",
        "-o",
        "jsonpath={.items[*].status.phase}",
    ]);
    assert_eq!(
        pods.split_whitespace().collect::<Vec<_>>(),
        ["Succeeded"; 3]
    );
    // The selector was generated from the Job's uid.
    let uid = cloud.ok(&["get", "job", "batch", "-o", "jsonpath={.metadata.uid}"]);
    let selected = cloud.ok(&[
        "get",
        "job",
        "batch",
        "-o",
        "jsonpath={.spec.selector.matchLabels.batch\\.kubernetes\\.io/controller-uid}",
    ]);
    assert_eq!(selected, uid);
    let completed = cloud.ok(&[
        "get",
        "job",
        "batch",
        "-o",
        "jsonpath={.status.completionTime}",
    ]);
    assert!(!completed.is_empty());
}

/// Failing pods: with backoffLimit 1 the Job fails after the second one.
pub async fn job_fails_after_backoff_limit(harness: &Harness) {
    harness.nodes.add("node-a", &[]).await;
    let cloud = &harness.cloud;
    cloud.ok_with_input(
        &["apply", "-f", "-"],
        &job("doomed", "registry.local/task:fail", "  backoffLimit: 1\n"),
    );
    cloud.ok(&[
        "wait",
        "--for=condition=failed",
        "job/doomed",
        "--timeout=60s",
    ]);
    let reason = cloud.ok(&[
        "get",
        "job",
        "doomed",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Failed\")].reason}",
    ]);
    assert_eq!(reason, "BackoffLimitExceeded");
    let status = cloud.ok(&[
        "get",
        "job",
        "doomed",
        "-o",
        "jsonpath={.status.failed}/{.status.active}",
    ]);
    assert_eq!(status, "2/0");
    let pods = cloud.ok(&["get", "pods", "-l", "job-name=doomed", "-o", "name"]);
    assert_eq!(pods.lines().count(), 2, "{pods}");
}

/// A Job running past its deadline fails and its pods go; a finished Job
/// with a TTL is deleted after it.
pub async fn job_deadline_and_ttl(harness: &Harness) {
    harness.nodes.add("node-a", &[]).await;
    let cloud = &harness.cloud;
    cloud.ok_with_input(
        &["apply", "-f", "-"],
        &job(
            "endless",
            "registry.local/server:1",
            "  activeDeadlineSeconds: 2\n",
        ),
    );
    cloud
        .eventually(
            &[
                "get",
                "pods",
                "-l",
                "job-name=endless",
                "-o",
                "jsonpath={.items[*].status.phase}",
            ],
            |out| out == "Running",
        )
        .await;
    cloud.ok(&[
        "wait",
        "--for=condition=failed",
        "job/endless",
        "--timeout=60s",
    ]);
    let reason = cloud.ok(&[
        "get",
        "job",
        "endless",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Failed\")].reason}",
    ]);
    assert_eq!(reason, "DeadlineExceeded");
    cloud
        .eventually(
            &["get", "pods", "-l", "job-name=endless", "-o", "name"],
            |out| out.trim().is_empty(),
        )
        .await;

    cloud.ok_with_input(
        &["apply", "-f", "-"],
        &job(
            "brief",
            "registry.local/task:succeed",
            "  ttlSecondsAfterFinished: 1\n",
        ),
    );
    cloud
        .eventually(&["get", "job", "brief"], |out| out.contains("NotFound"))
        .await;
    cloud
        .eventually(
            &["get", "pods", "-l", "job-name=brief", "-o", "name"],
            |out| out.trim().is_empty(),
        )
        .await;
}
