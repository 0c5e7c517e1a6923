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

/// The stride for the largest packet.
const STRIDE_MAX: usize = wgcore::slot_len(PKT_MAX).next_multiple_of(64);

/// How often the slot stride follows the TUN's MTU (and at once after a
/// failed read: a packet longer than its slot fails the read).
const MTU_CHECK: Duration = Duration::from_millis(100);

/// A packet's slot in the batch buffer for a TUN of this MTU: tun-rs
/// writes the packet at [`SLOT_HEADROOM`] and the core seals it there
/// (header before, tag after), so no packet is copied between the TUN
/// read and the UDP send. Slots as small as the MTU allows keep a batch
/// within the caches (a batch of 45 full-size packets in 9 KB slots
/// spans 420 KB; in 1.5 KB slots, 68 KB).
fn stride_for(mtu: io::Result<u16>) -> usize {
    // Unknown: room for the largest packet.
    let max = mtu.map_or(PKT_MAX, usize::from).clamp(1280, PKT_MAX);
    wgcore::slot_len(max).next_multiple_of(64)
}

/// Whether the TUN has a packet waiting now (never blocks).
fn ready(tun: &tun_rs::SyncDevice) -> bool {
    let mut fds = [PollFd::new(tun.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(1))
}

/// Read a batch into the slots of `buf` (packet `k` at `k * stride +
/// SLOT_HEADROOM`, its length in `sizes[k]`; packets up to what the slot
/// can seal): one blocking read, then, when `drain`, whatever is already
/// waiting while room is left. Returns how many packets were read.
fn read_batch(
    tun: &tun_rs::SyncDevice,
    orig: &mut [u8],
    buf: &mut [u8],
    stride: usize,
    sizes: &mut [usize],
    drain: bool,
) -> io::Result<usize> {
    let max = stride - wgcore::SEAL_OVERHEAD;
    let mut slots: Vec<&mut [u8]> = buf
        .chunks_exact_mut(stride)
        .take(SLOTS)
        .map(|s| &mut s[..SLOT_HEADROOM + max])
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
    let mut buf = vec![0u8; SLOTS * STRIDE_MAX];
    let mut stride = STRIDE_MAX;
    let mut next_check = Instant::now();
    let mut sizes = vec![0usize; SLOTS];
    let drain = std::env::var_os("PODGUARD_TUN_ONE_READ").is_none();
    let mut dgrams: Vec<Range<usize>> = Vec::new();
    let mut runs: Vec<SlotRun> = Vec::new();
    let mut gone_logged = false;
    let crypto = dev.crypto_pool();
    loop {
        let tun = dev.tun.read().clone();
        if Instant::now() >= next_check {
            stride = stride_for(tun.mtu());
            next_check = Instant::now() + MTU_CHECK;
        }
        let n = match read_batch(&tun, &mut orig, &mut buf, stride, &mut sizes, drain) {
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
                next_check = Instant::now();
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "TUN read");
                // The MTU may have grown past the slots.
                next_check = Instant::now();
                continue;
            }
        };
        dgrams.clear();
        runs.clear();
        dev.core.seal_batch_in_place(
            &mut buf,
            stride,
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
