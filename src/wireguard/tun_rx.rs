//! TUN → UDP. With TUN offloads the kernel hands over TCP super-packets
//! (up to 64 KB); tun-rs splits them into MTU-sized packets, the core
//! seals them back to back into one buffer, and `wgcore::gso` says which
//! runs go out with one UDP GSO send: one TUN read and one UDP send per
//! super-packet instead of ~45 each.

use std::io;
use std::time::{Duration, Instant};

use tun_rs::{IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};
use wgcore::gso::{self, Flush, GsoBatch};
use wgcore::{Route, Sealed};

use super::device::Device;

/// Largest single packet (after GSO splitting): a jumbo-frame MTU.
pub const PKT_MAX: usize = 9216;

fn send(dev: &Device, out: &[u8], f: Option<Flush>) {
    if let Some(f) = f {
        dev.send_run(&out[f.range], f.seg, f.to);
    }
}

pub fn run(dev: &Device) {
    let mut orig = vec![0u8; VIRTIO_NET_HDR_LEN + 65_535];
    let mut bufs: Vec<Vec<u8>> = vec![vec![0u8; PKT_MAX]; IDEAL_BATCH_SIZE];
    let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
    let mut out = vec![0u8; gso::buffer_len(PKT_MAX + wgcore::SEAL_MIN)];
    let mut gone_logged = false;
    loop {
        let tun = dev.tun.read().clone();
        let n = match tun.recv_multiple(&mut orig, &mut bufs, &mut sizes, 0) {
            Ok(n) => {
                gone_logged = false;
                n
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::EBADFD) => {
                // The interface was deleted: wait for the agent to
                // recreate it (nothing is sent meanwhile: fail closed).
                if !std::mem::replace(&mut gone_logged, true) {
                    tracing::error!(error = %e, "TUN interface gone; outbound waits for it to be recreated");
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "TUN read");
                continue;
            }
        };
        let now = Instant::now();
        let mut batch = GsoBatch::new();
        // The route of the last destination, valid for this batch only.
        let mut route: Option<Route> = None;
        for i in 0..n {
            let pkt = &bufs[i][..sizes[i]];
            let Some(dst) = wgcore::dst_address(pkt) else {
                continue;
            };
            if route.as_ref().is_none_or(|r| r.dst() != dst) {
                route = dev.core.route(dst);
            }
            let Some(r) = &route else {
                continue;
            };
            let (off, f) = batch.next(r.endpoint());
            send(dev, &out, f);
            if let Sealed::Datagram(len) = dev.core.seal(r, pkt, &mut out[off..], now) {
                let f = batch.commit(len);
                send(dev, &out, f);
            }
        }
        let f = batch.finish();
        send(dev, &out, f);
        dev.flush();
    }
}
