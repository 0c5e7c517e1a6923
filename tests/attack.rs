//! An attacker on the underlay, with nothing but the datagrams it can see:
//! a genuine handshake initiation replayed from another address, fast
//! enough to put the device under load, must never move the peer's
//! endpoint (before, the cookie reply sent under load counted as
//! authentication and the endpoint followed the attacker), and the load
//! state must end with the flood (the rate limiter was never reset).
//! Nor can plaintext sent from a pod's address reach another pod.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::pcap::{capture_initiation, udp_payloads};
use common::twonode::TwoNode;
use common::*;

#[test]
fn replayed_initiations_under_load_never_move_the_endpoint() {
    if !require_root("replayed_initiations_under_load_never_move_the_endpoint") {
        return;
    }
    let mut c = TwoNode::up("atk");
    let ul = c.ul.clone();
    let (key_a, key_b) = (c.nodes[0].public_key.clone(), c.nodes[1].public_key.clone());
    let (pa, b4) = (c.nodes[0].pod_ns.clone(), c.nodes[1].pod_ip4());

    // Record a genuine initiation A -> B.
    let init = capture_initiation(&mut c);
    assert_eq!(c.endpoint(1, &key_a), "192.0.2.1:51820");

    // The attacker replays it from its own address, 300 per second for
    // 2 s: far above the 100 per second that puts the device under load.
    let evil = c.n.underlay_node(&ul, "evil", 66);
    let cap = start_capture(&mut c.n, &ul, "br0", "flood");
    in_netns(&evil, || {
        let s = UdpSocket::bind("192.0.2.66:40000").unwrap();
        for _ in 0..600 {
            let _ = s.send_to(&init, "192.0.2.2:51820");
            std::thread::sleep(Duration::from_micros(3300));
        }
    });
    assert_eq!(
        c.endpoint(1, &key_a),
        "192.0.2.1:51820",
        "the replayed initiation moved node B's endpoint for node A"
    );
    // The flood reached the under-load path: B answered with cookies.
    std::thread::sleep(Duration::from_millis(200));
    let cookies_during = cap_cookies(&cap, &mut c.n, "192.0.2.66");
    assert!(
        cookies_during > 0,
        "B never went under load: the test proves nothing"
    );

    // The flood over, the load state ends: a fresh handshake from A is
    // answered without a cookie.
    std::thread::sleep(Duration::from_millis(1500));
    let cap = start_capture(&mut c.n, &ul, "br0", "after");
    let o = c.wg(0, &["set", "podguard0", "peer", &key_b, "remove"]);
    assert!(o.status.success());
    wait_for(
        "a handshake after the flood",
        Duration::from_secs(15),
        || pings(&pa, &b4),
    );
    assert_eq!(
        cap_cookies(&cap, &mut c.n, "192.0.2.1"),
        0,
        "B still under load after the flood"
    );
    assert_eq!(c.endpoint(1, &key_a), "192.0.2.1:51820");

    // A fresh session accepts an initiation of any age (its replay check
    // starts at zero): after B's agent restarts, one replay of the old
    // initiation must still not move the endpoint (only what decrypts on a
    // session does), and traffic keeps flowing.
    c.kill_agent(1);
    c.start_agent(1);
    // Replay as soon as B has its peer again, before A handshakes anew.
    wait_for(
        "B to configure peer A again",
        Duration::from_secs(20),
        || c.endpoint(1, &key_a) == "192.0.2.1:51820",
    );
    in_netns(&evil, || {
        let s = UdpSocket::bind("192.0.2.66:40001").unwrap();
        let _ = s.send_to(&init, "192.0.2.2:51820");
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        c.endpoint(1, &key_a),
        "192.0.2.1:51820",
        "a replayed initiation on a fresh session moved the endpoint"
    );
    wait_for("traffic after B's restart", Duration::from_secs(30), || {
        pings(&pa, &b4)
    });
}

/// Plaintext from the underlay that claims a pod's address as its source
/// (pod A's podCIDR) must never reach pod B, v4 or v6: only the tunnel,
/// the pod bridge and the node itself may bring in a cluster source. Node
/// B's reverse-path filter is off, as on a host with the kernel's default
/// (and it never applies to IPv6). Negative control: with the agent held
/// and the `prerouting` chain removed, the same datagrams arrive, so the
/// path is routable and the chain is what stops them.
#[test]
fn spoofed_pod_sources_from_the_underlay_never_reach_a_pod() {
    if !require_root("spoofed_pod_sources_from_the_underlay_never_reach_a_pod") {
        return;
    }
    let mut c = TwoNode::up("spf");
    let (ul, b) = (c.ul.clone(), c.nodes[1].ns.clone());
    let pb = c.nodes[1].pod_ns.clone();
    for key in ["all", "default", "eth0"] {
        let k = format!("net.ipv4.conf.{key}.rp_filter=0");
        ok(&["ip", "netns", "exec", &b, "sysctl", "-qw", &k]);
    }
    // The attacker owns pod A's addresses and routes node B's podCIDRs to
    // node B's underlay address. The addresses sit on its loopback: on
    // eth0, its neighbour solicitations would come from pod A's address
    // too, and node B's answers to a cluster address may only leave
    // through the tunnel.
    let evil = c.n.underlay_node(&ul, "evil", 66);
    let b_ll = ok(&[
        "ip", "-n", &b, "-6", "-br", "addr", "show", "dev", "eth0", "scope", "link",
    ]);
    let b_ll = b_ll
        .split_whitespace()
        .find_map(|w| w.strip_suffix("/64"))
        .unwrap_or_else(|| panic!("no link-local address on node B: {b_ll}"))
        .to_string();
    for cmd in [
        "addr add 10.244.1.99/32 dev lo",
        "-6 addr add fd00:10:244:1::99/128 dev lo",
        "route add 10.244.2.0/24 via 192.0.2.2 src 10.244.1.99",
    ] {
        let mut args = vec!["ip", "-n", &evil];
        args.extend(cmd.split(' '));
        ok(&args);
    }
    ok(&[
        "ip",
        "-n",
        &evil,
        "-6",
        "route",
        "add",
        "fd00:10:244:2::/64",
        "via",
        &b_ll,
        "dev",
        "eth0",
        "src",
        "fd00:10:244:1::99",
    ]);
    // Neighbour discovery needs the attacker's own link-local address,
    // tentative until its duplicate address detection is over.
    wait_for(
        "the attacker's link-local address",
        Duration::from_secs(10),
        || {
            ok(&[
                "ip",
                "-n",
                &evil,
                "-6",
                "addr",
                "show",
                "dev",
                "eth0",
                "tentative",
            ])
            .is_empty()
        },
    );
    let listen = |addr: &str| {
        let s = in_netns(&pb, || UdpSocket::bind(addr).unwrap());
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s
    };
    let (v4, v6) = (listen("10.244.2.2:7777"), listen("[fd00:10:244:2::2]:7778"));
    let spoof = |what: &[u8]| {
        udp_spray(&evil, "10.244.2.2:7777".parse().unwrap(), what);
        udp_spray(&evil, "[fd00:10:244:2::2]:7778".parse().unwrap(), what);
        [received(&v4), received(&v6)]
    };

    let got = spoof(b"SPOOFED-POD-SOURCE");
    assert_eq!(
        got,
        [Vec::<String>::new(), vec![]],
        "spoofed pod sources reached pod B"
    );

    // Negative control.
    c.signal_agent(1, nix::sys::signal::Signal::SIGSTOP);
    let removed = run(&[
        "ip",
        "netns",
        "exec",
        &b,
        "nft",
        "delete",
        "chain",
        "inet",
        "podguard",
        "prerouting",
    ]);
    let got = spoof(b"CONTROL");
    c.signal_agent(1, nix::sys::signal::Signal::SIGCONT);
    assert!(removed.status.success(), "{removed:?}");
    assert_eq!(
        got,
        [
            vec!["10.244.1.99".to_string()],
            vec!["fd00:10:244:1::99".to_string()]
        ],
        "without the chain the spoofed datagrams should arrive: the test sees nothing"
    );
}

/// The distinct source addresses of what `s` receives until it is quiet
/// for its read timeout.
fn received(s: &UdpSocket) -> Vec<String> {
    let mut from = std::collections::BTreeSet::new();
    let mut buf = [0u8; 2048];
    loop {
        match s.recv_from(&mut buf) {
            Ok((_, a)) => {
                from.insert(a.ip().to_string());
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return from.into_iter().collect(),
        }
    }
}

/// Cookie replies (type 3, 64 bytes) from node B to `to` in a capture.
fn cap_cookies(cap: &Capture, n: &mut Netns, to: &str) -> usize {
    let pcap = cap.stop(n);
    udp_payloads(&pcap)
        .iter()
        .filter(|(from, dst, p)| {
            from.to_string() == "192.0.2.2:51820"
                && dst.ip().to_string() == to
                && p.len() == 64
                && p[0] == 3
        })
        .count()
}
