//! The agent's WireGuard device at start-up: the userspace device (TUN,
//! UDP, UAPI socket) or the kernel's `podguard0`, adopted as it is when it
//! already runs with this node's key and port (a restarted agent keeps
//! its peers' sessions).

use keys::PrivateKey;

use crate::wireguard::backend::WgClient;
use crate::wireguard::device::Device;
use crate::wireguard::{Backend, uapi_server};

/// Bring up the WireGuard device for `backend` (userspace: our device,
/// persistent TUN, UAPI socket) and return a client for it.
/// `crypto_workers` per direction (userspace only; 0: half the CPUs) run the datapath's
/// encryption and decryption.
pub fn start_device(
    backend: Backend,
    key: &PrivateKey,
    listen_port: u16,
    crypto_workers: usize,
) -> anyhow::Result<(WgClient, Option<std::sync::Arc<Device>>)> {
    let mut device = None;
    match backend {
        Backend::Userspace => {
            let dev = Device::new(
                mesh::WG_IFNAME,
                listen_port,
                Some(key),
                true,
                crypto_workers,
            )?;
            dev.spawn()?;
            let sock = uapi_server::serve(dev.clone())?;
            tracing::info!(socket = %sock.display(), crypto_workers = dev.crypto_workers(), "userspace WireGuard device up");
            device = Some(dev);
        }
        Backend::Kernel => {
            use defguard_wireguard_rs::WireguardInterfaceApi as _;
            use defguard_wireguard_rs::{InterfaceConfiguration, Kernel, WGApi};
            let mut api = WGApi::<Kernel>::new(mesh::WG_IFNAME)?;
            let config = InterfaceConfiguration {
                name: mesh::WG_IFNAME.into(),
                prvkey: key.to_base64().to_string(),
                addresses: vec![],
                port: listen_port,
                peers: vec![],
                mtu: None,
                fwmark: None,
            };
            match api.read_interface_data() {
                // An existing interface keeps its peers and sessions
                // (restart adopts it) if it runs with the key file's key
                // and the listen port asked for.
                Ok(host) => {
                    // Compared by public key: the kernel clamps the
                    // private key it is given, so its bytes read back differ.
                    let same_key = host.private_key.as_ref().is_some_and(|k| {
                        PrivateKey::from_bytes(k.as_array()).public_key() == key.public_key()
                    });
                    if !same_key || host.listen_port != listen_port {
                        tracing::warn!(
                            key_changed = !same_key,
                            port = host.listen_port,
                            want_port = listen_port,
                            "the kernel device runs with another key or port than configured; applying the key file and port (peers re-handshake)"
                        );
                        api.configure_interface(&config)?;
                    }
                }
                Err(_) => {
                    api.create_interface()?;
                    api.configure_interface(&config)?;
                }
            }
            tracing::info!("kernel WireGuard device up");
        }
    }
    Ok((WgClient::new(backend, mesh::WG_IFNAME)?, device))
}
