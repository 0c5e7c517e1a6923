//! UDP → TUN: datagrams arrive in batches (`recvmmsg`; with UDP GRO a
//! slot holds up to 64 datagrams of one sender, coalesced by the kernel,
//! which need not line up with the peer's GSO sends); the whole batch is
//! opened and planned at once, so a flow's segments in two slots still
//! join one TUN write. Data packets are opened where they
//! lie in the receive buffer (the crypto on the device's workers) and the
//! decrypted ones coalesced into few TUN writes: consecutive segments of a
//! TCP flow by the core's plan (`wgcore::gro`) with one `writev` each and
//! no copy, the rest copied out to tun-rs' GRO; handshake messages go to
//! the handshake thread's queue.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::time::Instant;

use tun_rs::{GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};
use wgcore::gro::{self, Write};
use wgcore::{DATA_HEADER, Opened, SourceCache, gso};

use super::batch;
use super::device::Device;
use super::handshakes;
use super::tun_rx::PKT_MAX;

/// Datagrams per `recvmmsg`.
const RX_BATCH: usize = 64;

const _: () = assert!(VIRTIO_NET_HDR_LEN == gro::VNET_HDR_LEN);

/// How opened packets reach the TUN.
struct TunWriter {
    gro: GROTable,
    plan: Vec<Write>,
    /// Copies for tun-rs' GRO, with room for the virtio header.
    copies: Vec<batch::PktBuf>,
    /// `PODGUARD_TUN_RS_GRO=1`: every packet copied to tun-rs' GRO (the
    /// path before the core's plan; for comparing the two).
    copy_all: bool,
}

pub fn run(dev: &Device) {
    let gro_rx = std::env::var_os("PODGUARD_NO_UDP_GRO").is_none() && batch::enable_gro(&dev.udp);
    let (slots, slot_size) = if gro_rx {
        (RX_BATCH / 4, 65_536)
    } else {
        (RX_BATCH, PKT_MAX + 64)
    };
    let mut rb = batch::RecvBatch::new(slots, slot_size);
    let mut got: Vec<batch::Received> = Vec::with_capacity(slots);
    let mut tun_w = TunWriter {
        gro: GROTable::default(),
        plan: Vec::new(),
        copies: batch::tun_write_bufs(IDEAL_BATCH_SIZE, PKT_MAX + 64),
        copy_all: std::env::var_os("PODGUARD_TUN_RS_GRO").is_some(),
    };
    let crypto = dev.crypto_pool();
    let mut opened: Vec<Opened> = Vec::with_capacity(slots * gso::MAX_GSO_SEGMENTS);
    let mut handshakes = handshakes::Batch::default();
    loop {
        if let Err(e) = batch::recv_batch(&dev.udp, &mut rb, &mut got) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(error = %e, "UDP read failed; inbound path stops");
            return;
        }
        let now = Instant::now();
        let mut cache = SourceCache::default();
        let mut input: Vec<(&mut [u8], SocketAddr)> = Vec::new();
        for (buf, r) in rb.bufs.iter_mut().zip(&got) {
            let seg = r.seg.unwrap_or(r.len).max(1);
            for datagram in buf[..r.len].chunks_mut(seg) {
                if wgcore::is_handshake(datagram) {
                    if !wgcore::handshake_size_ok(datagram) {
                        dev.core.drops.count_invalid();
                    } else if !dev.handshakes.offer(&mut handshakes, datagram, r.from) {
                        dev.core.drops.count_queue_full();
                    }
                    continue;
                }
                input.push((datagram, r.from));
            }
        }
        dev.handshakes.send(&mut handshakes);
        // The whole batch at once, in arrival order: a flow's segments in
        // two receive slots still join one super-packet. Any cut of the
        // batch that falls inside a super-packet costs a second TUN
        // write, and the pod's TCP answers each write with an ACK that
        // crosses both tunnels back (bench/README.md, "Session 16").
        dev.core
            .open_batch_in_place(&mut input, &crypto, &mut cache, &mut opened, now);
        let mut pkts: Vec<&mut [u8]> = input
            .iter_mut()
            .zip(&opened)
            .filter_map(|((d, _), o)| match *o {
                Opened::Packet(len) => Some(&mut d[DATA_HEADER..DATA_HEADER + len]),
                Opened::Nothing => None,
            })
            .collect();
        if !pkts.is_empty() {
            tun_w.write(dev, &mut pkts);
        }
        dev.flush();
    }
}

impl TunWriter {
    /// Write `pkts` (opened IP packets) to the TUN, in order.
    fn write(&mut self, dev: &Device, pkts: &mut [&mut [u8]]) {
        let tun = dev.tun.read();
        if self.copy_all {
            self.copy_out(&tun, pkts);
            return;
        }
        {
            let views: Vec<&[u8]> = pkts.iter().map(|p| &**p).collect();
            gro::plan(&views, &mut self.plan);
        }
        let plan = std::mem::take(&mut self.plan);
        for w in &plan {
            match w {
                Write::Super {
                    first,
                    count,
                    hdr_len,
                    head,
                } => {
                    gro::finish(pkts[*first], head);
                    let vnet = head.vnet_hdr();
                    let iov: Vec<IoSlice> = [IoSlice::new(&vnet), IoSlice::new(pkts[*first])]
                        .into_iter()
                        .chain(
                            pkts[first + 1..first + count]
                                .iter()
                                .map(|p| IoSlice::new(&p[*hdr_len..])),
                        )
                        .collect();
                    log_err(nix::sys::uio::writev(&*tun, &iov).map_err(io::Error::from));
                }
                Write::Other(range) => self.copy_out(&tun, &pkts[range.clone()]),
            }
        }
        self.plan = plan;
    }

    /// The general path: copies behind a virtio header, through tun-rs'
    /// GRO (TCP and UDP coalescing, checksums).
    fn copy_out(&mut self, tun: &tun_rs::SyncDevice, pkts: &[&mut [u8]]) {
        for group in pkts.chunks(self.copies.len()) {
            for (buf, p) in self.copies.iter_mut().zip(group) {
                buf.set_len(VIRTIO_NET_HDR_LEN + p.len());
                buf.space()[VIRTIO_NET_HDR_LEN..VIRTIO_NET_HDR_LEN + p.len()].copy_from_slice(p);
            }
            log_err(tun.send_multiple(
                &mut self.gro,
                &mut self.copies[..group.len()],
                VIRTIO_NET_HDR_LEN,
            ));
        }
    }
}

fn log_err(r: io::Result<usize>) {
    if let Err(e) = r {
        tracing::debug!(error = %e, "TUN write");
    }
}
