//! `podguard-bench flood`: single-stream throughput A→B for each contender,
//! clean and while the attacker ([`crate::flood`]) floods node B (the
//! receiver, whose datapath must decrypt the stream while the datagrams
//! arrive on the same port), in one run on the same topology. Reported as
//! Gbit/s and as the share of the contender's clean throughput kept, and
//! next to a control: the same random flood aimed at a discarding socket
//! on node B ([`crate::sink`]), which shows what the flood alone costs this
//! machine, whoever receives it.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::flood::{Flood, Kind};
use crate::parse::{Spread, cell, spread};
use crate::sink::Sink;
use crate::topo::{self, Contender};

/// Label of the control flood (random datagrams to a discarding socket).
pub const CONTROL: &str = "random type-1 to a discarding socket (control)";

/// Where the control's sink listens: node B's underlay address, a port
/// no contender uses.
const SINK_AT: &str = "192.0.2.2:51999";

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
    /// Datagrams per second the control's sink read (median; the control
    /// only).
    pub sink_read_per_second: Option<f64>,
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
    sink: Vec<f64>,
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
    let mac1 = Kind::Mac1(*key.as_bytes());
    // (what is sent, its label, whether it goes to the sink)
    let cases = [
        (Kind::Random, CONTROL, true),
        (Kind::Random, Kind::Random.label(), false),
        (mac1, mac1.label(), false),
    ];
    let sink_at: SocketAddr = SINK_AT.parse()?;
    let (mut clean, mut clean_cpu) = (vec![], vec![]);
    let mut under: Vec<Runs> = vec![Runs::default(); cases.len()];
    for r in 0..reps {
        eprintln!("    {} rep {}/{reps}", c.id(), r + 1);
        let (g, s) = crate::iperf(&t, secs, false, 1)?;
        clean.push(g);
        if g > 0.0 {
            clean_cpu.push(s / (g * secs as f64));
        }
        for (k, &(kind, _, to_sink)) in cases.iter().enumerate() {
            let sink = if to_sink {
                Some(Sink::start(&t.nodes[1], sink_at)?)
            } else {
                None
            };
            let to = if to_sink { sink_at } else { target };
            let flood = Flood::start(&attacker, to, kind, rate);
            // Let the flood reach its pace (and any "under load" state set in).
            std::thread::sleep(std::time::Duration::from_millis(500));
            let res = crate::iperf(&t, secs, false, 1);
            let sent = flood.stop()?;
            if let Some(sink) = sink {
                let (read, took) = sink.stop()?;
                under[k]
                    .sink
                    .push(read as f64 / took.as_secs_f64().max(1e-9));
            }
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
        floods: cases
            .iter()
            .zip(under)
            .map(|((_, label, _), u)| UnderFlood {
                kind: (*label).into(),
                gbps: spread(&u.gbps),
                sent_per_second: crate::parse::quantile(&u.rate, 0.5),
                attacker_cores: crate::parse::quantile(&u.attacker, 0.5),
                sink_read_per_second: crate::parse::quantile(&u.sink, 0.5),
                cpu_per_gbit: spread(&u.cpu),
            })
            .collect(),
    })
}

/// The Markdown table: per contender, clean and flooded throughput, the
/// share kept, and podguard's throughput over each contender's under the
/// same flood.
pub fn markdown(rows: &[FloodRow], secs: u32, reps: u32, rate: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "iperf3 {secs} s per run, {reps} repetitions, 1 stream A→B: median (min–max) Gbit/s; \
         flood aimed at {rate} datagrams/s to node B's port (achieved rate in the column); \
         \"of control\": throughput against the same contender's under the control flood.\n"
    );
    let pg = rows.iter().find(|r| r.id == "podguard");
    let _ = writeln!(
        out,
        "| contender | flood | datagrams/s sent | attacker CPU (cores) | Gbit/s | kept of clean | of control | CPU s per Gbit | podguard vs it |"
    );
    let _ = writeln!(
        out,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for r in rows {
        if let Some(why) = &r.skipped {
            let _ = writeln!(out, "| {} | skipped: {why} | | | | | | | |", r.name);
            continue;
        }
        // podguard's figure over this row's (blank on podguard's own rows).
        let ratio = |mine: Option<f64>, pgs: Option<f64>| match (mine, pgs) {
            _ if r.id == "podguard" => String::new(),
            (Some(a), Some(b)) if a > 0.0 => format!("{:.2}x", b / a),
            _ => "–".into(),
        };
        let clean = r.clean.map(|s| s.median);
        let control = r
            .floods
            .iter()
            .find(|f| f.kind == CONTROL)
            .and_then(|f| f.gbps.map(|s| s.median));
        let share = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.0}%", 100.0 * a / b),
            _ => "–".into(),
        };
        let _ = writeln!(
            out,
            "| {} | none | 0 | 0 | {} | 100% | – | {} | {} |",
            r.name,
            cell(&r.clean),
            cell(&r.clean_cpu_per_gbit),
            ratio(clean, pg.and_then(|p| p.clean.map(|s| s.median)))
        );
        for f in &r.floods {
            let got = f.gbps.map(|s| s.median);
            let theirs = pg
                .and_then(|p| p.floods.iter().find(|x| x.kind == f.kind))
                .and_then(|x| x.gbps.map(|s| s.median));
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.2} | {} | {} | {} | {} | {} |",
                r.name,
                f.kind,
                f.sent_per_second.unwrap_or(0.0),
                f.attacker_cores.unwrap_or(0.0),
                cell(&f.gbps),
                share(got, clean),
                share(got, control),
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
    let json = serde_json::json!({
        "secondsPerRun": secs, "reps": reps, "rate": rate, "rows": rows,
    });
    crate::report::write_json_md(dir, "flood", &json, &markdown(rows, secs, reps, rate))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spread_of(x: f64) -> Option<Spread> {
        Some(Spread {
            median: x,
            min: x,
            max: x,
        })
    }

    fn under(kind: &str, gbps: f64) -> UnderFlood {
        UnderFlood {
            kind: kind.into(),
            gbps: spread_of(gbps),
            sent_per_second: Some(90_000.0),
            attacker_cores: Some(0.7),
            sink_read_per_second: None,
            cpu_per_gbit: spread_of(0.6),
        }
    }

    fn row(id: &str, clean: f64, floods: [f64; 3]) -> FloodRow {
        FloodRow {
            id: id.into(),
            name: id.into(),
            skipped: None,
            clean: spread_of(clean),
            clean_cpu_per_gbit: spread_of(0.5),
            floods: vec![
                under(CONTROL, floods[0]),
                under("random type-1", floods[1]),
                under("valid-mac1 type-1", floods[2]),
            ],
        }
    }

    /// Each flooded row shows its share of the clean figure and of the
    /// same contender's control (the control's own share of clean is what
    /// the flood alone leaves on this machine), and the other contenders'
    /// rows podguard's figure over theirs under the same flood.
    #[test]
    fn the_table_puts_each_flood_against_clean_the_control_and_podguard() {
        let rows = [
            row("podguard", 4.0, [2.6, 2.4, 2.0]),
            row("wireguard-go-sid", 2.0, [1.25, 1.2, 0.5]),
        ];
        let md = markdown(&rows, 5, 3, 100_000);
        let line = |id: &str, kind: &str| {
            md.lines()
                .find(|l| l.starts_with(&format!("| {id} | {kind} |")))
                .unwrap_or_else(|| panic!("no row for {id}, {kind} in\n{md}"))
                .to_string()
        };
        let pg = |kind| line("podguard", kind);
        assert!(
            pg("none").contains("| 4.00 (4.00–4.00) | 100% | – |"),
            "{md}"
        );
        assert!(pg(CONTROL).contains("| 65% | 100% |"), "{md}");
        assert!(pg("random type-1").contains("| 60% | 92% |"), "{md}");
        assert!(pg("valid-mac1 type-1").contains("| 50% | 77% |"), "{md}");
        assert!(pg("valid-mac1 type-1").ends_with("|  |"), "{md}");
        let wg = |kind| line("wireguard-go-sid", kind);
        assert!(wg("none").ends_with("| 2.00x |"), "{md}");
        assert!(wg("valid-mac1 type-1").contains("| 25% | 40% |"), "{md}");
        assert!(wg("valid-mac1 type-1").ends_with("| 4.00x |"), "{md}");
    }
}
