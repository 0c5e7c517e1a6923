//! Coalescing decrypted TCP segments into super-packets for the TUN, as a
//! plan over the packets where they lie: no byte of payload is copied.
//!
//! Why: tun-rs' GRO (the general path) copies every packet twice (once
//! to inspect it, once to append it to the head buffer) and checksums
//! every payload, on the inbound thread, which is the busier one. A peer's
//! UDP GSO send is the segments of one super-packet of one flow, in order,
//! so nearly all coalescing is of *consecutive* segments of one flow: the
//! plan groups those, the driver writes each group with one `writev`
//! (the head packet whole, then each later payload), and the kernel
//! copies the bytes once, as it does for any TUN write. Everything else
//! (other protocols, lone packets, segments the rules below refuse) stays
//! on the general path, in the same order.
//!
//! No checksum is verified: the group is marked `NEEDS_CSUM` (the
//! kernel's CHECKSUM_PARTIAL, which the stack trusts). The packets were
//! authenticated by the peer's session key, so they are what the peer
//! sent; kernel WireGuard marks every decrypted packet
//! `CHECKSUM_UNNECESSARY` for the same reason (`receive.c`). One
//! difference: a super-packet the node forwards out of another interface
//! leaves with checksums the kernel computes, so a payload the sending
//! peer corrupted before sealing arrives with a valid checksum (kernel
//! WireGuard would forward the bad one). The peer could have written a
//! valid one anyway: nothing an authenticated peer cannot do.
//!
//! The rules follow Linux's and wireguard-go's TCP GRO: same addresses,
//! ports, ACK number, window, TCP options, TOS/traffic class and TTL/hop
//! limit; flags ACK, or ACK|PSH on the last segment; sequence numbers
//! contiguous; every segment but the last of the head's payload size;
//! IPv4 without options or fragmentation, and with DF or IDs that count up
//! by one (the kernel's segmentation gives them so); IPv6 without extension
//! headers.

use std::ops::Range;

/// Length of the virtio-net header a TUN with offloads expects before
/// each packet (`struct virtio_net_hdr`).
pub const VNET_HDR_LEN: usize = 10;
/// Largest super-packet (the IP length fields are 16 bits).
pub const MAX_SUPER_BYTES: usize = 65_535;
/// Most segments in one super-packet (Linux GRO's limit).
pub const MAX_SUPER_SEGMENTS: usize = 64;

const TCP: u8 = 6;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;

/// One TUN write, in the order the packets came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// `pkts[first..first + count]` (count ≥ 2) as one super-packet: the
    /// head whole, after [`finish`] rewrote its headers, then the payload
    /// of each later packet, which starts `hdr_len` bytes in.
    Super {
        /// The head packet.
        first: usize,
        /// Packets in the group.
        count: usize,
        /// IP plus TCP header length, the same in every packet.
        hdr_len: usize,
        /// The head's header rewrite.
        head: Head,
    },
    /// `pkts[range]` go to the general path.
    Other(Range<usize>),
}

/// What [`finish`] writes into a group's head packet, and the virtio
/// header that goes before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    v6: bool,
    ip_len: usize,
    hdr_len: usize,
    total: usize,
    gso_size: usize,
    psh: bool,
}

/// The TCP segment a packet is, when it may be coalesced at all.
#[derive(Debug, Clone, Copy)]
struct Seg {
    v6: bool,
    ip_len: usize,
    hdr_len: usize,
    seq: u32,
    payload: usize,
    psh: bool,
}

fn be16(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([b[at], b[at + 1]]))
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// `pkt` as a segment that may join a super-packet, or `None`.
fn segment(pkt: &[u8]) -> Option<Seg> {
    let v6 = match pkt.first()? >> 4 {
        4 => false,
        6 => true,
        _ => return None,
    };
    let ip_len = if v6 {
        if pkt.len() < 40 || pkt[6] != TCP || be16(pkt, 4) + 40 != pkt.len() {
            return None;
        }
        40
    } else {
        let fragmented = pkt.len() >= 8 && (pkt[6] & 0x3f != 0 || pkt[7] != 0);
        if pkt.len() < 20 || pkt[0] != 0x45 || pkt[9] != TCP || fragmented {
            return None;
        }
        if be16(pkt, 2) != pkt.len() {
            return None;
        }
        20
    };
    let tcp = pkt.get(ip_len..ip_len + 20)?;
    let tcp_len = usize::from(tcp[12] >> 4) * 4;
    let hdr_len = ip_len + tcp_len;
    if tcp_len < 20 || pkt.len() <= hdr_len {
        return None;
    }
    let psh = match tcp[13] {
        ACK => false,
        f if f == ACK | PSH => true,
        _ => return None,
    };
    Some(Seg {
        v6,
        ip_len,
        hdr_len,
        seq: be32(tcp, 4),
        payload: pkt.len() - hdr_len,
        psh,
    })
}

/// Whether `pkt` belongs to the flow of `head` with the same headers
/// (everything but lengths, IDs, checksums, sequence and PSH).
fn same_flow(head: &[u8], h: &Seg, pkt: &[u8], p: &Seg) -> bool {
    if p.v6 != h.v6 || p.hdr_len != h.hdr_len {
        return false;
    }
    let ip_same = if h.v6 {
        // Version, traffic class, flow label; hop limit; addresses.
        head[..4] == pkt[..4] && head[7] == pkt[7] && head[8..40] == pkt[8..40]
    } else {
        // TOS; DF; TTL and protocol; addresses.
        head[1] == pkt[1]
            && head[6] & 0x40 == pkt[6] & 0x40
            && head[8..10] == pkt[8..10]
            && head[12..20] == pkt[12..20]
    };
    let t = h.ip_len;
    // Ports; ACK number; data offset; window; options.
    ip_same
        && head[t..t + 4] == pkt[t..t + 4]
        && head[t + 8..t + 13] == pkt[t + 8..t + 13]
        && head[t + 14..t + 16] == pkt[t + 14..t + 16]
        && head[t + 20..h.hdr_len] == pkt[t + 20..h.hdr_len]
}

/// Plan the TUN writes for `pkts` (decrypted packets, in arrival order).
pub fn plan(pkts: &[&[u8]], out: &mut Vec<Write>) {
    out.clear();
    let mut other: Option<usize> = None;
    let mut i = 0;
    while i < pkts.len() {
        let group = segment(pkts[i]).map(|h| group(pkts, i, &h));
        let Some((count, head)) = group.filter(|(count, _)| *count >= 2) else {
            other.get_or_insert(i);
            i += 1;
            continue;
        };
        if let Some(start) = other.take() {
            out.push(Write::Other(start..i));
        }
        out.push(Write::Super {
            first: i,
            count,
            hdr_len: head.hdr_len,
            head,
        });
        i += count;
    }
    if let Some(start) = other {
        out.push(Write::Other(start..pkts.len()));
    }
}

/// How many packets from `first` (whose segment is `h`) form one group,
/// and the group's head rewrite.
fn group(pkts: &[&[u8]], first: usize, h: &Seg) -> (usize, Head) {
    let head = pkts[first];
    let mut total = head.len();
    let mut next_seq = h.seq.wrapping_add(h.payload as u32);
    let mut prev = *h;
    let mut count = 1;
    for pkt in &pkts[first + 1..] {
        // The previous segment must be full-sized and not end a push.
        if prev.psh || prev.payload != h.payload || count == MAX_SUPER_SEGMENTS {
            break;
        }
        let Some(p) = segment(pkt) else { break };
        if p.seq != next_seq
            || !ids_follow(head, pkt, &p, count)
            || p.payload > h.payload
            || total + p.payload > MAX_SUPER_BYTES
            || !same_flow(head, h, pkt, &p)
        {
            break;
        }
        total += p.payload;
        next_seq = next_seq.wrapping_add(p.payload as u32);
        prev = p;
        count += 1;
    }
    let rewrite = Head {
        v6: h.v6,
        ip_len: h.ip_len,
        hdr_len: h.hdr_len,
        total,
        gso_size: h.payload,
        psh: prev.psh,
    };
    (count, rewrite)
}

/// For IPv4 without DF, whether `pkt`'s ID is the head's plus `k`.
fn ids_follow(head: &[u8], pkt: &[u8], p: &Seg, k: usize) -> bool {
    if p.v6 || pkt[6] & 0x40 != 0 {
        return true;
    }
    be16(pkt, 4) == (be16(head, 4) + k) & 0xffff
}

/// One's-complement sum of `data` as big-endian 16-bit words, added to `sum`.
fn sum16(data: &[u8], mut sum: u32) -> u32 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [b] = words.remainder() {
        sum += u32::from(*b) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

impl Head {
    /// The virtio-net header for the super-packet: TCP segmentation
    /// offload with `gso_size` payload per segment and the checksum left
    /// to the kernel (`NEEDS_CSUM` from the TCP header on). Fields are in
    /// native byte order, as the TUN reads them.
    pub fn vnet_hdr(&self) -> [u8; VNET_HDR_LEN] {
        const NEEDS_CSUM: u8 = 1;
        const GSO_TCPV4: u8 = 1;
        const GSO_TCPV6: u8 = 4;
        let mut h = [0u8; VNET_HDR_LEN];
        h[0] = NEEDS_CSUM;
        h[1] = if self.v6 { GSO_TCPV6 } else { GSO_TCPV4 };
        let fields = [self.hdr_len, self.gso_size, self.ip_len, 16];
        for (k, v) in fields.into_iter().enumerate() {
            h[2 + 2 * k..4 + 2 * k].copy_from_slice(&(v as u16).to_ne_bytes());
        }
        h
    }
}

/// Rewrite the head packet's headers for the whole group: IP length (and
/// the IPv4 header checksum), PSH when the last segment had it, and the
/// TCP checksum field set to the pseudo-header sum the kernel completes.
pub fn finish(pkt: &mut [u8], head: &Head) {
    let ip = head.ip_len;
    let l4_len = head.total - ip;
    let (addrs, proto_len) = if head.v6 {
        pkt[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        (8..40, l4_len as u32)
    } else {
        pkt[2..4].copy_from_slice(&(head.total as u16).to_be_bytes());
        pkt[10..12].fill(0);
        let c = !fold(sum16(&pkt[..20], 0));
        pkt[10..12].copy_from_slice(&c.to_be_bytes());
        (12..20, l4_len as u32)
    };
    if head.psh {
        pkt[ip + 13] |= PSH;
    }
    let pseudo = sum16(
        &pkt[addrs],
        u32::from(TCP) + (proto_len & 0xffff) + (proto_len >> 16),
    );
    pkt[ip + 16..ip + 18].copy_from_slice(&fold(pseudo).to_be_bytes());
}

#[cfg(test)]
mod tests;
