//! Least privilege, proven: what the shipped RBAC grants the agent's
//! ServiceAccount next to what the agent did, as the real API server's audit
//! log recorded it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use serde_json::Value;

use super::kubelab::KubeLab;

/// (API group, resource[/subresource], verb).
pub type Grant = (String, String, String);

const AGENT: &str = "system:serviceaccount:podguard:podguard";

/// What deploy/rbac.yaml grants the agent: the rules of every Role and
/// ClusterRole bound to its ServiceAccount.
pub fn granted() -> BTreeSet<Grant> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rbac.yaml")).unwrap();
    let docs: Vec<Value> = yaml_serde::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let sa_bound = |b: &Value| {
        b["subjects"].as_array().is_some_and(|s| {
            s.iter().any(|s| {
                s["kind"] == "ServiceAccount"
                    && s["name"] == "podguard"
                    && s["namespace"] == "podguard"
            })
        })
    };
    let roles: BTreeSet<(String, String)> = docs
        .iter()
        .filter(|d| {
            matches!(
                d["kind"].as_str(),
                Some("RoleBinding" | "ClusterRoleBinding")
            )
        })
        .filter(|b| sa_bound(b))
        .map(|b| {
            (
                b["roleRef"]["kind"].as_str().unwrap().to_string(),
                b["roleRef"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut out = BTreeSet::new();
    for d in &docs {
        let key = (
            d["kind"].as_str().unwrap_or_default().to_string(),
            d["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        if !roles.contains(&key) {
            continue;
        }
        for r in d["rules"].as_array().unwrap() {
            let list = |k: &str| -> Vec<String> {
                r[k].as_array()
                    .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
                    .unwrap_or_default()
            };
            for g in list("apiGroups") {
                for res in list("resources") {
                    for v in list("verbs") {
                        out.insert((g.clone(), res.clone(), v));
                    }
                }
            }
        }
    }
    out
}

/// What the agents did (every request of the agent's ServiceAccount in the
/// audit log), and the requests that were denied.
pub fn used(lab: &KubeLab) -> (BTreeSet<Grant>, Vec<String>) {
    let cp = lab.cp.as_ref().expect("a real control plane");
    let log = std::fs::read_to_string(cp.audit_log()).unwrap();
    let mut used = BTreeSet::new();
    let mut denied = Vec::new();
    for line in log.lines() {
        let e: Value = serde_json::from_str(line).unwrap();
        if e["user"]["username"] != AGENT {
            continue;
        }
        let o = &e["objectRef"];
        let mut res = o["resource"].as_str().unwrap_or_default().to_string();
        if let Some(sub) = o["subresource"].as_str() {
            res = format!("{res}/{sub}");
        }
        let g = (
            o["apiGroup"].as_str().unwrap_or_default().to_string(),
            res,
            e["verb"].as_str().unwrap_or_default().to_string(),
        );
        if e["responseStatus"]["code"].as_u64() == Some(403) {
            denied.push(format!("{g:?} {}", e["requestURI"]));
        }
        used.insert(g);
    }
    (used, denied)
}

/// The shipped role is exactly what the agent needs: nothing it did was
/// denied, and every grant was used (so no rule can go without taking
/// something from the agent).
pub fn assert_least_privilege(lab: &KubeLab) {
    let granted = granted();
    let (used, denied) = used(lab);
    assert!(
        denied.is_empty(),
        "the shipped RBAC denied the agent: {denied:#?}"
    );
    let unused: Vec<_> = granted.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "deploy/rbac.yaml grants the agent what it never used: {unused:?} (used: {used:?})"
    );
    let beyond: Vec<_> = used.difference(&granted).collect();
    assert!(
        beyond.is_empty(),
        "the agent used what deploy/rbac.yaml does not grant: {beyond:?}"
    );
}
