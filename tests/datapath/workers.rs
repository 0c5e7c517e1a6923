//! The device with two crypto workers per direction (issue 17: crypto on
//! more than one core, one peer's packets in order): a TCP stream each way
//! between the pods arrives whole, and the receiving pod's TCP never sees a
//! segment out of order while nothing was lost (no retransmission). On a
//! 2-core machine the default is one worker per direction, so no other
//! test runs this pool on the real device.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use super::common::twonode::TwoNode;
use super::common::*;

/// A TCP counter of the network namespace `ns`: `table` is `TcpExt` (from
/// /proc/net/netstat) or `Tcp` (/proc/net/snmp).
fn tcp_counter(ns: &str, file: &str, table: &str, name: &str) -> u64 {
    let text = ok(&["ip", "netns", "exec", ns, "cat", file]);
    let prefix = format!("{table}:");
    let rows: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(|l| l.split_whitespace().skip(1).collect())
        .collect();
    assert_eq!(rows.len(), 2, "{file} in {ns}: no {table} table: {text}");
    let i = rows[0]
        .iter()
        .position(|n| *n == name)
        .unwrap_or_else(|| panic!("{file} in {ns}: no {table} {name}"));
    rows[1][i].parse().unwrap()
}

fn out_of_order(ns: &str) -> u64 {
    tcp_counter(ns, "/proc/net/netstat", "TcpExt", "TCPOFOQueue")
}

/// Segments sent again for a loss: every retransmission but the tail
/// loss probes (which resend the last segment when the ACKs pause, lost or
/// not).
fn retransmitted(ns: &str) -> u64 {
    let all = tcp_counter(ns, "/proc/net/snmp", "Tcp", "RetransSegs");
    all.saturating_sub(tcp_counter(
        ns,
        "/proc/net/netstat",
        "TcpExt",
        "TCPLossProbes",
    ))
}

/// Nanoseconds the crypto helper threads (`pg-crypto-N`) of the processes
/// in network namespace `ns` have run (`/proc/.../schedstat`). A helper
/// sleeps until a batch's jobs are handed to its pool.
fn helper_runtime(ns: &str) -> u64 {
    let want = std::fs::metadata(format!("/run/netns/{ns}")).unwrap().ino();
    let mut ns_run = 0;
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let in_ns = std::fs::metadata(p.path().join("ns/net")).map(|m| m.ino());
        if in_ns.ok() != Some(want) {
            continue;
        }
        let Ok(tasks) = std::fs::read_dir(p.path().join("task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if !comm.starts_with("pg-crypto-") {
                continue;
            }
            let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            ns_run += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    ns_run
}

#[test]
fn two_crypto_workers_keep_each_stream_whole_and_in_order() {
    if !require_root("two_crypto_workers_keep_each_stream_whole_and_in_order") {
        return;
    }
    let two: &[&str] = &["--crypto-workers", "2"];
    let c = TwoNode::up_with("w", [two, two]);
    for i in 0..2 {
        let log = c.log(i);
        assert!(
            log.contains("crypto_workers=2") && !log.contains("crypto workers did not start"),
            "node {i}'s device did not start with 2 workers: {log}"
        );
    }
    let before: Vec<u64> = c.nodes.iter().map(|n| helper_runtime(&n.ns)).collect();
    let data = marker("WORKERS");
    for (from, to) in [(0usize, 1usize), (1, 0)] {
        let (src, dst) = (&c.nodes[from], &c.nodes[to]);
        let dst_ip = dst.pod_ip4();
        // A lost segment also puts later ones out of order: only a run
        // without retransmissions shows the tunnel's order alone. Other
        // tests share the machine: a loss in some runs is no failure.
        let mut clean_runs = 0;
        let mut seen = Vec::new();
        for attempt in 1..=8 {
            let (ofo, retr) = (out_of_order(&dst.pod_ns), retransmitted(&src.pod_ns));
            let t = tcp_transfer(
                &src.pod_ns,
                &dst.pod_ns,
                dst_ip.parse().unwrap(),
                &data,
                super::MB10,
            );
            assert_eq!(t.bytes, super::MB10, "{} -> {dst_ip}", src.name);
            assert_eq!(t.sent_hash, t.received_hash, "{} -> {dst_ip}", src.name);
            let ofo = out_of_order(&dst.pod_ns) - ofo;
            let retr = retransmitted(&src.pod_ns) - retr;
            eprintln!(
                "{} -> {dst_ip}, attempt {attempt}: {ofo} out of order, {retr} retransmitted",
                src.name
            );
            seen.push((ofo, retr));
            if retr == 0 {
                assert_eq!(
                    ofo, 0,
                    "{} -> {dst_ip}: segments out of order with nothing lost",
                    src.name
                );
                clean_runs += 1;
                if clean_runs == 2 {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(
            clean_runs > 0,
            "{} -> {dst_ip}: no transfer without retransmissions (out of order, \
             retransmitted: {seen:?}); a tunnel that reorders causes them too",
            src.name
        );
    }
    // The helpers took part: each node's batches were handed to its pools
    // (pings alone, before, make batches too small to share).
    for (node, before) in c.nodes.iter().zip(before) {
        let ran = helper_runtime(&node.ns) - before;
        eprintln!("{}: crypto helpers ran {} µs", node.name, ran / 1000);
        assert!(ran > 0, "{}: the crypto helpers never ran", node.name);
    }
}
