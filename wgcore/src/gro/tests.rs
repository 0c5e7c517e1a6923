//! The plan is checked against a model of what the kernel does with a
//! TSO super-packet (split the payload at `gso_size`, copy the head's
//! headers, advance the sequence number, PSH only on the last segment):
//! splitting every planned super-packet again must give back exactly the
//! packets that came in, in order.

use super::*;
use proptest::prelude::*;

const FLOWS: [([u8; 4], [u8; 4], u16); 3] = [
    ([10, 244, 0, 2], [10, 244, 1, 2], 40_000),
    ([10, 244, 0, 3], [10, 244, 1, 2], 40_001),
    ([10, 244, 0, 2], [10, 244, 1, 5], 40_002),
];

#[derive(Debug, Clone)]
struct Tcp {
    flow: usize,
    v6: bool,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    options: Vec<u8>,
    payload: Vec<u8>,
    id: u16,
}

impl Tcp {
    fn data(flow: usize, seq: u32, len: usize) -> Self {
        Tcp {
            flow,
            v6: false,
            seq,
            ack: 7,
            flags: ACK,
            window: 512,
            options: Vec::new(),
            payload: (0..len)
                .map(|k| (k as u32).wrapping_add(seq) as u8)
                .collect(),
            id: 1,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let (src, dst, port) = FLOWS[self.flow];
        let tcp_len = 20 + self.options.len();
        let mut p = Vec::new();
        if self.v6 {
            let l4 = (tcp_len + self.payload.len()) as u16;
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&l4.to_be_bytes());
            p.extend_from_slice(&[TCP, 64]);
            for a in [src, dst] {
                p.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
                p.extend_from_slice(&a);
            }
        } else {
            let total = (20 + tcp_len + self.payload.len()) as u16;
            p.extend_from_slice(&[0x45, 0]);
            p.extend_from_slice(&total.to_be_bytes());
            p.extend_from_slice(&self.id.to_be_bytes());
            p.extend_from_slice(&[0x40, 0, 64, TCP, 0, 0]);
            p.extend_from_slice(&src);
            p.extend_from_slice(&dst);
        }
        p.extend_from_slice(&port.to_be_bytes());
        p.extend_from_slice(&8080u16.to_be_bytes());
        p.extend_from_slice(&self.seq.to_be_bytes());
        p.extend_from_slice(&self.ack.to_be_bytes());
        p.push(((tcp_len / 4) as u8) << 4);
        p.push(self.flags);
        p.extend_from_slice(&self.window.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0]);
        p.extend_from_slice(&self.options);
        p.extend_from_slice(&self.payload);
        p
    }
}

/// What the kernel makes of a planned super-packet: its segments.
fn resegment(sup: &[u8], head: &Head) -> Vec<Vec<u8>> {
    let (ip, hl) = (head.ip_len, head.hdr_len);
    let seq0 = u32::from_be_bytes(sup[ip + 4..ip + 8].try_into().unwrap());
    let payload = &sup[hl..];
    let n = payload.len().div_ceil(head.gso_size);
    payload
        .chunks(head.gso_size)
        .enumerate()
        .map(|(k, chunk)| {
            let mut p = sup[..hl].to_vec();
            p.extend_from_slice(chunk);
            let len = p.len();
            if head.v6 {
                p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
            } else {
                p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            }
            let seq = seq0.wrapping_add((k * head.gso_size) as u32);
            p[ip + 4..ip + 8].copy_from_slice(&seq.to_be_bytes());
            if k + 1 < n {
                p[ip + 13] &= !PSH;
            }
            p
        })
        .collect()
}

/// Run the plan the way the driver does (rewrite heads, gather payloads)
/// and give back what the kernel would deliver.
fn deliver(pkts: &[Vec<u8>]) -> (Vec<Vec<u8>>, Vec<Write>) {
    let mut owned = pkts.to_vec();
    let mut writes = Vec::new();
    plan(
        &pkts.iter().map(|p| &p[..]).collect::<Vec<_>>(),
        &mut writes,
    );
    let mut out = Vec::new();
    for w in &writes {
        match w {
            Write::Super {
                first,
                count,
                hdr_len,
                head,
            } => {
                finish(&mut owned[*first], head);
                let mut sup = owned[*first].clone();
                for p in &owned[first + 1..first + count] {
                    sup.extend_from_slice(&p[*hdr_len..]);
                }
                assert_eq!(sup.len(), head.total);
                assert!(sup.len() <= MAX_SUPER_BYTES);
                check_head(&sup, head);
                out.extend(resegment(&sup, head));
            }
            Write::Other(r) => out.extend(pkts[r.clone()].iter().cloned()),
        }
    }
    (out, writes)
}

/// The head's IPv4 header checksum is valid, and the TCP checksum the
/// kernel completes from the pseudo-header sum is the real one.
fn check_head(sup: &[u8], head: &Head) {
    let ip = head.ip_len;
    if !head.v6 {
        assert_eq!(fold(sum16(&sup[..20], 0)), 0xffff, "IPv4 header checksum");
    }
    let completed = !fold(sum16(&sup[ip..], 0));
    let mut zeroed = sup.to_vec();
    zeroed[ip + 16..ip + 18].fill(0);
    let l4 = (sup.len() - ip) as u32;
    let addrs = if head.v6 { &sup[8..40] } else { &sup[12..20] };
    let real = !fold(sum16(&zeroed[ip..], sum16(addrs, u32::from(TCP) + l4)));
    assert_eq!(completed, real, "TCP checksum completed by the kernel");
}

/// Equal but for the fields a super-packet may not keep per segment
/// (IPv4 ID and checksums).
fn same(a: &[u8], b: &[u8]) -> bool {
    let mask = |p: &[u8]| {
        let mut p = p.to_vec();
        let ip = if p[0] >> 4 == 6 { 40 } else { 20 };
        if ip == 20 {
            p[4..6].fill(0);
            p[10..12].fill(0);
        }
        if p.len() >= ip + 18 {
            p[ip + 16..ip + 18].fill(0);
        }
        p
    };
    mask(a) == mask(b)
}

fn assert_delivered(pkts: &[Vec<u8>]) -> Vec<Write> {
    let (out, writes) = deliver(pkts);
    assert_eq!(out.len(), pkts.len(), "{writes:?}");
    for (k, (a, b)) in out.iter().zip(pkts).enumerate() {
        assert!(same(a, b), "packet {k} differs; plan {writes:?}");
    }
    writes
}

fn stream(flow: usize, seq: u32, sizes: &[usize]) -> Vec<Tcp> {
    let mut s = seq;
    sizes
        .iter()
        .map(|&n| {
            let t = Tcp::data(flow, s, n);
            s = s.wrapping_add(n as u32);
            t
        })
        .collect()
}

fn bytes(ts: &[Tcp]) -> Vec<Vec<u8>> {
    ts.iter().map(Tcp::bytes).collect()
}

#[test]
fn one_flow_in_order_becomes_one_super_packet() {
    let pkts = bytes(&stream(0, 1000, &[1380, 1380, 1380, 500]));
    let writes = assert_delivered(&pkts);
    assert!(matches!(
        writes[..],
        [Write::Super {
            first: 0,
            count: 4,
            ..
        }]
    ));
}

#[test]
fn a_shorter_segment_or_a_push_ends_the_group() {
    let mut ts = stream(0, 0, &[1000, 1000, 600, 1000, 1000, 1000, 1000]);
    ts[4].flags = ACK | PSH;
    let writes = assert_delivered(&bytes(&ts));
    let counts: Vec<usize> = writes
        .iter()
        .map(|w| match w {
            Write::Super { count, .. } => *count,
            Write::Other(r) => r.len(),
        })
        .collect();
    assert_eq!(counts, [3, 2, 2]);
    let Write::Super { head, .. } = writes[1] else {
        panic!("{writes:?}")
    };
    assert!(
        head.psh,
        "the push moves to the head and ends the kernel's last segment"
    );
}

#[test]
fn different_ack_window_options_or_a_gap_are_not_merged() {
    for change in 0..4 {
        let mut ts = stream(0, 0, &[800, 800, 800, 800]);
        match change {
            0 => ts[2].ack = 8,
            1 => ts[2].window = 1,
            2 => {
                for t in &mut ts[2..] {
                    t.options = vec![1, 1, 1, 1];
                }
            }
            _ => {
                for t in &mut ts[2..] {
                    t.seq += 1;
                }
            }
        }
        let writes = assert_delivered(&bytes(&ts));
        assert_eq!(writes.len(), 2, "change {change}: {writes:?}");
    }
}

#[test]
fn other_packets_keep_their_place() {
    let mut pkts = bytes(&stream(0, 0, &[900, 900]));
    pkts.insert(
        0,
        vec![
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8,
        ],
    );
    pkts.push(bytes(&[Tcp::data(1, 5, 0)])[0].clone()); // a pure ACK
    pkts.push(bytes(&[Tcp::data(2, 5, 100)])[0].clone()); // a lone segment
    let writes = assert_delivered(&pkts);
    assert_eq!(
        writes,
        [Write::Other(0..1), writes[1].clone(), Write::Other(3..5)]
    );
}

#[test]
fn a_super_packet_stays_within_64_kb() {
    let pkts = bytes(&stream(0, 0, &[1400; 60]));
    let writes = assert_delivered(&pkts);
    let Write::Super { count, head, .. } = writes[0] else {
        panic!("{writes:?}")
    };
    assert_eq!(count, 46, "40 + 46 * 1400 = 64440 ≤ 65535 < 65840");
    assert!(head.total <= MAX_SUPER_BYTES);
}

#[test]
fn ipv6_and_options_coalesce() {
    let mut ts = stream(1, u32::MAX - 1000, &[1200, 1200, 1200]);
    for t in &mut ts {
        t.v6 = true;
        t.options = vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
    }
    let writes = assert_delivered(&bytes(&ts));
    let Write::Super { count: 3, head, .. } = writes[0] else {
        panic!("{writes:?}")
    };
    assert_eq!(
        head.vnet_hdr(),
        [1, 4, 72, 0, 176, 4, 40, 0, 16, 0],
        "NEEDS_CSUM, TCPV6, hdr_len 72, gso_size 1200, csum at 40 + 16"
    );
}

#[test]
fn fragments_and_ip_options_stay_on_the_general_path() {
    let mut a = bytes(&stream(0, 0, &[500, 500]));
    a[0][6] |= 0x20; // more fragments
    assert_eq!(assert_delivered(&a), [Write::Other(0..2)]);
    let mut b = bytes(&stream(0, 0, &[500, 500]));
    for p in &mut b {
        p[0] = 0x46;
    }
    let mut w = Vec::new();
    plan(&b.iter().map(|p| &p[..]).collect::<Vec<_>>(), &mut w);
    assert_eq!(w, [Write::Other(0..2)]);
}

#[test]
fn truncated_or_lying_packets_are_not_segments() {
    let good = bytes(&stream(0, 0, &[300]))[0].clone();
    for cut in 0..good.len() {
        assert!(segment(&good[..cut]).is_none(), "cut at {cut}");
    }
    let mut long_tcp = good.clone();
    long_tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
    long_tcp[32] = 0xf0; // data offset 60 bytes: no payload left
    assert!(segment(&long_tcp[..80]).is_none());
}

#[test]
fn every_field_of_the_flow_must_match() {
    // The second segment differs in one field only; sequence and ACK
    // numbers follow on, so only that field can keep them apart.
    type Edit = fn(&mut Vec<u8>, usize);
    let edits: Vec<(&str, bool, Edit)> = vec![
        ("source address", false, |p, _| p[15] ^= 1),
        ("destination address", false, |p, _| p[19] ^= 1),
        ("source port", false, |p, t| p[t + 1] ^= 1),
        ("destination port", false, |p, t| p[t + 3] ^= 1),
        ("TOS", false, |p, _| p[1] = 0x10),
        ("TTL", false, |p, _| p[8] = 63),
        ("DF", false, |p, _| p[6] = 0),
        ("option bytes", false, |p, t| p[t + 23] ^= 1),
        ("window", false, |p, t| p[t + 15] ^= 1),
        ("traffic class", true, |p, _| p[1] |= 0x80),
        ("flow label", true, |p, _| p[3] ^= 1),
        ("hop limit", true, |p, _| p[7] = 63),
        ("IPv6 source", true, |p, _| p[23] ^= 1),
    ];
    for (what, v6, edit) in edits {
        let mut ts = stream(0, 0, &[1000, 1000]);
        for t in &mut ts {
            t.v6 = v6;
            t.options = vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
        }
        let mut pkts = bytes(&ts);
        edit(&mut pkts[1], if v6 { 40 } else { 20 });
        assert_eq!(
            assert_delivered(&pkts),
            [Write::Other(0..2)],
            "{what} differs"
        );
    }
}

#[test]
fn without_df_ipv4_ids_must_count_up() {
    let mut ts = stream(0, 0, &[700, 700, 700, 700]);
    for (k, t) in ts.iter_mut().enumerate() {
        t.id = 9 + k as u16;
    }
    let mut pkts = bytes(&ts);
    for p in &mut pkts {
        p[6] = 0;
    }
    let w = assert_delivered(&pkts);
    assert!(matches!(w[..], [Write::Super { count: 4, .. }]), "{w:?}");
    pkts[2][4..6].copy_from_slice(&100u16.to_be_bytes());
    pkts[3][4..6].copy_from_slice(&101u16.to_be_bytes());
    let w = assert_delivered(&pkts);
    assert!(
        matches!(
            w[..],
            [Write::Super { count: 2, .. }, Write::Super { count: 2, .. }]
        ),
        "{w:?}"
    );
}

#[test]
fn at_most_64_segments() {
    let pkts = bytes(&stream(0, 0, &[100; 70]));
    let w = assert_delivered(&pkts);
    assert!(
        matches!(
            w[..],
            [
                Write::Super { count: 64, .. },
                Write::Super { count: 6, .. }
            ]
        ),
        "{w:?}"
    );
}

#[test]
fn empty_and_short_packets_pass_through_in_place() {
    let mut pkts = bytes(&stream(0, 0, &[500, 500]));
    pkts.push(Vec::new());
    pkts.push(vec![0x45; 19]);
    pkts.extend(bytes(&stream(0, 1000, &[500, 500])));
    let mut w = Vec::new();
    plan(&pkts.iter().map(|p| &p[..]).collect::<Vec<_>>(), &mut w);
    assert!(
        matches!(
            w[..],
            [
                Write::Super { first: 0, count: 2, .. },
                Write::Other(ref r),
                Write::Super { first: 4, count: 2, .. }
            ] if *r == (2..4)
        ),
        "{w:?}"
    );
}

fn arb_packets() -> impl Strategy<Value = Vec<Vec<u8>>> {
    // Runs of segments of up to three flows, interleaved run by run,
    // with occasional pushes, short segments, ACK changes and gaps.
    let run = (
        0..3usize,
        prop::collection::vec((1..1500usize, 0..20u8), 1..50),
        any::<bool>(),
    );
    prop::collection::vec(run, 1..8).prop_map(|runs| {
        let mut seqs = [0u32, 1 << 31, u32::MAX - 3000];
        let mut acks = [1u32; 3];
        let mut out = Vec::new();
        for (flow, segs, v6) in runs {
            for (len, dice) in segs {
                // Mostly full-sized segments, as a sender's TSO makes them.
                let len = if dice < 14 { 1400 } else { len };
                let mut t = Tcp::data(flow, seqs[flow], len);
                t.v6 = v6;
                t.ack = acks[flow];
                match dice {
                    0 => t.flags = ACK | PSH,
                    1 => acks[flow] += 1,
                    2 => t.seq = t.seq.wrapping_add(1),
                    3 => t.flags = ACK | 0x01, // FIN
                    _ => {}
                }
                t.ack = acks[flow];
                seqs[flow] = t.seq.wrapping_add(len as u32);
                out.push(t.bytes());
            }
        }
        out
    })
}

proptest! {
    #[test]
    fn resegmenting_the_plan_gives_back_every_packet_in_order(pkts in arb_packets()) {
        let (out, writes) = deliver(&pkts);
        prop_assert_eq!(out.len(), pkts.len());
        for (a, b) in out.iter().zip(&pkts) {
            prop_assert!(same(a, b), "plan {:?}", writes);
        }
        for w in &writes {
            if let Write::Super { count, head, .. } = w {
                prop_assert!(*count >= 2 && *count <= MAX_SUPER_SEGMENTS);
                prop_assert!(head.total <= MAX_SUPER_BYTES);
            }
        }
    }
}
