//! The shell of `mesh::companion` (kernel WireGuard only): read the key
//! files and the three interfaces, let the pure decision say which
//! companions exist and where routes go, and create, configure and delete
//! the companion interfaces. See `mesh::companion` for why they exist.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::SystemTime;

use defguard_wireguard_rs::key::Key;
use defguard_wireguard_rs::peer::Peer as WgPeer;
use defguard_wireguard_rs::{InterfaceConfiguration, Kernel, WGApi, WireguardInterfaceApi as _};
use keys::store::RotationFiles;
use keys::{PrivateKey, PublicKey};
use mesh::companion::{self, Companion, Companions, Handshakes, Own, Seen};

use super::ReconcileError;
use crate::netlink::Netlink;
use crate::wireguard::backend::{WgClient, key_and_handshakes_of, mask, observed_peers};

/// The companions' private keys and the pure view of the key files.
struct Keys {
    current: PrivateKey,
    next: Option<PrivateKey>,
    files: companion::Files,
}

fn load_keys(key_file: &Path) -> Result<Keys, ReconcileError> {
    let loaded = RotationFiles::new(key_file).load();
    let current = loaded.current.ok_or_else(|| {
        ReconcileError::Device(format!(
            "companions: no usable key at {}",
            key_file.display()
        ))
    })?;
    // The switch renamed `.next` over the key file: its ctime, to the
    // nanosecond, is when (a moment before `wg set`).
    let current_since = std::fs::metadata(key_file)
        .map(|m| {
            use std::os::unix::fs::MetadataExt as _;
            let (secs, nanos) = (
                m.ctime().max(0) as u64,
                m.ctime_nsec().clamp(0, 999_999_999) as u32,
            );
            SystemTime::UNIX_EPOCH + std::time::Duration::new(secs, nanos)
        })
        .unwrap_or_else(|_| SystemTime::now());
    let files = companion::Files {
        current: current.public_key(),
        current_since,
        next: loaded.next.as_ref().map(PrivateKey::public_key),
        old: loaded.old.as_ref().map(PrivateKey::public_key),
    };
    Ok(Keys {
        current,
        next: loaded.next,
        files,
    })
}

fn wg_err(
    what: String,
) -> impl FnOnce(defguard_wireguard_rs::error::WireguardInterfaceError) -> ReconcileError {
    move |e| ReconcileError::Device(format!("{what}: {e}"))
}

/// One companion as the kernel has it: key, port, peers.
struct Have {
    key: Option<PublicKey>,
    port: u16,
    peers: BTreeMap<PublicKey, mesh::ObservedPeer>,
    handshakes: Handshakes,
}

async fn read(nl: &Netlink, ifname: &str) -> Result<Option<Have>, ReconcileError> {
    if nl.link_index(ifname).await?.is_none() {
        return Ok(None);
    }
    let api = WGApi::<Kernel>::new(ifname).map_err(wg_err(format!("opening {ifname}")))?;
    let host = api
        .read_interface_data()
        .map_err(wg_err(format!("reading {ifname}")))?;
    let (key, handshakes) = key_and_handshakes_of(&host);
    Ok(Some(Have {
        key,
        port: host.listen_port,
        peers: observed_peers(&host),
        handshakes,
    }))
}

/// Make `want` exist as decided, holding `key`.
async fn ensure(
    nl: &Netlink,
    want: &Companion,
    key: &PrivateKey,
    have: Option<&Have>,
    mtu: u32,
) -> Result<(), ReconcileError> {
    let name = want.ifname;
    let mut api = WGApi::<Kernel>::new(name).map_err(wg_err(format!("opening {name}")))?;
    let config = InterfaceConfiguration {
        name: name.into(),
        prvkey: key.to_base64().to_string(),
        addresses: vec![],
        port: want.port,
        peers: vec![],
        mtu: None,
        fwmark: None,
    };
    let fresh = match have {
        None => {
            api.create_interface()
                .map_err(wg_err(format!("creating {name}")))?;
            true
        }
        Some(h) => h.key != Some(want.key) || (want.port != 0 && h.port != want.port),
    };
    if fresh {
        // Also drops the peers: sessions on another key are useless.
        api.configure_interface(&config)
            .map_err(wg_err(format!("configuring {name}")))?;
        tracing::info!(ifname = name, key = %want.key.fingerprint(), port = want.port, "companion interface for a key rotation");
    }
    let empty = BTreeMap::new();
    let peers = match have {
        Some(h) if !fresh => &h.peers,
        _ => &empty,
    };
    for (pk, p) in &want.peers {
        let up_to_date = peers.get(pk).is_some_and(|o| {
            o.allowed_ips == p.allowed_ips
                && o.persistent_keepalive == p.persistent_keepalive
                && (p.endpoint.is_none() || o.endpoint.is_some())
        });
        if up_to_date {
            continue;
        }
        let mut peer = WgPeer::new(Key::new(*pk.as_bytes()));
        // An endpoint learned from the peer's handshake is kept.
        peer.endpoint = peers.get(pk).and_then(|o| o.endpoint).or(p.endpoint);
        peer.persistent_keepalive_interval = Some(p.persistent_keepalive.unwrap_or(0));
        peer.allowed_ips = p.allowed_ips.iter().map(mask).collect();
        api.configure_peer(&peer)
            .map_err(wg_err(format!("configuring {name} peer {}", p.node)))?;
    }
    for pk in peers.keys().filter(|k| !want.peers.contains_key(k)) {
        api.remove_peer(&Key::new(*pk.as_bytes()))
            .map_err(wg_err(format!("removing a peer of {name}")))?;
    }
    nl.set_up(name, Some(mtu)).await?;
    Ok(())
}

/// The companions of one reconcile: decided, and the ones that must exist
/// created; the caller moves the routes, then calls [`Round::finish`].
#[derive(Debug)]
pub struct Round {
    /// The decision (routes and keepalives to apply to the plan).
    pub decision: Companions,
    /// The local keys this node's rotation may go on with.
    pub acks: BTreeSet<PublicKey>,
}

/// Observe, decide, create. `before`: `podguard0`'s handshakes when it took
/// a key (which), from the rotator, if it did in this process. A companion
/// that cannot be made (say its port is taken) is logged and left out: its
/// peers keep their routes on `podguard0` and see the short gap of a switch
/// without one, the rest of the reconcile goes on.
pub async fn begin(
    nl: &Netlink,
    main: &WgClient,
    key_file: &Path,
    plan: &mesh::Plan,
    before: Option<(PublicKey, Handshakes)>,
) -> Result<Round, ReconcileError> {
    let keys = load_keys(key_file)?;
    let (held, main_hs) = main
        .key_and_handshakes()
        .map_err(|e| ReconcileError::Device(format!("reading podguard0: {e}")))?;
    let own = companion::own(&keys.files, held, before);
    let next_key = match &own {
        Own::Idle => None,
        Own::Staged { next } => Some(*next),
        Own::Switched { current, .. } | Own::Switching { current } => Some(*current),
    };
    let next = read_or_warn(nl, companion::NEXT_IFNAME).await;
    let peers_next = read_or_warn(nl, companion::PEERS_NEXT_IFNAME).await;
    // Handshakes count only on an interface that already holds the key it
    // must: a leftover with another key is reconfigured (its peers go).
    let usable = |h: &Option<Have>, key: Option<PublicKey>, port: Option<u16>| {
        h.as_ref()
            .is_some_and(|h| key.is_some() && h.key == key && port.is_none_or(|p| h.port == p))
    };
    let next_usable = usable(&next, next_key, companion::next_port(plan.listen_port));
    let peers_next_usable = usable(
        &peers_next,
        Some(keys.current.public_key()),
        companion::peers_next_port(plan.listen_port),
    );
    let seen = Seen {
        main: main_hs,
        next: next
            .as_ref()
            .filter(|_| next_usable)
            .map(|h| h.handshakes.clone()),
        peers_next: peers_next
            .as_ref()
            .filter(|_| peers_next_usable)
            .map(|h| h.handshakes.clone()),
    };
    let now = SystemTime::now();
    let mut decision = companion::decide(plan, keys.current.public_key(), &own, &seen, now);
    let mut acks = companion::acks(plan, &own, &seen, now);
    let next_failed = match &decision.next {
        Some(c) => {
            let key = keys.next.as_ref().unwrap_or(&keys.current);
            ensure(nl, c, key, next.as_ref(), plan.mtu).await.err()
        }
        None => None,
    };
    if let Some(e) = next_failed {
        tracing::warn!(ifname = companion::NEXT_IFNAME, error = %e, "companion interface: configuring it failed; retrying every reconcile");
        // A working one keeps its routes; one not made yet gets none (its
        // peers see the short gap of a switch without a companion).
        if !next_usable {
            decision.unroute(companion::NEXT_IFNAME);
            acks.clear();
        }
    }
    let peers_failed = match &decision.peers_next {
        Some(c) => ensure(nl, c, &keys.current, peers_next.as_ref(), plan.mtu)
            .await
            .err(),
        None => None,
    };
    if let Some(e) = peers_failed {
        tracing::warn!(ifname = companion::PEERS_NEXT_IFNAME, error = %e, "companion interface: configuring it failed; retrying every reconcile");
        if !peers_next_usable {
            decision.unroute(companion::PEERS_NEXT_IFNAME);
        }
    }
    Ok(Round { decision, acks })
}

/// [`read`], with a failure logged and taken as "not there" (the companion
/// is then made again; a failure to make it is handled there).
async fn read_or_warn(nl: &Netlink, ifname: &str) -> Option<Have> {
    match read(nl, ifname).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(ifname, error = %e, "companion interface unreadable");
            None
        }
    }
}

impl Round {
    /// After the routes moved: delete the companions not decided.
    pub async fn finish(&self, nl: &Netlink) -> Result<(), ReconcileError> {
        for (name, wanted) in [
            (companion::NEXT_IFNAME, self.decision.next.is_some()),
            (
                companion::PEERS_NEXT_IFNAME,
                self.decision.peers_next.is_some(),
            ),
        ] {
            if !wanted && nl.delete_link(name).await? {
                tracing::info!(
                    ifname = name,
                    "companion interface removed: its rotation is over"
                );
            }
        }
        Ok(())
    }
}

/// Remove leftover companions (a backend that does not use them).
pub async fn remove_all(nl: &Netlink) -> Result<(), ReconcileError> {
    Round {
        decision: Companions::default(),
        acks: BTreeSet::new(),
    }
    .finish(nl)
    .await
}
