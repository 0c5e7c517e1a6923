//! Reading what a capture saw: UDP payloads of an Ethernet pcap, and a
//! genuine handshake initiation recorded between two nodes.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use super::twonode::TwoNode;
use super::{pings, start_capture, wait_for};

/// UDP payloads in an Ethernet pcap: (src, dst, payload).
pub fn udp_payloads(pcap: &[u8]) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let incl = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
        let frame = &pcap[at + 16..(at + 16 + incl).min(pcap.len())];
        at += 16 + incl;
        if frame.len() < 42 || frame[12..14] != [0x08, 0x00] || frame[23] != 17 {
            continue;
        }
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let udp = &ip[ihl..];
        let addr = |a: &[u8], p: &[u8]| {
            SocketAddr::from(([a[0], a[1], a[2], a[3]], u16::from_be_bytes([p[0], p[1]])))
        };
        out.push((
            addr(&ip[12..16], &udp[0..2]),
            addr(&ip[16..20], &udp[2..4]),
            udp[8..].to_vec(),
        ));
    }
    out
}

/// Record a genuine handshake initiation from node A to node B: drop A's
/// peer B (the agent puts it back), ping again, capture the underlay.
pub fn capture_initiation(c: &mut TwoNode) -> Vec<u8> {
    let ul = c.ul.clone();
    let key_b = c.nodes[1].public_key.clone();
    let (pa, b4) = (c.nodes[0].pod_ns.clone(), c.nodes[1].pod_ip4());
    let cap = start_capture(&mut c.n, &ul, "br0", "init");
    let o = c.wg(0, &["set", "podguard0", "peer", &key_b, "remove"]);
    assert!(o.status.success());
    wait_for("a new handshake A -> B", Duration::from_secs(15), || {
        pings(&pa, &b4)
    });
    let pcap = cap.stop(&mut c.n);
    udp_payloads(&pcap)
        .into_iter()
        .find(|(_, to, p)| to.port() == 51820 && p.len() == 148 && p[0] == 1)
        .map(|(_, _, p)| p)
        .expect("a captured handshake initiation")
}
