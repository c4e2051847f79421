//! Pod status reports to the cloud: the newest status of each pod waits
//! in a queue ([`StatusQueue`]) that one task ([`StatusQueue::run`]) drains
//! as strategic-merge patches `<ns>/podpatch/<name>` through MetaManager
//! (edged.md §1.8). An older status waiting for a pod is replaced, never
//! sent after a newer one. With the link down MetaManager hands the patch
//! to EdgeHub, whose durable outbox keeps the newest per pod until the
//! cloud answers, so a status counts as sent.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::edged::metaclient::{MetaClient, MetaError};

/// A pod's status waiting to be sent.
#[derive(Debug, Clone)]
struct Pending {
    namespace: String,
    name: String,
    status: Value,
}

/// The newest unsent status of each pod, by uid.
#[derive(Debug, Default)]
pub struct StatusQueue {
    pending: Mutex<HashMap<String, Pending>>,
    notify: Notify,
}

impl StatusQueue {
    /// Queues `status` for the pod, replacing one still waiting.
    pub fn push(&self, uid: &str, namespace: &str, name: &str, status: Value) {
        self.lock().insert(
            uid.to_owned(),
            Pending {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                status,
            },
        );
        self.notify.notify_one();
    }

    /// Drops what waits for a pod that is gone.
    pub fn forget(&self, uid: &str) {
        self.lock().remove(uid);
    }

    /// How many pods have a status waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends queued statuses until `cancel` fires. A patch the cloud
    /// refuses for a pod it no longer has (404) is dropped; other failures
    /// are retried a second later unless a newer status replaced them.
    pub async fn run(&self, client: MetaClient, cancel: CancellationToken) {
        loop {
            let batch: Vec<(String, Pending)> = self.lock().drain().collect();
            let mut failed = false;
            for (uid, pending) in batch {
                let patch = json!({"status": pending.status});
                match client
                    .patch_status(
                        &pending.namespace,
                        kedge_message::resource_type::POD_PATCH,
                        &pending.name,
                        &patch,
                    )
                    .await
                {
                    Ok(_) | Err(MetaError::NotConnected) => {}
                    Err(error) if error.code() == 404 => {
                        tracing::debug!(pod = %pending.name, "status of a pod the cloud no longer has dropped");
                    }
                    Err(error) => {
                        tracing::debug!(%error, pod = %pending.name, "pod status not sent; retrying");
                        failed = true;
                        self.lock().entry(uid).or_insert(pending);
                    }
                }
            }
            let wait = async {
                if failed {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                } else {
                    self.notify.notified().await;
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = wait => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_status_replaces_the_waiting_one() {
        let queue = StatusQueue::default();
        queue.push("u1", "default", "a", json!({"phase": "Pending"}));
        queue.push("u1", "default", "a", json!({"phase": "Running"}));
        queue.push("u2", "default", "b", json!({"phase": "Pending"}));
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.lock()["u1"].status["phase"], "Running");
        queue.forget("u2");
        assert_eq!(queue.len(), 1);
    }
}
