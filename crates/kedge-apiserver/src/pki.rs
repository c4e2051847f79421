//! The embedded control plane's certificate authority and the files it keeps
//! in the data dir.
//!
//! On first start [`Pki::load_or_create`] makes, in the data dir:
//!
//! | file | what |
//! | --- | --- |
//! | `ca.crt`, `ca.key` | the cluster CA (ECDSA P-256, 10 years) |
//! | `apiserver.crt`, `apiserver.key` | the serving certificate, signed by the CA |
//! | `admin.crt`, `admin.key` | the client certificate of `kubernetes-admin` in `system:masters` |
//!
//! and [`Pki::write_admin_kubeconfig`] writes `admin.kubeconfig`, which
//! kubectl uses as it is. On a restart the files are read back and reused;
//! only the serving and admin certificates are ever re-issued (when the wanted
//! names are not all covered, when they are not signed by the CA on disk, or
//! when they expire within 30 days). The CA itself is never replaced: node
//! certificates signed by it must stay valid, so a half-present CA (one file
//! of the two) is an error rather than a reason to start over.
//!
//! Keys are ECDSA P-256 in PKCS#8 PEM, which Go (kubectl, client-go,
//! KubeEdge's edgecore) and Python clients all read. Every file is written
//! atomically (temporary file, fsync, rename); keys and the kubeconfig are
//! mode 0600.
//!
//! The same CA signs node client certificates later (KubeEdge's certificate
//! flow, `protocol.md` §4): [`Pki::sign_csr`] copies only the subject's CN and
//! O from a PKCS#10 request, as cloudcore does, and [`Pki::sign_client`] makes
//! a key and certificate outright. Both write every O as its own subject
//! attribute, so an identity may carry several groups.

use std::fs;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use der::asn1::{AnyRef, ObjectIdentifier};
use der::{Decode as _, Encode as _, Header, Reader as _, SliceReader, Tag};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber, SigningKey,
};
use rustls::pki_types::{
    CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// The CA certificate's file name in the data dir.
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA key's file name in the data dir.
pub const CA_KEY_FILE: &str = "ca.key";
/// The serving certificate's file name in the data dir.
pub const SERVING_CERT_FILE: &str = "apiserver.crt";
/// The serving key's file name in the data dir.
pub const SERVING_KEY_FILE: &str = "apiserver.key";
/// The admin client certificate's file name in the data dir.
pub const ADMIN_CERT_FILE: &str = "admin.crt";
/// The admin client key's file name in the data dir.
pub const ADMIN_KEY_FILE: &str = "admin.key";
/// The admin kubeconfig's file name in the data dir.
pub const ADMIN_KUBECONFIG_FILE: &str = "admin.kubeconfig";

/// The admin identity's user name (the certificate's CN), as kubeadm names it.
pub const ADMIN_USER: &str = "kubernetes-admin";
/// The group that may do everything (the certificate's O).
pub const MASTERS_GROUP: &str = "system:masters";

/// The CA certificate's common name.
const CA_COMMON_NAME: &str = "kedge-ca";
/// The serving certificate's common name, as kube-apiserver's.
const SERVING_COMMON_NAME: &str = "kube-apiserver";
/// The kubeconfig's cluster name.
const KUBECONFIG_CLUSTER: &str = "kedge";
/// The kubeconfig's user and context name.
const KUBECONFIG_USER: &str = "kedge-admin";

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
/// How long the CA is valid (kubeadm's CA lifetime).
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// How long the serving and admin certificates are valid.
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// A leaf expiring sooner than this is re-issued on start.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// Certificates start this long before now, so that a client whose clock is
/// a little behind accepts them.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// The DNS names every serving certificate covers: the in-cluster names of
/// the `kubernetes` Service and `localhost`.
pub const DEFAULT_DNS_NAMES: [&str; 5] = [
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

/// A failure to create, read or use the CA and certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("cannot access {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Only one of `ca.crt` and `ca.key` exists; the CA is never silently
    /// replaced, because certificates already signed by it would break.
    #[error("the CA in {dir} is incomplete: {present} exists but {missing} does not")]
    IncompleteCa {
        /// The data dir.
        dir: PathBuf,
        /// The file found.
        present: &'static str,
        /// The file missing.
        missing: &'static str,
    },
    /// A certificate or key file does not parse, or the CA key does not
    /// match the CA certificate.
    #[error("{path} is not usable: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Generating or signing failed.
    #[error("certificate generation failed")]
    Generate(#[from] rcgen::Error),
    /// A validity period ends beyond what a certificate can express.
    #[error("the certificate validity is out of range")]
    TimeOutOfRange,
    /// A certificate signing request is malformed, badly signed or lacks a
    /// common name.
    #[error("bad certificate signing request: {0}")]
    BadCsr(String),
}

/// The names the serving certificate must cover, beyond the defaults
/// (127.0.0.1, ::1 and [`DEFAULT_DNS_NAMES`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServingNames {
    /// Extra IP addresses (the bind address, advertised addresses).
    pub ips: Vec<IpAddr>,
    /// Extra DNS names.
    pub dns_names: Vec<String>,
}

impl ServingNames {
    /// The names for a server bound to `bind`: its address, unless it is the
    /// unspecified address (which no client dials).
    pub fn for_bind(bind: IpAddr) -> Self {
        let ips = if bind.is_unspecified() {
            Vec::new()
        } else {
            vec![bind]
        };
        Self {
            ips,
            dns_names: Vec::new(),
        }
    }

    /// Every IP address and DNS name wanted, defaults included, without
    /// duplicates.
    pub fn wanted(&self) -> (Vec<IpAddr>, Vec<String>) {
        let mut ips = vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ];
        for ip in &self.ips {
            if !ips.contains(ip) {
                ips.push(*ip);
            }
        }
        let mut dns: Vec<String> = DEFAULT_DNS_NAMES
            .iter()
            .map(|name| (*name).to_owned())
            .collect();
        for name in &self.dns_names {
            let name = name.to_ascii_lowercase();
            if !dns.contains(&name) {
                dns.push(name);
            }
        }
        (ips, dns)
    }
}

/// What a certificate signed by [`Pki::sign_csr`] may be used for
/// (`x509.ExtKeyUsage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUsage {
    /// TLS client authentication (Go's `ExtKeyUsageClientAuth`, 2).
    ClientAuth,
    /// TLS server authentication (Go's `ExtKeyUsageServerAuth`, 1).
    ServerAuth,
}

impl KeyUsage {
    /// The usage from Go's `x509.ExtKeyUsage` number, as KubeEdge's edge
    /// sends them in its `ExtKeyUsages` header.
    pub fn from_go(value: i64) -> Option<Self> {
        match value {
            1 => Some(Self::ServerAuth),
            2 => Some(Self::ClientAuth),
            _ => None,
        }
    }

    fn purpose(self) -> ExtendedKeyUsagePurpose {
        match self {
            Self::ClientAuth => ExtendedKeyUsagePurpose::ClientAuth,
            Self::ServerAuth => ExtendedKeyUsagePurpose::ServerAuth,
        }
    }
}

/// A client certificate and its key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCredentials {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The cluster CA with the serving and admin certificates it signed.
pub struct Pki {
    data_dir: PathBuf,
    ca_cert_pem: String,
    ca_cert_der: CertificateDer<'static>,
    ca_key: KeyPair,
    serving_cert_der: CertificateDer<'static>,
    serving_key_der: Vec<u8>,
    admin: ClientCredentials,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl Pki {
    /// Loads the CA and certificates from `data_dir`, creating what is
    /// missing (the directory too), and re-issuing the serving certificate
    /// when it does not cover every name in `names` and the admin
    /// certificate when it is unusable. See the module documentation.
    pub fn load_or_create(data_dir: &Path, names: &ServingNames) -> Result<Self, PkiError> {
        fs::create_dir_all(data_dir).map_err(|source| io_error(data_dir, source))?;
        let (ca_cert_pem, ca_key) = load_or_create_ca(data_dir)?;
        let ca_cert_der = pem_to_der(&ca_cert_pem)
            .ok_or_else(|| bad_file(&data_dir.join(CA_CERT_FILE), "no PEM certificate"))?;
        let mut pki = Self {
            data_dir: data_dir.to_owned(),
            ca_cert_pem,
            ca_cert_der: CertificateDer::from(ca_cert_der),
            ca_key,
            serving_cert_der: CertificateDer::from(Vec::new()),
            serving_key_der: Vec::new(),
            admin: ClientCredentials {
                cert_pem: String::new(),
                key_pem: String::new(),
            },
        };
        pki.load_or_issue_serving(names)?;
        pki.load_or_issue_admin()?;
        Ok(pki)
    }

    /// The data dir the files live in.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The CA certificate, PEM.
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// The CA certificate, DER (what KubeEdge's `/ca.crt` serves).
    pub fn ca_cert_der(&self) -> &CertificateDer<'static> {
        &self.ca_cert_der
    }

    /// The serving certificate chain (the leaf; the CA is the clients' trust
    /// anchor and is not sent).
    pub fn serving_cert_chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.serving_cert_der.clone()]
    }

    /// The serving certificate's private key.
    pub fn serving_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.serving_key_der.clone()))
    }

    /// The admin client certificate and key.
    pub fn admin_credentials(&self) -> &ClientCredentials {
        &self.admin
    }

    /// The path of the admin kubeconfig.
    pub fn admin_kubeconfig_path(&self) -> PathBuf {
        self.data_dir.join(ADMIN_KUBECONFIG_FILE)
    }

    /// Writes `<dataDir>/admin.kubeconfig` for `server` (such as
    /// `https://127.0.0.1:6443`; see [`server_url`]): cluster `kedge`, user
    /// and context `kedge-admin`, current. It is only rewritten when its
    /// content would change. Returns its path.
    pub fn write_admin_kubeconfig(&self, server: &str) -> Result<PathBuf, PkiError> {
        let path = self.admin_kubeconfig_path();
        let content = kubeconfig(server, &self.ca_cert_pem, &self.admin);
        if fs::read_to_string(&path).ok().as_deref() != Some(content.as_str()) {
            write_atomic(&path, content.as_bytes(), 0o600)?;
        }
        Ok(path)
    }

    /// A new key and a client certificate for user `common_name` in the
    /// groups `organizations`, valid for `validity` (for example a node's
    /// `system:node:<name>` in `system:nodes`).
    pub fn sign_client(
        &self,
        common_name: &str,
        organizations: &[&str],
        validity: Duration,
    ) -> Result<ClientCredentials, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let organizations: Vec<String> =
            organizations.iter().map(|org| (*org).to_owned()).collect();
        let der = self.issue_client(
            &key,
            common_name,
            &organizations,
            &[KeyUsage::ClientAuth],
            validity,
        )?;
        Ok(ClientCredentials {
            cert_pem: pem_encode("CERTIFICATE", &der),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a PKCS#10 request (DER), as cloudcore's certificate server
    /// does: the request's signature is checked, only the subject's CN and O
    /// values are kept, the usages are `usages` (client auth when empty) and
    /// the certificate is valid for `validity`. Returns the certificate, DER.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        usages: &[KeyUsage],
        validity: Duration,
    ) -> Result<Vec<u8>, PkiError> {
        let request = CertificateSigningRequestDer::from(csr_der);
        let params = CertificateSigningRequestParams::from_der(&request)
            .map_err(|err| PkiError::BadCsr(err.to_string()))?;
        let (_, parsed) =
            x509_parser::certification_request::X509CertificationRequest::from_der(csr_der)
                .map_err(|err| PkiError::BadCsr(err.to_string()))?;
        let subject = &parsed.certification_request_info.subject;
        let common_name = subject
            .iter_common_name()
            .next()
            .and_then(|attr| attr.as_str().ok())
            .filter(|cn| !cn.is_empty())
            .ok_or_else(|| PkiError::BadCsr("the subject has no common name".to_owned()))?;
        let organizations = subject
            .iter_organization()
            .map(|attr| attr.as_str().map(str::to_owned))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| PkiError::BadCsr(format!("bad organization: {err}")))?;
        let usages = if usages.is_empty() {
            &[KeyUsage::ClientAuth][..]
        } else {
            usages
        };
        self.issue_client(
            &params.public_key,
            common_name,
            &organizations,
            usages,
            validity,
        )
    }

    // === issuing ===

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, PkiError> {
        Ok(Issuer::from_ca_cert_der(&self.ca_cert_der, &self.ca_key)?)
    }

    /// A certificate for `public_key` with subject O=`organizations`…,
    /// CN=`common_name`, signed by the CA.
    fn issue_client(
        &self,
        public_key: &impl PublicKeyData,
        common_name: &str,
        organizations: &[String],
        usages: &[KeyUsage],
        validity: Duration,
    ) -> Result<Vec<u8>, PkiError> {
        let mut params = leaf_params(validity)?;
        // rcgen keeps one value per attribute type, so it writes a placeholder
        // subject and `replace_subject` puts in the real one, with every O.
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = usages.iter().map(|usage| usage.purpose()).collect();
        let certificate = params.signed_by(public_key, &self.issuer()?)?;
        let subject = encode_subject(common_name, organizations)?;
        replace_subject(certificate.der(), &subject, &self.ca_key)
    }

    fn load_or_issue_serving(&mut self, names: &ServingNames) -> Result<(), PkiError> {
        let cert_path = self.data_dir.join(SERVING_CERT_FILE);
        let key_path = self.data_dir.join(SERVING_KEY_FILE);
        let (ips, dns) = names.wanted();
        if let (Some(cert_pem), Some(key_pem)) =
            (read_optional(&cert_path)?, read_optional(&key_path)?)
            && let (Some(cert_der), Ok(key)) = (pem_to_der(&cert_pem), KeyPair::from_pem(&key_pem))
            && self.leaf_usable(&cert_der, &key)
            && covers(&cert_der, &ips, &dns)
        {
            self.serving_cert_der = CertificateDer::from(cert_der);
            self.serving_key_der = key.serialize_der();
            return Ok(());
        }
        tracing::info!(path = %cert_path.display(), ?ips, ?dns, "issuing the API server's serving certificate");
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = leaf_params(LEAF_VALIDITY)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, SERVING_COMMON_NAME);
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.subject_alt_names = ips.iter().map(|ip| SanType::IpAddress(*ip)).collect();
        for name in &dns {
            params
                .subject_alt_names
                .push(SanType::DnsName(name.clone().try_into()?));
        }
        let certificate = params.signed_by(&key, &self.issuer()?)?;
        write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_atomic(&cert_path, certificate.pem().as_bytes(), 0o644)?;
        self.serving_cert_der = certificate.der().clone();
        self.serving_key_der = key.serialize_der();
        Ok(())
    }

    fn load_or_issue_admin(&mut self) -> Result<(), PkiError> {
        let cert_path = self.data_dir.join(ADMIN_CERT_FILE);
        let key_path = self.data_dir.join(ADMIN_KEY_FILE);
        if let (Some(cert_pem), Some(key_pem)) =
            (read_optional(&cert_path)?, read_optional(&key_path)?)
            && let (Some(cert_der), Ok(key)) = (pem_to_der(&cert_pem), KeyPair::from_pem(&key_pem))
            && self.leaf_usable(&cert_der, &key)
        {
            self.admin = ClientCredentials { cert_pem, key_pem };
            return Ok(());
        }
        tracing::info!(path = %cert_path.display(), "issuing the admin client certificate");
        let admin = self.sign_client(ADMIN_USER, &[MASTERS_GROUP], LEAF_VALIDITY)?;
        write_atomic(&key_path, admin.key_pem.as_bytes(), 0o600)?;
        write_atomic(&cert_path, admin.cert_pem.as_bytes(), 0o644)?;
        self.admin = admin;
        Ok(())
    }

    /// Whether a leaf on disk may be kept: it parses, is signed by the CA,
    /// belongs to `key` and does not expire within [`RENEW_BEFORE`].
    fn leaf_usable(&self, cert_der: &[u8], key: &KeyPair) -> bool {
        let Ok((_, ca)) = X509Certificate::from_der(&self.ca_cert_der) else {
            return false;
        };
        let Ok((_, cert)) = X509Certificate::from_der(cert_der) else {
            return false;
        };
        let now = unix_now();
        let renew_at = cert.validity().not_after.timestamp() - RENEW_BEFORE.as_secs() as i64;
        cert.verify_signature(Some(ca.public_key())).is_ok()
            && cert.public_key().raw == key.subject_public_key_info().as_slice()
            && cert.validity().not_before.timestamp() <= now
            && now < renew_at
    }
}

// === the CA ===

fn load_or_create_ca(dir: &Path) -> Result<(String, KeyPair), PkiError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    match (read_optional(&cert_path)?, read_optional(&key_path)?) {
        (Some(cert_pem), Some(key_pem)) => {
            let key =
                KeyPair::from_pem(&key_pem).map_err(|err| bad_file(&key_path, &err.to_string()))?;
            let der =
                pem_to_der(&cert_pem).ok_or_else(|| bad_file(&cert_path, "no PEM certificate"))?;
            let (_, cert) = X509Certificate::from_der(&der)
                .map_err(|err| bad_file(&cert_path, &err.to_string()))?;
            if cert.public_key().raw != key.subject_public_key_info().as_slice() {
                return Err(bad_file(&key_path, "the key does not match ca.crt"));
            }
            if !cert.is_ca() {
                return Err(bad_file(&cert_path, "not a CA certificate"));
            }
            Ok((cert_pem, key))
        }
        (None, None) => {
            tracing::info!(dir = %dir.display(), "creating the cluster CA");
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
            let mut params = CertificateParams::default();
            let now = SystemTime::now();
            params.not_before = to_offset(now - BACKDATE)?;
            params.not_after = to_offset(now + CA_VALIDITY)?;
            params.serial_number = Some(random_serial());
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, CA_COMMON_NAME);
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let cert = params.self_signed(&key)?;
            let cert_pem = cert.pem();
            // The key first: a crash in between leaves "key without cert",
            // which is reported, never a certificate whose key is lost.
            write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
            write_atomic(&cert_path, cert_pem.as_bytes(), 0o644)?;
            Ok((cert_pem, key))
        }
        (Some(_), None) => Err(PkiError::IncompleteCa {
            dir: dir.to_owned(),
            present: CA_CERT_FILE,
            missing: CA_KEY_FILE,
        }),
        (None, Some(_)) => Err(PkiError::IncompleteCa {
            dir: dir.to_owned(),
            present: CA_KEY_FILE,
            missing: CA_CERT_FILE,
        }),
    }
}

/// Parameters shared by every leaf: random serial, backdated start,
/// `validity` long, authority key identifier.
fn leaf_params(validity: Duration) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let now = SystemTime::now();
    params.not_before = to_offset(now - BACKDATE)?;
    params.not_after = to_offset(now + validity.max(DAY / 24))?;
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// Whether the certificate's SANs include every wanted address and name.
fn covers(cert_der: &[u8], ips: &[IpAddr], dns: &[String]) -> bool {
    let Ok((_, cert)) = X509Certificate::from_der(cert_der) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    let mut have_ips = Vec::new();
    let mut have_dns = Vec::new();
    for name in &san.value.general_names {
        match name {
            GeneralName::DNSName(name) => have_dns.push(name.to_ascii_lowercase()),
            GeneralName::IPAddress(bytes) => {
                if let Ok(octets) = <[u8; 4]>::try_from(*bytes) {
                    have_ips.push(IpAddr::from(octets));
                } else if let Ok(octets) = <[u8; 16]>::try_from(*bytes) {
                    have_ips.push(IpAddr::from(octets));
                }
            }
            _ => {}
        }
    }
    ips.iter().all(|ip| have_ips.contains(ip)) && dns.iter().all(|name| have_dns.contains(name))
}

// === subject rewriting ===

/// The DER `Name` O=`organizations[0]`, O=…, CN=`common_name`, one attribute
/// per RDN in the order Go's `pkix.Name` writes them, every value a
/// UTF8String.
fn encode_subject(common_name: &str, organizations: &[String]) -> Result<Vec<u8>, PkiError> {
    let rdn = |oid: &ObjectIdentifier, value: &str| -> der::Result<Vec<u8>> {
        let mut attribute = oid.to_der()?;
        attribute.extend(der_tlv(Tag::Utf8String, value.as_bytes())?);
        der_tlv(Tag::Set, &der_tlv(Tag::Sequence, &attribute)?)
    };
    let encode = || -> der::Result<Vec<u8>> {
        let mut rdns = Vec::new();
        for organization in organizations {
            rdns.extend(rdn(&OID_ORGANIZATION, organization)?);
        }
        rdns.extend(rdn(&OID_COMMON_NAME, common_name)?);
        der_tlv(Tag::Sequence, &rdns)
    };
    encode().map_err(|err| PkiError::BadCsr(format!("cannot encode the subject: {err}")))
}

/// The `organizationName` attribute type (2.5.4.10).
const OID_ORGANIZATION: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.10");
/// The `commonName` attribute type (2.5.4.3).
const OID_COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// Re-signs `cert_der` with its subject replaced by `subject` (a DER
/// `Name`). rcgen cannot write several values of one attribute type (several
/// O = several groups), so the certificate it made is taken apart, its
/// to-be-signed part patched and signed again with the CA key.
fn replace_subject(cert_der: &[u8], subject: &[u8], ca_key: &KeyPair) -> Result<Vec<u8>, PkiError> {
    let malformed =
        || PkiError::BadCsr("internal: generated certificate does not parse".to_owned());
    let (_, cert) = X509Certificate::from_der(cert_der).map_err(|_| malformed())?;
    let tbs: &[u8] = cert.tbs_certificate.as_ref();
    let old_subject = cert.tbs_certificate.subject.as_raw();
    let start = old_subject
        .as_ptr()
        .addr()
        .checked_sub(tbs.as_ptr().addr())
        .filter(|start| start + old_subject.len() <= tbs.len())
        .ok_or_else(malformed)?;
    let (header, _) = der_lengths(tbs).ok_or_else(malformed)?;
    let mut content = tbs[header..start].to_vec();
    content.extend_from_slice(subject);
    content.extend_from_slice(&tbs[start + old_subject.len()..]);
    let new_tbs = der_tlv(Tag::Sequence, &content).map_err(|_| malformed())?;
    let signature = ca_key.sign(&new_tbs)?;

    // Certificate ::= SEQUENCE { tbs, signatureAlgorithm, signatureValue }:
    // keep the algorithm element that follows the old TBS.
    let (outer, _) = der_lengths(cert_der).ok_or_else(malformed)?;
    let after_tbs = &cert_der[outer + tbs.len()..];
    let algorithm_len = der_lengths(after_tbs)
        .map(|(header, len)| header + len)
        .filter(|len| *len <= after_tbs.len())
        .ok_or_else(malformed)?;
    let mut bit_string = vec![0u8];
    bit_string.extend(signature);
    let mut body = new_tbs;
    body.extend_from_slice(&after_tbs[..algorithm_len]);
    body.extend(der_tlv(Tag::BitString, &bit_string).map_err(|_| malformed())?);
    der_tlv(Tag::Sequence, &body).map_err(|_| malformed())
}

/// A DER element: tag, definite length, content.
fn der_tlv(tag: Tag, content: &[u8]) -> der::Result<Vec<u8>> {
    AnyRef::new(tag, content)?.to_der()
}

/// The lengths of a DER element's tag and length octets and of its
/// content.
fn der_lengths(element: &[u8]) -> Option<(usize, usize)> {
    let mut reader = SliceReader::new(element).ok()?;
    let header = Header::decode(&mut reader).ok()?;
    let header_len = usize::try_from(reader.position()).ok()?;
    let content_len = usize::try_from(header.length()).ok()?;
    Some((header_len, content_len))
}

// === helpers ===

/// `https://<host>:<port>` for a server bound to `bind`; an unspecified
/// address becomes the loopback address of its family.
pub fn server_url(bind: SocketAddr) -> String {
    let ip = match bind.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("https://{}", SocketAddr::new(ip, bind.port()))
}

fn kubeconfig(server: &str, ca_pem: &str, admin: &ClientCredentials) -> String {
    let ca = BASE64.encode(ca_pem);
    let cert = BASE64.encode(&admin.cert_pem);
    let key = BASE64.encode(&admin.key_pem);
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - cluster:\n    certificate-authority-data: {ca}\n    server: {server}\n  name: {KUBECONFIG_CLUSTER}\n\
         contexts:\n\
         - context:\n    cluster: {KUBECONFIG_CLUSTER}\n    user: {KUBECONFIG_USER}\n  name: {KUBECONFIG_USER}\n\
         current-context: {KUBECONFIG_USER}\n\
         preferences: {{}}\n\
         users:\n\
         - name: {KUBECONFIG_USER}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n"
    )
}

/// `der` as a PEM block labelled `label`.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = BASE64.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

/// The DER content of the first PEM certificate in `pem`.
fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|der| der.to_vec())
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // Without randomness, fall back to the clock: serials must differ, they
    // need not be secret.
    if rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .is_err()
    {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes = nanos.to_be_bytes();
    }
    // A positive INTEGER that does not start with a zero byte.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64)
}

fn to_offset(at: SystemTime) -> Result<time::OffsetDateTime, PkiError> {
    let secs = at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64);
    time::OffsetDateTime::from_unix_timestamp(secs).map_err(|_| PkiError::TimeOutOfRange)
}

fn read_optional(path: &Path) -> Result<Option<String>, PkiError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(io_error(path, source)),
    }
}

/// Writes `bytes` to `path` atomically with permissions `mode`: a temporary
/// file in the same directory, fsync, rename, fsync of the directory.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
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
        io_error(path, source)
    })
}

fn io_error(path: &Path, source: io::Error) -> PkiError {
    PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

fn bad_file(path: &Path, reason: &str) -> PkiError {
    PkiError::BadFile {
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject_of(der: &[u8]) -> (String, Vec<String>) {
        let (_, cert) = X509Certificate::from_der(der).expect("certificate parses");
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default();
        let orgs = cert
            .subject()
            .iter_organization()
            .filter_map(|o| o.as_str().ok())
            .map(str::to_owned)
            .collect();
        (cn.to_owned(), orgs)
    }

    fn verify_with_ca(pki: &Pki, der: &[u8]) {
        let (_, ca) = X509Certificate::from_der(pki.ca_cert_der()).expect("CA parses");
        let (_, cert) = X509Certificate::from_der(der).expect("certificate parses");
        cert.verify_signature(Some(ca.public_key()))
            .expect("signed by the CA");
        assert_eq!(cert.issuer().as_raw(), ca.subject().as_raw());
    }

    #[test]
    fn der_lengths_round_trip() {
        for len in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let element = der_tlv(Tag::OctetString, &vec![7u8; len]).expect("encodes");
            let (header, content) = der_lengths(&element).expect("header");
            assert_eq!(content, len);
            assert_eq!(element.len(), header + len);
        }
    }

    #[test]
    fn client_certificates_carry_every_group() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki::load_or_create(dir.path(), &ServingNames::default()).expect("pki");
        for orgs in [&[][..], &["system:nodes"][..], &["a", "b", "c"][..]] {
            let creds = pki
                .sign_client("system:node:n1", orgs, DAY)
                .expect("signed");
            let der = pem_to_der(&creds.cert_pem).expect("PEM");
            verify_with_ca(&pki, &der);
            let (cn, got) = subject_of(&der);
            assert_eq!(cn, "system:node:n1");
            assert_eq!(
                got,
                orgs.iter().map(|o| (*o).to_owned()).collect::<Vec<_>>()
            );
            let key = KeyPair::from_pem(&creds.key_pem).expect("key parses");
            let (_, cert) = X509Certificate::from_der(&der).expect("parses");
            assert_eq!(
                cert.public_key().raw,
                key.subject_public_key_info().as_slice()
            );
        }
    }

    #[test]
    fn csr_subject_cn_and_o_are_copied_and_the_rest_dropped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki::load_or_create(dir.path(), &ServingNames::default()).expect("pki");
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "CN");
        dn.push(DnType::OrganizationName, "system:nodes");
        dn.push(DnType::LocalityName, "Hangzhou");
        dn.push(DnType::CommonName, "system:node:edge-1");
        params.distinguished_name = dn;
        let csr = params.serialize_request(&key).expect("csr");
        let der = pki.sign_csr(csr.der(), &[], DAY).expect("signed");
        verify_with_ca(&pki, &der);
        assert_eq!(
            subject_of(&der),
            (
                "system:node:edge-1".to_owned(),
                vec!["system:nodes".to_owned()]
            )
        );
        let (_, cert) = X509Certificate::from_der(&der).expect("parses");
        assert!(cert.subject().iter_country().next().is_none());
        assert_eq!(
            cert.public_key().raw,
            key.subject_public_key_info().as_slice()
        );
        let eku = cert
            .extended_key_usage()
            .expect("eku")
            .expect("present")
            .value;
        assert!(eku.client_auth && !eku.server_auth);
    }

    #[test]
    fn csr_with_a_bad_signature_or_no_cn_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki::load_or_create(dir.path(), &ServingNames::default()).expect("pki");
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let csr = params.serialize_request(&key).expect("csr");
        assert!(matches!(
            pki.sign_csr(csr.der(), &[], DAY),
            Err(PkiError::BadCsr(_))
        ));
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "system:node:x");
        let mut bytes = params.serialize_request(&key).expect("csr").der().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        assert!(matches!(
            pki.sign_csr(&bytes, &[], DAY),
            Err(PkiError::BadCsr(_))
        ));
        assert!(matches!(
            pki.sign_csr(b"junk", &[], DAY),
            Err(PkiError::BadCsr(_))
        ));
    }

    #[test]
    fn files_are_private_and_restart_reuses_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = Pki::load_or_create(dir.path(), &ServingNames::default()).expect("pki");
        for file in [CA_KEY_FILE, SERVING_KEY_FILE, ADMIN_KEY_FILE] {
            let mode = fs::metadata(dir.path().join(file))
                .expect("exists")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        let second = Pki::load_or_create(dir.path(), &ServingNames::default()).expect("pki");
        assert_eq!(first.ca_cert_pem(), second.ca_cert_pem());
        assert_eq!(first.serving_cert_chain(), second.serving_cert_chain());
        assert_eq!(first.admin_credentials(), second.admin_credentials());
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn half_a_ca_is_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        Pki::load_or_create(dir.path(), &ServingNames::default()).expect("pki");
        fs::remove_file(dir.path().join(CA_KEY_FILE)).expect("removed");
        assert!(matches!(
            Pki::load_or_create(dir.path(), &ServingNames::default()),
            Err(PkiError::IncompleteCa {
                missing: CA_KEY_FILE,
                ..
            })
        ));
    }

    #[test]
    fn server_url_replaces_unspecified_addresses() {
        assert_eq!(
            server_url("0.0.0.0:6443".parse().expect("addr")),
            "https://127.0.0.1:6443"
        );
        assert_eq!(
            server_url("[::]:6443".parse().expect("addr")),
            "https://[::1]:6443"
        );
        assert_eq!(
            server_url("10.0.0.5:443".parse().expect("addr")),
            "https://10.0.0.5:443"
        );
    }
}
