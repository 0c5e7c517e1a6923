//! `podguard-bench flood`: single-stream throughput A→B for each contender,
//! clean and while the attacker ([`crate::flood`]) floods node B (the
//! receiver, whose datapath must decrypt the stream while the datagrams
//! arrive on the same port), in one run on the same topology. Reported as
//! Gbit/s and as the share of the contender's clean throughput kept.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::flood::{Flood, Kind};
use crate::parse::{Spread, spread};
use crate::topo::{self, Contender};

/// Throughput while one kind of flood runs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UnderFlood {
    /// What the attacker sent.
    pub kind: String,
    /// Single stream A→B, Gbit/s.
    pub gbps: Option<Spread>,
    /// Datagrams per second the attacker achieved (median over the reps).
    pub sent_per_second: Option<f64>,
    /// CPU the attacker's sending thread took, in cores (median).
    pub attacker_cores: Option<f64>,
    /// CPU seconds of the tunnel processes per Gbit.
    pub cpu_per_gbit: Option<Spread>,
}

/// One contender's row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FloodRow {
    /// Contender id.
    pub id: String,
    /// Contender name.
    pub name: String,
    /// Why it did not run.
    pub skipped: Option<String>,
    /// Without attack.
    pub clean: Option<Spread>,
    /// CPU seconds per Gbit without attack.
    pub clean_cpu_per_gbit: Option<Spread>,
    /// Under each flood.
    pub floods: Vec<UnderFlood>,
}

impl FloodRow {
    /// A contender that did not run.
    pub fn skipped(c: Contender, why: String) -> FloodRow {
        FloodRow {
            id: c.id().into(),
            name: c.name().into(),
            skipped: Some(why),
            clean: None,
            clean_cpu_per_gbit: None,
            floods: vec![],
        }
    }
}

/// The runs under one kind of flood.
#[derive(Debug, Clone, Default)]
struct Runs {
    gbps: Vec<f64>,
    rate: Vec<f64>,
    attacker: Vec<f64>,
    cpu: Vec<f64>,
}

/// Measure `c`: clean, then under each flood, `reps` times interleaved.
pub fn measure(
    c: Contender,
    bins: &Path,
    secs: u32,
    reps: u32,
    rate: u64,
) -> anyhow::Result<FloodRow> {
    let t = topo::build(c, bins)?;
    let attacker = t.attacker()?;
    crate::iperf_server(&t)?;
    let target: SocketAddr = "192.0.2.2:51820".parse()?;
    let key = keys::PublicKey::from_base64(&t.public_keys[1])?;
    let kinds = [Kind::Random, Kind::Mac1(*key.as_bytes())];
    let (mut clean, mut clean_cpu) = (vec![], vec![]);
    let mut under: Vec<Runs> = vec![Runs::default(); kinds.len()];
    for r in 0..reps {
        eprintln!("    {} rep {}/{reps}", c.id(), r + 1);
        let (g, s) = crate::iperf(&t, secs, false, 1)?;
        clean.push(g);
        if g > 0.0 {
            clean_cpu.push(s / (g * secs as f64));
        }
        for (k, kind) in kinds.iter().enumerate() {
            let flood = Flood::start(&attacker, target, *kind, rate);
            // Let the flood reach its pace (and any "under load" state set in).
            std::thread::sleep(std::time::Duration::from_millis(500));
            let res = crate::iperf(&t, secs, false, 1);
            let sent = flood.stop()?;
            let (g, s) = res?;
            let u = &mut under[k];
            u.gbps.push(g);
            u.rate.push(sent.rate);
            u.attacker.push(sent.attacker_cores);
            if g > 0.0 {
                u.cpu.push(s / (g * secs as f64));
            }
        }
    }
    Ok(FloodRow {
        id: c.id().into(),
        name: c.name().into(),
        skipped: None,
        clean: spread(&clean),
        clean_cpu_per_gbit: spread(&clean_cpu),
        floods: kinds
            .iter()
            .zip(under)
            .map(|(k, u)| UnderFlood {
                kind: k.label().into(),
                gbps: spread(&u.gbps),
                sent_per_second: crate::parse::quantile(&u.rate, 0.5),
                attacker_cores: crate::parse::quantile(&u.attacker, 0.5),
                cpu_per_gbit: spread(&u.cpu),
            })
            .collect(),
    })
}

fn cell(s: &Option<Spread>) -> String {
    s.map(|s| format!("{:.2} ({:.2}–{:.2})", s.median, s.min, s.max))
        .unwrap_or_else(|| "–".into())
}

/// The Markdown table: per contender, clean and flooded throughput, the
/// share kept, and the ratio to podguard under the same flood.
pub fn markdown(rows: &[FloodRow], secs: u32, reps: u32, rate: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "iperf3 {secs} s per run, {reps} repetitions, 1 stream A→B: median (min–max) Gbit/s; \
         flood aimed at {rate} datagrams/s to node B's port (achieved rate in the column).\n"
    );
    let pg = rows.iter().find(|r| r.id == "podguard");
    let _ = writeln!(
        out,
        "| contender | flood | datagrams/s sent | attacker CPU (cores) | Gbit/s | kept of clean | CPU s per Gbit | vs podguard |"
    );
    let _ = writeln!(
        out,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for r in rows {
        if let Some(why) = &r.skipped {
            let _ = writeln!(out, "| {} | skipped: {why} | | | | | | |", r.name);
            continue;
        }
        let ratio = |mine: Option<f64>, theirs: Option<f64>| match (mine, theirs) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "–".into(),
        };
        let clean = r.clean.map(|s| s.median);
        let _ = writeln!(
            out,
            "| {} | none | 0 | 0 | {} | 100% | {} | {} |",
            r.name,
            cell(&r.clean),
            cell(&r.clean_cpu_per_gbit),
            ratio(clean, pg.and_then(|p| p.clean.map(|s| s.median)))
        );
        for f in &r.floods {
            let got = f.gbps.map(|s| s.median);
            let kept = match (got, clean) {
                (Some(g), Some(c)) if c > 0.0 => format!("{:.0}%", 100.0 * g / c),
                _ => "–".into(),
            };
            let theirs = pg
                .and_then(|p| p.floods.iter().find(|x| x.kind == f.kind))
                .and_then(|x| x.gbps.map(|s| s.median));
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.2} | {} | {kept} | {} | {} |",
                r.name,
                f.kind,
                f.sent_per_second.unwrap_or(0.0),
                f.attacker_cores.unwrap_or(0.0),
                cell(&f.gbps),
                cell(&f.cpu_per_gbit),
                ratio(got, theirs)
            );
        }
    }
    out
}

/// Write `flood.json` and `flood.md` into `dir`.
pub fn write(
    dir: &Path,
    rows: &[FloodRow],
    secs: u32,
    reps: u32,
    rate: u64,
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let json = dir.join("flood.json");
    std::fs::write(
        &json,
        serde_json::to_vec_pretty(&serde_json::json!({
            "secondsPerRun": secs, "reps": reps, "rate": rate, "rows": rows,
        }))?,
    )?;
    let md = dir.join("flood.md");
    std::fs::write(&md, markdown(rows, secs, reps, rate))?;
    Ok(vec![json, md])
}
