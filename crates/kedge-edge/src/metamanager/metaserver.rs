//! The MetaServer: a local Kubernetes API for edge applications, served
//! from MetaManager's store (edged.md §1.9).
//!
//! Plain HTTP on `modules.metaManager.metaServer.server` (by default
//! `127.0.0.1:10550`), as KubeEdge serves it without the
//! `requireAuthorization` feature gate. It serves
//!
//! * `GET /version`, `/healthz`, `/livez`, `/readyz`, and legacy discovery
//!   (`/api`, `/api/v1`, `/apis`, `/apis/coordination.k8s.io`,
//!   `/apis/coordination.k8s.io/v1`) for the served types only, so that
//!   kubectl works against it (KubeEdge serves no discovery);
//! * get, list and watch of pods, configmaps, secrets, services,
//!   endpoints, nodes (core v1) and leases (coordination.k8s.io/v1), in one
//!   namespace or all, from `meta_v2`, online or not. Lists take
//!   `labelSelector` and `fieldSelector` (`metadata.name`,
//!   `metadata.namespace` and the kind's own fields such as
//!   `spec.nodeName`), and answer as JSON, YAML or a `Table` as the
//!   client's `Accept` asks;
//! * watches (`?watch=true` or `/watch/…`) as newline-delimited
//!   `{"type","object"}` events: from no revision (or `0`), ADDED for every
//!   object then the changes; from a revision, the changes after it, or one
//!   `ERROR` event with a 410 `Expired` Status when the store no longer
//!   remembers them (the client then lists again);
//! * create, update, patch and delete by passing them to the cloud through
//!   EdgeHub as KubeEdge's MetaServer does: an `Application` for
//!   DynamicController (source `metaserver`, resource and operation
//!   `null`), answered synchronously. With the link down they are refused
//!   at once with a 503 `ServiceUnavailable` Status.
//!
//! Objects carry as `metadata.resourceVersion` the store's local revision
//! of their last change ([`store::served_object`]), so lists, objects and
//! watch events agree on one sequence a watch can resume from. An update
//! passed to the cloud gets the cloud's resourceVersion back in place of
//! the local one it read.
//!
//! Every failure is a Kubernetes `Status`. Not served: `limit`/`continue`
//! paging (lists are whole), `deletecollection`, and subresources other
//! than reads of `status`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use kedge_apiserver::codec::{self, Representation};
use kedge_apiserver::filter::ObjectFilter;
use kedge_apiserver::request::{ListOptions, Query, ResourceRequest, Verb, parse_resource_path};
use kedge_apiserver::resources::{Catalog, ResourceType};
use kedge_apiserver::status::{Reason, StatusError};
use kedge_apiserver::{discovery, table};
use kedge_bus::{BusError, BusHandle, CancellationToken};
use kedge_message::{Message, content, group, operation, source};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};

use super::store::{self, Change, ChangeKind, MetaStore, ResumeError, SERVED_TYPES, ServedType};

/// How long a watch without `timeoutSeconds` stays open.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The largest request body accepted (kube-apiserver's limit).
const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// The group leases are served in.
const COORDINATION_GROUP: &str = "coordination.k8s.io";

/// The MetaServer's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaServerSettings {
    /// Where to listen (`metaServer.server`, `host:port`).
    pub address: String,
    /// How long a write may wait for the cloud (KubeEdge: 10 s).
    pub write_timeout: Duration,
}

impl MetaServerSettings {
    /// Listen on `address`, with KubeEdge's 10 s write timeout.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// How the MetaServer reaches the cloud: the bus, EdgeHub's module name,
/// and the link state MetaManager follows.
#[derive(Debug, Clone)]
pub struct Uplink {
    bus: Option<BusHandle>,
    cloud_module: String,
    connected: watch::Receiver<bool>,
    timeout: Duration,
}

impl Uplink {
    /// Writes go to `cloud_module` on `bus` while `connected` says the link
    /// is up, waiting at most `timeout` for the answer.
    pub fn new(
        bus: BusHandle,
        cloud_module: String,
        connected: watch::Receiver<bool>,
        timeout: Duration,
    ) -> Self {
        Self {
            bus: Some(bus),
            cloud_module,
            connected,
            timeout,
        }
    }

    /// No way to the cloud: every write is refused as offline.
    pub fn offline() -> Self {
        Self {
            bus: None,
            cloud_module: String::new(),
            connected: watch::channel(false).1,
            timeout: Duration::ZERO,
        }
    }

    fn bus_if_connected(&self) -> Option<&BusHandle> {
        self.bus.as_ref().filter(|_| *self.connected.borrow())
    }
}

struct Inner {
    store: MetaStore,
    uplink: Uplink,
    node_name: String,
    catalog: Catalog,
}

/// The MetaServer's request handling; cheap to clone.
#[derive(Clone)]
pub struct MetaServer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MetaServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaServer")
            .field("store", &self.inner.store)
            .field("node_name", &self.inner.node_name)
            .finish_non_exhaustive()
    }
}

/// Serves `server` on `listener` until `shutdown` is cancelled; open
/// watches end then too.
pub async fn serve(listener: TcpListener, server: MetaServer, shutdown: CancellationToken) {
    let router = server.router(shutdown.clone());
    if let Err(error) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(%error, "the MetaServer stopped");
    }
}

/// A JSON response.
fn json_response(code: StatusCode, content_type: &'static str, body: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, content_type)],
        body.to_string(),
    )
        .into_response()
}

/// The response for a failure: its `Status` object.
fn status_response(error: &StatusError) -> Response {
    let code = StatusCode::from_u16(error.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, codec::JSON, &error.to_status())
}

fn not_served() -> StatusError {
    StatusError::new(
        Reason::NotFound,
        "the server could not find the requested resource",
    )
}

fn store_failed(error: &store::StoreError) -> StatusError {
    StatusError::internal(format!("the edge store failed: {error}"))
}

/// Per-request context for the handlers.
struct Call {
    served: &'static ServedType,
    resource: Arc<ResourceType>,
    request: ResourceRequest,
    query: Query,
    representation: Representation,
}

impl MetaServer {
    /// A MetaServer over `store`, writing through `uplink`, for the node
    /// `node_name`.
    pub fn new(store: MetaStore, uplink: Uplink, node_name: &str) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                uplink,
                node_name: node_name.to_owned(),
                catalog: Catalog::new(),
            }),
        }
    }

    /// The HTTP routes. Watches end when `shutdown` is cancelled.
    pub fn router(&self, shutdown: CancellationToken) -> Router {
        Router::new()
            .fallback(handle)
            .with_state((self.clone(), shutdown))
    }

    async fn dispatch(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: Bytes,
        shutdown: CancellationToken,
    ) -> Result<Response, StatusError> {
        let path = uri.path().trim_end_matches('/');
        if method == Method::GET {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("127.0.0.1");
            let document = match path {
                "/version" => Some(discovery::version()),
                "/api" => Some(discovery::core_versions(host)),
                "/api/v1" => Some(self.resource_list("")),
                "/apis" => Some(json!({
                    "kind": "APIGroupList", "apiVersion": "v1",
                    "groups": [coordination_group(false)],
                })),
                "/apis/coordination.k8s.io" => Some(coordination_group(true)),
                "/apis/coordination.k8s.io/v1" => Some(self.resource_list(COORDINATION_GROUP)),
                "/healthz" | "/livez" | "/readyz" => {
                    return Ok(([(header::CONTENT_TYPE, "text/plain")], "ok").into_response());
                }
                _ => None,
            };
            if let Some(document) = document {
                return Ok(json_response(StatusCode::OK, codec::JSON, &document));
            }
        }
        let query = Query::parse(uri.query());
        let watch_param = query.flag("watch")?;
        let request = parse_resource_path(method.as_str(), path, watch_param, |g, v, r| {
            ServedType::by_path(g, v, r).is_some_and(|t| t.namespaced)
        })
        .ok_or_else(not_served)?;
        let served = ServedType::by_path(&request.group, &request.version, &request.resource)
            .ok_or_else(not_served)?;
        let resource = self
            .inner
            .catalog
            .get(served.group, served.version, served.plural)
            .ok_or_else(not_served)?;
        if served.namespaced
            && request.namespace.is_none()
            && !matches!(request.verb, Verb::List | Verb::Watch)
        {
            return Err(not_served());
        }
        let representation =
            codec::negotiate(headers.get(header::ACCEPT).and_then(|a| a.to_str().ok()))?;
        let call = Call {
            served,
            resource,
            request,
            query,
            representation,
        };
        match call.request.verb {
            Verb::Get => self.get(&call).await,
            Verb::List => self.list(&call).await,
            Verb::Watch => self.watch(call, shutdown).await,
            Verb::Create | Verb::Update | Verb::Patch | Verb::Delete => {
                self.write(&call, headers, body).await
            }
            Verb::DeleteCollection => Err(StatusError::new(
                Reason::MethodNotAllowed,
                "deletecollection is not supported by the edge MetaServer",
            )),
        }
    }

    /// `/api/v1` or `/apis/coordination.k8s.io/v1`: the served types of the
    /// group, without the verbs and subresources the MetaServer lacks.
    fn resource_list(&self, api_group: &str) -> Value {
        let resources: Vec<Value> = SERVED_TYPES
            .iter()
            .filter(|t| t.group == api_group)
            .filter_map(|t| self.inner.catalog.get(t.group, t.version, t.plural))
            .filter_map(|r| r.discovery_entries().into_iter().next())
            .map(|mut entry| {
                if let Some(verbs) = entry.get_mut("verbs").and_then(Value::as_array_mut) {
                    verbs.retain(|v| v != "deletecollection");
                }
                entry
            })
            .collect();
        let group_version = if api_group.is_empty() {
            "v1".to_owned()
        } else {
            format!("{api_group}/v1")
        };
        json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": resources,
        })
    }

    fn respond(
        &self,
        call: &Call,
        code: StatusCode,
        body: &Value,
    ) -> Result<Response, StatusError> {
        match call.representation {
            Representation::Yaml => {
                let text = serde_saphyr::to_string(body).map_err(|error| {
                    StatusError::internal(format!("cannot encode YAML: {error}"))
                })?;
                Ok((code, [(header::CONTENT_TYPE, codec::YAML)], text).into_response())
            }
            Representation::Json | Representation::Table => {
                let content_type = if body.get("kind").and_then(Value::as_str) == Some("Table") {
                    codec::TABLE_CONTENT_TYPE
                } else {
                    codec::JSON
                };
                Ok(json_response(code, content_type, body))
            }
        }
    }

    async fn get(&self, call: &Call) -> Result<Response, StatusError> {
        let request = &call.request;
        if request
            .subresource
            .as_deref()
            .is_some_and(|s| s != "status")
        {
            return Err(not_served());
        }
        let name = request.name.clone().unwrap_or_default();
        let namespace = request.namespace.clone().unwrap_or_default();
        let served = call.served;
        let found = self
            .inner
            .store
            .blocking(move |store| store.get_served(served, &namespace, &name))
            .await
            .map_err(|e| store_failed(&e))?;
        let Some(found) = found else {
            return Err(StatusError::not_found(
                served.group,
                served.plural,
                request.name.as_deref().unwrap_or_default(),
            ));
        };
        let body = if call.representation == Representation::Table {
            table::table(&call.resource, &[found.object], &call.query, None, None)?
        } else {
            found.object
        };
        self.respond(call, StatusCode::OK, &body)
    }

    fn filter(&self, call: &Call, options: &ListOptions) -> Result<ObjectFilter, StatusError> {
        let filter = ObjectFilter::new(
            &call.resource,
            &options.label_selector,
            &options.field_selector,
        )?;
        Ok(match call.request.name.as_deref() {
            Some(name) => filter.with_name(name),
            None => filter,
        })
    }

    async fn list(&self, call: &Call) -> Result<Response, StatusError> {
        let options = ListOptions::from_query(&call.query)?;
        let filter = self.filter(call, &options)?;
        let served = call.served;
        let namespace = call.request.namespace.clone();
        let (mut items, revision) = self
            .inner
            .store
            .blocking(move |store| store.list_served(served, namespace.as_deref()))
            .await
            .map_err(|e| store_failed(&e))?;
        items.retain(|item| filter.matches(item));
        let body = if call.representation == Representation::Table {
            table::table(
                &call.resource,
                &items,
                &call.query,
                Some(revision.to_string()),
                None,
            )?
        } else {
            json!({
                "kind": format!("{}List", served.kind),
                "apiVersion": served.api_version(),
                "metadata": {"resourceVersion": revision.to_string()},
                "items": items,
            })
        };
        self.respond(call, StatusCode::OK, &body)
    }

    async fn watch(
        &self,
        call: Call,
        shutdown: CancellationToken,
    ) -> Result<Response, StatusError> {
        let options = ListOptions::from_query(&call.query)?;
        let filter = self.filter(&call, &options)?;
        let requested = match options.resource_version.as_deref() {
            None => None,
            Some(rv) => Some(rv.parse::<u64>().map_err(|_| {
                StatusError::bad_request(format!("invalid resource version {rv:?}"))
            })?),
        };
        let initial = options
            .send_initial_events
            .unwrap_or(matches!(requested, None | Some(0)));
        let served = call.served;
        let namespace = call.request.namespace.clone();
        let store = self.inner.store.clone();
        let start = if initial {
            let ns = namespace.clone();
            store
                .blocking(move |store| store.snapshot_and_subscribe(served, ns.as_deref()))
                .await
                .map(|(items, revision, changes)| {
                    Ok::<_, ResumeError>((items, Vec::new(), revision, changes))
                })
                .map_err(|e| store_failed(&e))?
        } else {
            let from = requested.unwrap_or(0);
            store
                .changes_since(from)
                .map(|(missed, changes)| (Vec::new(), missed, from, changes))
        };
        let table = call.representation == Representation::Table;
        let content_type = if table {
            codec::TABLE_CONTENT_TYPE
        } else {
            codec::JSON
        };
        let events: Box<dyn Stream<Item = Bytes> + Send + Unpin> = match start {
            Err(error) => {
                let expired = StatusError::new(Reason::Expired, error.to_string());
                let line = event_line("ERROR", &expired.to_status());
                Box::new(futures::stream::iter([line]))
            }
            Ok((mut initial_items, missed, revision, changes)) => {
                initial_items.retain(|item| filter.matches(item));
                let timeout = options
                    .timeout_seconds
                    .map(Duration::from_secs)
                    .unwrap_or(DEFAULT_WATCH_TIMEOUT);
                let initial_events_end = (options.send_initial_events == Some(true)
                    && options.allow_bookmarks)
                    .then(|| {
                        json!({
                            "kind": served.kind,
                            "apiVersion": served.api_version(),
                            "metadata": {
                                "resourceVersion": revision.to_string(),
                                "annotations": {"k8s.io/initial-events-end": "true"},
                            },
                        })
                    });
                let plan = WatchPlan {
                    served,
                    namespace,
                    filter,
                    initial: initial_items,
                    missed,
                    start: revision,
                    changes,
                    timeout,
                    shutdown,
                    initial_events_end,
                    encode: Box::new(move |kind, object| {
                        let object = if table && kind != "ERROR" && kind != "BOOKMARK" {
                            table::watch_row(&call.resource, &object, &call.query).unwrap_or(object)
                        } else {
                            object
                        };
                        event_line(kind, &object)
                    }),
                };
                Box::new(Box::pin(watch_stream(plan)))
            }
        };
        let body = Body::from_stream(futures::StreamExt::map(events, Ok::<Bytes, Infallible>));
        Ok((
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, content_type),
                (header::CACHE_CONTROL, "no-cache, private"),
            ],
            body,
        )
            .into_response())
    }

    async fn write(
        &self,
        call: &Call,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Response, StatusError> {
        let Some(bus) = self.inner.uplink.bus_if_connected() else {
            return Err(StatusError::new(
                Reason::ServiceUnavailable,
                "the edge node is not connected to the cloud: the MetaServer serves reads from its local store, \
                 but creates, updates, patches and deletes need the cloud",
            ));
        };
        let request = &call.request;
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|c| c.to_str().ok());
        let (verb, option, request_body) = match request.verb {
            Verb::Create => (
                "create",
                json!({}),
                Some(codec::decode_body(content_type, &body, MAX_BODY_BYTES)?),
            ),
            Verb::Update => {
                let mut object = codec::decode_body(content_type, &body, MAX_BODY_BYTES)?;
                self.cloud_resource_version(call, &mut object).await?;
                let verb = if request.subresource.as_deref() == Some("status") {
                    "updatestatus"
                } else {
                    "update"
                };
                (verb, json!({}), Some(object))
            }
            Verb::Patch => {
                if body.len() > MAX_BODY_BYTES {
                    return Err(codec::too_large(MAX_BODY_BYTES));
                }
                let patch = json!({
                    "Name": request.name.clone().unwrap_or_default(),
                    "PatchType": content_type.unwrap_or("application/merge-patch+json"),
                    "Data": content::from_bytes(&body),
                    "Options": {},
                    "Subresources": request.subresource.iter().collect::<Vec<_>>(),
                });
                ("patch", json!({}), Some(patch))
            }
            _ => {
                let options = if body.iter().all(u8::is_ascii_whitespace) {
                    json!({})
                } else {
                    codec::decode_body(content_type, &body, MAX_BODY_BYTES)?
                };
                ("delete", options, None)
            }
        };
        let served = call.served;
        let namespace = if served.namespaced {
            request.namespace.as_deref().unwrap_or("null")
        } else {
            "null"
        };
        let group_token = if served.group.is_empty() {
            "core"
        } else {
            served.group
        };
        let application = json!({
            "ID": "",
            "Key": format!(
                "/{group_token}/{}/{}/{namespace}/{}",
                served.version,
                served.plural,
                request.name.as_deref().unwrap_or("null")
            ),
            "Verb": verb,
            "Nodename": self.inner.node_name,
            "Option": content::from_bytes(option.to_string().as_bytes()),
            "ReqBody": request_body.map_or(Value::Null, |b| content::from_bytes(b.to_string().as_bytes())),
            "Subresource": request.subresource.clone().unwrap_or_default(),
            "RespBody": null,
            "Status": "InApplying",
            "Reason": "",
            "Error": {"ErrStatus": {"metadata": {}}},
            "Timestamp": "0001-01-01T00:00:00Z",
        });
        let msg = Message::new(
            source::META_SERVER,
            group::DYNAMIC_CONTROLLER,
            operation::NULL,
            operation::NULL,
            application,
        );
        let uplink = &self.inner.uplink;
        let reply = match bus
            .send_sync(&uplink.cloud_module, msg, Some(uplink.timeout))
            .await
        {
            Ok(reply) => reply,
            Err(BusError::Timeout { timeout, .. }) => {
                return Err(StatusError::new(
                    Reason::Timeout,
                    format!("the cloud did not answer within {timeout:?}"),
                ));
            }
            Err(error) => {
                return Err(StatusError::new(
                    Reason::ServiceUnavailable,
                    format!("cannot reach the cloud: {error}"),
                ));
            }
        };
        if reply.router.operation == operation::ERROR {
            return Err(StatusError::new(
                Reason::ServiceUnavailable,
                format!(
                    "cannot reach the cloud: {}",
                    String::from_utf8_lossy(&reply.content_data())
                ),
            ));
        }
        let answer: Value = serde_json::from_slice(&reply.content_data()).map_err(|error| {
            StatusError::internal(format!("the cloud's answer is not an Application: {error}"))
        })?;
        match answer.get("Status").and_then(Value::as_str) {
            Some("Approved") => {
                let object = content::decode_base64(answer.get("RespBody").unwrap_or(&Value::Null))
                    .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
                    .unwrap_or_else(|| json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}));
                let code = if request.verb == Verb::Create {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                self.respond(call, code, &object)
            }
            Some("Rejected") => {
                let status = answer
                    .pointer("/Error/ErrStatus")
                    .cloned()
                    .unwrap_or(Value::Null);
                let code = status
                    .get("code")
                    .and_then(Value::as_u64)
                    .and_then(|c| u16::try_from(c).ok())
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                Ok(json_response(code, codec::JSON, &status))
            }
            other => Err(StatusError::internal(format!(
                "the cloud did not apply the request ({}): {}",
                other.unwrap_or("no status"),
                answer.get("Reason").and_then(Value::as_str).unwrap_or("")
            ))),
        }
    }

    /// Puts the cloud's resourceVersion in place of the local revision a
    /// client read from this server.
    async fn cloud_resource_version(
        &self,
        call: &Call,
        object: &mut Value,
    ) -> Result<(), StatusError> {
        let Some(local) = store::resource_version_of(object).map(str::to_owned) else {
            return Ok(());
        };
        let served = call.served;
        let namespace = call.request.namespace.clone().unwrap_or_default();
        let name = call.request.name.clone().unwrap_or_default();
        let stored = self
            .inner
            .store
            .blocking(move |store| store.get_served(served, &namespace, &name))
            .await
            .map_err(|e| store_failed(&e))?;
        if let Some(stored) = stored
            && stored.revision.to_string() == local
            && let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut)
        {
            metadata.insert(
                "resourceVersion".to_owned(),
                Value::String(stored.cloud_resource_version),
            );
        }
        Ok(())
    }
}

/// The `APIGroup` of coordination.k8s.io; as a document of its own
/// (`kind` and `apiVersion`) or as an entry of the group list.
fn coordination_group(document: bool) -> Value {
    let version = json!({"groupVersion": "coordination.k8s.io/v1", "version": "v1"});
    let mut group = json!({
        "name": COORDINATION_GROUP,
        "versions": [version],
        "preferredVersion": version,
    });
    if document {
        group["kind"] = json!("APIGroup");
        group["apiVersion"] = json!("v1");
    }
    group
}

async fn handle(
    State((server, shutdown)): State<(MetaServer, CancellationToken)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match server
        .dispatch(&method, &uri, &headers, body, shutdown)
        .await
    {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(%method, %uri, code = error.code(), message = %error.message, "request refused");
            status_response(&error)
        }
    }
}

/// One watch event as a line of JSON.
fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// Encodes one watch event.
type EventEncoder = Box<dyn Fn(&str, Value) -> Bytes + Send + Sync>;

/// What one watch is made of.
struct WatchPlan {
    served: &'static ServedType,
    namespace: Option<String>,
    filter: ObjectFilter,
    initial: Vec<Value>,
    missed: Vec<Change>,
    start: u64,
    changes: broadcast::Receiver<Change>,
    timeout: Duration,
    shutdown: CancellationToken,
    /// The bookmark that ends the initial events, when the client asked
    /// for one (`sendInitialEvents` with `allowWatchBookmarks`).
    initial_events_end: Option<Value>,
    encode: EventEncoder,
}

impl WatchPlan {
    /// The event a change makes for this watch, if any: an object that
    /// enters the selection is ADDED, one that leaves it DELETED.
    fn event(&self, change: &Change) -> Option<&'static str> {
        let in_scope = std::ptr::eq(change.served, self.served)
            && self.namespace.as_deref().is_none_or(|ns| {
                change
                    .object
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    == Some(ns)
            });
        if !in_scope {
            return None;
        }
        let now = self.filter.matches(&change.object);
        let before = change
            .previous
            .as_deref()
            .is_some_and(|previous| self.filter.matches(previous));
        match (change.kind, before, now) {
            (ChangeKind::Deleted, _, true) => Some("DELETED"),
            (ChangeKind::Deleted, _, false) => None,
            (_, false, true) => Some("ADDED"),
            (_, true, true) => Some("MODIFIED"),
            (_, true, false) => Some("DELETED"),
            (_, false, false) => None,
        }
    }
}

/// The events of a watch: the initial ADDED events, the missed changes,
/// then live changes until the timeout, shutdown, or the watch falls too
/// far behind (then an ERROR event with a 410 Expired Status).
fn watch_stream(plan: WatchPlan) -> impl Stream<Item = Bytes> + Send {
    async_stream::stream! {
        let mut plan = plan;
        let deadline = tokio::time::sleep(plan.timeout);
        tokio::pin!(deadline);
        for object in std::mem::take(&mut plan.initial) {
            yield (plan.encode)("ADDED", object);
        }
        if let Some(bookmark) = plan.initial_events_end.take() {
            yield (plan.encode)("BOOKMARK", bookmark);
        }
        let mut last = plan.start;
        for change in std::mem::take(&mut plan.missed) {
            last = change.revision;
            if let Some(event) = plan.event(&change) {
                yield (plan.encode)(event, (*change.object).clone());
            }
        }
        loop {
            let change = tokio::select! {
                biased;
                () = plan.shutdown.cancelled() => break,
                () = &mut deadline => break,
                change = plan.changes.recv() => change,
            };
            match change {
                Ok(change) => {
                    if change.revision <= last {
                        continue;
                    }
                    last = change.revision;
                    if let Some(event) = plan.event(&change) {
                        yield (plan.encode)(event, (*change.object).clone());
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let expired = StatusError::new(
                        Reason::Expired,
                        format!("the watch fell behind after revision {last}; list again"),
                    );
                    yield (plan.encode)("ERROR", expired.to_status());
                    break;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    }
}
