//! keadm: the Kedge admin tool, as KubeEdge's `keadm`.
//!
//! `keadm gettoken [--kube-config FILE]` prints the join token that
//! cloudcore keeps in Secret `kubeedge/tokensecret`, key `tokendata`. The
//! cluster is reached with `--kube-config` when given, else as kube-rs
//! infers it (`KUBECONFIG`, then `~/.kube/config`, then in-cluster).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, anyhow, bail};
use clap::{Parser, Subcommand};
use k8s_openapi::api::core::v1::Secret;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

/// KubeEdge's system namespace.
const SYSTEM_NAMESPACE: &str = "kubeedge";
/// The Secret holding the join token.
const TOKEN_SECRET: &str = "tokensecret";
/// The Secret's key holding the token.
const TOKEN_KEY: &str = "tokendata";

#[derive(Debug, Parser)]
#[command(name = "keadm", version, about = "Kedge admin tool (KubeEdge's keadm)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the token edge nodes join the cluster with.
    #[command(name = "gettoken")]
    GetToken {
        /// The kubeconfig to use (default: KUBECONFIG, then ~/.kube/config).
        #[arg(long = "kube-config", value_name = "FILE")]
        kube_config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&anyhow!(err).context("cannot start the async runtime")),
    };
    let result = match cli.command {
        Command::GetToken { kube_config } => runtime.block_on(get_token(kube_config)),
    };
    match result {
        Ok(token) => {
            let mut stdout = std::io::stdout().lock();
            match writeln!(stdout, "{token}").and_then(|()| stdout.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => fail(&anyhow!(err).context("cannot write the token")),
            }
        }
        Err(err) => fail(&err),
    }
}

fn fail(err: &anyhow::Error) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "Error: {err:#}");
    ExitCode::FAILURE
}

/// Reads the join token from the cluster.
async fn get_token(kube_config: Option<PathBuf>) -> anyhow::Result<String> {
    let config = match &kube_config {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("cannot use kubeconfig {}", path.display()))?
        }
        None => Config::infer()
            .await
            .context("cannot find a kubeconfig (use --kube-config)")?,
    };
    let client = Client::try_from(config).context("cannot create the Kubernetes client")?;
    let secrets: Api<Secret> = Api::namespaced(client, SYSTEM_NAMESPACE);
    let secret = secrets
        .get_opt(TOKEN_SECRET)
        .await
        .with_context(|| format!("cannot read secret {SYSTEM_NAMESPACE}/{TOKEN_SECRET}"))?;
    match secret {
        Some(secret) => token_from_secret(&secret),
        None => bail!(
            "secret {SYSTEM_NAMESPACE}/{TOKEN_SECRET} not found: cloudcore creates it when it \
             starts; is cloudcore running against this cluster?"
        ),
    }
}

/// The token in `secret`'s `tokendata`.
fn token_from_secret(secret: &Secret) -> anyhow::Result<String> {
    let data = secret
        .data
        .as_ref()
        .and_then(|data| data.get(TOKEN_KEY))
        .ok_or_else(|| anyhow!("secret {SYSTEM_NAMESPACE}/{TOKEN_SECRET} has no {TOKEN_KEY}"))?;
    let token = std::str::from_utf8(&data.0)
        .with_context(|| format!("{TOKEN_KEY} of {SYSTEM_NAMESPACE}/{TOKEN_SECRET} is not text"))?
        .trim();
    if token.is_empty() {
        bail!("{TOKEN_KEY} of secret {SYSTEM_NAMESPACE}/{TOKEN_SECRET} is empty");
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;

    fn secret(data: Option<&[u8]>) -> Secret {
        Secret {
            data: data
                .map(|bytes| BTreeMap::from([(TOKEN_KEY.to_owned(), ByteString(bytes.to_vec()))])),
            ..Secret::default()
        }
    }

    #[test]
    fn the_token_is_read_from_tokendata() {
        assert_eq!(
            token_from_secret(&secret(Some(b"abc.h.c.s\n"))).expect("token"),
            "abc.h.c.s"
        );
        for bad in [secret(None), secret(Some(b"")), secret(Some(&[0xff, 0xfe]))] {
            assert!(token_from_secret(&bad).is_err());
        }
    }

    #[test]
    fn the_command_line_is_keadms() {
        let cli =
            Cli::try_parse_from(["keadm", "gettoken", "--kube-config", "/tmp/k"]).expect("parses");
        let Command::GetToken { kube_config } = cli.command;
        assert_eq!(kube_config, Some(PathBuf::from("/tmp/k")));
        let cli = Cli::try_parse_from(["keadm", "gettoken"]).expect("parses");
        let Command::GetToken { kube_config } = cli.command;
        assert_eq!(kube_config, None);
        assert!(Cli::try_parse_from(["keadm"]).is_err());
    }
}
