//! The tunnel MTU follows the underlay by itself (issue 22), as root in
//! network namespaces with the real agents: on a 9000-byte underlay with
//! no `--underlay-mtu`, `podguard0`, `cbr0` and the pods get 8940 and a
//! full-size pod packet crosses as one WireGuard datagram (seen on the
//! wire); where one node's underlay is smaller, both use the smaller; the
//! flag still overrides.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::twonode::TwoNode;
use common::*;

/// Ping from node `from`'s pod to node `to`'s pod with `size` bytes of
/// ICMP payload and "don't fragment".
fn ping_df(c: &TwoNode, from: usize, to: usize, size: u32) -> bool {
    let size = size.to_string();
    run(&[
        "ip",
        "netns",
        "exec",
        &c.nodes[from].pod_ns,
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        "-M",
        "do",
        "-s",
        &size,
        &c.nodes[to].pod_ip4(),
    ])
    .status
    .success()
}

#[test]
fn a_jumbo_underlay_is_found_and_carries_jumbo_pod_packets() {
    if !require_root("a_jumbo_underlay_is_found_and_carries_jumbo_pod_packets") {
        return;
    }
    // Each node's agent publishes what it found; in a nodes file the
    // operator writes it (a peer that says nothing counts as 1500).
    let mut c = TwoNode::up_on("mj", [9000, 9000], [&[], &[]], |_, v| {
        v["underlayMTU"] = 9000.into();
    });
    for i in 0..2 {
        assert_eq!(c.link_mtu(i, "podguard0"), 8940, "node {i} podguard0");
        assert_eq!(c.link_mtu(i, "cbr0"), 8940, "node {i} cbr0");
        let st = c.state(i);
        assert_eq!(st["mtu"], 8940, "node {i}: {st}");
        assert_eq!(st["underlayMtu"], 9000, "node {i}: {st}");
    }
    assert!(
        c.log(0).contains("underlay MTU found"),
        "the agent says where its MTU came from:\n{}",
        c.log(0)
    );
    let cap = start_capture_with(
        &mut c.n,
        &c.ul.clone(),
        "br0",
        "jumbo",
        &["udp", "port", "51820"],
    );
    // 8912 bytes of payload + 28 of headers: exactly the pod MTU.
    wait_for(
        "a full 8940-byte packet A -> B",
        Duration::from_secs(10),
        || ping_df(&c, 0, 1, 8912),
    );
    assert!(
        !ping_df(&c, 0, 1, 8913),
        "a packet over the pod MTU went out"
    );
    cap.stop(&mut c.n);
    // 8940 + 32 (WireGuard) + 8 (UDP): one datagram per pod packet.
    let big = cap.matching("udp and greater 8980");
    assert!(
        !big.is_empty(),
        "no jumbo WireGuard datagram on the underlay: {:?}",
        cap.matching("udp")
    );
}

#[test]
fn the_mesh_uses_the_smallest_underlay_and_the_flag_overrides() {
    if !require_root("the_mesh_uses_the_smallest_underlay_and_the_flag_overrides") {
        return;
    }
    // Node b sits on a GCE-like 1460 underlay and says so (as its agent
    // publishes podguard.dev/underlay-mtu; here in the nodes file). Node a
    // finds 9000 on its own link, yet must not send b what b cannot take.
    let c = TwoNode::up_on("ms", [9000, 1460], [&[], &[]], |i, v| {
        v["underlayMTU"] = if i == 1 { "1460" } else { "9000" }.into();
    });
    for i in 0..2 {
        assert_eq!(c.link_mtu(i, "podguard0"), 1400, "node {i} podguard0");
        assert_eq!(c.state(i)["underlayMtu"], 1460, "node {i}");
    }
    assert!(ping_df(&c, 0, 1, 1372), "a full 1400-byte packet A -> B");
    assert!(ping_df(&c, 1, 0, 1372), "a full 1400-byte packet B -> A");
    drop(c);

    // --underlay-mtu wins over what is found.
    let c = TwoNode::up_on(
        "mf",
        [9000, 9000],
        [&["--underlay-mtu", "1400"], &[]],
        |_, v| v["underlayMTU"] = 9000.into(),
    );
    assert_eq!(c.link_mtu(0, "podguard0"), 1340);
    assert_eq!(c.link_mtu(1, "podguard0"), 8940);
    assert!(ping_df(&c, 0, 1, 1312), "a full 1340-byte packet A -> B");
    drop(c);

    // A peer that published nothing (an agent from before MTUs were
    // published) counts as 1500: a jumbo node never sends it more.
    let c = TwoNode::up_on("mo", [9000, 9000], [&[], &[]], |_, _| {});
    assert_eq!(c.link_mtu(0, "podguard0"), 1440);
    assert_eq!(c.state(0)["underlayMtu"], 1500);
}

#[test]
fn a_tunnel_mtu_raised_at_runtime_carries_the_larger_packets() {
    if !require_root("a_tunnel_mtu_raised_at_runtime_carries_the_larger_packets") {
        return;
    }
    // Jumbo underlays, but until the peers publish it the mesh counts
    // 1500. The userspace device's send path reads packets into slots;
    // when the MTU grows under it, the larger packets must pass.
    let userspace: &[&str] = &["--backend", "userspace"];
    let c = TwoNode::up_on("mr", [9000, 9000], [userspace, userspace], |_, _| {});
    for i in 0..2 {
        assert_eq!(c.link_kind(i), "tun", "node {i} runs the userspace device");
    }
    assert_eq!(c.link_mtu(0, "podguard0"), 1440);
    assert!(ping_df(&c, 0, 1, 1412), "a full 1440-byte packet A -> B");
    c.write_nodes(|_, v| v["underlayMTU"] = 9000.into());
    for i in 0..2 {
        wait_for(
            "podguard0 and cbr0 at 8940",
            Duration::from_secs(30),
            || c.link_mtu(i, "podguard0") == 8940 && c.link_mtu(i, "cbr0") == 8940,
        );
        // A pod keeps the MTU it was created with (the CNI sets it at
        // ADD); this one is raised by hand.
        let node = &c.nodes[i];
        ok(&["ip", "-n", &node.ns, "link", "set", "vpod", "mtu", "8940"]);
        ok(&[
            "ip",
            "-n",
            &node.pod_ns,
            "link",
            "set",
            "eth0",
            "mtu",
            "8940",
        ]);
    }
    for (from, to) in [(0, 1), (1, 0)] {
        wait_for(
            "a full 8940-byte packet across",
            Duration::from_secs(10),
            || ping_df(&c, from, to, 8912),
        );
    }
}
