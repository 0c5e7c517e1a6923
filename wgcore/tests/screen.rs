//! The handshake path's order and what may move an endpoint, each case
//! as an attacker on the underlay would try it (SECURITY.md): a fresh
//! initiation with a bad mac1, a cookie reply from another address, a
//! response from a new address, and valid-mac2 initiations over one
//! source's limit. No root, no sockets, simulated time.

mod sim;

use std::net::SocketAddr;
use std::time::Duration;

use sim::{Net, Wire};
use wgcore::{Sealed, Transmit};

fn attacker() -> SocketAddr {
    "198.51.100.66:40000".parse().expect("address")
}

/// A mesh of two whose node 0 has sent one initiation that nobody has
/// received yet; returns it.
fn held_initiation() -> (Net, Wire) {
    let mut net = Net::mesh(2);
    net.link_up = false;
    assert_eq!(net.send_pod(0, 1, b"hello"), Sealed::Datagram(148));
    net.link_up = true;
    let init = net.log.last().expect("an initiation").clone();
    assert_eq!(init.bytes[0], 1);
    (net, init)
}

/// `copies` of `bytes` sent to node 1 from the attacker's address.
fn flood(net: &mut Net, bytes: &[u8], copies: usize) {
    for _ in 0..copies {
        net.push(Wire {
            from: attacker(),
            to: net.nodes[1].addr,
            bytes: bytes.to_vec(),
        });
    }
    net.drive();
}

/// The first datagram of WireGuard message type `t` among `wires`.
fn first_of_type(wires: &[Wire], t: u8) -> Vec<u8> {
    wires
        .iter()
        .find(|w| w.bytes[0] == t)
        .unwrap_or_else(|| panic!("no message of type {t}"))
        .bytes
        .clone()
}

/// Deliver `bytes` to node `i` as if sent from `from`.
fn deliver(net: &mut Net, from: SocketAddr, i: usize, bytes: Vec<u8>) {
    let to = net.nodes[i].addr;
    net.push(Wire { from, to, bytes });
    net.drive();
}

#[test]
fn a_fresh_initiation_with_a_bad_mac1_is_dropped_and_changes_nothing() {
    let (mut net, init) = held_initiation();
    // Never seen before (not a replay), valid in every other part.
    let mut bad = init.clone();
    bad.bytes[120] ^= 0xff; // mac1: bytes 116..132
    net.push(bad);
    net.drive();
    assert_eq!(net.sent_of_type(1, 2), 0, "a bad mac1 was answered");
    assert_eq!(net.drop_count(1, "invalid"), 1);
    // Dropped on its mac1, before its X25519 computation (which boringtun
    // would follow with a mac1 check of its own: the answer alone cannot
    // tell the order).
    assert_eq!(net.nodes[1].core.initiations_read(), 0);
    // The genuine initiation afterwards is answered: the bad copy left no
    // trace (its timestamp was never taken as the newest).
    net.push(init);
    net.drive();
    assert_eq!(net.sent_of_type(1, 2), 1);
    assert_eq!(net.got(1, b"hello"), 1);
    assert_eq!(net.nodes[1].core.initiations_read(), 1);
}

#[test]
fn a_valid_cookie_reply_from_another_address_never_moves_the_endpoint() {
    let (mut net, init) = held_initiation();
    net.push(init.clone());
    net.drive();
    assert_eq!(net.endpoint(0, 1), Some(net.nodes[1].addr));
    // Under load, node 1 answers copies of node 0's initiation with cookie
    // replies (to the attacker, who sent them). Each is genuine for node
    // 0: it is sealed to the mac1 node 0 last sent.
    flood(&mut net, &init.bytes, 300);
    let cookie = first_of_type(&net.unclaimed, 3);
    let invalid = net.drop_count(0, "invalid");
    deliver(&mut net, attacker(), 0, cookie);
    assert_eq!(
        net.drop_count(0, "invalid"),
        invalid,
        "the cookie was refused"
    );
    assert_eq!(net.endpoint(0, 1), Some(net.nodes[1].addr));
    net.send_pod(0, 1, b"still to node 1");
    net.drive();
    assert_eq!(net.got(1, b"still to node 1"), 1);
}

#[test]
fn a_response_moves_the_endpoint_and_a_replayed_one_does_not() {
    let (mut net, init) = held_initiation();
    // Node 1 answers from a new address (it moved, or a NAT rebound it):
    // the response authenticates, so node 0 follows it.
    let moved: SocketAddr = "192.0.2.77:51820".parse().expect("address");
    net.nodes[1].addr = moved;
    net.push(Wire {
        from: init.from,
        to: moved,
        bytes: init.bytes,
    });
    net.drive();
    assert_eq!(net.endpoint(0, 1), Some(moved));
    assert_eq!(net.got(1, b"hello"), 1);
    // The same response again, from the attacker: its handshake is done,
    // so it authenticates nothing and moves nothing.
    let response = first_of_type(&net.log, 2);
    let invalid = net.drop_count(0, "invalid");
    deliver(&mut net, attacker(), 0, response);
    assert_eq!(net.drop_count(0, "invalid"), invalid + 1);
    assert_eq!(net.endpoint(0, 1), Some(moved));
}

#[test]
fn under_load_a_valid_mac2_buys_one_source_a_burst_of_5_and_no_more() {
    let (mut net, init) = held_initiation();
    // The flood puts node 1 under load; its cookie replies go to the
    // attacker, for the attacker's address.
    flood(&mut net, &init.bytes, 300);
    let cookie = first_of_type(&net.unclaimed, 3);
    // Node 0 takes the cookie and, retrying its handshake about 5 s later
    // (its timers only: node 1's do not run, so it stays under load), sends an initiation whose mac2
    // is valid from the attacker's address.
    let from = net.nodes[1].addr;
    deliver(&mut net, from, 0, cookie);
    let mut retry = None;
    for ms in (100..=7_000).step_by(100) {
        let mut out = Vec::new();
        net.nodes[0]
            .core
            .handle_timeout(net.now + Duration::from_millis(ms));
        net.nodes[0].core.drain_transmits(&mut out);
        retry = out
            .into_iter()
            .find_map(|Transmit { bytes, .. }| (bytes[0] == 1).then_some(bytes));
        if retry.is_some() {
            break;
        }
    }
    let retry = retry.expect("node 0 retried its handshake");
    assert!(retry[132..148].iter().any(|b| *b != 0), "no mac2");
    let limited = net.drop_count(1, "source_limited");
    let cookies = net.drop_count(1, "under_load");
    // mac2 passes the load check (no cookie reply), then the source's
    // bucket lets 5 through to the DH and refuses the other 35.
    let read = net.nodes[1].core.initiations_read();
    flood(&mut net, &retry, 40);
    assert_eq!(net.drop_count(1, "under_load"), cookies);
    assert_eq!(net.drop_count(1, "source_limited"), limited + 35);
    assert_eq!(net.nodes[1].core.initiations_read(), read + 5);
}
