//! `podguard`: the operator CLI.
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

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

#[derive(Debug, Subcommand)]
enum Lab {
    /// Build a lab, check it, print a report, tear it down (not built yet).
    Demo,
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Lab(Lab::Demo) => anyhow::bail!(
            "`podguard lab demo` is not built yet (issue 7). What exists: podguard-agent (nodes file or Kubernetes API), \
             podguard-cni, and `podguard lab api-server`; see README.md"
        ),
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
