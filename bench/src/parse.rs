//! Parsing of iperf3 and ping output, and the statistics the report uses.
//! Pure: tested without running anything.

use anyhow::{Context, bail};
use serde::Serialize;

/// Receiver-side throughput of an `iperf3 -J` run, in bits per second.
pub fn iperf3_bps(json: &str) -> anyhow::Result<f64> {
    let v: serde_json::Value = serde_json::from_str(json).context("iperf3 output is not JSON")?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3: {e}");
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 JSON has no end.sum_received.bits_per_second")
}

/// Round-trip times (ms) of each reply in `ping` output.
pub fn ping_rtts(out: &str) -> Vec<f64> {
    out.lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next())
        .filter_map(|t| t.parse().ok())
        .collect()
}

/// The `q` quantile (0..=1) by nearest rank.
pub fn quantile(xs: &[f64], q: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// Median with min and max.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// Median.
    pub median: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
}

/// Median, min, max of repetitions.
pub fn spread(xs: &[f64]) -> Option<Spread> {
    Some(Spread {
        median: quantile(xs, 0.5)?,
        min: xs.iter().copied().fold(f64::INFINITY, f64::min),
        max: xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    })
}

/// A spread as a table cell: "median (min–max)", two decimals; "–" for
/// none.
pub fn cell(s: &Option<Spread>) -> String {
    s.map(|s| format!("{:.2} ({:.2}–{:.2})", s.median, s.min, s.max))
        .unwrap_or_else(|| "–".into())
}

/// CPU time (user + system, in seconds) of a process from /proc/PID/stat.
pub fn proc_cpu_seconds(stat: &str, ticks_per_second: f64) -> Option<f64> {
    // Fields after the parenthesised command name; utime and stime are
    // fields 14 and 15 of the whole line.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_second)
}

/// The command name in /proc/PID/stat (a thread's name in
/// /proc/PID/task/TID/stat), which may itself hold spaces and brackets.
pub fn proc_comm(stat: &str) -> Option<&str> {
    stat.get(stat.find('(')? + 1..stat.rfind(')')?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_and_cpu_of_a_thread_named_with_spaces_and_brackets() {
        let stat = "4242 (pg (tun) rx) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0";
        assert_eq!(proc_comm(stat), Some("pg (tun) rx"));
        assert_eq!(proc_cpu_seconds(stat, 100.0), Some(3.0));
        assert_eq!(proc_comm("garbage"), None);
        assert_eq!(proc_comm("1 )x( S"), None);
    }

    #[test]
    fn iperf3_json() {
        let j = r#"{"start":{},"end":{"sum_sent":{"bits_per_second":2.0e9},"sum_received":{"bits_per_second":1.9e9}}}"#;
        assert_eq!(iperf3_bps(j).unwrap(), 1.9e9);
        let e =
            iperf3_bps(r#"{"error":"unable to connect to server: No route to host"}"#).unwrap_err();
        assert!(e.to_string().contains("No route to host"));
        assert!(iperf3_bps("not json").is_err());
        assert!(iperf3_bps("{}").is_err());
    }

    #[test]
    fn ping_lines() {
        let out = "PING 10.244.2.2 (10.244.2.2) 56(84) bytes of data.\n\
            64 bytes from 10.244.2.2: icmp_seq=1 ttl=62 time=1.09 ms\n\
            64 bytes from 10.244.2.2: icmp_seq=2 ttl=62 time=0.313 ms\n\
            From 10.244.1.1 icmp_seq=3 Destination Host Unreachable\n\
            --- 10.244.2.2 ping statistics ---\n\
            rtt min/avg/max/mdev = 0.159/0.520/1.090/0.407 ms\n";
        assert_eq!(ping_rtts(out), vec![1.09, 0.313]);
    }

    #[test]
    fn quantiles_and_spread() {
        let xs = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(quantile(&xs, 0.5), Some(3.0));
        assert_eq!(quantile(&xs, 0.99), Some(5.0));
        assert_eq!(quantile(&[], 0.5), None);
        let s = spread(&xs).unwrap();
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 5.0));
    }

    #[test]
    fn proc_stat() {
        let stat = "1234 (wireguard-go (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 8 0 100 0 0";
        assert_eq!(proc_cpu_seconds(stat, 100.0), Some(4.0));
        assert_eq!(proc_cpu_seconds("garbage", 100.0), None);
    }
}
