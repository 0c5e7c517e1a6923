//! `podguard-bench processes`: one iperf3 client process against N at
//! once (one stream each, to N servers), over the bench's one pod pair and
//! one peer, for each contender, plain veth included. `bench/mesh-load.sh`
//! finds 8 pod pairs across a podguard lab carrying 5–17% less in all
//! than one pair; this asks how much of that comes with N flows alone,
//! with the pods and the peer unchanged, where the tunnels' CPU goes
//! (per thread), and, in the plain veth row, what N processes cost with
//! no tunnel at all. The "one" and "N" runs
//! alternate on one topology, and each alternation's ratio is kept, since
//! this machine's speed drifts by more than the effect.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use podguard::sys;

use crate::parse::{self, Spread, cell, spread};
use crate::throughput::{cpu_by_thread, cpu_of};
use crate::topo::{self, Contender, Topo};

/// Threads using less CPU per Gbit than this are left out of the table.
const MIN_THREAD: f64 = 0.005;

/// First server port; the servers use `BASE_PORT..BASE_PORT + n`.
const BASE_PORT: u16 = 5301;

/// One contender's row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProcRow {
    /// Contender id.
    pub id: String,
    /// Contender name.
    pub name: String,
    /// Why it did not run.
    pub skipped: Option<String>,
    /// One process, Gbit/s.
    pub one: Option<Spread>,
    /// N processes at once, their sum, Gbit/s.
    pub many: Option<Spread>,
    /// Each alternation's N-vs-one ratio.
    pub ratios: Vec<f64>,
    /// CPU seconds of the tunnel processes per Gbit, one process.
    pub one_cpu_per_gbit: Option<Spread>,
    /// The same with N processes.
    pub many_cpu_per_gbit: Option<Spread>,
    /// Per tunnel thread (namespace and name): median CPU seconds per
    /// Gbit with one process and with N.
    pub threads: BTreeMap<String, (Option<f64>, Option<f64>)>,
}

impl ProcRow {
    /// A contender that did not run.
    pub fn skipped(c: Contender, why: String) -> ProcRow {
        ProcRow {
            id: c.id().into(),
            name: c.name().into(),
            skipped: Some(why),
            one: None,
            many: None,
            ratios: vec![],
            one_cpu_per_gbit: None,
            many_cpu_per_gbit: None,
            threads: BTreeMap::new(),
        }
    }
}

/// One run of `n` clients.
struct Run {
    gbps: f64,
    /// The tunnel processes' CPU seconds per Gbit.
    cpu_per_gbit: Option<f64>,
    /// The same per thread.
    threads: BTreeMap<String, f64>,
}

/// `n` iperf3 clients in pod A at once, one to each server: their sum in
/// Gbit/s, and the tunnel processes' CPU meanwhile.
fn clients(t: &Topo, secs: u32, n: u16) -> anyhow::Result<Run> {
    let (cpu0, threads0) = (cpu_of(&t.nodes), cpu_by_thread(&t.nodes));
    let gbps = sum_of_clients(t, secs, n)?;
    let cpu = cpu_of(&t.nodes) - cpu0;
    let gbit = gbps * secs as f64;
    let mut threads = BTreeMap::new();
    if gbit > 0.0 {
        for (k, v) in cpu_by_thread(&t.nodes) {
            let before = threads0.get(&k).copied().unwrap_or(0.0);
            threads.insert(k, (v - before) / gbit);
        }
    }
    Ok(Run {
        gbps,
        cpu_per_gbit: (gbit > 0.0 && cpu > 0.0).then(|| cpu / gbit),
        threads,
    })
}

/// Per thread, the median of the runs' figures.
fn medians(runs: &[Run], key: &str) -> Option<f64> {
    let xs: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.threads.get(key).copied())
        .collect();
    parse::quantile(&xs, 0.5)
}

fn sum_of_clients(t: &Topo, secs: u32, n: u16) -> anyhow::Result<f64> {
    let secs = secs.to_string();
    let runs: Vec<anyhow::Result<f64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let port = (BASE_PORT + i).to_string();
                let secs = &secs;
                s.spawn(move || {
                    let o = sys::output(&[
                        "ip",
                        "netns",
                        "exec",
                        &t.pods[0],
                        "iperf3",
                        "-J",
                        "-c",
                        &t.pod_ips[1],
                        "-p",
                        &port,
                        "-t",
                        secs,
                    ])?;
                    Ok(parse::iperf3_bps(&String::from_utf8_lossy(&o.stdout))? / 1e9)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a client thread panicked")))
            })
            .collect()
    });
    runs.into_iter().sum()
}

/// Measure `c`: one process, then `n`, `reps` times alternating.
pub fn measure(c: Contender, bins: &Path, secs: u32, reps: u32, n: u16) -> anyhow::Result<ProcRow> {
    let t = topo::build(c, bins)?;
    let log = std::env::temp_dir().join("pgbench-iperf3-servers.log");
    for i in 0..n {
        let port = (BASE_PORT + i).to_string();
        sys::spawn_in(&t.pods[1], &["iperf3", "-s", "-p", &port], &log, None, &[])?;
    }
    std::thread::sleep(Duration::from_millis(500));
    let (mut ones, mut manys, mut ratios) = (vec![], vec![], vec![]);
    for r in 0..reps {
        eprintln!("    {} rep {}/{reps}", c.id(), r + 1);
        let a = clients(&t, secs, 1)?;
        let b = clients(&t, secs, n)?;
        if a.gbps > 0.0 {
            ratios.push(b.gbps / a.gbps);
        }
        ones.push(a);
        manys.push(b);
    }
    let gbps = |runs: &[Run]| spread(&runs.iter().map(|r| r.gbps).collect::<Vec<_>>());
    let cpu = |runs: &[Run]| {
        spread(
            &runs
                .iter()
                .filter_map(|r| r.cpu_per_gbit)
                .collect::<Vec<_>>(),
        )
    };
    let names: BTreeSet<&String> = ones
        .iter()
        .chain(&manys)
        .flat_map(|r| r.threads.keys())
        .collect();
    Ok(ProcRow {
        id: c.id().into(),
        name: c.name().into(),
        skipped: None,
        one: gbps(&ones),
        many: gbps(&manys),
        ratios,
        one_cpu_per_gbit: cpu(&ones),
        many_cpu_per_gbit: cpu(&manys),
        threads: names
            .into_iter()
            .map(|k| (k.clone(), (medians(&ones, k), medians(&manys, k))))
            .collect(),
    })
}

/// The Markdown table.
pub fn markdown(rows: &[ProcRow], secs: u32, reps: u32, n: u16) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "iperf3 {secs} s per run, {reps} alternations of 1 client process and {n} at once \
         (one stream each, one pod pair, one peer): median (min–max) Gbit/s; the ratio is \
         the median of each alternation's {n}-vs-1; CPU: seconds of the tunnel processes \
         per Gbit (none for plain veth).\n"
    );
    let _ = writeln!(
        out,
        "| contender | 1 process | {n} processes | {n} vs 1 | each alternation | CPU per Gbit, 1 | CPU per Gbit, {n} |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | --- | ---: | ---: |");
    for r in rows {
        if let Some(why) = &r.skipped {
            let _ = writeln!(out, "| {} | skipped: {why} | | | | | |", r.name);
            continue;
        }
        let each: Vec<String> = r.ratios.iter().map(|x| format!("{x:.2}x")).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            cell(&r.one),
            cell(&r.many),
            parse::quantile(&r.ratios, 0.5).map_or("–".into(), |m| format!("**{m:.2}x**")),
            each.join(", "),
            cell(&r.one_cpu_per_gbit),
            cell(&r.many_cpu_per_gbit),
        );
    }
    let busy = |(one, many): &(Option<f64>, Option<f64>)| {
        one.unwrap_or(0.0).max(many.unwrap_or(0.0)) >= MIN_THREAD
    };
    let _ = writeln!(
        out,
        "\nPer tunnel thread (namespace and thread name; those with at least {MIN_THREAD} \
         CPU s per Gbit): median CPU seconds per Gbit.\n\n\
         | contender | thread | 1 process | {n} processes |\n| --- | --- | ---: | ---: |"
    );
    for r in rows {
        for (k, v) in r.threads.iter().filter(|(_, v)| busy(v)) {
            let f = |x: Option<f64>| x.map_or("–".into(), |x| format!("{x:.3}"));
            let _ = writeln!(out, "| {} | {k} | {} | {} |", r.name, f(v.0), f(v.1));
        }
    }
    out
}

/// Write `processes.json` and `processes.md` into `dir`.
pub fn write(
    dir: &Path,
    rows: &[ProcRow],
    secs: u32,
    reps: u32,
    n: u16,
) -> anyhow::Result<Vec<PathBuf>> {
    let json = serde_json::json!({
        "secondsPerRun": secs, "reps": reps, "processes": n, "rows": rows,
    });
    crate::report::write_json_md(dir, "processes", &json, &markdown(rows, secs, reps, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table gives each contender's medians and the median of the
    /// per-alternation ratios (not the ratio of the medians), and says
    /// why a contender was skipped.
    #[test]
    fn the_table_gives_the_median_of_each_alternations_ratio() {
        let row = ProcRow {
            id: "podguard".into(),
            name: "podguard".into(),
            skipped: None,
            one: spread(&[2.0, 3.0, 4.0]),
            many: spread(&[1.9, 2.4, 4.4]),
            ratios: vec![0.95, 0.8, 1.1],
            one_cpu_per_gbit: spread(&[0.5]),
            many_cpu_per_gbit: None,
            threads: BTreeMap::from([
                ("pgbench-a pg-tun-rx".into(), (Some(0.21), Some(0.2))),
                ("pgbench-a pg-timers".into(), (Some(0.0), Some(0.001))),
                ("pgbench-b pg-tun-rx".into(), (None, Some(0.07))),
            ]),
        };
        let md = markdown(
            &[row, ProcRow::skipped(Contender::Kernel, "no module".into())],
            5,
            3,
            8,
        );
        assert!(
            md.contains(
                "| podguard | 3.00 (2.00–4.00) | 2.40 (1.90–4.40) | **0.95x** | 0.95x, 0.80x, 1.10x \
                 | 0.50 (0.50–0.50) | – |"
            ),
            "{md}"
        );
        assert!(md.contains("| 8 processes | 8 vs 1 |"), "{md}");
        assert!(md.contains("skipped: no module"), "{md}");
        assert!(
            md.contains("| podguard | pgbench-a pg-tun-rx | 0.210 | 0.200 |"),
            "{md}"
        );
        assert!(
            md.contains("| podguard | pgbench-b pg-tun-rx | – | 0.070 |"),
            "{md}"
        );
        assert!(!md.contains("pg-timers"), "idle threads are left out: {md}");
    }
}
