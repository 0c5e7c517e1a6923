//! podguard: the IO shell around the pure `mesh` and `keys` crates.
//!
//! Everything here touches the outside world (sockets, netlink, files, the
//! Kubernetes API) and carries out what `mesh` decides.

pub mod agent;
pub mod cni;
pub mod errors;
pub mod k8s;
pub mod lab;
pub mod netfilter;
pub mod netlink;
pub mod wireguard;
