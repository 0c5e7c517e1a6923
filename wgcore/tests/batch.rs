//! Batches sealed and opened with the crypto on several threads
//! (`seal_batch`, `open_batch`): every packet arrives once, in order, with
//! increasing counters on the wire; replays, forgeries and bad sources are
//! dropped inside a batch as they are one by one; the endpoint follows only
//! authenticated packets; a link without a session holds and handshakes.

mod sim;

use std::net::SocketAddr;

use sim::{Net, Reversed, Threads, Wire, handshaken, ip_packet, pod};
use wgcore::{Inline, Opened, Sealed, Workers};

fn payload(k: usize) -> Vec<u8> {
    let mut p = format!("packet {k:05} ").into_bytes();
    p.resize(1392, b'x');
    p
}

/// Node `i` seals `pkts` as one batch on `w`; the datagrams, split out of
/// the GSO runs, with where they go.
fn seal<W: Workers>(net: &Net, i: usize, pkts: &[Vec<u8>], w: &W) -> Vec<(SocketAddr, Vec<u8>)> {
    let refs: Vec<&[u8]> = pkts.iter().map(|p| p.as_slice()).collect();
    net.seal_batch(i, &refs, w)
}

/// Node `j` opens `dgrams` (with where each came from) as one batch on `w`.
fn open<W: Workers>(
    net: &mut Net,
    j: usize,
    dgrams: &[(SocketAddr, Vec<u8>)],
    w: &W,
) -> Vec<Opened> {
    let input: Vec<(&[u8], SocketAddr)> = dgrams.iter().map(|(f, d)| (d.as_slice(), *f)).collect();
    net.open_batch(j, &input, w)
}

fn counter(d: &[u8]) -> u64 {
    u64::from_le_bytes(d[8..16].try_into().expect("8 bytes"))
}

#[test]
fn a_batch_sealed_and_opened_on_four_threads_arrives_whole_and_in_order() {
    let mut net = handshaken();
    let from = net.nodes[0].addr;
    let (rx0, tx0) = (net.status(1, 0).rx_bytes, net.status(0, 1).tx_bytes);
    for round in 0..3 {
        let pkts: Vec<Vec<u8>> = (0..128)
            .map(|k| ip_packet(pod(0, 2), pod(1, 2), &payload(round * 128 + k)))
            .collect();
        let sealed = seal(&net, 0, &pkts, &Threads(4));
        assert_eq!(sealed.len(), 128);
        assert!(
            sealed
                .iter()
                .all(|(to, d)| *to == net.nodes[1].addr && d[0] == 4)
        );
        // Counters increase along the batch, as the packets came.
        assert!(
            sealed
                .windows(2)
                .all(|w| counter(&w[1].1) == counter(&w[0].1) + 1)
        );
        assert!(
            !sealed
                .iter()
                .any(|(_, d)| d.windows(12).any(|x| x == b"packet 00000"))
        );
        let dgrams: Vec<(SocketAddr, Vec<u8>)> =
            sealed.into_iter().map(|(_, d)| (from, d)).collect();
        let opened = open(&mut net, 1, &dgrams, &Threads(4));
        assert!(opened.iter().all(|o| matches!(o, Opened::Packet(_))));
    }
    let got: Vec<Vec<u8>> = net.nodes[1].delivered[1..]
        .iter()
        .map(|p| p[28..].to_vec())
        .collect();
    let want: Vec<Vec<u8>> = (0..384).map(payload).collect();
    assert_eq!(got, want);
    // The peers' counters saw every datagram, on both sides.
    let rx = net.status(1, 0).rx_bytes - rx0;
    assert_eq!(rx, net.status(0, 1).tx_bytes - tx0);
    assert_eq!(rx, 384 * (28 + 1392 + 32));
}

#[test]
fn one_worker_and_many_give_the_same_packets() {
    let mut net = handshaken();
    let from = net.nodes[0].addr;
    let pkts: Vec<Vec<u8>> = (0..64)
        .map(|k| ip_packet(pod(0, 2), pod(1, 2), &payload(k)))
        .collect();
    let a = seal(&net, 0, &pkts, &Inline);
    let b = seal(&net, 0, &pkts, &Threads(3));
    let all: Vec<(SocketAddr, Vec<u8>)> = a.into_iter().chain(b).map(|(_, d)| (from, d)).collect();
    open(&mut net, 1, &all, &Threads(3));
    assert_eq!(net.nodes[1].delivered.len(), 1 + 128);
    for k in 0..64 {
        assert_eq!(net.got(1, &payload(k)), 2);
    }
}

#[test]
fn opening_in_place_and_into_other_buffers_give_the_same_packets() {
    let pkts: Vec<Vec<u8>> = (0..64)
        .map(|k| ip_packet(pod(0, 2), pod(1, 2), &payload(k)))
        .collect();
    let mut got = Vec::new();
    for copying in [false, true] {
        let mut net = handshaken();
        let from = net.nodes[0].addr;
        let mut sealed: Vec<(SocketAddr, Vec<u8>)> = seal(&net, 0, &pkts, &Threads(2))
            .into_iter()
            .map(|(_, d)| (from, d))
            .collect();
        // A forgery and a replay inside the batch.
        sealed[10].1[40] ^= 1;
        sealed.push(sealed[20].clone());
        let input: Vec<(&[u8], SocketAddr)> =
            sealed.iter().map(|(f, d)| (d.as_slice(), *f)).collect();
        got.push(if copying {
            net.open_batch_copying(1, &input, &Threads(2))
        } else {
            open(&mut net, 1, &sealed, &Threads(2));
            net.nodes[1].delivered[1..].to_vec()
        });
    }
    assert_eq!(got[0].len(), 63, "64 sealed, one forged, one replayed");
    assert_eq!(got[0], got[1]);
    assert_eq!(got[0][0], pkts[0]);
}

#[test]
fn an_opened_packet_shorter_than_its_header_is_dropped_alone() {
    // An IPv4 header saying "total length 0": authentic, but no packet.
    // It once reached the TUN as an empty write, which tun-rs refused
    // together with every packet written with it.
    let mut net = handshaken();
    let from = net.nodes[0].addr;
    let mut bad = ip_packet(pod(0, 2), pod(1, 2), &payload(1));
    bad[2..4].fill(0);
    let pkts = vec![
        ip_packet(pod(0, 2), pod(1, 2), &payload(0)),
        bad,
        ip_packet(pod(0, 2), pod(1, 2), &payload(2)),
    ];
    let sealed: Vec<(SocketAddr, Vec<u8>)> = seal(&net, 0, &pkts, &Inline)
        .into_iter()
        .map(|(_, d)| (from, d))
        .collect();
    assert_eq!(sealed.len(), 3);
    let opened = open(&mut net, 1, &sealed, &Inline);
    assert!(matches!(
        opened[..],
        [Opened::Packet(_), Opened::Nothing, Opened::Packet(_)]
    ));
    assert_eq!(net.got(1, &payload(0)), 1);
    assert_eq!(net.got(1, &payload(2)), 1);
    assert!(net.nodes[1].delivered.iter().all(|p| p.len() >= 20));
}

#[test]
fn replays_forgeries_and_bad_sources_inside_a_batch_are_dropped() {
    let mut net = handshaken();
    let from = net.nodes[0].addr;
    let attacker: SocketAddr = "198.51.100.66:40000".parse().expect("address");
    let good: Vec<Vec<u8>> = (0..8)
        .map(|k| ip_packet(pod(0, 2), pod(1, 2), &payload(k)))
        .collect();
    // A pod of node 0 claiming a source in node 1's own pod range.
    let spoofed = ip_packet(pod(1, 9), pod(1, 2), b"spoofed source");
    let mut pkts = good.clone();
    pkts.push(spoofed);
    let sealed = seal(&net, 0, &pkts, &Threads(2));
    let mut dgrams: Vec<(SocketAddr, Vec<u8>)> =
        sealed.iter().map(|(_, d)| (from, d.clone())).collect();
    // The same datagram twice, once from the attacker: opens once.
    dgrams.push((attacker, sealed[3].1.clone()));
    // A forgery from the attacker: a real header, a flipped tag byte.
    let mut forged = sealed[4].1.clone();
    *forged.last_mut().expect("a tag") ^= 1;
    dgrams.insert(0, (attacker, forged));
    let invalid = net.drop_count(1, "invalid");
    let bad_source = net.drop_count(1, "bad_source");
    let opened = open(&mut net, 1, &dgrams, &Threads(2));
    let packets = opened
        .iter()
        .filter(|o| matches!(o, Opened::Packet(_)))
        .count();
    assert_eq!(packets, 8);
    assert_eq!(net.drop_count(1, "invalid") - invalid, 2);
    assert_eq!(net.drop_count(1, "bad_source") - bad_source, 1);
    // Neither the replay nor the forgery moved the endpoint.
    assert_eq!(net.endpoint(1, 0), Some(from));
    for k in 0..8 {
        assert_eq!(net.got(1, &payload(k)), 1);
    }
}

#[test]
fn the_endpoint_roams_with_an_authenticated_batch() {
    let mut net = handshaken();
    let moved: SocketAddr = "192.0.2.99:51000".parse().expect("address");
    let pkts: Vec<Vec<u8>> = (0..4)
        .map(|k| ip_packet(pod(0, 2), pod(1, 2), &payload(k)))
        .collect();
    let dgrams: Vec<(SocketAddr, Vec<u8>)> = seal(&net, 0, &pkts, &Threads(2))
        .into_iter()
        .map(|(_, d)| (moved, d))
        .collect();
    open(&mut net, 1, &dgrams, &Threads(2));
    assert_eq!(net.endpoint(1, 0), Some(moved));
}

#[test]
fn without_a_session_a_batch_holds_and_handshakes_then_delivers() {
    let mut net = sim::Net::mesh(2);
    let pkts: Vec<Vec<u8>> = (0..5)
        .map(|k| ip_packet(pod(0, 2), pod(1, 2), &payload(k)))
        .collect();
    let sealed = seal(&net, 0, &pkts, &Threads(2));
    // One initiation in the batch's output, the rest held (paced).
    assert_eq!(sealed.len(), 1);
    assert_eq!(sealed[0].1[0], 1);
    let from = net.nodes[0].addr;
    for (to, bytes) in sealed {
        net.push(Wire { from, to, bytes });
    }
    net.drive();
    for k in 0..5 {
        assert_eq!(net.got(1, &payload(k)), 1, "packet {k}");
    }
}

#[test]
fn handshake_messages_in_a_batch_take_the_one_by_one_path() {
    let mut net = sim::Net::mesh(2);
    let init = ip_packet(pod(0, 2), pod(1, 2), b"hello");
    assert_eq!(net.send(0, &init), Sealed::Datagram(148));
    let w = net.log.last().expect("an initiation").clone();
    let opened = open(&mut net, 1, &[(w.from, w.bytes)], &Threads(2));
    assert_eq!(opened, vec![Opened::Nothing]);
    // Node 1 answered it.
    let mut t = Vec::new();
    net.nodes[1].core.drain_transmits(&mut t);
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].bytes[0], 2);
}

#[test]
fn a_later_copy_from_elsewhere_never_wins_however_the_threads_race() {
    let mut net = handshaken();
    let from = net.nodes[0].addr;
    let attacker: SocketAddr = "198.51.100.66:40000".parse().expect("address");
    for round in 0..20 {
        let pkts: Vec<Vec<u8>> = (0..16)
            .map(|k| ip_packet(pod(0, 2), pod(1, 2), &payload(round * 16 + k)))
            .collect();
        let sealed = seal(&net, 0, &pkts, &Threads(2));
        let mut dgrams: Vec<(SocketAddr, Vec<u8>)> =
            sealed.iter().map(|(_, d)| (from, d.clone())).collect();
        // The original of packet 8 is the last job of the first thread, the
        // attacker's copy the first job of the second: the copy is nearly
        // always decrypted first. Arrival order must decide, not that.
        dgrams.insert(9, (attacker, sealed[8].1.clone()));
        let opened = open(&mut net, 1, &dgrams, &Threads(2));
        assert!(matches!(opened[8], Opened::Packet(_)), "round {round}");
        assert_eq!(opened[9], Opened::Nothing, "round {round}");
        assert_eq!(net.endpoint(1, 0), Some(from), "round {round}");
        for k in 0..16 {
            assert_eq!(net.got(1, &payload(round * 16 + k)), 1, "round {round}");
        }
    }
}

#[test]
fn a_later_copy_decrypted_first_still_loses() {
    // The race of the test above, forced: jobs run last first, so the
    // attacker's copy (arriving second) is always decrypted before the
    // genuine one. Arrival order still decides which is taken.
    let mut net = handshaken();
    let from = net.nodes[0].addr;
    let attacker: SocketAddr = "198.51.100.66:40000".parse().expect("address");
    let pkts: Vec<Vec<u8>> = (0..4)
        .map(|k| ip_packet(pod(0, 2), pod(1, 2), &payload(k)))
        .collect();
    let sealed = seal(&net, 0, &pkts, &Inline);
    let mut dgrams: Vec<(SocketAddr, Vec<u8>)> =
        sealed.iter().map(|(_, d)| (from, d.clone())).collect();
    dgrams.insert(2, (attacker, sealed[1].1.clone()));
    let opened = open(&mut net, 1, &dgrams, &Reversed);
    assert!(matches!(opened[1], Opened::Packet(_)));
    assert_eq!(opened[2], Opened::Nothing);
    assert_eq!(net.endpoint(1, 0), Some(from));
    for k in 0..4 {
        assert_eq!(net.got(1, &payload(k)), 1);
    }
}

#[test]
fn sealing_in_place_and_by_copy_give_the_same_runs() {
    // Two peers; runs end at a shorter datagram, at a change of peer, at
    // 64 datagrams; a longer datagram after a shorter one starts a run.
    let mut net = Net::mesh(3);
    for j in [1, 2] {
        assert_eq!(net.send_pod(0, j, b"hello"), Sealed::Datagram(148));
        net.drive();
    }
    let (full, short, small) = (1392, 300, 100);
    let mut plan: Vec<(usize, usize)> = Vec::new();
    plan.extend([(1, full); 10]);
    plan.push((1, short));
    plan.extend([(1, full); 2]);
    plan.extend([(2, full); 7]);
    plan.push((2, short));
    plan.extend([(2, full); 7]);
    plan.extend([(1, small); 70]);
    plan.extend([(1, full); 2]);
    let pkts: Vec<Vec<u8>> = plan
        .iter()
        .enumerate()
        .map(|(k, &(j, size))| {
            let mut p = payload(k);
            p.truncate(size);
            ip_packet(pod(0, 2), pod(j, 2), &p)
        })
        .collect();
    let refs: Vec<&[u8]> = pkts.iter().map(|p| p.as_slice()).collect();
    let in_place = net.seal_runs(0, &refs, &Threads(2), true);
    let copied = net.seal_runs(0, &refs, &Threads(2), false);
    let shape = |runs: &[sim::Run]| -> Vec<(SocketAddr, usize, Vec<usize>)> {
        runs.iter()
            .map(|r| (r.to, r.seg, r.dgrams.iter().map(|d| d.len()).collect()))
            .collect()
    };
    assert_eq!(shape(&in_place), shape(&copied));
    let (a1, a2) = (net.nodes[1].addr, net.nodes[2].addr);
    let lens = |n: usize, len: usize| vec![len + 32; n];
    assert_eq!(
        shape(&in_place),
        vec![
            (
                a1,
                full + 28 + 32,
                [lens(10, full + 28), lens(1, short + 28)].concat()
            ),
            (a1, full + 28 + 32, lens(2, full + 28)),
            (
                a2,
                full + 28 + 32,
                [lens(7, full + 28), lens(1, short + 28)].concat()
            ),
            (a2, full + 28 + 32, lens(7, full + 28)),
            (a1, small + 28 + 32, lens(64, small + 28)),
            (a1, small + 28 + 32, lens(6, small + 28)),
            (a1, full + 28 + 32, lens(2, full + 28)),
        ]
    );
    // Both open, in order, at the right peer.
    let from = net.nodes[0].addr;
    for runs in [in_place, copied] {
        let sealed = sim::flatten(runs);
        for j in [1, 2] {
            let mine: Vec<(SocketAddr, Vec<u8>)> = sealed
                .iter()
                .filter(|(to, _)| *to == net.nodes[j].addr)
                .map(|(_, d)| (from, d.clone()))
                .collect();
            let opened = open(&mut net, j, &mine, &Threads(2));
            assert!(opened.iter().all(|o| matches!(o, Opened::Packet(_))));
        }
    }
    for j in [1, 2] {
        let want: Vec<&Vec<u8>> = pkts
            .iter()
            .filter(|p| p[16..20] == pod(j, 2).octets())
            .collect();
        let got = &net.nodes[j].delivered[1..];
        assert_eq!(got.len(), 2 * want.len());
        let (a, b) = got.split_at(want.len());
        assert!(a.iter().zip(&want).all(|(g, w)| g == *w));
        assert!(b.iter().zip(&want).all(|(g, w)| g == *w));
    }
}

#[test]
fn a_packet_that_exactly_fills_its_slot_is_sealed_one_byte_more_is_dropped() {
    let mut net = handshaken();
    let stride = wgcore::slot_len(0);
    let fits = stride - wgcore::SEAL_OVERHEAD;
    let pkts = [
        ip_packet(pod(0, 2), pod(1, 2), &vec![b'f'; fits - 28]),
        ip_packet(pod(0, 2), pod(1, 2), &vec![b'g'; fits + 1 - 28]),
    ];
    let mut buf = sim::slotted(&pkts, stride);
    let lens = [pkts[0].len(), pkts[1].len()];
    let invalid = net.drop_count(0, "invalid");
    let (dgrams, _) = net.seal_slots(0, &mut buf, stride, &lens, &Inline);
    assert_eq!(net.drop_count(0, "invalid") - invalid, 1);
    assert_eq!(dgrams, vec![0..fits + 32]);
    let from = net.nodes[0].addr;
    let sealed = vec![(from, buf[dgrams[0].clone()].to_vec())];
    open(&mut net, 1, &sealed, &Inline);
    assert_eq!(net.nodes[1].delivered.last(), Some(&pkts[0]));
}

#[test]
fn a_packet_too_long_for_its_slot_is_dropped_alone() {
    let mut net = handshaken();
    let short = ip_packet(pod(0, 2), pod(1, 2), b"short");
    let stride = wgcore::slot_len(short.len());
    let mut buf = sim::slotted(&[&short, &short, &short], stride);
    // Slot 1 claims more than its slot holds; a fourth packet has no slot.
    let lens = [short.len(), stride, short.len(), short.len()];
    let invalid = net.drop_count(0, "invalid");
    let (dgrams, runs) = net.seal_slots(0, &mut buf, stride, &lens, &Inline);
    assert_eq!(net.drop_count(0, "invalid") - invalid, 2);
    assert_eq!(
        dgrams,
        vec![
            0..short.len() + 32,
            2 * stride..2 * stride + short.len() + 32
        ]
    );
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].range, 0..2);
    let from = net.nodes[0].addr;
    let sealed: Vec<(SocketAddr, Vec<u8>)> = dgrams
        .iter()
        .map(|d| (from, buf[d.clone()].to_vec()))
        .collect();
    let opened = open(&mut net, 1, &sealed, &Inline);
    assert_eq!(opened.len(), 2);
    assert_eq!(net.got(1, b"short"), 2);
}

mod in_place_props {
    use super::*;
    use proptest::prelude::*;

    /// A packet of the batch: to peer 1, to peer 2, to nobody, or bytes
    /// that are no IP packet; with a payload length.
    fn packet() -> impl Strategy<Value = (u8, usize)> {
        (0u8..4, 0usize..1500)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Whatever the batch (sizes, destinations, garbage, slots too
        /// small for some packets): no panic, the runs keep UDP_SEGMENT's
        /// rules (checked in `seal_runs`), and every packet that fits and
        /// has a route arrives at its peer once, in order.
        #[test]
        fn any_batch_sealed_in_place_arrives_whole_and_in_order(
            plan in proptest::collection::vec(packet(), 1..120),
            small_slots in any::<bool>(),
        ) {
            let mut net = Net::mesh(3);
            for j in [1, 2] {
                prop_assert_eq!(net.send_pod(0, j, b"hello"), Sealed::Datagram(148));
                net.drive();
            }
            let pkts: Vec<Vec<u8>> = plan
                .iter()
                .enumerate()
                .map(|(k, &(to, len))| {
                    let mut p = payload(k);
                    p.resize(len.max(12), b'y');
                    match to {
                        0 | 1 => ip_packet(pod(0, 2), pod(to as usize + 1, 2), &p),
                        2 => ip_packet(pod(0, 2), std::net::Ipv4Addr::new(203, 0, 113, 9), &p),
                        _ => p,
                    }
                })
                .collect();
            // Slots for the largest packet, or for 700 bytes only.
            let max = pkts.iter().map(|p| p.len()).max().unwrap_or(0);
            let stride = wgcore::slot_len(if small_slots { 700 } else { max });
            let mut buf = sim::slotted(&pkts, stride);
            let lens: Vec<usize> = pkts.iter().map(|p| p.len()).collect();
            let (dgrams, runs) = net.seal_slots(0, &mut buf, stride, &lens, &Threads(2));
            let mut next = 0;
            let from = net.nodes[0].addr;
            let mut to_peer: [Vec<(SocketAddr, Vec<u8>)>; 3] = Default::default();
            for r in &runs {
                prop_assert_eq!(r.range.start, next);
                next = r.range.end;
                let run = &dgrams[r.range.clone()];
                prop_assert!(!run.is_empty() && run.len() <= wgcore::gso::MAX_GSO_SEGMENTS);
                let (last, full) = run.split_last().expect("not empty");
                prop_assert!(full.iter().all(|d| d.len() == r.seg) && last.len() <= r.seg);
                prop_assert!(run.iter().map(|d| d.len()).sum::<usize>() <= wgcore::gso::MAX_GSO_BYTES);
                let j = (1..3).find(|&j| net.nodes[j].addr == r.to).expect("a peer");
                to_peer[j].extend(run.iter().map(|d| (from, buf[d.clone()].to_vec())));
            }
            prop_assert_eq!(next, dgrams.len());
            for j in [1, 2] {
                let want: Vec<&Vec<u8>> = pkts
                    .iter()
                    .filter(|p| {
                        wgcore::slot_len(p.len()) <= stride
                            && p.len() >= 20
                            && p[0] == 0x45
                            && p[16..20] == pod(j, 2).octets()
                    })
                    .collect();
                let opened = open(&mut net, j, &to_peer[j], &Inline);
                prop_assert!(opened.iter().all(|o| matches!(o, Opened::Packet(_))));
                prop_assert_eq!(&net.nodes[j].delivered[1..], &want.into_iter().cloned().collect::<Vec<_>>()[..]);
            }
        }
    }
}
