//! edgemark: many hollow edge nodes in one process, for load tests of
//! cloudcore's link (see [`kedge_edge::hollow`]) and, with `--full`, of
//! the whole path from the API to pods on edge nodes (see
//! [`kedge_edge::hollow_edgecore`]).
//!
//! ```sh
//! edgemark --nodes 10000 --server 127.0.0.1:10000 \
//!     --cert-server https://127.0.0.1:10002 --token "$(keadm gettoken)" \
//!     --data-dir /tmp/edgemark --source-ips 127.0.0.2-127.0.0.50
//! ```
//!
//! Each node has its own name (`<prefix><index>`), its own certificate
//! (requested with the token on first start, a few at a time, and kept
//! under `<data-dir>/<node>/` for the next run) and its own WebSocket,
//! opened from the source addresses in turn so that one process can hold
//! more connections than one source address has ports. With `--quic` the
//! nodes connect over QUIC instead, the nodes of one source address
//! sharing one UDP socket, so that neither side needs a file per node.
//!
//! By default a node is link-level: it keeps its link and acknowledges
//! what it is sent. With `--full` each node is a full hollow edgecore
//! instead: EdgeHub, MetaManager (its database under `<data-dir>/<node>/`)
//! and edged on an in-memory fake container runtime, so that the node
//! registers, reports its status and Lease, and runs the pods scheduled to
//! it (they report Running; no image is pulled and nothing runs).
//!
//! Every few seconds it prints how many nodes are connected and what they
//! received (with `--full`, also how many pods the nodes run).

// Printing the progress lines is what this binary is for.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use kedge_edge::edged::runtime::{FakeRuntime, Runtime, SandboxFilter, SandboxState};
use kedge_edge::edgehub::EdgeHubMetrics;
use kedge_edge::hollow::{
    Holdings, HollowDialer, HollowMetrics, HollowNode, HollowSettings, HollowShared,
};
use kedge_edge::hollow_edgecore::HollowEdgeCore;
use kedge_transport::bootstrap::BootstrapConfig;
use kedge_transport::ws::ConnectTarget;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing_subscriber::EnvFilter;

/// KubeEdge's default project id, which edgecore sends.
const DEFAULT_PROJECT_ID: &str = "e632aba927ea4ac2b575ec1603d56f10";

/// How long the nodes may take to close their links on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(
    name = "edgemark",
    version,
    about = "Runs many hollow edge nodes in one process against a cloudcore"
)]
struct Cli {
    /// How many nodes to run.
    #[arg(long)]
    nodes: usize,
    /// CloudHub's address, host:port: its WebSocket port, or its QUIC
    /// port with `--quic`.
    #[arg(long)]
    server: String,
    /// Connect over QUIC (CloudHub's `quic` listener) instead of
    /// WebSocket. All nodes connecting from one source address share one
    /// UDP socket, so the open-file limit does not bound the node count.
    #[arg(long)]
    quic: bool,
    /// Run full hollow edgecores: each node is EdgeHub, MetaManager (with
    /// its own database) and edged on an in-memory fake container runtime,
    /// so it registers, reports node status and Lease, and runs the pods
    /// scheduled to it. Without it a node only keeps its link.
    #[arg(long, conflicts_with = "state_file")]
    full: bool,
    /// The certificate server, such as https://127.0.0.1:10002.
    #[arg(long = "cert-server")]
    cert_server: String,
    /// The join token (`keadm gettoken`); needed while a node has no
    /// certificate on disk.
    #[arg(long, default_value = "")]
    token: String,
    /// Where each node keeps its certificate (and with `--full` its
    /// databases and edged's files), under `<dir>/<node>/`.
    #[arg(long = "data-dir")]
    data_dir: PathBuf,
    /// Node names are this prefix followed by the node's index.
    #[arg(long = "name-prefix", default_value = "hollow-")]
    name_prefix: String,
    /// Local addresses to connect from, in turn: `A-B` ranges of IPv4
    /// addresses and single addresses, separated by commas.
    #[arg(long = "source-ips")]
    source_ips: Option<String>,
    /// Time between keepalives, such as `15s` or `500ms`.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    heartbeat: Duration,
    /// Connection attempts per second, all nodes together (default: no
    /// limit).
    #[arg(long = "connect-rate")]
    connect_rate: Option<f64>,
    /// Certificate requests in flight at once.
    #[arg(long = "issuing", default_value_t = 32)]
    issuing: usize,
    /// The project id sent in the handshake.
    #[arg(long = "project-id", default_value = DEFAULT_PROJECT_ID)]
    project_id: String,
    /// Where to write, on exit, what every node holds (JSON: node →
    /// objects by resource with their versions, duplicates, regressions).
    #[arg(long = "state-file")]
    state_file: Option<PathBuf>,
    /// Time between progress lines.
    #[arg(long = "report-every", default_value = "5s", value_parser = parse_duration)]
    report_every: Duration,
    /// More log output (-v debug, -vv trace); `RUST_LOG` wins. The default
    /// is warnings only, as thousands of nodes log alike.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

/// mimalloc: glibc's malloc spent a third of the time searching
/// fragmented free lists while 50,000 nodes redialled (docs/link.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("edgemark: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("edgemark: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbosity: u8) {
    let level = match verbosity {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Raises the soft limit on open files to the hard limit; returns it.
fn raise_nofile_limit() -> anyhow::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX).context("cannot raise the open-file limit")
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let source_ips = match &cli.source_ips {
        Some(spec) => parse_source_ips(spec)?,
        None => Vec::new(),
    };
    let nofile = raise_nofile_limit()?;
    // Over WebSocket each node holds one socket (cloudcore's side is in its
    // own process); with --full, two SQLite databases in WAL mode, three
    // files each.
    let files_per_node = u64::from(!cli.quic) + if cli.full { 6 } else { 0 };
    let wanted = u64::try_from(cli.nodes)
        .unwrap_or(u64::MAX)
        .saturating_mul(files_per_node)
        .saturating_add(64);
    if nofile < wanted {
        eprintln!(
            "edgemark: warning: the open-file limit is {nofile}, below the {wanted} that {} nodes need; raise it with ulimit -n",
            cli.nodes
        );
    }
    std::fs::create_dir_all(&cli.data_dir)
        .with_context(|| format!("cannot create {}", cli.data_dir.display()))?;
    println!(
        "edgemark: {} {} to {} over {} from {} source address(es), heartbeat {:?}, open-file limit {nofile}",
        cli.nodes,
        if cli.full { "full nodes" } else { "nodes" },
        cli.server,
        if cli.quic { "QUIC" } else { "WebSocket" },
        source_ips.len().max(1),
        cli.heartbeat
    );

    let settings = HollowSettings {
        heartbeat: cli.heartbeat,
        ..HollowSettings::default()
    };
    let mut shared = HollowShared::new(cli.issuing, cli.connect_rate);
    if cli.quic {
        shared = shared.over_quic();
    }
    let shutdown = CancellationToken::new();
    kedge_runtime::signals::spawn_handler(shutdown.clone()).context("cannot watch for signals")?;

    let holdings = Holdings::default();
    let mut fleet = if cli.full {
        Fleet::Full(Vec::with_capacity(cli.nodes))
    } else {
        Fleet::Link(HollowMetrics::default())
    };
    let tracker = TaskTracker::new();
    for index in 0..cli.nodes {
        let name = format!("{}{index}", cli.name_prefix);
        let dir = cli.data_dir.join(&name);
        let bootstrap = BootstrapConfig {
            ca_file: dir.join("ca.crt"),
            cert_file: dir.join("node.crt"),
            key_file: dir.join("node.key"),
            ..BootstrapConfig::new(name.clone(), cli.cert_server.clone(), cli.token.clone())
        };
        let mut target =
            ConnectTarget::new(cli.server.clone(), name.clone(), cli.project_id.clone());
        let source_ip = source_ips.get(index % source_ips.len().max(1)).copied();
        if let Some(ip) = source_ip {
            target = target.with_local_addr(ip);
        }
        let dialer = Arc::new(HollowDialer::new(target, bootstrap, shared.clone()));
        match &mut fleet {
            Fleet::Link(metrics) => {
                let node =
                    HollowNode::new(name, Arc::new(dialer), settings.clone(), metrics.clone())
                        .with_holdings(holdings.clone());
                tracker.spawn(node.run(shutdown.clone()));
            }
            Fleet::Full(nodes) => {
                let node_ip = source_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
                let node = HollowEdgeCore::new(name, &dir, node_ip, Arc::new(dialer))
                    .with_heartbeat(cli.heartbeat);
                nodes.push((node.edge_hub_metrics().clone(), node.runtime().clone()));
                tracker.spawn(run_full_node(node, shutdown.clone()));
            }
        }
    }
    tracker.close();

    let start = Instant::now();
    let mut report = tokio::time::interval_at(start + cli.report_every, cli.report_every);
    let mut all_connected = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = report.tick() => {}
        }
        let connected = fleet.connected();
        println!(
            "t={:.0}s connected {connected}/{} {}",
            start.elapsed().as_secs_f64(),
            cli.nodes,
            fleet.counters().await,
        );
        let now_all = connected == cli.nodes;
        if now_all && !all_connected {
            println!(
                "edgemark: all {} nodes connected after {:.1}s",
                cli.nodes,
                start.elapsed().as_secs_f64()
            );
        }
        all_connected = now_all;
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        eprintln!("edgemark: some nodes did not stop within {SHUTDOWN_GRACE:?}");
    }
    if let Some(path) = &cli.state_file {
        let state = serde_json::to_vec_pretty(&holdings.snapshot())
            .context("cannot encode the nodes' state")?;
        std::fs::write(path, state).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("edgemark: stopped; {}", fleet.counters().await);
    Ok(())
}

/// Runs one full hollow edgecore until `shutdown`, saying why when it
/// stops otherwise or not cleanly.
async fn run_full_node(node: HollowEdgeCore, shutdown: CancellationToken) {
    let name = node.name().to_owned();
    match node.run(shutdown, SHUTDOWN_GRACE).await {
        Ok(report) if report.is_clean() => {}
        Ok(report) => eprintln!("edgemark: node {name} stopped: {report:?}"),
        Err(err) => eprintln!("edgemark: node {name} cannot start: {err}"),
    }
}

/// The nodes edgemark runs, as their progress lines count them.
enum Fleet {
    /// Link-level hollow nodes, counting together.
    Link(HollowMetrics),
    /// Full hollow edgecores: each one's EdgeHub counters and runtime.
    Full(Vec<(EdgeHubMetrics, FakeRuntime)>),
}

impl Fleet {
    /// How many nodes have their link up.
    fn connected(&self) -> usize {
        match self {
            Self::Link(metrics) => usize::try_from(metrics.connected.get()).unwrap_or(0),
            Self::Full(nodes) => nodes.iter().filter(|(hub, _)| hub.is_connected()).count(),
        }
    }

    /// The counters of a progress line after the connected nodes.
    async fn counters(&self) -> String {
        match self {
            Self::Link(metrics) => format!(
                "connects {} dial_failures {} disconnects {} received {} acked {}",
                metrics.connects.get(),
                metrics.dial_failures.get(),
                metrics.disconnects.get(),
                metrics.received.get(),
                metrics.acked.get(),
            ),
            Self::Full(nodes) => {
                let sum = |count: fn(&EdgeHubMetrics) -> u64| -> u64 {
                    nodes.iter().map(|(hub, _)| count(hub)).sum()
                };
                let ready = SandboxFilter {
                    state: Some(SandboxState::Ready),
                    ..SandboxFilter::default()
                };
                let mut pods = 0;
                for (_, runtime) in nodes {
                    pods += runtime.list_sandboxes(&ready).await.map_or(0, |s| s.len());
                }
                format!(
                    "connects {} dial_failures {} disconnects {} received {} sent {} pods {pods}",
                    sum(EdgeHubMetrics::connects),
                    sum(EdgeHubMetrics::dial_failures),
                    sum(EdgeHubMetrics::disconnects),
                    sum(EdgeHubMetrics::messages_down),
                    sum(EdgeHubMetrics::messages_up),
                )
            }
        }
    }
}

/// Parses `15s`, `500ms`, `2m`, `1h` or a number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 15s or 500ms"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?} is not a positive duration"))
}

/// Parses `127.0.0.2-127.0.0.50,10.0.0.1`: IPv4 ranges and single
/// addresses (IPv4 or IPv6), separated by commas.
fn parse_source_ips(spec: &str) -> anyhow::Result<Vec<IpAddr>> {
    const MAX_ADDRESSES: u32 = 1 << 16;
    let mut ips = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.split_once('-') {
            Some((first, last)) => {
                let first: Ipv4Addr = first
                    .trim()
                    .parse()
                    .with_context(|| format!("bad address in {item:?}"))?;
                let last: Ipv4Addr = last
                    .trim()
                    .parse()
                    .with_context(|| format!("bad address in {item:?}"))?;
                let (first, last) = (u32::from(first), u32::from(last));
                if last < first || last - first >= MAX_ADDRESSES {
                    bail!("{item:?} is not a range of at most {MAX_ADDRESSES} addresses");
                }
                ips.extend((first..=last).map(|ip| IpAddr::V4(Ipv4Addr::from(ip))));
            }
            None => ips.push(
                item.parse()
                    .with_context(|| format!("bad address {item:?}"))?,
            ),
        }
    }
    if ips.is_empty() {
        bail!("--source-ips names no address");
    }
    Ok(ips)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ips_are_ranges_and_addresses() {
        let ips = parse_source_ips("127.0.0.2-127.0.0.4, 10.0.0.1").expect("parses");
        let text: Vec<String> = ips.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["127.0.0.2", "127.0.0.3", "127.0.0.4", "10.0.0.1"]);
        assert!(parse_source_ips("127.0.0.5-127.0.0.4").is_err());
        assert!(parse_source_ips("nonsense").is_err());
        assert!(parse_source_ips(",").is_err());
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn the_command_line_parses() {
        let cli = Cli::try_parse_from([
            "edgemark",
            "--nodes",
            "3",
            "--server",
            "127.0.0.1:10000",
            "--cert-server",
            "https://127.0.0.1:10002",
            "--token",
            "t",
            "--data-dir",
            "/tmp/x",
            "--heartbeat",
            "1s",
            "--connect-rate",
            "100",
        ])
        .expect("parses");
        assert_eq!(cli.nodes, 3);
        assert_eq!(cli.name_prefix, "hollow-");
        assert_eq!(cli.heartbeat, Duration::from_secs(1));
        assert_eq!(cli.connect_rate, Some(100.0));
        assert!(!cli.full);
    }

    #[test]
    fn full_nodes_write_no_state_file() {
        let args = [
            "edgemark",
            "--full",
            "--nodes",
            "3",
            "--server",
            "127.0.0.1:10000",
            "--cert-server",
            "https://127.0.0.1:10002",
            "--data-dir",
            "/tmp/x",
        ];
        assert!(Cli::try_parse_from(args).expect("parses").full);
        let with_state = args.into_iter().chain(["--state-file", "/tmp/state.json"]);
        assert!(Cli::try_parse_from(with_state).is_err());
    }
}
