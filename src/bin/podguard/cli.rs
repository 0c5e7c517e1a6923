//! The `podguard` command line as clap reads it: every subcommand, flag
//! and help text, and where the API is (`--lab`, `--kubeconfig`,
//! `--context`). No command runs here.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

/// podguard: a WireGuard-encrypted pod network for Kubernetes.
///
/// Exit codes: 0 fine; 1 the command ran and found a problem (a node not
/// converged, unencrypted flows, a failed check or rotation); 2 it could
/// not run (bad arguments, no API, refused input).
#[derive(Debug, Parser)]
#[command(version, about)]
pub(crate) struct Cli {
    /// The kubeconfig for commands that talk to the API (else $KUBECONFIG
    /// when set, the in-cluster config inside a Pod, or ~/.kube/config:
    /// the agent's order).
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (else its current context).
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) context: Option<String>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// What the planner needs beyond the API's Nodes.
#[derive(Debug, clap::Args)]
pub(crate) struct PlanArgs {
    /// The cluster CIDR(s), as the agents have them (PODGUARD_CLUSTER_CIDRS).
    #[arg(
        long = "cluster-cidr",
        env = "PODGUARD_CLUSTER_CIDRS",
        value_delimiter = ',',
        value_parser = podguard::agent::cli::parse_cidr,
        default_value = "10.244.0.0/16,fd00:10:244::/56"
    )]
    pub(crate) cluster_cidrs: Vec<ipnet::IpNet>,
    /// The WireGuard port of the agents (PODGUARD_LISTEN_PORT).
    #[arg(long, env = "PODGUARD_LISTEN_PORT", default_value_t = mesh::DEFAULT_LISTEN_PORT)]
    pub(crate) listen_port: u16,
}

impl PlanArgs {
    pub(crate) fn config(&self) -> mesh::plan::MeshConfig {
        mesh::plan::MeshConfig {
            cluster_cidrs: self.cluster_cidrs.clone(),
            listen_port: self.listen_port,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum FailOn {
    High,
    Medium,
    Low,
    Never,
}

impl FailOn {
    pub(crate) fn threshold(self) -> Option<mesh::audit::Severity> {
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
pub(crate) enum GraphFormat {
    /// Graphviz DOT text.
    Dot,
    /// SVG, drawn by Graphviz `dot` (must be installed).
    Svg,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// A local multi-node cluster in network namespaces.
    #[command(subcommand)]
    Lab(Lab),
    /// Rotate nodes' WireGuard keys without a traffic gap.
    ///
    /// Sets `podguard.dev/rotate-requested` on each node; the node's agent
    /// creates a next key, publishes it (`podguard.dev/next-public-key`),
    /// waits until every peer has a session on it, switches, and retires
    /// the old key once every peer uses the new one. No packet is lost: the
    /// userspace device holds both keys; kernel WireGuard (one key per
    /// interface) carries the traffic through companion interfaces on
    /// listenPort + 1 and + 2, which the underlay must let through (see
    /// README, "Key rotation"). Refused, before any node is touched, for
    /// an unknown node, a node that publishes no key, a node whose agent is
    /// not alive (its heartbeat Lease ran out), or one already rotating.
    /// Exit 1 when a rotation did not finish (timed out, or skipped).
    #[command(group(clap::ArgGroup::new("which").required(true).args(["node", "all"])))]
    Rotate {
        /// The node to rotate.
        #[arg(long)]
        node: Option<String>,
        /// Rotate every node, one at a time (waits for each). A node whose
        /// agent is not alive is skipped (named in the result, exit 1)
        /// and the others rotate.
        #[arg(long)]
        all: bool,
        /// Wait until the new key is in place everywhere (every node's
        /// podguard.dev/mesh-digest agrees) and print the result. Nodes
        /// whose agents are not alive are not waited for: the result names
        /// them, and each takes the new key when its agent is back.
        #[arg(long)]
        wait: bool,
        /// Withdraw the pending rotation request on --node instead (one no
        /// agent has taken on: its agent is gone, say; it blocks every later
        /// rotation of that node). A rotation its agent has begun is not cut short.
        #[arg(long, requires = "node", conflicts_with_all = ["all", "wait", "timeout"])]
        cancel: bool,
        /// Give up waiting for one node after this long (e.g. 90s, 5m;
        /// default 5m). Only with --wait or --all: without them nothing
        /// waits, so a timeout is an error rather than silently ignored.
        #[arg(long, value_parser = podguard::agent::cli::parse_duration)]
        timeout: Option<std::time::Duration>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Talk to the local lab's API server (`podguard lab up`) instead
        /// of the cluster in $KUBECONFIG.
        #[arg(long)]
        lab: bool,
        #[command(flatten)]
        agents: Agents,
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
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Talk to the local lab's API server instead of $KUBECONFIG.
        #[arg(long)]
        lab: bool,
        /// Also generate traffic between every pair of pods and capture the
        /// underlay for a bounded time, counting encrypted and plaintext
        /// packets (lab only: needs root and the lab's namespaces).
        #[arg(long, requires = "lab")]
        probe: bool,
        #[command(flatten)]
        agents: Agents,
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
    /// Print a manual page (roff): `podguard man | man -l -` for the
    /// overview, `podguard man rotate` for one command's flags,
    /// `podguard man podguard-agent` for the daemon; `--dir` writes them
    /// all into a manual tree (man1/podguard.1, man1/podguard-<command>.1,
    /// man8/podguard-agent.8).
    Man {
        /// The page: a command's name, or podguard-agent (default: the
        /// overview).
        #[arg(value_name = "PAGE", conflicts_with = "dir")]
        page: Option<String>,
        /// Write every page under this manual tree (its man1/ and man8/,
        /// made if missing), e.g. /usr/local/share/man, and print the files
        /// written.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Per node: key fingerprint, key age, rotation state, whether its
    /// applied mesh (podguard.dev/mesh-digest) agrees with the cluster, and
    /// the peers its agent finds without a handshake for longer than its
    /// --peer-stale-after (90 s by default) or in a handshake storm
    /// (podguard.dev/peer-health). Exit code 1 if a node has not
    /// converged, its agent is down, or it reports a peer problem.
    Status {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Talk to the local lab's API server instead of $KUBECONFIG.
        #[arg(long)]
        lab: bool,
        #[command(flatten)]
        agents: Agents,
    },
}

/// Where the agents are, for the commands that judge them by their
/// heartbeat Leases.
#[derive(Debug, clap::Args)]
pub(crate) struct Agents {
    /// The namespace the agents run in, where their heartbeat Leases are
    /// (the DaemonSet's; a Helm release's namespace). Not a filter: every
    /// node and pod is reported whatever it says.
    #[arg(
        long = "agent-namespace",
        env = "PODGUARD_NAMESPACE",
        value_name = "NS",
        default_value = podguard::k8s::lease::DEFAULT_NAMESPACE,
        value_parser = clap::builder::NonEmptyStringValueParser::new()
    )]
    pub(crate) namespace: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    /// A table for people.
    Table,
    /// JSON for scripts.
    Json,
}

#[derive(Debug, clap::Args)]
pub(crate) struct UpArgs {
    /// Number of nodes (1 to 200).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=200))]
    pub(crate) nodes: u8,
    /// Pods per node (1 to 50).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=50))]
    pub(crate) pods_per_node: u8,
    /// IPv4 podCIDRs only.
    #[arg(long, conflicts_with = "dual_stack")]
    ipv4_only: bool,
    /// IPv4 and IPv6 podCIDRs (the default).
    #[arg(long)]
    pub(crate) dual_stack: bool,
    /// The API server: `embedded` (podguard's own subset, fast, no auth)
    /// or `real` (etcd, kube-apiserver and kube-controller-manager of the
    /// pinned release, built by `bash tests/kube/kube.sh setup`; the
    /// shipped manifests applied, podCIDRs from the controller manager,
    /// each agent on its own bound ServiceAccount token).
    #[arg(long, value_enum, default_value_t = KubeArg::Embedded)]
    pub(crate) kube: KubeArg,
    /// The agents' WireGuard backend: `userspace` (podguard's device, works
    /// anywhere) or `kernel` (needs the wireguard module).
    #[arg(long, value_enum, default_value_t = BackendArg::Userspace)]
    pub(crate) backend: BackendArg,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum BackendArg {
    Userspace,
    Kernel,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum KubeArg {
    Embedded,
    Real,
}

impl UpArgs {
    pub(crate) fn spec(&self) -> podguard::lab::plan::LabSpec {
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
pub(crate) enum Lab {
    /// Build a lab, check it, print a report, and tear it down.
    /// Exit code 0 only if every check passed.
    Demo {
        #[command(flatten)]
        up: UpArgs,
        /// Output format of the report (progress goes to stderr).
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
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
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Remove everything a lab created (also after a crash or kill -9).
    Down,
    /// Print the running lab's kubeconfig (the embedded server: no auth;
    /// `--kube real`: the cluster admin's token and the lab CA). The API
    /// server listens inside the lab's underlay namespace, so run kubectl
    /// there: `sudo ip netns exec pglab-ul kubectl --kubeconfig FILE get nodes`.
    Kubeconfig,
    /// Serve the lab's embedded Kubernetes API (Nodes, Events, Pods,
    /// Namespaces, NetworkPolicies and Leases) on ADDR.
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

/// Where the API is, from `--lab`, `--kubeconfig` and `--context`.
pub(crate) struct Api {
    pub(crate) kubeconfig: Option<PathBuf>,
    pub(crate) context: Option<String>,
}

impl Api {
    pub(crate) fn target(&self, lab: bool) -> podguard::k8s::ops::Target {
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
            (true, _, _) => Target::InNetns {
                kubeconfig: std::path::Path::new(podguard::lab::cluster::STATE_DIR)
                    .join("kubeconfig"),
                netns: podguard::lab::plan::underlay_netns(),
                missing: "is a lab up? `podguard lab up` builds one".into(),
            },
            (false, None, None) => Target::Default,
            (false, path, context) => Target::Kubeconfig {
                path: path.clone(),
                context: context.clone(),
            },
        }
    }
}
