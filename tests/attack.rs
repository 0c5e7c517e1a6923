//! An attacker on the underlay, with nothing but the datagrams it can see:
//! a genuine handshake initiation replayed from another address, fast
//! enough to put the device under load, must never move the peer's
//! endpoint (before, the cookie reply sent under load counted as
//! authentication and the endpoint followed the attacker), and the load
//! state must end with the flood (the rate limiter was never reset).

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
