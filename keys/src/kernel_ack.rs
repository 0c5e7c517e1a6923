//! The rotation [`Ack`] for a device that holds one private key at a time
//! (kernel WireGuard), which cannot say which local key a session uses.
//!
//! What it can say is when each peer last completed a handshake. After the
//! switch (`wg set private-key`, which also expires the sessions on the old
//! key for sending) the handshakes that complete use the new key, so "every
//! peer handshook after the switch" means "every peer has a session on the
//! new key", which is what [`decide`](crate::rotation::decide) waits for
//! before retiring the old key. Two windows about a round trip long can
//! count an old-key handshake (one completing between the snapshot and the
//! switch; a responder session confirmed by its first data packet after
//! the switch); the cost is only an early `RetireOld`, which on a one-key
//! device removes a file: the device dropped the old key at the switch.
//!
//! The next key of `Staged` is never on such a device, so it is never
//! acknowledged: the stage lasts [`STAGE_TIMEOUT`] unless the operator
//! chose another, only long enough for peers to learn the next key.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use crate::PublicKey;
use crate::rotation::Ack;

/// The stage timeout on a one-key device unless one is configured
/// (seconds): watch propagation to the peers, not a handshake, is what the
/// stage waits for there.
pub const STAGE_TIMEOUT: u64 = 10;

/// Each peer's last completed handshake, by the peer's public key (`None`:
/// never).
pub type Handshakes = BTreeMap<PublicKey, Option<SystemTime>>;

/// The handshakes seen just before the device took `primary`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    /// The local key the device was given.
    pub primary: PublicKey,
    /// Every peer's last handshake at that moment.
    pub before: Handshakes,
}

/// The ack for a one-key device that holds `switch.primary` now and has
/// the peers `now` (with their last handshakes): `primary` is acknowledged
/// when every peer completed a handshake later than it had at the switch
/// (a peer added since then: any handshake at all). With no peers, the
/// key is trivially acknowledged.
pub fn ack(switch: &Switch, now: &Handshakes) -> Ack {
    let all = now.iter().all(|(peer, last)| {
        let Some(last) = last else { return false };
        match switch.before.get(peer) {
            Some(Some(before)) => last > before,
            Some(None) | None => true,
        }
    });
    Ack::Keys(if all {
        BTreeSet::from([switch.primary])
    } else {
        BTreeSet::new()
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::PrivateKey;

    fn k() -> PublicKey {
        PrivateKey::generate().public_key()
    }

    fn at(s: u64) -> Option<SystemTime> {
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(s))
    }

    fn acked(a: &Ack, key: &PublicKey) -> bool {
        matches!(a, Ack::Keys(s) if s.contains(key))
    }

    #[test]
    fn a_handshake_from_before_the_switch_is_not_an_ack() {
        let (me, p1, p2) = (k(), k(), k());
        let sw = Switch {
            primary: me,
            before: BTreeMap::from([(p1, at(100)), (p2, None)]),
        };
        // Nothing new: the handshake of p1 is the one from before.
        let now = BTreeMap::from([(p1, at(100)), (p2, None)]);
        assert!(!acked(&ack(&sw, &now), &me));
        // p1 handshook again, p2 not yet.
        let now = BTreeMap::from([(p1, at(101)), (p2, None)]);
        assert!(!acked(&ack(&sw, &now), &me));
        // Both did.
        let now = BTreeMap::from([(p1, at(101)), (p2, at(100))]);
        assert!(acked(&ack(&sw, &now), &me));
    }

    #[test]
    fn peers_added_after_the_switch_count_with_any_handshake() {
        let (me, p1, new) = (k(), k(), k());
        let sw = Switch {
            primary: me,
            before: BTreeMap::from([(p1, at(100))]),
        };
        let now = BTreeMap::from([(p1, at(105)), (new, None)]);
        assert!(!acked(&ack(&sw, &now), &me));
        let now = BTreeMap::from([(p1, at(105)), (new, at(50))]);
        assert!(acked(&ack(&sw, &now), &me));
        // A peer removed since the switch is not waited for.
        let now = BTreeMap::from([(new, at(50))]);
        assert!(acked(&ack(&sw, &now), &me));
    }

    #[test]
    fn no_peers_acknowledge_trivially_and_only_the_primary() {
        let (me, other) = (k(), k());
        let sw = Switch {
            primary: me,
            before: BTreeMap::new(),
        };
        let a = ack(&sw, &BTreeMap::new());
        assert!(acked(&a, &me));
        assert!(!acked(&a, &other));
    }
}
