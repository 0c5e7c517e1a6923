//! What the core reports: keys held, which keys every peer has a session
//! on (what rotation waits for), and `wg show`-style peer status.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keys::{PrivateKey, PublicKey};

use crate::Core;
use crate::uapi::PeerStatus;

impl Core {
    /// The primary private key, for a UAPI `get` (stays on the node).
    pub fn private_key(&self) -> Option<PrivateKey> {
        self.state
            .read()
            .keys
            .first()
            .map(|k| PrivateKey::from_bytes(k.secret.to_bytes()))
    }

    /// Local public keys held, primary first.
    pub fn public_keys(&self) -> Vec<PublicKey> {
        self.state
            .read()
            .keys
            .iter()
            .map(|k| PublicKey::from_bytes(*k.public.as_bytes()))
            .collect()
    }

    /// The local public keys on which every peer has an established
    /// session (every local key when there are no peers).
    pub fn key_acks(&self) -> BTreeSet<PublicKey> {
        let st = self.state.read();
        st.keys
            .iter()
            .filter(|k| {
                st.peers.values().all(|p| {
                    p.links
                        .read()
                        .iter()
                        .any(|l| l.local == k.public && l.established(&self.clock))
                })
            })
            .map(|k| PublicKey::from_bytes(*k.public.as_bytes()))
            .collect()
    }

    /// Whether the peer `pk` has a session on its active link.
    pub fn peer_established(&self, pk: &PublicKey) -> bool {
        let st = self.state.read();
        st.peers
            .get(pk)
            .is_some_and(|p| p.active.read().established(&self.clock))
    }

    /// Current peers, as `wg show` reports them; `wall` is the time of day
    /// the handshake ages are counted back from.
    pub fn peer_status(&self, wall: SystemTime) -> Vec<PeerStatus> {
        let st = self.state.read();
        let epoch = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
        let now = self.clock.current();
        st.peers
            .values()
            .map(|p| {
                let since: Option<Duration> = p
                    .links
                    .read()
                    .iter()
                    .filter_map(|l| l.tunn(&self.clock).time_since_last_handshake())
                    .min();
                let last_handshake = since
                    .and_then(|d| epoch.checked_sub(d))
                    .map(|t| (t.as_secs(), t.subsec_nanos()))
                    .unwrap_or((0, 0));
                let (rx_bytes, tx_bytes, rx_packets, tx_packets) = p.counters();
                let (handshake_initiations, handshakes_answered) = p.handshake_counts();
                let unanswered_for = p.unanswered_for(now, since.map(|d| now.saturating_sub(d)));
                PeerStatus {
                    public_key: p.key(),
                    endpoint: *p.endpoint.read(),
                    allowed_ips: p.allowed_ips.read().clone(),
                    last_handshake,
                    rx_bytes,
                    tx_bytes,
                    rx_packets,
                    tx_packets,
                    persistent_keepalive: p.keepalive,
                    handshake_initiations,
                    handshakes_answered,
                    unanswered_for,
                }
            })
            .collect()
    }
}
