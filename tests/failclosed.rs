//! Fail closed even when the routing table is wrong: the nftables barrier
//! (`inet podguard`, src/netfilter.rs) drops cluster-bound traffic that
//! would leave through any interface but podguard0/cbr0/lo.
//!
//! Node A gets a default route (v4 and v6) to an "outside" host on the
//! underlay, as real nodes have: with podguard's routes gone, pod traffic
//! would follow it in plaintext. The capture on the underlay runs through
//! the whole fault window; the negative control removes the barrier and
//! shows that the same traffic then does leak, so the setup can see a leak.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::twonode::TwoNode;
use common::*;

/// Node A with a default route to an outside host (192.0.2.200 /
/// fd00:192::200); returns the outside host's namespace.
fn with_default_route(c: &mut TwoNode) -> String {
    let ul = c.ul.clone();
    let out = c.n.underlay_node(&ul, "out", 200);
    let a = c.nodes[0].ns.clone();
    ok(&[
        "ip",
        "-n",
        &out,
        "addr",
        "add",
        "fd00:192::200/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    ok(&[
        "ip",
        "-n",
        &a,
        "addr",
        "add",
        "fd00:192::1/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    ok(&[
        "ip",
        "-n",
        &a,
        "route",
        "add",
        "default",
        "via",
        "192.0.2.200",
    ]);
    ok(&[
        "ip",
        "-n",
        &a,
        "-6",
        "route",
        "add",
        "default",
        "via",
        "fd00:192::200",
    ]);
    out
}

fn flush_podguard_routes(ns: &str) {
    ok(&["ip", "-n", ns, "route", "flush", "proto", "77"]);
    ok(&["ip", "-n", ns, "-6", "route", "flush", "proto", "77"]);
}

/// podguard's routes (v4 and v6) in `ns`, as `ip route` lists them.
fn podguard_routes(ns: &str) -> String {
    ok(&["ip", "-n", ns, "route", "show", "proto", "77"])
        + &ok(&["ip", "-n", ns, "-6", "route", "show", "proto", "77"])
}

/// Pod A and node A send the marker to pod B, v4 and v6.
fn spray(c: &TwoNode, m: &[u8]) {
    let (pa, a) = (&c.nodes[0].pod_ns, &c.nodes[0].ns);
    for to in [c.nodes[1].pod_ip4(), c.nodes[1].pod_ip6()] {
        let to = SocketAddr::new(to.parse().unwrap(), 9);
        udp_spray(pa, to, m);
        udp_spray(a, to, m);
    }
}

fn barrier_present(ns: &str) -> bool {
    run(&[
        "ip", "netns", "exec", ns, "nft", "list", "chain", "inet", "podguard", "forward",
    ])
    .status
    .success()
}

#[test]
fn deleted_routes_leak_nothing_with_or_without_the_agent() {
    if !require_root("deleted_routes_leak_nothing_with_or_without_the_agent") {
        return;
    }
    let mut c = TwoNode::up("fc");
    with_default_route(&mut c);
    let a = c.nodes[0].ns.clone();
    assert!(barrier_present(&a));
    let cap = start_capture(&mut c.n, &c.ul.clone(), "br0", "routes");
    let m = marker("NOROUTE");

    // Agent running: every podguard route and backstop deleted (what the
    // old uninstall step did), traffic sent before any repair. The agent
    // repairs on the netlink event within milliseconds, so it is held
    // (SIGSTOP: alive, its device open) until the traffic has gone and the
    // routes are seen still gone: the window a repair takes, made long.
    c.signal_agent(0, nix::sys::signal::Signal::SIGSTOP);
    flush_podguard_routes(&a);
    spray(&c, &m);
    let left = podguard_routes(&a);
    c.signal_agent(0, nix::sys::signal::Signal::SIGCONT);
    assert_eq!(left, "", "routes came back before the traffic was sent");
    // The agent puts them back, and traffic flows again.
    let (pa, b4) = (c.nodes[0].pod_ns.clone(), c.nodes[1].pod_ip4());
    wait_for("routes repaired", Duration::from_secs(10), || {
        pings(&pa, &b4)
    });

    // Agent stopped: the barrier is kernel state and holds without it.
    c.kill_agent(0);
    flush_podguard_routes(&a);
    assert!(barrier_present(&a), "the barrier must outlive the agent");
    spray(&c, &m);
    // podguard0 deleted as well.
    ok(&["ip", "-n", &a, "link", "del", "podguard0"]);
    spray(&c, &m);
    let pcap = cap.stop(&mut c.n);
    assert!(!contains(&pcap, &m), "plaintext pod data left node A");

    // Negative control: without the barrier the same traffic leaks along
    // the default route, and this capture sees it.
    let cap = start_capture(&mut c.n, &c.ul.clone(), "br0", "control");
    ok(&[
        "ip", "netns", "exec", &a, "nft", "delete", "table", "inet", "podguard",
    ]);
    let control = marker("CONTROL");
    spray(&c, &control);
    let pcap = cap.stop(&mut c.n);
    assert!(
        contains(&pcap, &control),
        "negative control: without the barrier the traffic must leak (else this test proves nothing)"
    );
}

#[test]
fn restarted_agent_restores_traffic_and_keeps_the_barrier() {
    if !require_root("restarted_agent_restores_traffic_and_keeps_the_barrier") {
        return;
    }
    let mut c = TwoNode::up("fcr");
    with_default_route(&mut c);
    let a = c.nodes[0].ns.clone();
    c.kill_agent(0);
    flush_podguard_routes(&a);
    c.start_agent(0);
    let (pa, b4, b6) = (
        c.nodes[0].pod_ns.clone(),
        c.nodes[1].pod_ip4(),
        c.nodes[1].pod_ip6(),
    );
    wait_for("traffic after restart", Duration::from_secs(20), || {
        pings(&pa, &b4) && pings(&pa, &b6)
    });
    assert!(barrier_present(&a));
    // The outside stays reachable for pods (masquerade) with the barrier.
    let listing = ok(&[
        "ip", "netns", "exec", &a, "nft", "list", "table", "inet", "podguard",
    ]);
    assert!(listing.contains("masquerade"), "{listing}");
}

/// Removals are repaired on the netlink event, not at the resync: with a
/// 5-minute resync, deleted routes, cbr0's addresses, a downed cbr0 and a
/// deleted podguard0 come back within a second (measured times printed).
#[test]
fn removed_routes_and_addresses_are_repaired_on_the_netlink_event() {
    if !require_root("removed_routes_and_addresses_are_repaired_on_the_netlink_event") {
        return;
    }
    let mut c = TwoNode::up("fcw");
    with_default_route(&mut c);
    let a = c.nodes[0].ns.clone();
    c.kill_agent(0);
    c.start_agent_with(0, &["--resync", "5m"]);
    let (pa, b4) = (c.nodes[0].pod_ns.clone(), c.nodes[1].pod_ip4());
    wait_for("traffic after restart", Duration::from_secs(20), || {
        pings(&pa, &b4)
    });
    let routes = || {
        ok(&["ip", "-n", &a, "route", "show", "proto", "77"])
            .lines()
            .count()
            + ok(&["ip", "-n", &a, "-6", "route", "show", "proto", "77"])
                .lines()
                .count()
    };
    let addrs = || ok(&["ip", "-n", &a, "addr", "show", "dev", "cbr0"]);
    let want_routes = routes();
    assert!(want_routes >= 4, "{want_routes}");
    // The capture runs through every fault window; traffic is sent right
    // after each damage, before the repair.
    let cap = start_capture(&mut c.n, &c.ul.clone(), "br0", "repairs");
    let m = marker("REPAIR");
    let timed = |what: &str, damage: &dyn Fn(), back: &dyn Fn() -> bool| {
        let t = std::time::Instant::now();
        damage();
        // Traffic into the fault window while the repair is timed.
        std::thread::scope(|s| {
            s.spawn(|| spray(&c, &m));
            // Polled tightly (wait_for's 100 ms steps would hide the time).
            while !back() {
                assert!(
                    t.elapsed() < Duration::from_secs(1),
                    "{what}: not repaired within 1 s"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
            eprintln!("{what}: repaired in {:?}", t.elapsed());
        });
    };
    timed("routes flushed", &|| flush_podguard_routes(&a), &|| {
        routes() == want_routes
    });
    timed(
        "cbr0 addresses flushed",
        &|| {
            ok(&["ip", "-n", &a, "addr", "flush", "dev", "cbr0"]);
        },
        &|| addrs().contains("10.244.1.1/24") && addrs().contains("fd00:10:244:1::1/64"),
    );
    timed(
        "cbr0 down",
        &|| {
            ok(&["ip", "-n", &a, "link", "set", "cbr0", "down"]);
        },
        &|| addrs().contains("state UP") || addrs().contains(",UP"),
    );
    wait_for("traffic after the repairs", Duration::from_secs(5), || {
        pings(&pa, &b4)
    });
    // podguard0 itself deleted: recreated in place (peers and sessions
    // kept), its routes back, traffic flows again.
    timed(
        "podguard0 deleted",
        &|| {
            ok(&["ip", "-n", &a, "link", "del", "podguard0"]);
        },
        &|| {
            run(&["ip", "-n", &a, "link", "show", "podguard0"])
                .status
                .success()
                && routes() == want_routes
        },
    );
    wait_for(
        "traffic through the recreated podguard0",
        Duration::from_secs(5),
        || pings(&pa, &b4),
    );
    let pcap = cap.stop(&mut c.n);
    assert!(
        !contains(&pcap, &m),
        "plaintext left node A during a repair"
    );
}
