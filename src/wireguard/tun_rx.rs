//! TUN → UDP. With TUN offloads the kernel hands over TCP super-packets
//! (up to 64 KB); tun-rs splits them into MTU-sized packets, the core
//! seals them back to back into one buffer (the crypto on the device's
//! workers), and says which runs go out with one UDP GSO send: one TUN
//! read and one UDP send per super-packet instead of ~45 each. When more
//! super-packets are already waiting (many flows, or a flow whose TCP
//! sends less than 64 KB at a time), they join the batch: their
//! datagrams to one peer can share GSO runs (a run still ends at a
//! shorter datagram or at 64 KB), so a peer receives fewer sends.

use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use tun_rs::{IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};
use wgcore::gso;

use super::device::Device;

/// Largest single packet (after GSO splitting): a jumbo-frame MTU.
pub const PKT_MAX: usize = 9216;

/// Packet slots per batch: room for several super-packets.
const SLOTS: usize = 3 * IDEAL_BATCH_SIZE;
/// Another read joins the batch only while this many slots are free: as
/// many as the first read has. tun-rs takes a super-packet off the TUN
/// before it knows its segment count, and drops it if the slots cannot
/// hold every segment (a 64 KB super-packet with a small MSS has more
/// than 64).
const ROOM_FOR_ONE: usize = IDEAL_BATCH_SIZE;

/// Whether the TUN has a packet waiting now (never blocks).
fn ready(tun: &tun_rs::SyncDevice) -> bool {
    let mut fds = [PollFd::new(tun.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(1))
}

pub fn run(dev: &Device) {
    let mut orig = vec![0u8; VIRTIO_NET_HDR_LEN + 65_535];
    let mut bufs: Vec<Vec<u8>> = vec![vec![0u8; PKT_MAX]; SLOTS];
    let mut sizes = vec![0usize; SLOTS];
    // Room for a whole batch: its crypto runs before any of it is sent.
    let mut out = vec![0u8; wgcore::batch_buffer_len([PKT_MAX; SLOTS])];
    let drain = std::env::var_os("PODGUARD_TUN_ONE_READ").is_none();
    let mut runs: Vec<gso::Flush> = Vec::new();
    let mut gone_logged = false;
    let crypto = dev.crypto_pool();
    loop {
        let tun = dev.tun.read().clone();
        let mut n = match tun.recv_multiple(&mut orig, &mut bufs, &mut sizes, 0) {
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
        // What is already waiting joins the batch.
        while drain && n + ROOM_FOR_ONE <= SLOTS && ready(&tun) {
            match tun.recv_multiple(&mut orig, &mut bufs[n..], &mut sizes[n..], 0) {
                Ok(more) => n += more,
                Err(e) => {
                    // As for the first read: that packet is lost, the
                    // batch so far goes out.
                    tracing::debug!(error = %e, "TUN read");
                    break;
                }
            }
        }
        let pkts: Vec<&[u8]> = bufs[..n]
            .iter()
            .zip(&sizes[..n])
            .map(|(b, &len)| &b[..len])
            .collect();
        runs.clear();
        dev.core
            .seal_batch(&pkts, &mut out, &crypto, &mut runs, Instant::now());
        for f in runs.drain(..) {
            dev.send_run(&out[f.range], f.seg, f.to);
        }
        dev.flush();
    }
}
