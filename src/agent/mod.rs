//! The agent's shell: bring up the device, then reconcile the mesh from a
//! node source, level-triggered over the whole snapshot.
//!
//! Decisions come from `mesh::plan` and `mesh::diff`; this module observes
//! (WireGuard peers through defguard, routes through rtnetlink) and carries
//! out the resulting actions.

pub mod cli;
pub mod companions;
pub mod install;
pub mod metrics;
pub mod node_state;
pub mod nodes_file;
pub mod peer_health;
pub mod rotation;
pub mod underlay;
pub mod uninstall;

mod device;

pub use device::start_device;
pub use nodes_file::run_nodes_file;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use keys::PrivateKey;
use mesh::{Action, Local, MeshConfig, NodeInfo, Observed, Plan, Rejection};

use crate::netlink::{Netlink, NetlinkError};
use crate::wireguard::Backend;
use crate::wireguard::backend::{WgClient, WgError};
use crate::wireguard::device::Device;

/// Settings of a running agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This node's name.
    pub node_name: String,
    /// Mesh settings (cluster CIDRs, port, underlay MTU, keepalive).
    pub mesh: MeshConfig,
    /// Where the node state for the CNI plugin goes.
    pub state_file: PathBuf,
    /// Masquerade pod traffic leaving the cluster CIDR (`inet podguard`).
    pub masquerade: bool,
    /// A peer is reported without a handshake after this long.
    pub peer_stale_after: Duration,
    /// Where `mesh.underlay_mtu` comes from (set, or found each reconcile).
    pub underlay_mtu: underlay::UnderlayMtu,
}

/// A reconcile failure (the data plane keeps its last state).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// No plan could be made (e.g. this node has no podCIDRs yet).
    #[error(transparent)]
    Plan(#[from] mesh::PlanError),
    /// Netlink failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// WireGuard configuration failed.
    #[error(transparent)]
    Wg(#[from] WgError),
    /// The userspace device's TUN could not be recreated.
    #[error("recreating the WireGuard interface: {0}")]
    Device(String),
    /// nftables (the barrier, masquerade) could not be programmed.
    #[error(transparent)]
    Netfilter(#[from] crate::netfilter::NetfilterError),
    /// The node state file could not be written.
    #[error("writing node state file {path}")]
    StateFile {
        /// The path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// What one reconcile did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Actions carried out.
    pub actions: Vec<Action>,
    /// Number of peers in the plan.
    pub peers: usize,
    /// Rejected nodes.
    pub rejections: BTreeMap<String, Vec<Rejection>>,
    /// Peers whose next key is not used, and why.
    pub ignored_next_keys: BTreeMap<String, mesh::NextKeyIgnored>,
    /// Digest of the mesh now applied (`podguard.dev/mesh-digest`).
    pub digest: String,
    /// Peers renamed in place to a new key (rotation).
    pub renamed: usize,
    /// The underlay MTU planned with (the smallest of the mesh).
    pub underlay_mtu: u32,
}

/// The agent: a WireGuard client, netlink, and what it last logged.
#[derive(Debug)]
pub struct Agent {
    cfg: AgentConfig,
    local: Local,
    wg: WgClient,
    nl: Netlink,
    last_rejections: BTreeMap<String, Vec<Rejection>>,
    /// The plan applied last, so a roamed endpoint is not taken for drift.
    last_plan: Option<Plan>,
    /// Our userspace device, which can rename peers and stage next keys
    /// (hitless rotation); `None` on the kernel backend.
    device: Option<std::sync::Arc<Device>>,
    last_ignored: BTreeMap<String, mesh::NextKeyIgnored>,
    /// Woken by netlink events that remove podguard state (routes, cbr0's
    /// addresses, podguard0/cbr0): reconcile at once.
    repair: std::sync::Arc<tokio::sync::Notify>,
    /// Kernel path: the key file and port to recreate `podguard0` from
    /// when it was deleted under us.
    kernel: Option<(PathBuf, u16)>,
    /// Per-peer health (`peer_health`).
    peers: peer_health::PeerWatch,
    /// The underlay interface and MTU found last (detect mode).
    underlay_found: Option<(String, u32)>,
    /// Kernel path: `podguard0`'s handshakes when it took a key (which),
    /// from the rotator, for the companions (`companions`).
    kernel_before: Option<(keys::PublicKey, mesh::companion::Handshakes)>,
    /// Kernel path: the local keys the rotation may go on with, as of the
    /// last reconcile (`mesh::companion::acks`).
    kernel_acks: std::collections::BTreeSet<keys::PublicKey>,
    /// A rotation's companion interface exists: poll handshakes often.
    companions_active: bool,
}

impl Agent {
    /// An agent for the device `wg` on this node.
    pub fn new(cfg: AgentConfig, key: &PrivateKey, wg: WgClient, nl: Netlink) -> Self {
        let local = Local {
            name: cfg.node_name.clone(),
            public_key: key.public_key(),
        };
        Self {
            local,
            wg,
            nl,
            last_rejections: BTreeMap::new(),
            last_plan: None,
            device: None,
            last_ignored: BTreeMap::new(),
            repair: std::sync::Arc::new(tokio::sync::Notify::new()),
            kernel: None,
            peers: peer_health::PeerWatch::new(cfg.peer_stale_after),
            underlay_found: None,
            kernel_before: None,
            kernel_acks: std::collections::BTreeSet::new(),
            companions_active: false,
            cfg,
        }
    }

    /// Kernel path: recreate a deleted `podguard0` from `key_file` (the
    /// current key, also after a rotation) on `listen_port`.
    pub fn with_kernel_recreate(mut self, key_file: PathBuf, listen_port: u16) -> Self {
        self.kernel = Some((key_file, listen_port));
        self
    }

    /// What wakes a repair (hand it to `netlink::watch::spawn`).
    pub fn repair_trigger(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.repair.clone()
    }

    /// Use our userspace device directly for what UAPI cannot say: rename
    /// a peer in place and stage peers' next keys.
    pub fn with_device(mut self, device: Option<std::sync::Arc<Device>>) -> Self {
        self.device = device;
        self
    }

    /// Kernel path: `podguard0`'s handshakes from just before it took its
    /// current key (the rotator's snapshot), so the companions can tell a
    /// handshake on the new key from an older one.
    pub fn set_kernel_before(
        &mut self,
        before: Option<(keys::PublicKey, mesh::companion::Handshakes)>,
    ) {
        self.kernel_before = before;
    }

    /// Kernel path: the local keys the rotation may go on with, as of the
    /// last reconcile (empty after a failed one).
    pub fn kernel_acks(&self) -> std::collections::BTreeSet<keys::PublicKey> {
        self.kernel_acks.clone()
    }

    /// A rotation's companion interface is in use (poll often).
    pub fn companions_active(&self) -> bool {
        self.companions_active
    }

    /// The key this node's device now uses as its primary (after a switch).
    pub fn set_local_key(&mut self, key: keys::PublicKey) {
        self.local.public_key = key;
    }

    /// Plan from `nodes`, observe, diff, apply. Idempotent: a converged
    /// node gets an empty action list.
    pub async fn reconcile(&mut self, nodes: &[NodeInfo]) -> Result<Report, ReconcileError> {
        self.refresh_underlay_mtu(nodes).await;
        self.kernel_acks.clear();
        let mut plan: Plan = mesh::plan(&self.local, nodes, &self.cfg.mesh)?;
        // The barrier first: before any route, so no window leaks.
        self.apply_netfilter(&plan)?;
        if let Some(dev) = &self.device
            && self.nl.link_index(mesh::WG_IFNAME).await?.is_none()
        {
            // Deleted under us (`ip link del podguard0`): recreate it in
            // place; peers and sessions stay, routes come back below.
            dev.recreate_tun()
                .map_err(|e| ReconcileError::Device(e.to_string()))?;
            tracing::warn!(
                ifname = mesh::WG_IFNAME,
                "WireGuard interface was deleted; recreated"
            );
        }
        if let Some((key_file, port)) = &self.kernel
            && self.nl.link_index(mesh::WG_IFNAME).await?.is_none()
        {
            // Deleted under us: a new wireguard link with the current key;
            // peers and routes come back below (peers re-handshake).
            let key = keys::store::load(key_file).map_err(|e| {
                ReconcileError::Device(format!("loading {}: {e}", key_file.display()))
            })?;
            start_device(Backend::Kernel, &key, *port, 1)
                .map_err(|e| ReconcileError::Device(format!("{e:#}")))?;
            tracing::warn!(
                ifname = mesh::WG_IFNAME,
                "WireGuard interface was deleted; recreated"
            );
        }
        self.nl.set_up(mesh::WG_IFNAME, Some(plan.mtu)).await?;
        self.nl
            .ensure_bridge_with_mac(
                mesh::BRIDGE_IFNAME,
                plan.mtu,
                Some(mesh::bridge_mac(&self.cfg.node_name)),
            )
            .await?;
        self.nl
            .ensure_addresses(mesh::BRIDGE_IFNAME, &plan.bridge_addresses)
            .await?;
        // Kernel path: a key rotation's companion interfaces, before any
        // route moves into one (`mesh::companion`).
        let round = match &self.kernel {
            Some((key_file, _)) => {
                let r = companions::begin(
                    &self.nl,
                    &self.wg,
                    key_file,
                    &plan,
                    self.kernel_before.clone(),
                )
                .await?;
                r.decision.apply(&mut plan);
                self.companions_active = r.decision.active();
                Some(r)
            }
            None => {
                companions::remove_all(&self.nl).await?;
                None
            }
        };
        let mut observed = Observed {
            peers: self.wg.read_peers()?,
            routes: self.nl.observe_routes().await?,
        };
        mesh::accept_roaming(&mut observed, &plan, self.last_plan.as_ref());
        // A peer whose key changed (rotation): the userspace device renames
        // it in place, keeping its sessions; the kernel gets remove + set.
        let mut renamed = 0;
        if let Some(dev) = &self.device {
            let renames = mesh::renames(&plan, &observed, self.last_plan.as_ref());
            if !renames.is_empty() {
                renamed = dev.rename_peers(&renames);
                for (old, new) in &renames {
                    tracing::info!(old = %old.fingerprint(), new = %new.fingerprint(), "peer key changed: renamed in place");
                }
                observed.rename(&renames);
            }
        }
        let actions = mesh::diff(&plan, &observed);
        self.wg.apply(&actions)?;
        if let Some(dev) = &self.device {
            let next: BTreeMap<keys::PublicKey, keys::PublicKey> = plan
                .peers
                .values()
                .filter_map(|p| Some((p.public_key, p.next_public_key?)))
                .collect();
            dev.set_next_keys(&next);
        }
        if plan.ignored_next_keys != self.last_ignored {
            for (node, why) in &plan.ignored_next_keys {
                tracing::warn!(node = %node, reason = %why, "next key ignored; the peer keeps its current key");
            }
            self.last_ignored = plan.ignored_next_keys.clone();
        }
        for a in &actions {
            match a {
                Action::AddRoute(r) => self.nl.add_route(r).await?,
                Action::RemoveRoute(r) => self.nl.del_route(r).await?,
                _ => {}
            }
        }
        if let Some(r) = &round {
            r.finish(&self.nl).await?;
        }
        for a in &actions {
            match a {
                Action::SetPeer(p) => {
                    tracing::info!(node = %p.node, key = %p.public_key.fingerprint(), endpoint = %p.endpoint, allowed_ips = %p.allowed_ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(","), "peer set")
                }
                Action::RemovePeer { public_key } => {
                    tracing::info!(key = %public_key.fingerprint(), "peer removed")
                }
                Action::AddRoute(r) => {
                    tracing::info!(dst = %r.dst, target = %r.target, metric = r.metric, "route added")
                }
                Action::RemoveRoute(r) => {
                    tracing::info!(dst = %r.dst, target = %r.target, "route removed")
                }
            }
        }
        if plan.rejections != self.last_rejections {
            for (node, reasons) in &plan.rejections {
                for r in reasons {
                    tracing::warn!(node = %node, reason = %r, "node rejected: no peer, its pods are unreachable from here");
                }
            }
            self.last_rejections = plan.rejections.clone();
        }
        if let Some(r) = &round {
            // Only a reconcile that got this far lets the rotation go on.
            self.kernel_acks = r.acks.clone();
        }
        self.last_plan = Some(plan.clone());
        let state = node_state::NodeState::from_plan(&plan);
        node_state::write(&self.cfg.state_file, &state).map_err(|source| {
            ReconcileError::StateFile {
                path: self.cfg.state_file.display().to_string(),
                source,
            }
        })?;
        Ok(Report {
            actions,
            peers: plan.peers.len(),
            rejections: plan.rejections,
            ignored_next_keys: plan.ignored_next_keys,
            digest: plan.digest,
            renamed,
            underlay_mtu: plan.underlay_mtu,
        })
    }
}

impl Agent {
    /// Program `inet podguard`: the barrier and masquerade (or its
    /// removal), in one transaction. Without it the node does not
    /// reconcile: fail closed, with the reason in the log.
    fn apply_netfilter(&mut self, plan: &Plan) -> Result<(), ReconcileError> {
        let pod_cidrs: Vec<_> = plan.pod_cidrs.iter().copied().collect();
        let rules = crate::netfilter::ruleset(
            &pod_cidrs,
            &self.cfg.mesh.cluster_cidrs,
            self.cfg.masquerade,
        );
        crate::netfilter::apply(&rules)?;
        Ok(())
    }
}
