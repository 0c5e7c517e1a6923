//! Batched UDP IO for the datapath, on nix's safe wrappers (no `unsafe`
//! here): `sendmsg` with `UDP_SEGMENT` (UDP GSO: many equal-size datagrams
//! to one endpoint in one call) and `recvmmsg` (many datagrams per call).
//! Also [`PktBuf`], a reusable packet buffer for tun-rs' batched TUN IO.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrIn, SockaddrIn6,
    SockaddrStorage, recvmmsg, sendmsg, setsockopt, sockopt,
};

pub use wgcore::gso::{MAX_GSO_BYTES, MAX_GSO_SEGMENTS};

/// A packet buffer whose length is tracked separately from its allocation,
/// so that reusing it never re-zeroes memory.
///
/// It advertises `limit` bytes of capacity to tun-rs' GRO, which refuses
/// to coalesce more than a buffer's capacity: a buffer sized for one packet
/// would cap every coalesced TCP super-packet at a few segments. The
/// allocation grows to `limit` only when a coalesced packet needs it.
#[derive(Debug, Clone)]
pub struct PktBuf {
    data: Vec<u8>,
    len: usize,
    limit: usize,
}

impl PktBuf {
    /// A buffer holding `cap` bytes now, and up to `limit` after growing.
    pub fn new(cap: usize, limit: usize) -> Self {
        Self {
            data: vec![0; cap],
            len: 0,
            limit: limit.max(cap),
        }
    }
    /// The whole allocation, to write into.
    pub fn space(&mut self) -> &mut [u8] {
        &mut self.data
    }
    /// Set the length of the valid data.
    pub fn set_len(&mut self, len: usize) {
        if len > self.data.len() {
            self.data.resize(len, 0);
        }
        self.len = len;
    }
}

/// Ask for `bytes` of receive and send buffer on `sock`: past the
/// `net.core.{r,w}mem_max` limits when the process has CAP_NET_ADMIN (the
/// agent does), else as much as those limits allow. Failures only cost
/// throughput, so they are logged, not returned.
pub fn grow_buffers(sock: &UdpSocket, bytes: usize) {
    let ok = setsockopt(sock, sockopt::RcvBufForce, &bytes).is_ok()
        && setsockopt(sock, sockopt::SndBufForce, &bytes).is_ok();
    if !ok {
        let _ = setsockopt(sock, sockopt::RcvBuf, &bytes);
        let _ = setsockopt(sock, sockopt::SndBuf, &bytes);
        tracing::debug!(
            bytes,
            "UDP buffers limited by net.core.rmem_max/wmem_max (no CAP_NET_ADMIN)"
        );
    }
}

/// Capacity a TUN write buffer offers tun-rs' GRO: a whole 64 KB
/// super-packet plus headroom (tun-rs wants twice the virtio header).
pub const GRO_MAX: usize = 2 * tun_rs::VIRTIO_NET_HDR_LEN + 65_535;

/// `n` buffers for batched TUN writes: each holds one packet of up to
/// `packet` bytes after the virtio header, and may grow to [`GRO_MAX`]
/// when GRO coalesces packets into it.
pub fn tun_write_bufs(n: usize, packet: usize) -> Vec<PktBuf> {
    (0..n)
        .map(|_| PktBuf::new(tun_rs::VIRTIO_NET_HDR_LEN + packet, GRO_MAX))
        .collect()
}

impl AsRef<[u8]> for PktBuf {
    fn as_ref(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

impl AsMut<[u8]> for PktBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.data[..self.len]
    }
}

impl tun_rs::ExpandBuffer for PktBuf {
    fn buf_capacity(&self) -> usize {
        self.limit.max(self.data.len())
    }
    fn buf_resize(&mut self, new_len: usize, value: u8) {
        if new_len > self.data.len() {
            self.data.resize(new_len, value);
        }
        if new_len > self.len {
            self.data[self.len..new_len].fill(value);
        }
        self.len = new_len;
    }
    fn buf_extend_from_slice(&mut self, src: &[u8]) {
        let end = self.len + src.len();
        if end > self.data.len() {
            self.data.resize(end, 0);
        }
        self.data[self.len..end].copy_from_slice(src);
        self.len = end;
    }
}

/// Where to send: v4 addresses go out as v4-mapped on a dual-stack socket.
pub fn wire_addr(to: SocketAddr, v6_socket: bool) -> SocketAddr {
    match to {
        SocketAddr::V4(v4) if v6_socket => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        _ => to,
    }
}

fn target(to: SocketAddr, v6_socket: bool) -> Target {
    match wire_addr(to, v6_socket) {
        SocketAddr::V4(v4) => Target::V4(SockaddrIn::from(v4)),
        SocketAddr::V6(v6) => Target::V6(SockaddrIn6::from(v6)),
    }
}

enum Target {
    V4(SockaddrIn),
    V6(SockaddrIn6),
}

/// Send the bytes of `iov` joined (segments of `seg` bytes, the last one
/// possibly shorter) to `to` in one `sendmsg` with `UDP_SEGMENT`: one
/// iovec for a run laid out back to back, or one per datagram for
/// datagrams sealed where they lie (the kernel joins them and cuts them
/// at `seg` again, so the iovecs need not be segment-aligned).
pub fn send_gso(
    sock: &UdpSocket,
    iov: &[IoSlice<'_>],
    seg: u16,
    to: SocketAddr,
    v6_socket: bool,
) -> io::Result<()> {
    let cmsg = [ControlMessage::UdpGsoSegments(&seg)];
    let fd = sock.as_raw_fd();
    let r = match target(to, v6_socket) {
        Target::V4(a) => sendmsg(fd, iov, &cmsg, MsgFlags::empty(), Some(&a)),
        Target::V6(a) => sendmsg(fd, iov, &cmsg, MsgFlags::empty(), Some(&a)),
    };
    r.map(|_| ()).map_err(io::Error::from)
}

/// Preallocated state for [`recv_batch`].
pub struct RecvBatch {
    headers: MultiHeaders<SockaddrStorage>,
    /// One buffer per datagram.
    pub bufs: Vec<Vec<u8>>,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("slots", &self.bufs.len())
            .finish()
    }
}

impl RecvBatch {
    /// `n` slots of `size` bytes.
    pub fn new(n: usize, size: usize) -> Self {
        Self {
            headers: MultiHeaders::preallocate(n, Some(nix::cmsg_space!(i32))),
            bufs: vec![vec![0; size]; n],
        }
    }
}

/// Ask for UDP GRO: the kernel may hand over many datagrams of one sender
/// as one buffer (with their segment size), e.g. a peer's UDP GSO send
/// arriving whole. Returns whether the kernel accepted.
pub fn enable_gro(sock: &UdpSocket) -> bool {
    setsockopt(sock, sockopt::UdpGroSegment, &true).is_ok()
}

/// One received buffer: `len` bytes from `from`; with UDP GRO, datagrams
/// of `seg` bytes back to back (the last one possibly shorter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes in the buffer.
    pub len: usize,
    /// Sender.
    pub from: SocketAddr,
    /// Segment size when several datagrams were coalesced.
    pub seg: Option<usize>,
}

/// Receive up to `rb.bufs.len()` buffers (blocking for the first one).
pub fn recv_batch(
    sock: &UdpSocket,
    rb: &mut RecvBatch,
    out: &mut Vec<Received>,
) -> io::Result<usize> {
    out.clear();
    // nix sets each header's control length once, and the kernel shrinks
    // it to what a call used: fresh headers per call, or a later UDP_GRO
    // segment size would be cut off (MSG_CTRUNC).
    rb.headers = MultiHeaders::preallocate(rb.bufs.len(), Some(nix::cmsg_space!(i32)));
    let mut iovs: Vec<[IoSliceMut<'_>; 1]> = rb
        .bufs
        .iter_mut()
        .map(|b| [IoSliceMut::new(b.as_mut_slice())])
        .collect();
    let res = recvmmsg(
        sock.as_raw_fd(),
        &mut rb.headers,
        iovs.iter_mut(),
        MsgFlags::MSG_WAITFORONE,
        None,
    )
    .map_err(io::Error::from)?;
    for r in res {
        let from = r.address.and_then(|a: SockaddrStorage| to_std(&a));
        let seg = r.cmsgs().ok().and_then(|mut c| {
            c.find_map(|m| match m {
                ControlMessageOwned::UdpGroSegments(s) if s > 0 => Some(s as usize),
                _ => None,
            })
        });
        out.push(Received {
            len: if from.is_some() { r.bytes } else { 0 },
            from: from.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
            seg,
        });
    }
    Ok(out.len())
}

fn to_std(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    if let Some(v6) = a.as_sockaddr_in6() {
        return Some(SocketAddr::V6((*v6).into()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gso_send_and_batch_receive_on_loopback() {
        // 5 segments of 100 bytes and a short last one of 40, sent as one
        // iovec, as one iovec per datagram (datagrams sealed where they
        // lie) and as iovecs cut anywhere: the kernel joins them.
        let mut buf = Vec::new();
        for i in 0..5u8 {
            buf.extend(std::iter::repeat_n(i, 100));
        }
        buf.extend(std::iter::repeat_n(9u8, 40));
        let per_datagram: Vec<IoSlice> = buf.chunks(100).map(IoSlice::new).collect();
        let anywhere: Vec<IoSlice> = buf.chunks(77).map(IoSlice::new).collect();
        for iov in [&[IoSlice::new(&buf)][..], &per_datagram, &anywhere] {
            let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
            let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
            let to = rx.local_addr().unwrap();
            match send_gso(&tx, iov, 100, to, false) {
                Ok(()) => {}
                // A kernel without UDP GSO: the datapath falls back; nothing to test.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return,
                Err(e) => panic!("{e}"),
            }
            let mut rb = RecvBatch::new(16, 2048);
            let mut out = Vec::new();
            let mut got = Vec::new();
            while got.len() < 6 {
                recv_batch(&rx, &mut rb, &mut out).unwrap();
                for (i, r) in out.iter().enumerate() {
                    assert_eq!(r.from, tx.local_addr().unwrap());
                    assert_eq!(r.seg, None, "no GRO asked for");
                    got.push(rb.bufs[i][..r.len].to_vec());
                }
            }
            assert_eq!(got.len(), 6, "{} iovecs", iov.len());
            for (i, d) in got.iter().take(5).enumerate() {
                assert_eq!(d.len(), 100);
                assert!(d.iter().all(|b| *b == i as u8));
            }
            assert_eq!(got[5], vec![9u8; 40]);
        }
    }

    #[test]
    fn pktbuf_tracks_length_without_reallocating() {
        use tun_rs::ExpandBuffer;
        let mut b = PktBuf::new(64, 64);
        b.space()[..3].copy_from_slice(b"abc");
        b.set_len(3);
        assert_eq!(b.as_ref(), b"abc");
        b.buf_extend_from_slice(b"de");
        assert_eq!(b.as_ref(), b"abcde");
        b.buf_resize(7, b'z');
        assert_eq!(b.as_ref(), b"abcdezz");
        assert_eq!(b.buf_capacity(), 64);
        b.buf_extend_from_slice(&[1; 100]);
        assert_eq!(b.as_ref().len(), 107);
        // GRO sees the limit, not the current allocation.
        let mut big = PktBuf::new(64, 70_000);
        assert_eq!(big.buf_capacity(), 70_000);
        assert_eq!(big.space().len(), 64);
    }

    #[test]
    fn socket_buffers_grow_past_the_sysctl_limit_as_root() {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let want = max + (1 << 20);
        grow_buffers(&s, want);
        let got = nix::sys::socket::getsockopt(&s, sockopt::RcvBuf).unwrap();
        if nix::unistd::geteuid().is_root() {
            // The kernel doubles the request for its bookkeeping.
            assert!(got >= want, "receive buffer {got} < {want}");
        } else {
            assert!(got >= max.min(want), "receive buffer {got}");
        }
    }

    /// Internet checksum (RFC 1071) of `parts`, for building test packets.
    fn inet_csum(parts: &[&[u8]]) -> u16 {
        let mut sum = 0u32;
        for b in parts.iter().flat_map(|p| p.chunks(2)) {
            sum += u32::from(u16::from_be_bytes([b[0], *b.get(1).unwrap_or(&0)]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// An IPv4/TCP segment (ACK, no options) with valid checksums.
    fn tcp_segment(seq: u32, payload: &[u8]) -> Vec<u8> {
        let total = 40 + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 244, 1, 2]);
        p[16..20].copy_from_slice(&[10, 244, 2, 2]);
        let c = inet_csum(&[&p[..20]]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&5201u16.to_be_bytes());
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[28..32].copy_from_slice(&1u32.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = 0x10; // ACK
        p[34..36].copy_from_slice(&64000u16.to_be_bytes());
        p[40..].copy_from_slice(payload);
        let mut pseudo = [0u8; 12];
        pseudo[..8].copy_from_slice(&p[12..20]);
        pseudo[9] = 6;
        pseudo[10..12].copy_from_slice(&((total - 20) as u16).to_be_bytes());
        let c = inet_csum(&[&pseudo, &p[20..]]);
        p[36..38].copy_from_slice(&c.to_be_bytes());
        p
    }

    /// The buffers the inbound path writes to the TUN let tun-rs' GRO build
    /// a whole 64 KB super-packet out of a peer's GSO batch. (Buffers
    /// sized for one packet capped it at 6 segments: 7x the TUN writes and
    /// TCP ACKs, and ~30% less throughput.)
    #[test]
    fn tun_write_bufs_let_gro_coalesce_a_full_super_packet() {
        use tun_rs::VIRTIO_NET_HDR_LEN as H;
        const SEGS: usize = 44;
        const MSS: usize = 1388;
        let mut bufs = tun_write_bufs(SEGS, 9216);
        for (i, b) in bufs.iter_mut().enumerate() {
            let payload = vec![i as u8; MSS];
            let pkt = tcp_segment(1000 + (i * MSS) as u32, &payload);
            b.space()[H..H + pkt.len()].copy_from_slice(&pkt);
            b.set_len(H + pkt.len());
        }
        let mut to_write = Vec::new();
        tun_rs::handle_gro(
            &mut bufs,
            H,
            &mut Default::default(),
            &mut Default::default(),
            false,
            &mut to_write,
        )
        .unwrap();
        assert_eq!(to_write, vec![0], "one coalesced packet");
        let merged = bufs[0].as_ref();
        assert_eq!(merged.len(), H + 40 + SEGS * MSS);
        // The payload is every segment's, in order.
        for (i, chunk) in merged[H + 40..].chunks(MSS).enumerate() {
            assert!(chunk.iter().all(|b| *b == i as u8), "segment {i}");
        }
    }

    #[test]
    fn gro_receives_a_gso_send_whole_or_in_parts() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        if !enable_gro(&rx) {
            return;
        }
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let mut buf = Vec::new();
        for i in 0..10u8 {
            buf.extend(std::iter::repeat_n(i, 200));
        }
        if send_gso(&tx, &[IoSlice::new(&buf)], 200, to, false).is_err() {
            return;
        }
        let mut rb = RecvBatch::new(4, 65_536);
        let mut out = Vec::new();
        let mut datagrams: Vec<Vec<u8>> = Vec::new();
        while datagrams.len() < 10 {
            recv_batch(&rx, &mut rb, &mut out).unwrap();
            for (i, r) in out.iter().enumerate() {
                let seg = r.seg.unwrap_or(r.len);
                for d in rb.bufs[i][..r.len].chunks(seg) {
                    datagrams.push(d.to_vec());
                }
            }
        }
        for (i, d) in datagrams.iter().enumerate() {
            assert_eq!(d, &vec![i as u8; 200]);
        }
        // Again: the segment size must survive a second call (nix leaves a
        // shrunken control length in reused headers).
        send_gso(&tx, &[IoSlice::new(&buf)], 200, to, false).unwrap();
        let mut n = 0;
        while n < 10 {
            recv_batch(&rx, &mut rb, &mut out).unwrap();
            for (i, r) in out.iter().enumerate() {
                let seg = r.seg.unwrap_or(r.len);
                for (j, d) in rb.bufs[i][..r.len].chunks(seg).enumerate() {
                    assert_eq!(d.len(), 200, "datagram {j} of a receive: {}", r.len);
                    n += 1;
                }
            }
        }
    }
}
