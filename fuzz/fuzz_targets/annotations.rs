//! Annotation and Node values into the planner: never panics, and every
//! plan keeps its invariants (AllowedIPs of different peers never overlap;
//! a peer's AllowedIPs are exactly valid podCIDRs; a key two nodes
//! publish is no peer; next keys are unique;
//! a published underlay MTU never raises the MTU, nor lowers it below 1280).
#![no_main]
use libfuzzer_sys::fuzz_target;
use mesh::{Local, MeshConfig, NodeInfo};

fn field(parts: &mut std::str::Split<'_, char>) -> Option<String> {
    parts.next().filter(|s| !s.is_empty()).map(String::from)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // One node per line: name|podCIDRs (comma-separated)|endpoint|key|next key|internal IP|underlay MTU
    let local_key = keys::PrivateKey::from_bytes([7; 32]).public_key();
    let mut nodes = vec![NodeInfo {
        name: "local".into(),
        pod_cidrs: vec!["10.244.0.0/24".into()],
        endpoint: Some("192.0.2.1:51820".into()),
        public_key: Some(local_key.to_base64()),
        ..Default::default()
    }];
    for line in text.lines().take(64) {
        let mut p = line.split('|');
        let name = field(&mut p).unwrap_or_default();
        let cidrs = field(&mut p)
            .map(|c| c.split(',').map(String::from).collect())
            .unwrap_or_default();
        nodes.push(NodeInfo {
            name,
            pod_cidrs: cidrs,
            endpoint: field(&mut p),
            public_key: field(&mut p),
            next_public_key: field(&mut p),
            internal_ips: field(&mut p).into_iter().collect(),
            underlay_mtu: field(&mut p),
        });
    }
    let cfg = MeshConfig {
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00::/48".parse().unwrap(),
        ],
        ..Default::default()
    };
    let local = Local {
        name: "local".into(),
        public_key: local_key,
    };
    let Ok(plan) = mesh::plan(&local, &nodes, &cfg) else {
        return;
    };
    assert!(
        plan.underlay_mtu <= cfg.underlay_mtu,
        "a peer raised the MTU"
    );
    assert!(
        (1280..=1440).contains(&plan.mtu),
        "MTU out of range: {}",
        plan.mtu
    );
    let nets: Vec<_> = plan
        .peers
        .values()
        .flat_map(|p| p.allowed_ips.iter())
        .collect();
    for (i, a) in nets.iter().enumerate() {
        for b in &nets[i + 1..] {
            assert!(!a.contains(*b) && !b.contains(*a), "overlapping AllowedIPs");
        }
    }
    // A key published by two or more remote nodes gets no peer (both are
    // rejected). Counted only for keys in canonical base64, which the
    // planner cannot read otherwise.
    let mut names_by_key: std::collections::BTreeMap<
        keys::PublicKey,
        std::collections::BTreeSet<&str>,
    > = std::collections::BTreeMap::new();
    for n in nodes.iter().filter(|n| n.name != "local") {
        if let Some(s) = &n.public_key
            && let Ok(k) = keys::PublicKey::from_base64(s)
            && k.to_base64() == *s
        {
            names_by_key.entry(k).or_default().insert(n.name.as_str());
        }
    }
    for (k, names) in &names_by_key {
        if names.len() > 1 {
            assert!(
                !plan.peers.contains_key(k),
                "a key published by {names:?} became a peer"
            );
        }
    }
    let mut keys = std::collections::BTreeSet::new();
    for (k, p) in &plan.peers {
        assert_eq!(*k, p.public_key, "a peer filed under another key");
        assert!(keys.insert(p.public_key));
        assert_ne!(p.public_key, local_key);
        if let Some(n) = p.next_public_key {
            assert!(keys.insert(n), "a next key duplicates another key");
            assert_ne!(n, local_key);
        }
    }
    let _ = mesh::digest::expected(&nodes);
});
