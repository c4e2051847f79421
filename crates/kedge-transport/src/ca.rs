//! The hub's certificate authority (protocol.md §3.2, §4).
//!
//! [`HubCa`] is CloudHub's CA as KubeEdge keeps it: an ECDSA P-256 key and a
//! self-signed certificate with CN `KubeEdge`, serial 1024, valid 100 years.
//! It is stored by the caller, not here: KubeEdge keeps it in Secret
//! `kubeedge/casecret`, the certificate DER under `cadata` ([`HubCa::cert_der`])
//! and the key DER under `cakeydata` ([`HubCa::key_der`]). A new CA's key is
//! written in SEC1 form (`EC PRIVATE KEY`, byte for byte what Go's
//! `x509.MarshalECPrivateKey` gives), because KubeEdge v1.15 reads only that
//! form; a loaded CA accepts SEC1 or PKCS#8 and keeps the bytes it was given,
//! since they are also the HMAC key of the join tokens ([`crate::token`]).
//!
//! The CA issues:
//!
//! * the CloudHub server certificate ([`HubCa::issue_server_certificate`]):
//!   CN and O `KubeEdge`, the given IP and DNS SANs, server auth; stored by
//!   KubeEdge in Secret `kubeedge/cloudcoresecret` (`cloudcoredata`,
//!   `cloudcorekeydata`, the key SEC1 too);
//! * node certificates from PKCS#10 requests ([`HubCa::sign_node_csr`]). The
//!   subject is **always** CN=`system:node:<nodeName>`, O=`system:nodes`,
//!   whatever the request asked: KubeEdge v1.15 copies the request's CN and
//!   O, and its edges ask for CN=`kubeedge.io`; Kedge gives such an edge a
//!   node identity all the same, so that every certificate it signs names
//!   the node it was issued to and the hub can tie a connection to a node
//!   ([`HubCa::verify_node_certificate`]).
//!
//! [`HubCa::server_config`] builds the rustls configurations of the hub's
//! listeners: client certificates required (WebSocket/QUIC) or optional (the
//! certificate server), verified against this CA in both cases.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use p256::elliptic_curve::ALGORITHM_OID as ID_EC_PUBLIC_KEY;
use pkcs8::der::Decode as _;
use pkcs8::{AssociatedOid as _, DecodePrivateKey as _, EncodePrivateKey as _};
use pkcs8::{ObjectIdentifier, PrivateKeyInfoRef};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use sec1::{EcParameters, EcPrivateKey};
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

/// The CA's common name, as KubeEdge's (`constants.ProjectName`).
pub const CA_COMMON_NAME: &str = "KubeEdge";
/// The CA certificate's serial number, as KubeEdge's.
pub const CA_SERIAL: u64 = 1024;
/// How long a new CA is valid: 100 years, as KubeEdge's.
pub const CA_VALIDITY: Duration = Duration::from_secs(100 * 365 * DAY_SECS);
/// The CloudHub server certificate's CN and O, as KubeEdge's.
pub const SERVER_COMMON_NAME: &str = "KubeEdge";
/// How long a CloudHub server certificate is valid: 100 years, as
/// KubeEdge's (`validalityPeriod`).
pub const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(100 * 365 * DAY_SECS);
/// How long a node certificate is valid unless configured otherwise:
/// KubeEdge's `edgeCertSigningDuration` default, 365 days.
pub const DEFAULT_NODE_CERT_VALIDITY: Duration = Duration::from_secs(365 * DAY_SECS);
/// The prefix of a node certificate's CN: `system:node:<nodeName>`.
pub const NODE_COMMON_NAME_PREFIX: &str = "system:node:";
/// The O of every node certificate.
pub const NODES_ORGANIZATION: &str = "system:nodes";

const DAY_SECS: u64 = 24 * 60 * 60;
/// The CA and server certificates start this long before now, so that a
/// peer whose clock is a little behind accepts them.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// A failure to create, load or use the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The CA certificate does not parse or is not a CA.
    #[error("bad CA certificate: {0}")]
    BadCaCertificate(String),
    /// A private key does not parse, is of an unsupported type, or does not
    /// belong to its certificate.
    #[error("bad private key: {0}")]
    BadKey(String),
    /// A certificate (not the CA) does not parse or is unusable.
    #[error("bad certificate: {0}")]
    BadCertificate(String),
    /// The certificate signing request is malformed, badly signed or of an
    /// unsupported key type.
    #[error("bad certificate signing request: {0}")]
    BadCsr(String),
    /// The node name is not a valid Kubernetes node name.
    #[error("invalid node name {0:?}")]
    BadNodeName(String),
    /// An `ExtKeyUsages` value is not one Kedge can write.
    #[error("unsupported extended key usage {0}")]
    UnsupportedKeyUsage(i64),
    /// A presented certificate is not trusted: not signed by this CA,
    /// expired, not yet valid or not for client authentication.
    #[error("certificate not trusted")]
    Untrusted(#[source] rustls::Error),
    /// A presented certificate is trusted but is not a node certificate
    /// (CN `system:node:<name>`, O `system:nodes`).
    #[error("not a node certificate (CN {common_name:?})")]
    NotANode {
        /// The certificate's CN.
        common_name: String,
    },
    /// No certificate was presented.
    #[error("no certificate presented")]
    NoCertificate,
    /// Generating or signing failed.
    #[error("certificate generation failed")]
    Generate(#[from] rcgen::Error),
    /// A validity period is out of the range a certificate can express.
    #[error("the certificate validity is out of range")]
    TimeOutOfRange,
    /// rustls refused the configuration.
    #[error("invalid TLS configuration")]
    Tls(#[from] rustls::Error),
    /// The client verifier could not be built from the CA.
    #[error("invalid client certificate verifier")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// An extended key usage a node certificate can carry, numbered as Go's
/// `x509.ExtKeyUsage` (the numbers of the `ExtKeyUsages` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExtKeyUsage {
    /// Any usage (Go 0).
    Any,
    /// TLS server authentication (Go 1).
    ServerAuth,
    /// TLS client authentication (Go 2), the default.
    ClientAuth,
    /// Code signing (Go 3).
    CodeSigning,
    /// E-mail protection (Go 4).
    EmailProtection,
    /// Time stamping (Go 8).
    TimeStamping,
    /// OCSP signing (Go 9).
    OcspSigning,
}

impl ExtKeyUsage {
    /// The usage numbered `value` by Go's `x509.ExtKeyUsage`.
    pub fn from_go(value: i64) -> Result<Self, CaError> {
        Ok(match value {
            0 => Self::Any,
            1 => Self::ServerAuth,
            2 => Self::ClientAuth,
            3 => Self::CodeSigning,
            4 => Self::EmailProtection,
            8 => Self::TimeStamping,
            9 => Self::OcspSigning,
            other => return Err(CaError::UnsupportedKeyUsage(other)),
        })
    }

    /// Go's number for this usage.
    pub fn to_go(self) -> i64 {
        match self {
            Self::Any => 0,
            Self::ServerAuth => 1,
            Self::ClientAuth => 2,
            Self::CodeSigning => 3,
            Self::EmailProtection => 4,
            Self::TimeStamping => 8,
            Self::OcspSigning => 9,
        }
    }

    /// Parses an `ExtKeyUsages` header value: a JSON array of Go numbers
    /// such as `[2]` or `[1,2]`.
    pub fn parse_header(value: &str) -> Result<Vec<Self>, CaError> {
        let numbers: Vec<i64> = serde_json::from_str(value)
            .map_err(|_| CaError::BadCsr(format!("ExtKeyUsages {value:?} is not a JSON array")))?;
        numbers.into_iter().map(Self::from_go).collect()
    }

    fn purpose(self) -> ExtendedKeyUsagePurpose {
        match self {
            Self::Any => ExtendedKeyUsagePurpose::Any,
            Self::ServerAuth => ExtendedKeyUsagePurpose::ServerAuth,
            Self::ClientAuth => ExtendedKeyUsagePurpose::ClientAuth,
            Self::CodeSigning => ExtendedKeyUsagePurpose::CodeSigning,
            Self::EmailProtection => ExtendedKeyUsagePurpose::EmailProtection,
            Self::TimeStamping => ExtendedKeyUsagePurpose::TimeStamping,
            Self::OcspSigning => ExtendedKeyUsagePurpose::OcspSigning,
        }
    }
}

/// Whether a listener requires client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// A client certificate signed by the CA is required (the WebSocket and
    /// QUIC listeners).
    Required,
    /// A client certificate is optional, but verified against the CA when
    /// presented (the certificate server, where first joins use a token).
    Optional,
}

/// The hub's certificate authority. See the module documentation.
pub struct HubCa {
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
    client_verifier: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for HubCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubCa")
            .field("ca_hash", &self.ca_hash())
            .finish_non_exhaustive()
    }
}

impl HubCa {
    /// A new CA: ECDSA P-256, CN `KubeEdge`, serial 1024, valid 100 years,
    /// as KubeEdge's cloudcore makes it. Its key is kept in SEC1 form.
    pub fn generate() -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let now = SystemTime::now();
        params.not_before = to_offset(now - BACKDATE)?;
        params.not_after = to_offset(now + CA_VALIDITY)?;
        params.serial_number = Some(SerialNumber::from(CA_SERIAL));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, CA_COMMON_NAME);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.self_signed(&key)?;
        let key_der = sec1_from_pkcs8(key.serialized_der())?;
        Self::from_parts(cert.der().clone(), key_der, key)
    }

    /// Loads a CA from its certificate DER (`cadata`) and key DER
    /// (`cakeydata`, SEC1 or PKCS#8). The key must belong to the
    /// certificate, and the certificate must be a CA.
    pub fn from_der(cert_der: &[u8], key_der: &[u8]) -> Result<Self, CaError> {
        let (_, cert) = X509Certificate::from_der(cert_der)
            .map_err(|err| CaError::BadCaCertificate(err.to_string()))?;
        if !cert.is_ca() {
            return Err(CaError::BadCaCertificate(
                "basic constraints do not make it a CA".to_owned(),
            ));
        }
        let key = key_pair_from_der(key_der)?;
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(CaError::BadKey(
                "the key does not belong to the CA certificate".to_owned(),
            ));
        }
        Self::from_parts(
            CertificateDer::from(cert_der.to_vec()),
            key_der.to_vec(),
            key,
        )
    }

    fn from_parts(
        cert_der: CertificateDer<'static>,
        key_der: Vec<u8>,
        key: KeyPair,
    ) -> Result<Self, CaError> {
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        let mut roots = RootCertStore::empty();
        roots
            .add(cert_der.clone())
            .map_err(|err| CaError::BadCaCertificate(err.to_string()))?;
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
        Ok(Self {
            cert_der,
            key_der,
            issuer,
            client_verifier,
        })
    }

    /// The CA certificate, DER: Secret `kubeedge/casecret` key `cadata`,
    /// and what `/ca.crt` serves.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.cert_der)
    }

    /// The CA key, DER, as created (SEC1) or loaded: Secret
    /// `kubeedge/casecret` key `cakeydata`, and the HMAC key of join tokens.
    pub fn key_der(&self) -> &[u8] {
        &self.key_der
    }

    /// Lowercase hex SHA-256 of the CA certificate DER: the first part of a
    /// join token.
    pub fn ca_hash(&self) -> String {
        ca_hash(&self.cert_der)
    }

    /// A new CloudHub server certificate and key: CN and O `KubeEdge`,
    /// SANs `ips` and `dns_names` (empty names are skipped, as KubeEdge's
    /// default `dnsNames` is `[""]`), server auth, valid 100 years.
    pub fn issue_server_certificate(
        &self,
        ips: &[IpAddr],
        dns_names: &[String],
    ) -> Result<ServerCertificate, CaError> {
        self.issue_server_certificate_for(ips, dns_names, SERVER_CERT_VALIDITY)
    }

    /// [`Self::issue_server_certificate`] valid for `validity`.
    pub fn issue_server_certificate_for(
        &self,
        ips: &[IpAddr],
        dns_names: &[String],
        validity: Duration,
    ) -> Result<ServerCertificate, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        params.not_before = to_offset(now - BACKDATE)?;
        params.not_after = to_offset(now + validity)?;
        params.serial_number = Some(random_serial());
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, SERVER_COMMON_NAME);
        dn.push(DnType::CommonName, SERVER_COMMON_NAME);
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.subject_alt_names = ips.iter().map(|ip| SanType::IpAddress(*ip)).collect();
        for name in dns_names.iter().filter(|name| !name.is_empty()) {
            params
                .subject_alt_names
                .push(SanType::DnsName(name.clone().try_into()?));
        }
        let cert = params.signed_by(&key, &self.issuer)?;
        self.check_issued(cert.der())?;
        Ok(ServerCertificate {
            cert_der: cert.der().clone(),
            key_der: sec1_from_pkcs8(key.serialized_der())?,
        })
    }

    /// Whether `server` was issued by this CA, is valid now and for at
    /// least `margin` more, and its key belongs to it: what a caller checks
    /// before reusing a stored server certificate.
    pub fn check_server_certificate(
        &self,
        server: &ServerCertificate,
        margin: Duration,
    ) -> Result<(), CaError> {
        let (_, ca) = X509Certificate::from_der(&self.cert_der)
            .map_err(|err| CaError::BadCaCertificate(err.to_string()))?;
        let (_, cert) = X509Certificate::from_der(&server.cert_der)
            .map_err(|err| CaError::BadCertificate(err.to_string()))?;
        cert.verify_signature(Some(ca.public_key()))
            .map_err(|_| CaError::BadCertificate("not signed by this CA".to_owned()))?;
        let now = unix_now();
        let margin = i64::try_from(margin.as_secs()).unwrap_or(i64::MAX);
        if cert.validity().not_before.timestamp() > now
            || cert.validity().not_after.timestamp() < now.saturating_add(margin)
        {
            return Err(CaError::BadCertificate(
                "not valid now or expiring soon".to_owned(),
            ));
        }
        let key = key_pair_from_der(&server.key_der)?;
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(CaError::BadKey(
                "the key does not belong to the certificate".to_owned(),
            ));
        }
        Ok(())
    }

    /// Signs an edge's PKCS#10 request (DER) for node `node_name`, as the
    /// certificate server does. The request's signature is checked; the
    /// subject is CN=`system:node:<node_name>`, O=`system:nodes` whatever
    /// the request asked (see the module documentation); the serial is
    /// random; the certificate is valid from now for `validity`; the key
    /// usages are DigitalSignature and KeyEncipherment and the extended key
    /// usages `usages` (client auth when empty). Returns the certificate,
    /// DER.
    pub fn sign_node_csr(
        &self,
        csr_der: &[u8],
        node_name: &str,
        usages: &[ExtKeyUsage],
        validity: Duration,
    ) -> Result<CertificateDer<'static>, CaError> {
        validate_node_name(node_name)?;
        let public_key = csr_public_key(csr_der)?;
        let now = SystemTime::now();
        self.issue_node_certificate(&public_key, node_name, usages, now, now + validity)
    }

    /// Issues a node certificate for `public_key`, valid from `not_before`
    /// to `not_after` (tests use it for expired certificates).
    pub(crate) fn issue_node_certificate(
        &self,
        public_key: &impl PublicKeyData,
        node_name: &str,
        usages: &[ExtKeyUsage],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<CertificateDer<'static>, CaError> {
        let mut params = CertificateParams::default();
        params.not_before = to_offset(not_before)?;
        params.not_after = to_offset(not_after)?;
        params.serial_number = Some(random_serial());
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, NODES_ORGANIZATION);
        dn.push(
            DnType::CommonName,
            format!("{NODE_COMMON_NAME_PREFIX}{node_name}"),
        );
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = if usages.is_empty() {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            let mut purposes = Vec::new();
            for usage in usages {
                let purpose = usage.purpose();
                if !purposes.contains(&purpose) {
                    purposes.push(purpose);
                }
            }
            purposes
        };
        let cert = params.signed_by(public_key, &self.issuer)?;
        self.check_issued(cert.der())?;
        Ok(cert.der().clone())
    }

    /// Checks a presented client certificate chain (leaf first): it must
    /// chain to this CA, be valid now, allow client authentication, and
    /// name a node (CN `system:node:<name>`, O `system:nodes`). Returns the
    /// node name.
    pub fn verify_node_certificate(&self, chain: &[CertificateDer<'_>]) -> Result<String, CaError> {
        let (leaf, intermediates) = chain.split_first().ok_or(CaError::NoCertificate)?;
        self.client_verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map_err(CaError::Untrusted)?;
        node_name_of(leaf)
    }

    /// The rustls configuration of a hub listener serving `server`: TLS 1.2
    /// and 1.3 with the ring provider, client certificates verified against
    /// this CA and required or optional as `client_auth` says. No ALPN is
    /// set; the caller adds what its transport needs.
    pub fn server_config(
        &self,
        server: &ServerCertificate,
        client_auth: ClientAuth,
    ) -> Result<rustls::ServerConfig, CaError> {
        let provider = provider();
        let mut roots = RootCertStore::empty();
        roots
            .add(self.cert_der.clone())
            .map_err(|err| CaError::BadCaCertificate(err.to_string()))?;
        let builder =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        let verifier = match client_auth {
            ClientAuth::Required => builder.build()?,
            ClientAuth::Optional => builder.allow_unauthenticated().build()?,
        };
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![server.cert_der.clone()], server.private_key()?)?;
        Ok(config)
    }

    /// The issued certificate must name this CA as its issuer byte for byte
    /// (rcgen re-encodes the CA's subject; a CA whose subject it cannot
    /// reproduce would yield certificates no client can chain).
    fn check_issued(&self, der: &[u8]) -> Result<(), CaError> {
        let (_, ca) = X509Certificate::from_der(&self.cert_der)
            .map_err(|err| CaError::BadCaCertificate(err.to_string()))?;
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|err| CaError::BadCertificate(err.to_string()))?;
        if cert.issuer().as_raw() != ca.subject().as_raw() {
            return Err(CaError::BadCaCertificate(
                "its subject cannot be reproduced as an issuer name".to_owned(),
            ));
        }
        Ok(())
    }
}

/// The CloudHub server certificate and its key.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerCertificate {
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl std::fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCertificate")
            .field("cert_der_len", &self.cert_der.len())
            .finish_non_exhaustive()
    }
}

impl ServerCertificate {
    /// A server certificate from its DER (`cloudcoredata`) and key DER
    /// (`cloudcorekeydata`, SEC1 or PKCS#8); the key must belong to the
    /// certificate.
    pub fn from_der(cert_der: &[u8], key_der: &[u8]) -> Result<Self, CaError> {
        let (_, cert) = X509Certificate::from_der(cert_der)
            .map_err(|err| CaError::BadCertificate(err.to_string()))?;
        let key = key_pair_from_der(key_der)?;
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(CaError::BadKey(
                "the key does not belong to the certificate".to_owned(),
            ));
        }
        Ok(Self {
            cert_der: CertificateDer::from(cert_der.to_vec()),
            key_der: key_der.to_vec(),
        })
    }

    /// The certificate, DER (`cloudcoredata`).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The key, DER (`cloudcorekeydata`): SEC1 when issued here.
    pub fn key_der(&self) -> &[u8] {
        &self.key_der
    }

    /// The key as rustls takes it (PKCS#8).
    pub fn private_key(&self) -> Result<PrivateKeyDer<'static>, CaError> {
        private_key_der(&self.key_der)
    }
}

// === identities ===

/// Checks that `name` is a Kubernetes node name: a DNS subdomain (lower-case
/// letters, digits, `-` and `.`, at most 253 characters, each label starting
/// and ending with a letter or digit).
pub fn validate_node_name(name: &str) -> Result<(), CaError> {
    let bad = || CaError::BadNodeName(name.to_owned());
    if name.is_empty() || name.len() > 253 {
        return Err(bad());
    }
    for label in name.split('.') {
        let bytes = label.as_bytes();
        let edge_ok = |byte: Option<&u8>| {
            byte.is_some_and(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit())
        };
        if label.len() > 63 || !edge_ok(bytes.first()) || !edge_ok(bytes.last()) {
            return Err(bad());
        }
        if !bytes
            .iter()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || *byte == b'-')
        {
            return Err(bad());
        }
    }
    Ok(())
}

/// The node name of a node certificate (DER): the `<name>` of CN
/// `system:node:<name>`, with `system:nodes` among its O values. Does not
/// check who signed it.
pub fn node_name_of(cert_der: &[u8]) -> Result<String, CaError> {
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|err| CaError::BadCertificate(err.to_string()))?;
    let subject = cert.subject();
    let common_name = subject
        .iter_common_name()
        .next()
        .and_then(|attr| attr.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    let in_group = subject
        .iter_organization()
        .any(|attr| attr.as_str().ok() == Some(NODES_ORGANIZATION));
    match common_name.strip_prefix(NODE_COMMON_NAME_PREFIX) {
        Some(node) if in_group && validate_node_name(node).is_ok() => Ok(node.to_owned()),
        _ => Err(CaError::NotANode { common_name }),
    }
}

/// Lowercase hex SHA-256 of `der`: how a join token names its CA.
pub fn ca_hash(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    hex(digest.as_ref())
}

/// `bytes` as lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, byte| {
            let _ = write!(out, "{byte:02x}");
            out
        })
}

/// The public key of a PKCS#10 request whose signature checks.
fn csr_public_key(csr_der: &[u8]) -> Result<rcgen::SubjectPublicKeyInfo, CaError> {
    let (rest, csr) = X509CertificationRequest::from_der(csr_der)
        .map_err(|err| CaError::BadCsr(err.to_string()))?;
    if !rest.is_empty() {
        return Err(CaError::BadCsr(
            "trailing bytes after the request".to_owned(),
        ));
    }
    csr.verify_signature()
        .map_err(|_| CaError::BadCsr("the request's signature does not verify".to_owned()))?;
    rcgen::SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
        .map_err(|err| CaError::BadCsr(format!("unsupported public key: {err}")))
}

// === keys ===

/// The crypto provider every configuration here uses.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A key pair from DER, SEC1 (`EC PRIVATE KEY`) or PKCS#8.
pub(crate) fn key_pair_from_der(der: &[u8]) -> Result<KeyPair, CaError> {
    KeyPair::try_from(&PrivatePkcs8KeyDer::from(pkcs8_of(der)?))
        .map_err(|err| CaError::BadKey(err.to_string()))
}

/// A key DER (SEC1 or PKCS#8) as rustls takes it (PKCS#8).
pub(crate) fn private_key_der(der: &[u8]) -> Result<PrivateKeyDer<'static>, CaError> {
    Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8_of(
        der,
    )?)))
}

/// A key DER (SEC1 or PKCS#8) as PKCS#8.
fn pkcs8_of(der: &[u8]) -> Result<Vec<u8>, CaError> {
    match key_form(der)? {
        KeyForm::Sec1 => pkcs8_from_sec1(der),
        KeyForm::Pkcs8 => Ok(der.to_vec()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyForm {
    Sec1,
    Pkcs8,
}

/// Whether `der` is a SEC1 `ECPrivateKey` or a PKCS#8 `PrivateKeyInfo`
/// (v1, or v2 "OneAsymmetricKey").
fn key_form(der: &[u8]) -> Result<KeyForm, CaError> {
    if EcPrivateKey::from_der(der).is_ok() {
        Ok(KeyForm::Sec1)
    } else if PrivateKeyInfoRef::from_der(der).is_ok() {
        Ok(KeyForm::Pkcs8)
    } else {
        Err(CaError::BadKey(
            "not a DER SEC1 or PKCS#8 private key".to_owned(),
        ))
    }
}

/// The curves Kedge reads EC keys of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
}

impl Curve {
    /// The curve named `oid`, if Kedge reads it.
    fn named(oid: ObjectIdentifier) -> Option<Self> {
        if oid == p256::NistP256::OID {
            Some(Self::P256)
        } else if oid == p384::NistP384::OID {
            Some(Self::P384)
        } else {
            None
        }
    }
}

/// Wraps a SEC1 `ECPrivateKey` in PKCS#8. The curve is the key's
/// parameters, or else guessed from the private key's length; the public
/// key must be present (Go and OpenSSL always write it) and match.
pub(crate) fn pkcs8_from_sec1(sec1: &[u8]) -> Result<Vec<u8>, CaError> {
    let bad = |what: &str| CaError::BadKey(format!("SEC1 EC private key: {what}"));
    let key = EcPrivateKey::from_der(sec1).map_err(|err| bad(&err.to_string()))?;
    if key.public_key.is_none() {
        return Err(bad("no public key"));
    }
    let curve = match (
        key.parameters.and_then(EcParameters::named_curve),
        key.private_key.len(),
    ) {
        (Some(oid), _) => Curve::named(oid).ok_or_else(|| bad("unsupported EC curve"))?,
        (None, 32) => Curve::P256,
        (None, 48) => Curve::P384,
        (None, _) => return Err(bad("unknown EC curve")),
    };
    let pkcs8 = match curve {
        Curve::P256 => p256::SecretKey::try_from(key).map(|key| key.to_pkcs8_der()),
        Curve::P384 => p384::SecretKey::try_from(key).map(|key| key.to_pkcs8_der()),
    };
    let pkcs8 = pkcs8
        .map_err(|err| bad(&err.to_string()))?
        .map_err(|err| bad(&err.to_string()))?;
    Ok(pkcs8.as_bytes().to_vec())
}

/// The SEC1 `ECPrivateKey` of a PKCS#8 EC key, in the form Go's
/// `x509.MarshalECPrivateKey` writes: version 1, the private key padded to
/// the curve's size, the named curve (`[0]`) and the public key (`[1]`).
pub(crate) fn sec1_from_pkcs8(pkcs8: &[u8]) -> Result<Vec<u8>, CaError> {
    let bad = |what: &str| CaError::BadKey(format!("PKCS#8 key: {what}"));
    let info = PrivateKeyInfoRef::from_der(pkcs8).map_err(|err| bad(&err.to_string()))?;
    if info.algorithm.oid != ID_EC_PUBLIC_KEY {
        return Err(bad("not an EC key"));
    }
    let curve = info
        .algorithm
        .parameters_oid()
        .map_err(|_| bad("no named curve"))?;
    let sec1 = match Curve::named(curve).ok_or_else(|| bad("unsupported EC curve"))? {
        Curve::P256 => p256::SecretKey::from_pkcs8_der(pkcs8).map(|key| key.to_sec1_der()),
        Curve::P384 => p384::SecretKey::from_pkcs8_der(pkcs8).map(|key| key.to_sec1_der()),
    };
    let sec1 = sec1
        .map_err(|err| bad(&err.to_string()))?
        .map_err(|err| bad(&err.to_string()))?;
    Ok(sec1.to_vec())
}

// === helpers ===

/// `der` as a PEM block labelled `label`.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

/// A random positive 63-bit serial number, as Go's `rand.Int(MaxInt64)`.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 8];
    // Without randomness, fall back to the clock: serials must differ, they
    // need not be secret.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes = (nanos as u64).to_be_bytes();
    }
    let serial = (u64::from_be_bytes(bytes) & (i64::MAX as u64)).max(1);
    SerialNumber::from(serial)
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        })
}

fn to_offset(at: SystemTime) -> Result<time::OffsetDateTime, CaError> {
    let secs = match at.duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_secs()).map_err(|_| CaError::TimeOutOfRange)?,
        Err(before) => {
            -i64::try_from(before.duration().as_secs()).map_err(|_| CaError::TimeOutOfRange)?
        }
    };
    time::OffsetDateTime::from_unix_timestamp(secs).map_err(|_| CaError::TimeOutOfRange)
}

/// Fixtures shared by the tests of this crate.
#[cfg(test)]
pub(crate) mod tests_support {
    use base64::Engine as _;

    /// A P-256 key as `openssl ecparam -genkey -outform DER` (and Go's
    /// `x509.MarshalECPrivateKey`) writes it.
    const OPENSSL_SEC1: &str = "MHcCAQEEIOQ0DHuuUJa/Nl15dyydf31XNUZisPmJsavAwb9OQm8coAoGCCqGSM49AwEHoUQDQgAEhi2e0JpkJBeFlwS3ulcazsX0Qp+IMnzqdwuZqXxAlu/SRGYfwN1jBqok/sICj2qSkuPuW8ioWwgqkR7hrAbFLw==";

    /// The DER of [`OPENSSL_SEC1`].
    pub(crate) fn openssl_sec1() -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(OPENSSL_SEC1)
            .expect("base64")
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::openssl_sec1;
    use super::*;

    fn csr_for(key: &KeyPair, cn: &str, org: &str) -> Vec<u8> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "CN");
        dn.push(DnType::OrganizationName, org);
        dn.push(DnType::LocalityName, "Hangzhou");
        dn.push(DnType::StateOrProvinceName, "Zhejiang");
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.serialize_request(key).expect("csr").der().to_vec()
    }

    fn subject(der: &[u8]) -> (Vec<String>, Vec<String>) {
        let (_, cert) = X509Certificate::from_der(der).expect("parses");
        let cn = cert
            .subject()
            .iter_common_name()
            .filter_map(|attr| attr.as_str().ok().map(str::to_owned))
            .collect();
        let orgs = cert
            .subject()
            .iter_organization()
            .filter_map(|attr| attr.as_str().ok().map(str::to_owned))
            .collect();
        (cn, orgs)
    }

    #[test]
    fn sec1_keys_convert_both_ways_byte_for_byte() {
        let sec1 = openssl_sec1();
        let pkcs8 = pkcs8_from_sec1(&sec1).expect("wraps");
        let key = KeyPair::try_from(&PrivatePkcs8KeyDer::from(pkcs8)).expect("ring reads it");
        // ring's own PKCS#8 omits the curve inside; converting back must give
        // Go's form again.
        assert_eq!(
            sec1_from_pkcs8(key.serialized_der()).expect("unwraps"),
            sec1
        );
        assert_eq!(key_form(&sec1).expect("form"), KeyForm::Sec1);
        assert_eq!(
            key_form(key.serialized_der()).expect("form"),
            KeyForm::Pkcs8
        );
        assert!(key_pair_from_der(b"junk").is_err());
    }

    #[test]
    fn a_new_ca_looks_like_kubeedges_and_reloads() {
        let ca = HubCa::generate().expect("ca");
        let (_, cert) = X509Certificate::from_der(ca.cert_der()).expect("parses");
        assert!(cert.is_ca());
        assert_eq!(cert.raw_serial(), &[0x04, 0x00]);
        assert_eq!(subject(ca.cert_der()).0, vec!["KubeEdge".to_owned()]);
        let lifetime =
            cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert!(lifetime > 99 * 365 * DAY_SECS as i64);
        // The key is SEC1 as Go writes it: version 1, 32-byte key, curve, point.
        assert_eq!(key_form(ca.key_der()).expect("form"), KeyForm::Sec1);
        let parts = EcPrivateKey::from_der(ca.key_der()).expect("sec1");
        assert_eq!(parts.private_key.len(), 32);
        assert_eq!(
            parts.parameters.and_then(EcParameters::named_curve),
            Some(p256::NistP256::OID)
        );
        assert!(parts.public_key.is_some());

        let again = HubCa::from_der(ca.cert_der(), ca.key_der()).expect("reloads");
        assert_eq!(again.ca_hash(), ca.ca_hash());
        assert_eq!(again.key_der(), ca.key_der());
        assert_eq!(ca.ca_hash().len(), 64);
        assert!(
            ca.ca_hash()
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );

        // PKCS#8 loads too and is kept as given.
        let pkcs8 = pkcs8_from_sec1(ca.key_der()).expect("wraps");
        let from_pkcs8 = HubCa::from_der(ca.cert_der(), &pkcs8).expect("loads");
        assert_eq!(from_pkcs8.key_der(), pkcs8.as_slice());

        // A key of another CA is refused.
        let other = HubCa::generate().expect("ca");
        assert!(matches!(
            HubCa::from_der(ca.cert_der(), other.key_der()),
            Err(CaError::BadKey(_))
        ));
    }

    #[test]
    fn the_server_certificate_names_the_hub() {
        let ca = HubCa::generate().expect("ca");
        let ip: IpAddr = "10.1.2.3".parse().expect("ip");
        let server = ca
            .issue_server_certificate(&[ip], &["".to_owned(), "hub.example".to_owned()])
            .expect("issued");
        let (_, cert) = X509Certificate::from_der(server.cert_der()).expect("parses");
        assert_eq!(
            subject(server.cert_der()),
            (vec!["KubeEdge".to_owned()], vec!["KubeEdge".to_owned()])
        );
        let san = cert
            .subject_alternative_name()
            .expect("ok")
            .expect("present");
        assert_eq!(san.value.general_names.len(), 2);
        let eku = cert
            .extended_key_usage()
            .expect("ok")
            .expect("present")
            .value;
        assert!(eku.server_auth && !eku.client_auth);
        ca.check_server_certificate(&server, Duration::from_secs(3600))
            .expect("usable");
        let reloaded =
            ServerCertificate::from_der(server.cert_der(), server.key_der()).expect("reloads");
        assert_eq!(reloaded, server);
        let other = HubCa::generate().expect("ca");
        assert!(
            other
                .check_server_certificate(&server, Duration::ZERO)
                .is_err()
        );
        ca.server_config(&server, ClientAuth::Required)
            .expect("config");
    }

    #[test]
    fn a_csr_always_yields_a_node_identity() {
        let ca = HubCa::generate().expect("ca");
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        // A v1.15 edge asks for CN kubeedge.io, O kubeEdge: it gets a node
        // identity all the same.
        for (cn, org) in [
            ("kubeedge.io", "kubeEdge"),
            ("system:node:other", "system:masters"),
        ] {
            let der = ca
                .sign_node_csr(
                    &csr_for(&key, cn, org),
                    "edge-1",
                    &[],
                    DEFAULT_NODE_CERT_VALIDITY,
                )
                .expect("signed");
            assert_eq!(
                subject(&der),
                (
                    vec!["system:node:edge-1".to_owned()],
                    vec!["system:nodes".to_owned()]
                )
            );
            let (_, cert) = X509Certificate::from_der(&der).expect("parses");
            assert_eq!(
                cert.public_key().raw,
                key.subject_public_key_info().as_slice()
            );
            let eku = cert
                .extended_key_usage()
                .expect("ok")
                .expect("present")
                .value;
            assert!(eku.client_auth && !eku.server_auth);
            let ku = cert.key_usage().expect("ok").expect("present").value;
            assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
            let lifetime =
                cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
            assert_eq!(lifetime, 365 * DAY_SECS as i64);
            assert_eq!(
                ca.verify_node_certificate(&[der]).expect("trusted"),
                "edge-1"
            );
        }
        let both = ca
            .sign_node_csr(
                &csr_for(&key, "x", "y"),
                "edge-1",
                &ExtKeyUsage::parse_header("[1,2]").expect("header"),
                DEFAULT_NODE_CERT_VALIDITY,
            )
            .expect("signed");
        let (_, cert) = X509Certificate::from_der(&both).expect("parses");
        let eku = cert
            .extended_key_usage()
            .expect("ok")
            .expect("present")
            .value;
        assert!(eku.client_auth && eku.server_auth);
    }

    #[test]
    fn bad_requests_and_names_are_refused() {
        let ca = HubCa::generate().expect("ca");
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut csr = csr_for(&key, "system:node:edge-1", "system:nodes");
        assert!(matches!(
            ca.sign_node_csr(&csr, "Edge_1", &[], DEFAULT_NODE_CERT_VALIDITY),
            Err(CaError::BadNodeName(_))
        ));
        let last = csr.len() - 1;
        csr[last] ^= 1;
        assert!(matches!(
            ca.sign_node_csr(&csr, "edge-1", &[], DEFAULT_NODE_CERT_VALIDITY),
            Err(CaError::BadCsr(_))
        ));
        assert!(matches!(
            ca.sign_node_csr(b"garbage", "edge-1", &[], DEFAULT_NODE_CERT_VALIDITY),
            Err(CaError::BadCsr(_))
        ));
        assert!(ExtKeyUsage::parse_header("[42]").is_err());
        assert!(ExtKeyUsage::parse_header("2").is_err());
        for good in ["edge-1", "a", "node.example.com", "0abc"] {
            validate_node_name(good).expect(good);
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a..b", &"x".repeat(254)] {
            assert!(validate_node_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_valid_node_certificates_of_this_ca_are_trusted() {
        let ca = HubCa::generate().expect("ca");
        let other = HubCa::generate().expect("ca");
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let now = SystemTime::now();
        let day = Duration::from_secs(DAY_SECS);

        let foreign = other
            .issue_node_certificate(&key, "edge-1", &[], now, now + day)
            .expect("issued");
        assert!(matches!(
            ca.verify_node_certificate(&[foreign]),
            Err(CaError::Untrusted(_))
        ));

        let expired = ca
            .issue_node_certificate(&key, "edge-1", &[], now - 3 * day, now - day)
            .expect("issued");
        assert!(matches!(
            ca.verify_node_certificate(&[expired]),
            Err(CaError::Untrusted(_))
        ));

        let server_only = ca
            .issue_node_certificate(&key, "edge-1", &[ExtKeyUsage::ServerAuth], now, now + day)
            .expect("issued");
        assert!(matches!(
            ca.verify_node_certificate(&[server_only]),
            Err(CaError::Untrusted(_))
        ));

        // A certificate of this CA that is not a node's.
        let server = ca.issue_server_certificate(&[], &[]).expect("issued");
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "admin");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin = params.signed_by(&key, &ca.issuer).expect("signed");
        assert!(matches!(
            ca.verify_node_certificate(&[admin.der().clone()]),
            Err(CaError::NotANode { .. })
        ));
        assert!(
            ca.verify_node_certificate(&[server.cert_der().clone()])
                .is_err()
        );
        assert!(matches!(
            ca.verify_node_certificate(&[]),
            Err(CaError::NoCertificate)
        ));
    }
}
