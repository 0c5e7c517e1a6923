//! TUN → UDP for a whole batch, with the crypto on the driver's workers:
//! the copying layout, packets sealed back to back into one buffer (the
//! device seals in place instead, [`Core::seal_batch_in_place`], which
//! shares this file's planning, [`Core::plan_seal`]; the criterion bench
//! and some tests use this one).
//! Three steps: under the links' locks, in input order, route each packet,
//! reserve its sending counter and place its datagram in the output (GSO
//! runs laid out contiguously; a sealed data packet is exactly 32 bytes
//! longer than the packet, so every place is known before any is
//! written); then every packet is sealed as an independent job; then the
//! driver sends the runs in order. Packets to one peer leave in the order
//! they came and with increasing counters, however many workers sealed
//! them.
//!
//! A link without a session takes the one-packet path ([`Core::seal`]):
//! the packet is held, or an initiation takes its place in the output.

use std::net::IpAddr;
use std::time::Instant;

use boringtun::noise::DataSender;

use crate::gso::{Flush, GsoBatch};
use crate::outbound::{Route, Sealed};
use crate::workers::Workers;
use crate::{Core, SEAL_MIN, SEAL_OVERHEAD};

/// A data packet's overhead on the wire (header, counter, tag).
pub(crate) const DATA_OVERHEAD: usize = 32;

/// One packet's sealing: independent of every other.
struct Job<'a> {
    pkt: &'a [u8],
    sender: &'a DataSender,
    i: u64,
    out: &'a mut [u8],
}

/// The buffer [`Core::seal_batch`] needs for packets of these sizes.
pub fn batch_buffer_len<I: IntoIterator<Item = usize>>(sizes: I) -> usize {
    sizes
        .into_iter()
        .map(|n| (n + SEAL_OVERHEAD).max(SEAL_MIN))
        .sum()
}

/// A packet's place in the batch: (packet, sender, counter index, output
/// offset).
type Place = (usize, usize, u64, usize);

/// Where the datagrams of a batch go, decided packet by packet while the
/// batch is planned: back to back in one buffer ([`Core::seal_batch`]) or
/// each in its packet's own slot ([`Core::seal_batch_in_place`]).
pub(crate) trait Layout {
    /// Packet `k` is sealed with counter `i` of sender `s` into a datagram
    /// of `len` bytes for `to`.
    fn data(&mut self, k: usize, s: usize, i: u64, to: std::net::SocketAddr, len: usize);
    /// Packet `k`'s link has no session: the one-packet path, now.
    fn one(&mut self, core: &Core, route: &Route, k: usize, now: Instant);
}

impl Core {
    /// Seal `pkts` (IP packets read from the TUN, in order) into `out`
    /// (at least [`batch_buffer_len`] of their sizes) and append to `runs`
    /// the GSO runs to send, in order. Packets without a route are dropped
    /// and counted; control datagrams (initiations for links without a
    /// session go in the output) are queued as transmits.
    pub fn seal_batch<W: Workers>(
        &self,
        pkts: &[&[u8]],
        out: &mut [u8],
        workers: &W,
        runs: &mut Vec<Flush>,
        now: Instant,
    ) {
        self.clock.advance(now);
        let dsts: Vec<Option<IpAddr>> = pkts.iter().map(|p| crate::dst_address(p)).collect();
        let lens: Vec<usize> = pkts.iter().map(|p| p.len()).collect();
        let mut layout = Contiguous {
            batch: GsoBatch::contiguous(),
            places: Vec::with_capacity(pkts.len()),
            runs,
            out,
            pkts,
        };
        let senders = self.plan_seal(&dsts, &lens, &mut layout, now);
        let Contiguous {
            mut batch,
            places,
            runs,
            out,
            ..
        } = layout;
        runs.extend(batch.finish());
        let mut jobs = split_jobs(pkts, &senders, &places, out);
        workers.each(&mut jobs, &|j| {
            if j.sender.seal(j.i, j.pkt, j.out).is_none() {
                // Placed with the wrong size: cannot happen (the layout
                // and the seal agree on the overhead).
                tracing::error!("seal_batch: a job did not fit its place");
            }
        });
    }

    /// The first step of a batch, in input order under the links' locks:
    /// route each packet (`dsts`, `lens`: each packet's destination and
    /// length), reserve sending counters for runs of packets to one
    /// destination and give each packet its place through `layout`.
    /// Returns the senders the places refer to.
    pub(crate) fn plan_seal<L: Layout>(
        &self,
        dsts: &[Option<IpAddr>],
        lens: &[usize],
        layout: &mut L,
        now: Instant,
    ) -> Vec<DataSender> {
        let mut senders: Vec<DataSender> = Vec::new();
        let mut i = 0;
        while i < dsts.len() {
            let Some(dst) = dsts[i] else {
                i += 1;
                continue;
            };
            // A run of packets to one destination shares a route.
            let mut j = i + 1;
            while j < dsts.len() && dsts[j] == Some(dst) {
                j += 1;
            }
            let Some(route) = self.route(dst) else {
                i = j;
                continue;
            };
            let run = &lens[i..j];
            let bytes: usize = run.iter().sum();
            let sender = {
                let mut t = route.link.tunn(&self.clock);
                t.data_sender(run.len() as u64, bytes)
            };
            match sender {
                Some(s) => {
                    let wire = bytes + DATA_OVERHEAD * run.len();
                    route.peer.sent_n(wire, run.len() as u64);
                    let to = route.endpoint();
                    for (k, len) in run.iter().enumerate() {
                        layout.data(i + k, senders.len(), k as u64, to, len + DATA_OVERHEAD);
                    }
                    senders.push(s);
                }
                None => {
                    for k in i..j {
                        layout.one(self, &route, k, now);
                    }
                }
            }
            i = j;
        }
        senders
    }
}

/// [`Core::seal_batch`]'s layout: datagrams back to back in `out`.
struct Contiguous<'a, 'p> {
    batch: GsoBatch,
    places: Vec<Place>,
    runs: &'a mut Vec<Flush>,
    out: &'a mut [u8],
    pkts: &'a [&'p [u8]],
}

impl Layout for Contiguous<'_, '_> {
    fn data(&mut self, k: usize, s: usize, i: u64, to: std::net::SocketAddr, len: usize) {
        let (off, f) = self.batch.next(to);
        self.runs.extend(f);
        self.places.push((k, s, i, off));
        self.runs.extend(self.batch.commit(len));
    }

    /// Written in place if it yields a datagram.
    fn one(&mut self, core: &Core, route: &Route, k: usize, now: Instant) {
        let pkt = self.pkts[k];
        let (off, f) = self.batch.next(route.endpoint());
        self.runs.extend(f);
        let room = (pkt.len() + SEAL_OVERHEAD).max(SEAL_MIN);
        let Some(space) = self.out.get_mut(off..off + room) else {
            return;
        };
        if let Sealed::Datagram(len) = core.seal(route, pkt, space, now) {
            self.runs.extend(self.batch.commit(len));
        }
    }
}

/// The jobs, each with its own disjoint slice of `out`.
fn split_jobs<'a>(
    pkts: &[&'a [u8]],
    senders: &'a [DataSender],
    places: &[Place],
    out: &'a mut [u8],
) -> Vec<Job<'a>> {
    let mut jobs = Vec::with_capacity(places.len());
    let mut rest = out;
    let mut base = 0;
    for &(p, s, i, off) in places {
        let pkt = pkts[p];
        let tail = std::mem::take(&mut rest);
        let Some(tail) = off.checked_sub(base).and_then(|gap| tail.get_mut(gap..)) else {
            break;
        };
        let len = (pkt.len() + DATA_OVERHEAD).min(tail.len());
        let (mine, after) = tail.split_at_mut(len);
        rest = after;
        base = off + len;
        jobs.push(Job {
            pkt,
            sender: &senders[s],
            i,
            out: mine,
        });
    }
    jobs
}
