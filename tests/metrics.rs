//! `/metrics`, `/healthz` and `/readyz` of a real agent: Prometheus
//! conventions (counters as counters with `_total`, the OpenMetrics content
//! type, a `node` label), no series left for a removed peer, and nothing
//! reachable from the untrusted underlay by default.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::twonode::TwoNode;
use common::*;

fn get(ns: &str, addr: &str, path: &str) -> String {
    http_get_in(ns, addr, path)
}

trait Status {
    fn starts_with_status(&self, code: u16) -> bool;
}

impl Status for String {
    /// The response's status line has `code` (HTTP/1.0 or 1.1).
    fn starts_with_status(&self, code: u16) -> bool {
        self.lines()
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .is_some_and(|c| c == code.to_string())
    }
}

fn parse(body: &str) -> (prometheus_parse::Scrape, BTreeMap<String, String>) {
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("a Prometheus text page");
    let types = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    (scrape, types)
}

#[test]
fn metrics_follow_prometheus_conventions_drop_removed_peers_and_stay_off_the_underlay() {
    if !require_root(
        "metrics_follow_prometheus_conventions_drop_removed_peers_and_stay_off_the_underlay",
    ) {
        return;
    }
    let c = TwoNode::up("met");
    let a = c.nodes[0].ns.clone();
    let key_b = c.nodes[1].public_key.clone();
    let resp = get(&a, "127.0.0.1:9721", "/metrics");
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    let (scrape, types) = parse(body);
    for s in &scrape.samples {
        assert_eq!(
            s.labels.get("node"),
            Some("a"),
            "every series names its node: {s:?}"
        );
    }
    for (family, kind) in [
        ("podguard_reconciles", "counter"),
        ("podguard_reconcile_errors", "counter"),
        ("podguard_peer_rx_bytes", "counter"),
        ("podguard_peer_tx_packets", "counter"),
        ("podguard_device_dropped_packets", "counter"),
        ("podguard_device_handshake_initiations_read", "counter"),
        ("podguard_peers", "gauge"),
        ("podguard_peer_last_handshake_seconds", "gauge"),
    ] {
        assert_eq!(
            types.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
        let sample = if kind == "counter" {
            format!("{family}_total")
        } else {
            family.to_string()
        };
        assert!(
            scrape.samples.iter().any(|s| s.metric == sample),
            "no {sample} sample in\n{body}"
        );
    }
    // prometheus-parse splits label pairs on '=', which base64 keys hold
    // (padding): the peer label is checked on the raw line.
    let rx_line = format!("podguard_peer_rx_bytes_total{{node=\"a\",peer=\"{key_b}\"}} ");
    let rx: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix(&rx_line))
        .unwrap_or_else(|| panic!("no {rx_line} in\n{body}"))
        .parse()
        .unwrap();
    assert!(rx > 0.0, "{rx}");

    // Node B leaves the mesh: its series go with it.
    c.write_nodes(|i, v| {
        if i == 1 {
            v["publicKey"] = serde_json::Value::Null;
        }
    });
    wait_for("node B's series to vanish", Duration::from_secs(10), || {
        !get(&a, "127.0.0.1:9721", "/metrics").contains(&key_b)
    });

    // Health: ready and healthy on loopback.
    assert!(get(&a, "127.0.0.1:9721", "/readyz").starts_with_status(200));
    assert!(get(&a, "127.0.0.1:9721", "/healthz").starts_with_status(200));
    // Not reachable from the underlay (the default listens on loopback).
    let ul = c.ul.clone();
    ok(&[
        "ip",
        "-n",
        &ul,
        "addr",
        "add",
        "192.0.2.250/24",
        "dev",
        "br0",
    ]);
    // Control: the underlay reaches node A's address, where a listener
    // of the test answers; the metrics port there refuses the connection
    // (nothing listens), which an unreachable address would not say.
    let listener = in_netns(&a, || std::net::TcpListener::bind("192.0.2.1:0").unwrap());
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read as _, Write as _};
        if let Ok((mut c, _)) = listener.accept() {
            // Read the request first: closing with it unread sends a
            // reset, which can overtake the answer on its way to the client.
            let mut req = Vec::new();
            let mut buf = [0u8; 256];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let _ = c.write_all(b"HTTP/1.0 200 OK\r\n\r\ncontrol");
        }
    });
    assert!(
        get(&ul, &format!("192.0.2.1:{port}"), "/").contains("control"),
        "the control listener did not answer: the check below proves nothing"
    );
    let refused = run(&[
        "ip",
        "netns",
        "exec",
        &ul,
        "bash",
        "-c",
        "exec 3<>/dev/tcp/192.0.2.1/9721",
    ]);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Connection refused"),
        "the metrics port on the underlay: {refused:?}"
    );
    assert!(
        get(&ul, "192.0.2.1:9721", "/metrics").is_empty(),
        "the metrics page answered on the underlay"
    );
}

#[test]
fn readyz_and_healthz_follow_a_broken_data_plane() {
    if !require_root("readyz_and_healthz_follow_a_broken_data_plane") {
        return;
    }
    let mut c = TwoNode::up("hz");
    let a = c.nodes[0].ns.clone();
    c.kill_agent(0);
    c.start_agent_with(0, &["--health-grace", "2s"]);
    wait_for("ready after restart", Duration::from_secs(20), || {
        get(&a, "127.0.0.1:9721", "/readyz").starts_with_status(200)
    });
    // Something the agent cannot repair: another program replaced its
    // masquerade chain with one of another type (nft refuses every later
    // transaction). Ready flips at once, healthy after the grace period
    // (the liveness probe would restart the agent).
    let nft = |cmd: &str| ok(&["ip", "netns", "exec", &a, "nft", cmd]);
    nft("delete chain inet podguard postrouting");
    nft("add chain inet podguard postrouting { type filter hook input priority 0 ; }");
    wait_for("not ready", Duration::from_secs(5), || {
        get(&a, "127.0.0.1:9721", "/readyz").starts_with_status(503)
    });
    assert!(
        get(&a, "127.0.0.1:9721", "/healthz").starts_with_status(200),
        "within the grace"
    );
    wait_for("unhealthy after the grace", Duration::from_secs(10), || {
        let r = get(&a, "127.0.0.1:9721", "/healthz");
        r.starts_with_status(503) && r.contains("nftables")
    });
    // Repaired by hand (the chain removed), the agent recovers by itself.
    nft("delete chain inet podguard postrouting");
    wait_for("ready again", Duration::from_secs(20), || {
        get(&a, "127.0.0.1:9721", "/readyz").starts_with_status(200)
    });
    assert!(get(&a, "127.0.0.1:9721", "/healthz").starts_with_status(200));
    let (pa, b4) = (c.nodes[0].pod_ns.clone(), c.nodes[1].pod_ip4());
    wait_for("traffic again", Duration::from_secs(20), || pings(&pa, &b4));
}
