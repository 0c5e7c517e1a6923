//! What the rotation keeps about a device that holds one private key at a
//! time (kernel WireGuard): its peers' handshakes at the moment it took a
//! key, and how long the stage lasts at most.
//!
//! Such a device cannot say which local key a session uses; what it can
//! say is when each peer last completed a handshake. The acks themselves
//! (every peer on the next key's companion interface; every peer settled
//! back on the device's new key) are decided in `mesh::companion`, which
//! compares the handshakes against the [`Switch`] snapshot.

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::PublicKey;

/// The stage timeout on a one-key device unless one is configured
/// (seconds): long enough for every peer to learn the next key from the
/// API and handshake with the companion interface that holds it.
pub const STAGE_TIMEOUT: u64 = 30;

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
