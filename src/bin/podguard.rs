//! `podguard`: the operator CLI.
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use podguard::lab::{check, cluster};

/// podguard: a WireGuard-encrypted pod network for Kubernetes.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A local multi-node cluster in network namespaces.
    #[command(subcommand)]
    Lab(Lab),
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
}

impl UpArgs {
    fn spec(&self) -> podguard::lab::plan::LabSpec {
        podguard::lab::plan::LabSpec {
            nodes: self.nodes,
            pods_per_node: self.pods_per_node,
            dual_stack: !self.ipv4_only,
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
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
        Command::Lab(Lab::Down) => {
            let n = cluster::down()?;
            eprintln!("lab removed ({n} namespaces)");
            Ok(())
        }
        Command::Lab(Lab::Demo { up }) => {
            let start = std::time::Instant::now();
            let bins = cluster::Binaries::find()?;
            let spec = up.spec();
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
