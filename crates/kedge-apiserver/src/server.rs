//! The API server as a whole: configuration, start-up (certificates, the
//! admin kubeconfig, bootstrap objects, controllers), and the HTTP routing
//! of every request to discovery, health or the REST handlers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use kedge_store::Store;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{Admission, Ipv4Range};
use crate::auth::{self, Authenticator, Authorizer, TokenAuthenticator};
use crate::codec::{self, Representation};
use crate::controllers::{self, ControllerSettings};
use crate::pki::{Pki, ServingNames};
use crate::request::{Query, Verb, parse_resource_path};
use crate::resources::Catalog;
use crate::rest::{Api, Call, Limits, Reply};
use crate::status::{Reason, StatusError};
use crate::storage::Objects;
use crate::{crd, discovery, graph, openapi, tls};

/// How the API server runs.
#[derive(Debug, Clone)]
pub struct ApiServerConfig {
    /// The address to listen on (port 0 picks a free port).
    pub bind: SocketAddr,
    /// Where certificates and the admin kubeconfig live.
    pub data_dir: PathBuf,
    /// The largest request body accepted, in bytes.
    pub max_request_body_bytes: usize,
    /// The CIDR service cluster IPs come from.
    pub service_cluster_ip_range: String,
}

/// Why the API server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is unusable.
    #[error("invalid API server setting: {0}")]
    Config(String),
    /// Certificates could not be created or loaded.
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The listener could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The bootstrap objects could not be written.
    #[error("cannot create the bootstrap objects: {0}")]
    Bootstrap(StatusError),
}

/// A started API server.
#[derive(Debug, Clone)]
pub struct RunningApiServer {
    /// The address it listens on.
    pub address: SocketAddr,
    /// `https://address`.
    pub url: String,
    /// The admin kubeconfig it wrote.
    pub admin_kubeconfig: PathBuf,
    /// The cluster CA in PEM.
    pub ca_pem: String,
}

/// What every request handler shares.
struct Shared {
    api: Api,
    server_address: String,
}

/// How often history older than one interval is compacted away.
pub const COMPACTION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);

/// Starts the API server over `store`: certificates and kubeconfig in the
/// data dir, bootstrap objects, the controllers, the compactor and the
/// HTTPS listener, all on `tracker` and stopped by `token`.
pub async fn start(
    config: ApiServerConfig,
    store: Arc<dyn Store>,
    token: CancellationToken,
    tracker: &TaskTracker,
) -> Result<RunningApiServer, StartError> {
    let range = Ipv4Range::parse(&config.service_cluster_ip_range).map_err(StartError::Config)?;
    let pki = Pki::load_or_create(&config.data_dir, &ServingNames::for_bind(config.bind.ip()))?;
    let listener = TcpListener::bind(config.bind)
        .await
        .map_err(|source| StartError::Bind {
            address: config.bind,
            source,
        })?;
    let address = listener.local_addr().map_err(|source| StartError::Bind {
        address: config.bind,
        source,
    })?;
    let url = crate::pki::server_url(address);
    let admin_kubeconfig = pki.write_admin_kubeconfig(&url)?;
    let tls_config = tls::server_config(&pki)?;

    let catalog = Catalog::new();
    let api = Api {
        catalog: catalog.clone(),
        objects: Objects::new(Arc::clone(&store)),
        limits: Limits {
            max_body_bytes: config.max_request_body_bytes,
        },
        admission: Arc::new(Admission::new(range)),
    };
    crd::load(&api).await.map_err(StartError::Bootstrap)?;
    let settings = ControllerSettings {
        ca_pem: pki.ca_cert_pem().to_owned(),
        advertise_address: advertise_address(address),
        port: address.port(),
    };
    controllers::bootstrap(&api, &settings)
        .await
        .map_err(StartError::Bootstrap)?;
    tracker.spawn(controllers::run(api.clone(), settings, token.clone()));
    tracker.spawn(crd::run(api.clone(), token.clone()));
    // Bounded history, as kube-apiserver compacts etcd every 5 minutes.
    let compactor = kedge_store::run_compactor(Arc::clone(&store), COMPACTION_INTERVAL);
    let compactor_token = token.clone();
    tracker.spawn(async move {
        tokio::select! {
            () = compactor => {}
            () = compactor_token.cancelled() => {}
        }
    });

    let token_file = config.data_dir.join(auth::TOKEN_FILE);
    let tokens = if token_file.exists() {
        TokenAuthenticator::load(&token_file).map_err(|e| StartError::Config(e.to_string()))?
    } else {
        TokenAuthenticator::new()
    };
    let authenticator = Arc::new(Authenticator::new(Arc::new(tokens)));
    let node_graph = graph::StoreGraph::new();
    tracker.spawn(node_graph.clone().run(api.clone(), token.clone()));
    let authorizer = Arc::new(Authorizer::new(Arc::new(node_graph)));
    let shared = Arc::new(Shared {
        api,
        server_address: address.to_string(),
    });
    let router = axum::Router::new()
        .fallback(dispatch)
        .with_state(shared)
        .layer(from_fn_with_state(authorizer, auth::authorize))
        .layer(from_fn_with_state(authenticator, auth::authenticate));
    tracker.spawn(tls::serve(listener, tls_config, router, token));
    tracing::info!(%url, kubeconfig = %admin_kubeconfig.display(), "API server listening");
    Ok(RunningApiServer {
        address,
        url,
        admin_kubeconfig,
        ca_pem: pki.ca_cert_pem().to_owned(),
    })
}

/// The address the `kubernetes` endpoints name: the bind address, or
/// loopback for a wildcard bind.
fn advertise_address(address: SocketAddr) -> String {
    if address.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        address.ip().to_string()
    }
}

/// Answers `error` as a `Status` object.
fn status_response(error: &StatusError) -> Response {
    let code = StatusCode::from_u16(error.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (code, error.to_status().to_string()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(codec::JSON));
    response
}

fn json_response(
    code: u16,
    body: &Value,
    content_type: &'static str,
    representation: Representation,
) -> Response {
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    let (text, content_type) = match representation {
        Representation::Yaml => match serde_saphyr::to_string(body) {
            Ok(text) => (text.into_bytes(), codec::YAML),
            Err(error) => {
                return status_response(&StatusError::internal(format!(
                    "cannot encode YAML: {error}"
                )));
            }
        },
        _ => match serde_json::to_vec(body) {
            Ok(bytes) => (bytes, content_type),
            Err(error) => {
                return status_response(&StatusError::internal(format!(
                    "cannot encode JSON: {error}"
                )));
            }
        },
    };
    let mut response = (code, text).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Routes one request.
async fn dispatch(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let representation = match codec::negotiate(header_str(request.headers(), header::ACCEPT)) {
        Ok(representation) => representation,
        Err(error) => return status_response(&error),
    };
    match serve(&shared, representation, request).await {
        Ok(response) => response,
        Err(error) => status_response(&error),
    }
}

async fn serve(
    shared: &Shared,
    representation: Representation,
    request: Request,
) -> Result<Response, StatusError> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let query = Query::parse(request.uri().query());
    let catalog = &shared.api.catalog;

    // Non-resource paths.
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let document = match (method.clone(), segments.as_slice()) {
        (Method::GET, ["version"]) => Some(discovery::version()),
        (Method::GET, ["healthz" | "livez" | "readyz", ..]) => {
            return Ok((StatusCode::OK, "ok").into_response());
        }
        (Method::GET, ["api"]) => Some(discovery::core_versions(&shared.server_address)),
        (Method::GET, ["apis"]) => Some(discovery::group_list(catalog)),
        (Method::GET, ["api", version]) => discovery::resource_list(catalog, "", version),
        (Method::GET, ["apis", group]) => discovery::group(catalog, group),
        (Method::GET, ["apis", group, version]) => {
            discovery::resource_list(catalog, group, version)
        }
        (Method::GET, ["openapi", "v3", rest @ ..]) => openapi::document(catalog, rest),
        _ => None,
    };
    if let Some(document) = document {
        return Ok(json_response(200, &document, codec::JSON, representation));
    }

    let watch = query.flag("watch")?;
    let Some(resource_request) =
        parse_resource_path(method.as_str(), &path, watch, |group, version, plural| {
            catalog
                .get(group, version, plural)
                .is_some_and(|r| r.namespaced)
        })
    else {
        return Err(StatusError::new(
            Reason::NotFound,
            "the server could not find the requested resource",
        ));
    };
    let identity = request.extensions().get::<auth::Identity>().cloned();

    let content_type = header_str(request.headers(), header::CONTENT_TYPE).map(str::to_owned);
    let limit = shared.api.limits.max_body_bytes;
    let body = if matches!(resource_request.verb, Verb::Get | Verb::List | Verb::Watch) {
        bytes::Bytes::new()
    } else {
        axum::body::to_bytes(request.into_body(), limit.saturating_add(1))
            .await
            .map_err(|_| codec::too_large(limit))?
    };
    let call = Call {
        identity,
        request: resource_request,
        query,
        content_type: content_type.as_deref(),
        representation,
        body,
    };
    match shared.api.handle(call).await? {
        Reply::Json {
            code,
            body,
            content_type,
            warnings,
        } => {
            let mut response = json_response(code, &body, content_type, representation);
            for warning in warnings {
                let text = format!("299 - {}", Value::String(warning));
                if let Ok(value) = HeaderValue::from_str(&text) {
                    response.headers_mut().append(header::WARNING, value);
                }
            }
            Ok(response)
        }
        Reply::Watch {
            content_type,
            events,
        } => {
            let body = Body::from_stream(events.map(Ok::<_, std::convert::Infallible>));
            let mut response = (StatusCode::OK, body).into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            Ok(response)
        }
    }
}
