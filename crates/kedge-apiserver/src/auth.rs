//! Authentication and authorization, as kube-apiserver does them with
//! `--anonymous-auth=true --authorization-mode=Node,RBAC` and its bootstrap
//! policy.
//!
//! **Authentication** ([`Authenticator`], [`authenticate`] middleware), in
//! kube-apiserver's order, the first that succeeds wins:
//!
//! 1. a verified client certificate ([`PeerCertificate`], put in the request
//!    by [`crate::tls`]): user = CN, groups = every O. A certificate without
//!    a CN does not authenticate (and is not an error), as upstream;
//! 2. `Authorization: Bearer <token>`, looked up in the [`TokenAuthenticator`]
//!    (the static token file `<dataDir>/tokens.csv` plus tokens registered
//!    at run time). An unknown token is **401**, never anonymous;
//! 3. otherwise the request is anonymous: user `system:anonymous`, group
//!    `system:unauthenticated` (or 401 when anonymous access is disabled).
//!
//! Authenticated identities get the group `system:authenticated`. The
//! `Authorization` header is removed once read, so handlers never see
//! tokens. The [`Identity`] goes into the request's extensions.
//!
//! **Authorization** ([`Authorizer`], [`authorize`] middleware) of the
//! request's [`RequestAttributes`] (kube-apiserver's `RequestInfo`):
//!
//! - group `system:masters`: everything;
//! - node identities (user `system:node:<name>` in group `system:nodes`):
//!   Kubernetes 1.32's Node authorizer, with the `AuthorizeNodeWithSelectors`
//!   feature on (its 1.32 default), plus the NodeRestriction admission checks
//!   that need only the request line. So a node may:
//!   - get, list and watch **its own** Node (by name, or a list/watch with
//!     `fieldSelector=metadata.name=<self>`), create a Node (the body's name
//!     is checked by [`admit_node_create`]), update and patch its own Node and
//!     `nodes/status`;
//!   - list and watch pods **only** with `fieldSelector=spec.nodeName=<self>`
//!     (1.32 behaviour; before `AuthorizeNodeWithSelectors` any list was
//!     allowed), get pods bound to it, create mirror pods (body checked by
//!     [`admit_node_create`]), delete pods bound to it, update and patch
//!     `pods/status` and create `pods/eviction` of pods bound to it;
//!   - get, list and watch single configmaps and secrets, and get
//!     persistentvolumeclaims, persistentvolumes and volumeattachments, that
//!     a pod bound to it references; update `persistentvolumeclaims/status`
//!     of those; create `serviceaccounts/<sa>/token` for the service accounts
//!     of its pods. "Bound to" and "references" are answered by the
//!     [`NodeGraph`] the REST layer implements. A node cannot get
//!     serviceaccounts themselves (upstream neither);
//!   - get, create, update, patch and delete its own Lease in
//!     `kube-node-lease` (create is checked by [`admit_node_create`]), and
//!     its own CSINode;
//!   - the static node rules: create, update and patch events; get, list and
//!     watch services; get endpoints; create, get, list and watch
//!     certificatesigningrequests; create tokenreviews and
//!     (local)subjectaccessreviews; get, list and watch runtimeclasses and
//!     csidrivers;
//! - every identity, anonymous included: the `system:public-info-viewer`
//!   ClusterRole, i.e. `get` on `/healthz`, `/livez`, `/readyz`, `/version`
//!   and `/version/`. Anything else is **403** for anonymous, as
//!   kube-apiserver answers `forbidden: User "system:anonymous" cannot get
//!   path "/api"` (the discovery documents and `/openapi` are for
//!   authenticated users only);
//! - every authenticated identity: `system:discovery` (`/api`, `/apis`,
//!   `/openapi` and below, health, version) and `system:basic-user` (create
//!   selfsubjectaccessreviews, selfsubjectrulesreviews, selfsubjectreviews);
//! - anything else is 403. RBAC objects are stored but not yet evaluated, so
//!   other users get a 403 saying so.
//!
//! Denials are `Forbidden` Status errors worded as kube-apiserver's
//! ([`forbidden`]): `nodes "n2" is forbidden: User "system:node:n1" cannot
//! get resource "nodes" in API group "" at the cluster scope: node 'n1'
//! cannot read 'n2', only its own Node object`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::status::{Reason, StatusError};
use crate::tls::PeerCertificate;

/// The user of unauthenticated requests.
pub const ANONYMOUS_USER: &str = "system:anonymous";
/// The group of unauthenticated requests.
pub const UNAUTHENTICATED_GROUP: &str = "system:unauthenticated";
/// The group every authenticated identity is in.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";
/// The group allowed everything.
pub const MASTERS_GROUP: &str = crate::pki::MASTERS_GROUP;
/// The group of node identities.
pub const NODES_GROUP: &str = "system:nodes";
/// The prefix of node user names (`system:node:<name>`).
pub const NODE_USER_PREFIX: &str = "system:node:";
/// The static token file's name in the data dir.
pub const TOKEN_FILE: &str = "tokens.csv";
/// The namespace of node leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// The annotation that marks a mirror pod.
pub const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Who makes a request (`user.Info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user name (`kubernetes-admin`, `system:node:n1`,
    /// `system:anonymous`).
    pub user: String,
    /// The groups, `system:authenticated` or `system:unauthenticated`
    /// included.
    pub groups: Vec<String>,
    /// The user's uid; empty when the authenticator has none.
    pub uid: String,
}

impl Identity {
    /// The anonymous identity: `system:anonymous` in `system:unauthenticated`.
    pub fn anonymous() -> Self {
        Self {
            user: ANONYMOUS_USER.to_owned(),
            groups: vec![UNAUTHENTICATED_GROUP.to_owned()],
            uid: String::new(),
        }
    }

    /// An authenticated identity; `system:authenticated` is added to the
    /// groups unless present.
    pub fn authenticated(
        user: impl Into<String>,
        uid: impl Into<String>,
        groups: Vec<String>,
    ) -> Self {
        let mut identity = Self {
            user: user.into(),
            groups,
            uid: uid.into(),
        };
        if !identity.in_group(AUTHENTICATED_GROUP) {
            identity.groups.push(AUTHENTICATED_GROUP.to_owned());
        }
        identity
    }

    /// The identity of node `name`: `system:node:<name>` in `system:nodes`.
    pub fn node(name: &str) -> Self {
        Self::authenticated(
            format!("{NODE_USER_PREFIX}{name}"),
            "",
            vec![NODES_GROUP.to_owned()],
        )
    }

    /// Whether this is the anonymous identity.
    pub fn is_anonymous(&self) -> bool {
        self.user == ANONYMOUS_USER
    }

    /// Whether the identity is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// The node name, when this is a node identity (kube's
    /// `NodeIdentity`): user `system:node:<name>` in group `system:nodes`.
    /// The name may be empty, which no rule allows anything.
    pub fn node_name(&self) -> Option<&str> {
        let name = self.user.strip_prefix(NODE_USER_PREFIX)?;
        self.in_group(NODES_GROUP).then_some(name)
    }
}

// === tokens ===

/// A malformed static token file.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("cannot read token file {path}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A record has fewer than three columns, or the quoting is broken.
    #[error("token file line {line}: {reason}")]
    Malformed {
        /// The 1-based line the record starts on.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Bearer tokens and the identities they stand for: those of the static
/// token file plus those registered at run time (cloudcore's own
/// components). Registered tokens win over file tokens.
///
/// The run-time map is behind a std `RwLock`: lookups are short, never
/// await, and vastly outnumber registrations.
#[derive(Debug, Default)]
pub struct TokenAuthenticator {
    file: HashMap<String, Identity>,
    registered: RwLock<HashMap<String, Identity>>,
}

impl TokenAuthenticator {
    /// No tokens.
    pub fn new() -> Self {
        Self::default()
    }

    /// The tokens of kube-apiserver's static token file format: CSV records
    /// `token,user,uid[,"group1,group2"]`. Records with an empty token are
    /// skipped and a later duplicate wins, as upstream.
    pub fn from_csv(text: &str) -> Result<Self, TokenFileError> {
        let mut file = HashMap::new();
        for (line, record) in parse_csv(text)? {
            if record.len() < 3 {
                return Err(TokenFileError::Malformed {
                    line,
                    reason: format!(
                        "must have at least 3 columns (token, user name, user uid), found {}",
                        record.len()
                    ),
                });
            }
            if record[0].is_empty() {
                tracing::warn!(line, "empty token in the token file; skipped");
                continue;
            }
            let groups = record
                .get(3)
                .map(|groups| {
                    groups
                        .split(',')
                        .filter(|g| !g.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            let identity = Identity::authenticated(record[1].clone(), record[2].clone(), groups);
            if file.insert(record[0].clone(), identity).is_some() {
                tracing::warn!(
                    line,
                    "duplicate token in the token file; the later one wins"
                );
            }
        }
        Ok(Self {
            file,
            registered: RwLock::default(),
        })
    }

    /// [`Self::from_csv`] of the file at `path`; no file means no tokens.
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_csv(&text),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Self::new()),
            Err(source) => Err(TokenFileError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Registers `token` for `identity` (`system:authenticated` is added).
    pub fn register(&self, token: impl Into<String>, identity: Identity) {
        let identity = Identity::authenticated(identity.user, identity.uid, identity.groups);
        self.registered_mut().insert(token.into(), identity);
    }

    /// Forgets a registered token; whether it was registered.
    pub fn revoke(&self, token: &str) -> bool {
        self.registered_mut().remove(token).is_some()
    }

    /// The identity `token` stands for.
    pub fn authenticate(&self, token: &str) -> Option<Identity> {
        let registered = self
            .registered
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        registered
            .get(token)
            .or_else(|| self.file.get(token))
            .cloned()
    }

    fn registered_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Identity>> {
        self.registered
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// CSV records as Go's `encoding/csv` reads them (RFC 4180 quoting, blank
/// lines skipped, no trimming), each with the line it starts on.
fn parse_csv(text: &str) -> Result<Vec<(usize, Vec<String>)>, TokenFileError> {
    let mut records = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while chars.peek().is_some() {
        let start = line;
        let mut record = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut at_field_start = true;
        loop {
            let Some(c) = chars.next() else {
                if quoted {
                    return Err(TokenFileError::Malformed {
                        line: start,
                        reason: "unterminated quoted field".to_owned(),
                    });
                }
                break;
            };
            if quoted {
                match c {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    '"' => {
                        quoted = false;
                        if !matches!(chars.peek(), None | Some(',' | '\n' | '\r')) {
                            return Err(TokenFileError::Malformed {
                                line,
                                reason: "extraneous text after a quoted field".to_owned(),
                            });
                        }
                    }
                    '\n' => {
                        line += 1;
                        field.push(c);
                    }
                    _ => field.push(c),
                }
                continue;
            }
            match c {
                '"' if at_field_start => {
                    quoted = true;
                    at_field_start = false;
                }
                ',' => {
                    record.push(std::mem::take(&mut field));
                    at_field_start = true;
                }
                '\r' if chars.peek() == Some(&'\n') => {}
                '\n' => {
                    line += 1;
                    break;
                }
                _ => {
                    field.push(c);
                    at_field_start = false;
                }
            }
        }
        if record.is_empty() && field.is_empty() {
            continue;
        }
        record.push(field);
        records.push((start, record));
    }
    Ok(records)
}

// === authentication ===

/// Turns a request's credentials into an [`Identity`].
#[derive(Debug)]
pub struct Authenticator {
    tokens: Arc<TokenAuthenticator>,
    anonymous: bool,
}

impl Authenticator {
    /// Client certificates, `tokens`, and anonymous access.
    pub fn new(tokens: Arc<TokenAuthenticator>) -> Self {
        Self {
            tokens,
            anonymous: true,
        }
    }

    /// With anonymous access on (the default, as kube-apiserver's) or off;
    /// off, requests without credentials are 401.
    pub fn with_anonymous(mut self, enabled: bool) -> Self {
        self.anonymous = enabled;
        self
    }

    /// The token authenticator, to register tokens at run time.
    pub fn tokens(&self) -> &Arc<TokenAuthenticator> {
        &self.tokens
    }

    /// The identity of a request with client certificate `peer` and
    /// `headers`; a 401 Status error for a bad bearer token (or no
    /// credentials when anonymous access is off).
    pub fn authenticate(
        &self,
        peer: Option<&PeerCertificate>,
        headers: &HeaderMap,
    ) -> Result<Identity, StatusError> {
        if let Some(peer) = peer
            && !peer.common_name.is_empty()
        {
            return Ok(Identity::authenticated(
                peer.common_name.clone(),
                "",
                peer.organizations.clone(),
            ));
        }
        if let Some(token) = bearer_token(headers) {
            return self.tokens.authenticate(token).ok_or_else(|| {
                tracing::debug!("invalid bearer token");
                unauthorized()
            });
        }
        if self.anonymous {
            Ok(Identity::anonymous())
        } else {
            Err(unauthorized())
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is
/// case-insensitive, as upstream); `None` for any other header.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let mut parts = value.splitn(3, ' ');
    let scheme = parts.next()?;
    let token = parts.next()?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The 401 Status kube-apiserver answers.
pub fn unauthorized() -> StatusError {
    StatusError::new(Reason::Unauthorized, "Unauthorized")
}

/// Axum middleware (`axum::middleware::from_fn_with_state`): authenticates
/// the request, puts its [`Identity`] into the extensions and removes the
/// `Authorization` header; answers 401 on bad credentials.
pub async fn authenticate(
    State(authenticator): State<Arc<Authenticator>>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request.extensions().get::<PeerCertificate>();
    match authenticator.authenticate(peer, request.headers()) {
        Ok(identity) => {
            request.headers_mut().remove(AUTHORIZATION);
            request.extensions_mut().insert(identity);
            next.run(request).await
        }
        Err(err) => status_response(&err),
    }
}

// === request attributes ===

/// What a request does, as authorization sees it (kube-apiserver's
/// `RequestInfo` plus the path).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestAttributes {
    /// Whether this is a request for an API resource (`/api/v1/...`,
    /// `/apis/<group>/<version>/...`); otherwise a non-resource path
    /// (`/version`, `/healthz`, discovery documents).
    pub resource_request: bool,
    /// The verb: `get`, `list`, `watch`, `create`, `update`, `patch`,
    /// `delete`, `deletecollection`, `proxy`; for non-resource requests the
    /// lower-case HTTP method.
    pub verb: String,
    /// The API group; empty for the core group.
    pub api_group: String,
    /// The API version.
    pub api_version: String,
    /// The plural resource (`pods`).
    pub resource: String,
    /// The subresource (`status`, `token`); empty if none.
    pub subresource: String,
    /// The namespace; empty for cluster-scoped requests.
    pub namespace: String,
    /// The object name; for a list or watch, the value of a
    /// `metadata.name=<x>` field selector. Empty if none.
    pub name: String,
    /// The request path.
    pub path: String,
    /// The value of a `spec.nodeName=<x>` (or `==`) field selector.
    pub field_selector_node: Option<String>,
}

impl RequestAttributes {
    /// A resource request (for tests and for callers that already parsed
    /// the path).
    pub fn resource(verb: &str, api_group: &str, resource: &str) -> Self {
        Self {
            resource_request: true,
            verb: verb.to_owned(),
            api_group: api_group.to_owned(),
            api_version: "v1".to_owned(),
            resource: resource.to_owned(),
            ..Self::default()
        }
    }

    /// A non-resource request for `path`.
    pub fn non_resource(verb: &str, path: &str) -> Self {
        Self {
            verb: verb.to_owned(),
            path: path.to_owned(),
            ..Self::default()
        }
    }

    /// With subresource `subresource`.
    pub fn with_subresource(mut self, subresource: &str) -> Self {
        self.subresource = subresource.to_owned();
        self
    }

    /// With namespace `namespace`.
    pub fn in_namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_owned();
        self
    }

    /// With object name `name`.
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    /// With a `spec.nodeName=<node>` field selector.
    pub fn on_node(mut self, node: &str) -> Self {
        self.field_selector_node = Some(node.to_owned());
        self
    }

    /// The attributes of a request, parsed as kube-apiserver's
    /// `RequestInfoFactory` does (API prefixes `api` and `apis`, the special
    /// verbs `watch` and `proxy` as path prefixes, `namespaces/<ns>/...`,
    /// `get` without a name becoming `list` or `watch`, `delete` without a
    /// name becoming `deletecollection`).
    pub fn from_request(method: &Method, uri: &Uri) -> Self {
        let path = uri.path().to_owned();
        let http_verb = method.as_str().to_ascii_lowercase();
        let non_resource = |path: String| Self {
            verb: http_verb.clone(),
            path,
            ..Self::default()
        };
        let mut parts: Vec<String> = path
            .trim_matches('/')
            .split('/')
            .filter(|part| !part.is_empty())
            .map(|part| {
                percent_encoding::percent_decode_str(part)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect();
        if parts.len() < 3 || !(parts[0] == "api" || parts[0] == "apis") {
            return non_resource(path);
        }
        let grouped = parts[0] == "apis";
        parts.remove(0);
        let mut attributes = Self {
            resource_request: true,
            path: path.clone(),
            ..Self::default()
        };
        if grouped {
            if parts.len() < 3 {
                return non_resource(path);
            }
            attributes.api_group = parts.remove(0);
        }
        attributes.api_version = parts.remove(0);
        if parts[0] == "watch" || parts[0] == "proxy" {
            if parts.len() < 2 {
                // kube-apiserver answers this with an error; nothing here is
                // authorized for it anyway.
                return non_resource(path);
            }
            attributes.verb = parts.remove(0);
        } else {
            attributes.verb = match *method {
                Method::POST => "create",
                Method::GET | Method::HEAD => "get",
                Method::PUT => "update",
                Method::PATCH => "patch",
                Method::DELETE => "delete",
                _ => "",
            }
            .to_owned();
        }
        if parts[0] == "namespaces" && parts.len() > 1 {
            attributes.namespace = parts[1].clone();
            if parts.len() > 2 && parts[2] != "status" && parts[2] != "finalize" {
                parts.drain(..2);
            }
        }
        if parts.len() >= 3 && attributes.verb != "proxy" {
            attributes.subresource = parts[2].clone();
        }
        if parts.len() >= 2 {
            attributes.name = parts[1].clone();
        }
        attributes.resource = parts[0].clone();

        let query = crate::request::Query::parse(uri.query());
        let selector = query.get("fieldSelector").map(|text| {
            crate::selector::FieldSelector::parse(text)
                .map(|s| s.equalities())
                .ok()
        });
        if let Some(Some(terms)) = &selector {
            attributes.field_selector_node = terms
                .iter()
                .find(|(field, _)| field == "spec.nodeName")
                .map(|(_, value)| value.clone());
        }
        if attributes.name.is_empty() && attributes.verb == "get" {
            let watch = query.flag("watch").unwrap_or(false);
            attributes.verb = if watch { "watch" } else { "list" }.to_owned();
            if let Some(Some(terms)) = &selector
                && let Some((_, name)) = terms.iter().find(|(field, _)| field == "metadata.name")
                && valid_path_segment(name)
            {
                attributes.name = name.clone();
            }
        }
        if attributes.name.is_empty() && attributes.verb == "delete" {
            attributes.verb = "deletecollection".to_owned();
        }
        attributes
    }
}

/// Whether `name` may be a path segment (`path.IsValidPathSegmentName`).
fn valid_path_segment(name: &str) -> bool {
    name != "." && name != ".." && !name.contains('/') && !name.contains('%')
}

// === the node graph ===

/// The kinds of object a node may reach only through the pods bound to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GraphKind {
    /// `pods`: the pod is bound to the node (`spec.nodeName`).
    Pod,
    /// `configmaps` referenced by a pod bound to the node.
    ConfigMap,
    /// `secrets` referenced by a pod bound to the node (volumes, env,
    /// image pull secrets), or by a persistent volume such a pod uses.
    Secret,
    /// `persistentvolumeclaims` used by a pod bound to the node.
    PersistentVolumeClaim,
    /// `persistentvolumes` bound to such a claim (cluster-scoped).
    PersistentVolume,
    /// `serviceaccounts` that a pod bound to the node runs as.
    ServiceAccount,
    /// `volumeattachments` (storage.k8s.io) for the node (cluster-scoped).
    VolumeAttachment,
}

impl GraphKind {
    /// The plural resource name.
    pub fn resource(self) -> &'static str {
        match self {
            Self::Pod => "pods",
            Self::ConfigMap => "configmaps",
            Self::Secret => "secrets",
            Self::PersistentVolumeClaim => "persistentvolumeclaims",
            Self::PersistentVolume => "persistentvolumes",
            Self::ServiceAccount => "serviceaccounts",
            Self::VolumeAttachment => "volumeattachments",
        }
    }
}

/// The relationships between nodes and the objects their pods use
/// (kube-apiserver's node authorizer graph). The REST layer implements it
/// over the stored pods; it must answer quickly and without I/O.
pub trait NodeGraph: Send + Sync {
    /// Whether node `node` may read object `namespace/name` of `kind`
    /// (`namespace` is empty for cluster-scoped kinds): the object is a pod
    /// bound to the node, or is referenced by one.
    fn node_may_read(&self, node: &str, kind: GraphKind, namespace: &str, name: &str) -> bool;
}

/// A graph with no relationships: nodes may reach nothing through pods.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmptyGraph;

impl NodeGraph for EmptyGraph {
    fn node_may_read(&self, _node: &str, _kind: GraphKind, _namespace: &str, _name: &str) -> bool {
        false
    }
}

// === authorization ===

/// An authorization decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The request may proceed.
    Allow,
    /// The request is refused; the reason (possibly empty) ends the 403
    /// message.
    Deny(String),
}

impl Decision {
    /// Whether this allows.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allow)
    }

    fn deny(reason: impl Into<String>) -> Self {
        Self::Deny(reason.into())
    }
}

/// What the authorizer tells users it does not authorize.
pub const RBAC_NOT_EVALUATED: &str = "Kedge does not evaluate RBAC yet: only members of \"system:masters\" and node identities (\"system:node:<name>\" in \"system:nodes\") are authorized beyond discovery";

/// Decides whether an identity may make a request. See the module
/// documentation for the rules.
#[derive(Clone)]
pub struct Authorizer {
    graph: Arc<dyn NodeGraph>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer").finish_non_exhaustive()
    }
}

impl Authorizer {
    /// An authorizer answering node questions with `graph`.
    pub fn new(graph: Arc<dyn NodeGraph>) -> Self {
        Self { graph }
    }

    /// The decision for `identity` making the request `attributes`.
    pub fn authorize(&self, identity: &Identity, attributes: &RequestAttributes) -> Decision {
        if identity.in_group(MASTERS_GROUP) {
            return Decision::Allow;
        }
        let mut reasons = Vec::new();
        let node = identity.node_name();
        if let Some(node) = node {
            match self.authorize_node(identity, node, attributes) {
                Decision::Allow => return Decision::Allow,
                Decision::Deny(reason) if !reason.is_empty() => reasons.push(reason),
                Decision::Deny(_) => {}
            }
        }
        if default_policy_allows(identity, attributes) {
            return Decision::Allow;
        }
        if node.is_none() && !identity.is_anonymous() {
            reasons.push(RBAC_NOT_EVALUATED.to_owned());
        }
        Decision::Deny(reasons.join(", "))
    }

    /// Kubernetes' Node authorizer (1.32, `AuthorizeNodeWithSelectors` on),
    /// with the NodeRestriction checks that need only the request line.
    fn authorize_node(
        &self,
        identity: &Identity,
        node: &str,
        attributes: &RequestAttributes,
    ) -> Decision {
        if node.is_empty() {
            return Decision::deny(format!(
                "unknown node for user {}",
                go_quote(&identity.user)
            ));
        }
        if !attributes.resource_request {
            return Decision::deny("");
        }
        let a = attributes;
        match (a.api_group.as_str(), a.resource.as_str()) {
            ("", "secrets") => self.read_namespaced_object(node, GraphKind::Secret, a),
            ("", "configmaps") => self.read_namespaced_object(node, GraphKind::ConfigMap, a),
            ("", "persistentvolumeclaims") if a.subresource == "status" => {
                if matches!(a.verb.as_str(), "update" | "patch") {
                    self.related(node, GraphKind::PersistentVolumeClaim, a)
                } else {
                    Decision::deny("can only get/update/patch this type")
                }
            }
            ("", "persistentvolumeclaims") => {
                self.get_related(node, GraphKind::PersistentVolumeClaim, a)
            }
            ("", "persistentvolumes") => self.get_related(node, GraphKind::PersistentVolume, a),
            ("storage.k8s.io", "volumeattachments") => {
                self.get_related(node, GraphKind::VolumeAttachment, a)
            }
            ("", "serviceaccounts") => {
                if a.verb != "create" || a.name.is_empty() {
                    Decision::deny("can only create tokens for individual service accounts")
                } else if a.subresource != "token" {
                    Decision::deny("can only create token subresource of serviceaccount")
                } else {
                    self.related(node, GraphKind::ServiceAccount, a)
                }
            }
            ("coordination.k8s.io", "leases") => {
                if !matches!(
                    a.verb.as_str(),
                    "get" | "create" | "update" | "patch" | "delete"
                ) {
                    Decision::deny("can only get, create, update, patch, or delete a node lease")
                } else if a.namespace != NODE_LEASE_NAMESPACE {
                    Decision::deny(format!(
                        "can only access leases in the {} system namespace",
                        go_quote(NODE_LEASE_NAMESPACE)
                    ))
                } else if a.verb != "create" && a.name != node {
                    Decision::deny(
                        "can only access node lease with the same name as the requesting node",
                    )
                } else {
                    Decision::Allow
                }
            }
            ("storage.k8s.io", "csinodes") => {
                if !matches!(
                    a.verb.as_str(),
                    "get" | "create" | "update" | "patch" | "delete"
                ) {
                    Decision::deny("can only get, create, update, patch, or delete a CSINode")
                } else if !a.subresource.is_empty() {
                    Decision::deny("cannot authorize CSINode subresources")
                } else if a.verb != "create" && a.name != node {
                    Decision::deny(
                        "can only access CSINode with the same name as the requesting node",
                    )
                } else {
                    Decision::Allow
                }
            }
            ("", "nodes") => authorize_node_object(node, a),
            ("", "pods") => self.authorize_pod(node, a),
            _ if static_node_rules_allow(a) => Decision::Allow,
            _ => Decision::deny(""),
        }
    }

    fn authorize_pod(&self, node: &str, a: &RequestAttributes) -> Decision {
        let bound = || {
            !a.name.is_empty()
                && self
                    .graph
                    .node_may_read(node, GraphKind::Pod, &a.namespace, &a.name)
        };
        match (a.subresource.as_str(), a.verb.as_str()) {
            ("", "get") => self.get_related(node, GraphKind::Pod, a),
            ("", "list" | "watch") => {
                if a.field_selector_node.as_deref() == Some(node) {
                    Decision::Allow
                } else if !a.name.is_empty() {
                    self.related(node, GraphKind::Pod, a)
                } else {
                    Decision::deny("can only list/watch pods with spec.nodeName field selector")
                }
            }
            // The body is checked by `admit_node_create` (mirror pods only).
            ("", "create") => Decision::Allow,
            ("", "delete") if bound() => Decision::Allow,
            ("", "delete") => Decision::deny(format!(
                "node {} can only delete pods with spec.nodeName set to itself",
                go_quote(node)
            )),
            ("status", "update" | "patch") if bound() => Decision::Allow,
            ("status", "update" | "patch") => Decision::deny(format!(
                "node {} can only update pod status for pods with spec.nodeName set to itself",
                go_quote(node)
            )),
            ("eviction", "create") if bound() => Decision::Allow,
            ("eviction", "create") => Decision::deny(format!(
                "node {} can only evict pods with spec.nodeName set to itself",
                go_quote(node)
            )),
            _ => Decision::deny(""),
        }
    }

    /// `authorizeReadNamespacedObject`: get, list or watch of one named,
    /// namespaced object related to the node.
    fn read_namespaced_object(
        &self,
        node: &str,
        kind: GraphKind,
        a: &RequestAttributes,
    ) -> Decision {
        if !matches!(a.verb.as_str(), "get" | "list" | "watch") {
            Decision::deny("can only read resources of this type")
        } else if !a.subresource.is_empty() {
            Decision::deny("cannot read subresource")
        } else if a.namespace.is_empty() {
            Decision::deny("can only read namespaced object of this type")
        } else {
            self.related(node, kind, a)
        }
    }

    /// `authorizeGet`: get of one object related to the node.
    fn get_related(&self, node: &str, kind: GraphKind, a: &RequestAttributes) -> Decision {
        if a.verb != "get" {
            Decision::deny("can only get individual resources of this type")
        } else if !a.subresource.is_empty() {
            Decision::deny("cannot get subresource")
        } else {
            self.related(node, kind, a)
        }
    }

    /// `authorize`: the named object is related to the node in the graph.
    fn related(&self, node: &str, kind: GraphKind, a: &RequestAttributes) -> Decision {
        if a.name.is_empty() {
            Decision::deny("No Object name found")
        } else if self.graph.node_may_read(node, kind, &a.namespace, &a.name) {
            Decision::Allow
        } else {
            Decision::deny(format!(
                "no relationship found between node '{node}' and this object"
            ))
        }
    }
}

/// `authorizeNode` plus NodeRestriction's "only its own Node object".
fn authorize_node_object(node: &str, a: &RequestAttributes) -> Decision {
    let not_own = || {
        Decision::deny(format!(
            "node {} is not allowed to modify node {}",
            go_quote(node),
            go_quote(&a.name)
        ))
    };
    match (a.subresource.as_str(), a.verb.as_str()) {
        // The body's name is checked by `admit_node_create`.
        ("", "create") => Decision::Allow,
        ("" | "status", "update" | "patch") if a.name == node => Decision::Allow,
        ("" | "status", "update" | "patch") => not_own(),
        ("", "get" | "list" | "watch") if a.name == node => Decision::Allow,
        ("", "get" | "list" | "watch") if a.name.is_empty() => Decision::deny(format!(
            "node '{node}' cannot read all nodes, only its own Node object"
        )),
        ("", "get" | "list" | "watch") => Decision::deny(format!(
            "node '{node}' cannot read '{}', only its own Node object",
            a.name
        )),
        _ => Decision::deny(""),
    }
}

/// The node rules (`bootstrappolicy.NodeRules`) for resources the Node
/// authorizer does not subdivide.
fn static_node_rules_allow(a: &RequestAttributes) -> bool {
    const RULES: &[(&str, &[&str], &[&str])] = &[
        ("authentication.k8s.io", &["tokenreviews"], &["create"]),
        (
            "authorization.k8s.io",
            &["subjectaccessreviews", "localsubjectaccessreviews"],
            &["create"],
        ),
        ("", &["services"], &["get", "list", "watch"]),
        ("", &["events"], &["create", "update", "patch"]),
        ("", &["endpoints"], &["get"]),
        (
            "certificates.k8s.io",
            &["certificatesigningrequests"],
            &["create", "get", "list", "watch"],
        ),
        (
            "node.k8s.io",
            &["runtimeclasses"],
            &["get", "list", "watch"],
        ),
        ("storage.k8s.io", &["csidrivers"], &["get", "list", "watch"]),
    ];
    a.subresource.is_empty()
        && RULES.iter().any(|(group, resources, verbs)| {
            *group == a.api_group
                && resources.contains(&a.resource.as_str())
                && verbs.contains(&a.verb.as_str())
        })
}

/// kube-apiserver's bootstrap ClusterRoleBindings for everyone:
/// `system:public-info-viewer` (authenticated and unauthenticated),
/// `system:discovery` and `system:basic-user` (authenticated).
fn default_policy_allows(identity: &Identity, a: &RequestAttributes) -> bool {
    const PUBLIC_INFO: &[&str] = &["/healthz", "/livez", "/readyz", "/version", "/version/"];
    const DISCOVERY: &[&str] = &[
        "/api",
        "/api/*",
        "/apis",
        "/apis/*",
        "/healthz",
        "/livez",
        "/openapi",
        "/openapi/*",
        "/readyz",
        "/version",
        "/version/",
    ];
    let url_matches = |patterns: &[&str]| {
        patterns
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => a.path.starts_with(prefix),
                None => a.path == *pattern,
            })
    };
    let authenticated = identity.in_group(AUTHENTICATED_GROUP);
    let everyone = authenticated || identity.in_group(UNAUTHENTICATED_GROUP);
    if !a.resource_request {
        return a.verb == "get"
            && ((everyone && url_matches(PUBLIC_INFO))
                || (authenticated && url_matches(DISCOVERY)));
    }
    authenticated
        && a.verb == "create"
        && a.subresource.is_empty()
        && matches!(
            (a.api_group.as_str(), a.resource.as_str()),
            (
                "authorization.k8s.io",
                "selfsubjectaccessreviews" | "selfsubjectrulesreviews"
            ) | ("authentication.k8s.io", "selfsubjectreviews")
        )
}

/// The 403 Status for a denied request, worded as kube-apiserver's:
/// `pods "p" is forbidden: User "u" cannot get resource "pods" in API group
/// "" in the namespace "ns": <reason>`, or `forbidden: User "u" cannot get
/// path "/api"` for non-resource requests.
pub fn forbidden(identity: &Identity, a: &RequestAttributes, reason: &str) -> StatusError {
    let user = go_quote(&identity.user);
    let mut message = if a.resource_request {
        let resource = if a.subresource.is_empty() {
            a.resource.clone()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        let scope = if a.namespace.is_empty() {
            "at the cluster scope".to_owned()
        } else {
            format!("in the namespace {}", go_quote(&a.namespace))
        };
        format!(
            "User {user} cannot {} resource {} in API group {} {scope}",
            a.verb,
            go_quote(&resource),
            go_quote(&a.api_group)
        )
    } else {
        format!("User {user} cannot {} path {}", a.verb, go_quote(&a.path))
    };
    message = message
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    if !reason.is_empty() {
        message = format!("{message}: {reason}");
    }
    let qualified = match (a.resource.as_str(), a.api_group.as_str()) {
        ("", _) => String::new(),
        (resource, "") => resource.to_owned(),
        (resource, group) => format!("{resource}.{group}"),
    };
    let message = match (qualified.is_empty(), a.name.is_empty()) {
        (true, _) => format!("forbidden: {message}"),
        (false, true) => format!("{qualified} is forbidden: {message}"),
        (false, false) => format!("{qualified} {} is forbidden: {message}", go_quote(&a.name)),
    };
    let mut details = serde_json::Map::new();
    for (key, value) in [
        ("name", &a.name),
        ("group", &a.api_group),
        ("kind", &a.resource),
    ] {
        if !value.is_empty() {
            details.insert(key.to_owned(), json!(value));
        }
    }
    StatusError {
        reason: Reason::Forbidden,
        message,
        details: Some(Value::Object(details)),
    }
}

/// Axum middleware (`axum::middleware::from_fn_with_state`), after
/// [`authenticate`]: authorizes the request's [`RequestAttributes`] for its
/// [`Identity`] (anonymous if none), answers 403 when denied, and otherwise
/// puts the attributes into the extensions.
pub async fn authorize(
    State(authorizer): State<Arc<Authorizer>>,
    mut request: Request,
    next: Next,
) -> Response {
    let identity = request
        .extensions()
        .get::<Identity>()
        .cloned()
        .unwrap_or_else(Identity::anonymous);
    let attributes = RequestAttributes::from_request(request.method(), request.uri());
    match authorizer.authorize(&identity, &attributes) {
        Decision::Allow => {
            request.extensions_mut().insert(attributes);
            next.run(request).await
        }
        Decision::Deny(reason) => {
            tracing::debug!(user = %identity.user, verb = %attributes.verb, resource = %attributes.resource,
                path = %attributes.path, %reason, "request forbidden");
            status_response(&forbidden(&identity, &attributes, &reason))
        }
    }
}

// === NodeRestriction admission of create bodies ===

/// NodeRestriction's checks of what a node creates, which the authorizer
/// cannot see: a Node must carry the node's own name, a Lease in
/// `kube-node-lease` the node's name, and a Pod must be a mirror pod bound
/// to the node that references no service account, secret, configmap,
/// claim or ephemeral volume, with at most one owner (its Node, as
/// controller). Other identities and other resources pass. `object` is the
/// decoded body.
pub fn admit_node_create(
    identity: &Identity,
    a: &RequestAttributes,
    object: &Value,
) -> Result<(), StatusError> {
    let Some(node) = identity.node_name() else {
        return Ok(());
    };
    if !a.resource_request || a.verb != "create" || !a.subresource.is_empty() {
        return Ok(());
    }
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let refuse = |why: String| {
        let qualified = if a.api_group.is_empty() {
            a.resource.clone()
        } else {
            format!("{}.{}", a.resource, a.api_group)
        };
        let message = if name.is_empty() {
            format!("{qualified} is forbidden: {why}")
        } else {
            format!("{qualified} {} is forbidden: {why}", go_quote(name))
        };
        let mut details = json!({"name": name, "group": a.api_group, "kind": a.resource});
        if let Some(map) = details.as_object_mut() {
            map.retain(|_, value| value.as_str() != Some(""));
        }
        Err(StatusError {
            reason: Reason::Forbidden,
            message,
            details: Some(details),
        })
    };
    let quoted = go_quote(node);
    match (a.api_group.as_str(), a.resource.as_str()) {
        ("", "nodes") if name != node => refuse(format!(
            "node {quoted} is not allowed to modify node {}",
            go_quote(name)
        )),
        ("coordination.k8s.io", "leases") if name != node => refuse(
            "can only access node lease with the same name as the requesting node".to_owned(),
        ),
        ("", "pods") => match pod_create_violation(node, object) {
            Some(why) => refuse(why),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// Why NodeRestriction refuses node `node` creating `pod`, if it does.
fn pod_create_violation(node: &str, pod: &Value) -> Option<String> {
    let quoted = go_quote(node);
    let mirror = pod
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .is_some_and(|annotations| annotations.contains_key(MIRROR_POD_ANNOTATION));
    if !mirror {
        return Some(format!(
            "pod does not have {} annotation, node {quoted} can only create mirror pods",
            go_quote(MIRROR_POD_ANNOTATION)
        ));
    }
    if pod.pointer("/spec/nodeName").and_then(Value::as_str) != Some(node) {
        return Some(format!(
            "node {quoted} can only create pods with spec.nodeName set to itself"
        ));
    }
    let owners = pod
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    if owners.len() > 1 {
        return Some(format!(
            "node {quoted} can only create pods with a single owner reference set to itself"
        ));
    }
    if let Some(owner) = owners.first() {
        let field = |key: &str| owner.get(key).and_then(Value::as_str).unwrap_or_default();
        if field("apiVersion") != "v1" || field("kind") != "Node" || field("name") != node {
            return Some(format!(
                "node {quoted} can only create pods with an owner reference set to itself"
            ));
        }
        if owner.get("controller").and_then(Value::as_bool) != Some(true) {
            return Some(format!(
                "node {quoted} can only create pods with a controller owner reference set to itself"
            ));
        }
        if owner.get("blockOwnerDeletion").and_then(Value::as_bool) == Some(true) {
            return Some(format!(
                "node {quoted} must not set blockOwnerDeletion on an owner reference"
            ));
        }
    }
    let spec = pod.get("spec").cloned().unwrap_or(Value::Null);
    if spec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .is_some_and(|sa| !sa.is_empty())
    {
        return Some(format!(
            "node {quoted} can not create pods that reference a service account"
        ));
    }
    let mut refs = References::default();
    refs.visit(&spec);
    if refs.secrets {
        return Some(format!(
            "node {quoted} can not create pods that reference secrets"
        ));
    }
    if refs.configmaps {
        return Some(format!(
            "node {quoted} can not create pods that reference configmaps"
        ));
    }
    if refs.claims {
        return Some(format!(
            "node {quoted} can not create pods that reference persistentvolumeclaims"
        ));
    }
    if refs.ephemeral {
        return Some(format!(
            "node {quoted} can not create pods that use generic ephemeral volumes"
        ));
    }
    if spec
        .get("resourceClaims")
        .and_then(Value::as_array)
        .is_some_and(|claims| !claims.is_empty())
    {
        return Some(format!(
            "node {quoted} can not create pods that reference resourceclaims"
        ));
    }
    None
}

/// What a pod spec references, found by walking it: any secret reference
/// (volumes of every type, env, envFrom, image pull secrets, projected
/// sources), configmap reference, claim or ephemeral volume.
#[derive(Debug, Default)]
struct References {
    secrets: bool,
    configmaps: bool,
    claims: bool,
    ephemeral: bool,
}

impl References {
    fn visit(&mut self, value: &Value) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    if child.is_null() {
                        continue;
                    }
                    match key.as_str() {
                        "secret"
                        | "secretRef"
                        | "secretKeyRef"
                        | "secretName"
                        | "nodePublishSecretRef"
                        | "nodeStageSecretRef"
                        | "controllerPublishSecretRef"
                        | "controllerExpandSecretRef"
                        | "nodeExpandSecretRef" => self.secrets = true,
                        "imagePullSecrets" => {
                            self.secrets |= child.as_array().is_some_and(|list| !list.is_empty())
                        }
                        "configMap" | "configMapRef" | "configMapKeyRef" => self.configmaps = true,
                        "persistentVolumeClaim" => self.claims = true,
                        "ephemeral" => self.ephemeral = true,
                        _ => {}
                    }
                    self.visit(child);
                }
            }
            Value::Array(items) => items.iter().for_each(|item| self.visit(item)),
            _ => {}
        }
    }
}

// === helpers ===

/// `s` quoted as Go's `%q` does for printable text.
fn go_quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

/// A Status error as an HTTP response: its code, `application/json`, the
/// Status object.
pub fn status_response(error: &StatusError) -> Response {
    let code = StatusCode::from_u16(error.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = error.to_status().to_string();
    (code, [(CONTENT_TYPE, "application/json")], body).into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// A graph over explicit (node, kind, namespace, name) facts.
    #[derive(Default)]
    struct Facts(HashSet<(String, GraphKind, String, String)>);

    impl Facts {
        fn with(mut self, node: &str, kind: GraphKind, namespace: &str, name: &str) -> Self {
            self.0
                .insert((node.into(), kind, namespace.into(), name.into()));
            self
        }
    }

    impl NodeGraph for Facts {
        fn node_may_read(&self, node: &str, kind: GraphKind, namespace: &str, name: &str) -> bool {
            self.0
                .contains(&(node.into(), kind, namespace.into(), name.into()))
        }
    }

    fn authorizer() -> Authorizer {
        let facts = Facts::default()
            .with("n1", GraphKind::Pod, "default", "p1")
            .with("n1", GraphKind::ConfigMap, "default", "cm1")
            .with("n1", GraphKind::Secret, "default", "s1")
            .with("n1", GraphKind::PersistentVolumeClaim, "default", "pvc1")
            .with("n1", GraphKind::PersistentVolume, "", "pv1")
            .with("n1", GraphKind::ServiceAccount, "default", "sa1")
            .with("n2", GraphKind::Pod, "default", "p2")
            .with("n2", GraphKind::Secret, "default", "s2");
        Authorizer::new(Arc::new(facts))
    }

    fn parse(method: Method, uri: &str) -> RequestAttributes {
        RequestAttributes::from_request(&method, &uri.parse().expect("uri"))
    }

    #[test]
    fn request_attributes_follow_request_info() {
        let a = parse(Method::GET, "/api/v1/namespaces/default/pods/p1/status");
        assert_eq!(
            (
                a.verb.as_str(),
                a.resource.as_str(),
                a.subresource.as_str(),
                a.namespace.as_str(),
                a.name.as_str()
            ),
            ("get", "pods", "status", "default", "p1")
        );
        assert!(a.resource_request);
        let a = parse(
            Method::GET,
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1&watch=true",
        );
        assert_eq!(
            (a.verb.as_str(), a.field_selector_node.as_deref()),
            ("watch", Some("n1"))
        );
        let a = parse(
            Method::GET,
            "/api/v1/nodes?fieldSelector=metadata.name%3D%3Dn1&limit=500",
        );
        assert_eq!((a.verb.as_str(), a.name.as_str()), ("list", "n1"));
        let a = parse(
            Method::GET,
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1",
        );
        assert_eq!(
            (
                a.api_group.as_str(),
                a.api_version.as_str(),
                a.resource.as_str(),
                a.name.as_str()
            ),
            ("coordination.k8s.io", "v1", "leases", "n1")
        );
        let a = parse(Method::DELETE, "/api/v1/namespaces/default/pods");
        assert_eq!(a.verb, "deletecollection");
        let a = parse(Method::GET, "/api/v1/namespaces/ns1");
        assert_eq!(
            (a.resource.as_str(), a.name.as_str(), a.namespace.as_str()),
            ("namespaces", "ns1", "ns1")
        );
        let a = parse(Method::PUT, "/api/v1/namespaces/ns1/finalize");
        assert_eq!(
            (a.resource.as_str(), a.subresource.as_str(), a.verb.as_str()),
            ("namespaces", "finalize", "update")
        );
        let a = parse(Method::GET, "/api/v1/watch/namespaces/default/pods");
        assert_eq!(
            (a.verb.as_str(), a.resource.as_str(), a.namespace.as_str()),
            ("watch", "pods", "default")
        );
        let a = parse(
            Method::POST,
            "/api/v1/namespaces/default/serviceaccounts/sa1/token",
        );
        assert_eq!(
            (a.verb.as_str(), a.subresource.as_str()),
            ("create", "token")
        );
        for path in [
            "/version",
            "/api",
            "/api/v1",
            "/apis/apps/v1",
            "/openapi/v3",
            "/healthz",
        ] {
            let a = parse(Method::GET, path);
            assert!(!a.resource_request, "{path}");
            assert_eq!((a.verb.as_str(), a.path.as_str()), ("get", path));
        }
        let a = parse(
            Method::GET,
            "/api/v1/pods?fieldSelector=spec.nodeName!%3Dn1",
        );
        assert_eq!(a.field_selector_node, None);
    }

    #[test]
    fn node_authorizer_decision_table() {
        let authz = authorizer();
        let n1 = Identity::node("n1");
        let r = RequestAttributes::resource;
        #[rustfmt::skip]
        let table: Vec<(RequestAttributes, bool)> = vec![
            // Nodes: own only.
            (r("get", "", "nodes").named("n1"), true),
            (r("get", "", "nodes").named("n2"), false),
            (r("list", "", "nodes"), false),
            (r("list", "", "nodes").named("n1"), true),
            (r("watch", "", "nodes").named("n1"), true),
            (r("create", "", "nodes"), true),
            (r("update", "", "nodes").named("n1"), true),
            (r("patch", "", "nodes").named("n1").with_subresource("status"), true),
            (r("patch", "", "nodes").named("n2").with_subresource("status"), false),
            (r("update", "", "nodes").named("n2"), false),
            (r("delete", "", "nodes").named("n1"), false),
            // Pods.
            (r("list", "", "pods").on_node("n1"), true),
            (r("watch", "", "pods").on_node("n1"), true),
            (r("list", "", "pods").on_node("n2"), false),
            (r("list", "", "pods"), false),
            (r("get", "", "pods").in_namespace("default").named("p1"), true),
            (r("get", "", "pods").in_namespace("default").named("p2"), false),
            (r("create", "", "pods").in_namespace("default"), true),
            (r("delete", "", "pods").in_namespace("default").named("p1"), true),
            (r("delete", "", "pods").in_namespace("default").named("p2"), false),
            (r("patch", "", "pods").in_namespace("default").named("p1").with_subresource("status"), true),
            (r("update", "", "pods").in_namespace("default").named("p2").with_subresource("status"), false),
            (r("update", "", "pods").in_namespace("default").named("p1"), false),
            (r("create", "", "pods").in_namespace("default").named("p1").with_subresource("eviction"), true),
            (r("get", "", "pods").in_namespace("default").named("p1").with_subresource("log"), false),
            // Objects referenced by its pods.
            (r("get", "", "configmaps").in_namespace("default").named("cm1"), true),
            (r("watch", "", "configmaps").in_namespace("default").named("cm1"), true),
            (r("list", "", "configmaps").in_namespace("default"), false),
            (r("get", "", "configmaps").in_namespace("default").named("cm2"), false),
            (r("get", "", "secrets").in_namespace("default").named("s1"), true),
            (r("get", "", "secrets").in_namespace("default").named("s2"), false),
            (r("update", "", "secrets").in_namespace("default").named("s1"), false),
            (r("get", "", "persistentvolumeclaims").in_namespace("default").named("pvc1"), true),
            (r("list", "", "persistentvolumeclaims").in_namespace("default"), false),
            (r("patch", "", "persistentvolumeclaims").in_namespace("default").named("pvc1").with_subresource("status"), true),
            (r("get", "", "persistentvolumes").named("pv1"), true),
            (r("get", "", "persistentvolumes").named("pv2"), false),
            (r("create", "", "serviceaccounts").in_namespace("default").named("sa1").with_subresource("token"), true),
            (r("create", "", "serviceaccounts").in_namespace("default").named("sa2").with_subresource("token"), false),
            (r("get", "", "serviceaccounts").in_namespace("default").named("sa1"), false),
            // Leases.
            (r("get", "coordination.k8s.io", "leases").in_namespace("kube-node-lease").named("n1"), true),
            (r("update", "coordination.k8s.io", "leases").in_namespace("kube-node-lease").named("n1"), true),
            (r("create", "coordination.k8s.io", "leases").in_namespace("kube-node-lease"), true),
            (r("update", "coordination.k8s.io", "leases").in_namespace("kube-node-lease").named("n2"), false),
            (r("get", "coordination.k8s.io", "leases").in_namespace("default").named("n1"), false),
            (r("list", "coordination.k8s.io", "leases").in_namespace("kube-node-lease"), false),
            // Static rules.
            (r("create", "", "events").in_namespace("default"), true),
            (r("patch", "", "events").in_namespace("default").named("e1"), true),
            (r("delete", "", "events").in_namespace("default").named("e1"), false),
            (r("list", "", "services"), true),
            (r("get", "", "endpoints").in_namespace("default").named("kubernetes"), true),
            (r("create", "certificates.k8s.io", "certificatesigningrequests"), true),
            // Everything else.
            (r("list", "", "namespaces"), false),
            (r("create", "apps", "deployments").in_namespace("default"), false),
            (r("list", "devices.kubeedge.io", "devices"), false),
            (r("create", "authorization.k8s.io", "selfsubjectaccessreviews"), true),
            (RequestAttributes::non_resource("get", "/api"), true),
            (RequestAttributes::non_resource("get", "/version"), true),
            (RequestAttributes::non_resource("post", "/api"), false),
            (RequestAttributes::non_resource("get", "/metrics"), false),
        ];
        for (attributes, allowed) in table {
            let decision = authz.authorize(&n1, &attributes);
            assert_eq!(
                decision.is_allowed(),
                allowed,
                "{attributes:?} -> {decision:?}"
            );
        }
    }

    #[test]
    fn node_identity_needs_the_nodes_group_and_a_name() {
        let authz = authorizer();
        let attributes = RequestAttributes::resource("get", "", "nodes").named("n1");
        let impostor = Identity::authenticated("system:node:n1", "", vec![]);
        assert!(!authz.authorize(&impostor, &attributes).is_allowed());
        let nameless = Identity::node("");
        assert_eq!(
            authz.authorize(&nameless, &attributes),
            Decision::Deny("unknown node for user \"system:node:\"".to_owned())
        );
    }

    #[test]
    fn masters_may_do_anything_and_others_nothing_beyond_discovery() {
        let authz = authorizer();
        let admin = Identity::authenticated("kubernetes-admin", "", vec![MASTERS_GROUP.to_owned()]);
        let alice = Identity::authenticated("alice", "", vec!["dev".to_owned()]);
        let anonymous = Identity::anonymous();
        let delete =
            RequestAttributes::resource("deletecollection", "", "pods").in_namespace("default");
        assert!(authz.authorize(&admin, &delete).is_allowed());
        assert!(
            authz
                .authorize(&admin, &RequestAttributes::non_resource("get", "/metrics"))
                .is_allowed()
        );
        assert_eq!(
            authz.authorize(&alice, &delete),
            Decision::Deny(RBAC_NOT_EVALUATED.to_owned())
        );
        for path in [
            "/api",
            "/apis/apps/v1",
            "/openapi/v3",
            "/version",
            "/healthz",
        ] {
            assert!(
                authz
                    .authorize(&alice, &RequestAttributes::non_resource("get", path))
                    .is_allowed()
            );
        }
        for path in ["/version", "/version/", "/healthz", "/livez", "/readyz"] {
            assert!(
                authz
                    .authorize(&anonymous, &RequestAttributes::non_resource("get", path))
                    .is_allowed()
            );
        }
        for path in ["/api", "/apis", "/openapi/v3", "/livez/ping", "/metrics"] {
            assert!(
                !authz
                    .authorize(&anonymous, &RequestAttributes::non_resource("get", path))
                    .is_allowed()
            );
        }
        assert_eq!(
            authz.authorize(&anonymous, &delete),
            Decision::Deny(String::new())
        );
    }

    #[test]
    fn forbidden_messages_read_as_upstream() {
        let authz = authorizer();
        let n1 = Identity::node("n1");
        let attributes = RequestAttributes::resource("get", "", "nodes").named("n2");
        let Decision::Deny(reason) = authz.authorize(&n1, &attributes) else {
            panic!("allowed");
        };
        let status = forbidden(&n1, &attributes, &reason).to_status();
        assert_eq!(
            status["message"],
            "nodes \"n2\" is forbidden: User \"system:node:n1\" cannot get resource \"nodes\" in API group \"\" at the cluster scope: node 'n1' cannot read 'n2', only its own Node object"
        );
        assert_eq!(status["code"], 403);
        assert_eq!(status["reason"], "Forbidden");
        assert_eq!(status["details"], json!({"name": "n2", "kind": "nodes"}));

        let attributes =
            RequestAttributes::resource("list", "apps", "deployments").in_namespace("ns1");
        let status = forbidden(&Identity::anonymous(), &attributes, "").to_status();
        assert_eq!(
            status["message"],
            "deployments.apps is forbidden: User \"system:anonymous\" cannot list resource \"deployments\" in API group \"apps\" in the namespace \"ns1\""
        );
        let status = forbidden(
            &Identity::anonymous(),
            &RequestAttributes::non_resource("get", "/api"),
            "",
        )
        .to_status();
        assert_eq!(
            status["message"],
            "forbidden: User \"system:anonymous\" cannot get path \"/api\""
        );
        assert_eq!(status["details"], json!({}));
    }

    #[test]
    fn token_file_reads_like_kube_apiserver() {
        let tokens = TokenAuthenticator::from_csv(
            "t1,alice,uid-1,\"dev,ops\"\n\n t2,bob,uid-2\r\n,empty,x\nt3,\"carol, jr\",3,system:masters\nt1,alice2,uid-9\n",
        )
        .expect("parses");
        let alice = tokens.authenticate("t1").expect("t1");
        assert_eq!(alice.user, "alice2", "a later duplicate wins");
        let bob = tokens
            .authenticate(" t2")
            .expect("leading space is part of the token");
        assert_eq!((bob.user.as_str(), bob.uid.as_str()), ("bob", "uid-2"));
        assert_eq!(bob.groups, vec![AUTHENTICATED_GROUP.to_owned()]);
        let carol = tokens.authenticate("t3").expect("t3");
        assert_eq!(carol.user, "carol, jr");
        assert_eq!(
            carol.groups,
            vec!["system:masters".to_owned(), AUTHENTICATED_GROUP.to_owned()]
        );
        assert!(tokens.authenticate("").is_none());
        let tokens = TokenAuthenticator::from_csv("a,b,c,\"x,y\"\n").expect("parses");
        assert_eq!(
            tokens.authenticate("a").expect("a").groups,
            ["x", "y", AUTHENTICATED_GROUP]
        );
        assert!(matches!(
            TokenAuthenticator::from_csv("ok,u,1\nshort,user\n"),
            Err(TokenFileError::Malformed { line: 2, .. })
        ));
        assert!(matches!(
            TokenAuthenticator::from_csv("\"open,u,1\n"),
            Err(TokenFileError::Malformed { .. })
        ));
    }

    #[test]
    fn registered_tokens_come_and_go() {
        let tokens = TokenAuthenticator::from_csv("t,file-user,1\n").expect("parses");
        tokens.register(
            "t",
            Identity::authenticated("cloudcore", "", vec![MASTERS_GROUP.to_owned()]),
        );
        assert_eq!(tokens.authenticate("t").expect("t").user, "cloudcore");
        assert!(tokens.revoke("t"));
        assert_eq!(tokens.authenticate("t").expect("t").user, "file-user");
        assert!(!tokens.revoke("t"));
    }

    #[test]
    fn credentials_are_tried_in_kube_apiserver_order() {
        let tokens = Arc::new(TokenAuthenticator::from_csv("good,bob,1\n").expect("parses"));
        let authn = Authenticator::new(tokens);
        let peer = PeerCertificate {
            common_name: "kubernetes-admin".to_owned(),
            organizations: vec![MASTERS_GROUP.to_owned()],
        };
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, "Bearer bad".parse().expect("header"));
        let identity = authn
            .authenticate(Some(&peer), &headers)
            .expect("certificate wins");
        assert_eq!(identity.user, "kubernetes-admin");
        assert_eq!(identity.groups, [MASTERS_GROUP, AUTHENTICATED_GROUP]);
        let error = authn.authenticate(None, &headers).expect_err("bad token");
        assert_eq!(error.to_status()["code"], 401);
        let nameless = PeerCertificate {
            common_name: String::new(),
            organizations: vec![],
        };
        headers.insert(AUTHORIZATION, "bearer good".parse().expect("header"));
        assert_eq!(
            authn
                .authenticate(Some(&nameless), &headers)
                .expect("token")
                .user,
            "bob"
        );
        headers.insert(AUTHORIZATION, "Basic Ym9iOnB3".parse().expect("header"));
        assert!(
            authn
                .authenticate(None, &headers)
                .expect("anonymous")
                .is_anonymous()
        );
        assert!(
            authn
                .authenticate(None, &HeaderMap::new())
                .expect("anonymous")
                .is_anonymous()
        );
        let strict = Authenticator::new(Arc::new(TokenAuthenticator::new())).with_anonymous(false);
        assert!(strict.authenticate(None, &HeaderMap::new()).is_err());
    }

    #[test]
    fn node_restriction_checks_create_bodies() {
        let n1 = Identity::node("n1");
        let create =
            |resource: &str, group: &str| RequestAttributes::resource("create", group, resource);
        let node = |name: &str| json!({"metadata": {"name": name}});
        assert!(admit_node_create(&n1, &create("nodes", ""), &node("n1")).is_ok());
        let error =
            admit_node_create(&n1, &create("nodes", ""), &node("n2")).expect_err("other node");
        assert_eq!(
            error.message,
            "nodes \"n2\" is forbidden: node \"n1\" is not allowed to modify node \"n2\""
        );
        let leases = create("leases", "coordination.k8s.io").in_namespace(NODE_LEASE_NAMESPACE);
        assert!(admit_node_create(&n1, &leases, &node("n1")).is_ok());
        assert!(admit_node_create(&n1, &leases, &node("n2")).is_err());

        let pods = create("pods", "").in_namespace("default");
        let mirror = json!({
            "metadata": {"name": "static-web-n1", "annotations": {MIRROR_POD_ANNOTATION: "hash"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "u", "controller": true}]},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}
        });
        assert!(admit_node_create(&n1, &pods, &mirror).is_ok());
        let mut plain = mirror.clone();
        plain["metadata"]["annotations"] = json!({});
        let error = admit_node_create(&n1, &pods, &plain).expect_err("not a mirror pod");
        assert!(
            error.message.contains("can only create mirror pods"),
            "{}",
            error.message
        );
        let mut elsewhere = mirror.clone();
        elsewhere["spec"]["nodeName"] = json!("n2");
        assert!(admit_node_create(&n1, &pods, &elsewhere).is_err());
        let mut with_secret = mirror.clone();
        with_secret["spec"]["volumes"] = json!([{"name": "v", "secret": {"secretName": "s"}}]);
        let error = admit_node_create(&n1, &pods, &with_secret).expect_err("secret");
        assert!(
            error
                .message
                .ends_with("can not create pods that reference secrets"),
            "{}",
            error.message
        );
        let mut with_cm = mirror.clone();
        with_cm["spec"]["containers"][0]["envFrom"] = json!([{"configMapRef": {"name": "cm"}}]);
        assert!(admit_node_create(&n1, &pods, &with_cm).is_err());
        let admin = Identity::authenticated("kubernetes-admin", "", vec![MASTERS_GROUP.to_owned()]);
        assert!(admit_node_create(&admin, &pods, &plain).is_ok());
    }
}
