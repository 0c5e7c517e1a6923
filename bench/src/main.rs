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
mod report;
mod topo;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use podguard::lab::sys;
use topo::{Contender, Topo};

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
    /// valid mac1 (each costs a DH unless the target demands a cookie).
    /// Writes flood.json and flood.md.
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
    /// Remove namespaces and processes left by an interrupted run.
    Clean,
}

/// What one contender measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    /// Contender id.
    pub id: String,
    /// Contender name.
    pub name: String,
    /// Why it was skipped.
    pub skipped: Option<String>,
    /// MTU of the tunnel and pods.
    pub mtu: u32,
    /// Single stream A→B, Gbit/s.
    pub single_ab: Option<parse::Spread>,
    /// Single stream B→A, Gbit/s.
    pub single_ba: Option<parse::Spread>,
    /// 4 streams A→B, Gbit/s.
    pub four_ab: Option<parse::Spread>,
    /// 4 streams B→A, Gbit/s.
    pub four_ba: Option<parse::Spread>,
    /// 16 streams A→B, Gbit/s (no collapse with many flows).
    pub sixteen_ab: Option<parse::Spread>,
    /// Ping RTT p50, ms.
    pub rtt_p50: Option<f64>,
    /// Ping RTT p99, ms.
    pub rtt_p99: Option<f64>,
    /// Ping RTT p50 while one stream A→B runs, ms.
    pub loaded_rtt_p50: Option<f64>,
    /// Ping RTT p99 while one stream A→B runs, ms.
    pub loaded_rtt_p99: Option<f64>,
    /// CPU seconds of the tunnel processes per Gbit transferred (single stream A→B).
    pub cpu_per_gbit: Option<parse::Spread>,
}

fn cpu_of(nodes: &[String]) -> f64 {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    nodes
        .iter()
        .flat_map(|n| {
            sys::output(&["ip", "netns", "pids", n])
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .split_whitespace()
                        .map(String::from)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|s| parse::proc_cpu_seconds(&s, ticks))
        .sum()
}

/// One iperf3 run: (Gbit/s, CPU seconds of the tunnel processes).
fn iperf(t: &Topo, secs: u32, reverse: bool, streams: u32) -> anyhow::Result<(f64, f64)> {
    let cpu0 = cpu_of(&t.nodes);
    let mut args = vec![
        "ip".to_string(),
        "netns".into(),
        "exec".into(),
        t.pods[0].clone(),
        "iperf3".into(),
        "-J".into(),
        "-c".into(),
        t.pod_ips[1].clone(),
        "-t".into(),
        secs.to_string(),
        "-P".into(),
        streams.to_string(),
    ];
    if reverse {
        args.push("-R".into());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    // The server takes a moment to finish the previous test: retry "busy".
    for attempt in 0.. {
        let o = sys::output(&refs)?;
        match parse::iperf3_bps(&String::from_utf8_lossy(&o.stdout)) {
            Ok(bps) => return Ok((bps / 1e9, cpu_of(&t.nodes) - cpu0)),
            Err(e) if attempt < 10 && e.to_string().contains("busy") => {
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the retry loop returns")
}

/// Start the iperf3 server in pod B.
fn iperf_server(t: &Topo) -> anyhow::Result<()> {
    sys::spawn_in(
        &t.pods[1],
        &["iperf3", "-s"],
        &std::env::temp_dir().join("pgbench-iperf3.log"),
        None,
        &[],
    )?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

/// 200 pings from pod A to pod B, 5 ms apart: their RTTs in ms.
fn ping_rtts(t: &Topo) -> anyhow::Result<Vec<f64>> {
    let ping = sys::output(&[
        "ip",
        "netns",
        "exec",
        &t.pods[0],
        "ping",
        "-c",
        "200",
        "-i",
        "0.005",
        &t.pod_ips[1],
    ])?;
    Ok(parse::ping_rtts(&String::from_utf8_lossy(&ping.stdout)))
}

fn measure(c: Contender, bins: &std::path::Path, secs: u32, reps: u32) -> anyhow::Result<Row> {
    let t = topo::build(c, bins)?;
    iperf_server(&t)?;
    let (mut ab, mut ba, mut fab, mut fba, mut cpu) = (vec![], vec![], vec![], vec![], vec![]);
    let mut sab = vec![];
    for r in 0..reps {
        eprintln!("    {} rep {}/{reps}", c.id(), r + 1);
        let (g, s) = iperf(&t, secs, false, 1)?;
        ab.push(g);
        if g > 0.0 {
            cpu.push(s / (g * secs as f64));
        }
        ba.push(iperf(&t, secs, true, 1)?.0);
        fab.push(iperf(&t, secs, false, 4)?.0);
        fba.push(iperf(&t, secs, true, 4)?.0);
        sab.push(iperf(&t, secs, false, 16)?.0);
    }
    let rtts = ping_rtts(&t)?;
    // The same while a stream fills the tunnel (queueing in the datapath).
    let (loaded, stream) = std::thread::scope(|sc| {
        let h = sc.spawn(|| iperf(&t, secs.max(3), false, 1));
        std::thread::sleep(Duration::from_millis(500));
        let r = ping_rtts(&t);
        (r, h.join())
    });
    let loaded = loaded?;
    stream
        .map_err(|_| anyhow::anyhow!("the loading stream panicked"))?
        .context("the stream under the loaded ping")?;
    Ok(Row {
        id: c.id().into(),
        name: c.name().into(),
        skipped: None,
        mtu: topo::mtu(),
        single_ab: parse::spread(&ab),
        single_ba: parse::spread(&ba),
        four_ab: parse::spread(&fab),
        four_ba: parse::spread(&fba),
        sixteen_ab: parse::spread(&sab),
        rtt_p50: parse::quantile(&rtts, 0.5),
        rtt_p99: parse::quantile(&rtts, 0.99),
        loaded_rtt_p50: parse::quantile(&loaded, 0.5),
        loaded_rtt_p99: parse::quantile(&loaded, 0.99),
        cpu_per_gbit: parse::spread(&cpu),
    })
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
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
            let mut rows = Vec::new();
            for c in chosen {
                eprintln!("  · {} (flood {rate}/s)", c.name());
                let row = match c.missing(&bins) {
                    Some(why) => attack::FloodRow::skipped(c, why),
                    None => attack::measure(c, &bins, duration, reps, rate).unwrap_or_else(|e| {
                        eprintln!("    failed: {e:#}");
                        attack::FloodRow::skipped(c, format!("failed: {e:#}"))
                    }),
                };
                topo::clean();
                rows.push(row);
            }
            let files = attack::write(&out, &rows, duration, reps, rate)?;
            println!("{}", attack::markdown(&rows, duration, reps, rate));
            for f in files {
                eprintln!("wrote {}", f.display());
            }
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
            let mut rows = Vec::new();
            for c in chosen {
                eprintln!("  · {}", c.name());
                let row = match c.missing(&bins) {
                    Some(why) => {
                        eprintln!("    skipped: {why}");
                        report::skipped(c, why)
                    }
                    None => match measure(c, &bins, duration, reps) {
                        Ok(r) => r,
                        Err(e) => {
                            eprintln!("    failed: {e:#}");
                            report::skipped(c, format!("failed: {e:#}"))
                        }
                    },
                };
                topo::clean();
                rows.push(row);
            }
            let files = report::write(&out, &rows, duration, reps)?;
            println!("{}", report::markdown(&rows, duration, reps));
            for f in files {
                eprintln!("wrote {}", f.display());
            }
            Ok(())
        }
    }
}
