//! Kubernetes events about the objects the controllers manage, as
//! `kubectl describe` and `kubectl get events` show them.

use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

/// Whether an event reports normal progress or a problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// `Normal`.
    Normal,
    /// `Warning`.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

/// Records a core/v1 event about `object` from `component`; a failure is
/// logged, never returned, as events are best effort.
pub async fn record<K>(
    client: &Client,
    component: &str,
    object: &K,
    kind: EventType,
    reason: &str,
    message: &str,
) where
    K: Resource<DynamicType = ()>,
{
    let namespace = object.namespace().unwrap_or_else(|| "default".to_owned());
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let event: Event = match serde_json::from_value(json!({
        "metadata": {"generateName": format!("{}.", object.name_any()), "namespace": namespace},
        "involvedObject": {"apiVersion": K::api_version(&()), "kind": K::kind(&()),
                           "name": object.name_any(), "namespace": object.namespace(),
                           "uid": object.uid(), "resourceVersion": object.resource_version()},
        "reason": reason, "message": message, "type": kind.as_str(), "count": 1,
        "firstTimestamp": now, "lastTimestamp": now,
        "source": {"component": component},
        "reportingComponent": component,
    })) {
        Ok(event) => event,
        Err(error) => {
            tracing::warn!(%error, "cannot build an event");
            return;
        }
    };
    if let Err(error) = Api::<Event>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &event)
        .await
    {
        tracing::debug!(%error, reason, "cannot record an event");
    }
}
