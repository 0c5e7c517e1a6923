//! UDP → TUN, the driver: `recvmmsg` into receive slots (with UDP GRO a
//! slot holds up to 64 datagrams of one sender, coalesced by the kernel,
//! which need not line up with the peer's GSO sends), handshake messages
//! to the handshake thread's queue, and the TUN writes the core plans.
//! The core (`wgcore::receive`) opens the whole batch where it lies (the
//! crypto on the device's workers) and plans it at once, so a flow's
//! segments in two slots still join one write: consecutive segments of a
//! TCP flow go out with one `writev` each and no copy, the rest are
//! copied out to tun-rs' GRO.

use std::io::{self, IoSlice};
use std::time::Instant;

use tun_rs::{GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};
use wgcore::gro::{self, Write};
use wgcore::{RxBatch, Slot, gso};

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
        copies: batch::tun_write_bufs(IDEAL_BATCH_SIZE, PKT_MAX + 64),
        copy_all: std::env::var_os("PODGUARD_TUN_RS_GRO").is_some(),
    };
    let crypto = dev.crypto_pool();
    let mut rx = RxBatch::new(slots * gso::MAX_GSO_SEGMENTS, !tun_w.copy_all);
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
        let slots = rb.bufs.iter_mut().zip(&got).map(|(buf, r)| Slot {
            bytes: &mut buf[..r.len],
            seg: r.seg,
            from: r.from,
        });
        let (mut data, mut hs) = (Vec::new(), Vec::new());
        dev.core.split_received(slots, &mut data, &mut hs);
        for (datagram, from) in hs {
            if !dev.handshakes.offer(&mut handshakes, datagram, from) {
                dev.core.drops.count_queue_full();
            }
        }
        dev.handshakes.send(&mut handshakes);
        // The whole batch at once (`wgcore::RxBatch`): a flow's segments
        // in two receive slots still join one super-packet.
        let mut pkts = rx.open(&dev.core, &mut data, &crypto, now);
        if !pkts.is_empty() {
            tun_w.write(dev, &mut pkts, rx.writes());
        }
        dev.flush();
    }
}

impl TunWriter {
    /// Write `pkts` (opened IP packets) to the TUN, in order, as `plan`
    /// (the core's) says.
    fn write(&mut self, dev: &Device, pkts: &mut [&mut [u8]], plan: &[Write]) {
        let tun = dev.tun.read();
        if self.copy_all {
            self.copy_out(&tun, pkts);
            return;
        }
        for w in plan {
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
