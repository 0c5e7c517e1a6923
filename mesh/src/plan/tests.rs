//! The planner on hand-built meshes: routes and MTU, staged next keys,
//! and every rejection (missing, duplicate or foreign keys, overlaps,
//! bad endpoints) with its reason.

use super::*;
use keys::PrivateKey;

fn key() -> PublicKey {
    PrivateKey::generate().public_key()
}

fn cfg() -> MeshConfig {
    MeshConfig {
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:10:244::/56".parse().unwrap(),
        ],
        ..MeshConfig::default()
    }
}

fn node(name: &str, i: u8, k: Option<PublicKey>) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        pod_cidrs: vec![
            format!("10.244.{i}.0/24"),
            format!("fd00:10:244:{i:x}::/64"),
        ],
        endpoint: Some(format!("192.168.50.{}:51820", i + 10)),
        public_key: k.map(|k| k.to_base64()),
        next_public_key: None,
        internal_ips: vec![],
        underlay_mtu: None,
    }
}

fn setup() -> (Local, Vec<NodeInfo>) {
    let lk = key();
    let local = Local {
        name: "a".into(),
        public_key: lk,
    };
    let nodes = vec![
        node("a", 1, Some(lk)),
        node("b", 2, Some(key())),
        node("c", 3, Some(key())),
    ];
    (local, nodes)
}

fn peer<'p>(p: &'p Plan, name: &str) -> &'p Peer {
    p.peers.values().find(|p| p.node == name).unwrap()
}

#[test]
fn next_key_is_staged_when_valid() {
    let (local, mut nodes) = setup();
    let next = key();
    nodes[1].next_public_key = Some(next.to_base64());
    let p = plan(&local, &nodes, &cfg()).unwrap();
    assert_eq!(peer(&p, "b").next_public_key, Some(next));
    assert!(p.ignored_next_keys.is_empty());
    assert!(p.rejections.is_empty());
}

#[test]
fn bad_next_keys_are_ignored_and_the_peer_stays() {
    let (local, mut nodes) = setup();
    let c_key = nodes[2].public_key.clone();
    let b_key = nodes[1].public_key.clone();
    let cases: Vec<(Option<String>, &str)> = vec![
        (Some("garbage".into()), "not a valid key"),
        (Some(local.public_key.to_base64()), "this node's own key"),
        (b_key, "equals the node's current public key"),
        (c_key, "already publish this key"),
    ];
    for (value, why) in cases {
        nodes[1].next_public_key = value;
        let p = plan(&local, &nodes, &cfg()).unwrap();
        assert_eq!(p.peers.len(), 2, "{why}: the mesh must not break");
        assert_eq!(peer(&p, "b").next_public_key, None, "{why}");
        let reason = p.ignored_next_keys["b"].to_string();
        assert!(reason.contains(why), "{reason}");
        assert!(p.rejections.is_empty());
    }
    // Two nodes announcing the same next key: both ignored.
    let shared = key();
    nodes[1].next_public_key = Some(shared.to_base64());
    nodes[2].next_public_key = Some(shared.to_base64());
    let p = plan(&local, &nodes, &cfg()).unwrap();
    assert_eq!(p.ignored_next_keys.len(), 2);
    assert!(p.peers.values().all(|p| p.next_public_key.is_none()));
}

#[test]
fn digest_agrees_across_nodes_and_follows_keys() {
    let ka = key();
    let kb = key();
    let nodes = vec![node("a", 1, Some(ka)), node("b", 2, Some(kb))];
    let la = Local {
        name: "a".into(),
        public_key: ka,
    };
    let lb = Local {
        name: "b".into(),
        public_key: kb,
    };
    let pa = plan(&la, &nodes, &cfg()).unwrap();
    let pb = plan(&lb, &nodes, &cfg()).unwrap();
    assert_eq!(pa.digest, pb.digest, "converged nodes agree");
    assert_eq!(pa.digest, crate::digest::expected(&nodes));
    let mut rotated = nodes.clone();
    rotated[1].next_public_key = Some(key().to_base64());
    let pa2 = plan(&la, &rotated, &cfg()).unwrap();
    assert_ne!(pa.digest, pa2.digest);
    assert_eq!(pa2.digest, crate::digest::expected(&rotated));
}

#[test]
fn full_mesh_routes_and_mtu() {
    let (local, nodes) = setup();
    let p = plan(&local, &nodes, &cfg()).unwrap();
    assert_eq!(p.peers.len(), 2);
    let b = p.peers.values().find(|p| p.node == "b").unwrap();
    assert_eq!(
        b.allowed_ips,
        ["10.244.2.0/24", "fd00:10:244:2::/64"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect()
    );
    assert_eq!(b.endpoint, "192.168.50.12:51820".parse().unwrap());
    assert!(p.rejections.is_empty());
    assert_eq!(p.mtu, 1440);
    let gw4: IpAddr = "10.244.1.1".parse().unwrap();
    assert!(p.routes.contains(&Route {
        dst: "10.244.0.0/16".parse().unwrap(),
        target: RouteTarget::Device {
            dev: "podguard0".into(),
            src: Some(gw4)
        },
        metric: ROUTE_METRIC,
    }));
    assert!(p.routes.contains(&Route {
        dst: "fd00:10:244::/56".parse().unwrap(),
        target: RouteTarget::Unreachable,
        metric: BACKSTOP_METRIC,
    }));
    assert!(p.routes.contains(&Route {
        dst: "10.244.1.0/24".parse().unwrap(),
        target: RouteTarget::Device {
            dev: "cbr0".into(),
            src: Some(gw4)
        },
        metric: ROUTE_METRIC,
    }));
    assert_eq!(p.routes.len(), 6);
    assert!(
        p.bridge_addresses
            .contains(&"fd00:10:244:1::1/64".parse().unwrap())
    );
}

fn reasons(p: &Plan, n: &str) -> Vec<Rejection> {
    p.rejections.get(n).cloned().unwrap_or_default()
}

#[test]
fn missing_and_garbage_keys_rejected() {
    let (local, mut nodes) = setup();
    nodes[1].public_key = None;
    nodes[2].public_key = Some("!!!".into());
    let p = plan(&local, &nodes, &cfg()).unwrap();
    assert!(p.peers.is_empty());
    assert_eq!(reasons(&p, "b"), vec![Rejection::NoKey]);
    assert!(matches!(reasons(&p, "c")[0], Rejection::InvalidKey { .. }));
}

#[test]
fn duplicate_key_rejects_both() {
    let (local, mut nodes) = setup();
    nodes[2].public_key = nodes[1].public_key.clone();
    let p = plan(&local, &nodes, &cfg()).unwrap();
    assert!(p.peers.is_empty());
    assert_eq!(
        reasons(&p, "b"),
        vec![Rejection::DuplicateKey {
            other_nodes: vec!["c".into()]
        }]
    );
    assert_eq!(
        reasons(&p, "c"),
        vec![Rejection::DuplicateKey {
            other_nodes: vec!["b".into()]
        }]
    );
}

#[test]
fn local_key_on_remote_rejected() {
    let (local, mut nodes) = setup();
    nodes[1].public_key = Some(local.public_key.to_base64());
    let p = plan(&local, &nodes, &cfg()).unwrap();
    assert_eq!(reasons(&p, "b"), vec![Rejection::LocalKey]);
    assert_eq!(p.peers.len(), 1);
}

#[test]
fn overlap_rejects_both_remotes_and_remote_overlapping_local() {
    let (local, mut nodes) = setup();
    nodes[2].pod_cidrs[0] = "10.244.2.128/25".into();
    nodes.push(node("d", 1, Some(key()))); // same podCIDRs as local "a"
    let p = plan(&local, &nodes, &cfg()).unwrap();
    assert!(matches!(
        reasons(&p, "b")[0],
        Rejection::OverlappingPodCidr { ref other_node, .. } if other_node == "c"
    ));
    assert!(matches!(
        reasons(&p, "c")[0],
        Rejection::OverlappingPodCidr { ref other_node, .. } if other_node == "b"
    ));
    assert!(reasons(&p, "d").iter().all(
        |r| matches!(r, Rejection::OverlappingPodCidr { other_node, .. } if other_node == "a")
    ));
    assert_eq!(reasons(&p, "d").len(), 2);
    assert!(p.peers.is_empty());
}

#[test]
fn outside_cluster_and_bad_endpoint_rejected() {
    let (local, mut nodes) = setup();
    nodes[1].pod_cidrs = vec!["10.99.0.0/24".into()];
    nodes[2].endpoint = Some("host:1".into());
    let p = plan(&local, &nodes, &cfg()).unwrap();
    assert_eq!(
        reasons(&p, "b"),
        vec![Rejection::OutsideClusterCidr {
            cidr: "10.99.0.0/24".parse().unwrap()
        }]
    );
    assert!(matches!(
        reasons(&p, "c")[0],
        Rejection::InvalidEndpoint { .. }
    ));
    let (local, mut nodes) = setup();
    nodes[1].endpoint = None;
    let p = plan(&local, &nodes, &cfg()).unwrap();
    assert_eq!(reasons(&p, "b"), vec![Rejection::MissingEndpoint]);
}

/// A node address inside the cluster CIDR would be routed into the tunnel
/// that carries it: every datagram to that peer would come back to the
/// device, be sealed again and sent again, without end. Whether written
/// as the endpoint, as an IPv4-mapped IPv6 one, or taken from InternalIP.
#[test]
fn endpoints_inside_the_cluster_cidr_are_rejected() {
    for (endpoint, internal) in [
        (Some("10.244.3.7:51820"), None),
        (Some("[::ffff:10.244.3.7]:51820"), None),
        (Some("[fd00:10:244:3::7]:51820"), None),
        (None, Some("10.244.200.1")),
    ] {
        let (local, mut nodes) = setup();
        nodes[2].endpoint = endpoint.map(String::from);
        nodes[2].internal_ips = internal.into_iter().map(String::from).collect();
        let p = plan(&local, &nodes, &cfg()).unwrap();
        let why = reasons(&p, "c");
        assert!(
            matches!(&why[..], [Rejection::InvalidEndpoint { problem, .. }]
                if problem.contains("inside cluster CIDR") && problem.contains("outside the cluster CIDR")),
            "{endpoint:?} {internal:?}: {why:?}"
        );
        assert!(p.peers.values().all(|p| p.node != "c"));
        assert!(p.peers.values().any(|p| p.node == "b"));
    }
    // Next to the cluster CIDR is fine.
    let (local, mut nodes) = setup();
    nodes[2].endpoint = Some("10.245.0.1:51820".into());
    let p = plan(&local, &nodes, &cfg()).unwrap();
    assert!(p.peers.values().any(|p| p.node == "c"));
}

#[test]
fn duplicate_names_rejected() {
    let (local, mut nodes) = setup();
    nodes.push(node("b", 9, Some(key())));
    let p = plan(&local, &nodes, &cfg()).unwrap();
    assert!(reasons(&p, "b").contains(&Rejection::DuplicateName));
    assert!(p.peers.values().all(|p| p.node != "b"));
}

#[test]
fn local_problems_are_errors() {
    let (local, mut nodes) = setup();
    assert_eq!(
        plan(&local, &nodes[1..], &cfg()).unwrap_err(),
        PlanError::LocalNodeMissing("a".into())
    );
    nodes[0].pod_cidrs.clear();
    assert!(matches!(
        plan(&local, &nodes, &cfg()).unwrap_err(),
        PlanError::LocalNotReady {
            reason: Rejection::NoPodCidrs,
            ..
        }
    ));
    assert_eq!(
        plan(&local, &nodes, &MeshConfig::default()).unwrap_err(),
        PlanError::NoClusterCidr
    );
}

#[test]
fn ipv6_underlay_mtu_and_v4_only_cluster() {
    let (local, mut nodes) = setup();
    nodes[0].endpoint = Some("[2001:db8::1]:51820".into());
    for n in &mut nodes {
        n.pod_cidrs.truncate(1);
    }
    let mut c = cfg();
    c.cluster_cidrs.truncate(1);
    let p = plan(&local, &nodes, &c).unwrap();
    assert_eq!(p.mtu, 1420);
    assert_eq!(p.routes.len(), 3);
    assert_eq!(p.peers.len(), 2);
}

#[test]
fn the_tunnel_mtu_follows_the_smallest_underlay_of_the_mesh() {
    let (local, mut nodes) = setup();
    let mut c = cfg();
    c.underlay_mtu = 9000;
    // Peers whose agents published nothing count as 1500 (older agents).
    let p = plan(&local, &nodes, &c).unwrap();
    assert_eq!((p.underlay_mtu, p.mtu), (1500, 1440));
    for n in &mut nodes {
        n.underlay_mtu = Some("9000".into());
    }
    let p = plan(&local, &nodes, &c).unwrap();
    assert_eq!((p.underlay_mtu, p.mtu), (9000, 8940));
    // A peer on a GCE-like 1460 underlay lowers everyone's MTU.
    nodes[1].underlay_mtu = Some("1460".into());
    let p = plan(&local, &nodes, &c).unwrap();
    assert_eq!((p.underlay_mtu, p.mtu), (1460, 1400));
    // The local node's own annotation is not a peer's: the agent's
    // configuration (found or set) is what counts for it.
    nodes[1].underlay_mtu = Some("9000".into());
    nodes[0].underlay_mtu = Some("1300".into());
    assert_eq!(plan(&local, &nodes, &c).unwrap().mtu, 8940);
    // A node rejected for a while still counts (no MTU flapping), a
    // node without any key (no agent) does not.
    nodes[2].endpoint = None;
    nodes[2].internal_ips = vec![];
    nodes[2].underlay_mtu = Some("1460".into());
    let p = plan(&local, &nodes, &c).unwrap();
    assert!(p.rejections.contains_key("c"));
    assert_eq!(p.mtu, 1400);
    nodes[2].public_key = None;
    assert_eq!(plan(&local, &nodes, &c).unwrap().mtu, 8940);
}
