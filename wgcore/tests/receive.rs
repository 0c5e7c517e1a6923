//! One UDP receive batch through the core, the way the device's inbound
//! driver hands it over (`Core::split_received`, then `RxBatch::open`): the
//! receive slots as UDP GRO fills them (up to 64 equal datagrams of one
//! sender, with no regard for where the peer's GSO sends began), the TUN
//! writes planned over the whole batch.
//!
//! The bug these hold: the driver once opened and planned each batch in
//! slices of 128 datagrams, and every third 44-segment super-packet of a
//! single stream crossed a slice boundary and went to the TUN as two
//! writes, so the pod's TCP sent an extra ACK back through both tunnels
//! (bench/README.md, "Session 16").

mod sim;

use std::net::SocketAddr;

use proptest::prelude::*;
use sim::{Net, Threads, handshaken, pod};
use wgcore::gro::{self, Write};
use wgcore::{Inline, RxBatch, Slot, Workers};

/// Segments in one of the sending kernel's 64 KB super-packets at MSS 1388
/// (the pods' MSS at tunnel MTU 1440).
const SEGMENTS: usize = 44;
const MSS: usize = 1388;

/// A TCP segment of one flow from pod 0.2 to pod 1.2 (IPv4 with DF, flags
/// ACK, or ACK|PSH): what a TSO super-packet is cut into.
fn tcp_segment(seq: u32, psh: bool) -> Vec<u8> {
    let total = 40 + MSS;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&pod(0, 2).octets());
    p[16..20].copy_from_slice(&pod(1, 2).octets());
    p[20..22].copy_from_slice(&40_000u16.to_be_bytes());
    p[22..24].copy_from_slice(&5201u16.to_be_bytes());
    p[24..28].copy_from_slice(&seq.to_be_bytes());
    p[28..32].copy_from_slice(&1u32.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = if psh { 0x18 } else { 0x10 };
    p[34..36].copy_from_slice(&64_000u16.to_be_bytes());
    for (k, b) in p[40..].iter_mut().enumerate() {
        *b = (seq as usize + k) as u8;
    }
    p
}

/// `n` super-packets of one stream, segmented: PSH on each one's last.
fn stream(n: usize) -> Vec<Vec<u8>> {
    (0..n * SEGMENTS)
        .map(|k| tcp_segment((k * MSS) as u32, k % SEGMENTS == SEGMENTS - 1))
        .collect()
}

/// Node 0 seals `pkts` the device's way; the datagrams as they reach node
/// 1, with where from.
fn sealed(net: &Net, pkts: &[Vec<u8>]) -> (Vec<Vec<u8>>, SocketAddr) {
    let refs: Vec<&[u8]> = pkts.iter().map(|p| p.as_slice()).collect();
    let out = net.seal_batch(0, &refs, &Inline);
    assert_eq!(out.len(), pkts.len(), "every segment sealed");
    let from = net.nodes[0].addr;
    (out.into_iter().map(|(_, d)| d).collect(), from)
}

/// Most datagrams UDP GRO puts in one receive slot.
const GRO_SLOT: usize = 64;

/// The datagrams cut into receive slots at `cuts` (datagram indices) and
/// wherever a slot would pass [`GRO_SLOT`] datagrams, as UDP GRO delivers
/// them: each slot its datagrams back to back, with the segment size.
fn slots_at(dgrams: &[Vec<u8>], cuts: &[usize]) -> Vec<(Vec<u8>, Option<usize>)> {
    let mut bounds: Vec<usize> = cuts.iter().copied().filter(|c| *c < dgrams.len()).collect();
    bounds.extend((0..=dgrams.len()).step_by(GRO_SLOT));
    bounds.push(dgrams.len());
    bounds.sort_unstable();
    bounds.dedup();
    bounds
        .windows(2)
        .flat_map(|w| dgrams[w[0]..w[1]].chunks(GRO_SLOT))
        .map(|part| (part.concat(), (part.len() > 1).then(|| part[0].len())))
        .collect()
}

/// Node 1 receives `slots` as one batch on `w`: the TUN writes, and the
/// opened packets, in order.
fn receive<W: Workers>(
    net: &Net,
    slots: &mut [(Vec<u8>, Option<usize>)],
    from: SocketAddr,
    w: &W,
) -> (Vec<Write>, Vec<Vec<u8>>) {
    let core = &net.nodes[1].core;
    let (mut data, mut hs) = (Vec::new(), Vec::new());
    let slots = slots.iter_mut().map(|(b, seg)| Slot {
        bytes: b.as_mut_slice(),
        seg: *seg,
        from,
    });
    core.split_received(slots, &mut data, &mut hs);
    assert!(hs.is_empty(), "no handshake messages");
    let mut rx = RxBatch::new(0, true);
    let pkts = rx.open(core, &mut data, w, net.now);
    let pkts = pkts.into_iter().map(|p| p.to_vec()).collect();
    (rx.writes().to_vec(), pkts)
}

/// The writes of `pkts` planned as one list, with nothing in between.
fn planned_at_once(pkts: &[Vec<u8>]) -> Vec<Write> {
    let views: Vec<&[u8]> = pkts.iter().map(|p| p.as_slice()).collect();
    let mut out = Vec::new();
    gro::plan(&views, &mut out);
    out
}

/// Each write as (first packet, packet count, coalesced?).
fn shape(writes: &[Write]) -> Vec<(usize, usize, bool)> {
    writes
        .iter()
        .map(|w| match w {
            Write::Super { first, count, .. } => (*first, *count, true),
            Write::Other(r) => (r.start, r.len(), false),
        })
        .collect()
}

#[test]
fn three_super_packets_in_udp_gro_slots_are_three_tun_writes() {
    let net = handshaken();
    let pkts = stream(3);
    let (dgrams, from) = sealed(&net, &pkts);
    // All 132 datagrams are the same size, so UDP GRO fills slots of 64:
    // the second super-packet straddles the first two slots, and a slice
    // of 128 datagrams would cut the third.
    let mut slots = slots_at(&dgrams, &[64, 128]);
    assert_eq!(slots.len(), 3);
    let (writes, opened) = receive(&net, &mut slots, from, &Threads(2));
    assert_eq!(opened, pkts, "every segment opened, in order");
    assert_eq!(
        shape(&writes),
        vec![(0, 44, true), (44, 44, true), (88, 44, true)],
        "one TUN write per super-packet"
    );
    assert_eq!(writes, planned_at_once(&pkts), "headers as for one list");
}

#[test]
fn a_full_receive_batch_of_1012_datagrams_is_one_write_per_super_packet() {
    // The driver's largest batch: 16 slots of up to 64 datagrams. 23
    // super-packets fill 1,012 of them: any cut of the batch into slices
    // (of 128, 256, 512 datagrams) falls inside one.
    let net = handshaken();
    let pkts = stream(23);
    let (dgrams, from) = sealed(&net, &pkts);
    let mut slots = slots_at(&dgrams, &[]);
    assert_eq!(slots.len(), 16);
    let (writes, opened) = receive(&net, &mut slots, from, &Threads(2));
    assert_eq!(opened.len(), pkts.len());
    assert!(opened == pkts, "every segment opened, in order");
    let want: Vec<(usize, usize, bool)> = (0..23).map(|k| (k * SEGMENTS, SEGMENTS, true)).collect();
    assert_eq!(shape(&writes), want);
    assert_eq!(writes, planned_at_once(&pkts));
}

#[test]
fn handshake_messages_are_sorted_out_in_order_and_odd_sizes_counted() {
    let net = handshaken();
    let core = &net.nodes[1].core;
    let (a, b) = (net.nodes[0].addr, sim::underlay(7));
    // Two initiations coalesced by UDP GRO (a flood looks like this), a
    // response, a cookie reply, an initiation one byte long, data, and a
    // GRO slot of data with a short last datagram.
    let mut inits = [vec![1u8; 148], vec![1u8; 148]].concat();
    let mut resp = vec![2u8; 92];
    let mut cookie = vec![3u8; 64];
    let mut long_init = vec![1u8; 149];
    let mut data = vec![4u8; 100];
    let mut gro = [vec![4u8; 64], vec![4u8; 64], vec![4u8; 10]].concat();
    let slots = [
        Slot {
            bytes: &mut inits,
            seg: Some(148),
            from: a,
        },
        Slot {
            bytes: &mut data,
            seg: None,
            from: b,
        },
        Slot {
            bytes: &mut resp,
            seg: None,
            from: b,
        },
        Slot {
            bytes: &mut long_init,
            seg: None,
            from: a,
        },
        Slot {
            bytes: &mut cookie,
            seg: None,
            from: a,
        },
        Slot {
            bytes: &mut gro,
            seg: Some(64),
            from: a,
        },
    ];
    let before = net.drop_count(1, "invalid");
    let (mut d, mut hs) = (Vec::new(), Vec::new());
    core.split_received(slots, &mut d, &mut hs);
    let got = |v: &[(&mut [u8], SocketAddr)]| -> Vec<(u8, usize, SocketAddr)> {
        v.iter().map(|(x, f)| (x[0], x.len(), *f)).collect()
    };
    assert_eq!(
        got(&hs),
        vec![(1, 148, a), (1, 148, a), (2, 92, b), (3, 64, a)],
        "each handshake message with its sender, in arrival order"
    );
    assert_eq!(
        got(&d),
        vec![(4, 100, b), (4, 64, a), (4, 64, a), (4, 10, a)],
        "a GRO slot cut at its segment size"
    );
    assert_eq!(net.drop_count(1, "invalid"), before + 1, "the 149-byte one");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// However the kernel cuts the datagrams into receive slots (of at
    /// most 64), the batch goes to the TUN as the writes of the whole
    /// stream planned at once: one per super-packet.
    #[test]
    fn the_writes_do_not_depend_on_where_the_slots_end(
        (n, cuts) in (1usize..=23).prop_flat_map(|n| {
            (Just(n), prop::collection::vec(1..n * SEGMENTS, 0..8))
        }),
        threads in 1usize..4,
    ) {
        let net = handshaken();
        let pkts = stream(n);
        let (dgrams, from) = sealed(&net, &pkts);
        let mut slots = slots_at(&dgrams, &cuts);
        let (writes, opened) = receive(&net, &mut slots, from, &Threads(threads));
        prop_assert!(opened == pkts, "every segment opened, in order");
        let want: Vec<(usize, usize, bool)> =
            (0..n).map(|k| (k * SEGMENTS, SEGMENTS, true)).collect();
        prop_assert_eq!(shape(&writes), want);
        prop_assert_eq!(writes, planned_at_once(&pkts));
    }
}
