//! The pod side of an attachment: a veth pair from the bridge into the
//! pod's namespace, its addresses and default routes. Work inside the pod's
//! namespace runs on a thread that has entered it, with its own netlink
//! socket.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

use super::spec::{CniError, code};
use crate::netlink::{Netlink, NetlinkError};

fn net_err(e: NetlinkError) -> CniError {
    CniError::new(code::NETWORK_SETUP, e.to_string()).details(
        std::iter::successors(std::error::Error::source(&e), |e| e.source())
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(": "),
    )
}

/// Run `f` with a netlink handle in the current namespace.
fn here<T>(f: impl AsyncFnOnce(Netlink) -> Result<T, CniError>) -> Result<T, CniError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(code::IO, "starting a runtime").details(e.to_string()))?;
    rt.block_on(async {
        let nl = Netlink::connect().map_err(net_err)?;
        f(nl).await
    })
}

/// Run `f` with a netlink handle inside the namespace `netns`.
fn inside<T: Send>(
    netns: &File,
    f: impl AsyncFnOnce(Netlink) -> Result<T, CniError> + Send,
) -> Result<T, CniError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                CniError::new(code::NETWORK_SETUP, "entering the pod's network namespace")
                    .details(e.to_string())
            })?;
            here(f)
        })
        .join()
        .unwrap_or_else(|_| Err(CniError::new(code::NETWORK_SETUP, "netns worker panicked")))
    })
}

/// Refuse an `ifname` that already exists in the pod's namespace (before
/// anything is allocated, so the refusal changes nothing).
pub fn ensure_absent(netns: &File, netns_path: &Path, ifname: &str) -> Result<(), CniError> {
    let exists = inside(netns, async |nl: Netlink| {
        nl.link(ifname).await.map_err(net_err)
    })?;
    if exists.is_some() {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "CNI_IFNAME {ifname} already exists in {}",
                netns_path.display()
            ),
        ));
    }
    Ok(())
}

/// Create and configure the attachment; returns (host MAC, pod MAC).
pub fn attach(
    netns: &File,
    host: &str,
    ifname: &str,
    bridge: &str,
    mtu: u32,
    ips: &[(IpNet, IpAddr)],
) -> Result<(String, String), CniError> {
    let host_mac = here(async |nl: Netlink| {
        // A host veth left by a crashed ADD of this attachment is replaced.
        nl.delete_link(host).await.map_err(net_err)?;
        if nl.link_index(bridge).await.map_err(net_err)?.is_none() {
            return Err(CniError::new(
                code::TRY_LATER,
                format!(
                    "bridge {bridge} does not exist: podguard-agent has not set up this node yet"
                ),
            ));
        }
        nl.create_veth_into(host, ifname, mtu, bridge, netns)
            .await
            .map_err(net_err)?;
        Ok(nl
            .link(host)
            .await
            .map_err(net_err)?
            .map(|l| l.mac)
            .unwrap_or_default())
    })?;
    let pod_mac = inside(netns, async |nl: Netlink| {
        nl.link_up(ifname).await.map_err(net_err)?;
        nl.link_up("lo").await.map_err(net_err)?;
        for (net, _) in ips {
            nl.add_address(ifname, *net).await.map_err(net_err)?;
        }
        for (_, gw) in ips {
            nl.add_default_route(ifname, *gw).await.map_err(net_err)?;
        }
        Ok(nl
            .link(ifname)
            .await
            .map_err(net_err)?
            .map(|l| l.mac)
            .unwrap_or_default())
    })?;
    Ok((host_mac, pod_mac))
}

/// Whether a link exists in this (the node's) namespace.
pub fn link_exists(name: &str) -> Result<bool, CniError> {
    here(async |nl: Netlink| Ok(nl.link_index(name).await.map_err(net_err)?.is_some()))
}

/// Remove the host side (and with it the pod side). Absent is success.
pub fn detach(host: &str) -> Result<(), CniError> {
    here(async |nl: Netlink| nl.delete_link(host).await.map(|_| ()).map_err(net_err))
}

/// What is wrong with an attachment compared with a previous result.
pub fn inspect(
    netns: &File,
    host: &str,
    ifname: &str,
    bridge: &str,
    prev: &[(IpNet, Option<IpAddr>)],
) -> Result<Vec<String>, CniError> {
    let mut problems = here(async |nl: Netlink| {
        let mut p = Vec::new();
        let bridge_index = nl.link_index(bridge).await.map_err(net_err)?;
        match nl.link(host).await.map_err(net_err)? {
            None => p.push(format!("host veth {host} is missing")),
            Some(l) if l.controller != bridge_index || bridge_index.is_none() => {
                p.push(format!("host veth {host} is not attached to {bridge}"))
            }
            Some(_) => {}
        }
        Ok(p)
    })?;
    let pod = inside(netns, async |nl: Netlink| {
        let mut p = Vec::new();
        let Some(link) = nl.link(ifname).await.map_err(net_err)? else {
            p.push(format!(
                "interface {ifname} is missing from the pod's namespace"
            ));
            return Ok(p);
        };
        if !link.up {
            p.push(format!("interface {ifname} is down"));
        }
        let have: BTreeSet<IpNet> = nl
            .addresses(ifname)
            .await
            .map_err(net_err)?
            .into_iter()
            .collect();
        let gws: BTreeSet<IpAddr> = nl
            .default_gateways(ifname)
            .await
            .map_err(net_err)?
            .into_iter()
            .collect();
        for (net, gw) in prev {
            if !have.contains(net) {
                p.push(format!("address {net} is missing from {ifname}"));
            }
            if let Some(gw) = gw
                && !gws.contains(gw)
            {
                p.push(format!("default route via {gw} is missing"));
            }
        }
        Ok(p)
    })?;
    problems.extend(pod);
    Ok(problems)
}

/// GC: delete the podguard host veths named in `remove` (absent is fine).
pub fn remove_host_veths(remove: &BTreeSet<String>) -> Result<(), CniError> {
    here(async |nl: Netlink| {
        for l in nl.links(super::HOST_VETH_PREFIX).await.map_err(net_err)? {
            if remove.contains(&l.name) {
                nl.delete_link(&l.name).await.map_err(net_err)?;
            }
        }
        Ok(())
    })
}
