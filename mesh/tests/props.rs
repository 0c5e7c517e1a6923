//! Property tests of the planner: order independence, no shared AllowedIPs,
//! diff converges, peers' AllowedIPs are exactly their podCIDRs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use ipnet::IpNet;
use keys::{PrivateKey, PublicKey};
use mesh::{Local, MeshConfig, NodeInfo, Observed, ObservedPeer, diff, plan};
use proptest::prelude::*;

fn keyset() -> Vec<PublicKey> {
    // A fixed pool of keys so that duplicates happen.
    (0u8..12)
        .map(|i| PrivateKey::from_bytes([i.wrapping_mul(17).wrapping_add(1); 32]).public_key())
        .collect()
}

fn cfg() -> MeshConfig {
    MeshConfig {
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:10:244::/56".parse().unwrap(),
        ],
        ..Default::default()
    }
}

/// One generated node: name index, podCIDR choice, key choice, endpoint choice.
fn arb_node() -> impl Strategy<Value = NodeInfo> {
    (0u8..20, 0u8..40, 0u8..30, any::<bool>(), 0u8..10).prop_map(|(n, c, k, v6, e)| {
        let keys = keyset();
        let mut pod_cidrs = match c {
            // A /23 overlapping two /24s, a cluster-outside CIDR, garbage.
            30..=32 => vec![format!("10.244.{}.0/23", (c - 30) * 2)],
            33 => vec!["10.99.0.0/24".to_string()],
            34 => vec!["bogus".to_string()],
            35.. => vec![],
            _ => vec![format!("10.244.{c}.0/24")],
        };
        if v6 && c < 30 {
            pod_cidrs.push(format!("fd00:10:244:{c:x}::/64"));
        }
        let public_key = match k {
            0..=11 => Some(keys[k as usize].to_base64()),
            12 => Some("not-a-key".into()),
            13..=14 => None,
            _ => Some(
                PrivateKey::from_bytes([
                    k, n, c, e, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9,
                    9, 9, 9, 9, 9, 9,
                ])
                .public_key()
                .to_base64(),
            ),
        };
        let endpoint = match e {
            0 => None,
            1 => Some("nonsense".into()),
            _ => Some(format!("192.0.2.{}:51820", n)),
        };
        NodeInfo {
            name: format!("node-{n}"),
            pod_cidrs,
            endpoint,
            public_key,
            next_public_key: None,
            internal_ips: if e == 0 && n % 2 == 0 {
                vec![format!("198.51.100.{n}")]
            } else {
                vec![]
            },
            underlay_mtu: match n % 4 {
                0 => None,
                1 => Some("1460".into()),
                2 => Some("not a number".into()),
                _ => Some("9001".into()),
            },
        }
    })
}

fn local_node() -> (Local, NodeInfo) {
    let k = PrivateKey::from_bytes([200; 32]).public_key();
    (
        Local {
            name: "local".into(),
            public_key: k,
        },
        NodeInfo {
            name: "local".into(),
            pod_cidrs: vec!["10.244.100.0/24".into(), "fd00:10:244:64::/64".into()],
            endpoint: Some("192.0.2.250:51820".into()),
            public_key: Some(k.to_base64()),
            next_public_key: None,
            internal_ips: vec![],
            underlay_mtu: None,
        },
    )
}

fn arb_cluster() -> impl Strategy<Value = (Vec<NodeInfo>, Vec<NodeInfo>)> {
    proptest::collection::vec(arb_node(), 0..25).prop_flat_map(|mut nodes| {
        nodes.push(local_node().1);
        let shuffled = Just(nodes.clone()).prop_shuffle();
        (Just(nodes), shuffled)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn plan_is_independent_of_input_order((nodes, shuffled) in arb_cluster()) {
        let (local, _) = local_node();
        let a = plan(&local, &nodes, &cfg()).unwrap();
        let b = plan(&local, &shuffled, &cfg()).unwrap();
        prop_assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap());
        prop_assert_eq!(a, b);
    }

    #[test]
    fn no_allowed_ip_in_two_peers_and_none_overlapping((nodes, _) in arb_cluster()) {
        let (local, _) = local_node();
        let p = plan(&local, &nodes, &cfg()).unwrap();
        let all: Vec<IpNet> = p.peers.values().flat_map(|p| p.allowed_ips.iter().copied()).collect();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                prop_assert!(!a.contains(b) && !b.contains(a), "{} vs {}", a, b);
            }
            for own in &p.pod_cidrs {
                prop_assert!(!a.contains(own) && !own.contains(a));
            }
        }
    }

    #[test]
    fn accepted_peers_allowed_ips_equal_pod_cidrs((nodes, _) in arb_cluster()) {
        let (local, _) = local_node();
        let p = plan(&local, &nodes, &cfg()).unwrap();
        for peer in p.peers.values() {
            let node: Vec<&NodeInfo> = nodes.iter().filter(|n| n.name == peer.node).collect();
            prop_assert_eq!(node.len(), 1);
            let want: BTreeSet<IpNet> = node[0].pod_cidrs.iter().map(|c| c.parse().unwrap()).collect();
            prop_assert_eq!(&peer.allowed_ips, &want);
            prop_assert!(!p.rejections.contains_key(&peer.node));
            let want_key = peer.public_key.to_base64();
            prop_assert_eq!(node[0].public_key.as_deref(), Some(want_key.as_str()));
        }
        // Every other remote node is rejected with at least one reason.
        for n in nodes.iter().filter(|n| n.name != "local") {
            let is_peer = p.peers.values().any(|peer| peer.node == n.name);
            let rejected = p.rejections.get(&n.name).is_some_and(|r| !r.is_empty());
            prop_assert!(is_peer != rejected, "{} peer={} rejected={}", n.name, is_peer, rejected);
        }
    }

    #[test]
    fn diff_then_apply_converges(
        (nodes, _) in arb_cluster(),
        (nodes2, _) in arb_cluster(),
        junk in proptest::collection::vec((0usize..12, any::<bool>()), 0..6),
    ) {
        let (local, _) = local_node();
        // Start from the plan of another snapshot, perturbed.
        let before = plan(&local, &nodes2, &cfg()).unwrap();
        let mut observed = Observed::default();
        observed.apply(&diff(&before, &observed));
        for (k, drop_ips) in junk {
            let key = keyset()[k];
            let e = observed.peers.entry(key).or_insert_with(ObservedPeer::default);
            if drop_ips { e.allowed_ips.clear(); }
        }
        let p = plan(&local, &nodes, &cfg()).unwrap();
        let actions = diff(&p, &observed);
        observed.apply(&actions);
        prop_assert!(diff(&p, &observed).is_empty());
        prop_assert_eq!(observed.peers.len(), p.peers.len());
        // Deterministic: the same inputs give byte-identical actions.
        prop_assert_eq!(
            serde_json::to_string(&actions).unwrap(),
            serde_json::to_string(&actions.clone()).unwrap()
        );
    }
}
