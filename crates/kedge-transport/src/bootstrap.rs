//! The edge's certificate bootstrap and renewal (KubeEdge's edge
//! certmanager, protocol.md §4.2, §4.3).
//!
//! [`ensure_certificates`] runs when the edge starts:
//!
//! 1. If the CA, certificate and key files hold a usable set (they parse,
//!    the key belongs to the certificate, the certificate is signed by the
//!    CA, is valid now and has CN `system:node:<nodeName>`), they are used as
//!    they are: no network call.
//! 2. Otherwise the join token is needed. `GET /ca.crt` from the certificate
//!    server **without** verifying it; SHA-256 of the DER must equal the
//!    token's first part, or the bootstrap stops
//!    ([`BootstrapError::CaHashMismatch`]). The CA is saved as PEM.
//! 3. A new P-256 key and a PKCS#10 request (CN `system:node:<nodeName>`, O
//!    `system:nodes`, as KubeEdge v1.16+ edges) are made, and
//!    `GET /edge.crt` with the CSR as body, `Authorization: Bearer <JWT>` and
//!    `NodeName`, this time verifying the server against the fetched CA.
//! 4. The certificate (PEM) and the key (SEC1 `EC PRIVATE KEY` PEM, mode
//!    0600, as KubeEdge writes it) are saved.
//!
//! [`renewal_deadline`] says when to renew: at a random 70–90 % of the
//! certificate's lifetime, as KubeEdge. [`renew`] repeats steps 3 and 4,
//! authenticated by the current client certificate instead of a token.
//! [`EdgeCredentials::client_config`] is the TLS configuration of the hub
//! connection. Files are written atomically (temporary file, fsync,
//! rename).

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{Method, StatusCode, Uri, header};
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::RootCertStore;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer as _;

use crate::ca::{
    CaError, NODE_COMMON_NAME_PREFIX, NODES_ORGANIZATION, ca_hash, key_pair_from_der, pem_encode,
    private_key_der, sec1_from_pkcs8,
};
use crate::certserver::{CA_PATH, CERT_PATH, NODE_NAME_HEADER};
use crate::token::{TokenError, split_token};

/// KubeEdge's default CA file (`edgeHub.tlsCaFile`).
pub const DEFAULT_CA_FILE: &str = "/etc/kubeedge/ca/rootCA.crt";
/// KubeEdge's default node certificate file (`edgeHub.tlsCertFile`).
pub const DEFAULT_CERT_FILE: &str = "/etc/kubeedge/certs/server.crt";
/// KubeEdge's default node key file (`edgeHub.tlsPrivateKeyFile`).
pub const DEFAULT_KEY_FILE: &str = "/etc/kubeedge/certs/server.key";
/// The most bytes read from a certificate server's answer (KubeEdge's
/// `MaxRespBodyLength`).
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// What the bootstrap needs to know.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapConfig {
    /// This node's name.
    pub node_name: String,
    /// The certificate server, such as `https://10.0.0.1:10002`
    /// (`edgeHub.httpServer`).
    pub server: String,
    /// The join token (`edgeHub.token`); only needed when no usable
    /// certificate is on disk.
    pub token: String,
    /// Where the CA certificate is kept (PEM).
    pub ca_file: PathBuf,
    /// Where the node certificate is kept (PEM).
    pub cert_file: PathBuf,
    /// Where the node key is kept (PEM, mode 0600).
    pub key_file: PathBuf,
    /// How long one exchange with the certificate server may take.
    pub request_timeout: Duration,
}

impl std::fmt::Debug for BootstrapConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapConfig")
            .field("node_name", &self.node_name)
            .field("server", &self.server)
            .field(
                "token",
                &if self.token.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl BootstrapConfig {
    /// A configuration with KubeEdge's default paths and a 30 s request
    /// timeout.
    pub fn new(
        node_name: impl Into<String>,
        server: impl Into<String>,
        token: impl Into<String>,
    ) -> Self {
        Self {
            node_name: node_name.into(),
            server: server.into(),
            token: token.into(),
            ca_file: PathBuf::from(DEFAULT_CA_FILE),
            cert_file: PathBuf::from(DEFAULT_CERT_FILE),
            key_file: PathBuf::from(DEFAULT_KEY_FILE),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// A failure to obtain, load or renew the node's certificate.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// There is no usable certificate on disk and no join token to get one.
    #[error("no usable node certificate ({reason}) and no join token to request one")]
    NoToken {
        /// Why the certificate on disk is not usable.
        reason: String,
    },
    /// The join token is malformed.
    #[error("bad join token")]
    Token(#[from] TokenError),
    /// The CA served is not the one the token names: the bootstrap stops.
    #[error(
        "the CA served by {server} has hash {actual}, the join token expects {expected}: refusing it"
    )]
    CaHashMismatch {
        /// The certificate server.
        server: String,
        /// The hash in the token.
        expected: String,
        /// The hash of the CA served.
        actual: String,
    },
    /// The server URL is not `https://host[:port]`.
    #[error("bad certificate server URL {url:?}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Connecting or the TLS handshake failed.
    #[error("cannot reach the certificate server {url}")]
    Connect {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP exchange with {url} failed")]
    Http {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: hyper::Error,
    },
    /// The exchange took longer than the request timeout.
    #[error("{url} did not answer within {timeout:?}")]
    Timeout {
        /// The URL.
        url: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The server refused the request.
    #[error("{url} answered {status}: {message}")]
    Status {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The body of the answer (the server's reason).
        message: String,
    },
    /// The server's answer is not what was asked for.
    #[error("unusable answer from {url}: {reason}")]
    BadResponse {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("cannot access {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Making the key or request, or the TLS configuration, failed.
    #[error("credential handling failed")]
    Credentials(#[from] CaError),
    /// rustls refused the configuration.
    #[error("invalid TLS configuration")]
    Tls(#[from] rustls::Error),
}

/// The node's credentials: the CA, its certificate and its key.
#[derive(Clone, PartialEq, Eq)]
pub struct EdgeCredentials {
    node_name: String,
    ca_der: CertificateDer<'static>,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl std::fmt::Debug for EdgeCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeCredentials")
            .field("node_name", &self.node_name)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl EdgeCredentials {
    /// Checks and assembles credentials: the key must belong to the
    /// certificate, the certificate must be signed by the CA, valid now and
    /// name node `node_name`. The error says what is wrong.
    pub fn new(
        node_name: &str,
        ca_der: CertificateDer<'static>,
        cert_der: CertificateDer<'static>,
        key_der: Vec<u8>,
    ) -> Result<Self, String> {
        let (_, ca) = X509Certificate::from_der(&ca_der)
            .map_err(|err| format!("the CA does not parse: {err}"))?;
        let (_, cert) = X509Certificate::from_der(&cert_der)
            .map_err(|err| format!("the certificate does not parse: {err}"))?;
        cert.verify_signature(Some(ca.public_key()))
            .map_err(|_| "the certificate is not signed by the CA".to_owned())?;
        let key = key_pair_from_der(&key_der).map_err(|err| err.to_string())?;
        if cert.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice() {
            return Err("the key does not belong to the certificate".to_owned());
        }
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|attr| attr.as_str().ok())
            .unwrap_or_default();
        let wanted = format!("{NODE_COMMON_NAME_PREFIX}{node_name}");
        if common_name != wanted {
            return Err(format!(
                "the certificate is for CN {common_name:?}, not {wanted:?}"
            ));
        }
        let not_before = system_time(cert.validity().not_before.timestamp());
        let not_after = system_time(cert.validity().not_after.timestamp());
        let now = SystemTime::now();
        if now >= not_after {
            return Err("the certificate has expired".to_owned());
        }
        if now < not_before {
            return Err("the certificate is not valid yet".to_owned());
        }
        Ok(Self {
            node_name: node_name.to_owned(),
            ca_der,
            cert_der,
            key_der,
            not_before,
            not_after,
        })
    }

    /// Reads the credentials from the files of `config`: `Ok(Err(reason))`
    /// when they are missing or unusable, `Err` when a file cannot be read.
    pub fn load(config: &BootstrapConfig) -> Result<Result<Self, String>, BootstrapError> {
        let (Some(ca_pem), Some(cert_pem), Some(key_pem)) = (
            read_optional(&config.ca_file)?,
            read_optional(&config.cert_file)?,
            read_optional(&config.key_file)?,
        ) else {
            return Ok(Err("the CA, certificate or key file is missing".to_owned()));
        };
        let Ok(ca_der) = CertificateDer::from_pem_slice(&ca_pem) else {
            return Ok(Err(format!(
                "{} holds no PEM certificate",
                config.ca_file.display()
            )));
        };
        let Ok(cert_der) = CertificateDer::from_pem_slice(&cert_pem) else {
            return Ok(Err(format!(
                "{} holds no PEM certificate",
                config.cert_file.display()
            )));
        };
        let key_der = match PrivateKeyDer::from_pem_slice(&key_pem) {
            Ok(PrivateKeyDer::Sec1(key)) => key.secret_sec1_der().to_vec(),
            Ok(PrivateKeyDer::Pkcs8(key)) => key.secret_pkcs8_der().to_vec(),
            _ => {
                return Ok(Err(format!(
                    "{} holds no EC or PKCS#8 PEM key",
                    config.key_file.display()
                )));
            }
        };
        Ok(Self::new(&config.node_name, ca_der, cert_der, key_der))
    }

    /// The node these credentials are for.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// The node certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The node key, DER (SEC1 when made here).
    pub fn key_der(&self) -> &[u8] {
        &self.key_der
    }

    /// The node key as rustls takes it.
    pub fn private_key(&self) -> Result<PrivateKeyDer<'static>, BootstrapError> {
        Ok(private_key_der(&self.key_der)?)
    }

    /// When the certificate starts being valid.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// When the certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The TLS configuration of the hub connection: the server is verified
    /// against the CA (its address must be in the server certificate's
    /// SANs), and this node's certificate is presented. TLS 1.2 and 1.3,
    /// ring provider, no ALPN (the transport adds what it needs).
    pub fn client_config(&self) -> Result<rustls::ClientConfig, BootstrapError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone())?;
        Ok(
            rustls::ClientConfig::builder_with_provider(crate::ca::provider())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
                .with_root_certificates(roots)
                .with_client_auth_cert(vec![self.cert_der.clone()], self.private_key()?)?,
        )
    }
}

/// Returns usable credentials: those on disk, or new ones obtained with the
/// join token. See the module documentation.
pub async fn ensure_certificates(
    config: &BootstrapConfig,
) -> Result<EdgeCredentials, BootstrapError> {
    let reason = match EdgeCredentials::load(config)? {
        Ok(credentials) => {
            tracing::info!(node = %config.node_name, "using the node certificate on disk");
            return Ok(credentials);
        }
        Err(reason) => reason,
    };
    if config.token.trim().is_empty() {
        return Err(BootstrapError::NoToken { reason });
    }
    tracing::info!(node = %config.node_name, %reason, "requesting a node certificate with the join token");
    let (expected_hash, jwt) = split_token(&config.token)?;
    let server = ServerUrl::parse(&config.server)?;

    let insecure = Arc::new(insecure_client_config()?);
    let response = https_request(
        &server,
        insecure,
        Method::GET,
        CA_PATH,
        &[],
        Vec::new(),
        config.request_timeout,
    )
    .await?;
    let url = server.url(CA_PATH);
    if response.status != StatusCode::OK {
        return Err(status_error(url, &response));
    }
    let actual_hash = ca_hash(&response.body);
    if actual_hash != expected_hash {
        return Err(BootstrapError::CaHashMismatch {
            server: config.server.clone(),
            expected: expected_hash.to_owned(),
            actual: actual_hash,
        });
    }
    let ca_der = CertificateDer::from(response.body.to_vec());
    if X509Certificate::from_der(&ca_der).is_err() {
        return Err(BootstrapError::BadResponse {
            url,
            reason: "the CA does not parse".to_owned(),
        });
    }
    write_atomic(
        &config.ca_file,
        pem_encode("CERTIFICATE", &ca_der).as_bytes(),
        0o644,
    )?;

    let mut roots = RootCertStore::empty();
    roots.add(ca_der.clone())?;
    let tls = rustls::ClientConfig::builder_with_provider(crate::ca::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let credentials = request_certificate(config, &server, ca_der, tls, Some(jwt)).await?;
    tracing::info!(node = %config.node_name, "obtained a node certificate");
    Ok(credentials)
}

/// Requests a new certificate (with a new key) authenticated by the
/// current one, saves it and returns the new credentials.
pub async fn renew(
    credentials: &EdgeCredentials,
    config: &BootstrapConfig,
) -> Result<EdgeCredentials, BootstrapError> {
    let server = ServerUrl::parse(&config.server)?;
    let tls = credentials.client_config()?;
    let renewed =
        request_certificate(config, &server, credentials.ca_der.clone(), tls, None).await?;
    tracing::info!(node = %config.node_name, "renewed the node certificate");
    Ok(renewed)
}

/// When to renew `credentials`: at a random 70–90 % of the certificate's
/// lifetime, counted from its start, as KubeEdge.
pub fn renewal_deadline(credentials: &EdgeCredentials) -> SystemTime {
    let mut bytes = [0u8; 4];
    let fraction =
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_ok() {
            0.7 + 0.2 * f64::from(u32::from_be_bytes(bytes)) / f64::from(u32::MAX)
        } else {
            0.8
        };
    renewal_deadline_at(credentials, fraction)
}

/// The time `fraction` (clamped to 0..=1) of the way through the
/// certificate's lifetime.
pub fn renewal_deadline_at(credentials: &EdgeCredentials, fraction: f64) -> SystemTime {
    let lifetime = credentials
        .not_after
        .duration_since(credentials.not_before)
        .unwrap_or_default();
    credentials.not_before + lifetime.mul_f64(fraction.clamp(0.0, 1.0))
}

/// Makes a key and CSR, asks the server to sign it over `tls` (with the
/// bearer `jwt` if given), checks the answer and saves the key and
/// certificate.
async fn request_certificate(
    config: &BootstrapConfig,
    server: &ServerUrl,
    ca_der: CertificateDer<'static>,
    tls: rustls::ClientConfig,
    jwt: Option<&str>,
) -> Result<EdgeCredentials, BootstrapError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CaError::from)?;
    let csr = node_csr(&config.node_name, &key)?;
    let mut headers = vec![(NODE_NAME_HEADER, config.node_name.clone())];
    if let Some(jwt) = jwt {
        headers.push((header::AUTHORIZATION.as_str(), format!("Bearer {jwt}")));
    }
    let response = https_request(
        server,
        Arc::new(tls),
        Method::GET,
        CERT_PATH,
        &headers,
        csr,
        config.request_timeout,
    )
    .await?;
    let url = server.url(CERT_PATH);
    if response.status != StatusCode::OK {
        return Err(status_error(url, &response));
    }
    let key_der = sec1_from_pkcs8(key.serialized_der())?;
    let cert_der = CertificateDer::from(response.body.to_vec());
    let credentials = EdgeCredentials::new(&config.node_name, ca_der, cert_der, key_der)
        .map_err(|reason| BootstrapError::BadResponse { url, reason })?;
    // The key first: a crash in between leaves a pair that does not match,
    // which the next start detects and replaces.
    write_atomic(
        &config.key_file,
        pem_encode("EC PRIVATE KEY", &credentials.key_der).as_bytes(),
        0o600,
    )?;
    write_atomic(
        &config.cert_file,
        pem_encode("CERTIFICATE", &credentials.cert_der).as_bytes(),
        0o644,
    )?;
    Ok(credentials)
}

/// A PKCS#10 request for node `node_name`, DER: C `CN`, O `system:nodes`, L
/// `Hangzhou`, ST `Zhejiang`, CN `system:node:<node_name>`, as KubeEdge
/// v1.16+ edges ask.
pub fn node_csr(node_name: &str, key: &KeyPair) -> Result<Vec<u8>, CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, "CN");
    dn.push(DnType::OrganizationName, NODES_ORGANIZATION);
    dn.push(DnType::LocalityName, "Hangzhou");
    dn.push(DnType::StateOrProvinceName, "Zhejiang");
    dn.push(
        DnType::CommonName,
        format!("{NODE_COMMON_NAME_PREFIX}{node_name}"),
    );
    params.distinguished_name = dn;
    Ok(params.serialize_request(key)?.der().to_vec())
}

fn status_error(url: String, response: &HttpResponse) -> BootstrapError {
    let mut message = String::from_utf8_lossy(&response.body).into_owned();
    if message.len() > 512 {
        let mut end = 512;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    BootstrapError::Status {
        url,
        status: response.status.as_u16(),
        message,
    }
}

// === the HTTPS client ===

/// A parsed `https://host[:port]` URL.
#[derive(Debug, Clone)]
pub(crate) struct ServerUrl {
    base: String,
    host: String,
    port: u16,
    authority: String,
}

impl ServerUrl {
    pub(crate) fn parse(url: &str) -> Result<Self, BootstrapError> {
        let bad = |reason: &str| BootstrapError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url
            .trim_end_matches('/')
            .parse()
            .map_err(|_| bad("does not parse"))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("the scheme must be https"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Self {
            base: url.trim_end_matches('/').to_owned(),
            host,
            port: authority.port_u16().unwrap_or(443),
            authority: authority.as_str().to_owned(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// An answer: status and body.
#[derive(Debug)]
pub(crate) struct HttpResponse {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
}

/// One HTTP/1.1 request over a new TLS connection, the whole exchange
/// bounded by `timeout` and the answer by [`MAX_RESPONSE_BYTES`].
pub(crate) async fn https_request(
    server: &ServerUrl,
    tls: Arc<rustls::ClientConfig>,
    method: Method,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
    timeout: Duration,
) -> Result<HttpResponse, BootstrapError> {
    let url = server.url(path);
    tokio::time::timeout(
        timeout,
        exchange(server, tls, method, path, headers, body, &url),
    )
    .await
    .unwrap_or_else(|_| {
        Err(BootstrapError::Timeout {
            url: url.clone(),
            timeout,
        })
    })
}

async fn exchange(
    server: &ServerUrl,
    tls: Arc<rustls::ClientConfig>,
    method: Method,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
    url: &str,
) -> Result<HttpResponse, BootstrapError> {
    let connect_error = |source: io::Error| BootstrapError::Connect {
        url: url.to_owned(),
        source,
    };
    let http_error = |source: hyper::Error| BootstrapError::Http {
        url: url.to_owned(),
        source,
    };
    let name = ServerName::try_from(server.host.clone()).map_err(|_| BootstrapError::BadUrl {
        url: url.to_owned(),
        reason: "the host is not a valid server name".to_owned(),
    })?;
    let tcp = TcpStream::connect((server.host.as_str(), server.port))
        .await
        .map_err(connect_error)?;
    let _ = tcp.set_nodelay(true);
    let stream = TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(connect_error)?;

    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, &server.authority);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let request =
        request
            .body(Full::new(Bytes::from(body)))
            .map_err(|err| BootstrapError::BadUrl {
                url: url.to_owned(),
                reason: err.to_string(),
            })?;

    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http_error)?;
    let send = async {
        let response = sender.send_request(request).await.map_err(http_error)?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|err| BootstrapError::BadResponse {
                url: url.to_owned(),
                reason: format!("the body could not be read: {err}"),
            })?
            .to_bytes();
        Ok(HttpResponse { status, body })
    };
    tokio::pin!(send);
    tokio::pin!(connection);
    let mut connection_done = false;
    loop {
        tokio::select! {
            result = &mut send => return result,
            result = &mut connection, if !connection_done => {
                // The connection ended; the answer, if complete, is still
                // buffered for `send`, which fails otherwise.
                connection_done = true;
                if let Err(err) = result {
                    tracing::debug!(error = %err, url, "certificate server connection failed");
                }
            }
        }
    }
}

/// Accepts any server certificate (the CA is not known yet when it is
/// fetched; the token's hash checks it afterwards). Handshake signatures
/// are still verified.
#[derive(Debug)]
struct AcceptAnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client configuration that does not verify the server (for `/ca.crt`).
pub(crate) fn insecure_client_config() -> Result<rustls::ClientConfig, BootstrapError> {
    let provider = crate::ca::provider();
    Ok(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
            .with_no_client_auth(),
    )
}

// === files ===

fn system_time(unix: i64) -> SystemTime {
    match u64::try_from(unix) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs()),
    }
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, BootstrapError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(BootstrapError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes `bytes` to `path` atomically with permissions `mode`, creating
/// the directory: a temporary file beside it, fsync, rename, fsync of the
/// directory.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), BootstrapError> {
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        fs::create_dir_all(dir)?;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temp)?;
        // `mode` only applies to a new file; a stale temporary may exist.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    result.map_err(|source| {
        let _ = fs::remove_file(&temp);
        BootstrapError::Io {
            path: path.to_owned(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::ca::{ClientAuth, HubCa};
    use crate::certserver::test_support::Harness;
    use crate::certserver::{AuthMethod, CertServerConfig};
    use crate::token::make_token;

    fn config(dir: &Path, harness: &Harness, node: &str, token: String) -> BootstrapConfig {
        BootstrapConfig {
            node_name: node.to_owned(),
            server: harness.url.clone(),
            token,
            ca_file: dir.join("ca/rootCA.crt"),
            cert_file: dir.join("certs/server.crt"),
            key_file: dir.join("certs/server.key"),
            request_timeout: Duration::from_secs(10),
        }
    }

    fn token(harness: &Harness) -> String {
        make_token(&harness.ca, Duration::from_secs(3600))
    }

    #[tokio::test]
    async fn first_join_saves_credentials_that_the_next_start_reuses() {
        let dir = tempfile::tempdir().expect("temp dir");
        let harness = Harness::start(CertServerConfig::default()).await;
        let config = config(dir.path(), &harness, "edge-1", token(&harness));

        let credentials = ensure_certificates(&config).await.expect("joined");
        assert_eq!(credentials.node_name(), "edge-1");
        assert_eq!(credentials.ca_der(), harness.ca.cert_der());
        assert_eq!(harness.metrics().ca_served(), 1);
        assert_eq!(harness.metrics().issued(AuthMethod::Token), 1);
        let key_pem = fs::read_to_string(&config.key_file).expect("key file");
        assert!(key_pem.starts_with("-----BEGIN EC PRIVATE KEY-----"));
        let mode = fs::metadata(&config.key_file)
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let ca_pem = fs::read(&config.ca_file).expect("ca file");
        assert_eq!(
            CertificateDer::from_pem_slice(&ca_pem).expect("pem"),
            *harness.ca.cert_der()
        );

        // The next start needs neither the server nor the token.
        harness.stop().await;
        let mut restart = config.clone();
        restart.token = String::new();
        let again = ensure_certificates(&restart).await.expect("reused");
        assert_eq!(again, credentials);
    }

    #[tokio::test]
    async fn the_credentials_open_a_hub_connection_that_requires_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let harness = Harness::start(CertServerConfig::default()).await;
        let config = config(dir.path(), &harness, "edge-1", token(&harness));
        let credentials = ensure_certificates(&config).await.expect("joined");

        // A hub listener requiring client certificates.
        let server = harness
            .ca
            .issue_server_certificate(&[IpAddr::V4(Ipv4Addr::LOCALHOST)], &[])
            .expect("server certificate");
        let tls = harness
            .ca
            .server_config(&server, ClientAuth::Required)
            .expect("config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let ca = harness.ca.clone();
        let hub = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut stream = acceptor.accept(tcp).await.expect("handshake");
            let chain = stream
                .get_ref()
                .1
                .peer_certificates()
                .expect("a client certificate")
                .to_vec();
            let node = ca.verify_node_certificate(&chain).expect("a node");
            stream.write_all(node.as_bytes()).await.expect("write");
            stream.shutdown().await.expect("shutdown");
        });

        let connector = TlsConnector::from(Arc::new(credentials.client_config().expect("client")));
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from("127.0.0.1").expect("name");
        let mut stream = connector.connect(name, tcp).await.expect("handshake");
        let mut node = String::new();
        stream.read_to_string(&mut node).await.expect("read");
        assert_eq!(node, "edge-1");
        hub.await.expect("hub");
        harness.stop().await;
    }

    #[tokio::test]
    async fn a_ca_that_does_not_match_the_token_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let harness = Harness::start(CertServerConfig::default()).await;
        let impostor = HubCa::generate().expect("ca");
        let config = config(
            dir.path(),
            &harness,
            "edge-1",
            make_token(&impostor, Duration::from_secs(3600)),
        );
        match ensure_certificates(&config).await {
            Err(BootstrapError::CaHashMismatch {
                expected, actual, ..
            }) => {
                assert_eq!(expected, impostor.ca_hash());
                assert_eq!(actual, harness.ca.ca_hash());
            }
            other => panic!("expected a CA hash mismatch, got {other:?}"),
        }
        assert!(!config.ca_file.exists());
        assert!(!config.cert_file.exists());
        assert_eq!(harness.metrics().issued(AuthMethod::Token), 0);
        harness.stop().await;
    }

    #[tokio::test]
    async fn without_usable_credentials_a_token_is_needed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let harness = Harness::start(CertServerConfig::default()).await;
        let config = config(dir.path(), &harness, "edge-1", String::new());
        assert!(matches!(
            ensure_certificates(&config).await,
            Err(BootstrapError::NoToken { .. })
        ));
        let mut bad = config.clone();
        bad.token = "abc.def".to_owned();
        assert!(matches!(
            ensure_certificates(&bad).await,
            Err(BootstrapError::Token(TokenError::WrongPartCount {
                parts: 2
            }))
        ));

        // A certificate for another node is not reused: the token gets one
        // for this node.
        let mut first = config.clone();
        first.token = token(&harness);
        ensure_certificates(&first).await.expect("joined");
        let mut renamed = first.clone();
        renamed.node_name = "edge-2".to_owned();
        let credentials = ensure_certificates(&renamed).await.expect("joined again");
        assert_eq!(credentials.node_name(), "edge-2");
        assert_eq!(harness.metrics().issued(AuthMethod::Token), 2);
        harness.stop().await;
    }

    #[tokio::test]
    async fn renewal_uses_the_current_certificate_and_replaces_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let harness = Harness::start(CertServerConfig::default()).await;
        let mut config = config(dir.path(), &harness, "edge-1", token(&harness));
        let credentials = ensure_certificates(&config).await.expect("joined");

        // The token is gone by now (KubeEdge removes it from the file).
        config.token = String::new();
        let renewed = renew(&credentials, &config).await.expect("renewed");
        assert_ne!(renewed.cert_der(), credentials.cert_der());
        assert_ne!(renewed.key_der(), credentials.key_der());
        assert_eq!(harness.metrics().issued(AuthMethod::Certificate), 1);
        assert_eq!(harness.metrics().issued(AuthMethod::Token), 1);
        let on_disk = EdgeCredentials::load(&config)
            .expect("readable")
            .expect("usable");
        assert_eq!(on_disk, renewed);
        harness.stop().await;
    }

    #[tokio::test]
    async fn renewal_is_due_at_70_to_90_percent_of_the_lifetime() {
        let dir = tempfile::tempdir().expect("temp dir");
        let harness = Harness::start(CertServerConfig::default()).await;
        let config = config(dir.path(), &harness, "edge-1", token(&harness));
        let credentials = ensure_certificates(&config).await.expect("joined");
        let at = |fraction: f64| renewal_deadline_at(&credentials, fraction);
        for _ in 0..100 {
            let deadline = renewal_deadline(&credentials);
            assert!(deadline >= at(0.7) && deadline <= at(0.9));
        }
        let lifetime = credentials
            .not_after()
            .duration_since(credentials.not_before())
            .expect("ordered");
        assert_eq!(lifetime, Duration::from_secs(365 * 24 * 3600));
        harness.stop().await;
    }

    #[test]
    fn server_urls_must_be_https_with_a_host() {
        let url = ServerUrl::parse("https://[::1]:10002/").expect("parses");
        assert_eq!((url.host.as_str(), url.port), ("::1", 10002));
        assert_eq!(url.url("/ca.crt"), "https://[::1]:10002/ca.crt");
        assert_eq!(
            ServerUrl::parse("https://hub.example")
                .expect("parses")
                .port,
            443
        );
        assert!(ServerUrl::parse("http://1.2.3.4:10002").is_err());
        assert!(ServerUrl::parse("1.2.3.4:10002").is_err());
    }
}
