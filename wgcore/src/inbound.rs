//! UDP → TUN: screening handshake messages in WireGuard's order, opening
//! data packets, inbound cryptokey routing (a decrypted packet whose
//! source is outside the sending peer's AllowedIPs is dropped), and
//! roaming, which follows only packets that authenticated.
//!
//! Screening, before any DH: mac1 against the local key (a keyed hash);
//! under load, mac2 too, and a message without a valid one gets a cookie
//! reply and nothing else; with a valid one, its source is still held to
//! a per-source rate. Every handshake message counts towards the load.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;
use keys::PublicKey;

use crate::peer::{Link, Peer, has_session};
use crate::{Core, DropCounters};

/// Whether a datagram is a handshake message (initiation, response or
/// cookie reply): drivers queue these apart from data, so that a flood of
/// them never holds up decryption.
pub fn is_handshake(datagram: &[u8]) -> bool {
    matches!(datagram.first(), Some(1..=3))
}

/// Whether a handshake message has its type's exact size (initiation 148,
/// response 92, cookie reply 64 bytes). Drivers drop anything else before
/// copying it into the handshake queue: a flood of 64 KB datagrams whose
/// first byte says "initiation" must not fill the queue with megabytes.
pub fn handshake_size_ok(datagram: &[u8]) -> bool {
    matches!(
        (datagram.first(), datagram.len()),
        (Some(1), 148) | (Some(2), 92) | (Some(3), 64)
    )
}

/// v4-mapped IPv6 addresses (from a dual-stack socket) back to IPv4.
pub(crate) fn normalize(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => a,
        },
        _ => a,
    }
}

/// The last inbound source check, kept by a driver for one receive batch
/// (a peer change takes effect from the next batch on).
#[derive(Debug, Default)]
pub struct SourceCache(Option<(usize, IpAddr, bool)>);

/// What became of a datagram handed to [`Core::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// `out[..len]` is an IP packet for the TUN (opened in place:
    /// `datagram[DATA_HEADER..][..len]`).
    Packet(usize),
    /// Nothing for the TUN (a handshake message, a keepalive, or a drop;
    /// replies are queued as transmits).
    Nothing,
}

/// What the cheap checks say of a handshake message.
enum Screen {
    /// Passed; worth the DH.
    Pass,
    /// Answered with a cookie reply, or over its source's limit.
    Refused,
    /// mac1 is not valid.
    Invalid,
}

impl Core {
    fn screen(
        &self,
        rl: &RateLimiter,
        datagram: &[u8],
        from: SocketAddr,
        out: &mut [u8],
    ) -> Screen {
        self.clock.enter();
        let load = self.handshakes.fetch_add(1, Ordering::Relaxed);
        match rl.verify_packet(Some(from.ip()), datagram, out) {
            Ok(_) => {
                if load >= crate::HANDSHAKE_RATE_LIMIT
                    && !self.sources.lock().allow(from.ip(), self.clock.current())
                {
                    DropCounters::count(&self.drops.source_limited);
                    return Screen::Refused;
                }
                Screen::Pass
            }
            Err(TunnResult::WriteToNetwork(cookie)) => {
                DropCounters::count(&self.drops.under_load);
                self.queue(from, cookie);
                Screen::Refused
            }
            Err(_) => Screen::Invalid,
        }
    }

    /// Screen an initiation against each local key, then identify its
    /// sender with one DH (for the key whose mac1 matched). A link for a
    /// (local, remote) pair seen for the first time is created here.
    fn initiation(
        &self,
        p: &boringtun::noise::HandshakeInit<'_>,
        datagram: &[u8],
        from: SocketAddr,
        out: &mut [u8],
    ) -> Result<(Arc<Peer>, Arc<Link>), Screen> {
        let limiters: Vec<(x25519::PublicKey, Arc<RateLimiter>)> = self
            .state
            .read()
            .keys
            .iter()
            .map(|k| (k.public, k.screen.clone()))
            .collect();
        let mut matched = None;
        for (public, rl) in limiters {
            match self.screen(&rl, datagram, from, out) {
                Screen::Pass => {
                    matched = Some(public);
                    break;
                }
                Screen::Refused => return Err(Screen::Refused),
                Screen::Invalid => continue,
            }
        }
        let local = matched.ok_or(Screen::Invalid)?;
        let (remote, peer) = {
            let st = self.state.read();
            let k = st.local_key(&local).ok_or(Screen::Invalid)?;
            self.initiations_read.fetch_add(1, Ordering::Relaxed);
            let hh = parse_handshake_anon(&k.secret, &k.public, p).map_err(|_| Screen::Invalid)?;
            let remote = PublicKey::from_bytes(hh.peer_static_public);
            let primary = st.next_keys.get(&remote).copied().unwrap_or(remote);
            (
                remote,
                st.peers.get(&primary).ok_or(Screen::Invalid)?.clone(),
            )
        };
        let found = peer
            .links
            .read()
            .iter()
            .find(|l| l.local == local && l.remote == remote)
            .cloned();
        match found {
            Some(l) => Ok((peer, l)),
            None => {
                let mut st = self.state.write();
                let l = st
                    .new_link(&peer, &local, remote, &self.clock)
                    .ok_or(Screen::Invalid)?;
                Ok((peer, l))
            }
        }
    }

    fn by_index(&self, receiver_idx: u32) -> Option<(Arc<Peer>, Arc<Link>)> {
        self.state
            .read()
            .by_index
            .get(&(receiver_idx >> 8))
            .cloned()
    }

    /// Open one datagram from `from`. Decrypted packets land in `out`.
    pub fn open(
        &self,
        datagram: &[u8],
        from: SocketAddr,
        out: &mut [u8],
        cache: &mut SourceCache,
        now: Instant,
    ) -> Opened {
        self.clock.advance(now);
        let from = normalize(from);
        let found = match Tunn::parse_incoming_packet(datagram) {
            Ok(Packet::HandshakeInit(p)) => self.initiation(&p, datagram, from, out),
            Ok(Packet::HandshakeResponse(p)) => match self.by_index(p.receiver_idx) {
                Some((peer, link)) => {
                    let rl = self
                        .state
                        .read()
                        .local_key(&link.local)
                        .map(|k| k.screen.clone());
                    match rl.map(|rl| self.screen(&rl, datagram, from, out)) {
                        Some(Screen::Pass) => Ok((peer, link)),
                        Some(Screen::Refused) => Err(Screen::Refused),
                        _ => Err(Screen::Invalid),
                    }
                }
                None => Err(Screen::Invalid),
            },
            Ok(Packet::PacketCookieReply(p)) => {
                self.by_index(p.receiver_idx).ok_or(Screen::Invalid)
            }
            Ok(Packet::PacketData(p)) => self.by_index(p.receiver_idx).ok_or(Screen::Invalid),
            Err(_) => Err(Screen::Invalid),
        };
        let (peer, link) = match found {
            Ok(x) => x,
            Err(Screen::Refused) => return Opened::Nothing,
            Err(_) => {
                DropCounters::count(&self.drops.invalid);
                return Opened::Nothing;
            }
        };
        // What may move the endpoint: a data packet that decrypted, or the
        // response to our own initiation. Never a cookie reply, and never
        // an initiation: a captured one is accepted again by a fresh
        // session (its replay check starts at zero).
        let may_roam = matches!(datagram.first(), Some(2 | 4));
        let mut t = link.tunn(&self.clock);
        let (packet, authenticated) = match t.decapsulate(Some(from.ip()), datagram, out) {
            TunnResult::WriteToNetwork(b) => {
                let cookie = b.first() == Some(&3);
                if cookie {
                    DropCounters::count(&self.drops.under_load);
                } else {
                    peer.sent(b.len());
                    if datagram.first() == Some(&1) {
                        peer.answered();
                    }
                }
                self.queue(from, b);
                // Flush packets the Tunn queued while its handshake was
                // pending, once it has a session to send them on. (Without
                // one, boringtun would answer the flush with a new
                // initiation, unpaced: after answering a crossing
                // initiation that is how two peers storm each other.)
                if !cookie && has_session(&t) {
                    while let TunnResult::WriteToNetwork(b) = t.decapsulate(None, &[], out) {
                        peer.sent(b.len());
                        self.queue(from, b);
                    }
                }
                (None, !cookie)
            }
            TunnResult::WriteToTunnelV4(pkt, src) if pkt.len() >= crate::IPV4_MIN => {
                (Some((pkt.len(), IpAddr::V4(src))), true)
            }
            TunnResult::WriteToTunnelV6(pkt, src) if pkt.len() >= crate::IPV6_MIN => {
                (Some((pkt.len(), IpAddr::V6(src))), true)
            }
            TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {
                // Authentic but shorter than its own IP header.
                DropCounters::count(&self.drops.invalid);
                (None, true)
            }
            TunnResult::Done => (None, true),
            TunnResult::Err(e) => {
                DropCounters::count(&self.drops.invalid);
                tracing::debug!(?e, %from, "decapsulate");
                (None, false)
            }
        };
        // Nothing below may run with the link locked: reselect and the
        // flush lock links themselves.
        drop(t);
        let opened = match packet {
            Some((len, src)) => self.accept(&peer, len, src, cache),
            None => Opened::Nothing,
        };
        if authenticated && may_roam {
            peer.received(datagram.len());
            if *peer.endpoint.read() != Some(from) {
                *peer.endpoint.write() = Some(from);
            }
            // A packet on another link than the active one: a newer
            // handshake may have completed there.
            if !Arc::ptr_eq(&peer.active.read(), &link) {
                peer.reselect(&self.clock);
            }
            self.flush_pending(&peer, &link);
        }
        opened
    }

    /// Keep a decrypted packet if its source lies in the sending peer's
    /// AllowedIPs; otherwise drop and count it.
    pub(crate) fn accept(
        &self,
        peer: &Arc<Peer>,
        len: usize,
        src: IpAddr,
        cache: &mut SourceCache,
    ) -> Opened {
        let key = Arc::as_ptr(peer) as usize;
        let ok = match cache.0 {
            Some((k, ip, ok)) if k == key && ip == src => ok,
            _ => {
                let ok = {
                    let st = self.state.read();
                    st.table
                        .longest_match(src)
                        .is_some_and(|(_, p)| Arc::ptr_eq(p, peer))
                };
                cache.0 = Some((key, src, ok));
                ok
            }
        };
        if ok {
            return Opened::Packet(len);
        }
        let n = DropCounters::count(&self.drops.bad_source);
        if n == 0 || n.is_power_of_two() {
            tracing::warn!(
                peer = %peer.key().fingerprint(),
                %src,
                dropped_total = n + 1,
                "dropped a packet whose source is outside the sending peer's AllowedIPs"
            );
        }
        Opened::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_handshake_messages_of_their_exact_size_pass() {
        for (t, n) in [(1u8, 148), (2, 92), (3, 64)] {
            let mut d = vec![0u8; n];
            d[0] = t;
            assert!(is_handshake(&d) && handshake_size_ok(&d), "type {t}");
            for bad in [n - 1, n + 1, 65_000] {
                let mut d = vec![0u8; bad];
                d[0] = t;
                assert!(
                    is_handshake(&d) && !handshake_size_ok(&d),
                    "type {t}, {bad} bytes"
                );
            }
        }
        assert!(!handshake_size_ok(&[]));
        let mut data = vec![0u8; 148];
        data[0] = 4;
        assert!(!handshake_size_ok(&data));
    }
}
