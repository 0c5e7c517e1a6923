//! What the planner knows about a node, and why it may refuse one.
//!
//! [`NodeInfo`] carries the raw strings from the Node object (spec.podCIDRs,
//! annotations, status addresses): validating them is a decision, so it
//! happens here, in pure code, and every refusal becomes a [`Rejection`]
//! that names the bad input.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use keys::{KeyError, PublicKey};
use serde::{Deserialize, Serialize};

/// A node as the sources (Kubernetes, a nodes file) describe it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeInfo {
    /// `metadata.name`.
    pub name: String,
    /// `spec.podCIDRs`, as written (at most one per address family).
    #[serde(default, rename = "podCIDRs")]
    pub pod_cidrs: Vec<String>,
    /// WireGuard endpoint `ip:port` (`[v6]:port`): the `podguard.dev/force-endpoint`
    /// annotation if set, else `podguard.dev/endpoint`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The `podguard.dev/public-key` annotation (base64).
    #[serde(default)]
    pub public_key: Option<String>,
    /// The `podguard.dev/next-public-key` annotation (base64): the key the
    /// node is rotating to. Peers pre-stage it; a bad value is ignored (the
    /// node stays a peer under its current key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_public_key: Option<String>,
    /// `status.addresses` of type InternalIP, in order. Used for the
    /// endpoint when no endpoint annotation exists.
    #[serde(default, rename = "internalIPs")]
    pub internal_ips: Vec<String>,
    /// The `podguard.dev/underlay-mtu` annotation: the MTU of the underlay
    /// interface the node's agent uses (found, or set by `--underlay-mtu`).
    /// Every node takes the smallest of the mesh; a bad value is ignored.
    /// In a nodes file a number or a string, `underlayMTU` or `underlayMtu`.
    #[serde(
        default,
        rename = "underlayMTU",
        alias = "underlayMtu",
        deserialize_with = "number_or_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub underlay_mtu: Option<String>,
}

/// A value written as a number or a string (`underlayMTU: 1460` in YAML,
/// or `"1460"` as the annotation carries it), kept as its text: validating
/// it is the planner's.
fn number_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Int(i64),
        Float(f64),
        Text(String),
    }
    Ok(Option::<Value>::deserialize(d)?.map(|v| match v {
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Text(t) => t,
    }))
}

/// Why a node does not become a peer. A rejected node's pods are
/// unreachable from this node (fail closed), never reached in plaintext.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "reason", rename_all = "camelCase")]
pub enum Rejection {
    /// The node has no `spec.podCIDRs`.
    NoPodCidrs,
    /// A podCIDR does not parse or has host bits set.
    InvalidPodCidr {
        /// The value as written.
        value: String,
        /// What is wrong with it.
        problem: String,
    },
    /// Two podCIDRs of the same address family.
    TwoPodCidrsOfOneFamily {
        /// The second one.
        value: String,
    },
    /// A podCIDR that lies outside every cluster CIDR.
    OutsideClusterCidr {
        /// The podCIDR.
        cidr: IpNet,
    },
    /// A podCIDR that overlaps a podCIDR of another node.
    OverlappingPodCidr {
        /// This node's podCIDR.
        cidr: IpNet,
        /// The other node.
        other_node: String,
        /// The other node's podCIDR.
        other_cidr: IpNet,
    },
    /// The node has not published a public key.
    NoKey,
    /// The public key annotation is not a valid key.
    InvalidKey {
        /// What is wrong (the public key value is not secret, but we keep
        /// messages uniform with private-key errors).
        problem: KeyErrorText,
    },
    /// Another node publishes the same public key: both are rejected.
    DuplicateKey {
        /// The other node(s).
        other_nodes: Vec<String>,
    },
    /// The node publishes this node's own public key.
    LocalKey,
    /// Neither an endpoint annotation nor an InternalIP.
    MissingEndpoint,
    /// The endpoint does not parse as `ip:port` or is not usable.
    InvalidEndpoint {
        /// The value as written.
        value: String,
        /// What is wrong with it.
        problem: String,
    },
    /// Two nodes with the same name in the input: all are rejected.
    DuplicateName,
}

/// A [`KeyError`] as text, so that [`Rejection`] stays orderable and
/// serializable.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct KeyErrorText(pub String);

impl From<&KeyError> for KeyErrorText {
    fn from(e: &KeyError) -> Self {
        Self(e.to_string())
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoPodCidrs => f.write_str("node has no spec.podCIDRs"),
            Self::InvalidPodCidr { value, problem } => {
                write!(f, "podCIDR {value:?} is invalid: {problem}")
            }
            Self::TwoPodCidrsOfOneFamily { value } => {
                write!(
                    f,
                    "podCIDR {value:?} is a second podCIDR of the same address family"
                )
            }
            Self::OutsideClusterCidr { cidr } => {
                write!(f, "podCIDR {cidr} is outside every cluster CIDR")
            }
            Self::OverlappingPodCidr {
                cidr,
                other_node,
                other_cidr,
            } => write!(
                f,
                "podCIDR {cidr} overlaps podCIDR {other_cidr} of node {other_node:?}"
            ),
            Self::NoKey => f.write_str("node has no podguard.dev/public-key annotation"),
            Self::InvalidKey { problem } => {
                write!(f, "podguard.dev/public-key is invalid: {}", problem.0)
            }
            Self::DuplicateKey { other_nodes } => write!(
                f,
                "podguard.dev/public-key is also published by node(s) {}",
                other_nodes.join(", ")
            ),
            Self::LocalKey => f.write_str("podguard.dev/public-key equals this node's own key"),
            Self::MissingEndpoint => {
                f.write_str("node has neither a podguard.dev/endpoint annotation nor an InternalIP")
            }
            Self::InvalidEndpoint { value, problem } => {
                write!(f, "endpoint {value:?} is invalid: {problem}")
            }
            Self::DuplicateName => f.write_str("two nodes with this name in the input"),
        }
    }
}

/// A node whose own fields are valid (pairwise checks come later).
#[derive(Debug, Clone)]
pub(crate) struct Parsed {
    pub pod_cidrs: Vec<IpNet>,
    pub key: Option<PublicKey>,
    pub endpoint: Option<SocketAddr>,
}

/// Parse a CIDR strictly (a podCIDR, a `--cluster-cidr`): an address, a
/// prefix length the family allows, no host bits. The error names the
/// mistake without repeating the whole value (the caller quotes it, cut
/// with [`cut_value`]).
pub fn parse_cidr(value: &str) -> Result<IpNet, String> {
    const EXAMPLE: &str = "such as 10.244.0.0/16 or fd00:10:244::/56";
    let Some((addr, len)) = value.split_once('/') else {
        return Err(match value.parse::<IpAddr>() {
            Ok(_) => format!("no prefix length: write it as a CIDR {EXAMPLE}"),
            Err(_) => format!("not a CIDR {EXAMPLE}"),
        });
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{:?} is not an IP address", cut_value(addr)))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = len
        .parse::<u8>()
        .ok()
        .filter(|l| *l <= max)
        .ok_or_else(|| format!("prefix length {:?} is not 0 to {max}", cut_value(len)))?;
    let net = IpNet::new(ip, len).map_err(|e| e.to_string())?;
    if net.network() != ip {
        return Err(format!("host bits are set: write {}", net.trunc()));
    }
    Ok(net)
}

/// Longest value of outside input copied into a rejection (and so into
/// logs, Events and metrics labels).
pub const MAX_VALUE_IN_MESSAGES: usize = 64;
/// Longest endpoint accepted (`[ipv6%scope]:port` fits well within it).
pub const MAX_ENDPOINT_LEN: usize = 64;

/// `value` cut to [`MAX_VALUE_IN_MESSAGES`] characters, saying how long it
/// was: an annotation of a megabyte must not be copied into every log line.
pub fn cut_value(value: &str) -> String {
    if value.chars().count() <= MAX_VALUE_IN_MESSAGES {
        return value.to_string();
    }
    let head: String = value.chars().take(MAX_VALUE_IN_MESSAGES).collect();
    format!("{head}... ({} bytes)", value.len())
}

/// Parse an endpoint `ip:port`: a unicast, non-loopback address and a
/// non-zero port.
pub fn parse_endpoint(value: &str) -> Result<SocketAddr, String> {
    if value.len() > MAX_ENDPOINT_LEN {
        return Err(format!(
            "{} bytes long (at most {MAX_ENDPOINT_LEN})",
            value.len()
        ));
    }
    let sa: SocketAddr = value
        .parse()
        .map_err(|_| "not ip:port (IPv6 as [addr]:port)".to_string())?;
    check_endpoint_ip(sa.ip())?;
    if sa.port() == 0 {
        return Err("port 0".into());
    }
    Ok(sa)
}

/// An IPv4-mapped IPv6 address as the IPv4 address it stands for.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn check_endpoint_ip(ip: IpAddr) -> Result<(), String> {
    let ip = unmapped(ip);
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(format!("{ip} is not a unicast address"));
    }
    if ip.is_loopback() {
        return Err(format!(
            "{ip} is a loopback address: every node would send to itself"
        ));
    }
    if let IpAddr::V4(v4) = ip
        && v4.is_broadcast()
    {
        return Err(format!("{ip} is the broadcast address"));
    }
    Ok(())
}

/// Validate one node's own fields. Returns what parsed and the rejections.
pub(crate) fn parse_node(
    node: &NodeInfo,
    default_port: u16,
    cluster_cidrs: &[IpNet],
) -> (Parsed, Vec<Rejection>) {
    let mut rejections = Vec::new();
    let mut pod_cidrs: Vec<IpNet> = Vec::new();
    if node.pod_cidrs.is_empty() {
        rejections.push(Rejection::NoPodCidrs);
    }
    for value in &node.pod_cidrs {
        match parse_cidr(value) {
            Err(problem) => rejections.push(Rejection::InvalidPodCidr {
                value: cut_value(value),
                problem,
            }),
            Ok(net) => {
                if pod_cidrs.iter().any(|c| same_family(c, &net)) {
                    rejections.push(Rejection::TwoPodCidrsOfOneFamily {
                        value: value.clone(),
                    });
                } else if !cluster_cidrs.iter().any(|c| c.contains(&net)) {
                    rejections.push(Rejection::OutsideClusterCidr { cidr: net });
                } else {
                    pod_cidrs.push(net);
                }
            }
        }
    }
    let key = match &node.public_key {
        None => {
            rejections.push(Rejection::NoKey);
            None
        }
        Some(s) => match PublicKey::from_base64(s) {
            Ok(k) => Some(k),
            Err(e) => {
                rejections.push(Rejection::InvalidKey {
                    problem: (&e).into(),
                });
                None
            }
        },
    };
    let endpoint = match &node.endpoint {
        Some(value) => match parse_endpoint(value) {
            Ok(sa) => Some(sa),
            Err(problem) => {
                rejections.push(Rejection::InvalidEndpoint {
                    value: cut_value(value),
                    problem,
                });
                None
            }
        },
        None => match node.internal_ips.first() {
            None => {
                rejections.push(Rejection::MissingEndpoint);
                None
            }
            Some(value) => match value
                .parse::<IpAddr>()
                .map_err(|_| "InternalIP is not an IP address".to_string())
                .and_then(|ip| check_endpoint_ip(ip).map(|()| ip))
            {
                Ok(ip) => Some(SocketAddr::new(ip, default_port)),
                Err(problem) => {
                    rejections.push(Rejection::InvalidEndpoint {
                        value: value.clone(),
                        problem,
                    });
                    None
                }
            },
        },
    };
    let endpoint = endpoint.and_then(|sa| match in_cluster(sa.ip(), cluster_cidrs) {
        None => Some(sa),
        Some(cidr) => {
            rejections.push(Rejection::InvalidEndpoint {
                value: sa.to_string(),
                problem: format!(
                    "{} is inside cluster CIDR {cidr}: the tunnel would carry its own packets; node addresses must lie outside the cluster CIDR",
                    sa.ip()
                ),
            });
            None
        }
    });
    (
        Parsed {
            pod_cidrs,
            key,
            endpoint,
        },
        rejections,
    )
}

/// The cluster CIDR that holds `ip` (an IPv4-mapped address as IPv4): an
/// endpoint there would be routed into the tunnel it carries.
fn in_cluster(ip: IpAddr, cluster_cidrs: &[IpNet]) -> Option<IpNet> {
    let ip = unmapped(ip);
    cluster_cidrs.iter().find(|c| c.contains(&ip)).copied()
}

pub(crate) fn same_family(a: &IpNet, b: &IpNet) -> bool {
    matches!(
        (a, b),
        (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Vec<IpNet> {
        vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:10:244::/56".parse().unwrap(),
        ]
    }

    #[test]
    fn cidrs_name_the_mistake() {
        assert_eq!(
            parse_cidr("10.244.0.0/16").unwrap().to_string(),
            "10.244.0.0/16"
        );
        assert_eq!(
            parse_cidr("fd00:10:244::/56").unwrap().to_string(),
            "fd00:10:244::/56"
        );
        for (bad, says) in [
            ("10.244.1.5/24", "host bits are set: write 10.244.1.0/24"),
            ("10.244.0.0/33", "prefix length \"33\" is not 0 to 32"),
            ("fd00::/129", "is not 0 to 128"),
            ("10.0.0.0/x", "prefix length \"x\""),
            ("10.244.0.0", "no prefix length"),
            ("garbage", "not a CIDR such as 10.244.0.0/16"),
            ("10.244.0/16", "\"10.244.0\" is not an IP address"),
        ] {
            let e = parse_cidr(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        // Outside input is quoted cut: a long value is not copied whole.
        let long = format!("{}/16", "9".repeat(4096));
        assert!(parse_cidr(&long).unwrap_err().len() < 200);
    }

    #[test]
    fn endpoint_rules() {
        assert!(parse_endpoint("192.0.2.1:51820").is_ok());
        assert!(parse_endpoint("[2001:db8::1]:51820").is_ok());
        assert!(parse_endpoint("2001:db8::1:51820").is_err());
        assert!(parse_endpoint("0.0.0.0:51820").is_err());
        assert!(parse_endpoint("192.0.2.1:0").is_err());
        assert!(parse_endpoint("node-a:51820").is_err());
        // Endpoints that can never work are rejections with a reason.
        for (bad, why) in [
            ("127.0.0.1:51820", "loopback"),
            ("127.9.9.9:51820", "loopback"),
            ("[::1]:51820", "loopback"),
            ("[::ffff:127.0.0.1]:51820", "loopback"),
            ("255.255.255.255:51820", "broadcast"),
            ("224.0.0.1:51820", "unicast"),
            ("[ff02::1]:51820", "unicast"),
            ("[::]:51820", "unicast"),
        ] {
            let e = parse_endpoint(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn oversized_values_are_rejected_and_cut_in_messages() {
        let huge = format!("192.0.2.1:{}", "9".repeat(1 << 20));
        let e = parse_endpoint(&huge).unwrap_err();
        assert!(e.contains("1048586 bytes long"), "{e}");
        let cut = cut_value(&huge);
        assert!(cut.len() < 100, "{cut}");
        assert!(cut.ends_with("(1048586 bytes)"), "{cut}");
        assert_eq!(cut_value("short"), "short");
    }

    #[test]
    fn collects_every_problem() {
        let n = NodeInfo {
            name: "bad".into(),
            pod_cidrs: vec!["10.9.0.0/24".into(), "x".into()],
            endpoint: Some("nope".into()),
            public_key: Some("AAAA".into()),
            next_public_key: None,
            internal_ips: vec![],
            underlay_mtu: None,
        };
        let (_, r) = parse_node(&n, 51820, &cluster());
        assert_eq!(r.len(), 4, "{r:?}");
        let text: Vec<String> = r.iter().map(|r| r.to_string()).collect();
        assert!(text.iter().any(|t| t.contains("10.9.0.0/24")));
        assert!(text.iter().any(|t| t.contains("\"x\"")));
        assert!(text.iter().any(|t| t.contains("\"nope\"")));
        assert!(text.iter().any(|t| t.contains("wrong length")));
    }

    #[test]
    fn internal_ip_is_endpoint_fallback() {
        let n = NodeInfo {
            name: "a".into(),
            pod_cidrs: vec!["10.244.1.0/24".into()],
            endpoint: None,
            public_key: None,
            next_public_key: None,
            internal_ips: vec!["192.0.2.7".into()],
            underlay_mtu: None,
        };
        let (p, _) = parse_node(&n, 51999, &cluster());
        assert_eq!(p.endpoint, Some("192.0.2.7:51999".parse().unwrap()));
    }

    #[test]
    fn nodes_file_json_shape() {
        let n: NodeInfo = serde_json::from_str(
            r#"{"name":"a","podCIDRs":["10.244.1.0/24"],"endpoint":"192.0.2.1:51820","publicKey":null,"internalIPs":[]}"#,
        )
        .unwrap();
        assert_eq!(n.pod_cidrs, vec!["10.244.1.0/24"]);
        assert!(serde_json::from_str::<NodeInfo>(r#"{"name":"a","bogus":1}"#).is_err());
    }
}
