//! The Job controller: runs pods from the template until `completions`
//! of them succeeded, at most `parallelism` at a time (`NonIndexed`
//! completion mode; `Indexed` Jobs are run the same way, without index
//! annotations); a failed pod is replaced after a back-off (10 s doubling
//! per failure, at most 6 min) until more than `backoffLimit` failed;
//! `activeDeadlineSeconds` and `suspend` stop the active pods. The status
//! (`active`, `ready`, `succeeded`, `failed`, times, and the `Complete` or
//! `Failed` condition) is what `kubectl wait --for=condition=complete`
//! reads. A finished Job with `ttlSecondsAfterFinished` is deleted, with
//! its pods, that long after it finished.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::batch::v1::{Job, JobCondition};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::Informers;
use crate::events::{self, EventType};
use crate::informer::Cache;
use crate::pods::{self, Expectations};

/// The component name in events.
const COMPONENT: &str = "job-controller";
/// The first back-off after a failed pod.
const BACKOFF_BASE: Duration = Duration::from_secs(10);
/// The longest back-off.
const BACKOFF_MAX: Duration = Duration::from_secs(360);

struct Context {
    client: Client,
    pods: Cache<Pod>,
    expectations: Expectations,
}

/// Runs the Job controller until `token` is cancelled.
pub fn run(
    client: Client,
    informers: &Informers,
    token: CancellationToken,
) -> BoxFuture<'static, ()> {
    let context = Arc::new(Context {
        client: client.clone(),
        pods: informers.pods.store(),
        expectations: Expectations::default(),
    });
    let controller = Controller::new(Api::<Job>::all(client), watcher::Config::default())
        .owns_shared_stream(informers.pods.subscribe())
        .graceful_shutdown_on(token.cancelled_owned())
        .run(reconcile, error_policy, context)
        .for_each(|_| futures::future::ready(()));
    Box::pin(controller)
}

fn error_policy(job: Arc<Job>, error: &kube::Error, _: Arc<Context>) -> Action {
    tracing::debug!(job = %job.name_any(), %error, "job: reconcile failed; retrying");
    Action::requeue(Duration::from_secs(1))
}

/// The back-off before replacing a pod after `failed` failures.
pub fn backoff(failed: i32) -> Duration {
    let exponent = u32::try_from(failed.saturating_sub(1).clamp(0, 16)).unwrap_or(0);
    BACKOFF_BASE
        .saturating_mul(2u32.saturating_pow(exponent))
        .min(BACKOFF_MAX)
}

/// Why a Job is finished, if it is: (condition type, reason, message).
pub fn outcome(
    succeeded: i32,
    failed: i32,
    completions: Option<i32>,
    backoff_limit: i32,
    past_deadline: bool,
) -> Option<(&'static str, &'static str, &'static str)> {
    let complete = match completions {
        Some(completions) => succeeded >= completions,
        // Without completions, the first success finishes the work.
        None => succeeded > 0,
    };
    if complete {
        Some(("Complete", "", ""))
    } else if failed > backoff_limit {
        Some((
            "Failed",
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        ))
    } else if past_deadline {
        Some((
            "Failed",
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
        ))
    } else {
        None
    }
}

fn finished_at(job: &Job) -> Option<jiff::Timestamp> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| {
            c.last_transition_time
                .as_ref()
                .map_or(jiff::Timestamp::now(), |t| t.0)
        })
}

async fn reconcile(job: Arc<Job>, context: Arc<Context>) -> Result<Action, kube::Error> {
    context.pods.ready().await;
    let uid = job.uid().unwrap_or_default();
    if job.metadata.deletion_timestamp.is_some() {
        context.expectations.forget(&uid);
        return Ok(Action::await_change());
    }
    let namespace = job.namespace().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(context.client.clone(), &namespace);
    let Some(spec) = job.spec.clone() else {
        return Ok(Action::await_change());
    };
    let now = jiff::Timestamp::now();
    if let Some(finished) = finished_at(&job) {
        // Finished: only the TTL is left to watch.
        let Some(ttl) = spec.ttl_seconds_after_finished else {
            return Ok(Action::await_change());
        };
        let expires = finished + jiff::SignedDuration::from_secs(i64::from(ttl));
        if now >= expires {
            match jobs
                .delete(&job.name_any(), &DeleteParams::background())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => return Err(error),
            }
            return Ok(Action::await_change());
        }
        let wait = now.duration_until(expires).unsigned_abs();
        return Ok(Action::requeue(wait.max(Duration::from_millis(100))));
    }
    let owned = pods::owned_pods(&context.pods, &namespace, &uid);
    let settled = context.expectations.settle(&uid, &owned);
    let phase_count = |phase: &str| owned.iter().filter(|p| pods::phase(p) == phase).count();
    let succeeded = i32::try_from(phase_count("Succeeded")).unwrap_or(i32::MAX);
    let failed = i32::try_from(phase_count("Failed")).unwrap_or(i32::MAX);
    let active: Vec<Arc<Pod>> = owned
        .iter()
        .filter(|p| pods::is_active(p) && !settled.deleted.contains(&p.name_any()))
        .cloned()
        .collect();
    let start_time = job
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map_or(now, |t| t.0);
    let past_deadline = spec
        .active_deadline_seconds
        .is_some_and(|seconds| now >= start_time + jiff::SignedDuration::from_secs(seconds));
    let outcome = outcome(
        succeeded,
        failed,
        spec.completions,
        spec.backoff_limit.unwrap_or(6),
        past_deadline,
    );
    let suspended = spec.suspend == Some(true);
    let mut action = Action::await_change();
    let counted = active.len() + settled.unseen_created.len();
    if outcome.is_some() || suspended {
        if !active.is_empty() {
            pods::delete_all(&context.client, &context.expectations, &uid, active.clone()).await?;
        }
    } else {
        let parallelism = usize::try_from(spec.parallelism.unwrap_or(1)).unwrap_or(0);
        let remaining = spec
            .completions
            .map_or(parallelism, |c| usize::try_from(c - succeeded).unwrap_or(0));
        let wanted = parallelism.min(remaining);
        // After failures, replacements wait for the back-off.
        let last_failure = owned
            .iter()
            .filter(|p| pods::phase(p) == "Failed")
            .filter_map(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .max();
        let wait = last_failure.and_then(|at| {
            let ready_at = at + jiff::SignedDuration::try_from(backoff(failed)).unwrap_or_default();
            (now < ready_at).then(|| now.duration_until(ready_at).unsigned_abs())
        });
        if counted < wanted {
            match wait {
                Some(wait) => action = Action::requeue(wait),
                None => {
                    let template = spec.template.clone();
                    let owner = pods::controller_ref(job.as_ref());
                    let new: Vec<Pod> = (0..wanted - counted)
                        .map(|_| {
                            pods::from_template(
                                &template,
                                &namespace,
                                None,
                                &format!("{}-", job.name_any()),
                                owner.clone(),
                                &BTreeMap::new(),
                            )
                        })
                        .collect();
                    let created =
                        pods::create_all(&context.client, &context.expectations, &uid, new).await?;
                    events::record(
                        &context.client,
                        COMPONENT,
                        job.as_ref(),
                        EventType::Normal,
                        "SuccessfulCreate",
                        &format!("Created {created} pod(s)"),
                    )
                    .await;
                }
            }
        }
        if let Some(seconds) = spec.active_deadline_seconds {
            let deadline = start_time + jiff::SignedDuration::from_secs(seconds);
            let until = now.duration_until(deadline).unsigned_abs();
            action = match action {
                _ if until.is_zero() => Action::requeue(Duration::from_millis(100)),
                _ => Action::requeue(until.min(wait.unwrap_or(until))),
            };
        }
    }
    // Status.
    let status = job.status.clone().unwrap_or_default();
    let ready = i32::try_from(active.iter().filter(|p| pods::is_ready(p)).count()).unwrap_or(0);
    let active_count = if outcome.is_some() || suspended {
        0
    } else {
        i32::try_from(counted).unwrap_or(0)
    };
    let mut patch = json!({
        "active": active_count, "ready": ready, "succeeded": succeeded, "failed": failed,
    });
    if status.start_time.is_none() && !suspended {
        patch["startTime"] = json!(Time(now));
    }
    if let Some((kind, reason, message)) = outcome {
        let mut conditions: Vec<JobCondition> = status.conditions.clone().unwrap_or_default();
        let condition = |kind: &str| JobCondition {
            type_: kind.to_owned(),
            status: "True".to_owned(),
            reason: (!reason.is_empty()).then(|| reason.to_owned()),
            message: (!message.is_empty()).then(|| message.to_owned()),
            last_probe_time: Some(Time(now)),
            last_transition_time: Some(Time(now)),
        };
        // Kubernetes 1.31+ first sets SuccessCriteriaMet / FailureTarget.
        let interim = if kind == "Complete" {
            "SuccessCriteriaMet"
        } else {
            "FailureTarget"
        };
        conditions.push(condition(interim));
        conditions.push(condition(kind));
        patch["conditions"] = json!(conditions);
        if kind == "Complete" {
            patch["completionTime"] = json!(Time(now));
        }
        tracing::info!(job = %job.name_any(), outcome = kind, reason, "job finished");
        events::record(
            &context.client,
            COMPONENT,
            job.as_ref(),
            if kind == "Complete" {
                EventType::Normal
            } else {
                EventType::Warning
            },
            if kind == "Complete" {
                "Completed"
            } else {
                reason
            },
            if kind == "Complete" {
                "Job completed"
            } else {
                message
            },
        )
        .await;
        if spec.ttl_seconds_after_finished.is_some() {
            action = Action::requeue(Duration::from_millis(500));
        }
    }
    let unchanged = outcome.is_none()
        && patch.get("startTime").is_none()
        && status.active.unwrap_or(0) == active_count
        && status.ready.unwrap_or(0) == ready
        && status.succeeded.unwrap_or(0) == succeeded
        && status.failed.unwrap_or(0) == failed;
    if !unchanged {
        match jobs
            .patch_status(
                &job.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": patch})),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error),
        }
    }
    Ok(action)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes() {
        assert_eq!(
            outcome(3, 0, Some(3), 6, false).map(|o| o.0),
            Some("Complete")
        );
        assert_eq!(outcome(2, 0, Some(3), 6, false), None);
        assert_eq!(
            outcome(0, 2, Some(1), 1, false).map(|o| o.1),
            Some("BackoffLimitExceeded")
        );
        assert_eq!(outcome(0, 1, Some(1), 1, false), None);
        assert_eq!(
            outcome(0, 0, Some(1), 6, true).map(|o| o.1),
            Some("DeadlineExceeded")
        );
        assert_eq!(outcome(1, 0, None, 6, false).map(|o| o.0), Some("Complete"));
    }

    #[test]
    fn backoff_doubles_up_to_six_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(2), Duration::from_secs(20));
        assert_eq!(backoff(3), Duration::from_secs(40));
        assert_eq!(backoff(20), Duration::from_secs(360));
    }
}
