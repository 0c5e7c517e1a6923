//! `podguard-agent`: the per-node DaemonSet entry point.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ipnet::IpNet;
use podguard::agent::{Agent, AgentConfig, node_state, run_nodes_file, start_device};
use podguard::netlink::{self, Netlink};
use podguard::wireguard::{BackendChoice, select_backend};

/// Keeps this node's WireGuard mesh in line with the cluster's nodes.
///
/// The agent loads (or creates) this node's private key, brings up
/// `podguard0` (kernel WireGuard when available, otherwise podguard's
/// userspace device), the pod bridge `cbr0`, and the routes: every cluster
/// CIDR into `podguard0` with an `unreachable` backstop, so pod traffic is
/// encrypted or dropped, never sent in plaintext. It then reconciles peers
/// and routes with the node list.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// This node's name (in a DaemonSet: the downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,

    /// Read the node list from this JSON or YAML file instead of the
    /// Kubernetes API (a list of {name, podCIDRs, endpoint, publicKey,
    /// internalIPs}); it is re-read when it changes.
    #[arg(long, env = "PODGUARD_NODES_FILE")]
    nodes_file: PathBuf,

    /// Cluster CIDR(s) (pod network), v4 and/or v6; repeat or comma-separate.
    #[arg(
        long = "cluster-cidr",
        env = "PODGUARD_CLUSTER_CIDRS",
        value_delimiter = ',',
        required = true
    )]
    cluster_cidrs: Vec<IpNet>,

    /// WireGuard UDP port.
    #[arg(long, env = "PODGUARD_LISTEN_PORT", default_value_t = mesh::DEFAULT_LISTEN_PORT)]
    listen_port: u16,

    /// MTU of the underlay network (the tunnel MTU is derived from it).
    #[arg(long, env = "PODGUARD_UNDERLAY_MTU", default_value_t = 1500)]
    underlay_mtu: u32,

    /// Persistent keepalive towards each peer, in seconds (0 = off).
    #[arg(long, env = "PODGUARD_KEEPALIVE", default_value_t = 25)]
    keepalive: u16,

    /// This node's private key (created with mode 0600 if missing).
    #[arg(long, env = "PODGUARD_KEY_FILE", default_value = keys::store::DEFAULT_PATH)]
    key_file: PathBuf,

    /// Where to write the node state the CNI plugin reads.
    #[arg(long, env = "PODGUARD_STATE_FILE", default_value = node_state::DEFAULT_PATH)]
    state_file: PathBuf,

    /// WireGuard implementation.
    #[arg(long, env = "PODGUARD_BACKEND", value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,

    /// Full resync period: drift (a peer or route changed by hand) is
    /// repaired within this time.
    #[arg(long, env = "PODGUARD_RESYNC", default_value = "10s", value_parser = parse_duration)]
    resync: Duration,

    /// Print this node's public key (creating the key if needed) and exit.
    #[arg(long)]
    print_public_key: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 10s, 500ms or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: unit must be ms, s or m")),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,defguard_wireguard_rs=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let key = keys::store::load_or_generate(&args.key_file)
        .with_context(|| format!("loading the node key {}", args.key_file.display()))?;
    if args.print_public_key {
        println!("{}", key.public_key());
        return Ok(());
    }
    tracing::info!(node = %args.node_name, public_key = %key.public_key(), "podguard-agent starting");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let nl = Netlink::connect()?;
        netlink::enable_forwarding()?;
        let kernel = match args.backend {
            BackendChoice::Userspace => false,
            _ => nl.kernel_wireguard_available().await,
        };
        let backend = select_backend(args.backend, kernel)?;
        tracing::info!(?backend, "WireGuard backend selected");
        let wg = start_device(backend, &key, args.listen_port)?;
        let cfg = AgentConfig {
            node_name: args.node_name,
            mesh: mesh::MeshConfig {
                cluster_cidrs: args.cluster_cidrs,
                listen_port: args.listen_port,
                underlay_mtu: args.underlay_mtu,
                persistent_keepalive: (args.keepalive > 0).then_some(args.keepalive),
            },
            state_file: args.state_file,
        };
        let agent = Agent::new(cfg, &key, wg, nl);
        tokio::select! {
            r = run_nodes_file(agent, args.nodes_file, args.resync) => r,
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("interrupted; the device and routes stay (fail closed)");
                Ok(())
            }
        }
    })
}
