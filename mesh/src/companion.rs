//! Hitless key rotation on kernel WireGuard: the companion interfaces.
//!
//! Kernel WireGuard holds one private key per interface, and its
//! cryptokey routing ties each source address to exactly one peer of an
//! interface. So a rotating node R cannot hold its old and next key on
//! `podguard0`, and a peer P cannot accept R's pods from R's old *and*
//! next key on one interface: whichever end switches first would drop the
//! other's packets until the second end switches. The userspace device
//! does this on one device (2 × 2 keys); the kernel needs two interfaces
//! at both ends, for the length of the rotation:
//!
//! * [`NEXT_IFNAME`] on the rotating node: its *next* key, listening on
//!   the node's port + 1 ([`next_port`]), every peer under its current key
//!   with its podCIDRs, no endpoints (it learns them from the handshakes
//!   the peers start). Exists while the node's rotation is `Staged` or
//!   `Switched`.
//! * [`PEERS_NEXT_IFNAME`] on every other node: its *current* key, its
//!   port + 2 ([`peers_next_port`]), one peer per rotating node under that node's next key
//!   (endpoint: the node's address, port + 1; keepalive, so it handshakes
//!   at once), with that node's podCIDRs.
//!
//! The two pair up. Each end moves its traffic for the other's podCIDRs to
//! the companion (a route more specific than the cluster CIDR's into
//! `podguard0`) once the companion has a handshake with that peer; both
//! interfaces accept at both ends, so the order in which the ends switch
//! does not matter. After the rotating node's `podguard0` takes the new
//! key and the peers' `podguard0` re-peer with it, each end moves its
//! routes back once `podguard0` has a handshake on the new key, and the
//! companions go [`GRACE`] later. Each switch waits [`GRACE`] after the
//! handshake that allows it, so the other end has moved by then: an agent
//! that polls its handshakes less often than that can lose packets (the
//! agent polls every 0.5 s while a companion exists).
//!
//! [`decide`] is the whole decision, pure: from the plan, this node's
//! rotation phase and the handshakes seen on the three interfaces, it says
//! which companions exist with which peers, and which routes go where.
//! Peers that never handshake on a companion (userspace peers, which hold
//! both keys on one device, or a network that drops port + 1) keep their
//! routes on `podguard0`: they get what kernel rotation did before (a
//! short gap), never less.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use keys::PublicKey;

use crate::plan::{Plan, Route, RouteTarget};

/// The rotating node's companion: its next key.
pub const NEXT_IFNAME: &str = "podguard0n";
/// Every other node's companion: its current key, peered with the
/// rotating nodes' next keys.
pub const PEERS_NEXT_IFNAME: &str = "podguard0p";
/// How long a companion outlives the handshake that made it unneeded.
pub const GRACE: Duration = Duration::from_secs(5);
/// Keepalive of the peers on [`PEERS_NEXT_IFNAME`] (seconds): setting it
/// sends the first handshake at once.
pub const KEEPALIVE: u16 = 25;

/// Routes go into a companion only while its last handshake is younger
/// than this (WireGuard's REJECT_AFTER_TIME): a session older than that
/// is gone, whatever the other end did.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(180);

/// The port a node's [`NEXT_IFNAME`] listens on: its own port + 1 (`None`
/// for a port above 65533, which cannot rotate hitlessly).
pub fn next_port(listen_port: u16) -> Option<u16> {
    listen_port.checked_add(1).filter(|_| listen_port <= 65533)
}

/// The port a node's [`PEERS_NEXT_IFNAME`] listens on: its own port + 2
/// (fixed, so an ephemeral port can never take the + 1 its own rotation
/// will need).
pub fn peers_next_port(listen_port: u16) -> Option<u16> {
    listen_port.checked_add(2)
}

/// Each peer's last completed handshake on one interface (`None`: never).
pub use keys::kernel_ack::Handshakes;

/// This node's rotation, as its key files say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Own {
    /// No rotation.
    Idle,
    /// The next key exists and is published; `podguard0` holds the old one.
    Staged {
        /// The next key.
        next: PublicKey,
    },
    /// `podguard0` holds the new key; the old one waits to be retired.
    Switched {
        /// The new (now current) key.
        current: PublicKey,
        /// `podguard0`'s handshakes just before it took the new key, when
        /// known (a restarted agent does not know them).
        before: Option<Handshakes>,
        /// When `.next` was renamed over `private.key` (its ctime), just
        /// before `wg set`: without `before`, a handshake counts as on the
        /// new key if it is later (the kernel keeps each peer's last
        /// handshake across a key change).
        since: SystemTime,
    },
    /// The key files say `Switched` but `podguard0` still holds the old key
    /// (its `wg set` failed): [`NEXT_IFNAME`] keeps carrying the current key
    /// and nothing is acknowledged until the device switched.
    Switching {
        /// The current key (the one [`NEXT_IFNAME`] holds).
        current: PublicKey,
    },
}

/// The key files as the shell read them (public halves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Files {
    /// `private.key`.
    pub current: PublicKey,
    /// When `private.key` last changed (its ctime: a rename sets it).
    pub current_since: SystemTime,
    /// `private.key.next`, if valid.
    pub next: Option<PublicKey>,
    /// `private.key.old`, if valid.
    pub old: Option<PublicKey>,
}

/// This node's rotation from its key files and the key `podguard0` holds.
/// `.next` and `.old` both exist for one step of the switch, when
/// `podguard0` still holds the old key (`Staged`); after `.next` became
/// the current key, `podguard0` is `Switched` only once it holds it
/// (otherwise `Switching`). `before` counts only if taken for the current
/// key.
pub fn own(files: &Files, held: Option<PublicKey>, before: Option<(PublicKey, Handshakes)>) -> Own {
    match (files.next, files.old) {
        (Some(next), _) => Own::Staged { next },
        (None, Some(_)) if held == Some(files.current) => Own::Switched {
            current: files.current,
            before: before.filter(|(k, _)| *k == files.current).map(|(_, b)| b),
            since: files.current_since,
        },
        (None, Some(_)) => Own::Switching {
            current: files.current,
        },
        (None, None) => Own::Idle,
    }
}

/// What the shell read from the interfaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// `podguard0`.
    pub main: Handshakes,
    /// [`NEXT_IFNAME`], if it exists.
    pub next: Option<Handshakes>,
    /// [`PEERS_NEXT_IFNAME`], if it exists.
    pub peers_next: Option<Handshakes>,
}

/// One peer of a companion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompanionPeer {
    /// The node it stands for.
    pub node: String,
    /// Where to send (`None`: learned from the peer's handshake).
    pub endpoint: Option<SocketAddr>,
    /// The node's podCIDRs.
    pub allowed_ips: BTreeSet<IpNet>,
    /// Keepalive, seconds.
    pub persistent_keepalive: Option<u16>,
}

/// One companion interface as it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Companion {
    /// Its name.
    pub ifname: &'static str,
    /// The local key it holds (public half; the shell has the private one).
    pub key: PublicKey,
    /// Its UDP port (0: any).
    pub port: u16,
    /// Its peers, by public key.
    pub peers: BTreeMap<PublicKey, CompanionPeer>,
}

/// The decision: which companions exist, and where each peer's routes go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Companions {
    /// [`NEXT_IFNAME`], when this node rotates.
    pub next: Option<Companion>,
    /// [`PEERS_NEXT_IFNAME`], when a peer rotates.
    pub peers_next: Option<Companion>,
    /// podCIDRs routed into a companion instead of `podguard0`.
    pub routes: BTreeMap<IpNet, &'static str>,
    /// Peers whose `podguard0` entry gets a keepalive while it settles on
    /// a new key, so it handshakes at once even with keepalives off.
    pub keepalive: BTreeSet<PublicKey>,
}

impl Companions {
    /// Whether any companion is in use: the caller polls handshakes often.
    pub fn active(&self) -> bool {
        self.next.is_some() || self.peers_next.is_some()
    }

    /// Route nothing into `ifname` (the shell could not make it this
    /// round; it is not removed either, the next round tries again).
    pub fn unroute(&mut self, ifname: &str) {
        self.routes.retain(|_, dev| *dev != ifname);
    }

    /// Apply to the plan: the routes into the companions (each moved
    /// podCIDR, more specific than the cluster CIDR's route into
    /// `podguard0`, so adding one moves that peer's traffic and removing it
    /// moves it back, each in one step, with the `src` and metric of the
    /// route it overrides), and the settling peers' keepalives.
    pub fn apply(&self, plan: &mut Plan) {
        for k in &self.keepalive {
            if let Some(p) = plan.peers.get_mut(k)
                && p.persistent_keepalive.is_none()
            {
                p.persistent_keepalive = Some(KEEPALIVE);
            }
        }
        let mut add = Vec::new();
        for (dst, dev) in &self.routes {
            let over = plan.routes.iter().find(|r| {
                r.dst.contains(&dst.network())
                    && matches!(&r.target, RouteTarget::Device { dev, .. } if dev == crate::WG_IFNAME)
            });
            if let Some(Route {
                target: RouteTarget::Device { src, .. },
                metric,
                ..
            }) = over
            {
                add.push(Route {
                    dst: *dst,
                    target: RouteTarget::Device {
                        dev: (*dev).to_string(),
                        src: *src,
                    },
                    metric: *metric,
                });
            }
        }
        plan.routes.extend(add);
    }
}

fn had(h: Option<&Handshakes>, k: &PublicKey) -> Option<SystemTime> {
    h.and_then(|h| h.get(k).copied().flatten())
}

fn older_than(t: SystemTime, now: SystemTime, grace: Duration) -> bool {
    now.duration_since(t).is_ok_and(|d| d >= grace)
}

/// A live session: a handshake within [`SESSION_LIFETIME`].
fn live(h: Option<&Handshakes>, k: &PublicKey, now: SystemTime) -> bool {
    had(h, k).is_some_and(|t| !older_than(t, now, SESSION_LIFETIME))
}

/// `podguard0`'s handshake with `pk`, if it happened on the new key.
fn main_after_switch(seen: &Seen, own: &Own, pk: &PublicKey) -> Option<SystemTime> {
    let Own::Switched { before, since, .. } = own else {
        return None;
    };
    let last = had(Some(&seen.main), pk)?;
    let after = match before {
        Some(b) => had(Some(b), pk).is_none_or(|b| last > b),
        None => last > *since,
    };
    after.then_some(last)
}

/// Decide the companions. `local` is this node's current public key (what
/// [`PEERS_NEXT_IFNAME`] holds).
pub fn decide(
    plan: &Plan,
    local: PublicKey,
    own: &Own,
    seen: &Seen,
    now: SystemTime,
) -> Companions {
    let mut out = Companions::default();
    // This node's own rotation.
    let mine = match own {
        Own::Idle => None,
        Own::Staged { next } => Some(*next),
        Own::Switched { current, .. } | Own::Switching { current } => Some(*current),
    };
    if let (Some(key), Some(port)) = (mine, next_port(plan.listen_port)) {
        let mut c = Companion {
            ifname: NEXT_IFNAME,
            key,
            port,
            peers: BTreeMap::new(),
        };
        for (pk, p) in &plan.peers {
            c.peers.insert(
                *pk,
                CompanionPeer {
                    node: p.node.clone(),
                    endpoint: None,
                    allowed_ips: p.allowed_ips.clone(),
                    persistent_keepalive: None,
                },
            );
            let back = main_after_switch(seen, own, pk).is_some();
            if matches!(own, Own::Switched { .. }) && !back {
                out.keepalive.insert(*pk);
            }
            if live(seen.next.as_ref(), pk, now) && !back {
                for dst in &p.allowed_ips {
                    out.routes.insert(*dst, NEXT_IFNAME);
                }
            }
        }
        out.next = Some(c);
    }
    // The peers' rotations.
    let mut theirs = BTreeMap::new();
    for p in plan.peers.values() {
        let Some(port) = next_port(p.endpoint.port()) else {
            continue;
        };
        // Staged: its next key. Switched: its current key, while the
        // companion still holds it and `podguard0` has not settled on it.
        let (key, settled) = match p.next_public_key {
            Some(n) => (n, false),
            None if seen
                .peers_next
                .as_ref()
                .is_some_and(|h| h.contains_key(&p.public_key)) =>
            {
                match had(Some(&seen.main), &p.public_key) {
                    Some(t) if older_than(t, now, GRACE) => continue,
                    Some(_) => (p.public_key, true),
                    None => {
                        out.keepalive.insert(p.public_key);
                        (p.public_key, false)
                    }
                }
            }
            None => continue,
        };
        theirs.insert(
            key,
            CompanionPeer {
                node: p.node.clone(),
                endpoint: Some(SocketAddr::new(p.endpoint.ip(), port)),
                allowed_ips: p.allowed_ips.clone(),
                persistent_keepalive: Some(KEEPALIVE),
            },
        );
        if !settled && live(seen.peers_next.as_ref(), &key, now) {
            for dst in &p.allowed_ips {
                out.routes.entry(*dst).or_insert(PEERS_NEXT_IFNAME);
            }
        }
    }
    if let (false, Some(port)) = (theirs.is_empty(), peers_next_port(plan.listen_port)) {
        out.peers_next = Some(Companion {
            ifname: PEERS_NEXT_IFNAME,
            key: local,
            port,
            peers: theirs,
        });
    }
    out
}

/// The local keys this node's rotation may go on with (the rotation's
/// [`Ack`](keys::rotation::Ack) on kernel WireGuard): in `Staged`, the
/// next key once every peer has had a handshake on [`NEXT_IFNAME`] for
/// at least [`GRACE`] (each peer has moved its routes to its
/// [`PEERS_NEXT_IFNAME`] by then, so the switch of `podguard0` loses
/// nothing); in `Switched`, the current key once every peer handshook on
/// `podguard0` after the switch, at least [`GRACE`] ago (each peer has
/// moved its routes back, so [`NEXT_IFNAME`] can go).
pub fn acks(plan: &Plan, own: &Own, seen: &Seen, now: SystemTime) -> BTreeSet<PublicKey> {
    let settled = |t: Option<SystemTime>| t.is_some_and(|t| older_than(t, now, GRACE));
    match own {
        Own::Staged { next }
            if plan
                .peers
                .keys()
                .all(|pk| settled(had(seen.next.as_ref(), pk))) =>
        {
            BTreeSet::from([*next])
        }
        Own::Switched { current, .. }
            if plan
                .peers
                .keys()
                .all(|pk| settled(main_after_switch(seen, own, pk))) =>
        {
            BTreeSet::from([*current])
        }
        _ => BTreeSet::new(),
    }
}
