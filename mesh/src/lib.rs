//! The pure core of podguard: decides what the mesh should look like.
//!
//! **This crate does no IO and reads no clock.** No tokio, no kube, no
//! netlink, no filesystem: every input is passed in and every effect comes
//! out as data ([`Plan`], [`Action`]). The shell in the `podguard` crate
//! observes the world, calls into here, and carries out the result. Anything
//! here is tested with plain unit and property tests, without root.
//!
//! * [`plan()`]: from the node snapshot to the desired peers, routes, MTU and
//!   the list of rejected nodes with their reasons.
//! * [`diff()`]: the minimal list of [`Action`]s that turns an [`Observed`]
//!   state into the plan; empty when converged.
//! * [`ipam`]: address allocation within a podCIDR.
//! * [`mtu`]: the one MTU computation.
//! * [`health`]: per-peer health (a dead pair, a handshake storm) from
//!   device samples.
//! * [`nodes_file`]: the `--nodes-file` format, parsed from text.

pub mod audit;
pub mod companion;
pub mod diff;
pub mod digest;
pub mod health;
pub mod ipam;
pub mod mtu;
pub mod node;
pub mod nodes_file;
pub mod plan;
pub mod policy;
pub mod publish;
pub mod showconf;
pub mod status;
pub mod table;

pub use diff::{Action, Observed, ObservedPeer, accept_roaming, diff, renames};
pub use node::{NodeInfo, Rejection};
pub use plan::{
    Local, MeshConfig, NextKeyIgnored, Peer, Plan, PlanError, Route, RouteTarget, plan,
};

/// Name of the WireGuard interface.
pub const WG_IFNAME: &str = "podguard0";
/// Name of the pod bridge.
pub const BRIDGE_IFNAME: &str = "cbr0";
/// The bridge's MAC for node `node`: locally administered, unicast, stable
/// across restarts. A Linux bridge without a MAC of its own takes the
/// lowest MAC of its ports and changes it when that port goes, which
/// leaves every pod's ARP entry for the gateway stale.
pub fn bridge_mac(node: &str) -> [u8; 6] {
    // FNV-1a of the name: deterministic, no dependency.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    [0x02, b[3], b[4], b[5], b[6], b[7]]
}

/// Default WireGuard UDP port.
pub const DEFAULT_LISTEN_PORT: u16 = 51820;
/// Metric of the routes podguard installs towards `podguard0` and `cbr0`.
pub const ROUTE_METRIC: u32 = 100;
/// Metric of the `unreachable` backstop routes: above everything else, so
/// they only answer when the `podguard0` route is gone.
pub const BACKSTOP_METRIC: u32 = 9999;

#[cfg(test)]
mod bridge_mac_tests {
    use super::bridge_mac;

    #[test]
    fn bridge_mac_is_stable_local_unicast_and_per_node() {
        let a = bridge_mac("node-a");
        assert_eq!(a, bridge_mac("node-a"));
        assert_ne!(a, bridge_mac("node-b"));
        assert_eq!(a[0] & 0x01, 0, "unicast");
        assert_eq!(a[0] & 0x02, 0x02, "locally administered");
    }
}
