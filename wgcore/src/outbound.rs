//! TUN → UDP: cryptokey routing (destination → peer by longest-prefix
//! AllowedIPs; no peer or no endpoint → dropped and counted, never sent in
//! plaintext) and sealing one packet on the peer's active link. A link
//! without a session whose last initiation is younger than REKEY_TIMEOUT
//! holds the packet instead of starting another handshake.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use boringtun::noise::{Tunn, TunnResult};

use crate::peer::{Link, Peer, has_session};
use crate::{Core, DropCounters, SEAL_MIN, SEAL_OVERHEAD};

/// Where packets to one destination go: its peer, that peer's active link
/// and endpoint. Valid for a batch: a driver looks it up once per run of
/// packets to the same destination.
#[derive(Clone)]
pub struct Route {
    dst: IpAddr,
    pub(crate) peer: Arc<Peer>,
    pub(crate) link: Arc<Link>,
    endpoint: SocketAddr,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("dst", &self.dst)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Route {
    /// The destination this route was looked up for.
    pub fn dst(&self) -> IpAddr {
        self.dst
    }
    /// Where the sealed datagrams go.
    pub fn endpoint(&self) -> SocketAddr {
        self.endpoint
    }
}

/// What became of a packet handed to [`Core::seal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sealed {
    /// `out[..n]` is a datagram for the route's endpoint (data, or a
    /// handshake initiation when the link had no session yet).
    Datagram(usize),
    /// Kept until a handshake completes.
    Held,
    /// Dropped (counted).
    Dropped,
}

/// The destination address of an IP packet, if it is one.
pub fn dst_address(pkt: &[u8]) -> Option<IpAddr> {
    Tunn::dst_address(pkt)
}

impl Core {
    /// The route for `dst`; none (counted as a drop) without a peer whose
    /// AllowedIPs hold it, or without an endpoint for that peer.
    pub fn route(&self, dst: IpAddr) -> Option<Route> {
        let found = {
            let st = self.state.read();
            st.table.longest_match(dst).map(|(_, p)| p.clone())
        };
        let Some(peer) = found else {
            DropCounters::count(&self.drops.no_peer);
            return None;
        };
        let Some(endpoint) = *peer.endpoint.read() else {
            DropCounters::count(&self.drops.no_endpoint);
            return None;
        };
        let link = peer.active.read().clone();
        Some(Route {
            dst,
            peer,
            link,
            endpoint,
        })
    }

    /// Seal `pkt` for `route` into `out` (at least `pkt.len() +
    /// SEAL_OVERHEAD` and `SEAL_MIN` bytes).
    pub fn seal(&self, route: &Route, pkt: &[u8], out: &mut [u8], now: Instant) -> Sealed {
        let now = self.clock.advance(now);
        let room = (pkt.len() + SEAL_OVERHEAD).max(SEAL_MIN);
        if out.len() < room {
            DropCounters::count(&self.drops.invalid);
            return Sealed::Dropped;
        }
        let link = &route.link;
        let mut t = link.tunn(&self.clock);
        if !has_session(&t) && link.init_paced(now) {
            drop(t);
            if !link.hold(pkt) {
                DropCounters::count(&self.drops.pending_overflow);
            }
            return Sealed::Held;
        }
        match t.encapsulate(pkt, &mut out[..room]) {
            TunnResult::WriteToNetwork(b) => {
                if b.first() == Some(&1) {
                    route.peer.init_sent(link, now);
                }
                route.peer.sent(b.len());
                Sealed::Datagram(b.len())
            }
            TunnResult::Err(e) => {
                tracing::debug!(?e, "encapsulate");
                Sealed::Dropped
            }
            // Queued in the Tunn while its handshake is under way.
            _ => Sealed::Held,
        }
    }

    /// Send what `link` held while its handshake was paced, now that it
    /// has a session.
    pub(crate) fn flush_pending(&self, peer: &Peer, link: &Link) {
        if link.pending.lock().is_empty() {
            return;
        }
        let Some(ep) = *peer.endpoint.read() else {
            return;
        };
        let mut t = link.tunn(&self.clock);
        if !has_session(&t) {
            return;
        }
        let held: Vec<Vec<u8>> = link.pending.lock().drain(..).collect();
        let mut buf = vec![0u8; 65_536 + SEAL_OVERHEAD];
        for p in held {
            let room = (p.len() + SEAL_OVERHEAD).max(SEAL_MIN).min(buf.len());
            if let TunnResult::WriteToNetwork(b) = t.encapsulate(&p, &mut buf[..room]) {
                peer.sent(b.len());
                self.queue(ep, b);
            }
        }
    }
}
