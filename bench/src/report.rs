//! The bench report: JSON, a Markdown table with ratios to podguard, and an
//! SVG bar chart of single-stream throughput. (The chart is a handful of
//! SVG rectangles; a plotting crate without a font backend cannot lay out
//! its labels, and one with fonts pulls in a rasterizer we do not need.)

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::Row;
use crate::topo::Contender;

/// A row for a contender that did not run.
pub fn skipped(c: Contender, why: String) -> Row {
    Row {
        id: c.id().into(),
        name: c.name().into(),
        skipped: Some(why),
        mtu: crate::topo::mtu(),
        single_ab: None,
        single_ba: None,
        four_ab: None,
        four_ba: None,
        sixteen_ab: None,
        rtt_p50: None,
        rtt_p99: None,
        loaded_rtt_p50: None,
        loaded_rtt_p99: None,
        cpu_per_gbit: None,
    }
}

fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, Linux {}", kernel.trim())
}

fn cell(s: &Option<crate::parse::Spread>, unit: f64, prec: usize) -> String {
    match s {
        Some(s) => format!(
            "{:.p$} ({:.p$}–{:.p$})",
            s.median * unit,
            s.min * unit,
            s.max * unit,
            p = prec
        ),
        None => "–".into(),
    }
}

/// The Markdown table.
pub fn markdown(rows: &[Row], duration: u32, reps: u32) -> String {
    let pg = rows
        .iter()
        .find(|r| r.id == "podguard")
        .and_then(|r| r.single_ab)
        .map(|s| s.median);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Machine: {}. iperf3 {duration} s per run, {reps} repetitions: median (min–max). Gbit/s unless noted.\n",
        machine()
    );
    let _ = writeln!(
        out,
        "| contender | MTU | 1 stream A→B | 1 stream B→A | 4 streams A→B | 4 streams B→A | 16 streams A→B | ping p50 / p99 (ms) | ping p50 / p99 under load (ms) | CPU s per Gbit | A→B vs podguard |"
    );
    let _ = writeln!(
        out,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let ms = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or("–".into());
    for r in rows {
        if let Some(why) = &r.skipped {
            let _ = writeln!(out, "| {} | – | skipped: {why} | | | | | | | | |", r.name);
            continue;
        }
        let ratio = match (r.single_ab, pg) {
            (Some(s), Some(p)) if p > 0.0 => format!("{:.2}x", s.median / p),
            _ => "–".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} | {ratio} |",
            r.name,
            r.mtu,
            cell(&r.single_ab, 1.0, 2),
            cell(&r.single_ba, 1.0, 2),
            cell(&r.four_ab, 1.0, 2),
            cell(&r.four_ba, 1.0, 2),
            cell(&r.sixteen_ab, 1.0, 2),
            ms(r.rtt_p50),
            ms(r.rtt_p99),
            ms(r.loaded_rtt_p50),
            ms(r.loaded_rtt_p99),
            cell(&r.cpu_per_gbit, 1.0, 2),
        );
    }
    out
}

/// A horizontal bar chart of single-stream A→B throughput.
pub fn svg(rows: &[Row]) -> String {
    let ran: Vec<(&str, f64)> = rows
        .iter()
        .filter_map(|r| r.single_ab.map(|s| (r.name.as_str(), s.median)))
        .collect();
    let max = ran.iter().map(|x| x.1).fold(0.0, f64::max).max(0.001);
    let (w, bar, gap, left) = (760.0, 26.0, 12.0, 260.0);
    let h = 50.0 + ran.len() as f64 * (bar + gap);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"13\">\n\
         <text x=\"10\" y=\"22\" font-size=\"15\">Pod-to-pod TCP, 1 stream A→B (Gbit/s, median)</text>\n"
    );
    for (i, (name, v)) in ran.iter().enumerate() {
        let y = 40.0 + i as f64 * (bar + gap);
        let len = (w - left - 90.0) * v / max;
        let color = if name.starts_with("podguard") {
            "#2b7a3d"
        } else {
            "#7a8b99"
        };
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{name}</text><rect x=\"{left}\" y=\"{y}\" width=\"{len:.1}\" height=\"{bar}\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{}\">{v:.2}</text>",
            left - 8.0,
            y + bar * 0.7,
            left + len + 6.0,
            y + bar * 0.7
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Write JSON, Markdown and SVG; returns the files.
/// Write `<stem>.json` (pretty) and `<stem>.md` into `dir` (created if
/// missing); returns their paths.
pub fn write_json_md(
    dir: &Path,
    stem: &str,
    json: &serde_json::Value,
    md: &str,
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let files = vec![
        dir.join(format!("{stem}.json")),
        dir.join(format!("{stem}.md")),
    ];
    std::fs::write(&files[0], serde_json::to_vec_pretty(json)?)?;
    std::fs::write(&files[1], md)?;
    Ok(files)
}

pub fn write(dir: &Path, rows: &[Row], duration: u32, reps: u32) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let files = vec![
        dir.join("throughput.json"),
        dir.join("throughput.md"),
        dir.join("throughput.svg"),
    ];
    let json = serde_json::json!({"machine": machine(), "duration_s": duration, "repetitions": reps, "rows": rows});
    std::fs::write(&files[0], serde_json::to_vec_pretty(&json)?)?;
    std::fs::write(&files[1], markdown(rows, duration, reps))?;
    std::fs::write(&files[2], svg(rows))?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::Spread;

    fn row(id: &str, g: f64) -> Row {
        let mut r = skipped(Contender::Plain, String::new());
        r.id = id.into();
        r.name = id.into();
        r.skipped = None;
        r.single_ab = Some(Spread {
            median: g,
            min: g,
            max: g,
        });
        r
    }

    #[test]
    fn ratios_to_podguard_and_chart() {
        let rows = vec![
            row("plain", 40.0),
            row("podguard", 2.0),
            row("wireguard-go", 1.0),
            skipped(Contender::Kernel, "no module".into()),
        ];
        let md = markdown(&rows, 5, 3);
        assert!(md.contains("| 20.00x |"), "{md}");
        assert!(md.contains("| 0.50x |"), "{md}");
        assert!(md.contains("skipped: no module"));
        let svg = svg(&rows);
        assert_eq!(svg.matches("<rect").count(), 3);
        assert!(svg.contains(">podguard</text>"));
    }
}
