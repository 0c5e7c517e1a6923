//! The TUN coalescing plan over decrypted packets (what an authenticated
//! peer may send, so anything): never panics, and every super-packet it
//! plans is valid for the kernel (at least two segments of one header
//! length and one flow, within 64 KB and the segment limit; rewriting its
//! head stays in bounds).
#![no_main]
use libfuzzer_sys::fuzz_target;
use wgcore::gro::{self, Write};

fuzz_target!(|data: &[u8]| {
    // Packets: a length byte (times 8, so a few reach full size) then
    // that many bytes; a packet made of a copy of the previous one with
    // its sequence number advanced often coalesces.
    let mut pkts: Vec<Vec<u8>> = Vec::new();
    let mut rest = data;
    while let Some((&n, tail)) = rest.split_first() {
        if n == 0 {
            if let Some(prev) = pkts.last() {
                let mut p = prev.clone();
                bump_seq(&mut p);
                pkts.push(p);
            }
            rest = tail;
            continue;
        }
        let n = (usize::from(n) * 8).min(tail.len());
        pkts.push(tail[..n].to_vec());
        rest = &tail[n..];
    }
    let views: Vec<&[u8]> = pkts.iter().map(|p| p.as_slice()).collect();
    let mut plan = Vec::new();
    gro::plan(&views, &mut plan);
    let mut next = 0;
    for w in &plan {
        match w {
            Write::Super {
                first,
                count,
                hdr_len,
                head,
            } => {
                assert_eq!(*first, next);
                assert!(*count >= 2 && *count <= gro::MAX_SUPER_SEGMENTS);
                let group = &pkts[*first..first + count];
                assert!(group.iter().all(|p| p.len() > *hdr_len));
                let f = flow(&group[0]);
                assert!(
                    f.is_some(),
                    "a super-packet of something not TCP/UDP over IP"
                );
                assert!(
                    group.iter().all(|p| flow(p) == f),
                    "a super-packet mixes flows"
                );
                let total: usize =
                    group.iter().map(|p| p.len()).sum::<usize>() - (count - 1) * hdr_len;
                assert!(total <= gro::MAX_SUPER_BYTES);
                let mut h = group[0].clone();
                gro::finish(&mut h, head);
                let _ = head.vnet_hdr();
                next = first + count;
            }
            Write::Other(r) => {
                assert_eq!(r.start, next);
                next = r.end;
            }
        }
    }
    assert_eq!(next, pkts.len());
});

/// Advance a copy's TCP sequence number by its payload, if it looks like
/// IPv4 or IPv6 TCP at all.
fn bump_seq(p: &mut [u8]) {
    let ip = match p.first().map(|b| b >> 4) {
        Some(4) => 20,
        Some(6) => 40,
        _ => return,
    };
    if p.len() < ip + 20 {
        return;
    }
    let hdr = ip + usize::from(p[ip + 12] >> 4) * 4;
    let payload = p.len().saturating_sub(hdr) as u32;
    let seq = u32::from_be_bytes([p[ip + 4], p[ip + 5], p[ip + 6], p[ip + 7]]);
    p[ip + 4..ip + 8].copy_from_slice(&seq.wrapping_add(payload).to_be_bytes());
}

/// A packet's flow as the kernel splits a super-packet: IP version,
/// protocol, addresses and ports (`None` if it is too short to have them,
/// or not IP).
fn flow(p: &[u8]) -> Option<Vec<u8>> {
    let (mut key, l4) = match p.first()? >> 4 {
        4 => {
            let mut k = vec![4, *p.get(9)?];
            k.extend_from_slice(p.get(12..20)?);
            (k, usize::from(p[0] & 0xf) * 4)
        }
        6 => {
            let mut k = vec![6, *p.get(6)?];
            k.extend_from_slice(p.get(8..40)?);
            (k, 40)
        }
        _ => return None,
    };
    key.extend_from_slice(p.get(l4..l4 + 4)?);
    Some(key)
}
