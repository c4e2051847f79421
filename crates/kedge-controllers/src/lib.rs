//! The embedded control plane's scheduler and workload controllers (the
//! work of kube-scheduler and kube-controller-manager). Each is a client
//! of the Kubernetes API (kube-rs), never of the storage beneath it, so it
//! behaves the same against any API server.
//!
//! - [`scheduler`]: binds pending pods to nodes.
//! - [`replicaset`]: keeps each ReplicaSet's pod count.
//! - [`deployment`]: rolls Deployments out through ReplicaSets.
//! - [`daemonset`]: a DaemonSet pod on every matching node.
//! - [`statefulset`]: StatefulSet pods with stable ordinal names.
//! - [`job`]: Jobs to completion, and their TTL after finishing.
//! - [`endpoints`]: Endpoints and EndpointSlices of Services.
//! - [`nodelifecycle`]: nodes that stop reporting turn Unknown.
//!
//! The garbage collector, the namespace controller and default service
//! accounts run inside the API server (`kedge-apiserver`'s controllers).

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Node, Pod};
use kedge_apis::config::cloudcore::ControlPlaneControllers;
use kube::Client;
use kube::api::Api;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod events;
pub mod informer;
pub mod job;
pub mod nodelifecycle;
pub mod pods;
pub mod replicaset;
pub mod scheduler;
pub mod statefulset;

use informer::Informer;

/// The shared caches the controllers read: every pod and every node, each
/// watched once.
pub struct Informers {
    /// Every pod of the cluster.
    pub pods: Informer<Pod>,
    /// Every node of the cluster.
    pub nodes: Informer<Node>,
}

impl Informers {
    /// Informers over `client`'s cluster; they watch once [`run`] starts them.
    pub fn new(client: &Client) -> Self {
        Self {
            pods: Informer::new(Api::all(client.clone())),
            nodes: Informer::new(Api::all(client.clone())),
        }
    }
}

/// Starts the enabled controllers on `tracker`; they stop when `token` is
/// cancelled.
pub fn run(
    client: Client,
    config: &ControlPlaneControllers,
    token: CancellationToken,
    tracker: &TaskTracker,
) {
    let informers = Informers::new(&client);
    let mut controllers: Vec<(&str, BoxFuture<'static, ()>)> = Vec::new();
    if config.scheduler.enable {
        let future = scheduler::run(client.clone(), &informers, token.clone());
        controllers.push(("scheduler", future));
    }
    if config.replica_set.enable {
        let future = replicaset::run(client.clone(), &informers, token.clone());
        controllers.push(("replicaset", future));
    }
    if config.deployment.enable {
        let future = deployment::run(client.clone(), &informers, token.clone());
        controllers.push(("deployment", future));
    }
    if config.daemon_set.enable {
        let future = daemonset::run(client.clone(), &informers, token.clone());
        controllers.push(("daemonset", future));
    }
    if config.stateful_set.enable {
        let future = statefulset::run(client.clone(), &informers, token.clone());
        controllers.push(("statefulset", future));
    }
    if config.job.enable {
        let future = job::run(client.clone(), &informers, token.clone());
        controllers.push(("job", future));
    }
    if config.endpoints.enable {
        let future = endpoints::run(client.clone(), &informers, token.clone());
        controllers.push(("endpoints", future));
    }
    if config.node_lifecycle.enable {
        let future = nodelifecycle::run(
            client.clone(),
            &informers,
            config.node_lifecycle.clone(),
            token.clone(),
        );
        controllers.push(("nodelifecycle", future));
    }
    for (name, future) in controllers {
        tracing::info!(controller = name, "controller started");
        tracker.spawn(async move {
            future.await;
            tracing::info!(controller = name, "controller stopped");
        });
    }
    // Subscriptions are taken; the shared watches may start.
    let Informers { pods, nodes } = informers;
    let pods_token = token.clone();
    tracker.spawn(async move {
        pods.run(pods_token).await;
        tracing::info!("pod informer stopped");
    });
    tracker.spawn(async move {
        nodes.run(token).await;
        tracing::info!("node informer stopped");
    });
}
