//! The device's tables: local keys, peers by key and by announced next
//! key, links by receiver index, and the AllowedIPs routing table; plus
//! the rule that keeps each peer's links in line with the keys in play.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use boringtun::noise::Tunn;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519;
use ip_network::{IpNetwork, Ipv4Network, Ipv6Network};
use ip_network_table::IpNetworkTable;
use ipnet::IpNet;
use keys::PublicKey;

use crate::clock::Clock;
use crate::peer::{Link, Peer};
use crate::select::RemoteRank;

/// Handshakes per second per local key before initiations without a valid
/// mac2 get a cookie reply instead of a DH.
pub const HANDSHAKE_RATE_LIMIT: u64 = 100;

pub(crate) struct LocalKey {
    pub secret: x25519::StaticSecret,
    pub public: x25519::PublicKey,
    pub generation: u64,
    /// Screens every handshake message (mac1, and mac2 under load) before
    /// any DH; counts handshakes for the load decision.
    pub screen: Arc<RateLimiter>,
    /// Handed to each `Tunn`: checks mac1 again but is never under load,
    /// so a screened handshake is neither counted twice nor turned away.
    pub tunn_limiter: Arc<RateLimiter>,
}

impl LocalKey {
    pub fn new(secret: x25519::StaticSecret, generation: u64, clock: &Clock) -> Self {
        let public = x25519::PublicKey::from(&secret);
        clock.enter();
        Self {
            secret,
            public,
            generation,
            screen: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
            tunn_limiter: Arc::new(RateLimiter::new(&public, u64::MAX)),
        }
    }
}

pub(crate) struct State {
    /// Local keys; `keys[0]` is the primary (initiates, is published).
    pub keys: Vec<LocalKey>,
    pub next_generation: u64,
    pub listen_port: u16,
    pub peers: BTreeMap<PublicKey, Arc<Peer>>,
    /// Next key → the peer's primary key.
    pub next_keys: HashMap<PublicKey, PublicKey>,
    pub by_index: HashMap<u32, (Arc<Peer>, Arc<Link>)>,
    pub table: IpNetworkTable<Arc<Peer>>,
    pub next_index: u32,
}

impl State {
    pub fn new(listen_port: u16, first_index: u32) -> Self {
        Self {
            keys: Vec::new(),
            next_generation: 1,
            listen_port,
            peers: BTreeMap::new(),
            next_keys: HashMap::new(),
            by_index: HashMap::new(),
            table: IpNetworkTable::new(),
            next_index: first_index & 0x00ff_ffff,
        }
    }

    pub fn local_key(&self, public: &x25519::PublicKey) -> Option<&LocalKey> {
        self.keys.iter().find(|k| k.public == *public)
    }

    fn alloc_index(&mut self) -> u32 {
        loop {
            let i = self.next_index;
            self.next_index = (self.next_index + 1) & 0x00ff_ffff;
            if !self.by_index.contains_key(&i) {
                return i;
            }
        }
    }

    fn make_link(
        &mut self,
        local: &x25519::PublicKey,
        remote: PublicKey,
        keepalive: u16,
        clock: &Clock,
    ) -> Option<Arc<Link>> {
        let lk = self.local_key(local)?;
        let (secret, public, generation, rl) = (
            lk.secret.clone(),
            lk.public,
            lk.generation,
            lk.tunn_limiter.clone(),
        );
        let index = self.alloc_index();
        clock.enter();
        let tunn = Tunn::new(
            secret,
            x25519::PublicKey::from(*remote.as_bytes()),
            None,
            (keepalive > 0).then_some(keepalive),
            index,
            Some(rl),
        );
        Some(Arc::new(Link::new(index, generation, public, remote, tunn)))
    }

    /// A new link for `peer` with local key `local` and remote key `remote`.
    pub fn new_link(
        &mut self,
        peer: &Arc<Peer>,
        local: &x25519::PublicKey,
        remote: PublicKey,
        clock: &Clock,
    ) -> Option<Arc<Link>> {
        let link = self.make_link(local, remote, peer.keepalive, clock)?;
        self.by_index
            .insert(link.index, (peer.clone(), link.clone()));
        peer.links.write().push(link.clone());
        Some(link)
    }

    /// A new peer with one link (primary local key, its public key).
    pub fn new_peer(
        &mut self,
        pk: PublicKey,
        keepalive: u16,
        endpoint: Option<SocketAddr>,
        clock: &Clock,
    ) -> Option<Arc<Peer>> {
        let primary = self.keys.first()?.public;
        let link = self.make_link(&primary, pk, keepalive, clock)?;
        let peer = Arc::new(Peer::new(pk, link.clone(), keepalive, endpoint));
        self.by_index.insert(link.index, (peer.clone(), link));
        self.peers.insert(pk, peer.clone());
        Some(peer)
    }

    /// Make the links of `peer` match the local keys and its remote keys:
    /// drop links whose local key is gone, drop draining links that are no
    /// longer needed, make sure the preferred links exist. Returns links
    /// that should start a handshake now.
    pub fn sync_links(&mut self, peer: &Arc<Peer>, clock: &Clock) -> Vec<Arc<Link>> {
        let Some(primary) = self.keys.first().map(|k| k.public) else {
            return Vec::new();
        };
        let remote = peer.key();
        let next = *peer.next_key.read();
        let gone: Vec<Arc<Link>> = peer
            .links
            .read()
            .iter()
            .filter(|l| self.local_key(&l.local).is_none())
            .cloned()
            .collect();
        for l in &gone {
            self.drop_link(peer, l);
        }
        let mut kick = Vec::new();
        let has = |p: &Peer, local: &x25519::PublicKey, remote: &PublicKey| {
            p.links
                .read()
                .iter()
                .any(|l| l.local == *local && l.remote == *remote)
        };
        if !has(peer, &primary, &remote)
            && let Some(l) = self.new_link(peer, &primary, remote, clock)
        {
            let active = peer.active.read().clone();
            if !active.established(clock) || gone.iter().any(|g| Arc::ptr_eq(g, &active)) {
                *peer.active.write() = l.clone();
            }
            kick.push(l);
        }
        if let Some(n) = next
            && !has(peer, &primary, &n)
            && let Some(l) = self.new_link(peer, &primary, n, clock)
        {
            // Probe the announced key; traffic moves over once it answers.
            kick.push(l);
        }
        // The active link must be a live one.
        let active = peer.active.read().clone();
        if !peer.links.read().iter().any(|l| Arc::ptr_eq(l, &active)) {
            let fallback = peer
                .links
                .read()
                .iter()
                .find(|l| l.local == primary && l.remote == remote)
                .cloned();
            if let Some(f) = fallback {
                *peer.active.write() = f;
            }
        }
        peer.reselect(clock);
        // Draining links go once they are not the active one.
        let active = peer.active.read().clone();
        let draining: Vec<Arc<Link>> = peer
            .links
            .read()
            .iter()
            .filter(|l| {
                peer.remote_rank(&l.remote) == RemoteRank::Draining && !Arc::ptr_eq(l, &active)
            })
            .cloned()
            .collect();
        for l in &draining {
            self.drop_link(peer, l);
        }
        kick
    }

    fn drop_link(&mut self, peer: &Peer, link: &Arc<Link>) {
        self.by_index.remove(&link.index);
        peer.links.write().retain(|l| !Arc::ptr_eq(l, link));
    }

    pub fn add_allowed(&mut self, peer: &Arc<Peer>, net: IpNet) {
        if let Some(prev) = self.table.insert(to_network(&net), peer.clone())
            && !Arc::ptr_eq(&prev, peer)
        {
            prev.allowed_ips.write().retain(|n| *n != net);
        }
        let mut ips = peer.allowed_ips.write();
        if !ips.contains(&net) {
            ips.push(net);
        }
    }

    pub fn clear_allowed(&mut self, peer: &Arc<Peer>) {
        let old: Vec<IpNet> = std::mem::take(&mut *peer.allowed_ips.write());
        for net in old {
            self.table.remove(to_network(&net));
        }
    }

    pub fn remove_peer(&mut self, pk: &PublicKey) {
        let Some(p) = self.peers.remove(pk) else {
            return;
        };
        for l in p.links.read().iter() {
            self.by_index.remove(&l.index);
        }
        if let Some(n) = *p.next_key.read() {
            self.next_keys.remove(&n);
        }
        for net in p.allowed_ips.read().iter() {
            if self
                .table
                .exact_match(to_network(net))
                .is_some_and(|q| Arc::ptr_eq(q, &p))
            {
                self.table.remove(to_network(net));
            }
        }
    }
}

/// ipnet's network as ip_network's (the table's type). `IpNet` values are
/// truncated on parse, so the conversion never fails; it stays total by
/// truncating again.
pub(crate) fn to_network(net: &IpNet) -> IpNetwork {
    match net {
        IpNet::V4(n) => IpNetwork::V4(
            Ipv4Network::new_truncate(n.network(), n.prefix_len()).unwrap_or_else(|_| {
                Ipv4Network::new_truncate(Ipv4Addr::BROADCAST, 32)
                    .unwrap_or_else(|_| unreachable!("/32 is a valid prefix"))
            }),
        ),
        IpNet::V6(n) => IpNetwork::V6(
            Ipv6Network::new_truncate(n.network(), n.prefix_len()).unwrap_or_else(|_| {
                Ipv6Network::new_truncate(Ipv6Addr::UNSPECIFIED, 128)
                    .unwrap_or_else(|_| unreachable!("/128 is a valid prefix"))
            }),
        ),
    }
}
