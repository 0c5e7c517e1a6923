//! What a node publishes about itself on its Node object, and whether the
//! current annotations need a patch. Pure: the shell reads the Node and
//! sends the patch.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use keys::PublicKey;

/// Annotation carrying the node's WireGuard public key (base64).
pub const ANN_PUBLIC_KEY: &str = "podguard.dev/public-key";
/// Annotation carrying the endpoint the agent publishes (`host:port`).
pub const ANN_ENDPOINT: &str = "podguard.dev/endpoint";
/// Admin override of the endpoint; wins over [`ANN_ENDPOINT`].
pub const ANN_FORCE_ENDPOINT: &str = "podguard.dev/force-endpoint";
/// Longest annotation value podguard reads; longer values are treated as
/// invalid without being copied into logs.
pub const MAX_VALUE_LEN: usize = 512;

/// The endpoint to publish: the force-endpoint override if set, else the
/// first IPv4 InternalIP (else the first IPv6 one) with `port`.
pub fn endpoint(internal_ips: &[String], force: Option<&str>, port: u16) -> Option<String> {
    if let Some(f) = force {
        return Some(f.to_string());
    }
    let ips: Vec<IpAddr> = internal_ips.iter().filter_map(|s| s.parse().ok()).collect();
    ips.iter()
        .find(|ip| ip.is_ipv4())
        .or_else(|| ips.first())
        .map(|ip| SocketAddr::new(*ip, port).to_string())
}

/// The annotations this node must carry.
pub fn desired(key: &PublicKey, endpoint: Option<String>) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert(ANN_PUBLIC_KEY.to_string(), key.to_base64());
    if let Some(e) = endpoint {
        m.insert(ANN_ENDPOINT.to_string(), e);
    }
    m
}

/// The merge-patch `metadata.annotations` body that brings `current` to
/// `desired`, or `None` when nothing differs. Other annotations are never
/// touched.
pub fn patch(
    current: &BTreeMap<String, String>,
    desired: &BTreeMap<String, String>,
) -> Option<BTreeMap<String, String>> {
    let diff: BTreeMap<String, String> = desired
        .iter()
        .filter(|(k, v)| current.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (!diff.is_empty()).then_some(diff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keys::PrivateKey;

    #[test]
    fn endpoint_prefers_force_then_ipv4() {
        let ips = vec!["2001:db8::5".to_string(), "192.0.2.5".to_string()];
        assert_eq!(
            endpoint(&ips, None, 51820).as_deref(),
            Some("192.0.2.5:51820")
        );
        assert_eq!(
            endpoint(&ips[..1], None, 1).as_deref(),
            Some("[2001:db8::5]:1")
        );
        assert_eq!(
            endpoint(&ips, Some("198.51.100.1:9"), 1).as_deref(),
            Some("198.51.100.1:9")
        );
        assert_eq!(endpoint(&["garbage".into()], None, 1), None);
    }

    #[test]
    fn patch_only_when_different_and_only_ours() {
        let k = PrivateKey::generate().public_key();
        let want = desired(&k, Some("192.0.2.5:51820".into()));
        let mut have = BTreeMap::new();
        have.insert("other.io/x".to_string(), "y".to_string());
        let p = patch(&have, &want).unwrap();
        assert_eq!(p.len(), 2);
        assert!(!p.contains_key("other.io/x"));
        have.extend(want.clone());
        assert_eq!(patch(&have, &want), None);
        have.insert(ANN_PUBLIC_KEY.into(), "tampered".into());
        assert_eq!(patch(&have, &want).unwrap().len(), 1);
    }
}
