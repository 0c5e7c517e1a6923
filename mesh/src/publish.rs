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
/// The key this node is rotating to (base64), while a rotation is staged.
pub const ANN_NEXT_PUBLIC_KEY: &str = "podguard.dev/next-public-key";
/// Set by `podguard rotate` (a nonce): asks the node's agent to rotate.
pub const ANN_ROTATE_REQUESTED: &str = "podguard.dev/rotate-requested";
/// The last rotate-requested nonce the agent took on.
pub const ANN_ROTATE_DONE: &str = "podguard.dev/rotate-done";
/// `idle`, `staged` or `switched`.
pub const ANN_ROTATION_STATE: &str = "podguard.dev/rotation-state";
/// When the current key was created (unix seconds).
pub const ANN_KEY_CREATED: &str = "podguard.dev/key-created";
/// Digest of the mesh the agent has applied (see `mesh::digest`).
pub const ANN_MESH_DIGEST: &str = "podguard.dev/mesh-digest";
/// The peers (by node) this node's agent finds without a handshake or in
/// a handshake storm (JSON, see [`crate::health::PeerProblems`]); absent
/// when every peer is fine.
pub const ANN_PEER_HEALTH: &str = "podguard.dev/peer-health";
/// The MTU of the node's underlay interface (decimal), found by its agent
/// or set with `--underlay-mtu`; every node uses the smallest of the mesh.
pub const ANN_UNDERLAY_MTU: &str = "podguard.dev/underlay-mtu";
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

/// What this node publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Own {
    /// The current public key.
    pub public_key: PublicKey,
    /// The endpoint (`None`: leave the annotation alone).
    pub endpoint: Option<String>,
    /// The staged next key (`None`: the annotation is removed).
    pub next_public_key: Option<PublicKey>,
    /// The rotation phase (`None`: leave alone).
    pub rotation_state: Option<&'static str>,
    /// The rotation request taken on (`None`: leave alone).
    pub rotate_done: Option<String>,
    /// When the current key was created, unix seconds (`None`: leave alone).
    pub key_created: Option<u64>,
    /// The applied mesh digest (`None`: leave alone).
    pub mesh_digest: Option<String>,
    /// Peer problems (`None`: leave alone; empty: remove the annotation).
    pub peer_health: Option<crate::health::PeerProblems>,
    /// The node's underlay MTU (`None`: leave alone).
    pub underlay_mtu: Option<u32>,
}

impl Own {
    /// Just a key and an endpoint.
    pub fn new(public_key: PublicKey, endpoint: Option<String>) -> Self {
        Self {
            public_key,
            endpoint,
            next_public_key: None,
            rotation_state: None,
            rotate_done: None,
            key_created: None,
            mesh_digest: None,
            peer_health: None,
            underlay_mtu: None,
        }
    }
}

/// The annotations this node must carry: `Some(v)` to set, `None` to remove.
/// Annotations not in the map are left alone.
pub fn desired(own: &Own) -> BTreeMap<String, Option<String>> {
    let mut m = BTreeMap::new();
    m.insert(ANN_PUBLIC_KEY.to_string(), Some(own.public_key.to_base64()));
    if let Some(e) = &own.endpoint {
        m.insert(ANN_ENDPOINT.to_string(), Some(e.clone()));
    }
    m.insert(
        ANN_NEXT_PUBLIC_KEY.to_string(),
        own.next_public_key.map(|k| k.to_base64()),
    );
    let mut set = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            m.insert(k.to_string(), Some(v));
        }
    };
    set(ANN_ROTATION_STATE, own.rotation_state.map(str::to_string));
    set(ANN_ROTATE_DONE, own.rotate_done.clone());
    set(ANN_KEY_CREATED, own.key_created.map(|t| t.to_string()));
    set(ANN_MESH_DIGEST, own.mesh_digest.clone());
    set(ANN_UNDERLAY_MTU, own.underlay_mtu.map(|m| m.to_string()));
    if let Some(p) = &own.peer_health {
        m.insert(ANN_PEER_HEALTH.to_string(), p.to_annotation());
    }
    m
}

/// The merge-patch `metadata.annotations` body that brings `current` to
/// `desired` (`None` values become JSON `null`, which removes the
/// annotation), or `None` when nothing differs. Other annotations are never
/// touched.
pub fn patch(
    current: &BTreeMap<String, String>,
    desired: &BTreeMap<String, Option<String>>,
) -> Option<BTreeMap<String, Option<String>>> {
    let diff: BTreeMap<String, Option<String>> = desired
        .iter()
        .filter(|(k, v)| current.get(*k) != v.as_ref())
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
        let want = desired(&Own::new(k, Some("192.0.2.5:51820".into())));
        let mut have = BTreeMap::new();
        have.insert("other.io/x".to_string(), "y".to_string());
        let p = patch(&have, &want).unwrap();
        assert_eq!(p.len(), 2);
        assert!(!p.contains_key("other.io/x"));
        have.extend(
            want.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.clone()?))),
        );
        assert_eq!(patch(&have, &want), None);
        have.insert(ANN_PUBLIC_KEY.into(), "tampered".into());
        assert_eq!(patch(&have, &want).unwrap().len(), 1);
    }

    #[test]
    fn peer_health_set_removed_or_left_alone() {
        let k = PrivateKey::generate().public_key();
        let mut own = Own::new(k, None);
        let mut have = BTreeMap::new();
        have.insert(
            ANN_PEER_HEALTH.to_string(),
            "{\"storm\":[\"b\"]}".to_string(),
        );
        assert!(!desired(&own).contains_key(ANN_PEER_HEALTH), "left alone");
        own.peer_health = Some(crate::health::PeerProblems::default());
        let p = patch(&have, &desired(&own)).unwrap();
        assert_eq!(p[ANN_PEER_HEALTH], None, "healthy: removed");
        own.peer_health = Some(crate::health::PeerProblems {
            no_handshake: vec!["a".into()],
            ..Default::default()
        });
        let p = patch(&have, &desired(&own)).unwrap();
        assert_eq!(
            p[ANN_PEER_HEALTH].as_deref(),
            Some("{\"noHandshake\":[\"a\"]}")
        );
    }

    #[test]
    fn rotation_annotations_set_and_removed() {
        let k = PrivateKey::generate().public_key();
        let n = PrivateKey::generate().public_key();
        let mut own = Own::new(k, None);
        own.next_public_key = Some(n);
        own.rotation_state = Some("staged");
        own.rotate_done = Some("abc".into());
        let have = BTreeMap::new();
        let p = patch(&have, &desired(&own)).unwrap();
        assert_eq!(p[ANN_NEXT_PUBLIC_KEY], Some(n.to_base64()));
        assert_eq!(p[ANN_ROTATION_STATE].as_deref(), Some("staged"));
        // A foreign or stale next key on our own Node is removed.
        let mut have = BTreeMap::new();
        have.insert(ANN_PUBLIC_KEY.to_string(), k.to_base64());
        have.insert(ANN_NEXT_PUBLIC_KEY.to_string(), "someone else's".into());
        let p = patch(&have, &desired(&Own::new(k, None))).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[ANN_NEXT_PUBLIC_KEY], None);
    }
}
