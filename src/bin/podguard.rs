//! `podguard`: the operator CLI.
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
    /// A local multi-node cluster in network namespaces (not built yet).
    Lab,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Lab => anyhow::bail!(
            "`podguard lab` is not built yet: the lab needs the datapath, agent and CNI plugin (issues 4-7)"
        ),
    }
}
