//! The generic REST handlers: get, list, watch, create, update, patch,
//! delete and deletecollection for every resource type in the catalog,
//! with kube-apiserver's semantics for metadata, status subresources,
//! preconditions, dry runs, finalizers and graceful deletion.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::{Value, json};

use crate::codec::{self, Representation};
use crate::filter::ObjectFilter;
use crate::meta::{self, UpdateScope};
use crate::request::{FieldValidation, ListOptions, Query, ResourceRequest, Verb};
use crate::resources::{Catalog, ResourceType};
use crate::status::{Reason, StatusError};
use crate::storage::{Change, Objects, PageRequest, parse_resource_version, resource_version_of};
use crate::{admission, patch, structural, table, validation};

/// How long a watch without `timeoutSeconds` stays open (kube-apiserver
/// picks between 30 and 60 minutes).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
/// How often a watch that allows bookmarks gets one.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(30);
/// How many times an update without a resourceVersion precondition is
/// retried when it races another writer.
const CONFLICT_RETRIES: usize = 8;

/// Settings of the REST layer.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}

/// Everything the handlers share.
#[derive(Clone)]
pub struct Api {
    /// The served resource types.
    pub catalog: Catalog,
    /// The stored objects.
    pub objects: Objects,
    /// Request limits.
    pub limits: Limits,
    /// Per-kind admission (cluster IPs, service accounts, ...).
    pub admission: Arc<admission::Admission>,
}

/// A response before it is written to the wire.
pub enum Reply {
    /// A JSON document with a status code and `Warning` headers.
    Json {
        /// HTTP status code.
        code: u16,
        /// The body.
        body: Value,
        /// The content type (JSON, or the Table type).
        content_type: &'static str,
        /// `Warning` header texts.
        warnings: Vec<String>,
    },
    /// A watch: a stream of newline-delimited JSON events.
    Watch {
        /// The content type of the stream.
        content_type: &'static str,
        /// The events, already encoded.
        events: std::pin::Pin<Box<dyn Stream<Item = Bytes> + Send>>,
    },
}

impl Reply {
    fn ok(body: Value) -> Self {
        Self::with_code(200, body)
    }

    fn with_code(code: u16, body: Value) -> Self {
        Self::Json {
            code,
            body,
            content_type: codec::JSON,
            warnings: Vec::new(),
        }
    }

    fn warn(mut self, new: Vec<String>) -> Self {
        if let Self::Json { warnings, .. } = &mut self {
            warnings.extend(new);
        }
        self
    }
}

/// A request's inputs, as the HTTP layer hands them over.
pub struct Call<'a> {
    /// Who is asking (authenticated and authorized already).
    pub identity: Option<crate::auth::Identity>,
    /// The parsed resource request.
    pub request: ResourceRequest,
    /// The query string.
    pub query: Query,
    /// The `Content-Type` header.
    pub content_type: Option<&'a str>,
    /// The representation negotiated from `Accept`.
    pub representation: Representation,
    /// The body.
    pub body: Bytes,
}

impl Api {
    /// Resolves the resource type of a request, or 404.
    pub fn resource_type(
        &self,
        request: &ResourceRequest,
    ) -> Result<Arc<ResourceType>, StatusError> {
        self.catalog
            .get(&request.group, &request.version, &request.resource)
            .ok_or_else(|| {
                StatusError::new(
                    Reason::NotFound,
                    "the server could not find the requested resource",
                )
            })
    }

    /// Serves one resource request.
    pub async fn handle(&self, call: Call<'_>) -> Result<Reply, StatusError> {
        let resource = self.resource_type(&call.request)?;
        let request = &call.request;
        if resource.namespaced && request.namespace.is_none() && request.name.is_some() {
            return Err(StatusError::new(
                Reason::NotFound,
                "the server could not find the requested resource",
            ));
        }
        if let Some(sub) = &request.subresource
            && resource.subresource(sub).is_none()
        {
            return Err(StatusError::new(
                Reason::NotFound,
                "the server could not find the requested resource",
            ));
        }
        match (request.verb, request.subresource.as_deref()) {
            (Verb::Get, None | Some("status")) => self.get(&resource, &call).await,
            (Verb::Get | Verb::Update | Verb::Patch, Some("scale")) => {
                self.scale(&resource, &call).await
            }
            (Verb::List, None) => self.list(&resource, &call).await,
            (Verb::Watch, None) => self.watch(&resource, &call).await,
            (Verb::Create, None) => self.create(&resource, &call).await,
            (Verb::Create, Some("binding")) => self.bind(&resource, &call).await,
            (Verb::Create, Some("eviction")) => self.evict(&resource, &call).await,
            (Verb::Update, None) => self.update(&resource, &call, UpdateScope::Main).await,
            (Verb::Update, Some("status")) => {
                self.update(&resource, &call, UpdateScope::Status).await
            }
            (Verb::Update, Some("finalize")) => self.finalize_namespace(&resource, &call).await,
            (Verb::Patch, None) => self.patch(&resource, &call, UpdateScope::Main).await,
            (Verb::Patch, Some("status")) => {
                self.patch(&resource, &call, UpdateScope::Status).await
            }
            (Verb::Delete, None) => self.delete(&resource, &call).await,
            (Verb::DeleteCollection, None) => self.delete_collection(&resource, &call).await,
            (_, Some(sub @ ("log" | "exec" | "attach" | "portforward" | "proxy"))) => {
                Err(StatusError::new(
                    Reason::ServiceUnavailable,
                    format!(
                        "{}/{sub} is not available yet: it needs the cloud-edge stream tunnel, which this cloudcore does not run",
                        resource.plural
                    ),
                ))
            }
            (verb, sub) => Err(StatusError::new(
                Reason::MethodNotAllowed,
                format!(
                    "the server does not allow this method on the requested resource ({} {}{})",
                    verb.as_str(),
                    resource.plural,
                    sub.map(|s| format!("/{s}")).unwrap_or_default()
                ),
            )),
        }
    }

    fn namespace<'a>(&self, call: &'a Call<'_>) -> Option<&'a str> {
        call.request.namespace.as_deref()
    }

    fn name<'a>(&self, call: &'a Call<'_>) -> &'a str {
        call.request.name.as_deref().unwrap_or("")
    }

    async fn get(&self, resource: &ResourceType, call: &Call<'_>) -> Result<Reply, StatusError> {
        let object = self
            .objects
            .get(resource, self.namespace(call), self.name(call))
            .await?;
        let object = serve_version(resource, object);
        Ok(match call.representation {
            Representation::Table => table_reply(resource, &[object], &call.query, None, None)?,
            _ => Reply::ok(object),
        })
    }

    async fn list(&self, resource: &ResourceType, call: &Call<'_>) -> Result<Reply, StatusError> {
        let options = ListOptions::from_query(&call.query)?;
        let filter = ObjectFilter::new(resource, &options.label_selector, &options.field_selector)?;
        let revision = self.list_revision(&options).await?;
        let page = self
            .objects
            .list(
                resource,
                self.namespace(call),
                PageRequest {
                    revision,
                    limit: options.limit,
                    continue_token: options.continue_token.clone(),
                },
                |object| filter.matches(object),
            )
            .await?;
        let items: Vec<Value> = page
            .items
            .into_iter()
            .map(|o| serve_version(resource, o))
            .collect();
        if call.representation == Representation::Table {
            return table_reply(
                resource,
                &items,
                &call.query,
                Some(page.resource_version),
                page.continue_token,
            );
        }
        let mut metadata = json!({"resourceVersion": page.resource_version});
        if let Some(token) = page.continue_token {
            metadata["continue"] = json!(token);
        }
        Ok(Reply::ok(list_body(resource, metadata, items)))
    }

    /// The revision a list reads at, from `resourceVersion` and
    /// `resourceVersionMatch`.
    async fn list_revision(&self, options: &ListOptions) -> Result<Option<i64>, StatusError> {
        let Some(text) = options.resource_version.as_deref() else {
            return Ok(None);
        };
        let requested = parse_resource_version(text)?;
        match options.resource_version_match.as_deref() {
            Some("Exact") => Ok(Some(requested)),
            _ => {
                let current = self.objects.current_revision().await?;
                if requested > current {
                    return Err(StatusError::new(
                        Reason::Timeout,
                        format!("Too large resource version: {requested}, current: {current}"),
                    ));
                }
                Ok(None)
            }
        }
    }

    async fn watch(&self, resource: &ResourceType, call: &Call<'_>) -> Result<Reply, StatusError> {
        let options = ListOptions::from_query(&call.query)?;
        let filter = ObjectFilter::new(resource, &options.label_selector, &options.field_selector)?;
        let filter = match call.request.name.as_deref() {
            Some(name) => filter.with_name(name),
            None => filter,
        };
        let requested = options
            .resource_version
            .as_deref()
            .map(parse_resource_version)
            .transpose()?;
        // "" and "0" start with the current state as ADDED events; an exact
        // revision starts with the events after it.
        let initial = match (requested, options.send_initial_events) {
            (_, Some(send)) => send,
            (None | Some(0), None) => true,
            (Some(_), None) => false,
        };
        let (start, initial_items) = if initial {
            let page = self
                .objects
                .list(
                    resource,
                    self.namespace(call),
                    PageRequest::default(),
                    |o| filter.matches(o),
                )
                .await?;
            let revision = parse_resource_version(&page.resource_version)?;
            (revision, page.items)
        } else {
            (requested.unwrap_or(0), Vec::new())
        };
        let table = call.representation == Representation::Table;
        let content_type = if table {
            codec::TABLE_CONTENT_TYPE
        } else {
            codec::JSON
        };
        let changes = match self
            .objects
            .watch(resource, self.namespace(call), start)
            .await
        {
            Ok(changes) => changes,
            Err(error) if error.reason == Reason::Expired => {
                // kube-apiserver answers 200 and one ERROR event.
                let event = json!({"type": "ERROR", "object": error.to_status()});
                let line = Bytes::from(format!("{event}\n"));
                return Ok(Reply::Watch {
                    content_type,
                    events: Box::pin(futures::stream::once(async move { line })),
                });
            }
            Err(error) => return Err(error),
        };
        let timeout = options
            .timeout_seconds
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_WATCH_TIMEOUT);
        let resource_kind = (resource_api_version(&options, call), resource.kind.clone());
        let resource = resource.clone();
        let query = call.query.clone();
        let encode = move |kind: &str, object: Value| -> Bytes {
            let object = if table && kind != "ERROR" && kind != "BOOKMARK" {
                table::watch_row(&resource, &object, &query).unwrap_or(object)
            } else {
                object
            };
            watch_event_line(kind, &object)
        };
        let stream = watch_stream(WatchPlan {
            resource_kind,
            initial: initial_items,
            start,
            changes,
            filter,
            bookmarks: options.allow_bookmarks,
            initial_events_end: options.send_initial_events == Some(true),
            timeout,
            encode: Box::new(encode),
            serve: Box::new({
                let resource = self.resource_type(&call.request)?;
                move |object| serve_version(&resource, object)
            }),
        });
        Ok(Reply::Watch {
            content_type,
            events: Box::pin(stream),
        })
    }

    async fn create(&self, resource: &ResourceType, call: &Call<'_>) -> Result<Reply, StatusError> {
        let mut object =
            codec::decode_body(call.content_type, &call.body, self.limits.max_body_bytes)?;
        meta::check_type(&mut object, &resource.api_version(), &resource.kind)?;
        let warnings = self.check_fields(resource, &mut object, &call.query)?;
        meta::check_namespace(&mut object, resource, self.namespace(call))?;
        if let Some(identity) = &call.identity
            && identity.node_name().is_some()
        {
            let mut attributes = crate::auth::RequestAttributes::resource(
                "create",
                &resource.group,
                &resource.plural,
            );
            if let Some(namespace) = self.namespace(call) {
                attributes = attributes.in_namespace(namespace);
            }
            crate::auth::admit_node_create(identity, &attributes, &object)?;
        }
        if let Some(namespace) = self.namespace(call) {
            self.check_namespace_open(resource, namespace).await?;
        }
        let object = to_storage_version(resource, object);
        self.create_object(resource, object, call.query.dry_run()?)
            .await
            .map(|object| Reply::with_code(201, serve_version(resource, object)).warn(warnings))
    }

    /// Creates `object` (already typed and namespaced) with defaults,
    /// metadata, admission and validation.
    pub async fn create_object(
        &self,
        resource: &ResourceType,
        mut object: Value,
        dry_run: bool,
    ) -> Result<Value, StatusError> {
        meta::prepare_create(resource, &mut object, &meta::now_rfc3339())?;
        crate::defaults::apply_defaults(
            &resource.group,
            &resource.version,
            &resource.kind,
            &mut object,
        );
        if let Some(schema) = &resource.schema {
            structural::default_and_prune(schema, &mut object);
        }
        self.admission
            .admit_create(self, resource, &mut object, dry_run)
            .await?;
        let mut errors = validation::validate_create(resource, &object);
        if let Some(schema) = &resource.schema {
            errors.extend(structural::validate(schema, &object));
        }
        if !errors.is_empty() {
            return Err(StatusError::invalid(
                &resource.group,
                &resource.kind,
                meta::meta_str(&object, "name"),
                &errors,
            ));
        }
        if dry_run {
            return Ok(object);
        }
        self.objects.create(resource, &object).await
    }

    async fn check_namespace_open(
        &self,
        resource: &ResourceType,
        namespace: &str,
    ) -> Result<(), StatusError> {
        let namespaces = self
            .catalog
            .get("", "v1", "namespaces")
            .ok_or_else(|| StatusError::internal("namespaces are not served"))?;
        let object = self
            .objects
            .try_get(&namespaces, None, namespace)
            .await?
            .ok_or_else(|| StatusError::not_found("", "namespaces", namespace))?;
        if object
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|v| !v.is_null())
        {
            return Err(StatusError::new(
                Reason::Forbidden,
                format!(
                    "{} is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
                    resource.plural
                ),
            ));
        }
        Ok(())
    }

    /// Applies `fieldValidation` to the body: unknown fields refused
    /// (Strict), dropped with warnings (Warn) or dropped (Ignore).
    fn check_fields(
        &self,
        resource: &ResourceType,
        object: &mut Value,
        query: &Query,
    ) -> Result<Vec<String>, StatusError> {
        let mode = query.field_validation()?;
        let unknown = validation::unknown_fields(resource, object)?;
        if unknown.is_empty() {
            return Ok(Vec::new());
        }
        match mode {
            FieldValidation::Strict => Err(StatusError::bad_request(format!(
                "strict decoding error: {}",
                unknown
                    .iter()
                    .map(|field| format!("unknown field \"{field}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            FieldValidation::Warn => Ok(unknown
                .iter()
                .map(|field| format!("unknown field \"{field}\""))
                .collect()),
            FieldValidation::Ignore => Ok(Vec::new()),
        }
    }

    async fn update(
        &self,
        resource: &ResourceType,
        call: &Call<'_>,
        scope: UpdateScope,
    ) -> Result<Reply, StatusError> {
        let mut object =
            codec::decode_body(call.content_type, &call.body, self.limits.max_body_bytes)?;
        meta::check_type(&mut object, &resource.api_version(), &resource.kind)?;
        let warnings = self.check_fields(resource, &mut object, &call.query)?;
        meta::check_namespace(&mut object, resource, self.namespace(call))?;
        let precondition = resource_version_of(&object)?;
        let object = to_storage_version(resource, object);
        let old = self
            .objects
            .get(resource, self.namespace(call), self.name(call))
            .await?;
        let stored = self
            .update_object(
                resource,
                &old,
                object,
                precondition,
                scope,
                call.query.dry_run()?,
            )
            .await?;
        Ok(Reply::ok(serve_version(resource, stored)).warn(warnings))
    }

    /// Writes `new` over `old`: metadata rules, defaults, validation, the
    /// resourceVersion precondition, and the actual removal of an object
    /// whose last finalizer went away while it was being deleted.
    pub async fn update_object(
        &self,
        resource: &ResourceType,
        old: &Value,
        mut new: Value,
        precondition: Option<i64>,
        scope: UpdateScope,
        dry_run: bool,
    ) -> Result<Value, StatusError> {
        let name = meta::meta_str(old, "name").to_owned();
        let old_revision = resource_version_of(old)?;
        if let Some(wanted) = precondition
            && Some(wanted) != old_revision
        {
            return Err(StatusError::conflict(
                &resource.group,
                &resource.plural,
                &name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        meta::prepare_update(resource, old, &mut new, scope, &name)?;
        crate::defaults::apply_defaults(
            &resource.group,
            &resource.version,
            &resource.kind,
            &mut new,
        );
        if let Some(schema) = &resource.schema {
            structural::default_and_prune(schema, &mut new);
        }
        self.admission
            .admit_update(self, resource, old, &mut new, dry_run)
            .await?;
        let mut errors = validation::validate_update(resource, old, &new);
        if let Some(schema) = &resource.schema {
            errors.extend(structural::validate(schema, &new));
        }
        if !errors.is_empty() {
            return Err(StatusError::invalid(
                &resource.group,
                &resource.kind,
                &name,
                &errors,
            ));
        }
        if dry_run {
            return Ok(new);
        }
        let deleting = new
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|v| !v.is_null());
        if deleting && finalizers(&new).is_empty() {
            let namespace = old.pointer("/metadata/namespace").and_then(Value::as_str);
            return self
                .objects
                .delete(resource, namespace, &name, old_revision)
                .await;
        }
        self.objects.update(resource, &new, old_revision).await
    }

    async fn patch(
        &self,
        resource: &ResourceType,
        call: &Call<'_>,
        scope: UpdateScope,
    ) -> Result<Reply, StatusError> {
        if call.body.len() > self.limits.max_body_bytes {
            return Err(codec::too_large(self.limits.max_body_bytes));
        }
        let patch_type = patch::PatchType::from_content_type(call.content_type)?;
        let dry_run = call.query.dry_run()?;
        let namespace = self.namespace(call);
        let name = self.name(call);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let old = match self.objects.try_get(resource, namespace, name).await? {
                Some(old) => old,
                None if patch_type == patch::PatchType::Apply => {
                    let mut object = patch::apply_patch(
                        &json!({}),
                        &call.body,
                        patch_type,
                        patch_meta(resource),
                    )?;
                    meta::check_type(&mut object, &resource.api_version(), &resource.kind)?;
                    meta::check_namespace(&mut object, resource, namespace)?;
                    let created = self.create_object(resource, object, dry_run).await?;
                    return Ok(Reply::with_code(201, serve_version(resource, created)));
                }
                None => {
                    return Err(StatusError::not_found(
                        &resource.group,
                        &resource.plural,
                        name,
                    ));
                }
            };
            let served = serve_version(resource, old.clone());
            let mut patched =
                patch::apply_patch(&served, &call.body, patch_type, patch_meta(resource))?;
            meta::check_type(&mut patched, &resource.api_version(), &resource.kind)?;
            let warnings = self.check_fields(resource, &mut patched, &call.query)?;
            let patched = to_storage_version(resource, patched);
            // A resourceVersion in the patch is a precondition; otherwise
            // the patch applies to whatever is current, retried on races.
            let precondition = patch_precondition(&call.body, patch_type);
            let expected = match precondition {
                Some(rv) => Some(rv),
                None => resource_version_of(&old)?,
            };
            match self
                .update_object(resource, &old, patched, expected, scope, dry_run)
                .await
            {
                Ok(stored) => return Ok(Reply::ok(serve_version(resource, stored)).warn(warnings)),
                Err(error)
                    if error.reason == Reason::Conflict
                        && precondition.is_none()
                        && attempts < CONFLICT_RETRIES =>
                {
                    continue;
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn scale(&self, resource: &ResourceType, call: &Call<'_>) -> Result<Reply, StatusError> {
        let namespace = self.namespace(call);
        let name = self.name(call);
        let old = self.objects.get(resource, namespace, name).await?;
        let current = admission::to_scale(resource, &old)?;
        let desired = match call.request.verb {
            Verb::Get => return Ok(Reply::ok(current)),
            Verb::Update => {
                codec::decode_body(call.content_type, &call.body, self.limits.max_body_bytes)?
            }
            _ => {
                let patch_type = patch::PatchType::from_content_type(call.content_type)?;
                // A Scale is a built-in kind: strategic merge applies.
                let scale_meta = patch::PatchMeta::for_kind("autoscaling", "Scale");
                patch::apply_patch(&current, &call.body, patch_type, scale_meta)?
            }
        };
        let replicas = desired
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .ok_or_else(|| StatusError::bad_request("Scale.spec.replicas must be an integer"))?;
        let precondition = resource_version_of(&desired)?;
        let mut new = old.clone();
        admission::set_replicas(resource, &mut new, replicas)?;
        let stored = self
            .update_object(
                resource,
                &old,
                new,
                precondition,
                UpdateScope::Main,
                call.query.dry_run()?,
            )
            .await?;
        Ok(Reply::ok(admission::to_scale(resource, &stored)?))
    }

    async fn bind(&self, resource: &ResourceType, call: &Call<'_>) -> Result<Reply, StatusError> {
        let binding =
            codec::decode_body(call.content_type, &call.body, self.limits.max_body_bytes)?;
        let node = binding
            .pointer("/target/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| StatusError::bad_request("Binding.target.name is required"))?
            .to_owned();
        let name = self.name(call);
        for _ in 0..CONFLICT_RETRIES {
            let old = self
                .objects
                .get(resource, self.namespace(call), name)
                .await?;
            if old
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty())
            {
                return Err(StatusError::conflict(
                    "",
                    "pods",
                    name,
                    &format!(
                        "pod {name} is already assigned to node {:?}",
                        old["spec"]["nodeName"].as_str().unwrap_or_default()
                    ),
                ));
            }
            let mut new = old.clone();
            new["spec"]["nodeName"] = json!(node);
            let revision = resource_version_of(&old)?;
            match self
                .update_object(
                    resource,
                    &old,
                    new,
                    revision,
                    UpdateScope::Main,
                    call.query.dry_run()?,
                )
                .await
            {
                Ok(_) => {
                    return Ok(Reply::with_code(
                        201,
                        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                    ));
                }
                Err(error) if error.reason == Reason::Conflict => continue,
                Err(error) => return Err(error),
            }
        }
        Err(StatusError::conflict(
            "",
            "pods",
            name,
            "too many concurrent updates",
        ))
    }

    async fn evict(&self, resource: &ResourceType, call: &Call<'_>) -> Result<Reply, StatusError> {
        let eviction =
            codec::decode_body(call.content_type, &call.body, self.limits.max_body_bytes)?;
        let options = eviction
            .get("deleteOptions")
            .cloned()
            .unwrap_or(Value::Null);
        self.delete_object(
            resource,
            self.namespace(call),
            self.name(call),
            &options,
            call.query.dry_run()?,
        )
        .await?;
        Ok(Reply::with_code(
            201,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        ))
    }

    async fn finalize_namespace(
        &self,
        resource: &ResourceType,
        call: &Call<'_>,
    ) -> Result<Reply, StatusError> {
        let body = codec::decode_body(call.content_type, &call.body, self.limits.max_body_bytes)?;
        let old = self.objects.get(resource, None, self.name(call)).await?;
        let mut new = old.clone();
        new["spec"]["finalizers"] = body
            .pointer("/spec/finalizers")
            .cloned()
            .unwrap_or_else(|| json!([]));
        let revision = resource_version_of(&old)?;
        let stored = self
            .update_object(
                resource,
                &old,
                new,
                revision,
                UpdateScope::Main,
                call.query.dry_run()?,
            )
            .await?;
        Ok(Reply::ok(stored))
    }

    async fn delete(&self, resource: &ResourceType, call: &Call<'_>) -> Result<Reply, StatusError> {
        let options = if call.body.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            codec::decode_body(call.content_type, &call.body, self.limits.max_body_bytes)?
        };
        let dry_run =
            call.query.dry_run()? || options.get("dryRun").is_some_and(|d| d == &json!(["All"]));
        let mut options = options;
        if let Some(grace) = call.query.number("gracePeriodSeconds")? {
            options["gracePeriodSeconds"] = json!(grace);
        }
        if let Some(policy) = call.query.get("propagationPolicy") {
            options["propagationPolicy"] = json!(policy);
        }
        let (object, _pending) = self
            .delete_object(
                resource,
                self.namespace(call),
                self.name(call),
                &options,
                dry_run,
            )
            .await?;
        let object = serve_version(resource, object);
        // kube-apiserver answers 200 with the object whether the deletion
        // finished or waits for finalizers or a grace period.
        Ok(Reply::ok(object))
    }

    /// Deletes one object as kube-apiserver does. Returns its state and
    /// whether the deletion is still pending (finalizers or a pod's grace
    /// period).
    pub async fn delete_object(
        &self,
        resource: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        options: &Value,
        dry_run: bool,
    ) -> Result<(Value, bool), StatusError> {
        let options = DeleteOptions::parse(options)?;
        for _ in 0..CONFLICT_RETRIES {
            let old = self.objects.get(resource, namespace, name).await?;
            options.check_preconditions(resource, &old)?;
            let revision = resource_version_of(&old)?;
            let mut new = old.clone();
            let mut pending = false;

            let mut finalizer_list = finalizers(&old);
            match options.propagation.as_deref() {
                Some("Foreground") if !finalizer_list.iter().any(|f| f == "foregroundDeletion") => {
                    finalizer_list.push("foregroundDeletion".to_owned());
                }
                Some("Orphan") if !finalizer_list.iter().any(|f| f == "orphan") => {
                    finalizer_list.push("orphan".to_owned());
                }
                _ => {}
            }
            if resource.kind == "Namespace" && resource.group.is_empty() {
                let spec_finalizers = old
                    .pointer("/spec/finalizers")
                    .and_then(Value::as_array)
                    .is_some_and(|f| !f.is_empty());
                if spec_finalizers {
                    pending = true;
                    new["status"]["phase"] = json!("Terminating");
                }
            }
            if !finalizer_list.is_empty() {
                pending = true;
                new["metadata"]["finalizers"] = json!(finalizer_list);
            }
            let grace = self
                .admission
                .grace_period(self, resource, &old, options.grace_period)
                .await?;
            if grace > 0 {
                pending = true;
            }
            let already = old
                .pointer("/metadata/deletionTimestamp")
                .is_some_and(|v| !v.is_null());
            if !pending {
                if dry_run {
                    return Ok((old, false));
                }
                match self
                    .objects
                    .delete(resource, namespace, name, revision)
                    .await
                {
                    Ok(object) => return Ok((object, false)),
                    Err(error) if error.reason == Reason::Conflict => continue,
                    Err(error) => return Err(error),
                }
            }
            if !already || grace > 0 {
                let deadline = jiff::Timestamp::now()
                    .checked_add(jiff::SignedDuration::from_secs(grace))
                    .unwrap_or_else(|_| jiff::Timestamp::now());
                let current_deadline = old
                    .pointer("/metadata/deletionTimestamp")
                    .and_then(Value::as_str)
                    .and_then(meta::parse_timestamp);
                if current_deadline.is_none_or(|current| deadline < current) {
                    new["metadata"]["deletionTimestamp"] = json!(meta::format_timestamp(deadline));
                    new["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                }
            }
            if dry_run {
                return Ok((new, true));
            }
            if new == old {
                return Ok((old, true));
            }
            match self.objects.update(resource, &new, revision).await {
                Ok(object) => return Ok((object, true)),
                Err(error) if error.reason == Reason::Conflict => continue,
                Err(error) => return Err(error),
            }
        }
        Err(StatusError::conflict(
            &resource.group,
            &resource.plural,
            name,
            "too many concurrent updates",
        ))
    }

    async fn delete_collection(
        &self,
        resource: &ResourceType,
        call: &Call<'_>,
    ) -> Result<Reply, StatusError> {
        let options = ListOptions::from_query(&call.query)?;
        let filter = ObjectFilter::new(resource, &options.label_selector, &options.field_selector)?;
        let delete_options = if call.body.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            codec::decode_body(call.content_type, &call.body, self.limits.max_body_bytes)?
        };
        let dry_run = call.query.dry_run()?;
        let page = self
            .objects
            .list(
                resource,
                self.namespace(call),
                PageRequest::default(),
                |o| filter.matches(o),
            )
            .await?;
        let mut items = Vec::new();
        for object in page.items {
            let namespace = object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let name = meta::meta_str(&object, "name").to_owned();
            match self
                .delete_object(
                    resource,
                    namespace.as_deref(),
                    &name,
                    &delete_options,
                    dry_run,
                )
                .await
            {
                Ok((object, _)) => items.push(serve_version(resource, object)),
                Err(error) if error.reason == Reason::NotFound => {}
                Err(error) => return Err(error),
            }
        }
        let metadata = json!({"resourceVersion": page.resource_version});
        Ok(Reply::ok(list_body(resource, metadata, items)))
    }
}

/// One watch event as a line of JSON, written without copying the object
/// into a new value first.
fn watch_event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = Vec::with_capacity(256);
    line.extend_from_slice(b"{\"type\":");
    line.extend_from_slice(json!(kind).to_string().as_bytes());
    line.extend_from_slice(b",\"object\":");
    if serde_json::to_writer(&mut line, object).is_err() {
        line.extend_from_slice(b"null");
    }
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

/// A `<Kind>List` of `items`. Built by hand: `json!` would serialise the
/// items into a copy, doubling the memory of a large list.
fn list_body(resource: &ResourceType, metadata: Value, items: Vec<Value>) -> Value {
    let mut body = serde_json::Map::new();
    body.insert("kind".to_owned(), json!(resource.list_kind));
    body.insert("apiVersion".to_owned(), json!(resource.api_version()));
    body.insert("metadata".to_owned(), metadata);
    body.insert("items".to_owned(), Value::Array(items));
    Value::Object(body)
}

/// The finalizers of an object.
pub fn finalizers(object: &Value) -> Vec<String> {
    object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// `DeleteOptions`, as far as deletion uses them.
struct DeleteOptions {
    grace_period: Option<i64>,
    propagation: Option<String>,
    uid: Option<String>,
    resource_version: Option<i64>,
}

impl DeleteOptions {
    fn parse(options: &Value) -> Result<Self, StatusError> {
        if !(options.is_null() || options.is_object()) {
            return Err(StatusError::bad_request(
                "DeleteOptions must be a JSON object",
            ));
        }
        let grace_period = match options.get("gracePeriodSeconds") {
            None | Some(Value::Null) => None,
            Some(value) => Some(value.as_i64().filter(|g| *g >= 0).ok_or_else(|| {
                StatusError::bad_request("gracePeriodSeconds must be a non-negative integer")
            })?),
        };
        let propagation = options
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(
                || match options.get("orphanDependents").and_then(Value::as_bool) {
                    Some(true) => Some("Orphan".to_owned()),
                    Some(false) => Some("Background".to_owned()),
                    None => None,
                },
            );
        if let Some(policy) = &propagation
            && !matches!(policy.as_str(), "Foreground" | "Background" | "Orphan")
        {
            return Err(StatusError::bad_request(format!(
                "propagationPolicy: Unsupported value: {policy:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
            )));
        }
        let uid = options
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let resource_version = options
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(parse_resource_version)
            .transpose()?;
        Ok(Self {
            grace_period,
            propagation,
            uid,
            resource_version,
        })
    }

    fn check_preconditions(
        &self,
        resource: &ResourceType,
        object: &Value,
    ) -> Result<(), StatusError> {
        let name = meta::meta_str(object, "name");
        if let Some(uid) = &self.uid
            && uid != meta::meta_str(object, "uid")
        {
            return Err(StatusError::conflict(
                &resource.group,
                &resource.plural,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta::meta_str(object, "uid")
                ),
            ));
        }
        if let Some(rv) = self.resource_version
            && Some(rv) != resource_version_of(object)?
        {
            return Err(StatusError::conflict(
                &resource.group,
                &resource.plural,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta::meta_str(object, "resourceVersion")
                ),
            ));
        }
        Ok(())
    }
}

/// The patch metadata of a built-in kind; `None` for custom resources,
/// which refuse strategic merge patches.
fn patch_meta(resource: &ResourceType) -> Option<&'static patch::PatchMeta> {
    if resource.crd.is_some() {
        None
    } else {
        patch::PatchMeta::for_kind(&resource.group, &resource.kind)
    }
}

/// The resourceVersion a patch body names, which makes it a precondition.
fn patch_precondition(body: &[u8], patch_type: patch::PatchType) -> Option<i64> {
    if patch_type == patch::PatchType::Json {
        return None;
    }
    let value: Value = serde_json::from_slice(body).ok()?;
    value
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|rv| rv.parse().ok())
}

/// An object read from storage, as the requested version serves it (custom
/// resources of several versions share one stored form; no conversion
/// beyond `apiVersion` is done, as with `conversion.strategy: None`).
fn serve_version(resource: &ResourceType, mut object: Value) -> Value {
    if resource.version != resource.storage_version
        && let Some(map) = object.as_object_mut()
    {
        map.insert("apiVersion".to_owned(), json!(resource.api_version()));
    }
    object
}

/// A body of any served version, as stored.
fn to_storage_version(resource: &ResourceType, mut object: Value) -> Value {
    if resource.version != resource.storage_version
        && let Some(map) = object.as_object_mut()
    {
        let api_version = if resource.group.is_empty() {
            resource.storage_version.clone()
        } else {
            format!("{}/{}", resource.group, resource.storage_version)
        };
        map.insert("apiVersion".to_owned(), json!(api_version));
    }
    object
}

fn resource_api_version(_options: &ListOptions, call: &Call<'_>) -> String {
    if call.request.group.is_empty() {
        call.request.version.clone()
    } else {
        format!("{}/{}", call.request.group, call.request.version)
    }
}

fn table_reply(
    resource: &ResourceType,
    items: &[Value],
    query: &Query,
    resource_version: Option<String>,
    continue_token: Option<String>,
) -> Result<Reply, StatusError> {
    let body = table::table(resource, items, query, resource_version, continue_token)?;
    Ok(Reply::Json {
        code: 200,
        body,
        content_type: codec::TABLE_CONTENT_TYPE,
        warnings: Vec::new(),
    })
}

/// Encodes one watch event (type, object) as a line.
type EventEncoder = Box<dyn Fn(&str, Value) -> Bytes + Send + Sync>;

/// What a watch stream is made of.
struct WatchPlan {
    resource_kind: (String, String),
    initial: Vec<Value>,
    start: i64,
    changes: crate::storage::ChangeStream,
    filter: ObjectFilter,
    bookmarks: bool,
    initial_events_end: bool,
    timeout: Duration,
    encode: EventEncoder,
    serve: Box<dyn Fn(Value) -> Value + Send + Sync>,
}

/// The encoded events of a watch: initial ADDED events, then the changes
/// that concern the selection (an object that leaves the selection is
/// reported DELETED, one that enters it ADDED), bookmarks, and the end at
/// the timeout.
fn watch_stream(plan: WatchPlan) -> impl Stream<Item = Bytes> + Send {
    let WatchPlan {
        resource_kind: (api_version, kind),
        initial,
        start,
        mut changes,
        filter,
        bookmarks,
        initial_events_end,
        timeout,
        encode,
        serve,
    } = plan;
    async_stream::stream! {
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut last_revision = start;
        for object in initial {
            yield encode("ADDED", serve(object));
        }
        let bookmark = |revision: i64, end: bool| {
            let mut metadata = json!({"resourceVersion": revision.to_string()});
            if end {
                metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            // client-go refuses a bookmark without the kind of the watched
            // resource.
            json!({"kind": kind, "apiVersion": api_version, "metadata": metadata})
        };
        if initial_events_end && bookmarks {
            yield encode("BOOKMARK", bookmark(start, true));
        }
        let mut ticker = tokio::time::interval(BOOKMARK_INTERVAL);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                _ = ticker.tick(), if bookmarks => {
                    yield encode("BOOKMARK", bookmark(last_revision, false));
                }
                change = changes.next() => {
                    match change {
                        None => break,
                        Some(Err(error)) => {
                            yield encode("ERROR", error.to_status());
                            break;
                        }
                        Some(Ok(Change::Put { object, previous })) => {
                            if let Ok(Some(revision)) = resource_version_of(&object) {
                                last_revision = revision;
                            }
                            let now = filter.matches(&object);
                            let before = previous.as_ref().is_some_and(|p| filter.matches(p));
                            match (before, now) {
                                (false, true) => yield encode("ADDED", serve(object)),
                                (true, true) => yield encode("MODIFIED", serve(object)),
                                (true, false) => yield encode("DELETED", serve(object)),
                                (false, false) => {}
                            }
                        }
                        Some(Ok(Change::Deleted { object })) => {
                            if let Ok(Some(revision)) = resource_version_of(&object) {
                                last_revision = revision;
                            }
                            if filter.matches(&object) {
                                yield encode("DELETED", serve(object));
                            }
                        }
                    }
                }
            }
        }
    }
}
