//! podguard: the IO shell around the pure crates `mesh` (the planner),
//! `keys`, `wgcore` (the WireGuard core) and `cnispec` (the CNI plugin's
//! inputs and outputs).
//!
//! Everything here touches the outside world (sockets, netlink, files, the
//! Kubernetes API) and carries out what the pure crates decide.

pub mod agent;
pub mod cni;
pub mod errors;
pub mod k8s;
pub mod lab;
pub mod netfilter;
pub mod netlink;
pub mod sys;
pub mod wireguard;
