//! TUN → UDP. With TUN offloads the kernel hands over TCP super-packets
//! (up to 64 KB); tun-rs splits them into MTU-sized packets, each into
//! its own slot of one buffer, the core seals each where it lies (the
//! crypto on the device's workers) and says which runs of slots go out
//! with one UDP GSO send (one iovec per datagram): one TUN
//! read and one UDP send per super-packet instead of ~45 each. When more
//! super-packets are already waiting (many flows, or a flow whose TCP
//! sends less than 64 KB at a time), they join the batch: their
//! datagrams to one peer can share GSO runs (a run still ends at a
//! shorter datagram or at 64 KB), so a peer receives fewer sends.

use std::io::{self, IoSlice};
use std::ops::Range;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use tun_rs::{IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};
use wgcore::{SLOT_HEADROOM, SlotRun, gso};

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

/// A packet's slot in the batch buffer: tun-rs writes the packet at
/// [`SLOT_HEADROOM`] and the core seals it there (header before, tag
/// after), so no packet is copied between the TUN read and the UDP send.
/// Every slot holds the largest packet, whatever the TUN's MTU now: a
/// stride that followed the MTU (tried in session 15) lost the first
/// larger super-packet after the MTU was raised, because tun-rs takes a
/// packet off the TUN before it finds it too long for its slot, and it
/// measured no faster (bench/README.md, "Session 15").
const STRIDE: usize = wgcore::slot_len(PKT_MAX).next_multiple_of(64);

/// Room in a slot for tun-rs' view of it, and for what the core seals
/// there (it drops a packet whose `slot_len` exceeds the stride).
const _: () = assert!(SLOT_HEADROOM + PKT_MAX <= STRIDE && wgcore::slot_len(PKT_MAX) <= STRIDE);

/// Whether the TUN has a packet waiting now (never blocks).
fn ready(tun: &tun_rs::SyncDevice) -> bool {
    let mut fds = [PollFd::new(tun.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(1))
}

/// Read a batch into the slots of `buf` (packet `k` at `k * STRIDE +
/// SLOT_HEADROOM`, at most [`PKT_MAX`] bytes, its length in `sizes[k]`):
/// one blocking read, then, when `drain`, whatever is already waiting
/// while room is left. Returns how many packets were read.
fn read_batch(
    tun: &tun_rs::SyncDevice,
    orig: &mut [u8],
    buf: &mut [u8],
    sizes: &mut [usize],
    drain: bool,
) -> io::Result<usize> {
    let mut slots: Vec<&mut [u8]> = buf
        .chunks_exact_mut(STRIDE)
        .map(|s| &mut s[..SLOT_HEADROOM + PKT_MAX])
        .collect();
    let mut n = tun.recv_multiple(orig, &mut slots, sizes, SLOT_HEADROOM)?;
    // What is already waiting joins the batch.
    while drain && n + ROOM_FOR_ONE <= SLOTS && ready(tun) {
        match tun.recv_multiple(orig, &mut slots[n..], &mut sizes[n..], SLOT_HEADROOM) {
            Ok(more) => n += more,
            Err(e) => {
                // As for the first read: that packet is lost, the batch so
                // far goes out.
                tracing::debug!(error = %e, "TUN read");
                break;
            }
        }
    }
    Ok(n)
}

pub fn run(dev: &Device) {
    let mut orig = vec![0u8; VIRTIO_NET_HDR_LEN + 65_535];
    let mut buf = vec![0u8; SLOTS * STRIDE];
    let mut sizes = vec![0usize; SLOTS];
    let drain = std::env::var_os("PODGUARD_TUN_ONE_READ").is_none();
    let mut dgrams: Vec<Range<usize>> = Vec::new();
    let mut runs: Vec<SlotRun> = Vec::new();
    let mut gone_logged = false;
    let crypto = dev.crypto_pool();
    loop {
        let tun = dev.tun.read().clone();
        let n = match read_batch(&tun, &mut orig, &mut buf, &mut sizes, drain) {
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
        dgrams.clear();
        runs.clear();
        dev.core.seal_batch_in_place(
            &mut buf,
            STRIDE,
            &sizes[..n],
            &crypto,
            &mut dgrams,
            &mut runs,
            Instant::now(),
        );
        let mut iov: Vec<IoSlice> = Vec::with_capacity(gso::MAX_GSO_SEGMENTS);
        for r in &runs {
            iov.clear();
            iov.extend(
                dgrams[r.range.clone()]
                    .iter()
                    .map(|d| IoSlice::new(&buf[d.clone()])),
            );
            dev.send_run(&iov, r.seg, r.to);
        }
        dev.flush();
    }
}
