//! The device with two crypto workers per direction (issue 17: crypto on
//! more than one core, one peer's packets in order): a TCP stream each way
//! between the pods arrives whole, and the receiving pod's TCP never sees a
//! segment out of order while nothing was lost (no retransmission). On a
//! 2-core machine the default is one worker per direction, so no other
//! test runs this pool on the real device.

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

fn retransmitted(ns: &str) -> u64 {
    tcp_counter(ns, "/proc/net/snmp", "Tcp", "RetransSegs")
}

#[test]
fn two_crypto_workers_keep_each_stream_whole_and_in_order() {
    if !require_root("two_crypto_workers_keep_each_stream_whole_and_in_order") {
        return;
    }
    let two: &[&str] = &["--crypto-workers", "2"];
    let c = TwoNode::up_with("w", [two, two]);
    for i in 0..2 {
        assert!(
            c.log(i).contains("crypto_workers=2"),
            "node {i}'s device did not start with 2 workers: {}",
            c.log(i)
        );
    }
    let data = marker("WORKERS");
    for (from, to) in [(0usize, 1usize), (1, 0)] {
        let (src, dst) = (&c.nodes[from], &c.nodes[to]);
        let dst_ip = dst.pod_ip4();
        // A lost segment also puts later ones out of order: only a run
        // without retransmissions shows the tunnel's order alone.
        let mut clean_runs = 0;
        let mut seen = Vec::new();
        for attempt in 1..=4 {
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
}
