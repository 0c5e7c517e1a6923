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

struct Job<'a> {
    datagram: &'a [u8],
    receiver: &'a DataReceiver,
    out: &'a mut [u8],
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
    /// what became of datagram `k`.
    pub fn open_batch<W: Workers>(
        &self,
        datagrams: &[(&[u8], SocketAddr)],
        outs: &mut [&mut [u8]],
        workers: &W,
        cache: &mut SourceCache,
        opened: &mut Vec<Opened>,
        now: Instant,
    ) {
        self.clock.advance(now);
        opened.clear();
        let mut sessions: Vec<Session> = Vec::new();
        // Per datagram: the session it is for (None: done already).
        let mut plan: Vec<Option<usize>> = Vec::with_capacity(datagrams.len());
        for (k, &(d, from)) in datagrams.iter().enumerate() {
            if d.first() != Some(&4) {
                let r = match outs.get_mut(k) {
                    Some(out) => self.open(d, from, out, cache, now),
                    None => Opened::Nothing,
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
        let mut jobs: Vec<(usize, Job<'_>)> = Vec::with_capacity(datagrams.len());
        for (k, out) in outs.iter_mut().enumerate().take(datagrams.len()) {
            if let Some(s) = plan[k] {
                jobs.push((
                    k,
                    Job {
                        datagram: datagrams[k].0,
                        receiver: &sessions[s].receiver,
                        out,
                        outcome: Outcome::Bad,
                    },
                ));
            }
        }
        workers.each(&mut jobs, &|(_, j)| {
            j.outcome = match j.receiver.open_unmarked(j.datagram, j.out) {
                TunnResult::WriteToTunnelV4(p, src) => Outcome::Packet(p.len(), IpAddr::V4(src)),
                TunnResult::WriteToTunnelV6(p, src) => Outcome::Packet(p.len(), IpAddr::V6(src)),
                TunnResult::Done => Outcome::Keepalive,
                _ => Outcome::Bad,
            };
        });
        let outcomes: Vec<(usize, Outcome)> = jobs.iter().map(|(k, j)| (*k, j.outcome)).collect();
        drop(jobs);
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
        for s in &sessions {
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
