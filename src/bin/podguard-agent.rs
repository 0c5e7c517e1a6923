//! `podguard-agent`: the per-node DaemonSet entry point.
use clap::Parser;

/// Keeps this node's WireGuard mesh in line with the cluster's Nodes.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// This node's name (downward API).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    anyhow::bail!("podguard-agent is not built yet (issue 4)")
}
