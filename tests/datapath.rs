//! The encrypted datapath end to end, as root, in network namespaces: two
//! nodes running the real agent with the userspace device, one pod each.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "datapath/workers.rs"]
mod workers;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::twonode::TwoNode;
use common::*;

const MB10: usize = 10 * 1024 * 1024 + 12345;
/// IPv4 on the underlay that is neither WireGuard nor IGMP (which the
/// kernel sends by itself and carries no data).
const NON_WG_V4: &str = "ip and not udp port 51820 and not igmp";

#[test]
fn pod_traffic_is_routed_encrypted_and_not_natted() {
    if !require_root("pod_traffic_is_routed_encrypted_and_not_natted") {
        return;
    }
    let mut c = TwoNode::up("e");
    let cap = start_capture(&mut c.n, &c.ul.clone(), "br0", "main");
    let enc = marker("TUNNEL");
    let plain = marker("PLAIN");

    // Both directions, both families: checksum matches, source is the real pod IP.
    for (from, to) in [(0usize, 1usize), (1, 0)] {
        for v6 in [false, true] {
            let (src, dst) = (&c.nodes[from], &c.nodes[to]);
            let (src_ip, dst_ip) = if v6 {
                (src.pod_ip6(), dst.pod_ip6())
            } else {
                (src.pod_ip4(), dst.pod_ip4())
            };
            wait_for(
                &format!("ping {src_ip} -> {dst_ip}"),
                Duration::from_secs(10),
                || pings(&src.pod_ns, &dst_ip),
            );
            let rx_before = link_rx(&dst.ns, "podguard0");
            let t = tcp_transfer(
                &src.pod_ns,
                &dst.pod_ns,
                dst_ip.parse().unwrap(),
                &enc,
                MB10,
            );
            // The receiving device hands the stream to its TUN coalesced
            // (super-packets of many segments), not segment by segment.
            let rx_after = link_rx(&dst.ns, "podguard0");
            let (pkts, bytes) = (rx_after.0 - rx_before.0, rx_after.1 - rx_before.1);
            eprintln!("{src_ip} -> {dst_ip}: {pkts} TUN writes, {bytes} bytes");
            assert!(
                bytes >= MB10 as u64 && bytes / pkts >= 8_000,
                "{src_ip} -> {dst_ip}: {pkts} TUN writes of {bytes} bytes, {} per write",
                bytes / pkts.max(1)
            );
            assert_eq!(t.bytes, MB10, "{src_ip} -> {dst_ip}");
            assert_eq!(
                t.sent_hash, t.received_hash,
                "{src_ip} -> {dst_ip}: checksum"
            );
            assert_eq!(
                t.seen_source,
                src_ip.parse::<IpAddr>().unwrap(),
                "NAT detected"
            );
        }
    }

    // Negative control: the same kind of marker over a plain underlay route
    // (node A -> node B's underlay address) must be visible to the capture.
    let t = tcp_transfer(
        &c.nodes[0].ns,
        &c.nodes[1].ns,
        c.nodes[1].underlay_ip.parse().unwrap(),
        &plain,
        64 * 1024,
    );
    assert_eq!(t.sent_hash, t.received_hash);

    let pcap = cap.stop(&mut c.n);
    assert!(
        contains(&pcap, &plain),
        "negative control: the capture must see plaintext sent outside the tunnel"
    );
    assert!(
        !contains(&pcap, &enc),
        "plaintext pod data seen on the underlay"
    );
    let wg = cap.matching("udp port 51820");
    assert!(
        wg.len() > 1000,
        "expected the transfers as WireGuard packets, saw {}",
        wg.len()
    );
    // Everything IPv4 on the underlay is WireGuard, except the control flow.
    let other = cap.matching(&format!(
        "{NON_WG_V4} and not (tcp and host 192.0.2.1 and host 192.0.2.2)"
    ));
    assert!(
        other.is_empty(),
        "non-WireGuard IPv4 on the underlay: {:?}",
        &other[..other.len().min(5)]
    );
    let other6 = cap.matching("ip6 and not icmp6 and not ip6 multicast");
    assert!(other6.is_empty(), "IPv6 data on the underlay: {other6:?}");

    // wg(8) against our UAPI: node A lists B with the right AllowedIPs and a recent handshake.
    let out = c.wg(0, &["show", "podguard0", "dump"]);
    assert!(
        out.status.success(),
        "wg show: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = String::from_utf8_lossy(&out.stdout).to_string();
    let peer: Vec<&str> = dump
        .lines()
        .find(|l| l.starts_with(&c.nodes[1].public_key))
        .unwrap_or_else(|| panic!("peer B missing from wg show: {dump}"))
        .split('\t')
        .collect();
    assert_eq!(peer[2], "192.0.2.2:51820");
    assert_eq!(peer[3], "10.244.2.0/24,fd00:10:244:2::/64");
    let hs: u64 = peer[4].parse().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(hs > 0 && now - hs < 180, "stale handshake {hs} (now {now})");
    assert!(
        peer[5].parse::<u64>().unwrap() > MB10 as u64,
        "rx bytes {}",
        peer[5]
    );

    // wg set works against our device, and the agent repairs the drift.
    let stranger = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let out = c.wg(
        0,
        &[
            "set",
            "podguard0",
            "peer",
            stranger,
            "allowed-ips",
            "10.244.99.0/24",
        ],
    );
    assert!(
        out.status.success(),
        "wg set: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown =
        String::from_utf8_lossy(&c.wg(0, &["show", "podguard0", "peers"]).stdout).to_string();
    assert!(shown.contains(stranger), "wg set peer not applied: {shown}");
    wait_for(
        "the agent to remove a hand-added peer",
        Duration::from_secs(10),
        || {
            !String::from_utf8_lossy(&c.wg(0, &["show", "podguard0", "peers"]).stdout)
                .contains(stranger)
        },
    );
    // A route removed by hand comes back within a resync.
    ok(&[
        "ip",
        "-n",
        &c.nodes[0].ns,
        "route",
        "del",
        "10.244.0.0/16",
        "dev",
        "podguard0",
    ]);
    wait_for(
        "the agent to restore a deleted route",
        Duration::from_secs(10),
        || {
            ok(&["ip", "-n", &c.nodes[0].ns, "route", "show", "10.244.0.0/16"])
                .contains("dev podguard0")
        },
    );
    assert!(pings(&c.nodes[0].pod_ns, &c.nodes[1].pod_ip4()));
}

#[test]
fn device_death_fails_closed_and_restart_recovers() {
    if !require_root("device_death_fails_closed_and_restart_recovers") {
        return;
    }
    let mut c = TwoNode::up("f");
    let routes_before = ok(&["ip", "-n", &c.nodes[0].ns, "route", "show"]);
    // When node B last completed a handshake with node A (unix seconds).
    let a_key = c.nodes[0].public_key.clone();
    let b_saw_a = |c: &TwoNode| -> u64 {
        let o = c.wg(1, &["show", "podguard0", "latest-handshakes"]);
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .find_map(|l| l.strip_prefix(a_key.as_str()))
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    };
    let handshake_before = b_saw_a(&c);
    assert!(handshake_before > 0, "no handshake between A and B");
    let cap = start_capture(&mut c.n, &c.ul.clone(), "br0", "dead");
    let m = marker("DEAD");

    c.kill_agent(0);
    std::thread::sleep(Duration::from_millis(300));
    let (pa, b4, b6) = (
        c.nodes[0].pod_ns.clone(),
        c.nodes[1].pod_ip4(),
        c.nodes[1].pod_ip6(),
    );
    assert!(
        !pings(&pa, &b4),
        "pod traffic must stop when the device's process is gone"
    );
    assert!(!pings(&pa, &b6));
    udp_spray(&pa, SocketAddr::new(b4.parse().unwrap(), 9), &m);
    udp_spray(&pa, SocketAddr::new(b6.parse().unwrap(), 9), &m);
    // The node itself, too.
    udp_spray(&c.nodes[0].ns, SocketAddr::new(b4.parse().unwrap(), 9), &m);

    // Even with the interface gone, the unreachable backstop holds.
    ok(&["ip", "-n", &c.nodes[0].ns, "link", "del", "podguard0"]);
    let route = run(&["ip", "-n", &c.nodes[0].ns, "route", "get", &b4]);
    let stderr = String::from_utf8_lossy(&route.stderr);
    assert!(
        !route.status.success() && stderr.contains("No route to host"),
        "route to a remote pod without podguard0 must be unreachable: {} {stderr}",
        String::from_utf8_lossy(&route.stdout)
    );
    assert!(!pings(&pa, &b4));
    udp_spray(&pa, SocketAddr::new(b4.parse().unwrap(), 9), &m);

    let pcap = cap.stop(&mut c.n);
    assert!(
        !contains(&pcap, &m),
        "plaintext left node A while its device was dead"
    );
    let leaked = cap.matching(NON_WG_V4);
    assert!(
        leaked.is_empty(),
        "non-WireGuard IPv4 on the underlay: {leaked:?}"
    );

    // Restart: traffic flows again without touching routes by hand. The
    // restarted device handshakes at once (its peers have a persistent
    // keepalive), with no traffic of its own: B would otherwise seal for
    // the lost session until its no-reply timer fired (15 s), and A's
    // keepalive would come only after 25 s.
    c.start_agent(0);
    wait_for(
        "a handshake from the restarted node, with no traffic",
        Duration::from_secs(10),
        || b_saw_a(&c) > handshake_before,
    );
    // B's pod speaks first, and is answered within 3 s, not after the
    // 15 s of a no-reply timer. Not necessarily the first ping: B, the
    // responder, may seal on its old session until A's first packet on
    // the new one confirms it (WireGuard's key confirmation), which can
    // come a moment after the handshake B counted.
    let pb = c.nodes[1].pod_ns.clone();
    let a4 = c.nodes[0].pod_ip4();
    wait_for("B's pod answered at once", Duration::from_secs(3), || {
        pings(&pb, &a4)
    });
    wait_for(
        "traffic after agent restart",
        Duration::from_secs(20),
        || pings(&pa, &b4),
    );
    assert!(pings(&pa, &b6));
    let t = tcp_transfer(&pa, &c.nodes[1].pod_ns, b4.parse().unwrap(), &m, 1 << 20);
    assert_eq!(t.sent_hash, t.received_hash);
    let routes_after = ok(&["ip", "-n", &c.nodes[0].ns, "route", "show"]);
    assert_eq!(
        routes_before.replace(" linkdown", ""),
        routes_after.replace(" linkdown", "")
    );
}

#[test]
fn missing_or_wrong_key_gets_no_peer_and_no_plaintext() {
    if !require_root("missing_or_wrong_key_gets_no_peer_and_no_plaintext") {
        return;
    }
    let mut c = TwoNode::up("k");
    let cap = start_capture(&mut c.n, &c.ul.clone(), "br0", "keys");
    let m = marker("NOKEY");
    let (pa, b4) = (c.nodes[0].pod_ns.clone(), c.nodes[1].pod_ip4());
    let b_key = c.nodes[1].public_key.clone();
    let has_peer_b = |c: &TwoNode| {
        String::from_utf8_lossy(&c.wg(0, &["show", "podguard0", "peers"]).stdout).contains(&b_key)
    };

    // B's key missing: A removes the peer, B's pods are unreachable.
    c.write_nodes(|i, v| {
        if i == 1 {
            v.as_object_mut().unwrap().remove("publicKey");
        }
    });
    wait_for("peer B to be removed", Duration::from_secs(10), || {
        !has_peer_b(&c)
    });
    assert!(!pings(&pa, &b4));
    udp_spray(&pa, SocketAddr::new(b4.parse().unwrap(), 9), &m);
    assert!(
        c.log(0).contains("node has no podguard.dev/public-key"),
        "rejection not logged"
    );

    // B's key wrong (a valid key, but not B's): handshakes fail, nothing flows.
    let wrong = "cTR6NR0olRDrhpeMmo7YolLmzeQ8yl8yX1NCiXH5Vic=";
    c.write_nodes(|i, v| {
        if i == 1 {
            v["publicKey"] = wrong.into();
        }
    });
    wait_for(
        "the wrong key to be configured",
        Duration::from_secs(10),
        || {
            String::from_utf8_lossy(&c.wg(0, &["show", "podguard0", "peers"]).stdout)
                .contains(wrong)
        },
    );
    assert!(!pings(&pa, &b4));
    udp_spray(&pa, SocketAddr::new(b4.parse().unwrap(), 9), &m);

    // Garbage key: rejected.
    c.write_nodes(|i, v| {
        if i == 1 {
            v["publicKey"] = "garbage".into();
        }
    });
    wait_for(
        "the garbage key to be rejected",
        Duration::from_secs(10),
        || c.log(0).contains("podguard.dev/public-key is invalid"),
    );
    assert!(!pings(&pa, &b4));

    let pcap = cap.stop(&mut c.n);
    assert!(
        !contains(&pcap, &m),
        "plaintext on the underlay for a node without a valid key"
    );
    let leaked = cap.matching(NON_WG_V4);
    assert!(
        leaked.is_empty(),
        "non-WireGuard IPv4 on the underlay: {leaked:?}"
    );

    // Restored: traffic flows again.
    c.write_nodes(|_, _| {});
    wait_for(
        "traffic after restoring B's key",
        Duration::from_secs(20),
        || pings(&pa, &b4),
    );

    // A rewrite that keeps the file's modification time (`cp -p`, a
    // coarse clock) is still read, at the next resync (1 s here).
    let mtime = std::fs::metadata(&c.nodes_file)
        .unwrap()
        .modified()
        .unwrap();
    c.write_nodes(|i, v| {
        if i == 1 {
            v.as_object_mut().unwrap().remove("publicKey");
        }
    });
    std::fs::File::options()
        .write(true)
        .open(&c.nodes_file)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    wait_for(
        "a rewrite with the old mtime to be read",
        Duration::from_secs(10),
        || !has_peer_b(&c),
    );
}

#[test]
fn inbound_source_outside_allowed_ips_is_dropped() {
    if !require_root("inbound_source_outside_allowed_ips_is_dropped") {
        return;
    }
    let mut c = TwoNode::up("s");
    let (pa, pb) = (c.nodes[0].pod_ns.clone(), c.nodes[1].pod_ns.clone());
    // Pod B forges a source from node-less space inside the cluster CIDR;
    // node B's device encrypts it (outbound has no source check), node A
    // must refuse it after decryption.
    ok(&[
        "ip",
        "-n",
        &pb,
        "addr",
        "add",
        "10.244.77.7/32",
        "dev",
        "eth0",
    ]);
    let cap = start_capture(&mut c.n, &pa, "eth0", "spoof");
    let out = run(&[
        "ip",
        "netns",
        "exec",
        &pb,
        "ping",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "1",
        "-I",
        "10.244.77.7",
        &c.nodes[0].pod_ip4(),
    ]);
    assert!(!out.status.success(), "a spoofed ping got an answer");
    // The legitimate source still works.
    assert!(pings(&pb, &c.nodes[0].pod_ip4()));
    cap.stop(&mut c.n);
    assert!(
        cap.matching("host 10.244.77.7").is_empty(),
        "spoofed packets reached pod A"
    );
    let seen = cap.matching("icmp");
    assert!(
        seen.iter().any(|l| l.contains("10.244.2.2 >")),
        "capture saw no ping from pod B: {seen:?}"
    );
    let m = scrape(&c.nodes[0].ns);
    let dropped = sample(
        &m,
        "podguard_device_dropped_packets_total{node=\"a\",reason=\"bad_source\"}",
    )
    .unwrap_or(0.0);
    assert!(dropped >= 3.0, "bad_source drops counted: {dropped}\n{m}");
    wait_for("the drop to be logged", Duration::from_secs(5), || {
        c.log(0).contains("outside the sending peer's AllowedIPs")
            && c.log(0).contains("10.244.77.7")
    });
}

#[test]
fn endpoint_roams_with_the_peer() {
    if !require_root("endpoint_roams_with_the_peer") {
        return;
    }
    let c = TwoNode::up("r");
    let (pa, pb) = (c.nodes[0].pod_ns.clone(), c.nodes[1].pod_ns.clone());
    let (a4, b4) = (c.nodes[0].pod_ip4(), c.nodes[1].pod_ip4());
    // Node B moves to another underlay address; the nodes file still has the old one.
    let nb = c.nodes[1].ns.clone();
    ok(&[
        "ip",
        "-n",
        &nb,
        "addr",
        "del",
        "192.0.2.2/24",
        "dev",
        "eth0",
    ]);
    ok(&[
        "ip",
        "-n",
        &nb,
        "addr",
        "add",
        "192.0.2.12/24",
        "dev",
        "eth0",
    ]);
    // B talks first: A learns B's new address from authenticated packets.
    wait_for(
        "pod B -> pod A after B moved",
        Duration::from_secs(15),
        || pings(&pb, &a4),
    );
    let endpoint = |c: &TwoNode| {
        String::from_utf8_lossy(&c.wg(0, &["show", "podguard0", "endpoints"]).stdout).to_string()
    };
    assert!(
        endpoint(&c).contains("192.0.2.12:51820"),
        "A did not roam: {}",
        endpoint(&c)
    );
    // Several resyncs later the agent has not reset it, and A reaches B.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        endpoint(&c).contains("192.0.2.12:51820"),
        "the agent undid roaming: {}",
        endpoint(&c)
    );
    assert!(pings(&pa, &b4));
}
