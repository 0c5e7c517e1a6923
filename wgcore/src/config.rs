//! Configuring the core: local keys (with a second one during rotation),
//! peers' announced next keys, renames, and UAPI `set` requests. The agent
//! and the UAPI socket both end up here.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use boringtun::noise::TunnResult;
use boringtun::x25519;
use keys::{PrivateKey, PublicKey};

use crate::Core;
use crate::peer::{Link, Peer};
use crate::state::{LocalKey, State};
use crate::uapi::{EINVAL, EPROTO, SetRequest};

impl Core {
    /// Set the local keys: `primary` initiates and is what peers know;
    /// `extra` (the next or the old key) is accepted for handshakes too.
    /// Keys already held keep their links and sessions; links of a key
    /// that is no longer held are dropped.
    pub fn set_keys(&self, primary: &PrivateKey, extra: Option<&PrivateKey>, now: Instant) {
        self.clock.advance(now);
        let mut st = self.state.write();
        let mut keys: Vec<LocalKey> = Vec::new();
        for k in std::iter::once(primary).chain(extra) {
            let public = x25519::PublicKey::from(*k.public_key().as_bytes());
            if keys.iter().any(|x| x.public == public) {
                continue;
            }
            let lk = match st.keys.iter().position(|x| x.public == public) {
                Some(i) => st.keys.remove(i),
                None => {
                    let generation = st.next_generation;
                    st.next_generation += 1;
                    LocalKey::new(k.as_static_secret().clone(), generation, &self.clock)
                }
            };
            keys.push(lk);
        }
        st.keys = keys;
        self.resync(&mut st);
    }

    /// Remove every local key (UAPI `private_key=` all zeros).
    fn clear_keys(&self) {
        let mut st = self.state.write();
        st.keys.clear();
        for peer in st.peers.values().cloned().collect::<Vec<_>>() {
            for l in peer.links.read().clone() {
                st.by_index.remove(&l.index);
            }
            peer.links.write().clear();
        }
    }

    /// Announced next keys of peers (by their current key). Peers not in
    /// the map have none. Each new next key is probed with a handshake and
    /// traffic moves to it once it answers.
    pub fn set_next_keys(&self, next: &BTreeMap<PublicKey, PublicKey>, now: Instant) {
        self.clock.advance(now);
        let mut st = self.state.write();
        let mut index = HashMap::new();
        for (primary, peer) in &st.peers {
            let want = next.get(primary).copied();
            if *peer.next_key.read() != want {
                *peer.next_key.write() = want;
            }
            if let Some(n) = want {
                index.insert(n, *primary);
            }
        }
        st.next_keys = index;
        self.resync(&mut st);
    }

    /// Rename peers (old key → new key) in place: AllowedIPs, endpoint,
    /// counters and the links of the old key stay, so traffic keeps
    /// flowing while the new key takes over. Pairs whose old key is not a
    /// peer, or whose new key already is one, are skipped.
    pub fn rename_peers(&self, renames: &[(PublicKey, PublicKey)], now: Instant) -> usize {
        self.clock.advance(now);
        let mut st = self.state.write();
        let mut done = 0;
        for (old, new) in renames {
            if st.peers.contains_key(new) {
                continue;
            }
            let Some(peer) = st.peers.remove(old) else {
                continue;
            };
            *peer.public_key.write() = *new;
            if *peer.next_key.read() == Some(*new) {
                *peer.next_key.write() = None;
                st.next_keys.remove(new);
            }
            st.peers.insert(*new, peer);
            done += 1;
        }
        self.resync(&mut st);
        done
    }

    /// Bring every peer's links in line with keys and next keys, and send
    /// the handshakes that a new link needs.
    fn resync(&self, st: &mut State) {
        let peers: Vec<Arc<Peer>> = st.peers.values().cloned().collect();
        for peer in peers {
            let k = st.sync_links(&peer, &self.clock);
            self.kick(&peer, &k);
        }
    }

    /// Send a handshake initiation on each of `links` (paced per link).
    pub(crate) fn kick(&self, peer: &Peer, links: &[Arc<Link>]) {
        let Some(ep) = *peer.endpoint.read() else {
            return;
        };
        let mut buf = [0u8; 256];
        let now = self.clock.current();
        for l in links {
            if l.init_paced(now) {
                continue;
            }
            if let TunnResult::WriteToNetwork(b) = l
                .tunn(&self.clock)
                .format_handshake_initiation(&mut buf, false)
            {
                peer.init_sent(l, now);
                peer.sent(b.len());
                self.queue(ep, b);
            }
        }
    }

    /// Apply a UAPI `set`. Returns an errno and a message on failure.
    pub fn apply(&self, req: SetRequest, now: Instant) -> Result<(), (i32, String)> {
        self.clock.advance(now);
        {
            let st = self.state.read();
            if let Some(port) = req.listen_port
                && port != st.listen_port
            {
                return Err((
                    EINVAL,
                    format!(
                        "changing listen_port at runtime is not supported (is {})",
                        st.listen_port
                    ),
                ));
            }
        }
        if req.peers.iter().any(|p| p.preshared_key) {
            return Err((EINVAL, "preshared keys are not supported".into()));
        }
        if req.clear_private_key {
            self.clear_keys();
        }
        if let Some(k) = &req.private_key {
            let want = x25519::PublicKey::from(*k.public_key().as_bytes());
            let same = {
                let st = self.state.read();
                st.keys.len() == 1 && st.keys[0].public == want
            };
            if !same {
                self.set_keys(k, None, now);
            }
        }
        let mut st = self.state.write();
        if req.replace_peers {
            let keys: Vec<PublicKey> = st.peers.keys().copied().collect();
            for k in keys {
                st.remove_peer(&k);
            }
        }
        // Peers made here with a persistent keepalive: they handshake at
        // once, as wireguard-go and the kernel do when a keepalive is set.
        // A restarted node otherwise stays silent, and a peer that only
        // sends to it seals for the session the restart lost until that
        // peer's no-reply timer fires (15 s).
        let mut fresh: Vec<(PublicKey, Arc<Peer>)> = Vec::new();
        for upd in req.peers {
            let Some(pk) = upd.public_key else { continue };
            if upd.remove {
                st.remove_peer(&pk);
                continue;
            }
            let existing = st.peers.get(&pk).cloned();
            if existing.is_none() && upd.update_only {
                continue;
            }
            let keepalive_changed = match (&existing, upd.persistent_keepalive) {
                (Some(p), Some(k)) => p.keepalive != k,
                _ => false,
            };
            let peer = match existing {
                Some(p) if !keepalive_changed => p,
                old => {
                    if st.keys.is_empty() {
                        return Err((EPROTO, "no private key set on the device".into()));
                    }
                    let keepalive = upd
                        .persistent_keepalive
                        .or(old.as_ref().map(|o| o.keepalive))
                        .unwrap_or(0);
                    let keep = match &old {
                        Some(o) => {
                            let ips = o.allowed_ips.read().clone();
                            st.remove_peer(&pk);
                            ips
                        }
                        None => Vec::new(),
                    };
                    let endpoint = old.as_ref().and_then(|o| *o.endpoint.read());
                    let Some(peer) = st.new_peer(pk, keepalive, endpoint, &self.clock) else {
                        return Err((EPROTO, "no private key set on the device".into()));
                    };
                    for net in keep {
                        st.add_allowed(&peer, net);
                    }
                    if keepalive > 0 {
                        fresh.push((pk, peer.clone()));
                    }
                    peer
                }
            };
            if let Some(ep) = upd.endpoint {
                *peer.endpoint.write() = Some(crate::inbound::normalize(ep));
            }
            if upd.replace_allowed_ips {
                st.clear_allowed(&peer);
            }
            for net in upd.allowed_ips {
                st.add_allowed(&peer, net);
            }
        }
        for (pk, peer) in fresh {
            // A peer removed or replaced later in the same request is not.
            if st.peers.get(&pk).is_some_and(|p| Arc::ptr_eq(p, &peer)) {
                let links = peer.links.read().clone();
                self.kick(&peer, &links);
            }
        }
        Ok(())
    }
}
