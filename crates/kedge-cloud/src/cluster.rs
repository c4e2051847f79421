//! The Kubernetes API cloudcore's modules use: the embedded control
//! plane's, once it is up, or the cluster `kubeAPIConfig.kubeConfig`
//! names.

use std::sync::Arc;

use tokio::sync::{OnceCell, watch};

/// A Kubernetes client that becomes available once the cluster is
/// reachable. Clones share it.
#[derive(Clone)]
pub struct ClusterClient {
    provided: watch::Sender<Option<kube::Client>>,
    external: Arc<OnceCell<kube::Client>>,
    kubeconfig: Option<String>,
}

impl std::fmt::Debug for ClusterClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterClient")
            .field("provided", &self.provided.borrow().is_some())
            .field("kubeconfig", &self.kubeconfig)
            .finish()
    }
}

impl ClusterClient {
    /// A client the embedded control plane provides with
    /// [`provide`](Self::provide).
    pub fn embedded() -> Self {
        Self {
            provided: watch::Sender::new(None),
            external: Arc::default(),
            kubeconfig: None,
        }
    }

    /// A client for the cluster the kubeconfig file at `path` names; with
    /// an empty path, the cluster `KUBECONFIG`, `~/.kube/config` or the
    /// in-cluster service account names, as KubeEdge does.
    pub fn external(path: impl Into<String>) -> Self {
        Self {
            kubeconfig: Some(path.into()),
            ..Self::embedded()
        }
    }

    /// Makes `client` the one every waiting module gets.
    pub fn provide(&self, client: kube::Client) {
        self.provided.send_replace(Some(client));
    }

    /// The client, waiting until the embedded control plane provides it or
    /// reading the external kubeconfig on first use.
    pub async fn get(&self) -> Result<kube::Client, String> {
        if let Some(path) = &self.kubeconfig {
            return self
                .external
                .get_or_try_init(|| async {
                    if path.is_empty() {
                        kube::Client::try_default().await.map_err(|error| {
                            format!(
                                "no cluster to use: controlPlane is disabled, kubeAPIConfig.kubeConfig is empty and {error}"
                            )
                        })
                    } else {
                        client_from_kubeconfig(path).await
                    }
                })
                .await
                .cloned();
        }
        let mut provided = self.provided.subscribe();
        let client = provided
            .wait_for(Option::is_some)
            .await
            .map_err(|_| "the embedded control plane stopped".to_owned())?;
        client
            .clone()
            .ok_or_else(|| "the embedded control plane provided no client".to_owned())
    }
}

/// A client for the kubeconfig file at `path`.
pub async fn client_from_kubeconfig(path: &str) -> Result<kube::Client, String> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .map_err(|error| format!("cannot read {path}: {error}"))?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .map_err(|error| format!("cannot use {path}: {error}"))?;
    kube::Client::try_from(config).map_err(|error| format!("cannot build the API client: {error}"))
}
