//! The mesh digest: a short fingerprint of the mesh a node has applied —
//! every member's name, public key, next key and podCIDRs, the node itself
//! included. Converged nodes publish the same digest
//! (`podguard.dev/mesh-digest`); a node whose digest differs has not
//! applied the current state (or rejects a node the others accept).
//!
//! Pure: SHA-256 over a canonical text form, first 16 bytes in hex.

use std::collections::BTreeSet;

use ipnet::IpNet;
use keys::PublicKey;
use sha2::{Digest as _, Sha256};

/// One member of the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Node name.
    pub node: &'a str,
    /// Its public key.
    pub public_key: PublicKey,
    /// Its next key, if one is staged and valid.
    pub next_public_key: Option<PublicKey>,
    /// Its podCIDRs.
    pub pod_cidrs: BTreeSet<IpNet>,
}

/// The digest of a set of members (order does not matter).
pub fn digest<'a>(entries: impl IntoIterator<Item = Entry<'a>>) -> String {
    let mut lines: Vec<String> = entries
        .into_iter()
        .map(|e| {
            let cidrs: Vec<String> = e.pod_cidrs.iter().map(|c| c.to_string()).collect();
            format!(
                "{} {} {} {}\n",
                e.node,
                e.public_key.to_base64(),
                e.next_public_key
                    .map(|k| k.to_base64())
                    .unwrap_or_else(|| "-".into()),
                cidrs.join(",")
            )
        })
        .collect();
    lines.sort();
    let mut h = Sha256::new();
    for l in &lines {
        h.update(l.as_bytes());
    }
    let out = h.finalize();
    out[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The digest a fully converged mesh has, from the nodes as published:
/// every node with a valid key and valid podCIDRs. `podguard status`
/// compares each node's published digest with this.
pub fn expected(nodes: &[crate::NodeInfo]) -> String {
    let entries: Vec<(String, PublicKey, Option<PublicKey>, BTreeSet<IpNet>)> = nodes
        .iter()
        .filter_map(|n| {
            let key = PublicKey::from_base64(n.public_key.as_deref()?).ok()?;
            let next = n
                .next_public_key
                .as_deref()
                .and_then(|s| PublicKey::from_base64(s).ok())
                .filter(|k| *k != key);
            let cidrs: Option<BTreeSet<IpNet>> = n
                .pod_cidrs
                .iter()
                .map(|c| crate::node::parse_cidr(c).ok())
                .collect();
            let cidrs = cidrs.filter(|c| !c.is_empty())?;
            Some((n.name.clone(), key, next, cidrs))
        })
        .collect();
    digest(entries.iter().map(|(n, k, x, c)| Entry {
        node: n,
        public_key: *k,
        next_public_key: *x,
        pod_cidrs: c.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keys::PrivateKey;

    fn e(node: &str, k: PublicKey, next: Option<PublicKey>) -> Entry<'_> {
        Entry {
            node,
            public_key: k,
            next_public_key: next,
            pod_cidrs: ["10.244.1.0/24".parse().unwrap()].into(),
        }
    }

    #[test]
    fn order_independent_and_sensitive_to_every_field() {
        let (a, b, c) = (
            PrivateKey::generate().public_key(),
            PrivateKey::generate().public_key(),
            PrivateKey::generate().public_key(),
        );
        let d1 = digest([e("a", a, None), e("b", b, None)]);
        let d2 = digest([e("b", b, None), e("a", a, None)]);
        assert_eq!(d1, d2);
        assert_eq!(d1.len(), 32);
        assert_ne!(d1, digest([e("a", a, None), e("b", c, None)]));
        assert_ne!(d1, digest([e("a", a, None), e("b", b, Some(c))]));
        assert_ne!(d1, digest([e("a", a, None), e("c", b, None)]));
        let mut other = e("b", b, None);
        other.pod_cidrs = ["10.244.2.0/24".parse().unwrap()].into();
        assert_ne!(d1, digest([e("a", a, None), other]));
    }
}
