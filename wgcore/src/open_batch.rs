//! UDP → TUN for a whole batch, with the crypto on the driver's workers.
//! Three steps: in input order, find each data packet's session (a handle
//! taken under its link's lock); then every packet is authenticated and
//! decrypted as an independent job; then, in input order again, the replay
//! check (each counter taken in the session's window in arrival order, so
//! of two copies of a packet the first to arrive wins, not the first
//! decrypted: an attacker's later copy from another address never opens
//! and never moves the endpoint), inbound cryptokey routing, the links'
//! timers and counters, and roaming, which follows only packets that
//! authenticated.
//! The driver writes the opened packets in input order: one peer's packets
//! reach the TUN in the order they arrived, however many workers opened
//! them.
//!
//! Anything but a data packet takes the one-datagram path
//! ([`Core::open`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use boringtun::noise::{DataReceiver, TunnResult};

use crate::inbound::{Opened, SourceCache, normalize};
use crate::peer::{Link, Peer};
use crate::workers::Workers;
use crate::{Core, DropCounters};

/// Smallest data packet: header, counter and tag (a keepalive).
const DATA_MIN: usize = 32;
/// Where a data packet's IP packet starts once opened in place.
pub const DATA_HEADER: usize = boringtun::noise::DATA_HEADER_SZ;
/// Scratch for the one-datagram path of an in-place batch: room for any
/// packet a handshake releases, sealed.
const SCRATCH: usize = 65_536 + 64;

/// What a job found.
#[derive(Clone, Copy)]
enum Outcome {
    /// Not opened (not authentic, a replay, or not an IP packet).
    Bad,
    /// An authenticated keepalive.
    Keepalive,
    /// An IP packet of this length from this source.
    Packet(usize, IpAddr),
}

/// Where a job's plaintext goes.
enum Buf<'a> {
    /// Decrypted from the datagram into another buffer.
    Copy(&'a [u8], &'a mut [u8]),
    /// Decrypted where it lies, after the datagram's header.
    InPlace(&'a mut [u8]),
}

struct Job<'a> {
    buf: Buf<'a>,
    receiver: &'a DataReceiver,
    outcome: Outcome,
}

/// A session met in this batch, with what its packets added up to.
struct Session {
    peer: Arc<Peer>,
    link: Arc<Link>,
    receiver: DataReceiver,
    data_packets: usize,
    data_bytes: usize,
    datagrams: u64,
    wire_bytes: usize,
    from: Option<SocketAddr>,
}

impl Core {
    fn session_for(&self, datagram: &[u8]) -> Option<(Arc<Peer>, Arc<Link>, DataReceiver)> {
        if datagram.len() < DATA_MIN {
            return None;
        }
        let idx = u32::from_le_bytes([datagram[4], datagram[5], datagram[6], datagram[7]]);
        let (peer, link) = self.state.read().by_index.get(&(idx >> 8)).cloned()?;
        let receiver = link.tunn(&self.clock).data_receiver(idx)?;
        Some((peer, link, receiver))
    }

    /// Open `datagrams` (with where each came from) into `outs` (one per
    /// datagram, each at least its datagram's length); `opened[k]` says
    /// what became of datagram `k` (a packet at `outs[k][..len]`).
    pub fn open_batch<W: Workers>(
        &self,
        datagrams: &[(&[u8], SocketAddr)],
        outs: &mut [&mut [u8]],
        workers: &W,
        cache: &mut SourceCache,
        opened: &mut Vec<Opened>,
        now: Instant,
    ) {
        let datagrams = &datagrams[..datagrams.len().min(outs.len())];
        let (mut sessions, plan) = self.plan_open(datagrams, Some(outs), cache, opened, now);
        let mut jobs: Vec<(usize, Job<'_>)> = Vec::with_capacity(datagrams.len());
        for (k, out) in outs.iter_mut().enumerate().take(datagrams.len()) {
            if let Some(s) = plan[k] {
                jobs.push((k, Job::new(Buf::Copy(datagrams[k].0, out), &sessions[s])));
            }
        }
        let outcomes = run_jobs(workers, jobs);
        self.finish_open(datagrams, &plan, &mut sessions, outcomes, cache, opened);
    }

    /// [`Core::open_batch`] in place: each data packet is decrypted where
    /// it lies, `opened[k]` a packet at `datagrams[k][DATA_HEADER..][..len]`
    /// (no copy of the ciphertext into another buffer).
    pub fn open_batch_in_place<W: Workers>(
        &self,
        datagrams: &mut [(&mut [u8], SocketAddr)],
        workers: &W,
        cache: &mut SourceCache,
        opened: &mut Vec<Opened>,
        now: Instant,
    ) {
        let view: Vec<(&[u8], SocketAddr)> = datagrams.iter().map(|(d, f)| (&**d, *f)).collect();
        let (mut sessions, plan) = self.plan_open(&view, None, cache, opened, now);
        drop(view);
        let mut jobs: Vec<(usize, Job<'_>)> = Vec::with_capacity(datagrams.len());
        for (k, (d, _)) in datagrams.iter_mut().enumerate() {
            if let Some(s) = plan[k] {
                jobs.push((k, Job::new(Buf::InPlace(d), &sessions[s])));
            }
        }
        let outcomes = run_jobs(workers, jobs);
        let view: Vec<(&[u8], SocketAddr)> = datagrams.iter().map(|(d, f)| (&**d, *f)).collect();
        self.finish_open(&view, &plan, &mut sessions, outcomes, cache, opened);
    }

    /// In input order: the session of each data packet (a replay is refused
    /// before it costs a decryption), and anything else through the
    /// one-datagram path (into `outs[k]`, or a scratch buffer).
    fn plan_open(
        &self,
        datagrams: &[(&[u8], SocketAddr)],
        mut outs: Option<&mut [&mut [u8]]>,
        cache: &mut SourceCache,
        opened: &mut Vec<Opened>,
        now: Instant,
    ) -> (Vec<Session>, Vec<Option<usize>>) {
        self.clock.advance(now);
        opened.clear();
        let mut sessions: Vec<Session> = Vec::new();
        // Per datagram: the session it is for (None: done already).
        let mut plan: Vec<Option<usize>> = Vec::with_capacity(datagrams.len());
        let mut scratch: Option<Vec<u8>> = None;
        for (k, &(d, from)) in datagrams.iter().enumerate() {
            if d.first() != Some(&4) {
                let r = match outs.as_deref_mut() {
                    Some(outs) => self.open(d, from, outs[k], cache, now),
                    None if crate::is_handshake(d) => {
                        // Nothing for the TUN; the scratch takes what the
                        // handshake releases (packets queued while it was
                        // pending, sealed, up to a jumbo super-packet).
                        let scratch = scratch.get_or_insert_with(|| vec![0u8; SCRATCH]);
                        match self.open(d, from, scratch, cache, now) {
                            Opened::Packet(_) => Opened::Nothing,
                            nothing => nothing,
                        }
                    }
                    None => {
                        DropCounters::count(&self.drops.invalid);
                        Opened::Nothing
                    }
                };
                opened.push(r);
                plan.push(None);
                continue;
            }
            opened.push(Opened::Nothing);
            let same = sessions
                .iter()
                .rposition(|s| d.get(4..8) == Some(&s.receiver.index().to_le_bytes()[..]));
            let s = match same {
                Some(s) => Some(s),
                None => self.session_for(d).map(|(peer, link, receiver)| {
                    sessions.push(Session {
                        peer,
                        link,
                        receiver,
                        data_packets: 0,
                        data_bytes: 0,
                        datagrams: 0,
                        wire_bytes: 0,
                        from: None,
                    });
                    sessions.len() - 1
                }),
            };
            // A replay is refused before it costs a decryption.
            let s = s.filter(|&s| sessions[s].receiver.fresh(d));
            if s.is_none() {
                DropCounters::count(&self.drops.invalid);
            }
            plan.push(s);
        }
        (sessions, plan)
    }

    /// In input order again: the replay check, cryptokey routing, and what
    /// each session's packets add up to (timers, counters, roaming).
    fn finish_open(
        &self,
        datagrams: &[(&[u8], SocketAddr)],
        plan: &[Option<usize>],
        sessions: &mut [Session],
        outcomes: Vec<(usize, Outcome)>,
        cache: &mut SourceCache,
        opened: &mut [Opened],
    ) {
        for (k, outcome) in outcomes {
            let Some(s) = plan[k].and_then(|s| sessions.get_mut(s)) else {
                continue;
            };
            let (d, from) = datagrams[k];
            if matches!(outcome, Outcome::Bad) || s.receiver.mark(d).is_err() {
                DropCounters::count(&self.drops.invalid);
                continue;
            }
            match outcome {
                Outcome::Bad => continue,
                Outcome::Keepalive => {}
                Outcome::Packet(len, src) => {
                    s.data_packets += 1;
                    s.data_bytes += len;
                    opened[k] = self.accept(&s.peer, len, src, cache);
                }
            }
            s.datagrams += 1;
            s.wire_bytes += d.len();
            s.from = Some(normalize(from));
        }
        for s in sessions.iter() {
            self.opened(s);
        }
    }

    /// What the authenticated packets of one session do: the link's timers
    /// and counters, and roaming to where they came from.
    fn opened(&self, s: &Session) {
        let Some(from) = s.from else {
            return;
        };
        s.link
            .tunn(&self.clock)
            .data_received(&s.receiver, s.data_packets, s.data_bytes);
        s.peer.received_n(s.wire_bytes, s.datagrams);
        if *s.peer.endpoint.read() != Some(from) {
            *s.peer.endpoint.write() = Some(from);
        }
        if !Arc::ptr_eq(&s.peer.active.read(), &s.link) {
            s.peer.reselect(&self.clock);
        }
        self.flush_pending(&s.peer, &s.link);
    }
}

impl<'a> Job<'a> {
    fn new(buf: Buf<'a>, session: &'a Session) -> Self {
        Job {
            buf,
            receiver: &session.receiver,
            outcome: Outcome::Bad,
        }
    }
}

/// Authenticate and decrypt every job on the workers; what each found, in
/// input order.
fn run_jobs<W: Workers>(workers: &W, mut jobs: Vec<(usize, Job<'_>)>) -> Vec<(usize, Outcome)> {
    workers.each(&mut jobs, &|(_, j)| {
        let r = match &mut j.buf {
            Buf::Copy(d, out) => j.receiver.open_unmarked(d, out),
            Buf::InPlace(d) => j.receiver.open_unmarked_in_place(d),
        };
        j.outcome = match r {
            // Shorter than its own header (an IPv4 total length of 0, say):
            // not a packet; the TUN path would refuse it, and its batch.
            TunnResult::WriteToTunnelV4(p, _) if p.len() < crate::IPV4_MIN => Outcome::Bad,
            TunnResult::WriteToTunnelV6(p, _) if p.len() < crate::IPV6_MIN => Outcome::Bad,
            TunnResult::WriteToTunnelV4(p, src) => Outcome::Packet(p.len(), IpAddr::V4(src)),
            TunnResult::WriteToTunnelV6(p, src) => Outcome::Packet(p.len(), IpAddr::V6(src)),
            TunnResult::Done => Outcome::Keepalive,
            _ => Outcome::Bad,
        };
    });
    jobs.iter().map(|(k, j)| (*k, j.outcome)).collect()
}
