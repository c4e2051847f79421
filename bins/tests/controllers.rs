//! The workload controllers against a real cloudcore: Node objects and pod
//! statuses come from hollow nodes driven by the test (a stand-in kubelet),
//! the objects from the real kubectl, and every check waits on a condition
//! with a deadline.

mod support;

#[path = "controllers/daemonset.rs"]
mod daemonset;
#[path = "controllers/deployment.rs"]
mod deployment;
#[path = "controllers/endpoints.rs"]
mod endpoints;
#[path = "controllers/job.rs"]
mod job;
#[path = "controllers/nodelifecycle.rs"]
mod nodelifecycle;
#[path = "controllers/statefulset.rs"]
mod statefulset;

use kedge_apis::config::cloudcore::CloudCoreConfig;
use support::hollow::HollowNodes;
use support::{Backend, Cloud};

/// A cloud with its stand-in kubelet for hollow nodes.
pub struct Harness {
    /// The running cloudcore.
    pub cloud: Cloud,
    /// Hollow nodes the test adds.
    pub nodes: HollowNodes,
}

impl Harness {
    /// A cloud on SQLite (or etcd), configured by `adjust`.
    pub async fn start(etcd: bool, adjust: impl FnOnce(&mut CloudCoreConfig)) -> Self {
        let cloud = Cloud::start_with(Backend::start(etcd).await, adjust).await;
        let nodes = HollowNodes::start(cloud.client().await);
        Self { cloud, nodes }
    }

    /// Stops the cloud; it must exit cleanly.
    pub async fn stop(self) {
        drop(self.nodes);
        self.cloud.stop().await;
    }
}

/// Runs each scenario against a fresh cloud on SQLite.
macro_rules! scenarios {
    ($($module:ident :: $scenario:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                let harness = Harness::start(false, |_| {}).await;
                $module::$scenario(&harness).await;
                harness.stop().await;
            }
        )*
    };
}

scenarios!(
    deployment::deployments_with_one_and_three_replicas,
    deployment::deleted_pods_come_back,
    deployment::scale_up_and_down,
    deployment::rolling_update_and_undo,
    deployment::recreate_strategy,
    deployment::deletion_cascades_or_orphans,
    daemonset::daemonset_on_matching_nodes,
    daemonset::daemonset_rolling_update,
    statefulset::statefulset_ordered_names_and_scale,
    job::job_runs_to_completion,
    job::job_fails_after_backoff_limit,
    job::job_deadline_and_ttl,
    endpoints::endpoints_follow_ready_pods,
);

/// A node that stops reporting turns Unknown and is tainted; its edge pods
/// stay (the grace period is shortened so the test is quick).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_node_turns_unknown_and_keeps_edge_pods() {
    let harness = Harness::start(false, |config| {
        config
            .control_plane
            .controllers
            .node_lifecycle
            .node_monitor_grace_period = nodelifecycle::GRACE_SECONDS;
    })
    .await;
    nodelifecycle::silent_node_turns_unknown_and_keeps_edge_pods(&harness).await;
    harness.stop().await;
}

/// The same controllers against etcd: a Deployment rolls out and scales.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_on_etcd() {
    let harness = Harness::start(true, |_| {}).await;
    deployment::scale_up_and_down(&harness).await;
    harness.stop().await;
}
