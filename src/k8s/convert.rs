//! Node objects to `mesh::NodeInfo`. Values are copied as strings; their
//! validation is the planner's. Oversized annotation values are replaced
//! by a short placeholder so they are rejected without flooding logs.

use k8s_openapi::api::core::v1::Node;
use mesh::NodeInfo;
use mesh::publish::{
    ANN_ENDPOINT, ANN_FORCE_ENDPOINT, ANN_NEXT_PUBLIC_KEY, ANN_PUBLIC_KEY, ANN_UNDERLAY_MTU,
    MAX_VALUE_LEN,
};

fn bounded(v: &str) -> String {
    if v.len() > MAX_VALUE_LEN {
        format!("<oversized value: {} bytes>", v.len())
    } else {
        v.to_string()
    }
}

/// The InternalIP addresses of a Node, in order.
pub fn internal_ips(node: &Node) -> Vec<String> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|a| {
            a.iter()
                .filter(|a| a.type_ == "InternalIP")
                .map(|a| bounded(&a.address))
                .collect()
        })
        .unwrap_or_default()
}

/// What the planner needs from a Node.
pub fn node_info(node: &Node) -> NodeInfo {
    let ann = node.metadata.annotations.as_ref();
    let get = |k: &str| ann.and_then(|a| a.get(k)).map(|v| bounded(v));
    let spec = node.spec.as_ref();
    let mut pod_cidrs: Vec<String> = spec
        .and_then(|s| s.pod_cidrs.clone())
        .unwrap_or_default()
        .iter()
        .map(|c| bounded(c))
        .collect();
    if pod_cidrs.is_empty()
        && let Some(c) = spec.and_then(|s| s.pod_cidr.as_ref())
    {
        pod_cidrs.push(bounded(c));
    }
    NodeInfo {
        name: node.metadata.name.clone().unwrap_or_default(),
        pod_cidrs,
        endpoint: get(ANN_FORCE_ENDPOINT).or_else(|| get(ANN_ENDPOINT)),
        public_key: get(ANN_PUBLIC_KEY),
        next_public_key: get(ANN_NEXT_PUBLIC_KEY),
        internal_ips: internal_ips(node),
        underlay_mtu: get(ANN_UNDERLAY_MTU),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(v: serde_json::Value) -> Node {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn dual_stack_node_with_annotations() {
        let n = node(serde_json::json!({
            "metadata": {"name": "a", "annotations": {
                "podguard.dev/public-key": "k", "podguard.dev/next-public-key": "n",
                "podguard.dev/endpoint": "192.0.2.1:51820"}},
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00::/64"]},
            "status": {"addresses": [{"type": "Hostname", "address": "a"}, {"type": "InternalIP", "address": "192.0.2.1"}]}
        }));
        let i = node_info(&n);
        assert_eq!(i.pod_cidrs, vec!["10.244.1.0/24", "fd00::/64"]);
        assert_eq!(i.public_key.as_deref(), Some("k"));
        assert_eq!(i.next_public_key.as_deref(), Some("n"));
        assert_eq!(i.endpoint.as_deref(), Some("192.0.2.1:51820"));
        assert_eq!(i.internal_ips, vec!["192.0.2.1"]);
    }

    #[test]
    fn force_endpoint_wins_and_singular_pod_cidr_is_a_fallback() {
        let n = node(serde_json::json!({
            "metadata": {"name": "b", "annotations": {
                "podguard.dev/endpoint": "192.0.2.2:51820", "podguard.dev/force-endpoint": "198.51.100.2:4000"}},
            "spec": {"podCIDR": "10.244.2.0/24"}
        }));
        let i = node_info(&n);
        assert_eq!(i.endpoint.as_deref(), Some("198.51.100.2:4000"));
        assert_eq!(i.pod_cidrs, vec!["10.244.2.0/24"]);
    }

    #[test]
    fn garbage_truncated_oversized_and_empty_nodes_plan_without_panic() {
        let big = "A".repeat(100_000);
        let nodes = [
            node(serde_json::json!({"metadata": {"name": "empty"}})),
            node(
                serde_json::json!({"metadata": {"name": "garbage", "annotations": {"podguard.dev/public-key": "\u{0}\u{ff}!!", "podguard.dev/endpoint": "::::"}}, "spec": {"podCIDRs": ["nope"]}}),
            ),
            node(
                serde_json::json!({"metadata": {"name": "trunc", "annotations": {"podguard.dev/public-key": "AAAA"}}, "spec": {"podCIDRs": ["10.244.3.0/24"]}}),
            ),
            node(
                serde_json::json!({"metadata": {"name": "huge", "annotations": {"podguard.dev/public-key": big, "podguard.dev/endpoint": big}}, "spec": {"podCIDRs": ["fd00:10:244:4::/64"]}}),
            ),
            node(
                serde_json::json!({"metadata": {"name": "v6only", "annotations": {"podguard.dev/public-key": keys::PrivateKey::generate().public_key().to_base64()}}, "spec": {"podCIDRs": ["fd00:10:244:5::/64"]}, "status": {"addresses": [{"type": "InternalIP", "address": "2001:db8::5"}]}}),
            ),
            node(
                serde_json::json!({"metadata": {"name": "local"}, "spec": {"podCIDRs": ["10.244.1.0/24"]}}),
            ),
        ];
        let infos: Vec<NodeInfo> = nodes.iter().map(node_info).collect();
        assert!(infos[3].public_key.as_ref().unwrap().len() < 100);
        let cfg = mesh::MeshConfig {
            cluster_cidrs: vec![
                "10.244.0.0/16".parse().unwrap(),
                "fd00:10:244::/56".parse().unwrap(),
            ],
            ..Default::default()
        };
        let local = mesh::Local {
            name: "local".into(),
            public_key: keys::PrivateKey::generate().public_key(),
        };
        let p = mesh::plan(&local, &infos, &cfg).unwrap();
        assert_eq!(
            p.peers.len(),
            1,
            "only the IPv6-only node is valid: {:?}",
            p.rejections
        );
        for n in ["empty", "garbage", "trunc", "huge"] {
            let r = &p.rejections[n];
            assert!(!r.is_empty());
            for reason in r {
                assert!(
                    reason.to_string().len() < 300,
                    "log line too long: {reason}"
                );
            }
        }
    }
}
