//! edged's pod manager: one [`worker::PodWorker`] per pod bound to this
//! node, told about every change of its pod (edged.md §3.3).
//!
//! The manager keys pods by uid, so a pod deleted and created again under
//! the same name is two pods: the old one's worker removes its
//! containers, the new one's starts fresh. It also removes what the
//! runtime holds for pods it no longer knows (orphans), found by the
//! node label every sandbox carries, so a pod deleted in the cloud while
//! edgecore was down is cleaned up once the pod list is known.
//!
//! Static pods ([`crate::edged::static_pods`]) are run like the others
//! but come from [`PodManager::set_static`], not from the cloud: the
//! cloud's pod list leaves them alone, and the mirror pods the cloud
//! sends are not run.

pub mod fields;
pub mod probe;
pub mod spec;
pub mod status;
pub mod volumes;
pub mod worker;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::edged::runtime::SandboxFilter;
use crate::edged::static_pods;
use worker::{Desired, PodWorker, Shared};

/// A running worker and what it was told.
#[derive(Debug)]
struct Entry {
    namespace: String,
    name: String,
    desired: watch::Sender<Desired>,
}

/// The pods of this node and their workers.
#[derive(Debug)]
pub struct PodManager {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    pods: HashMap<String, Entry>,
    /// The uids of the static pods among `pods`.
    static_uids: HashSet<String>,
    refresh: u64,
}

impl PodManager {
    /// A manager with no pods; workers stop (leaving pods running) when
    /// `cancel` fires.
    pub fn new(shared: Arc<Shared>, cancel: CancellationToken) -> Self {
        Self {
            shared,
            cancel,
            pods: HashMap::new(),
            static_uids: HashSet::new(),
            refresh: 0,
        }
    }

    /// The uids of the pods being run.
    pub fn uids(&self) -> Vec<String> {
        self.pods.keys().cloned().collect()
    }

    /// Takes the newest version of a pod: a pod bound to another node (or
    /// to none) is let go, a known one is updated, a new one gets a worker.
    /// A pod with a new uid under a known name replaces the old pod.
    /// A mirror pod is not run: its static pod is; a mirror pod being
    /// deleted in the cloud is deleted at once, to be created again, and a
    /// new mirror pod (no conditions in its status yet) gets the static
    /// pod's status.
    pub fn upsert(&mut self, pod: Pod) {
        if static_pods::is_mirror(&pod) {
            if pod.metadata.deletion_timestamp.is_some() {
                let client = self.shared.client.clone();
                tokio::spawn(async move { static_pods::delete_mirror(&client, &pod).await });
            } else if pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_none_or(Vec::is_empty)
            {
                self.resend_status(&pod);
            }
            return;
        }
        self.run(pod);
    }

    /// Makes the static pod that `mirror` mirrors send its status again.
    fn resend_status(&self, mirror: &Pod) {
        let namespace = mirror.metadata.namespace.as_deref().unwrap_or_default();
        let name = mirror.metadata.name.as_deref().unwrap_or_default();
        for uid in &self.static_uids {
            if let Some(entry) = self.pods.get(uid)
                && entry.namespace == namespace
                && entry.name == name
            {
                entry.desired.send_modify(|desired| desired.resend += 1);
            }
        }
    }

    /// Runs (or updates) `pod`, bound to this node or let go.
    fn run(&mut self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone().filter(|u| !u.is_empty()) else {
            tracing::warn!(pod = ?pod.metadata.name, "a pod without uid is ignored");
            return;
        };
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let bound_here = pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
            == Some(self.shared.spec.node_name.as_str());
        if !bound_here {
            self.remove_uid(&uid);
            return;
        }
        let replaced: Vec<String> = self
            .pods
            .iter()
            .filter(|(other, e)| **other != uid && e.namespace == namespace && e.name == name)
            .map(|(other, _)| other.clone())
            .collect();
        for other in replaced {
            self.remove_uid(&other);
        }
        let pod = Arc::new(pod);
        if let Some(entry) = self.pods.get(&uid) {
            entry.desired.send_modify(|desired| {
                if !desired.removed {
                    desired.pod = pod;
                }
            });
            return;
        }
        tracing::info!(%namespace, %name, %uid, "pod added");
        let (desired, receiver) = watch::channel(Desired {
            pod,
            removed: false,
            refresh: self.refresh,
            resend: 0,
        });
        let worker = PodWorker::new(self.shared.clone(), receiver);
        // The worker ends by itself once its pod is removed or edged stops.
        tokio::spawn(worker.run(self.cancel.child_token()));
        self.pods.insert(
            uid,
            Entry {
                namespace,
                name,
                desired,
            },
        );
    }

    /// The cloud deleted a pod: its worker stops and removes everything
    /// it had. Matched by uid, or by name when the message has none;
    /// static pods are not the cloud's to remove.
    pub fn remove(&mut self, pod: &Pod) {
        if static_pods::is_mirror(pod) {
            return;
        }
        let uid = pod.metadata.uid.clone().filter(|u| !u.is_empty());
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let uids: Vec<String> = match uid {
            Some(uid) => vec![uid],
            None => self
                .pods
                .iter()
                .filter(|(_, e)| e.namespace == namespace && e.name == name)
                .map(|(uid, _)| uid.clone())
                .collect(),
        };
        let uids: Vec<String> = uids
            .into_iter()
            .filter(|u| !self.static_uids.contains(u))
            .collect();
        for uid in uids {
            self.remove_uid(&uid);
        }
    }

    fn remove_uid(&mut self, uid: &str) {
        self.static_uids.remove(uid);
        if let Some(entry) = self.pods.remove(uid) {
            tracing::info!(namespace = %entry.namespace, name = %entry.name, %uid, "pod deleted");
            entry.desired.send_modify(|desired| desired.removed = true);
        }
    }

    /// Makes every worker re-read its volumes' sources now (a ConfigMap
    /// or Secret changed).
    pub fn refresh_volumes(&mut self) {
        self.refresh += 1;
        let refresh = self.refresh;
        for entry in self.pods.values() {
            entry
                .desired
                .send_modify(|desired| desired.refresh = refresh);
        }
    }

    /// Makes the static pods equal to `pods` (the manifests read now):
    /// new ones are started, ones whose manifest is gone or changed are
    /// removed.
    pub fn set_static(&mut self, pods: Vec<Pod>) {
        let uids: HashSet<String> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
        let gone: Vec<String> = self.static_uids.difference(&uids).cloned().collect();
        for uid in gone {
            self.remove_uid(&uid);
        }
        for pod in pods {
            self.run(pod);
        }
        self.static_uids = uids;
    }

    /// Makes the set of the cloud's pods equal to `pods` (the full list
    /// of this node's pods): new ones are added, changed ones updated,
    /// missing ones removed, and sandboxes of pods nobody knows are
    /// removed. Static pods stay.
    pub async fn replace_all(&mut self, pods: Vec<Pod>) {
        let mut seen = self.static_uids.clone();
        for pod in pods {
            if let Some(uid) = pod.metadata.uid.clone() {
                seen.insert(uid);
            }
            self.upsert(pod);
        }
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|uid| !seen.contains(*uid))
            .cloned()
            .collect();
        for uid in gone {
            self.remove_uid(&uid);
        }
        self.remove_orphans().await;
    }

    /// Removes sandboxes this node's edged made for pods it does not run.
    async fn remove_orphans(&self) {
        let filter = SandboxFilter {
            labels: BTreeMap::from([(spec::NODE.to_owned(), self.shared.spec.node_name.clone())]),
            ..Default::default()
        };
        let sandboxes = match self.shared.runtime.list_sandboxes(&filter).await {
            Ok(sandboxes) => sandboxes,
            Err(error) => {
                tracing::warn!(%error, "listing sandboxes for orphans failed");
                return;
            }
        };
        let orphans: HashSet<String> = sandboxes
            .into_iter()
            .filter_map(|s| s.labels.get(spec::POD_UID).cloned())
            .filter(|uid| !self.pods.contains_key(uid))
            .collect();
        for uid in orphans {
            tracing::info!(%uid, "removing the sandboxes of a pod this node no longer has");
            worker::remove_uid(&self.shared, &uid).await;
        }
    }
}
