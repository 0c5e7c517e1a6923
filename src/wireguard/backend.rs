//! Which WireGuard implementation runs `podguard0`, and how a `mesh::Plan`
//! maps onto defguard_wireguard_rs's peer configuration for either one.

use std::collections::BTreeSet;

use defguard_wireguard_rs::host::Host;
use defguard_wireguard_rs::key::Key;
use defguard_wireguard_rs::net::IpAddrMask;
use defguard_wireguard_rs::peer::Peer as WgPeer;
use defguard_wireguard_rs::{Kernel, Userspace, WGApi, WireguardInterfaceApi};
use ipnet::IpNet;
use keys::PublicKey;
use mesh::{Action, ObservedPeer};

/// What the operator asked for (`--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// Kernel WireGuard when the kernel can create a `wireguard` link,
    /// otherwise the userspace device.
    Auto,
    /// Kernel WireGuard only (fails if unavailable).
    Kernel,
    /// podguard's userspace device (boringtun).
    Userspace,
}

/// The backend in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Backend {
    /// Kernel WireGuard.
    Kernel,
    /// podguard's userspace device.
    Userspace,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Kernel => "kernel",
            Self::Userspace => "userspace",
        })
    }
}

/// `--backend kernel` on a kernel without WireGuard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--backend kernel was requested but this kernel cannot create a wireguard link (no wireguard module); use --backend auto or userspace"
)]
pub struct SelectError;

/// Pick the backend.
pub fn select_backend(
    choice: BackendChoice,
    kernel_available: bool,
) -> Result<Backend, SelectError> {
    match (choice, kernel_available) {
        (BackendChoice::Auto, true) | (BackendChoice::Kernel, true) => Ok(Backend::Kernel),
        (BackendChoice::Auto, false) | (BackendChoice::Userspace, _) => Ok(Backend::Userspace),
        (BackendChoice::Kernel, false) => Err(SelectError),
    }
}

/// Whether an existing `podguard0` of link kind `kind` must be deleted
/// before `backend` can run it: a TUN left by the userspace device when the
/// kernel path starts, or a `wireguard` link when the userspace device
/// starts (a node whose kernel gained the module, or `--backend` changed).
/// Adopting it would fail and crash-loop the agent.
pub fn stale_link(backend: Backend, kind: Option<&str>) -> bool {
    let want = match backend {
        Backend::Kernel => "wireguard",
        Backend::Userspace => "tun",
    };
    kind != Some(want)
}

/// A prefix in defguard's terms.
pub fn mask(net: &IpNet) -> IpAddrMask {
    IpAddrMask::new(net.network(), net.prefix_len())
}

/// The defguard peer configuration for a planned peer.
pub fn peer_config(p: &mesh::Peer) -> WgPeer {
    let mut peer = WgPeer::new(Key::new(*p.public_key.as_bytes()));
    peer.endpoint = Some(p.endpoint);
    peer.persistent_keepalive_interval = Some(p.persistent_keepalive.unwrap_or(0));
    peer.allowed_ips = p.allowed_ips.iter().map(mask).collect();
    peer
}

/// A peer's last completed handshake (the kernel reports "never" as the
/// epoch).
fn last_handshake(p: &WgPeer) -> Option<std::time::SystemTime> {
    p.last_handshake
        .filter(|t| *t > std::time::SystemTime::UNIX_EPOCH)
}

/// The public half of the device's private key (if it has one) and each
/// peer's last completed handshake, from one read of the device.
pub fn key_and_handshakes_of(host: &Host) -> (Option<PublicKey>, keys::kernel_ack::Handshakes) {
    let key = host
        .private_key
        .as_ref()
        .map(|k| keys::PrivateKey::from_bytes(k.as_array()).public_key());
    let handshakes = host
        .peers
        .values()
        .map(|p| {
            (
                PublicKey::from_bytes(p.public_key.as_array()),
                last_handshake(p),
            )
        })
        .collect();
    (key, handshakes)
}

/// What defguard read from the device, in `mesh` terms.
pub fn observed_peers(host: &Host) -> std::collections::BTreeMap<PublicKey, ObservedPeer> {
    host.peers
        .values()
        .map(|p| {
            let allowed_ips: BTreeSet<IpNet> = p
                .allowed_ips
                .iter()
                .filter_map(|m| IpNet::new(m.address, m.cidr).ok().map(|n| n.trunc()))
                .collect();
            (
                PublicKey::from_bytes(p.public_key.as_array()),
                ObservedPeer {
                    endpoint: p.endpoint,
                    allowed_ips,
                    persistent_keepalive: p.persistent_keepalive_interval.filter(|k| *k > 0),
                },
            )
        })
        .collect()
}

/// A defguard client for whichever backend runs `podguard0`.
pub enum WgClient {
    /// Netlink to kernel WireGuard.
    Kernel(WGApi<Kernel>),
    /// UAPI to our userspace device.
    Userspace(WGApi<Userspace>),
}

impl std::fmt::Debug for WgClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Kernel(_) => f.write_str("WgClient::Kernel"),
            Self::Userspace(_) => f.write_str("WgClient::Userspace"),
        }
    }
}

/// A failed WireGuard configuration call.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct WgError {
    what: String,
    #[source]
    source: defguard_wireguard_rs::error::WireguardInterfaceError,
}

impl WgClient {
    /// A client for `ifname` on `backend`.
    pub fn new(backend: Backend, ifname: &str) -> Result<Self, WgError> {
        let err = |source| WgError {
            what: format!("opening a WireGuard API for {ifname}"),
            source,
        };
        Ok(match backend {
            Backend::Kernel => Self::Kernel(WGApi::<Kernel>::new(ifname).map_err(err)?),
            Backend::Userspace => Self::Userspace(WGApi::<Userspace>::new(ifname).map_err(err)?),
        })
    }

    fn api(&self) -> &dyn WireguardInterfaceApi {
        match self {
            Self::Kernel(a) => a,
            Self::Userspace(a) => a,
        }
    }

    /// Read the peers currently on the device.
    pub fn read_peers(
        &self,
    ) -> Result<std::collections::BTreeMap<PublicKey, ObservedPeer>, WgError> {
        let host = self.api().read_interface_data().map_err(|source| WgError {
            what: "reading WireGuard peers".into(),
            source,
        })?;
        Ok(observed_peers(&host))
    }

    /// The public half of the device's private key (if it has one) and
    /// each peer's last completed handshake, from one read of the device
    /// (for the kernel path's rotation).
    pub fn key_and_handshakes(
        &self,
    ) -> Result<(Option<PublicKey>, keys::kernel_ack::Handshakes), WgError> {
        let host = self.api().read_interface_data().map_err(|source| WgError {
            what: "reading the WireGuard device's key and handshakes".into(),
            source,
        })?;
        Ok(key_and_handshakes_of(&host))
    }

    /// Each peer's key, last completed handshake (`None`: never) and
    /// whether it has a persistent keepalive (for peer health on a device
    /// that reports nothing else).
    pub fn peer_handshakes(
        &self,
    ) -> Result<Vec<(PublicKey, Option<std::time::SystemTime>, bool)>, WgError> {
        let host = self.api().read_interface_data().map_err(|source| WgError {
            what: "reading the WireGuard device's handshakes".into(),
            source,
        })?;
        Ok(host
            .peers
            .values()
            .map(|p| {
                let last = last_handshake(p);
                let keepalive = p.persistent_keepalive_interval.is_some_and(|k| k > 0);
                (
                    PublicKey::from_bytes(p.public_key.as_array()),
                    last,
                    keepalive,
                )
            })
            .collect())
    }

    /// Carry out the peer actions of a diff (route actions are ignored here).
    pub fn apply(&self, actions: &[Action]) -> Result<(), WgError> {
        for a in actions {
            match a {
                Action::RemovePeer { public_key } => self
                    .api()
                    .remove_peer(&Key::new(*public_key.as_bytes()))
                    .map_err(|source| WgError {
                        what: format!("removing peer {public_key}"),
                        source,
                    })?,
                Action::SetPeer(p) => {
                    self.api()
                        .configure_peer(&peer_config(p))
                        .map_err(|source| WgError {
                            what: format!("configuring peer {} ({})", p.node, p.public_key),
                            source,
                        })?
                }
                Action::AddRoute(_) | Action::RemoveRoute(_) => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keys::PrivateKey;

    #[test]
    fn selection() {
        use BackendChoice::*;
        assert_eq!(select_backend(Auto, true), Ok(Backend::Kernel));
        assert_eq!(select_backend(Auto, false), Ok(Backend::Userspace));
        assert_eq!(select_backend(Userspace, true), Ok(Backend::Userspace));
        assert_eq!(select_backend(Kernel, true), Ok(Backend::Kernel));
        let e = select_backend(Kernel, false).unwrap_err();
        assert!(e.to_string().contains("--backend kernel"));
    }

    #[test]
    fn a_link_of_the_other_kind_is_replaced() {
        assert!(stale_link(Backend::Kernel, Some("tun")));
        assert!(stale_link(Backend::Userspace, Some("wireguard")));
        assert!(stale_link(Backend::Kernel, None));
        assert!(!stale_link(Backend::Kernel, Some("wireguard")));
        assert!(!stale_link(Backend::Userspace, Some("tun")));
    }

    #[test]
    fn plan_peer_maps_to_defguard_and_back() {
        let pk = PrivateKey::generate().public_key();
        let p = mesh::Peer {
            node: "b".into(),
            public_key: pk,
            endpoint: "192.0.2.2:51820".parse().unwrap(),
            allowed_ips: ["10.244.2.0/24", "fd00:10:244:2::/64"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
            persistent_keepalive: Some(25),
            next_public_key: None,
        };
        let wg = peer_config(&p);
        assert_eq!(wg.public_key.as_array(), *pk.as_bytes());
        let uapi = wg.as_uapi_update();
        assert!(uapi.contains(&format!("public_key={}\n", pk.to_hex())));
        assert!(uapi.contains("endpoint=192.0.2.2:51820\n"));
        assert!(uapi.contains("replace_allowed_ips=true\n"));
        assert!(uapi.contains("allowed_ip=10.244.2.0/24\n"));
        assert!(uapi.contains("allowed_ip=fd00:10:244:2::/64\n"));
        assert!(uapi.contains("persistent_keepalive_interval=25\n"));
        // Our own UAPI parser reads what defguard writes.
        let lines: Vec<String> = uapi.lines().map(String::from).collect();
        let req = crate::wireguard::uapi::parse_set(&lines).unwrap();
        assert_eq!(req.peers[0].allowed_ips.len(), 2);
        // And the observed form round-trips to "converged".
        let mut host = Host::new(51820, Key::new([1; 32]));
        host.peers.insert(wg.public_key.clone(), wg);
        let obs = observed_peers(&host);
        assert_eq!(obs[&pk].allowed_ips, p.allowed_ips);
        assert_eq!(obs[&pk].endpoint, Some(p.endpoint));
        assert_eq!(obs[&pk].persistent_keepalive, Some(25));
    }
}
