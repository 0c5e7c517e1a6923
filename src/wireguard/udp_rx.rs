//! UDP → TUN: datagrams arrive in batches (`recvmmsg`, with UDP GRO a
//! slot holds a peer's whole GSO send); data packets are opened here (the
//! crypto on the device's workers) and the decrypted ones coalesced
//! (TCP/UDP GRO in tun-rs) into few TUN writes; handshake messages go to
//! the handshake thread's queue.

use std::io;
use std::time::Instant;

use tun_rs::{GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};
use wgcore::{Opened, SourceCache};

use super::batch;
use super::device::Device;
use super::handshakes;
use super::tun_rx::PKT_MAX;
use super::workers::Pool;

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
    let crypto = dev.crypto_pool();
    let mut opened: Vec<Opened> = Vec::with_capacity(outs.len());
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
        let mut input: Vec<(&[u8], std::net::SocketAddr)> = Vec::new();
        for (i, r) in got.iter().enumerate() {
            let seg = r.seg.unwrap_or(r.len).max(1);
            for datagram in rb.bufs[i][..r.len].chunks(seg) {
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
        // In slices the TUN write buffers can hold, in arrival order.
        for part in input.chunks(outs.len()) {
            open_and_write(
                dev,
                &crypto,
                part,
                &mut outs,
                &mut gro,
                &mut cache,
                &mut opened,
                now,
            );
        }
        dev.flush();
    }
}

/// Open a batch of data datagrams (the crypto on the device's workers)
/// and write what opened to the TUN, in arrival order.
#[allow(clippy::too_many_arguments)]
fn open_and_write(
    dev: &Device,
    crypto: &Pool,
    input: &[(&[u8], std::net::SocketAddr)],
    outs: &mut [batch::PktBuf],
    gro: &mut GROTable,
    cache: &mut SourceCache,
    opened: &mut Vec<Opened>,
    now: Instant,
) {
    {
        let mut spaces: Vec<&mut [u8]> = outs
            .iter_mut()
            .map(|o| &mut o.space()[VIRTIO_NET_HDR_LEN..])
            .collect();
        dev.core
            .open_batch(input, &mut spaces, crypto, cache, opened, now);
    }
    // Opened packets move to the front, in order, for one TUN write.
    let mut ready = 0;
    for (k, o) in opened.iter().enumerate() {
        if let Opened::Packet(len) = *o {
            if k != ready {
                let (a, b) = outs.split_at_mut(k);
                std::mem::swap(&mut a[ready], &mut b[0]);
            }
            outs[ready].set_len(VIRTIO_NET_HDR_LEN + len);
            ready += 1;
        }
    }
    if ready > 0 {
        write_tun(dev, gro, &mut outs[..ready]);
    }
}

fn write_tun(dev: &Device, gro: &mut GROTable, outs: &mut [batch::PktBuf]) {
    if let Err(e) = dev.tun.read().send_multiple(gro, outs, VIRTIO_NET_HDR_LEN) {
        tracing::debug!(error = %e, "TUN write");
    }
}
