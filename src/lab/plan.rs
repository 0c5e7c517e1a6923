//! Names and addresses of a lab: pure, so `up`, `check` and `down` agree,
//! and `down` finds everything by prefix after a crash.

use serde::{Deserialize, Serialize};

/// Prefix of every lab resource (namespaces, state directory).
pub const PREFIX: &str = "pglab";
/// The lab's underlay (a /24, only inside lab namespaces): the first of
/// these that no route of the machine overlaps. The benchmarking range
/// (RFC 2544) first, which real LANs do not use (192.0.2.0/24, used before,
/// was this development machine's own subnet).
pub const UNDERLAY_CANDIDATES: [&str; 4] = ["198.18.0", "198.19.0", "100.64.254", "10.254.254"];
/// The underlay of a spec that does not say (older state files).
pub const DEFAULT_UNDERLAY: &str = UNDERLAY_CANDIDATES[0];

fn default_underlay() -> String {
    DEFAULT_UNDERLAY.to_string()
}

/// The underlay `prefix` ("a.b.c") as a network.
pub fn underlay_net(prefix: &str) -> String {
    format!("{prefix}.0/24")
}

/// Host number of the API server (and the underlay bridge) on the underlay.
pub const API_HOST: u8 = 254;

/// The fixed MAC of underlay host `host` (a node's index, or [`API_HOST`]).
pub fn underlay_mac(host: u8) -> String {
    format!("02:70:67:00:00:{host:02x}")
}

/// The permanent neighbour entries host `me` of the underlay gets: every
/// other host of the lab (the nodes 1..=`nodes` and the API server), as
/// `ip -batch` lines for device `dev`.
///
/// Why: the kernel's neighbour table is shared by all namespaces, and ARP
/// entries beyond `gc_thresh3` (1024 by default, a root-namespace setting
/// the lab must not touch) fail to be created in *every* namespace — a
/// 50-node lab (2,500 underlay pairs) made the machine's own gateway
/// unreachable and its DNS fail. Permanent entries are not counted
/// against that limit, and with them no node ever ARPs on the underlay.
pub fn underlay_neighbours(prefix: &str, nodes: u8, me: u8, dev: &str) -> String {
    (1..=nodes)
        .chain(std::iter::once(API_HOST))
        .filter(|&h| h != me)
        .map(|h| {
            format!(
                "neigh replace {prefix}.{h} lladdr {} dev {dev} nud permanent\n",
                underlay_mac(h)
            )
        })
        .collect()
}

/// Address of the embedded API server on underlay `prefix`.
pub fn api_addr(prefix: &str) -> String {
    format!("{prefix}.{API_HOST}:6443")
}

/// The first of `routes` (the root namespace's destinations, the default
/// route excluded) that overlaps underlay `prefix`.
pub fn overlapping_route(prefix: &str, routes: &[ipnet::IpNet]) -> Option<ipnet::IpNet> {
    let ul: ipnet::IpNet = underlay_net(prefix).parse().ok()?;
    routes
        .iter()
        .find(|r| r.prefix_len() > 0 && (r.contains(&ul.network()) || ul.contains(&r.network())))
        .copied()
}

/// The first candidate underlay no route overlaps, or every candidate with
/// the route that overlaps it.
pub fn pick_underlay(routes: &[ipnet::IpNet]) -> Result<&'static str, Vec<(String, ipnet::IpNet)>> {
    let mut taken = Vec::new();
    for c in UNDERLAY_CANDIDATES {
        match overlapping_route(c, routes) {
            None => return Ok(c),
            Some(r) => taken.push((underlay_net(c), r)),
        }
    }
    Err(taken)
}
/// Cluster CIDRs of a dual-stack lab.
pub const CLUSTER_V4: &str = "10.244.0.0/16";
/// IPv6 cluster CIDR.
pub const CLUSTER_V6: &str = "fd00:10:244::/56";

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabSpec {
    /// Number of nodes (1-200).
    pub nodes: u8,
    /// Pods per node (1-50).
    pub pods_per_node: u8,
    /// IPv4 and IPv6 podCIDRs (else IPv4 only).
    pub dual_stack: bool,
    /// The underlay's first three octets (chosen by `lab up`).
    #[serde(default = "default_underlay")]
    pub underlay: String,
    /// Which API server the lab runs.
    #[serde(default)]
    pub kube: KubeMode,
    /// The agents' WireGuard backend.
    #[serde(default)]
    pub backend: LabBackend,
}

/// The lab agents' WireGuard backend (`podguard-agent --backend`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabBackend {
    /// podguard's own device (no kernel module needed).
    #[default]
    Userspace,
    /// Kernel WireGuard (the wireguard module must be loadable).
    Kernel,
}

impl LabBackend {
    /// The agent's `--backend` value.
    pub fn arg(self) -> &'static str {
        match self {
            Self::Userspace => "userspace",
            Self::Kernel => "kernel",
        }
    }
}

/// The lab's API server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KubeMode {
    /// podguard's embedded subset (fast; no auth, no defaulting).
    #[default]
    Embedded,
    /// etcd, kube-apiserver and kube-controller-manager of the pinned
    /// release, the shipped manifests applied (see `lab::kube`).
    Real,
}

/// Why a spec is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Node count out of range.
    #[error("--nodes {0}: a lab has 1 to 200 nodes")]
    Nodes(u8),
    /// Pod count out of range.
    #[error("--pods-per-node {0}: a lab has 1 to 50 pods per node")]
    Pods(u8),
}

impl LabSpec {
    /// Validate.
    pub fn check(&self) -> Result<(), SpecError> {
        if !(1..=200).contains(&self.nodes) {
            return Err(SpecError::Nodes(self.nodes));
        }
        if !(1..=50).contains(&self.pods_per_node) {
            return Err(SpecError::Pods(self.pods_per_node));
        }
        Ok(())
    }

    /// Cluster CIDRs, comma-separated (the agent's --cluster-cidr).
    pub fn cluster_cidrs(&self) -> String {
        if self.dual_stack {
            format!("{CLUSTER_V4},{CLUSTER_V6}")
        } else {
            CLUSTER_V4.to_string()
        }
    }

    /// Node `i` (1-based).
    pub fn node(&self, i: u8) -> NodePlan {
        let mut pod_cidrs = vec![format!("10.244.{i}.0/24")];
        if self.dual_stack {
            pod_cidrs.push(format!("fd00:10:244:{i:x}::/64"));
        }
        NodePlan {
            index: i,
            name: format!("node-{i}"),
            netns: format!("{PREFIX}-n{i}"),
            underlay_ip: format!("{}.{i}", self.underlay),
            pod_cidrs,
            pods: (1..=self.pods_per_node)
                .map(|j| PodPlan {
                    name: format!("pod-{i}-{j}"),
                    netns: format!("{PREFIX}-n{i}-p{j}"),
                })
                .collect(),
        }
    }

    /// Every node.
    pub fn all_nodes(&self) -> Vec<NodePlan> {
        (1..=self.nodes).map(|i| self.node(i)).collect()
    }
}

/// One node of the lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlan {
    /// 1-based position in the lab.
    pub index: u8,
    /// Node object name.
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its underlay address.
    pub underlay_ip: String,
    /// Its podCIDRs.
    pub pod_cidrs: Vec<String>,
    /// Its pods.
    pub pods: Vec<PodPlan>,
}

/// One pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPlan {
    /// Pod name (also the CNI container ID).
    pub name: String,
    /// Its network namespace.
    pub netns: String,
}

/// The Kubernetes namespaces lab pods are put in (for `podguard audit`).
pub const NAMESPACES: [&str; 2] = ["team-a", "team-b"];

/// The namespace of the pods on node `n`: odd nodes team-a, even team-b.
pub fn pod_namespace(n: &NodePlan) -> &'static str {
    NAMESPACES[usize::from(n.index.saturating_sub(1) % 2)]
}

/// The underlay namespace.
pub fn underlay_netns() -> String {
    format!("{PREFIX}-ul")
}

/// Whether a namespace name belongs to a lab.
pub fn is_lab_netns(name: &str) -> bool {
    name == underlay_netns() || name.starts_with(&format!("{PREFIX}-n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underlay_is_the_first_candidate_no_route_overlaps() {
        let r = |s: &str| -> ipnet::IpNet { s.parse().unwrap() };
        // The default route overlaps everything and is ignored.
        assert_eq!(
            pick_underlay(&[r("0.0.0.0/0"), r("192.0.2.0/24")]),
            Ok("198.18.0")
        );
        assert_eq!(pick_underlay(&[r("198.18.0.0/15")]), Ok("100.64.254"));
        assert_eq!(pick_underlay(&[r("198.18.0.7/32")]), Ok("198.19.0"));
        let all =
            pick_underlay(&[r("198.18.0.0/15"), r("100.64.0.0/10"), r("10.0.0.0/8")]).unwrap_err();
        assert_eq!(all.len(), 4);
        assert_eq!(all[0], ("198.18.0.0/24".to_string(), r("198.18.0.0/15")));
        assert_eq!(api_addr("198.19.0"), "198.19.0.254:6443");
    }

    #[test]
    fn names_and_addresses() {
        let s = LabSpec {
            nodes: 3,
            pods_per_node: 2,
            dual_stack: true,
            underlay: DEFAULT_UNDERLAY.into(),
            kube: KubeMode::Embedded,
            backend: LabBackend::Userspace,
        };
        s.check().unwrap();
        let n = s.node(3);
        assert_eq!(n.netns, "pglab-n3");
        assert_eq!(n.underlay_ip, "198.18.0.3");
        assert_eq!(n.pod_cidrs, vec!["10.244.3.0/24", "fd00:10:244:3::/64"]);
        assert_eq!(n.pods[1].netns, "pglab-n3-p2");
        assert!(is_lab_netns("pglab-n3-p2") && is_lab_netns("pglab-ul") && !is_lab_netns("other"));
        assert_eq!(s.cluster_cidrs(), "10.244.0.0/16,fd00:10:244::/56");
        let v4 = LabSpec {
            dual_stack: false,
            ..s.clone()
        };
        assert_eq!(v4.node(1).pod_cidrs.len(), 1);
        assert!(
            LabSpec {
                nodes: 0,
                ..v4.clone()
            }
            .check()
            .is_err()
        );
        assert!(
            LabSpec {
                pods_per_node: 51,
                ..v4
            }
            .check()
            .unwrap_err()
            .to_string()
            .contains("--pods-per-node 51")
        );
    }

    #[test]
    fn underlay_neighbours_cover_every_other_host_permanently() {
        let lines = super::underlay_neighbours("198.18.0", 3, 2, "eth0");
        assert_eq!(
            lines,
            "neigh replace 198.18.0.1 lladdr 02:70:67:00:00:01 dev eth0 nud permanent\n\
             neigh replace 198.18.0.3 lladdr 02:70:67:00:00:03 dev eth0 nud permanent\n\
             neigh replace 198.18.0.254 lladdr 02:70:67:00:00:fe dev eth0 nud permanent\n"
        );
    }
}
