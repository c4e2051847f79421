//! The custom resources cloudcore relies on, installed into the cluster
//! it uses when they are missing or differ.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kedge_apis::devices::{device_definition, device_model_definition};
use kedge_apis::reliablesyncs::{ClusterObjectSync, ObjectSync};
use kube::CustomResourceExt;
use kube::api::{Api, PostParams};

/// How long a new definition may take to be served.
const ESTABLISH_WITHIN: Duration = Duration::from_secs(30);

/// Every definition cloudcore installs.
pub fn definitions() -> Vec<CustomResourceDefinition> {
    vec![
        ObjectSync::crd(),
        ClusterObjectSync::crd(),
        device_model_definition(),
        device_definition(),
    ]
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

/// Where each definition is shipped as a manifest, for clusters cloudcore
/// attaches to (relative to the repository root; KubeEdge's file names).
pub const MANIFESTS: [(&str, &str); 4] = [
    (
        "reliablesyncs.kubeedge.io",
        "build/crds/reliablesyncs/objectsync_v1alpha1.yaml",
    ),
    (
        "reliablesyncs.kubeedge.io",
        "build/crds/reliablesyncs/cluster_objectsync_v1alpha1.yaml",
    ),
    (
        "devices.kubeedge.io",
        "build/crds/devices/devices_v1beta1_devicemodel.yaml",
    ),
    (
        "devices.kubeedge.io",
        "build/crds/devices/devices_v1beta1_device.yaml",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn repository_root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    /// The shipped manifests are the Rust types' definitions. Run with
    /// `KEDGE_WRITE_MANIFESTS=1` to write them after changing a type.
    #[test]
    fn shipped_manifests_match_the_rust_types() {
        let write = std::env::var_os("KEDGE_WRITE_MANIFESTS").is_some();
        for ((group, path), wanted) in MANIFESTS.iter().zip(definitions()) {
            assert_eq!(&wanted.spec.group, group, "{path}");
            let file = repository_root().join(path);
            if write {
                std::fs::create_dir_all(file.parent().expect("parent")).expect("directory");
                let text = serde_saphyr::to_string(&wanted).expect("yaml");
                std::fs::write(&file, text).expect("write manifest");
            }
            let text = std::fs::read_to_string(&file).unwrap_or_else(|error| {
                panic!("{path}: {error}; run with KEDGE_WRITE_MANIFESTS=1")
            });
            let shipped: CustomResourceDefinition =
                serde_saphyr::from_str(&text).unwrap_or_else(|error| panic!("{path}: {error}"));
            assert_eq!(
                shipped, wanted,
                "{path} is stale: run with KEDGE_WRITE_MANIFESTS=1"
            );
        }
    }
}
