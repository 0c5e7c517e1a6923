//! NetworkPolicy semantics: the cases of the Kubernetes documentation
//! ("Network Policies", kubernetes.io/docs/concepts/services-networking/
//! network-policies/), table-driven, plus properties.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use mesh::policy::{Cluster, NamedPort, Pod, Policy, Protocol};
use proptest::prelude::*;
use serde_json::json;

fn pod(ns: &str, name: &str, labels: &[(&str, &str)], ip: &str) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ips: vec![ip.parse().unwrap()],
        node: Some("n1".into()),
        host_network: false,
        ports: vec![],
    }
}

fn policy(ns: &str, name: &str, spec: serde_json::Value) -> Policy {
    Policy {
        namespace: ns.into(),
        name: name.into(),
        spec: serde_json::from_value(spec).unwrap(),
    }
}

fn cluster(policies: Vec<Policy>) -> Cluster {
    let mut namespaces = BTreeMap::new();
    namespaces.insert("default".to_string(), BTreeMap::new());
    namespaces.insert(
        "myproject".to_string(),
        [("project".to_string(), "myproject".to_string())].into(),
    );
    namespaces.insert("other".to_string(), BTreeMap::new());
    Cluster {
        namespaces,
        policies,
    }
}

/// The documentation's `test-network-policy`.
fn test_network_policy() -> Policy {
    policy(
        "default",
        "test-network-policy",
        json!({
            "podSelector": {"matchLabels": {"role": "db"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{
                "from": [
                    {"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}},
                    {"namespaceSelector": {"matchLabels": {"project": "myproject"}}},
                    {"podSelector": {"matchLabels": {"role": "frontend"}}}
                ],
                "ports": [{"protocol": "TCP", "port": 6379}]
            }],
            "egress": [{
                "to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}],
                "ports": [{"protocol": "TCP", "port": 5978}]
            }]
        }),
    )
}

#[test]
fn documentation_cases() {
    let db = pod("default", "db", &[("role", "db")], "10.244.1.10");
    let frontend = pod("default", "fe", &[("role", "frontend")], "10.244.2.10");
    let backend = pod("default", "be", &[("role", "backend")], "10.244.2.11");
    let in_myproject = pod("myproject", "x", &[], "10.244.3.10");
    let in_other_fe = pod("other", "fe2", &[("role", "frontend")], "10.244.3.11");
    let external_ok = pod("other", "ext", &[], "172.17.5.5");
    let external_except = pod("other", "ext2", &[], "172.17.1.5");
    let egress_target = pod("other", "t", &[], "10.0.0.7");

    let c = cluster(vec![test_network_policy()]);
    let tcp = Protocol::Tcp;
    let cases: Vec<(&str, &Pod, &Pod, Protocol, u16, bool)> = vec![
        // Ingress to db on 6379 from the three kinds of peers.
        (
            "frontend pod in the policy's namespace",
            &frontend,
            &db,
            tcp,
            6379,
            true,
        ),
        (
            "any pod of a selected namespace",
            &in_myproject,
            &db,
            tcp,
            6379,
            true,
        ),
        ("ipBlock", &external_ok, &db, tcp, 6379, true),
        ("ipBlock except", &external_except, &db, tcp, 6379, false),
        (
            "podSelector alone is the policy's namespace only",
            &in_other_fe,
            &db,
            tcp,
            6379,
            false,
        ),
        ("not a listed peer", &backend, &db, tcp, 6379, false),
        ("wrong port", &frontend, &db, tcp, 80, false),
        ("wrong protocol", &frontend, &db, Protocol::Udp, 6379, false),
        // Egress from db: only 10.0.0.0/24 on 5978.
        ("egress allowed", &db, &egress_target, tcp, 5978, true),
        ("egress other port", &db, &egress_target, tcp, 80, false),
        ("egress elsewhere", &db, &frontend, tcp, 5978, false),
        // Pods the policy does not select are not isolated.
        (
            "unselected pods talk freely",
            &frontend,
            &backend,
            tcp,
            80,
            true,
        ),
    ];
    for (what, src, dst, proto, port, want) in cases {
        assert_eq!(c.allowed(src, dst, proto, port), want, "{what}");
    }
}

#[test]
fn default_policies() {
    let a = pod("default", "a", &[("app", "a")], "10.244.1.1");
    let b = pod("default", "b", &[("app", "b")], "10.244.1.2");
    let o = pod("other", "o", &[], "10.244.2.1");
    let deny_ingress = policy(
        "default",
        "default-deny-ingress",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    );
    let c = cluster(vec![deny_ingress.clone()]);
    assert!(!c.allowed_any(&a, &b), "default deny ingress");
    assert!(!c.allowed_any(&o, &a));
    assert!(
        c.allowed_any(&a, &o),
        "egress unaffected, other namespace unaffected"
    );

    let allow_all_ingress = policy(
        "default",
        "allow-all-ingress",
        json!({"podSelector": {}, "ingress": [{}], "policyTypes": ["Ingress"]}),
    );
    let c = cluster(vec![deny_ingress.clone(), allow_all_ingress]);
    assert!(c.allowed_any(&o, &a), "policies are additive");

    let deny_egress = policy(
        "default",
        "default-deny-egress",
        json!({"podSelector": {}, "policyTypes": ["Egress"]}),
    );
    let c = cluster(vec![deny_egress.clone()]);
    assert!(!c.allowed_any(&a, &o));
    assert!(c.allowed_any(&o, &a));
    let allow_all_egress = policy(
        "default",
        "allow-all-egress",
        json!({"podSelector": {}, "egress": [{}], "policyTypes": ["Egress"]}),
    );
    let c = cluster(vec![deny_egress, allow_all_egress]);
    assert!(c.allowed_any(&a, &o));

    let deny_all = policy(
        "default",
        "default-deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    );
    let c = cluster(vec![deny_all]);
    assert!(!c.allowed_any(&a, &b) && !c.allowed_any(&o, &a) && !c.allowed_any(&a, &o));
}

/// The API server's defaulting of `policyTypes` (the same answers a real
/// cluster gives; tests/agent_kube.rs reads them back from one).
#[test]
fn policy_types_default_as_the_api_server_does() {
    let a = pod("default", "a", &[("app", "a")], "10.244.1.1");
    let o = pod("other", "o", &[], "10.244.2.1");
    // `egress: []` without policyTypes: Ingress only (no egress rule), so
    // ingress is denied and egress is not isolated.
    let c = cluster(vec![policy(
        "default",
        "empty-egress",
        json!({"podSelector": {}, "egress": []}),
    )]);
    assert!(!c.allowed_any(&o, &a), "ingress isolated");
    assert!(c.allowed_any(&a, &o), "egress: [] does not isolate egress");
    // `policyTypes: []` is defaulted like a missing one.
    let c = cluster(vec![policy(
        "default",
        "empty-types",
        json!({"podSelector": {}, "policyTypes": []}),
    )]);
    assert!(!c.allowed_any(&o, &a), "policyTypes: [] means Ingress");
    assert!(c.allowed_any(&a, &o));
    // `policyTypes: []` with an egress rule: Ingress and Egress.
    let c = cluster(vec![policy(
        "default",
        "empty-types-egress-rule",
        json!({"podSelector": {}, "policyTypes": [],
               "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "b"}}}]}]}),
    )]);
    assert!(!c.allowed_any(&o, &a));
    assert!(!c.allowed_any(&a, &o), "egress isolated by its rule");
}

#[test]
fn and_versus_or_of_selectors() {
    let db = pod("default", "db", &[("role", "db")], "10.244.1.10");
    let client_in_myproject = pod("myproject", "c", &[("role", "client")], "10.244.3.1");
    let other_in_myproject = pod("myproject", "d", &[("role", "other")], "10.244.3.2");
    let client_in_default = pod("default", "c", &[("role", "client")], "10.244.1.3");
    // One peer with both selectors: AND.
    let and = policy(
        "default",
        "and",
        json!({"podSelector": {"matchLabels": {"role": "db"}}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"project": "myproject"}},
             "podSelector": {"matchLabels": {"role": "client"}}}]}]}),
    );
    let c = cluster(vec![and]);
    assert!(c.allowed_any(&client_in_myproject, &db));
    assert!(!c.allowed_any(&other_in_myproject, &db));
    assert!(!c.allowed_any(&client_in_default, &db));
    // Two peers: OR.
    let or = policy(
        "default",
        "or",
        json!({"podSelector": {"matchLabels": {"role": "db"}}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"project": "myproject"}}},
            {"podSelector": {"matchLabels": {"role": "client"}}}]}]}),
    );
    let c = cluster(vec![or]);
    assert!(c.allowed_any(&client_in_myproject, &db));
    assert!(c.allowed_any(&other_in_myproject, &db));
    assert!(c.allowed_any(&client_in_default, &db));
    // matchExpressions and the automatic namespace name label.
    let expr = policy(
        "default",
        "expr",
        json!({"podSelector": {"matchExpressions": [{"key": "role", "operator": "In", "values": ["db"]}]},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "myproject"}}}]}]}),
    );
    let c = cluster(vec![expr]);
    assert!(c.allowed_any(&other_in_myproject, &db));
    assert!(!c.allowed_any(&client_in_default, &db));
}

#[test]
fn port_ranges_and_named_ports() {
    let mut dst = pod("default", "svc", &[("app", "svc")], "10.244.1.10");
    dst.ports = vec![NamedPort {
        name: "http".into(),
        port: 8080,
        protocol: "TCP".into(),
    }];
    let src = pod("default", "c", &[], "10.244.1.11");
    let range = policy(
        "default",
        "range",
        json!({"podSelector": {"matchLabels": {"app": "svc"}}, "policyTypes": ["Ingress"],
               "ingress": [{"ports": [{"protocol": "TCP", "port": 32000, "endPort": 32768}]}]}),
    );
    let c = cluster(vec![range]);
    assert!(c.allowed(&src, &dst, Protocol::Tcp, 32000));
    assert!(c.allowed(&src, &dst, Protocol::Tcp, 32768));
    assert!(!c.allowed(&src, &dst, Protocol::Tcp, 32769));
    assert!(!c.allowed(&src, &dst, Protocol::Udp, 32100));
    let named = policy(
        "default",
        "named",
        json!({"podSelector": {"matchLabels": {"app": "svc"}},
               "ingress": [{"ports": [{"port": "http"}]}]}),
    );
    let c = cluster(vec![named]);
    assert!(c.allowed(&src, &dst, Protocol::Tcp, 8080));
    assert!(!c.allowed(&src, &dst, Protocol::Tcp, 80));
    // A named port the pod does not have opens nothing.
    let mut other = dst.clone();
    other.ports.clear();
    assert!(!c.allowed_any(&src, &other));
}

fn arb_pod() -> impl Strategy<Value = Pod> {
    (
        prop::sample::select(vec!["default", "myproject", "other"]),
        prop::sample::select(vec!["a", "b", "c"]),
        0u8..=255,
    )
        .prop_map(|(ns, app, i)| {
            pod(
                ns,
                &format!("p{i}"),
                &[("app", app)],
                &format!("10.244.0.{i}"),
            )
        })
}

fn arb_policy() -> impl Strategy<Value = Policy> {
    (
        prop::sample::select(vec!["default", "myproject", "other"]),
        prop::sample::select(vec!["a", "b", "c"]),
        prop::sample::select(vec!["a", "b", "c"]),
        any::<bool>(),
        1u16..1000,
    )
        .prop_map(|(ns, sel, from, egress, port)| {
            let rule = json!([{"from": [{"podSelector": {"matchLabels": {"app": from}}}],
                               "to": [{"podSelector": {"matchLabels": {"app": from}}}],
                               "ports": [{"port": port}]}]);
            let spec = if egress {
                json!({"podSelector": {"matchLabels": {"app": sel}}, "policyTypes": ["Ingress", "Egress"], "ingress": rule, "egress": rule})
            } else {
                json!({"podSelector": {"matchLabels": {"app": sel}}, "ingress": rule})
            };
            policy(ns, "p", spec)
        })
}

proptest! {
    /// A policy that selects no pod changes no verdict.
    #[test]
    fn a_policy_selecting_nothing_changes_nothing(
        pols in prop::collection::vec(arb_policy(), 0..4),
        src in arb_pod(), dst in arb_pod(), port in 1u16..1000,
    ) {
        let base = cluster(pols.clone());
        let mut more = pols;
        more.push(policy("default", "nothing", json!({
            "podSelector": {"matchLabels": {"app": "no-such-app"}},
            "policyTypes": ["Ingress", "Egress"]})));
        let with = cluster(more);
        prop_assert_eq!(base.allowed(&src, &dst, Protocol::Tcp, port), with.allowed(&src, &dst, Protocol::Tcp, port));
    }

    /// Deny-all in every namespace denies every pair, whatever else exists.
    #[test]
    fn deny_all_denies_everything(src in arb_pod(), dst in arb_pod()) {
        let deny: Vec<Policy> = ["default", "myproject", "other"].iter().map(|ns| policy(ns, "deny", json!({
            "podSelector": {}, "policyTypes": ["Ingress", "Egress"]}))).collect();
        let c = cluster(deny);
        prop_assert!(!c.allowed_any(&src, &dst));
    }

    /// Adding a policy never allows what an isolating policy set denied
    /// unless it adds a matching rule: verdicts are monotone in rules.
    #[test]
    fn adding_policies_only_adds_for_already_isolated_pods(
        pols in prop::collection::vec(arb_policy(), 1..4),
        extra in arb_policy(),
        src in arb_pod(), dst in arb_pod(), port in 1u16..1000,
    ) {
        let deny: Vec<Policy> = ["default", "myproject", "other"].iter().map(|ns| policy(ns, "deny", json!({
            "podSelector": {}, "policyTypes": ["Ingress", "Egress"]}))).collect();
        let mut a = deny.clone();
        a.extend(pols.clone());
        let mut b = a.clone();
        b.push(extra);
        let (ca, cb) = (cluster(a), cluster(b));
        if ca.allowed(&src, &dst, Protocol::Tcp, port) {
            prop_assert!(cb.allowed(&src, &dst, Protocol::Tcp, port));
        }
    }
}
