//! `podguard-bench`: side-by-side throughput, latency and CPU of podguard
//! and other WireGuard implementations on one machine, in one run.
//!
//! `podguard-bench throughput` builds the same two-node namespace topology
//! for every contender and measures pod-to-pod iperf3 (1 stream both ways,
//! 4 streams), ping RTT and the tunnel processes' CPU per Gbit/s. Results go
//! to `bench/results/` as JSON, Markdown and an SVG chart.
//! `podguard-bench flood` measures one stream clean and while an attacker on
//! the underlay floods the receiver with handshake-shaped datagrams.

mod attack;
mod contender;
mod flood;
mod parse;
mod processes;
mod report;
mod sink;
mod throughput;
mod topo;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use podguard::sys;
use std::path::{Path, PathBuf};
pub use throughput::{Row, iperf, iperf_server};
use topo::Contender;

/// Side-by-side WireGuard benchmarks (run as root).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Throughput, latency and CPU per contender.
    Throughput {
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 5)]
        duration: u32,
        /// Repetitions of each measurement (median, min-max reported).
        #[arg(long, default_value_t = 3)]
        reps: u32,
        /// Contenders to run (default: all): plain, podguard, wireguard-go,
        /// wireguard-go-new (trixie), wireguard-go-sid, boringtun,
        /// boringtun-1, kernel.
        #[arg(long, value_delimiter = ',')]
        contenders: Vec<String>,
        /// Output directory.
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        /// MTU of the underlay links (pods and tunnels get 60 less;
        /// podguard finds it by itself).
        #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u32).range(1340..=9216))]
        underlay_mtu: u32,
    },
    /// Throughput under attack: one stream A→B clean, then while an
    /// attacker namespace on the underlay floods node B's WireGuard port
    /// with random type-1 datagrams and with type-1 datagrams carrying a
    /// valid mac1 (each costs a DH unless the target demands a cookie);
    /// as a control, the random flood aimed at a socket on node B that
    /// only reads and discards (what the flood costs this machine whoever
    /// receives it). Writes flood.json and flood.md.
    Flood {
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 5)]
        duration: u32,
        /// Repetitions (clean and flooded runs interleaved).
        #[arg(long, default_value_t = 3)]
        reps: u32,
        /// Datagrams per second the attacker aims for.
        #[arg(long, default_value_t = 100_000)]
        rate: u64,
        /// Contenders (ids as for `throughput`).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "podguard,wireguard-go-sid"
        )]
        contenders: Vec<String>,
        /// Output directory.
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
    },
    /// One iperf3 client process against N at once (one stream each),
    /// over one pod pair and one peer, per contender (plain veth too):
    /// what the processes cost by themselves, next to
    /// `bench/mesh-load.sh`'s 8 pod pairs. Writes processes.json and
    /// processes.md.
    Processes {
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 5)]
        duration: u32,
        /// Alternations of one process and N.
        #[arg(long, default_value_t = 5)]
        reps: u32,
        /// Client processes at once (N).
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(2..=64))]
        n: u16,
        /// Contenders (ids as for `throughput`).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "plain,podguard,wireguard-go-sid"
        )]
        contenders: Vec<String>,
        /// Output directory.
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
    },
    /// Build one contender's topology and keep it until Ctrl-C, for
    /// probing by hand (`ip netns exec pgbench-pa iperf3 -c ...`,
    /// `nstat`, `perf`); prints the namespaces and pod addresses.
    Up {
        /// The contender (an id as for `throughput`).
        #[arg(long, default_value = "podguard")]
        contender: String,
    },
    /// Remove namespaces and processes left by an interrupted run.
    Clean,
}

/// SIGINT/SIGTERM: remove everything, then exit.
fn cleanup_on_signal() -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()?;
    std::thread::spawn(move || {
        if set.wait().is_ok() {
            eprintln!("\ninterrupted: removing the bench namespaces and processes");
            topo::clean();
            std::process::exit(130);
        }
    });
    Ok(())
}

/// Checks shared by every measurement (root, tools, contender ids); returns
/// the directory of the binaries and the chosen contenders.
fn prepare(ids: &[String]) -> anyhow::Result<(PathBuf, Vec<Contender>)> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the bench builds network namespaces: run it as root");
    }
    for tool in [
        ("iperf3", "apt-get install -y iperf3"),
        ("ping", "apt-get install -y iputils-ping"),
        ("ip", "apt-get install -y iproute2"),
    ] {
        if !sys::have(tool.0) {
            bail!("`{}` is missing: {}", tool.0, tool.1);
        }
    }
    if let Some(bad) = ids
        .iter()
        .find(|x| !Contender::ALL.iter().any(|c| c.id() == x.as_str()))
    {
        let known: Vec<&str> = Contender::ALL.iter().map(|c| c.id()).collect();
        bail!(
            "unknown contender `{bad}`: choose from {}",
            known.join(", ")
        );
    }
    cleanup_on_signal()?;
    let bins = std::env::current_exe()?
        .parent()
        .context("bench binary has no directory")?
        .to_path_buf();
    let chosen = Contender::ALL
        .into_iter()
        .filter(|c| ids.is_empty() || ids.iter().any(|x| x == c.id()))
        .collect();
    Ok((bins, chosen))
}

/// Measure each contender in turn on a fresh topology (removed after
/// each): a contender whose binaries are missing, or whose measurement
/// fails, gets a skipped row saying why, and the others still run.
fn each_contender<R>(
    chosen: Vec<Contender>,
    bins: &Path,
    what: &str,
    skipped: fn(Contender, String) -> R,
    measure: impl Fn(Contender) -> anyhow::Result<R>,
) -> Vec<R> {
    let mut rows = Vec::new();
    for c in chosen {
        eprintln!("  · {} ({what})", c.name());
        let row = match c.missing(bins) {
            Some(why) => skipped(c, why),
            None => measure(c).unwrap_or_else(|e| {
                eprintln!("    failed: {e:#}");
                skipped(c, format!("failed: {e:#}"))
            }),
        };
        topo::clean();
        rows.push(row);
    }
    rows
}

/// Print a subcommand's table, and on stderr the files it wrote.
fn show(markdown: &str, files: &[std::path::PathBuf]) {
    println!("{markdown}");
    for f in files {
        eprintln!("wrote {}", f.display());
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Up { contender } => {
            let (bins, chosen) = prepare(std::slice::from_ref(&contender))?;
            let t = topo::build(chosen[0], &bins)?;
            println!(
                "up: nodes {} and {}, pods {} ({}) and {} ({}); Ctrl-C removes it",
                t.nodes[0], t.nodes[1], t.pods[0], t.pod_ips[0], t.pods[1], t.pod_ips[1]
            );
            loop {
                std::thread::park();
            }
        }
        Cmd::Clean => {
            topo::clean();
            Ok(())
        }
        Cmd::Flood {
            duration,
            reps,
            rate,
            contenders,
            out,
        } => {
            let (bins, chosen) = prepare(&contenders)?;
            let rows = each_contender(
                chosen,
                &bins,
                &format!("flood {rate}/s"),
                attack::FloodRow::skipped,
                |c| attack::measure(c, &bins, duration, reps, rate),
            );
            let files = attack::write(&out, &rows, duration, reps, rate)?;
            show(&attack::markdown(&rows, duration, reps, rate), &files);
            Ok(())
        }
        Cmd::Processes {
            duration,
            reps,
            n,
            contenders,
            out,
        } => {
            let (bins, chosen) = prepare(&contenders)?;
            let rows = each_contender(
                chosen,
                &bins,
                &format!("1 vs {n} processes"),
                processes::ProcRow::skipped,
                |c| processes::measure(c, &bins, duration, reps, n),
            );
            let files = processes::write(&out, &rows, duration, reps, n)?;
            show(&processes::markdown(&rows, duration, reps, n), &files);
            Ok(())
        }
        Cmd::Throughput {
            duration,
            reps,
            contenders,
            out,
            underlay_mtu,
        } => {
            topo::set_underlay_mtu(underlay_mtu);
            let (bins, chosen) = prepare(&contenders)?;
            let rows = throughput::run(&chosen, &bins, duration, reps);
            let files = report::write(&out, &rows, duration, reps)?;
            show(&report::markdown(&rows, duration, reps), &files);
            Ok(())
        }
    }
}
