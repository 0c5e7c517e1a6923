//! TUN → UDP for a whole batch without copying a data packet: the driver reads
//! each packet into its own slot of one buffer (at [`SLOT_HEADROOM`], the
//! room for the data header), and each is sealed where it lies, header
//! before it and tag after it. [`Core::seal_batch`] instead seals copies
//! back to back, so that a GSO run is one contiguous range; here a run is
//! a list of slots, which the driver hands to one `sendmsg` as one iovec
//! per datagram (the kernel joins them, then cuts them at the segment
//! size again). The planning (routes, counters, GSO runs, the one-packet
//! path for links without a session) is [`Core::plan_seal`], shared with
//! the copying path, so both keep a peer's packets in order with
//! increasing counters. Only a packet whose link has no session yet (the
//! rare one-packet path, held or replaced by an initiation) is copied.

use std::net::SocketAddr;
use std::ops::Range;
use std::time::Instant;

use boringtun::noise::DataSender;

use crate::gso::{Flush, GsoBatch};
use crate::open_batch::DATA_HEADER;
use crate::outbound::{Route, Sealed};
use crate::seal_batch::{DATA_OVERHEAD, Layout};
use crate::workers::Workers;
use crate::{Core, DropCounters, SEAL_MIN, SEAL_OVERHEAD};

/// Bytes of a slot before its packet: the data header is written there.
pub const SLOT_HEADROOM: usize = DATA_HEADER;

/// The slot stride for packets of up to `max_packet` bytes: room for the
/// header, the packet and its tag, or for a handshake initiation (written
/// instead of a packet whose link has no session).
pub const fn slot_len(max_packet: usize) -> usize {
    let n = max_packet.saturating_add(SEAL_OVERHEAD);
    if n > SEAL_MIN { n } else { SEAL_MIN }
}

/// A GSO run of [`Core::seal_batch_in_place`]: the datagrams
/// `dgrams[range]`, all of `seg` bytes except possibly a shorter last one,
/// to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRun {
    /// Which datagrams (indices into the batch's datagram list).
    pub range: Range<usize>,
    /// Segment size.
    pub seg: usize,
    /// Destination.
    pub to: SocketAddr,
}

/// One packet's sealing in its slot.
struct Job<'a> {
    slot: &'a mut [u8],
    len: usize,
    sender: &'a DataSender,
    i: u64,
}

/// [`Core::seal_batch_in_place`]'s layout: each datagram in its packet's
/// slot. The GSO runs are planned by a [`GsoBatch`] over the offsets the
/// datagrams would have back to back; `starts` maps them to datagrams.
struct Slots<'a> {
    batch: GsoBatch,
    buf: &'a mut [u8],
    stride: usize,
    lens: &'a [usize],
    /// Sealing jobs to come: (packet, sender, counter index).
    places: Vec<(usize, usize, u64)>,
    dgrams: &'a mut Vec<Range<usize>>,
    /// Each datagram's offset back to back (first of this batch at 0).
    starts: Vec<usize>,
    /// The batch's first entry in `dgrams`.
    base: usize,
    runs: &'a mut Vec<SlotRun>,
}

impl Slots<'_> {
    fn flush(&mut self, f: Option<Flush>) {
        let Some(f) = f else { return };
        let first = self.starts.partition_point(|&v| v < f.range.start);
        let end = self.starts.partition_point(|&v| v < f.range.end);
        self.runs.push(SlotRun {
            range: self.base + first..self.base + end,
            seg: f.seg,
            to: f.to,
        });
    }

    fn place(&mut self, k: usize, to: SocketAddr, len: usize) {
        let (v, f) = self.batch.next(to);
        self.flush(f);
        self.starts.push(v);
        let off = k * self.stride;
        self.dgrams.push(off..off + len);
        let f = self.batch.commit(len);
        self.flush(f);
    }
}

impl Layout for Slots<'_> {
    fn data(&mut self, k: usize, s: usize, i: u64, to: SocketAddr, len: usize) {
        self.places.push((k, s, i));
        self.place(k, to, len);
    }

    /// The packet is copied out (this path is rare: a link waiting for
    /// its handshake); an initiation may take its slot.
    fn one(&mut self, core: &Core, route: &Route, k: usize, now: Instant) {
        let off = k * self.stride;
        let pkt = self.buf[off + SLOT_HEADROOM..][..self.lens[k]].to_vec();
        let slot = &mut self.buf[off..off + self.stride];
        if let Sealed::Datagram(len) = core.seal(route, &pkt, slot, now) {
            self.place(k, route.endpoint(), len);
        }
    }
}

impl Core {
    /// Seal a batch where the driver read it: packet `k` (of `lens[k]`
    /// bytes, in input order) lies at `buf[k * stride + SLOT_HEADROOM..]`,
    /// and its datagram becomes `buf[k * stride..][..len + 32]`. `stride`
    /// is at least [`slot_len`] of the largest packet; a packet too long
    /// for its slot is dropped (counted invalid). Appends each datagram's
    /// range in `buf` to `dgrams` and the GSO runs over them to `runs`, in
    /// sending order. Packets without a route are dropped and counted.
    #[allow(clippy::too_many_arguments)]
    pub fn seal_batch_in_place<W: Workers>(
        &self,
        buf: &mut [u8],
        stride: usize,
        lens: &[usize],
        workers: &W,
        dgrams: &mut Vec<Range<usize>>,
        runs: &mut Vec<SlotRun>,
        now: Instant,
    ) {
        self.clock.advance(now);
        if stride == 0 {
            // No slot holds anything: every packet is dropped.
            for _ in lens {
                DropCounters::count(&self.drops.invalid);
            }
            return;
        }
        let fits = |k: usize, len: usize| {
            slot_len(len) <= stride && (k + 1).saturating_mul(stride) <= buf.len()
        };
        let dsts: Vec<_> = lens
            .iter()
            .enumerate()
            .map(|(k, &len)| {
                if !fits(k, len) {
                    DropCounters::count(&self.drops.invalid);
                    return None;
                }
                crate::dst_address(&buf[k * stride + SLOT_HEADROOM..][..len])
            })
            .collect();
        let base = dgrams.len();
        let mut layout = Slots {
            batch: GsoBatch::contiguous(),
            buf,
            stride,
            lens,
            places: Vec::with_capacity(lens.len()),
            dgrams,
            starts: Vec::with_capacity(lens.len()),
            base,
            runs,
        };
        let senders = self.plan_seal(&dsts, lens, &mut layout, now);
        let f = layout.batch.finish();
        layout.flush(f);
        let Slots {
            buf, places, lens, ..
        } = layout;
        let mut jobs = slot_jobs(buf, stride, lens, &senders, &places);
        workers.each(&mut jobs, &|j| {
            if j.sender.seal_in_place(j.i, j.slot, j.len).is_none() {
                // Checked by `fits` before planning: cannot happen.
                tracing::error!("seal_batch_in_place: a packet did not fit its slot");
            }
        });
    }
}

/// The jobs, each with its own slot (`places` is in packet order).
fn slot_jobs<'a>(
    buf: &'a mut [u8],
    stride: usize,
    lens: &[usize],
    senders: &'a [DataSender],
    places: &[(usize, usize, u64)],
) -> Vec<Job<'a>> {
    let mut slots = buf.chunks_mut(stride).enumerate();
    let mut jobs = Vec::with_capacity(places.len());
    for &(k, s, i) in places {
        let Some((_, slot)) = slots.find(|(j, _)| *j == k) else {
            break;
        };
        jobs.push(Job {
            slot,
            len: lens[k],
            sender: &senders[s],
            i,
        });
    }
    debug_assert!(jobs.iter().all(|j| j.len + DATA_OVERHEAD <= j.slot.len()));
    jobs
}
