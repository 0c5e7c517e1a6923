//! The node state file the agent writes for the CNI plugin
//! (`/run/podguard/node.json`): podCIDRs, gateways, MTU, bridge. The
//! agent writes it from its plan; the plugin parses it here and refuses
//! one it cannot use with a CNI error code.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::spec::{CniError, code};

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

/// Parse and validate the node state file's content (`what` names it in
/// errors). A file without podCIDRs fails with `missing_code`: the agent
/// has not set up this node yet.
pub fn parse(what: &str, bytes: &[u8], missing_code: u32) -> Result<NodeState, CniError> {
    let state: NodeState = serde_json::from_slice(bytes).map_err(|e| {
        CniError::new(code::DECODE, format!("node state file {what} is not valid"))
            .details(e.to_string())
    })?;
    if state.pod_cidrs.is_empty() {
        return Err(CniError::new(
            missing_code,
            format!("node state file {what} lists no podCIDRs"),
        ));
    }
    Ok(state)
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
    fn garbage_and_empty_states_get_their_codes() {
        let e = parse("f.json", b"{not json", 11).unwrap_err();
        assert_eq!(e.code, code::DECODE);
        assert!(e.msg.contains("f.json"), "{}", e.msg);
        let empty = br#"{"nodeName":"a","bridge":"cbr0","mtu":1440,"podCIDRs":[],"gateways":[]}"#;
        let e = parse("f.json", empty, 11).unwrap_err();
        assert_eq!(e.code, 11);
        assert!(e.msg.contains("no podCIDRs"), "{}", e.msg);
    }
}
