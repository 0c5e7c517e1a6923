//! Kubernetes NetworkPolicy (networking.k8s.io/v1), evaluated in pure code.
//!
//! The types deserialize straight from the API's JSON (only the fields the
//! semantics need). [`Cluster::allowed`] answers whether traffic from one
//! pod to another is allowed on a port; [`Cluster::allowed_ports`] on
//! which ports ([`Ports::labels`] writes them as `kubectl` does). The rules, as the Kubernetes documentation states them:
//!
//! * A pod is isolated for ingress (egress) when some policy in its
//!   namespace selects it and lists Ingress (Egress) in `policyTypes`
//!   (default: Ingress, plus Egress when the policy has egress rules).
//! * Traffic is allowed when the source's egress and the destination's
//!   ingress both allow it; a non-isolated side allows everything.
//! * Policies are additive: any rule of any selecting policy suffices.
//! * A peer with only `podSelector` means pods of the policy's namespace;
//!   only `namespaceSelector`: every pod of the selected namespaces; both
//!   (in one peer): pods matching both; `ipBlock`: addresses in `cidr` and
//!   not in `except`. An empty `from`/`to` list means every source/destination,
//!   a missing one means none. An empty `ports` list means every port.
//! * Ports: protocol TCP by default; `port` a number or a named container
//!   port of the destination pod; `endPort` makes a range.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// `metav1.LabelSelector`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels that must be equal.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements.
    #[serde(default)]
    pub match_expressions: Vec<Requirement>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Requirement {
    /// Label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists`, `DoesNotExist`.
    pub operator: String,
    /// Values for In / NotIn.
    #[serde(default)]
    pub values: Vec<String>,
}

impl LabelSelector {
    /// Whether `labels` match. The empty selector matches everything.
    /// An unknown operator matches nothing (the API server rejects it).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let have = labels.get(&r.key);
                match r.operator.as_str() {
                    "In" => have.is_some_and(|v| r.values.contains(v)),
                    "NotIn" => have.is_none_or(|v| !r.values.contains(v)),
                    "Exists" => have.is_some(),
                    "DoesNotExist" => have.is_none(),
                    _ => false,
                }
            })
    }
}

/// `ipBlock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpBlock {
    /// The block.
    pub cidr: String,
    /// Excluded sub-blocks.
    #[serde(default)]
    pub except: Vec<String>,
}

impl IpBlock {
    /// Whether `ip` is in the block and in none of the exceptions. An
    /// unparsable CIDR matches nothing.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let parse = |s: &str| s.parse::<IpNet>().ok();
        parse(&self.cidr).is_some_and(|c| c.contains(&ip))
            && !self
                .except
                .iter()
                .filter_map(|e| parse(e))
                .any(|e| e.contains(&ip))
    }
}

/// A `from` / `to` entry of a rule (named for its layer: not the mesh's
/// WireGuard [`crate::Peer`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyPeer {
    /// Pods (in the policy's namespace unless `namespace_selector` is set).
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces.
    pub namespace_selector: Option<LabelSelector>,
    /// Addresses.
    pub ip_block: Option<IpBlock>,
}

/// A port number or a named port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortRef {
    /// A number.
    Number(u16),
    /// A container port name.
    Name(String),
}

/// A `ports` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyPort {
    /// TCP (default), UDP or SCTP.
    pub protocol: Option<String>,
    /// The port; absent = every port of the protocol.
    pub port: Option<PortRef>,
    /// Last port of a range starting at `port` (numbers only).
    pub end_port: Option<u16>,
}

/// An ingress or egress rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// Sources (ingress).
    #[serde(default)]
    pub from: Option<Vec<PolicyPeer>>,
    /// Destinations (egress).
    #[serde(default)]
    pub to: Option<Vec<PolicyPeer>>,
    /// Ports; empty or absent = all.
    #[serde(default)]
    pub ports: Option<Vec<PolicyPort>>,
}

/// `NetworkPolicySpec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySpec {
    /// Pods the policy applies to.
    #[serde(default)]
    pub pod_selector: LabelSelector,
    /// `Ingress` and/or `Egress`.
    pub policy_types: Option<Vec<String>>,
    /// Ingress rules.
    pub ingress: Option<Vec<Rule>>,
    /// Egress rules.
    pub egress: Option<Vec<Rule>>,
}

/// A NetworkPolicy: its namespace, name and spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Spec.
    pub spec: PolicySpec,
}

impl Policy {
    /// Whether the policy is of type `t`, defaulted as the API server
    /// stores it (`SetDefaults_NetworkPolicy`): a missing *or empty*
    /// `policyTypes` means Ingress, plus Egress when there is at least one
    /// egress rule (`egress: []` is none). The embedded API server does no
    /// defaulting, so the audit must, to give the upstream answer.
    fn has_type(&self, t: &str) -> bool {
        match &self.spec.policy_types {
            Some(ts) if !ts.is_empty() => ts.iter().any(|x| x == t),
            _ => {
                t == "Ingress"
                    || (t == "Egress" && self.spec.egress.as_ref().is_some_and(|e| !e.is_empty()))
            }
        }
    }
}

/// A container port of a pod (for named ports).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedPort {
    /// Name.
    pub name: String,
    /// Number.
    pub port: u16,
    /// Protocol (upper case).
    pub protocol: String,
}

/// A pod, as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Pod IPs.
    pub ips: Vec<IpAddr>,
    /// Node it runs on.
    pub node: Option<String>,
    /// Uses the node's network namespace.
    pub host_network: bool,
    /// Named container ports.
    pub ports: Vec<NamedPort>,
}

/// A protocol and an inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct PortRange {
    /// TCP, UDP or SCTP.
    pub protocol: Protocol,
    /// First port.
    pub from: u16,
    /// Last port.
    pub to: u16,
}

/// A transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The API's name: `TCP`, `UDP`, `SCTP`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }

    fn parse(s: Option<&str>) -> Option<Self> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }
}

/// A set of ports: everything, or a union of ranges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Ports {
    /// Every port of every protocol.
    All,
    /// These ranges only (possibly none).
    Some(Vec<PortRange>),
}

impl Ports {
    fn none() -> Self {
        Self::Some(Vec::new())
    }

    /// Every port either set holds.
    pub fn union(self, other: Ports) -> Ports {
        match (self, other) {
            (Ports::All, _) | (_, Ports::All) => Ports::All,
            (Ports::Some(mut a), Ports::Some(b)) => {
                a.extend(b);
                a.sort();
                a.dedup();
                Ports::Some(a)
            }
        }
    }

    fn intersect(&self, other: &Ports) -> Ports {
        match (self, other) {
            (Ports::All, x) | (x, Ports::All) => x.clone(),
            (Ports::Some(a), Ports::Some(b)) => {
                let mut out = Vec::new();
                for x in a {
                    for y in b {
                        if x.protocol == y.protocol {
                            let (lo, hi) = (x.from.max(y.from), x.to.min(y.to));
                            if lo <= hi {
                                out.push(PortRange {
                                    protocol: x.protocol,
                                    from: lo,
                                    to: hi,
                                });
                            }
                        }
                    }
                }
                out.sort();
                out.dedup();
                Ports::Some(out)
            }
        }
    }

    /// The set as `kubectl` writes ports, merged and sorted: `80/TCP`,
    /// `8000-8080/TCP`, `all/UDP` (every port of one protocol), or
    /// `["all"]` (every port of every protocol, ICMP included). Empty:
    /// nothing is allowed.
    pub fn labels(&self) -> Vec<String> {
        let Ports::Some(v) = self else {
            return vec!["all".to_string()];
        };
        let mut v = v.clone();
        v.sort();
        let mut merged: Vec<PortRange> = Vec::new();
        for r in v {
            match merged.last_mut() {
                Some(m) if m.protocol == r.protocol && u32::from(r.from) <= u32::from(m.to) + 1 => {
                    m.to = m.to.max(r.to);
                }
                _ => merged.push(r),
            }
        }
        merged
            .iter()
            .map(|r| {
                let p = r.protocol.name();
                match (r.from, r.to) {
                    (0, u16::MAX) => format!("all/{p}"),
                    (a, b) if a == b => format!("{a}/{p}"),
                    (a, b) => format!("{a}-{b}/{p}"),
                }
            })
            .collect()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        matches!(self, Ports::Some(v) if v.is_empty())
    }

    /// Whether `(protocol, port)` is in the set.
    pub fn contains(&self, protocol: Protocol, port: u16) -> bool {
        match self {
            Ports::All => true,
            Ports::Some(v) => v
                .iter()
                .any(|r| r.protocol == protocol && r.from <= port && port <= r.to),
        }
    }
}

/// Pods, namespace labels and policies: everything policy depends on.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    /// Namespace name → labels (`kubernetes.io/metadata.name` is added).
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Policies.
    pub policies: Vec<Policy>,
}

impl Cluster {
    fn ns_labels(&self, ns: &str) -> BTreeMap<String, String> {
        let mut l = self.namespaces.get(ns).cloned().unwrap_or_default();
        l.insert("kubernetes.io/metadata.name".into(), ns.to_string());
        l
    }

    fn selecting<'a>(&'a self, pod: &'a Pod, kind: &'a str) -> impl Iterator<Item = &'a Policy> {
        self.policies.iter().filter(move |p| {
            p.namespace == pod.namespace
                && p.has_type(kind)
                && p.spec.pod_selector.matches(&pod.labels)
        })
    }

    /// Whether `peer` of a policy in namespace `policy_ns` matches pod `other`.
    fn peer_matches(&self, peer: &PolicyPeer, policy_ns: &str, other: &Pod) -> bool {
        if let Some(b) = &peer.ip_block {
            return other.ips.iter().any(|ip| b.contains(*ip));
        }
        let ns_ok = match &peer.namespace_selector {
            Some(sel) => sel.matches(&self.ns_labels(&other.namespace)),
            None => other.namespace == policy_ns,
        };
        let pod_ok = match &peer.pod_selector {
            Some(sel) => sel.matches(&other.labels),
            None => true,
        };
        ns_ok && pod_ok && (peer.namespace_selector.is_some() || peer.pod_selector.is_some())
    }

    /// The ports a rule opens toward `dst` (named ports resolve on `dst`).
    fn rule_ports(rule: &Rule, dst: &Pod) -> Ports {
        let Some(ports) = rule.ports.as_ref().filter(|p| !p.is_empty()) else {
            return Ports::All;
        };
        let mut out = Vec::new();
        for p in ports {
            let Some(protocol) = Protocol::parse(p.protocol.as_deref()) else {
                continue;
            };
            match &p.port {
                None => out.push(PortRange {
                    protocol,
                    from: 0,
                    to: u16::MAX,
                }),
                Some(PortRef::Number(n)) => out.push(PortRange {
                    protocol,
                    from: *n,
                    to: p.end_port.unwrap_or(*n).max(*n),
                }),
                Some(PortRef::Name(name)) => {
                    for np in dst.ports.iter().filter(|np| {
                        np.name == *name && Protocol::parse(Some(&np.protocol)) == Some(protocol)
                    }) {
                        out.push(PortRange {
                            protocol,
                            from: np.port,
                            to: np.port,
                        });
                    }
                }
            }
        }
        Ports::Some(out)
    }

    fn side(&self, subject: &Pod, other: &Pod, dst: &Pod, kind: &str) -> Ports {
        let mut isolated = false;
        let mut allowed = Ports::none();
        for p in self.selecting(subject, kind) {
            isolated = true;
            let rules = if kind == "Ingress" {
                &p.spec.ingress
            } else {
                &p.spec.egress
            };
            for r in rules.iter().flatten() {
                let peers = if kind == "Ingress" { &r.from } else { &r.to };
                let peer_ok = match peers {
                    None => true,
                    Some(v) if v.is_empty() => true,
                    Some(v) => v
                        .iter()
                        .any(|peer| self.peer_matches(peer, &p.namespace, other)),
                };
                if peer_ok {
                    allowed = allowed.union(Self::rule_ports(r, dst));
                }
            }
        }
        if isolated { allowed } else { Ports::All }
    }

    /// The ports on which `src` may reach `dst`.
    pub fn allowed_ports(&self, src: &Pod, dst: &Pod) -> Ports {
        let egress = self.side(src, dst, dst, "Egress");
        let ingress = self.side(dst, src, dst, "Ingress");
        egress.intersect(&ingress)
    }

    /// Whether `src` may reach `dst` on `(protocol, port)`.
    pub fn allowed(&self, src: &Pod, dst: &Pod, protocol: Protocol, port: u16) -> bool {
        self.allowed_ports(src, dst).contains(protocol, port)
    }

    /// Whether `src` may reach `dst` on some port.
    pub fn allowed_any(&self, src: &Pod, dst: &Pod) -> bool {
        !self.allowed_ports(src, dst).is_empty()
    }
}

/// Parse a protocol name as the API writes it.
pub fn protocol(s: &str) -> Option<Protocol> {
    Protocol::parse(Some(s))
}
