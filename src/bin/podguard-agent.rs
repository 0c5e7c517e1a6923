//! `podguard-agent`: the per-node DaemonSet entry point.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ipnet::IpNet;
use podguard::agent::metrics::Metrics;
use podguard::agent::{Agent, AgentConfig, install, node_state, run_nodes_file, start_device};
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
    /// internalIPs}); it is re-read when it changes. Without it the agent
    /// uses the Kubernetes API (in-cluster config, or $KUBECONFIG).
    #[arg(long, env = "PODGUARD_NODES_FILE")]
    nodes_file: Option<PathBuf>,

    /// Address of the metrics and health endpoints (/metrics, /healthz, /readyz).
    #[arg(long, env = "PODGUARD_METRICS_ADDR", default_value = "0.0.0.0:9721")]
    metrics_addr: std::net::SocketAddr,

    /// Install the CNI plugin binary and conflist before starting.
    #[arg(long, env = "PODGUARD_INSTALL_CNI")]
    install_cni: bool,

    /// Where --install-cni puts the plugin binary.
    #[arg(long, env = "PODGUARD_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,

    /// Where --install-cni puts the conflist.
    #[arg(long, env = "PODGUARD_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,

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
    if args.install_cni {
        let plugin = std::env::current_exe()?
            .parent()
            .map(|d| d.join("podguard-cni"))
            .context("locating podguard-cni next to podguard-agent")?;
        install::install(&plugin, &args.cni_bin_dir, &args.cni_conf_dir).with_context(|| {
            format!(
                "installing {} into {} and the conflist into {}",
                plugin.display(),
                args.cni_bin_dir.display(),
                args.cni_conf_dir.display()
            )
        })?;
        tracing::info!(bin_dir = %args.cni_bin_dir.display(), conf_dir = %args.cni_conf_dir.display(), "CNI plugin installed");
    }

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
        let (wg, device) = start_device(backend, &key, args.listen_port)?;
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
        let metrics = std::sync::Arc::new(Metrics::default());
        if let Some(d) = device {
            let _ = metrics.device.set(d);
        }
        metrics
            .clone()
            .serve(args.metrics_addr)
            .await
            .with_context(|| format!("serving metrics on {}", args.metrics_addr))?;
        let public_key = key.public_key();
        let node_name = cfg.node_name.clone();
        let agent = Agent::new(cfg, &key, wg, nl);
        let source = async {
            match args.nodes_file {
                Some(path) => run_nodes_file(agent, path, args.resync, metrics).await,
                None => {
                    let client = kube::Client::try_default().await.context(
                        "connecting to the Kubernetes API (in-cluster config or $KUBECONFIG)",
                    )?;
                    let sc = podguard::k8s::source::SourceConfig {
                        node_name,
                        public_key,
                        listen_port: args.listen_port,
                        resync: args.resync,
                    };
                    podguard::k8s::source::run(agent, client, sc, metrics).await
                }
            }
        };
        tokio::select! {
            r = source => r,
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("interrupted; the device and routes stay (fail closed)");
                Ok(())
            }
        }
    })
}
