//! TUN → UDP for a whole batch, with the crypto on the driver's workers.
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

use std::time::Instant;

use boringtun::noise::DataSender;

use crate::gso::{Flush, GsoBatch};
use crate::outbound::{Route, Sealed};
use crate::workers::Workers;
use crate::{Core, SEAL_MIN, SEAL_OVERHEAD};

/// A data packet's overhead on the wire (header, counter, tag).
const DATA_OVERHEAD: usize = 32;

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
        let mut batch = GsoBatch::contiguous();
        let mut senders: Vec<DataSender> = Vec::new();
        let mut places: Vec<Place> = Vec::with_capacity(pkts.len());
        // Each packet's destination, parsed once.
        let dsts: Vec<Option<std::net::IpAddr>> =
            pkts.iter().map(|p| crate::dst_address(p)).collect();
        let mut i = 0;
        while i < pkts.len() {
            let Some(dst) = dsts[i] else {
                i += 1;
                continue;
            };
            // A run of packets to one destination shares a route.
            let mut j = i + 1;
            while j < pkts.len() && dsts[j] == Some(dst) {
                j += 1;
            }
            let Some(route) = self.route(dst) else {
                i = j;
                continue;
            };
            let run = &pkts[i..j];
            let bytes: usize = run.iter().map(|p| p.len()).sum();
            let sender = {
                let mut t = route.link.tunn(&self.clock);
                t.data_sender(run.len() as u64, bytes)
            };
            match sender {
                Some(s) => {
                    let wire = bytes + DATA_OVERHEAD * run.len();
                    route.peer.sent_n(wire, run.len() as u64);
                    for (k, p) in run.iter().enumerate() {
                        let (off, f) = batch.next(route.endpoint());
                        runs.extend(f);
                        places.push((i + k, senders.len(), k as u64, off));
                        runs.extend(batch.commit(p.len() + DATA_OVERHEAD));
                    }
                    senders.push(s);
                }
                None => {
                    for p in run {
                        self.seal_one(&route, p, out, &mut batch, runs, now);
                    }
                }
            }
            i = j;
        }
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

    /// The one-packet path inside a batch: written in place if it yields a
    /// datagram.
    fn seal_one(
        &self,
        route: &Route,
        pkt: &[u8],
        out: &mut [u8],
        batch: &mut GsoBatch,
        runs: &mut Vec<Flush>,
        now: Instant,
    ) {
        let (off, f) = batch.next(route.endpoint());
        runs.extend(f);
        let room = (pkt.len() + SEAL_OVERHEAD).max(SEAL_MIN);
        let Some(space) = out.get_mut(off..off + room) else {
            return;
        };
        if let Sealed::Datagram(len) = self.seal(route, pkt, space, now) {
            runs.extend(batch.commit(len));
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
