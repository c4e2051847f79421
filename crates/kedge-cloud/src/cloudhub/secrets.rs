//! The hub's CA, server certificate and join token, kept in Secrets of the
//! `kubeedge` namespace exactly as KubeEdge keeps them (protocol.md §4.1):
//! `casecret` (`cadata`, `cakeydata`), `cloudcoresecret` (`cloudcoredata`,
//! `cloudcorekeydata`) and `tokensecret` (`tokendata`), so that `keadm
//! gettoken` and several cloudcores share them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kedge_transport::ca::{HubCa, ServerCertificate};
use kedge_transport::token;
use kube::api::{Api, ObjectMeta, PostParams};

/// The namespace of the hub's Secrets.
pub const NAMESPACE: &str = "kubeedge";
/// The CA's Secret.
pub const CA_SECRET: &str = "casecret";
/// The CloudHub server certificate's Secret.
pub const SERVER_SECRET: &str = "cloudcoresecret";
/// The join token's Secret.
pub const TOKEN_SECRET: &str = "tokensecret";
/// The join token's key in its Secret.
pub const TOKEN_KEY: &str = "tokendata";

/// How long before its expiry the stored server certificate is replaced.
const SERVER_CERT_MARGIN: Duration = Duration::from_secs(30 * 24 * 3600);

/// Creates the `kubeedge` namespace when it is missing.
pub async fn ensure_namespace(client: &kube::Client) -> Result<(), String> {
    let api: Api<Namespace> = Api::all(client.clone());
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(NAMESPACE.to_owned()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    match api.create(&PostParams::default(), &namespace).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(error) => Err(format!("cannot create namespace {NAMESPACE}: {error}")),
    }
}

async fn read(client: &kube::Client, name: &str) -> Result<Option<Secret>, String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    api.get_opt(name)
        .await
        .map_err(|error| format!("cannot read Secret {NAMESPACE}/{name}: {error}"))
}

/// Writes Secret `name` with `data`, replacing its data if it exists.
async fn write(
    client: &kube::Client,
    name: &str,
    data: BTreeMap<String, Vec<u8>>,
) -> Result<(), String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let data: BTreeMap<String, ByteString> = data
        .into_iter()
        .map(|(key, value)| (key, ByteString(value)))
        .collect();
    let fail = |error: kube::Error| format!("cannot write Secret {NAMESPACE}/{name}: {error}");
    match api.get_opt(name).await.map_err(fail)? {
        Some(mut secret) => {
            secret.data = Some(data);
            api.replace(name, &PostParams::default(), &secret)
                .await
                .map_err(fail)?;
        }
        None => {
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    namespace: Some(NAMESPACE.to_owned()),
                    ..ObjectMeta::default()
                },
                data: Some(data),
                ..Secret::default()
            };
            api.create(&PostParams::default(), &secret)
                .await
                .map_err(fail)?;
        }
    }
    Ok(())
}

fn field<'a>(secret: &'a Secret, key: &str) -> Option<&'a [u8]> {
    secret
        .data
        .as_ref()?
        .get(key)
        .map(|value| value.0.as_slice())
}

/// The hub's CA from Secret `casecret`, made and stored when it is missing.
pub async fn load_or_create_ca(client: &kube::Client) -> Result<HubCa, String> {
    if let Some(secret) = read(client, CA_SECRET).await?
        && let (Some(cert), Some(key)) = (field(&secret, "cadata"), field(&secret, "cakeydata"))
    {
        return HubCa::from_der(cert, key).map_err(|error| {
            format!("Secret {NAMESPACE}/{CA_SECRET} holds no usable CA: {error}")
        });
    }
    let ca = HubCa::generate().map_err(|error| format!("cannot make the hub CA: {error}"))?;
    write(
        client,
        CA_SECRET,
        BTreeMap::from([
            ("cadata".to_owned(), ca.cert_der().to_vec()),
            ("cakeydata".to_owned(), ca.key_der().to_vec()),
        ]),
    )
    .await?;
    tracing::info!(ca_hash = %ca.ca_hash(), "made the hub CA");
    // Another cloudcore may have stored its CA first: use what is stored.
    let secret = read(client, CA_SECRET)
        .await?
        .ok_or_else(|| format!("Secret {NAMESPACE}/{CA_SECRET} vanished"))?;
    match (field(&secret, "cadata"), field(&secret, "cakeydata")) {
        (Some(cert), Some(key)) => HubCa::from_der(cert, key)
            .map_err(|error| format!("Secret {NAMESPACE}/{CA_SECRET} holds no usable CA: {error}")),
        _ => Err(format!(
            "Secret {NAMESPACE}/{CA_SECRET} lacks cadata or cakeydata"
        )),
    }
}

/// The CloudHub server certificate from Secret `cloudcoresecret` when it
/// was issued by `ca` and is good for a while yet; otherwise a new one for
/// `ips` and `dns_names`, stored there.
pub async fn load_or_issue_server_certificate(
    client: &kube::Client,
    ca: &HubCa,
    ips: &[IpAddr],
    dns_names: &[String],
) -> Result<ServerCertificate, String> {
    if let Some(secret) = read(client, SERVER_SECRET).await?
        && let (Some(cert), Some(key)) = (
            field(&secret, "cloudcoredata"),
            field(&secret, "cloudcorekeydata"),
        )
        && let Ok(server) = ServerCertificate::from_der(cert, key)
        && ca
            .check_server_certificate(&server, SERVER_CERT_MARGIN)
            .is_ok()
        && covers(&server, ips)
    {
        return Ok(server);
    }
    let server = ca
        .issue_server_certificate(ips, dns_names)
        .map_err(|error| format!("cannot issue the CloudHub certificate: {error}"))?;
    write(
        client,
        SERVER_SECRET,
        BTreeMap::from([
            ("cloudcoredata".to_owned(), server.cert_der().to_vec()),
            ("cloudcorekeydata".to_owned(), server.key_der().to_vec()),
        ]),
    )
    .await?;
    tracing::info!(?ips, "issued the CloudHub server certificate");
    Ok(server)
}

/// Whether `server` names every address in `ips`.
fn covers(server: &ServerCertificate, ips: &[IpAddr]) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(server.cert_der()) else {
        return false;
    };
    let Ok(Some(names)) = cert.subject_alternative_name() else {
        return ips.is_empty();
    };
    ips.iter().all(|ip| {
        names.value.general_names.iter().any(|name| match name {
            x509_parser::extensions::GeneralName::IPAddress(bytes) => match ip {
                IpAddr::V4(v4) => *bytes == v4.octets().as_slice(),
                IpAddr::V6(v6) => *bytes == v6.octets().as_slice(),
            },
            _ => false,
        })
    })
}

/// Makes a join token valid for `valid_for` and stores it in Secret
/// `tokensecret`, where `keadm gettoken` reads it.
pub async fn publish_token(
    client: &kube::Client,
    ca: &HubCa,
    valid_for: Duration,
) -> Result<(), String> {
    let token = token::make_token(ca, valid_for);
    write(
        client,
        TOKEN_SECRET,
        BTreeMap::from([(TOKEN_KEY.to_owned(), token.into_bytes())]),
    )
    .await
}
