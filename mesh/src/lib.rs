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

pub mod audit;
pub mod diff;
pub mod digest;
pub mod ipam;
pub mod mtu;
pub mod node;
pub mod plan;
pub mod policy;
pub mod publish;
pub mod status;

pub use diff::{Action, Observed, ObservedPeer, accept_roaming, diff, renames};
pub use node::{NodeInfo, Rejection};
pub use plan::{
    Local, MeshConfig, NextKeyIgnored, Peer, Plan, PlanError, Route, RouteTarget, plan,
};

/// Name of the WireGuard interface.
pub const WG_IFNAME: &str = "podguard0";
/// Name of the pod bridge.
pub const BRIDGE_IFNAME: &str = "cbr0";
/// Default WireGuard UDP port.
pub const DEFAULT_LISTEN_PORT: u16 = 51820;
/// Metric of the routes podguard installs towards `podguard0` and `cbr0`.
pub const ROUTE_METRIC: u32 = 100;
/// Metric of the `unreachable` backstop routes: above everything else, so
/// they only answer when the `podguard0` route is gone.
pub const BACKSTOP_METRIC: u32 = 9999;
