//! The Endpoints and EndpointSlice controller: for every Service with a
//! selector (not `ExternalName`), an Endpoints object of the same name and
//! an EndpointSlice (`<service>-<suffix>`, owned by the Service) listing
//! the selected pods that have an IP: ready ones as addresses, others as
//! not-ready addresses (all as addresses with `publishNotReadyAddresses`),
//! with each service port's `targetPort` resolved (a number, or a named
//! container port of the pod). Both are written only when their content
//! changes; the Endpoints goes when its Service does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::Informers;
use crate::informer::Cache;
use crate::pods;

/// The label tying a slice to its Service.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// The label naming the slice's manager.
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller, as the slice's manager.
const MANAGER: &str = "endpointslice-controller.k8s.io";

struct Context {
    client: Client,
    pods: Cache<Pod>,
}

/// Runs the Endpoints and EndpointSlice controller until `token` is
/// cancelled.
pub fn run(
    client: Client,
    informers: &Informers,
    token: CancellationToken,
) -> BoxFuture<'static, ()> {
    let context = Arc::new(Context {
        client: client.clone(),
        pods: informers.pods.store(),
    });
    let controller = Controller::new(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    );
    let services = controller.store();
    let controller = controller
        .watches_shared_stream(informers.pods.subscribe(), move |pod: Arc<Pod>| {
            let namespace = pod.namespace().unwrap_or_default();
            let labels = pod.labels().clone();
            services
                .state()
                .into_iter()
                .filter(|s| s.metadata.namespace.as_deref() == Some(namespace.as_str()))
                .filter(|s| selects(s, &labels))
                .map(|s| ObjectRef::from_obj(s.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(token.clone().cancelled_owned())
        .run(reconcile, error_policy, context)
        .for_each(|_| futures::future::ready(()));
    Box::pin(async move {
        tokio::join!(controller, remove_orphans(client, token));
    })
}

fn error_policy(service: Arc<Service>, error: &kube::Error, _: Arc<Context>) -> Action {
    tracing::debug!(service = %service.name_any(), %error, "endpoints: reconcile failed; retrying");
    Action::requeue(Duration::from_secs(1))
}

fn selector(service: &Service) -> Option<&BTreeMap<String, String>> {
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    spec.selector.as_ref().filter(|s| !s.is_empty())
}

fn selects(service: &Service, labels: &BTreeMap<String, String>) -> bool {
    selector(service).is_some_and(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// The port number `target` means for `pod`: a number, or the number of
/// the pod's container port of that name.
pub fn resolve_port(target: Option<&IntOrString>, port: i32, pod: &Pod) -> Option<i32> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(number)) => Some(*number),
        Some(IntOrString::String(name)) => pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    }
}

/// The Endpoints `subsets` and the EndpointSlice `endpoints` and `ports`
/// for `service` over `candidates` (the namespace's pods).
pub fn compute(service: &Service, candidates: &[Arc<Pod>]) -> (Value, Value, Value) {
    let spec = service.spec.clone().unwrap_or_default();
    let publish_all = spec.publish_not_ready_addresses == Some(true);
    let mut selected: Vec<&Arc<Pod>> = candidates
        .iter()
        .filter(|p| selects(service, p.labels()))
        .filter(|p| p.metadata.deletion_timestamp.is_none() && !pods::is_finished(p))
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref())
                .is_some_and(|ip| !ip.is_empty())
        })
        .collect();
    selected.sort_by_key(|p| p.status.as_ref().and_then(|s| s.pod_ip.clone()));
    // Pods grouped by their resolved ports, as Endpoints subsets are.
    let mut subsets: BTreeMap<String, (Value, Vec<Value>, Vec<Value>)> = BTreeMap::new();
    let mut slice_endpoints = Vec::new();
    let mut slice_ports: Option<Value> = None;
    for pod in selected {
        let ports: Vec<Value> = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let number = resolve_port(p.target_port.as_ref(), p.port, pod)?;
                let mut port = json!({"port": number, "protocol": p.protocol.clone().unwrap_or_else(|| "TCP".to_owned())});
                if let Some(name) = &p.name {
                    port["name"] = json!(name);
                }
                Some(port)
            })
            .collect();
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default();
        let target = json!({"kind": "Pod", "name": pod.name_any(), "namespace": pod.namespace(), "uid": pod.uid()});
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let ready = pods::is_ready(pod);
        let address = json!({"ip": ip, "nodeName": node, "targetRef": target});
        let entry = subsets
            .entry(serde_json::to_string(&ports).unwrap_or_default())
            .or_insert_with(|| (json!(ports), Vec::new(), Vec::new()));
        if ready || publish_all {
            entry.1.push(address);
        } else {
            entry.2.push(address);
        }
        slice_ports.get_or_insert_with(|| json!(ports));
        slice_endpoints.push(json!({
            "addresses": [ip],
            "conditions": {"ready": ready || publish_all, "serving": ready, "terminating": false},
            "nodeName": node, "targetRef": target,
        }));
    }
    let subsets: Vec<Value> = subsets
        .into_values()
        .map(|(ports, ready, not_ready)| {
            let mut subset = json!({"ports": ports});
            if !ready.is_empty() {
                subset["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                subset["notReadyAddresses"] = json!(not_ready);
            }
            subset
        })
        .collect();
    (
        json!(subsets),
        json!(slice_endpoints),
        slice_ports.unwrap_or_else(|| json!([])),
    )
}

/// Drops nulls and empty lists, so a computed value compares equal to the
/// same value read back from the API.
fn normalized(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
                .map(|(k, v)| (k, normalized(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(normalized).collect()),
        other => other,
    }
}

async fn reconcile(service: Arc<Service>, context: Arc<Context>) -> Result<Action, kube::Error> {
    context.pods.ready().await;
    if service.metadata.deletion_timestamp.is_some() || selector(&service).is_none() {
        return Ok(Action::await_change());
    }
    let namespace = service.namespace().unwrap_or_default();
    let name = service.name_any();
    let candidates: Vec<Arc<Pod>> = context
        .pods
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(namespace.as_str()))
        .collect();
    let (subsets, slice_endpoints, slice_ports) = compute(&service, &candidates);

    let endpoints: Api<Endpoints> = Api::namespaced(context.client.clone(), &namespace);
    let current = endpoints.get_opt(&name).await?;
    let wanted = normalized(subsets);
    let have = current
        .as_ref()
        .map(|e| normalized(serde_json::to_value(&e.subsets).unwrap_or_default()));
    let have = have.map(|h| if h.is_null() { json!([]) } else { h });
    if have.as_ref() != Some(&wanted) {
        let mut object: Endpoints = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": namespace, "labels": service.labels()},
            "subsets": wanted,
        }))
        .expect("endpoints");
        match current {
            Some(current) => {
                object.metadata.resource_version = current.metadata.resource_version;
                endpoints
                    .replace(&name, &PostParams::default(), &object)
                    .await?;
            }
            None => {
                endpoints.create(&PostParams::default(), &object).await?;
            }
        }
    }

    let slices: Api<EndpointSlice> = Api::namespaced(context.client.clone(), &namespace);
    let existing = slices
        .list(&ListParams::default().labels(&format!("{SERVICE_NAME}={name}")))
        .await?;
    let mut labels = service.labels().clone();
    labels.insert(SERVICE_NAME.to_owned(), name.clone());
    labels.insert(MANAGED_BY.to_owned(), MANAGER.to_owned());
    let body = |metadata: Value| -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": metadata,
            "addressType": "IPv4",
            "endpoints": slice_endpoints,
            "ports": slice_ports,
        }))
        .expect("slice")
    };
    match existing.items.first() {
        Some(slice) => {
            let have = normalized(json!({"endpoints": slice.endpoints, "ports": slice.ports}));
            let want = normalized(json!({"endpoints": slice_endpoints, "ports": slice_ports}));
            if have != want {
                let mut updated = body(json!({"name": slice.name_any(), "namespace": namespace,
                    "labels": labels, "ownerReferences": [pods::controller_ref(service.as_ref())]}));
                updated.metadata.resource_version = slice.metadata.resource_version.clone();
                slices
                    .replace(&slice.name_any(), &PostParams::default(), &updated)
                    .await?;
            }
        }
        None => {
            let slice = body(
                json!({"generateName": format!("{name}-"), "namespace": namespace,
                "labels": labels, "ownerReferences": [pods::controller_ref(service.as_ref())]}),
            );
            slices.create(&PostParams::default(), &slice).await?;
        }
    }
    Ok(Action::await_change())
}

/// Deletes the Endpoints of Services that are deleted (the slices go with
/// their owner, through the garbage collector).
async fn remove_orphans(client: Client, token: CancellationToken) {
    let services: Api<Service> = Api::all(client.clone());
    let mut events = watcher(services, watcher::Config::default())
        .default_backoff()
        .boxed();
    loop {
        let event = tokio::select! {
            () = token.cancelled() => return,
            event = events.next() => match event {
                Some(Ok(event)) => event,
                Some(Err(_)) => continue,
                None => return,
            },
        };
        let watcher::Event::Delete(service) = event else {
            continue;
        };
        let namespace = service.namespace().unwrap_or_default();
        let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), &namespace);
        match endpoints
            .delete(&service.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => {
                tracing::debug!(service = %service.name_any(), %error, "endpoints: cannot delete");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, ready: bool) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
                "status": {"phase": "Running", "podIP": ip, "conditions": [
                    {"type": "Ready", "status": if ready { "True" } else { "False" }}]},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn ready_and_not_ready_pods_with_named_ports() {
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        }))
        .unwrap();
        let other: Arc<Pod> = Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "x", "namespace": "default"},
                "spec": {"containers": []}, "status": {"podIP": "10.0.0.9"}}))
            .unwrap(),
        );
        let (subsets, endpoints, ports) = compute(
            &service,
            &[
                pod("a", "10.0.0.2", true),
                pod("b", "10.0.0.1", false),
                other,
            ],
        );
        assert_eq!(subsets[0]["ports"][0]["port"], 8080);
        assert_eq!(subsets[0]["addresses"][0]["ip"], "10.0.0.2");
        assert_eq!(subsets[0]["notReadyAddresses"][0]["ip"], "10.0.0.1");
        assert_eq!(endpoints.as_array().unwrap().len(), 2);
        assert_eq!(ports[0]["port"], 8080);
        assert_eq!(
            resolve_port(Some(&IntOrString::Int(9)), 80, &pod("c", "1", true)),
            Some(9)
        );
        assert_eq!(resolve_port(None, 80, &pod("c", "1", true)), Some(80));
    }
}
