//! Edge → cloud: what edge nodes report and ask (protocol.md §6.2–6.4),
//! written to or read from the API, and answered through CloudHub.
//!
//! | resource (after `node/<node>/`) | operation | does | reply content |
//! |---|---|---|---|
//! | `<ns>/node/<n>` | insert | creates the Node (edge label added) | `{"Object","Err"}` |
//! | `<ns>/node/<n>` | query | reads the Node | the Node, or `{"ErrStatus"}` |
//! | `<ns>/node/<n>` | update | merges its labels and annotations | `"OK"` or the error |
//! | `<ns>/nodepatch/<n>` | patch | strategic-merge patch of the Node's status | `{"Object","Err"}` |
//! | `<ns>/podpatch/<p>` | patch | strategic-merge patch of the pod's status | `{"Object","Err"}` |
//! | `<ns>/pod/<p>` | insert | creates the mirror pod of a static pod of the node (bound to it, annotation `kubernetes.io/config.mirror`) | `{"Object","Err"}` |
//! | `<ns>/pod/<p>` | delete | deletes the pod (its UID as precondition) | `"OK"` or the error |
//! | `<ns>/configmap/<c>`, `<ns>/secret/<s>` | query | reads the object | the object, or `{"ErrStatus"}` |
//! | `<ns>/serviceaccounttoken/<sa>` | query | creates a token (TokenRequest) | the TokenRequest, or `{"ErrStatus"}` |
//! | `kube-node-lease/lease/<n>` | query, insert, update | reads, creates, replaces the Lease | `{"Object","Err"}` |
//!
//! A node acts only for itself, as Kubernetes' node authorizer allows: its
//! own Node and Lease, pods bound to it, and ConfigMaps and Secrets its
//! pods use. Anything else is refused with a Forbidden `Status`, counted,
//! and never reaches the API.

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret, ServiceAccount};
use kedge_message::content::ObjectResp;
use kedge_message::resource::NodeResource;
use kedge_message::{Message, group, module, operation, resource_type};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::downstream::{Caches, content_of};

/// The annotation that marks a mirror pod, the API's copy of a static pod.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
use super::locations::{Dependency, EDGE_NODE_LABEL};

/// Why a request was refused without reaching the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The resource is not `node/<node>/<ns>/<type>/<name>`.
    Malformed,
    /// The node asked about what is not its own.
    Forbidden,
    /// No handler for this type and operation.
    Unsupported,
}

impl Refusal {
    /// The label of the refusal counter.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Forbidden => "forbidden",
            Self::Unsupported => "unsupported",
        }
    }
}

/// A Kubernetes `Status` for `error`.
fn status_of(error: &kube::Error) -> Value {
    match error {
        kube::Error::Api(response) => json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": response.message,
            "reason": response.reason,
            "code": response.code,
        }),
        other => status(500, "InternalError", &other.to_string()),
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

/// The reply to `request` about `resource`: EdgeController's response,
/// group `resource`, the same resource (CloudHub trims the node prefix).
fn reply(request: &Message, resource: &NodeResource, content: Value, version: &str) -> Message {
    Message::new(
        module::EDGE_CONTROLLER,
        group::RESOURCE,
        operation::RESPONSE,
        resource.to_string(),
        content,
    )
    .with_parent_id(request.id())
    .with_resource_version(version)
}

/// `{"Object","Err"}` of a write or read.
fn object_resp<K: Resource<DynamicType = ()> + Serialize>(
    request: &Message,
    resource: &NodeResource,
    result: Result<K, kube::Error>,
) -> Message {
    match result {
        Ok(object) => {
            let version = object.resource_version().unwrap_or_default();
            reply(
                request,
                resource,
                ObjectResp::ok(content_of(&object)).to_content(),
                &version,
            )
        }
        Err(error) => reply(
            request,
            resource,
            ObjectResp::status_error(status_of(&error)).to_content(),
            "",
        ),
    }
}

/// The object itself, or `{"ErrStatus"}` (configmap, secret, node
/// queries).
fn object_or_error<K: Resource<DynamicType = ()> + Serialize>(
    request: &Message,
    resource: &NodeResource,
    result: Result<K, kube::Error>,
) -> Message {
    match result {
        Ok(object) => {
            let version = object.resource_version().unwrap_or_default();
            reply(request, resource, content_of(&object), &version)
        }
        Err(error) => reply(
            request,
            resource,
            json!({ "ErrStatus": status_of(&error) }),
            "",
        ),
    }
}

/// `"OK"`, or the error's message.
fn ok_or_error<T>(
    request: &Message,
    resource: &NodeResource,
    result: Result<T, kube::Error>,
) -> Message {
    let content = match result {
        Ok(_) => Value::String(kedge_message::content::OK.to_owned()),
        Err(error) => Value::String(error.to_string()),
    };
    reply(request, resource, content, "")
}

/// A strategic-merge patch the edge sends as a JSON string (or, leniently,
/// as an object).
fn patch_of(content: &Value) -> Result<Value, String> {
    match content {
        Value::String(text) => {
            serde_json::from_str(text).map_err(|e| format!("the patch is not JSON: {e}"))
        }
        Value::Object(_) => Ok(content.clone()),
        _ => Err("the patch must be a JSON string".to_owned()),
    }
}

/// An object from message content (an object, or JSON in a string).
fn object_of<K: DeserializeOwned>(content: &Value) -> Result<K, String> {
    let value = match content {
        Value::String(text) => {
            serde_json::from_str(text).map_err(|e| format!("the content is not JSON: {e}"))?
        }
        other => other.clone(),
    };
    serde_json::from_value(value).map_err(|e| format!("the content is not the object: {e}"))
}

/// Answers upstream requests from the API.
#[derive(Clone)]
pub struct Upstream {
    client: kube::Client,
    caches: Caches,
}

impl Upstream {
    /// Handlers over `client`, authorizing against `caches`.
    pub fn new(client: kube::Client, caches: Caches) -> Self {
        Self { client, caches }
    }

    /// Handles `msg`, which CloudHub delivered from its node with the
    /// resource `node/<node>/…`; the reply, if it needs one (an
    /// acknowledgement needs none).
    pub async fn handle(&self, msg: &Message) -> Result<Option<Message>, Refusal> {
        let op = msg.router.operation.as_str();
        if op == operation::RESPONSE || op == operation::ERROR || op == operation::KEEPALIVE {
            return Ok(None);
        }
        let resource = NodeResource::parse(&msg.router.resource).map_err(|_| Refusal::Malformed)?;
        let node = resource.node.clone();
        let name = resource.name.clone().ok_or(Refusal::Malformed)?;
        let namespace = resource.namespace.clone();
        let bad_request = |message: String| {
            Ok(Some(reply(
                msg,
                &resource,
                json!({"ErrStatus": status(400, "BadRequest", &message)}),
                "",
            )))
        };
        let answer = match (resource.resource_type.as_str(), op) {
            (resource_type::NODE, operation::INSERT) => {
                self.own(&node, &name)?;
                let mut object: Node = match object_of(&msg.content) {
                    Ok(object) => object,
                    Err(message) => return bad_request(message),
                };
                object.metadata.name = Some(name.clone());
                object
                    .labels_mut()
                    .entry(EDGE_NODE_LABEL.to_owned())
                    .or_default();
                let api: Api<Node> = Api::all(self.client.clone());
                object_resp(
                    msg,
                    &resource,
                    api.create(&PostParams::default(), &object).await,
                )
            }
            (resource_type::NODE, operation::QUERY | operation::GET) => {
                self.own(&node, &name)?;
                let api: Api<Node> = Api::all(self.client.clone());
                object_or_error(msg, &resource, api.get(&name).await)
            }
            (resource_type::NODE, operation::UPDATE) => {
                self.own(&node, &name)?;
                let object: Node = match object_of(&msg.content) {
                    Ok(object) => object,
                    Err(message) => return bad_request(message),
                };
                let patch = json!({"metadata": {
                    "labels": object.metadata.labels,
                    "annotations": object.metadata.annotations,
                }});
                let api: Api<Node> = Api::all(self.client.clone());
                ok_or_error(
                    msg,
                    &resource,
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await,
                )
            }
            (resource_type::NODE_PATCH, operation::PATCH) => {
                self.own(&node, &name)?;
                let patch = match patch_of(&msg.content) {
                    Ok(patch) => patch,
                    Err(message) => return bad_request(message),
                };
                let api: Api<Node> = Api::all(self.client.clone());
                object_resp(
                    msg,
                    &resource,
                    api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                        .await,
                )
            }
            (resource_type::POD_PATCH, operation::PATCH) => {
                self.pod_on(&node, &namespace, &name)?;
                let patch = match patch_of(&msg.content) {
                    Ok(patch) => patch,
                    Err(message) => return bad_request(message),
                };
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
                object_resp(
                    msg,
                    &resource,
                    api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                        .await,
                )
            }
            (resource_type::POD, operation::INSERT) => {
                // Only the mirror of one of the node's own static pods.
                let mut pod: Pod = match object_of(&msg.content) {
                    Ok(pod) => pod,
                    Err(message) => return bad_request(message),
                };
                let bound = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
                let mirror = pod
                    .metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION));
                if bound != Some(node.as_str()) || !mirror {
                    return Err(Refusal::Forbidden);
                }
                pod.metadata.name = Some(name.clone());
                pod.metadata.namespace = Some(namespace.clone());
                pod.metadata.uid = None;
                pod.metadata.resource_version = None;
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
                object_resp(
                    msg,
                    &resource,
                    api.create(&PostParams::default(), &pod).await,
                )
            }
            (resource_type::POD, operation::DELETE) => {
                let uid = self.pod_on(&node, &namespace, &name)?;
                let mut params = DeleteParams::default();
                if let Some(grace) = msg
                    .content
                    .get("gracePeriodSeconds")
                    .and_then(Value::as_u64)
                {
                    params.grace_period_seconds = Some(u32::try_from(grace).unwrap_or(u32::MAX));
                }
                params.preconditions = Some(Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                });
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
                ok_or_error(msg, &resource, api.delete(&name, &params).await)
            }
            (resource_type::CONFIGMAP, operation::QUERY | operation::GET) => {
                self.needs(
                    &node,
                    Dependency::ConfigMap(namespace.clone(), name.clone()),
                )?;
                let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &namespace);
                object_or_error(msg, &resource, api.get(&name).await)
            }
            (resource_type::SECRET, operation::QUERY | operation::GET) => {
                self.needs(&node, Dependency::Secret(namespace.clone(), name.clone()))?;
                let api: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
                object_or_error(msg, &resource, api.get(&name).await)
            }
            (resource_type::SERVICE_ACCOUNT_TOKEN, operation::QUERY | operation::GET) => {
                self.service_account_used(&node, &namespace, &name)?;
                let request: TokenRequest = match object_of(&msg.content) {
                    Ok(request) => request,
                    Err(message) => return bad_request(message),
                };
                let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &namespace);
                let created = api
                    .create_token_request(&name, &PostParams::default(), &request)
                    .await;
                match created {
                    Ok(token) => reply(msg, &resource, content_of(&token), ""),
                    Err(error) => {
                        reply(msg, &resource, json!({"ErrStatus": status_of(&error)}), "")
                    }
                }
            }
            (resource_type::LEASE, operation::QUERY | operation::GET) => {
                self.own(&node, &name)?;
                let api: Api<Lease> = Api::namespaced(self.client.clone(), &namespace);
                object_resp(msg, &resource, api.get(&name).await)
            }
            (resource_type::LEASE, operation::INSERT | operation::UPDATE) => {
                self.own(&node, &name)?;
                let mut lease: Lease = match object_of(&msg.content) {
                    Ok(lease) => lease,
                    Err(message) => return bad_request(message),
                };
                lease.metadata.name = Some(name.clone());
                lease.metadata.namespace = Some(namespace.clone());
                let api: Api<Lease> = Api::namespaced(self.client.clone(), &namespace);
                let result = if op == operation::INSERT {
                    api.create(&PostParams::default(), &lease).await
                } else {
                    api.replace(&name, &PostParams::default(), &lease).await
                };
                object_resp(msg, &resource, result)
            }
            _ => return Err(Refusal::Unsupported),
        };
        Ok(Some(answer))
    }

    /// A node's own Node or Lease.
    fn own(&self, node: &str, name: &str) -> Result<(), Refusal> {
        if node == name {
            Ok(())
        } else {
            Err(Refusal::Forbidden)
        }
    }

    /// The UID of pod `namespace/name`, which must be bound to `node`.
    fn pod_on(&self, node: &str, namespace: &str, name: &str) -> Result<String, Refusal> {
        let pod = self
            .caches
            .pods
            .get(&kube::runtime::reflector::ObjectRef::new(name).within(namespace))
            .ok_or(Refusal::Forbidden)?;
        let bound = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        if bound == Some(node) {
            Ok(pod.metadata.uid.clone().unwrap_or_default())
        } else {
            Err(Refusal::Forbidden)
        }
    }

    /// `dependency` must be used by a pod on `node`.
    fn needs(&self, node: &str, dependency: Dependency) -> Result<(), Refusal> {
        let locations = self
            .caches
            .locations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if locations.needs(node, &dependency) {
            Ok(())
        } else {
            Err(Refusal::Forbidden)
        }
    }

    /// The ServiceAccount `namespace/name` must be that of a pod on `node`.
    fn service_account_used(&self, node: &str, namespace: &str, name: &str) -> Result<(), Refusal> {
        let used = self.caches.pods.state().iter().any(|pod| {
            pod.metadata.namespace.as_deref() == Some(namespace)
                && pod.spec.as_ref().is_some_and(|spec| {
                    spec.node_name.as_deref() == Some(node)
                        && spec.service_account_name.as_deref().unwrap_or("default") == name
                })
        });
        if used {
            Ok(())
        } else {
            Err(Refusal::Forbidden)
        }
    }

    /// The reply to `msg` refused for `refusal`: a Kubernetes `Status`
    /// (403 Forbidden, or 405 MethodNotAllowed for what no handler takes);
    /// none when the resource names no object.
    pub fn refusal_reply(msg: &Message, refusal: Refusal) -> Option<Message> {
        let resource = NodeResource::parse(&msg.router.resource).ok()?;
        let (code, reason, message) = match refusal {
            Refusal::Malformed => return None,
            Refusal::Forbidden => (
                403,
                "Forbidden",
                format!(
                    "node {:?} may not {} {}: not its own, nor used by its pods",
                    resource.node,
                    msg.router.operation,
                    resource.edge_form()
                ),
            ),
            Refusal::Unsupported => (
                405,
                "MethodNotAllowed",
                format!(
                    "edgecontroller does not handle {} of {}",
                    msg.router.operation, resource.resource_type
                ),
            ),
        };
        Some(reply(
            msg,
            &resource,
            json!({"ErrStatus": status(code, reason, &message)}),
            "",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_come_as_strings_or_objects() {
        assert_eq!(
            patch_of(&Value::String(r#"{"status":{"phase":"Running"}}"#.into())),
            Ok(json!({"status": {"phase": "Running"}}))
        );
        assert_eq!(patch_of(&json!({"a": 1})), Ok(json!({"a": 1})));
        assert!(patch_of(&Value::String("not json".into())).is_err());
        assert!(patch_of(&json!(3)).is_err());
    }

    #[test]
    fn replies_answer_the_request_from_edgecontroller() {
        let request = Message::new(
            "edged",
            "meta",
            "query",
            "node/edge-1/default/configmap/cfg",
            Value::Null,
        );
        let resource = NodeResource::parse(&request.router.resource).expect("resource");
        let answer = reply(&request, &resource, json!({"kind": "ConfigMap"}), "7");
        assert_eq!(answer.parent_id(), request.id());
        assert_eq!(answer.router.source, "edgecontroller");
        assert_eq!(answer.router.group, "resource");
        assert_eq!(answer.router.operation, "response");
        assert_eq!(answer.router.resource, "node/edge-1/default/configmap/cfg");
        assert_eq!(answer.header.resource_version, "7");

        let forbidden = Upstream::refusal_reply(&request, Refusal::Forbidden).expect("reply");
        assert_eq!(forbidden.content["ErrStatus"]["code"], 403);
        assert_eq!(forbidden.content["ErrStatus"]["reason"], "Forbidden");
    }
}
