//! UDP → TUN: datagrams arrive in batches (`recvmmsg`, with UDP GRO a
//! slot holds a peer's whole GSO send); data packets are opened here and
//! the decrypted ones coalesced (TCP/UDP GRO in tun-rs) into few TUN
//! writes; handshake messages go to the handshake thread's queue.

use std::io;
use std::time::Instant;

use tun_rs::{GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};
use wgcore::{Opened, SourceCache};

use super::batch;
use super::device::Device;
use super::tun_rx::PKT_MAX;

/// Datagrams per `recvmmsg`.
const RX_BATCH: usize = 64;

pub fn run(dev: &Device) {
    let gro_rx = std::env::var_os("PODGUARD_NO_UDP_GRO").is_none() && batch::enable_gro(&dev.udp);
    let (slots, slot_size) = if gro_rx {
        (RX_BATCH / 4, 65_536)
    } else {
        (RX_BATCH, PKT_MAX + 64)
    };
    let mut rb = batch::RecvBatch::new(slots, slot_size);
    let mut got: Vec<batch::Received> = Vec::with_capacity(slots);
    let mut outs = batch::tun_write_bufs(IDEAL_BATCH_SIZE, PKT_MAX + 64);
    let mut gro = GROTable::default();
    loop {
        if let Err(e) = batch::recv_batch(&dev.udp, &mut rb, &mut got) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(error = %e, "UDP read failed; inbound path stops");
            return;
        }
        let now = Instant::now();
        let mut ready = 0usize;
        let mut cache = SourceCache::default();
        for (i, r) in got.iter().enumerate() {
            let seg = r.seg.unwrap_or(r.len).max(1);
            for datagram in rb.bufs[i][..r.len].chunks(seg) {
                if wgcore::is_handshake(datagram) {
                    if !dev.handshakes.offer(datagram, r.from) {
                        dev.core.drops.count_queue_full();
                    }
                    continue;
                }
                if ready == outs.len() {
                    write_tun(dev, &mut gro, &mut outs[..ready]);
                    ready = 0;
                }
                let out = &mut outs[ready];
                let space = &mut out.space()[VIRTIO_NET_HDR_LEN..];
                if let Opened::Packet(len) = dev.core.open(datagram, r.from, space, &mut cache, now)
                {
                    out.set_len(VIRTIO_NET_HDR_LEN + len);
                    ready += 1;
                }
            }
        }
        if ready > 0 {
            write_tun(dev, &mut gro, &mut outs[..ready]);
        }
        dev.flush();
    }
}

fn write_tun(dev: &Device, gro: &mut GROTable, outs: &mut [batch::PktBuf]) {
    if let Err(e) = dev.tun.read().send_multiple(gro, outs, VIRTIO_NET_HDR_LEN) {
        tracing::debug!(error = %e, "TUN write");
    }
}
