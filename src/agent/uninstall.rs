//! `podguard-agent --uninstall`: remove everything podguard created on this
//! node, so it is as it was before the install: the `podguard0` and `cbr0`
//! links and a key rotation's companions `podguard0n`/`podguard0p` (and
//! with them their addresses and routes), podguard's remaining
//! routes (the `unreachable` backstops, protocol 77), the nftables table
//! `inet podguard`, the CNI plugin and conflist, the pods' address leases,
//! the node state file, the UAPI socket and the node's keys (a reinstall
//! makes a new key). Idempotent: what is gone already is skipped. Pods go
//! first (drain the node): their veths are their runtime's to remove.
//! IP forwarding stays on (other software on the node may rely on it).

use std::path::{Path, PathBuf};

use crate::netfilter::NetfilterError;
use crate::netlink::{Netlink, NetlinkError};

/// What stopped the uninstall. What was removed before it stays removed;
/// running it again carries on (it skips what is gone).
#[derive(Debug, thiserror::Error)]
pub enum UninstallError {
    /// Removing a link or a route failed.
    #[error("removing podguard's links and routes")]
    Netlink(#[from] NetlinkError),
    /// Removing the nftables table failed.
    #[error("removing the nftables table inet {}", crate::netfilter::TABLE)]
    Nftables(#[from] NetfilterError),
    /// Removing a file or directory failed.
    #[error("removing {path}")]
    Remove {
        /// What could not be removed.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The files podguard keeps on a node.
#[derive(Debug, Clone)]
pub struct Files {
    /// The private key (its `.next` and `.old` siblings go too).
    pub key_file: PathBuf,
    /// The node state the CNI plugin reads.
    pub state_file: PathBuf,
    /// Where the CNI plugin binary was installed.
    pub cni_bin_dir: PathBuf,
    /// Where the conflist was installed.
    pub cni_conf_dir: PathBuf,
    /// The CNI plugin's address leases.
    pub ipam_dir: PathBuf,
}

fn remove_file(path: &Path, removed: &mut Vec<String>) -> Result<(), UninstallError> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            removed.push(path.display().to_string());
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(UninstallError::Remove {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Remove `path` and all below it, if it exists; note it in `removed`.
fn remove_dir(path: &Path, removed: &mut Vec<String>) -> Result<(), UninstallError> {
    if path.exists() {
        std::fs::remove_dir_all(path).map_err(|source| UninstallError::Remove {
            path: path.to_path_buf(),
            source,
        })?;
        removed.push(path.display().to_string());
    }
    Ok(())
}

/// Remove it all; returns what was removed, one line each.
pub async fn uninstall(nl: &Netlink, files: &Files) -> Result<Vec<String>, UninstallError> {
    let mut removed = Vec::new();
    for link in [
        mesh::WG_IFNAME,
        mesh::companion::NEXT_IFNAME,
        mesh::companion::PEERS_NEXT_IFNAME,
        mesh::BRIDGE_IFNAME,
    ] {
        if nl.delete_link(link).await? {
            removed.push(format!("link {link}"));
        }
    }
    for r in nl.observe_routes().await? {
        nl.del_route(&r).await?;
        removed.push(format!("route {}", r.dst));
    }
    crate::netfilter::apply(&crate::netfilter::removal())?;
    removed.push(format!("nftables table inet {}", crate::netfilter::TABLE));
    remove_file(
        &files.cni_bin_dir.join(super::install::PLUGIN_NAME),
        &mut removed,
    )?;
    remove_file(
        &files.cni_conf_dir.join(super::install::CONFLIST_NAME),
        &mut removed,
    )?;
    remove_dir(&files.ipam_dir, &mut removed)?;
    remove_file(&files.state_file, &mut removed)?;
    let sock = crate::wireguard::uapi_server::socket_path(mesh::WG_IFNAME);
    remove_file(&sock, &mut removed)?;
    // A socket's staging directory, left if an agent died while binding.
    remove_dir(
        &crate::wireguard::uapi_server::staging_dir(&sock),
        &mut removed,
    )?;
    let key = files.key_file.display().to_string();
    for k in [key.clone(), format!("{key}.next"), format!("{key}.old")] {
        remove_file(Path::new(&k), &mut removed)?;
    }
    // The directories podguard made, when nothing else is left in them.
    for f in [&files.key_file, &files.state_file] {
        if let Some(d) = f.parent() {
            let _ = std::fs::remove_dir(d);
        }
    }
    Ok(removed)
}
