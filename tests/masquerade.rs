//! Pods reach addresses outside the cluster: the agent masquerades pod
//! traffic leaving the cluster CIDR through the uplink (nftables table
//! `inet podguard`), while pod-to-pod traffic keeps the real pod IP.
//!
//! Topology: tests/common/twonode.rs plus an "internet" namespace on the
//! underlay bridge (192.0.2.200), outside every cluster CIDR, with no
//! route back to the pod ranges — as a real outside host has.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::twonode::TwoNode;
use common::*;

const INTERNET: &str = "192.0.2.200";

fn internet_host(c: &mut TwoNode) -> String {
    let ul = c.ul.clone();
    c.n.underlay_node(&ul, "inet", 200)
}

#[test]
fn pods_reach_the_outside_as_the_node_and_each_other_as_themselves() {
    if !require_root("pods_reach_the_outside_as_the_node_and_each_other_as_themselves") {
        return;
    }
    let mut c = TwoNode::up("mq");
    let inet = internet_host(&mut c);
    let (pa, pb) = (c.nodes[0].pod_ns.clone(), c.nodes[1].pod_ns.clone());
    wait_for("the masquerade table", Duration::from_secs(10), || {
        run(&[
            "ip",
            "netns",
            "exec",
            &c.nodes[0].ns,
            "nft",
            "list",
            "table",
            "inet",
            "podguard",
        ])
        .status
        .success()
    });
    // Outside: the host sees node A's underlay address, and answers.
    let t = tcp_transfer(&pa, &inet, INTERNET.parse().unwrap(), b"outbound", 4096);
    assert_eq!(t.sent_hash, t.received_hash);
    assert_eq!(
        t.seen_source.to_string(),
        c.nodes[0].underlay_ip,
        "masqueraded to node A"
    );
    // Pod to pod across nodes: the real pod IP, no NAT.
    let b4: IpAddr = c.nodes[1].pod_ip4().parse().unwrap();
    let t = tcp_transfer(&pa, &pb, b4, b"pod-to-pod", 4096);
    assert_eq!(t.seen_source.to_string(), c.nodes[0].pod_ip4());
    // Node to pod: the node's own cbr0 address, no NAT either.
    let t = tcp_transfer(&c.nodes[0].ns, &pb, b4, b"node-to-pod", 4096);
    assert_eq!(t.seen_source.to_string(), "10.244.1.1");
}

#[test]
fn masquerade_off_removes_the_nat_chain_keeps_the_barrier_and_outside_gets_no_answer() {
    if !require_root("masquerade_off_removes_the_table_and_outside_traffic_gets_no_answer") {
        return;
    }
    let mut c = TwoNode::up("mqoff");
    let inet = internet_host(&mut c);
    let pa = c.nodes[0].pod_ns.clone();
    let ns = c.nodes[0].ns.clone();
    wait_for("the masquerade table", Duration::from_secs(10), || {
        run(&[
            "ip", "netns", "exec", &ns, "nft", "list", "table", "inet", "podguard",
        ])
        .status
        .success()
    });
    c.kill_agent(0);
    c.start_agent_with(0, &["--masquerade=false"]);
    let chain = |name: &str| {
        run(&[
            "ip", "netns", "exec", &ns, "nft", "list", "chain", "inet", "podguard", name,
        ])
        .status
        .success()
    };
    wait_for("the nat chain to go", Duration::from_secs(10), || {
        !chain("postrouting")
    });
    assert!(chain("forward") && chain("output"), "the barrier stays");
    // Without masquerade the outside host has no route back to the pod.
    let cap = start_capture(&mut c.n, &inet, "eth0", "noanswer");
    let _ = run(&[
        "ip", "netns", "exec", &pa, "ping", "-c", "2", "-W", "1", INTERNET,
    ]);
    cap.stop(&mut c.n);
    let arrived = cap.matching(&format!("icmp and src host {}", c.nodes[0].pod_ip4()));
    assert!(
        !arrived.is_empty(),
        "the ping arrives un-NATed from the pod IP: {arrived:?}"
    );
    assert!(!pings(&pa, INTERNET), "and gets no answer");
}
