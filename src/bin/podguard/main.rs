//! `podguard`: the operator CLI.
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};
use podguard::lab::{check, cluster};

mod view;

/// podguard: a WireGuard-encrypted pod network for Kubernetes.
///
/// Exit codes: 0 fine; 1 the command ran and found a problem (a node not
/// converged, unencrypted flows, a failed check or rotation); 2 it could
/// not run (bad arguments, no API, refused input).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The kubeconfig for commands that talk to the API (else $KUBECONFIG,
    /// ~/.kube/config, or the in-cluster config).
    #[arg(long, global = true, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (else its current context).
    #[arg(long, global = true, value_name = "NAME")]
    context: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// What the planner needs beyond the API's Nodes.
#[derive(Debug, clap::Args)]
struct PlanArgs {
    /// The cluster CIDR(s), as the agents have them (PODGUARD_CLUSTER_CIDRS).
    #[arg(
        long = "cluster-cidr",
        env = "PODGUARD_CLUSTER_CIDRS",
        value_delimiter = ',',
        default_value = "10.244.0.0/16,fd00:10:244::/56"
    )]
    cluster_cidrs: Vec<ipnet::IpNet>,
    /// The WireGuard port of the agents (PODGUARD_LISTEN_PORT).
    #[arg(long, env = "PODGUARD_LISTEN_PORT", default_value_t = mesh::DEFAULT_LISTEN_PORT)]
    listen_port: u16,
}

impl PlanArgs {
    fn config(&self) -> mesh::plan::MeshConfig {
        mesh::plan::MeshConfig {
            cluster_cidrs: self.cluster_cidrs.clone(),
            listen_port: self.listen_port,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum FailOn {
    High,
    Medium,
    Low,
    Never,
}

impl FailOn {
    fn threshold(self) -> Option<mesh::audit::Severity> {
        use mesh::audit::Severity;
        match self {
            Self::High => Some(Severity::High),
            Self::Medium => Some(Severity::Warning),
            Self::Low => Some(Severity::Info),
            Self::Never => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum GraphFormat {
    /// Graphviz DOT text.
    Dot,
    /// SVG, drawn by Graphviz `dot` (must be installed).
    Svg,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A local multi-node cluster in network namespaces.
    #[command(subcommand)]
    Lab(Lab),
    /// Rotate nodes' WireGuard keys without a traffic gap.
    ///
    /// Sets `podguard.dev/rotate-requested` on each node; the node's agent
    /// creates a next key, publishes it (`podguard.dev/next-public-key`),
    /// waits until every peer has a session on it (kernel WireGuard: for
    /// the stage timeout), switches, and retires the old key once every
    /// peer uses the new one. On the userspace device no packet is lost; kernel
    /// WireGuard holds one key, so its peers lose packets for a moment at
    /// the switch (see README, "WireGuard backends"). Refused for an
    /// unknown node, a node without agent, or one already rotating.
    Rotate {
        /// The node to rotate.
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        node: Option<String>,
        /// Rotate every node, one at a time (waits for each).
        #[arg(long)]
        all: bool,
        /// Wait until the new key is in place everywhere (every node's
        /// podguard.dev/mesh-digest agrees) and print the result.
        #[arg(long)]
        wait: bool,
        /// Give up waiting for one node after this long (e.g. 90s, 5m;
        /// default 5m). Only with --wait or --all: without them nothing
        /// waits, so a timeout is an error rather than silently ignored.
        #[arg(long, value_parser = podguard::agent::cli::parse_duration)]
        timeout: Option<std::time::Duration>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Talk to the local lab's API server (`podguard lab up`) instead
        /// of the cluster in $KUBECONFIG.
        #[arg(long)]
        lab: bool,
    },
    /// Which traffic NetworkPolicy allows, and whether podguard encrypts it.
    ///
    /// Reads Nodes, Pods, Namespaces and NetworkPolicies (networking.k8s.io/v1)
    /// and each agent's published state, evaluates the policies, and shows a
    /// namespace matrix: denied, local (same node, never on the wire),
    /// encrypted, stale (a node has not converged), PLAINTEXT (a host-network
    /// pod: not covered by podguard) or BROKEN (a node without a valid key:
    /// dropped, fail closed). podguard audits NetworkPolicy; it does not
    /// enforce it. Exit code 1 when a finding is at least --fail-on.
    Audit {
        /// The least severe finding that fails the audit (exit 1): high =
        /// policy-allowed traffic dropped or unmaintained; medium = also
        /// host-network plaintext and nodes not converged; low = any
        /// finding; never = always exit 0 (report only).
        #[arg(long, value_enum, default_value_t = FailOn::High)]
        fail_on: FailOn,
        /// Also list every pod pair.
        #[arg(long)]
        pods: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Talk to the local lab's API server instead of $KUBECONFIG.
        #[arg(long)]
        lab: bool,
        /// Also generate traffic between every pair of pods and capture the
        /// underlay for a bounded time, counting encrypted and plaintext
        /// packets (lab only: needs root and the lab's namespaces).
        #[arg(long, requires = "lab")]
        probe: bool,
    },
    /// The WireGuard configuration a node should have (`wg setconf`
    /// syntax, no private key), as the agents plan it from the API: diff it
    /// against `wg showconf podguard0` on the node.
    Showconf {
        /// The node.
        node: String,
        #[command(flatten)]
        plan: PlanArgs,
        /// Talk to the local lab's API server instead of $KUBECONFIG.
        #[arg(long)]
        lab: bool,
    },
    /// The mesh as a graph: every node (endpoint, key fingerprint) and, per
    /// pair, whether they are peers (green) or why not (red, dashed).
    /// Handshake ages are on each agent's /metrics, not in the API.
    Graph {
        /// Output format.
        #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
        format: GraphFormat,
        #[command(flatten)]
        plan: PlanArgs,
        /// Talk to the local lab's API server instead of $KUBECONFIG.
        #[arg(long)]
        lab: bool,
    },
    /// Print a shell completion script (e.g. `podguard completions bash >
    /// /etc/bash_completion.d/podguard`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `podguard man | man -l -`.
    Man,
    /// Per node: key fingerprint, key age, rotation state, whether its
    /// applied mesh (podguard.dev/mesh-digest) agrees with the cluster, and
    /// the peers its agent finds without a handshake for longer than
    /// REKEY_ATTEMPT_TIME (90 s) or in a handshake storm
    /// (podguard.dev/peer-health). Exit code 1 if a node has not
    /// converged, its agent is down, or it reports a peer problem.
    Status {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Talk to the local lab's API server instead of $KUBECONFIG.
        #[arg(long)]
        lab: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    /// A table for people.
    Table,
    /// JSON for scripts.
    Json,
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u8,
    /// Pods per node.
    #[arg(long, default_value_t = 2)]
    pods_per_node: u8,
    /// IPv4 podCIDRs only.
    #[arg(long, conflicts_with = "dual_stack")]
    ipv4_only: bool,
    /// IPv4 and IPv6 podCIDRs (the default).
    #[arg(long)]
    dual_stack: bool,
    /// The API server: `embedded` (podguard's own subset, fast, no auth)
    /// or `real` (etcd, kube-apiserver and kube-controller-manager of the
    /// pinned release, built by `bash tests/kube/kube.sh setup`; the
    /// shipped manifests applied, podCIDRs from the controller manager,
    /// each agent on its own bound ServiceAccount token).
    #[arg(long, value_enum, default_value_t = KubeArg::Embedded)]
    kube: KubeArg,
    /// The agents' WireGuard backend: `userspace` (podguard's device, works
    /// anywhere) or `kernel` (needs the wireguard module).
    #[arg(long, value_enum, default_value_t = BackendArg::Userspace)]
    backend: BackendArg,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum BackendArg {
    Userspace,
    Kernel,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum KubeArg {
    Embedded,
    Real,
}

impl UpArgs {
    fn spec(&self) -> podguard::lab::plan::LabSpec {
        podguard::lab::plan::LabSpec {
            nodes: self.nodes,
            pods_per_node: self.pods_per_node,
            dual_stack: !self.ipv4_only,
            underlay: podguard::lab::plan::DEFAULT_UNDERLAY.into(),
            kube: match self.kube {
                KubeArg::Embedded => podguard::lab::plan::KubeMode::Embedded,
                KubeArg::Real => podguard::lab::plan::KubeMode::Real,
            },
            backend: match self.backend {
                BackendArg::Userspace => podguard::lab::plan::LabBackend::Userspace,
                BackendArg::Kernel => podguard::lab::plan::LabBackend::Kernel,
            },
        }
    }
}

#[derive(Debug, Subcommand)]
enum Lab {
    /// Build a lab, check it, print a report, and tear it down.
    /// Exit code 0 only if every check passed.
    Demo {
        #[command(flatten)]
        up: UpArgs,
    },
    /// Build a local cluster in network namespaces: an underlay, N nodes
    /// running podguard-agent against an embedded API server, and pods
    /// attached by podguard-cni.
    Up {
        #[command(flatten)]
        up: UpArgs,
    },
    /// Check the running lab: all-pairs pod reachability (ping and TCP),
    /// no NAT, an underlay capture proving cross-node pod traffic is only
    /// WireGuard, handshake ages. Exit code 1 on any failure.
    Check {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Remove everything a lab created (also after a crash or kill -9).
    Down,
    /// Print the running lab's kubeconfig (the embedded server: no auth;
    /// `--kube real`: the cluster admin's token and the lab CA). The API
    /// server listens inside the lab's underlay namespace, so run kubectl
    /// there: `sudo ip netns exec pglab-ul kubectl --kubeconfig FILE get nodes`.
    Kubeconfig,
    /// Serve the lab's embedded Kubernetes API (Nodes and Events) on ADDR.
    /// The lab runs it inside its underlay namespace; plain HTTP, no auth.
    ApiServer {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// File that keeps the API state across restarts.
        #[arg(long)]
        state: Option<PathBuf>,
    },
}

fn print_report(r: &check::Report, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Table => print!("{}", check::render(r)),
        Output::Json => println!("{}", serde_json::to_string_pretty(r)?),
    }
    Ok(())
}

/// Where the API is, from `--lab`, `--kubeconfig` and `--context`.
struct Api {
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
}

impl Api {
    fn target(&self, lab: bool) -> podguard::k8s::ops::Target {
        use podguard::k8s::ops::Target;
        if lab && (self.kubeconfig.is_some() || self.context.is_some()) {
            Cli::command()
                .error(
                    clap::error::ErrorKind::ArgumentConflict,
                    "--lab uses the lab's own kubeconfig: drop --kubeconfig/--context, or --lab",
                )
                .exit();
        }
        match (lab, &self.kubeconfig, &self.context) {
            (true, _, _) => Target::Lab,
            (false, None, None) => Target::Default,
            (false, path, context) => Target::Kubeconfig {
                path: path.clone(),
                context: context.clone(),
            },
        }
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", podguard::errors::one_line(&e));
            std::process::ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let api = Api {
        kubeconfig: cli.kubeconfig,
        context: cli.context,
    };
    let target = |lab: bool| api.target(lab);
    match cli.command {
        Command::Showconf { node, plan, lab } => view::showconf(target(lab), &node, &plan.config()),
        Command::Graph { format, plan, lab } => {
            view::graph(target(lab), format == GraphFormat::Svg, &plan.config())
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "podguard",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(())
        }
        Command::Rotate {
            node,
            all,
            wait,
            timeout,
            output,
            lab,
        } => {
            use podguard::k8s::ops;
            if timeout.is_some() && !wait && !all {
                Cli::command()
                    .error(
                        clap::error::ErrorKind::ArgumentConflict,
                        "--timeout needs --wait (or --all): without them `rotate` does not wait, so there is nothing to time out",
                    )
                    .exit();
            }
            let timeout = timeout.unwrap_or(std::time::Duration::from_secs(300));
            let results = ops::with_client(target(lab), |client| async move {
                let names = match node {
                    Some(n) => vec![n],
                    None if all => ops::all_nodes(&client).await?,
                    None => anyhow::bail!("give --node NAME or --all"),
                };
                ops::rotate(&client, &names, wait, timeout, &mut |m| eprintln!("{m}")).await
            })?;
            match output {
                Output::Table => print!("{}", ops::render_rotate(&results)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&results)?),
            }
            let (expect, what) = if wait || results.len() > 1 {
                ("done", "finished")
            } else {
                ("requested", "requested")
            };
            if results.iter().any(|r| r.result != expect) {
                eprintln!("not every rotation {what}");
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Audit {
            fail_on,
            pods,
            output,
            lab,
            probe,
        } => {
            use podguard::k8s::ops;
            let (report, warnings) =
                ops::with_client(
                    target(lab),
                    |client| async move { ops::audit(&client).await },
                )?;
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            let probe_result = if probe {
                let r = check::check(false)?;
                Some(r.capture)
            } else {
                None
            };
            let probe_ok = probe_result
                .as_ref()
                .is_none_or(|c| c.plaintext_packets == 0 && c.marker_hits == 0);
            match output {
                Output::Table => {
                    print!("{}", mesh::audit::render(&report, pods));
                    if let Some(c) = &probe_result {
                        println!(
                            "probe: {} encrypted packets, {} plaintext packets, {} plaintext marker hits on the underlay",
                            c.encrypted_packets, c.plaintext_packets, c.marker_hits
                        );
                    }
                }
                Output::Json => {
                    let mut v = serde_json::to_value(&report)?;
                    if let Some(c) = &probe_result {
                        v["probe"] = serde_json::to_value(c)?;
                    }
                    v["warnings"] = serde_json::to_value(&warnings)?;
                    println!("{}", serde_json::to_string_pretty(&v)?);
                }
            }
            if report.fails(fail_on.threshold()) || !probe_ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Status { output, lab } => {
            use podguard::k8s::ops;
            let views = ops::with_client(target(lab), |client| async move {
                ops::node_views(&client).await
            })?;
            let rows = mesh::status::rows(&views, podguard::agent::rotation::unix_now());
            match output {
                Output::Table => print!("{}", ops::render_status(&rows)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
            }
            if rows.iter().any(mesh::status::Row::finding) {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Lab(Lab::Up { up }) => {
            let bins = cluster::Binaries::find()?;
            eprintln!("podguard lab up: building the lab");
            let state = cluster::up(&up.spec(), &bins)?;
            eprintln!(
                "lab is up: {} pods; next: podguard lab check",
                state.pods.len()
            );
            Ok(())
        }
        Command::Lab(Lab::Check { output }) => {
            let report = check::check(output == Output::Table)?;
            print_report(&report, output)?;
            if !report.ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Lab(Lab::Kubeconfig) => {
            let p = std::path::Path::new(cluster::STATE_DIR).join("kubeconfig");
            let text = std::fs::read_to_string(&p).map_err(|e| {
                anyhow::anyhow!("no lab is up ({}: {e}): run `podguard lab up`", p.display())
            })?;
            print!("{text}");
            eprintln!(
                "(the API server is reachable inside the lab's underlay: sudo ip netns exec {} kubectl --kubeconfig {} get nodes)",
                podguard::lab::plan::underlay_netns(),
                p.display()
            );
            Ok(())
        }
        Command::Lab(Lab::Down) => {
            let n = cluster::down()?;
            eprintln!("lab removed ({n} namespaces)");
            Ok(())
        }
        Command::Lab(Lab::Demo { up }) => {
            let start = std::time::Instant::now();
            let bins = cluster::Binaries::find()?;
            let spec = up.spec();
            // Someone else's lab is left alone: refuse before touching it.
            if cluster::exists() {
                anyhow::bail!(
                    "a lab already exists (namespaces pglab-*, {}): the demo builds and removes its own; run `podguard lab down` first if that lab is yours",
                    cluster::STATE_DIR
                );
            }
            eprintln!(
                "[1/3] building a lab: {} nodes x {} pods, {}",
                spec.nodes,
                spec.pods_per_node,
                if spec.dual_stack {
                    "dual-stack"
                } else {
                    "IPv4 only"
                }
            );
            let result = cluster::up(&spec, &bins).and_then(|_| {
                eprintln!(
                    "[2/3] checking reachability, NAT and encryption ({:.1}s)",
                    start.elapsed().as_secs_f64()
                );
                check::check(true)
            });
            eprintln!("[3/3] tearing down ({:.1}s)", start.elapsed().as_secs_f64());
            let _ = cluster::down();
            let report = result?;
            println!();
            print_report(&report, Output::Table)?;
            println!("(lab demo took {:.1}s)", start.elapsed().as_secs_f64());
            if !report.ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Lab(Lab::ApiServer { listen, state }) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(podguard::lab::apiserver::ApiServer::new(state).serve(listen))?;
            Ok(())
        }
    }
}
