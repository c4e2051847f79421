//! The custom resources cloudcore relies on, installed into the cluster
//! it uses when they are missing or differ.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kedge_apis::reliablesyncs::{ClusterObjectSync, ObjectSync};
use kube::CustomResourceExt;
use kube::api::{Api, PostParams};

/// How long a new definition may take to be served.
const ESTABLISH_WITHIN: Duration = Duration::from_secs(30);

/// Every definition cloudcore installs.
pub fn definitions() -> Vec<CustomResourceDefinition> {
    vec![ObjectSync::crd(), ClusterObjectSync::crd()]
}

/// Creates each of `definitions` that is missing, replaces one whose spec
/// differs, and waits until all are established.
pub async fn install(
    client: &kube::Client,
    definitions: Vec<CustomResourceDefinition>,
) -> Result<(), String> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for wanted in definitions {
        let name = wanted.metadata.name.clone().unwrap_or_default();
        match api.get_opt(&name).await {
            Ok(None) => {
                api.create(&PostParams::default(), &wanted)
                    .await
                    .map_err(|error| format!("cannot create CRD {name}: {error}"))?;
                tracing::info!(crd = %name, "installed");
            }
            Ok(Some(existing)) if existing.spec != wanted.spec => {
                let mut replacement = wanted.clone();
                replacement.metadata.resource_version = existing.metadata.resource_version;
                api.replace(&name, &PostParams::default(), &replacement)
                    .await
                    .map_err(|error| format!("cannot update CRD {name}: {error}"))?;
                tracing::info!(crd = %name, "updated");
            }
            Ok(Some(_)) => {}
            Err(error) => return Err(format!("cannot read CRD {name}: {error}")),
        }
        let established = kube::runtime::wait::await_condition(
            api.clone(),
            &name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        tokio::time::timeout(ESTABLISH_WITHIN, established)
            .await
            .map_err(|_| format!("CRD {name} was not established within {ESTABLISH_WITHIN:?}"))?
            .map_err(|error| format!("cannot watch CRD {name}: {error}"))?;
    }
    Ok(())
}
