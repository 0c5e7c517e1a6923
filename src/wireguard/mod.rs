//! WireGuard backends: podguard's own userspace device, or kernel WireGuard
//! through defguard_wireguard_rs. Either is configured through defguard's
//! `WireguardInterfaceApi` (netlink for the kernel, UAPI for ours).

pub mod backend;
pub mod batch;
pub mod device;
mod handshakes;
mod tun_rx;
pub mod uapi_server;
mod udp_rx;
pub mod workers;

pub use wgcore::uapi;

pub use backend::{Backend, BackendChoice, SelectError, select_backend, stale_link};
