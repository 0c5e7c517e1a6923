//! The node state file the agent writes for the CNI plugin
//! (`/run/podguard/node.json`): podCIDRs, gateways, MTU, bridge.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Default path of the node state file.
pub const DEFAULT_PATH: &str = "/run/podguard/node.json";

/// What the CNI plugin needs to attach a pod on this node.
/// Unknown fields are ignored when read: after a rollback the older plugin
/// must still read what a newer agent wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeState {
    /// This node's name.
    pub node_name: String,
    /// The bridge pods attach to.
    pub bridge: String,
    /// MTU for pod interfaces.
    pub mtu: u32,
    /// The underlay MTU `mtu` comes from: the smallest of the mesh (0 in
    /// files written before it was recorded).
    #[serde(default)]
    pub underlay_mtu: u32,
    /// The node's podCIDRs.
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: BTreeSet<IpNet>,
    /// The gateway (cbr0 address) of each podCIDR.
    pub gateways: BTreeSet<IpAddr>,
}

impl NodeState {
    /// From a plan.
    pub fn from_plan(plan: &mesh::Plan) -> Self {
        Self {
            node_name: plan.node.clone(),
            bridge: mesh::BRIDGE_IFNAME.into(),
            mtu: plan.mtu,
            underlay_mtu: plan.underlay_mtu,
            pod_cidrs: plan.pod_cidrs.clone(),
            gateways: plan.bridge_addresses.iter().map(|n| n.addr()).collect(),
        }
    }
}

/// Write `state` to `path` atomically (temp file, fsync, rename), unless
/// the file already holds exactly this state. Returns whether it wrote.
pub fn write(path: &Path, state: &NodeState) -> std::io::Result<bool> {
    let mut json = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    json.push(b'\n');
    if fs::read(path).ok().as_deref() == Some(json.as_slice()) {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("node.json"),
        std::process::id()
    ));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)?;
    f.write_all(&json)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_and_newer_files_both_read() {
        let old = r#"{"nodeName":"a","bridge":"cbr0","mtu":1440,"podCIDRs":["10.244.1.0/24"],"gateways":["10.244.1.1"]}"#;
        let s: NodeState = serde_json::from_str(old).unwrap();
        assert_eq!((s.mtu, s.underlay_mtu), (1440, 0));
        // A field from a later agent (after a rollback of the plugin).
        let newer = r#"{"nodeName":"a","bridge":"cbr0","mtu":1440,"underlayMtu":1500,"podCIDRs":["10.244.1.0/24"],"gateways":["10.244.1.1"],"somethingLater":{"x":1}}"#;
        let s: NodeState = serde_json::from_str(newer).unwrap();
        assert_eq!((s.mtu, s.underlay_mtu), (1440, 1500));
    }

    #[test]
    fn writes_once_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/node.json");
        let s = NodeState {
            node_name: "a".into(),
            bridge: "cbr0".into(),
            mtu: 1440,
            underlay_mtu: 1500,
            pod_cidrs: ["10.244.1.0/24".parse().unwrap()].into(),
            gateways: ["10.244.1.1".parse().unwrap()].into(),
        };
        assert!(write(&path, &s).unwrap());
        assert!(!write(&path, &s).unwrap());
        let back: NodeState = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, s);
        assert!(fs::read_to_string(&path).unwrap().contains("\"podCIDRs\""));
    }
}
