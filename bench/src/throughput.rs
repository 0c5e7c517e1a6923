//! `podguard-bench throughput`: one stream both ways, 4 and 16 streams,
//! ping idle and under load, and the tunnel processes' CPU per Gbit, for
//! each contender. The repetitions are interleaved: round `r` measures
//! every contender once (each on a fresh topology) before round `r + 1`
//! starts, so a machine whose speed drifts over minutes (these shared
//! machines do, by tens of percent) slows every contender alike and the
//! ratios between them hold; run one contender after another instead and
//! a drift between their turns shows up as a difference between them.

use std::path::Path;
use std::time::Duration;

use podguard::sys;

use crate::parse;
use crate::report;
use crate::topo::{self, Contender, Topo};

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

/// CPU seconds so far of every process in the namespaces `nodes` (the
/// tunnel processes).
pub fn cpu_of(nodes: &[String]) -> f64 {
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

/// CPU seconds so far of each thread in the namespaces `nodes`, summed by
/// namespace and thread name ("pgbench-a pg-tun-rx"). Names are the
/// kernel's, cut to 15 characters, and threads sharing a name are summed:
/// every thread of a Go program (wireguard-go) has the program's name, so
/// its row is the whole process; podguard's crypto helpers
/// (`pg-crypto-N`, more than one worker per direction) of both directions
/// merge by index.
pub fn cpu_by_thread(nodes: &[String]) -> std::collections::BTreeMap<String, f64> {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let mut out = std::collections::BTreeMap::new();
    for n in nodes {
        let pids = sys::output(&["ip", "netns", "pids", n])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for pid in pids.split_whitespace() {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for t in tasks.flatten() {
                let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
                    continue;
                };
                if let (Some(comm), Some(cpu)) = (
                    parse::proc_comm(&stat),
                    parse::proc_cpu_seconds(&stat, ticks),
                ) {
                    *out.entry(format!("{n} {comm}")).or_insert(0.0) += cpu;
                }
            }
        }
    }
    out
}

/// One iperf3 run: (Gbit/s, CPU seconds of the tunnel processes).
pub fn iperf(t: &Topo, secs: u32, reverse: bool, streams: u32) -> anyhow::Result<(f64, f64)> {
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
pub fn iperf_server(t: &Topo) -> anyhow::Result<()> {
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

/// What one contender's repetitions gathered.
#[derive(Default)]
struct Samples {
    ab: Vec<f64>,
    ba: Vec<f64>,
    fab: Vec<f64>,
    fba: Vec<f64>,
    sab: Vec<f64>,
    cpu: Vec<f64>,
    rtts: Vec<f64>,
    loaded: Vec<f64>,
}

/// One repetition of every measurement on a fresh topology; the pings
/// (idle and under one stream) only when `pings`.
fn rep(c: Contender, bins: &Path, secs: u32, s: &mut Samples, pings: bool) -> anyhow::Result<()> {
    let t = topo::build(c, bins)?;
    iperf_server(&t)?;
    let (g, cpu) = iperf(&t, secs, false, 1)?;
    s.ab.push(g);
    if g > 0.0 {
        s.cpu.push(cpu / (g * secs as f64));
    }
    s.ba.push(iperf(&t, secs, true, 1)?.0);
    s.fab.push(iperf(&t, secs, false, 4)?.0);
    s.fba.push(iperf(&t, secs, true, 4)?.0);
    s.sab.push(iperf(&t, secs, false, 16)?.0);
    if pings {
        s.rtts = ping_rtts(&t)?;
        // The same while a stream fills the tunnel (queueing in the datapath).
        let (loaded, stream) = std::thread::scope(|sc| {
            let h = sc.spawn(|| iperf(&t, secs.max(3), false, 1));
            std::thread::sleep(Duration::from_millis(500));
            let r = ping_rtts(&t);
            (r, h.join())
        });
        s.loaded = loaded?;
        stream
            .map_err(|_| anyhow::anyhow!("the loading stream panicked"))?
            .map_err(|e| e.context("the stream under the loaded ping"))?;
    }
    Ok(())
}

/// Measure `chosen` in `reps` interleaved rounds; a row per contender, in
/// order (skipped with the reason when its tools are missing or a
/// measurement failed).
pub fn run(chosen: &[Contender], bins: &Path, secs: u32, reps: u32) -> Vec<Row> {
    let mut state: Vec<Result<Samples, String>> = chosen
        .iter()
        .map(|c| c.missing(bins).map_or_else(|| Ok(Samples::default()), Err))
        .collect();
    for (c, st) in chosen.iter().zip(&state) {
        if let Err(why) = st {
            eprintln!("  · {}: skipped: {why}", c.name());
        }
    }
    for r in 0..reps {
        for (c, st) in chosen.iter().zip(state.iter_mut()) {
            let Ok(samples) = st else { continue };
            eprintln!("  · {} rep {}/{reps}", c.name(), r + 1);
            let res = rep(*c, bins, secs, samples, r + 1 == reps);
            topo::clean();
            if let Err(e) = res {
                eprintln!("    failed: {e:#}");
                *st = Err(format!("failed: {e:#}"));
            }
        }
    }
    chosen
        .iter()
        .zip(state)
        .map(|(c, st)| match st {
            Err(why) => report::skipped(*c, why),
            Ok(s) => Row {
                id: c.id().into(),
                name: c.name().into(),
                skipped: None,
                mtu: topo::mtu(),
                single_ab: parse::spread(&s.ab),
                single_ba: parse::spread(&s.ba),
                four_ab: parse::spread(&s.fab),
                four_ba: parse::spread(&s.fba),
                sixteen_ab: parse::spread(&s.sab),
                rtt_p50: parse::quantile(&s.rtts, 0.5),
                rtt_p99: parse::quantile(&s.rtts, 0.99),
                loaded_rtt_p50: parse::quantile(&s.loaded, 0.5),
                loaded_rtt_p99: parse::quantile(&s.loaded, 0.99),
                cpu_per_gbit: parse::spread(&s.cpu),
            },
        })
        .collect()
}
