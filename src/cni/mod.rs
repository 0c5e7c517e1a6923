//! The CNI plugin `podguard-cni`: ADD/DEL/CHECK/VERSION/STATUS/GC.
//!
//! The pure `cnispec` crate parses the invocation (`spec`) and the node
//! state file and formats results; `store` is the IPAM store (addresses
//! come from `mesh::ipam`); `pod` does the veth, addresses and routes
//! inside the pod's namespace. ADD checks every input before it
//! allocates anything, and undoes its allocation if the network setup fails.

pub mod pod;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde_json::Value;

use cnispec::node_state::{self, NodeState};
pub use cnispec::spec;
use spec::{AddResult, CniError, Command, Request, ResultInterface, code};
use store::{Owner, Store};

/// Deterministic host-side veth name for an attachment ("pgv" + 11 hex),
/// so DEL and GC find it even when the pod's namespace is gone.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    h.write(container_id.as_bytes());
    h.write(&[0]);
    h.write(ifname.as_bytes());
    format!("pgv{:011x}", h.finish() & 0x0fff_ffff_ffff)
}

/// Prefix of every host-side veth podguard creates.
pub const HOST_VETH_PREFIX: &str = "pgv";

fn state_path(req: &Request) -> PathBuf {
    req.conf
        .node_state_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(node_state::DEFAULT_PATH))
}

/// The node's one IPAM store, whatever the network name: the address range
/// belongs to the node.
fn data_dir(req: &Request) -> PathBuf {
    req.conf
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(store::DEFAULT_DIR))
}

/// Read and validate the node state the agent writes.
pub fn read_node_state(path: &Path, missing_code: u32) -> Result<NodeState, CniError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CniError::new(
                missing_code,
                format!(
                    "node state file {} is missing: podguard-agent has not set up this node yet",
                    path.display()
                ),
            ));
        }
        Err(e) => {
            return Err(CniError::new(
                code::IO,
                format!("reading node state file {}", path.display()),
            )
            .details(e.to_string()));
        }
    };
    node_state::parse(&path.display().to_string(), &bytes, missing_code)
}

fn store_err(e: store::StoreError) -> CniError {
    match e {
        store::StoreError::Ipam(mesh::ipam::IpamError::Exhausted { .. }) => {
            CniError::new(code::ADDRESS_EXHAUSTED, e.to_string())
        }
        other => CniError::new(code::IO, other.to_string()),
    }
}

fn owner(req: &Request) -> Owner {
    Owner {
        network: req.conf.name.clone(),
        container_id: req.container_id.clone(),
        ifname: req.ifname.clone(),
    }
}

/// Run one invocation: returns the JSON to print on success (None for
/// commands that print nothing).
pub fn run(
    envs: &BTreeMap<String, String>,
    stdin: &[u8],
) -> Result<Option<Value>, (CniError, String)> {
    let version_hint = spec::requested_version(stdin)
        .filter(|v| spec::SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| spec::LATEST.to_string());
    let req = spec::parse(envs, stdin).map_err(|e| (e, version_hint.clone()))?;
    let v = req.conf.cni_version.clone();
    let r = match req.command {
        Command::Version => Ok(Some(spec::version_result(&v))),
        Command::Status => status(&req).map(|()| None),
        Command::Add => add(&req).map(|r| Some(spec::format_add(&r, &v))),
        Command::Del => del(&req).map(|()| None),
        Command::Check => check(&req).map(|()| None),
        Command::Gc => gc(&req).map(|()| None),
    };
    r.map_err(|e| (e, v))
}

/// STATUS: 50 while the agent has not written the node state; 51 when it
/// has but the bridge is gone (existing pods are cut off).
fn status(req: &Request) -> Result<(), CniError> {
    let state = read_node_state(&state_path(req), code::NOT_AVAILABLE)?;
    let bridge = req.conf.bridge.clone().unwrap_or(state.bridge);
    if !pod::link_exists(&bridge)? {
        return Err(CniError::new(
            code::NOT_AVAILABLE_DAMAGED,
            format!("bridge {bridge} is missing: existing pods on this node have no network"),
        ));
    }
    Ok(())
}

/// Open CNI_NETNS (code 4 naming the path if it cannot be opened, or if
/// it is the plugin's own namespace: a pod interface and default route
/// there would shadow the node's own routes).
fn open_netns(req: &Request) -> Result<(PathBuf, std::fs::File), CniError> {
    use std::os::unix::fs::MetadataExt;
    let path = req.netns.clone().unwrap_or_default();
    let file = std::fs::File::open(&path).map_err(|e| {
        CniError::new(
            code::INVALID_ENV,
            format!(
                "CNI_NETNS {}: cannot open the network namespace",
                path.display()
            ),
        )
        .details(e.to_string())
    })?;
    let own = std::fs::metadata("/proc/self/ns/net");
    if let (Ok(target), Ok(own)) = (file.metadata(), own)
        && (target.dev(), target.ino()) == (own.dev(), own.ino())
    {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "CNI_NETNS {} is the node's own network namespace (the plugin's): a pod needs a namespace of its own",
                path.display()
            ),
        ));
    }
    Ok((path, file))
}

fn add(req: &Request) -> Result<AddResult, CniError> {
    let state = read_node_state(&state_path(req), code::TRY_LATER)?;
    let (netns_path, netns) = open_netns(req)?;
    pod::ensure_absent(&netns, &netns_path, &req.ifname)?;
    let bridge = req.conf.bridge.clone().unwrap_or(state.bridge.clone());
    let mtu = req.conf.mtu.unwrap_or(state.mtu);
    let host = host_veth_name(&req.container_id, &req.ifname);
    let owner = owner(req);

    let store = Store::open(&data_dir(req)).map_err(store_err)?;
    // A retried ADD keeps the addresses it already has.
    let mut held: Vec<IpAddr> = store.held_by(&owner).map_err(store_err)?;
    let mut ips: Vec<(IpNet, IpAddr)> = Vec::new();
    for cidr in &state.pod_cidrs {
        let gw = mesh::ipam::gateway(cidr)
            .map_err(|e| CniError::new(code::INVALID_CONFIG, e.to_string()))?;
        let ip = match held.iter().position(|ip| cidr.contains(ip)) {
            Some(i) => held.remove(i),
            None => match store.allocate(*cidr, &owner) {
                Ok(ip) => ip,
                Err(e) => {
                    let _ = store.release_owner(&owner);
                    return Err(store_err(e));
                }
            },
        };
        let net = IpNet::new(ip, cidr.prefix_len())
            .map_err(|e| CniError::new(code::INVALID_CONFIG, e.to_string()))?;
        ips.push((net, gw));
    }
    // Addresses from an older podCIDR are no longer ours to keep.
    for stale in held {
        let _ = store.release(stale);
    }
    match pod::attach(&netns, &host, &req.ifname, &bridge, mtu, &ips) {
        Ok((host_mac, pod_mac)) => Ok(AddResult {
            interfaces: vec![
                ResultInterface {
                    name: host,
                    mac: host_mac,
                    sandbox: None,
                },
                ResultInterface {
                    name: req.ifname.clone(),
                    mac: pod_mac,
                    sandbox: Some(netns_path.display().to_string()),
                },
            ],
            ips,
            mtu,
        }),
        Err(e) => {
            let _ = pod::detach(&host);
            let _ = store.release_owner(&owner);
            Err(e)
        }
    }
}

/// DEL removes the veth before it releases the addresses, so a DEL killed
/// halfway never leaves a veth without an allocation (GC finds veths
/// through their allocations).
fn del(req: &Request) -> Result<(), CniError> {
    let store = Store::open(&data_dir(req)).map_err(store_err)?;
    pod::detach(&host_veth_name(&req.container_id, &req.ifname))?;
    store.release_owner(&owner(req)).map_err(store_err)?;
    Ok(())
}

fn check(req: &Request) -> Result<(), CniError> {
    let state = read_node_state(&state_path(req), code::TRY_LATER)?;
    let prev = spec::prev_result_ips(req.conf.prev_result.as_ref().unwrap_or(&Value::Null))?;
    let (_, netns) = open_netns(req)?;
    let bridge = req.conf.bridge.clone().unwrap_or(state.bridge.clone());
    let mut problems = pod::inspect(
        &netns,
        &host_veth_name(&req.container_id, &req.ifname),
        &req.ifname,
        &bridge,
        &prev,
    )?;
    let store = Store::open(&data_dir(req)).map_err(store_err)?;
    let held: BTreeSet<IpAddr> = store
        .held_by(&owner(req))
        .map_err(store_err)?
        .into_iter()
        .collect();
    for (net, _) in &prev {
        if !held.contains(&net.addr()) {
            problems.push(format!(
                "{} is not allocated to this container in the IPAM store",
                net.addr()
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            code::CHECK_FAILED,
            format!(
                "{} in container {} is not as ADD left it",
                req.ifname, req.container_id
            ),
        )
        .details(problems.join("; ")))
    }
}

/// GC touches only attachments of its own network: it releases their
/// addresses and removes their veths (found through their allocations; DEL
/// removes a veth before its allocation, so none is left without one).
/// Veths of other networks, or of another store, are never touched. The
/// store lock is held throughout, so no ADD is between allocating and
/// creating its veth.
fn gc(req: &Request) -> Result<(), CniError> {
    let network = &req.conf.name;
    let valid: BTreeSet<Owner> = req
        .conf
        .valid_attachments
        .iter()
        .flatten()
        .flatten()
        .map(|a| Owner {
            network: network.clone(),
            container_id: a.container_id.clone(),
            ifname: a.ifname.clone(),
        })
        .collect();
    let store = Store::open(&data_dir(req)).map_err(store_err)?;
    let remove: BTreeSet<String> = store
        .gc(network, &valid)
        .map_err(store_err)?
        .into_iter()
        .filter_map(|(_, o)| o)
        .map(|o| host_veth_name(&o.container_id, &o.ifname))
        .collect();
    pod::remove_host_veths(&remove)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_short_stable_and_distinct() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert_ne!(a, host_veth_name("abce", "th0"));
        assert!(a.len() < 16 && a.starts_with(HOST_VETH_PREFIX), "{a}");
    }
}
